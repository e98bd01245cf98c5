package dev.sparkmoe.parallel.memory;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/** A plan as {@code spark-moe plan} prints it: a table for people, or one JSON object for programs. */
public final class PlanReport {
    private PlanReport() {
    }

    /** The table, the verdict and, when the run does not fit, the changes that would make it fit. */
    public static String text(MemoryPlan p, List<Suggestion> suggestions) {
        PlanRequest r = p.request();
        Qwen3MoeConfig c = r.model();
        StringBuilder sb = new StringBuilder();
        sb.append(String.format(Locale.ROOT, "model: %s parameters (%s active per token), %d layers, %d experts "
                        + "(top %d), hidden %d, vocab %d%n", count(p.parameters()), count(p.activeParameters()),
                c.numHiddenLayers(), c.numExperts(), c.numExpertsPerTok(), c.hiddenSize(), c.vocabSize()));
        sb.append(String.format(Locale.ROOT, "layout: %d ranks (dp_shard %d, ep %d: %d experts per rank), %d x %d "
                        + "tokens per rank (global batch %d sequences), grad_accum %d%n", r.worldSize(),
                r.worldSize(), r.ep(), c.numExperts() / r.ep(), r.batch(), r.seqLen(),
                (long) r.batch() * r.worldSize(), r.gradAccum()));
        int tokens = (int) r.microBatchTokens();
        sb.append(String.format(Locale.ROOT, "settings: precision %s on %s, activation checkpointing %s, fused loss "
                        + "in chunks of %d rows, FSDP prefetch %d%s%n", lower(r.precision()), lower(r.device()),
                r.checkpointing().configName(), r.lossChunkRows(tokens), r.prefetch(),
                r.ep() > 1 && r.expertImbalance() != 1.0 ? ", expert imbalance " + r.expertImbalance() : ""));
        sb.append('\n');
        sb.append(String.format(Locale.ROOT, "rank 0 at the step's peak (%s)%n", p.stepPeakPhase()));
        row(sb, "", "GB");
        for (Category cat : new Category[] {Category.PARAMETERS, Category.COMPUTE_COPIES, Category.OPTIMIZER,
            Category.GRADIENT_SHARDS, Category.UNIT_GRADIENTS, Category.GATHERED}) {
            row(sb, cat.label(), gb(p.bytes(cat)));
        }
        sb.append("    ").append(p.gatheredAtStepPeak()).append('\n');
        row(sb, "activations kept for backward", gb(p.activationBytes()));
        for (Category cat : new Category[] {Category.RESIDUAL, Category.ATTENTION, Category.MOE, Category.LOSS,
            Category.INPUTS}) {
            row(sb, "  " + cat.label(), gb(p.bytes(cat)));
        }
        for (Category cat : new Category[] {Category.TEMPORARIES, Category.WORKSPACE, Category.LOAD_BUFFER}) {
            if (cat != Category.LOAD_BUFFER || p.bytes(cat) > 0) {
                row(sb, cat.label(), gb(p.bytes(cat)));
            }
        }
        row(sb, "step peak", gb(p.stepPeakBytes()));
        row(sb, "between steps (parameters, compute copies and AdamW state)", gb(p.persistentBytes()));
        row(sb, "model construction peak (each rank's shards, loaded a piece at a time)",
                gb(p.constructionPeakBytes()));
        sb.append('\n');
        sb.append(String.format(Locale.ROOT, "GPU memory %s GB, reserve %s GB (CUDA context, cuBLAS, NCCL): %s GB "
                        + "usable; peak %s GB (%s)%n", gb(r.deviceMemoryBytes()), gb(r.reserveBytes()),
                gb(p.usableBytes()), gb(p.peakBytes()),
                p.constructionPeakBytes() > p.stepPeakBytes() ? "while building the model" : "in the step"));
        if (!p.tensorsAddressable()) {
            sb.append(String.format(Locale.ROOT, "the %s has %,d elements, more than a tensor may hold (%,d): fewer "
                            + "tokens per micro-batch (--grad-accum, --batch, --seq)%n", p.largestTensor(),
                    p.largestTensorElements(), MemoryPlan.MAX_TENSOR_ELEMENTS));
        }
        if (p.fits()) {
            sb.append(String.format(Locale.ROOT, "fits: %s GB to spare%n", gb(p.usableBytes() - p.peakBytes())));
        } else {
            sb.append(p.peakBytes() > p.usableBytes()
                    ? String.format(Locale.ROOT, "DOES NOT FIT: %s GB over%n", gb(p.peakBytes() - p.usableBytes()))
                    : "DOES NOT FIT\n");
            if (suggestions.isEmpty()) {
                sb.append("no change the planner tries makes it fit (up to 4096 GPUs with full activation "
                        + "checkpointing)\n");
            } else {
                sb.append("what would fit:\n");
                for (Suggestion s : suggestions) {
                    MemoryPlan q = s.plan();
                    sb.append(String.format(Locale.ROOT, "  - %s: peak %s GB%s%s%n", s.change(), gb(q.peakBytes()),
                            q.fits() ? ", fits" : ", still over", s.effect().isEmpty() ? "" : " (" + s.effect()
                                    + ")"));
                }
            }
        }
        return sb.toString();
    }

