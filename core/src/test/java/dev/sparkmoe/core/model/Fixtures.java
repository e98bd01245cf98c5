package dev.sparkmoe.core.model;

import java.net.URISyntaxException;
import java.net.URL;
import java.nio.file.Path;

/** Locates the Hugging Face reference fixtures copied into the test resources. */
public final class Fixtures {
    private Fixtures() {
    }

    public static Path tiny() {
        URL u = Fixtures.class.getResource("/fixtures/qwen3moe-tiny/config.json");
        if (u == null) {
            throw new IllegalStateException("fixture qwen3moe-tiny missing from the test resources");
        }
        try {
            return Path.of(u.toURI()).getParent();
        } catch (URISyntaxException e) {
            throw new IllegalStateException(e);
        }
    }
}
