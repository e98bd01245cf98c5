package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.io.WeightSource;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Region;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The counter-based initialisation: layout-independent values with the statistics transformers gives. */
class WeightInitTest {
    static final TensorSpec EXPERTS = new TensorSpec("model.layers.0.mlp.experts.gate_proj", DType.F32,
            new int[] {6, 8, 5});
    static final TensorSpec NORM = new TensorSpec("model.layers.0.input_layernorm.weight", DType.F32, new int[] {5});

    static float[] read(WeightSource s, String name, Region r, int piece) throws Exception {
        float[] out = new float[(int) r.numel()];
        for (long off = 0; off < out.length; off += piece) {
            s.read(name, r, off, (int) Math.min(piece, out.length - off), out, (int) off);
        }
        return out;
    }

    @Test
    void everyRegionHoldsTheValuesTheWholeTensorHoldsThere() throws Exception {
        WeightSource s = WeightInit.source(List.of(EXPERTS, NORM), 42, 0.02);
        float[] whole = read(s, EXPERTS.name(), Region.whole(6, 8, 5), 240);
        int[][][] boxes = {{{0, 3}, {0, 8}, {0, 5}}, {{2, 4}, {3, 7}, {0, 5}}, {{5, 6}, {0, 1}, {1, 4}}};
        for (int[][] box : boxes) {
            Region r = new Region(new int[] {6, 8, 5}, box);
            float[] part = read(s, EXPERTS.name(), r, 7); // pieces that cut runs
            int k = 0;
            for (int e = box[0][0]; e < box[0][1]; e++) {
                for (int i = box[1][0]; i < box[1][1]; i++) {
                    for (int h = box[2][0]; h < box[2][1]; h++) {
                        assertEquals(Float.floatToIntBits(whole[e * 40 + i * 5 + h]), Float.floatToIntBits(part[k++]));
                    }
                }
            }
        }
        for (float v : read(s, NORM.name(), Region.whole(5), 5)) {
            assertEquals(1f, v);
        }
    }

    @Test
    void valuesAreNormalWithTheGivenStd() {
        long key = WeightInit.key(7, "model.embed_tokens.weight");
        int n = 200_000;
        double sum = 0;
        double sq = 0;
        for (int i = 0; i < n; i++) {
            double v = WeightInit.normal(key, i, 0.02);
            sum += v;
            sq += v * v;
        }
        double mean = sum / n;
        double std = Math.sqrt(sq / n - mean * mean);
        assertEquals(0, mean, 3e-4, "mean");
        assertEquals(0.02, std, 2e-4, "std");
    }

    @Test
    void seedAndNameSelectTheStream() {
        long a = WeightInit.key(1, "lm_head.weight");
        assertEquals(a, WeightInit.key(1, "lm_head.weight"));
        assertNotEquals(a, WeightInit.key(2, "lm_head.weight"));
        assertNotEquals(a, WeightInit.key(1, "model.embed_tokens.weight"));
        assertNotEquals(WeightInit.normal(a, 0, 1), WeightInit.normal(a, 1, 1));
    }

    @Test
    void initRandomFillsTheModelFromTheSameStreams() throws Exception {
        Qwen3MoeConfig c = Qwen3MoeGradCheckTest.tinyBuilder().build();
        Qwen3MoeModel model = new Qwen3MoeModel(c, new CpuBackend());
        model.initRandom(5, 0.1);
        WeightSource s = WeightInit.source(model.parameterSpecs(), 5, 0.1);
        for (Map.Entry<String, Tensor> e : model.state().entrySet()) {
            float[] expected = read(s, e.getKey(), Region.whole(e.getValue().shape()), 1 << 20);
            assertTrue(java.util.Arrays.equals(expected, e.getValue().floats()), e.getKey());
        }
    }
}
