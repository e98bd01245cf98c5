package dev.sparkmoe.gpu.bench;

import java.util.List;
import java.util.Locale;

/**
 * The convergence decision of {@link LossCurve}: several PyTorch runs of the same training (the same initial weights
 * and data; they differ by the GPU's own run-to-run variation) span a band, per step, from the lowest to the highest
 * of their losses, widened by a relative margin on both sides; spark-moe's curve passes when its loss lies inside
 * the band at no fewer than a given share of the steps after a warm-up, and its final loss inside it too.
 */
final class LossBand {
    private LossBand() {
    }

    /**
     * The outcome: steps compared and inside, the share inside, whether the final loss is inside, the widest miss
     * (relative to the band's nearer edge) and its step (1-based; 0 where nothing is outside), and the verdict.
     */
    record Decision(int compared, int inside, double share, boolean finalInside, double worstMiss, int worstStep,
                    boolean pass) {
        String describe(int after, double widen, double minShare) {
            return String.format(Locale.ROOT, "loss curve against the band of the PyTorch runs widened by %.1f%%, "
                            + "steps %d-%d: %d of %d inside (%.1f%%, %.0f%% needed), final loss %s, widest miss %.4f at "
                            + "step %d: %s", 100 * widen, after + 1, after + compared, inside, compared, 100 * share,
                    100 * minShare, finalInside ? "inside" : "OUTSIDE", worstMiss, worstStep, pass ? "PASS" : "FAIL");
        }
    }

    /**
     * @param runs     the PyTorch runs' losses, one array per run (the band is as long as the shortest)
     * @param ours     spark-moe's losses
     * @param after    steps before this are not compared (the warm-up of the curve)
     * @param widen    relative margin added below the band's low edge and above its high edge (0.01: 1%)
     * @param minShare the share of compared steps that must lie inside (0.9)
     */
    static Decision decide(List<double[]> runs, double[] ours, int after, double widen, double minShare) {
        if (runs.isEmpty()) {
            throw new IllegalArgumentException("no PyTorch run to make a band of: pass at least one --torch file");
        }
        int steps = ours.length;
        for (double[] r : runs) {
            steps = Math.min(steps, r.length);
        }
        if (after < 0 || after >= steps) {
            throw new IllegalArgumentException("--after " + after + " leaves no step to compare: the curves have "
                    + steps + " steps in common; use a smaller --after or more steps");
        }
        if (widen < 0 || minShare <= 0 || minShare > 1) {
            throw new IllegalArgumentException("--widen " + widen + " must be >= 0 and --inside " + minShare
                    + " in (0, 1]");
        }
        int inside = 0;
        double worst = 0;
        int worstStep = 0;
        boolean finalInside = false;
        for (int s = after; s < steps; s++) {
            double lo = Double.POSITIVE_INFINITY;
            double hi = Double.NEGATIVE_INFINITY;
            for (double[] r : runs) {
                lo = Math.min(lo, r[s]);
                hi = Math.max(hi, r[s]);
            }
            lo -= widen * Math.abs(lo);
            hi += widen * Math.abs(hi);
            double v = ours[s];
            boolean in = v >= lo && v <= hi; // a NaN loss is outside
            if (in) {
                inside++;
            } else {
                double miss = Double.isNaN(v) ? Double.POSITIVE_INFINITY
                        : v < lo ? (lo - v) / Math.abs(lo) : (v - hi) / Math.abs(hi);
                if (miss > worst || worstStep == 0) {
                    worst = miss;
                    worstStep = s + 1;
                }
            }
            if (s == steps - 1) {
                finalInside = in;
            }
        }
        int compared = steps - after;
        double share = (double) inside / compared;
        return new Decision(compared, inside, share, finalInside, worst, worstStep,
                share >= minShare && finalInside);
    }
}
