package dev.sparkmoe.core.optim;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The optimizer step over many tensors ({@link Backend#adamwStep}) is, on the CPU, exactly the passes it stands for:
 * the sums of squares of the gradients as given, the gradients scaled by the clipping coefficient, AdamW, and the
 * updated values converted into each compute copy; bad slots are refused by name before anything is updated.
 */
class AdamWStepTest {
    private final CpuBackend cpu = new CpuBackend();

    private static float[] random(SplittableRandom r, int n, double scale) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) (r.nextGaussian() * scale);
        }
        return a;
    }

    private List<Backend.AdamWSlot> slots(long seed, int[] lens, boolean[] copies) {
        SplittableRandom r = new SplittableRandom(seed);
        List<Backend.AdamWSlot> out = new ArrayList<>();
        for (int s = 0; s < lens.length; s++) {
            int n = lens[s];
            float[] v = random(r, n, 0.01);
            for (int i = 0; i < n; i++) {
                v[i] = Math.abs(v[i]);
            }
            out.add(new Backend.AdamWSlot(Tensor.of(random(r, n, 1), n), Tensor.of(random(r, n, 1), n),
                    Tensor.of(random(r, n, 0.1), n), Tensor.of(v, n), copies[s] ? Tensor.zeros(DType.BF16, n) : null));
        }
        return out;
    }

    @Test
    void theStepIsItsPassesOneAfterTheOther() {
        int[] lens = {37, 1000, 5};
        boolean[] copies = {true, false, true};
        for (float scale : new float[] {1f, 0.37f}) {
            List<Backend.AdamWSlot> fused = slots(3, lens, copies);
            List<Backend.AdamWSlot> passes = slots(3, lens, copies);
            double[] squares = new double[3];
            cpu.adamwStep(fused, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 4, scale, squares);
            List<Tensor> grads = new ArrayList<>();
            passes.forEach(s -> grads.add(s.grad()));
            double[] want = cpu.sumSquares(grads);
            for (Backend.AdamWSlot s : passes) {
                cpu.scale(s.grad(), scale);
                cpu.adamw(s.param(), s.grad(), s.m(), s.v(), s.param().numel(), 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 4);
                if (s.compute() != null) {
                    cpu.convert(s.param(), s.compute());
                }
            }
            assertArrayEquals(want, squares, "sums of squares of the gradients as given (scale " + scale + ")");
            for (int s = 0; s < 3; s++) {
                assertArrayEquals(passes.get(s).param().floats(), fused.get(s).param().floats(), "param " + s);
                assertArrayEquals(passes.get(s).m().floats(), fused.get(s).m().floats(), "m " + s);
                assertArrayEquals(passes.get(s).v().floats(), fused.get(s).v().floats(), "v " + s);
                if (copies[s]) {
                    assertArrayEquals(passes.get(s).compute().floats(), fused.get(s).compute().floats(), "copy " + s);
                    assertEquals(DType.BF16, fused.get(s).compute().dtype());
                }
            }
        }
    }

    @Test
    void badSlotsAreRefusedBeforeAnythingMoves() {
        List<Backend.AdamWSlot> ok = slots(5, new int[] {8, 6}, new boolean[] {false, false});
        float[] before = ok.get(0).param().floats().clone();
        List<Backend.AdamWSlot> bad = List.of(ok.get(0), new Backend.AdamWSlot(ok.get(1).param(), ok.get(1).grad(),
                ok.get(1).m(), ok.get(1).v(), Tensor.zeros(DType.BF16, 4)));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> cpu.adamwStep(bad, 1e-3f, 0.9f, 0.95f, 1e-8f, 0f, 1, 1f, null));
        assertTrue(e.getMessage().contains("slot 1") && e.getMessage().contains("6 elements"), e.getMessage());
        assertArrayEquals(before, ok.get(0).param().floats(), "slot 0 was not updated");
        IllegalArgumentException n = assertThrows(IllegalArgumentException.class,
                () -> cpu.adamwStep(ok, 1e-3f, 0.9f, 0.95f, 1e-8f, 0f, 1, 1f, new double[3]));
        assertTrue(n.getMessage().contains("3 sums of squares") && n.getMessage().contains("2 slots"), n.getMessage());
        assertArrayEquals(before, ok.get(0).param().floats(), "slot 0 was not updated");
    }
}
