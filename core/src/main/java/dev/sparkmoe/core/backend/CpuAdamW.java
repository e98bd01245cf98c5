package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.optim.AdamW;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The CPU backend's AdamW step on one flat tensor, with the coefficients of {@link AdamW.Coefficients} and torch's
 * {@code lerp} for the first moment. The gradient may be BF16: a CPU tensor keeps its bf16 values as f32 values, so it
 * is read as an F32 gradient holding the same values is.
 */
final class CpuAdamW {
    private CpuAdamW() {
    }

    static void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, int n, float lr, float beta1, float beta2,
                      float eps, float weightDecay, long step) {
        Backend.AdamWSlot.checkDTypes(param, grad, m, v, "adamw");
        float[] pf = param.floats();
        float[] gf = grad.floats();
        float[] mf = m.floats();
        float[] vf = v.floats();
        AdamW.Coefficients c = AdamW.Coefficients.of(lr, beta1, beta2, weightDecay, step);
        float decay = c.decay();
        float w1 = c.w1();
        float w2 = c.w2();
        float stepSize = c.stepSize();
        float bc2Sqrt = c.bc2Sqrt();
        Par.range(n, 12, (from, to) -> {
            for (int i = from; i < to; i++) {
                float p = weightDecay != 0f ? pf[i] * decay : pf[i];
                float g = gf[i];
                float mi = mf[i];
                // torch lerp with weight < 0.5: self + weight * (end - self)
                mi = w1 < 0.5f ? mi + w1 * (g - mi) : g - (g - mi) * (1f - w1);
                float vi = vf[i] * beta2 + w2 * g * g;
                mf[i] = mi;
                vf[i] = vi;
                float denom = (float) Math.sqrt(vi) / bc2Sqrt + eps;
                pf[i] = p + (-stepSize) * (mi / denom);
            }
        });
    }
}
