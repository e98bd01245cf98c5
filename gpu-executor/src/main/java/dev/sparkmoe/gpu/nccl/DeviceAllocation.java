package dev.sparkmoe.gpu.nccl;

import dev.sparkmoe.gpu.cuda.DeviceMemory;
import dev.sparkmoe.gpu.cuda.RawPointer;

import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.javacpp.Pointer;

/**
 * A plain {@code cudaMalloc} allocation on one device (tests, the bandwidth measurement, and anyone without the CUDA
 * backend). Freed by {@link #close()}.
 */
public final class DeviceAllocation implements DeviceMemory, AutoCloseable {

    private final int device;
    private final long bytes;
    private Pointer ptr;

    private DeviceAllocation(int device, long bytes, Pointer ptr) {
        this.device = device;
        this.bytes = bytes;
        this.ptr = ptr;
    }

    /** {@code cudaMalloc(bytes)} on {@code device}. */
    public static DeviceAllocation allocate(int device, long bytes) {
        if (bytes <= 0) {
            throw new IllegalArgumentException("device buffer size (" + bytes + " bytes) must be positive");
        }
        NcclErrors.cudaCheck("cudaSetDevice", cudart.cudaSetDevice(device), "allocating a device buffer", "");
        Pointer p = new Pointer();
        NcclErrors.cudaCheck("cudaMalloc", cudart.cudaMalloc(p, bytes), "allocating " + bytes + " bytes on device "
                + device, "hint: the device may be out of memory");
        return new DeviceAllocation(device, bytes, p);
    }

    @Override
    public long address() {
        if (ptr == null) {
            throw new IllegalStateException("device buffer was freed");
        }
        return ptr.address();
    }

    @Override
    public long bytes() {
        return bytes;
    }

    public int device() {
        return device;
    }

    /** Synchronous copy of {@code src[off, off+len)} to this buffer starting at float element {@code at}. */
    public void upload(float[] src, int off, int len, long at) {
        bounds(at, len);
        try (FloatPointer h = new FloatPointer(len)) {
            h.put(src, off, len);
            NcclErrors.cudaCheck("cudaMemcpy", cudart.cudaMemcpy(RawPointer.of(address() + 4 * at, 4L * len), h,
                    4L * len, cudart.cudaMemcpyHostToDevice), "upload to a device buffer", "");
        }
    }

    /** Synchronous copy of {@code len} floats from float element {@code at} into {@code dst[off, off+len)}. */
    public void download(float[] dst, int off, int len, long at) {
        bounds(at, len);
        try (FloatPointer h = new FloatPointer(len)) {
            NcclErrors.cudaCheck("cudaMemcpy", cudart.cudaMemcpy(h, RawPointer.of(address() + 4 * at, 4L * len),
                    4L * len, cudart.cudaMemcpyDeviceToHost), "download from a device buffer", "");
            h.get(dst, off, len);
        }
    }

    /** Sets every byte to {@code value}. */
    public void fill(int value) {
        NcclErrors.cudaCheck("cudaMemset", cudart.cudaMemset(RawPointer.of(address(), bytes), value, bytes),
                "filling a device buffer", "");
    }

    private void bounds(long at, int len) {
        if (at < 0 || len < 0 || 4 * (at + len) > bytes) {
            throw new IndexOutOfBoundsException("floats [" + at + ", " + (at + len) + ") outside a device buffer of "
                    + bytes + " bytes");
        }
    }

    @Override
    public void close() {
        if (ptr != null) {
            cudart.cudaSetDevice(device);
            int e = cudart.cudaFree(ptr);
            ptr = null;
            NcclErrors.cudaCheck("cudaFree", e, "freeing a device buffer", "");
        }
    }

    @Override
    public String toString() {
        return "DeviceAllocation[device " + device + ", " + bytes + " bytes" + (ptr == null ? ", freed" : "") + "]";
    }
}
