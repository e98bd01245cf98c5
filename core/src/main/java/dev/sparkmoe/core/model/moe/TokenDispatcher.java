package dev.sparkmoe.core.model.moe;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * Moves routed tokens to the experts that process them and back. {@link #dispatch} turns the token-slot rows
 * (token n, choice k; slot = n * topK + k) into rows grouped by local expert; {@link #combine} returns the experts'
 * outputs to slot order. The backward methods run the same movements in reverse. Implementations hold no per-step
 * state: everything combine and the backward methods need is in the immutable {@link Dispatch} that dispatch returns.
 *
 * <p>{@link LocalTokenDispatcher} keeps every expert on this rank; expert parallelism (module parallel) sends rows
 * to the ranks owning their experts by all-to-all.
 *
 * <p>The routed rows ({@link Dispatch#routed()}, {@link #regather}) and the output gradient rows
 * ({@link #combineBackward}) are read only as operands of the experts' grouped GEMMs, so an implementation may make
 * them with {@link Backend#emptyGemmOperand}.
 */
public interface TokenDispatcher {

    /**
     * @param hidden     [N, H] token activations
     * @param expertIds  I32 [N * topK] on the backend: chosen expert of each slot (global expert ids)
     * @param numExperts experts in the whole model
     */
    Dispatch dispatch(Backend backend, Tensor hidden, Tensor expertIds, int tokens, int topK, int hiddenSize,
                      int numExperts);

    /**
     * expertOut [rows, H] (rows as in the dispatch) back to the token slots: [N * topK, H] in slot order, or, where
     * the slots are the experts' rows themselves (all experts on this rank), {@code expertOut} with the row of each
     * slot, which the combine ({@link Backend#moeCombine}) reads in place. The returned rows are the caller's to
     * release; {@code expertOut} is the caller's too and may be them.
     */
    SlotRows combine(Backend backend, Tensor expertOut, Dispatch d);

    /**
     * Gradient of {@link #combine} where it returned rows in slot order: dSlots [N * topK, H] to [rows, H]. Where it
     * returned the experts' rows with their {@link SlotRows#rowOfSlot}, the combine's backward writes the gradient in
     * the experts' order directly ({@link Backend#moeCombineBackward}) and this is not called.
     */
    Tensor combineBackward(Backend backend, Tensor dSlots, Dispatch d);

    /** Gradient of {@link #dispatch}: dRouted [rows, H] summed back into dHidden [N, H] (accumulated). */
    void dispatchBackward(Backend backend, Tensor dRouted, Dispatch d, Tensor dHidden);

    /**
     * Whether {@link #regather} is cheap (a local row gather, no communication). Then the experts give the routed
     * rows back after their forward GEMMs and make them again for the weight gradients, instead of holding
     * [rows, H] per layer from the forward to the backward pass.
     */
    default boolean canRegather() {
        return false;
    }

    /** The routed rows of {@code d} made again from the same hidden states; only where {@link #canRegather}. */
    default Tensor regather(Backend backend, Tensor hidden, Dispatch d) {
        throw new UnsupportedOperationException(getClass().getSimpleName() + " cannot regather routed rows");
    }

    /**
     * Gives back the implementation's device tensors in {@code d.meta()} once the backward pass is done with the
     * dispatch (the routed rows are the experts' to release); the dispatch must not be used afterwards.
     */
    default void release(Backend backend, Dispatch d) {
    }

    /**
     * The experts' outputs as the token slots read them: slot s is row {@code rowOfSlot[s]} of {@code rows} (I32
     * [N * topK], owned by the dispatch), or row s where {@code rowOfSlot} is null (rows in slot order).
     */
    record SlotRows(Tensor rows, Tensor rowOfSlot) {
    }

    /**
     * What a dispatch produced.
     *
     * @param routed       [rows, H] inputs of the local experts, grouped by local expert
     * @param localCounts  rows per local expert (sums to rows)
     * @param firstExpert  global id of local expert 0
     * @param meta         implementation-specific metadata (permutations, split sizes); immutable
     */
    record Dispatch(Tensor routed, int[] localCounts, int firstExpert, Object meta) {
        public int rows() {
            return routed.dim(0);
        }
    }
}
