package dev.sparkmoe.parallel.comm;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReferenceArray;

/** Test helper: runs one thread per rank of a fresh in-JVM world and collects what each returned or threw. */
public final class Ranks {

    /** The body of one rank. */
    @FunctionalInterface
    public interface Body<T> {
        T run(Communicator world) throws Exception;
    }

    /** Per-rank outcome: a value or an error. */
    public record Outcome<T>(T value, Throwable error) { }

    private Ranks() {
    }

    /** Runs {@code body} on {@code size} threads; a failing rank aborts the world (as a Spark task would). */
    public static <T> List<Outcome<T>> run(int size, Duration timeout, Body<T> body) {
        return run(InJvmWorld.create(size, timeout), body, false);
    }

    /** Like {@link #run(int, Duration, Body)} but rethrows the first error (ordered by rank) and returns values. */
    public static <T> List<T> runOk(int size, Body<T> body) {
        List<Outcome<T>> outcomes = run(size, Duration.ofSeconds(10), body);
        List<T> values = new ArrayList<>();
        for (int r = 0; r < outcomes.size(); r++) {
            Throwable e = outcomes.get(r).error();
            if (e != null) {
                throw new AssertionError("rank " + r + " of " + size + " failed: " + e, e);
            }
            values.add(outcomes.get(r).value());
        }
        return values;
    }

    /** Runs on an existing world; without {@code noAbort}, a rank that throws aborts the world. */
    public static <T> List<Outcome<T>> run(InJvmWorld world, Body<T> body, boolean noAbort) {
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
                    if (!noAbort) {
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
        long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
        for (Thread t : threads) {
            try {
                t.join(Math.max(1, (deadline - System.nanoTime()) / 1_000_000));
            } catch (InterruptedException e) {
                throw new AssertionError(e);
            }
            if (t.isAlive()) {
                throw new AssertionError(t.getName() + " hangs");
            }
        }
        List<Outcome<T>> list = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            list.add(out.get(r));
        }
        return list;
    }
}
