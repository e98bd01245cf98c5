package dev.sparkmoe.spark.ckpt;

import dev.sparkmoe.core.io.OutputDir;
import java.io.OutputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * A directory of a Hadoop file system as an {@link OutputDir}, for the final model: files are written in place (the
 * caller moves the whole directory into place once complete); a file closed uncommitted is deleted.
 */
public final class HadoopOutputDir {
    private HadoopOutputDir() {
    }

    public static OutputDir of(FileSystem fs, Path dir) {
        return name -> {
            Path p = new Path(dir, name);
            OutputStream os = fs.create(p, true, CheckpointStore.IO_BUFFER_BYTES);
            return OutputDir.Output.of(os, os::close, () -> {
                os.close();
                fs.delete(p, false);
            });
        };
    }
}
