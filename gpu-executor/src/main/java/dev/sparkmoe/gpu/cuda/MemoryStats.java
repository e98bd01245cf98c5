package dev.sparkmoe.gpu.cuda;

/** Allocator statistics, in bytes of blocks (size classes). */
public record MemoryStats(long bytesInUse, long peakBytesInUse, long bytesCached, long bytesReserved,
                          long allocations, long cacheHits, long cudaMallocs) {
    @Override
    public String toString() {
        return String.format("in use %.1f MiB (peak %.1f MiB), cached %.1f MiB, reserved %.1f MiB, %d allocations"
                        + " (%d from the cache, %d cudaMalloc)", bytesInUse / 1048576.0, peakBytesInUse / 1048576.0,
                bytesCached / 1048576.0, bytesReserved / 1048576.0, allocations, cacheHits, cudaMallocs);
    }
}
