package dev.sparkmoe.core.testing;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The arithmetic of f32 norm outputs, for an {@link Intercept} handler on a backend that writes the decoder norms'
 * outputs in bf16: a norm into a BF16 output computed into an f32 tensor and converted (after the residual add, for
 * {@code residualRmsNormForward}), and a row gather from BF16 rows done from their widened copy. What every GEMM on an
 * f32 norm output read before was that output converted.
 */
public final class F32NormOutputs {
    private F32NormOutputs() {
    }

    /** The BF16 output of a {@code rmsNormForward} or {@code residualRmsNormForward} call, else null. */
    public static Tensor bf16Output(String name, Object[] args) {
        boolean residual = name.equals("residualRmsNormForward");
        if (!residual && !name.equals("rmsNormForward")) {
            return null;
        }
        Tensor y = (Tensor) args[residual ? 6 : 5];
        return y.dtype() == DType.BF16 ? y : null;
    }

    /** Runs such a call the f32 way on {@code inner} (returns null), or returns {@link Intercept#PASS}. */
    public static Object handle(Backend inner, String name, Object[] args) {
        Tensor y = bf16Output(name, args);
        if (y != null) {
            int at = name.equals("residualRmsNormForward") ? 1 : 0; // the arguments after x (and the residual)
            Tensor x = (Tensor) args[0];
            Tensor wide = inner.empty(DType.F32, y.shape());
            if (at == 1) {
                inner.axpy(1f, (Tensor) args[1], 0, x, 0, x.numel());
            }
            inner.rmsNormForward(x, (Tensor) args[at + 1], (float) args[at + 2], (int) args[at + 3],
                    (int) args[at + 4], wide, (Tensor) args[at + 6]);
            inner.convert(wide, y);
            inner.release(wide);
            return null;
        }
        if (name.equals("gatherRows") && ((Tensor) args[0]).dtype() == DType.BF16) {
            Tensor src = (Tensor) args[0];
            Tensor wide = inner.empty(DType.F32, src.shape());
            inner.convert(src, wide);
            inner.gatherRows(wide, (Tensor) args[1], (int) args[2], (int) args[3], (int) args[4], (Tensor) args[5]);
            inner.release(wide);
            return null;
        }
        return Intercept.PASS;
    }
}
