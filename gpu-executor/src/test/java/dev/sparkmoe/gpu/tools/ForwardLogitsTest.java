package dev.sparkmoe.gpu.tools;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.io.SafeTensors;
import dev.sparkmoe.core.model.Fixtures;
import dev.sparkmoe.core.tensor.Tensor;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * ForwardLogits (the spark-moe side of the GPU host's transformers logits check) reproduces transformers' own logits
 * of the tiny fixture, run as a command on the CPU backend: files in, files out.
 */
class ForwardLogitsTest {
    @TempDir
    Path tmp;

    @Test
    void logitsOfACheckpointMatchTransformers() throws Exception {
        Path dir = Fixtures.tiny();
        Map<String, Tensor> io = SafeTensors.read(dir.resolve("io.safetensors")).tensors();
        Tensor ids = io.get("input_ids");
        Path inputs = tmp.resolve("in.safetensors");
        SafeTensors.write(inputs, Map.of("input_ids", ids), Map.of());
        Path out = tmp.resolve("out.safetensors");
        assertEquals(0, ForwardLogits.run(new String[] {"--checkpoint", dir.toString(), "--inputs",
            inputs.toString(), "--out", out.toString(), "--backend", "cpu"}, System.out, System.err));
        Tensor got = SafeTensors.read(out).tensors().get("logits");
        Tensor want = io.get("logits");
        assertArrayEquals(want.shape(), got.shape());
        float[] a = want.floats();
        float[] b = got.floats();
        double maxAbs = 0;
        double maxDiff = 0;
        for (int i = 0; i < a.length; i++) {
            maxAbs = Math.max(maxAbs, Math.abs(a[i]));
            maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
        }
        assertTrue(maxDiff <= 1e-5 * maxAbs, "max |difference| " + maxDiff + " of max |logit| " + maxAbs);
    }

    @Test
    void aBadCommandLineOrInputFileEndsWithAnErrorLine() throws Exception {
        java.io.ByteArrayOutputStream err = new java.io.ByteArrayOutputStream();
        java.io.PrintStream e = new java.io.PrintStream(err, true, java.nio.charset.StandardCharsets.UTF_8);
        assertEquals(2, ForwardLogits.run(new String[] {"--inputs", "x", "--out", "y"}, System.out, e));
        assertTrue(err.toString(java.nio.charset.StandardCharsets.UTF_8).contains("error: Missing required option: "
                + "'--checkpoint=DIR'"), err.toString(java.nio.charset.StandardCharsets.UTF_8));

        err.reset();
        Path inputs = tmp.resolve("no-ids.safetensors");
        SafeTensors.write(inputs, Map.of("tokens", Tensor.ofLongs(new long[] {1, 2}, 1, 2)), Map.of());
        assertEquals(2, ForwardLogits.run(new String[] {"--checkpoint", Fixtures.tiny().toString(), "--inputs",
            inputs.toString(), "--out", tmp.resolve("o").toString(), "--backend", "cpu"}, System.out, e));
        String text = err.toString(java.nio.charset.StandardCharsets.UTF_8);
        assertTrue(text.contains("error: --inputs " + inputs + " must hold input_ids of shape [B, T], and has no "
                + "tensor of that name"), text);
    }
}
