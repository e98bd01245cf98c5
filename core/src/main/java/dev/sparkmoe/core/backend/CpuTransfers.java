package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.Tensor;

/**
 * The CPU backend's tensor movement: tensors live on the JVM heap, so an upload or download hands back the host tensor
 * itself (refusing a tensor another backend owns), and copies are {@link System#arraycopy} of the tensor's storage
 * (its ints, longs, or the f32 values that F32, BF16 and F16 tensors keep).
 */
final class CpuTransfers {
    private CpuTransfers() {
    }

    static Tensor upload(Tensor host) {
        if (!host.isHost()) {
            throw new IllegalArgumentException("the CPU backend cannot read " + host + ": download it through the "
                    + "backend that owns it first");
        }
        return host;
    }

    static void copy(Tensor src, int srcOff, Tensor dst, int dstOff, int n) {
        if (src.dtype() != dst.dtype()) {
            throw new IllegalArgumentException("copy from " + src + " to " + dst + ": dtypes differ");
        }
        switch (src.dtype()) {
            case I32: System.arraycopy(src.ints(), srcOff, dst.ints(), dstOff, n); break;
            case I64: System.arraycopy(src.longs(), srcOff, dst.longs(), dstOff, n); break;
            default: System.arraycopy(src.floats(), srcOff, dst.floats(), dstOff, n);
        }
    }

    static void copyRows(Tensor src, int srcOff, int srcStride, Tensor dst, int dstOff, int dstStride, int rows,
                         int rowLen) {
        if (rowLen == 0) {
            return;
        }
        for (int r = 0; r < rows; r++) {
            copy(src, srcOff + r * srcStride, dst, dstOff + r * dstStride, rowLen);
        }
    }
}
