package dev.sparkmoe.core.testing;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.model.StatsReducer;
import dev.sparkmoe.core.nn.Parameter;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * One training step of a model (forward and backward on a random batch, fixed seeds): its losses and every
 * gradient, for the tests that compute a step two ways and hold them equal bit for bit.
 */
public record ModelStep(double lm, double aux, Map<String, float[]> grads) {
    /**
     * The step of {@code config} on {@code be} ({@code home}: the backend whose scope holds its tensors and that
     * downloads them; {@code be} itself or a wrapper of it) with {@code mode}, batch {@code b} x {@code t}.
     */
    public static ModelStep run(Backend home, Backend be, Qwen3MoeConfig config, ActivationCheckpointing mode, int b,
                                int t) {
        try (Backend.Scope scope = home.openScope()) {
            Qwen3MoeModel model = new Qwen3MoeModel(config, be);
            model.initRandom(21, 0.2);
            model.setActivationCheckpointing(mode);
            TokenBatch batch = TokenBatch.random(new SplittableRandom(8), config.vocabSize(), b * t);
            Qwen3MoeModel.Pass pass = model.forward(batch.ids(), batch.targets(), b, t, b * t,
                    config.routerAuxLossCoef(), StatsReducer.LOCAL);
            model.backward(pass);
            Map<String, float[]> grads = new LinkedHashMap<>();
            for (Parameter p : model.parameters()) {
                grads.put(p.name(), home.download(p.grad()).floats().clone());
            }
            return new ModelStep(pass.lmLossSum(), pass.auxLoss(), grads);
        }
    }

    /** {@code got} equals this step bit for bit: both losses and every gradient (and the loss is a real one). */
    public void assertSameBitsAs(ModelStep got, String what) {
        assertTrue(Double.isFinite(got.lm) && got.lm > 0, what + ": lm loss " + got.lm);
        assertEquals(Double.doubleToRawLongBits(lm), Double.doubleToRawLongBits(got.lm),
                what + ": lm loss " + got.lm + " vs " + lm);
        assertEquals(Double.doubleToRawLongBits(aux), Double.doubleToRawLongBits(got.aux), what + ": aux loss");
        assertEquals(grads.keySet(), got.grads.keySet(), what + ": the parameters");
        for (String k : grads.keySet()) {
            assertSameBits(grads.get(k), got.grads.get(k), what + ": grad " + k);
        }
    }
}
