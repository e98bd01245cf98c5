package dev.sparkmoe.gpu.nccl;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.cuda.DeviceMemory;
import dev.sparkmoe.gpu.cuda.RawPointer;
import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import dev.sparkmoe.parallel.comm.Pending;
import org.bytedeco.cuda.cudart.CUevent_st;
import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.cuda.global.nccl;
import org.bytedeco.cuda.nccl.ncclComm;
import org.bytedeco.javacpp.IntPointer;
import org.bytedeco.javacpp.Pointer;

/**
 * One member of an NCCL group and the way every collective reaches NCCL: its two communicators (the non-blocking
 * control one that makes splits, the blocking twin that runs collectives), its own non-blocking CUDA stream and the
 * compute stream its device collectives are ordered with (by events, so the host never waits), the enqueue of a call
 * or a group of calls (through the {@link NcclWatchdog}, which bounds a call that blocks the host), the waits on
 * events with the communicator's timeout, and the failure path: every status checked, the communicator aborted
 * ({@code ncclCommAbort}) on an error or timeout and refused from then on, every exception naming the collective,
 * the group and the rank.
 */
final class NcclCalls {
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
    private final NcclWatchdog watchdog;
    private CUstream_st computeStream; // null: the legacy default stream
    private long computeStreamAddress;
    private volatile String abortedBecause;
    private volatile boolean closed;

    /** An enqueue of NCCL calls. */
    interface Enqueue {
        void run();
    }

    NcclCalls(ncclComm control, ncclComm comm, int device, String name, NcclOptions options) {
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
        NcclErrors.cudaCheck("cudaStreamCreateWithFlags",
                cudart.cudaStreamCreateWithFlags(stream, cudart.cudaStreamNonBlocking),
                "creating the stream of group '" + name + "'", "");
        this.done = newEvent("group '" + name + "'");
        this.computeReady = newEvent("group '" + name + "'");
        this.watchdog = new NcclWatchdog(this);
    }

    ncclComm comm() {
        return comm;
    }

    ncclComm control() {
        return control;
    }

    int rank() {
        return rank;
    }

    int size() {
        return size;
    }

    int device() {
        return device;
    }

    String name() {
        return name;
    }

    NcclOptions options() {
        return options;
    }

    CUstream_st stream() {
        return stream;
    }

    NcclWatchdog watchdog() {
        return watchdog;
    }

    void setComputeStream(long streamAddress) {
        this.computeStreamAddress = streamAddress;
        this.computeStream = streamAddress == 0 ? null : new CUstream_st(RawPointer.of(streamAddress, 0));
    }

    long computeStreamAddress() {
        return computeStreamAddress;
    }

    /** Why the communicator was aborted, or null while it was not. */
    String abortedBecause() {
        return abortedBecause;
    }

    boolean closed() {
        return closed;
    }

    void markClosed() {
        closed = true;
    }

    /** Records the first failure and aborts both communicators (once). */
    synchronized void abort(String reason) {
        if (abortedBecause == null) {
            abortedBecause = reason;
            NcclInit.abortQuietly(comm);
            NcclInit.abortQuietly(control);
        }
    }

    /** Every call starts here: refuses a closed or aborted communicator, makes the device current. */
    void begin(String what) {
        if (closed) {
            throw new IllegalStateException(what + " on closed group '" + name + "'");
        }
        if (abortedBecause != null) {
            throw new CommunicatorException(what + " on group '" + name + "' (rank " + rank + " of " + size
                    + "): the communicator was aborted earlier (" + abortedBecause + "); hint: a failed NCCL world "
                    + "cannot be reused: restart the ranks (or the Spark stage)");
        }
        NcclErrors.cudaCheck("cudaSetDevice", cudart.cudaSetDevice(device), ctx(what), "");
    }

    /** Enqueues a collective through the watchdog's bound on a blocked host and checks the result. */
    void enqueue(String what, String call, java.util.function.IntSupplier enqueue) {
        enqueued(what, call, watchdog.blocking(what, enqueue));
    }

