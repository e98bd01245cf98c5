package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.roundedToBf16;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.testing.Intercept;
import dev.sparkmoe.core.testing.ModelStep;
import java.util.Random;
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
        CudaBackend.AttentionMode mode = gpu.attentionMode();
        GpuTestSupport.atBf16(gpu, () -> {
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
                gpu.setAttentionMode(mode);
            }
        });
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

    /** {@code gpu} with attention reading F32 inputs, made by the norm, rope and conversion one by one. */
    private static Backend f32Inputs(CudaBackend gpu) {
        return Intercept.over(gpu, (name, args) -> {
            switch (name) {
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
                    return Intercept.PASS;
            }
        });
    }

    @Test
    void aModelStepOnBf16AttentionInputsIsTheStepOnF32Inputs() {
        CudaBackend gpu = GpuTestSupport.backend();
        GpuTestSupport.atBf16(gpu, () -> {
            Qwen3MoeConfig config = GpuTestSupport.smallMoe(32, THETA);
            assertEquals(DType.BF16, gpu.attentionInputDType(64));
            for (ActivationCheckpointing mode : ActivationCheckpointing.values()) {
                ModelStep.run(gpu, f32Inputs(gpu), config, mode, 2, 32).assertSameBitsAs(
                        ModelStep.run(gpu, gpu, config, mode, 2, 32), mode.toString());
            }
        });
    }
}
