package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.logging.Logger;

/**
 * The reference backend: f32 on the JVM heap. GEMMs go to OpenBLAS (through JavaCPP); element-wise, reduction,
 * attention and optimizer kernels are plain Java spread over the cores with {@link Par}. Results do not depend on
 * the thread count: every output element is computed by exactly one thread in a fixed order.
 *
 * <p>A facade over package-private parts that each own one concern:
 * <ul>
 *   <li>{@link CpuTransfers}: uploads, downloads and copies of heap tensors;</li>
 *   <li>{@link CpuGemm}: dense and grouped GEMMs through OpenBLAS;</li>
 *   <li>{@link CpuAttention}: causal grouped-query attention, forward and backward;</li>
 *   <li>{@link CpuNormAndRope}: RMSNorm and rotary position embedding;</li>
 *   <li>{@link CpuElementwise}: conversion, fill, SwiGLU, axpy, scaling, sum of squares;</li>
 *   <li>{@link CpuEmbeddingAndLoss}: token embedding and the cross-entropy loss;</li>
 *   <li>{@link CpuMoeRouting}: the router, token gathers and scatters, the experts' combine;</li>
 *   <li>{@link CpuAdamW}: the optimizer step.</li>
 * </ul>
 * This class keeps the OpenBLAS thread count (process-wide) and the no-op memory management of heap tensors.
 */
public final class CpuBackend implements Backend {
    private static final Logger LOG = Logger.getLogger(CpuBackend.class.getName());
    /** The OpenBLAS thread count this process set, 0 before the first backend. */
    private static int blasThreadsSet;

    /**
     * A backend whose matrix products use the OpenBLAS thread count set by the last {@link #CpuBackend(int)} of this
     * process, or one thread if none was made.
     */
    public CpuBackend() {
        initBlas(0);
    }

    /**
     * A backend whose matrix products run on {@code blasThreads} OpenBLAS threads. The count is process-wide
     * (OpenBLAS has one pool): it holds for every CPU backend of the JVM until another sets it. One thread suits
     * several ranks in one JVM (Spark {@code local[N]}): the cores are already busy with the kernels' own parallel
     * loops, and BLAS threads on top of them slow a step down; more suit one rank on a many-core host.
     */
    public CpuBackend(int blasThreads) {
        if (blasThreads < 1) {
            throw new IllegalArgumentException("OpenBLAS threads (" + blasThreads + ") must be at least 1 "
                    + "(training.cpu_blas_threads)");
        }
        initBlas(blasThreads);
    }

    /** Sets the process's OpenBLAS threads to {@code threads} (0: to 1 unless already set). */
    private static synchronized void initBlas(int threads) {
        int n = threads > 0 ? threads : blasThreadsSet > 0 ? blasThreadsSet : 1;
        if (n != blasThreadsSet) {
            org.bytedeco.openblas.presets.openblas_nolapack.blas_set_num_threads(n);
            blasThreadsSet = n;
            LOG.fine(() -> "OpenBLAS threads: " + blasThreads());
        }
    }

    /** The OpenBLAS threads the process's matrix products use (as OpenBLAS reports them). */
    public static int blasThreads() {
        return org.bytedeco.openblas.presets.openblas_nolapack.blas_get_num_threads();
    }

    @Override
    public String name() {
        return "cpu";
    }

    // ------------------------------------------------------------------ memory

    private static final Scope NO_SCOPE = () -> { };

    @Override
    public Tensor zeros(DType dtype, int... shape) {
        return Tensor.zeros(dtype, shape);
    }

    @Override
    public Tensor upload(Tensor host) {
        return CpuTransfers.upload(host);
    }

    @Override
    public Tensor download(Tensor t) {
        return upload(t);
    }

    @Override
    public void copy(Tensor src, int srcOff, Tensor dst, int dstOff, int n) {
        CpuTransfers.copy(src, srcOff, dst, dstOff, n);
    }

    @Override
    public void convert(Tensor src, Tensor dst) {
        CpuElementwise.convert(src, dst);
    }

    @Override
    public void copyRows(Tensor src, int srcOff, int srcStride, Tensor dst, int dstOff, int dstStride, int rows,
                         int rowLen) {
        CpuTransfers.copyRows(src, srcOff, srcStride, dst, dstOff, dstStride, rows, rowLen);
    }

    @Override
    public void fill(Tensor t, float value) {
        CpuElementwise.fill(t, value);
    }

    @Override
    public void release(Tensor t) {
        // heap memory: the garbage collector frees it once unreachable
    }

    @Override
    public Scope openScope() {
        return NO_SCOPE;
    }

    @Override
    public void synchronize() {
        // every CPU kernel has finished when it returns
    }

    // ------------------------------------------------------------------ dense algebra

    @Override
    public void groupedGemm(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k, float alpha,
                            Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, int ldb, float beta, Tensor c,
                            int[] cOff, int ldc) {
        CpuGemm.groupedGemm(transA, transB, groups, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
    }

    @Override
    public void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, Tensor a, int aOff, int lda,
                     Tensor b, int bOff, int ldb, float beta, Tensor c, int cOff, int ldc) {
        CpuGemm.gemm(transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
    }

    @Override
    public void rmsNormForward(Tensor x, Tensor w, float eps, int rows, int dim, Tensor y, Tensor rstd) {
        CpuNormAndRope.rmsNormForward(x, w, eps, rows, dim, y, rstd);
    }

    @Override
    public void rmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim, Tensor dx, Tensor dw) {
        CpuNormAndRope.rmsNormBackward(dy, x, w, rstd, rows, dim, dx, dw);
    }

