package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.Tensor;

/**
 * The compute kernels the model, the loss and the optimizer are written in. Every kernel has a plain-Java reference
 * in {@link CpuBackend}; other backends are tested against it op by op. Shapes are given explicitly: kernels read
 * and write row-major f32 storage and never allocate their outputs (the caller owns every buffer), so a backend can
 * keep buffers on a device.
 *
 * <p>Naming: N = tokens (B*T), H = hidden size, D = head dim, V = vocab, E = experts, I = expert intermediate size.
 */
public interface Backend {

    /** A short name for logs ("cpu", "cuda:0"). */
    String name();

    /**
     * C = alpha * op(A) * op(B) + beta * C, row-major, as BLAS sgemm. op(A) is [m, k], op(B) is [k, n], C is [m, n];
     * lda/ldb/ldc are the row strides of A, B and C as stored; offsets are in elements.
     */
    void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, Tensor a, int aOff, int lda,
              Tensor b, int bOff, int ldb, float beta, Tensor c, int cOff, int ldc);

    /** y[r] = w * x[r] / sqrt(mean(x[r]^2) + eps) for each of {@code rows} rows of {@code dim}; rstd[r] saved. */
    void rmsNormForward(Tensor x, Tensor w, float eps, int rows, int dim, Tensor y, Tensor rstd);

    /** dx = d/dx of the above given dy (written), dw += its weight gradient (accumulated). */
    void rmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim, Tensor dx, Tensor dw);

    /**
     * Rotary embedding in place on x [B*T, heads, D] with the rotate-half convention of Hugging Face; token n has
     * position n % seqLen. {@code inverse} applies the transpose rotation (the backward pass).
     */
    void rope(Tensor x, int tokens, int heads, int headDim, int seqLen, float theta, boolean inverse);

    /**
     * Causal grouped-query attention. q [B*T, Hq*D], k and v [B*T, Hkv*D], out [B*T, Hq*D]; probs [B, Hq, T, T]
     * receives the softmax probabilities (kept for the backward pass).
     */
    void attentionForward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads, int headDim,
                          float scale, Tensor out, Tensor probs);

    /** Backward of {@link #attentionForward}: dq, dk, dv are written (not accumulated). */
    void attentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor probs, int batch, int seqLen,
                           int qHeads, int kvHeads, int headDim, float scale, Tensor dq, Tensor dk, Tensor dv);

    /** out = silu(gate) * up over n elements at the given offsets. */
    void siluMulForward(Tensor gate, Tensor up, Tensor out, int off, int n);

    /** dGate, dUp of the above given dOut (written). */
    void siluMulBackward(Tensor dOut, Tensor gate, Tensor up, Tensor dGate, Tensor dUp, int off, int n);

    /** Row-wise softmax of [rows, cols], in f32. */
    void softmaxRows(Tensor x, int rows, int cols, Tensor out);

    /**
     * Cross-entropy of logits [rows, V] against targets (ignore index -100): returns the summed loss over rows
     * with a target, and writes dLogits = (softmax - onehot) * gradScale for those rows, 0 for ignored rows.
     */
    double crossEntropy(Tensor logits, int[] targets, int rows, int vocab, float gradScale, Tensor dLogits);

    /** out[n] = table[ids[n]] for rows of width H. */
    void embeddingForward(Tensor table, int[] ids, int hidden, Tensor out);

    /** dTable[ids[n]] += dOut[n] (accumulated, deterministic order). */
    void embeddingBackward(Tensor dOut, int[] ids, int hidden, Tensor dTable);

    /** y[yOff..] += alpha * x[xOff..] over n elements. */
    void axpy(float alpha, Tensor x, int xOff, Tensor y, int yOff, int n);

    /** x *= alpha over all elements. */
    void scale(Tensor x, float alpha);

    /** Sum of squares of all elements, in double. */
    double sumSquares(Tensor x);

    /**
     * One AdamW step (torch.optim.AdamW semantics, single-tensor path) on n elements: decoupled weight decay,
     * moments updated in place, bias correction for step {@code step} (1-based).
     */
    void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, int n, float lr, float beta1, float beta2, float eps,
               float weightDecay, long step);
}
