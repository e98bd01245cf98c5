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

    /**
     * A batch as transformers' causal-LM loss sees it, labels = inputs: {@code ids()} are the b x t ids from
     * {@code from}, {@code targets()} position p's next token, -100 at the end of each sequence.
     */
    public record Batch(int[] ids, int[] targets, int batch, int seqLen) {
        public int predicted() {
            return batch * (seqLen - 1);
        }
    }

    /** The {@code index}-th [b, t] block of an integer tensor of shape [..., b, t] as a {@link Batch}. */
    public static Batch batch(dev.sparkmoe.core.tensor.Tensor ids, int index) {
        int b = ids.dim(-2);
        int t = ids.dim(-1);
        int[] in = new int[b * t];
        int[] tg = new int[b * t];
        for (int i = 0; i < b * t; i++) {
            in[i] = (int) ids.longAt(index * b * t + i);
        }
        for (int s = 0; s < b; s++) {
            for (int q = 0; q < t; q++) {
                tg[s * t + q] = q + 1 < t ? in[s * t + q + 1] : -100;
            }
        }
        return new Batch(in, tg, b, t);
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
