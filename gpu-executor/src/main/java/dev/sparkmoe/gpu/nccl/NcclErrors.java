package dev.sparkmoe.gpu.nccl;

import org.bytedeco.cuda.global.cudart;
import org.bytedeco.cuda.global.nccl;
import org.bytedeco.cuda.nccl.ncclComm;
import org.bytedeco.javacpp.BytePointer;

/**
 * Failed NCCL and CUDA calls turned into {@link NcclException}s that name the call, its context (collective, group,
 * rank), the decoded status ({@code ncclGetErrorString}, {@code ncclGetLastError}, {@link NcclResults}) and a hint.
 */
final class NcclErrors {
    private NcclErrors() {
    }

    static void check(String call, int r, String ctx, ncclComm c) {
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
}
