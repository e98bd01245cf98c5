package dev.sparkmoe.gpu.runtime;

import dev.sparkmoe.core.backend.Backend;

/** Whether the CUDA backend can run in this process, and opening it. */
final class CudaSupport {
    private CudaSupport() {
    }

    /** Null when CUDA can be used; otherwise why not, in words. */
    static String unavailableReason() {
        return "this build has no CUDA backend yet";
    }

    static Backend open(int deviceId) {
        throw new IllegalStateException(unavailableReason());
    }
}
