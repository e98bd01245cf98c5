package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.THREADS;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.aligned16;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.ceilDiv;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.rowThreads;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.FloatPointer;

import java.util.HashMap;
import java.util.Map;

/**
 * RMSNorm forward and backward (a row per lane group in registers where the row is float4-aligned and at most 2048
 * wide, else a block per row; the weight gradient summed from per-block partials in a fixed order; the forward's
 * output f32 or rounded to bf16) and rotary
 * position embeddings (from a cos/sin table made once per theta, head dim and sequence length, kept for the
 * backend's life; the direct form where no table fits). Called under the backend's lock.
 */
final class NormAndRope {
    private static final String K = KernelLauncher.NORM_ROPE;
    /** Row blocks of the vectorised RMSNorm backward (and so dW partials) aimed at: fixed, so the sum order is. */
    private static final int RMSNORM_BWD_BLOCKS = 512;
    /** The widest row of the vectorised RMSNorm kernels: 32 lanes of 16 float4 (norm_rope.cu's RMSNORM_VEC(32, 16)). */
    static final int RMSNORM_VEC_DIM = 2048;
    /** The largest rope table, in (position, i) cells: 16 MiB of cos and sin. */
    private static final long ROPE_TABLE_MAX = 1L << 21;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final Elementwise elementwise;
    private final Map<String, DeviceBuffer> ropeFreqs = new HashMap<>();
    /** rope's cos and sin tables (seqLen x headDim / 2 each, one buffer) by theta / headDim / seqLen. */
    private final Map<String, DeviceBuffer> ropeTables = new HashMap<>();

