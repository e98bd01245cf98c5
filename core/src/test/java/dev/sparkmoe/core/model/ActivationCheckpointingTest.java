package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.nn.LoggingHook;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Activation checkpointing on one rank: full and selective give the losses and gradients of none bit for bit (the
 * recomputation runs the same kernels in the same order on the same inputs), over two accumulated micro-batches of a
 * model with a dense layer and two MoE layers, tied and untied; every module hook runs in the order of none (the
 * recomputation runs inside the backward hooks, with no forward hook); what a layer keeps after its forward is
 * exactly what the setting says (counted by {@link MemoryTracker}, which also fails the test if anything is used
 * after its release).
 */
class ActivationCheckpointingTest {
    static final int B = 2;
    static final int T = 6;

    static Qwen3MoeConfig config(boolean tied) {
        return Qwen3MoeGradCheckTest.tinyBuilder().numHiddenLayers(3).mlpOnlyLayers(List.of(0)).normTopkProb(true)
                .tieWordEmbeddings(tied).routerAuxLossCoef(0.01).build();
    }

    /** What one run produced: both micro-batches' losses, the accumulated gradients, the hook log. */
    record Run(double[] lm, double[] aux, Map<String, float[]> grads, List<String> log, long[] saved, long peak) {
    }

    static Run run(Qwen3MoeConfig config, ActivationCheckpointing mode) {
        Backend be = MemoryTracker.wrap(new CpuBackend());
        MemoryTracker mem = MemoryTracker.of(be);
        Qwen3MoeModel model = new Qwen3MoeModel(config, be);
        model.initRandom(21, 0.2);
        model.setActivationCheckpointing(mode);
        model.setLossChunkRows(5);
        List<String> log = new ArrayList<>();
        for (Module m : model.modules()) {
            m.addHook(new LoggingHook(log, m));
        }
        SplittableRandom r = new SplittableRandom(8);
        double[] lm = new double[2];
        double[] aux = new double[2];
        long[] saved = new long[2];
        long before = mem.liveBytes();
        mem.resetPeak();
        for (int micro = 0; micro < 2; micro++) {
            int[] ids = new int[B * T];
            int[] targets = new int[B * T];
            for (int i = 0; i < ids.length; i++) {
                ids[i] = r.nextInt(config.vocabSize());
                targets[i] = i % T == T - 1 ? -100 : r.nextInt(config.vocabSize());
            }
            long start = mem.liveBytes();
            Qwen3MoeModel.Pass pass = model.forward(ids, targets, B, T, 2 * B * (T - 1), 0.01 / 2,
                    StatsReducer.LOCAL);
            saved[micro] = mem.liveBytes() - start;
            lm[micro] = pass.lmLossSum();
            aux[micro] = pass.auxLoss();
            model.backward(pass);
        }
        Map<String, float[]> grads = new LinkedHashMap<>();
        for (Parameter p : model.parameters()) {
            grads.put(p.name(), p.grad().floats().clone());
        }
        return new Run(lm, aux, grads, log, saved, mem.peakBytes() - before);
    }

    @ParameterizedTest(name = "tied={0}")
    @ValueSource(booleans = {false, true})
    void fullAndSelectiveGiveTheSameBitsAsNone(boolean tied) {
        Qwen3MoeConfig config = config(tied);
        Run none = run(config, ActivationCheckpointing.NONE);
        for (ActivationCheckpointing mode : List.of(ActivationCheckpointing.FULL, ActivationCheckpointing.SELECTIVE)) {
            Run ac = run(config, mode);
            assertArrayEquals(none.lm, ac.lm, mode + ": lm loss");
            assertArrayEquals(none.aux, ac.aux, mode + ": aux loss");
            assertEquals(none.grads.keySet(), ac.grads.keySet());
            for (String k : none.grads.keySet()) {
                assertArrayEquals(none.grads.get(k), ac.grads.get(k), mode + ": grad " + k);
            }
            assertEquals(none.log, ac.log, mode + ": module hooks");
            assertTrue(ac.saved[0] < none.saved[0], mode + " saved " + ac.saved[0] + " B, none " + none.saved[0]);
        }
        assertTrue(none.grads.get("model.layers.2.mlp.experts.gate_proj")[0] != 0f);
        // no forward hook runs during a backward pass (the same log as none's): the recomputation runs inside
        // backward hooks
        boolean inBackward = false;
        for (String s : none.log) {
            inBackward = s.equals("bwd+ root") || (inBackward && !s.equals("bwd- root"));
            assertTrue(!(inBackward && s.startsWith("fwd")),
                    s + " in a backward pass:\n" + String.join("\n", none.log));
        }
        assertEquals(2, none.log.stream().filter(s -> s.equals("bwd+ root")).count());
    }

