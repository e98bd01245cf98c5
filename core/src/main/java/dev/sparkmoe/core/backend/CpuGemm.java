package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.openblas.global.openblas_nolapack;

/**
 * The CPU backend's matrix products: row-major {@code cblas_sgemm} through OpenBLAS on per-thread native copies of the
 * operand spans, and the grouped GEMM as one such product per non-empty group. A C held in a narrower dtype (BF16: a
 * grouped GEMM's weight gradient, a dense GEMM's chunk of logits) gets the f32 result rounded once. Shapes, offsets and leading dimensions
 * are checked against the heap arrays before the native call, so that a wrong shape is a Java exception.
 */
final class CpuGemm {
    private CpuGemm() {
    }

    static void groupedGemm(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k, float alpha,
                            Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, int ldb, float beta, Tensor c,
                            int[] cOff, int ldc) {
        if (c.dtype() != DType.F32 && c.dtype() != DType.BF16) {
            throw new IllegalArgumentException("groupedGemm writes C in F32 or BF16 (the f32 result rounded once); C is "
                    + c + " of dtype " + c.dtype() + ": pass an F32 or BF16 C and convert it afterwards "
                    + "(Backend.convert)");
        }
        for (int g = 0; g < groups; g++) {
            if (m[g] > 0 && n[g] > 0) {
                gemm(transA, transB, m[g], n[g], k[g], alpha, a, aOff[g], lda, b, bOff[g], ldb, beta, c, cOff[g],
                        ldc);
            }
        }
    }

    static void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, Tensor a, int aOff, int lda,
                     Tensor b, int bOff, int ldb, float beta, Tensor c, int cOff, int ldc) {
        if (m == 0 || n == 0) {
            return;
        }
        float[] af = a.floats();
        float[] bf = b.floats();
        float[] cf = c.floats();
        if (k == 0) {
            scaleRange(cf, cOff, m, n, ldc, beta);
            roundC(c, cf, cOff, m, n, ldc);
            return;
        }
        // Bounds are checked here so that a wrong shape is a Java exception, never a native crash.
        checkSpan("A", af.length, aOff, transA ? k : m, transA ? m : k, lda);
        checkSpan("B", bf.length, bOff, transB ? n : k, transB ? k : n, ldb);
        checkSpan("C", cf.length, cOff, m, n, ldc);
        // Only the operand spans travel to native memory: handing OpenBLAS the heap arrays themselves would make
        // JNI copy each whole array (a whole stacked expert tensor for one expert's slice) in and out per call.
        Scratch s = SCRATCH.get();
        long aLen = span(transA ? k : m, transA ? m : k, lda);
        long bLen = span(transB ? n : k, transB ? k : n, ldb);
        long cLen = span(m, n, ldc);
        FloatPointer ap = s.a(aLen);
        FloatPointer bp = s.b(bLen);
        FloatPointer cp = s.c(cLen);
        ap.position(0).put(af, aOff, (int) aLen);
        bp.position(0).put(bf, bOff, (int) bLen);
        if (beta != 0f) {
            cp.position(0).put(cf, cOff, (int) cLen);
        }
        openblas_nolapack.cblas_sgemm(openblas_nolapack.CblasRowMajor,
                transA ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                transB ? openblas_nolapack.CblasTrans : openblas_nolapack.CblasNoTrans,
                m, n, k, alpha, ap.position(0), lda, bp.position(0), ldb, beta, cp.position(0), ldc);
        if (ldc == n) {
            cp.position(0).get(cf, cOff, (int) cLen);
        } else {
            // Only C's own m x n block goes back: the gaps between its rows may belong to other threads' blocks
            // (the heads of one attention row), and writing the whole span back would undo their updates.
            for (int i = 0; i < m; i++) {
                cp.position((long) i * ldc).get(cf, cOff + i * ldc, n);
            }
        }
        roundC(c, cf, cOff, m, n, ldc);
    }

    /** C held in the GEMMs' dtype (Backend.gemmDType): its block rounded to that dtype. */
    private static void roundC(Tensor c, float[] cf, int cOff, int m, int n, int ldc) {
        if (c.dtype() == DType.F32) {
            return;
        }
        for (int i = 0; i < m; i++) {
            for (int j = 0, at = cOff + i * ldc; j < n; j++, at++) {
                cf[at] = DType.round(c.dtype(), cf[at]);
            }
        }
    }

    /** Elements from the first to one past the last element of a rows x cols block with row stride ld. */
    private static long span(int rows, int cols, int ld) {
        return (long) (rows - 1) * ld + cols;
    }

    /** Per-thread native operand buffers, grown on demand and reused across calls. */
    private static final class Scratch {
        private FloatPointer a = new FloatPointer(0L);
        private FloatPointer b = new FloatPointer(0L);
        private FloatPointer c = new FloatPointer(0L);

        private static FloatPointer ensure(FloatPointer p, long n) {
            if (p.capacity() >= n) {
                return p;
            }
            p.close();
            return new FloatPointer(Math.max(n, 1024L));
        }

        FloatPointer a(long n) {
            return a = ensure(a, n);
        }

        FloatPointer b(long n) {
            return b = ensure(b, n);
        }

        FloatPointer c(long n) {
            return c = ensure(c, n);
        }
    }

    private static final ThreadLocal<Scratch> SCRATCH = ThreadLocal.withInitial(Scratch::new);

    private static void scaleRange(float[] c, int off, int m, int n, int ldc, float beta) {
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                c[off + i * ldc + j] = beta == 0f ? 0f : c[off + i * ldc + j] * beta;
            }
        }
    }

    private static void checkSpan(String what, int length, int off, int rows, int cols, int ld) {
        if (ld < cols) {
            throw new IllegalArgumentException("gemm: leading dimension of " + what + " (" + ld
                    + ") is smaller than its row length (" + cols + ")");
        }
        long last = (long) off + (long) (rows - 1) * ld + cols;
        if (off < 0 || last > length) {
            throw new IndexOutOfBoundsException("gemm: " + what + " [" + rows + " x " + cols + "] at offset " + off
                    + " with stride " + ld + " needs " + last + " elements but the buffer has " + length);
        }
    }
}
