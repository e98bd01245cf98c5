package dev.sparkmoe.gpu.nccl;

import dev.sparkmoe.gpu.cuda.RawPointer;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.DoublePointer;
import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.javacpp.IntPointer;
import org.bytedeco.javacpp.LongPointer;
import org.bytedeco.javacpp.Pointer;

/**
 * Pinned host memory and two device buffers of one group member, through which the host-array collectives
 * ({@link HostCollectives}) travel: arrays are copied into the pinned buffer, to the device input on the member's
 * stream, gathered or reduced by NCCL into the device output, and back. Grown on demand (at least doubling, at most
 * 64 MiB past the need), never shrunk; growing first drains the stream.
 */
final class PinnedStaging {
    private final NcclCalls calls;
    private Pointer host;
    private long hostCap;
    private Pointer devIn;
    private long inCap;
    private Pointer devOut;
    private long outCap;

    PinnedStaging(NcclCalls calls) {
        this.calls = calls;
    }

    /** The device buffer a collective reads. */
    Pointer devIn() {
        return devIn;
    }

    /** The device buffer a collective writes (or reads and writes in place: {@link #devIn()}). */
    Pointer devOut() {
        return devOut;
    }

    void ensure(long inBytes, long outBytes) {
        long hostNeed = Math.max(inBytes, outBytes);
        if (hostNeed > hostCap) {
            if (host != null) {
                NcclErrors.cudaCheck("cudaStreamSynchronize", cudart.cudaStreamSynchronize(calls.stream()),
                        "growing staging", "");
                cudart.cudaFreeHost(host);
            }
            host = new Pointer();
            long cap = grow(hostCap, hostNeed);
            NcclErrors.cudaCheck("cudaMallocHost", cudart.cudaMallocHost(host, cap), "staging " + cap
                    + " bytes of pinned host memory for group '" + calls.name() + "'", "");
            hostCap = cap;
        }
        if (inBytes > inCap) {
            devIn = realloc(devIn, inCap = grow(inCap, inBytes));
        }
        if (outBytes > outCap) {
            devOut = realloc(devOut, outCap = grow(outCap, outBytes));
        }
    }

    private static long grow(long have, long need) {
        return Math.max(need, Math.min(2 * have, need + (64L << 20)));
    }

    private Pointer realloc(Pointer old, long bytes) {
        if (old != null) {
            NcclErrors.cudaCheck("cudaStreamSynchronize", cudart.cudaStreamSynchronize(calls.stream()),
                    "growing staging", "");
            cudart.cudaFree(old);
        }
        Pointer p = new Pointer();
        NcclErrors.cudaCheck("cudaMalloc", cudart.cudaMalloc(p, bytes), "staging " + bytes + " bytes of device memory "
                + "for group '" + calls.name() + "' on device " + calls.device(),
                "hint: the device may be out of memory");
        return p;
    }

    /** Pinned buffer -> device buffer {@code dev}, on the member's stream. */
    void h2d(Pointer dev, long bytes, String what) {
        NcclErrors.cudaCheck("cudaMemcpyAsync", cudart.cudaMemcpyAsync(dev, host, bytes, cudart.cudaMemcpyHostToDevice,
                calls.stream()), calls.ctx(what) + " (staging to the device)", "");
    }

    /** Device buffer {@code dev} -> pinned buffer, on the member's stream. */
    void d2h(Pointer dev, long bytes, String what) {
        NcclErrors.cudaCheck("cudaMemcpyAsync", cudart.cudaMemcpyAsync(host, dev, bytes, cudart.cudaMemcpyDeviceToHost,
                calls.stream()), calls.ctx(what) + " (staging to the host)", "");
    }

    /** Elements [off, off + len) of a Java array into the pinned buffer at byte {@code at}. */
    void toPinned(Object arr, int off, int len, long at) {
        Pointer base = RawPointer.of(host.address() + at, hostCap - at);
        if (arr instanceof float[] a) {
            new FloatPointer(base).capacity(len).put(a, off, len);
        } else if (arr instanceof double[] a) {
            new DoublePointer(base).capacity(len).put(a, off, len);
        } else if (arr instanceof long[] a) {
            new LongPointer(base).capacity(len).put(a, off, len);
        } else if (arr instanceof int[] a) {
            new IntPointer(base).capacity(len).put(a, off, len);
        } else if (arr instanceof byte[] a) {
            new BytePointer(base).capacity(len).put(a, off, len);
        } else {
            throw new IllegalArgumentException("unsupported array " + arr.getClass());
        }
    }

    /** The pinned buffer from byte {@code at} into elements [off, off + len) of a Java array. */
    void fromPinned(Object arr, int off, int len, long at) {
        Pointer base = RawPointer.of(host.address() + at, hostCap - at);
        if (arr instanceof float[] a) {
            new FloatPointer(base).capacity(len).get(a, off, len);
        } else if (arr instanceof double[] a) {
            new DoublePointer(base).capacity(len).get(a, off, len);
        } else if (arr instanceof long[] a) {
            new LongPointer(base).capacity(len).get(a, off, len);
        } else if (arr instanceof int[] a) {
            new IntPointer(base).capacity(len).get(a, off, len);
        } else if (arr instanceof byte[] a) {
            new BytePointer(base).capacity(len).get(a, off, len);
        } else {
            throw new IllegalArgumentException("unsupported array " + arr.getClass());
        }
    }

    void free() {
        if (host != null) {
            cudart.cudaFreeHost(host);
        }
        if (devIn != null) {
            cudart.cudaFree(devIn);
        }
        if (devOut != null) {
            cudart.cudaFree(devOut);
        }
        host = devIn = devOut = null;
        hostCap = inCap = outCap = 0;
    }
}
