package dev.sparkmoe.spark.testing;

import java.io.Serializable;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Fault injection for the test double. The plan travels in the task closure; how many times it may still fire is
 * kept in this JVM (Spark local mode runs tasks in the test's JVM), so "fail on the first attempt only" works.
 */
public final class Faults {
    private static final Map<String, AtomicInteger> REMAINING = new ConcurrentHashMap<>();

    private Faults() {
    }

    /**
     * Fail on {@code rank} when it reaches {@code step} in {@code where} ("step" or "checkpoint"; "oom": run out of
     * heap in the step, for real), {@code times} times in all (Integer.MAX_VALUE: always).
     */
    public static Plan plan(String id, int rank, long step, String where, int times) {
        REMAINING.put(id, new AtomicInteger(times));
        return new Plan(id, rank, step, where);
    }

    public static int fired(String id, int times) {
        return times - REMAINING.get(id).get();
    }

    /** A fault to inject. */
    public record Plan(String id, int rank, long step, String where) implements Serializable {
        void maybeFail(int r, long s, String w) {
            boolean oom = w.equals("step") && where.equals("oom");
            if (r == rank && s == step && (w.equals(where) || oom)
                    && REMAINING.get(id).getAndUpdate(x -> x > 0 ? x - 1 : 0) > 0) {
                if (oom) {
                    long[] tooMuch = new long[Integer.MAX_VALUE - 8]; // 16 GiB: more than any test JVM's heap
                    tooMuch[r] = s;
                }
                throw new IllegalStateException("injected failure on rank " + r + " at " + w + " " + s);
            }
        }
    }
}
