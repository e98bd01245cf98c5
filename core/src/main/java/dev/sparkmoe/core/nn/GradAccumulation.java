package dev.sparkmoe.core.nn;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * Adding one gradient to another (gradient accumulation over micro-batches, a gradient computed elsewhere). The sum is
 * F32: a gradient made in the param dtype ({@link Parameter#gradDType(DType)}) is widened (exact) before it is added,
 * as FSDP2 casts each micro-batch's bf16 gradient to its f32 reduce dtype before accumulating, so a sum of
 * micro-batches is never rounded to bf16.
 */
public final class GradAccumulation {
    private GradAccumulation() {
    }

    /**
     * {@code acc + part}: {@code acc} itself, updated in place, where it is F32, else a new F32 tensor ({@code acc} is
     * released). {@code part} is taken over (released). Both hold the same number of elements.
     */
    public static Tensor add(Backend be, Tensor acc, Tensor part) {
        if (acc.numel() != part.numel()) {
            throw new IllegalArgumentException("gradient accumulation: " + part + " added to " + acc
                    + ", which holds a different number of elements");
        }
        Tensor sum = widened(be, acc);
        Tensor x = widened(be, part);
        be.axpy(1f, x, 0, sum, 0, sum.numel());
        be.release(x);
        return sum;
    }

    /** {@code t} where it is F32, else an F32 copy of it ({@code t} released). */
    private static Tensor widened(Backend be, Tensor t) {
        if (t.dtype() == DType.F32) {
            return t;
        }
        Tensor w = be.empty(DType.F32, t.shape());
        be.convert(t, w);
        be.release(t);
        return w;
    }
}
