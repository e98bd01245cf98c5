package dev.sparkmoe.gpu.nccl;

import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.cuda.DeviceMemory;
import dev.sparkmoe.gpu.cuda.RawPointer;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import dev.sparkmoe.parallel.comm.Pending;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.locks.LockSupport;
import org.bytedeco.cuda.cudart.CUevent_st;
import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.cuda.global.nccl;
import org.bytedeco.cuda.nccl.ncclComm;
import org.bytedeco.cuda.nccl.ncclConfig_t;
import org.bytedeco.cuda.nccl.ncclUniqueId;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.DoublePointer;
import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.javacpp.IntPointer;
import org.bytedeco.javacpp.Loader;
import org.bytedeco.javacpp.LongPointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerPointer;

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
 * <p>Not thread-safe: one thread drives a communicator (as the collectives' lockstep order requires anyway).
 */
public final class NcclCommunicator implements Communicator {

    private static final int UNDEF_INT = Integer.MIN_VALUE; // NCCL_CONFIG_UNDEF_INT

    private final ncclComm comm;    // runs the collectives: the blocking twin of the control communicator
    private final ncclComm control; // non-blocking: made (init, split) by polling against a timeout; splits start here
    private final int rank;
    private final int size;
    private final int device;
    private final String name;
    private final NcclOptions options;
    private final CUstream_st stream;
    private final CUevent_st done;
    private final CUevent_st computeReady;
    private CUstream_st computeStream; // null: the legacy default stream
    private long computeStreamAddress;
    private final Staging staging = new Staging();
    private CudaBackend wireBackend; // set by attach: converts and allocates for bf16-wire all-gathers
    private volatile String abortedBecause;
    private volatile boolean closed;
    private volatile boolean watched = true; // the watchdog runs until close has finalised the communicators
    /** Device collectives enqueued by the blocking-API methods and not yet seen complete, oldest first. */
    private final java.util.ArrayDeque<NcclWork> inFlight = new java.util.ArrayDeque<>();
    private Thread watchdog;
    /** The call the host is in that may block (a blocking communicator's enqueue), for the watchdog; null when none. */
    private volatile String blockedIn;
    private volatile long blockedSince;

    private NcclCommunicator(ncclComm control, ncclComm comm, int device, String name, NcclOptions options) {
        this.control = control;
        this.comm = comm;
        this.device = device;
        this.name = name;
        this.options = options;
        try (IntPointer v = new IntPointer(1)) {
            check("ncclCommUserRank", nccl.ncclCommUserRank(comm, v), "creating group '" + name + "'");
            this.rank = v.get();
            check("ncclCommCount", nccl.ncclCommCount(comm, v), "creating group '" + name + "'");
            this.size = v.get();
        }
        this.stream = new CUstream_st();
        cudaCheck("cudaStreamCreateWithFlags", cudart.cudaStreamCreateWithFlags(stream, cudart.cudaStreamNonBlocking),
                "creating the stream of group '" + name + "'", "");
        this.done = newEvent("group '" + name + "'");
        this.computeReady = newEvent("group '" + name + "'");
    }

    // ------------------------------------------------------------------------------------------------ creation

    /** Environment variable that must be {@code 0}. */
    public static final String ENV_NVLS = "NCCL_NVLS_ENABLE";

    /** Refuses to go on unless {@code NCCL_NVLS_ENABLE=0} is in this process's environment. */
    public static void requireNvlsDisabled() {
        String v = System.getenv(ENV_NVLS);
        if (!"0".equals(v == null ? null : v.strip())) {
            throw new IllegalStateException(ENV_NVLS + " is " + (v == null ? "unset" : "'" + v + "'")
                    + " but must be 0: NVLink SHARP multicast can take a shared host's GPUs out of service; hint: start "
                    + "ranks with bin/spark-moe-gpu or the launcher (both set it), or export " + ENV_NVLS + "=0");
        }
    }

    /**
     * Collective over the bootstrap's ranks: creates this rank's member of a new NCCL world on {@code options.device()}.
     */
    public static NcclCommunicator create(NcclBootstrap bootstrap, NcclOptions options) {
        Objects.requireNonNull(bootstrap, "bootstrap");
        Objects.requireNonNull(options, "options");
        requireNvlsDisabled();
        Nccl.Availability a = Nccl.probe();
        if (!a.ok()) {
            throw new IllegalStateException("cannot create NCCL group '" + options.name() + "': " + a.reason());
        }
        if (options.device() >= a.deviceCount()) {
            throw new IllegalArgumentException("CUDA device " + options.device() + " does not exist: " + a.deviceCount()
                    + " visible; hint: one rank per GPU (--nproc <= GPUs), or check CUDA_VISIBLE_DEVICES");
        }
        int n = bootstrap.size();
        int me = bootstrap.rank();
        String ctx = "creating NCCL group '" + options.name() + "' (rank " + me + " of " + n + ", device "
                + options.device() + ")";
        cudaCheck("cudaSetDevice", cudart.cudaSetDevice(options.device()), ctx, "");
        ncclUniqueId id = new ncclUniqueId();
        byte[] idBytes = new byte[nccl.NCCL_UNIQUE_ID_BYTES];
        BytePointer idView = new BytePointer(id).capacity(nccl.NCCL_UNIQUE_ID_BYTES);
        if (me == 0) {
            check("ncclGetUniqueId", nccl.ncclGetUniqueId(id), ctx, null);
            idView.get(idBytes);
        }
        byte[] got = bootstrap.broadcastFromRank0(idBytes);
        if (got == null || got.length != nccl.NCCL_UNIQUE_ID_BYTES) {
            throw new CommunicatorException(ctx + ": the bootstrap delivered " + (got == null ? "null" : got.length
                    + " bytes") + " as the unique id; expected " + nccl.NCCL_UNIQUE_ID_BYTES);
        }
        idView.put(got);
        ncclConfig_t cfg = config(false);
        ncclComm c = new ncclComm();
        int r = nccl.ncclCommInitRankConfig(c, n, id, me, cfg);
        long deadline = System.nanoTime() + options.initTimeout().toNanos();
        waitReady(c, r, "ncclCommInitRankConfig", ctx, deadline, options);
        return withCollectives(c, me, options, ctx, deadline);
    }

    /**
     * The communicator over a ready non-blocking {@code control}: its collectives run on a blocking twin split from it
     * (a non-blocking split, polled until {@code deadline}), which then connects its peers at once (see
     * {@link #connectPeers()}).
     */
    private static NcclCommunicator withCollectives(ncclComm control, int key, NcclOptions options, String ctx,
                                                    long deadline) {
        ncclComm work;
        try {
            work = splitReady(control, 0, key, true, "split(blocking twin)", ctx, deadline, options, () -> { });
        } catch (RuntimeException e) {
            abortQuietly(control); // the new communicator is given up whichever side failed
            throw e;
        }
        NcclCommunicator made = new NcclCommunicator(control, work, options.device(), options.name(), options);
        made.connectPeers();
        return made;
    }

    /**
     * {@code ncclCommSplit} of a non-blocking {@code parent}: polls the parent until the split is done, then the child
     * until it is ready. Past {@code deadline}, or on an error, a failed child is aborted here; a failed parent is
     * handed to {@code parentFailed} (its owner aborts it, so that nothing is aborted twice). Then it throws, naming
     * the call.
     */
    private static ncclComm splitReady(ncclComm parent, int color, int key, boolean blocking, String what, String ctx,
                                       long deadline, NcclOptions options, Runnable parentFailed) {
        // With a non-blocking parent NCCL writes the new handle when the split completes, after ncclCommSplit has
        // returned: the out-parameter must outlive the call (a heap PointerPointer, not a temporary of the binding).
        PointerPointer<ncclComm> out = new PointerPointer<>(1);
        int r = nccl.ncclCommSplit(parent, color, key, out, config(blocking));
        try {
            pollReady(parent, r, "ncclCommSplit", ctx + ": " + what, deadline, options);
        } catch (RuntimeException e) {
            parentFailed.run(); // the parent's owner aborts it, once
            throw e;
        }
        ncclComm child = new ncclComm(out.get(0));
        if (child.isNull()) {
            throw new NcclException("ncclCommSplit", nccl.ncclInternalError, ctx + ": " + what
                    + ": NCCL reported the split complete but returned no communicator");
        }
        waitReady(child, nccl.ncclSuccess, "ncclCommSplit", ctx + ": " + what, deadline, options);
        return child;
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
            float[] a = new float[len * size];
            allReduceSum(a, 0, len);
            allGather(new float[len], 0, len, a, 0);
            reduceScatterSum(a, 0, new float[len], 0, len);
        }
    }

    /** A config as {@code NCCL_CONFIG_INITIALIZER} with {@code blocking} 0 or 1. */
    private static ncclConfig_t config(boolean blocking) {
        ncclConfig_t cfg = new ncclConfig_t();
        cfg.size(Loader.sizeof(ncclConfig_t.class));
        cfg.magic(nccl.NCCL_API_MAGIC);
        cfg.version(nccl.NCCL_VERSION_CODE);
        cfg.blocking(blocking ? 1 : 0);
        cfg.cgaClusterSize(UNDEF_INT);
        cfg.minCTAs(UNDEF_INT);
        cfg.maxCTAs(UNDEF_INT);
        cfg.netName((BytePointer) null);
        cfg.splitShare(UNDEF_INT);
        cfg.trafficClass(UNDEF_INT);
        cfg.commName((BytePointer) null);
        cfg.collnetEnable(UNDEF_INT);
        cfg.CTAPolicy(UNDEF_INT);
        cfg.shrinkShare(UNDEF_INT);
        cfg.nvlsCTAs(UNDEF_INT);
        cfg.nChannelsPerNetPeer(UNDEF_INT);
        cfg.nvlinkCentricSched(UNDEF_INT);
        cfg.graphUsageMode(UNDEF_INT);
        cfg.numRmaCtx(UNDEF_INT);
        return cfg;
    }

    /** After a non-blocking init or split: polls until ready; on error or past the deadline aborts {@code c}. */
    private static void waitReady(ncclComm c, int r, String call, String ctx, long deadline, NcclOptions o) {
        try {
            pollReady(c, r, call, ctx, deadline, o);
        } catch (RuntimeException e) {
            abortQuietly(c);
            throw e;
        }
    }

    /** {@link #waitReady} that leaves aborting {@code c} on failure to the caller. */
    private static void pollReady(ncclComm c, int r, String call, String ctx, long deadline, NcclOptions o) {
        if (r != nccl.ncclSuccess && r != nccl.ncclInProgress) {
            String msg = describe(call, r, ctx, c);
            throw new NcclException(call, r, msg);
        }
        int[] state = {nccl.ncclInProgress};
        int spins = 0;
        while (true) {
            int q = nccl.ncclCommGetAsyncError(c, state);
            if (q != nccl.ncclSuccess && q != nccl.ncclInProgress) {
                String msg = describe("ncclCommGetAsyncError", q, ctx + " (after " + call + ")", c);
                throw new NcclException("ncclCommGetAsyncError", q, msg);
            }
            if (state[0] == nccl.ncclSuccess) {
                return;
            }
            if (state[0] != nccl.ncclInProgress) {
                String msg = describe(call, state[0], ctx, c);
                throw new NcclException(call, state[0], msg);
            }
            if (System.nanoTime() > deadline) {
                throw new CollectiveTimeoutException(ctx + ": " + call + " did not complete within "
                        + o.initTimeout().toMillis() + " ms; the communicator was aborted (ncclCommAbort); hint: a rank"
                        + " did not join (crashed, or called a different collective), or the network between ranks is"
                        + " blocked; NCCL_DEBUG=INFO shows the bootstrap");
            }
            backoff(spins++);
        }
    }

    // ------------------------------------------------------------------------------------------------ identity

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return size;
    }

    @Override
    public String name() {
        return name;
    }

    /** CUDA device ordinal of this member. */
    public int device() {
        return device;
    }

    /** The {@code cudaStream_t} on which this communicator's collectives run. */
    public long stream() {
        return stream.address();
    }

    /**
     * The compute stream that device-tensor collectives are ordered with ({@code cudaStream_t}; 0 = the legacy default
     * stream, the default).
     */
    public void setComputeStream(long streamAddress) {
        this.computeStreamAddress = streamAddress;
        this.computeStream = streamAddress == 0 ? null : new CUstream_st(RawPointer.of(streamAddress, 0));
    }

    /** {@link #setComputeStream(long)} with a JavaCPP stream (e.g. {@code CudaBackend.stream()}); null = default. */
    public void setComputeStream(CUstream_st s) {
        setComputeStream(s == null ? 0 : s.address());
    }

    public long computeStream() {
        return computeStreamAddress;
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
        return abortedBecause != null;
    }

    @Override
    public String toString() {
        return "NcclCommunicator[" + name + ", rank " + rank + " of " + size + ", device " + device
                + (abortedBecause != null ? ", aborted" : closed ? ", closed" : "") + "]";
    }

    // ------------------------------------------------------------------------------------------------ host arrays

    @Override
    public void allReduceSum(float[] buf, int off, int len) {
        inPlace("allReduceSum(float[" + len + "])", Kind.F32, buf, off, len, nccl.ncclSum, -1);
    }

    @Override
    public void allReduceSum(double[] buf, int off, int len) {
        inPlace("allReduceSum(double[" + len + "])", Kind.F64, buf, off, len, nccl.ncclSum, -1);
    }

    @Override
    public void allReduceSum(long[] buf, int off, int len) {
        inPlace("allReduceSum(long[" + len + "])", Kind.I64, buf, off, len, nccl.ncclSum, -1);
    }

    @Override
    public void allReduceMax(float[] buf, int off, int len) {
        inPlace("allReduceMax(float[" + len + "])", Kind.F32, buf, off, len, nccl.ncclMax, -1);
    }

    @Override
    public void broadcast(float[] buf, int off, int len, int root) {
        checkPeer("broadcast root", root);
        inPlace("broadcast(float[" + len + "], root " + root + ")", Kind.F32, buf, off, len, -1, root);
    }

    @Override
    public void allGather(float[] send, int sOff, int len, float[] recv, int rOff) {
        gather("allGather(float[" + len + "])", Kind.F32, send, sOff, len, recv, rOff);
    }

    @Override
    public void allGather(int[] send, int sOff, int len, int[] recv, int rOff) {
        gather("allGather(int[" + len + "])", Kind.I32, send, sOff, len, recv, rOff);
    }

    @Override
    public byte[][] allGatherBytes(byte[] mine) {
        Objects.requireNonNull(mine, "mine");
        int[] lens = new int[size];
        allGather(new int[] {mine.length}, 0, 1, lens, 0);
        int max = Arrays.stream(lens).max().orElse(0);
        byte[][] out = new byte[size][];
        if (max > 0) {
            byte[] padded = Arrays.copyOf(mine, max);
            byte[] all = new byte[size * max];
            gather("allGatherBytes(" + max + " bytes padded)", Kind.U8, padded, 0, max, all, 0);
            for (int r = 0; r < size; r++) {
                out[r] = Arrays.copyOfRange(all, r * max, r * max + lens[r]);
            }
        } else {
            for (int r = 0; r < size; r++) {
                out[r] = new byte[0];
            }
        }
        return out;
    }

    @Override
    public void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen) {
        String what = "reduceScatterSum(float[" + size + " x " + recvLen + "])";
        checkRange(what + " send", send.length, sOff, (long) size * recvLen);
        checkRange(what + " recv", recv.length, rOff, recvLen);
        if (recvLen == 0) {
            return;
        }
        begin(what);
        long inBytes = 4L * size * recvLen;
        long outBytes = 4L * recvLen;
        staging.ensure(inBytes, outBytes);
        toPinned(send, sOff, size * recvLen, 0);
        h2d(staging.devIn, inBytes, what);
        enqueue(what, "ncclReduceScatter", () -> nccl.ncclReduceScatter(staging.devIn, staging.devOut, recvLen,
                nccl.ncclFloat32, nccl.ncclSum, comm, stream));
        d2h(staging.devOut, outBytes, what);
        awaitDone(what);
        fromPinned(recv, rOff, recvLen, 0);
    }

    @Override
    public void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts) {
        exchange("allToAll(float)", Kind.F32, send, sendCounts, recv, recvCounts);
    }

    @Override
    public void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts) {
        exchange("allToAll(int)", Kind.I32, send, sendCounts, recv, recvCounts);
    }

    @Override
    public byte[] broadcastBytes(byte[] mine, int root) {
        checkPeer("broadcastBytes root", root);
        int[] len = {rank == root ? Objects.requireNonNull(mine, "root's bytes").length : 0};
        inPlace("broadcastBytes(length, root " + root + ")", Kind.I32, len, 0, 1, -1, root);
        byte[] out = rank == root ? mine.clone() : new byte[len[0]];
        if (len[0] > 0) {
            inPlace("broadcastBytes(" + len[0] + " bytes, root " + root + ")", Kind.U8, out, 0, len[0], -1, root);
        }
        return out;
    }

    @Override
    public void barrier() {
        inPlace("barrier", Kind.I32, new int[1], 0, 1, nccl.ncclSum, -1);
    }

    @Override
    public void send(float[] buf, int off, int len, int peer) {
        String what = "send(float[" + len + "] to rank " + peer + ")";
        checkPeer(what, peer);
        if (peer == rank) {
            throw new IllegalArgumentException(what + " on group '" + name + "': a rank cannot send to itself");
        }
        checkRange(what, buf.length, off, len);
        begin(what);
        long bytes = 4L * len;
        staging.ensure(Math.max(bytes, 1), 1);
        toPinned(buf, off, len, 0);
        h2d(staging.devIn, bytes, what);
        enqueue(what, "ncclSend", () -> nccl.ncclSend(staging.devIn, len, nccl.ncclFloat32, peer, comm, stream));
        awaitDone(what);
    }

    @Override
    public void recv(float[] buf, int off, int len, int peer) {
        String what = "recv(float[" + len + "] from rank " + peer + ")";
        checkPeer(what, peer);
        if (peer == rank) {
            throw new IllegalArgumentException(what + " on group '" + name + "': a rank cannot receive from itself");
        }
        checkRange(what, buf.length, off, len);
        begin(what);
        long bytes = 4L * len;
        staging.ensure(1, Math.max(bytes, 1));
        enqueue(what, "ncclRecv", () -> nccl.ncclRecv(staging.devOut, len, nccl.ncclFloat32, peer, comm, stream));
        d2h(staging.devOut, bytes, what);
        awaitDone(what);
        fromPinned(buf, off, len, 0);
    }

    @Override
    public Communicator split(int color, int key, String newName) {
        Objects.requireNonNull(newName, "name");
        String what = "split(color " + color + ", key " + key + ", '" + newName + "')";
        if (color < 0) {
            throw new IllegalArgumentException(what + " on group '" + name + "': color must be >= 0 (ncclCommSplit)");
        }
        begin(what);
        long deadline = System.nanoTime() + options.initTimeout().toNanos();
        String ctx = what + " of group '" + name + "' (rank " + rank + " of " + size + ", device " + device + ")";
        // from the non-blocking control communicator, polled against the init timeout; where the control communicator
        // itself fails, this whole group is aborted (a failed child alone is aborted by splitReady)
        ncclComm child = splitReady(control, color, key, false, what, ctx, deadline, options,
                () -> abort(what + " failed"));
        NcclCommunicator sub = withCollectives(child, key, options.withName(newName), ctx, deadline);
        sub.setComputeStream(computeStreamAddress); // sub-groups order their collectives with the same compute stream
        sub.wireBackend = wireBackend;
        return sub;
    }

    // ------------------------------------------------------------------------------------------------ tensors

    @Override
    public void allReduceSum(Tensor buf, int off, int len) {
        if (buf.isHost()) {
            Communicator.super.allReduceSum(buf, off, len);
            return;
        }
        track(allReduceSumAsync(buf, off, len));
    }

    @Override
    public void allGather(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        if (send.isHost() && recv.isHost()) {
            Communicator.super.allGather(send, sOff, len, recv, rOff);
            return;
        }
        track(allGatherAsync(send, sOff, len, recv, rOff));
    }

    @Override
    public void reduceScatterSum(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        if (send.isHost() && recv.isHost()) {
            Communicator.super.reduceScatterSum(send, sOff, recv, rOff, recvLen);
            return;
        }
        track(reduceScatterSumAsync(send, sOff, recv, rOff, recvLen));
    }

    @Override
    public void allToAll(Tensor send, int[] sendCounts, Tensor recv, int[] recvCounts) {
        if (send.isHost() && recv.isHost()) {
            Communicator.super.allToAll(send, sendCounts, recv, recvCounts);
            return;
        }
        track(allToAllAsync(send, sendCounts, recv, recvCounts));
    }

    @Override
    public void broadcast(Tensor buf, int off, int len, int root) {
        if (buf.isHost()) {
            Communicator.super.broadcast(buf, off, len, root);
            return;
        }
        track(broadcastAsync(buf, off, len, root));
    }

    /** In-place sum of device tensor elements {@code [off, off+len)}, enqueued; see {@link NcclWork}. */
    public NcclWork allReduceSumAsync(Tensor buf, int off, int len) {
        String what = "allReduceSum(" + buf.dtype() + " x " + len + ")";
        long p = devAddress(what, buf, off, len);
        return deviceOp(what, () -> enqueue(what, "ncclAllReduce", () -> nccl.ncclAllReduce(raw(p), raw(p), len,
                ncclType(what, buf.dtype()), nccl.ncclSum, comm, stream)));
    }

    /** In-place sum of {@code count} elements of {@code dtype} at a raw device pointer, enqueued. */
    public NcclWork allReduceSumAsync(DeviceMemory buf, long count, DType dtype) {
        String what = "allReduceSum(" + dtype + " x " + count + ")";
        if (count < 0 || count * dtype.byteSize() > buf.bytes()) {
            throw new IndexOutOfBoundsException(what + ": " + count + " elements do not fit " + buf.bytes() + " bytes");
        }
        long p = buf.address();
        return deviceOp(what, () -> enqueue(what, "ncclAllReduce", () -> nccl.ncclAllReduce(raw(p), raw(p), count,
                ncclType(what, dtype), nccl.ncclSum, comm, stream)));
    }

    /** All-gather of device tensors, laid out as the array form; enqueued. */
    public NcclWork allGatherAsync(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        return allGatherWork(send, sOff, len, recv, rOff, true);
    }

    /** The device all-gather; {@code computeWaits} as in {@link #deviceOp(String, boolean, Enqueue)}. */
    private NcclWork allGatherWork(Tensor send, int sOff, int len, Tensor recv, int rOff, boolean computeWaits) {
        String what = "allGather(" + send.dtype() + " x " + len + (computeWaits ? ")" : ", started)");
        sameDtype(what, send, recv);
        long s = devAddress(what + " send", send, sOff, len);
        long r = devAddress(what + " recv", recv, rOff, (long) size * len);
        return deviceOp(what, computeWaits, () -> enqueue(what, "ncclAllGather",
                () -> nccl.ncclAllGather(raw(s), raw(r), len, ncclType(what, send.dtype()), comm, stream)));
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
        return started(allGatherWork(send, sOff, len, recv, rOff, false));
    }

    /** Started, not waited for, as {@link #allGatherStart}: a reduce-scatter under the next layer's backward. */
    @Override
    public Pending reduceScatterSumStart(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        if (send.isHost() && recv.isHost()) {
            return Communicator.super.reduceScatterSumStart(send, sOff, recv, rOff, recvLen);
        }
        return started(reduceScatterWork(send, sOff, recv, rOff, recvLen, false));
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
        return started(groupedCollective(true, parts));
    }

    /**
     * {@link #allGatherStart(List)} with the values on the wire as bf16 where {@code wire} is {@link DType#BF16}, the
     * communicator is {@link #attach attached} to a CUDA backend and every part is an f32 device tensor (otherwise
     * the f32 gather): on this communicator's stream each part's {@code send} slice is rounded (nearest even) into
     * its rank's slot of a bf16 buffer and one NCCL group gathers every part in place in bf16. Half the bytes of the
     * f32 gather; every received element, this rank's own slice included, is the bf16 rounding of what was sent. The
     * bf16 buffer (all parts, 256-byte aligned slots) comes from the backend's allocator. At {@link
     * Pending#complete()}, once the compute stream waits for the gather, the backend adopts each part's slot as the
     * bf16 image of its {@code recv} range ({@link CudaBackend#adoptBf16Images}; it owns the buffer from then on):
     * the grouped GEMM reads the gathered expert weights in bf16 as they arrived, and the f32 values are widened into
     * place only where something reads them. Where a {@code recv} is of another backend, each part is widened into
     * its f32 {@code recv} on this stream right after the gather and the buffer goes back at
     * {@link Pending#complete()}.
     */
    @Override
    public Pending allGatherStart(List<Part> parts, DType wire) {
        if (wire != DType.BF16 || wireBackend == null || onHost(parts)
                || !parts.stream().allMatch(p -> p.send().dtype() == DType.F32 && p.recv().dtype() == DType.F32)) {
            return allGatherStart(parts);
        }
        String what = "allGather(group of " + parts.size() + ", bf16 wire, started)";
        int n = parts.size();
        long[] s = new long[n];      // f32 send
        long[] r = new long[n];      // f32 recv
        long[] lens = new long[n];   // elements per rank
        long[] fulls = new long[n];  // elements gathered
        long[] wire16 = new long[n]; // the part's bf16 slot: its offset in the buffer, then its address
        long[] mine = new long[n];   // this rank's slice of the slot
        long bytes = 0;
        for (int i = 0; i < n; i++) {
            Part p = parts.get(i);
            String part = what + " part " + i;
            lens[i] = p.len();
            fulls[i] = (long) size * p.len();
            s[i] = devAddress(part + " send", p.send(), p.sOff(), p.len());
            r[i] = devAddress(part + " recv", p.recv(), p.rOff(), fulls[i]);
            wire16[i] = bytes;
            bytes += (2 * fulls[i] + 255) & ~255L;
        }
        Tensor buffer = wireBackend.empty(DType.F32, (int) Math.max(1, (bytes + 3) / 4));
        long base = ((DeviceMemory) buffer.deviceHandle()).address();
        for (int i = 0; i < n; i++) {
            wire16[i] += base;
            mine[i] = wire16[i] + 2 * rank * lens[i];
        }
        boolean images = parts.stream().allMatch(p -> wireBackend.owns(p.recv()));
        NcclWork w;
        try {
            w = deviceOp(what, false, () -> {
                wireBackend.roundToBf16(s, mine, lens, stream); // every part in one launch
                inGroup(what, () -> {
                    for (int i = 0; i < n; i++) {
                        groupCall("ncclAllGather", nccl.ncclAllGather(raw(mine[i]), raw(wire16[i]), lens[i],
                                nccl.ncclBfloat16, comm, stream), what, " part ", i);
                    }
                });
                if (!images) {
                    wireBackend.widenBf16(wire16, r, fulls, stream);
                }
            });
        } catch (RuntimeException e) {
            wireBackend.release(buffer);
            throw e;
        }
        Pending gathered = started(w);
        return Pending.once(() -> {
            try {
                gathered.complete(); // the compute stream now waits for the gather
            } catch (RuntimeException e) {
                wireBackend.release(buffer);
                throw e;
            }
            if (!images) {
                wireBackend.release(buffer);
                return;
            }
            Tensor[] targets = new Tensor[n];
            long[] offs = new long[n];
            for (int i = 0; i < n; i++) {
                targets[i] = parts.get(i).recv();
                offs[i] = parts.get(i).rOff();
            }
            wireBackend.adoptBf16Images(targets, offs, wire16, fulls, buffer); // the buffer is the backend's now
        });
    }

    /** The reduce-scatters (sum) of a unit's gradients as one NCCL group, as {@link #allGatherStart(List)}. */
    @Override
    public Pending reduceScatterSumStart(List<Part> parts) {
        if (onHost(parts)) {
            return Communicator.super.reduceScatterSumStart(parts);
        }
        return started(groupedCollective(false, parts));
    }

    /** Nothing to do on the device: no parts, or every buffer on the host (the host-staged forms take them). */
    private static boolean onHost(List<Part> parts) {
        return parts.stream().allMatch(p -> p.send().isHost() && p.recv().isHost());
    }

    private NcclWork groupedCollective(boolean gather, List<Part> parts) {
        String what = (gather ? "allGather" : "reduceScatterSum") + "(group of " + parts.size() + ", started)";
        int n = parts.size();
        long[] s = new long[n];
        long[] r = new long[n];
        int[] type = new int[n];
        for (int i = 0; i < n; i++) {
            Part p = parts.get(i);
            String part = what + " part " + i;
            sameDtype(part, p.send(), p.recv());
            long full = (long) size * p.len();
            s[i] = devAddress(part + " send", p.send(), p.sOff(), gather ? p.len() : full);
            r[i] = devAddress(part + " recv", p.recv(), p.rOff(), gather ? full : p.len());
            type[i] = ncclType(part, p.send().dtype());
        }
        return deviceOp(what, false, () -> inGroup(what, () -> {
            for (int i = 0; i < n; i++) {
                int len = parts.get(i).len();
                if (gather) {
                    groupCall("ncclAllGather", nccl.ncclAllGather(raw(s[i]), raw(r[i]), len, type[i], comm, stream),
                            what, " part ", i);
                } else {
                    groupCall("ncclReduceScatter", nccl.ncclReduceScatter(raw(s[i]), raw(r[i]), len, type[i],
                            nccl.ncclSum, comm, stream), what, " part ", i);
                }
            }
        }));
    }

    private Pending started(NcclWork w) {
        track(w);
        long computeAddress = computeStreamAddress;
        return () -> w.waitOn(computeAddress);
    }

    /** Reduce-scatter with sum of device tensors, laid out as the array form; enqueued. */
    public NcclWork reduceScatterSumAsync(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        return reduceScatterWork(send, sOff, recv, rOff, recvLen, true);
    }

    /** The device reduce-scatter (sum); {@code computeWaits} as in {@link #deviceOp(String, boolean, Enqueue)}. */
    private NcclWork reduceScatterWork(Tensor send, int sOff, Tensor recv, int rOff, int recvLen,
                                       boolean computeWaits) {
        String what = "reduceScatterSum(" + send.dtype() + " x " + size + " x " + recvLen
                + (computeWaits ? ")" : ", started)");
        sameDtype(what, send, recv);
        long s = devAddress(what + " send", send, sOff, (long) size * recvLen);
        long r = devAddress(what + " recv", recv, rOff, recvLen);
        return deviceOp(what, computeWaits, () -> enqueue(what, "ncclReduceScatter", () -> nccl.ncclReduceScatter(
                raw(s), raw(r), recvLen, ncclType(what, send.dtype()), nccl.ncclSum, comm, stream)));
    }

    /** Broadcast of device tensor elements from {@code root}; enqueued. */
    public NcclWork broadcastAsync(Tensor buf, int off, int len, int root) {
        String what = "broadcast(" + buf.dtype() + " x " + len + ", root " + root + ")";
        checkPeer(what, root);
        long p = devAddress(what, buf, off, len);
        return deviceOp(what, () -> enqueue(what, "ncclBroadcast", () -> nccl.ncclBroadcast(raw(p), raw(p), len,
                ncclType(what, buf.dtype()), root, comm, stream)));
    }

    /**
     * All-to-all with uneven splits of device tensors (ncclSend/ncclRecv in one group), laid out as the array form;
     * the split sizes are checked against every peer's first (a host round over NCCL); enqueued.
     */
    public NcclWork allToAllAsync(Tensor send, int[] sendCounts, Tensor recv, int[] recvCounts) {
        String what = "allToAll(" + send.dtype() + ")";
        sameDtype(what, send, recv);
        long[] tot = checkSplits(what, sendCounts, recvCounts);
        long s = devAddress(what + " send", send, 0, tot[0]);
        long r = devAddress(what + " recv", recv, 0, tot[1]);
        int es = send.dtype().byteSize();
        int type = ncclType(what, send.dtype());
        return deviceOp(what, () -> groupedExchange(what, s, sendCounts, r, recvCounts, es, type));
    }

    /**
     * Keeps a collective that nobody waits on under watch: completed ones are retired here (surfacing asynchronous
     * errors on the calling thread), and the watchdog aborts the communicator if the oldest outlives the timeout.
     */
    private void track(NcclWork w) {
        synchronized (inFlight) {
            inFlight.addLast(w);
            retireCompleted();
            startWatchdog();
        }
    }

    /** Under the inFlight lock: starts the watchdog thread on first use. */
    private void startWatchdog() {
        if (watchdog == null) {
            watchdog = new Thread(this::watch, "nccl-watchdog-" + name + "-r" + rank);
            watchdog.setDaemon(true);
            watchdog.start();
        }
    }

    /** Enqueues a collective through {@link #blocking} and checks the result as {@link #enqueued} does. */
    private void enqueue(String what, String name, java.util.function.IntSupplier call) {
        enqueued(what, name, blocking(what, call));
    }

    /**
     * An NCCL call that may block the host (the enqueue of a collective on a blocking communicator waits for peers
     * that are not connected yet): the watchdog aborts the communicator if it has not returned within the timeout,
     * which makes it return with an error instead of hanging.
     */
    private int blocking(String what, java.util.function.IntSupplier call) {
        synchronized (inFlight) {
            startWatchdog();
        }
        blockedSince = System.nanoTime();
        blockedIn = what;
        try {
            return call.getAsInt();
        } finally {
            blockedIn = null;
        }
    }

    /** Under the inFlight lock: closes the completed works at the head of the queue. */
    private void retireCompleted() {
        while (!inFlight.isEmpty() && inFlight.peekFirst().isCompleted()) {
            inFlight.pollFirst().close();
        }
    }

    /** Collectives enqueued without waiting that are not yet known to be complete. */
    public int inFlight() {
        synchronized (inFlight) {
            return inFlight.size();
        }
    }

    private void watch() {
        long period = Math.max(1, Math.min(50, options.timeout().toMillis() / 10)) * 1_000_000L;
        while (watched && abortedBecause == null) {
            java.util.concurrent.locks.LockSupport.parkNanos(period);
            synchronized (inFlight) {
                if (!watched) {
                    return;
                }
                try {
                    retireCompleted();
                    NcclWork oldest = inFlight.peekFirst();
                    if (oldest != null && oldest.pastDeadline()) {
                        java.util.logging.Logger.getLogger(NcclCommunicator.class.getName()).severe(
                                "watchdog: " + oldest.what() + " on group '" + name + "' (rank " + rank + " of "
                                        + size + ") did not complete within " + options.timeout().toMillis()
                                        + " ms; aborting the communicator");
                        abort("timeout in " + oldest.what() + " (watchdog)");
                    }
                    String in = blockedIn;
                    if (in != null && abortedBecause == null
                            && System.nanoTime() - blockedSince > options.timeout().toNanos()) {
                        java.util.logging.Logger.getLogger(NcclCommunicator.class.getName()).severe(
                                "watchdog: the host has been blocked enqueueing " + in + " on group '" + name
                                        + "' (rank " + rank + " of " + size + ") for more than "
                                        + options.timeout().toMillis() + " ms; aborting the communicator");
                        abort("timeout enqueueing " + in + " (watchdog)");
                    }
                } catch (RuntimeException e) {
                    // retireCompleted found a CUDA or NCCL error and aborted the communicator; the next call throws
                    java.util.logging.Logger.getLogger(NcclCommunicator.class.getName()).severe(
                            "watchdog: " + e.getMessage());
                    if (abortedBecause == null) {
                        abort("watchdog: " + e.getMessage());
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------------------ close

    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        cudart.cudaSetDevice(device);
        RuntimeException failure = null;
        if (abortedBecause == null) {
            String ctx = "closing group '" + name + "' (rank " + rank + " of " + size + ")";
            try {
                // a blocking finalize flushes what the peers still owe: the watchdog (still running) bounds it
                int f = blocking("ncclCommFinalize (closing)", () -> nccl.ncclCommFinalize(comm));
                if (f != nccl.ncclSuccess) {
                    throw new NcclException("ncclCommFinalize", f, describe("ncclCommFinalize", f, ctx, comm));
                }
                check("ncclCommDestroy", nccl.ncclCommDestroy(comm), ctx);
                int r = nccl.ncclCommFinalize(control);
                waitReady(control, r, "ncclCommFinalize", ctx, System.nanoTime() + options.timeout().toNanos(),
                        options);
                check("ncclCommDestroy", nccl.ncclCommDestroy(control), ctx);
            } catch (RuntimeException e) {
                failure = e; // waitReady aborted the communicator
                abortedBecause = "close failed: " + e.getMessage();
            }
        }
        watched = false;
        cudart.cudaStreamSynchronize(stream);
        synchronized (inFlight) {
            for (NcclWork w : inFlight) {
                w.close();
            }
            inFlight.clear();
        }
        staging.free();
        cudart.cudaEventDestroy(done);
        cudart.cudaEventDestroy(computeReady);
        cudart.cudaStreamDestroy(stream);
        if (failure != null) {
            throw failure;
        }
    }

    // ------------------------------------------------------------------------------------------------ internals

    private enum Kind {
        F32(4, nccl.ncclFloat32), F64(8, nccl.ncclFloat64), I64(8, nccl.ncclInt64), I32(4, nccl.ncclInt32),
        U8(1, nccl.ncclUint8);

        final int bytes;
        final int type;

        Kind(int bytes, int type) {
            this.bytes = bytes;
            this.type = type;
        }
    }

    private interface Enqueue {
        void run();
    }

    /** Staged in-place all-reduce ({@code op >= 0}) or broadcast ({@code root >= 0}) of a host array range. */
    private void inPlace(String what, Kind k, Object arr, int off, int len, int op, int root) {
        checkRange(what, java.lang.reflect.Array.getLength(arr), off, len);
        if (len == 0) {
            return;
        }
        begin(what);
        long bytes = (long) k.bytes * len;
        staging.ensure(bytes, 1);
        if (root < 0 || root == rank) {
            toPinned(arr, off, len, 0);
            h2d(staging.devIn, bytes, what);
        }
        if (root >= 0) {
            enqueue(what, "ncclBroadcast", () -> nccl.ncclBroadcast(staging.devIn, staging.devIn, len, k.type, root,
                    comm, stream));
        } else {
            enqueue(what, "ncclAllReduce", () -> nccl.ncclAllReduce(staging.devIn, staging.devIn, len, k.type, op,
                    comm, stream));
        }
        d2h(staging.devIn, bytes, what);
        awaitDone(what);
        fromPinned(arr, off, len, 0);
    }

    private void gather(String what, Kind k, Object send, int sOff, int len, Object recv, int rOff) {
        checkRange(what + " send", java.lang.reflect.Array.getLength(send), sOff, len);
        checkRange(what + " recv", java.lang.reflect.Array.getLength(recv), rOff, (long) size * len);
        if (len == 0) {
            return;
        }
        begin(what);
        long inBytes = (long) k.bytes * len;
        long outBytes = inBytes * size;
        staging.ensure(inBytes, outBytes);
        toPinned(send, sOff, len, 0);
        h2d(staging.devIn, inBytes, what);
        enqueue(what, "ncclAllGather",
                () -> nccl.ncclAllGather(staging.devIn, staging.devOut, len, k.type, comm, stream));
        d2h(staging.devOut, outBytes, what);
        awaitDone(what);
        fromPinned(recv, rOff, size * len, 0);
    }

    private void exchange(String what, Kind k, Object send, int[] sendCounts, Object recv, int[] recvCounts) {
        long[] tot = checkSplits(what, sendCounts, recvCounts);
        checkRange(what + " send", java.lang.reflect.Array.getLength(send), 0, tot[0]);
        checkRange(what + " recv", java.lang.reflect.Array.getLength(recv), 0, tot[1]);
        begin(what);
        long inBytes = k.bytes * tot[0];
        long outBytes = k.bytes * tot[1];
        staging.ensure(Math.max(inBytes, 1), Math.max(outBytes, 1));
        if (tot[0] > 0) {
            toPinned(send, 0, (int) tot[0], 0);
            h2d(staging.devIn, inBytes, what);
        }
        groupedExchange(what, staging.devIn.address(), sendCounts, staging.devOut.address(), recvCounts, k.bytes, k.type);
        if (tot[1] > 0) {
            d2h(staging.devOut, outBytes, what);
        }
        awaitDone(what);
        if (tot[1] > 0) {
            fromPinned(recv, 0, (int) tot[1], 0);
        }
    }

    /**
     * Validates split sizes locally, then against every peer: gathers everyone's send and receive counts (2 * size
     * ints each, over this communicator) so that every member finds the same mismatch and fails alike. Returns the
     * send and receive totals.
     */
    private long[] checkSplits(String what, int[] sendCounts, int[] recvCounts) {
        if (sendCounts.length != size || recvCounts.length != size) {
            throw new IllegalArgumentException(what + " on group '" + name + "': sendCounts has " + sendCounts.length
                    + " and recvCounts " + recvCounts.length + " entries; both need one per member (" + size + ")");
        }
        long s = 0;
        long r = 0;
        for (int p = 0; p < size; p++) {
            if (sendCounts[p] < 0 || recvCounts[p] < 0) {
                throw new IllegalArgumentException(what + " on group '" + name + "': negative count for peer " + p
                        + " (send " + sendCounts[p] + ", recv " + recvCounts[p] + ")");
            }
            s += sendCounts[p];
            r += recvCounts[p];
        }
        int[] mine = new int[2 * size];
        System.arraycopy(sendCounts, 0, mine, 0, size);
        System.arraycopy(recvCounts, 0, mine, size, size);
        int[] all = new int[2 * size * size];
        allGather(mine, 0, 2 * size, all, 0);
        for (int q = 0; q < size; q++) {
            for (int p = 0; p < size; p++) {
                int sent = all[q * 2 * size + p];
                int expected = all[p * 2 * size + size + q];
                if (sent != expected) {
                    throw new CommunicatorException(what + " on group '" + name + "': rank " + p + " expects recvCounts["
                            + q + "] = " + expected + " elements from rank " + q + ", but rank " + q + " sends sendCounts["
                            + p + "] = " + sent + "; hint: exchange the counts first (allToAll of int counts)");
                }
            }
        }
        return new long[] {s, r};
    }

    private void groupedExchange(String what, long sendBase, int[] sendCounts, long recvBase, int[] recvCounts,
                                 int elemBytes, int type) {
        inGroup(what, () -> {
            long so = 0;
            long ro = 0;
            for (int p = 0; p < size; p++) {
                if (sendCounts[p] > 0) {
                    groupCall("ncclSend", nccl.ncclSend(raw(sendBase + so * elemBytes), sendCounts[p], type, p, comm,
                            stream), what, " to rank ", p);
                }
                if (recvCounts[p] > 0) {
                    groupCall("ncclRecv", nccl.ncclRecv(raw(recvBase + ro * elemBytes), recvCounts[p], type, p, comm,
                            stream), what, " from rank ", p);
                }
                so += sendCounts[p];
                ro += recvCounts[p];
            }
        });
    }

    /**
     * Runs {@code calls} between ncclGroupStart and ncclGroupEnd (one fused launch on the stream); the group is
     * ended even when a call fails, and the failure is rethrown after it.
     */
    private void inGroup(String what, Enqueue calls) {
        check("ncclGroupStart", nccl.ncclGroupStart(), what);
        int endResult;
        RuntimeException inside = null;
        try {
            calls.run();
        } catch (RuntimeException e) {
            inside = e;
        } finally {
            endResult = blocking(what, nccl::ncclGroupEnd);
        }
        if (inside != null) {
            throw inside;
        }
        enqueued(what, "ncclGroupEnd", endResult);
    }

    /** Checks a call made inside a group: ncclInProgress is fine there (the group end reports the outcome). */
    private void groupCall(String call, int r, String what, String which, int index) {
        if (r != nccl.ncclSuccess && r != nccl.ncclInProgress) {
            throw failure(call, r, what + which + index); // the message is made only on failure
        }
    }

    /** Orders a device collective after the compute stream, enqueues it, and returns its work handle. */
    private NcclWork deviceOp(String what, Enqueue body) {
        return deviceOp(what, true, body);
    }

    /** As above; {@code computeWaits} false leaves the compute stream's wait to the caller ({@link NcclWork#waitOn}). */
    private NcclWork deviceOp(String what, boolean computeWaits, Enqueue body) {
        begin(what);
        long deadline = System.nanoTime() + options.timeout().toNanos();
        cudaCheck("cudaEventRecord", cudart.cudaEventRecord(computeReady, computeStream), ctx(what), "");
        cudaCheck("cudaStreamWaitEvent", cudart.cudaStreamWaitEvent(stream, computeReady, 0), ctx(what), "");
        body.run();
        CUevent_st ev = newEvent(what);
        cudaCheck("cudaEventRecord", cudart.cudaEventRecord(ev, stream), ctx(what), "");
        if (computeWaits) {
            cudaCheck("cudaStreamWaitEvent", cudart.cudaStreamWaitEvent(computeStream, ev, 0), ctx(what), "");
        }
        return new NcclWork(this, what, ev, deadline);
    }

    private CUevent_st newEvent(String what) {
        CUevent_st ev = new CUevent_st();
        cudaCheck("cudaEventCreateWithFlags", cudart.cudaEventCreateWithFlags(ev, cudart.cudaEventDisableTiming),
                ctx(what), "");
        return ev;
    }

    /** Host-staged operations: records {@link #done} on the stream and waits for it. */
    private void awaitDone(String what) {
        cudaCheck("cudaEventRecord", cudart.cudaEventRecord(done, stream), ctx(what), "");
        awaitEvent(done, what, System.nanoTime() + options.timeout().toNanos());
    }

    /** Polls {@code ev} and the communicator's asynchronous error; aborts past {@code deadline}. */
    void awaitEvent(CUevent_st ev, String what, long deadline) {
        int spins = 0;
        while (!eventDone(ev, what)) {
            if (System.nanoTime() > deadline) {
                abort("timeout in " + what);
                throw new CollectiveTimeoutException(what + " on group '" + name + "' (rank " + rank + " of " + size
                        + ", device " + device + ") did not complete within " + options.timeout().toMillis()
                        + " ms; the communicator was aborted (ncclCommAbort); hint: a rank did not call it, called a "
                        + "different collective or different sizes, or died; look at the other ranks' logs");
            }
            backoff(spins++);
        }
    }

    /** One poll: true when {@code ev} completed; throws (after aborting) on a CUDA or asynchronous NCCL error. */
    boolean eventDone(CUevent_st ev, String what) {
        cudart.cudaSetDevice(device);
        int q = cudart.cudaEventQuery(ev);
        if (q == cudart.cudaSuccess) {
            return true;
        }
        if (q != cudart.cudaErrorNotReady) {
            abort("CUDA error in " + what);
            throw new NcclException("cudaEventQuery", q, "cudaEventQuery failed while waiting for " + ctx(what) + ": "
                    + Nccl.cudaError(q) + "; the communicator was aborted; hint: a kernel on this device faulted "
                    + "(CUDA_LAUNCH_BLOCKING=1 and compute-sanitizer find it)");
        }
        int[] state = {0};
        int r = nccl.ncclCommGetAsyncError(comm, state);
        int bad = r != nccl.ncclSuccess ? r : state[0];
        if (bad != nccl.ncclSuccess && bad != nccl.ncclInProgress) {
            String msg = describe("ncclCommGetAsyncError", bad, ctx(what), comm) + "; the communicator was aborted";
            abort("asynchronous error in " + what);
            throw new NcclException(r != nccl.ncclSuccess ? "ncclCommGetAsyncError" : what, bad, msg);
        }
        return false;
    }

    void streamWait(long streamAddress, CUevent_st ev, String what) {
        CUstream_st s = streamAddress == 0 ? null : new CUstream_st(RawPointer.of(streamAddress, 0));
        cudaCheck("cudaStreamWaitEvent", cudart.cudaStreamWaitEvent(s, ev, 0), ctx(what), "");
    }

    /** A non-blocking communicator may answer ncclInProgress: wait until the call is enqueued, then check it. */
    private void enqueued(String what, String call, int r) {
        if (r == nccl.ncclInProgress) {
            waitComm(what, System.nanoTime() + options.timeout().toNanos());
            return;
        }
        if (r != nccl.ncclSuccess) {
            String earlier = abortedBecause;
            if (earlier != null && earlier.startsWith("timeout")) { // the watchdog aborted the blocked call
                throw new CollectiveTimeoutException(what + " on group '" + name + "' (rank " + rank + " of " + size
                        + ") was not enqueued within " + options.timeout().toMillis() + " ms (" + call + " blocked: "
                        + "a peer never joined); the communicator was aborted (ncclCommAbort); hint: a rank did not "
                        + "call it or died; look at the other ranks' logs");
            }
            NcclException e = failure(call, r, what);
            abort(call + " failed in " + what);
            throw e;
        }
    }

    private void waitComm(String what, long deadline) {
        int[] state = {nccl.ncclInProgress};
        int spins = 0;
        while (true) {
            int q = nccl.ncclCommGetAsyncError(comm, state);
            int bad = q != nccl.ncclSuccess ? q : state[0];
            if (bad == nccl.ncclSuccess) {
                return;
            }
            if (bad != nccl.ncclInProgress) {
                NcclException e = failure("ncclCommGetAsyncError", bad, what);
                abort("asynchronous error in " + what);
                throw e;
            }
            if (System.nanoTime() > deadline) {
                abort("timeout in " + what);
                throw new CollectiveTimeoutException(what + " on group '" + name + "' (rank " + rank + " of " + size
                        + ") was not accepted by NCCL within " + options.timeout().toMillis()
                        + " ms; the communicator was aborted (ncclCommAbort)");
            }
            backoff(spins++);
        }
    }

    private void begin(String what) {
        if (closed) {
            throw new IllegalStateException(what + " on closed group '" + name + "'");
        }
        if (abortedBecause != null) {
            throw new CommunicatorException(what + " on group '" + name + "' (rank " + rank + " of " + size
                    + "): the communicator was aborted earlier (" + abortedBecause + "); hint: a failed NCCL world "
                    + "cannot be reused: restart the ranks (or the Spark stage)");
        }
        cudaCheck("cudaSetDevice", cudart.cudaSetDevice(device), ctx(what), "");
    }

    private synchronized void abort(String reason) {
        if (abortedBecause == null) {
            abortedBecause = reason;
            abortQuietly(comm);
            abortQuietly(control);
        }
    }

    private static void abortQuietly(ncclComm c) {
        try {
            nccl.ncclCommAbort(c); // may answer ncclInProgress on a non-blocking communicator; it tears down anyway
        } catch (Throwable ignored) {
            // nothing better to do: we are already failing with a more precise error
        }
    }

    private NcclException failure(String call, int r, String what) {
        return new NcclException(call, r, describe(call, r, ctx(what), comm));
    }

    private void check(String call, int r, String what) {
        if (r != nccl.ncclSuccess) {
            throw failure(call, r, what);
        }
    }

    private static void check(String call, int r, String ctx, ncclComm c) {
        if (r != nccl.ncclSuccess) {
            throw new NcclException(call, r, describe(call, r, ctx, c));
        }
    }

    /** "ncclAllReduce failed for ...: ncclRemoteError (6) 'remote process exited...'; last error: '...'; hint: ...". */
    static String describe(String call, int r, String ctx, ncclComm c) {
        String text;
        try {
            BytePointer s = nccl.ncclGetErrorString(r);
            text = s == null ? "" : s.getString();
        } catch (Throwable t) {
            text = "";
        }
        String last = "";
        try {
            BytePointer s = nccl.ncclGetLastError(c);
            last = s == null ? "" : s.getString();
        } catch (Throwable t) {
            // keep the message we have
        }
        return call + " failed for " + ctx + ": " + NcclResults.name(r) + " (" + r + ") '" + text + "'"
                + (last.isEmpty() ? "" : "; last error: '" + last + "'") + "; hint: " + NcclResults.hint(r);
    }

    static void cudaCheck(String call, int e, String ctx, String hint) {
        if (e != cudart.cudaSuccess) {
            throw new NcclException(call, e, call + " failed for " + ctx + ": " + Nccl.cudaError(e)
                    + (hint.isEmpty() ? "" : "; " + hint));
        }
    }

    private String ctx(String what) {
        return what + " on group '" + name + "' (rank " + rank + " of " + size + ", device " + device + ")";
    }

    private void checkPeer(String what, int peer) {
        if (peer < 0 || peer >= size) {
            throw new IllegalArgumentException(what + " on group '" + name + "': rank " + peer + " is not in [0, " + size
                    + ")");
        }
    }

    private void checkRange(String what, int arrayLength, int off, long len) {
        if (off < 0 || len < 0 || off + len > arrayLength) {
            throw new IndexOutOfBoundsException(what + " on group '" + name + "': range [" + off + ", " + (off + len)
                    + ") outside an array of " + arrayLength);
        }
    }

    private static void sameDtype(String what, Tensor a, Tensor b) {
        if (a.dtype() != b.dtype()) {
            throw new IllegalArgumentException(what + ": send is " + a.dtype() + " but recv is " + b.dtype());
        }
    }

    /** Device address of element {@code off} of a device tensor, checking that {@code len} elements fit. */
    private long devAddress(String what, Tensor t, long off, long len) {
        if (t.isHost()) {
            throw new IllegalArgumentException(what + " on group '" + name + "': mixes host and device tensors; hint: "
                    + "pass both on the device (or both on the host)");
        }
        Object h = t.deviceHandle();
        if (!(h instanceof DeviceMemory)) {
            throw new IllegalArgumentException(what + " on group '" + name + "': the tensor's device handle ("
                    + h.getClass().getName() + ") does not implement " + DeviceMemory.class.getName()
                    + "; hint: the CUDA backend's handle must expose its device pointer");
        }
        DeviceMemory dp = (DeviceMemory) h;
        long es = t.dtype().byteSize();
        if (off < 0 || len < 0 || (off + len) * es > dp.bytes()) {
            throw new IndexOutOfBoundsException(what + " on group '" + name + "': elements [" + off + ", " + (off + len)
                    + ") of " + t.dtype() + " do not fit the tensor's " + dp.bytes() + " bytes");
        }
        return dp.address() + off * es;
    }

    private static int ncclType(String what, DType d) {
        switch (d) {
            case F32: return nccl.ncclFloat32;
            case BF16: return nccl.ncclBfloat16;
            case F16: return nccl.ncclFloat16;
            case I32: return nccl.ncclInt32;
            case I64: return nccl.ncclInt64;
            default: throw new IllegalArgumentException(what + ": no NCCL type for " + d);
        }
    }

    private static Pointer raw(long address) {
        return RawPointer.of(address, 0);
    }

    private void h2d(Pointer dev, long bytes, String what) {
        cudaCheck("cudaMemcpyAsync", cudart.cudaMemcpyAsync(dev, staging.host, bytes, cudart.cudaMemcpyHostToDevice,
                stream), ctx(what) + " (staging to the device)", "");
    }

    private void d2h(Pointer dev, long bytes, String what) {
        cudaCheck("cudaMemcpyAsync", cudart.cudaMemcpyAsync(staging.host, dev, bytes, cudart.cudaMemcpyDeviceToHost,
                stream), ctx(what) + " (staging to the host)", "");
    }

    private void toPinned(Object arr, int off, int len, long at) {
        Pointer base = RawPointer.of(staging.host.address() + at, staging.hostCap - at);
        if (arr instanceof float[] a) {
            new FloatPointer(base).capacity(len).put(a, off, len);
        } else if (arr instanceof double[] a) {
            new DoublePointer(base).capacity(len).put(a, off, len);
        } else if (arr instanceof long[] a) {
            new LongPointer(base).capacity(len).put(a, off, len);
        } else if (arr instanceof int[] a) {
            new IntPointer(base).capacity(len).put(a, off, len);
        } else if (arr instanceof byte[] a) {
            new BytePointer(base).capacity(len).put(a, off, len);
        } else {
            throw new IllegalArgumentException("unsupported array " + arr.getClass());
        }
    }

    private void fromPinned(Object arr, int off, int len, long at) {
        Pointer base = RawPointer.of(staging.host.address() + at, staging.hostCap - at);
        if (arr instanceof float[] a) {
            new FloatPointer(base).capacity(len).get(a, off, len);
        } else if (arr instanceof double[] a) {
            new DoublePointer(base).capacity(len).get(a, off, len);
        } else if (arr instanceof long[] a) {
            new LongPointer(base).capacity(len).get(a, off, len);
        } else if (arr instanceof int[] a) {
            new IntPointer(base).capacity(len).get(a, off, len);
        } else if (arr instanceof byte[] a) {
            new BytePointer(base).capacity(len).get(a, off, len);
        } else {
            throw new IllegalArgumentException("unsupported array " + arr.getClass());
        }
    }

    private static void backoff(int spins) {
        if (spins < 100) {
            Thread.onSpinWait();
        } else if (spins < 1000) {
            Thread.yield();
        } else {
            LockSupport.parkNanos(spins < 5000 ? 20_000 : 200_000);
        }
    }

    /** Pinned host memory and two device buffers for the host-array forms; grown on demand, never shrunk. */
    private final class Staging {
        Pointer host;
        long hostCap;
        Pointer devIn;
        long inCap;
        Pointer devOut;
        long outCap;

        void ensure(long inBytes, long outBytes) {
            long hostNeed = Math.max(inBytes, outBytes);
            if (hostNeed > hostCap) {
                if (host != null) {
                    cudaCheck("cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream), "growing staging", "");
                    cudart.cudaFreeHost(host);
                }
                host = new Pointer();
                long cap = grow(hostCap, hostNeed);
                cudaCheck("cudaMallocHost", cudart.cudaMallocHost(host, cap), "staging " + cap + " bytes of pinned "
                        + "host memory for group '" + name + "'", "");
                hostCap = cap;
            }
            if (inBytes > inCap) {
                devIn = realloc(devIn, inCap = grow(inCap, inBytes));
            }
            if (outBytes > outCap) {
                devOut = realloc(devOut, outCap = grow(outCap, outBytes));
            }
        }

        private long grow(long have, long need) {
            return Math.max(need, Math.min(2 * have, need + (64L << 20)));
        }

        private Pointer realloc(Pointer old, long bytes) {
            if (old != null) {
                cudaCheck("cudaStreamSynchronize", cudart.cudaStreamSynchronize(stream), "growing staging", "");
                cudart.cudaFree(old);
            }
            Pointer p = new Pointer();
            cudaCheck("cudaMalloc", cudart.cudaMalloc(p, bytes), "staging " + bytes + " bytes of device memory for "
                    + "group '" + name + "' on device " + device, "hint: the device may be out of memory");
            return p;
        }

        void free() {
            if (host != null) {
                cudart.cudaFreeHost(host);
            }
            if (devIn != null) {
                cudart.cudaFree(devIn);
            }
            if (devOut != null) {
                cudart.cudaFree(devOut);
            }
            host = devIn = devOut = null;
            hostCap = inCap = outCap = 0;
        }
    }
}
