package dev.sparkmoe.spark.stage;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.IntSupplier;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * World size, expert parallelism and micro-batches per step of one barrier-stage attempt, and how an attempt gets
 * its own ({@link #forAttempt}).
 *
 * @param world     ranks (task slots) of the attempt
 * @param ep        expert-parallel degree
 * @param gradAccum micro-batches per optimizer step on each rank
 */
public record AttemptLayout(int world, int ep, int gradAccum) {
    private static final Logger LOG = LoggerFactory.getLogger(AttemptLayout.class);
    private static final long POLL_MS = 200;

    /**
     * The layout of attempt {@code attempt} of a run configured at {@code full}. Every attempt first waits up to
     * {@code waitMs} for {@code full.world()} task slots ({@code slots}, polled: {@link SlotCheck#freeSlots}), so
     * that its barrier stage is not submitted short of slots, which Spark would only re-check every
     * {@code spark.scheduler.barrier.maxConcurrentTasksCheck.interval} (15 s): the executors of a new application
     * register after it starts, and a lost executor is usually replaced within seconds. A retried attempt that still
     * lacks slots when the run is {@code elastic} takes the slots there are, the largest ep up to {@code full.ep()}
     * that divides them and {@code numExperts}, and as many more micro-batches as each rank now has data ranks, so
     * that every step keeps its global batch. Otherwise the attempt keeps {@code full} (Spark then waits for its
     * slots).
     *
     * @param what names the run in the log lines
     */
    public static AttemptLayout forAttempt(AttemptLayout full, int attempt, boolean elastic, long waitMs,
                                           int numExperts, IntSupplier slots, String what) {
        long deadline = System.currentTimeMillis() + waitMs;
        int free = slots.getAsInt();
        while (free >= 0 && free < full.world() && System.currentTimeMillis() < deadline) {
            try {
                Thread.sleep(POLL_MS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
            free = slots.getAsInt();
        }
        if (free < 0 || free >= full.world()) {
            return full;
        }
        if (attempt == 1 || !elastic || free == 0) {
            LOG.warn("{}: {} of the {} task slots attempt {} needs are free after {} s (training.elastic_wait_s); "
                    + "submitting it anyway{}", what, free, full.world(), attempt, waitMs / 1000,
                    attempt > 1 && !elastic ? " (training.elastic = true would resume on the slots there are)" : "");
            return full;
        }
        int ep = 1;
        for (int e = Math.min(full.ep(), free); e >= 1; e--) {
            if (free % e == 0 && numExperts % e == 0) {
                ep = e;
                break;
            }
        }
        int share = (full.world() + free - 1) / free;
        AttemptLayout l = new AttemptLayout(free, ep, full.gradAccum() * share);
        LOG.warn("{}: only {} of {} task slots after waiting {} s (training.elastic_wait_s); resuming on {} ranks "
                + "with ep {} and {} micro-batches per step (training.elastic): every step keeps its global batch",
                what, free, full.world(), waitMs / 1000, l.world(), l.ep(), l.gradAccum());
        return l;
    }

    /** What the progress lines add for an attempt at this layout instead of {@code full}. */
    public String note(AttemptLayout full) {
        return world + " of " + full.world() + " ranks, ep " + ep + ", grad_accum " + gradAccum;
    }

    /** What the metrics records add for an attempt at this layout instead of the configured one. */
    public Map<String, Object> fields() {
        Map<String, Object> f = new LinkedHashMap<>();
        f.put("world_size", world);
        f.put("ep", ep);
        f.put("grad_accum", gradAccum);
        return f;
    }
}
