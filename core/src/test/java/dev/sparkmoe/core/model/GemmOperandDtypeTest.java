package dev.sparkmoe.core.model;

import dev.sparkmoe.core.testing.TensorUses;
import dev.sparkmoe.core.testing.TokenBatch;
import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.TreeSet;
import org.junit.jupiter.api.Test;

/**
 * The experts' grouped GEMM operands ({@link Backend#emptyGemmOperand}: the routed rows, silu(gate) * up, the output
 * rows' gradient, the gate and up gradients) in the dtype the backend gives them, played on the CPU by a backend that
 * makes them BF16 as the CUDA backend does at bf16 precision and rounds what the writing ops put into them, as the
 * device kernels do. The model must ask for every such tensor through {@code emptyGemmOperand}, let only the ops
 * that write an operand and the grouped GEMMs touch it, hand the grouped GEMM the very tensor it got (no copy, no
 * conversion), and give each back; and its step must then be, bit for bit, the step of F32 operands rounded to bf16
 * where they are written, under every activation checkpointing mode (the recompute makes them again).
 */
class GemmOperandDtypeTest {
    static final int B = 2;
    static final int T = 6;

    /** The calls an operand may appear in, and in which argument positions. */
    private static final Map<String, int[]> ALLOWED = Map.of(
            "gatherRows", new int[] {5},           // dst
            "siluMulForward", new int[] {7},       // out
            "siluMulBackward", new int[] {8, 9},   // dGate, dUp
            "moeCombineBackward", new int[] {7},   // dRows
            "groupedGemm", new int[] {7, 10},      // a, b
            "groupedGemmSplitB", new int[] {6},    // a
            "release", new int[] {0});

    /** What the operand-making backend saw. */
    static final class Seen {
        final Map<Tensor, Boolean> operands = new IdentityHashMap<>(); // made -> read by a grouped GEMM
        final Set<String> writers = new TreeSet<>();
        final List<String> misuse = new ArrayList<>();
        int released;
    }

    record Step(double lm, double aux, Map<String, float[]> grads, Seen seen) {
    }

    /**
     * {@code inner} making GEMM operands in {@code dtype} and rounding each operand output of a writing op to bf16
     * (where {@code round}), as a device that holds them in bf16 writes them; recording every use of an operand.
     */
    private static Backend operands(Backend inner, DType dtype, boolean round, Seen seen) {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, method, args) -> {
                    String name = method.getName();
                    if (name.equals("emptyGemmOperand")) {
                        Tensor t = inner.empty(dtype, (int[]) args[0]);
                        seen.operands.put(t, false);
                        return t;
                    }
                    TensorUses.each(name, args, ALLOWED, seen.operands::containsKey, (t, i, ok) -> {
                        if (!ok) {
                            seen.misuse.add(name + " argument " + i + " " + t);
                        } else if (name.startsWith("groupedGemm")) {
                            seen.operands.put(t, true);
                        } else if (name.equals("release")) {
                            seen.released++;
                        } else {
                            seen.writers.add(name);
                        }
                    });
                    Object result;
                    try {
                        result = method.invoke(inner, args);
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    }
                    if (round && ALLOWED.containsKey(name) && !name.startsWith("groupedGemm")
                            && !name.equals("release")) {
                        for (int i : ALLOWED.get(name)) {
                            if (seen.operands.containsKey((Tensor) args[i])) {
                                roundToBf16((Tensor) args[i]);
                            }
                        }
                    }
                    return result;
                });
    }

    private static void roundToBf16(Tensor t) {
        float[] f = t.floats();
        for (int i = 0; i < f.length; i++) {
            f[i] = DType.roundToBf16(f[i]);
        }
    }

    static Step step(DType dtype, boolean round, ActivationCheckpointing mode) {
        Qwen3MoeConfig config = ActivationCheckpointingTest.config(false);
        Seen seen = new Seen();
        Backend be = MemoryTracker.wrap(operands(new CpuBackend(), dtype, round, seen));
        Qwen3MoeModel model = new Qwen3MoeModel(config, be);
        model.initRandom(21, 0.2);
        model.setActivationCheckpointing(mode);
        SplittableRandom r = new SplittableRandom(8);
        TokenBatch batch = TokenBatch.random(r, config.vocabSize(), B * T);
        int[] ids = batch.ids();
        int[] targets = batch.targets();
        Qwen3MoeModel.Pass pass = model.forward(ids, targets, B, T, B * T, 0.01, StatsReducer.LOCAL);
        model.backward(pass);
        Map<String, float[]> grads = new LinkedHashMap<>();
        for (Parameter p : model.parameters()) {
            grads.put(p.name(), p.grad().floats().clone());
        }
        return new Step(pass.lmLossSum(), pass.auxLoss(), grads, seen);
    }

    @Test
    void bf16OperandsArePassedThroughToTheGroupedGemmsAndGiveTheRoundedF32Step() {
        Step exact = step(DType.F32, false, ActivationCheckpointing.NONE);
        for (ActivationCheckpointing mode : ActivationCheckpointing.values()) {
            Step bf16 = step(DType.BF16, true, mode);
            Step rounded = step(DType.F32, true, mode);
            Seen s = bf16.seen;
            assertTrue(s.misuse.isEmpty(), mode + ": operands used outside their writers and the grouped GEMMs: "
                    + s.misuse);
            // two MoE layers: routed rows and silu * up forward; output gradient, gate and up gradients, silu * up
            // again and the routed rows again in backward
            assertTrue(s.operands.size() >= 2 * 6, mode + ": operands made: " + s.operands.size());
            assertFalse(s.operands.containsValue(false), mode + ": every operand is read by a grouped GEMM");
            assertEquals(s.operands.size(), s.released, mode + ": every operand given back");
            assertEquals(Set.of("gatherRows", "moeCombineBackward", "siluMulBackward", "siluMulForward"), s.writers,
                    mode + ": the ops that write operands");
            for (Tensor t : s.operands.keySet()) {
                assertEquals(DType.BF16, t.dtype(), mode + ": " + t);
            }
            assertEquals(Double.doubleToRawLongBits(rounded.lm), Double.doubleToRawLongBits(bf16.lm),
                    mode + ": lm loss " + bf16.lm + " vs " + rounded.lm);
            assertEquals(Double.doubleToRawLongBits(rounded.aux), Double.doubleToRawLongBits(bf16.aux),
                    mode + ": aux loss");
            for (String k : rounded.grads.keySet()) {
                assertSameBits(rounded.grads.get(k), bf16.grads.get(k), mode + ": grad " + k);
            }
            boolean moved = bf16.lm != exact.lm;
            for (String k : exact.grads.keySet()) {
                moved |= !java.util.Arrays.equals(exact.grads.get(k), bf16.grads.get(k));
            }
            assertTrue(moved, mode + ": the bf16 operands' rounding shows in the step");
        }
    }
}
