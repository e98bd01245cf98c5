package dev.sparkmoe.parallel.memory;

import dev.sparkmoe.core.model.ActivationCheckpointing;
import java.util.ArrayList;
import java.util.EnumMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Device memory of one rank of a Qwen3-MoE training run, before it runs: what {@code spark-moe plan} prints and what a
 * pre-flight check can call. {@link #plan} replays rank 0's allocations (the sharded construction, then two training
 * steps, the first recording FSDP's unit order as the trainer's first step does) on a ledger instead of a device;
 * {@link #advise} tries the changes that lower the peak and returns, for each kind of change, the mildest that fits.
 */
public final class MemoryPlanner {
    private MemoryPlanner() {
    }

    /** The plan of one request. */
    public static MemoryPlan plan(PlanRequest r) {
        return plan(new StepReplay(r));
    }

    /**
     * The plan of {@code r} on a backend whose GEMMs take bf16 operands or not, whatever its device: the CPU backend
     * made to take bf16 ({@code Bf16Gemms} in tests) keeps the compute copies and makes the GEMMs' bf16 copies as the
     * CUDA backend at bf16 does, without the CUDA backend's own buffers.
     */
    static MemoryPlan plan(PlanRequest r, boolean bf16Gemms) {
        return plan(new StepReplay(r, bf16Gemms));
    }

    private static MemoryPlan plan(StepReplay replay) {
        PlanRequest r = replay.request();
        Ledger mem = replay.mem;
        replay.construct();
        long construction = mem.peak();
        long persistent = mem.live();
        long stepPeak = 0;
        long[] atPeak = null;
        String phase = "";
        String gathered = "";
        for (int step = 0; step < 2; step++) {
            mem.resetPeak();
            replay.step();
            if (atPeak == null || mem.peak() > stepPeak) {
                stepPeak = mem.peak();
                atPeak = mem.atPeak();
                phase = mem.peakPhase();
                gathered = mem.peakContext();
            }
            if (mem.live() != persistent) { // what a step makes it gives back: a replay that does not is wrong
                throw new IllegalStateException(String.format(Locale.ROOT, "the planner's replay of step %d ends "
                        + "with %d B live, not the %d B it began with (world %d, ep %d, %d x %d tokens, grad_accum "
                        + "%d, %s on %s, checkpointing %s): a planner bug, please report it with this line",
                        step + 1, mem.live(), persistent, r.worldSize(), r.ep(), r.batch(), r.seqLen(),
                        r.gradAccum(), r.precision(), r.device(), r.checkpointing().configName()));
            }
        }
        Map<Category, Long> by = new EnumMap<>(Category.class);
        for (Category c : Category.values()) {
            if (atPeak[c.ordinal()] != 0) {
                by.put(c, atPeak[c.ordinal()]);
            }
        }
        return new MemoryPlan(r, replay.units.globalParameters(), replay.units.activeParameters(), persistent,
                construction, stepPeak, by, phase, gathered, mem.largestElements(), mem.largestWhat());
    }

    /** Changes that make a request fit, the mildest of each kind; empty when it fits as it is. */
    public static List<Suggestion> advise(PlanRequest r) {
        List<Suggestion> out = new ArrayList<>();
        MemoryPlan plan = plan(r);
        if (plan.fits()) {
            return out;
        }
        PlanRequest base = r;
        boolean any = false;
        any |= add(out, gradAccum(base));
        any |= add(out, checkpointing(base));
        any |= add(out, expertParallel(base));
        any |= add(out, smallerBatch(base));
        any |= add(out, shorterSequence(base));
        any |= add(out, moreGpus(base, "", base));
        if (!any) {
            PlanRequest all = base.withCheckpointing(ActivationCheckpointing.FULL);
            Suggestion s = moreGpus(all, "full activation checkpointing (training.activation_checkpointing=full) "
                    + "and ", base);
            if (s == null && base.batch() > 1) {
                s = moreGpus(all.withBatch(1, base.seqLen(), 1), "full activation checkpointing, 1 sequence per "
                        + "rank and ", base);
            }
            add(out, s);
        }
        return out;
    }

    private static boolean add(List<Suggestion> out, Suggestion s) {
        if (s != null) {
            out.add(s);
            return true;
        }
        return false;
    }

    private static Suggestion gradAccum(PlanRequest r) {
        for (int a = r.gradAccum() + 1; a <= r.batch(); a++) {
            if (r.batch() % a != 0) {
                continue;
            }
            MemoryPlan p = plan(r.withBatch(r.batch(), r.seqLen(), a));
            if (p.fits()) {
                return new Suggestion("gradient accumulation over " + a + " micro-batches of " + r.batch() / a
                        + " sequences (--grad-accum " + a + ", training.grad_accum=" + a + ")",
                        "same global batch, " + a + " forward/backward passes per step", p);
            }
        }
        return null;
    }

    /** The mildest setting that keeps less than the request's (none, then selective, then full) and fits. */
    private static Suggestion checkpointing(PlanRequest r) {
        List<ActivationCheckpointing> mildestFirst = List.of(ActivationCheckpointing.NONE,
                ActivationCheckpointing.SELECTIVE, ActivationCheckpointing.FULL);
        for (ActivationCheckpointing c : mildestFirst.subList(mildestFirst.indexOf(r.checkpointing()) + 1,
                mildestFirst.size())) {
            MemoryPlan p = plan(r.withCheckpointing(c));
            if (p.fits()) {
                String name = c.configName();
                return new Suggestion(name + " activation checkpointing (--activation-checkpointing " + name
                        + ", training.activation_checkpointing=" + name + ")", name.equals("full")
                        ? "each layer's forward runs again in its backward pass"
                        : "each layer's norms, attention and experts' gate and up run again in its backward pass", p);
            }
        }
        return null;
    }

    private static Suggestion expertParallel(PlanRequest r) {
        int experts = r.model().numExperts();
        for (int ep = r.ep() + 1; ep <= r.worldSize(); ep++) {
            if (r.worldSize() % ep != 0 || experts % ep != 0) {
                continue;
            }
            MemoryPlan p = plan(r.withLayout(r.worldSize(), ep));
            if (p.fits()) {
                return new Suggestion("expert parallelism over " + ep + " ranks (--ep " + ep + ", layout.ep=" + ep
                        + ")", (experts / ep) + " experts per rank, tokens travel by all-to-all", p);
            }
        }
        return null;
    }

    private static Suggestion smallerBatch(PlanRequest r) {
        for (int b = r.batch() - 1; b >= 1; b--) {
            int accum = b % r.gradAccum() == 0 ? r.gradAccum() : 1;
            MemoryPlan p = plan(r.withBatch(b, r.seqLen(), accum));
            if (p.fits()) {
                return new Suggestion(b + " sequences per rank (--batch " + b + ", training.batch_sequences=" + b
                        + (accum != r.gradAccum() ? ", grad_accum 1" : "") + ")", "global batch "
                        + (long) b * r.worldSize() + " sequences instead of " + (long) r.batch() * r.worldSize(), p);
            }
        }
        return null;
    }

    private static Suggestion shorterSequence(PlanRequest r) {
        for (int t = r.seqLen() / 2; t >= 64; t /= 2) {
            MemoryPlan p = plan(r.withBatch(r.batch(), t, r.gradAccum()));
            if (p.fits()) {
                return new Suggestion("sequences of " + t + " tokens (--seq " + t + ", training.seq_len=" + t + ")",
                        "a shorter context than " + r.seqLen(), p);
            }
        }
        return null;
    }

    /** The smallest world (the current one times a power of two, up to 4096 ranks) that fits. */
    private static Suggestion moreGpus(PlanRequest r, String prefix, PlanRequest original) {
        for (int w = r.worldSize() * 2; w <= 4096; w *= 2) {
            MemoryPlan p = plan(r.withLayout(w, r.ep()));
            if (p.fits()) {
                return new Suggestion(prefix + w + " GPUs (--world-size " + w + ", layout.world_size=" + w + ")",
                        "global batch " + (long) p.request().batch() * w + " sequences instead of "
                                + (long) original.batch() * original.worldSize(), p);
            }
        }
        return null;
    }

    /** The block the CUDA backend's caching allocator gives a request of {@code bytes}, as plans count it. */
    public static long cudaBlockBytes(long bytes) {
        return Ledger.blockBytes(bytes);
    }

    static String gb(long bytes) {
        return String.format(Locale.ROOT, "%.2f GB", bytes / 1e9);
    }
}
