package dev.sparkmoe.gpu.nccl;

/** Names and hints for {@code ncclResult_t} values; pure Java, so it works where libnccl is absent. */
public final class NcclResults {

    public static final int SUCCESS = 0;
    public static final int UNHANDLED_CUDA_ERROR = 1;
    public static final int SYSTEM_ERROR = 2;
    public static final int INTERNAL_ERROR = 3;
    public static final int INVALID_ARGUMENT = 4;
    public static final int INVALID_USAGE = 5;
    public static final int REMOTE_ERROR = 6;
    public static final int IN_PROGRESS = 7;

    private NcclResults() {
    }

    /** The enumerator's name, e.g. {@code ncclRemoteError}; unknown codes read {@code ncclResult_t(42)}. */
    public static String name(int code) {
        switch (code) {
            case SUCCESS: return "ncclSuccess";
            case UNHANDLED_CUDA_ERROR: return "ncclUnhandledCudaError";
            case SYSTEM_ERROR: return "ncclSystemError";
            case INTERNAL_ERROR: return "ncclInternalError";
            case INVALID_ARGUMENT: return "ncclInvalidArgument";
            case INVALID_USAGE: return "ncclInvalidUsage";
            case REMOTE_ERROR: return "ncclRemoteError";
            case IN_PROGRESS: return "ncclInProgress";
            default: return "ncclResult_t(" + code + ")";
        }
    }

    /** What usually causes {@code code} and what to try. */
    public static String hint(int code) {
        switch (code) {
            case UNHANDLED_CUDA_ERROR:
                return "a CUDA call inside NCCL failed (driver/runtime mismatch, out of memory, a bad device pointer); "
                        + "rerun with NCCL_DEBUG=WARN to see it";
            case SYSTEM_ERROR:
                return "a system call failed (sockets, /dev/shm too small, too many open files); rerun with "
                        + "NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET";
            case INTERNAL_ERROR:
                return "NCCL hit an internal error, often a peer that went away; rerun with NCCL_DEBUG=INFO";
            case INVALID_ARGUMENT:
                return "an argument is invalid (null or host pointer where device memory is needed, a count or peer out "
                        + "of range, a bad config)";
            case INVALID_USAGE:
                return "the call sequence is invalid (ranks calling different collectives, or the same rank twice, or "
                        + "mismatched counts)";
            case REMOTE_ERROR:
                return "a peer failed or the connection to it broke; look at the other ranks' logs";
            case IN_PROGRESS:
                return "the non-blocking operation is still running";
            default:
                return "see the NCCL documentation of ncclResult_t";
        }
    }
}
