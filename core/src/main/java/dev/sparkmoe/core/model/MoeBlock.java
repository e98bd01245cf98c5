package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.List;

/**
 * The sparse MoE block of Qwen3-MoE: router linear, softmax in f32, top-k, optional renormalisation of the top-k
 * weights ({@code norm_topk_prob}), the experts, and the weighted sum of the chosen experts' outputs.
 */
public final class MoeBlock extends Module {
    final Parameter router; // [E, H]
    final Experts experts;
    private final int hidden;
    private final int numExperts;
    private final int topK;
    private final boolean normTopk;

    MoeBlock(String path, Qwen3MoeConfig c) {
        super(path);
        hidden = c.hiddenSize();
        numExperts = c.numExperts();
        topK = c.numExpertsPerTok();
        normTopk = c.normTopkProb();
        router = new Parameter(path + ".gate.weight", Tensor.zeros(DType.F32, numExperts, hidden));
        experts = new Experts(path + ".experts", c);
    }

    @Override
    public List<Parameter> ownParameters() {
        return List.of(router);
    }

    @Override
    public List<Module> children() {
        return List.of(experts);
    }

    public Experts experts() {
        return experts;
    }

    static final class Cache {
        Tensor x;             // [N, H]
        Tensor routerLogits;  // [N, E]
        Tensor probs;         // [N, E]
        int[] topIdx;         // [N*K] expert of each slot
        float[] topVal;       // [N*K] router probability of each slot (before renormalisation)
        float[] weights;      // [N*K] combine weight of each slot
        Tensor slots;         // [N*K, H] expert outputs in slot order
        final Experts.Cache experts = new Experts.Cache();
    }

    /**
     * Top-k of each row by descending value; ties go to the lower index (torch.topk's order on the CPU).
     */
    static void topK(float[] probs, int rows, int cols, int k, int[] idx, float[] val) {
        for (int r = 0; r < rows; r++) {
            int o = r * cols;
            for (int j = 0; j < k; j++) {
                int best = -1;
                float bv = Float.NEGATIVE_INFINITY;
                for (int e = 0; e < cols; e++) {
                    boolean taken = false;
                    for (int p = 0; p < j; p++) {
                        if (idx[r * k + p] == e) {
                            taken = true;
                            break;
                        }
                    }
                    if (!taken && (best < 0 || probs[o + e] > bv)) {
                        best = e;
                        bv = probs[o + e];
                    }
                }
                idx[r * k + j] = best;
                val[r * k + j] = bv;
            }
        }
    }

    Tensor forward(Backend be, Tensor x, int tokens, Cache c) {
        c.x = x;
        c.routerLogits = Linear.forward(be, x, tokens, router);
        c.probs = Tensor.zeros(DType.F32, tokens, numExperts);
        be.softmaxRows(c.routerLogits, tokens, numExperts, c.probs);
        c.topIdx = new int[tokens * topK];
        c.topVal = new float[tokens * topK];
        topK(c.probs.floats(), tokens, numExperts, topK, c.topIdx, c.topVal);
        c.weights = new float[tokens * topK];
        for (int n = 0; n < tokens; n++) {
            float sum = 0f;
            for (int k = 0; k < topK; k++) {
                sum += c.topVal[n * topK + k];
            }
            for (int k = 0; k < topK; k++) {
                c.weights[n * topK + k] = normTopk ? c.topVal[n * topK + k] / sum : c.topVal[n * topK + k];
            }
        }
        experts.beforeForward();
        c.slots = experts.forward(be, x, c.topIdx, tokens, topK, c.experts);
        experts.afterForward();
        Tensor y = Tensor.zeros(DType.F32, tokens, hidden);
        float[] yf = y.floats();
        float[] sf = c.slots.floats();
        for (int n = 0; n < tokens; n++) {
            for (int k = 0; k < topK; k++) {
                float w = c.weights[n * topK + k];
                int so = (n * topK + k) * hidden;
                for (int j = 0; j < hidden; j++) {
                    yf[n * hidden + j] += w * sf[so + j];
                }
            }
        }
        return y;
    }

    /**
     * dy [N, H] -> dx [N, H]. {@code auxGradPerExpert[e]} is d(loss)/d(probs[n, e]) contributed by the
     * load-balancing loss (the same for every token n of this layer).
     */
    Tensor backward(Backend be, Tensor dy, int tokens, Cache c, float[] auxGradPerExpert) {
        float[] dyf = dy.floats();
        float[] sf = c.slots.floats();
        Tensor dSlots = Tensor.zeros(DType.F32, tokens * topK, hidden);
        float[] dsf = dSlots.floats();
        float[] dw = new float[tokens * topK];
        for (int n = 0; n < tokens; n++) {
            for (int k = 0; k < topK; k++) {
                int s = n * topK + k;
                float w = c.weights[s];
                float dot = 0f;
                for (int j = 0; j < hidden; j++) {
                    dsf[s * hidden + j] = w * dyf[n * hidden + j];
                    dot += dyf[n * hidden + j] * sf[s * hidden + j];
                }
                dw[s] = dot;
            }
        }
        Tensor dx = Tensor.zeros(DType.F32, tokens, hidden);
        experts.beforeBackward();
        experts.backward(be, dSlots, c.experts, dx);
        experts.afterBackward();
        // Router: d(weights) -> d(top values) -> d(probs) -> d(logits).
        Tensor dLogits = Tensor.zeros(DType.F32, tokens, numExperts);
        float[] dl = dLogits.floats();
        float[] p = c.probs.floats();
        float[] dp = new float[numExperts];
        for (int n = 0; n < tokens; n++) {
            System.arraycopy(auxGradPerExpert, 0, dp, 0, numExperts);
            if (normTopk) {
                float sum = 0f;
                float dotWv = 0f;
                for (int k = 0; k < topK; k++) {
                    sum += c.topVal[n * topK + k];
                }
                for (int k = 0; k < topK; k++) {
                    dotWv += dw[n * topK + k] * c.topVal[n * topK + k];
                }
                for (int k = 0; k < topK; k++) {
                    dp[c.topIdx[n * topK + k]] += dw[n * topK + k] / sum - dotWv / (sum * sum);
                }
            } else {
                for (int k = 0; k < topK; k++) {
                    dp[c.topIdx[n * topK + k]] += dw[n * topK + k];
                }
            }
            float dotP = 0f;
            for (int e = 0; e < numExperts; e++) {
                dotP += dp[e] * p[n * numExperts + e];
            }
            for (int e = 0; e < numExperts; e++) {
                dl[n * numExperts + e] = p[n * numExperts + e] * (dp[e] - dotP);
            }
        }
        Tensor dxRouter = Linear.backward(be, dLogits, c.x, tokens, router);
        be.axpy(1f, dxRouter, 0, dx, 0, dx.numel());
        return dx;
    }

    int topK() {
        return topK;
    }

    int numExperts() {
        return numExperts;
    }
}