    /**
     * Runs {@code calls} between ncclGroupStart and ncclGroupEnd (one fused launch on the stream); the group is
     * ended even when a call fails, and the failure is rethrown after it.
     */
    void inGroup(String what, Enqueue calls) {
        check("ncclGroupStart", nccl.ncclGroupStart(), what);
        int endResult;
        RuntimeException inside = null;
        try {
            calls.run();
        } catch (RuntimeException e) {
            inside = e;
        } finally {
            endResult = watchdog.blocking(what, nccl::ncclGroupEnd);
        }
        if (inside != null) {
            throw inside;
        }
        enqueued(what, "ncclGroupEnd", endResult);
    }

    /** Checks a call made inside a group: ncclInProgress is fine there (the group end reports the outcome). */
    void groupCall(String call, int r, String what, String which, int index) {
        if (r != nccl.ncclSuccess && r != nccl.ncclInProgress) {
            throw failure(call, r, what + which + index); // the message is made only on failure
        }
    }

    /** Orders a device collective after the compute stream, enqueues it, and returns its work handle. */
    NcclWork deviceOp(String what, Enqueue body) {
        return deviceOp(what, true, body);
    }

    /**
     * As above; {@code computeWaits} false leaves the compute stream's wait to the caller ({@link NcclWork#waitOn}).
     */
    NcclWork deviceOp(String what, boolean computeWaits, Enqueue body) {
        begin(what);
        long deadline = System.nanoTime() + options.timeout().toNanos();
        NcclErrors.cudaCheck("cudaEventRecord", cudart.cudaEventRecord(computeReady, computeStream), ctx(what), "");
        NcclErrors.cudaCheck("cudaStreamWaitEvent", cudart.cudaStreamWaitEvent(stream, computeReady, 0), ctx(what),
                "");
        body.run();
        CUevent_st ev = newEvent(what);
        NcclErrors.cudaCheck("cudaEventRecord", cudart.cudaEventRecord(ev, stream), ctx(what), "");
        if (computeWaits) {
            NcclErrors.cudaCheck("cudaStreamWaitEvent", cudart.cudaStreamWaitEvent(computeStream, ev, 0), ctx(what),
                    "");
        }
        return new NcclWork(this, what, ev, deadline);
    }

    /**
     * A started collective, watched from now on: the compute stream is made to wait for it only at
     * {@link Pending#complete()}.
     */
    Pending started(NcclWork w) {
        watchdog.track(w);
        long computeAddress = computeStreamAddress;
        return () -> w.waitOn(computeAddress);
    }

    private CUevent_st newEvent(String what) {
        CUevent_st ev = new CUevent_st();
        NcclErrors.cudaCheck("cudaEventCreateWithFlags",
                cudart.cudaEventCreateWithFlags(ev, cudart.cudaEventDisableTiming), ctx(what), "");
        return ev;
    }

