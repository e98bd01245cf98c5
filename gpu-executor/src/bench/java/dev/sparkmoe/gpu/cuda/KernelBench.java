package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelBenchProblems.model;
import static dev.sparkmoe.gpu.cuda.KernelBenchProblems.c2Rows;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.cuda.KernelBenchProblems.Problem;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Random;

/**
 * Kernel timings of the CUDA backend on one GPU (device time between CUDA events, medians after warm-ups, random data),
 * printed as text; in this package for the backend's timing hooks. Run on a GPU host from the bundle:
 * {@code spark-moe-gpu run dev.sparkmoe.gpu.cuda.KernelBench [ops|attention|grouped|all] [--variants D1;D2;...]}
 * ({@code gpu-host-run.sh kernels}).
 * <ul>
 *   <li>{@code ops}: dense GEMMs in each {@link CudaBackend.GemmPrecision} (tokens 8192, hidden 1024 shapes and
 *       8192^3), the cuBLAS loop of a grouped GEMM, attention forward and backward, RMSNorm, a 256 MiB device copy,
 *       the optimizer pass and the sum of squares on 64M elements with an F32 and with a BF16 gradient;</li>
 *   <li>{@code attention}: at B=4, T=2048, Hq=16, Hkv=4, D=64: the batched-GEMM path (BF16 and TF32 products) and each
 *       flash kernel set ({@link CudaBackend.FlashKernels}) with its backward in parts (bf16 copies and Di, dk/dv,
 *       dq), each path's largest difference from the GEMM path's outputs, and the memory peak;</li>
 *   <li>{@code grouped}: on the six expert GEMM shapes of one Qwen3-30B-A3B MoE layer (C2: 128 experts, 65,536
 *       routed rows, ragged 34 to 1,139 per expert, H = 2048, I = 768), each grouped GEMM kernel the device has
 *       (the sm90 wgmma kernel on compute capability 9.0, the mma.sync kernel; operand casts included, and alone),
 *       the casts alone and the cuBLAS loop, each kernel's result checked against the default kernel's (within 1e-3
 *       of the largest value: the kernels sum in different orders); with {@code --variants}, the default kernel
 *       compiled with each {@code sparkmoe.cuda.defines} set too (e.g. {@code GB_BN=256;GS_STAGES=4}), on a backend
 *       of its own, after checking its result against the default kernel's (within 1e-6 of the largest value, plus
 *       1e-5).</li>
 * </ul>
 * Exit status 1 where a kernel's or a variant's result differs from the default's.
 */
public final class KernelBench {
    private final CudaBackend gpu;
    private final StringBuilder out = new StringBuilder();

    private KernelBench(CudaBackend gpu) {
        this.gpu = gpu;
    }

