package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.Test;

/**
 * Worked examples of the router's top-k (Backend.routerTopK on the CPU reference): descending value, ties to the
 * lower expert index (torch.topk on the CPU), weights renormalised on request.
 */
class MoeTopKTest {
    static final CpuBackend BE = new CpuBackend();

    static void topK(float[] probs, int rows, int cols, int k, int[] idx, float[] val) {
        Tensor i = Tensor.zeros(DType.I32, rows * k);
        Tensor v = Tensor.zeros(DType.F32, rows * k);
        Tensor w = Tensor.zeros(DType.F32, rows * k);
        BE.routerTopK(Tensor.of(probs, rows, cols), rows, cols, k, false, i, v, w);
        System.arraycopy(i.ints(), 0, idx, 0, idx.length);
        System.arraycopy(v.floats(), 0, val, 0, val.length);
        for (int j = 0; j < val.length; j++) {
            if (w.floats()[j] != val[j]) {
                throw new AssertionError("without renormalisation the weights are the top values");
            }
        }
    }

    @Test
    void renormalisedWeightsSumToOne() {
        Tensor i = Tensor.zeros(DType.I32, 2);
        Tensor v = Tensor.zeros(DType.F32, 2);
        Tensor w = Tensor.zeros(DType.F32, 2);
        BE.routerTopK(Tensor.of(new float[] {0.1f, 0.6f, 0.3f}, 1, 3), 1, 3, 2, true, i, v, w);
        assertArrayEquals(new int[] {1, 2}, i.ints());
        assertArrayEquals(new float[] {0.6f / 0.9f, 0.3f / 0.9f}, w.floats(), 1e-7f);
    }

    @Test
    void topTwoWithTies() {
        float[] probs = {
            0.1f, 0.3f, 0.3f, 0.3f,  // three-way tie for first: experts 1, 2 (lowest indices)
            0.4f, 0.1f, 0.1f, 0.4f,  // tie for first between 0 and 3: 0 first, then 3
            0.1f, 0.5f, 0.2f, 0.2f,  // clear first (1), tie for second: 2 beats 3
            0.7f, 0.05f, 0.05f, 0.2f // no tie
        };
        int[] idx = new int[8];
        float[] val = new float[8];
        topK(probs, 4, 4, 2, idx, val);
        assertArrayEquals(new int[] {1, 2, 0, 3, 1, 2, 0, 3}, idx);
        assertArrayEquals(new float[] {0.3f, 0.3f, 0.4f, 0.4f, 0.5f, 0.2f, 0.7f, 0.2f}, val);
    }

    @Test
    void topOneAndTopAll() {
        float[] probs = {0.2f, 0.5f, 0.3f};
        int[] idx1 = new int[1];
        float[] val1 = new float[1];
        topK(probs, 1, 3, 1, idx1, val1);
        assertArrayEquals(new int[] {1}, idx1);
        int[] idx3 = new int[3];
        float[] val3 = new float[3];
        topK(probs, 1, 3, 3, idx3, val3);
        assertArrayEquals(new int[] {1, 2, 0}, idx3);
        assertArrayEquals(new float[] {0.5f, 0.3f, 0.2f}, val3);
    }
}
