package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.core.testing.Bits.assertSameBits;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.host;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.rnd;
import static dev.sparkmoe.gpu.cuda.GpuTestSupport.roundedToBf16;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.model.StatsReducer;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.testing.TokenBatch;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.SplittableRandom;
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
        CudaBackend.GemmPrecision precision = gpu.gemmPrecision();
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
        try (Backend.Scope scope = gpu.openScope()) {
            int srcRows = 300, n = 517;
            int[] index = new int[n];
            for (int i = 0; i < n; i++) {
                index[i] = r.nextInt(srcRows * 2); // slots of two per token (divisor 2)
            }
            Tensor idx = gpu.upload(Tensor.ofInts(index, n));
            for (int width : new int[] {64, 2048, 62}) { // the warp kernels, and rows that are not whole groups of 4
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
        } finally {
            gpu.setGemmPrecision(precision);
        }
    }

    // ------------------------------------------------------------------ a model step

    record Step(double lm, double aux, Map<String, float[]> grads, int bf16Norms) {
    }

    /**
     * {@code gpu} recording its BF16 norm outputs; with {@code viaF32} computing each in f32 and converting it, and
     * gathering from a BF16 source through its widened copy (the arithmetic of f32 norm outputs).
     */
    private static Backend recording(CudaBackend gpu, boolean viaF32, int[] bf16Norms) {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, method, args) -> {
                    String name = method.getName();
                    boolean residual = name.equals("residualRmsNormForward");
                    int at = residual ? 1 : 0; // the arguments after x (and the residual)
                    if ((residual || name.equals("rmsNormForward")) && ((Tensor) args[at + 5]).dtype() == DType.BF16) {
                        bf16Norms[0]++;
                        if (viaF32) {
                            Tensor x = (Tensor) args[0];
                            Tensor y = (Tensor) args[at + 5];
                            Tensor wide = gpu.empty(DType.F32, y.shape());
                            if (residual) {
                                gpu.axpy(1f, (Tensor) args[1], 0, x, 0, x.numel());
                            }
                            gpu.rmsNormForward(x, (Tensor) args[at + 1], (float) args[at + 2], (int) args[at + 3],
                                    (int) args[at + 4], wide, (Tensor) args[at + 6]);
                            gpu.convert(wide, y);
                            gpu.release(wide);
                            return null;
                        }
                    }
                    if (viaF32 && name.equals("gatherRows") && ((Tensor) args[0]).dtype() == DType.BF16) {
                        Tensor src = (Tensor) args[0];
                        Tensor wide = gpu.empty(DType.F32, src.shape());
                        gpu.convert(src, wide);
                        gpu.gatherRows(wide, (Tensor) args[1], (int) args[2], (int) args[3], (int) args[4],
                                (Tensor) args[5]);
                        gpu.release(wide);
                        return null;
                    }
                    try {
                        return method.invoke(gpu, args);
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    }
                });
    }

    private static Step step(CudaBackend gpu, boolean viaF32, Qwen3MoeConfig config, ActivationCheckpointing mode) {
        int b = 2, t = 32;
        int[] bf16Norms = {0};
        Backend be = recording(gpu, viaF32, bf16Norms);
        try (Backend.Scope scope = gpu.openScope()) {
            Qwen3MoeModel model = new Qwen3MoeModel(config, be);
            model.initRandom(21, 0.2);
            model.setActivationCheckpointing(mode);
            TokenBatch batch = TokenBatch.random(new SplittableRandom(8), config.vocabSize(), b * t);
            Qwen3MoeModel.Pass pass = model.forward(batch.ids(), batch.targets(), b, t, b * t,
                    config.routerAuxLossCoef(), StatsReducer.LOCAL);
            model.backward(pass);
            Map<String, float[]> grads = new LinkedHashMap<>();
            for (Parameter p : model.parameters()) {
                grads.put(p.name(), gpu.download(p.grad()).floats());
            }
            return new Step(pass.lmLossSum(), pass.auxLoss(), grads, bf16Norms[0]);
        }
    }

    @Test
    void aModelStepOnBf16NormOutputsIsTheStepOnF32OutputsConverted() {
        CudaBackend gpu = GpuTestSupport.backend();
        CudaBackend.GemmPrecision precision = gpu.gemmPrecision();
        gpu.setGemmPrecision(CudaBackend.GemmPrecision.BF16);
        try {
            Qwen3MoeConfig config = Qwen3MoeConfig.builder().vocabSize(256).hiddenSize(64).intermediateSize(96)
                    .moeIntermediateSize(32).numHiddenLayers(3).numAttentionHeads(4).numKeyValueHeads(2).headDim(64)
                    .numExperts(8).numExpertsPerTok(2).mlpOnlyLayers(List.of(0)).normTopkProb(true)
                    .maxPositionEmbeddings(64).ropeTheta(10000).rmsNormEps(1e-6).routerAuxLossCoef(0.01).build();
            for (ActivationCheckpointing mode : ActivationCheckpointing.values()) {
                Step viaF32 = step(gpu, true, config, mode);
                Step bf16 = step(gpu, false, config, mode);
                int passes = mode == ActivationCheckpointing.NONE ? 1 : 2;
                assertEquals(2 * 3 * passes, bf16.bf16Norms, mode + ": two BF16 norm outputs a layer and pass");
                assertTrue(Double.isFinite(bf16.lm) && bf16.lm > 0, mode + ": lm loss " + bf16.lm);
                assertEquals(Double.doubleToRawLongBits(viaF32.lm), Double.doubleToRawLongBits(bf16.lm),
                        mode + ": lm loss " + bf16.lm + " vs " + viaF32.lm);
                assertEquals(Double.doubleToRawLongBits(viaF32.aux), Double.doubleToRawLongBits(bf16.aux),
                        mode + ": aux loss");
                for (String k : viaF32.grads.keySet()) {
                    assertSameBits(viaF32.grads.get(k), bf16.grads.get(k), mode + ": grad " + k);
                }
            }
        } finally {
            gpu.setGemmPrecision(precision);
        }
    }
}
