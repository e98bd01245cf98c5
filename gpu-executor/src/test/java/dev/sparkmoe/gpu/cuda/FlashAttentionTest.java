package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

import java.util.Random;

import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.maxAbs;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The tensor-core flash-attention kernels ({@link CudaBackend.AttentionMode#FLASH}, {@code flash_attention.cu})
 * against the f32 {@link CpuBackend} twin: forward (out, lse) and backward (dq, dk, dv) on N(0, 1) inputs (the scale
 * of q and k after RMSNorm), for head dims 64 and 128, sequence lengths that are not multiples of the tiles (1, 37,
 * 129, 200, 300) and ones that are (64, 128), grouped (Hq / Hkv = 2, 3, 4) and ungrouped (Hq = Hkv) heads, and the
 * benchmark shape B=4, T=2048, Hq=16, Hkv=4, D=64.
 *
 * <p>Tolerance: the kernels round q, k, v, dO, P and dS to bf16 (8 significant bits, 2^-9 relative) as MMA operands
 * and accumulate in f32, so each tensor is held to max |gpu - cpu| <= 2e-2 * max(max |cpu|, 1e-2) (the floor only
 * matters for T = 1, where dq and dk are 0 in exact arithmetic). A numpy emulation of the same rounding points gave
 * 2e-3 to 7e-3 at these shapes. Every output must be finite (the GPU outputs are poisoned with NaN first, so an
 * unwritten element fails too). Skipped without a GPU, or on one older than sm_80.
 *
 * <p>Every FLASH case runs with both {@link CudaBackend.FlashKernels} sets: V2_W8, the kernels that run, must give
 * V1's outputs bit for bit (same products, rounding points and accumulation orders), and V1 is the set that
 * {@code gpu-executor/scripts/flash_attention_emulator.py} transliterates lane by lane.
 */
class FlashAttentionTest {
    static final double TOL = 2e-2;
    static final double FLOOR = 1e-2;

    private final CpuBackend cpu = new CpuBackend();
    private CudaBackend gpu;
    private CudaBackend.AttentionMode mode0;
    private CudaBackend.GemmPrecision prec0;
    private CudaBackend.FlashKernels kernels0;

    @BeforeEach
    void setUp() {
        gpu = GpuTestSupport.backend();
        mode0 = gpu.attentionMode();
        prec0 = gpu.gemmPrecision();
        kernels0 = gpu.flashKernels();
        gpu.setAttentionMode(CudaBackend.AttentionMode.FLASH);
        assumeTrue(gpu.effectiveAttentionMode(64) == CudaBackend.AttentionMode.FLASH,
                () -> "flash attention needs sm_80 or newer, the device is " + gpu.arch());
    }

    @AfterEach
    void tearDown() {
        if (gpu != null) {
            gpu.setAttentionMode(mode0);
            gpu.setGemmPrecision(prec0);
            gpu.setFlashKernels(kernels0);
        }
    }

    private Tensor up(float[] a) {
        return gpu.upload(host(a, a.length));
    }

    private Tensor poisoned(int n) {
        Tensor t = gpu.zeros(DType.F32, n);
        gpu.fill(t, Float.NaN);
        return t;
    }

    private float[] down(Tensor t) {
        return gpu.download(t).floats();
    }

    static final CudaBackend.FlashKernels[] KERNELS = CudaBackend.FlashKernels.values();

    /**
     * out, lse, dq, dk, dv of one shape: {cpu[5], gpu[5] per {@link #KERNELS} entry} (the same inputs for every
     * kernel set).
     */
    private float[][][] run(long seed, int b, int t, int hq, int hkv, int d) {
        Random r = new Random(seed);
        float scale = (float) (1 / Math.sqrt(d));
        int nq = b * t * hq * d, nkv = b * t * hkv * d;
        float[] q = rnd(r, nq, 1), k = rnd(r, nkv, 1), v = rnd(r, nkv, 1), dout = rnd(r, nq, 1);
        float[][][] all = new float[1 + KERNELS.length][][];
        all[0] = cpuRun(q, k, v, dout, b, t, hq, hkv, d, scale);
        CudaBackend.FlashKernels k0 = gpu.flashKernels();
        try {
            for (int i = 0; i < KERNELS.length; i++) {
                gpu.setFlashKernels(KERNELS[i]);
                all[1 + i] = gpuRun(q, k, v, dout, b, t, hq, hkv, d, scale);
            }
        } finally {
            gpu.setFlashKernels(k0);
        }
        return all;
    }

    private float[][] cpuRun(float[] q, float[] k, float[] v, float[] dout, int b, int t, int hq, int hkv, int d,
                             float scale) {
        int nq = b * t * hq * d, nkv = b * t * hkv * d, nl = b * hq * t;
        Tensor co = Tensor.zeros(DType.F32, nq), cl = Tensor.zeros(DType.F32, nl);
        cpu.attentionForward(host(q, nq), host(k, nkv), host(v, nkv), b, t, hq, hkv, d, scale, co, cl);
        Tensor cdq = Tensor.zeros(DType.F32, nq), cdk = Tensor.zeros(DType.F32, nkv), cdv = Tensor.zeros(DType.F32, nkv);
        cpu.attentionBackward(host(dout, nq), host(q, nq), host(k, nkv), host(v, nkv), co, cl, b, t, hq, hkv, d, scale,
                cdq, cdk, cdv);
        return new float[][] {co.floats(), cl.floats(), cdq.floats(), cdk.floats(), cdv.floats()};
    }

    private float[][] gpuRun(float[] q, float[] k, float[] v, float[] dout, int b, int t, int hq, int hkv, int d,
                             float scale) {
        int nq = b * t * hq * d, nl = b * hq * t;
        try (var scope = gpu.openScope()) {
            Tensor gq = up(q), gk = up(k), gv = up(v), gdout = up(dout);
            Tensor go = poisoned(nq), gl = poisoned(nl);
            gpu.attentionForward(gq, gk, gv, b, t, hq, hkv, d, scale, go, gl);
            int nkv = k.length;
            Tensor gdq = poisoned(nq), gdk = poisoned(nkv), gdv = poisoned(nkv);
            gpu.attentionBackward(gdout, gq, gk, gv, go, gl, b, t, hq, hkv, d, scale, gdq, gdk, gdv);
            return new float[][] {down(go), down(gl), down(gdq), down(gdk), down(gdv)};
        }
    }

    private static final String[] NAMES = {"out", "lse", "dq", "dk", "dv"};

    /**
     * Checks every kernel set's outputs of {@link #run} (finite, within the tolerance, and equal to V1's bit for bit)
     * and returns log lines of the errors.
     */
    private String check(int b, int t, int hq, int hkv, int d, float[][][] rg) {
        StringBuilder out = new StringBuilder();
        for (int kk = 0; kk < KERNELS.length; kk++) {
            out.append(check(b, t, hq, hkv, d, KERNELS[kk], rg[0], rg[1 + kk])).append('\n');
            for (int i = 0; i < NAMES.length; i++) {
                assertArrayEquals(rg[1][i], rg[1 + kk][i], KERNELS[kk] + " " + NAMES[i] + " differs from "
                        + KERNELS[0] + "'s bits at B=" + b + " T=" + t + " Hq=" + hq + " Hkv=" + hkv + " D=" + d);
            }
        }
        return out.toString();
    }

    private String check(int b, int t, int hq, int hkv, int d, CudaBackend.FlashKernels kernels, float[][] refs,
                         float[][] gots) {
        String what = kernels + " B=" + b + " T=" + t + " Hq=" + hq + " Hkv=" + hkv + " D=" + d;
        StringBuilder line = new StringBuilder(String.format("%-38s", what));
        for (int i = 0; i < NAMES.length; i++) {
            String name = NAMES[i];
            float[] ref = refs[i], got = gots[i];
            assertEquals(ref.length, got.length, name + " length, " + what);
            double scale = Math.max(maxAbs(ref), FLOOR), worst = 0;
            int at = -1;
            for (int j = 0; j < ref.length; j++) {
                if (!Float.isFinite(got[j])) {
                    throw new AssertionError("flash " + what + ": " + name + "[" + j + "] = " + got[j] + " (cpu "
                            + ref[j] + ")");
                }
                double e = Math.abs((double) ref[j] - got[j]);
                if (e > worst) {
                    worst = e;
                    at = j;
                }
            }
            double rel = worst / scale;
            line.append(String.format(" %s %.2e", name, rel));
            if (rel > TOL) {
                throw new AssertionError("flash " + what + ": " + name + " max error " + worst + " at " + at + " (cpu "
                        + ref[at] + ", gpu " + got[at] + ") is " + rel + " of " + scale + ", over " + TOL + " ("
                        + line + ")");
            }
        }
        return line.toString();
    }

    @Test
    void forwardBackwardAgainstCpu() {
        int[][] shapes = {
            // B, T, Hq, Hkv, D
            {2, 1, 4, 2, 64}, {2, 37, 4, 2, 64}, {2, 200, 4, 2, 64}, {1, 64, 4, 2, 64}, {1, 128, 3, 1, 64},
            {2, 37, 4, 4, 64}, {2, 200, 4, 4, 64}, {1, 300, 8, 2, 64}, {1, 129, 4, 1, 64},
            {2, 1, 4, 2, 128}, {2, 37, 4, 2, 128}, {2, 200, 4, 2, 128}, {1, 64, 2, 1, 128}, {2, 200, 4, 4, 128},
            {1, 300, 8, 2, 128},
        };
        StringBuilder log = new StringBuilder("\n=== flash attention max error / max(max |cpu|, " + FLOOR + ") ===\n");
        try {
            long seed = 11;
            for (int[] s : shapes) {
                float[][][] rg = run(seed++, s[0], s[1], s[2], s[3], s[4]);
                log.append(check(s[0], s[1], s[2], s[3], s[4], rg));
            }
        } finally {
            System.out.println(log);
        }
    }

    @Test
    void benchmarkShapeAgainstCpu() {
        int b = 4, t = 2048, hq = 16, hkv = 4, d = 64;
        float[][][] rg = run(2048, b, t, hq, hkv, d);
        System.out.println("\n=== flash attention at the benchmark shape ===\n" + check(b, t, hq, hkv, d, rg));
    }

    /** Each dk/dv and dq element is owned by one CTA (no atomics): two backward passes agree bit for bit. */
    @Test
    void backwardIsDeterministic() {
        int b = 2, t = 300, hq = 8, hkv = 2, d = 64;
        Random r = new Random(5);
        float scale = 0.125f;
        int nq = b * t * hq * d, nkv = b * t * hkv * d, nl = b * hq * t;
        try (var scope = gpu.openScope()) {
            Tensor q = up(rnd(r, nq, 1)), k = up(rnd(r, nkv, 1)), v = up(rnd(r, nkv, 1)), dout = up(rnd(r, nq, 1));
            Tensor o = poisoned(nq), l = poisoned(nl);
            gpu.attentionForward(q, k, v, b, t, hq, hkv, d, scale, o, l);
            CudaBackend.FlashKernels k0 = gpu.flashKernels();
            try {
                for (CudaBackend.FlashKernels kern : KERNELS) {
                    gpu.setFlashKernels(kern);
                    backwardTwice(kern, dout, q, k, v, o, l, b, t, hq, hkv, d, scale);
                }
            } finally {
                gpu.setFlashKernels(k0);
            }
        }
    }

    private void backwardTwice(CudaBackend.FlashKernels kern, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o,
                               Tensor l, int b, int t, int hq, int hkv, int d, float scale) {
        int nq = b * t * hq * d, nkv = b * t * hkv * d;
        float[][] first = null;
        for (int rep = 0; rep < 2; rep++) {
            Tensor dq = poisoned(nq), dk = poisoned(nkv), dv = poisoned(nkv);
            gpu.attentionBackward(dout, q, k, v, o, l, b, t, hq, hkv, d, scale, dq, dk, dv);
            float[][] got = {down(dq), down(dk), down(dv)};
            if (first == null) {
                first = got;
            } else {
                for (int i = 0; i < got.length; i++) {
                    assertArrayEquals(first[i], got[i], "flash " + kern + " backward " + NAMES[2 + i]
                            + " differs between runs");
                }
            }
        }
    }

    /** AUTO picks FLASH only with BF16 GEMMs and a supported head dim; FLASH falls back to GEMM elsewhere. */
    @Test
    void modeResolution() {
        gpu.setAttentionMode(CudaBackend.AttentionMode.AUTO);
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
        assertEquals(CudaBackend.AttentionMode.FLASH, gpu.effectiveAttentionMode(64));
        assertEquals(CudaBackend.AttentionMode.FLASH, gpu.effectiveAttentionMode(128));
        assertEquals(CudaBackend.AttentionMode.GEMM, gpu.effectiveAttentionMode(100));
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.F32);
        assertEquals(CudaBackend.AttentionMode.GEMM, gpu.effectiveAttentionMode(64));
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.TF32);
        assertEquals(CudaBackend.AttentionMode.GEMM, gpu.effectiveAttentionMode(64));
        gpu.setAttentionMode(CudaBackend.AttentionMode.FLASH);
        assertEquals(CudaBackend.AttentionMode.FLASH, gpu.effectiveAttentionMode(64));
        assertEquals(CudaBackend.AttentionMode.GEMM, gpu.effectiveAttentionMode(32));
        gpu.setAttentionMode(CudaBackend.AttentionMode.GEMM);
        assertEquals(CudaBackend.AttentionMode.GEMM, gpu.effectiveAttentionMode(64));
    }
}
