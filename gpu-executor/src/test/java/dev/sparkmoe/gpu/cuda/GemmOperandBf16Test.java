package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.roundedToBf16;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.testing.Intercept;
import dev.sparkmoe.core.testing.ModelStep;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * The experts' grouped GEMM operands as real BF16 tensors ({@link CudaBackend#emptyGemmOperand} at bf16 precision with
 * the grouped GEMM kernel; F32 otherwise): 2 bytes an element; the row gather writes the f32 rows rounded to nearest
 * even, bit for bit, in its bf16 kernel and in its fallback for rows that are not whole float4s (which leaves the rest
 * of the tensor alone and gives its scratch back); the grouped GEMM reads such an operand in place where its blocks
 * are whole 16-byte rows, and widens it where not, giving bit for bit the product of the widened values and of the
 * f32 values it would round itself; other output dtypes are refused by name. And a whole model step on the GPU
 * gives the same losses and gradients, bit for bit, with BF16 operands as with F32 operands that the grouped GEMM
 * rounds as it reads them (the arithmetic of the bf16 image path these tensors replace), under every activation
 * checkpointing mode. (The SwiGLU outputs: {@code SiluMulKernelsTest}; the combine backward's: {@code
 * MoeCombineBf16RowsTest}, {@code CudaBackendTest}.) Skipped where no GPU is.
 */
class GemmOperandBf16Test {
    private static final int[] ROWS = {40, 0, 70, 9};
    private static final int E = ROWS.length, HIDDEN = 64, TOTAL = Arrays.stream(ROWS).sum();

    private final Random r = new Random(17);

    /** The experts' forward (NT): x [TOTAL, hidden] grouped by ROWS, w [E, inter, hidden], c [TOTAL, inter]. */
    private static void forward(CudaBackend gpu, int hidden, int inter, Tensor x, Tensor w, Tensor c) {
        GpuTestSupport.ExpertLayout l = GpuTestSupport.ExpertLayout.of(ROWS, hidden, inter);
        gpu.groupedGemm(false, true, E, ROWS, l.in(), l.hid(), 1f, x, l.xOff(), hidden, w, l.wOff(), hidden, 0f, c,
                l.iOff(), inter);
    }

    @Test
    void bf16AtBf16PrecisionWithTheKernelElseF32() {
        CudaBackend gpu = GpuTestSupport.backend();
        try (Backend.Scope scope = gpu.openScope()) {
            GpuTestSupport.atBf16(gpu, () -> {
                Tensor t = gpu.emptyGemmOperand(7, 24);
                assertEquals(DType.BF16, t.dtype());
                assertEquals(2L * 7 * 24, ((DeviceBuffer) t.deviceHandle()).bytes(), "2 bytes an element");
                assertEquals(DType.BF16, gpu.emptyGemmOperand(0, 24).dtype(), "an empty one too");
                gpu.setGroupedMode(CudaBackend.GroupedMode.LOOP); // cuBLAS products on f32 operands
                assertEquals(DType.F32, gpu.emptyGemmOperand(7, 24).dtype(), "the loop");
                gpu.setGroupedMode(CudaBackend.GroupedMode.KERNEL);
                gpu.setGemmPrecision(CudaBackend.GemmPrecision.F32);
                assertEquals(DType.F32, gpu.emptyGemmOperand(7, 24).dtype(), "exact f32 precision");
            });
        }
    }

    @Test
    void gatheredRowsAreTheF32RowsRoundedInBothForms() {
        CudaBackend gpu = GpuTestSupport.backend();
        int rows = TOTAL;
        int[] index = new int[rows];
        for (int i = 0; i < rows; i++) {
            index[i] = r.nextInt(300 * 2); // slots of two per token (divisor 2), in any order
        }
        GpuTestSupport.atBf16(gpu, () -> {
            try (Backend.Scope scope = gpu.openScope()) {
                Tensor idx = gpu.upload(Tensor.ofInts(index, rows));
                for (int width : new int[] {HIDDEN, HIDDEN - 2}) { // float4 rows (the bf16 kernel), and not
                    String what = "width " + width;
                    float[] h = rnd(r, 300 * width, 1);
                    Tensor hidden = gpu.upload(host(h, 300, width));
                    Tensor exact = gpu.empty(DType.F32, rows, width);
                    gpu.gatherRows(hidden, idx, rows, width, 2, exact);
                    // five rows more than the gather writes, holding known values
                    float[] tail = rnd(r, (rows + 5) * width, 1);
                    Tensor dst = gpu.emptyGemmOperand(rows + 5, width);
                    assertEquals(DType.BF16, dst.dtype(), what);
                    Tensor pre = gpu.upload(host(tail, tail.length));
                    gpu.convert(pre, dst);
                    gpu.release(pre);
                    gpu.synchronize();
                    long before = gpu.memoryStats().bytesInUse();
                    gpu.gatherRows(hidden, idx, rows, width, 2, dst);
                    gpu.synchronize();
                    assertEquals(before, gpu.memoryStats().bytesInUse(), what + ": nothing left behind");
                    float[] got = gpu.download(dst).floats();
                    assertSameBits(roundedToBf16(gpu.download(exact).floats()), Arrays.copyOf(got, rows * width),
                            what + ": the gathered rows");
                    assertSameBits(Arrays.copyOfRange(roundedToBf16(tail), rows * width, tail.length),
                            Arrays.copyOfRange(got, rows * width, got.length), what + ": the rows past n untouched");
                }
            }
        });
    }