    /** Host-staged operations: records {@link #done} on the stream and waits for it. */
    void awaitDone(String what) {
        NcclErrors.cudaCheck("cudaEventRecord", cudart.cudaEventRecord(done, stream), ctx(what), "");
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
            NcclInit.backoff(spins++);
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
            String msg = NcclErrors.describe("ncclCommGetAsyncError", bad, ctx(what), comm)
                    + "; the communicator was aborted";
            abort("asynchronous error in " + what);
            throw new NcclException(r != nccl.ncclSuccess ? "ncclCommGetAsyncError" : what, bad, msg);
        }
        return false;
    }

    void streamWait(long streamAddress, CUevent_st ev, String what) {
        CUstream_st s = streamAddress == 0 ? null : new CUstream_st(RawPointer.of(streamAddress, 0));
        NcclErrors.cudaCheck("cudaStreamWaitEvent", cudart.cudaStreamWaitEvent(s, ev, 0), ctx(what), "");
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
            NcclInit.backoff(spins++);
        }
    }

    NcclException failure(String call, int r, String what) {
        return new NcclException(call, r, NcclErrors.describe(call, r, ctx(what), comm));
    }

    void check(String call, int r, String what) {
        if (r != nccl.ncclSuccess) {
            throw failure(call, r, what);
        }
    }

    /** "WHAT on group 'G' (rank R of N, device D)": the context of every message. */
    String ctx(String what) {
        return what + " on group '" + name + "' (rank " + rank + " of " + size + ", device " + device + ")";
    }

    void checkPeer(String what, int peer) {
        if (peer < 0 || peer >= size) {
            throw new IllegalArgumentException(what + " on group '" + name + "': rank " + peer + " is not in [0, "
                    + size + ")");
        }
    }

    void checkRange(String what, int arrayLength, int off, long len) {
        if (off < 0 || len < 0 || off + len > arrayLength) {
            throw new IndexOutOfBoundsException(what + " on group '" + name + "': range [" + off + ", " + (off + len)
                    + ") outside an array of " + arrayLength);
        }
    }

    static void sameDtype(String what, Tensor a, Tensor b) {
        if (a.dtype() != b.dtype()) {
            throw new IllegalArgumentException(what + ": send is " + a.dtype() + " but recv is " + b.dtype());
        }
    }

    /** Device address of element {@code off} of a device tensor, checking that {@code len} elements fit. */
    long devAddress(String what, Tensor t, long off, long len) {
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

    static int ncclType(String what, DType d) {
        switch (d) {
            case F32: return nccl.ncclFloat32;
            case BF16: return nccl.ncclBfloat16;
            case F16: return nccl.ncclFloat16;
            case I32: return nccl.ncclInt32;
            case I64: return nccl.ncclInt64;
            default: throw new IllegalArgumentException(what + ": no NCCL type for " + d);
        }
    }

    static Pointer raw(long address) {
        return RawPointer.of(address, 0);
    }

    /**
     * Send/receive with every peer in one group (counts in elements of {@code elemBytes}; buffers packed peer after
     * peer): the all-to-all of both the device and the staged forms.
     */
    void groupedExchange(String what, long sendBase, int[] sendCounts, long recvBase, int[] recvCounts, int elemBytes,
                         int type) {
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
     * The first part of closing: finalizes and destroys both communicators, unless they were aborted; a failure (a
     * peer that never flushes, past the timeout) aborts them instead and is returned.
     */
    RuntimeException finalizeCommunicators() {
        cudart.cudaSetDevice(device);
        if (abortedBecause != null) {
            return null;
        }
        String ctx = "closing group '" + name + "' (rank " + rank + " of " + size + ")";
        try {
            // a blocking finalize flushes what the peers still owe: the watchdog (still running) bounds it
            int f = watchdog.blocking("ncclCommFinalize (closing)", () -> nccl.ncclCommFinalize(comm));
            if (f != nccl.ncclSuccess) {
                throw new NcclException("ncclCommFinalize", f, NcclErrors.describe("ncclCommFinalize", f, ctx, comm));
            }
            check("ncclCommDestroy", nccl.ncclCommDestroy(comm), ctx);
            int r = nccl.ncclCommFinalize(control);
            NcclInit.waitReady(control, r, "ncclCommFinalize", ctx, System.nanoTime() + options.timeout().toNanos(),
                    options);
            check("ncclCommDestroy", nccl.ncclCommDestroy(control), ctx);
            return null;
        } catch (RuntimeException e) {
            abortedBecause = "close failed: " + e.getMessage(); // waitReady aborted the communicator
            return e;
        }
    }

    /** Waits for everything on this member's stream. */
    void synchronizeStream() {
        cudart.cudaStreamSynchronize(stream);
    }

    /** The last part of closing: the events and the stream. */
    void destroyStream() {
        cudart.cudaEventDestroy(done);
        cudart.cudaEventDestroy(computeReady);
        cudart.cudaStreamDestroy(stream);
    }
}