    /**
     * Bytes held after the forward pass, exactly: the pass's own (ids, targets, the aux gradient, and the head's
     * gradients, all made in its forward: the last layer's output gradient, the final norm's and the LM head's
     * weight gradients), plus per layer its input, plus per MoE layer its router logits
     * (returned by the pass), plus under selective each MoE layer's routing, dispatch permutations and slots.
     */
    @Test
    void aLayerKeepsWhatItsSettingSays() {
        Qwen3MoeConfig c = config(false);
        int n = B * T;
        int h = c.hiddenSize();
        int e = c.numExperts();
        int k = c.numExpertsPerTok();
        int layers = c.numHiddenLayers();
        int moeLayers = layers - 1;
        long pass = 4L * (2 * n + e + n * h + h + (long) c.vocabSize() * h);
        long full = pass + 4L * layers * n * h + 4L * moeLayers * n * e;
        // probs [N, E], top-k ids, values and weights [N*K], slots [N*K, H], the dispatch's slot order and each
        // slot's row [N*K]
        long selective = full + 4L * moeLayers * (n * e + 5L * n * k + (long) n * k * h);
        Run none = run(c, ActivationCheckpointing.NONE);
        Run fullRun = run(c, ActivationCheckpointing.FULL);
        Run selectiveRun = run(c, ActivationCheckpointing.SELECTIVE);
        assertEquals(full, fullRun.saved[0], "full");
        assertEquals(selective, selectiveRun.saved[0], "selective");
        assertTrue(none.saved[0] > selective, "none " + none.saved[0]);
        assertTrue(fullRun.peak < none.peak && selectiveRun.peak < none.peak,
                "peaks: none " + none.peak + ", selective " + selectiveRun.peak + ", full " + fullRun.peak);
    }

    @Test
    void settingsParseAndBadOnesSayWhatIsAccepted() {
        assertEquals(ActivationCheckpointing.SELECTIVE, ActivationCheckpointing.parse(" Selective"));
        assertEquals("full", ActivationCheckpointing.FULL.configName());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> ActivationCheckpointing.parse("partial"));
        assertTrue(e.getMessage().contains("'partial'") && e.getMessage().contains("none, full or selective"),
                e.getMessage());
        Qwen3MoeModel m = new Qwen3MoeModel(config(false), new CpuBackend());
        assertThrows(IllegalArgumentException.class, () -> m.setActivationCheckpointing(null));
    }

    /** Scoring: the forward pass's loss, no gradient anywhere, and nothing left behind but what the caller holds. */
    @Test
    void evaluateGivesTheForwardLossAndKeepsNothing() {
        Qwen3MoeConfig c = config(true);
        Backend be = MemoryTracker.wrap(new CpuBackend());
        MemoryTracker mem = MemoryTracker.of(be);
        Qwen3MoeModel model = new Qwen3MoeModel(c, be);
        model.initRandom(4, 0.2);
        model.setLossChunkRows(5);
        int[] ids = new int[B * T];
        int[] targets = new int[B * T];
        SplittableRandom r = new SplittableRandom(1);
        for (int i = 0; i < ids.length; i++) {
            ids[i] = r.nextInt(c.vocabSize());
            targets[i] = i == 3 ? -100 : r.nextInt(c.vocabSize());
        }
        long before = mem.liveBytes();
        double scored = model.evaluate(ids, targets, B, T);
        assertEquals(before, mem.liveBytes(), "bytes left by evaluate");
        for (Parameter p : model.parameters()) {
            assertTrue(!p.hasGrad(), p.name() + " got a gradient");
        }
        double trained = model.forward(ids, targets, B, T, 1, 0, StatsReducer.LOCAL).lmLossSum();
        assertEquals(trained, scored);
    }
}