    @Test
    void theGroupedGemmReadsABf16OperandInPlaceOrWidensItWithTheSameBits() {
        CudaBackend gpu = GpuTestSupport.backend();
        GpuTestSupport.atBf16(gpu, () -> {
            try (Backend.Scope scope = gpu.openScope()) {
                int inter = 40;
                for (int hidden : new int[] {HIDDEN, HIDDEN - 4}) { // rows of whole 16-byte chunks, and not
                    boolean inPlace = hidden % 8 == 0;
                    String what = "hidden " + hidden;
                    float[] x = rnd(r, TOTAL * hidden, 1);
                    float[] w = rnd(r, E * inter * hidden, 1);
                    Tensor weights = gpu.upload(host(w, w.length));
                    Tensor f32 = gpu.upload(host(x, x.length));
                    Tensor bf16 = gpu.emptyGemmOperand(TOTAL, hidden);
                    gpu.convert(f32, bf16);
                    Tensor viaBf16 = gpu.empty(DType.F32, TOTAL * inter);
                    Tensor viaF32 = gpu.empty(DType.F32, TOTAL * inter);
                    Tensor viaRounded = gpu.empty(DType.F32, TOTAL * inter);
                    long read = gpu.groupedBf16InPlace();
                    long casts = gpu.operandCasts();
                    forward(gpu, hidden, inter, bf16, weights, viaBf16);
                    assertEquals(read + (inPlace ? 1 : 0), gpu.groupedBf16InPlace(), what + ": read in place");
                    assertEquals(casts + (inPlace ? 1 : 2), gpu.operandCasts(), what + ": operands cast");
                    gpu.scale(viaF32, 0f); // a call in between: the next GEMM casts its own copies
                    forward(gpu, hidden, inter, f32, weights, viaF32);
                    assertSameBits(gpu.download(viaF32).floats(), gpu.download(viaBf16).floats(),
                            what + ": BF16 operand against the f32 values the kernel rounds itself");
                    forward(gpu, hidden, inter, gpu.upload(host(roundedToBf16(x), x.length)), weights, viaRounded);
                    assertSameBits(gpu.download(viaRounded).floats(), gpu.download(viaBf16).floats(),
                            what + ": BF16 operand against its widened values");
                }
            }
        });
    }

    @Test
    void operandOutputsOfAnotherDtypeAreRefusedNamingTheOp() {
        CudaBackend gpu = GpuTestSupport.backend();
        try (Backend.Scope scope = gpu.openScope()) {
            int tokens = 3, k = 2, width = 8, n = tokens * k;
            Tensor src = gpu.zeros(DType.F32, tokens, width);
            Tensor idx = gpu.upload(Tensor.ofInts(new int[] {0, 1, 2, 3, 4, 5}, n));
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> gpu.gatherRows(src, idx, n, width, k, gpu.zeros(DType.I32, n, width)));
            assertTrue(e.getMessage().contains("gatherRows") && e.getMessage().contains("I32"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> gpu.moeCombineBackward(src, gpu.zeros(DType.F32, n,
                    width), null, gpu.zeros(DType.F32, n), tokens, k, width, gpu.zeros(DType.F16, n, width),
                    gpu.zeros(DType.F32, n)));
            assertTrue(e.getMessage().contains("moeCombineBackward") && e.getMessage().contains("dRows")
                    && e.getMessage().contains("F16"), e.getMessage());
        }
    }

    // ------------------------------------------------------------------ a model step

    /** {@code gpu} making every GEMM operand an F32 tensor, which the grouped GEMM rounds into its bf16 copies. */
    private static Backend f32Operands(CudaBackend gpu) {
        return Intercept.over(gpu, (name, args) -> name.equals("emptyGemmOperand")
                ? gpu.empty(DType.F32, (int[]) args[0]) : Intercept.PASS);
    }

    @Test
    void aModelStepOnBf16OperandsIsTheStepOnF32OperandsTheKernelRounds() {
        CudaBackend gpu = GpuTestSupport.backend();
        GpuTestSupport.atBf16(gpu, () -> {
            for (int moeInter : new int[] {32, 36}) { // read in place; widened for the kernel (36 % 8 != 0)
                Qwen3MoeConfig config = GpuTestSupport.smallMoe(moeInter, 10000);
                for (ActivationCheckpointing mode : ActivationCheckpointing.values()) {
                    // the embedding's backward too: runs by id, no atomics
                    ModelStep.run(gpu, f32Operands(gpu), config, mode, 2, 32).assertSameBitsAs(
                            ModelStep.run(gpu, gpu, config, mode, 2, 32), "moe intermediate " + moeInter + ", " + mode);
                }
            }
        });
    }
}
