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
 * updated values converted into each compute copy; a BF16 gradient steps as the F32 gradient of the same values; bad
 * slots are refused by name before anything is updated.
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

    /**
     * {@code slots(seed, ...)} with every gradient rounded to bf16: as F32 tensors ({@code bf16} false) or as BF16
     * tensors holding the same values (where {@code bf16[s]}).
     */
    private List<Backend.AdamWSlot> bf16Valued(long seed, int[] lens, boolean[] copies, boolean[] bf16) {
        List<Backend.AdamWSlot> out = new ArrayList<>();
        List<Backend.AdamWSlot> base = slots(seed, lens, copies);
        for (int s = 0; s < base.size(); s++) {
            Backend.AdamWSlot b = base.get(s);
            float[] g = b.grad().floats().clone();
            Tensor grad = Tensor.ofFloating(bf16[s] ? DType.BF16 : DType.F32, g, g.length);
            if (!bf16[s]) {
                for (int i = 0; i < g.length; i++) {
                    g[i] = DType.roundToBf16(g[i]);
                }
            }
            out.add(new Backend.AdamWSlot(b.param(), grad, b.m(), b.v(), b.compute()));
        }
        return out;
    }

    /**
     * A BF16 gradient (FSDP2's gradient in the param dtype) gives, bit for bit, the parameter, moments, compute copy
     * and sum of squares that an F32 gradient holding the same values gives, with a clipping coefficient and without,
     * in a step mixing F32 and BF16 gradients; the BF16 gradients keep their dtype and their (bf16) values.
     */
    @Test
    void aBf16GradientStepsAsTheF32GradientOfTheSameValues() {
        int[] lens = {37, 1000, 5, 4100};
        boolean[] copies = {true, false, true, true};
        boolean[] bf16 = {true, true, false, true};
        boolean[] none = new boolean[lens.length];
        for (float scale : new float[] {1f, 0.37f, 3.1f}) {
            List<Backend.AdamWSlot> f32 = bf16Valued(8, lens, copies, none);
            List<Backend.AdamWSlot> mixed = bf16Valued(8, lens, copies, bf16);
            List<float[]> gradsBefore = new ArrayList<>();
            mixed.forEach(s -> gradsBefore.add(s.grad().floats().clone()));
            double[] want = new double[lens.length];
            double[] got = new double[lens.length];
            cpu.adamwStep(f32, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 4, scale, want);
            cpu.adamwStep(mixed, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 4, scale, got);
            assertArrayEquals(want, got, "sums of squares (scale " + scale + ")");
            for (int s = 0; s < lens.length; s++) {
                String what = "slot " + s + " (scale " + scale + ", " + mixed.get(s).grad().dtype() + " gradient)";
                assertArrayEquals(f32.get(s).param().floats(), mixed.get(s).param().floats(), what + ": param");
                assertArrayEquals(f32.get(s).m().floats(), mixed.get(s).m().floats(), what + ": m");
                assertArrayEquals(f32.get(s).v().floats(), mixed.get(s).v().floats(), what + ": v");
                if (copies[s]) {
                    assertArrayEquals(f32.get(s).compute().floats(), mixed.get(s).compute().floats(), what + ": copy");
                }
                if (bf16[s]) {
                    Tensor g = mixed.get(s).grad();
                    assertEquals(DType.BF16, g.dtype(), what);
                    for (float x : g.floats()) {
                        assertEquals(Float.floatToRawIntBits(DType.roundToBf16(x)), Float.floatToRawIntBits(x),
                                what + ": the gradient holds bf16 values");
                    }
                    assertArrayEquals(gradsBefore.get(s), g.floats(), what + ": the BF16 gradient is not scaled");
                }
            }
            assertTrue(want[1] > 0, "the sums are measured");
        }
        // the single-tensor step and the sums of squares on their own
        List<Backend.AdamWSlot> f32 = bf16Valued(9, new int[] {333}, new boolean[1], new boolean[] {false});
        List<Backend.AdamWSlot> b16 = bf16Valued(9, new int[] {333}, new boolean[1], new boolean[] {true});
        for (List<Backend.AdamWSlot> l : List.of(f32, b16)) {
            Backend.AdamWSlot s = l.get(0);
            cpu.adamw(s.param(), s.grad(), s.m(), s.v(), 333, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 2);
        }
        assertArrayEquals(f32.get(0).param().floats(), b16.get(0).param().floats(), "adamw: param");
        assertArrayEquals(f32.get(0).v().floats(), b16.get(0).v().floats(), "adamw: v");
        assertEquals(cpu.sumSquares(f32.get(0).grad()), cpu.sumSquares(b16.get(0).grad()), 0.0, "sumSquares");
        assertArrayEquals(cpu.sumSquares(List.of(f32.get(0).grad(), b16.get(0).grad())),
                new double[] {cpu.sumSquares(f32.get(0).grad()), cpu.sumSquares(f32.get(0).grad())},
                "sumSquares of a list mixing F32 and BF16");
    }

    /** Scaling a BF16 tensor rounds each product to bf16: the tensor keeps holding values of its dtype. */
    @Test
    void scalingABf16TensorRoundsItsProducts() {
        float[] x = {1f, 1.0078125f, -3.140625f, 0.33203125f, 1e-3f};
        Tensor t = Tensor.ofFloating(DType.BF16, x.clone(), x.length);
        float[] rounded = t.floats().clone();
        cpu.scale(t, 0.37f);
        for (int i = 0; i < x.length; i++) {
            assertEquals(DType.roundToBf16(rounded[i] * 0.37f), t.floats()[i], 0f, "element " + i);
        }
        Tensor ints = Tensor.ofInts(new int[] {1, 2}, 2);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> cpu.scale(ints, 2f));
        assertTrue(e.getMessage().contains("I32") && e.getMessage().contains("floating"), e.getMessage());
    }

    /** A gradient of another dtype, or a parameter or moment that is not F32, is refused by name. */
    @Test
    void gradientsOfOtherDtypesAreRefused() {
        List<Backend.AdamWSlot> ok = slots(6, new int[] {8, 6}, new boolean[] {false, false});
        float[] before = ok.get(0).param().floats().clone();
        Backend.AdamWSlot s1 = ok.get(1);
        for (DType d : new DType[] {DType.F16, DType.I32}) {
            Tensor g = Tensor.zeros(d, 6);
            List<Backend.AdamWSlot> bad = List.of(ok.get(0),
                    new Backend.AdamWSlot(s1.param(), g, s1.m(), s1.v(), null));
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> cpu.adamwStep(bad, 1e-3f, 0.9f, 0.95f, 1e-8f, 0f, 1, 0.5f, new double[2]));
            assertTrue(e.getMessage().contains("slot 1") && e.getMessage().contains(d.toString())
                    && e.getMessage().contains("must be F32 or BF16"), e.getMessage());
            assertArrayEquals(before, ok.get(0).param().floats(), "slot 0 was not updated");
            IllegalArgumentException single = assertThrows(IllegalArgumentException.class,
                    () -> cpu.adamw(s1.param(), g, s1.m(), s1.v(), 6, 1e-3f, 0.9f, 0.95f, 1e-8f, 0f, 1));
            assertTrue(single.getMessage().contains("must be F32 or BF16"), single.getMessage());
            IllegalArgumentException sq = assertThrows(IllegalArgumentException.class, () -> cpu.sumSquares(g));
            assertTrue(sq.getMessage().contains(d.toString()) && sq.getMessage().contains("F32 or BF16"),
                    sq.getMessage());
        }
        Tensor bf16Moment = Tensor.zeros(DType.BF16, 6);
        List<Backend.AdamWSlot> bad = List.of(new Backend.AdamWSlot(s1.param(), s1.grad(), s1.m(), bf16Moment, null));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> cpu.adamwStep(bad, 1e-3f, 0.9f, 0.95f, 1e-8f, 0f, 1, 1f, null));
        assertTrue(e.getMessage().contains("slot 0: the v") && e.getMessage().contains("must be F32"), e.getMessage());
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
