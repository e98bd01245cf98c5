package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.moe.TokenDispatcher.SlotRows;
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

    MoeBlock(String path, Qwen3MoeConfig c, Backend be) {
        super(path);
        hidden = c.hiddenSize();
        numExperts = c.numExperts();
        topK = c.numExpertsPerTok();
        normTopk = c.normTopkProb();
        router = new Parameter(path + ".gate.weight", be, numExperts, hidden).readByGemmsOnly();
        experts = new Experts(path + ".experts", c, be);
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
        Tensor topIdx;        // I32 [N*K] expert of each slot
        Tensor topVal;        // [N*K] router probability of each slot (before renormalisation)
        Tensor weights;       // [N*K] combine weight of each slot
        SlotRows slots;       // [N*K, H] expert outputs as the slots read them (in slot order, or by row)
        boolean expertsInBackward; // the recompute ran the experts' backward hooks already
        final Experts.Cache experts = new Experts.Cache();
    }

    Tensor forward(Backend be, Tensor x, int tokens, Cache c) {
        c.x = x;
        c.routerLogits = Linear.forward(be, x, tokens, router);
        route(be, tokens, c);
        // The experts' hooks (FSDP: wait for their gathered weights, start the next gather) run before the routing's
        // copy to the host, while the device still has this layer's work queued, not in the idle that follows it.
        experts.beforeForward();
        // The routing decides how many rows each expert GEMM has: the dispatch's expert counts are the only
        // device-to-host copy of the layer.
        c.slots = experts.forward(be, x, c.topIdx, tokens, topK, c.experts);
        experts.afterForward();
        Tensor y = be.empty(DType.F32, tokens, hidden);
        be.moeCombine(c.slots.rows(), c.slots.rowOfSlot(), c.weights, tokens, topK, hidden, y);
        return y;
    }

    /** Softmax and top-k of the cache's router logits: probs, topIdx, topVal, weights. */
    private void route(Backend be, int tokens, Cache c) {
        c.probs = be.empty(DType.F32, tokens, numExperts);
        be.softmaxRows(c.routerLogits, tokens, numExperts, c.probs);
        c.topIdx = be.empty(DType.I32, tokens * topK);
        c.topVal = be.empty(DType.F32, tokens * topK);
        c.weights = be.empty(DType.F32, tokens * topK);
        be.routerTopK(c.probs, tokens, numExperts, topK, normTopk, c.topIdx, c.topVal, c.weights);
    }

    /**
     * Activation checkpointing, after {@link #forward}: gives back what {@code mode} does not keep. The router logits
     * stay (the forward pass returns them); {@link ActivationCheckpointing#SELECTIVE} keeps the routing, the dispatch
     * and the slots too. The input {@code c.x} is the caller's and only forgotten.
     */
    void drop(Backend be, Cache c, ActivationCheckpointing mode) {
        c.x = null;
        if (mode == ActivationCheckpointing.FULL) {
            Release.all(be, c.probs, c.topIdx, c.topVal, c.weights, c.slots.rows());
            c.probs = c.topIdx = c.topVal = c.weights = null;
            c.slots = null;
        }
        experts.drop(be, c.experts, mode);
    }

    /**
     * Makes again, from the same input, what {@link #drop} gave back: under {@link ActivationCheckpointing#FULL} the
     * routing from the kept router logits and the whole experts' forward (dispatch and combine included), under
     * {@link ActivationCheckpointing#SELECTIVE} only the experts' gate and up projections. The experts' weights are
     * those of their backward pass: their backward hooks run here (FSDP gathers them once for both), not in
     * {@link #backward}.
     */
    void recompute(Backend be, Tensor x, int tokens, Cache c, ActivationCheckpointing mode) {
        c.x = x;
        if (mode == ActivationCheckpointing.FULL) {
            route(be, tokens, c);
        }
        experts.beforeBackward();
        c.expertsInBackward = true;
        if (mode == ActivationCheckpointing.FULL) {
            c.slots = experts.forward(be, x, c.topIdx, tokens, topK, c.experts);
        } else {
            experts.recomputeActivations(be, x, c.experts);
        }
    }

    /** Adds this layer's routing counts and probability sums to {@code stats} (length 2E). */
    void routerStats(Backend be, int tokens, Cache c, double[] stats) {
        be.routerStats(c.topIdx, c.probs, tokens, numExperts, topK, stats);
    }

    /**
     * dy [N, H] -> dx [N, H]; releases the cache (except the input {@code c.x} and the router logits) and
     * temporaries. {@code auxGrad} [E] is d(loss)/d(probs[n, e]) contributed by the load-balancing loss (the same for
     * every token n of this layer).
     */
    Tensor backward(Backend be, Tensor dy, int tokens, Cache c, Tensor auxGrad) {
        Tensor dWeights = be.empty(DType.F32, tokens * topK);
        Tensor dOut = experts.combineBackward(be, dy, c.slots, c.weights, tokens, topK, dWeights, c.experts);
        Release.all(be, c.slots.rows(), c.weights);
        c.slots = null;
        Tensor dx = be.zeros(DType.F32, tokens, hidden);
        if (!c.expertsInBackward) {
            experts.beforeBackward();
        }
        c.expertsInBackward = false;
        experts.backward(be, dOut, c.experts, dx);
        experts.afterBackward();
        Tensor dLogits = be.empty(DType.F32, tokens, numExperts);
        be.routerBackward(dWeights, c.topIdx, c.topVal, c.probs, auxGrad, tokens, numExperts, topK, normTopk,
                dLogits);
        Release.all(be, dWeights, c.topIdx, c.topVal, c.probs);
        Linear.backward(be, dLogits, c.x, tokens, router, dx, 1f);
        be.release(dLogits);
        return dx; // c.x is the caller's; c.routerLogits stay with the pass (its router-logits output)
    }

    int topK() {
        return topK;
    }

    int numExperts() {
        return numExperts;
    }
}