    NormAndRope(CudaDevice device, CudaMemory memory, KernelLauncher launcher, Elementwise elementwise) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.elementwise = elementwise;
    }

    /**
     * y F32, or BF16 (a norm output that only GEMMs read, Backend.rmsNormForward): the vectorised kernel writes it
     * rounded; where rows do not fit it, the block-per-row kernel writes an f32 scratch that is then rounded (the same
     * values). With {@code residual} (else null) x += residual first (Backend.residualRmsNormForward): in the
     * vectorised kernel's pass, else by axpy before the norm (the same sums).
     */
    void rmsNormForward(Tensor x, Tensor residual, Tensor w, float eps, int rows, int dim, Tensor y, Tensor rstd) {
        if (rows == 0) {
            return;
        }
        long n = (long) rows * dim;
        long xA = memory.addr(x, "x", 0, n);
        long resA = residual == null ? 0L : memory.addr(residual, "residual", 0, n);
        long wA = memory.addr(w, "w", 0, dim);
        boolean bf16 = y != null && y.dtype() == DType.BF16;
        long yA = memory.addrF32OrBf16(y, "y", 0, n);
        long rA = memory.addr(rstd, "rstd", 0, rows);
        int[] lv = residual == null ? rmsNormVec(dim, xA, wA, yA) : rmsNormVec(dim, xA, resA, wA, yA);
        if (lv != null) {
            int rowsPerBlock = THREADS / lv[0];
            launcher.launch(K, (bf16 ? "rmsnorm_fwd_bf16_l" : "rmsnorm_fwd_l") + lv[0] + "v" + lv[1],
                    ceilDiv(rows, rowsPerBlock), 1, THREADS, 0, xA, resA, wA, eps, rows, dim, yA, rA);
            return;
        }
        if (residual != null) {
            elementwise.axpy(1f, residual, 0, x, 0, (int) n);
        }
        elementwise.viaF32(y, yA, n, out -> launcher.launch(K, "rmsnorm_fwd", rows, 1, rowThreads(dim), 0, xA, wA,
                eps, rows, dim, memory.addr(out, "y", 0, n), rA));
    }

    /**
     * The vectorised RMSNorm kernels' {lanes per row, float4 per lane} for rows of {@code dim} floats (dim % 4 == 0,
     * at most {@link #RMSNORM_VEC_DIM}, every address 16-byte aligned), else null (the block-per-row kernels).
     */
    private static int[] rmsNormVec(int dim, long... addresses) {
        if (dim % 4 != 0 || dim > RMSNORM_VEC_DIM || !aligned16(addresses)) {
            return null;
        }
        int d4 = dim / 4;
        int lanes = 4;
        while (lanes < 32 && lanes < d4) {
            lanes *= 2;
        }
        int v = 1;
        while (v * lanes < d4) {
            v *= 2;
        }
        return new int[] {lanes, v};
    }

    /** A launch of a vectorised backward kernel: its blocks, rows per block, shared bytes and dW partials. */
    @FunctionalInterface
    private interface BackwardLaunch {
        void launch(int blocks, int rowsPerBlock, int sharedBytes, long partials);
    }

    /**
     * The vectorised RMSNorm backward's shape: blocks of {@code lanes}-wide row groups over contiguous rows (a fixed
     * count aimed at, so that the sum order is fixed), dx and each block's dW partial in one pass over x and dy, then
     * the partials summed in a fixed order into dw.
     */
    private void vectorisedBackward(int lanes, int rows, int dim, Tensor dw, BackwardLaunch kernel) {
        int groups = THREADS / lanes;
        int rowsPerBlock = groups * Math.max(1, ceilDiv(rows, groups * RMSNORM_BWD_BLOCKS));
        int blocks = ceilDiv(rows, rowsPerBlock);
        Tensor partial = memory.scratch(DType.F32, blocks * dim);
        try {
            long pA = memory.addr(partial, "partial", 0, (long) blocks * dim);
            kernel.launch(blocks, rowsPerBlock, 4 * groups * dim, pA);
            launcher.launch2D(K, "sum_chunks_accumulate_2d", ceilDiv(dim, 32), 1, 32, 32, pA, blocks, dim,
                    memory.addr(dw, "dw", 0, dim));
        } finally {
            memory.release(partial);
        }
    }

    /**
     * dx (written) and dw (accumulated); with {@code residualGrad} (else null) dx also gets it added
     * (Backend.rmsNormBackwardResidual): in the vectorised kernel's pass, else by axpy after the norm's backward.
     */
    void rmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim, Tensor residualGrad, Tensor dx,
                         Tensor dw) {
        if (rows == 0) {
            return;
        }
        long n = (long) rows * dim;
        long dyA = memory.addr(dy, "dy", 0, n);
        long xA = memory.addr(x, "x", 0, n);
        long rA = memory.addr(rstd, "rstd", 0, rows);
        long wA = memory.addr(w, "w", 0, dim);
        long dxA = memory.addr(dx, "dx", 0, n);
        long resA = residualGrad == null ? 0L : memory.addr(residualGrad, "residualGrad", 0, n);
        int[] lv = residualGrad == null ? rmsNormVec(dim, dyA, xA, wA, dxA) : rmsNormVec(dim, dyA, xA, wA, dxA, resA);
        if (lv != null) {
            vectorisedBackward(lv[0], rows, dim, dw, (blocks, rowsPerBlock, shared, pA) -> launcher.launch(K,
                    "rmsnorm_bwd_l" + lv[0] + "v" + lv[1], blocks, 1, THREADS, shared, dyA, xA, wA, rA, rows, dim,
                    rowsPerBlock, resA, dxA, pA));
            return;
        }
        launcher.launch(K, "rmsnorm_bwd_dx", rows, 1, rowThreads(dim), 0, dyA, xA, wA, rA, rows, dim, dxA);
        if (residualGrad != null) {
            elementwise.axpy(1f, residualGrad, 0, dx, 0, (int) n);
        }
        int rowsPerChunk = 256;
        int chunks = (rows + rowsPerChunk - 1) / rowsPerChunk;
        Tensor partial = memory.scratch(DType.F32, chunks * dim);
        try {
            long pA = memory.addr(partial, "partial", 0, (long) chunks * dim);
            launcher.launch2D(K, "rmsnorm_bwd_dw_partial", (dim + 31) / 32, chunks, 32, 8, dyA, xA, rA, rows, dim,
                    rowsPerChunk, pA);
            launcher.launch1D(K, "sum_chunks_accumulate", dim, pA, chunks, dim, memory.addr(dw, "dw", 0, dim));
        } finally {
            memory.release(partial);
        }
    }

    /** The inverse frequencies of (theta, headDim), made once, computed on the host exactly as CpuBackend does. */
    private DeviceBuffer ropeFreqs(float theta, int headDim) {
        int half = headDim / 2;
        String key = theta + "/" + headDim;
        DeviceBuffer freq = ropeFreqs.get(key);
        if (freq == null) {
            float[] invFreq = new float[half];
            for (int i = 0; i < half; i++) {
                invFreq[i] = 1f / (float) Math.pow(theta, (float) (2 * i) / headDim);
            }
            freq = memory.allocateUnscoped(4L * Math.max(1, half)); // persistent: allocate outside any scope
            try (FloatPointer h = new FloatPointer(invFreq)) {
                Cuda.check(cudart.cudaMemcpyAsync(CudaMemory.ptr(freq, 0), h, 4L * half,
                        cudart.cudaMemcpyHostToDevice, device.stream()), "cudaMemcpyAsync(rope frequencies)");
            }
            ropeFreqs.put(key, freq);
        }
        return freq;
    }

    /**
     * The cos and sin table of (theta, headDim, seqLen): cos of (position, i) at {@code address + 4 (position * half
     * + i)}, sin {@code 4 seqLen half} bytes on; made once with rope_f32's arithmetic and kept; null where it would
     * pass {@link #ROPE_TABLE_MAX} cells.
     */
    private DeviceBuffer ropeTable(float theta, int headDim, int seqLen) {
        int half = headDim / 2;
        long cells = (long) seqLen * half;
        if (cells > ROPE_TABLE_MAX) {
            return null;
        }
        String tkey = theta + "/" + headDim + "/" + seqLen;
        DeviceBuffer table = ropeTables.get(tkey);
        if (table == null) {
            DeviceBuffer freq = ropeFreqs(theta, headDim);
            table = memory.allocateUnscoped(8L * Math.max(1, cells));
            launcher.launch1D(K, "rope_table", cells, freq.address(), seqLen, half, table.address(),
                    table.address() + 4L * cells);
            ropeTables.put(tkey, table);
        }
        return table;
    }

    void rope(Tensor x, int tokens, int heads, int headDim, int seqLen, float theta, boolean inverse) {
        if (tokens == 0) {
            return;
        }
        int half = headDim / 2;
        long n = (long) tokens * heads * headDim;
        long xA = memory.addr(x, "x", 0, n);
        long cells = (long) seqLen * half;
        DeviceBuffer table = half % 4 == 0 && aligned16(xA) ? ropeTable(theta, headDim, seqLen) : null;
        if (table != null) {
            launcher.launch1D(K, "rope_tab_v4", (long) tokens * heads * (half / 4), xA, table.address(),
                    table.address() + 4L * cells, tokens, heads, headDim, seqLen, inverse ? -1f : 1f);
            return;
        }
        launcher.launch1D(K, "rope_f32", (long) tokens * half, xA, ropeFreqs(theta, headDim).address(), tokens, heads,
                headDim, seqLen, inverse ? -1f : 1f);
    }

    /**
     * The rope table for the fused norm-with-rope kernels (a row one float4 a lane, so headDim / 4 lanes: head dims 64
     * and 128) where the addresses are 16-byte aligned and the table fits, else null (the norm, rope and conversion
     * one by one).
     */
    private DeviceBuffer fusedRopeTable(int headDim, float theta, int seqLen, long... addresses) {
        if ((headDim != 64 && headDim != 128) || !aligned16(addresses)) {
            return null;
        }
        return ropeTable(theta, headDim, seqLen);
    }

    /**
     * Backend.rmsNormRopeForward: y = rope(norm(x)) over rows of (token, head), y F32 or BF16 (rounded once). The
     * fused kernel where {@link #fusedRopeTable} allows, else the norm into y (or an f32 scratch for a BF16 y), rope in
     * place, and the rounding: the same values.
     */
    void rmsNormRopeForward(Tensor x, Tensor w, float eps, int tokens, int heads, int headDim, int seqLen, float theta,
                            Tensor y, Tensor rstd) {
        int rows = tokens * heads;
        if (rows == 0) {
            return;
        }
        long n = (long) rows * headDim;
        long xA = memory.addr(x, "x", 0, n);
        long wA = memory.addr(w, "w", 0, headDim);
        boolean bf16 = y != null && y.dtype() == DType.BF16;
        long yA = memory.addrF32OrBf16(y, "y", 0, n);
        long rA = memory.addr(rstd, "rstd", 0, rows);
        DeviceBuffer table = fusedRopeTable(headDim, theta, seqLen, xA, wA, yA);
        if (table != null) {
            int lanes = headDim / 4;
            long cells = (long) seqLen * (headDim / 2);
            launcher.launch(K, "rmsnorm_rope_fwd" + (bf16 ? "_bf16" : "") + "_l" + lanes,
                    ceilDiv(rows, THREADS / lanes), 1, THREADS, 0, xA, wA, eps, rows, headDim, yA, rA, table.address(),
                    table.address() + 4L * cells, heads, seqLen);
            return;
        }
        elementwise.viaF32(y, yA, n, out -> {
            rmsNormForward(x, null, w, eps, rows, headDim, out, rstd);
            rope(out, tokens, heads, headDim, seqLen, theta, false);
        });
    }

    /**
     * Backend.rmsNormRopeBackward: dx of rmsNormRopeForward given dy, the gradient of its output (dx F32 or BF16,
     * rounded once), dw accumulated. The fused kernel where {@link #fusedRopeTable} allows (dy left as it is), else
     * rope backward in place on dy, the norm's backward (into an f32 scratch for a BF16 dx) and the rounding.
     */
    void rmsNormRopeBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int tokens, int heads, int headDim,
                             int seqLen, float theta, Tensor dx, Tensor dw) {
        int rows = tokens * heads;
        if (rows == 0) {
            return;
        }
        long n = (long) rows * headDim;
        long dyA = memory.addr(dy, "dy", 0, n);
        long xA = memory.addr(x, "x", 0, n);
        long rA = memory.addr(rstd, "rstd", 0, rows);
        long wA = memory.addr(w, "w", 0, headDim);
        boolean bf16 = dx != null && dx.dtype() == DType.BF16;
        long dxA = memory.addrF32OrBf16(dx, "dx", 0, n);
        DeviceBuffer table = fusedRopeTable(headDim, theta, seqLen, dyA, xA, wA, dxA);
        if (table != null) {
            int lanes = headDim / 4;
            long cells = (long) seqLen * (headDim / 2);
            vectorisedBackward(lanes, rows, headDim, dw, (blocks, rowsPerBlock, shared, pA) -> launcher.launch(K,
                    "rmsnorm_rope_bwd" + (bf16 ? "_bf16" : "") + "_l" + lanes, blocks, 1, THREADS, shared, dyA, xA, wA,
                    rA, rows, headDim, rowsPerBlock, dxA, pA, table.address(), table.address() + 4L * cells, heads,
                    seqLen));
            return;
        }
        rope(dy, tokens, heads, headDim, seqLen, theta, true);
        elementwise.viaF32(dx, dxA, n, out -> rmsNormBackward(dy, x, w, rstd, rows, headDim, null, out, dw));
    }
}
