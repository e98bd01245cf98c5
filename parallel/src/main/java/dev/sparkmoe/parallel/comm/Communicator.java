package dev.sparkmoe.parallel.comm;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * A process group: the collectives that FSDP and expert parallelism need, over a fixed set of ranks.
 *
 * <p>Every collective is called by every member of the group, in the same order (lockstep), with arguments that
 * agree (lengths, roots, split sizes). Buffers are plain arrays with offsets; results are written in rank order.
 * Reductions are deterministic: for a given set of inputs every member receives the same bits, and two runs with
 * the same inputs produce the same bits. A member that does not arrive within the communicator's timeout turns
 * the collective into a {@link CollectiveTimeoutException} on every member that did arrive, naming the collective
 * and the missing ranks; nothing hangs.
 *
 * <p>Implementations: the in-JVM one (ranks as threads, Spark {@code local[N]}), TCP (CPU processes), NCCL (GPUs).
 * Each must pass {@link CommunicatorConformance#runAll(Communicator)}, run by every member at once.
 */
public interface Communicator extends AutoCloseable {

    /** This member's rank within the group, 0..size-1. */
    int rank();

    /** Number of members. */
    int size();

    /** A human-readable name for logs and errors, e.g. "ep" or "world". */
    String name();

    /**
     * How long a collective waits for members that have not arrived, when this communicator says; communicators
     * built over it (an NCCL world bootstrapped over a host world) take the same bound. Empty: not stated.
     */
    default java.util.Optional<java.time.Duration> timeout() {
        return java.util.Optional.empty();
    }

    /** In-place sum over all members of {@code buf[off, off+len)}. */
    void allReduceSum(float[] buf, int off, int len);

    /** In-place sum of doubles (metrics, norms); deterministic like the float version. */
    void allReduceSum(double[] buf, int off, int len);

    /** In-place sum of longs (token counts). */
    void allReduceSum(long[] buf, int off, int len);

    /** In-place maximum over all members. */
    void allReduceMax(float[] buf, int off, int len);

    /**
     * Gathers {@code len} floats from every member: {@code recv[rOff + r*len, rOff + (r+1)*len)} receives rank r's
     * {@code send[sOff, sOff+len)}.
     */
    void allGather(float[] send, int sOff, int len, float[] recv, int rOff);

    /** Integer all-gather, laid out like the float one. */
    void allGather(int[] send, int sOff, int len, int[] recv, int rOff);

    /** Gathers one byte array of any length from every member (metadata, checkpoint manifests). */
    byte[][] allGatherBytes(byte[] mine);

    /**
     * Reduce-scatter with sum: {@code send} holds {@code size * recvLen} floats starting at {@code sOff}; member r
     * receives the sum over all members of the slice {@code [sOff + r*recvLen, sOff + (r+1)*recvLen)}.
     */
    void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen);

    /**
     * All-to-all with uneven splits, as {@code torch.distributed.all_to_all_single}: {@code send} holds, back to
     * back from offset 0, {@code sendCounts[p]} floats for each peer p in rank order; {@code recv} receives, back to
     * back from offset 0, {@code recvCounts[p]} floats from each peer p. {@code recvCounts[p]} must equal peer p's
     * {@code sendCounts[rank()]}; a mismatch is an error naming both.
     */
    void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts);

    /** Integer all-to-all (token counts per expert), same layout as the float one. */
    void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts);

    /** Copies {@code buf[off, off+len)} of member {@code root} to every member. */
    void broadcast(float[] buf, int off, int len, int root);

    /** Byte broadcast (configs, unique ids): returns root's array on every member ({@code mine} ignored elsewhere). */
    byte[] broadcastBytes(byte[] mine, int root);

    /** Returns once every member has called it. */
    void barrier();

    /** Point-to-point: sends {@code buf[off, off+len)} to {@code peer}, which must call {@link #recv}. */
    void send(float[] buf, int off, int len, int peer);

    /** Point-to-point: receives exactly {@code len} floats from {@code peer} into {@code buf[off, off+len)}. */
    void recv(float[] buf, int off, int len, int peer);

    /**
     * Collective over this group: splits it into sub-groups, one per distinct {@code color}, ordered within each by
     * ({@code key}, old rank), as {@code MPI_Comm_split} and {@code ncclCommSplit}. The result is owned by the caller
     * and closed by it. {@code name} labels the new group in logs and errors.
     */
    Communicator split(int color, int key, String name);

    // ---- tensor forms: the buffers FSDP and expert parallelism hand over. Host tensors go to the array forms above;
    // a communicator that moves device memory (NCCL) overrides these for device tensors.

    /** In-place sum of {@code len} elements of a float tensor starting at {@code off}. */
    default void allReduceSum(Tensor buf, int off, int len) {
        allReduceSum(buf.floats(), off, len);
    }

    /** All-gather of float tensors, laid out as {@link #allGather(float[], int, int, float[], int)}. */
    default void allGather(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        allGather(send.floats(), sOff, len, recv.floats(), rOff);
    }

    /** Reduce-scatter of float tensors, laid out as {@link #reduceScatterSum(float[], int, float[], int, int)}. */
    default void reduceScatterSum(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        reduceScatterSum(send.floats(), sOff, recv.floats(), rOff, recvLen);
    }

    /**
     * Starts {@link #allGather(Tensor, int, int, Tensor, int)}: {@code recv} may be read only after the returned
     * handle's {@link Pending#complete()}, and {@code send} must not change before then. Ordered after the work
     * issued before this call. The default runs it at once.
     */
    default Pending allGatherStart(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        allGather(send, sOff, len, recv, rOff);
        return Pending.DONE;
    }

    /**
     * Starts {@link #reduceScatterSum(Tensor, int, Tensor, int, int)}: {@code recv} may be read, and {@code send}
     * freed or changed, only after the returned handle's {@link Pending#complete()}. The default runs it at once.
     */
    default Pending reduceScatterSumStart(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        reduceScatterSum(send, sOff, recv, rOff, recvLen);
        return Pending.DONE;
    }

    /**
     * One collective of a group started together: {@code len} elements per rank from {@code send} at {@code sOff}
     * to {@code recv} at {@code rOff} (an all-gather reads len and writes size * len; a reduce-scatter reads
     * size * len and writes len).
     */
    record Part(Tensor send, int sOff, Tensor recv, int rOff, int len) {
    }

    /**
     * Starts the all-gathers of {@code parts} as one collective: where the transport can (NCCL's group calls), one
     * launch moves them all, which is what FSDP wants for the parameters of one unit (many tensors, some small).
     * Same contract as {@link #allGatherStart(Tensor, int, int, Tensor, int)} for each part. The default starts
     * them one by one.
     */
    default Pending allGatherStart(java.util.List<Part> parts) {
        return startEach(parts, p -> allGatherStart(p.send(), p.sOff(), p.len(), p.recv(), p.rOff()));
    }

    /**
     * {@link #allGatherStart(java.util.List)} where the values may travel as {@code wire}, a narrower floating type
     * (FSDP's mixed-precision param dtype: {@link DType#BF16} halves the bytes on the wire). A communicator that
     * honours it rounds every element to {@code wire} (round to nearest even) before it travels, so each part's
     * {@code recv} holds the rounded values, this rank's own slice included, and {@code send} is left unchanged. It
     * is a permission, not an order: the default (and any communicator that moves only f32, as the CPU ones do)
     * gathers exact f32 values, which is what a backend that computes in f32 wants anyway.
     */
    default Pending allGatherStart(java.util.List<Part> parts, DType wire) {
        return allGatherStart(parts);
    }

    /** The reduce-scatters (sum) of {@code parts} started as one collective, as {@link #allGatherStart(java.util.List)}. */
    default Pending reduceScatterSumStart(java.util.List<Part> parts) {
        return startEach(parts, p -> reduceScatterSumStart(p.send(), p.sOff(), p.recv(), p.rOff(), p.len()));
    }

    /** Starts each part on its own; the handle completes them in order. */
    private static Pending startEach(java.util.List<Part> parts, java.util.function.Function<Part, Pending> start) {
        java.util.List<Pending> started = new java.util.ArrayList<>(parts.size());
        for (Part p : parts) {
            started.add(start.apply(p));
        }
        return Pending.all(started);
    }

    /** All-to-all of float tensors with uneven splits, as {@link #allToAll(float[], int[], float[], int[])}. */
    default void allToAll(Tensor send, int[] sendCounts, Tensor recv, int[] recvCounts) {
        allToAll(send.floats(), sendCounts, recv.floats(), recvCounts);
    }

    /** Broadcast of a float tensor range from {@code root}. */
    default void broadcast(Tensor buf, int off, int len, int root) {
        broadcast(buf.floats(), off, len, root);
    }

    /** Releases resources. Idempotent. */
    @Override
    void close();
}
