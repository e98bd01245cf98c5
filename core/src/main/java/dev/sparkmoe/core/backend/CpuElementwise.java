package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The CPU backend's element-wise kernels: dtype conversion (rounding to the destination dtype), fill, the SwiGLU
 * product (forward and backward), axpy, scaling, and the sum of squares behind gradient clipping (fixed blocks summed
 * in order).
 */
final class CpuElementwise {
    private CpuElementwise() {
    }

    static void convert(Tensor src, Tensor dst) {
        if (!src.dtype().isFloating() || !dst.dtype().isFloating() || src.numel() != dst.numel()) {
            throw new IllegalArgumentException("convert from " + src + " to " + dst + ": both must be floating "
                    + "(F32, BF16, F16) with the same number of elements");
        }
        float[] s = src.floats();
        float[] d = dst.floats();
        Par.range(s.length, 4, (from, to) -> {
            for (int i = from; i < to; i++) {
                d[i] = DType.round(dst.dtype(), s[i]);
            }
        });
    }

    private static void requireFloating(Tensor x, String op) {
        if (!x.dtype().isFloating()) {
            throw new IllegalArgumentException(op + " of " + x + ": the tensor must be floating (F32, BF16, F16)");
        }
    }

    static void fill(Tensor t, float value) {
        switch (t.dtype()) {
            case I32: java.util.Arrays.fill(t.ints(), (int) value); break;
            case I64: java.util.Arrays.fill(t.longs(), (long) value); break;
            default: java.util.Arrays.fill(t.floats(), value);
        }
    }

    private static float sigmoid(float x) {
        return (float) (1.0 / (1.0 + Math.exp(-x)));
    }

    /** {@link Backend#siluMulForward}: rows in parallel, each row's gate and up read at its offset in the blocks. */
    static void siluMulForward(Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols, int ld,
                               Tensor out) {
        SiluMulBlocks.checkForward(gate, gateOff, up, upOff, rows, cols, ld, out);
        if (rows == 0 || cols == 0) {
            return;
        }
        float[] gf = gate.floats();
        float[] uf = up.floats();
        float[] of = out.floats();
        Par.range(rows, 20L * cols, (from, to) -> {
            for (int r = from; r < to; r++) {
                int g0 = gateOff + r * ld;
                int u0 = upOff + r * ld;
                int o0 = r * cols;
                for (int c = 0; c < cols; c++) {
                    float g = gf[g0 + c];
                    of[o0 + c] = g * sigmoid(g) * uf[u0 + c];
                }
            }
        });
    }

    /** {@link Backend#siluMulBackward}, row by row as {@link #siluMulForward}. */
    static void siluMulBackward(Tensor dOut, Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols,
                                int ld, Tensor dGate, Tensor dUp) {
        SiluMulBlocks.checkBackward(dOut, gate, gateOff, up, upOff, rows, cols, ld, dGate, dUp);
        if (rows == 0 || cols == 0) {
            return;
        }
        float[] df = dOut.floats();
        float[] gf = gate.floats();
        float[] uf = up.floats();
        float[] dgf = dGate.floats();
        float[] duf = dUp.floats();
        Par.range(rows, 25L * cols, (from, to) -> {
            for (int r = from; r < to; r++) {
                int g0 = gateOff + r * ld;
                int u0 = upOff + r * ld;
                int d0 = r * cols;
                for (int c = 0; c < cols; c++) {
                    float g = gf[g0 + c];
                    float s = sigmoid(g);
                    float silu = g * s;
                    duf[u0 + c] = df[d0 + c] * silu;
                    dgf[g0 + c] = df[d0 + c] * uf[u0 + c] * (s * (1f + g * (1f - s)));
                }
            }
        });
    }

    static void axpy(float alpha, Tensor x, int xOff, Tensor y, int yOff, int n) {
        float[] xf = x.floats();
        float[] yf = y.floats();
        Par.range(n, 2, (from, to) -> {
            for (int i = from; i < to; i++) {
                yf[yOff + i] += alpha * xf[xOff + i];
            }
        });
    }

    /** x *= alpha; in a BF16 or F16 tensor each product is rounded to that dtype (the values it can hold). */
    static void scale(Tensor x, float alpha) {
        requireFloating(x, "scale");
        float[] xf = x.floats();
        DType d = x.dtype();
        Par.range(xf.length, 1, (from, to) -> {
            if (d == DType.F32) {
                for (int i = from; i < to; i++) {
                    xf[i] *= alpha;
                }
            } else {
                for (int i = from; i < to; i++) {
                    xf[i] = DType.round(d, xf[i] * alpha);
                }
            }
        });
    }

    /** The sum of squares of an F32 or BF16 tensor (whose values are read as the f32 values they are). */
    static double sumSquares(Tensor x) {
        if (x.dtype() != DType.F32 && x.dtype() != DType.BF16) {
            throw new IllegalArgumentException("sumSquares of " + x + ": the tensor must be F32 or BF16; convert it "
                    + "to F32 first (Backend.convert)");
        }
        float[] xf = x.floats();
        // Fixed blocks summed in order: the result does not depend on the thread count.
        int block = 4096;
        int blocks = (xf.length + block - 1) / block;
        double[] partial = new double[blocks];
        Par.range(blocks, block, (from, to) -> {
            for (int bIdx = from; bIdx < to; bIdx++) {
                double s = 0;
                int end = Math.min(xf.length, (bIdx + 1) * block);
                for (int i = bIdx * block; i < end; i++) {
                    s += (double) xf[i] * xf[i];
                }
                partial[bIdx] = s;
            }
        });
        double total = 0;
        for (double p : partial) {
            total += p;
        }
        return total;
    }
}
