package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.roundedToBf16;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.model.StatsReducer;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.testing.TokenBatch;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * Attention's inputs in bf16 at bf16 precision ({@code Backend.attentionInputDType}: the flash kernels multiply bf16
 * copies of q, k and v, so the model holds them in bf16): the q and k norms with rope in one pass
 * ({@code rmsNormRopeForward}, and its backward with rope undone as dy is read) give bit for bit the norm, rope and
 * rounding one by one, in f32 and bf16 outputs, on the fused kernels (head dims 64 and 128) and off them; attention
 * on BF16 q, k and v gives bit for bit what it gives on F32 tensors of the same values, on the flash kernels and on the
 * GEMM path (which widens them); and a model step with bf16 attention inputs is bit for bit the step whose q, k and v
 * are F32 (the norm, rope and conversion one by one), under every activation checkpointing mode. Skipped where no
 * GPU is.
 */
class AttentionInputsBf16Test {
    private static final float THETA = 1_000_000f;
    private final Random r = new Random(29);

    /** The norm, rope and rounding one by one into y (F32 or BF16). */
    private static void normRopeOneByOne(Backend gpu, Tensor x, Tensor w, int tokens, int heads, int d, int seqLen,
                                         Tensor y, Tensor rstd) {
        Tensor wide = y.dtype() == DType.F32 ? y : gpu.empty(DType.F32, y.shape());
        gpu.rmsNormForward(x, w, 1e-6f, tokens * heads, d, wide, rstd);
        gpu.rope(wide, tokens, heads, d, seqLen, THETA, false);
        if (wide != y) {
            gpu.convert(wide, y);
            gpu.release(wide);
        }
    }

    /** Rope undone on dy (in place), the norm's backward and the rounding one by one into dx (F32 or BF16). */
    private static void normRopeBackwardOneByOne(Backend gpu, Tensor dy, Tensor x, Tensor w, Tensor rstd, int tokens,
                                                 int heads, int d, int seqLen, Tensor dx, Tensor dw) {
        gpu.rope(dy, tokens, heads, d, seqLen, THETA, true);
        Tensor wide = dx.dtype() == DType.F32 ? dx : gpu.empty(DType.F32, dx.shape());
        gpu.rmsNormBackward(dy, x, w, rstd, tokens * heads, d, wide, dw);
        if (wide != dx) {
            gpu.convert(wide, dx);
            gpu.release(wide);
        }
    }

    @Test
    void theNormWithRopeIsTheNormRopeAndRoundingOneByOne() {
        CudaBackend gpu = GpuTestSupport.backend();
        int seqLen = 37, tokens = 2 * seqLen;
        // {head dim, heads}: the fused kernels (16 and 32 lanes) and off them (the norm, rope and rounding)
        for (int[] dh : new int[][] {{64, 3}, {128, 5}, {96, 2}}) {
            int d = dh[0], heads = dh[1], n = tokens * heads * d;
            for (DType out : new DType[] {DType.F32, DType.BF16}) {
                String what = "head dim " + d + ", " + out;
                try (Backend.Scope scope = gpu.openScope()) {
                    Tensor x = gpu.upload(host(rnd(r, n, 2), tokens, heads * d));
                    Tensor w = gpu.upload(host(rnd(r, d, 1), d));
                    Tensor y1 = gpu.empty(out, tokens, heads * d);
                    Tensor r1 = gpu.empty(DType.F32, tokens * heads);
                    normRopeOneByOne(gpu, x, w, tokens, heads, d, seqLen, y1, r1);
                    Tensor y2 = gpu.empty(out, tokens, heads * d);
                    Tensor r2 = gpu.empty(DType.F32, tokens * heads);
                    gpu.rmsNormRopeForward(x, w, 1e-6f, tokens, heads, d, seqLen, THETA, y2, r2);
                    assertSameBits(gpu.download(y1).floats(), gpu.download(y2).floats(), what + ": y");
                    assertSameBits(gpu.download(r1).floats(), gpu.download(r2).floats(), what + ": rstd");
                    float[] dyHost = rnd(r, n, 1);
                    float[] dw0 = rnd(r, d, 1);
                    Tensor dx1 = gpu.empty(out, tokens, heads * d);
                    Tensor dw1 = gpu.upload(host(dw0, d));
                    normRopeBackwardOneByOne(gpu, gpu.upload(host(dyHost, n)), x, w, r1, tokens, heads, d, seqLen,
                            dx1, dw1);
                    Tensor dy = gpu.upload(host(dyHost, n));
                    Tensor dx2 = gpu.empty(out, tokens, heads * d);
                    Tensor dw2 = gpu.upload(host(dw0, d));
                    gpu.rmsNormRopeBackward(dy, x, w, r1, tokens, heads, d, seqLen, THETA, dx2, dw2);
                    assertSameBits(gpu.download(dx1).floats(), gpu.download(dx2).floats(), what + ": dx");
                    assertSameBits(gpu.download(dw1).floats(), gpu.download(dw2).floats(), what + ": dw");
                }
            }
        }
    }

