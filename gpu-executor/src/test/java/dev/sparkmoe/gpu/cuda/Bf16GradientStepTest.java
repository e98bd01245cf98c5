package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.GpuTestSupport.assertClose;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The optimizer's reads of BF16 gradients on the device (FSDP2's gradient in the param dtype): {@link AdamWKernel}'s
 * {@code adamw_gbf16} kernels and the sums of squares of lists mixing F32 and BF16 tensors give, bit for bit, what the
 * F32 kernels give for F32 gradients holding the same values (the same forms: float4 where aligned, scalar where
 * not), and agree with the {@link CpuBackend} within the tolerances of {@link CudaBackendTest} (AdamW 1e-6, the
 * compute copy bit for bit {@code convert}'s). Tensors at element offsets that break the float4 forms' alignment are
 * views into a larger upload. Skipped where no GPU or CUDA library is present.
 */
class Bf16GradientStepTest {
    private final CpuBackend cpu = new CpuBackend();
    private CudaBackend gpu;
    private Random r;

    @BeforeEach
    void setUp() {
        gpu = GpuTestSupport.backend();
        r = new Random(15);
    }

    /**
     * A device tensor of {@code d} holding {@code values} (rounded to d) at element {@code shift} of a larger upload:
     * its address is {@code shift * elementBytes(d)} past an allocator block's start, to reach the scalar forms (or
     * a bf16 gradient's 8-byte alignment) that fresh allocations never do.
     */
    private Tensor at(DType d, float[] values, int shift) {
        float[] padded = new float[shift + values.length];
        System.arraycopy(values, 0, padded, shift, values.length);
        Tensor whole = gpu.upload(Tensor.ofFloating(d, padded, padded.length));
        if (shift == 0) {
            return whole;
        }
        DeviceBuffer b = (DeviceBuffer) whole.deviceHandle();
        long bytes = CudaMemory.elementBytes(d);
        DeviceBuffer view = new DeviceBuffer(b.address() + shift * bytes, values.length * bytes, 0, gpu, -1);
        return Tensor.onDevice(d, view, values.length);
    }

    private float[] down(Tensor t) {
        return gpu.download(t).floats();
    }

    private float[] bf16Values(int n, float scale) {
        float[] g = GpuTestSupport.rnd(r, n, scale);
        for (int i = 0; i < n; i++) {
            g[i] = DType.roundToBf16(g[i]);
        }
        return g;
    }

    /** One slot's values and where its tensors lie: the gradient's shift, and the others' (param, m, v, copy). */
    private record Case(int n, int gradShift, int shift, boolean copy, float[] p, float[] g, float[] m, float[] v) {
    }

    private Case slot(int n, int gradShift, int shift, boolean copy) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = Math.abs((float) r.nextGaussian()) * 0.01f;
        }
        return new Case(n, gradShift, shift, copy, GpuTestSupport.rnd(r, n, 1), bf16Values(n, 1),
                GpuTestSupport.rnd(r, n, 0.1f), v);
    }

    /**
     * The slots of {@code cases} on the device, the gradient in {@code gradDType} at its shift (a BF16 gradient at
     * element shift s lies 2s bytes in, an F32 one 4s: the same float4-or-scalar form for the shifts used), the
     * compute copies in {@code copyDType}.
     */
    private List<Backend.AdamWSlot> onDevice(List<Case> cases, DType gradDType, DType copyDType) {
        List<Backend.AdamWSlot> out = new ArrayList<>();
        for (Case c : cases) {
            out.add(new Backend.AdamWSlot(at(DType.F32, c.p, c.shift), at(gradDType, c.g, c.gradShift),
                    at(DType.F32, c.m, c.shift), at(DType.F32, c.v, c.shift),
                    c.copy ? at(copyDType, new float[c.n], c.shift) : null));
        }
        return out;
    }

    /**
     * adamwStep with BF16 gradients against F32 gradients of the same values on the device, bit for bit (parameter,
     * moments, compute copy, sums of squares), and against the CPU's step: slots of odd and even lengths, a length
     * below one float4, the float4 forms (fresh allocations; a bf16 gradient 8 bytes past a 16-byte boundary) and the
     * scalar ones (a gradient one element in; the parameter and moments one element in), with and without bf16
     * compute copies, with and without clipping and sums of squares. The BF16 gradients are only read.
     */
    @Test
    void aBf16GradientStepsBitForBitAsTheF32GradientOfTheSameValues() {
        List<Case> cases = List.of(slot(10_001, 0, 0, true), slot(10_000, 0, 0, false), slot(4_099, 1, 0, true),
                slot(5_003, 4, 0, false), slot(3, 0, 0, true), slot(2_053, 0, 1, true), slot(777, 3, 2, false));
        int count = cases.size();
        for (float scale : new float[] {1f, 0.37f}) {
            for (boolean measure : new boolean[] {false, true}) {
                String run = "(gradScale " + scale + (measure ? ", sums of squares)" : ")");
                List<Backend.AdamWSlot> g16 = onDevice(cases, DType.BF16, DType.BF16);
                List<Backend.AdamWSlot> g32 = onDevice(cases, DType.F32, DType.BF16);
                List<Backend.AdamWSlot> host = new ArrayList<>();
                for (Case c : cases) {
                    host.add(new Backend.AdamWSlot(Tensor.of(c.p.clone(), c.n), Tensor.ofFloating(DType.BF16,
                            c.g.clone(), c.n), Tensor.of(c.m.clone(), c.n), Tensor.of(c.v.clone(), c.n),
                            c.copy ? Tensor.zeros(DType.BF16, c.n) : null));
                }
                double[] s16 = measure ? new double[count] : null;
                double[] s32 = measure ? new double[count] : null;
                double[] sCpu = measure ? new double[count] : null;
                gpu.adamwStep(g16, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, scale, s16);
                gpu.adamwStep(g32, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, scale, s32);
                cpu.adamwStep(host, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, scale, sCpu);
                for (int s = 0; s < count; s++) {
                    Case c = cases.get(s);
                    String what = "slot " + s + " (" + c.n + " elements, gradient at +" + c.gradShift
                            + ", the rest at +" + c.shift + ") " + run;
                    float[] p16 = down(g16.get(s).param());
                    assertArrayEquals(down(g32.get(s).param()), p16, what + ": param, BF16 vs F32 gradient");
                    assertArrayEquals(down(g32.get(s).m()), down(g16.get(s).m()), what + ": m, BF16 vs F32 gradient");
                    assertArrayEquals(down(g32.get(s).v()), down(g16.get(s).v()), what + ": v, BF16 vs F32 gradient");
                    assertClose(host.get(s).param().floats(), p16, 1e-6, what + ": param vs the CPU");
                    assertClose(host.get(s).m().floats(), down(g16.get(s).m()), 1e-6, what + ": m vs the CPU");
                    assertClose(host.get(s).v().floats(), down(g16.get(s).v()), 1e-6, what + ": v vs the CPU");
                    if (c.copy) {
                        float[] copy = down(g16.get(s).compute());
                        assertArrayEquals(down(g32.get(s).compute()), copy, what + ": compute copy, BF16 vs F32");
                        for (int i = 0; i < c.n; i++) {
                            assertEquals(Float.floatToRawIntBits(DType.roundToBf16(p16[i])),
                                    Float.floatToRawIntBits(copy[i]), what + ": compute copy element " + i);
                        }
                    }
                    assertArrayEquals(c.g, down(g16.get(s).grad()), what + ": the BF16 gradient is only read");
                    if (measure) {
                        assertEquals(s32[s], s16[s], 0.0, what + ": sum of squares, BF16 vs F32 gradient");
                        assertEquals(sCpu[s], s16[s], 1e-12 * sCpu[s], what + ": sum of squares vs the CPU");
                    }
                }
            }
        }
    }

    /**
     * The other ways in: the single-tensor adamw (the step of one slot without clipping), and a compute copy of
     * another dtype (F32), which takes Backend's default step: sumSquares, then the BF16 gradient widened into an F32
     * copy and scaled there, adamw and convert; bit for bit what an F32 gradient of the same values gives.
     */
    @Test
    void theSingleTensorStepAndTheDefaultStepTakeBf16Gradients() {
        Case c = slot(6_007, 0, 0, true);
        List<Backend.AdamWSlot> g16 = onDevice(List.of(c), DType.BF16, DType.F32);
        List<Backend.AdamWSlot> g32 = onDevice(List.of(c), DType.F32, DType.F32);
        for (List<Backend.AdamWSlot> slots : List.of(g16, g32)) {
            Backend.AdamWSlot s = slots.get(0);
            gpu.adamw(s.param(), s.grad(), s.m(), s.v(), c.n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
        }
        assertArrayEquals(down(g32.get(0).param()), down(g16.get(0).param()), "adamw: param");
        assertArrayEquals(down(g32.get(0).v()), down(g16.get(0).v()), "adamw: v");
        double[] s16 = new double[1];
        double[] s32 = new double[1];
        gpu.adamwStep(g16, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 4, 0.37f, s16);
        gpu.adamwStep(g32, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 4, 0.37f, s32);
        assertArrayEquals(down(g32.get(0).param()), down(g16.get(0).param()), "default step: param");
        assertArrayEquals(down(g32.get(0).m()), down(g16.get(0).m()), "default step: m");
        assertArrayEquals(down(g32.get(0).compute()), down(g16.get(0).compute()), "default step: F32 compute copy");
        assertArrayEquals(s32, s16, "default step: sum of squares");
        assertArrayEquals(c.g, down(g16.get(0).grad()), "default step: the BF16 gradient keeps its values");
    }

    /**
     * Sums of squares of a list mixing F32 and BF16 tensors (sizes below, at and above a block, above the grid's
     * cap; aligned and not): one launch of the mixed kernel, bit for bit the sums of the same values as F32 tensors
     * (the f32 kernel), within 1e-10 of the CPU's; and past 65,535 tensors (one launch per tensor) the same.
     */
    @Test
    void sumSquaresOfAListMixingF32AndBf16() {
        int[] sizes = {1, 255, 256, 257, 70_001, 1_000_003, 3, 4_097};
        List<Tensor> mixed = new ArrayList<>();
        List<Tensor> f32 = new ArrayList<>();
        double[] cpuSums = new double[sizes.length];
        for (int i = 0; i < sizes.length; i++) {
            float[] v = bf16Values(sizes[i], 1 + i);
            cpuSums[i] = cpu.sumSquares(Tensor.ofFloating(DType.BF16, v.clone(), v.length));
            mixed.add(at(i % 2 == 0 ? DType.BF16 : DType.F32, v, i % 3));
            f32.add(at(DType.F32, v, 0));
        }
        double[] got = gpu.sumSquares(mixed);
        double[] want = gpu.sumSquares(f32);
        for (int i = 0; i < sizes.length; i++) {
            String what = "tensor " + i + " (" + mixed.get(i) + ", at +" + i % 3 + ")";
            assertEquals(want[i], got[i], 0.0, what + ": as the F32 tensor of the same values");
            assertEquals(cpuSums[i], got[i], Math.abs(cpuSums[i]) * 1e-10, what + ": vs the CPU");
            assertEquals(got[i], gpu.sumSquares(mixed.get(i)), 0.0, what + ": the single form");
        }

        int many = 65_540; // past grid y: sum_squares_partial(_bf16) per tensor, views of 3 elements into one upload
        float[] v = bf16Values(3 * many, 1);
        Tensor all16 = at(DType.BF16, v, 0);
        Tensor all32 = at(DType.F32, v, 0);
        long a16 = ((DeviceBuffer) all16.deviceHandle()).address();
        long a32 = ((DeviceBuffer) all32.deviceHandle()).address();
        List<Tensor> manyMixed = new ArrayList<>(many);
        List<Tensor> manyF32 = new ArrayList<>(many);
        for (int i = 0; i < many; i++) {
            boolean b = i % 2 == 0;
            long addr = b ? a16 + 6L * i : a32 + 12L * i;
            manyMixed.add(Tensor.onDevice(b ? DType.BF16 : DType.F32, new DeviceBuffer(addr, b ? 6 : 12, 0, gpu, -1),
                    3));
            manyF32.add(Tensor.onDevice(DType.F32, new DeviceBuffer(a32 + 12L * i, 12, 0, gpu, -1), 3));
        }
        double[] gotMany = gpu.sumSquares(manyMixed);
        double[] wantMany = gpu.sumSquares(manyF32);
        assertArrayEquals(wantMany, gotMany, "65,540 tensors mixing F32 and BF16");
        for (int i = 0; i < many; i += 4_097) {
            double e = cpu.sumSquares(Tensor.of(Arrays.copyOfRange(v, 3 * i, 3 * i + 3), 3));
            assertEquals(e, gotMany[i], Math.abs(e) * 1e-10, "tensor " + i + " of 65,540 vs the CPU");
        }
    }

    /** A gradient that is neither F32 nor BF16 is refused by name before anything moves; so is such a sum. */
    @Test
    void otherGradientDtypesAreRefused() {
        Case c = slot(64, 0, 0, false);
        List<Backend.AdamWSlot> ok = onDevice(List.of(c, slot(32, 0, 0, false)), DType.BF16, DType.BF16);
        Backend.AdamWSlot s1 = ok.get(1);
        Tensor f16 = at(DType.F16, new float[32], 0);
        List<Backend.AdamWSlot> bad = List.of(ok.get(0), new Backend.AdamWSlot(s1.param(), f16, s1.m(), s1.v(), null));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> gpu.adamwStep(bad, 1e-3f, 0.9f, 0.95f, 1e-8f, 0f, 1, 1f, new double[2]));
        assertTrue(e.getMessage().contains("slot 1") && e.getMessage().contains("F16")
                && e.getMessage().contains("must be F32 or BF16"), e.getMessage());
        assertArrayEquals(c.p, down(ok.get(0).param()), "slot 0 was not updated");
        IllegalArgumentException sq = assertThrows(IllegalArgumentException.class,
                () -> gpu.sumSquares(List.of(ok.get(0).grad(), f16)));
        assertTrue(sq.getMessage().contains("x[1]") && sq.getMessage().contains("F32 or BF16"), sq.getMessage());
    }
}
