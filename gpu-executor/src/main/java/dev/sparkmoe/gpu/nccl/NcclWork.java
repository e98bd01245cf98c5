package dev.sparkmoe.gpu.nccl;

import org.bytedeco.cuda.cudart.CUevent_st;
import org.bytedeco.cuda.global.cudart;

/**
 * A collective enqueued on the communicator's stream ({@link NcclCommunicator#stream()}), not yet known to be
 * complete: the overlap handle, as {@code torch.distributed.Work}. Either make a compute stream wait for it
 * ({@link #waitOn(long)}: no host blocking) or block the host ({@link #await()}, with the communicator's timeout:
 * past it the communicator is aborted and a {@link dev.sparkmoe.parallel.comm.CollectiveTimeoutException} names the
 * collective). Close it (or await it) to release its event.
 */
public final class NcclWork implements AutoCloseable {

    private final NcclCalls comm;
    private final String what;
    private final long deadlineNanos;
    private CUevent_st done;
    private boolean completed;

    NcclWork(NcclCalls comm, String what, CUevent_st done, long deadlineNanos) {
        this.comm = comm;
        this.what = what;
        this.done = done;
        this.deadlineNanos = deadlineNanos;
    }

    /** The collective, as named in errors, e.g. {@code allReduceSum(F32 x 268435456)}. */
    public String what() {
        return what;
    }

    /** True once the communicator's timeout has passed since this collective was enqueued. */
    boolean pastDeadline() {
        return System.nanoTime() > deadlineNanos;
    }

    /** Non-blocking completion test ({@code cudaEventQuery}); also surfaces asynchronous NCCL errors. */
    public synchronized boolean isCompleted() {
        if (completed) {
            return true;
        }
        completed = comm.eventDone(done, what);
        return completed;
    }

    /**
     * Makes work enqueued later on the CUDA stream {@code streamAddress} (a {@code cudaStream_t}; 0 for the legacy
     * default stream) wait for this collective, without blocking the host.
     */
    public synchronized void waitOn(long streamAddress) {
        if (done == null) {
            return;
        }
        comm.streamWait(streamAddress, done, what);
    }

    /** Blocks until the collective completed, or fails after the communicator's timeout (aborting it). */
    public synchronized void await() {
        if (!completed && done != null) {
            comm.awaitEvent(done, what, deadlineNanos);
            completed = true;
        }
        close();
    }

    @Override
    public synchronized void close() {
        if (done != null) {
            cudart.cudaEventDestroy(done);
            done = null;
        }
    }

    @Override
    public String toString() {
        return "NcclWork[" + what + (completed ? ", completed" : "") + "]";
    }
}
