package dev.sparkmoe.core.model;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.Bf16Gemms;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.testing.TokenBatch;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The decoder layers' norm outputs in the GEMMs' dtype ({@code GemmOperand.empty}) on a backend whose GEMMs take bf16
 * operands, played on the CPU ({@link Bf16Gemms}): each is written rounded once by {@code rmsNormForward} and read
 * only by dense GEMMs and the experts' row gather, as it is (no copy), and given back; the final norm stays F32, and
 * so do the q and k norms (with rope) on a backend whose attention reads F32. The step is bit for bit the step in which each such output is computed in f32 and then converted,
 * which is what every GEMM on an f32 norm output read before (its bf16 copy), under every activation checkpointing
 * mode.
 */
class NormOutputDtypeTest {
    static final int B = 2;
    static final int T = 6;

    /** The calls a norm output may appear in, and in which argument positions. */
    private static final Map<String, int[]> ALLOWED = Map.of(
            "rmsNormForward", new int[] {5}, // y
            "residualRmsNormForward", new int[] {6}, // y
            "gemm", new int[] {6, 9},        // a, b
            "gatherRows", new int[] {0},     // src
            "release", new int[] {0});

    /** What the recording backend saw. */
    static final class Seen {
        final Map<Tensor, Integer> outputs = new IdentityHashMap<>(); // bf16 norm output -> GEMMs and gathers reading it
        final List<String> misuse = new ArrayList<>();
        int f32Norms;
        int ropeNorms; // the q and k norms (with rope), F32 on the CPU
        int released;
    }

    record Step(double lm, double aux, Map<String, float[]> grads, Seen seen) {
    }

    /**
     * {@code inner} recording every use of a bf16 norm output; with {@code viaF32}, each such output computed into an
     * f32 tensor and converted, and each gather from one reading its widened copy (the arithmetic of f32 outputs).
     */
    private static Backend recording(Backend inner, boolean viaF32, Seen seen) {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, method, args) -> {
                    String name = method.getName();
                    int[] allowed = ALLOWED.get(name);
                    for (int i = 0; args != null && i < args.length; i++) {
                        if (!(args[i] instanceof Tensor t) || !seen.outputs.containsKey(t)) {
                            continue;
                        }
                        boolean ok = false;
                        for (int a = 0; allowed != null && a < allowed.length; a++) {
                            ok |= allowed[a] == i;
                        }
                        if (!ok) {
                            seen.misuse.add(name + " argument " + i + " " + t);
                        } else if (name.equals("release")) {
                            seen.released++;
                        } else if (!name.equals("rmsNormForward") && !name.equals("residualRmsNormForward")) {
                            seen.outputs.merge(t, 1, Integer::sum);
                        }
                    }
                    if (name.equals("rmsNormRopeForward") && ((Tensor) args[8]).dtype() == DType.F32) {
                        seen.ropeNorms++;
                    }
                    boolean residual = name.equals("residualRmsNormForward");
                    if (residual || name.equals("rmsNormForward")) {
                        int at = residual ? 1 : 0; // the arguments after x (and the residual)
                        Tensor y = (Tensor) args[at + 5];
                        if (y.dtype() != DType.BF16) {
                            seen.f32Norms++;
                        } else {
                            seen.outputs.put(y, 0);
                            if (viaF32) {
                                Tensor x = (Tensor) args[0];
                                Tensor wide = inner.empty(DType.F32, y.shape());
                                if (residual) {
                                    inner.axpy(1f, (Tensor) args[1], 0, x, 0, x.numel());
                                }
                                inner.rmsNormForward(x, (Tensor) args[at + 1], (float) args[at + 2],
                                        (int) args[at + 3], (int) args[at + 4], wide, (Tensor) args[at + 6]);
                                inner.convert(wide, y);
                                inner.release(wide);
                                return null;
                            }
                        }
                    }
                    if (viaF32 && name.equals("gatherRows") && ((Tensor) args[0]).dtype() == DType.BF16) {
                        Tensor src = (Tensor) args[0];
                        Tensor wide = inner.empty(DType.F32, src.shape());
                        inner.convert(src, wide);
                        inner.gatherRows(wide, (Tensor) args[1], (int) args[2], (int) args[3], (int) args[4],
                                (Tensor) args[5]);
                        inner.release(wide);
                        return null;
                    }
                    try {
                        return method.invoke(inner, args);
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    }
                });
    }

    static Step step(boolean viaF32, ActivationCheckpointing mode) {
        Qwen3MoeConfig config = ActivationCheckpointingTest.config(false);
        Seen seen = new Seen();
        Backend be = MemoryTracker.wrap(recording(Bf16Gemms.over(new CpuBackend()), viaF32, seen));
        Qwen3MoeModel model = new Qwen3MoeModel(config, be);
        model.initRandom(21, 0.2);
        model.setActivationCheckpointing(mode);
        SplittableRandom r = new SplittableRandom(8);
        TokenBatch batch = TokenBatch.random(r, config.vocabSize(), B * T);
        Qwen3MoeModel.Pass pass = model.forward(batch.ids(), batch.targets(), B, T, B * T, 0.01, StatsReducer.LOCAL);
        model.backward(pass);
        Map<String, float[]> grads = new LinkedHashMap<>();
        for (Parameter p : model.parameters()) {
            grads.put(p.name(), p.grad().floats().clone());
        }
        return new Step(pass.lmLossSum(), pass.auxLoss(), grads, seen);
    }

    @Test
    void normOutputsAreReadAsTheyAreAndGiveTheStepOfF32OutputsConverted() {
        int layers = ActivationCheckpointingTest.config(false).numHiddenLayers();
        for (ActivationCheckpointing mode : ActivationCheckpointing.values()) {
            Step bf16 = step(false, mode);
            Step viaF32 = step(true, mode);
            Seen s = bf16.seen;
            assertTrue(s.misuse.isEmpty(), mode + ": norm outputs used outside the GEMMs and the row gather: "
                    + s.misuse);
            int passes = mode == ActivationCheckpointing.NONE ? 1 : 2; // the recompute norms again
            assertEquals(2 * layers * passes, s.outputs.size(), mode + ": bf16 norm outputs (two a layer)");
            assertEquals(1, s.f32Norms, mode + ": the final norm in f32");
            assertEquals(2 * layers * passes, s.ropeNorms, mode + ": the q and k norms (with rope) in f32");
            for (Map.Entry<Tensor, Integer> e : s.outputs.entrySet()) {
                assertTrue(e.getValue() > 0, mode + ": read by a GEMM or a gather: " + e.getKey());
            }
            assertEquals(s.outputs.size(), s.released, mode + ": every norm output given back");
            assertEquals(Double.doubleToRawLongBits(viaF32.lm), Double.doubleToRawLongBits(bf16.lm),
                    mode + ": lm loss " + bf16.lm + " vs " + viaF32.lm);
            assertEquals(Double.doubleToRawLongBits(viaF32.aux), Double.doubleToRawLongBits(bf16.aux),
                    mode + ": aux loss");
            for (String k : viaF32.grads.keySet()) {
                assertSameBits(viaF32.grads.get(k), bf16.grads.get(k), mode + ": grad " + k);
            }
        }
    }
}
