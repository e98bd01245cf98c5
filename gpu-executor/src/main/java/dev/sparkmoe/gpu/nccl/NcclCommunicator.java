package dev.sparkmoe.gpu.nccl;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.cuda.DeviceMemory;
import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.Pending;
import java.util.List;
import java.util.Objects;
import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.cuda.nccl.ncclComm;

/**
 * A {@link Communicator} over NCCL, one per process and GPU (as {@code torch.distributed}'s NCCL process group).
 *
 * <p><b>Creation.</b> {@link #create(NcclBootstrap, NcclOptions)}: rank 0 makes the unique id, the bootstrap carries it
 * to the other ranks, every rank calls {@code ncclCommInitRankConfig} with a <em>non-blocking</em> config and polls
 * {@code ncclCommGetAsyncError} until the communicator is ready, or aborts it after the init timeout. Sub-groups (one
 * per mesh dimension) come from {@link #split(int, int, String)} = {@code ncclCommSplit}, non-blocking and polled the
 * same way. Each of these non-blocking communicators only makes communicators: the collectives run on a blocking twin
 * split from it, whose peers are connected right away by a few small collectives (a non-blocking communicator answers
 * every {@code ncclGroupEnd} with {@code ncclInProgress} from a helper thread, to be polled: host time per collective
 * that a training step with dozens of them pays in device idle time). {@code NCCL_NVLS_ENABLE} must
 * be {@code 0} in the environment (NVLink SHARP multicast can take a shared host's GPUs out of service); creation
 * refuses to run otherwise. Nothing here calls {@code cuMulticastCreate}.
 *
 * <p><b>Streams.</b> Every collective runs on this communicator's own non-blocking CUDA stream ({@link #stream()}).
 * Device-tensor collectives are ordered after the work already enqueued on the compute stream
 * ({@link #setComputeStream(long)}, default the legacy default stream) and the compute stream is made to wait for them,
 * with events; so compute enqueued before a collective and collectives on other groups overlap with it. The
 * {@code *Async} methods return an {@link NcclWork} for the caller to wait on. The {@link Communicator} methods on
 * device tensors do not block the host either: the result is ready for everything enqueued afterwards on the compute
 * stream (and for the host after a synchronisation of it), so the host runs ahead and keeps the GPU fed, as
 * {@code torch.distributed} does. Host arrays and host tensors are staged and block until done.
 *
 * <p><b>Buffers.</b> Tensor forms with device tensors ({@link Tensor#deviceHandle()} implementing
 * {@link DeviceMemory}) run natively on device memory, in the tensor's dtype (F32, BF16, F16, I32, I64). Array forms
 * and host tensors are staged through pinned host memory and device buffers of this communicator, so the conformance
 * suite runs on it unchanged.
 *
 * <p><b>Failures.</b> Every {@code ncclResult_t} and {@code cudaError_t} is checked; failures become
 * {@link NcclException}s naming the call, the collective, the group and rank, the decoded status
 * ({@code ncclGetErrorString}, {@code ncclGetLastError}) and a hint. A collective that does not complete within the
 * timeout, or an asynchronous error reported by {@code ncclCommGetAsyncError} while waiting, aborts the communicator
 * ({@code ncclCommAbort}) and throws ({@link CollectiveTimeoutException} for the timeout) instead of hanging; an
 * aborted communicator refuses further calls. Collectives that the host did not wait for are watched by a daemon
 * thread (the watchdog, as in {@code ProcessGroupNCCL}): one still running past the timeout aborts the communicator,
 * which releases the streams waiting on it, and the next call on this communicator throws, naming it. The watchdog
 * also aborts a blocking communicator's call that has kept the host waiting past the timeout (an enqueue whose peer
 * never connects, a finalize), which makes the call return, and throw.
 *
 * <p>Parts, each one concern: {@link NcclInit} (initialisation and splits), {@link NcclCalls} (the communicators, the
 * stream, enqueues, waits and failures), {@link NcclWatchdog}, {@link HostCollectives} through {@link PinnedStaging},
 * {@link DeviceCollectives}, {@link Bf16WireGather}.
 *
 * <p>Not thread-safe: one thread drives a communicator (as the collectives' lockstep order requires anyway).
 */
public final class NcclCommunicator implements Communicator {

    /** Environment variable that must be {@code 0}. */
    public static final String ENV_NVLS = "NCCL_NVLS_ENABLE";

    private final NcclCalls calls;
    private final PinnedStaging staging;
    private final HostCollectives host;
    private final DeviceCollectives onDevice;
    private final Bf16WireGather bf16Wire;
    private CudaBackend wireBackend; // set by attach: converts and allocates for bf16-wire all-gathers

