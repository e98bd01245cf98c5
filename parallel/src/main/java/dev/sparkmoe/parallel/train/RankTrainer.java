package dev.sparkmoe.parallel.train;

import dev.sparkmoe.core.io.TensorSink;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

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
     * The final model's tensors in Hugging Face Hub naming (per-expert tensors), each with its full shape, in the
     * order {@link #exportModel} delivers them; the same on every rank.
     */
    List<TensorSpec> modelTensors();

    /**
     * Collective. Streams the full model to {@code sink} on rank 0: each tensor of {@link #modelTensors()}, in that
     * order, one at a time, as f32 values that are valid during the call. The other ranks contribute their shards
     * (their sink, which may be null, is not called). No rank ever holds more than one whole tensor of the model.
     */
    void exportModel(TensorSink sink) throws IOException;

    /**
     * Collective. The full model in Hub naming on rank 0 (empty on the others), collected from
     * {@link #exportModel}: for tests and small models. A real model is written as it streams, never whole.
     */
    default Map<String, Tensor> fullModelState() {
        Map<String, Tensor> out = new TreeMap<>();
        try {
            exportModel((name, shape, data, offset) -> {
                float[] copy = java.util.Arrays.copyOfRange(data, offset, offset + (int) Tensor.numel(shape));
                out.put(name, Tensor.of(copy, shape));
            });
        } catch (IOException e) {
            throw new UncheckedIOException(e); // the collecting sink does no I/O
        }
        return Collections.unmodifiableMap(out);
    }

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

    /** The model's Hugging Face config.json text (what transformers loads next to the weights). */
    String hfConfigJson();

    @Override
    void close();
}
