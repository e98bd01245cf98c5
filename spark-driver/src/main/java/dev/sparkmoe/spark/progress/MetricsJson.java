package dev.sparkmoe.spark.progress;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.sparkmoe.parallel.train.StepMetrics;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.LinkedHashMap;
import java.util.Map;

/** One JSON object per step: the metrics file's line format, also kept in checkpoint manifests. */
public final class MetricsJson {
    private static final ObjectMapper JSON = new ObjectMapper();

    private MetricsJson() {
    }

    public static String toJson(StepMetrics m) {
        return toJson(m, 0, null);
    }

    /**
     * With a {@code runId} the line starts with it ({@code "run"}), so that runs appending to one file can be told
     * apart; with {@code attempt > 0} it also names the barrier-stage attempt that produced it.
     */
    public static String toJson(StepMetrics m, int attempt, String runId) {
        return toJson(m, attempt, runId, Map.of());
    }

    /**
     * As {@link #toJson(StepMetrics, int, String)}, followed by {@code extra} (e.g. the layout of an attempt resumed
     * on fewer ranks: world_size, ep, grad_accum).
     */
    public static String toJson(StepMetrics m, int attempt, String runId, Map<String, Object> extra) {
        Map<String, Object> o = new LinkedHashMap<>();
        if (runId != null) {
            o.put("run", runId);
        }
        o.put("step", m.step());
        o.put("loss", m.loss());
        o.put("aux_loss", m.auxLoss());
        o.put("lr", m.lr());
        o.put("grad_norm", m.gradNorm());
        o.put("tokens", m.tokens());
        o.put("seconds", m.seconds());
        o.put("tokens_per_second", m.tokensPerSecond());
        if (attempt > 0) {
            o.put("attempt", attempt);
        }
        o.putAll(extra);
        try {
            return JSON.writeValueAsString(o);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static StepMetrics fromJson(String line) {
        try {
            Map<?, ?> o = JSON.readValue(line, Map.class);
            return new StepMetrics(((Number) o.get("step")).longValue(), num(o, "loss"), num(o, "aux_loss"),
                    num(o, "lr"), num(o, "grad_norm"), ((Number) o.get("tokens")).longValue(), num(o, "seconds"));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static double num(Map<?, ?> o, String k) {
        Object v = o.get(k);
        if (v instanceof Number n) {
            return n.doubleValue();
        }
        return Double.parseDouble(String.valueOf(v)); // NaN / Infinity are written as strings
    }
}
