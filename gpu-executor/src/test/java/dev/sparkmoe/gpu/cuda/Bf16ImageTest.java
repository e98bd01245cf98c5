package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * bf16 images ({@link CudaBackend#adoptBf16Images}): the bf16 values an FSDP bf16-wire all-gather leaves, adopted for
 * f32 ranges that are not written yet. The grouped GEMM must read them in place (no operand cast, no widening) and
 * give bit for bit what it gives on the widened f32 values; anything else that touches the f32 values must find them
 * widened exactly; the scratch must go back to the allocator with its last image, whichever way that image goes.
 * (The experts' activations are real BF16 tensors, {@link GemmOperandBf16Test}.) Skipped where no GPU is.
 */
class Bf16ImageTest {
    private static final int[] ROWS = {40, 0, 70, 9};
    private static final int E = ROWS.length, HIDDEN = 64, TOTAL = Arrays.stream(ROWS).sum();

    private final Random r = new Random(11);

    /** An f32 tensor of {@code values.length} elements, unwritten, holding the bf16 image of {@code values}. */
    private static Tensor imageOf(CudaBackend gpu, float[] values) {
        Tensor[] t = imagesOf(gpu, values);
        return t[0];
    }

    /** One unwritten f32 tensor per array, their images adopted from ONE scratch (as one gather leaves them). */
    private static Tensor[] imagesOf(CudaBackend gpu, float[]... values) {
        int n = values.length;
        Tensor[] src = new Tensor[n];
        Tensor[] target = new Tensor[n];
        long[] at = new long[n];
        long[] len = new long[n];
        long bytes = 0;
        for (int i = 0; i < n; i++) {
            src[i] = gpu.upload(host(values[i], values[i].length));
            target[i] = gpu.empty(DType.F32, values[i].length);
            at[i] = bytes;
            len[i] = values[i].length;
            bytes += (2L * values[i].length + 255) & ~255L;
        }
        Tensor scratch = gpu.empty(DType.F32, (int) (bytes / 4));
        long base = ((DeviceMemory) scratch.deviceHandle()).address();
        long[] from = new long[n];
        long[] zero = new long[n];
        for (int i = 0; i < n; i++) {
            at[i] += base;
            from[i] = ((DeviceMemory) src[i].deviceHandle()).address();
        }
        gpu.roundToBf16(from, at, len, gpu.stream());
        for (Tensor s : src) {
            gpu.release(s);
        }
        gpu.adoptBf16Images(target, zero, at, len, scratch);
        return target;
    }

    private static float[] rounded(float[] a) {
        return GpuTestSupport.roundedToBf16(a);
    }

    private static CudaBackend kernelBackend() {
        CudaBackend gpu = GpuTestSupport.backend();
        gpu.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
        return gpu;
    }

    /** The experts' forward (NT, B = [inter, hidden] per expert) and input gradient (NN, B = [hidden, inter]). */
    private static void gemm(CudaBackend gpu, boolean nt, int inter, Tensor x, Tensor w, Tensor c) {
        GpuTestSupport.ExpertLayout l = GpuTestSupport.ExpertLayout.of(ROWS, HIDDEN, inter);
        gpu.groupedGemm(false, nt, E, ROWS, l.in(), l.hid(), 1f, x, l.xOff(), HIDDEN, w, l.wOff(), nt ? HIDDEN : inter,
                0f, c, l.iOff(), inter);
    }

    @Test
    void theGroupedGemmReadsAnImageInPlaceAndGetsWhatTheWidenedWeightsGive() {
        CudaBackend gpu = kernelBackend();
        int inter = 40;
        float[] x = rnd(r, TOTAL * HIDDEN, 1);
        float[] w = rnd(r, E * HIDDEN * inter, 1);
        try (Backend.Scope scope = gpu.openScope()) {
            Tensor gx = gpu.upload(host(x, x.length));
            Tensor f32 = gpu.upload(host(w, w.length));
            for (boolean nt : new boolean[] {true, false}) {
                String shape = nt ? "NT" : "NN";
                Tensor image = imageOf(gpu, w);
                Tensor viaImage = gpu.empty(DType.F32, TOTAL * inter);
                Tensor viaCast = gpu.empty(DType.F32, TOTAL * inter);
                long[] before = gpu.imageCounts();
                long casts = gpu.operandCasts();
                gemm(gpu, nt, inter, gx, image, viaImage);
                long[] after = gpu.imageCounts();
                assertEquals(before[2] + 1, after[2], shape + ": B read from the image");
                assertEquals(before[1], after[1], shape + ": nothing widened");
                assertEquals(casts + 1, gpu.operandCasts(), shape + ": only A is cast");
                gpu.scale(viaCast, 0f); // a call in between: the next GEMM casts its own copies
                gemm(gpu, nt, inter, gx, gpu.upload(host(rounded(w), w.length)), viaCast);
                assertSameBits(gpu.download(viaCast).floats(), gpu.download(viaImage).floats(),
                        shape + ": the image against the widened weights");
                gemm(gpu, nt, inter, gx, f32, viaCast);
                assertSameBits(gpu.download(viaCast).floats(), gpu.download(viaImage).floats(),
                        shape + ": the image against the f32 weights the kernel rounds itself");

                // the f32 values, once read, are the exact widening, and from then on the weights are cast again
                assertSameBits(rounded(w), gpu.download(image).floats(), shape + ": the widened values");
                assertEquals(after[1] + 1, gpu.imageCounts()[1], shape + ": widened once, on the first read");
                long casts2 = gpu.operandCasts();
                gemm(gpu, nt, inter, gx, image, viaImage);
                assertEquals(casts2 + 2, gpu.operandCasts(), shape + ": A and B cast once the image is gone");
                assertEquals(after[2], gpu.imageCounts()[2], shape + ": no image read");
                assertSameBits(gpu.download(viaCast).floats(), gpu.download(viaImage).floats(),
                        shape + ": the widened values give the same product");
            }
        }
    }

    @Test
    void aLayoutTheKernelCannotReadInPlaceAndAnyOtherCallWidenFirst() {
        CudaBackend gpu = kernelBackend();
        int inter = 36; // rows of 72 bytes: not 16-byte aligned, so the kernel needs its own padded copy
        float[] x = rnd(r, TOTAL * HIDDEN, 1);
        float[] w = rnd(r, E * HIDDEN * inter, 1);
        try (Backend.Scope scope = gpu.openScope()) {
            Tensor gx = gpu.upload(host(x, x.length));
            Tensor image = imageOf(gpu, w);
            Tensor viaImage = gpu.empty(DType.F32, TOTAL * inter);
            Tensor viaRounded = gpu.empty(DType.F32, TOTAL * inter);
            long[] before = gpu.imageCounts();
            gemm(gpu, false, inter, gx, image, viaImage);
            assertEquals(before[2], gpu.imageCounts()[2], "not read in place");
            assertEquals(before[1] + 1, gpu.imageCounts()[1], "widened before the cast");
            gemm(gpu, false, inter, gx, gpu.upload(host(rounded(w), w.length)), viaRounded);
            assertSameBits(gpu.download(viaRounded).floats(), gpu.download(viaImage).floats(), "the fallback");

            // an elementwise call on an image's target widens it first, then applies
            float[] v = rnd(r, 1000, 3);
            Tensor t = imageOf(gpu, v);
            gpu.scale(t, 2f);
            float[] want = rounded(v);
            for (int i = 0; i < want.length; i++) {
                want[i] *= 2; // exact
            }
            assertSameBits(want, gpu.download(t).floats(), "scaled after widening");
        }
    }

    @Test
    void theScratchGoesBackWithItsLastImageWhicheverWayItGoes() {
        CudaBackend gpu = kernelBackend();
        float[] a = rnd(r, 5000, 1);
        float[] b = rnd(r, 777, 1);
        // released unread, one target after the other: the scratch stays while one image lives in it
        long start = gpu.memoryStats().bytesInUse();
        Tensor[] t = imagesOf(gpu, a, b);
        long live = gpu.memoryStats().bytesInUse();
        assertFalse(((DeviceBuffer) t[0].deviceHandle()).backed, "a wholly imaged target gives its f32 block back");
        gpu.release(t[0]);
        assertTrue(gpu.memoryStats().bytesInUse() > start, "b's image keeps the scratch");
        long widened = gpu.imageCounts()[1];
        gpu.release(t[1]);
        assertEquals(start, gpu.memoryStats().bytesInUse(), "targets and scratch all back (was " + live + ")");
        assertEquals(widened, gpu.imageCounts()[1], "nothing widened: nothing read");

        // reading one target widens the whole gather in one go and frees the scratch
        t = imagesOf(gpu, a, b);
        assertSameBits(rounded(b), gpu.download(t[1]).floats(), "b");
        assertEquals(widened + 2, gpu.imageCounts()[1], "both images widened together");
        assertTrue(((DeviceBuffer) t[0].deviceHandle()).backed, "backed again once widened");
        assertSameBits(rounded(a), gpu.download(t[0]).floats(), "a, widened with b");
        gpu.release(t[0]);
        gpu.release(t[1]);
        assertEquals(start, gpu.memoryStats().bytesInUse(), "after widening");

        // an image of part of a buffer: the rest keeps its values, and the block stays
        float[] pre = rnd(r, 3, 1);
        Tensor partial = gpu.upload(host(Arrays.copyOf(pre, 3 + b.length), 3 + b.length));
        Tensor src = gpu.upload(host(b, b.length));
        Tensor scratch = gpu.empty(DType.F32, b.length / 2 + 64);
        long s0 = ((DeviceMemory) scratch.deviceHandle()).address();
        gpu.roundToBf16(new long[] {((DeviceMemory) src.deviceHandle()).address()}, new long[] {s0},
                new long[] {b.length}, gpu.stream());
        gpu.release(src);
        gpu.adoptBf16Images(new Tensor[] {partial}, new long[] {3}, new long[] {s0}, new long[] {b.length}, scratch);
        assertTrue(((DeviceBuffer) partial.deviceHandle()).backed, "partly imaged: keeps its block");
        float[] want = new float[3 + b.length];
        System.arraycopy(pre, 0, want, 0, 3);
        System.arraycopy(rounded(b), 0, want, 3, b.length);
        assertSameBits(want, gpu.download(partial).floats(), "the head kept, the imaged range widened");
        gpu.release(partial);
        assertEquals(start, gpu.memoryStats().bytesInUse(), "after the partial image");

        // a scope closing over unread targets and their scratch
        Backend.Scope scope = gpu.openScope();
        imagesOf(gpu, a, b);
        scope.close();
        assertEquals(start, gpu.memoryStats().bytesInUse(), "after the scope");

        // the scratch in a scope that closes while its target lives on outside it: widened before it goes
        Tensor outside = gpu.empty(DType.F32, a.length);
        long withTarget = gpu.memoryStats().bytesInUse();
        scope = gpu.openScope();
        src = gpu.upload(host(a, a.length));
        scratch = gpu.empty(DType.F32, a.length / 2 + 64);
        s0 = ((DeviceMemory) scratch.deviceHandle()).address();
        gpu.roundToBf16(new long[] {((DeviceMemory) src.deviceHandle()).address()}, new long[] {s0},
                new long[] {a.length}, gpu.stream());
        gpu.adoptBf16Images(new Tensor[] {outside}, new long[] {0}, new long[] {s0}, new long[] {a.length}, scratch);
        scope.close();
        assertEquals(withTarget, gpu.memoryStats().bytesInUse(), "the scope's buffers, the scratch included, gone");
        assertSameBits(rounded(a), gpu.download(outside).floats(), "widened when its scratch went");
        gpu.release(outside);
        assertEquals(start, gpu.memoryStats().bytesInUse(), "at the end");
    }

    @Test
    void impossiblePartsAreRefusedByName() {
        CudaBackend gpu = GpuTestSupport.backend();
        long adopted = gpu.imageCounts()[0];
        try (Backend.Scope scope = gpu.openScope()) {
            Tensor target = gpu.empty(DType.F32, 100);
            Tensor scratch = gpu.empty(DType.F32, 64); // 256 bytes: 128 bf16 values
            long s0 = ((DeviceMemory) scratch.deviceHandle()).address();
            IllegalArgumentException past = assertThrows(IllegalArgumentException.class, () ->
                    gpu.adoptBf16Images(new Tensor[] {target}, new long[] {50}, new long[] {s0}, new long[] {60},
                            scratch));
            assertTrue(past.getMessage().contains("[50, 110)"), past.getMessage());
            IllegalArgumentException outside = assertThrows(IllegalArgumentException.class, () ->
                    gpu.adoptBf16Images(new Tensor[] {target}, new long[] {0}, new long[] {s0 + 100},
                            new long[] {100}, scratch));
            assertTrue(outside.getMessage().contains("inside the scratch"), outside.getMessage());
            assertEquals(adopted, gpu.imageCounts()[0], "nothing adopted");
            gpu.release(scratch); // still the caller's: a refused adoption does not take it
        }
    }
}