    private NcclCommunicator(ncclComm control, ncclComm comm, int device, String name, NcclOptions options) {
        this.calls = new NcclCalls(control, comm, device, name, options);
        this.staging = new PinnedStaging(calls);
        this.host = new HostCollectives(calls, staging);
        this.onDevice = new DeviceCollectives(calls, host);
        this.bf16Wire = new Bf16WireGather(calls);
    }

    // ------------------------------------------------------------------------------------------------ creation

    /** Refuses to go on unless {@code NCCL_NVLS_ENABLE=0} is in this process's environment. */
    public static void requireNvlsDisabled() {
        NcclInit.requireNvlsDisabled();
    }

    /**
     * Collective over the bootstrap's ranks: creates this rank's member of a new NCCL world on
     * {@code options.device()}.
     */
    public static NcclCommunicator create(NcclBootstrap bootstrap, NcclOptions options) {
        NcclInit.Control c = NcclInit.init(bootstrap, options);
        return withCollectives(c.comm(), c.key(), options, c.ctx(), c.deadline());
    }

    /**
     * The communicator over a ready non-blocking {@code control}: its collectives run on a blocking twin split from it
     * (a non-blocking split, polled until {@code deadline}), which then connects its peers at once (see
     * {@link #connectPeers()}).
     */
    private static NcclCommunicator withCollectives(ncclComm control, int key, NcclOptions options, String ctx,
                                                    long deadline) {
        ncclComm work = NcclInit.blockingTwin(control, key, options, ctx, deadline);
        NcclCommunicator made = new NcclCommunicator(control, work, options.device(), options.name(), options);
        made.connectPeers();
        return made;
    }

    /**
     * A blocking communicator connects its peers at its first collectives (NCCL's runtime connection), blocking the
     * host until every peer has joined them. They are made here, while every rank is known to be alive (all of them
     * just finished the split): an all-reduce, an all-gather and a reduce-scatter, small and of a few MiB (the
     * protocols NCCL picks by size), so that the training's collectives find their connections made. A rank that
     * dies later is caught by the watchdog (a collective that does not complete) as on a non-blocking communicator.
     */
    private void connectPeers() {
        for (int len : new int[] {1, 1 << 20}) {
            float[] a = new float[len * size()];
            allReduceSum(a, 0, len);
            allGather(new float[len], 0, len, a, 0);
            reduceScatterSum(a, 0, new float[len], 0, len);
        }
    }

    @Override
    public Communicator split(int color, int key, String newName) {
        Objects.requireNonNull(newName, "name");
        String what = "split(color " + color + ", key " + key + ", '" + newName + "')";
        if (color < 0) {
            throw new IllegalArgumentException(what + " on group '" + name() + "': color must be >= 0 (ncclCommSplit)");
        }
        calls.begin(what);
        NcclOptions options = calls.options();
        long deadline = System.nanoTime() + options.initTimeout().toNanos();
        String ctx = what + " of group '" + name() + "' (rank " + rank() + " of " + size() + ", device " + device()
                + ")";
        // from the non-blocking control communicator, polled against the init timeout; where the control communicator
        // itself fails, this whole group is aborted (a failed child alone is aborted by splitReady)
        ncclComm child = NcclInit.splitReady(calls.control(), color, key, false, what, ctx, deadline, options,
                () -> calls.abort(what + " failed"));
        NcclCommunicator sub = withCollectives(child, key, options.withName(newName), ctx, deadline);
        sub.setComputeStream(calls.computeStreamAddress()); // sub-groups order their collectives with the same stream
        sub.wireBackend = wireBackend;
        return sub;
    }

    // ------------------------------------------------------------------------------------------------ identity

    @Override
    public int rank() {
        return calls.rank();
    }

    @Override
    public int size() {
        return calls.size();
    }

    @Override
    public String name() {
        return calls.name();
    }

    /** CUDA device ordinal of this member. */
    public int device() {
        return calls.device();
    }

    /** The {@code cudaStream_t} on which this communicator's collectives run. */
    public long stream() {
        return calls.stream().address();
    }

    /**
     * The compute stream that device-tensor collectives are ordered with ({@code cudaStream_t}; 0 = the legacy default
     * stream, the default).
     */
    public void setComputeStream(long streamAddress) {
        calls.setComputeStream(streamAddress);
    }

    /** {@link #setComputeStream(long)} with a JavaCPP stream (e.g. {@code CudaBackend.stream()}); null = default. */
    public void setComputeStream(CUstream_st s) {
        setComputeStream(s == null ? 0 : s.address());
    }

    public long computeStream() {
        return calls.computeStreamAddress();
    }

