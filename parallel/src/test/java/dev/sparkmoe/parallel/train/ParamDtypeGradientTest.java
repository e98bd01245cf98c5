package dev.sparkmoe.parallel.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.Bf16Gemms;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.nn.GradAccumulation;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Gradients in the param dtype (FSDP2's unsharded gradient in bf16) for the weights that keep a compute copy, on a
 * backend whose GEMMs take bf16 operands ({@link Bf16Gemms}: the CUDA backend at bf16, played on the CPU), at world 1
 * where nothing reduces them: the GEMMs write them in bf16, each the f32 gradient of the same products rounded once;
 * norms, the embedding and the fused loss's head gradient stay f32; gradient accumulation adds micro-batches in f32.
 */
class ParamDtypeGradientTest {
    @BeforeAll
    static void setUp() throws Exception {
        LayoutEquivalenceTest.loadFixture();
    }

    private static TrainerSpec spec(String precision, int accum) {
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-3, 1e-4, 1, 4, "cosine", 0.9, 0.95,
                1e-8, 0.1, 1.0, accum);
        return new TrainerSpec(LayoutEquivalenceTest.configJson, null, 0, 1, 1, LayoutEquivalenceTest.SEQ, opt,
                "cpu", -1, precision);
    }

    /**
     * name -> {dtype, the shard gradient's values, whether it keeps a compute copy} after one computeGradients on the
     * fixture batch at bf16; {@code narrow} false sets every gradient dtype back to F32 (the same forward and
     * backward, the gradients written in f32: the reference).
     */
    private static Map<String, Object[]> gradients(boolean narrow, int accum) {
        Backend be = Bf16Gemms.over(new CpuBackend());
        return InJvmRanks.run(1, Duration.ofSeconds(60), c -> {
            try (DistributedTrainer t = new DistributedTrainer(spec("bf16", accum), c, be,
                    LayoutEquivalenceTest.full)) {
                if (!narrow) {
                    for (FsdpParam p : t.shardedParameters()) {
                        p.parameter().gradDType(DType.F32);
                    }
                }
                List<int[]> in = new ArrayList<>();
                List<int[]> tg = new ArrayList<>();
                for (int[] s : LayoutEquivalenceTest.batch) {
                    in.add(java.util.Arrays.copyOfRange(s, 0, LayoutEquivalenceTest.SEQ));
                    tg.add(java.util.Arrays.copyOfRange(s, 1, LayoutEquivalenceTest.SEQ + 1));
                }
                t.computeGradients(in, tg, LayoutEquivalenceTest.SEQ);
                Map<String, Object[]> out = new LinkedHashMap<>();
                for (FsdpParam p : t.shardedParameters()) {
                    Tensor g = p.shardGrad();
                    out.put(p.parameter().name(), new Object[] {g.dtype(), be.download(g).floats().clone(),
                        p.keepsComputeCopy()});
                }
                return out;
            }
        }).get(0);
    }

    @Test
    void weightsWithACopyGetBf16GradientsThatAreTheF32OnesRounded() {
        Map<String, Object[]> bf16 = gradients(true, 1);
        Map<String, Object[]> f32 = gradients(false, 1);
        int narrow = 0;
        for (Map.Entry<String, Object[]> e : bf16.entrySet()) {
            String n = e.getKey();
            Object[] b = e.getValue();
            Object[] f = f32.get(n);
            assertEquals(DType.F32, f[0], n + " with its gradient dtype set to F32");
            boolean copy = (boolean) b[2];
            // the fused loss hands the head its gradient in f32 (accumulated over its chunks): it stays f32
            boolean expectBf16 = copy && !n.equals("lm_head.weight");
            assertEquals(expectBf16 ? DType.BF16 : DType.F32, b[0], n);
            float[] want = ((float[]) f[1]).clone();
            if (expectBf16) {
                narrow++;
                for (int i = 0; i < want.length; i++) {
                    want[i] = DType.round(DType.BF16, want[i]);
                }
            }
            assertArrayEquals(want, (float[]) b[1], n);
        }
        assertTrue(narrow >= 6, "bf16 gradients: experts, projections, routers (" + narrow + ")");
    }

    @Test
    void microBatchesAreAccumulatedInF32() {
        Map<String, Object[]> bf16 = gradients(true, 2);
        Map<String, Object[]> f32 = gradients(false, 2);
        boolean differs = false;
        for (Map.Entry<String, Object[]> e : bf16.entrySet()) {
            String n = e.getKey();
            assertEquals(DType.F32, e.getValue()[0], n + ": the sum of two micro-batches");
            float[] got = (float[]) e.getValue()[1];
            float[] ref = (float[]) f32.get(n)[1];
            float max = 0;
            for (float v : ref) {
                max = Math.max(max, Math.abs(v));
            }
            for (int i = 0; i < ref.length; i++) {
                // each micro-batch's gradient rounded once (2^-9 of itself; the two may cancel in the sum), then
                // added in f32: within a few bf16 steps of the tensor's largest gradient
                assertEquals(ref[i], got[i], max * 0x1p-7, n + "[" + i + "]");
                differs |= (boolean) e.getValue()[2] && got[i] != ref[i];
            }
        }
        assertTrue(differs, "the micro-batches' gradients were rounded to bf16 before they were added");
    }

    @Test
    void accumulationWidensABf16Gradient() {
        Backend be = new CpuBackend();
        Tensor acc = Tensor.of(new float[] {1f, 2f, 3f}, 3);
        Tensor narrowAcc = be.empty(DType.BF16, 3);
        be.convert(acc, narrowAcc);
        Tensor part = be.empty(DType.BF16, 3);
        be.convert(Tensor.of(new float[] {0.00390625f, 0.5f, -3f}, 3), part);
        Tensor sum = GradAccumulation.add(be, narrowAcc, part);
        assertEquals(DType.F32, sum.dtype());
        // 1 + 2^-8 is not a bf16: the sum is kept in f32
        assertArrayEquals(new float[] {1.00390625f, 2.5f, 0f}, be.download(sum).floats());
        Tensor f = Tensor.of(new float[] {1f, 1f, 1f}, 3);
        assertTrue(GradAccumulation.add(be, f, Tensor.of(new float[] {1f, 2f, 3f}, 3)) == f, "an f32 sum in place");
        assertThrows(IllegalArgumentException.class, () -> GradAccumulation.add(be, f, Tensor.of(new float[2], 2)));
    }

    @Test
    void onlyAWeightReadByGemmsMayHaveANarrowGradient() {
        Backend be = new CpuBackend();
        Parameter norm = new Parameter("model.norm.weight", Tensor.of(new float[4], 4), be);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> norm.gradDType(DType.BF16));
        assertTrue(e.getMessage().contains("model.norm.weight") && e.getMessage().contains("stays F32"),
                e.getMessage());
        Parameter w = new Parameter("q_proj.weight", Tensor.of(new float[4], 2, 2), be).readByGemmsOnly();
        assertThrows(IllegalArgumentException.class, () -> w.gradDType(DType.F16));
        w.gradDType(DType.BF16);
        assertEquals(0f, w.gradBetaForFullWrite());
        assertEquals(DType.BF16, w.grad().dtype());
        assertNotEquals(DType.BF16, norm.grad().dtype());
    }
}
