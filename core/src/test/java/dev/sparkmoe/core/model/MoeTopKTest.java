package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import org.junit.jupiter.api.Test;

/** Worked examples of MoeBlock.topK: descending value, ties to the lower expert index (torch.topk on the CPU). */
class MoeTopKTest {

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
        MoeBlock.topK(probs, 4, 4, 2, idx, val);
        assertArrayEquals(new int[] {1, 2, 0, 3, 1, 2, 0, 3}, idx);
        assertArrayEquals(new float[] {0.3f, 0.3f, 0.4f, 0.4f, 0.5f, 0.2f, 0.7f, 0.2f}, val);
    }

    @Test
    void topOneAndTopAll() {
        float[] probs = {0.2f, 0.5f, 0.3f};
        int[] idx1 = new int[1];
        float[] val1 = new float[1];
        MoeBlock.topK(probs, 1, 3, 1, idx1, val1);
        assertArrayEquals(new int[] {1}, idx1);
        int[] idx3 = new int[3];
        float[] val3 = new float[3];
        MoeBlock.topK(probs, 1, 3, 3, idx3, val3);
        assertArrayEquals(new int[] {1, 2, 0}, idx3);
        assertArrayEquals(new float[] {0.5f, 0.3f, 0.2f}, val3);
    }
}
