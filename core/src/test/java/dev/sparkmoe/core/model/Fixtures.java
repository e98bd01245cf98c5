package dev.sparkmoe.core.model;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.net.URISyntaxException;
import java.net.URL;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.List;

/**
 * Locates the Hugging Face reference fixtures of the test resources. Other modules get them through core's test-jar;
 * when they sit inside that jar (a `verify` build) they are copied once to a temporary directory.
 */
public final class Fixtures {
    private static final String DIR = "/fixtures/qwen3moe-tiny/";
    private static final List<String> FILES = List.of("config.json", "model.safetensors", "io.safetensors",
            "grads.safetensors", "after_adamw_step.safetensors", "reference.json");
    private static Path extracted;

    private Fixtures() {
    }

    public static synchronized Path tiny() {
        URL u = Fixtures.class.getResource(DIR + "config.json");
        if (u == null) {
            throw new IllegalStateException("fixture qwen3moe-tiny missing from the test resources");
        }
        try {
            if ("file".equals(u.getProtocol())) {
                return Path.of(u.toURI()).getParent();
            }
            if (extracted == null) {
                Path dir = Files.createTempDirectory("qwen3moe-tiny");
                for (String f : FILES) {
                    try (InputStream in = Fixtures.class.getResourceAsStream(DIR + f)) {
                        if (in == null) {
                            throw new IllegalStateException("fixture file " + f + " missing");
                        }
                        Files.copy(in, dir.resolve(f), StandardCopyOption.REPLACE_EXISTING);
                    }
                    dir.resolve(f).toFile().deleteOnExit();
                }
                dir.toFile().deleteOnExit();
                extracted = dir;
            }
            return extracted;
        } catch (URISyntaxException e) {
            throw new IllegalStateException(e);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
