package dev.sparkmoe.core.optim;

import java.util.Locale;

/**
 * Learning rate by step: linear warm-up from 0 to the peak over {@code warmupSteps}, then cosine, linear or no
 * decay down to {@code minLr} at {@code totalSteps} (held there afterwards).
 */
public record LrSchedule(double peakLr, double minLr, long warmupSteps, long totalSteps, Decay decay) {

    public enum Decay {
        COSINE, LINEAR, CONSTANT;

        public static Decay parse(String s) {
            try {
                return valueOf(s.trim().toUpperCase(Locale.ROOT));
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException("unknown lr schedule '" + s + "'; expected cosine, linear or "
                        + "constant");
            }
        }
    }

    public LrSchedule {
        if (!(peakLr > 0)) {
            throw new IllegalArgumentException("lr must be positive, got " + peakLr);
        }
        if (!(minLr >= 0) || minLr > peakLr) {
            throw new IllegalArgumentException("min_lr must lie in [0, lr=" + peakLr + "], got " + minLr);
        }
        if (warmupSteps < 0 || totalSteps < 1) {
            throw new IllegalArgumentException("need warmup_steps >= 0 and total steps >= 1, got warmup="
                    + warmupSteps + ", total=" + totalSteps);
        }
    }

    public static LrSchedule constant(double lr) {
        return new LrSchedule(lr, lr, 0, 1, Decay.CONSTANT);
    }

    /** The learning rate of 1-based step {@code step}. */
    public double lr(long step) {
        if (warmupSteps > 0 && step <= warmupSteps) {
            return peakLr * step / warmupSteps;
        }
        if (decay == Decay.CONSTANT) {
            return peakLr;
        }
        long span = Math.max(1, totalSteps - warmupSteps);
        double progress = Math.min(1.0, Math.max(0.0, (double) (step - warmupSteps) / span));
        if (decay == Decay.LINEAR) {
            return minLr + (peakLr - minLr) * (1.0 - progress);
        }
        return minLr + (peakLr - minLr) * 0.5 * (1.0 + Math.cos(Math.PI * progress));
    }
}
