package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.Tensor;

import java.util.List;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/** Shared set-up of the CUDA tests: one backend per JVM, skipped (not failed) where no GPU or CUDA library is. */
final class GpuTestSupport {
    private static CudaBackend backend;

    private GpuTestSupport() {
    }

    static synchronized CudaBackend backend() {
        assumeTrue(Cuda.available(), () -> "no CUDA device: " + Cuda.unavailableReason());
        if (backend == null) {
            backend = new CudaBackend();
        }
        return backend;
    }

    /**
     * Runs {@code body} with {@code gpu} at bf16 precision with the grouped GEMM kernel (the benchmark setting: BF16
     * GEMM operands), then restores both settings.
     */
    static void atBf16(CudaBackend gpu, Runnable body) {
        CudaBackend.GemmPrecision precision = gpu.gemmPrecision();
        CudaBackend.GroupedMode mode = gpu.groupedMode();
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
        gpu.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
        try {
            body.run();
        } finally {
            gpu.setGemmPrecision(precision);
            gpu.setGroupedMode(mode);
        }
    }

    /**
     * The model of the GPU tests that compare two ways of computing a step: 3 layers (a dense one first), hidden 64,
     * 8 experts top-2 of {@code moeInter}, head dim 64 (the flash kernels), rope theta {@code theta}.
     */
    static Qwen3MoeConfig smallMoe(int moeInter, double theta) {
        return Qwen3MoeConfig.builder().vocabSize(256).hiddenSize(64).intermediateSize(96).moeIntermediateSize(moeInter)
                .numHiddenLayers(3).numAttentionHeads(4).numKeyValueHeads(2).headDim(64).numExperts(8)
                .numExpertsPerTok(2).mlpOnlyLayers(List.of(0)).normTopkProb(true).maxPositionEmbeddings(64)
                .ropeTheta(theta).rmsNormEps(1e-6).routerAuxLossCoef(0.01).build();
    }

    static float[] rnd(Random r, int n, float scale) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) (r.nextGaussian() * scale);
        }
        return a;
    }

    /**
     * The experts' grouped GEMM geometry over rows grouped by expert ({@code rows[g]} rows for expert g, packed): each
     * group's first element in [rows, hidden] buffers ({@code xOff}) and [rows, inter] buffers ({@code iOff}), its
     * [hidden, inter] or [inter, hidden] weight block ({@code wOff}), and the per-group sizes.
     */
    record ExpertLayout(int[] xOff, int[] iOff, int[] wOff, int[] hid, int[] in) {
        static ExpertLayout of(int[] rows, int hidden, int inter) {
            int e = rows.length;
            int[] xOff = new int[e], iOff = new int[e], wOff = new int[e], hid = new int[e], in = new int[e];
            for (int g = 0, at = 0; g < e; at += rows[g], g++) {
                xOff[g] = at * hidden;
                iOff[g] = at * inter;
                wOff[g] = g * hidden * inter;
                hid[g] = hidden;
                in[g] = inter;
            }
            return new ExpertLayout(xOff, iOff, wOff, hid, in);
        }
    }

    /** Each value rounded to bf16 as the host rounds it ({@link dev.sparkmoe.core.tensor.DType#roundToBf16}). */
    static float[] roundedToBf16(float[] a) {
        float[] o = new float[a.length];
        for (int i = 0; i < a.length; i++) {
            o[i] = dev.sparkmoe.core.tensor.DType.roundToBf16(a[i]);
        }
        return o;
    }

    static float maxAbs(float[] a) {
        float m = 0;
        for (float v : a) {
            m = Math.max(m, Math.abs(v));
        }
        return m;
    }

    /** max |e - a| <= tol * max(|e|) (max magnitude of the reference, at least 1e-30); NaN never passes. */
    static void assertClose(float[] expected, float[] actual, double tol, String what) {
        assertTrue(expected.length == actual.length, what + ": lengths " + expected.length + " vs " + actual.length);
        double scale = Math.max(1e-30, maxAbs(expected));
        double worst = 0;
        int at = -1;
        for (int i = 0; i < expected.length; i++) {
            double d = Math.abs((double) expected[i] - actual[i]);
            if (Double.isNaN(actual[i]) || Double.isNaN(d)) {
                throw new AssertionError(what + ": NaN at " + i + " (expected " + expected[i] + ")");
            }
            if (d > worst) {
                worst = d;
                at = i;
            }
        }
        double rel = worst / scale;
        assertTrue(rel <= tol, what + ": max error " + worst + " at " + at + " (expected " + (at >= 0 ? expected[at] : 0)
                + ", got " + (at >= 0 ? actual[at] : 0) + ") is " + rel + " of the max magnitude " + scale
                + ", over the tolerance " + tol);
    }

    static Tensor host(float[] a, int... shape) {
        return Tensor.of(a.clone(), shape);
    }
}