    @Test
    void attentionOnBf16InputsIsAttentionOnF32InputsOfTheSameValues() {
        CudaBackend gpu = GpuTestSupport.backend();
        CudaBackend.GemmPrecision precision = gpu.gemmPrecision();
        CudaBackend.AttentionMode mode = gpu.attentionMode();
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
        try {
            int b = 2, t = 80, hq = 4, hkv = 2;
            for (int d : new int[] {64, 128}) {
                for (CudaBackend.AttentionMode m : new CudaBackend.AttentionMode[] {CudaBackend.AttentionMode.AUTO,
                        CudaBackend.AttentionMode.GEMM}) {
                    gpu.setAttentionMode(m);
                    String what = "head dim " + d + ", " + m;
                    assertEquals(m == CudaBackend.AttentionMode.AUTO ? DType.BF16 : DType.F32,
                            gpu.attentionInputDType(d), what + ": the input dtype");
                    try (Backend.Scope scope = gpu.openScope()) {
                        int nq = b * t * hq * d, nkv = b * t * hkv * d;
                        float[] q = roundedToBf16(rnd(r, nq, 1));
                        float[] k = roundedToBf16(rnd(r, nkv, 1));
                        float[] v = roundedToBf16(rnd(r, nkv, 1));
                        float[] dOut = rnd(r, nq, 1);
                        float[][] f32 = run(gpu, q, k, v, dOut, DType.F32, b, t, hq, hkv, d);
                        float[][] bf16 = run(gpu, q, k, v, dOut, DType.BF16, b, t, hq, hkv, d);
                        String[] names = {"out", "lse", "dq", "dk", "dv"};
                        for (int i = 0; i < names.length; i++) {
                            assertSameBits(f32[i], bf16[i], what + ": " + names[i]);
                        }
                    }
                }
            }
        } finally {
            gpu.setGemmPrecision(precision);
            gpu.setAttentionMode(mode);
        }
    }

    /** Attention forward and backward on q, k, v held in {@code dtype}: out, lse, dq, dk, dv. */
    private static float[][] run(CudaBackend gpu, float[] q, float[] k, float[] v, float[] dOut, DType dtype, int b,
                                 int t, int hq, int hkv, int d) {
        Tensor[] in = new Tensor[3];
        float[][] host = {q, k, v};
        for (int i = 0; i < 3; i++) {
            Tensor f = gpu.upload(host(host[i], host[i].length));
            in[i] = f;
            if (dtype == DType.BF16) {
                in[i] = gpu.empty(DType.BF16, host[i].length);
                gpu.convert(f, in[i]);
            }
        }
        Tensor out = gpu.empty(DType.F32, b * t, hq * d);
        Tensor lse = gpu.empty(DType.F32, b * hq * t);
        float scale = (float) Math.pow(d, -0.5);
        gpu.attentionForward(in[0], in[1], in[2], b, t, hq, hkv, d, scale, out, lse);
        Tensor dq = gpu.empty(DType.F32, b * t, hq * d);
        Tensor dk = gpu.empty(DType.F32, b * t, hkv * d);
        Tensor dv = gpu.empty(DType.F32, b * t, hkv * d);
        gpu.attentionBackward(gpu.upload(host(dOut, dOut.length)), in[0], in[1], in[2], out, lse, b, t, hq, hkv, d,
                scale, dq, dk, dv);
        return new float[][] {gpu.download(out).floats(), gpu.download(lse).floats(), gpu.download(dq).floats(),
            gpu.download(dk).floats(), gpu.download(dv).floats()};
    }

