package dev.sparkmoe.parallel.comm;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReferenceArray;

/**
 * Runs one thread per rank of a fresh in-JVM world (the single-host runs of {@code spark-moe step} and
 * {@code train}, and the tests). A rank that throws aborts the world, so the others fail promptly instead of
 * waiting for a timeout; the first failure (by rank) is rethrown with the others attached as suppressed.
 */
public final class InJvmRanks {

    /** The body of one rank. */
    @FunctionalInterface
    public interface Body<T> {
        T run(Communicator world) throws Exception;
    }

    private InJvmRanks() {
    }

    public static <T> List<T> run(int size, Duration timeout, Body<T> body) {
        InJvmWorld world = InJvmWorld.create(size, timeout);
        AtomicReferenceArray<Object> out = new AtomicReferenceArray<>(size);
        AtomicReferenceArray<Throwable> err = new AtomicReferenceArray<>(size);
        List<Thread> threads = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            int rank = r;
            Thread t = new Thread(() -> {
                Communicator c = world.rank(rank);
                try {
                    out.set(rank, body.run(c));
                } catch (Throwable e) {
                    err.set(rank, e);
                    world.abort(rank, e);
                } finally {
                    c.close();
                }
            }, "rank-" + r);
            t.setDaemon(true);
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            try {
                t.join();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                world.abort(0, e);
                throw new IllegalStateException("interrupted while waiting for the ranks", e);
            }
        }
        RuntimeException first = null;
        for (int r = 0; r < size; r++) {
            Throwable e = err.get(r);
            if (e == null) {
                continue;
            }
            if (first == null) {
                first = e instanceof RuntimeException ? (RuntimeException) e
                        : new IllegalStateException("rank " + r + " of " + size + " failed: " + e, e);
            } else if (first != e) {
                first.addSuppressed(e);
            }
        }
        if (first != null) {
            throw first;
        }
        List<T> values = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            @SuppressWarnings("unchecked")
            T v = (T) out.get(r);
            values.add(v);
        }
        return values;
    }
}