    /**
     * Orders this communicator's device collectives after {@code backend}'s stream ({@link #setComputeStream}) and
     * lets its all-gathers honour a {@link DType#BF16} wire ({@link #allGatherStart(List, DType)}) with the backend's
     * conversion kernels and allocator. Sub-groups split afterwards inherit both.
     */
    public void attach(CudaBackend backend) {
        setComputeStream(backend.stream());
        this.wireBackend = backend;
    }

    /** Undoes {@link #attach}: the legacy default stream again, and all-gathers in f32 only. */
    public void detach() {
        setComputeStream(0);
        this.wireBackend = null;
    }

    /** True once a failure or timeout aborted this communicator. */
    public boolean isAborted() {
        return calls.abortedBecause() != null;
    }

    /** Collectives enqueued without waiting that are not yet known to be complete. */
    public int inFlight() {
        return calls.watchdog().inFlight();
    }

    @Override
    public String toString() {
        return "NcclCommunicator[" + name() + ", rank " + rank() + " of " + size() + ", device " + device()
                + (calls.abortedBecause() != null ? ", aborted" : calls.closed() ? ", closed" : "") + "]";
    }

    // ------------------------------------------------------------------------------------------------ host arrays

    @Override
    public void allReduceSum(float[] buf, int off, int len) {
        host.allReduceSum(buf, off, len);
    }

    @Override
    public void allReduceSum(double[] buf, int off, int len) {
        host.allReduceSum(buf, off, len);
    }

    @Override
    public void allReduceSum(long[] buf, int off, int len) {
        host.allReduceSum(buf, off, len);
    }

    @Override
    public void allReduceMax(float[] buf, int off, int len) {
        host.allReduceMax(buf, off, len);
    }

    @Override
    public void broadcast(float[] buf, int off, int len, int root) {
        host.broadcast(buf, off, len, root);
    }

    @Override
    public void allGather(float[] send, int sOff, int len, float[] recv, int rOff) {
        host.allGather(send, sOff, len, recv, rOff);
    }

    @Override
    public void allGather(int[] send, int sOff, int len, int[] recv, int rOff) {
        host.allGather(send, sOff, len, recv, rOff);
    }

    @Override
    public byte[][] allGatherBytes(byte[] mine) {
        return host.allGatherBytes(mine);
    }

