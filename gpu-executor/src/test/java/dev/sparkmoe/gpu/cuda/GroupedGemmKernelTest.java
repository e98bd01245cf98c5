package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.cuda.KernelBenchProblems.Problem;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.KernelBenchProblems.model;
import static dev.sparkmoe.gpu.cuda.KernelBenchProblems.modelRows;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.roundedToBf16;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@link CudaBackend.GroupedMode#KERNEL} (the one-launch bf16 tensor-core grouped GEMM: the operand casts plus
 * {@code grouped_gemm_bf16.cu}, mma.sync, and on compute capability 9.0 also {@code grouped_gemm_sm90.cu}, wgmma:
 * every case runs on each kernel the device has, {@link #kernels}) against {@link CpuBackend#groupedGemm} on random
 * data. Each case is checked twice:
 * <ul>
 *   <li>tight: against the CPU reference computed on the bf16-ROUNDED inputs ({@link DType#roundToBf16}, the same
 *       rounding as the kernel's {@code __float2bfloat16}): bf16 x bf16 products are exact in f32, so only the f32
 *       summation order differs: max |gpu - ref| <= 1e-4 * max |ref| + 1e-5. A wrong index, a missing or doubled
 *       K slice, a wrong transposition or a misplaced tile gives errors of the order of the values themselves;
 *   <li>loose: against the CPU reference on the f32 inputs (what the caller asked for): max |gpu - ref| <= 2e-2 *
 *       max |ref| + 1e-5 (bf16 keeps 8 significant bits: about 4e-3 relative per product).
 * </ul>
 * Elements outside every C_g (padding between groups, stride gaps) must be left untouched, NaN included, and with
 * beta == 0 the NaN that fills C must not leak into the result. Skipped where no GPU or CUDA library is present.
 * (Timings of these shapes: the bench source set's {@code KernelBench grouped}.)
 */
class GroupedGemmKernelTest {
    private static final double TIGHT = 1e-4;
    private static final double LOOSE = 2e-2;
    private static final double ABS = 1e-5;

    private final CpuBackend cpu = new CpuBackend();

    // ------------------------------------------------------------------ layouts

    /**
     * Each group's operands packed one after the other with gaps, the row strides a little wider than the widest
     * group. aligned: strides and offsets multiples of 4 (the kernel's float4 path, ragged edges included);
     * otherwise odd strides and odd offsets (the scalar path).
     */
    private static Problem packed(String name, boolean tA, boolean tB, int[] m, int[] n, int[] k, boolean aligned) {
        int groups = m.length;
        int[] aRows = new int[groups], aCols = new int[groups], bRows = new int[groups], bCols = new int[groups];
        for (int g = 0; g < groups; g++) {
            aRows[g] = tA ? k[g] : m[g];
            aCols[g] = tA ? m[g] : k[g];
            bRows[g] = tB ? n[g] : k[g];
            bCols[g] = tB ? k[g] : n[g];
        }
        int lda = stride(aCols, aligned);
        int ldb = stride(bCols, aligned);
        int ldc = stride(n, aligned);
        int[] aOff = new int[groups], bOff = new int[groups], cOff = new int[groups];
        int aLen = place(aRows, aCols, lda, aligned, aOff);
        int bLen = place(bRows, bCols, ldb, aligned, bOff);
        int cLen = place(m, n, ldc, aligned, cOff);
        return new Problem(name + (aligned ? " (aligned)" : " (odd offsets and strides)"), tA, tB, m, n, k, aOff, lda,
                aLen, bOff, ldb, bLen, cOff, ldc, cLen);
    }

    private static int stride(int[] cols, boolean aligned) {
        int w = Math.max(1, Arrays.stream(cols).max().orElse(1));
        return aligned ? (w + 3) / 4 * 4 + 4 : (w % 2 == 0 ? w + 3 : w + 2);
    }

    /** Offsets (into off) of rows x cols blocks with stride ld, with gaps; returns the buffer length. */
    private static int place(int[] rows, int[] cols, int ld, boolean aligned, int[] off) {
        int at = aligned ? 4 : 1;
        for (int g = 0; g < rows.length; g++) {
            if (aligned) {
                at = (at + 3) / 4 * 4;
            } else if (at % 2 == 0) {
                at++;
            }
            off[g] = at;
            int span = rows[g] == 0 || cols[g] == 0 ? 0 : (rows[g] - 1) * ld + cols[g];
            at += span + (aligned ? 8 : 5);
        }
        return at + 8;
    }

    // ------------------------------------------------------------------ checking


    private void cpuGroupedGemm(Problem p, float alpha, float[] a, float[] b, float beta, float[] c) {
        cpu.groupedGemm(p.tA(), p.tB(), p.groups(), p.m(), p.n(), p.k(), alpha, Tensor.of(a, a.length), p.aOff(), p.lda(),
                Tensor.of(b, b.length), p.bOff(), p.ldb(), beta, Tensor.of(c, c.length), p.cOff(), p.ldc());
    }

    /** The kernels KERNEL mode can launch here: mma.sync, and the sm90 (wgmma) kernel on compute capability 9.0. */
    static List<GroupedGemm.Kernel> kernels(CudaBackend gpu) {
        List<GroupedGemm.Kernel> out = new ArrayList<>();
        out.add(GroupedGemm.Kernel.MMA_SYNC);
        if (gpu.groupedSm90Supported()) {
            out.add(GroupedGemm.Kernel.SM90);
        }
        return out;
    }

    /**
     * Runs p in KERNEL mode on random A, B and C (C all NaN when nanC) with each of {@link #kernels} and checks it
     * against both CPU references.
     */
    private void check(CudaBackend gpu, Problem p, float alpha, float beta, boolean nanC, long seed) {
        Random r = new Random(seed);
        float[] a = rnd(r, p.aLen(), 1);
        float[] b = rnd(r, p.bLen(), 1);
        float[] c0 = nanC ? nans(p.cLen()) : rnd(r, p.cLen(), 1);
        String what = p.name() + " tA=" + p.tA() + " tB=" + p.tB() + " alpha=" + alpha + " beta=" + beta
                + (nanC ? " (C filled with NaN)" : "") + " seed=" + seed;

        float[] exact = c0.clone();
        cpuGroupedGemm(p, alpha, a, b, beta, exact);
        float[] rounded = c0.clone();
        cpuGroupedGemm(p, alpha, roundedToBf16(a), roundedToBf16(b), beta, rounded);

        for (GroupedGemm.Kernel kind : kernels(gpu)) {
            float[] x = runKernel(gpu, kind, p, alpha, a, b, beta, c0);
            assertMatches(rounded, x, TIGHT, what + " [" + kind + "]: vs the CPU on bf16-rounded inputs");
            assertMatches(exact, x, LOOSE, what + " [" + kind + "]: vs the CPU on f32 inputs");
        }
    }

    private static float[] runKernel(CudaBackend gpu, GroupedGemm.Kernel kind, Problem p, float alpha, float[] a,
                                     float[] b, float beta, float[] c0) {
        CudaBackend.GroupedMode saved = gpu.groupedMode();
        GroupedGemm.Kernel savedKernel = gpu.effectiveGroupedKernel();
        gpu.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
        gpu.setGroupedKernel(kind);
        try (var scope = gpu.openScope()) {
            Tensor gc = gpu.upload(host(c0, c0.length));
            gpu.groupedGemm(p.tA(), p.tB(), p.groups(), p.m(), p.n(), p.k(), alpha, gpu.upload(host(a, a.length)), p.aOff(),
                    p.lda(), gpu.upload(host(b, b.length)), p.bOff(), p.ldb(), beta, gc, p.cOff(), p.ldc());
            return gpu.download(gc).floats();
        } finally {
            gpu.setGroupedMode(saved);
            gpu.setGroupedKernel(GroupedGemm.Kernel.AUTO);
            assertEquals(savedKernel, gpu.effectiveGroupedKernel());
        }
    }

    private static float[] nans(int n) {
        float[] f = new float[n];
        Arrays.fill(f, Float.NaN);
        return f;
    }

    /**
     * Where expected is NaN (elements no group writes, left as they were), actual must be NaN too; elsewhere
     * |expected - actual| <= tol * max |expected| + ABS, and never NaN or infinite.
     */
    static void assertMatches(float[] expected, float[] actual, double tol, String what) {
        assertEquals(expected.length, actual.length, what + ": lengths");
        double scale = 0;
        for (float e : expected) {
            if (Float.isFinite(e)) {
                scale = Math.max(scale, Math.abs(e));
            }
        }
        double bound = tol * scale + ABS;
        double worst = 0;
        int at = -1;
        for (int i = 0; i < expected.length; i++) {
            float e = expected[i], x = actual[i];
            if (Float.isNaN(e)) {
                if (!Float.isNaN(x)) {
                    throw new AssertionError(what + ": element " + i + " should be untouched (NaN) but is " + x);
                }
                continue;
            }
            if (!Float.isFinite(x)) {
                throw new AssertionError(what + ": element " + i + " is " + x + " (expected " + e + ")");
            }
            double d = Math.abs((double) e - x);
            if (d > worst) {
                worst = d;
                at = i;
            }
        }
        double w = worst, sc = scale;
        int idx = at;
        assertTrue(w <= bound, () -> what + ": max error " + w + " at " + idx + " (expected " + expected[idx]
                + ", got " + actual[idx] + ") exceeds " + tol + " * " + sc + " (max |expected|) + " + ABS);
    }

    private static final boolean[][] TRANS = {{false, false}, {false, true}, {true, false}, {true, true}};

    // ------------------------------------------------------------------ tests

    /**
     * BF16 operands (a weight's compute copy, {@code FsdpParam}): the kernel reads them in place where every block
     * starts 16-byte aligned and rows are multiples of 8 values (the layout below, as a stacked weight of dims that
     * are multiples of 8), the backend widens them to f32 first where not (odd offsets and strides) and for the loop;
     * every result is the product of the bf16 values, as for f32 operands that the kernel rounds to the same values.
     */
    @Test
    void bf16OperandsAreReadInPlaceOrWidened() {
        CudaBackend gpu = GpuTestSupport.backend();
        int[] m = {40, 0, 16, 136, 8};
        int[] n = {40, 72, 48, 64, 8};
        int[] k = {72, 48, 0, 136, 24};
        long seed = System.nanoTime();
        for (boolean[] t : TRANS) {
            for (boolean inPlace : new boolean[] {true, false}) {
                Problem p = inPlace ? packed16Bytes("bf16 operands in place", t[0], t[1], m, n, k)
                        : packed("bf16 operands widened", t[0], t[1], m, n, k, false);
                Random r = new Random(seed++);
                float[] a = roundedToBf16(rnd(r, p.aLen(), 1));
                float[] b = roundedToBf16(rnd(r, p.bLen(), 1));
                float[] c0 = rnd(r, p.cLen(), 1);
                float[] want = c0.clone();
                cpuGroupedGemm(p, 0.8f, a, b, 0.5f, want);
                List<CudaBackend.GroupedMode> modes = List.of(CudaBackend.GroupedMode.KERNEL,
                        CudaBackend.GroupedMode.LOOP);
                for (CudaBackend.GroupedMode mode : modes) {
                    for (GroupedGemm.Kernel kind : mode == CudaBackend.GroupedMode.KERNEL ? kernels(gpu)
                            : List.of(GroupedGemm.Kernel.AUTO)) {
                        CudaBackend.GroupedMode saved = gpu.groupedMode();
                        gpu.setGroupedMode(mode);
                        gpu.setGroupedKernel(kind);
                        try (var scope = gpu.openScope()) {
                            Tensor a16 = gpu.empty(DType.BF16, p.aLen());
                            Tensor b16 = gpu.empty(DType.BF16, p.bLen());
                            gpu.convert(gpu.upload(host(a, a.length)), a16);
                            gpu.convert(gpu.upload(host(b, b.length)), b16);
                            Tensor gc = gpu.upload(host(c0, c0.length));
                            long before = gpu.groupedBf16InPlace();
                            gpu.groupedGemm(p.tA(), p.tB(), p.groups(), p.m(), p.n(), p.k(), 0.8f, a16, p.aOff(),
                                    p.lda(), b16, p.bOff(), p.ldb(), 0.5f, gc, p.cOff(), p.ldc());
                            String what = p.name() + " tA=" + p.tA() + " tB=" + p.tB() + " " + mode + " " + kind;
                            assertMatches(want, gpu.download(gc).floats(), TIGHT, what);
                            boolean read = mode == CudaBackend.GroupedMode.KERNEL && inPlace;
                            assertEquals(read ? 2 : 0, gpu.groupedBf16InPlace() - before,
                                    what + ": operands read in place");
                        } finally {
                            gpu.setGroupedMode(saved);
                            gpu.setGroupedKernel(GroupedGemm.Kernel.AUTO);
                        }
                    }
                }
            }
        }
    }

    /** Blocks packed with strides and offsets that are multiples of 8 elements (16 bytes of bf16). */
    private static Problem packed16Bytes(String name, boolean tA, boolean tB, int[] m, int[] n, int[] k) {
        int groups = m.length;
        int[] aOff = new int[groups], bOff = new int[groups], cOff = new int[groups];
        int lda = 0, ldb = 0, ldc = 0;
        for (int g = 0; g < groups; g++) {
            lda = Math.max(lda, tA ? m[g] : k[g]);
            ldb = Math.max(ldb, tB ? k[g] : n[g]);
            ldc = Math.max(ldc, n[g]);
        }
        lda = (lda + 7) / 8 * 8 + 8;
        ldb = (ldb + 7) / 8 * 8 + 8;
        ldc = ldc + 3;
        int aAt = 8, bAt = 16, cAt = 1;
        for (int g = 0; g < groups; g++) {
            aOff[g] = aAt;
            bOff[g] = bAt;
            cOff[g] = cAt;
            aAt += (tA ? k[g] : m[g]) * lda + 8;
            bAt += (tB ? n[g] : k[g]) * ldb + 8;
            cAt += m[g] * ldc + 5;
        }
        return new Problem(name, tA, tB, m, n, k, aOff, lda, aAt + 8, bOff, ldb, bAt + 8, cOff, ldc, cAt + 8);
    }

    @Test
    void raggedGroupsEveryTransposition() {
        CudaBackend gpu = GpuTestSupport.backend();
        // empty (m = 0), k = 0, tiny (m = 1, 3, 17), n and k off the tile grid (40, 72, 129, 300), a multi-tile group.
        int[] m = {37, 0, 1, 3, 17, 130, 256, 5, 64};
        int[] n = {40, 72, 40, 129, 16, 72, 40, 200, 8};
        int[] k = {72, 50, 0, 33, 40, 300, 31, 1, 129};
        long seed = System.nanoTime();
        for (boolean[] t : TRANS) {
            for (boolean aligned : new boolean[] {true, false}) {
                check(gpu, packed("ragged", t[0], t[1], m, n, k, aligned), 1.3f, 0.5f, false, seed++);
            }
        }
    }

    @Test
    void edgesOfTheWideTile() {
        CudaBackend gpu = GpuTestSupport.backend();
        // 128 x 128 (or, by GB_BN, 128 x 256) CTA tiles of 8 warps of 64 x 32 (64 x 64), mma blocks of 16 x 8, k in
        // slices of 32 and 16: m and n just below, at and above those boundaries, m < 16, odd n (the float2
        // epilogue's last column), k = 1 .. 97.
        int[] m = {1, 15, 127, 129, 255, 257, 64, 65, 9};
        int[] n = {257, 255, 7, 264, 520, 1, 256, 63, 130};
        int[] k = {31, 33, 64, 17, 96, 97, 16, 1, 48};
        long seed = System.nanoTime();
        for (boolean[] t : TRANS) {
            check(gpu, packed("wide-tile edges", t[0], t[1], m, n, k, true), 0.9f, 0.25f, false, seed++);
            check(gpu, packed("wide-tile edges", t[0], t[1], m, n, k, false), 1.1f, 0f, true, seed++);
        }
    }

    @Test
    void betaZeroNeverReadsNaNFilledC() {
        CudaBackend gpu = GpuTestSupport.backend();
        int[] m = {3, 129, 0, 40, 1};
        int[] n = {72, 40, 10, 129, 17};
        int[] k = {40, 0, 20, 72, 257};
        long seed = System.nanoTime();
        for (boolean[] t : TRANS) {
            check(gpu, packed("beta 0 over NaN", t[0], t[1], m, n, k, false), 0.75f, 0f, true, seed++);
            check(gpu, packed("beta 0 over NaN", t[0], t[1], m, n, k, true), 1f, 0f, true, seed++);
        }
    }

    @Test
    void betaOneAccumulatesAndAlphaScales() {
        CudaBackend gpu = GpuTestSupport.backend();
        int[] m = {130, 7, 64, 200};
        int[] n = {64, 72, 40, 128};
        int[] k = {96, 500, 33, 128};
        long seed = System.nanoTime();
        for (boolean[] t : TRANS) {
            check(gpu, packed("beta 1", t[0], t[1], m, n, k, true), -0.7f, 1f, false, seed++);
            check(gpu, packed("beta 1", t[0], t[1], m, n, k, false), 2.5f, 1f, false, seed++);
        }
    }

    @Test
    void kZeroGroupsScaleCByBeta() {
        CudaBackend gpu = GpuTestSupport.backend();
        int[] m = {20, 33, 130};
        int[] n = {40, 129, 7};
        int[] k = {0, 64, 0};
        long seed = System.nanoTime();
        for (boolean[] t : TRANS) {
            check(gpu, packed("k = 0", t[0], t[1], m, n, k, false), 1.3f, 1f, false, seed++);
            check(gpu, packed("k = 0", t[0], t[1], m, n, k, true), 1.3f, 0.5f, false, seed++);
            check(gpu, packed("k = 0", t[0], t[1], m, n, k, false), 1.3f, 0f, true, seed++);
        }
    }

    /** K far longer than the kernels' rings of stages (the sm90 kernel's 4 slices of 64, mma.sync's 3), ragged. */
    @Test
    void longKWrapsTheStageRingManyTimes() {
        CudaBackend gpu = GpuTestSupport.backend();
        int[] m = {256, 129, 40};
        int[] n = {256, 384, 100};
        int[] k = {2049, 1537, 777};
        long seed = System.nanoTime();
        for (boolean[] t : TRANS) {
            check(gpu, packed("long k", t[0], t[1], m, n, k, true), 1f, 0f, true, seed++);
            check(gpu, packed("long k", t[0], t[1], m, n, k, false), 0.5f, 1f, false, seed++);
        }
    }

    @Test
    void moreGroupsThanOneLaunchHolds() {
        CudaBackend gpu = GpuTestSupport.backend();
        int groups = 150; // three launches of up to 64 groups
        Random r = new Random(7);
        int[] m = new int[groups], n = new int[groups], k = new int[groups];
        for (int g = 0; g < groups; g++) {
            m[g] = g % 9 == 4 ? 0 : 1 + r.nextInt(150);
            n[g] = 1 + r.nextInt(140);
            k[g] = g % 13 == 6 ? 0 : 1 + r.nextInt(100);
        }
        long seed = System.nanoTime();
        check(gpu, packed("150 groups", false, true, m, n, k, true), 1f, 0.5f, false, seed++);
        check(gpu, packed("150 groups", true, false, m, n, k, false), 1f, 0f, true, seed);
    }

    /**
     * A grouped GEMM right after another that converted the same operand block reads the kept copy
     * (Experts' dOut of the down projection's input gradient (NN) and weight gradient (TN)); a backend call that
     * writes the operand in between makes it convert again, and the result follows the new values.
     */
    @Test
    void theNextGroupedGemmReusesAnOperandCopyOnlyWhileNothingCameBetween() {
        CudaBackend gpu = GpuTestSupport.backend();
        CudaBackend.GroupedMode savedMode = gpu.groupedMode();
        gpu.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
        int[] rows = {40, 0, 70, 9};
        int e = rows.length, hidden = 64, inter = 40, total = Arrays.stream(rows).sum();
        GpuTestSupport.ExpertLayout l = GpuTestSupport.ExpertLayout.of(rows, hidden, inter);
        int[] xOff = l.xOff(), dOff = l.iOff(), wOff = l.wOff(), hid = l.hid(), in = l.in();
        Random r = new Random(7);
        float[] x = rnd(r, total * hidden, 1);
        float[] w = rnd(r, e * hidden * inter, 1);
        float[] dy = rnd(r, total * inter, 1);
        try (var scope = gpu.openScope()) {
            Tensor gx = gpu.upload(host(x, x.length));
            Tensor gw = gpu.upload(host(w, w.length));
            Tensor gd = gpu.upload(host(dy, dy.length));
            Tensor c1 = gpu.empty(DType.F32, total * inter);
            Tensor c2 = gpu.empty(DType.F32, e * hidden * inter);
            long casts = gpu.operandCasts();
            // NN: c1[rows_g, inter] = x_g [rows_g, hidden] w_g [hidden, inter]
            gpu.groupedGemm(false, false, e, rows, in, hid, 1f, gx, xOff, hidden, gw, wOff, inter, 0f, c1, dOff, inter);
            assertEquals(casts + 2, gpu.operandCasts(), "the first call converts A and B");
            assertEquals(2, gpu.heldOperandCopies());
            // TN: c2[hidden, inter] = x_g^T [hidden, rows_g] dy_g [rows_g, inter]: the same stored block of x
            gpu.groupedGemm(true, false, e, hid, in, rows, 1f, gx, xOff, hidden, gd, dOff, inter, 0f, c2, wOff, inter);
            assertEquals(casts + 3, gpu.operandCasts(), "x's copy is reused: only dy is converted");
            float[] want1 = new float[total * inter];
            cpu.groupedGemm(false, false, e, rows, in, hid, 1f, Tensor.of(roundedToBf16(x), x.length), xOff, hidden,
                    Tensor.of(roundedToBf16(w), w.length), wOff, inter, 0f, Tensor.of(want1, want1.length), dOff,
                    inter);
            float[] want2 = new float[e * hidden * inter];
            cpu.groupedGemm(true, false, e, hid, in, rows, 1f, Tensor.of(roundedToBf16(x), x.length), xOff, hidden,
                    Tensor.of(roundedToBf16(dy), dy.length), dOff, inter, 0f, Tensor.of(want2, want2.length), wOff,
                    inter);
            assertMatches(want1, gpu.download(c1).floats(), TIGHT, "NN before the reuse");
            assertMatches(want2, gpu.download(c2).floats(), TIGHT, "TN on the reused copy of x");
            // x written by a backend call between two neighbours: converted again, the new values used
            gpu.groupedGemm(false, false, e, rows, in, hid, 1f, gx, xOff, hidden, gw, wOff, inter, 0f, c1, dOff, inter);
            gpu.scale(gx, 2f);
            long before = gpu.operandCasts();
            gpu.groupedGemm(true, false, e, hid, in, rows, 1f, gx, xOff, hidden, gd, dOff, inter, 0f, c2, wOff, inter);
            assertEquals(before + 2, gpu.operandCasts(), "x changed: converted again");
            float[] got2 = gpu.download(c2).floats();
            for (int i = 0; i < want2.length; i++) {
                want2[i] *= 2; // exact: scaling by 2 commutes with bf16 rounding
            }
            assertMatches(want2, got2, TIGHT, "TN after x was doubled");
        } finally {
            gpu.setGroupedMode(savedMode);
        }
        assertEquals(0, gpu.heldOperandCopies(), "closing the scope drops kept copies");
    }

    // ------------------------------------------------------------------ BF16 C

    /**
     * A BF16 C (a weight gradient in FSDP's param dtype) holds the F32 C of the same call rounded to bf16, BIT FOR
     * BIT: the same accumulators, one rounding of the same f32 value alpha * acc + beta * C (the F32 call starts from
     * C's values as bf16 holds them). For every kernel ({@link #kernels}) and the loop (cuBLAS into an f32 block,
     * rounded), every transposition: beta 0 over C filled with NaN (never read), beta 1 (accumulation) and 0.5, k = 0
     * groups (beta * C rounded), edges of the 128 x 128 / 128 x 256 tiles, odd n, and odd ldc and odd offsets (the
     * scalar path, where a bf16x2 store cannot be used) besides even ones. Elements outside every C_g keep their values.
     * The kernels' F32 results are checked against the CPU on bf16-rounded inputs as well, so that two equally wrong
     * results cannot pass.
     */
    @Test
    void bf16CIsTheF32CRoundedOnce() {
        CudaBackend gpu = GpuTestSupport.backend();
        int[] rm = {37, 0, 1, 3, 17, 130, 256, 5, 64};
        int[] rn = {40, 72, 40, 129, 16, 72, 40, 200, 8};
        int[] rk = {72, 50, 0, 33, 40, 300, 31, 1, 129};
        int[] em = {1, 15, 127, 129, 255, 257, 64, 65, 9};
        int[] en = {257, 255, 7, 264, 520, 1, 256, 63, 130};
        int[] ek = {31, 0, 64, 17, 96, 97, 16, 1, 48};
        long seed = System.nanoTime();
        for (boolean[] t : TRANS) {
            for (boolean aligned : new boolean[] {true, false}) {
                checkBf16C(gpu, packed("ragged", t[0], t[1], rm, rn, rk, aligned), 1.3f, 1f, seed++);
                checkBf16C(gpu, packed("ragged", t[0], t[1], rm, rn, rk, aligned), 0.9f, 0f, seed++);
                checkBf16C(gpu, packed("tile edges", t[0], t[1], em, en, ek, aligned), -0.7f, 0.5f, seed++);
                checkBf16C(gpu, packed("tile edges", t[0], t[1], em, en, ek, aligned), 1.1f, 0f, seed++);
            }
        }
        try (var scope = gpu.openScope()) {
            Tensor a = gpu.zeros(DType.F32, 64);
            Tensor c = gpu.empty(DType.F16, 64);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> gpu.groupedGemm(false,
                    false, 1, new int[] {8}, new int[] {8}, new int[] {8}, 1f, a, new int[] {0}, 8, a, new int[] {0},
                    8, 0f, c, new int[] {0}, 8));
            assertTrue(e.getMessage().contains("F16") && e.getMessage().contains("F32 or BF16"), e.getMessage());
        }
    }

    /** p with an F32 and then a BF16 C in each mode and kernel; beta == 0: C filled with NaN, else bf16 values. */
    private void checkBf16C(CudaBackend gpu, Problem p, float alpha, float beta, long seed) {
        Random r = new Random(seed);
        float[] a = rnd(r, p.aLen(), 1);
        float[] b = rnd(r, p.bLen(), 1);
        float[] c0 = beta == 0f ? nans(p.cLen()) : roundedToBf16(rnd(r, p.cLen(), 1));
        boolean[] inGroup = new boolean[p.cLen()];
        for (int g = 0; g < p.groups(); g++) {
            for (int i = 0; i < p.m()[g]; i++) {
                Arrays.fill(inGroup, p.cOff()[g] + i * p.ldc(), p.cOff()[g] + i * p.ldc() + p.n()[g], true);
            }
        }
        float[] rounded = c0.clone();
        cpuGroupedGemm(p, alpha, roundedToBf16(a), roundedToBf16(b), beta, rounded);
        List<Object[]> runs = new ArrayList<>();
        for (GroupedGemm.Kernel kind : kernels(gpu)) {
            runs.add(new Object[] {CudaBackend.GroupedMode.KERNEL, kind});
        }
        runs.add(new Object[] {CudaBackend.GroupedMode.LOOP, GroupedGemm.Kernel.AUTO});
        for (Object[] run : runs) {
            CudaBackend.GroupedMode mode = (CudaBackend.GroupedMode) run[0];
            GroupedGemm.Kernel kind = (GroupedGemm.Kernel) run[1];
            String what = p.name() + " tA=" + p.tA() + " tB=" + p.tB() + " alpha=" + alpha + " beta=" + beta + " "
                    + mode + (mode == CudaBackend.GroupedMode.KERNEL ? " " + kind : "") + " seed=" + seed;
            CudaBackend.GroupedMode saved = gpu.groupedMode();
            gpu.setGroupedMode(mode);
            gpu.setGroupedKernel(kind);
            float[] f32;
            float[] bf16;
            try (var scope = gpu.openScope()) {
                Tensor ga = gpu.upload(host(a, a.length));
                Tensor gb = gpu.upload(host(b, b.length));
                Tensor c32 = gpu.upload(host(c0, c0.length));
                Tensor c16 = gpu.empty(DType.BF16, c0.length);
                gpu.convert(gpu.upload(host(c0, c0.length)), c16);
                gpu.groupedGemm(p.tA(), p.tB(), p.groups(), p.m(), p.n(), p.k(), alpha, ga, p.aOff(), p.lda(), gb,
                        p.bOff(), p.ldb(), beta, c32, p.cOff(), p.ldc());
                gpu.groupedGemm(p.tA(), p.tB(), p.groups(), p.m(), p.n(), p.k(), alpha, ga, p.aOff(), p.lda(), gb,
                        p.bOff(), p.ldb(), beta, c16, p.cOff(), p.ldc());
                f32 = gpu.download(c32).floats();
                bf16 = gpu.download(c16).floats();
            } finally {
                gpu.setGroupedMode(saved);
                gpu.setGroupedKernel(GroupedGemm.Kernel.AUTO);
            }
            if (mode == CudaBackend.GroupedMode.KERNEL) {
                assertMatches(rounded, f32, TIGHT, what + ": the F32 C vs the CPU on bf16-rounded inputs");
            }
            int changed = 0;
            for (int i = 0; i < c0.length; i++) {
                float want = inGroup[i] ? DType.roundToBf16(f32[i]) : c0[i];
                if (Float.floatToIntBits(want) != Float.floatToIntBits(bf16[i])) {
                    throw new AssertionError(what + ": element " + i + " of the BF16 C is " + bf16[i] + ", want "
                            + want + (inGroup[i] ? " (the F32 C " + f32[i] + " rounded)" : " (untouched)"));
                }
                if (inGroup[i] && !Float.isFinite(bf16[i])) {
                    throw new AssertionError(what + ": element " + i + " of the BF16 C is " + bf16[i]);
                }
                changed += inGroup[i] && f32[i] != bf16[i] ? 1 : 0;
            }
            assertTrue(changed > 0, what + ": no result needed rounding (the check proves nothing)");
        }
    }

    @Test
    void modelShapes() {
        CudaBackend gpu = GpuTestSupport.backend();
        long seed = System.nanoTime();
        int[] rows = modelRows(new Random(seed));
        assertEquals(32768, Arrays.stream(rows).sum());
        int hidden = 1024, inter = 512;
        check(gpu, model("NT", rows, inter, hidden), 1f, 0f, true, seed++);    // gate / up
        check(gpu, model("NT", rows, hidden, inter), 1f, 0f, true, seed++);    // down
        check(gpu, model("NN", rows, inter, hidden), 1f, 0f, false, seed++);   // d(inter act) from d(hidden)
        check(gpu, model("NN", rows, hidden, inter), 1f, 0f, false, seed++);
        check(gpu, model("TN", rows, hidden, inter), 1f, 1f, false, seed++);   // weight gradients accumulate
        check(gpu, model("TN", rows, inter, hidden), 1f, 1f, false, seed);
    }

    @Test
    void autoModeFollowsThePrecision() {
        CudaBackend gpu = GpuTestSupport.backend();
        CudaBackend.GroupedMode savedMode = gpu.groupedMode();
        CudaBackend.GemmPrecision savedPrecision = gpu.gemmPrecision();
        try {
            gpu.setGroupedMode(CudaBackend.GroupedMode.AUTO);
            gpu.setGemmPrecision(CudaBackend.GemmPrecision.F32);
            assertEquals(CudaBackend.GroupedMode.LOOP, gpu.effectiveGroupedMode());
            gpu.setGemmPrecision(CudaBackend.GemmPrecision.TF32);
            assertEquals(CudaBackend.GroupedMode.LOOP, gpu.effectiveGroupedMode());
            gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
            boolean sm80 = gpu.groupedKernelSupported(); // sm_80+ with the kernel's shared memory
            assertTrue(!sm80 || Integer.parseInt(gpu.arch().substring(3)) >= 80);
            assertEquals(sm80 ? CudaBackend.GroupedMode.KERNEL : CudaBackend.GroupedMode.LOOP,
                    gpu.effectiveGroupedMode());
            // the wgmma kernel exactly on compute capability 9.0 (H100 / H200 grant it the shared memory)
            assertEquals(gpu.arch().equals("sm_90"), gpu.groupedSm90Supported(), gpu.arch());
            assertEquals(gpu.groupedSm90Supported() ? GroupedGemm.Kernel.SM90 : GroupedGemm.Kernel.MMA_SYNC,
                    gpu.effectiveGroupedKernel());
            if (sm80 && !gpu.groupedSm90Supported()) { // forcing it elsewhere fails with the reason
                gpu.setGroupedKernel(GroupedGemm.Kernel.SM90);
                try (var scope = gpu.openScope()) {
                    Tensor a = gpu.zeros(DType.F32, 8 * 8);
                    IllegalStateException e = assertThrows(IllegalStateException.class, () -> gpu.groupedGemm(false,
                            false, 1, new int[] {8}, new int[] {8}, new int[] {8}, 1f, a, new int[] {0}, 8, a,
                            new int[] {0}, 8, 0f, gpu.zeros(DType.F32, 64), new int[] {0}, 8));
                    assertTrue(e.getMessage().contains("compute capability 9.0"), e.getMessage());
                } finally {
                    gpu.setGroupedKernel(GroupedGemm.Kernel.AUTO);
                }
            }
            gpu.setGroupedMode(CudaBackend.GroupedMode.LOOP);
            assertEquals(CudaBackend.GroupedMode.LOOP, gpu.effectiveGroupedMode());
            // The span checks still run in KERNEL mode.
            gpu.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
            try (var scope = gpu.openScope()) {
                Tensor a = gpu.zeros(DType.F32, 10 * 8);
                Tensor b = gpu.zeros(DType.F32, 8 * 4);
                Tensor c = gpu.zeros(DType.F32, 10 * 4);
                assertThrows(IndexOutOfBoundsException.class, () -> gpu.groupedGemm(false, false, 1, new int[] {11},
                        new int[] {4}, new int[] {8}, 1f, a, new int[] {0}, 8, b, new int[] {0}, 4, 0f, c,
                        new int[] {0}, 4));
                assertThrows(IllegalArgumentException.class, () -> gpu.groupedGemm(false, false, 1, new int[] {10},
                        new int[] {4}, new int[] {8}, 1f, a, new int[] {0}, 7, b, new int[] {0}, 4, 0f, c,
                        new int[] {0}, 4));
            }
        } finally {
            gpu.setGroupedMode(savedMode);
            gpu.setGemmPrecision(savedPrecision);
        }
    }
}