    /** One JSON object with the request, the bytes at the peak by category, the verdict and the suggestions. */
    public static String json(MemoryPlan p, List<Suggestion> suggestions) {
        Map<String, Object> out = fields(p);
        List<Object> list = new ArrayList<>();
        for (Suggestion s : suggestions) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("change", s.change());
            m.put("effect", s.effect());
            m.put("peak_bytes", s.plan().peakBytes());
            m.put("fits", s.plan().fits());
            list.add(m);
        }
        out.put("suggestions", list);
        return Json.write(out, false);
    }

    static Map<String, Object> fields(MemoryPlan p) {
        PlanRequest r = p.request();
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("parameters", p.parameters());
        out.put("active_parameters", p.activeParameters());
        out.put("world_size", (long) r.worldSize());
        out.put("ep", (long) r.ep());
        out.put("batch", (long) r.batch());
        out.put("seq_len", (long) r.seqLen());
        out.put("grad_accum", (long) r.gradAccum());
        out.put("precision", lower(r.precision()));
        out.put("backend", lower(r.device()));
        out.put("activation_checkpointing", r.checkpointing().configName());
        out.put("loss_chunk_rows", (long) r.lossChunkRows((int) r.microBatchTokens()));
        out.put("fsdp_prefetch", (long) r.prefetch());
        out.put("expert_imbalance", r.expertImbalance());
        Map<String, Object> at = new LinkedHashMap<>();
        for (Category c : Category.values()) {
            at.put(lower(c), p.bytes(c));
        }
        out.put("at_step_peak_bytes", at);
        out.put("step_peak_phase", p.stepPeakPhase());
        out.put("gathered_at_step_peak", p.gatheredAtStepPeak());
        out.put("step_peak_bytes", p.stepPeakBytes());
        out.put("persistent_bytes", p.persistentBytes());
        out.put("construction_peak_bytes", p.constructionPeakBytes());
        out.put("peak_bytes", p.peakBytes());
        out.put("peak_gb", Math.round(p.peakBytes() / 1e7) / 100.0);
        out.put("device_memory_bytes", r.deviceMemoryBytes());
        out.put("reserve_bytes", r.reserveBytes());
        out.put("usable_bytes", p.usableBytes());
        out.put("largest_tensor", p.largestTensor());
        out.put("largest_tensor_elements", p.largestTensorElements());
        out.put("fits", p.fits());
        return out;
    }

    private static void row(StringBuilder sb, String label, String value) {
        sb.append(String.format(Locale.ROOT, "  %-74s %9s%n", label, value));
    }

    private static String gb(long bytes) {
        return String.format(Locale.ROOT, "%.2f", bytes / 1e9);
    }

    private static String count(long n) {
        return n >= 1e9 ? String.format(Locale.ROOT, "%.2fB", n / 1e9)
                : n >= 1e6 ? String.format(Locale.ROOT, "%.1fM", n / 1e6) : String.format(Locale.ROOT, "%,d", n);
    }

    private static String lower(Enum<?> e) {
        return e.name().toLowerCase(Locale.ROOT);
    }
}
