package dev.sparkmoe.core.backend;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.Test;

/**
 * {@link Backend#groupedGemmSplitB}'s default (the path of every backend that does not fuse it): equal bit for bit to
 * the two explicit {@link Backend#groupedGemm} calls it stands for, and equal to one grouped GEMM on B's two blocks
 * stacked into one operand (bit for bit where the blocks give disjoint columns of C, transB; within f32 rounding where
 * they add into the same sums, no transB); bad splits refused with the values named.
 */
class GroupedGemmSplitBTest {
    private final CpuBackend be = new CpuBackend();

    /** Ragged groups: one empty (m = 0, shorter than the split), one exactly at the split, the others past it. */
    private static final int[] M = {5, 0, 3, 7};
    private static final int SPLIT = 6;

    /** B's stored rows per group: n (transB) or k, at least SPLIT where m > 0. */
    private static final int[] ALONG = {11, 2, 6, 9};

    @ParameterizedTest(name = "transB={0} beta={1}")
    @CsvSource({"true, 0", "true, 0.5", "false, 0", "false, 1"})
    void defaultIsTwoGroupedGemmsAndTheStackedGemm(boolean transB, float beta) {
        int groups = M.length;
        int other = 4; // k (transB) or n: the dimension B's blocks share
        int[] n = new int[groups], k = new int[groups];
        for (int g = 0; g < groups; g++) {
            n[g] = transB ? ALONG[g] : other;
            k[g] = transB ? other : ALONG[g];
        }
        int lda = 12, ldb = 5, ldc = 13; // padded strides: every block and row at an offset of its own
        int[] aOff = new int[groups], bOff = new int[groups], b2Off = new int[groups], cOff = new int[groups];
        int[] sOff = new int[groups];
        int aAt = 1, bAt = 2, b2At = 3, cAt = 1, sAt = 0;
        for (int g = 0; g < groups; g++) {
            aOff[g] = aAt;
            aAt += M[g] * lda + 1;
            bOff[g] = bAt;
            bAt += SPLIT * ldb + 2;
            b2Off[g] = b2At;
            b2At += Math.max(0, ALONG[g] - SPLIT) * ldb + 3;
            cOff[g] = cAt;
            cAt += M[g] * ldc + 2;
            sOff[g] = sAt;
            sAt += ALONG[g] * ldb;
        }
        Rand r = new Rand(transB ? 11 : 12);
        float[] a = r.floats(aAt, 1), b = r.floats(bAt, 1), b2 = r.floats(b2At, 1), c0 = r.floats(cAt, 1);
        float alpha = 0.75f;

        float[] split = c0.clone();
        be.groupedGemmSplitB(transB, groups, M, n, k, alpha, Tensor.of(a, a.length), aOff, lda, Tensor.of(b, b.length),
                bOff, Tensor.of(b2, b2.length), b2Off, ldb, SPLIT, beta, Tensor.of(split, split.length), cOff, ldc);

        // the two calls written out: transB, C's columns [0, split) from B1 and the rest from B2; else A's columns
        // [0, split) times B1, then the rest times B2 added (beta 1)
        float[] two = c0.clone();
        int[] first = new int[groups], rest = new int[groups], off2 = new int[groups];
        for (int g = 0; g < groups; g++) {
            first[g] = SPLIT;
            rest[g] = Math.max(0, ALONG[g] - SPLIT);
            off2[g] = (transB ? cOff[g] : aOff[g]) + SPLIT;
        }
        Tensor at = Tensor.of(a, a.length), ct = Tensor.of(two, two.length);
        if (transB) {
            be.groupedGemm(false, true, groups, M, first, k, alpha, at, aOff, lda, Tensor.of(b, b.length), bOff, ldb,
                    beta, ct, cOff, ldc);
            be.groupedGemm(false, true, groups, M, rest, k, alpha, at, aOff, lda, Tensor.of(b2, b2.length), b2Off,
                    ldb, beta, ct, off2, ldc);
        } else {
            be.groupedGemm(false, false, groups, M, n, first, alpha, at, aOff, lda, Tensor.of(b, b.length), bOff, ldb,
                    beta, ct, cOff, ldc);
            be.groupedGemm(false, false, groups, M, n, rest, alpha, at, off2, lda, Tensor.of(b2, b2.length), b2Off,
                    ldb, 1f, ct, cOff, ldc);
        }
        assertArrayEquals(two, split, "the default is the two grouped GEMMs, bit for bit");

        // one grouped GEMM on B_g = [B1_g; B2_g] stacked along its stored rows
        float[] stacked = new float[Math.max(1, sAt)];
        for (int g = 0; g < groups; g++) {
            for (int row = 0; row < ALONG[g]; row++) {
                int from = row < SPLIT ? bOff[g] + row * ldb : b2Off[g] + (row - SPLIT) * ldb;
                float[] src = row < SPLIT ? b : b2;
                if (M[g] > 0) {
                    System.arraycopy(src, from, stacked, sOff[g] + row * ldb, other);
                }
            }
        }
        float[] one = c0.clone();
        be.groupedGemm(false, transB, groups, M, n, k, alpha, Tensor.of(a, a.length), aOff, lda,
                Tensor.of(stacked, stacked.length), sOff, ldb, beta, Tensor.of(one, one.length), cOff, ldc);
        int changed = 0;
        for (int i = 0; i < one.length; i++) {
            changed += one[i] != c0[i] ? 1 : 0;
            if (transB) {
                assertEquals(one[i], split[i], 0f, "element " + i + ": each column of C from one block, as stacked");
            } else {
                assertEquals(one[i], split[i], 1e-5f * (1 + Math.abs(one[i])), "element " + i + " vs stacked B");
            }
        }
        assertTrue(changed > 0, "the GEMM wrote nothing (the comparison proves nothing)");
    }

    @Test
    void badSplitsAreRefusedNamingTheValues() {
        float[] x = new float[256];
        Tensor t = Tensor.of(x, x.length);
        int[] off = {0, 0};
        // transB: group 1's n (5) is below the split (6)
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> be.groupedGemmSplitB(true, 2,
                new int[] {2, 3}, new int[] {8, 5}, new int[] {4, 4}, 1f, t, off, 4, t, off, t, off, 4, 6, 0f, t, off,
                8));
        assertTrue(e.getMessage().contains("group 1 has n = 5") && e.getMessage().contains("split 6"), e.getMessage());
        // no transB: the k of group 0 (3) is below the split (4)
        e = assertThrows(IllegalArgumentException.class, () -> be.groupedGemmSplitB(false, 2, new int[] {2, 3},
                new int[] {4, 4}, new int[] {3, 8}, 1f, t, off, 8, t, off, t, off, 4, 4, 0f, t, off, 4));
        assertTrue(e.getMessage().contains("group 0 has k = 3") && e.getMessage().contains("split 4"), e.getMessage());
        // a negative split
        e = assertThrows(IllegalArgumentException.class, () -> be.groupedGemmSplitB(false, 1, new int[] {2},
                new int[] {4}, new int[] {8}, 1f, t, off, 8, t, off, t, off, 4, -1, 0f, t, off, 4));
        assertTrue(e.getMessage().contains("split -1 is negative"), e.getMessage());
        // an empty group (m = 0) may end before the split: nothing of it is read or written
        float[] before = x.clone();
        be.groupedGemmSplitB(true, 1, new int[] {0}, new int[] {2}, new int[] {4}, 1f, t, off, 4, t, off, t, off, 4, 6,
                0f, t, off, 8);
        assertArrayEquals(before, x);
    }
}
