package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.aligned16;

import dev.sparkmoe.core.optim.AdamW;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The optimizer step on the device: AdamW on a parameter shard and its moments in one pass (float4 where all four are
 * 16-byte aligned), with the coefficients the CPU reference computes ({@link AdamW.Coefficients}); given a BF16
 * compute copy of the shard, the same pass writes the updated values into it, rounded to nearest even (what
 * {@link CudaBackend#convert} would write after the step, without reading the shard again). Called under the
 * backend's lock.
 */
final class AdamWKernel {
    private static final String K = KernelLauncher.ADAMW;

    private final CudaMemory memory;
    private final KernelLauncher launcher;

    AdamWKernel(CudaMemory memory, KernelLauncher launcher) {
        this.memory = memory;
        this.launcher = launcher;
    }

    /** {@code compute}: null, or a BF16 tensor of the parameter's element count that receives the updated values. */
    void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, int n, float lr, float beta1, float beta2, float eps,
               float weightDecay, long step, Tensor compute) {
        if (compute != null && compute.numel() != param.numel()) {
            throw new IllegalArgumentException("adamw: the compute copy " + compute + " does not hold the "
                    + param.numel() + " elements of the parameter " + param);
        }
        if (n == 0) {
            return;
        }
        AdamW.Coefficients c = AdamW.Coefficients.of(lr, beta1, beta2, weightDecay, step);
        long pa = memory.addr(param, "param", 0, n), ga = memory.addr(grad, "grad", 0, n);
        long ma = memory.addr(m, "m", 0, n);
        long va = memory.addr(v, "v", 0, n);
        int doDecay = weightDecay != 0f ? 1 : 0;
        if (compute == null) {
            boolean vec = aligned16(pa, ga, ma, va);
            launcher.launch1D(K, vec ? "adamw_f32x4" : "adamw_f32", vec ? Math.max(n / 4, n % 4) : n, pa, ga, ma, va,
                    n, c.decay(), doDecay, c.w1(), beta2, c.w2(), c.stepSize(), c.bc2Sqrt(), eps);
            return;
        }
        long oa = memory.addrOf(compute, DType.BF16, "the compute copy", 0, n);
        boolean vec = aligned16(pa, ga, ma, va) && oa % 8 == 0;
        launcher.launch1D(K, vec ? "adamw_f32x4_bf16" : "adamw_f32_bf16", vec ? Math.max(n / 4, n % 4) : n, pa, ga,
                ma, va, oa, n, c.decay(), doDecay, c.w1(), beta2, c.w2(), c.stepSize(), c.bc2Sqrt(), eps);
    }
}
