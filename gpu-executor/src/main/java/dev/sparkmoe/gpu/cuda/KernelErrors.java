package dev.sparkmoe.gpu.cuda;

import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.IntPointer;

/**
 * Index errors found by kernels (an embedding id forward or backward, a cross-entropy target, a gather/scatter index,
 * an expert id out of range) are recorded in a device error word of four ints {code, position, value, bound}, and thrown as
 * {@link IllegalArgumentException} at the next synchronisation point ({@link #syncAndCheck}) rather than at the call,
 * so that no kernel launch waits for the device. Called under the backend's lock.
 */
final class KernelErrors {
    private final CudaDevice device;
    private final DeviceBuffer word;

    /** Allocates the error word (outside any scope) and clears it on the stream. */
    KernelErrors(CudaDevice device, CudaMemory memory) {
        this.device = device;
        this.word = memory.allocate(16);
        Cuda.check(cudart.cudaMemsetAsync(CudaMemory.ptr(word, 0), 0, 16, device.stream()),
                "cudaMemsetAsync(error word)");
    }

    /** The device address kernels record their error in. */
    long address() {
        return word.address();
    }

    /** Waits for the stream, then throws what a kernel recorded, if anything (and clears it). */
    void syncAndCheck() {
        device.synchronizeStream();
        check();
    }

    private void check() {
        int[] w = new int[4];
        try (IntPointer p = new IntPointer(4)) {
            Cuda.check(cudart.cudaMemcpyAsync(p, CudaMemory.ptr(word, 0), 16, cudart.cudaMemcpyDeviceToHost,
                    device.stream()), "cudaMemcpyAsync(error word)");
            Cuda.check(cudart.cudaStreamSynchronize(device.stream()), "cudaStreamSynchronize");
            p.get(w);
        }
        if (w[0] == 0) {
            return;
        }
        Cuda.check(cudart.cudaMemsetAsync(CudaMemory.ptr(word, 0), 0, 16, device.stream()),
                "cudaMemsetAsync(error word)");
        String msg;
        switch (w[0]) {
            case 1: msg = "embeddingForward: token id " + w[2] + " at position " + w[1]
                    + " is outside the vocabulary [0, " + w[3] + ")"; break;
            case 2: msg = "crossEntropy: target id " + w[2] + " at row " + w[1] + " is outside the vocabulary [0, "
                    + w[3] + ") (use -100 to ignore a position)"; break;
            case 4: msg = "gatherRows: index " + w[2] + " at " + w[1] + " selects a row outside the source [0, "
                    + w[3] + ") (after division by the divisor)"; break;
            case 5: msg = "scatterRows: index " + w[2] + " at " + w[1] + " is outside the destination rows [0, "
                    + w[3] + ")"; break;
            case 6: msg = "routerStats: expert id " + w[2] + " at " + w[1] + " is outside [0, " + w[3] + ")"; break;
            case 7: msg = "groupByExpert: expert id " + w[2] + " at slot " + w[1] + " is outside [0, " + w[3] + ")";
                break;
            case 8: msg = "invertIndex: index " + w[2] + " at " + w[1] + " is outside [0, " + w[3] + "): not a "
                    + "permutation"; break;
            case 9: msg = "embeddingBackward: token id " + w[2] + " at position " + w[1]
                    + " is outside the table [0, " + w[3] + ")"; break;
            default: msg = "kernel error code " + w[0] + " (" + w[1] + ", " + w[2] + ", " + w[3] + ")";
        }
        throw new IllegalArgumentException(msg + " (found on " + device.name()
                + " by a kernel queued before this call)");
    }
}
