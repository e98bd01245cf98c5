package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.assertClose;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.roundedToBf16;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * The SwiGLU kernels ({@link Backend#siluMulForward}, {@link Backend#siluMulBackward}) on row blocks, against the CPU
 * (1e-6 of the largest value: the same f32 arithmetic), for every form: one contiguous row at an unaligned offset
 * (scalar) and an aligned one with a tail (float4), the column blocks of one [rows, 2I] tensor (the experts' layout,
 * float4 rows), padded rows, rows that start unaligned and widths that are no multiple of 4 (scalar), contiguous
 * [rows, cols] blocks (run as one row). A strided call gives the bits of the contiguous call on the same values; a
 * BF16 output (a grouped GEMM operand at bf16 precision, {@link CudaBackend#emptyGemmOperand}) receives the f32
 * kernel's values rounded to bf16 (nearest even), bit for bit, in every form; another output dtype, or dGate and dUp
 * in two dtypes, is refused by name. Skipped where no GPU is.
 */
class SiluMulKernelsTest {
    private static final int N = 5000;

    /** gate at gateOff and up at upOff, both in one tensor where fused, [rows, cols] blocks of row stride ld. */
    private record Blocks(int gateOff, int upOff, int rows, int cols, int ld, boolean fused, String what) {
        int span(int off) {
            return off + (rows - 1) * ld + cols;
        }

        /** The [rows, cols] block at off of a [.., ld] array, contiguous. */
        float[] gather(float[] a, int off) {
            float[] o = new float[rows * cols];
            for (int r = 0; r < rows; r++) {
                System.arraycopy(a, off + r * ld, o, r * cols, cols);
            }
            return o;
        }
    }

    private static final Blocks[] CASES = {
        new Blocks(123, 123, 1, 4000, 4000, false, "one row at an unaligned offset (scalar)"),
        new Blocks(124, 124, 1, 4002, 4002, false, "one aligned row with a tail of 2 (float4)"),
        new Blocks(0, 24, 100, 24, 48, true, "[100, 2 x 24] column blocks (float4 rows)"),
        new Blocks(4, 36, 60, 32, 72, true, "padded rows of 72 at an aligned offset (float4 rows)"),
        new Blocks(1, 23, 100, 22, 45, true, "rows that start unaligned (scalar)"),
        new Blocks(0, 22, 50, 22, 44, true, "rows of 22 in a stride of 44 (scalar)"),
        new Blocks(0, 0, 50, 22, 22, false, "contiguous [50, 22] (one row of 1100, float4)"),
    };

    private final CpuBackend cpu = new CpuBackend();
    private final Random r = new Random(5);

    private static float[] down(CudaBackend gpu, Tensor t) {
        return gpu.download(t).floats();
    }

    @Test
    void everyFormMatchesTheCpuAndTheContiguousCallBitForBit() {
        CudaBackend gpu = GpuTestSupport.backend();
        float[] g = rnd(r, N, 3), u = rnd(r, N, 1), d = rnd(r, N, 1);
        try (Backend.Scope scope = gpu.openScope()) {
            for (Blocks b : CASES) {
                int n = b.rows * b.cols;
                float[] upSrc = b.fused ? g : u;
                // the CPU on the blocks as they are
                Tensor cg = host(g, N), cu = b.fused ? cg : host(u, N);
                Tensor co = Tensor.zeros(DType.F32, n);
                cpu.siluMulForward(cg, b.gateOff, cu, b.upOff, b.rows, b.cols, b.ld, co);
                Tensor cdg = Tensor.zeros(DType.F32, N), cdu = b.fused ? cdg : Tensor.zeros(DType.F32, N);
                Tensor cd = host(java.util.Arrays.copyOf(d, n), n);
                cpu.siluMulBackward(cd, cg, b.gateOff, cu, b.upOff, b.rows, b.cols, b.ld, cdg, cdu);

                Tensor gg = gpu.upload(host(g, N)), gu = b.fused ? gg : gpu.upload(host(u, N));
                Tensor go = gpu.zeros(DType.F32, n);
                gpu.siluMulForward(gg, b.gateOff, gu, b.upOff, b.rows, b.cols, b.ld, go);
                assertClose(co.floats(), down(gpu, go), 1e-6, "forward, " + b.what);
                Tensor gdg = gpu.zeros(DType.F32, N), gdu = b.fused ? gdg : gpu.zeros(DType.F32, N);
                Tensor gd = gpu.upload(host(java.util.Arrays.copyOf(d, n), n));
                gpu.siluMulBackward(gd, gg, b.gateOff, gu, b.upOff, b.rows, b.cols, b.ld, gdg, gdu);
                // whole tensors: nothing written outside the blocks
                assertClose(cdg.floats(), down(gpu, gdg), 1e-6, "dGate, " + b.what);
                assertClose(cdu.floats(), down(gpu, gdu), 1e-6, "dUp, " + b.what);

                // the contiguous call on the same values
                float[] gate = b.gather(g, b.gateOff), up = b.gather(upSrc, b.upOff);
                Tensor fg = gpu.upload(host(gate, n)), fu = gpu.upload(host(up, n));
                Tensor fo = gpu.zeros(DType.F32, n), fdg = gpu.zeros(DType.F32, n), fdu = gpu.zeros(DType.F32, n);
                gpu.siluMulForward(fg, 0, fu, 0, b.rows, b.cols, b.cols, fo);
                gpu.siluMulBackward(gd, fg, 0, fu, 0, b.rows, b.cols, b.cols, fdg, fdu);
                assertSameBits(down(gpu, fo), down(gpu, go), "forward as the contiguous call, " + b.what);
                assertSameBits(down(gpu, fdg), b.gather(down(gpu, gdg), b.gateOff),
                        "dGate as the contiguous call, " + b.what);
                assertSameBits(down(gpu, fdu), b.gather(down(gpu, gdu), b.upOff),
                        "dUp as the contiguous call, " + b.what);
            }
        }
    }

    @Test
    void bf16OutputsGetTheF32ValuesRounded() {
        CudaBackend gpu = GpuTestSupport.backend();
        float[] g = rnd(r, N, 3), u = rnd(r, N, 1), d = rnd(r, N, 1);
        GpuTestSupport.atBf16(gpu, () -> {
            try (Backend.Scope scope = gpu.openScope()) {
                for (Blocks b : CASES) {
                    int n = b.rows * b.cols;
                    Tensor gg = gpu.upload(host(g, N)), gu = b.fused ? gg : gpu.upload(host(u, N));
                    Tensor gd = gpu.upload(host(java.util.Arrays.copyOf(d, n), n));
                    Tensor o32 = gpu.empty(DType.F32, n);
                    gpu.siluMulForward(gg, b.gateOff, gu, b.upOff, b.rows, b.cols, b.ld, o32);
                    Tensor dg32 = gpu.zeros(DType.F32, N), du32 = b.fused ? dg32 : gpu.zeros(DType.F32, N);
                    gpu.siluMulBackward(gd, gg, b.gateOff, gu, b.upOff, b.rows, b.cols, b.ld, dg32, du32);

                    Tensor o16 = gpu.emptyGemmOperand(n);
                    // one operand holding both blocks (the experts' [rows, 2I]), or one each
                    Tensor dg16 = gpu.emptyGemmOperand(N), du16 = b.fused ? dg16 : gpu.emptyGemmOperand(N);
                    for (Tensor t : new Tensor[] {o16, dg16, du16}) {
                        assertEquals(DType.BF16, t.dtype(), "a GEMM operand at bf16 is BF16, " + b.what);
                        assertEquals(2L * t.numel(), ((DeviceBuffer) t.deviceHandle()).bytes(), "2 bytes an element");
                    }
                    gpu.siluMulForward(gg, b.gateOff, gu, b.upOff, b.rows, b.cols, b.ld, o16);
                    gpu.siluMulBackward(gd, gg, b.gateOff, gu, b.upOff, b.rows, b.cols, b.ld, dg16, du16);
                    assertSameBits(roundedToBf16(down(gpu, o32)), down(gpu, o16), "forward, " + b.what);
                    assertSameBits(roundedToBf16(b.gather(down(gpu, dg32), b.gateOff)),
                            b.gather(down(gpu, dg16), b.gateOff), "dGate, " + b.what);
                    assertSameBits(roundedToBf16(b.gather(down(gpu, du32), b.upOff)),
                            b.gather(down(gpu, du16), b.upOff), "dUp, " + b.what);
                }
            }
        });
    }

    @Test
    void outputsOfAnotherDtypeAreRefusedNamingTheOp() {
        CudaBackend gpu = GpuTestSupport.backend();
        try (Backend.Scope scope = gpu.openScope()) {
            Tensor gu = gpu.zeros(DType.F32, 4, 16);
            Tensor dOut = gpu.zeros(DType.F32, 4, 8);
            Tensor f16 = gpu.zeros(DType.F16, 4, 8);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> gpu.siluMulForward(gu, 0, gu, 8, 4, 8, 16, f16));
            assertTrue(e.getMessage().contains("siluMulForward") && e.getMessage().contains("F16"), e.getMessage());
            Tensor gate = gpu.zeros(DType.F32, 4, 8), up = gpu.zeros(DType.F32, 4, 8);
            Tensor d16 = gpu.zeros(DType.BF16, 4, 8), d32 = gpu.zeros(DType.F32, 4, 8);
            e = assertThrows(IllegalArgumentException.class,
                    () -> gpu.siluMulBackward(dOut, gate, 0, up, 0, 4, 8, 8, d16, d32));
            assertTrue(e.getMessage().contains("siluMulBackward") && e.getMessage().contains("both F32 or both BF16"),
                    e.getMessage());
        }
    }

    @Test
    void geometryThatDoesNotFitIsRefusedBeforeALaunch() {
        CudaBackend gpu = GpuTestSupport.backend();
        try (Backend.Scope scope = gpu.openScope()) {
            Tensor gu = gpu.zeros(DType.F32, 4, 16);
            Tensor dGu = gpu.zeros(DType.F32, 4, 16);
            Tensor dOut = gpu.zeros(DType.F32, 4, 8);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> gpu.siluMulForward(gu, 0, gu, 9, 4, 8, 16, dOut));
            assertTrue(e.getMessage().contains("[9, 65)"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class,
                    () -> gpu.siluMulBackward(dOut, gu, 0, gu, 4, 4, 8, 16, dGu, dGu));
            assertTrue(e.getMessage().contains("overlap"), e.getMessage());
        }
    }
}