    // ------------------------------------------------------------------ a model step

    record Step(double lm, double aux, Map<String, float[]> grads) {
    }

    /** {@code gpu} with attention reading F32 inputs, made by the norm, rope and conversion one by one. */
    private static Backend f32Inputs(CudaBackend gpu) {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, method, args) -> {
                    switch (method.getName()) {
                        case "attentionInputDType":
                            return DType.F32;
                        case "rmsNormRopeForward":
                            normRopeOneByOne(gpu, (Tensor) args[0], (Tensor) args[1], (int) args[3], (int) args[4],
                                    (int) args[5], (int) args[6], (Tensor) args[8], (Tensor) args[9]);
                            return null;
                        case "rmsNormRopeBackward":
                            normRopeBackwardOneByOne(gpu, (Tensor) args[0], (Tensor) args[1], (Tensor) args[2],
                                    (Tensor) args[3], (int) args[4], (int) args[5], (int) args[6], (int) args[7],
                                    (Tensor) args[9], (Tensor) args[10]);
                            return null;
                        default:
                            try {
                                return method.invoke(gpu, args);
                            } catch (InvocationTargetException e) {
                                throw e.getCause();
                            }
                    }
                });
    }

    private static Step step(CudaBackend gpu, Backend be, Qwen3MoeConfig config, ActivationCheckpointing mode) {
        int b = 2, t = 32;
        try (Backend.Scope scope = gpu.openScope()) {
            Qwen3MoeModel model = new Qwen3MoeModel(config, be);
            model.initRandom(21, 0.2);
            model.setActivationCheckpointing(mode);
            TokenBatch batch = TokenBatch.random(new SplittableRandom(8), config.vocabSize(), b * t);
            Qwen3MoeModel.Pass pass = model.forward(batch.ids(), batch.targets(), b, t, b * t,
                    config.routerAuxLossCoef(), StatsReducer.LOCAL);
            model.backward(pass);
            Map<String, float[]> grads = new LinkedHashMap<>();
            for (Parameter p : model.parameters()) {
                grads.put(p.name(), gpu.download(p.grad()).floats());
            }
            return new Step(pass.lmLossSum(), pass.auxLoss(), grads);
        }
    }

    @Test
    void aModelStepOnBf16AttentionInputsIsTheStepOnF32Inputs() {
        CudaBackend gpu = GpuTestSupport.backend();
        CudaBackend.GemmPrecision precision = gpu.gemmPrecision();
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
        try {
            Qwen3MoeConfig config = Qwen3MoeConfig.builder().vocabSize(256).hiddenSize(64).intermediateSize(96)
                    .moeIntermediateSize(32).numHiddenLayers(3).numAttentionHeads(4).numKeyValueHeads(2).headDim(64)
                    .numExperts(8).numExpertsPerTok(2).mlpOnlyLayers(List.of(0)).normTopkProb(true)
                    .maxPositionEmbeddings(64).ropeTheta(THETA).rmsNormEps(1e-6).routerAuxLossCoef(0.01).build();
            assertEquals(DType.BF16, gpu.attentionInputDType(64));
            for (ActivationCheckpointing mode : ActivationCheckpointing.values()) {
                Step f32 = step(gpu, f32Inputs(gpu), config, mode);
                Step bf16 = step(gpu, gpu, config, mode);
                assertTrue(Double.isFinite(bf16.lm) && bf16.lm > 0, mode + ": lm loss " + bf16.lm);
                assertEquals(Double.doubleToRawLongBits(f32.lm), Double.doubleToRawLongBits(bf16.lm),
                        mode + ": lm loss " + bf16.lm + " vs " + f32.lm);
                assertEquals(Double.doubleToRawLongBits(f32.aux), Double.doubleToRawLongBits(bf16.aux),
                        mode + ": aux loss");
                for (String k : f32.grads.keySet()) {
                    assertSameBits(f32.grads.get(k), bf16.grads.get(k), mode + ": grad " + k);
                }
            }
        } finally {
            gpu.setGemmPrecision(precision);
        }
    }
}