    @Override
    public void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen) {
        host.reduceScatterSum(send, sOff, recv, rOff, recvLen);
    }

    @Override
    public void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts) {
        host.allToAll(send, sendCounts, recv, recvCounts);
    }

    @Override
    public void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts) {
        host.allToAll(send, sendCounts, recv, recvCounts);
    }

    @Override
    public byte[] broadcastBytes(byte[] mine, int root) {
        return host.broadcastBytes(mine, root);
    }

    @Override
    public void barrier() {
        host.barrier();
    }

    @Override
    public void send(float[] buf, int off, int len, int peer) {
        host.send(buf, off, len, peer);
    }

    @Override
    public void recv(float[] buf, int off, int len, int peer) {
        host.recv(buf, off, len, peer);
    }

    // ------------------------------------------------------------------------------------------------ tensors

    @Override
    public void allReduceSum(Tensor buf, int off, int len) {
        if (buf.isHost()) {
            Communicator.super.allReduceSum(buf, off, len);
            return;
        }
        calls.watchdog().track(allReduceSumAsync(buf, off, len));
    }

    @Override
    public void allGather(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        if (send.isHost() && recv.isHost()) {
            Communicator.super.allGather(send, sOff, len, recv, rOff);
            return;
        }
        calls.watchdog().track(allGatherAsync(send, sOff, len, recv, rOff));
    }

    @Override
    public void reduceScatterSum(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        if (send.isHost() && recv.isHost()) {
            Communicator.super.reduceScatterSum(send, sOff, recv, rOff, recvLen);
            return;
        }
        calls.watchdog().track(reduceScatterSumAsync(send, sOff, recv, rOff, recvLen));
    }

    @Override
    public void allToAll(Tensor send, int[] sendCounts, Tensor recv, int[] recvCounts) {
        if (send.isHost() && recv.isHost()) {
            Communicator.super.allToAll(send, sendCounts, recv, recvCounts);
            return;
        }
        calls.watchdog().track(allToAllAsync(send, sendCounts, recv, recvCounts));
    }

    @Override
    public void broadcast(Tensor buf, int off, int len, int root) {
        if (buf.isHost()) {
            Communicator.super.broadcast(buf, off, len, root);
            return;
        }
        calls.watchdog().track(broadcastAsync(buf, off, len, root));
    }

    /** In-place sum of device tensor elements {@code [off, off+len)}, enqueued; see {@link NcclWork}. */
    public NcclWork allReduceSumAsync(Tensor buf, int off, int len) {
        return onDevice.allReduceSum(buf, off, len);
    }

    /** In-place sum of {@code count} elements of {@code dtype} at a raw device pointer, enqueued. */
    public NcclWork allReduceSumAsync(DeviceMemory buf, long count, DType dtype) {
        return onDevice.allReduceSum(buf, count, dtype);
    }

    /** All-gather of device tensors, laid out as the array form; enqueued. */
    public NcclWork allGatherAsync(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        return onDevice.allGather(send, sOff, len, recv, rOff, true);
    }

    /** Reduce-scatter with sum of device tensors, laid out as the array form; enqueued. */
    public NcclWork reduceScatterSumAsync(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        return onDevice.reduceScatterSum(send, sOff, recv, rOff, recvLen, true);
    }

    /** Broadcast of device tensor elements from {@code root}; enqueued. */
    public NcclWork broadcastAsync(Tensor buf, int off, int len, int root) {
        return onDevice.broadcast(buf, off, len, root);
    }

    /**
     * All-to-all with uneven splits of device tensors (ncclSend/ncclRecv in one group), laid out as the array form;
     * the split sizes are checked against every peer's first (a host round over NCCL); enqueued.
     */
    public NcclWork allToAllAsync(Tensor send, int[] sendCounts, Tensor recv, int[] recvCounts) {
        return onDevice.allToAll(send, sendCounts, recv, recvCounts);
    }

    /**
     * Started, not waited for: the compute stream is made to wait only at {@link Pending#complete()}, so compute
     * enqueued in between overlaps the all-gather (FSDP's prefetch). The watchdog watches it from now on.
     */
    @Override
    public Pending allGatherStart(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        if (send.isHost() && recv.isHost()) {
            return Communicator.super.allGatherStart(send, sOff, len, recv, rOff);
        }
        return calls.started(onDevice.allGather(send, sOff, len, recv, rOff, false));
    }

    /** Started, not waited for, as {@link #allGatherStart}: a reduce-scatter under the next layer's backward. */
    @Override
    public Pending reduceScatterSumStart(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        if (send.isHost() && recv.isHost()) {
            return Communicator.super.reduceScatterSumStart(send, sOff, recv, rOff, recvLen);
        }
        return calls.started(onDevice.reduceScatterSum(send, sOff, recv, rOff, recvLen, false));
    }

    /**
     * The all-gathers of a unit's parameters as ONE NCCL group: one launch, one event, one wait at
     * {@link Pending#complete()}; started as {@link #allGatherStart(Tensor, int, int, Tensor, int)} is.
     */
    @Override
    public Pending allGatherStart(List<Part> parts) {
        if (onHost(parts)) {
            return Communicator.super.allGatherStart(parts);
        }
        return calls.started(onDevice.grouped(true, parts));
    }

    /**
     * {@link #allGatherStart(List)} with the values on the wire as bf16 ({@link Bf16WireGather}) where {@code wire} is
     * {@link DType#BF16}, the communicator is {@link #attach attached} to a CUDA backend and every part is an f32
     * device tensor; otherwise the f32 gather.
     */
    @Override
    public Pending allGatherStart(List<Part> parts, DType wire) {
        if (wire != DType.BF16 || wireBackend == null || onHost(parts)
                || !parts.stream().allMatch(p -> p.send().dtype() == DType.F32 && p.recv().dtype() == DType.F32)) {
            return allGatherStart(parts);
        }
        return bf16Wire.start(parts, wireBackend);
    }

    /** The reduce-scatters (sum) of a unit's gradients as one NCCL group, as {@link #allGatherStart(List)}. */
    @Override
    public Pending reduceScatterSumStart(List<Part> parts) {
        if (onHost(parts)) {
            return Communicator.super.reduceScatterSumStart(parts);
        }
        return calls.started(onDevice.grouped(false, parts));
    }

    /** Nothing to do on the device: no parts, or every buffer on the host (the host-staged forms take them). */
    private static boolean onHost(List<Part> parts) {
        return parts.stream().allMatch(p -> p.send().isHost() && p.recv().isHost());
    }

    // ------------------------------------------------------------------------------------------------ close

    @Override
    public void close() {
        if (calls.closed()) {
            return;
        }
        calls.markClosed();
        RuntimeException failure = calls.finalizeCommunicators();
        calls.watchdog().stop();
        calls.synchronizeStream();
        calls.watchdog().closeAll();
        staging.free();
        calls.destroyStream();
        if (failure != null) {
            throw failure;
        }
    }
}
