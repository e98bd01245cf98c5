package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.GemmOperand;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The LM head projection and the cross-entropy, fused and chunked over token rows, as Liger-Kernel's fused linear
 * cross-entropy: no [N, V] logits tensor exists. For each chunk of rows, in the forward pass:
 * <pre>
 *   logits  [c, V]  = hidden[chunk] W^T
 *   loss           += cross-entropy(logits, targets[chunk]);  dlogits written over the logits
 *   dHidden[chunk]  = dlogits W
 *   dW             += dlogits^T hidden[chunk]
 * </pre>
 * dHidden and dW are returned, not added to the weight's gradient: the forward pass has no side effect on the
 * parameters (a forward pass without backward, such as a finite-difference check, leaves them as they were), and the
 * backward pass adds dW to the weight's gradient in its usual place
 * ({@link dev.sparkmoe.core.nn.Parameter#accumulateGrad}).
 * The gradient is scaled as the unfused loss scales it ({@code gradScale}, the inverse of the global number of
 * predicted tokens), so the summed loss and every gradient are those of the unfused path up to the order of the
 * f32 sums over rows (dW sums its rows chunk by chunk).
 *
 * <p>Chunk size, from a memory bound: a chunk's logits ({@code [rows, V]} f32, later its gradient) may take no more
 * memory than the LM head weight's f32 gradient {@code [V, H]}, which the step holds at this point anyway. That is
 * {@code rows = H} (capped by N): the loss adds at most one weight-sized buffer to the peak, whatever the number of
 * tokens, where the unfused loss held [N, V]. It also gives each chunk's weight-gradient GEMM {@code k = H} rows, so
 * that it is not dominated by reading and writing dW once per chunk.
 *
 * <p>Dtypes: the loss is summed in f64 from f32 arithmetic. Where the backend's GEMMs take bf16 operands
 * ({@link Backend#gemmDType()}: CUDA at bf16 precision), the GEMMs read the weight and the head input in bf16 (the
 * weight's compute copy, or a copy made once per call: FSDP2's param dtype), the logits GEMM writes each chunk in
 * bf16 (the f32-accumulated logits rounded once, as FSDP2's bf16 head returns them; the cross-entropy reads them in
 * f32 arithmetic) and the cross-entropy writes the chunk's gradient over them in bf16, which is all the two gradient
 * GEMMs read: half the bytes of an f32 chunk, written once and read three times. Logits retained for the caller are
 * f32 (the chunk then is f32 and the gradient a bf16 buffer of its own). In f32 (the CPU, the exact precisions) the
 * chunk, its gradient and every operand are f32.
 */
final class FusedLinearCrossEntropy {
    private FusedLinearCrossEntropy() {
    }

    /**
     * @param hidden       [N, H] the final norm's output
     * @param targets      I32 [N] on the backend: target of each row, or -100
     * @param weight       the LM head weight [V, H] (the embedding when tied)
     * @param gradScale    d(loss)/d(summed cross-entropy); 0 with {@code withGrad} off
     * @param withGrad     whether to compute dHidden and dWeight
     * @param retainLogits whether to return the logits [N, V] too (copied chunk by chunk into one tensor)
     * @param requestedRows rows per chunk, 0 for the rule of the class comment
     */
    static LmHeadLoss.Result run(Backend be, Tensor hidden, Tensor targets, int n, Parameter weight, float gradScale,
                                 boolean withGrad, boolean retainLogits, int requestedRows) {
        return run(be, hidden, targets, n, weight.value(), gradScale, withGrad, retainLogits, requestedRows);
    }

    /** As above on the weight's value {@code w} [V, H] ({@link LmHeadLoss#LOCAL}). */
    static LmHeadLoss.Result run(Backend be, Tensor hidden, Tensor targets, int n, Tensor w, float gradScale,
                                 boolean withGrad, boolean retainLogits, int requestedRows) {
        int v = w.dim(0);
        int h = w.dim(1);
        if (retainLogits && (long) n * v > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("cannot retain the logits of " + n + " tokens x " + v + " vocabulary "
                    + "entries (" + (long) n * v + " elements, over 2^31 - 1 in one tensor): retain them for fewer "
                    + "tokens per forward pass (a smaller batch or sequence)");
        }
        Tensor logits = retainLogits ? be.empty(DType.F32, n, v) : null;
        Tensor dHidden = withGrad ? be.empty(DType.F32, n, h) : null;
        Tensor dWeight = withGrad ? be.empty(DType.F32, v, h) : null; // written whole by the first chunk
        if (n == 0) {
            if (dWeight != null) {
                be.fill(dWeight, 0f);
            }
            return new LmHeadLoss.Result(0, dHidden, dWeight, logits);
        }
        int rows = LmHeadLoss.chunkRows(n, h, v, requestedRows);
        Tensor wg = GemmOperand.of(be, w);                           // the GEMMs' weight and input
        Tensor hg = GemmOperand.of(be, hidden);
        // A chunk's logits, then their gradient in place: in the GEMMs' dtype (bf16 on CUDA at bf16, as FSDP2's bf16
        // head computes them), f32 where the logits are retained (they are handed out in f32) or the GEMMs take f32.
        DType chunkType = retainLogits ? DType.F32 : be.gemmDType();
        Tensor chunk = be.empty(chunkType, rows, v);
        Tensor grad = be.gemmDType() != chunkType && withGrad ? be.empty(be.gemmDType(), rows, v) : chunk;
        Tensor chunkTargets = be.empty(DType.I32, rows);
        double loss = 0;
        for (int r0 = 0; r0 < n; r0 += rows) {
            int c = Math.min(rows, n - r0);
            be.gemm(false, true, c, v, h, 1f, hg, r0 * h, h, wg, 0, h, 0f, chunk, 0, v);
            if (logits != null) {
                be.copy(chunk, 0, logits, r0 * v, c * v);
            }
            be.copy(targets, r0, chunkTargets, 0, c);
            loss += be.crossEntropy(chunk, chunkTargets, c, v, gradScale, withGrad ? grad : chunk);
            if (withGrad) {
                be.gemm(false, false, c, h, v, 1f, grad, 0, v, wg, 0, h, 0f, dHidden, r0 * h, h);
                be.gemm(true, false, v, h, c, 1f, grad, 0, v, hg, r0 * h, h, r0 == 0 ? 0f : 1f, dWeight, 0, h);
            }
        }
        Release.all(be, chunk, chunkTargets, grad != chunk ? grad : null);
        GemmOperand.release(be, wg, w);
        GemmOperand.release(be, hg, hidden);
        return new LmHeadLoss.Result(loss, dHidden, dWeight, logits);
    }
}
