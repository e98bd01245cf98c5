package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.ModuleHook;
import dev.sparkmoe.core.nn.Parameter;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The final norm and LM head form a module of their own ({@link LmHead}): it owns {@code model.norm.weight} and,
 * untied, {@code lm_head.weight} (tied, the LM head weight is the embedding's table); the embedding is a module of its
 * own too ({@link TokenEmbedding}, which owns {@code model.embed_tokens.weight}), the root owns nothing; the model's
 * parameter order is the one it had when the root owned all three; and forward and backward call the embedding's and
 * the head's hooks around their work, in execution order: the embedding first in forward and last in backward, the
 * head after the last layer in forward and first in backward, where it only hands over the gradients its forward
 * computed (the head's weights are no longer needed: the test poisons them after the forward).
 */
class LmHeadTest {

    static Qwen3MoeConfig config(boolean tied) {
        return Qwen3MoeGradCheckTest.tinyBuilder().normTopkProb(true).tieWordEmbeddings(tied).routerAuxLossCoef(0.01)
                .build();
    }

    @ParameterizedTest(name = "tied={0}")
    @ValueSource(booleans = {false, true})
    void headOwnsTheFinalNormAndAnUntiedLmHead(boolean tied) {
        Qwen3MoeModel model = new Qwen3MoeModel(config(tied), new CpuBackend());
        LmHead head = model.head();
        List<String> own = names(head.ownParameters());
        assertEquals(tied ? List.of("model.norm.weight") : List.of("model.norm.weight", "lm_head.weight"), own);
        assertEquals(List.of(), names(model.ownParameters()));
        assertEquals(List.of("model.embed_tokens.weight"), names(model.embedding().ownParameters()));
        assertEquals(TokenEmbedding.PATH, model.embedding().path());
        if (tied) {
            assertSame(model.embed, head.weight, "tied: the LM head weight is the embedding");
        }
        // embedding, final norm, LM head, then the layers: the order of the model before the head was a module
        List<String> expected = new ArrayList<>(List.of("model.embed_tokens.weight", "model.norm.weight"));
        if (!tied) {
            expected.add("lm_head.weight");
        }
        for (DecoderLayer l : model.layers()) {
            expected.addAll(names(l.parameters()));
        }
        assertEquals(expected, names(model.parameters()));
        assertEquals(expected, new ArrayList<>(model.namedParameters().keySet()));
        assertEquals(expected, new ArrayList<>(model.state().keySet()));
        assertEquals(List.of(model, model.embedding(), head, model.layers().get(0)), model.modules().subList(0, 4));
    }

    @ParameterizedTest(name = "tied={0}")
    @ValueSource(booleans = {false, true})
    void hooksRunAroundTheHeadInExecutionOrder(boolean tied) {
        Qwen3MoeModel model = new Qwen3MoeModel(config(tied), new CpuBackend());
        model.initRandom(3, 0.1);
        List<String> log = new ArrayList<>();
        List<Module> hooked = new ArrayList<>(List.of(model, model.embedding(), model.head()));
        hooked.addAll(model.layers());
        for (Module m : hooked) {
            m.addHook(new dev.sparkmoe.core.nn.LoggingHook(log, m));
        }
        // the head's hooks bracket its work: its gradients are complete at its afterBackward. Neither its backward
        // nor the embedding's reads a weight: made NaN after their forward (the head's, the tied table included),
        // they leave every gradient finite
        model.head().addHook(new ModuleHook() {
            @Override
            public void afterForward(Module x) {
                java.util.Arrays.fill(model.head().norm.value().floats(), Float.NaN);
                java.util.Arrays.fill(model.head().weight.value().floats(), Float.NaN);
            }

            @Override
            public void afterBackward(Module x) {
                for (Parameter p : model.head().ownParameters()) {
                    log.add("grad " + p.name() + " " + (p.hasGrad() && nonZero(p.grad().floats())));
                }
            }
        });
        if (!tied) {
            model.embedding().addHook(new ModuleHook() {
                @Override
                public void afterForward(Module x) {
                    java.util.Arrays.fill(model.embed.value().floats(), Float.NaN);
                }
            });
        }
        int[] ids = {1, 5, 9, 2, 7, 3};
        int[] targets = {5, 9, 2, 7, 3, -100};
        Qwen3MoeModel.Pass pass = model.forward(ids, targets, 1, 6, 5, 0.01, StatsReducer.LOCAL);
        model.backward(pass);
        List<String> expected = new ArrayList<>(List.of(
                "fwd+ root",
                "fwd+ model.embed_tokens", "fwd- model.embed_tokens",
                "fwd+ model.layers.0", "fwd- model.layers.0",
                "fwd+ model.layers.1", "fwd- model.layers.1",
                "fwd+ head", "fwd- head",
                "fwd- root",
                "bwd+ root",
                "bwd+ head"));
        // hooks added later run first in the after-hooks: the gradient check comes before the logger's "bwd- head"
        expected.add("grad model.norm.weight true");
        if (!tied) {
            expected.add("grad lm_head.weight true");
        }
        expected.addAll(List.of(
                "bwd- head",
                "bwd+ model.layers.1", "bwd- model.layers.1",
                "bwd+ model.layers.0", "bwd- model.layers.0",
                "bwd+ model.embed_tokens", "bwd- model.embed_tokens",
                "bwd- root"));
        assertEquals(expected, log);
        for (Parameter p : model.parameters()) {
            for (float g : p.grad().floats()) {
                assertTrue(Float.isFinite(g), "gradient of " + p.name() + " read a weight made NaN after its forward");
            }
        }
    }

    private static boolean nonZero(float[] f) {
        for (float v : f) {
            if (v != 0f && Float.isFinite(v)) {
                return true;
            }
        }
        return false;
    }

    private static List<String> names(List<Parameter> ps) {
        List<String> out = new ArrayList<>();
        for (Parameter p : ps) {
            out.add(p.name());
        }
        return out;
    }
}
