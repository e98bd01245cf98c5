package dev.sparkmoe.gpu.cuda;

import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.PointerPointer;

import java.util.ArrayDeque;
import java.util.Map;
import java.util.TreeMap;

/**
 * A caching device allocator over cudaMalloc. Requests are rounded up to a size class (multiples of 512 B up to
 * 4 KiB, then eight classes per power of two, so at most 12.5% is wasted); freed blocks go to a free list of their
 * class and are handed out again to a request of the same class without a cudaMalloc. All work of a backend runs on
 * one stream, so a block freed while kernels that use it are still queued can be reused at once: the next user's
 * work is queued behind them. When cudaMalloc fails, the cache is emptied (cudaFree of every cached block) and the
 * allocation retried once.
 *
 * <p>Not thread-safe on its own: {@link CudaBackend} calls it under its lock.
 */
final class CachingAllocator {
    private final TreeMap<Long, ArrayDeque<Long>> free = new TreeMap<>();
    private long bytesInUse;
    private long peakBytesInUse;
    private long bytesCached;
    private long bytesReserved;
    private long allocations;
    private long cacheHits;
    private long cudaMallocs;

    /** The block size for a request of {@code bytes} (at least 512). */
    static long sizeClass(long bytes) {
        if (bytes <= 4096) {
            return Math.max(512, (bytes + 511) / 512 * 512);
        }
        int hi = 63 - Long.numberOfLeadingZeros(bytes - 1); // 2^hi < bytes <= 2^(hi+1)
        long step = 1L << (hi - 2);                          // eight classes per power of two
        return (bytes + step - 1) / step * step;
    }

    /** Returns the address of a block of at least {@code bytes}; {@code block[0]} receives the block size. */
    long allocate(long bytes, long[] block) {
        long size = sizeClass(bytes);
        block[0] = size;
        allocations++;
        ArrayDeque<Long> list = free.get(size);
        long address;
        if (list != null && !list.isEmpty()) {
            address = list.pop();
            bytesCached -= size;
            cacheHits++;
        } else {
            address = cudaMalloc(size);
        }
        bytesInUse += size;
        peakBytesInUse = Math.max(peakBytesInUse, bytesInUse);
        return address;
    }

    private long cudaMalloc(long size) {
        try (PointerPointer<?> p = new PointerPointer<>(1)) {
            int st = cudart.cudaMalloc(p, size);
            if (st == cudart.cudaErrorMemoryAllocation && bytesCached > 0) {
                cudart.cudaGetLastError(); // clear the (non-sticky) error before retrying
                emptyCache();
                st = cudart.cudaMalloc(p, size);
            }
            if (st != cudart.cudaSuccess) {
                cudart.cudaGetLastError();
                throw new CudaException("cudart", "cudaMalloc(" + size + " B)", st,
                        Cuda.runtimeName(st) + ": " + Cuda.runtimeString(st),
                        "allocator: " + statsLine() + "; release tensors or close scopes");
            }
            cudaMallocs++;
            bytesReserved += size;
            return p.get(0).address();
        }
    }

    void release(long address, long size) {
        bytesInUse -= size;
        bytesCached += size;
        free.computeIfAbsent(size, s -> new ArrayDeque<>()).push(address);
    }

    /** cudaFree of every cached block (cudaFree waits for the device). */
    void emptyCache() {
        for (Map.Entry<Long, ArrayDeque<Long>> e : free.entrySet()) {
            for (long a : e.getValue()) {
                Cuda.check(cudart.cudaFree(RawPointer.of(a, 0)), "cudaFree");
                bytesReserved -= e.getKey();
                bytesCached -= e.getKey();
            }
        }
        free.clear();
    }

    MemoryStats stats() {
        return new MemoryStats(bytesInUse, peakBytesInUse, bytesCached, bytesReserved, allocations, cacheHits,
                cudaMallocs);
    }

    void resetPeak() {
        peakBytesInUse = bytesInUse;
    }

    String statsLine() {
        return stats().toString();
    }
}
