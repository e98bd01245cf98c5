package dev.sparkmoe.parallel.comm;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReferenceArray;

/**
 * Runs one thread per rank of an in-JVM world (the single-host runs of {@code spark-moe step}, and the tests). A
 * rank that throws aborts the world, as a failed Spark task would, so the others fail promptly instead of waiting
 * for a timeout.
 */
public final class InJvmRanks {

    /** The body of one rank. */
    @FunctionalInterface
    public interface Body<T> {
        T run(Communicator world) throws Exception;
    }

    /** What one rank returned or threw. */
    public record Outcome<T>(T value, Throwable error) {
    }

    private InJvmRanks() {
    }

    /**
     * Runs {@code body} on every rank of a fresh world of {@code size} and returns the values in rank order; the
     * first failure (by rank) is rethrown with the others attached as suppressed.
     */
    public static <T> List<T> run(int size, Duration timeout, Body<T> body) {
        List<Outcome<T>> outcomes = outcomes(InJvmWorld.create(size, timeout), body, true, null);
        RuntimeException first = null;
        List<T> values = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            Throwable e = outcomes.get(r).error();
            values.add(outcomes.get(r).value());
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
        return values;
    }

    /**
     * Runs {@code body} on every rank of {@code world} and returns each rank's outcome. With {@code abortOnFailure}
     * a rank that throws aborts the world; without, the others are left to time out (what failure tests observe).
     * With {@code hangAfter}, a rank still running that long after the start is reported as a hang (an
     * {@link IllegalStateException} naming it) instead of being waited for.
     */
    public static <T> List<Outcome<T>> outcomes(InJvmWorld world, Body<T> body, boolean abortOnFailure,
                                                Duration hangAfter) {
        int size = world.size();
        AtomicReferenceArray<Outcome<T>> out = new AtomicReferenceArray<>(size);
        List<Thread> threads = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            int rank = r;
            Thread t = new Thread(() -> {
                Communicator c = world.rank(rank);
                try {
                    out.set(rank, new Outcome<>(body.run(c), null));
                } catch (Throwable e) {
                    out.set(rank, new Outcome<>(null, e));
                    if (abortOnFailure) {
                        world.abort(rank, e);
                    }
                } finally {
                    c.close();
                }
            }, "rank-" + r);
            t.setDaemon(true);
            threads.add(t);
            t.start();
        }
        long deadline = hangAfter == null ? Long.MAX_VALUE : System.nanoTime() + hangAfter.toNanos();
        for (Thread t : threads) {
            try {
                if (hangAfter == null) {
                    t.join();
                } else {
                    t.join(Math.max(1, (deadline - System.nanoTime()) / 1_000_000));
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                world.abort(0, e);
                throw new IllegalStateException("interrupted while waiting for the ranks", e);
            }
            if (t.isAlive()) {
                throw new IllegalStateException(t.getName() + " of in-JVM world '" + world.key() + "' hangs: still "
                        + "running " + hangAfter.toSeconds() + " s after the start");
            }
        }
        List<Outcome<T>> list = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            list.add(out.get(r));
        }
        return list;
    }
}
