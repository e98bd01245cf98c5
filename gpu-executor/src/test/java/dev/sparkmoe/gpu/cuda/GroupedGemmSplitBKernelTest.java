package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.roundedToBf16;
import static dev.sparkmoe.gpu.cuda.GroupedGemmKernelTest.assertMatches;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * {@link CudaBackend#groupedGemmSplitB} as one launch of the sm90 (wgmma) kernel with B in two blocks (the experts'
 * gate and up weights, two BF16 tensors [E, I, H] read in place), on compute capability 9.0 (skipped elsewhere and
 * without a GPU): forward NT, C [rows, 2I] = X [rows, H] x [Wg_e; Wu_e]^T, and input gradient NN, dX [rows, H] = dH
 * [rows, 2I] x [Wg_e; Wu_e]. Each case is checked against the same call run as two grouped GEMMs on the same kernel
 * (the Backend default, reached with F32 copies of the weights, which the kernel rounds back to the same bf16
 * values) and against the CPU on the bf16 values, with the tight relative tolerance of {@link GroupedGemmKernelTest}
 * (f32 sums in another order); that the fused launch ran is counted ({@link CudaBackend#groupedSplitLaunches}).
 * I = 200 and 100 put the split inside a 256-wide tile (NT) and inside a 64-deep K slice (NN); ragged groups include
 * m = 0; beta 0 over NaN-filled C, beta 1, and a BF16 C (the F32 C of the same launch rounded once, bit for bit).
 */
class GroupedGemmSplitBKernelTest {
    private static final double TIGHT = 1e-4;
    private static final int H = 136;

    private final CpuBackend cpu = new CpuBackend();

    /** The experts' operands of one case: routed rows per expert packed, weights [E, I, H] with gaps. */
    private record Case(boolean transB, int[] m, int[] n, int[] k, int[] aOff, int lda, int aLen, int[] wOff, int wLen,
                        int[] cOff, int ldc, int cLen, int split) {
        int groups() {
            return m.length;
        }

        String name() {
            return (transB ? "NT" : "NN") + " E=" + m.length + " I=" + split + " H=" + H;
        }
    }

    private static Case expertCase(boolean transB, int[] rows, int inter) {
        int e = rows.length;
        int[] m = rows.clone(), n = new int[e], k = new int[e], aOff = new int[e], wOff = new int[e], cOff = new int[e];
        int lda = transB ? H : 2 * inter, ldc = transB ? 2 * inter : H;
        int at = 0;
        for (int g = 0; g < e; g++) {
            n[g] = transB ? 2 * inter : H;
            k[g] = transB ? H : 2 * inter;
            aOff[g] = at * lda;
            cOff[g] = at * ldc;
            wOff[g] = g * (inter * H + 64); // a gap after each expert's block: a read past it finds other values
            at += rows[g];
        }
        return new Case(transB, m, n, k, aOff, lda, Math.max(1, at * lda), wOff, e * (inter * H + 64), cOff, ldc,
                Math.max(1, at * ldc), inter);
    }

    /** Routed rows per expert: ragged, empty experts, one over a 128-row tile, one of a single row. */
    private static int[] rows(int experts, Random r) {
        int[] rows = new int[experts];
        for (int g = 0; g < experts; g++) {
            rows[g] = g % 5 == 1 ? 0 : 1 + r.nextInt(90);
        }
        rows[0] = 300;
        rows[experts - 1] = 1;
        return rows;
    }

    private static boolean sm90(CudaBackend gpu) {
        return gpu.groupedSm90Supported();
    }

    /**
     * Runs the case on the GPU in KERNEL mode with the given kernel: the weights as BF16 tensors (fused where the
     * kernel is sm90) or as F32 copies (the default: two grouped GEMMs); A as F32 or BF16; C F32 or BF16 from c0.
     * Returns C and the split launches it made.
     */
    private static Object[] runGpu(CudaBackend gpu, GroupedGemm.Kernel kind, Case p, float alpha, float[] a,
                                   boolean a16, float[] wg, float[] wu, boolean bf16Weights, float beta, float[] c0,
                                   boolean c16) {
        CudaBackend.GroupedMode saved = gpu.groupedMode();
        gpu.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
        gpu.setGroupedKernel(kind);
        try (var scope = gpu.openScope()) {
            Tensor ga = gpu.upload(host(a, a.length));
            if (a16) {
                Tensor t = gpu.empty(DType.BF16, a.length);
                gpu.convert(ga, t);
                ga = t;
            }
            Tensor gwg = gpu.upload(host(wg, wg.length)), gwu = gpu.upload(host(wu, wu.length));
            if (bf16Weights) {
                Tensor g16 = gpu.empty(DType.BF16, wg.length), u16 = gpu.empty(DType.BF16, wu.length);
                gpu.convert(gwg, g16);
                gpu.convert(gwu, u16);
                gwg = g16;
                gwu = u16;
            }
            Tensor gc = gpu.upload(host(c0, c0.length));
            if (c16) {
                Tensor t = gpu.empty(DType.BF16, c0.length);
                gpu.convert(gc, t);
                gc = t;
            }
            long before = gpu.groupedSplitLaunches();
            gpu.groupedGemmSplitB(p.transB(), p.groups(), p.m(), p.n(), p.k(), alpha, ga, p.aOff(), p.lda(), gwg,
                    p.wOff(), gwu, p.wOff(), H, p.split(), beta, gc, p.cOff(), p.ldc());
            long launches = gpu.groupedSplitLaunches() - before;
            return new Object[] {gpu.download(gc).floats(), launches};
        } finally {
            gpu.setGroupedMode(saved);
            gpu.setGroupedKernel(GroupedGemm.Kernel.AUTO);
        }
    }

    private static float[] nans(int n) {
        float[] f = new float[n];
        Arrays.fill(f, Float.NaN);
        return f;
    }

    /** One case with alpha / beta: fused vs two calls vs the CPU, the launch count, and the BF16 C. */
    private void check(CudaBackend gpu, Case p, float alpha, float beta, boolean a16, long seed) {
        Random r = new Random(seed);
        float[] a = roundedToBf16(rnd(r, p.aLen(), 1));
        float[] wg = roundedToBf16(rnd(r, p.wLen(), 1));
        float[] wu = roundedToBf16(rnd(r, p.wLen(), 1));
        float[] c0 = beta == 0f ? nans(p.cLen()) : roundedToBf16(rnd(r, p.cLen(), 1));
        String what = p.name() + " alpha=" + alpha + " beta=" + beta + (a16 ? " (BF16 A)" : " (F32 A)") + " seed="
                + seed;
        int expectLaunches = (countActive(p) + GroupedGemm.MAX_GROUPS - 1) / GroupedGemm.MAX_GROUPS;

        float[] want = c0.clone();
        cpu.groupedGemmSplitB(p.transB(), p.groups(), p.m(), p.n(), p.k(), alpha, Tensor.of(a, a.length), p.aOff(),
                p.lda(), Tensor.of(wg, wg.length), p.wOff(), Tensor.of(wu, wu.length), p.wOff(), H, p.split(), beta,
                Tensor.of(want, want.length), p.cOff(), p.ldc());

        Object[] fused = runGpu(gpu, GroupedGemm.Kernel.SM90, p, alpha, a, a16, wg, wu, true, beta, c0, false);
        Object[] two = runGpu(gpu, GroupedGemm.Kernel.SM90, p, alpha, a, a16, wg, wu, false, beta, c0, false);
        assertEquals((long) expectLaunches, fused[1], what + ": fused launches (one per 64 active groups)");
        assertEquals(0L, two[1], what + ": F32 weights take the two-call default");
        float[] x = (float[]) fused[0];
        assertMatches((float[]) two[0], x, TIGHT, what + ": fused vs two grouped GEMMs");
        assertMatches(want, x, TIGHT, what + ": fused vs the CPU on the bf16 values");

        // the mma.sync kernel never fuses: the default's two calls, the same result
        Object[] mma = runGpu(gpu, GroupedGemm.Kernel.MMA_SYNC, p, alpha, a, a16, wg, wu, true, beta, c0, false);
        assertEquals(0L, mma[1], what + ": the mma.sync kernel takes the two-call default");
        assertMatches(want, (float[]) mma[0], TIGHT, what + " [mma.sync two calls] vs the CPU");

        // a BF16 C: the F32 C of the same fused launch rounded once (beta != 0: C0 holds bf16 values, exact in both)
        Object[] b16 = runGpu(gpu, GroupedGemm.Kernel.SM90, p, alpha, a, a16, wg, wu, true, beta, c0, true);
        assertEquals((long) expectLaunches, b16[1], what + ": fused launches into a BF16 C");
        float[] y = (float[]) b16[0];
        boolean[] inGroup = inGroups(p);
        int rounded = 0;
        for (int i = 0; i < y.length; i++) {
            float w = inGroup[i] ? DType.roundToBf16(x[i]) : c0[i];
            if (Float.floatToIntBits(w) != Float.floatToIntBits(y[i])) {
                throw new AssertionError(what + ": element " + i + " of the BF16 C is " + y[i] + ", want " + w
                        + (inGroup[i] ? " (the F32 C " + x[i] + " rounded)" : " (untouched)"));
            }
            rounded += inGroup[i] && x[i] != y[i] ? 1 : 0;
        }
        assertTrue(rounded > 0, what + ": no element of the BF16 C needed rounding (the check proves nothing)");
    }

    private static int countActive(Case p) {
        int n = 0;
        for (int g = 0; g < p.groups(); g++) {
            n += p.m()[g] > 0 && p.n()[g] > 0 ? 1 : 0;
        }
        return n;
    }

    private static boolean[] inGroups(Case p) {
        boolean[] in = new boolean[p.cLen()];
        for (int g = 0; g < p.groups(); g++) {
            for (int i = 0; i < p.m()[g]; i++) {
                Arrays.fill(in, p.cOff()[g] + i * p.ldc(), p.cOff()[g] + i * p.ldc() + p.n()[g], true);
            }
        }
        return in;
    }

    @Test
    void fusedLaunchMatchesTwoGroupedGemmsAndTheCpu() {
        CudaBackend gpu = GpuTestSupport.backend();
        assumeTrue(sm90(gpu), () -> "the fused split needs the sm90 kernel (compute capability 9.0); " + gpu.arch());
        long seed = System.nanoTime();
        for (boolean transB : new boolean[] {true, false}) {
            for (int inter : new int[] {200, 100}) {
                Case p = expertCase(transB, rows(12, new Random(seed)), inter);
                check(gpu, p, 1f, 0f, false, seed++);  // beta 0 over NaN, f32 A cast
                check(gpu, p, 0.7f, 1f, true, seed++); // beta 1 (accumulates), bf16 A in place
            }
        }
    }

    @Test
    void moreGroupsThanOneLaunchHolds() {
        CudaBackend gpu = GpuTestSupport.backend();
        assumeTrue(sm90(gpu), () -> "the fused split needs the sm90 kernel (compute capability 9.0); " + gpu.arch());
        long seed = System.nanoTime();
        for (boolean transB : new boolean[] {true, false}) {
            Case p = expertCase(transB, rows(150, new Random(seed)), 72); // 120 active experts: two launches
            check(gpu, p, 1.3f, 0.5f, false, seed++);
        }
    }

    /**
     * GroupedGemm's mirror of GBParams (no GPU needed): the byte offsets of the fields the host writes, computed from
     * the struct as grouped_gemm_params.cuh declares it (natural alignment of int, float and long long, arrays of
     * GB_MAX_GROUPS), and the size its static_assert states.
     */
    @Test
    void hostOffsetsMirrorGBParams() throws IOException {
        Path rel = Paths.get("src/main/resources/dev/sparkmoe/gpu/cuda/grouped_gemm_params.cuh");
        Path cuh = Files.exists(rel) ? rel : Paths.get("gpu-executor").resolve(rel);
        String src = Files.readString(cuh);
        int start = src.indexOf("struct GBParams {");
        String body = src.substring(start + 17, src.indexOf("};", start));
        Map<String, Long> at = new HashMap<>();
        long off = 0;
        Matcher f = Pattern.compile("(long long|int|float)\\s+([^;]+);").matcher(body);
        while (f.find()) {
            int size = f.group(1).equals("long long") ? 8 : 4;
            for (String name : f.group(2).split(",")) {
                name = name.trim();
                int count = name.endsWith("[GB_MAX_GROUPS]") ? GroupedGemm.MAX_GROUPS : 1;
                off = (off + size - 1) / size * size;
                at.put(name.replace("[GB_MAX_GROUPS]", ""), off);
                off += (long) size * count;
            }
        }
        off = (off + 7) / 8 * 8;
        Matcher a = Pattern.compile("sizeof\\(GBParams\\) == (\\d+)").matcher(src);
        assertTrue(a.find(), "no static_assert of sizeof(GBParams) in " + cuh);
        assertEquals(Long.parseLong(a.group(1)), off, "the struct as declared vs its static_assert");
        assertEquals(off, GroupedGemm.PARAMS_BYTES, "GroupedGemm.PARAMS_BYTES");
        assertTrue(off <= 4096, "GBParams must stay under the 4 KB kernel-parameter limit: " + off);
        long[][] mirror = {{at.get("a"), GroupedGemm.OFF_A}, {at.get("b"), GroupedGemm.OFF_B},
            {at.get("c"), GroupedGemm.OFF_C}, {at.get("m"), GroupedGemm.OFF_M}, {at.get("n"), GroupedGemm.OFF_N},
            {at.get("k"), GroupedGemm.OFF_K}, {at.get("tileStart"), GroupedGemm.OFF_TILE},
            {at.get("flags"), GroupedGemm.OFF_FLAGS}, {at.get("b2"), GroupedGemm.OFF_B2},
            {at.get("bSplit"), GroupedGemm.OFF_SPLIT}, {at.get("alpha"), 16}, {at.get("beta"), 20}};
        for (long[] m : mirror) {
            assertEquals(m[0], m[1], "a GBParams field's offset in the .cuh vs GroupedGemm (fields " + at + ")");
        }
    }

    @Test
    void badSplitsAndShortBlocksAreRefused() {
        CudaBackend gpu = GpuTestSupport.backend();
        assumeTrue(sm90(gpu), () -> "the fused split needs the sm90 kernel (compute capability 9.0); " + gpu.arch());
        CudaBackend.GroupedMode saved = gpu.groupedMode();
        gpu.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
        try (var scope = gpu.openScope()) {
            Tensor a = gpu.zeros(DType.F32, 64 * H);
            Tensor w = gpu.empty(DType.BF16, 2 * 64 * H);
            gpu.convert(gpu.zeros(DType.F32, 2 * 64 * H), w);
            Tensor shortW = gpu.empty(DType.BF16, 64 * H);
            gpu.convert(gpu.zeros(DType.F32, 64 * H), shortW);
            Tensor c = gpu.zeros(DType.F32, 64 * 256);
            int[] off = {0, 0};
            // group 1's n (40) is below the split (64)
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> gpu.groupedGemmSplitB(true,
                    2, new int[] {8, 8}, new int[] {128, 40}, new int[] {H, H}, 1f, a, off, H, w, off, w, off, H, 64,
                    0f, c, off, 128));
            assertTrue(e.getMessage().contains("group 1 has n = 40") && e.getMessage().contains("split 64"),
                    e.getMessage());
            // the second block needs 128 rows of H at offset 64 * H: past the end of the short tensor
            IndexOutOfBoundsException o = assertThrows(IndexOutOfBoundsException.class, () -> gpu.groupedGemmSplitB(
                    false, 1, new int[] {8}, new int[] {H}, new int[] {192}, 1f, a, new int[] {0}, 192, w,
                    new int[] {0}, shortW, new int[] {8}, H, 64, 0f, c, new int[] {0}, H));
            assertTrue(o.getMessage().contains("second block") && o.getMessage().contains("128 x " + H),
                    o.getMessage());
            assertEquals(GroupedGemm.Kernel.SM90, gpu.effectiveGroupedKernel());
        } finally {
            gpu.setGroupedMode(saved);
        }
    }
}
