package dev.sparkmoe.parallel.memory;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.List;

/**
 * The planner's allocator: follows the allocations of a replayed training step as the backend would make them, with
 * the live bytes of each {@link Category}, their peak, and the breakdown and phase at that peak. With
 * {@code deviceBlocks} every request is rounded up to the CUDA caching allocator's block size, which is what its
 * peak (TrainBench's peak_mem_gb) counts; without, bytes are counted as MemoryTracker counts them.
 */
final class Ledger {
    /** One planned allocation. */
    static final class Buf {
        final Category category;
        final long bytes;
        int elementBytes = 1; // of a tensor made by alloc: 4 for f32, 2 for bf16
        boolean freed;

        Buf(Category category, long bytes) {
            this.category = category;
            this.bytes = bytes;
        }
    }

    private final boolean deviceBlocks;
    private final long[] live = new long[Category.values().length];
    private long liveTotal;
    private long peak;
    private long[] atPeak = new long[Category.values().length];
    private String peakPhase = "";
    private String phase = "";
    private java.util.function.Supplier<String> context = () -> "";
    private String peakContext = "";
    private long largestRequest;
    private String largestWhat = "";
    private final Deque<List<Buf>> scopes = new ArrayDeque<>();

    Ledger(boolean deviceBlocks) {
        this.deviceBlocks = deviceBlocks;
    }

    /**
     * CachingAllocator's size class for a request: multiples of 512 B up to 4 KiB, then eight classes per power of
     * two (at least 512 B, also for an empty tensor).
     */
    static long blockBytes(long bytes) {
        if (bytes <= 4096) {
            return Math.max(512, (bytes + 511) / 512 * 512);
        }
        int hi = 63 - Long.numberOfLeadingZeros(bytes - 1);
        long step = 1L << (hi - 2);
        return (bytes + step - 1) / step * step;
    }

    /** Names what runs now; the peak records the phase it was reached in. */
    void phase(String what) {
        phase = what;
    }

    /**
     * {@code elements} of {@code elementBytes} each; {@code what} names a tensor for the largest-tensor check (null:
     * a byte buffer, not a tensor).
     */
    Buf alloc(Category c, long elements, int elementBytes, String what) {
        if (what != null && elements > largestRequest) {
            largestRequest = elements;
            largestWhat = what;
        }
        long bytes = elements * elementBytes;
        Buf b = new Buf(c, deviceBlocks ? blockBytes(bytes) : bytes);
        b.elementBytes = elementBytes;
        live[c.ordinal()] += b.bytes;
        liveTotal += b.bytes;
        if (!scopes.isEmpty()) {
            scopes.peek().add(b);
        }
        if (liveTotal > peak) {
            peak = liveTotal;
            atPeak = live.clone();
            peakPhase = phase;
            peakContext = context.get();
        }
        return b;
    }

    /** An f32 (or I32) tensor. */
    Buf f32(Category c, long elements, String what) {
        return alloc(c, elements, 4, what);
    }

    /** A tensor of {@code elements} in bf16 (2 bytes an element) where {@code bf16}, else in f32. */
    Buf floats(Category c, long elements, boolean bf16, String what) {
        return alloc(c, elements, bf16 ? 2 : 4, what);
    }

    /** A raw byte buffer (bf16 scratch and copies). */
    Buf bytes(Category c, long bytes) {
        return alloc(c, bytes, 1, null);
    }

    void free(Buf b) {
        if (b == null) {
            return;
        }
        if (b.freed) {
            throw new IllegalStateException("planner replay freed a " + b.category + " buffer of " + b.bytes
                    + " B twice (in " + phase + ")");
        }
        b.freed = true;
        live[b.category.ordinal()] -= b.bytes;
        liveTotal -= b.bytes;
    }

    void free(Buf... bufs) {
        for (Buf b : bufs) {
            free(b);
        }
    }

    /** As a backend scope: what is allocated until {@link #closeScope} and still live then is freed then. */
    void openScope() {
        scopes.push(new ArrayList<>());
    }

    void closeScope() {
        for (Buf b : scopes.pop()) {
            if (!b.freed) {
                free(b);
            }
        }
    }

    /** Starts a new peak from what is live now. */
    void resetPeak() {
        peak = liveTotal;
        atPeak = live.clone();
        peakPhase = phase;
        peakContext = context.get();
    }

    /** What else to record at each new peak (FSDP's gathered units). */
    void context(java.util.function.Supplier<String> c) {
        context = c;
    }

    String peakContext() {
        return peakContext;
    }

    long live() {
        return liveTotal;
    }

    long live(Category c) {
        return live[c.ordinal()];
    }

    long peak() {
        return peak;
    }

    long[] atPeak() {
        return atPeak.clone();
    }

    String peakPhase() {
        return peakPhase;
    }

    /** Elements of the largest tensor requested, and what it was. */
    long largestElements() {
        return largestRequest;
    }

    String largestWhat() {
        return largestWhat;
    }
}
