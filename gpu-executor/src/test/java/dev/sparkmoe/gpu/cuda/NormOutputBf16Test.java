package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.roundedToBf16;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.testing.F32NormOutputs;
import dev.sparkmoe.core.testing.Intercept;
import dev.sparkmoe.core.testing.ModelStep;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * The decoder layers' norm outputs as BF16 tensors at bf16 precision ({@code GemmOperand.empty}): rmsNormForward into
 * a BF16 tensor writes the f32 kernel's output rounded to nearest even, bit for bit (rstd unchanged), on the vectorised
 * kernels (up to 2048 wide) and through the f32 scratch beyond them; the row gather from BF16 rows writes exactly
 * those values into BF16 and F32 rows, in its warp kernels and in its fallback; and a model step with BF16 norm
 * outputs is bit for bit the step whose norm outputs are computed in f32 and converted (what each GEMM's bf16 copy of
 * an f32 output held before), under every activation checkpointing mode. Skipped where no GPU is.
 */
class NormOutputBf16Test {
    private final Random r = new Random(23);

    @Test
    void aBf16NormOutputIsTheF32OutputRounded() {
        CudaBackend gpu = GpuTestSupport.backend();
        // {dim, rows}: 16 lanes, 32 lanes with 1, 8 and 16 float4 (the vectorised kernels), past 2048 and not whole
        // float4s (block per row into the scratch)
        for (int[] dr : new int[][] {{64, 300}, {128, 4096}, {1024, 700}, {2048, 513}, {2052, 65}, {6, 40}}) {
            int dim = dr[0], rows = dr[1];
            String what = "dim " + dim;
            try (Backend.Scope scope = gpu.openScope()) {
                Tensor x = gpu.upload(host(rnd(r, rows * dim, 3), rows, dim));
                Tensor w = gpu.upload(host(rnd(r, dim, 1), dim));
                Tensor y32 = gpu.empty(DType.F32, rows, dim);
                Tensor r32 = gpu.empty(DType.F32, rows);
                gpu.rmsNormForward(x, w, 1e-6f, rows, dim, y32, r32);
                Tensor y16 = gpu.empty(DType.BF16, rows, dim);
                Tensor r16 = gpu.empty(DType.F32, rows);
                gpu.synchronize();
                long before = gpu.memoryStats().bytesInUse();
                gpu.rmsNormForward(x, w, 1e-6f, rows, dim, y16, r16);
                gpu.synchronize();
                assertEquals(before, gpu.memoryStats().bytesInUse(), what + ": nothing left behind");
                assertSameBits(roundedToBf16(gpu.download(y32).floats()), gpu.download(y16).floats(), what + ": y");
                assertSameBits(gpu.download(r32).floats(), gpu.download(r16).floats(), what + ": rstd");
            }
        }
    }

    @Test
    void gatheringBf16RowsGivesTheirValuesExactly() {
        CudaBackend gpu = GpuTestSupport.backend();
        GpuTestSupport.atBf16(gpu, () -> {
            try (Backend.Scope scope = gpu.openScope()) {
                int srcRows = 300, n = 517;
                int[] index = new int[n];
                for (int i = 0; i < n; i++) {
                    index[i] = r.nextInt(srcRows * 2); // slots of two per token (divisor 2)
                }
                Tensor idx = gpu.upload(Tensor.ofInts(index, n));
                // the warp kernels, and rows that are not whole groups of 4
                for (int width : new int[] {64, 2048, 62}) {
                    String what = "width " + width;
                    Tensor wide = gpu.upload(host(roundedToBf16(rnd(r, srcRows * width, 2)), srcRows, width));
                    Tensor src = gpu.empty(DType.BF16, srcRows, width);
                    gpu.convert(wide, src); // exact: the values are bf16 already
                    Tensor expect = gpu.empty(DType.F32, n, width);
                    gpu.gatherRows(wide, idx, n, width, 2, expect);
                    float[] want = gpu.download(expect).floats();
                    Tensor to16 = gpu.emptyGemmOperand(n, width);
                    Tensor to32 = gpu.empty(DType.F32, n, width);
                    gpu.synchronize();
                    long before = gpu.memoryStats().bytesInUse();
                    gpu.gatherRows(src, idx, n, width, 2, to32);
                    gpu.synchronize();
                    assertEquals(before, gpu.memoryStats().bytesInUse(), what + ": nothing left behind");
                    assertSameBits(want, gpu.download(to32).floats(), what + ": into f32 rows");
                    if (to16.dtype() == DType.BF16) { // the grouped GEMM kernel's operands (not the cuBLAS loop's)
                        gpu.gatherRows(src, idx, n, width, 2, to16);
                        assertSameBits(want, gpu.download(to16).floats(), what + ": into bf16 rows");
                    }
                }
            }
        });
    }

    // ------------------------------------------------------------------ a model step

    /**
     * {@code gpu} counting its BF16 norm outputs; with {@code viaF32} computing each in f32 and converting it, and
     * gathering from a BF16 source through its widened copy (the arithmetic of f32 norm outputs).
     */
    private static Backend recording(CudaBackend gpu, boolean viaF32, int[] bf16Norms) {
        return Intercept.over(gpu, (name, args) -> {
            if (F32NormOutputs.bf16Output(name, args) != null) {
                bf16Norms[0]++;
            }
            return viaF32 ? F32NormOutputs.handle(gpu, name, args) : Intercept.PASS;
        });
    }

    @Test
    void aModelStepOnBf16NormOutputsIsTheStepOnF32OutputsConverted() {
        CudaBackend gpu = GpuTestSupport.backend();
        GpuTestSupport.atBf16(gpu, () -> {
            Qwen3MoeConfig config = GpuTestSupport.smallMoe(32, 10000);
            for (ActivationCheckpointing mode : ActivationCheckpointing.values()) {
                int[] viaF32Norms = {0}, bf16Norms = {0};
                ModelStep viaF32 = ModelStep.run(gpu, recording(gpu, true, viaF32Norms), config, mode, 2, 32);
                ModelStep bf16 = ModelStep.run(gpu, recording(gpu, false, bf16Norms), config, mode, 2, 32);
                int passes = mode == ActivationCheckpointing.NONE ? 1 : 2;
                assertEquals(2 * 3 * passes, bf16Norms[0], mode + ": two BF16 norm outputs a layer and pass");
                assertEquals(bf16Norms[0], viaF32Norms[0], mode + ": the same norms");
                viaF32.assertSameBitsAs(bf16, mode.toString());
            }
        });
    }
}
