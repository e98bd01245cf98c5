package dev.sparkmoe.gpu.nccl;

import dev.sparkmoe.parallel.comm.CommunicatorException;

/**
 * A NCCL or CUDA call failed. The message names the call, the collective it served, the group, rank and device, the
 * decoded status ({@code ncclGetErrorString}, {@code ncclGetLastError} or {@code cudaGetErrorName/String}) and a
 * hint. {@link #status()} is the raw {@code ncclResult_t} or {@code cudaError_t}.
 */
public class NcclException extends CommunicatorException {
    private static final long serialVersionUID = 1L;

    private final String call;
    private final int status;

    public NcclException(String call, int status, String message) {
        super(message);
        this.call = call;
        this.status = status;
    }

    /** The native function that failed, e.g. {@code ncclAllReduce}. */
    public String call() {
        return call;
    }

    /** The native status code it returned. */
    public int status() {
        return status;
    }
}
