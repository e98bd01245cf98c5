package dev.sparkmoe.core.model;

import dev.sparkmoe.core.testing.TokenBatch;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.Bf16Gemms;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The whole model's step on a backend whose GEMMs take bf16 operands ({@link Backend#gemmDType}: CUDA at bf16
 * precision), played on the CPU ({@link Bf16Gemms}): the projections and the LM head read bf16 copies, so the losses
 * and gradients move from the f32 step's by bf16 rounding only (relative 1e-2, and not bit for bit: the copies were
 * read), and every copy is given back (the bytes live after the step are the f32 step's).
 */
class Bf16GemmOperandsTest {
    static final int B = 2;
    static final int T = 6;

    record Step(double lm, Map<String, Tensor> grads, long liveAfter) {
    }

    static Step step(boolean bf16) {
        Qwen3MoeConfig config = ActivationCheckpointingTest.config(false);
        CpuBackend cpu = new CpuBackend();
        Backend be = MemoryTracker.wrap(bf16 ? Bf16Gemms.over(cpu) : cpu);
        MemoryTracker mem = MemoryTracker.of(be);
        Qwen3MoeModel model = new Qwen3MoeModel(config, be);
        model.initRandom(21, 0.2);
        model.setLossChunkRows(5);
        SplittableRandom r = new SplittableRandom(8);
        TokenBatch batch = TokenBatch.random(r, config.vocabSize(), B * T);
        int[] ids = batch.ids();
        int[] targets = batch.targets();
        long before = mem.liveBytes();
        Qwen3MoeModel.Pass pass = model.forward(ids, targets, B, T, B * T, 0.01, StatsReducer.LOCAL);
        double lm = pass.lmLossSum();
        model.backward(pass);
        Map<String, Tensor> grads = new LinkedHashMap<>();
        for (Parameter p : model.parameters()) {
            grads.put(p.name(), p.grad());
        }
        return new Step(lm, grads, mem.liveBytes() - before);
    }

    @Test
    void bf16OperandsMoveTheStepByRoundingOnlyAndLeaveNothingBehind() {
        Step f32 = step(false);
        Step bf16 = step(true);
        assertNotEquals(f32.lm, bf16.lm, "the GEMMs read bf16 copies");
        assertEquals(f32.lm, bf16.lm, 1e-2 * f32.lm, "lm loss");
        for (String k : f32.grads.keySet()) {
            Fixtures.assertClose("grad " + k, f32.grads.get(k), bf16.grads.get(k), 5e-2);
        }
        assertTrue(f32.grads.get("model.layers.1.self_attn.q_proj.weight").maxAbs() > 0);
        assertEquals(f32.liveAfter, bf16.liveAfter, "bytes live after the step: every bf16 copy given back");
    }
}
