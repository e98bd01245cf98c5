package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.Bf16Gemms;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.testing.F32NormOutputs;
import dev.sparkmoe.core.testing.Intercept;
import dev.sparkmoe.core.testing.ModelStep;
import dev.sparkmoe.core.testing.TensorUses;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * The decoder layers' norm outputs in the GEMMs' dtype ({@code GemmOperand.empty}) on a backend whose GEMMs take bf16
 * operands, played on the CPU ({@link Bf16Gemms}): each is written rounded once by {@code rmsNormForward} and read
 * only by dense GEMMs and the experts' row gather, as it is (no copy), and given back; the final norm stays F32, and
 * so do the q and k norms (with rope) on a backend whose attention reads F32. The step is bit for bit the step in
 * which each such output is computed in f32 and then converted,
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
        // bf16 norm output -> the GEMMs and gathers reading it
        final Map<Tensor, Integer> outputs = new IdentityHashMap<>();
        final List<String> misuse = new ArrayList<>();
        int f32Norms;
        int ropeNorms; // the q and k norms (with rope), F32 on the CPU
        int released;
    }

    /**
     * {@code inner} recording every use of a bf16 norm output; with {@code viaF32}, each such output computed into an
     * f32 tensor and converted, and each gather from one reading its widened copy (the arithmetic of f32 outputs).
     */
    private static Backend recording(Backend inner, boolean viaF32, Seen seen) {
        return Intercept.over(inner, (name, args) -> {
            TensorUses.each(name, args, ALLOWED, seen.outputs::containsKey, (t, i, ok) -> {
                if (!ok) {
                    seen.misuse.add(name + " argument " + i + " " + t);
                } else if (name.equals("release")) {
                    seen.released++;
                } else if (!name.equals("rmsNormForward") && !name.equals("residualRmsNormForward")) {
                    seen.outputs.merge(t, 1, Integer::sum);
                }
            });
            if (name.equals("rmsNormRopeForward") && ((Tensor) args[8]).dtype() == DType.F32) {
                seen.ropeNorms++;
            }
            boolean norm = name.equals("rmsNormForward") || name.equals("residualRmsNormForward");
            Tensor y = F32NormOutputs.bf16Output(name, args);
            if (y != null) {
                seen.outputs.put(y, 0);
            } else if (norm) {
                seen.f32Norms++;
            }
            return viaF32 ? F32NormOutputs.handle(inner, name, args) : Intercept.PASS;
        });
    }

    /** The step on the recording backend, what it saw into {@code seen}. */
    static ModelStep step(boolean viaF32, ActivationCheckpointing mode, Seen seen) {
        Backend be = MemoryTracker.wrap(recording(Bf16Gemms.over(new CpuBackend()), viaF32, seen));
        return ModelStep.run(be, be, ActivationCheckpointingTest.config(false), mode, B, T);
    }

    @Test
    void normOutputsAreReadAsTheyAreAndGiveTheStepOfF32OutputsConverted() {
        int layers = ActivationCheckpointingTest.config(false).numHiddenLayers();
        for (ActivationCheckpointing mode : ActivationCheckpointing.values()) {
            Seen s = new Seen();
            ModelStep bf16 = step(false, mode, s);
            ModelStep viaF32 = step(true, mode, new Seen());
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
            viaF32.assertSameBitsAs(bf16, mode.toString());
        }
    }
}
