package dev.sparkmoe.parallel.train;

import dev.sparkmoe.core.tensor.Tensor;
import java.util.List;
import java.util.Map;

/**
 * One rank of a distributed training job: the model's local shards, its optimizer state and LR schedule, bound to
 * the rank's communicators. Every method marked collective must be called by every rank of the job in the same
 * order. The Spark barrier task, the standalone launcher and the in-process tests all drive training through this
 * interface; none of them sees meshes or shards.
 */
public interface RankTrainer extends AutoCloseable {

    /**
     * Collective. One optimizer step. {@code sequences} is this rank's share of the global batch: token ids, each
     * array of length seq_len + 1 (inputs are [0, T), labels are [1, T+1)); it may be empty, and the rank still
     * takes part. Losses are normalised by the global count of predicted tokens.
     */
    StepMetrics step(List<int[]> sequences);

    /** Steps taken so far (restored by {@link #loadState}). */
    long stepsTaken();

    /**
     * This rank's resumable state: its parameter shards, optimizer moments, step counter and schedule position, as
     * named tensors. Together with the other ranks' states it restores training exactly at the same layout.
     */
    Map<String, Tensor> rankState();

    /** Restores what {@link #rankState()} returned (same layout). */
    void loadState(Map<String, Tensor> state);

    /**
     * Restores this rank's part of a state saved by {@code savedRanks} ranks at another layout (world size, expert
     * parallelism): {@code saved.apply(r)} reads the {@link #rankState()} that rank r wrote, one at a time, and each
     * tensor is cut to the region of the full tensor this rank now holds. Not collective. Trainers that can only
     * resume at the layout they saved with keep the default, which refuses.
     */
    default void loadResharded(int savedRanks, java.util.function.IntFunction<Map<String, Tensor>> saved) {
        throw new UnsupportedOperationException(getClass().getName() + " cannot resume a state saved at another "
                + "layout; resume with the layout that saved it (or use a trainer that implements loadResharded)");
    }

    /** Collective. The full model in Hugging Face Hub naming (per-expert tensors), gathered on every rank. */
    Map<String, Tensor> fullModelState();

    /** The model's Hugging Face config.json text (what transformers loads next to the weights). */
    String hfConfigJson();

    @Override
    void close();
}
