package dev.sparkmoe.gpu.runtime;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.gpu.cuda.Cuda;
import dev.sparkmoe.gpu.cuda.CudaBackend;

/** Whether the CUDA backend can run in this process, and opening it. */
final class CudaSupport {
    private CudaSupport() {
    }

    /** Null when CUDA can be used; otherwise why not, in words. */
    static String unavailableReason() {
        return Cuda.available() ? null : Cuda.unavailableReason();
    }

    static Backend open(int deviceId) {
        return new CudaBackend(Math.max(0, deviceId));
    }
}
