package dev.sparkmoe.spark.ckpt;

import dev.sparkmoe.spark.config.ConfigException;
import dev.sparkmoe.spark.config.ConfigKey;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileAlreadyExistsException;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * The run folders under {@code output.dir}: {@code run-001}, {@code run-002}, ... Each run trains in a folder of its
 * own, so running the same config twice trains twice; {@code checkpoint.resume} names an earlier folder to continue
 * instead ({@code latest}: the newest). A new folder is claimed by creating its {@value #MARKER} file without
 * overwrite, which is atomic on HDFS and local disks, so concurrent runs never share one.
 */
public final class RunFolders {
    public static final String MARKER = "_RUN";
    private static final Pattern NAME = Pattern.compile("run-(\\d{3,})");

    private final String outputDir;
    private final Configuration conf;

    public RunFolders(String outputDir, Configuration conf) {
        this.outputDir = outputDir;
        this.conf = conf;
    }

    /** A run folder: its URI and name, and whether this run continues it. */
    public record Run(String dir, String name, boolean resumed) {
    }

    /** Names of the run folders that exist, oldest first. */
    public List<String> existing() throws IOException {
        Path root = new Path(outputDir);
        FileSystem fs = root.getFileSystem(conf);
        List<String> names = new ArrayList<>();
        if (!fs.exists(root)) {
            return names;
        }
        for (FileStatus st : fs.listStatus(root)) {
            if (st.isDirectory() && NAME.matcher(st.getPath().getName()).matches()) {
                names.add(st.getPath().getName());
            }
        }
        names.sort((a, b) -> Long.compare(number(a), number(b)));
        return names;
    }

    /**
     * The folder {@code checkpoint.resume} asks to continue, or null for {@code no}. Reads only; fails with the
     * folders there are when the one asked for does not exist.
     */
    public Run resumeTarget(String resume) throws IOException {
        if ("no".equals(resume)) {
            return null;
        }
        List<String> runs = existing();
        if ("latest".equals(resume)) {
            if (runs.isEmpty()) {
                throw new ConfigException(ConfigKey.CHECKPOINT_RESUME.key(), resume, "output.dir " + outputDir
                        + " holds no run folder (run-001, ...) to continue; drop --resume to start a new run");
            }
            String name = runs.get(runs.size() - 1);
            return new Run(outputDir + "/" + name, name, true);
        }
        if (!NAME.matcher(resume).matches()) {
            throw new ConfigException(ConfigKey.CHECKPOINT_RESUME.key(), resume, "expected no, latest or a run "
                    + "folder's name like run-002" + (runs.isEmpty() ? "" : "; output.dir holds " + runs));
        }
        if (!runs.contains(resume)) {
            throw new ConfigException(ConfigKey.CHECKPOINT_RESUME.key(), resume, "no such run folder in "
                    + outputDir + (runs.isEmpty() ? " (it holds none)" : "; it holds " + runs)
                    + "; name one of them, or drop --resume to start a new run");
        }
        return new Run(outputDir + "/" + resume, resume, true);
    }

    /** Claims the next free run folder, writing {@code note} (the run id, the time) into its marker. */
    public Run claimNew(String note) throws IOException {
        Path root = new Path(outputDir);
        FileSystem fs = root.getFileSystem(conf);
        List<String> runs = existing();
        long n = runs.isEmpty() ? 1 : number(runs.get(runs.size() - 1)) + 1;
        for (int tries = 0; tries < 1000; tries++, n++) {
            String name = String.format("run-%03d", n);
            Path marker = new Path(new Path(root, name), MARKER);
            try (OutputStream os = fs.create(marker, false)) {
                os.write(note.getBytes(StandardCharsets.UTF_8));
                return new Run(outputDir + "/" + name, name, false);
            } catch (FileAlreadyExistsException e) {
                // another run took it first: try the next number
            } catch (IOException e) {
                if (!fs.exists(marker)) {
                    throw new ConfigException(ConfigKey.OUTPUT_DIR.key(), outputDir, "cannot create a run folder "
                            + "there (" + e.getMessage() + "); point output.dir at a writable directory");
                }
            }
        }
        throw new IllegalStateException("no free run folder in " + outputDir + " after 1000 tries");
    }

    private static long number(String name) {
        Matcher m = NAME.matcher(name);
        return m.matches() ? Long.parseLong(m.group(1)) : -1;
    }
}
