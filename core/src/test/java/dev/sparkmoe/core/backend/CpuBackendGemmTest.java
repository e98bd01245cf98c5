package dev.sparkmoe.core.backend;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.Test;

/**
 * CpuBackend.gemm against a naive double-precision triple loop: all four transpose combinations, element offsets and
 * padded leading dimensions on A, B and C, beta 0 and 1, alpha != 1. Tolerance per element of C:
 * 1e-5 * (sum_p |alpha a_ip b_pj| + |beta c_ij|), above the f32 worst-case bound k * 2^-24 * sum|ab| for k <= 64.
 * Elements of C outside the [m, n] window (offset prefix, row padding, tail) must keep their exact bits.
 */
class CpuBackendGemmTest {
    private final CpuBackend be = new CpuBackend();

    @ParameterizedTest(name = "transA={0} transB={1} beta={2} m={3} n={4} k={5}")
    @CsvSource({
        "false, false, 0, 7, 5, 9",
        "false, true,  0, 7, 5, 9",
        "true,  false, 0, 7, 5, 9",
        "true,  true,  0, 7, 5, 9",
        "false, false, 1, 13, 17, 33",
        "false, true,  1, 13, 17, 33",
        "true,  false, 1, 13, 17, 33",
        "true,  true,  1, 13, 17, 33",
        "false, true,  1, 1, 64, 3",
        "true,  false, 0, 64, 1, 64",
    })
    void matchesDoubleTripleLoop(boolean transA, boolean transB, float beta, int m, int n, int k) {
        Rand rnd = new Rand(31L * m + 7L * n + k + (transA ? 1000 : 0) + (transB ? 2000 : 0) + (long) beta * 5000);
        float alpha = 0.75f;
        int aRows = transA ? k : m;
        int aCols = transA ? m : k;
        int bRows = transB ? n : k;
        int bCols = transB ? k : n;
        int lda = aCols + 3;
        int ldb = bCols + 2;
        int ldc = n + 5;
        int aOff = 11;
        int bOff = 4;
        int cOff = 9;
        Tensor a = rnd.tensor(1, aOff + aRows * lda + 6);
        Tensor b = rnd.tensor(1, bOff + bRows * ldb + 3);
        Tensor c = rnd.tensor(1, cOff + m * ldc + 7);
        float[] c0 = c.floats().clone();
        float[] af = a.floats();
        float[] bf = b.floats();

        be.gemm(transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);

        float[] cf = c.floats();
        boolean[] inWindow = new boolean[cf.length];
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double acc = 0;
                double mag = 0;
                for (int p = 0; p < k; p++) {
                    double av = transA ? af[aOff + p * lda + i] : af[aOff + i * lda + p];
                    double bv = transB ? bf[bOff + j * ldb + p] : bf[bOff + p * ldb + j];
                    acc += av * bv;
                    mag += Math.abs(av * bv);
                }
                int ci = cOff + i * ldc + j;
                inWindow[ci] = true;
                double expected = alpha * acc + beta * (double) c0[ci];
                double tol = 1e-5 * (Math.abs(alpha) * mag + Math.abs(beta * c0[ci]));
                double diff = Math.abs(expected - cf[ci]);
                int ii = i;
                int jj = j;
                assertTrue(diff <= tol, () -> "C[" + ii + "," + jj + "]: expected " + expected + ", got " + cf[ci]
                        + " (|diff| " + diff + " > " + tol + ")");
            }
        }
        for (int x = 0; x < cf.length; x++) {
            if (!inWindow[x]) {
                assertEquals(Float.floatToRawIntBits(c0[x]), Float.floatToRawIntBits(cf[x]),
                        "C element " + x + " outside the [m, n] window was written");
            }
        }
    }

    @Test
    void zeroKScalesCByBeta() {
        Rand rnd = new Rand(3);
        Tensor a = rnd.tensor(1, 4);
        Tensor c = rnd.tensor(1, 2, 3);
        float[] c0 = c.floats().clone();
        be.gemm(false, false, 2, 3, 0, 1f, a, 0, 1, a, 0, 3, 0.5f, c, 0, 3);
        for (int i = 0; i < 6; i++) {
            assertEquals(c0[i] * 0.5f, c.floats()[i]);
        }
    }

    /**
     * groupedGemm into a BF16 C (a weight gradient in FSDP's param dtype): every group's C_g is the F32 C of the same
     * call rounded to bf16 once, bit for bit, for beta 0 over NaN (C never read), beta 1 and 0.5 over bf16 values (read
     * widened) and groups with k = 0 (beta * C rounded); ragged and empty groups, padded strides, every transposition.
     * Elements outside every group keep their bits. An F16 or integer C is refused, naming its dtype.
     */
    @Test
    void groupedGemmIntoBf16CIsTheF32CRoundedOnce() {
        int[] m = {5, 0, 3, 9, 1, 4, 6};
        int[] n = {7, 3, 1, 6, 9, 2, 3};
        int[] k = {4, 2, 0, 11, 3, 0, 1};
        int groups = m.length;
        int rounded = 0;
        for (int t = 0; t < 4; t++) {
            boolean transA = (t & 2) != 0;
            boolean transB = (t & 1) != 0;
            for (float beta : new float[] {0f, 1f, 0.5f}) {
                Rand rnd = new Rand(100L * t + (long) (beta * 10));
                int lda = 14;
                int ldb = 13;
                int ldc = 11;
                int[] aOff = new int[groups];
                int[] bOff = new int[groups];
                int[] cOff = new int[groups];
                int aLen = 3;
                int bLen = 1;
                int cLen = 2;
                for (int g = 0; g < groups; g++) {
                    aOff[g] = aLen;
                    bOff[g] = bLen;
                    cOff[g] = cLen;
                    aLen += (transA ? k[g] : m[g]) * lda + 2;
                    bLen += (transB ? n[g] : k[g]) * ldb + 1;
                    cLen += m[g] * ldc + 3;
                }
                Tensor a = rnd.tensor(1, aLen);
                Tensor b = rnd.tensor(1, bLen);
                float[] c0 = new float[cLen];
                float[] init = rnd.floats(cLen, 2);
                for (int i = 0; i < cLen; i++) {
                    c0[i] = beta == 0f ? Float.NaN : DType.roundToBf16(init[i]);
                }
                Tensor c32 = Tensor.of(c0.clone(), cLen);
                Tensor c16 = Tensor.ofFloating(DType.BF16, c0.clone(), cLen);
                be.groupedGemm(transA, transB, groups, m, n, k, 0.75f, a, aOff, lda, b, bOff, ldb, beta, c32, cOff,
                        ldc);
                be.groupedGemm(transA, transB, groups, m, n, k, 0.75f, a, aOff, lda, b, bOff, ldb, beta, c16, cOff,
                        ldc);
                boolean[] inGroup = new boolean[cLen];
                for (int g = 0; g < groups; g++) {
                    for (int i = 0; i < m[g]; i++) {
                        for (int j = 0; j < n[g]; j++) {
                            inGroup[cOff[g] + i * ldc + j] = true;
                        }
                    }
                }
                float[] f32 = c32.floats();
                float[] bf = c16.floats();
                for (int i = 0; i < cLen; i++) {
                    float want = inGroup[i] ? DType.roundToBf16(f32[i]) : c0[i];
                    String where = "transA=" + transA + " transB=" + transB + " beta=" + beta + " element " + i;
                    assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(bf[i]),
                            where + ": " + bf[i] + ", want " + want + (inGroup[i] ? " (the F32 C " + f32[i]
                            + " rounded)" : " (untouched)"));
                    if (inGroup[i]) {
                        assertTrue(Float.isFinite(bf[i]), where + " is " + bf[i]);
                        rounded += f32[i] != bf[i] ? 1 : 0;
                    }
                }
            }
        }
        assertTrue(rounded > 100, "only " + rounded + " results needed rounding: the check is too weak");

        Tensor a = Tensor.of(new float[4], 4);
        for (DType bad : new DType[] {DType.F16, DType.I32}) {
            Tensor c = Tensor.zeros(bad, 4);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> be.groupedGemm(false,
                    false, 1, new int[] {2}, new int[] {2}, new int[] {2}, 1f, a, new int[] {0}, 2, a, new int[] {0},
                    2, 0f, c, new int[] {0}, 2));
            assertTrue(e.getMessage().contains(bad.toString()) && e.getMessage().contains("F32 or BF16"),
                    e.getMessage());
        }
    }

    @Test
    void wrongSpansThrowJavaExceptions() {
        Rand rnd = new Rand(5);
        int m = 4;
        int n = 3;
        int k = 5;
        Tensor a = rnd.tensor(1, m * k);
        Tensor b = rnd.tensor(1, k * n);
        Tensor c = rnd.tensor(1, m * n);
        // Exact fit works.
        be.gemm(false, false, m, n, k, 1f, a, 0, k, b, 0, n, 0f, c, 0, n);
        // A one element too short through its offset.
        assertThrows(IndexOutOfBoundsException.class,
                () -> be.gemm(false, false, m, n, k, 1f, a, 1, k, b, 0, n, 0f, c, 0, n));
        // B too small for the transposed reading with a padded stride.
        assertThrows(IndexOutOfBoundsException.class,
                () -> be.gemm(false, true, m, n, k, 1f, a, 0, k, b, 0, k + 1, 0f, c, 0, n));
        // C: stride too large for the buffer.
        assertThrows(IndexOutOfBoundsException.class,
                () -> be.gemm(false, false, m, n, k, 1f, a, 0, k, b, 0, n, 0f, c, 0, n + 1));
        // Negative offset.
        assertThrows(IndexOutOfBoundsException.class,
                () -> be.gemm(false, false, m, n, k, 1f, a, -1, k, b, 0, n, 0f, c, 0, n));
        // Far out of range offset on C (would be a native write past the array).
        assertThrows(IndexOutOfBoundsException.class,
                () -> be.gemm(false, false, m, n, k, 1f, a, 0, k, b, 0, n, 1f, c, 1 << 20, n));
        // Leading dimension smaller than the row length.
        assertThrows(IllegalArgumentException.class,
                () -> be.gemm(false, false, m, n, k, 1f, a, 0, k - 1, b, 0, n, 0f, c, 0, n));
        assertThrows(IllegalArgumentException.class,
                () -> be.gemm(true, false, m, n, k, 1f, a, 0, m - 1, b, 0, n, 0f, c, 0, n));
    }

    /**
     * training.cpu_blas_threads: a backend made with a thread count sets OpenBLAS's (process-wide) pool, one made
     * without keeps it, the products stay right with two threads, and a count below 1 is refused by name.
     */
    @Test
    void blasThreadsAreSetByTheBackendThatAsksAndKeptByTheOthers() {
        try {
            CpuBackend two = new CpuBackend(2);
            assertEquals(2, CpuBackend.blasThreads());
            new CpuBackend();
            assertEquals(2, CpuBackend.blasThreads(), "a backend without a count keeps the process's");
            int n = 96;
            Rand rnd = new Rand(3);
            float[] a = rnd.floats(n * n, 0.5);
            float[] b = rnd.floats(n * n, 0.5);
            Tensor c = Tensor.zeros(dev.sparkmoe.core.tensor.DType.F32, n, n);
            two.gemm(false, false, n, n, n, 1f, Tensor.of(a, n, n), 0, n, Tensor.of(b, n, n), 0, n, 0f, c, 0, n);
            for (int i = 0; i < n; i += 7) {
                for (int j = 0; j < n; j += 5) {
                    double want = 0, bound = 0;
                    for (int p = 0; p < n; p++) {
                        want += (double) a[i * n + p] * b[p * n + j];
                        bound += Math.abs((double) a[i * n + p] * b[p * n + j]);
                    }
                    assertEquals(want, c.floats()[i * n + j], 1e-5 * bound, "c[" + i + ", " + j + "]");
                }
            }
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new CpuBackend(0));
            assertTrue(e.getMessage().contains("(0)") && e.getMessage().contains("training.cpu_blas_threads"),
                    e.getMessage());
        } finally {
            new CpuBackend(1);
        }
        assertEquals(1, CpuBackend.blasThreads());
    }
}
