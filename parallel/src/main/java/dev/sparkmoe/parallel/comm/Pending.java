package dev.sparkmoe.parallel.comm;

/**
 * A collective started by one of the {@code *Start} methods of {@link Communicator} whose result must not be used
 * before {@link #complete()}: the handle that lets FSDP prefetch the next layer's all-gather while this layer
 * computes, and let a reduce-scatter run under the next layer's backward. On a GPU, {@code complete()} makes the
 * compute stream wait for the collective without blocking the host; communicators that run collectives
 * synchronously hand out {@link #DONE}. Completing twice is harmless.
 */
@FunctionalInterface
public interface Pending {

    /** Makes the result visible to what runs next (on a GPU: to work enqueued next on the compute stream). */
    void complete();

    /** An already completed collective. */
    Pending DONE = () -> { };

    /** {@code p}, completed on the first {@link #complete()} only (a handle shared by several waiters). */
    static Pending once(Pending p) {
        boolean[] done = {false};
        return () -> {
            if (!done[0]) {
                done[0] = true;
                p.complete();
            }
        };
    }

    /** Completes each of {@code parts} in order. */
    static Pending all(java.util.List<Pending> parts) {
        java.util.List<Pending> copy = java.util.List.copyOf(parts);
        return () -> copy.forEach(Pending::complete);
    }
}
