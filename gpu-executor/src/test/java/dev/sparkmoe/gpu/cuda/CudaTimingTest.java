package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.GpuTestSupport.medianMillis;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.Random;

import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * Short timings at C1-like shapes (tokens 8192, hidden 1024, 16 query / 4 kv heads of dim 64, T 2048), run only with
 * {@code -Dsparkmoe.cuda.bench=true}: device time from CUDA events, median of 10 after 2 warm-ups, on random data.
 */
class CudaTimingTest {

    private static Tensor rand(CudaBackend gpu, Random r, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) r.nextGaussian();
        }
        return gpu.upload(Tensor.of(a, n));
    }

    @Test
    void timings() {
        assumeTrue(Boolean.getBoolean("sparkmoe.cuda.bench"), "timings run with -Dsparkmoe.cuda.bench=true");
        CudaBackend gpu = GpuTestSupport.backend();
        Random r = new Random(1);
        StringBuilder out = new StringBuilder("\n=== timings on " + gpu.deviceName() + " (" + gpu.arch() + ") ===\n");
        try (var scope = gpu.openScope()) {
            int[][] gemms = {{8192, 1536, 1024}, {8192, 1024, 1024}, {8192, 768, 1024}, {8192, 8192, 8192}};
            for (CudaBackend.GemmPrecision p : CudaBackend.GemmPrecision.values()) {
                gpu.setGemmPrecision(p);
                for (int[] s : gemms) {
                    int m = s[0], n = s[1], k = s[2];
                    Tensor a = rand(gpu, r, m * k);
                    Tensor b = rand(gpu, r, n * k);
                    Tensor c = gpu.zeros(DType.F32, m * n);
                    float ms = medianMillis(gpu, () -> gpu.gemm(false, true, m, n, k, 1f, a, 0, k, b, 0, k, 0f, c, 0, n));
                    out.append(String.format("gemm %-5s m=%5d n=%5d k=%5d (A B^T): %8.3f ms  %7.1f TFLOP/s%n", p, m, n,
                            k, ms, 2.0 * m * n * k / ms / 1e9));
                    gpu.release(a);
                    gpu.release(b);
                    gpu.release(c);
                }
            }
            gpu.setGemmPrecision(CudaBackend.GemmPrecision.F32);

            int experts = 16, tokens = 8192 * 8 / experts, hidden = 1024, inter = 768;
            int[] m = new int[experts], n = new int[experts], k = new int[experts];
            int[] aOff = new int[experts], bOff = new int[experts], cOff = new int[experts];
            for (int e = 0; e < experts; e++) {
                m[e] = tokens;
                n[e] = inter;
                k[e] = hidden;
                aOff[e] = e * tokens * hidden;
                bOff[e] = e * inter * hidden;
                cOff[e] = e * tokens * inter;
            }
            Tensor ga = rand(gpu, r, experts * tokens * hidden);
            Tensor gb = rand(gpu, r, experts * inter * hidden);
            Tensor gc = gpu.zeros(DType.F32, experts * tokens * inter);
            for (CudaBackend.GroupedMode mode : new CudaBackend.GroupedMode[] {CudaBackend.GroupedMode.LOOP}) {
                gpu.setGroupedMode(mode);
                float ms = medianMillis(gpu, () -> gpu.groupedGemm(false, true, experts, m, n, k, 1f, ga, aOff, hidden, gb,
                        bOff, hidden, 0f, gc, cOff, inter));
                out.append(String.format("groupedGemm %-14s %d x [%d x %d x %d] f32: %8.3f ms  %7.1f TFLOP/s%n", mode,
                        experts, tokens, inter, hidden, ms, 2.0 * experts * tokens * inter * hidden / ms / 1e9));
            }

            int b = 4, t = 2048, hq = 16, hkv = 4, d = 64;
            int nq = b * t * hq * d, nkv = b * t * hkv * d;
            Tensor q = rand(gpu, r, nq), kk = rand(gpu, r, nkv), v = rand(gpu, r, nkv), dout = rand(gpu, r, nq);
            Tensor o = gpu.zeros(DType.F32, nq), lse = gpu.zeros(DType.F32, b * hq * t);
            Tensor dq = gpu.zeros(DType.F32, nq), dk = gpu.zeros(DType.F32, nkv), dv = gpu.zeros(DType.F32, nkv);
            float scale = 0.125f;
            double pairs = (double) b * hq * t * (t + 1) / 2;
            float fwd = medianMillis(gpu, () -> gpu.attentionForward(q, kk, v, b, t, hq, hkv, d, scale, o, lse));
            out.append(String.format("attention fwd B=%d T=%d Hq=%d Hkv=%d D=%d: %8.3f ms  %7.2f TFLOP/s (4*D flop per"
                    + " causal pair)%n", b, t, hq, hkv, d, fwd, pairs * 4 * d / fwd / 1e9));
            float bwd = medianMillis(gpu, () -> gpu.attentionBackward(dout, q, kk, v, o, lse, b, t, hq, hkv, d, scale, dq, dk,
                    dv));
            out.append(String.format("attention bwd B=%d T=%d Hq=%d Hkv=%d D=%d: %8.3f ms  %7.2f TFLOP/s (10*D flop per"
                    + " causal pair)%n", b, t, hq, hkv, d, bwd, pairs * 10 * d / bwd / 1e9));

            int rows = 8192;
            Tensor x = rand(gpu, r, rows * hidden), w = rand(gpu, r, hidden), y = gpu.zeros(DType.F32, rows * hidden);
            Tensor rs = gpu.zeros(DType.F32, rows);
            float rms = medianMillis(gpu, () -> gpu.rmsNormForward(x, w, 1e-6f, rows, hidden, y, rs));
            out.append(String.format("rmsNorm fwd %d x %d: %8.3f ms  %7.1f GB/s%n", rows, hidden, rms,
                    2.0 * 4 * rows * hidden / rms / 1e6));
            Tensor big = rand(gpu, r, 64 << 20), big2 = gpu.zeros(DType.F32, 64 << 20);
            float cp = medianMillis(gpu, () -> gpu.copy(big, 0, big2, 0, 64 << 20));
            out.append(String.format("device copy 256 MiB: %8.3f ms  %7.1f GB/s (read + write)%n", cp,
                    2.0 * 4 * (64 << 20) / cp / 1e6));
            out.append("memory: ").append(gpu.memoryStats()).append('\n');
        }
        out.append("after scope: ").append(gpu.memoryStats()).append('\n');
        System.out.println(out);
    }

    /**
     * Attention at B=4, T=2048, Hq=16, Hkv=4, D=64: the flash kernels against the batched-GEMM path (BF16 and TF32
     * products), device time from CUDA events, median of 15 after 3 warm-ups; run with
     * {@code -Dsparkmoe.cuda.attnBench=true}. Also prints the max difference of the GEMM path's outputs from the flash
     * kernels' (over the max magnitude).
     */
    @Test
    void attentionTimings() {
        assumeTrue(Boolean.getBoolean("sparkmoe.cuda.attnBench"), "run with -Dsparkmoe.cuda.attnBench=true");
        CudaBackend gpu = GpuTestSupport.backend();
        CudaBackend.AttentionMode mode0 = gpu.attentionMode();
        CudaBackend.GemmPrecision prec0 = gpu.gemmPrecision();
        Random r = new Random(7);
        StringBuilder out = new StringBuilder("\n=== attention timings on " + gpu.deviceName() + " ===\n");
        int b = 4, t = 2048, hq = 16, hkv = 4, d = 64;
        int nq = b * t * hq * d, nkv = b * t * hkv * d;
        float scale = 0.125f;
        double pairs = (double) b * hq * t * (t + 1) / 2;
        try (var scope = gpu.openScope()) {
            Tensor q = rand(gpu, r, nq), kk = rand(gpu, r, nkv), v = rand(gpu, r, nkv), dout = rand(gpu, r, nq);
            Object[][] runs = {{CudaBackend.AttentionMode.FLASH, CudaBackend.GemmPrecision.BF16},
                {CudaBackend.AttentionMode.GEMM, CudaBackend.GemmPrecision.BF16},
                {CudaBackend.AttentionMode.GEMM, CudaBackend.GemmPrecision.TF32}};
            float[][] ref = null;
            for (Object[] run : runs) {
                gpu.setAttentionMode((CudaBackend.AttentionMode) run[0]);
                gpu.setGemmPrecision((CudaBackend.GemmPrecision) run[1]);
                Tensor o = gpu.zeros(DType.F32, nq), lse = gpu.zeros(DType.F32, b * hq * t);
                Tensor dq = gpu.zeros(DType.F32, nq), dk = gpu.zeros(DType.F32, nkv), dv = gpu.zeros(DType.F32, nkv);
                gpu.resetPeakMemory();
                float fwd = medianMillis(gpu, () -> gpu.attentionForward(q, kk, v, b, t, hq, hkv, d, scale, o, lse), 3, 15);
                float bwd = medianMillis(gpu, () -> gpu.attentionBackward(dout, q, kk, v, o, lse, b, t, hq, hkv, d, scale,
                        dq, dk, dv), 3, 15);
                out.append(String.format("attention %-5s %-4s B=%d T=%d Hq=%d Hkv=%d D=%d: fwd %8.3f ms (%6.1f TFLOP/s"
                        + " causal)  bwd %8.3f ms (%6.1f TFLOP/s causal)  peak %s%n", run[0], run[1], b, t, hq, hkv, d,
                        fwd, pairs * 4 * d / fwd / 1e9, bwd, pairs * 10 * d / bwd / 1e9, gpu.memoryStats()));
                float[][] got = {gpu.download(o).floats(), gpu.download(lse).floats(), gpu.download(dq).floats(),
                    gpu.download(dk).floats(), gpu.download(dv).floats()};
                if (ref == null) {
                    ref = got;
                } else {
                    out.append("  max |diff| / max |flash| out, lse, dq, dk, dv:");
                    for (int i = 0; i < got.length; i++) {
                        double worst = 0;
                        for (int j = 0; j < got[i].length; j++) {
                            worst = Math.max(worst, Math.abs((double) got[i][j] - ref[i][j]));
                        }
                        out.append(String.format(" %.2e", worst / Math.max(1e-30, GpuTestSupport.maxAbs(ref[i]))));
                    }
                    out.append('\n');
                }
            }
        } finally {
            gpu.setAttentionMode(mode0);
            gpu.setGemmPrecision(prec0);
        }
        System.out.println(out);
    }
}
