package dev.sparkmoe.core.optim;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * torch.optim.AdamW on one tensor (or one shard of it): decoupled weight decay, first and second moments, bias
 * correction. The moments live beside the parameter with the same shape; {@link #step} advances the shared step
 * counter only through its argument, so all tensors of a model use one counter held by the caller.
 */
public final class AdamW {
    private final Hyper hyper;

    /**
     * @param beta1        first-moment decay
     * @param beta2        second-moment decay
     * @param eps          added to the denominator
     * @param weightDecay  decoupled weight decay (multiplies the parameter by 1 - lr * weightDecay)
     */
    public record Hyper(double beta1, double beta2, double eps, double weightDecay) {
        public Hyper {
            if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1)) {
                throw new IllegalArgumentException("AdamW betas must lie in [0, 1): beta1=" + beta1 + ", beta2="
                        + beta2);
            }
            if (!(eps > 0)) {
                throw new IllegalArgumentException("AdamW eps must be positive, got " + eps);
            }
            if (!(weightDecay >= 0)) {
                throw new IllegalArgumentException("AdamW weight_decay must be >= 0, got " + weightDecay);
            }
        }

        /** torch defaults except weight decay 0.1 and beta2 0.95, the usual LLM settings. */
        public static Hyper defaults() {
            return new Hyper(0.9, 0.95, 1e-8, 0.1);
        }
    }

    /**
     * The scalars of one torch.optim.AdamW step (single-tensor path), computed once on the host in the precision
     * torch uses, so that every backend's kernel applies the same numbers:
     * {@code p = p * decay; m += w1 * (g - m); v = v * beta2 + w2 * g^2; p -= stepSize * m / (sqrt(v) / bc2Sqrt + eps)}.
     */
    public record Coefficients(float decay, float w1, float w2, float stepSize, float bc2Sqrt) {
        public static Coefficients of(float lr, float beta1, float beta2, float weightDecay, long step) {
            double bc1 = 1.0 - Math.pow(beta1, step);
            double bc2 = 1.0 - Math.pow(beta2, step);
            return new Coefficients((float) (1.0 - (double) lr * weightDecay), 1f - beta1, 1f - beta2,
                    (float) (lr / bc1), (float) Math.sqrt(bc2));
        }
    }

    /** Optimizer state of one tensor. */
    public static final class State {
        public final Tensor m;
        public final Tensor v;

        public State(Backend backend, int... shape) {
            m = backend.zeros(DType.F32, shape);
            v = backend.zeros(DType.F32, shape);
        }

        public State(Tensor m, Tensor v) {
            this.m = m;
            this.v = v;
        }
    }

    public AdamW(Hyper hyper) {
        this.hyper = hyper;
    }

    public Hyper hyper() {
        return hyper;
    }

    /** One update of {@code param} with {@code grad}; {@code step} is 1-based and counts updates so far. */
    public void step(Backend be, Tensor param, Tensor grad, State s, double lr, long step) {
        be.adamw(param, grad, s.m, s.v, param.numel(), (float) lr, (float) hyper.beta1, (float) hyper.beta2,
                (float) hyper.eps, (float) hyper.weightDecay, step);
    }

    /**
     * One step over many tensors ({@link Backend#adamwStep}): the gradients read times {@code gradScale} (clipping's
     * coefficient, 1 for none), each slot's compute copy written, and, where {@code squares} is not null, each
     * gradient's sum of squares measured in the same pass.
     */
    public void step(Backend be, java.util.List<Backend.AdamWSlot> slots, double lr, long step, float gradScale,
                     double[] squares) {
        be.adamwStep(slots, (float) lr, (float) hyper.beta1, (float) hyper.beta2, (float) hyper.eps,
                (float) hyper.weightDecay, step, gradScale, squares);
    }
}
