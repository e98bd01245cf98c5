package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.assertClose;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Every CUDA kernel against its {@link CpuBackend} twin on fresh random inputs (DESIGN.md convention 1; the SwiGLU
 * kernels in {@link SiluMulKernelsTest}). GPU outputs are poisoned with NaN before each kernel so that an unwritten
 * element fails. Tolerances, as max |gpu - cpu| over the reference's max magnitude:
 * <ul>
 *   <li>element-wise ops, copies, gathers, AdamW, top-k: 1e-6 (the same f32 arithmetic; exact for data movement);
 *   <li>row reductions (RMSNorm, softmax, cross-entropy, combine backward, router backward) and f32 GEMM: 1e-5
 *       (summation order differs);
 *   <li>attention forward and backward: 1e-4 for the fused kernels and the F32 batched-GEMM path (fast exp, online
 *       softmax, and sums over up to T terms in another order); 5e-3 for the TF32 and 2e-2 for the BF16 GEMM path
 *       and the bf16 flash kernels.
 * </ul>
 * Skipped where no GPU or CUDA library is present.
 */
class CudaBackendTest {
    private final CpuBackend cpu = new CpuBackend();
    private CudaBackend gpu;
    private Random r;

    @BeforeEach
    void setUp() {
        gpu = GpuTestSupport.backend();
        r = new Random(System.nanoTime());
    }

    private Tensor up(float[] a, int... shape) {
        return gpu.upload(host(a, shape));
    }

    private Tensor upInts(int[] a) {
        return gpu.upload(Tensor.ofInts(a.clone(), a.length));
    }

    private Tensor poisoned(int... shape) {
        Tensor t = gpu.zeros(DType.F32, shape);
        gpu.fill(t, Float.NaN);
        return t;
    }

    private float[] down(Tensor t) {
        return gpu.download(t).floats();
    }

    // ------------------------------------------------------------------ memory

