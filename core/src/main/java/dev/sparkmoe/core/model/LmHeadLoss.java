package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * How the model computes its LM head and cross-entropy in the head's forward pass: the summed loss over the rows
 * with a target and, with gradients, the head input's and the head weight's gradients (the weight's is added to the
 * parameter's gradient by the model's backward). {@link #LOCAL} is {@link FusedLinearCrossEntropy} on the weight the
 * head holds; a parallel plan may install another, such as a vocabulary-parallel loss whose weight is this rank's
 * rows of the LM head and which works with the other ranks of its group ({@link Qwen3MoeModel#setLmHeadLoss}). The
 * model never sees ranks: it hands over its rows and its weight as it holds them.
 */
public interface LmHeadLoss {

    /**
     * What one call produced: the summed cross-entropy over this rank's rows with a target; with gradients, dHidden
     * [N, H] (this rank's rows) and dWeight (the shape of the weight passed in), new tensors, null without; the
     * logits [N, V] of this rank's rows over the whole vocabulary when retained (else null).
     */
    record Result(double lossSum, Tensor dHidden, Tensor dWeight, Tensor logits) {
    }

    /**
     * @param hidden        [N, H] the final norm's output
     * @param targets       I32 [N] on the backend: target of each row (an id of the whole vocabulary), or -100
     * @param n             N, this rank's rows
     * @param weight        the LM head weight as the head holds it ([V, H]; under vocabulary parallelism this rank's
     *                      rows of it)
     * @param gradScale     d(loss)/d(summed cross-entropy); 0 with {@code withGrad} off
     * @param withGrad      whether to compute dHidden and dWeight
     * @param retainLogits  whether to return the logits [N, V] too
     * @param requestedRows rows per chunk, 0 for the implementation's rule
     */
    Result run(Backend be, Tensor hidden, Tensor targets, int n, Tensor weight, float gradScale, boolean withGrad,
               boolean retainLogits, int requestedRows);

    /**
     * Rows per chunk for {@code rows} rows of a head with {@code hidden} inputs and {@code width} columns per chunk
     * buffer: {@code requested} when positive, else {@code hidden} (see {@link FusedLinearCrossEntropy}'s memory
     * bound); capped by {@code rows}, and so that a chunk stays indexable ({@code rows * width < 2^31} elements).
     */
    static int chunkRows(int rows, int hidden, int width, int requested) {
        int r = requested > 0 ? requested : hidden;
        return Math.max(1, Math.min(Math.min(rows, r), Integer.MAX_VALUE / Math.max(1, width)));
    }

    /** The fused, chunked loss on the whole weight ({@link FusedLinearCrossEntropy}). */
    LmHeadLoss LOCAL = FusedLinearCrossEntropy::run;
}
