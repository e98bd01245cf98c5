package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.THREADS;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.aligned16;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.blocksFor;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.rowThreads;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.DoublePointer;
import org.bytedeco.javacpp.IntPointer;

/**
 * The MoE layer's routing and token movement: the router's softmax, top-k (a warp per row up to 256 experts) and
 * backward, the load-balancing statistics, grouping the routed slots by expert on the device (a stable counting sort:
 * only the expert counts come back to the host), the row gathers and scatters between tokens and experts (the gather
 * writes an F32 or a BF16 output: a grouped GEMM operand, {@link CudaBackend#emptyGemmOperand}) and the weighted
 * combine of the experts' outputs with its backward (whose dRows is F32 or BF16 likewise). Out-of-range ids and
 * indices are recorded in the error word ({@link KernelErrors}). Called under the backend's lock.
 */
final class MoeRouting {
    private static final String K = KernelLauncher.MOE_ROUTING;
    /** router_topk_warp's experts per lane (TOPK_EPL in moe_routing.cu). */
    private static final int TOPK_EPL = 8;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final KernelErrors errors;
    private final Elementwise elementwise;

    MoeRouting(CudaDevice device, CudaMemory memory, KernelLauncher launcher, KernelErrors errors,
               Elementwise elementwise) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.errors = errors;
        this.elementwise = elementwise;
    }

    void softmaxRows(Tensor x, int rows, int cols, Tensor out) {
        if (rows == 0) {
            return;
        }
        long n = (long) rows * cols;
        launcher.launch(K, "softmax_rows", blocksFor(32L * rows, THREADS), 1, THREADS, 0, memory.addr(x, "x", 0, n),
                rows, cols, memory.addr(out, "out", 0, n));
    }

    void routerTopK(Tensor probs, int rows, int experts, int k, boolean normalize, Tensor topIdx, Tensor topVal,
                    Tensor weights) {
        CudaMemory.requireI32(topIdx, "topIdx");
        if (rows == 0) {
            return;
        }
        if (k > experts) {
            throw new IllegalArgumentException("routerTopK: k (" + k + ") is larger than the number of experts ("
                    + experts + ")");
        }
        long nk = (long) rows * k;
        if (experts <= 32 * TOPK_EPL) {
            launcher.launch(K, "router_topk_warp", blocksFor(32L * rows, THREADS), 1, THREADS, 0,
                    memory.addr(probs, "probs", 0, (long) rows * experts), rows, experts, k, normalize ? 1 : 0,
                    memory.addr(topIdx, "topIdx", 0, nk), memory.addr(topVal, "topVal", 0, nk),
                    memory.addr(weights, "weights", 0, nk));
            return;
        }
        launcher.launch(K, "router_topk", blocksFor(rows, 128), 1, 128, 0,
                memory.addr(probs, "probs", 0, (long) rows * experts), rows, experts, k, normalize ? 1 : 0,
                memory.addr(topIdx, "topIdx", 0, nk), memory.addr(topVal, "topVal", 0, nk),
                memory.addr(weights, "weights", 0, nk));
    }

    /**
     * On the device: {@code expert_counts} tallies each expert's slots (per-block tallies in shared memory), then
     * {@code expert_rows} (a block per expert) writes each expert's slots in slot order from the prefix sum of the
     * counts on; only the E counts come back to the host, instead of the N * K ids going out and a permutation of as
     * many coming back, with a host sort between the two (the device idles while the host sorts).
     */
    int[] groupByExpert(Tensor expertOfSlot, int n, int experts, Tensor slotOfRow) {
        CudaMemory.requireI32(expertOfSlot, "expertOfSlot");
        CudaMemory.requireI32(slotOfRow, "slotOfRow");
        if (experts <= 0) {
            throw new IllegalArgumentException("groupByExpert: " + experts + " experts");
        }
        int[] counts = new int[experts];
        if (n == 0) {
            return counts;
        }
        long ids = memory.addr(expertOfSlot, "expertOfSlot", 0, n);
        long rows = memory.addr(slotOfRow, "slotOfRow", 0, n);
        Tensor c = memory.scratch(DType.I32, experts);
        try {
            long ca = memory.addr(c, "counts", 0, experts);
            Cuda.check(cudart.cudaMemsetAsync(RawPointer.of(ca, 0), 0, 4L * experts, device.stream()),
                    "cudaMemsetAsync(counts)");
            launcher.launch(K, "expert_counts", blocksFor(n, THREADS), 1, THREADS, 4 * experts, ids, (long) n, experts,
                    ca, errors.address());
            launcher.launch(K, "expert_rows", experts, 1, 1024, 0, ids, (long) n, experts, ca, rows);
            try (IntPointer h = new IntPointer(experts)) {
                Cuda.check(cudart.cudaMemcpyAsync(h, RawPointer.of(ca, 0), 4L * experts,
                        cudart.cudaMemcpyDeviceToHost, device.stream()), "cudaMemcpyAsync(expert counts -> host)");
                errors.syncAndCheck(); // an expert id outside [0, experts) throws here, naming it
                h.get(counts);
            }
        } finally {
            memory.release(c);
        }
        return counts;
    }

    void routerStats(Tensor topIdx, Tensor probs, int rows, int experts, int k, double[] stats) {
        CudaMemory.requireI32(topIdx, "topIdx");
        if (stats.length < 2 * experts) {
            throw new IllegalArgumentException("routerStats: stats has " + stats.length + " entries, needs 2E = "
                    + 2 * experts);
        }
        Tensor acc = memory.scratch(DType.I64, 2 * experts); // doubles
        try {
            long a = memory.addr(acc, "stats", 0, 2L * experts);
            Cuda.check(cudart.cudaMemsetAsync(RawPointer.of(a, 0), 0, 16L * experts, device.stream()),
                    "cudaMemsetAsync(stats)");
            long nk = (long) rows * k;
            if (nk > 0) {
                launcher.launch1D(K, "router_stats_counts", nk, memory.addr(topIdx, "topIdx", 0, nk), (int) nk,
                        experts, a, errors.address());
                launcher.launch(K, "router_stats_colsum", experts, 1, THREADS, 0,
                        memory.addr(probs, "probs", 0, (long) rows * experts), rows, experts, a);
            }
            try (DoublePointer h = new DoublePointer(2L * experts)) {
                Cuda.check(cudart.cudaMemcpyAsync(h, RawPointer.of(a, 0), 16L * experts,
                        cudart.cudaMemcpyDeviceToHost, device.stream()), "cudaMemcpyAsync(stats -> host)");
                errors.syncAndCheck();
                for (int i = 0; i < 2 * experts; i++) {
                    stats[i] += h.get(i);
                }
            }
        } finally {
            memory.release(acc);
        }
    }

    void routerBackward(Tensor dWeights, Tensor topIdx, Tensor topVal, Tensor probs, Tensor auxGrad, int rows,
                        int experts, int k, boolean normalize, Tensor dLogits) {
        CudaMemory.requireI32(topIdx, "topIdx");
        if (rows == 0) {
            return;
        }
        long nk = (long) rows * k;
        long ne = (long) rows * experts;
        int warps = 4;
        launcher.launch(K, "router_bwd", (rows + warps - 1) / warps, 1, 32 * warps, 4 * warps * experts,
                memory.addr(dWeights, "dWeights", 0, nk), memory.addr(topIdx, "topIdx", 0, nk),
                memory.addr(topVal, "topVal", 0, nk), memory.addr(probs, "probs", 0, ne),
                memory.addr(auxGrad, "auxGrad", 0, experts), rows, experts, k, normalize ? 1 : 0,
                memory.addr(dLogits, "dLogits", 0, ne));
    }

    /** 1 when rows of {@code width} floats at these base addresses can move as float4 (16-byte aligned rows). */
    private static int rowVector(int width, long a, long b) {
        return width % 4 == 0 && a % 16 == 0 && b % 16 == 0 ? 1 : 0;
    }

    /** Threads for one row copy: one per float4 (or float), a multiple of 32, at most 256. */
    private static int rowThreadsFor(int width, int vec) {
        int units = vec == 1 ? width / 4 : width;
        return Math.max(32, Math.min(256, (units + 31) / 32 * 32));
    }

    /**
     * {@link dev.sparkmoe.core.backend.Backend#gatherRows}: dst F32 (copied), or BF16 (a grouped GEMM operand, each
     * value rounded to nearest even): written by the bf16 warp kernel where rows are whole float4s (width a multiple
     * of 4), else gathered into an f32 scratch and converted (the same rounding). Any other dst dtype is refused.
     */
    void gatherRows(Tensor src, Tensor index, int n, int width, int divisor, Tensor dst) {
        CudaMemory.requireI32(index, "index");
        boolean bf16 = CudaMemory.operandOutput(dst, "gatherRows", "dst");
        if (n == 0 || width == 0) {
            return;
        }
        int srcRows = src.numel() / width;
        if (src.dtype() == DType.BF16) {
            gatherBf16Rows(src, srcRows, index, n, width, divisor, dst, bf16);
            return;
        }
        long from = memory.addr(src, "src", 0, (long) srcRows * width);
        if (bf16) {
            long to16 = memory.addrOf(dst, DType.BF16, "dst", 0, (long) n * width);
            if (width % 4 == 0 && from % 16 == 0 && to16 % 8 == 0) {
                launcher.launch(K, "gather_rows_warp_bf16", blocksFor(32L * n, THREADS), 1, THREADS, 0, from,
                        srcRows, memory.addr(index, "index", 0, n), n, width, divisor, to16, errors.address());
                return;
            }
            elementwise.viaF32(dst, to16, (long) n * width, rows -> gatherRows(src, index, n, width, divisor, rows));
            return;
        }
        long to = memory.addr(dst, "dst", 0, (long) n * width);
        int vec = rowVector(width, from, to);
        if (vec == 1) {
            launcher.launch(K, "gather_rows_warp", blocksFor(32L * n, THREADS), 1, THREADS, 0, from, srcRows,
                    memory.addr(index, "index", 0, n), n, width, divisor, to, errors.address());
            return;
        }
        launcher.launch(K, "gather_rows", n, 1, rowThreadsFor(width, vec), 0, from, srcRows,
                memory.addr(index, "index", 0, n), n, width, divisor, to, errors.address(), vec);
    }

    /**
     * gatherRows from BF16 rows (a norm's output in the GEMMs' dtype) into BF16 or F32 rows, the same values: the warp
     * kernels where rows are whole groups of four with 8-byte aligned bf16 rows (16-byte f32 ones), else the source
     * widened into an f32 scratch (exact) and gathered from there.
     */
    private void gatherBf16Rows(Tensor src, int srcRows, Tensor index, int n, int width, int divisor, Tensor dst,
                                boolean bf16) {
        long from = memory.addrOf(src, DType.BF16, "src", 0, (long) srcRows * width);
        long to = memory.addrF32OrBf16(dst, "dst", 0, (long) n * width);
        if (width % 4 == 0 && from % 8 == 0 && to % (bf16 ? 8 : 16) == 0) {
            launcher.launch(K, bf16 ? "gather_rows_warp_b16_bf16" : "gather_rows_warp_b16_f32",
                    blocksFor(32L * n, THREADS), 1, THREADS, 0, from, srcRows, memory.addr(index, "index", 0, n), n,
                    width, divisor, to, errors.address());
            return;
        }
        Tensor wide = elementwise.widened(src);
        try {
            gatherRows(wide, index, n, width, divisor, dst);
        } finally {
            memory.release(wide); // stream-ordered: a later user queues behind the gather
        }
    }

    void scatterRows(Tensor src, Tensor index, int n, int width, Tensor dst) {
        CudaMemory.requireI32(index, "index");
        if (n == 0 || width == 0) {
            return;
        }
        int dstRows = dst.numel() / width;
        long from = memory.addr(src, "src", 0, (long) n * width);
        long to = memory.addr(dst, "dst", 0, (long) dstRows * width);
        int vec = rowVector(width, from, to);
        if (vec == 1) {
            launcher.launch(K, "scatter_rows_warp", blocksFor(32L * n, THREADS), 1, THREADS, 0, from,
                    memory.addr(index, "index", 0, n), n, width, to, dstRows, errors.address());
            return;
        }
        launcher.launch(K, "scatter_rows", n, 1, rowThreadsFor(width, vec), 0, from,
                memory.addr(index, "index", 0, n), n, width, to, dstRows, errors.address(), vec);
    }

    void invertIndex(Tensor index, int n, Tensor inverse) {
        CudaMemory.requireI32(index, "index");
        CudaMemory.requireI32(inverse, "inverse");
        if (n == 0) {
            return;
        }
        launcher.launch1D(K, "invert_index", n, memory.addr(index, "index", 0, n), n,
                memory.addr(inverse, "inverse", 0, n), errors.address());
    }

    /** The device address of {@code rowOfSlot} (I32, one entry a slot), or 0 (null: rows in slot order). */
    private long rowOfSlot(Tensor rowOfSlot, long slots) {
        if (rowOfSlot == null) {
            return 0;
        }
        CudaMemory.requireI32(rowOfSlot, "rowOfSlot");
        return memory.addr(rowOfSlot, "rowOfSlot", 0, slots);
    }

    void moeCombine(Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens, int k, int width, Tensor y) {
        if (tokens == 0 || width == 0) {
            return;
        }
        long nt = (long) tokens * width;
        long ns = (long) tokens * k;
        long sa = memory.addr(rows, "rows", 0, ns * width);
        long ra = rowOfSlot(rowOfSlot, ns), wa = memory.addr(weights, "weights", 0, ns);
        long ya = memory.addr(y, "y", 0, nt);
        if (width % 4 == 0 && aligned16(sa, ya)) {
            launcher.launch1D(K, "moe_combine_v4", nt / 4, sa, ra, wa, tokens, k, width, ya);
        } else {
            launcher.launch1D(K, "moe_combine", nt, sa, ra, wa, tokens, k, width, ya);
        }
    }

    void moeCombineBackward(Tensor dy, Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens, int k, int width,
                            Tensor dRows, Tensor dWeights) {
        boolean out16 = CudaMemory.operandOutput(dRows, "moeCombineBackward", "dRows");
        if (tokens == 0 || k == 0) {
            return;
        }
        long nt = (long) tokens * width;
        long ns = (long) tokens * k;
        long dya = memory.addr(dy, "dy", 0, nt), sa = memory.addr(rows, "rows", 0, ns * width);
        long ra = rowOfSlot(rowOfSlot, ns), wa = memory.addr(weights, "weights", 0, ns);
        long dwa = memory.addr(dWeights, "dWeights", 0, ns);
        if (out16) { // a grouped GEMM operand in bf16
            long to16 = memory.addrOf(dRows, DType.BF16, "dRows", 0, ns * width);
            if (width % 4 == 0 && aligned16(dya, sa) && to16 % 8 == 0) {
                launcher.launch(K, "moe_combine_bwd_warp_bf16", blocksFor(32L * ns, THREADS), 1, THREADS, 0, dya,
                        sa, ra, wa, tokens, k, width, to16, dwa);
            } else {
                launcher.launch(K, "moe_combine_bwd_bf16", (int) ns, 1, rowThreads(width), 0, dya, sa, ra, wa,
                        tokens, k, width, to16, dwa);
            }
            return;
        }
        long dsa = memory.addr(dRows, "dRows", 0, ns * width);
        if (width % 4 == 0 && aligned16(dya, sa, dsa)) {
            launcher.launch(K, "moe_combine_bwd_warp", blocksFor(32L * ns, THREADS), 1, THREADS, 0, dya, sa, ra, wa,
                    tokens, k, width, dsa, dwa);
        } else {
            launcher.launch(K, "moe_combine_bwd", (int) ns, 1, rowThreads(width), 0, dya, sa, ra, wa, tokens, k,
                    width, dsa, dwa);
        }
    }

    void sumSlots(Tensor src, Tensor rowOfSlot, int tokens, int k, int width, Tensor dst) {
        if (tokens == 0 || width == 0) {
            return;
        }
        long nt = (long) tokens * width;
        long ns = (long) tokens * k;
        long sa = memory.addr(src, "src", 0, ns * width), da = memory.addr(dst, "dst", 0, nt);
        long ra = rowOfSlot(rowOfSlot, ns);
        if (width % 4 == 0 && aligned16(sa, da)) {
            launcher.launch1D(K, "sum_slots_v4", nt / 4, sa, ra, tokens, k, width, da);
        } else {
            launcher.launch1D(K, "sum_slots", nt, sa, ra, tokens, k, width, da);
        }
    }
}