    /**
     * The device's stable counting sort of slots by expert against the host reference: the benchmark's size (8192
     * tokens, top-4 of 32, some experts never chosen), sizes that end mid-chunk and a single slot; an id outside the
     * experts is refused, naming it.
     */
    @Test
    void groupByExpertMatchesTheHostSort() {
        for (int[] c : new int[][] {{32768, 32}, {4097, 7}, {1, 3}, {2500, 128}}) {
            int n = c[0], experts = c[1];
            int[] ids = new int[n];
            for (int i = 0; i < n; i++) {
                ids[i] = experts > 4 && r.nextInt(4) == 0 ? 1 : r.nextInt(experts) & ~1; // odd experts mostly empty
            }
            int[] want = new int[experts];
            int[] wantRows = dev.sparkmoe.core.backend.Backend.sortSlotsByExpert(ids, experts, want);
            Tensor rows = gpu.empty(DType.I32, n);
            int[] got = gpu.groupByExpert(upInts(ids), n, experts, rows);
            assertArrayEquals(want, got, n + " slots, " + experts + " experts: counts");
            assertArrayEquals(wantRows, gpu.download(rows).ints(), n + " slots, " + experts + " experts: rows");
        }
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> gpu.groupByExpert(upInts(new int[] {0, 1, 2, 3, 4, 40, 1}), 7, 32, gpu.empty(DType.I32, 7)));
        assertTrue(e.getMessage().contains("groupByExpert: expert id 40 at slot 5 is outside [0, 32)"),
                e.getMessage());
    }

    /**
     * The bf16 wire's part-wise conversions: parts of every size (empty, below and above a vector of four, large),
     * f32 sides aligned and not (the vector path and the scalar one), more parts than one launch takes; rounding to
     * nearest even (ties among the values) and exact widening, checked against the host's rounding bit for bit.
     */
    @Test
    void partWiseBf16ConversionsRoundToNearestEvenAndWidenExactly() {
        int[] lens = new int[Bf16Parts.MAX + 9];
        int[] sizes = {0, 1, 3, 4, 5, 7, 1024, 100_003, 2, 9};
        for (int i = 0; i < lens.length; i++) {
            lens[i] = sizes[i % sizes.length];
        }
        int total = 0;
        for (int len : lens) {
            total += len + 11; // room to start every part on 8 elements and misalign it
        }
        float[] x = rnd(r, total, 3f);
        for (int i = 0; i < total; i += 7) { // exact ties: the kept half is even or odd
            x[i] = Float.intBitsToFloat((Float.floatToRawIntBits(x[i]) & 0xffff0000) | 0x8000);
        }
        Tensor src = up(x, total);
        Tensor wire = gpu.zeros(DType.F32, total); // raw storage: 2 bytes per bf16 value, half of it used
        Tensor back = poisoned(total);
        long s0 = ((DeviceMemory) src.deviceHandle()).address();
        long w0 = ((DeviceMemory) wire.deviceHandle()).address();
        long b0 = ((DeviceMemory) back.deviceHandle()).address();
        long[] from = new long[lens.length], to = new long[lens.length], n = new long[lens.length];
        long[] widenFrom = new long[lens.length], widenTo = new long[lens.length];
        int[] at = new int[lens.length];
        int off = 0;
        for (int i = 0; i < lens.length; i++) {
            int shift = i % 3; // 0: both sides aligned (the vector path); 1, 2: the f32 side 4- and 8-byte aligned
            at[i] = off + shift;
            from[i] = s0 + 4L * at[i];
            to[i] = w0 + 2L * at[i];
            widenFrom[i] = to[i];
            widenTo[i] = b0 + 4L * at[i];
            n[i] = lens[i];
            off = (off + lens[i] + 3 + 7) / 8 * 8;
        }
        gpu.roundToBf16(from, to, n, gpu.stream());
        gpu.widenBf16(widenFrom, widenTo, n, gpu.stream());
        float[] got = down(back);
        for (int i = 0; i < lens.length; i++) {
            for (int e = 0; e < lens[i]; e++) {
                int j = at[i] + e;
                assertEquals(Float.floatToRawIntBits(DType.roundToBf16(x[j])), Float.floatToRawIntBits(got[j]),
                        "part " + i + " (length " + lens[i] + ") element " + e + " of " + x[j]);
            }
        }
        IllegalArgumentException bad = assertThrows(IllegalArgumentException.class,
                () -> gpu.roundToBf16(from, to, new long[1], gpu.stream()));
        assertTrue(bad.getMessage().contains("lengths"), bad.getMessage());
    }

    @Test
    void uploadDownloadRoundTripsEveryDtype() {
        float[] f = rnd(r, 1001, 3);
        assertArrayEquals(f, down(up(f, 7, 143)));
        int[] i = r.ints(333).toArray();
        assertArrayEquals(i, gpu.download(upInts(i)).ints());
        long[] l = r.longs(77).toArray();
        assertArrayEquals(l, gpu.download(gpu.upload(Tensor.ofLongs(l.clone(), 77))).longs());
        Tensor z = gpu.zeros(DType.F32, 3, 5);
        assertArrayEquals(new float[15], down(z));
        assertEquals(DType.I32, gpu.download(gpu.zeros(DType.I32, 4)).dtype());
        assertArrayEquals(new int[] {3, 5}, gpu.download(z).shape());
        assertThrows(IllegalArgumentException.class, () -> gpu.upload(z));
        assertThrows(IllegalArgumentException.class, () -> gpu.scale(Tensor.of(new float[3], 3), 2f));
    }

    @Test
    void fillCopyAndCopyRows() {
        Tensor t = gpu.zeros(DType.F32, 10);
        gpu.fill(t, 2.5f);
        float[] e = new float[10];
        java.util.Arrays.fill(e, 2.5f);
        assertArrayEquals(e, down(t));
        Tensor ti = gpu.zeros(DType.I32, 4);
        gpu.fill(ti, 7f);
        assertArrayEquals(new int[] {7, 7, 7, 7}, gpu.download(ti).ints());

        float[] src = rnd(r, 60, 1);
        float[] dst = rnd(r, 80, 1);
        Tensor cs = host(src, 60);
        Tensor cd = host(dst, 80);
        Tensor gs = up(src, 60);
        Tensor gd = up(dst, 80);
        cpu.copy(cs, 3, cd, 5, 20);
        gpu.copy(gs, 3, gd, 5, 20);
        assertArrayEquals(cd.floats(), down(gd));
        cpu.copyRows(cs, 1, 12, cd, 2, 15, 4, 9);
        gpu.copyRows(gs, 1, 12, gd, 2, 15, 4, 9);
        assertArrayEquals(cd.floats(), down(gd));
        assertThrows(IndexOutOfBoundsException.class, () -> gpu.copy(gs, 50, gd, 0, 20));
    }

    @Test
    void releaseAndScopes() {
        long base = gpu.memoryStats().bytesInUse();
        Tensor keep;
        try (var outer = gpu.openScope()) {
            keep = gpu.zeros(DType.F32, 1000);
            Tensor a = gpu.zeros(DType.F32, 5000);
            try (var inner = gpu.openScope()) {
                Tensor b = gpu.zeros(DType.F32, 7000);
                gpu.release(b);
                assertThrows(IllegalStateException.class, () -> gpu.release(b), "double release");
                assertThrows(IllegalStateException.class, () -> gpu.scale(b, 2f), "use after release");
                Tensor c = gpu.zeros(DType.I32, 300);
                assertThrows(IllegalStateException.class, outer::close, "outer closed before inner");
                assertTrue(gpu.memoryStats().bytesInUse() > base);
            }
            gpu.scale(a, 2f); // still alive after the inner scope closed
            assertTrue(gpu.memoryStats().bytesInUse() > base);
        }
        assertEquals(base, gpu.memoryStats().bytesInUse(), "everything of the scopes is back: " + gpu.memoryStats());
        Tensor k2 = keep;
        assertThrows(IllegalStateException.class, () -> gpu.download(k2), "scoped tensor released on close");

        Tensor p = gpu.zeros(DType.F32, 123_456);
        gpu.release(p);
        long hits = gpu.memoryStats().cacheHits();
        Tensor q = gpu.zeros(DType.F32, 123_456);
        assertEquals(hits + 1, gpu.memoryStats().cacheHits(), "same size class comes from the cache");
        assertTrue(q.deviceHandle().toString().contains("cuda:0 buffer"), q.deviceHandle().toString());
        gpu.release(q);
        assertEquals(base, gpu.memoryStats().bytesInUse());
        assertTrue(gpu.memoryStats().peakBytesInUse() >= base);
    }

    @Test
    void sizeClassesWasteLittle() {
        for (long b : new long[] {1, 511, 512, 513, 4096, 4097, 10_000, 1 << 20, (1 << 20) + 1, 123_456_789L}) {
            long c = CachingAllocator.sizeClass(b);
            assertTrue(c >= b && c <= Math.max(512, b * 1.25 + 512), b + " -> " + c);
        }
    }

    // ------------------------------------------------------------------ dense algebra

    @Test
    void gemmAllTransposesWithOffsetsAndStrides() {
        int m = 37, n = 53, k = 71;
        for (boolean ta : new boolean[] {false, true}) {
            for (boolean tb : new boolean[] {false, true}) {
                int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 5;
                int aOff = 4, bOff = 7, cOff = 2;
                float[] a = rnd(r, aOff + (ta ? k : m) * lda, 1);
                float[] b = rnd(r, bOff + (tb ? n : k) * ldb, 1);
                float[] c = rnd(r, cOff + m * ldc, 1);
                Tensor cc = host(c, c.length);
                cpu.gemm(ta, tb, m, n, k, 0.7f, host(a, a.length), aOff, lda, host(b, b.length), bOff, ldb, 0.3f, cc,
                        cOff, ldc);
                Tensor gc = up(c, c.length);
                gpu.gemm(ta, tb, m, n, k, 0.7f, up(a, a.length), aOff, lda, up(b, b.length), bOff, ldb, 0.3f, gc, cOff,
                        ldc);
                assertClose(cc.floats(), down(gc), 1e-5, "gemm ta=" + ta + " tb=" + tb);
            }
        }
        // beta = 0 ignores C (NaN must not leak), k = 0 scales C by beta
        float[] a = rnd(r, 6 * 4, 1);
        float[] b = rnd(r, 4 * 5, 1);
        Tensor gc = poisoned(6 * 5);
        gpu.gemm(false, false, 6, 5, 4, 1f, up(a, 24), 0, 4, up(b, 20), 0, 5, 0f, gc, 0, 5);
        Tensor cc = Tensor.zeros(DType.F32, 30);
        cpu.gemm(false, false, 6, 5, 4, 1f, host(a, 24), 0, 4, host(b, 20), 0, 5, 0f, cc, 0, 5);
        assertClose(cc.floats(), down(gc), 1e-5, "gemm beta=0");
        gpu.gemm(false, false, 6, 5, 0, 1f, up(a, 24), 0, 4, up(b, 20), 0, 5, 0.5f, gc, 0, 5);
        cpu.gemm(false, false, 6, 5, 0, 1f, host(a, 24), 0, 4, host(b, 20), 0, 5, 0.5f, cc, 0, 5);
        assertClose(cc.floats(), down(gc), 1e-6, "gemm k=0");
        assertThrows(IndexOutOfBoundsException.class, () -> gpu.gemm(false, false, 7, 5, 4, 1f, up(a, 24), 0, 4,
                up(b, 20), 0, 5, 0f, gc, 0, 5), "C [7 x 5] does not fit 30 elements");
        assertThrows(IllegalArgumentException.class, () -> gpu.gemm(false, false, 6, 5, 5, 1f, up(a, 24), 0, 4,
                up(b, 20), 0, 5, 0f, gc, 0, 5), "lda 4 < k 5");
    }

    @Test
    void groupedGemmLoopMatchesTheCpu() {
        int groups = 6, hidden = 48, inter = 40, ldaRows = 0;
        int[] m = {5, 0, 17, 3, 9, 1};
        int[] n = new int[groups];
        int[] k = new int[groups];
        int[] aOff = new int[groups];
        int[] bOff = new int[groups];
        int[] cOff = new int[groups];
        for (int g = 0; g < groups; g++) {
            n[g] = inter;
            k[g] = g == 4 ? 0 : hidden;
            aOff[g] = ldaRows * hidden;
            cOff[g] = ldaRows * inter;
            bOff[g] = g * hidden * inter;
            ldaRows += m[g];
        }
        float[] a = rnd(r, ldaRows * hidden, 1);
        float[] bT = rnd(r, groups * hidden * inter, 1); // [E, inter, hidden]: B transposed
        float[] c = rnd(r, ldaRows * inter, 1);
        Tensor cc = host(c, c.length);
        cpu.groupedGemm(false, true, groups, m, n, k, 1.3f, host(a, a.length), aOff, hidden, host(bT, bT.length), bOff,
                hidden, 0.5f, cc, cOff, inter);
        // (GroupedMode.KERNEL rounds to bf16: GroupedGemmKernelTest compares it with its own tolerances.)
        CudaBackend.GroupedMode saved = gpu.groupedMode();
        gpu.setGroupedMode(CudaBackend.GroupedMode.LOOP);
        try {
            Tensor gc = up(c, c.length);
            gpu.groupedGemm(false, true, groups, m, n, k, 1.3f, up(a, a.length), aOff, hidden, up(bT, bT.length),
                    bOff, hidden, 0.5f, gc, cOff, inter);
            assertClose(cc.floats(), down(gc), 1e-5, "groupedGemm LOOP");
        } finally {
            gpu.setGroupedMode(saved);
        }
    }

    @Test
    void tf32GemmIsCloseAndSwitchable() {
        int m = 64, n = 96, k = 256;
        float[] a = rnd(r, m * k, 1);
        float[] b = rnd(r, k * n, 1);
        Tensor cc = Tensor.zeros(DType.F32, m * n);
        cpu.gemm(false, false, m, n, k, 1f, host(a, a.length), 0, k, host(b, b.length), 0, n, 0f, cc, 0, n);
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.TF32);
        try {
            Tensor gc = poisoned(m * n);
            gpu.gemm(false, false, m, n, k, 1f, up(a, a.length), 0, k, up(b, b.length), 0, n, 0f, gc, 0, n);
            assertClose(cc.floats(), down(gc), 3e-3, "tf32 gemm");
        } finally {
            gpu.setGemmPrecision(CudaBackend.GemmPrecision.F32);
        }
    }

    /**
     * BF16 GEMMs (cuBLAS's FAST_16BF compute on f32 storage: bf16 inputs, f32 accumulation) against the CPU's f32
     * GEMM within bf16's tolerance (2e-2 of the largest value: a wrong transposition, offset or stride is off by the
     * values themselves), for every transposition, offsets, row strides, odd widths and beta 0 over NaN.
     */
    @Test
    void bf16GemmIsCloseToTheF32Gemm() {
        int m = 37, n = 53, k = 71;
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
        try {
            for (boolean ta : new boolean[] {false, true}) {
                for (boolean tb : new boolean[] {false, true}) {
                    int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 5;
                    int aOff = 5, bOff = 7, cOff = 2;
                    float[] a = rnd(r, aOff + (ta ? k : m) * lda, 1);
                    float[] b = rnd(r, bOff + (tb ? n : k) * ldb, 1);
                    float[] c = rnd(r, cOff + m * ldc, 1);
                    for (float beta : new float[] {0.3f, 0f}) {
                        Tensor cc = host(c.clone(), c.length);
                        cpu.gemm(ta, tb, m, n, k, 0.7f, host(a, a.length), aOff, lda, host(b, b.length), bOff, ldb,
                                beta, cc, cOff, ldc);
                        Tensor gc = beta == 0f ? poisoned(c.length) : up(c, c.length);
                        gpu.gemm(ta, tb, m, n, k, 0.7f, up(a, a.length), aOff, lda, up(b, b.length), bOff, ldb, beta,
                                gc, cOff, ldc);
                        float[] got = down(gc);
                        float[] want = cc.floats();
                        for (int i = 0; i < m; i++) { // only C's block: the rest of a poisoned C stays NaN
                            float[] wr = java.util.Arrays.copyOfRange(want, cOff + i * ldc, cOff + i * ldc + n);
                            float[] gr = java.util.Arrays.copyOfRange(got, cOff + i * ldc, cOff + i * ldc + n);
                            assertClose(wr, gr, 2e-2, "bf16 gemm ta=" + ta + " tb=" + tb + " beta=" + beta + " row " + i);
                        }
                    }
                }
            }
        } finally {
            gpu.setGemmPrecision(CudaBackend.GemmPrecision.F32);
        }
    }

    @Test
    void axpyScaleSumSquares() {
        float[] x = rnd(r, 3000, 1);
        float[] y = rnd(r, 3100, 1);
        Tensor cy = host(y, y.length);
        Tensor gy = up(y, y.length);
        cpu.axpy(-0.3f, host(x, x.length), 11, cy, 17, 2900);
        gpu.axpy(-0.3f, up(x, x.length), 11, gy, 17, 2900);
        assertClose(cy.floats(), down(gy), 1e-6, "axpy");
        cpu.axpy(0.7f, host(x, x.length), 12, cy, 16, 2903); // aligned: float4 with a tail of 3
        gpu.axpy(0.7f, up(x, x.length), 12, gy, 16, 2903);
        assertClose(cy.floats(), down(gy), 1e-6, "axpy (float4)");
        cpu.scale(cy, 1.7f);
        gpu.scale(gy, 1.7f);
        assertClose(cy.floats(), down(gy), 1e-6, "scale");
        float[] big = rnd(r, 1_000_003, 2);
        double e = cpu.sumSquares(host(big, big.length));
        double g = gpu.sumSquares(up(big, big.length));
        assertEquals(e, g, Math.abs(e) * 1e-10, "sumSquares (both in double)");
    }

    @Test
    void sumSquaresOfManyTensorsInOneRoundTrip() {
        int[] sizes = {1, 255, 256, 257, 70_001, 1_000_003, 3};
        java.util.List<Tensor> gs = new java.util.ArrayList<>();
        double[] expected = new double[sizes.length];
        for (int i = 0; i < sizes.length; i++) {
            float[] v = rnd(r, sizes[i], 1 + i);
            expected[i] = cpu.sumSquares(host(v, v.length));
            gs.add(up(v, v.length));
        }
        double[] got = gpu.sumSquares(gs);
        assertEquals(sizes.length, got.length);
        for (int i = 0; i < sizes.length; i++) {
            assertEquals(expected[i], got[i], Math.abs(expected[i]) * 1e-10, "tensor " + i + " of " + sizes[i]);
            assertEquals(gpu.sumSquares(gs.get(i)), got[i], 0.0, "same kernels as the single form");
        }
        assertEquals(0, gpu.sumSquares(java.util.List.of()).length);
    }

    // ------------------------------------------------------------------ transformer layers

    @Test
    void rmsNormForwardBackward() {
        // {dim, rows}: lanes per row 16 and 32 (float4 kernels, several row blocks and rows per block; 1536 and 2048
        // with 16 float4 a lane, the sums in shared memory), and 2052 and 12 (block per row)
        for (int[] dr : new int[][] {{64, 300}, {1000, 300}, {2048, 300}, {1536, 700}, {2052, 300}, {64, 9001},
                {1024, 4500}, {2048, 8192}, {12, 77}}) {
            int dim = dr[0];
            int rows = dr[1];
            float[] x = rnd(r, rows * dim, 1);
            float[] w = rnd(r, dim, 1);
            float[] dy = rnd(r, rows * dim, 1);
            float[] dw0 = rnd(r, dim, 1);
            Tensor cy = Tensor.zeros(DType.F32, rows * dim);
            Tensor cr = Tensor.zeros(DType.F32, rows);
            cpu.rmsNormForward(host(x, x.length), host(w, dim), 1e-6f, rows, dim, cy, cr);
            Tensor gx = up(x, x.length);
            Tensor gw = up(w, dim);
            Tensor gyT = poisoned(rows * dim);
            Tensor gr = poisoned(rows);
            gpu.rmsNormForward(gx, gw, 1e-6f, rows, dim, gyT, gr);
            assertClose(cy.floats(), down(gyT), 1e-5, "rmsNorm y dim " + dim);
            assertClose(cr.floats(), down(gr), 1e-5, "rmsNorm rstd dim " + dim);
            Tensor cdx = Tensor.zeros(DType.F32, rows * dim);
            Tensor cdw = host(dw0, dim);
            cpu.rmsNormBackward(host(dy, dy.length), host(x, x.length), host(w, dim), cr, rows, dim, cdx, cdw);
            Tensor gdx = poisoned(rows * dim);
            Tensor gdw = up(dw0, dim);
            gpu.rmsNormBackward(up(dy, dy.length), gx, gw, gr, rows, dim, gdx, gdw);
            assertClose(cdx.floats(), down(gdx), 1e-5, "rmsNorm dx dim " + dim);
            assertClose(cdw.floats(), down(gdw), 1e-5, "rmsNorm dw (accumulated) dim " + dim);
        }
    }

    @Test
    void theResidualNormsAreTheAxpyAndTheNormBitForBit() {
        // the vectorised kernels (the add in their pass) and the block-per-row ones (axpy, then the norm)
        for (int[] dr : new int[][] {{64, 300}, {1024, 700}, {2048, 513}, {2052, 65}, {12, 77}}) {
            int dim = dr[0];
            int rows = dr[1];
            int n = rows * dim;
            String what = "dim " + dim;
            float[] a = rnd(r, n, 1);
            float[] x = rnd(r, n, 1);
            float[] w = rnd(r, dim, 1);
            float[] dy = rnd(r, n, 1);
            float[] dres = rnd(r, n, 1);
            float[] dw0 = rnd(r, dim, 1);
            Tensor gw = up(w, dim);
            // forward: x2 = a + x in place, y = norm(x2)
            Tensor sep = up(a, n);
            Tensor sepY = poisoned(n);
            Tensor sepR = poisoned(rows);
            gpu.axpy(1f, up(x, n), 0, sep, 0, n);
            gpu.rmsNormForward(sep, gw, 1e-6f, rows, dim, sepY, sepR);
            Tensor fused = up(a, n);
            Tensor fusedY = poisoned(n);
            Tensor fusedR = poisoned(rows);
            gpu.residualRmsNormForward(fused, up(x, n), gw, 1e-6f, rows, dim, fusedY, fusedR);
            assertSameBits(down(sep), down(fused), what + ": the residual stream");
            assertSameBits(down(sepY), down(fusedY), what + ": y");
            assertSameBits(down(sepR), down(fusedR), what + ": rstd");
            // backward: dx = norm'(dy) + dres, dw accumulated
            Tensor sepDx = poisoned(n);
            Tensor sepDw = up(dw0, dim);
            gpu.rmsNormBackward(up(dy, n), sep, gw, sepR, rows, dim, sepDx, sepDw);
            gpu.axpy(1f, up(dres, n), 0, sepDx, 0, n);
            Tensor fusedDx = poisoned(n);
            Tensor fusedDw = up(dw0, dim);
            gpu.rmsNormBackwardResidual(up(dy, n), sep, gw, sepR, rows, dim, up(dres, n), fusedDx, fusedDw);
            assertSameBits(down(sepDx), down(fusedDx), what + ": dx");
            assertSameBits(down(sepDw), down(fusedDw), what + ": dw");
        }
    }

    @Test
    void ropeForwardAndInverse() {
        ropeForwardAndInverse(64); // from the cos/sin table, float4
        ropeForwardAndInverse(36); // half % 4 != 0: rope_f32
    }

    private void ropeForwardAndInverse(int d) {
        int tokens = 2 * 50, heads = 3, seq = 50;
        float[] x = rnd(r, tokens * heads * d, 1);
        for (boolean inverse : new boolean[] {false, true}) {
            Tensor c = host(x, x.length);
            cpu.rope(c, tokens, heads, d, seq, 1_000_000f, inverse);
            Tensor g = up(x, x.length);
            gpu.rope(g, tokens, heads, d, seq, 1_000_000f, inverse);
            assertClose(c.floats(), down(g), 1e-6, "rope inverse=" + inverse);
        }
    }

    /** One way of running attention on the GPU and the tolerance it is held to. */
    private record AttnConfig(CudaBackend.AttentionMode mode, CudaBackend.GemmPrecision precision, long chunkBytes,
                              double tol) {
        @Override
        public String toString() {
            return mode + "/" + precision + (chunkBytes > 0 ? "/chunk=" + chunkBytes : "");
        }
    }

    /**
     * Attention against the CPU reference in every mode: the batched-GEMM path in F32 (1e-4), TF32 (5e-3: tf32 operands, about 5e-4 relative each, through two products and
     * an exp) and BF16 (2e-2: bf16 operands, about 4e-3 relative each), plus F32 with a one-head chunk budget so that
     * the chunk loops (query heads of a group and kv heads split across chunks) are exercised, and the flash kernels
     * (2e-2, bf16 operands; head dims other than 64 and 128 run the GEMM path; more cases in FlashAttentionTest).
     */
    @Test
    void attentionForwardBackward() {
        int[][] shapes = {{2, 37, 4, 2, 16}, {1, 70, 4, 1, 64}, {2, 33, 2, 2, 128}, {1, 65, 8, 2, 100}, {1, 5, 2, 1, 256},
            {2, 77, 6, 2, 64}, {1, 100, 3, 1, 16}, {2, 129, 6, 3, 64}};
        AttnConfig[] configs = {
            new AttnConfig(CudaBackend.AttentionMode.GEMM, CudaBackend.GemmPrecision.F32, 0, 1e-4),
            new AttnConfig(CudaBackend.AttentionMode.GEMM, CudaBackend.GemmPrecision.F32, 1, 1e-4),
            new AttnConfig(CudaBackend.AttentionMode.GEMM, CudaBackend.GemmPrecision.TF32, 0, 5e-3),
            new AttnConfig(CudaBackend.AttentionMode.GEMM, CudaBackend.GemmPrecision.BF16, 0, 2e-2),
            new AttnConfig(CudaBackend.AttentionMode.FLASH, CudaBackend.GemmPrecision.BF16, 0, 2e-2),
        };
        CudaBackend.AttentionMode mode0 = gpu.attentionMode();
        CudaBackend.GemmPrecision prec0 = gpu.gemmPrecision();
        long chunk0 = gpu.attentionChunkBytes();
        StringBuilder log = new StringBuilder("\n=== attention max error / max |ref| ===\n");
        try {
            for (int[] s : shapes) {
                int b = s[0], t = s[1], hq = s[2], hkv = s[3], d = s[4];
                float scale = (float) (1 / Math.sqrt(d));
                int nq = b * t * hq * d, nkv = b * t * hkv * d, nl = b * hq * t;
                float[] q = rnd(r, nq, 1), k = rnd(r, nkv, 1), v = rnd(r, nkv, 1), dout = rnd(r, nq, 1);
                Tensor co = Tensor.zeros(DType.F32, nq);
                Tensor cl = Tensor.zeros(DType.F32, nl);
                cpu.attentionForward(host(q, nq), host(k, nkv), host(v, nkv), b, t, hq, hkv, d, scale, co, cl);
                Tensor cdq = Tensor.zeros(DType.F32, nq), cdk = Tensor.zeros(DType.F32, nkv);
                Tensor cdv = Tensor.zeros(DType.F32, nkv);
                cpu.attentionBackward(host(dout, nq), host(q, nq), host(k, nkv), host(v, nkv), co, cl, b, t, hq, hkv,
                        d, scale, cdq, cdk, cdv);
                for (AttnConfig c : configs) {
                    gpu.setAttentionMode(c.mode());
                    gpu.setGemmPrecision(c.precision());
                    gpu.setAttentionChunkBytes(c.chunkBytes() > 0 ? c.chunkBytes() : chunk0);
                    Tensor gq = up(q, nq), gk = up(k, nkv), gv = up(v, nkv);
                    Tensor go = poisoned(nq), gl = poisoned(nl);
                    gpu.attentionForward(gq, gk, gv, b, t, hq, hkv, d, scale, go, gl);
                    String what = java.util.Arrays.toString(s) + " " + c;
                    Tensor gdq = poisoned(nq), gdk = poisoned(nkv), gdv = poisoned(nkv);
                    gpu.attentionBackward(up(dout, nq), gq, gk, gv, go, gl, b, t, hq, hkv, d, scale, gdq, gdk, gdv);
                    float[][] ref = {co.floats(), cl.floats(), cdq.floats(), cdk.floats(), cdv.floats()};
                    float[][] got = {down(go), down(gl), down(gdq), down(gdk), down(gdv)};
                    String[] names = {"out", "lse", "dq", "dk", "dv"};
                    log.append(String.format("%-22s %-28s", java.util.Arrays.toString(s), c));
                    for (int i = 0; i < names.length; i++) {
                        log.append(String.format(" %s %.2e", names[i], relError(ref[i], got[i])));
                    }
                    log.append('\n');
                    for (int i = 0; i < names.length; i++) {
                        assertClose(ref[i], got[i], c.tol(), "attention " + names[i] + " " + what);
                    }
                }
            }
        } finally {
            System.out.println(log);
            gpu.setAttentionMode(mode0);
            gpu.setGemmPrecision(prec0);
            gpu.setAttentionChunkBytes(chunk0);
        }
    }

    private static double relError(float[] expected, float[] actual) {
        double scale = Math.max(1e-30, GpuTestSupport.maxAbs(expected)), worst = 0;
        for (int i = 0; i < expected.length; i++) {
            double e = Math.abs((double) expected[i] - actual[i]);
            worst = Double.isNaN(e) ? Double.NaN : Math.max(worst, e);
        }
        return worst / scale;
    }

    @Test
    void embedding() {
        int vocab = 97, hidden = 40, tokens = 300;
        float[] table = rnd(r, vocab * hidden, 1);
        int[] ids = r.ints(tokens, 0, vocab).toArray();
        ids[5] = ids[6] = ids[7]; // repeated ids accumulate
        Tensor co = Tensor.zeros(DType.F32, tokens * hidden);
        cpu.embeddingForward(host(table, table.length), Tensor.ofInts(ids.clone(), tokens), tokens, hidden, co);
        Tensor go = poisoned(tokens * hidden);
        gpu.embeddingForward(up(table, table.length), upInts(ids), tokens, hidden, go);
        assertClose(co.floats(), down(go), 0, "embedding forward");
        float[] dOut = rnd(r, tokens * hidden, 1);
        float[] dt0 = rnd(r, vocab * hidden, 1);
        assertEmbeddingBackwardIsTheCpus(dOut, ids, hidden, dt0);
        int[] bad = ids.clone();
        bad[11] = -2;
        gpu.embeddingBackward(up(dOut, dOut.length), upInts(bad), tokens, hidden, up(dt0, dt0.length));
        IllegalArgumentException b = assertThrows(IllegalArgumentException.class, gpu::synchronize);
        assertTrue(b.getMessage().contains("embeddingBackward: token id -2 at position 11"), b.getMessage());
        ids[9] = vocab;
        gpu.embeddingForward(up(table, table.length), upInts(ids), tokens, hidden, go);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, gpu::synchronize);
        assertTrue(e.getMessage().contains("token id " + vocab + " at position 9"), e.getMessage());
        gpu.synchronize(); // the error word was reset
    }

    /**
     * The device finds each id's tokens: an id held by tokens in many of the kernel's chunks of 256 and at the first
     * and last positions, rows wider than a block, a table that already holds a gradient (the tied LM head's).
     */
    @Test
    void embeddingBackwardOfRepeatedIdsAcrossChunks() {
        int vocab = 50, hidden = 300, tokens = 1500;
        int[] ids = r.ints(tokens, 0, vocab).toArray();
        for (int n = 0; n < tokens; n += 7) {
            ids[n] = 3;
        }
        ids[tokens - 1] = 3;
        ids[1] = 49; // held by the second and the last-but-one token only
        ids[tokens - 2] = 49;
        assertEmbeddingBackwardIsTheCpus(rnd(r, tokens * hidden, 1), ids, hidden, rnd(r, vocab * hidden, 1));
    }

    /**
     * dTable0 + the rows of dOut added by id on the device equals the CPU's sum bit for bit: each row's tokens in
     * token order, as the CPU adds them (and so the same bits at every run).
     */
    private void assertEmbeddingBackwardIsTheCpus(float[] dOut, int[] ids, int hidden, float[] dTable0) {
        int tokens = ids.length;
        Tensor cpuTable = host(dTable0, dTable0.length);
        cpu.embeddingBackward(host(dOut, dOut.length), Tensor.ofInts(ids.clone(), tokens), tokens, hidden, cpuTable);
        Tensor gpuTable = up(dTable0, dTable0.length);
        gpu.embeddingBackward(up(dOut, dOut.length), upInts(ids), tokens, hidden, gpuTable);
        assertArrayEquals(cpuTable.floats(), down(gpuTable), "embedding backward");
    }

    @Test
    void crossEntropy() {
        crossEntropy(5003); // block per row, three passes
        crossEntropy(5004); // float4, one pass for max and sum
    }

    private void crossEntropy(int vocab) {
        int rows = 77;
        float[] l = rnd(r, rows * vocab, 4);
        int[] t = r.ints(rows, 0, vocab).toArray();
        t[3] = -100;
        t[40] = -100;
        Tensor cd = Tensor.zeros(DType.F32, rows * vocab);
        double ce = cpu.crossEntropy(host(l, l.length), Tensor.ofInts(t.clone(), rows), rows, vocab, 0.01f, cd);
        Tensor gd = poisoned(rows * vocab);
        double ge = gpu.crossEntropy(up(l, l.length), upInts(t), rows, vocab, 0.01f, gd);
        assertEquals(ce, ge, Math.abs(ce) * 1e-6, "summed loss");
        assertClose(cd.floats(), down(gd), 1e-5, "dLogits");
        // in place: the gradient written over the logits (what training does), same loss and gradient
        Tensor inPlace = up(l, l.length);
        double gi = gpu.crossEntropy(inPlace, upInts(t), rows, vocab, 0.01f, inPlace);
        assertEquals(ce, gi, Math.abs(ce) * 1e-6, "summed loss, in place");
        assertClose(cd.floats(), down(inPlace), 1e-5, "dLogits, in place");
        t[10] = vocab + 5;
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> gpu.crossEntropy(up(l, l.length), upInts(t), rows, vocab, 0.01f, gd));
        assertTrue(e.getMessage().contains("target id " + (vocab + 5) + " at row 10"), e.getMessage());
    }

    // ------------------------------------------------------------------ mixture of experts

    @Test
    void softmaxTopKStatsAndRouterBackward() {
        int rows = 333, experts = 128, k = 8;
        float[] logits = rnd(r, rows * experts, 2);
        Tensor cp = Tensor.zeros(DType.F32, rows * experts);
        cpu.softmaxRows(host(logits, logits.length), rows, experts, cp);
        Tensor gp = poisoned(rows * experts);
        gpu.softmaxRows(up(logits, logits.length), rows, experts, gp);
        assertClose(cp.floats(), down(gp), 1e-5, "softmaxRows");
        float[] probs = cp.floats().clone();
        // ties: row 0 has equal values everywhere, row 1 a tie at the top
        java.util.Arrays.fill(probs, 0, experts, 1f / experts);
        probs[experts + 17] = probs[experts + 90] = 0.9f;
        for (boolean normalize : new boolean[] {false, true}) {
            Tensor ci = Tensor.zeros(DType.I32, rows * k), cv = Tensor.zeros(DType.F32, rows * k),
                    cw = Tensor.zeros(DType.F32, rows * k);
            cpu.routerTopK(host(probs, probs.length), rows, experts, k, normalize, ci, cv, cw);
            Tensor gpr = up(probs, probs.length);
            Tensor gi = gpu.zeros(DType.I32, rows * k), gv = poisoned(rows * k), gw = poisoned(rows * k);
            gpu.routerTopK(gpr, rows, experts, k, normalize, gi, gv, gw);
            assertArrayEquals(ci.ints(), gpu.download(gi).ints(), "topIdx normalize=" + normalize);
            assertClose(cv.floats(), down(gv), 0, "topVal");
            assertClose(cw.floats(), down(gw), 1e-6, "weights");

            double[] cs = new double[2 * experts];
            double[] gs = new double[2 * experts];
            for (int e = 0; e < 2 * experts; e++) {
                cs[e] = gs[e] = e;
            }
            cpu.routerStats(ci, host(probs, probs.length), rows, experts, k, cs);
            gpu.routerStats(gi, gpr, rows, experts, k, gs);
            for (int e = 0; e < 2 * experts; e++) {
                assertEquals(cs[e], gs[e], 1e-5 * Math.max(1, Math.abs(cs[e])), "routerStats[" + e + "]");
            }

            float[] dw = rnd(r, rows * k, 1);
            float[] aux = rnd(r, experts, 0.1f);
            Tensor cdl = Tensor.zeros(DType.F32, rows * experts);
            cpu.routerBackward(host(dw, dw.length), ci, cv, host(probs, probs.length), host(aux, experts), rows,
                    experts, k, normalize, cdl);
            Tensor gdl = poisoned(rows * experts);
            gpu.routerBackward(up(dw, dw.length), gi, gv, gpr, up(aux, experts), rows, experts, k, normalize, gdl);
            assertClose(cdl.floats(), down(gdl), 1e-5, "routerBackward normalize=" + normalize);
        }
    }

    /** Top-k by warp (<= 256 experts) and by thread (more), and rows with a NaN (the scan's picks, bit for bit). */
    @Test
    void routerTopKWarpThreadAndNaN() {
        for (int experts : new int[] {32, 40, 300}) {
            int rows = 65, k = 4;
            float[] probs = rnd(r, rows * experts, 1);
            probs[0] = Float.NaN; // chosen first: nothing is greater than NaN
            probs[experts + 5] = Float.NaN;
            probs[2 * experts + 3] = probs[2 * experts + 9] = 7f; // a tie at the top
            for (boolean normalize : new boolean[] {false, true}) {
                Tensor ci = Tensor.zeros(DType.I32, rows * k), cv = Tensor.zeros(DType.F32, rows * k),
                        cw = Tensor.zeros(DType.F32, rows * k);
                cpu.routerTopK(host(probs, probs.length), rows, experts, k, normalize, ci, cv, cw);
                Tensor gi = gpu.zeros(DType.I32, rows * k), gv = poisoned(rows * k), gw = poisoned(rows * k);
                gpu.routerTopK(up(probs, probs.length), rows, experts, k, normalize, gi, gv, gw);
                String what = "experts " + experts + " normalize=" + normalize;
                assertArrayEquals(ci.ints(), gpu.download(gi).ints(), "topIdx " + what);
                assertArrayEquals(cv.floats(), down(gv), "topVal " + what);
                assertArrayEquals(cw.floats(), down(gw), 1e-6f, "weights " + what);
            }
        }
    }

    @Test
    void gatherScatterCombineSumSlots() {
        gatherScatterCombineSumSlots(72); // rows move as float4
        gatherScatterCombineSumSlots(37); // one float at a time
        gatherScatterCombineSumSlots(1032); // float4, four loads in flight per lane
    }

    private void gatherScatterCombineSumSlots(int width) {
        int tokens = 200, k = 4, n = tokens * k;
        float[] x = rnd(r, tokens * width, 1);
        int[] idx = new int[n];
        int[] perm = new int[n];
        for (int i = 0; i < n; i++) {
            idx[i] = r.nextInt(n);
            perm[i] = i;
        }
        for (int i = n - 1; i > 0; i--) {
            int j = r.nextInt(i + 1);
            int tmp = perm[i];
            perm[i] = perm[j];
            perm[j] = tmp;
        }
        Tensor cg = Tensor.zeros(DType.F32, n * width);
        cpu.gatherRows(host(x, x.length), Tensor.ofInts(idx.clone(), n), n, width, k, cg);
        Tensor gg = poisoned(n * width);
        gpu.gatherRows(up(x, x.length), upInts(idx), n, width, k, gg);
        assertClose(cg.floats(), down(gg), 0, "gatherRows");

        float[] slots = rnd(r, n * width, 1);
        Tensor cs = Tensor.zeros(DType.F32, n * width);
        cpu.scatterRows(host(slots, slots.length), Tensor.ofInts(perm.clone(), n), n, width, cs);
        Tensor gs = poisoned(n * width);
        gpu.scatterRows(up(slots, slots.length), upInts(perm), n, width, gs);
        assertClose(cs.floats(), down(gs), 0, "scatterRows");

        float[] w = rnd(r, n, 1);
        float[] dy = rnd(r, tokens * width, 1);
        float[] d0 = rnd(r, tokens * width, 1);
        int[] rowOfSlot = new int[n];
        for (int j = 0; j < n; j++) {
            rowOfSlot[perm[j]] = j;
        }
        Tensor gInv = upInts(new int[n]);
        gpu.invertIndex(upInts(perm), n, gInv);
        assertArrayEquals(rowOfSlot, gpu.download(gInv).ints(), "invertIndex");
        // the slots in slot order (rowOfSlot null), and the same slots read where the experts wrote them
        for (boolean byRow : new boolean[] {false, true}) {
            String how = byRow ? " (by row)" : "";
            float[] rows = byRow ? slotsByRow(slots, rowOfSlot, width) : slots;
            Tensor cIdx = byRow ? Tensor.ofInts(rowOfSlot.clone(), n) : null;
            Tensor gIdx = byRow ? gInv : null;
            Tensor cy = Tensor.zeros(DType.F32, tokens * width);
            cpu.moeCombine(host(rows, rows.length), cIdx, host(w, n), tokens, k, width, cy);
            Tensor gy = poisoned(tokens * width);
            gpu.moeCombine(up(rows, rows.length), gIdx, up(w, n), tokens, k, width, gy);
            assertClose(cy.floats(), down(gy), 1e-6, "moeCombine" + how);

            Tensor cds = Tensor.zeros(DType.F32, n * width), cdw = Tensor.zeros(DType.F32, n);
            cpu.moeCombineBackward(host(dy, dy.length), host(rows, rows.length), cIdx, host(w, n), tokens, k, width,
                    cds, cdw);
            Tensor gds = poisoned(n * width), gdw = poisoned(n);
            gpu.moeCombineBackward(up(dy, dy.length), up(rows, rows.length), gIdx, up(w, n), tokens, k, width, gds,
                    gdw);
            assertClose(cds.floats(), down(gds), 1e-6, "moeCombineBackward dRows" + how);
            assertClose(cdw.floats(), down(gdw), 1e-5, "moeCombineBackward dWeights" + how);

            Tensor cd = host(d0, d0.length);
            cpu.sumSlots(host(rows, rows.length), cIdx, tokens, k, width, cd);
            Tensor gd = up(d0, d0.length);
            gpu.sumSlots(up(rows, rows.length), gIdx, tokens, k, width, gd);
            assertClose(cd.floats(), down(gd), 1e-6, "sumSlots (accumulated)" + how);
        }
        // the output-row gradient written into a grouped GEMM operand (a BF16 tensor at bf16): the f32 products
        // rounded once, bit for bit
        CudaBackend.GemmPrecision prec = gpu.gemmPrecision();
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
        try {
            float[] rows = slotsByRow(slots, rowOfSlot, width);
            Tensor cds = Tensor.zeros(DType.BF16, n * width), cdw = Tensor.zeros(DType.F32, n);
            cpu.moeCombineBackward(host(dy, dy.length), host(rows, rows.length), Tensor.ofInts(rowOfSlot.clone(), n),
                    host(w, n), tokens, k, width, cds, cdw);
            Tensor gds = gpu.emptyGemmOperand(n, width), gdw = poisoned(n);
            assertEquals(gpu.effectiveGroupedMode() == CudaBackend.GroupedMode.KERNEL ? DType.BF16 : DType.F32,
                    gds.dtype(), "the GEMM operand's dtype");
            gpu.moeCombineBackward(up(dy, dy.length), up(rows, rows.length), gInv, up(w, n), tokens, k, width, gds,
                    gdw);
            assertArrayEquals(cds.floats(), gpu.download(gds).floats(), "moeCombineBackward into a GEMM operand");
            assertClose(cdw.floats(), down(gdw), 1e-5, "moeCombineBackward dWeights (GEMM operand)");
        } finally {
            gpu.setGemmPrecision(prec);
        }
        int[] notAPermutation = perm.clone();
        notAPermutation[5] = n;
        gpu.invertIndex(upInts(notAPermutation), n, gInv);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, gpu::synchronize);
        assertTrue(e.getMessage().contains("invertIndex") && e.getMessage().contains("not a permutation"),
                e.getMessage());

        idx[3] = -1;
        gpu.gatherRows(up(x, x.length), upInts(idx), n, width, k, gg);
        assertThrows(IllegalArgumentException.class, gpu::synchronize);
    }

    /** Slot-order rows placed where rowOfSlot says (row rowOfSlot[s] holds slot s). */
    private static float[] slotsByRow(float[] slots, int[] rowOfSlot, int width) {
        float[] rows = new float[slots.length];
        for (int s = 0; s < rowOfSlot.length; s++) {
            System.arraycopy(slots, s * width, rows, rowOfSlot[s] * width, width);
        }
        return rows;
    }

    @Test
    void adamw() {
        int n = 10_001;
        float[] p = rnd(r, n, 1), g = rnd(r, n, 1), m = rnd(r, n, 0.1f), v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = Math.abs((float) r.nextGaussian()) * 0.01f;
        }
        for (float wd : new float[] {0f, 0.1f}) {
            Tensor cp = host(p, n), cm = host(m, n), cv = host(v, n);
            cpu.adamw(cp, host(g, n), cm, cv, n, 1e-3f, 0.9f, 0.95f, 1e-8f, wd, 7);
            Tensor gp = up(p, n), gm = up(m, n), gv = up(v, n);
            gpu.adamw(gp, up(g, n), gm, gv, n, 1e-3f, 0.9f, 0.95f, 1e-8f, wd, 7);
            assertClose(cp.floats(), down(gp), 1e-6, "adamw param wd=" + wd);
            assertClose(cm.floats(), down(gm), 1e-6, "adamw m");
            assertClose(cv.floats(), down(gv), 1e-6, "adamw v");
        }
        // adamwStep: three slots in one step (float4 and scalar forms, with and without a bf16 compute copy), the
        // gradients read times a clipping coefficient, the sums of squares measured in the same pass: the CPU's
        // step (sumSquares, scale, adamw, convert) within f32 rounding, the copies bit for bit convert's
        int[] lens = {n - 1, n, 4096};
        for (double[] squares : new double[][] {null, new double[3]}) {
            List<Backend.AdamWSlot> cpuSlots = new ArrayList<>(), gpuSlots = new ArrayList<>();
            List<Tensor> copies = new ArrayList<>();
            for (int s = 0; s < 3; s++) {
                int len = lens[s];
                float[] pl = Arrays.copyOf(p, len), gl = Arrays.copyOf(g, len), ml = Arrays.copyOf(m, len);
                float[] vl = Arrays.copyOf(v, len);
                Tensor copy = s == 2 ? null : gpu.empty(DType.BF16, len);
                copies.add(copy);
                cpuSlots.add(new Backend.AdamWSlot(host(pl, len), host(gl, len), host(ml, len), host(vl, len),
                        s == 2 ? null : Tensor.zeros(DType.BF16, len)));
                gpuSlots.add(new Backend.AdamWSlot(up(pl, len), up(gl, len), up(ml, len), up(vl, len), copy));
            }
            double[] cpuSquares = squares == null ? null : new double[3];
            cpu.adamwStep(cpuSlots, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.37f, cpuSquares);
            gpu.adamwStep(gpuSlots, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.37f, squares);
            for (int s = 0; s < 3; s++) {
                String what = "adamwStep slot " + s + (squares == null ? "" : " (with sums of squares)");
                assertClose(cpuSlots.get(s).param().floats(), down(gpuSlots.get(s).param()), 1e-6, what + " param");
                assertClose(cpuSlots.get(s).m().floats(), down(gpuSlots.get(s).m()), 1e-6, what + " m");
                assertClose(cpuSlots.get(s).v().floats(), down(gpuSlots.get(s).v()), 1e-6, what + " v");
                if (copies.get(s) != null) {
                    Tensor rounded = gpu.empty(DType.BF16, lens[s]);
                    gpu.convert(gpuSlots.get(s).param(), rounded);
                    assertArrayEquals(down(rounded), down(copies.get(s)), what + ": the compute copy");
                }
                if (squares != null) {
                    assertEquals(cpuSquares[s], squares[s], 1e-12 * cpuSquares[s], what + ": sum of squares");
                }
            }
        }
    }
}
