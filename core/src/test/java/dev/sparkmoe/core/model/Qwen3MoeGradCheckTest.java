package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.nn.Parameter;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Model-level finite-difference check: Qwen3MoeModel.backward's gradients against central differences of the total
 * loss lm_loss + coef * aux (computed from the Pass) on a tiny random config with a dense layer (mlp_only_layers),
 * an MoE layer (4 experts, top-2), tied embeddings, and norm_topk_prob off and on.
 *
 * <p>The forward is f32, so the step is 1e-3 (the f32 loss noise, ~1e-7 relative, then costs ~1e-4 / 2e-3 of the
 * gradient at most). For every parameter tensor the check takes its element of largest |gradient| and two random
 * elements; tolerance |analytic - numeric| <= 1e-2 * |numeric| + 2e-4. Top-k routing is piecewise constant: a
 * perturbation that changes any token's chosen experts is detected (the perturbed passes' expert ids are compared
 * with the base pass) and that element is skipped; at most a few may be.
 */
class Qwen3MoeGradCheckTest {
    private static final double STEP = 1e-3;
    private static final double COEF = 0.1;

    static Qwen3MoeConfig tinyConfig(boolean normTopk) {
        return tinyBuilder().normTopkProb(normTopk).tieWordEmbeddings(true).routerAuxLossCoef(COEF).build();
    }

    /** The tiny model's sizes (2 layers, the first dense, 4 experts of 2 per token), for the tests that use it. */
    static Qwen3MoeConfig.Builder tinyBuilder() {
        return Qwen3MoeConfig.builder()
                .vocabSize(32).hiddenSize(16).intermediateSize(24).moeIntermediateSize(8)
                .numHiddenLayers(2).numAttentionHeads(4).numKeyValueHeads(2).headDim(8)
                .numExperts(4).numExpertsPerTok(2)
                .mlpOnlyLayers(List.of(0))
                .maxPositionEmbeddings(16).ropeTheta(10000).rmsNormEps(1e-6);
    }

    record Batch(int[] ids, int[] targets, int b, int t, int predicted) {
    }

    static double totalLoss(Qwen3MoeModel.Pass p, int predicted) {
        return p.lmLossSum() / predicted + COEF * p.auxLoss();
    }

    static int[][] routing(Qwen3MoeModel.Pass p) {
        List<int[]> out = new ArrayList<>();
        for (DecoderLayer.Cache c : p.caches) {
            if (c.moe.topIdx != null) {
                out.add(c.moe.topIdx.ints().clone());
            }
        }
        return out.toArray(new int[0][]);
    }

    @ParameterizedTest(name = "norm_topk_prob={0}")
    @ValueSource(booleans = {false, true})
    void backwardMatchesCentralDifferences(boolean normTopk) {
        Qwen3MoeConfig cfg = tinyConfig(normTopk);
        Qwen3MoeModel model = new Qwen3MoeModel(cfg, new CpuBackend());
        model.initRandom(7, 0.25);
        SplittableRandom r = new SplittableRandom(99);
        for (Parameter p : model.parameters()) { // norms away from 1 so that their gradients are exercised
            if (p.name().endsWith("norm.weight")) {
                float[] f = p.value().floats();
                for (int i = 0; i < f.length; i++) {
                    f[i] = (float) (0.7 + 0.6 * r.nextDouble());
                }
            }
        }
        int b = 2;
        int t = 5;
        int[] ids = new int[b * t];
        int[] targets = new int[b * t];
        for (int i = 0; i < ids.length; i++) {
            ids[i] = r.nextInt(cfg.vocabSize());
            targets[i] = r.nextInt(cfg.vocabSize());
        }
        targets[t - 1] = -100;
        targets[2 * t - 1] = -100;
        int predicted = b * t - 2;

        Qwen3MoeModel.Pass base = model.forward(ids, targets, b, t, predicted, COEF, StatsReducer.LOCAL);
        int[][] baseRouting = routing(base);
        assertTrue(baseRouting.length == 1, "expected one MoE layer");
        model.backward(base);

        int checked = 0;
        int skipped = 0;
        List<String> failures = new ArrayList<>();
        for (Parameter p : model.parameters()) {
            float[] w = p.value().floats();
            float[] g = p.grad().floats();
            int argMax = 0;
            for (int i = 1; i < g.length; i++) {
                if (Math.abs(g[i]) > Math.abs(g[argMax])) {
                    argMax = i;
                }
            }
            int[] picks = {argMax, r.nextInt(g.length), r.nextInt(g.length)};
            for (int i : picks) {
                float keep = w[i];
                w[i] = (float) (keep + STEP);
                double up = w[i];
                Qwen3MoeModel.Pass plus = model.forward(ids, targets, b, t, predicted, COEF, StatsReducer.LOCAL);
                w[i] = (float) (keep - STEP);
                double down = w[i];
                Qwen3MoeModel.Pass minus = model.forward(ids, targets, b, t, predicted, COEF, StatsReducer.LOCAL);
                w[i] = keep;
                if (!Arrays.deepEquals(baseRouting, routing(plus)) || !Arrays.deepEquals(baseRouting, routing(minus))) {
                    skipped++;
                    continue;
                }
                double numeric = (totalLoss(plus, predicted) - totalLoss(minus, predicted)) / (up - down);
                double tol = 1e-2 * Math.abs(numeric) + 2e-4;
                checked++;
                if (!(Math.abs(numeric - g[i]) <= tol)) {
                    failures.add(p.name() + "[" + i + "]: numeric " + numeric + ", analytic " + g[i]);
                }
            }
        }
        if (!failures.isEmpty()) {
            fail(failures.size() + " of " + checked + " gradient elements differ: " + String.join("; ", failures));
        }
        int total = checked + skipped;
        assertTrue(skipped <= total / 10, "routing flipped for " + skipped + " of " + total + " perturbations");
        assertTrue(checked >= 3 * 10, "too few elements checked: " + checked);
    }
}
