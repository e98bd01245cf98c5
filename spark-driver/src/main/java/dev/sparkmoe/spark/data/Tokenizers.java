package dev.sparkmoe.spark.data;

import dev.sparkmoe.spark.config.ConfigException;
import dev.sparkmoe.spark.config.ConfigKey;
import java.io.IOException;
import java.io.InputStream;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;

/** The tokenizer that {@code data.tokenizer} names: {@code byte}, or a Hugging Face tokenizer.json on any file system. */
public final class Tokenizers {
    private Tokenizers() {
    }

    public static Tokenizer load(String spec, Configuration hconf) {
        if ("byte".equals(spec)) {
            return new ByteLevelTokenizer();
        }
        Path p = new Path(spec);
        try (InputStream in = p.getFileSystem(hconf).open(p)) {
            return HfBpeTokenizer.load(in, spec);
        } catch (IOException e) {
            throw new ConfigException(ConfigKey.DATA_TOKENIZER.key(), spec, "cannot read it: " + e.getMessage()
                    + "; give byte or the path of a tokenizer.json");
        } catch (IllegalArgumentException e) {
            throw new ConfigException(ConfigKey.DATA_TOKENIZER.key(), spec, e.getMessage());
        }
    }
}