    public static void main(String[] args) {
        String what = "all";
        List<String> variants = new ArrayList<>();
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("--variants") && i + 1 < args.length) {
                for (String v : args[++i].split(";")) {
                    if (!v.isBlank()) {
                        variants.add(v.trim());
                    }
                }
            } else if (!args[i].startsWith("--")) {
                what = args[i];
            } else {
                throw new IllegalArgumentException("KernelBench: unknown option '" + args[i] + "'; usage: KernelBench "
                        + "[ops|attention|grouped|all] [--variants DEFINES;DEFINES;...]");
            }
        }
        if (!List.of("ops", "attention", "grouped", "all").contains(what)) {
            throw new IllegalArgumentException("KernelBench: unknown benchmark '" + what
                    + "'; choose ops, attention, grouped or all");
        }
        boolean ok = true;
        try (CudaBackend gpu = new CudaBackend()) {
            KernelBench b = new KernelBench(gpu);
            b.out.append(String.format(Locale.ROOT, "=== kernel timings on %s (%s) ===%n", gpu.deviceName(),
                    gpu.arch()));
            if (what.equals("ops") || what.equals("all")) {
                b.ops();
            }
            if (what.equals("attention") || what.equals("all")) {
                b.attention();
            }
            if (what.equals("grouped") || what.equals("all")) {
                ok = b.grouped(variants);
            }
            System.out.print(b.out);
        }
        System.exit(ok ? 0 : 1);
    }

    /** Median device time (CUDA events) of {@code reps} runs of {@code body} after {@code warm} untimed ones. */
    static float medianMillis(CudaBackend gpu, Runnable body, int warm, int reps) {
        for (int i = 0; i < warm; i++) {
            gpu.timeMillis(body);
        }
        float[] t = new float[reps];
        for (int i = 0; i < reps; i++) {
            t[i] = gpu.timeMillis(body);
        }
        Arrays.sort(t);
        return reps % 2 == 1 ? t[reps / 2] : (t[reps / 2 - 1] + t[reps / 2]) / 2;
    }

    private Tensor gaussian(Random r, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) r.nextGaussian();
        }
        return gpu.upload(Tensor.of(a, n));
    }

    /** Cheap uniform values in [-1, 1) (xorshift): large operands, where nextGaussian takes seconds. */
    private static float[] fastRnd(int n, long seed) {
        float[] f = new float[n];
        long x = seed * 0x9E3779B97F4A7C15L + 1;
        for (int i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >>> 7;
            x ^= x << 17;
            f[i] = (x >>> 40) * 0x1p-23f - 1f;
        }
        return f;
    }

    private static double maxAbs(float[] a) {
        double m = 0;
        for (float v : a) {
            m = Math.max(m, Math.abs(v));
        }
        return m;
    }

    // ------------------------------------------------------------------ ops

    private void ops() {
        Random r = new Random(1);
        CudaBackend.GemmPrecision prec0 = gpu.gemmPrecision();
        CudaBackend.GroupedMode mode0 = gpu.groupedMode();
        try (var scope = gpu.openScope()) {
            int[][] gemms = {{8192, 1536, 1024}, {8192, 1024, 1024}, {8192, 768, 1024}, {8192, 8192, 8192}};
            for (CudaBackend.GemmPrecision p : CudaBackend.GemmPrecision.values()) {
                gpu.setGemmPrecision(p);
                for (int[] s : gemms) {
                    int m = s[0], n = s[1], k = s[2];
                    Tensor a = gaussian(r, m * k);
                    Tensor b = gaussian(r, n * k);
                    Tensor c = gpu.zeros(DType.F32, m * n);
                    float ms = medianMillis(gpu, () -> gpu.gemm(false, true, m, n, k, 1f, a, 0, k, b, 0, k, 0f, c, 0,
                            n), 2, 10);
                    out.append(String.format(Locale.ROOT, "gemm %-5s m=%5d n=%5d k=%5d (A B^T): %8.3f ms  %7.1f "
                            + "TFLOP/s%n", p, m, n, k, ms, 2.0 * m * n * k / ms / 1e9));
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
            Tensor ga = gaussian(r, experts * tokens * hidden);
            Tensor gb = gaussian(r, experts * inter * hidden);
            Tensor gc = gpu.zeros(DType.F32, experts * tokens * inter);
            gpu.setGroupedMode(CudaBackend.GroupedMode.LOOP);
            float loop = medianMillis(gpu, () -> gpu.groupedGemm(false, true, experts, m, n, k, 1f, ga, aOff, hidden,
                    gb, bOff, hidden, 0f, gc, cOff, inter), 2, 10);
            out.append(String.format(Locale.ROOT, "groupedGemm LOOP %d x [%d x %d x %d] f32: %8.3f ms  %7.1f "
                    + "TFLOP/s%n", experts, tokens, inter, hidden, loop, 2.0 * experts * tokens * inter * hidden
                    / loop / 1e9));

            int b = 4, t = 2048, hq = 16, hkv = 4, d = 64;
            int nq = b * t * hq * d, nkv = b * t * hkv * d;
            Tensor q = gaussian(r, nq), kk = gaussian(r, nkv), v = gaussian(r, nkv), dout = gaussian(r, nq);
            Tensor o = gpu.zeros(DType.F32, nq), lse = gpu.zeros(DType.F32, b * hq * t);
            Tensor dq = gpu.zeros(DType.F32, nq), dk = gpu.zeros(DType.F32, nkv), dv = gpu.zeros(DType.F32, nkv);
            float scale = 0.125f;
            double pairs = (double) b * hq * t * (t + 1) / 2;
            float fwd = medianMillis(gpu, () -> gpu.attentionForward(q, kk, v, b, t, hq, hkv, d, scale, o, lse), 2,
                    10);
            out.append(String.format(Locale.ROOT, "attention fwd (%s) B=%d T=%d Hq=%d Hkv=%d D=%d: %8.3f ms  %7.2f "
                    + "TFLOP/s (4*D flop per causal pair)%n", gpu.effectiveAttentionMode(d), b, t, hq, hkv, d, fwd,
                    pairs * 4 * d / fwd / 1e9));
            float bwd = medianMillis(gpu, () -> gpu.attentionBackward(dout, q, kk, v, o, lse, b, t, hq, hkv, d, scale,
                    dq, dk, dv), 2, 10);
            out.append(String.format(Locale.ROOT, "attention bwd (%s) B=%d T=%d Hq=%d Hkv=%d D=%d: %8.3f ms  %7.2f "
                    + "TFLOP/s (10*D flop per causal pair)%n", gpu.effectiveAttentionMode(d), b, t, hq, hkv, d, bwd,
                    pairs * 10 * d / bwd / 1e9));

            int rows = 8192;
            Tensor x = gaussian(r, rows * hidden), w = gaussian(r, hidden);
            Tensor y = gpu.zeros(DType.F32, rows * hidden), rs = gpu.zeros(DType.F32, rows);
            float rms = medianMillis(gpu, () -> gpu.rmsNormForward(x, w, 1e-6f, rows, hidden, y, rs), 2, 10);
            out.append(String.format(Locale.ROOT, "rmsNorm fwd %d x %d: %8.3f ms  %7.1f GB/s%n", rows, hidden, rms,
                    2.0 * 4 * rows * hidden / rms / 1e6));
            Tensor big = gaussian(r, 64 << 20), big2 = gpu.zeros(DType.F32, 64 << 20);
            float cp = medianMillis(gpu, () -> gpu.copy(big, 0, big2, 0, 64 << 20), 2, 10);
            out.append(String.format(Locale.ROOT, "device copy 256 MiB: %8.3f ms  %7.1f GB/s (read + write)%n", cp,
                    2.0 * 4 * (64 << 20) / cp / 1e6));
            gpu.release(big);
            gpu.release(big2);
            optimizerPass();
            out.append("memory: ").append(gpu.memoryStats()).append('\n');
        } finally {
            gpu.setGemmPrecision(prec0);
            gpu.setGroupedMode(mode0);
        }
    }

    /**
     * The optimizer pass as the trainer takes it (adamwStep with a bf16 compute copy and the sum of squares measured
     * on the way) on one tensor of 64M elements, its gradient F32 or BF16 (FSDP2's gradient in the param dtype: 2 of
     * the pass's 30 bytes an element fewer), and the sum of squares of that gradient alone (clipping's first pass).
     */
    private void optimizerPass() {
        int n = 64 << 20;
        Tensor p = gpu.upload(Tensor.of(fastRnd(n, 11), n));
        Tensor m = gpu.zeros(DType.F32, n), v = gpu.zeros(DType.F32, n), copy = gpu.empty(DType.BF16, n);
        float[] gv = fastRnd(n, 12);
        for (int i = 0; i < n; i++) {
            gv[i] *= 1e-3f;
        }
        Tensor g32 = gpu.upload(Tensor.of(gv, n));
        Tensor g16 = gpu.upload(Tensor.ofFloating(DType.BF16, gv.clone(), n));
        for (Tensor g : new Tensor[] {g32, g16}) {
            List<dev.sparkmoe.core.backend.Backend.AdamWSlot> slot =
                    List.of(new dev.sparkmoe.core.backend.Backend.AdamWSlot(p, g, m, v, copy));
            double[] sq = new double[1];
            float ms = medianMillis(gpu, () -> gpu.adamwStep(slot, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 10, 1f, sq), 2,
                    10);
            int bytes = 3 * 8 + CudaMemory.elementBytes(g.dtype()) + 2;
            out.append(String.format(Locale.ROOT, "adamwStep %dM elements, %s gradient, bf16 copy, squares: %8.3f ms"
                    + "  %7.1f GB/s (%d bytes an element)%n", n >> 20, g.dtype(), ms, (double) bytes * n / ms / 1e6,
                    bytes));
            float sms = medianMillis(gpu, () -> gpu.sumSquares(List.of(g)), 2, 10);
            out.append(String.format(Locale.ROOT, "sumSquares %dM elements, %s: %8.3f ms  %7.1f GB/s%n", n >> 20,
                    g.dtype(), sms, (double) CudaMemory.elementBytes(g.dtype()) * n / sms / 1e6));
        }
        for (Tensor t : new Tensor[] {p, m, v, copy, g32, g16}) {
            gpu.release(t);
        }
    }

    // ------------------------------------------------------------------ attention

    private void attention() {
        Random r = new Random(7);
        int b = 4, t = 2048, hq = 16, hkv = 4, d = 64;
        int nq = b * t * hq * d, nkv = b * t * hkv * d;
        float scale = 0.125f;
        double pairs = (double) b * hq * t * (t + 1) / 2;
        CudaBackend.AttentionMode mode0 = gpu.attentionMode();
        CudaBackend.GemmPrecision prec0 = gpu.gemmPrecision();
        CudaBackend.FlashKernels kernels0 = gpu.flashKernels();
        try (var scope = gpu.openScope()) {
            Tensor q = gaussian(r, nq), kk = gaussian(r, nkv), v = gaussian(r, nkv), dout = gaussian(r, nq);
            float[][] ref = null;
            List<Object[]> runs = new ArrayList<>();
            runs.add(new Object[] {CudaBackend.AttentionMode.GEMM, CudaBackend.GemmPrecision.BF16, null});
            runs.add(new Object[] {CudaBackend.AttentionMode.GEMM, CudaBackend.GemmPrecision.TF32, null});
            for (CudaBackend.FlashKernels k : CudaBackend.FlashKernels.values()) {
                runs.add(new Object[] {CudaBackend.AttentionMode.FLASH, CudaBackend.GemmPrecision.BF16, k});
            }
            for (Object[] run : runs) {
                CudaBackend.AttentionMode m = (CudaBackend.AttentionMode) run[0];
                CudaBackend.FlashKernels kernels = (CudaBackend.FlashKernels) run[2];
                gpu.setAttentionMode(m);
                gpu.setGemmPrecision((CudaBackend.GemmPrecision) run[1]);
                gpu.setFlashKernels(kernels == null ? kernels0 : kernels);
                String label = m + " " + (kernels == null ? run[1] : kernels);
                Tensor o = gpu.zeros(DType.F32, nq), lse = gpu.zeros(DType.F32, b * hq * t);
                Tensor dq = gpu.zeros(DType.F32, nq), dk = gpu.zeros(DType.F32, nkv), dv = gpu.zeros(DType.F32, nkv);
                gpu.resetPeakMemory();
                float fwd = medianMillis(gpu, () -> gpu.attentionForward(q, kk, v, b, t, hq, hkv, d, scale, o, lse),
                        3, 15);
                float bwd = medianMillis(gpu, () -> gpu.attentionBackward(dout, q, kk, v, o, lse, b, t, hq, hkv, d,
                        scale, dq, dk, dv), 3, 15);
                out.append(String.format(Locale.ROOT, "attention %-12s B=%d T=%d Hq=%d Hkv=%d D=%d: fwd %8.3f ms "
                        + "(%6.1f TFLOP/s causal)  bwd %8.3f ms (%6.1f TFLOP/s causal)  peak %.0f MiB%n", label, b, t,
                        hq, hkv, d, fwd, pairs * 4 * d / fwd / 1e9, bwd, pairs * 10 * d / bwd / 1e9,
                        gpu.memoryStats().peakBytesInUse() / 1048576.0));
                if (m == CudaBackend.AttentionMode.FLASH) {
                    // the backward in parts: the copies and Di alone, then with dk/dv, then with dq (timing hook)
                    float[] part = new float[3];
                    int[] stages = {1, 3, 5};
                    try {
                        for (int p = 0; p < 3; p++) {
                            gpu.setFlashBackwardStages(stages[p]);
                            part[p] = medianMillis(gpu, () -> gpu.attentionBackward(dout, q, kk, v, o, lse, b, t, hq,
                                    hkv, d, scale, dq, dk, dv), 3, 15);
                        }
                    } finally {
                        gpu.setFlashBackwardStages(7);
                    }
                    out.append(String.format(Locale.ROOT, "  bwd parts: copies+Di %.3f ms, dk/dv %.3f ms, dq %.3f "
                            + "ms%n", part[0], part[1] - part[0], part[2] - part[0]));
                    // the timed stages above overwrote some outputs: run the whole backward again before comparing
                    gpu.attentionBackward(dout, q, kk, v, o, lse, b, t, hq, hkv, d, scale, dq, dk, dv);
                }
                float[][] got = {gpu.download(o).floats(), gpu.download(lse).floats(), gpu.download(dq).floats(),
                    gpu.download(dk).floats(), gpu.download(dv).floats()};
                if (ref == null) {
                    ref = got;
                } else {
                    out.append("  max |" + label + " - GEMM BF16| / max |GEMM BF16| out, lse, dq, dk, dv:");
                    for (int i = 0; i < got.length; i++) {
                        double worst = 0;
                        for (int j = 0; j < got[i].length; j++) {
                            worst = Math.max(worst, Math.abs((double) got[i][j] - ref[i][j]));
                        }
                        out.append(String.format(Locale.ROOT, " %.2e", worst / Math.max(1e-30, maxAbs(ref[i]))));
                    }
                    out.append('\n');
                }
                for (Tensor x : new Tensor[] {o, lse, dq, dk, dv}) {
                    gpu.release(x);
                }
            }
        } finally {
            gpu.setAttentionMode(mode0);
            gpu.setGemmPrecision(prec0);
            gpu.setFlashKernels(kernels0);
        }
    }

    // ------------------------------------------------------------------ grouped GEMM

    /** The largest |expected - actual| (NaN counts as infinitely far). */
    private static double maxDiff(float[] expected, float[] actual) {
        double worst = 0;
        for (int i = 0; i < expected.length; i++) {
            double d = Math.abs((double) expected[i] - actual[i]);
            worst = Double.isNaN(d) ? Double.POSITIVE_INFINITY : Math.max(worst, d);
        }
        return worst;
    }

    private boolean grouped(List<String> variants) {
        CudaBackend.GroupedMode savedMode = gpu.groupedMode();
        CudaBackend.GemmPrecision savedPrecision = gpu.gemmPrecision();
        String baseDefines = System.getProperty("sparkmoe.cuda.defines", "");
        CudaBackend[] vb = new CudaBackend[variants.size()];
        int[] rows = c2Rows(new Random(1));
        int hidden = 2048, inter = 768;
        Problem[] shapes = {model("NT", rows, 2 * inter, hidden), model("NT", rows, hidden, inter),
            model("NN", rows, inter, hidden), model("NN", rows, hidden, 2 * inter), model("TN", rows, 2 * inter, hidden),
            model("TN", rows, hidden, inter)};
        out.append("grouped GEMM, defines '" + baseDefines + "', " + rows.length + " experts, "
                + Arrays.stream(rows).sum() + " rows (" + Arrays.stream(rows).min().getAsInt() + " to "
                + Arrays.stream(rows).max().getAsInt() + " per expert), H " + hidden + ", I " + inter + "\n");
        List<GroupedGemm.Kernel> kernels = new ArrayList<>();
        if (gpu.groupedSm90Supported()) {
            kernels.add(GroupedGemm.Kernel.SM90);
        }
        kernels.add(GroupedGemm.Kernel.MMA_SYNC);
        List<String> labels = new ArrayList<>();
        for (GroupedGemm.Kernel kind : kernels) {
            labels.add("KERNEL " + kind + " (casts incl.)");
            labels.add("  " + kind + " kernel alone (difference)");
        }
        labels.add("  the bf16 casts alone");
        labels.add("LOOP   BF16 (cuBLAS per group)");
        double[] total = new double[labels.size()];
        double[][] vTotal = new double[variants.size()][2];
        List<String> failures = new ArrayList<>();
        try {
            for (Problem p : shapes) {
                float[] ha = fastRnd(p.aLen(), 11), hb = fastRnd(p.bLen(), 12), hc = fastRnd(p.cLen(), 13);
                float beta = p.tA() ? 1f : 0f;
                float[] reference = null;
                try (var scope = gpu.openScope()) {
                    Tensor a = gpu.upload(Tensor.of(ha, p.aLen()));
                    Tensor b = gpu.upload(Tensor.of(hb, p.bLen()));
                    Tensor c = gpu.upload(Tensor.of(hc.clone(), p.cLen()));
                    Tensor c0 = gpu.upload(Tensor.of(hc, p.cLen()));
                    Runnable call = () -> gpu.groupedGemm(p.tA(), p.tB(), p.groups(), p.m(), p.n(), p.k(), 1f, a, p.aOff(), p.lda(),
                            b, p.bOff(), p.ldb(), beta, c, p.cOff(), p.ldc());
                    Runnable cast = () -> gpu.groupedOperandCastOnly(p.tA(), p.tB(), p.groups(), p.m(), p.n(), p.k(), a,
                            p.aOff(), p.lda(), b, p.bOff(), p.ldb());
                    gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
                    gpu.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
                    double[] ms = new double[labels.size()];
                    double castMs = medianMillis(gpu, cast, 3, 11);
                    for (int i = 0; i < kernels.size(); i++) {
                        gpu.setGroupedKernel(kernels.get(i));
                        gpu.copy(c0, 0, c, 0, p.cLen());
                        call.run();
                        float[] got = gpu.download(c).floats();
                        if (reference == null) {
                            reference = got;
                        } else {
                            // the same bf16 products summed in another order: within 1e-3 of the largest value
                            double diff = maxDiff(reference, got), bound = 1e-3 * maxAbs(reference) + 1e-5;
                            if (!(diff <= bound)) {
                                String f = p.name() + ": kernel " + kernels.get(i) + " differs from " + kernels.get(0)
                                        + " by " + diff + " (bound " + bound + ")";
                                failures.add(f);
                                out.append("MISMATCH ").append(f).append('\n');
                            }
                        }
                        ms[2 * i] = medianMillis(gpu, call, 3, 20);
                        ms[2 * i + 1] = ms[2 * i] - castMs;
                    }
                    gpu.setGroupedKernel(GroupedGemm.Kernel.AUTO);
                    ms[labels.size() - 2] = castMs;
                    gpu.setGroupedMode(CudaBackend.GroupedMode.LOOP);
                    ms[labels.size() - 1] = medianMillis(gpu, call, 3, 11);
                    for (int i = 0; i < ms.length; i++) {
                        total[i] += ms[i];
                        out.append(String.format(Locale.ROOT, "%-30s %-38s beta=%.0f: %8.3f ms", p.name(),
                                labels.get(i), beta, ms[i]));
                        out.append(i == labels.size() - 2 ? String.format("%n")
                                : String.format(Locale.ROOT, "  %7.1f TFLOP/s%n", p.flops() / ms[i] / 1e9));
                    }
                } finally {
                    gpu.setGroupedMode(savedMode);
                    gpu.setGemmPrecision(savedPrecision);
                    gpu.setGroupedKernel(GroupedGemm.Kernel.AUTO);
                }
                for (int v = 0; v < vb.length; v++) {
                    System.setProperty("sparkmoe.cuda.defines", variants.get(v));
                    try {
                        if (vb[v] == null) {
                            vb[v] = new CudaBackend();
                        }
                        CudaBackend x = vb[v];
                        x.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
                        x.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
                        try (var scope = x.openScope()) {
                            Tensor a = x.upload(Tensor.of(ha, p.aLen()));
                            Tensor b = x.upload(Tensor.of(hb, p.bLen()));
                            Tensor c = x.upload(Tensor.of(hc.clone(), p.cLen()));
                            Runnable call = () -> x.groupedGemm(p.tA(), p.tB(), p.groups(), p.m(), p.n(), p.k(), 1f, a, p.aOff(),
                                    p.lda(), b, p.bOff(), p.ldb(), beta, c, p.cOff(), p.ldc());
                            call.run();
                            // the same products, rounded alike: within 1e-6 of the largest value (+ 1e-5)
                            double diff = maxDiff(reference, x.download(c).floats());
                            double bound = 1e-6 * maxAbs(reference) + 1e-5;
                            if (!(diff <= bound)) {
                                String f = p.name() + " with defines '" + variants.get(v) + "' differs from the default "
                                        + "kernel by " + diff + " (bound " + bound + ")";
                                failures.add(f);
                                out.append("MISMATCH ").append(f).append('\n');
                                continue;
                            }
                            double ms = medianMillis(x, call, 3, 11);
                            double castMs = medianMillis(x, () -> x.groupedOperandCastOnly(p.tA(), p.tB(), p.groups(),
                                    p.m(), p.n(), p.k(), a, p.aOff(), p.lda(), b, p.bOff(), p.ldb()), 3, 11);
                            vTotal[v][0] += ms;
                            vTotal[v][1] += ms - castMs;
                            out.append(String.format(Locale.ROOT, "%-30s bf16 [%s] beta=%.0f: %8.3f ms  %7.1f TFLOP/s "
                                    + "(kernel alone %7.3f ms, %7.1f TFLOP/s)%n", p.name(), variants.get(v), beta, ms,
                                    p.flops() / ms / 1e9, ms - castMs, p.flops() / (ms - castMs) / 1e9));
                        }
                    } finally {
                        System.setProperty("sparkmoe.cuda.defines", baseDefines);
                    }
                }
            }
        } finally {
            for (CudaBackend x : vb) {
                if (x != null) {
                    x.close();
                }
            }
        }
        for (int i = 0; i < total.length; i++) {
            out.append(String.format(Locale.ROOT, "six shapes, %-38s %8.3f ms%n", labels.get(i), total[i]));
        }
        for (int v = 0; v < vb.length; v++) {
            out.append(String.format(Locale.ROOT, "six shapes, bf16 [%s]: %8.3f ms (kernels alone %8.3f ms)%n",
                    variants.get(v), vTotal[v][0], vTotal[v][1]));
        }
        if (!failures.isEmpty()) {
            out.append("kernels or variants that differ from the default kernel: ").append(failures).append('\n');
        }
        return failures.isEmpty();
    }
}
