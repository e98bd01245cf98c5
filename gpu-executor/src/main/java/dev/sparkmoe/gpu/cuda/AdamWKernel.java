package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.THREADS;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.aligned16;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.optim.AdamW;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.List;

/**
 * The optimizer step on the device: AdamW on a parameter shard and its moments in one pass (float4 where the
 * parameter, the moments and an F32 gradient are 16-byte aligned, a BF16 gradient 8-byte aligned), with the
 * coefficients the CPU reference computes ({@link AdamW.Coefficients}). The gradient is F32 or BF16 (FSDP2's gradient
 * in the param dtype: the {@code adamw_gbf16} kernels widen it as they read it, exactly, so it steps as the F32
 * gradient holding the same values, in half the gradient's bytes). The same pass reads the gradient times the clipping
 * coefficient, writes the updated values rounded to nearest even into a BF16
 * compute copy where one is given (what {@link CudaBackend#convert} would write after the step, without reading the
 * shard again), and, for a step that measures the gradient norm on its way, writes per-block sums of squares of the
 * gradient for {@link SquareSums} (a grid of at most {@link #NORM_BLOCKS_PER_SM} blocks an SM then). Called under the
 * backend's lock.
 */
final class AdamWKernel {
    private static final String K = KernelLauncher.ADAMW;
    /** Blocks an SM of a step that sums squares: grid-stride over the rest, few partials to add. */
    static final int NORM_BLOCKS_PER_SM = 32;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final KernelErrors errors;

    AdamWKernel(CudaDevice device, CudaMemory memory, KernelLauncher launcher, KernelErrors errors) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.errors = errors;
    }

    /** {@link Backend#adamwStep}: one launch per slot, then (squares) one for the sums. */
    void step(List<Backend.AdamWSlot> slots, float lr, float beta1, float beta2, float eps, float weightDecay,
              long step, float gradScale, double[] squares) {
        Backend.AdamWSlot.check(slots, squares);
        int count = slots.size();
        AdamW.Coefficients c = AdamW.Coefficients.of(lr, beta1, beta2, weightDecay, step);
        long[][] at = new long[count][];
        int[] grid = new int[count];
        long[] work = new long[count];
        for (int i = 0; i < count; i++) { // every address taken before anything runs
            Backend.AdamWSlot s = slots.get(i);
            at[i] = addresses(s, i);
            long n = s.param().numel();
            work[i] = vector(at[i]) ? Math.max(n / 4, n % 4) : n;
            grid[i] = KernelLauncher.blocksFor(work[i], THREADS);
            if (squares != null) {
                grid[i] = (int) Math.max(1, Math.min(grid[i], (long) NORM_BLOCKS_PER_SM * device.smCount()));
            }
        }
        SquareSums sums = squares != null ? new SquareSums(device, memory, launcher, errors, grid) : null;
        try {
            int doDecay = weightDecay != 0f ? 1 : 0;
            for (int i = 0; i < count; i++) {
                long[] a = at[i];
                int n = slots.get(i).param().numel();
                if (n == 0 && sums == null) {
                    continue;
                }
                long partial = sums == null ? 0L : sums.partials(i);
                boolean vec = vector(a);
                boolean g16 = a[5] != 0;
                if (a[4] == 0 && !g16) {
                    launcher.launch(K, vec ? "adamw_f32x4" : "adamw_f32", grid[i], 1, THREADS, 0, a[0], a[1], a[2],
                            a[3], n, c.decay(), doDecay, c.w1(), beta2, c.w2(), c.stepSize(), c.bc2Sqrt(), eps,
                            gradScale, partial);
                } else if (!g16) {
                    launcher.launch(K, vec ? "adamw_f32x4_bf16" : "adamw_f32_bf16", grid[i], 1, THREADS, 0, a[0],
                            a[1], a[2], a[3], a[4], n, c.decay(), doDecay, c.w1(), beta2, c.w2(), c.stepSize(),
                            c.bc2Sqrt(), eps, gradScale, partial);
                } else if (a[4] == 0) {
                    launcher.launch(K, vec ? "adamw_gbf16x4" : "adamw_gbf16", grid[i], 1, THREADS, 0, a[0], a[1],
                            a[2], a[3], n, c.decay(), doDecay, c.w1(), beta2, c.w2(), c.stepSize(), c.bc2Sqrt(), eps,
                            gradScale, partial);
                } else {
                    launcher.launch(K, vec ? "adamw_gbf16x4_bf16" : "adamw_gbf16_bf16", grid[i], 1, THREADS, 0,
                            a[0], a[1], a[2], a[3], a[4], n, c.decay(), doDecay, c.w1(), beta2, c.w2(), c.stepSize(),
                            c.bc2Sqrt(), eps, gradScale, partial);
                }
            }
            if (sums != null) {
                System.arraycopy(sums.finish(), 0, squares, 0, count);
            }
        } finally {
            if (sums != null) {
                sums.close();
            }
        }
    }

    /**
     * {param, grad, m, v, compute (0: none), gradient is BF16 (1) or F32 (0)} device addresses of slot i (its sizes and
     * dtypes checked already).
     */
    private long[] addresses(Backend.AdamWSlot s, int i) {
        Tensor p = s.param();
        long n = p.numel();
        if (n == 0) {
            return new long[6];
        }
        long oa = s.compute() == null ? 0 : memory.addrOf(s.compute(), DType.BF16, "the compute copy of slot " + i, 0, n);
        boolean g16 = s.grad().dtype() == DType.BF16;
        long ga = g16 ? memory.addrOf(s.grad(), DType.BF16, "grad " + i, 0, n)
                : memory.addr(s.grad(), "grad " + i, 0, n);
        return new long[] {memory.addr(p, "param " + i, 0, n), ga, memory.addr(s.m(), "m " + i, 0, n),
            memory.addr(s.v(), "v " + i, 0, n), oa, g16 ? 1 : 0};
    }

    /** Whether slot a takes the float4 form: four f32 (16 bytes) or four bf16 gradient values (8) at a time. */
    private static boolean vector(long[] a) {
        return aligned16(a[0], a[2], a[3]) && a[1] % (a[5] != 0 ? 8 : 16) == 0 && a[4] % 8 == 0;
    }
}
