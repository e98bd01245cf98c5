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

    /**
     * The parity tolerance of the fixtures' README: every element within {@code tol} of the largest magnitude of
     * {@code expected} (shapes equal, NaN never passes); the message names the worst element.
     */
    public static void assertClose(String what, dev.sparkmoe.core.tensor.Tensor expected,
                                   dev.sparkmoe.core.tensor.Tensor actual, double tol) {
        org.junit.jupiter.api.Assertions.assertEquals(java.util.Arrays.toString(expected.shape()), java.util.Arrays.toString(actual.shape()),
                what + " shape");
        float[] e = expected.floats();
        float[] a = actual.floats();
        double scale = Math.max(expected.maxAbs(), 1e-30);
        double worst = 0;
        int at = -1;
        for (int i = 0; i < e.length; i++) {
            double d = Math.abs((double) e[i] - a[i]);
            if (!(d <= worst) || Double.isNaN(a[i])) {
                worst = Double.isNaN(a[i]) ? Double.POSITIVE_INFINITY : d;
                at = i;
            }
        }
        double w = worst;
        int idx = at;
        org.junit.jupiter.api.Assertions.assertTrue(worst <= tol * scale, () -> what + ": max |diff| " + w + " at " + idx + " exceeds " + tol
                + " x max|ref| (" + scale + "); expected " + e[idx] + ", got " + a[idx]);
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
