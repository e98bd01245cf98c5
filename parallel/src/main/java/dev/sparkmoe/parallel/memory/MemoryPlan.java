package dev.sparkmoe.parallel.memory;

import java.util.EnumMap;
import java.util.Map;

/**
 * The planner's answer for one {@link PlanRequest}: bytes of rank 0 (the rank with the largest shards) at the peak of
 * a training step, by {@link Category}, the peak of building the model, and whether the larger of the two fits the
 * GPU. Bytes are what the backend's allocator holds: the CUDA caching allocator's blocks (TrainBench's peak_mem_gb),
 * or on the CPU the tensors MemoryTracker counts.
 *
 * @param request                the question
 * @param parameters             parameters of the whole model
 * @param activeParameters       parameters one token uses (experts it is not routed to left out)
 * @param persistentBytes        what lives between steps: parameter shards, their bf16 compute copies where kept, and
 *                               AdamW moments
 * @param constructionPeakBytes  the peak while the trainer allocates its shards (and compute copies), loads them and
 *                               makes the AdamW state
 * @param stepPeakBytes          the peak of a training step (after the first, which records FSDP's unit order)
 * @param atStepPeak             what was live at the step's peak
 * @param stepPeakPhase          where in the step the peak falls
 * @param gatheredAtStepPeak     the FSDP units holding gathered weights at the step's peak, and the gathers in flight
 * @param largestTensorElements  elements of the largest tensor the run makes (model construction included)
 * @param largestTensor          what that tensor is
 */
public record MemoryPlan(PlanRequest request, long parameters, long activeParameters, long persistentBytes,
                         long constructionPeakBytes, long stepPeakBytes, Map<Category, Long> atStepPeak,
                         String stepPeakPhase, String gatheredAtStepPeak, long largestTensorElements,
                         String largestTensor) {

    /** Tensors address their elements with int counts: a larger one cannot be made. */
    public static final long MAX_TENSOR_ELEMENTS = Integer.MAX_VALUE;

    public MemoryPlan {
        atStepPeak = java.util.Collections.unmodifiableMap(new EnumMap<>(atStepPeak));
    }

    /** The larger of the construction and step peaks: what the allocator reaches over a run. */
    public long peakBytes() {
        return Math.max(constructionPeakBytes, stepPeakBytes);
    }

    /** GPU memory less the reserve for what the allocator does not hold. */
    public long usableBytes() {
        return request.deviceMemoryBytes() - request.reserveBytes();
    }

    /** Whether every tensor the step makes can be made (element counts within int range). */
    public boolean tensorsAddressable() {
        return largestTensorElements <= MAX_TENSOR_ELEMENTS;
    }

    /** Whether the run fits: its peak within the usable memory, and every tensor addressable. */
    public boolean fits() {
        return peakBytes() <= usableBytes() && tensorsAddressable();
    }

    /** Bytes of a category at the step's peak. */
    public long bytes(Category c) {
        return atStepPeak.getOrDefault(c, 0L);
    }

    /** Activations kept from the forward pass, at the step's peak. */
    public long activationBytes() {
        long n = 0;
        for (Category c : Category.values()) {
            if (c.isActivation()) {
                n += bytes(c);
            }
        }
        return n;
    }

    /** Tokens one rank trains on per optimizer step. */
    public long tokensPerRank() {
        return (long) request.batch() * request.seqLen();
    }
}
