package dev.sparkmoe.core.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.Test;

/** The gradient buffer of a parameter: made on first use, overwritten by the first full write, accumulated after. */
class ParameterTest {
    private final Backend be = new CpuBackend();

    @Test
    void theFirstFullWriteOfAStepOverwritesLaterOnesAccumulate() {
        Parameter w = new Parameter("w", be.zeros(DType.F32, 2, 3), be);
        assertFalse(w.hasGrad());
        assertEquals(0f, w.gradBetaForFullWrite(), "no gradient yet: overwrite");
        assertTrue(w.hasGrad());
        Tensor g = w.grad();
        assertArrayEquals(new int[] {2, 3}, g.shape());
        Tensor x = Tensor.of(new float[] {1, 2, 3, 4, 5, 6}, 2, 3);
        Tensor eye = Tensor.of(new float[] {1, 0, 0, 1}, 2, 2);
        // dW = I^T x + beta dW, twice: x, then 2x
        be.gemm(true, false, 2, 3, 2, 1f, eye, 0, 2, x, 0, 3, 0f, g, 0, 3);
        float beta = w.gradBetaForFullWrite();
        assertEquals(1f, beta, "a gradient is there: accumulate");
        assertSame(g, w.grad());
        be.gemm(true, false, 2, 3, 2, 1f, eye, 0, 2, x, 0, 3, beta, w.grad(), 0, 3);
        assertArrayEquals(new float[] {2, 4, 6, 8, 10, 12}, w.grad().floats());
        w.clearGrad();
        assertEquals(0f, w.gradBetaForFullWrite(), "after the step's reduction: overwrite again");
    }

    @Test
    void aGradientMadeElsewhereIsTakenOverThenAdded() {
        Backend tracked = dev.sparkmoe.core.backend.MemoryTracker.wrap(new CpuBackend());
        Parameter w = new Parameter("w", tracked.zeros(DType.F32, 2, 2), tracked);
        Tensor first = tracked.upload(Tensor.of(new float[] {1, 2, 3, 4}, 2, 2));
        w.accumulateGrad(first);
        assertSame(first, w.grad(), "no gradient yet: the tensor becomes it, no copy");
        Tensor second = tracked.zeros(DType.F32, 2, 2);
        tracked.fill(second, 0.5f);
        w.accumulateGrad(second);
        assertArrayEquals(new float[] {1.5f, 2.5f, 3.5f, 4.5f}, w.grad().floats());
        // the added tensor was released: using it again fails
        org.junit.jupiter.api.Assertions.assertThrows(IllegalStateException.class, () -> tracked.scale(second, 1f));
        IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> w.accumulateGrad(Tensor.zeros(DType.F32, 4)));
        assertTrue(e.getMessage().contains("[4]") && e.getMessage().contains("[2, 2]"), e.getMessage());
    }
}
