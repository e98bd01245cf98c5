package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.Random;

import static dev.sparkmoe.gpu.cuda.GpuTestSupport.assertClose;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.roundedToBf16;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * BF16 device tensors (2 bytes an element; {@link CudaBackend#gemmDType}) against the CPU backend, which holds the
 * same bf16 values as f32: upload rounds and download widens exactly; {@code convert} both ways bit for bit with the
 * CPU (odd sizes and offsets take the scalar kernels, aligned ones the vector kernels); a GEMM on bf16 pairs (all
 * four transposes, offsets, strides, beta 0 and 1) against the CPU's f32 GEMM on the same values, 1e-5 (f32
 * accumulation both); the cross-entropy's bf16 gradient is the f32 kernel's rounded, bit for bit (block-per-row and
 * float4 kernels); and an F32 op given a BF16 tensor, or a GEMM on a mixed pair, is refused by name. Skipped where no
 * GPU or CUDA library is present.
 */
class Bf16TensorTest {
    private final CpuBackend cpu = new CpuBackend();
    private CudaBackend gpu;
    private Random r;

    @BeforeEach
    void setUp() {
        gpu = GpuTestSupport.backend();
        r = new Random(System.nanoTime());
    }

    private Tensor upBf16(float[] a, int... shape) {
        return gpu.upload(Tensor.ofFloating(DType.BF16, a.clone(), shape));
    }

    @Test
    void uploadRoundsDownloadWidensAndConvertMatchesTheCpu() {
        for (int n : new int[] {1, 7, 4096, 100_003}) {
            float[] f = rnd(r, n, 3);
            f[0] = Float.NaN;
            Tensor g16 = gpu.upload(Tensor.ofFloating(DType.BF16, f.clone(), n));
            Tensor back = gpu.download(g16);
            assertEquals(DType.BF16, back.dtype());
            float[] want = roundedToBf16(f);
            assertTrue(Float.isNaN(back.floats()[0]));
            assertArrayEquals(Arrays.copyOfRange(want, 1, n), Arrays.copyOfRange(back.floats(), 1, n), "n=" + n);

            Tensor g32 = gpu.upload(host(f.clone(), n));
            Tensor c16 = gpu.empty(DType.BF16, n);
            gpu.convert(g32, c16);
            Tensor cpu16 = Tensor.zeros(DType.BF16, n);
            cpu.convert(host(f.clone(), n), cpu16);
            // bit for bit but for the NaN's payload (the device's cvt.rn.bf16x2 writes the canonical 0x7fff)
            float[] gpu16 = gpu.download(c16).floats();
            assertTrue(Float.isNaN(gpu16[0]), "f32 -> bf16 keeps a NaN");
            assertArrayBits(cpu16.floats(), gpu16, "f32 -> bf16, n=" + n);
            Tensor w32 = gpu.empty(DType.F32, n);
            gpu.convert(c16, w32);
            float[] wide = gpu.download(w32).floats();
            assertTrue(Float.isNaN(wide[0]), "bf16 -> f32 keeps a NaN");
            assertArrayBits(cpu16.floats(), wide, "bf16 -> f32, n=" + n);
            if (n > 100_000) {
                long bytes = ((DeviceBuffer) c16.deviceHandle()).bytes();
                assertTrue(bytes >= 2L * n && bytes < 3L * n, "a BF16 tensor takes 2 bytes an element: " + bytes);
            }
        }
    }

    /** want and got hold the same bits from element 1 on (element 0 is the NaN). */
    private static void assertArrayBits(float[] want, float[] got, String what) {
        assertEquals(want.length, got.length, what);
        for (int i = 1; i < want.length; i++) {
            int w = Float.floatToRawIntBits(want[i]), g = Float.floatToRawIntBits(got[i]);
            if (w != g) {
                throw new AssertionError(what + ": element " + i + " is " + got[i] + " (0x" + Integer.toHexString(g)
                        + "), expected " + want[i] + " (0x" + Integer.toHexString(w) + ")");
            }
        }
    }

    @Test
    void gemmOnBf16PairsMatchesTheCpuOnTheSameValues() {
        int m = 37, n = 53, k = 71;
        for (boolean ta : new boolean[] {false, true}) {
            for (boolean tb : new boolean[] {false, true}) {
                int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 5;
                int aOff = 5, bOff = 7, cOff = 2;
                float[] a = roundedToBf16(rnd(r, aOff + (ta ? k : m) * lda, 1));
                float[] b = roundedToBf16(rnd(r, bOff + (tb ? n : k) * ldb, 1));
                float[] c = rnd(r, cOff + m * ldc, 1);
                for (float beta : new float[] {1f, 0f}) {
                    Tensor cc = host(c.clone(), c.length);
                    cpu.gemm(ta, tb, m, n, k, 0.7f, host(a, a.length), aOff, lda, host(b, b.length), bOff, ldb, beta,
                            cc, cOff, ldc);
                    Tensor gc = gpu.upload(host(c.clone(), c.length));
                    gpu.gemm(ta, tb, m, n, k, 0.7f, upBf16(a, a.length), aOff, lda, upBf16(b, b.length), bOff, ldb,
                            beta, gc, cOff, ldc);
                    assertClose(cc.floats(), gpu.download(gc).floats(), 1e-5,
                            "bf16 pair gemm ta=" + ta + " tb=" + tb + " beta=" + beta);
                }
            }
        }
        Tensor a32 = gpu.upload(host(new float[6], 2, 3));
        Tensor b16 = upBf16(new float[6], 3, 2);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> gpu.gemm(false, false, 2, 2, 3, 1f, a32, 0, 3, b16, 0, 2, 0f, gpu.empty(DType.F32, 4), 0, 2));
        assertTrue(e.getMessage().contains("F32 A, BF16 B") && e.getMessage().contains("convert"), e.getMessage());
    }

    @Test
    void crossEntropyWritesTheF32GradientRoundedToBf16() {
        for (int vocab : new int[] {5003, 5004}) { // block per row; float4
            int rows = 41;
            float[] l = rnd(r, rows * vocab, 4);
            int[] t = r.ints(rows, 0, vocab).toArray();
            t[3] = -100;
            Tensor g32 = gpu.empty(DType.F32, rows * vocab);
            double l32 = gpu.crossEntropy(gpu.upload(host(l, l.length)), gpu.upload(Tensor.ofInts(t.clone(), rows)),
                    rows, vocab, 0.01f, g32);
            Tensor g16 = gpu.empty(DType.BF16, rows * vocab);
            double l16 = gpu.crossEntropy(gpu.upload(host(l, l.length)), gpu.upload(Tensor.ofInts(t.clone(), rows)),
                    rows, vocab, 0.01f, g16);
            assertEquals(l32, l16, "the loss does not depend on the gradient's dtype (vocab " + vocab + ")");
            float[] want = roundedToBf16(gpu.download(g32).floats());
            float[] got = gpu.download(g16).floats();
            assertArrayEquals(want, got, "vocab " + vocab);
        }
    }

    /**
     * bf16 logits (a chunk the LM head's GEMM wrote in bf16) with the gradient written over them in bf16: the loss and
     * gradient of the f32 kernels on the same values (the logits widened exactly), and a BF16 C from a GEMM on bf16
     * pairs is the f32 product rounded once.
     */
    @Test
    void crossEntropyOnBf16LogitsInPlaceIsTheF32KernelsOnTheSameValues() {
        for (int vocab : new int[] {5003, 5004}) { // block per row; float4
            int rows = 41;
            float[] l = roundedToBf16(rnd(r, rows * vocab, 4));
            int[] t = r.ints(rows, 0, vocab).toArray();
            t[3] = -100;
            Tensor g16 = gpu.empty(DType.BF16, rows * vocab);
            double want = gpu.crossEntropy(gpu.upload(host(l.clone(), l.length)),
                    gpu.upload(Tensor.ofInts(t.clone(), rows)), rows, vocab, 0.01f, g16);
            Tensor in16 = gpu.upload(Tensor.ofFloating(DType.BF16, l.clone(), l.length));
            double got = gpu.crossEntropy(in16, gpu.upload(Tensor.ofInts(t.clone(), rows)), rows, vocab, 0.01f, in16);
            assertEquals(want, got, "the loss from bf16 logits (vocab " + vocab + ")");
            assertArrayEquals(gpu.download(g16).floats(), gpu.download(in16).floats(),
                    "the gradient written over the bf16 logits (vocab " + vocab + ")");
        }
        int m = 33, n = 40, k = 72;
        float[] a = roundedToBf16(rnd(r, m * k, 1)), b = roundedToBf16(rnd(r, k * n, 1));
        Tensor a16 = gpu.upload(Tensor.ofFloating(DType.BF16, a.clone(), m * k));
        Tensor b16 = gpu.upload(Tensor.ofFloating(DType.BF16, b.clone(), k * n));
        Tensor c32 = gpu.empty(DType.F32, m * n);
        Tensor c16 = gpu.empty(DType.BF16, m * n);
        gpu.gemm(false, false, m, n, k, 1f, a16, 0, k, b16, 0, n, 0f, c32, 0, n);
        gpu.gemm(false, false, m, n, k, 1f, a16, 0, k, b16, 0, n, 0f, c16, 0, n);
        float[] want = gpu.download(c32).floats(), got = gpu.download(c16).floats();
        for (int i = 0; i < want.length; i++) { // rounded once (cuBLAS may pick another kernel for a bf16 C)
            assertEquals(DType.roundToBf16(got[i]), got[i], "a BF16 C holds bf16 values");
            assertEquals(want[i], got[i], Math.abs(want[i]) / 256 + 1e-6, "C[" + i + "]: the f32 product, rounded");
        }
    }

    /**
     * The fused LM-head loss at bf16 precision (bf16 copies of the weight and the input, the chunk's gradient in
     * bf16) against the CPU backend taking the same bf16 path (its GEMM dtype answered as BF16): the same loss and
     * gradients up to f32 summation order and the odd gradient element rounded the other way.
     */
    @Test
    void theFusedLossOnBf16OperandsMatchesTheCpuOnTheSamePath() {
        int n = 300, h = 64, v = 5004, chunk = 128;
        float[] hid = rnd(r, n * h, 1);
        float[] w = rnd(r, v * h, 0.5f);
        int[] t = r.ints(n, 0, v).toArray();
        t[7] = -100;
        dev.sparkmoe.core.backend.Backend cpu16 = dev.sparkmoe.core.backend.Bf16Gemms.over(cpu);
        dev.sparkmoe.core.model.LmHeadLoss.Result want = dev.sparkmoe.core.model.LmHeadLoss.LOCAL.run(cpu16,
                host(hid.clone(), n, h), Tensor.ofInts(t.clone(), n), n, host(w.clone(), v, h), 1f / n, true, false,
                chunk);
        CudaBackend.GemmPrecision was = gpu.gemmPrecision();
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
        try {
            dev.sparkmoe.core.model.LmHeadLoss.Result got = dev.sparkmoe.core.model.LmHeadLoss.LOCAL.run(gpu,
                    gpu.upload(host(hid.clone(), n, h)), gpu.upload(Tensor.ofInts(t.clone(), n)), n,
                    gpu.upload(host(w.clone(), v, h)), 1f / n, true, false, chunk);
            assertEquals(want.lossSum(), got.lossSum(), 1e-5 * want.lossSum(), "loss");
            assertClose(want.dHidden().floats(), gpu.download(got.dHidden()).floats(), 1e-3, "dHidden");
            assertClose(want.dWeight().floats(), gpu.download(got.dWeight()).floats(), 1e-3, "dW");
        } finally {
            gpu.setGemmPrecision(was);
        }
    }

    @Test
    void f32OpsRefuseABf16TensorByName() {
        Tensor b16 = upBf16(new float[8], 8);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> gpu.scale(b16, 2f));
        assertTrue(e.getMessage().contains("BF16") && e.getMessage().contains("Backend.convert"), e.getMessage());
    }

    @Test
    void theGemmDtypeFollowsThePrecision() {
        CudaBackend.GemmPrecision was = gpu.gemmPrecision();
        try {
            gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
            assertEquals(DType.BF16, gpu.gemmDType());
            gpu.setGemmPrecision(CudaBackend.GemmPrecision.TF32);
            assertEquals(DType.F32, gpu.gemmDType());
            gpu.setGemmPrecision(CudaBackend.GemmPrecision.F32);
            assertEquals(DType.F32, gpu.gemmDType());
        } finally {
            gpu.setGemmPrecision(was);
        }
    }
}
