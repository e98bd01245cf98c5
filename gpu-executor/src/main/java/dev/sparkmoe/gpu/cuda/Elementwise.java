package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.THREADS;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.aligned16;

import dev.sparkmoe.core.backend.SiluMulBlocks;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.DoublePointer;
import org.bytedeco.javacpp.LongPointer;

/**
 * The element-wise kernels of {@code elementwise.cu}: fill, axpy, scale, the SwiGLU product silu(gate) * up and its
 * gradient on row blocks of a row stride (written in F32, or in BF16 where the output is a BF16 grouped GEMM operand,
 * {@link CudaBackend#emptyGemmOperand}), and sums of squares (the gradient norm: every tensor of a list, F32 or BF16,
 * in one launch per pass, summed in f64 in a fixed order). float4 forms where every address is 16-byte aligned; f32
 * to bf16 conversions from {@code bf16_conversions.cu}. Called under the backend's lock.
 */
final class Elementwise {
    private static final String K = KernelLauncher.ELEMENTWISE;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final KernelErrors errors;
    private final Transfers transfers;

    Elementwise(CudaDevice device, CudaMemory memory, KernelLauncher launcher, KernelErrors errors,
                Transfers transfers) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.errors = errors;
        this.transfers = transfers;
    }

    void fill(Tensor t, float value) {
        long n = t.numel();
        if (n == 0) {
            return;
        }
        switch (t.dtype()) {
            case I32: launcher.launch1D(K, "fill_i32", n, memory.addr(t, "fill", 0, n), n, (int) value); break;
            case I64: launcher.launch1D(K, "fill_i64", n, memory.addr(t, "fill", 0, n), n, (long) value); break;
            default: launcher.launch1D(K, "fill_f32", n, memory.addr(t, "fill", 0, n), n, value);
        }
    }

    /** {@link dev.sparkmoe.core.backend.Backend#convert}: F32 <-> BF16 (and a plain copy between equal dtypes). */
    void convert(Tensor src, Tensor dst) {
        long n = src.numel();
        if (n != dst.numel() || !src.dtype().isFloating() || !dst.dtype().isFloating()) {
            throw new IllegalArgumentException("convert from " + src + " to " + dst + ": both must be floating "
                    + "(F32, BF16) with the same number of elements");
        }
        if (n == 0) {
            return;
        }
        DType from = src.dtype(), to = dst.dtype();
        if (from == to) {
            transfers.copy(src, 0, dst, 0, src.numel());
            return;
        }
        if (from == DType.F32 && to == DType.BF16) {
            roundToBf16(memory.addr(src, "convert src", 0, n), memory.addrOf(dst, DType.BF16, "convert dst", 0, n), n);
        } else if (from == DType.BF16 && to == DType.F32) {
            long s = memory.addrOf(src, DType.BF16, "convert src", 0, n), d = memory.addr(dst, "convert dst", 0, n);
            int vec = n % 4 == 0 && s % 8 == 0 && d % 16 == 0 ? 1 : 0;
            launcher.launch1D(KernelLauncher.BF16_CONVERSIONS, "convert_bf16_f32", vec == 1 ? n / 4 : n, s, n, d, vec);
        } else {
            throw new IllegalArgumentException("convert from " + from + " to " + to + " is not on the GPU: it "
                    + "converts between F32 and BF16");
        }
    }

    /**
     * A new F32 tensor of {@code t}'s shape holding a BF16 tensor's values (exact: widening), for a path that reads
     * f32; the caller gives it back ({@link CudaMemory#release}, stream-ordered).
     */
    Tensor widened(Tensor t) {
        Tensor w = memory.newTensor(DType.F32, t.shape());
        convert(t, w);
        return w;
    }

    /**
     * {@code f32Op} writing {@code out} (n elements at outA): into it where it is F32, else into an f32 scratch that
     * is then rounded into the BF16 {@code out}: the values a kernel that writes bf16 writes.
     */
    void viaF32(Tensor out, long outA, long n, java.util.function.Consumer<Tensor> f32Op) {
        if (out.dtype() != DType.BF16) {
            f32Op.accept(out);
            return;
        }
        Tensor wide = memory.scratch(DType.F32, (int) n); // at most out's elements: int-sized
        try {
            f32Op.accept(wide);
            roundToBf16(memory.addr(wide, "f32 result", 0, n), outA, n);
        } finally {
            memory.release(wide); // stream-ordered: a later user queues behind the rounding
        }
    }

    /** {@code n > 0} f32 values at device address {@code s} rounded to bf16 (nearest even) at {@code d}. */
    void roundToBf16(long s, long d, long n) {
        int vec = n % 4 == 0 && s % 16 == 0 && d % 8 == 0 ? 1 : 0;
        launcher.launch1D(KernelLauncher.BF16_CONVERSIONS, "convert_f32_bf16", vec == 1 ? n / 4 : n, s, n, d, vec);
    }

    void axpy(float alpha, Tensor x, int xOff, Tensor y, int yOff, int n) {
        if (n == 0) {
            return;
        }
        long xa = memory.addr(x, "x", xOff, n);
        long ya = memory.addr(y, "y", yOff, n);
        if (aligned16(xa, ya)) {
            launcher.launch1D(K, "axpy_f32x4", Math.max(n / 4, n % 4), alpha, xa, ya, n);
        } else {
            launcher.launch1D(K, "axpy_f32", n, alpha, xa, ya, n);
        }
    }

    void scale(Tensor x, float alpha) {
        long n = x.numel();
        if (n == 0) {
            return;
        }
        launcher.launch1D(K, "scale_f32", n, memory.addr(x, "x", 0, n), n, alpha);
    }

    /**
     * The sum of squares of every tensor of {@code xs}, each F32 or BF16 (waits for the device): one launch for the
     * partials of the whole list (a step's gradient norm: hundreds of tensors; the f32 kernel where every tensor is
     * F32, the one that reads each tensor's dtype from the table where some are BF16), one for the sums
     * ({@link SquareSums}). A BF16 tensor gives what an F32 tensor of the same values gives.
     */
    double[] sumSquares(java.util.List<Tensor> xs) {
        int count = xs.size();
        if (count == 0) {
            return new double[0];
        }
        int[] blocks = new int[count];
        int maxBlocks = 1;
        boolean mixed = false;
        for (int i = 0; i < count; i++) {
            Tensor x = xs.get(i);
            if (x == null || (x.dtype() != DType.F32 && x.dtype() != DType.BF16)) {
                throw new IllegalArgumentException("sumSquares: x[" + i + "] " + x + " must be F32 or BF16; convert "
                        + "it to F32 first (Backend.convert)");
            }
            mixed |= x.dtype() == DType.BF16;
            long n = x.numel();
            blocks[i] = (int) Math.max(1, Math.min((n + THREADS - 1) / THREADS, 4L * device.smCount()));
            maxBlocks = Math.max(maxBlocks, blocks[i]);
        }
        try (SquareSums sums = new SquareSums(device, memory, launcher, errors, blocks)) {
            long[] at = new long[count];
            for (int i = 0; i < count; i++) {
                Tensor x = xs.get(i);
                long n = x.numel();
                at[i] = n == 0 ? 0 : memory.addrOf(x, x.dtype(), "x[" + i + "]", 0, n);
                sums.describe(i, at[i], n, x.dtype() == DType.BF16);
            }
            if (count <= 65535) { // grid y
                launcher.launch(K, mixed ? "sum_squares_partial_multi_mixed" : "sum_squares_partial_multi", maxBlocks,
                        count, THREADS, 0, sums.table());
            } else {
                for (int i = 0; i < count; i++) {
                    boolean bf16 = xs.get(i).dtype() == DType.BF16;
                    launcher.launch(K, bf16 ? "sum_squares_partial_bf16" : "sum_squares_partial", blocks[i], 1,
                            THREADS, 0, at[i], (long) xs.get(i).numel(), sums.partials(i));
                }
            }
            return sums.finish();
        }
    }

    /**
     * {@link dev.sparkmoe.core.backend.Backend#siluMulForward}: out F32, or BF16 (a grouped GEMM operand: each value
     * the f32 result rounded to nearest even); the float4 form where every row of every block starts aligned
     * ({@link #vectorRows}), else one thread an element. Contiguous blocks run as one row.
     */
    void siluMulForward(Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols, int ld, Tensor out) {
        SiluMulBlocks.checkForward(gate, gateOff, up, upOff, rows, cols, ld, out);
        boolean bf16 = CudaMemory.operandOutput(out, "siluMulForward", "out");
        if (rows == 0 || cols == 0) {
            return;
        }
        if (ld == cols) { // every block contiguous: one row
            cols = rows * cols;
            ld = cols;
            rows = 1;
        }
        long span = (long) (rows - 1) * ld + cols;
        long n = (long) rows * cols;
        long g = memory.addr(gate, "gate", gateOff, span), u = memory.addr(up, "up", upOff, span);
        if (bf16) {
            long o16 = memory.addrOf(out, DType.BF16, "out", 0, n);
            boolean vec = vectorRows(rows, cols, ld) && aligned16(g, u) && o16 % 8 == 0;
            launcher.launch1D(K, vec ? "silu_mul_fwd_x4_bf16" : "silu_mul_fwd_bf16", threads(vec, rows, cols), g, u,
                    o16, rows, cols, ld);
            return;
        }
        long o = memory.addr(out, "out", 0, n);
        boolean vec = vectorRows(rows, cols, ld) && aligned16(g, u, o);
        launcher.launch1D(K, vec ? "silu_mul_fwd_x4" : "silu_mul_fwd", threads(vec, rows, cols), g, u, o, rows, cols,
                ld);
    }

    /**
     * {@link dev.sparkmoe.core.backend.Backend#siluMulBackward}: dGate and dUp both F32, or both BF16 (a grouped GEMM
     * operand; one [rows, 2I] tensor may hold both), written as {@link #siluMulForward} writes out; one of each is
     * refused. float4 and scalar forms as {@link #siluMulForward}.
     */
    void siluMulBackward(Tensor dOut, Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols, int ld,
                         Tensor dGate, Tensor dUp) {
        SiluMulBlocks.checkBackward(dOut, gate, gateOff, up, upOff, rows, cols, ld, dGate, dUp);
        boolean bf16 = CudaMemory.operandOutput(dGate, "siluMulBackward", "dGate");
        if (bf16 != CudaMemory.operandOutput(dUp, "siluMulBackward", "dUp")) {
            throw new IllegalArgumentException("siluMulBackward: dGate is " + dGate + " and dUp is " + dUp + "; "
                    + "they are written in one dtype: pass both F32 or both BF16 (one [rows, 2 * cols] operand holds "
                    + "both)");
        }
        if (rows == 0 || cols == 0) {
            return;
        }
        if (ld == cols) {
            cols = rows * cols;
            ld = cols;
            rows = 1;
        }
        long span = (long) (rows - 1) * ld + cols;
        long n = (long) rows * cols;
        long d = memory.addr(dOut, "dOut", 0, n), g = memory.addr(gate, "gate", gateOff, span);
        long u = memory.addr(up, "up", upOff, span);
        if (bf16) {
            long dg16 = memory.addrOf(dGate, DType.BF16, "dGate", gateOff, span);
            long du16 = memory.addrOf(dUp, DType.BF16, "dUp", upOff, span);
            boolean vec = vectorRows(rows, cols, ld) && aligned16(d, g, u) && dg16 % 8 == 0 && du16 % 8 == 0;
            launcher.launch1D(K, vec ? "silu_mul_bwd_x4_bf16" : "silu_mul_bwd_bf16", threads(vec, rows, cols), d, g, u,
                    dg16, du16, rows, cols, ld);
            return;
        }
        long dg = memory.addr(dGate, "dGate", gateOff, span), du = memory.addr(dUp, "dUp", upOff, span);
        boolean vec = vectorRows(rows, cols, ld) && aligned16(d, g, u, dg, du);
        launcher.launch1D(K, vec ? "silu_mul_bwd_x4" : "silu_mul_bwd", threads(vec, rows, cols), d, g, u, dg, du,
                rows, cols, ld);
    }

    /**
     * Whether rows of the blocks start where their first one does modulo 4 elements (the float4 forms' condition,
     * with aligned pointers): one row, or a row stride and a contiguous row length (out, dOut) that are multiples of 4.
     */
    private static boolean vectorRows(int rows, int cols, int ld) {
        return rows == 1 || (cols % 4 == 0 && ld % 4 == 0);
    }

    /** Threads of a launch: float4 forms one a vector (the first also the rows' tails), the others one an element. */
    private static long threads(boolean vec, int rows, int cols) {
        return vec ? Math.max((long) rows * (cols / 4), (long) rows * (cols % 4)) : (long) rows * cols;
    }
}
