package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.javacpp.IntPointer;
import org.bytedeco.javacpp.LongPointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.ShortPointer;

/**
 * Tensors made on the device and bytes moved: zero-filled and uninitialised tensors, uploads and downloads, device
 * copies of a range or of strided rows, all queued on the compute stream (a download waits for it, and surfaces any
 * index error a kernel recorded). Called under the backend's lock.
 */
final class Transfers {
    /**
     * {@code -Dsparkmoe.cuda.poison=true} (a debugging switch; the GPU tests set it): {@link #empty} fills the memory
     * with NaN (f32) or -1 (integers), so that a caller that reads before writing fails loudly.
     */
    static final boolean POISON = Boolean.getBoolean("sparkmoe.cuda.poison");

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelErrors errors;

    Transfers(CudaDevice device, CudaMemory memory, KernelErrors errors) {
        this.device = device;
        this.memory = memory;
        this.errors = errors;
    }

    static void sameDtype(String op, Tensor src, Tensor dst) {
        if (src.dtype() != dst.dtype()) {
            throw new IllegalArgumentException(op + " from " + src + " to " + dst + ": dtypes differ");
        }
    }

    Tensor zeros(DType dtype, int... shape) {
        Tensor t = memory.newTensor(dtype, shape);
        DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
        if (b.bytes() > 0) {
            Cuda.check(cudart.cudaMemsetAsync(CudaMemory.ptr(b, 0), 0, b.bytes(), device.stream()),
                    "cudaMemsetAsync(" + b + ")");
        }
        return t;
    }

    /** Without the zero fill (poisoned under {@link #POISON}). */
    Tensor empty(DType dtype, int... shape) {
        Tensor t = memory.newTensor(dtype, shape);
        if (POISON && t.numel() > 0) {
            DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
            Cuda.check(cudart.cudaMemsetAsync(CudaMemory.ptr(b, 0), 0xff, b.bytes(), device.stream()),
                    "cudaMemsetAsync(" + b + ")");
        }
        return t;
    }

    static void requireHost(Tensor host) {
        if (!host.isHost()) {
            throw new IllegalArgumentException("upload needs a host tensor, got " + host + " ("
                    + host.deviceHandle() + ")");
        }
    }

    Tensor upload(Tensor host) {
        Tensor t = memory.newTensor(host.dtype(), host.shape());
        DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
        int n = host.numel();
        if (n == 0) {
            return t;
        }
        Pointer src;
        switch (host.dtype()) {
            case I32: src = new IntPointer(host.ints()); break;
            case I64: src = new LongPointer(host.longs()); break;
            case BF16: case F16: src = new ShortPointer(halves(host)); break;
            default: src = new FloatPointer(host.floats());
        }
        try {
            // Pageable source: the call returns once the bytes are staged, so the host buffer may be freed after it.
            Cuda.check(cudart.cudaMemcpyAsync(CudaMemory.ptr(b, 0), src, b.bytes(), cudart.cudaMemcpyHostToDevice,
                    device.stream()), "cudaMemcpyAsync(host -> " + b + ")");
        } finally {
            src.close();
        }
        return t;
    }

    Tensor download(Tensor t) {
        DeviceBuffer b = memory.buf(t, "download source");
        Tensor host = Tensor.zeros(t.dtype(), t.shape());
        int n = t.numel();
        if (n > 0) {
            Pointer dst;
            switch (t.dtype()) {
                case I32: dst = new IntPointer(n); break;
                case I64: dst = new LongPointer(n); break;
                case BF16: case F16: dst = new ShortPointer(n); break;
                default: dst = new FloatPointer(n);
            }
            try {
                Cuda.check(cudart.cudaMemcpyAsync(dst, CudaMemory.ptr(b, 0),
                        (long) n * CudaMemory.elementBytes(t.dtype()), cudart.cudaMemcpyDeviceToHost,
                        device.stream()), "cudaMemcpyAsync(" + b + " -> host)");
                errors.syncAndCheck();
                switch (t.dtype()) {
                    case I32: ((IntPointer) dst).get(host.ints()); break;
                    case I64: ((LongPointer) dst).get(host.longs()); break;
                    case BF16: case F16: widen((ShortPointer) dst, host); break;
                    default: ((FloatPointer) dst).get(host.floats());
                }
            } finally {
                dst.close();
            }
        } else {
            errors.syncAndCheck();
        }
        return host;
    }

    /** A BF16 or F16 host tensor's values (f32 values exact in that dtype) as the 16-bit words the device holds. */
    private static short[] halves(Tensor host) {
        float[] f = host.floats();
        short[] h = new short[f.length];
        boolean bf16 = host.dtype() == DType.BF16;
        for (int i = 0; i < f.length; i++) {
            h[i] = bf16 ? DType.floatToBf16(f[i]) : DType.floatToF16(f[i]);
        }
        return h;
    }

    /** The device's 16-bit words widened into a BF16 or F16 host tensor's f32 values. */
    private static void widen(ShortPointer words, Tensor host) {
        float[] f = host.floats();
        short[] h = new short[f.length];
        words.get(h);
        boolean bf16 = host.dtype() == DType.BF16;
        for (int i = 0; i < f.length; i++) {
            f[i] = bf16 ? DType.bf16ToFloat(h[i]) : DType.f16ToFloat(h[i]);
        }
    }

    void copy(Tensor src, int srcOff, Tensor dst, int dstOff, int n) {
        if (n == 0) {
            return;
        }
        long bytes = (long) n * CudaMemory.elementBytes(src.dtype());
        Cuda.check(cudart.cudaMemcpyAsync(memory.ptr(dst, "copy dst", dstOff, n), memory.ptr(src, "copy src", srcOff,
                n), bytes, cudart.cudaMemcpyDeviceToDevice, device.stream()),
                "cudaMemcpyAsync(device -> device, " + bytes + " B)");
    }

    void copyRows(Tensor src, int srcOff, int srcStride, Tensor dst, int dstOff, int dstStride, int rows, int rowLen) {
        if (rowLen == 0 || rows == 0) {
            return;
        }
        if (srcStride < rowLen || dstStride < rowLen) {
            throw new IllegalArgumentException("copyRows: strides (" + srcStride + ", " + dstStride
                    + ") must be at least the row length " + rowLen);
        }
        int es = CudaMemory.elementBytes(src.dtype());
        long srcSpan = (long) (rows - 1) * srcStride + rowLen;
        long dstSpan = (long) (rows - 1) * dstStride + rowLen;
        Cuda.check(cudart.cudaMemcpy2DAsync(memory.ptr(dst, "copyRows dst", dstOff, dstSpan), (long) dstStride * es,
                memory.ptr(src, "copyRows src", srcOff, srcSpan), (long) srcStride * es, (long) rowLen * es, rows,
                cudart.cudaMemcpyDeviceToDevice, device.stream()), "cudaMemcpy2DAsync(" + rows + " rows of " + rowLen
                + ")");
    }
}
