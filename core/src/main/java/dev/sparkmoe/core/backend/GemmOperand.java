package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * A tensor as a backend's GEMMs take it ({@link Backend#gemmDType()}, FSDP2's param dtype): the tensor itself where
 * it is in that dtype already (and always where the GEMMs take F32), else a new copy in that dtype
 * ({@link Backend#convert}), which the caller gives back with {@link #release} once its GEMMs are queued. Made once
 * where several GEMMs read one operand (q, k and v of one input; a loss's weight over all its chunks).
 */
public final class GemmOperand {
    private GemmOperand() {
    }

    public static Tensor of(Backend be, Tensor x) {
        DType t = be.gemmDType();
        if (x.dtype() == t || t == DType.F32) {
            return x;
        }
        Tensor y = be.empty(t, x.shape());
        be.convert(x, y);
        return y;
    }

    /**
     * A new tensor (contents unspecified) whose values only dense GEMMs read, and the row gathers that make the
     * experts' operands ({@link Backend#gatherRows}): in the GEMMs' dtype, so that no GEMM copies it. The decoder
     * layers' norm outputs are such tensors: written rounded once ({@link Backend#rmsNormForward}), the values every
     * GEMM on an F32 copy rounded them to before.
     */
    public static Tensor empty(Backend be, int... shape) {
        return be.empty(be.gemmDType(), shape);
    }

    /** Gives back a copy made by {@link #of} (nothing where it is the original itself). */
    public static void release(Backend be, Tensor copy, Tensor original) {
        if (copy != null && copy != original) {
            be.release(copy);
        }
    }
}
