package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.GemmOperand;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * y = x W^T for W [out, in] (no bias), with the matching backward; weights may be slices of a stacked tensor. Where
 * the backend's GEMMs take bf16 operands ({@link Backend#gemmDType()}: CUDA at bf16 precision) each GEMM reads bf16
 * copies of its two operands ({@link GemmOperand}), made just before it and given back after it (FSDP2's param
 * dtype: the values such a GEMM rounds its operands to anyway); in f32 it reads the tensors themselves.
 */
final class Linear {
    private Linear() {
    }

    /** {@link Backend#gemm} on whole tensors a and b, through copies in the backend's GEMM dtype where it is not F32. */
    private static void gemm(Backend be, boolean transA, boolean transB, int m, int n, int k, Tensor a, int aOff,
                             int lda, Tensor b, int bOff, int ldb, float beta, Tensor c, int cOff, int ldc) {
        Tensor a16 = GemmOperand.of(be, a);
        Tensor b16 = GemmOperand.of(be, b);
        be.gemm(transA, transB, m, n, k, 1f, a16, aOff, lda, b16, bOff, ldb, beta, c, cOff, ldc);
        GemmOperand.release(be, a16, a);
        GemmOperand.release(be, b16, b);
    }


    /** y [rows, out] = x [rows, in] * W^T, W at element offset {@code wOff}. */
    static Tensor forward(Backend be, Tensor x, int xOff, int rows, Tensor w, int wOff, int in, int out) {
        Tensor y = be.empty(DType.F32, rows, out);
        gemm(be, false, true, rows, out, in, x, xOff, in, w, wOff, in, 0f, y, 0, out);
        return y;
    }

    static Tensor forward(Backend be, Tensor x, int rows, Parameter w) {
        int[] s = w.shape();
        return forward(be, x, 0, rows, w.value(), 0, s[1], s[0]);
    }

    /** dx [rows, in] (+)= dy [rows, out] * W; beta 0 writes, 1 accumulates. */
    static void backwardInput(Backend be, Tensor dy, int dyOff, int rows, Tensor w, int wOff, int in, int out,
                              Tensor dx, int dxOff, float beta) {
        gemm(be, false, false, rows, in, out, dy, dyOff, out, w, wOff, in, beta, dx, dxOff, in);
    }

    /**
     * dW [out, in] += dy^T [out, rows] * x [rows, in] into the whole gradient of {@code w} (the first write of a
     * step overwrites it: {@link Parameter#gradBetaForFullWrite}).
     */
    static void backwardWeight(Backend be, Tensor dy, int rows, Tensor x, Parameter w) {
        int[] s = w.shape();
        int out = s[0], in = s[1];
        float beta = w.gradBetaForFullWrite();
        gemm(be, true, false, out, in, rows, dy, 0, out, x, 0, in, beta, w.grad(), 0, in);
    }

    /** Full backward for a plain parameter: returns dx [rows, in] and accumulates the weight gradient. */
    static Tensor backward(Backend be, Tensor dy, Tensor x, int rows, Parameter w) {
        Tensor dx = be.empty(DType.F32, rows, w.shape()[1]);
        backward(be, dy, x, rows, w, dx, 0f);
        return dx;
    }

    /**
     * Full backward into a given dx [rows, in]: beta 0 writes it, 1 adds to it (several projections of one input);
     * accumulates the weight gradient.
     */
    static void backward(Backend be, Tensor dy, Tensor x, int rows, Parameter w, Tensor dx, float beta) {
        int[] s = w.shape();
        Tensor dy16 = GemmOperand.of(be, dy); // read by both GEMMs
        backwardInput(be, dy16, 0, rows, w.value(), 0, s[1], s[0], dx, 0, beta);
        backwardWeight(be, dy16, rows, x, w);
        GemmOperand.release(be, dy16, dy);
    }
}
