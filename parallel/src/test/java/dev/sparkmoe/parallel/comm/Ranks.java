package dev.sparkmoe.parallel.comm;

import java.time.Duration;
import java.util.List;

/** Test helper: one thread per rank of a fresh in-JVM world (through {@link InJvmRanks}), with hang detection. */
public final class Ranks {
    /** A rank that has not finished 30 s after the start fails the test as a hang. */
    static final Duration HANG = Duration.ofSeconds(30);

    /** The body of one rank. */
    @FunctionalInterface
    public interface Body<T> extends InJvmRanks.Body<T> {
    }

    /** Per-rank outcome: a value or an error. */
    public record Outcome<T>(T value, Throwable error) {
    }

    private Ranks() {
    }

    /** Runs {@code body} on {@code size} threads; a failing rank aborts the world (as a Spark task would). */
    public static <T> List<Outcome<T>> run(int size, Duration timeout, Body<T> body) {
        return run(InJvmWorld.create(size, timeout), body, false);
    }

    /** Like {@link #run(int, Duration, Body)} but rethrows the first error (ordered by rank) and returns values. */
    public static <T> List<T> runOk(int size, Body<T> body) {
        List<Outcome<T>> outcomes = run(size, Duration.ofSeconds(10), body);
        for (int r = 0; r < outcomes.size(); r++) {
            Throwable e = outcomes.get(r).error();
            if (e != null) {
                throw new AssertionError("rank " + r + " of " + size + " failed: " + e, e);
            }
        }
        return outcomes.stream().map(Outcome::value).toList();
    }

    /** Runs on an existing world; without {@code noAbort}, a rank that throws aborts the world. */
    public static <T> List<Outcome<T>> run(InJvmWorld world, Body<T> body, boolean noAbort) {
        try {
            return InJvmRanks.outcomes(world, body, !noAbort, HANG).stream()
                    .map(o -> new Outcome<>(o.value(), o.error())).toList();
        } catch (IllegalStateException e) {
            throw new AssertionError(e.getMessage(), e);
        }
    }
}