    @Override
    public void rope(Tensor x, int tokens, int heads, int headDim, int seqLen, float theta, boolean inverse) {
        CpuNormAndRope.rope(x, tokens, heads, headDim, seqLen, theta, inverse);
    }

    @Override
    public void attentionForward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads,
                                 int headDim, float scale, Tensor out, Tensor lse) {
        CpuAttention.attentionForward(q, k, v, batch, seqLen, qHeads, kvHeads, headDim, scale, out, lse);
    }

    @Override
    public void attentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int batch,
                                  int seqLen, int qHeads, int kvHeads, int headDim, float scale, Tensor dq, Tensor dk,
                                  Tensor dv) {
        CpuAttention.attentionBackward(dOut, q, k, v, out, lse, batch, seqLen, qHeads, kvHeads, headDim, scale, dq,
                dk, dv);
    }

    @Override
    public void siluMulForward(Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols, int ld,
                               Tensor out) {
        CpuElementwise.siluMulForward(gate, gateOff, up, upOff, rows, cols, ld, out);
    }

    @Override
    public void siluMulBackward(Tensor dOut, Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols,
                                int ld, Tensor dGate, Tensor dUp) {
        CpuElementwise.siluMulBackward(dOut, gate, gateOff, up, upOff, rows, cols, ld, dGate, dUp);
    }

    @Override
    public void softmaxRows(Tensor x, int rows, int cols, Tensor out) {
        CpuMoeRouting.softmaxRows(x, rows, cols, out);
    }

    @Override
    public double crossEntropy(Tensor logits, Tensor targetTensor, int rows, int vocab, float gradScale,
                               Tensor dLogits) {
        return CpuEmbeddingAndLoss.crossEntropy(logits, targetTensor, rows, vocab, gradScale, dLogits);
    }

    @Override
    public void embeddingForward(Tensor table, Tensor idTensor, int tokens, int hidden, Tensor out) {
        CpuEmbeddingAndLoss.embeddingForward(table, idTensor, tokens, hidden, out);
    }

    @Override
    public void embeddingBackward(Tensor dOut, Tensor idTensor, int tokens, int hidden, Tensor dTable) {
        CpuEmbeddingAndLoss.embeddingBackward(dOut, idTensor, tokens, hidden, dTable);
    }

    // ------------------------------------------------------------------ mixture of experts

    @Override
    public void routerTopK(Tensor probs, int rows, int experts, int k, boolean normalize, Tensor topIdx,
                           Tensor topVal, Tensor weights) {
        CpuMoeRouting.routerTopK(probs, rows, experts, k, normalize, topIdx, topVal, weights);
    }

    @Override
    public void routerStats(Tensor topIdx, Tensor probs, int rows, int experts, int k, double[] stats) {
        CpuMoeRouting.routerStats(topIdx, probs, rows, experts, k, stats);
    }

    @Override
    public void routerBackward(Tensor dWeights, Tensor topIdx, Tensor topVal, Tensor probs, Tensor auxGrad,
                               int rows, int experts, int k, boolean normalize, Tensor dLogits) {
        CpuMoeRouting.routerBackward(dWeights, topIdx, topVal, probs, auxGrad, rows, experts, k, normalize, dLogits);
    }

    @Override
    public void gatherRows(Tensor src, Tensor index, int n, int width, int divisor, Tensor dst) {
        CpuMoeRouting.gatherRows(src, index, n, width, divisor, dst);
    }

    @Override
    public void scatterRows(Tensor src, Tensor index, int n, int width, Tensor dst) {
        CpuMoeRouting.scatterRows(src, index, n, width, dst);
    }

    @Override
    public void invertIndex(Tensor index, int n, Tensor inverse) {
        CpuMoeRouting.invertIndex(index, n, inverse);
    }

    @Override
    public void moeCombine(Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens, int k, int width, Tensor y) {
        CpuMoeRouting.moeCombine(rows, rowOfSlot, weights, tokens, k, width, y);
    }

    @Override
    public void moeCombineBackward(Tensor dy, Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens, int k,
                                   int width, Tensor dRows, Tensor dWeights) {
        CpuMoeRouting.moeCombineBackward(dy, rows, rowOfSlot, weights, tokens, k, width, dRows, dWeights);
    }

    @Override
    public void sumSlots(Tensor src, Tensor rowOfSlot, int tokens, int k, int width, Tensor dst) {
        CpuMoeRouting.sumSlots(src, rowOfSlot, tokens, k, width, dst);
    }

    // ------------------------------------------------------------------ optimizer and helpers

    @Override
    public void axpy(float alpha, Tensor x, int xOff, Tensor y, int yOff, int n) {
        CpuElementwise.axpy(alpha, x, xOff, y, yOff, n);
    }

    @Override
    public void scale(Tensor x, float alpha) {
        CpuElementwise.scale(x, alpha);
    }

    @Override
    public double sumSquares(Tensor x) {
        return CpuElementwise.sumSquares(x);
    }

    @Override
    public void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, int n, float lr, float beta1, float beta2,
                      float eps, float weightDecay, long step) {
        CpuAdamW.adamw(param, grad, m, v, n, lr, beta1, beta2, eps, weightDecay, step);
    }
}
