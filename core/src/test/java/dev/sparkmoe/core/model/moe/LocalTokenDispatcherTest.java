package dev.sparkmoe.core.model.moe;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.Test;

/** Worked examples of the expert-major permutation (DESIGN convention 12). */
class LocalTokenDispatcherTest {

    @Test
    void sortSlotsByExpertWorkedExample() {
        // 3 tokens, top-2, 4 experts. slot = token * 2 + k.
        //   token 0 -> experts (2, 0)   slots 0, 1
        //   token 1 -> experts (3, 2)   slots 2, 3
        //   token 2 -> experts (0, 3)   slots 4, 5
        // Expert 1 receives nothing. Expert-major order, slots of one expert in slot order:
        //   expert 0: slots 1, 4 | expert 1: - | expert 2: slots 0, 3 | expert 3: slots 2, 5
        int[] expertIds = {2, 0, 3, 2, 0, 3};
        int[] counts = new int[4];
        int[] slotOfRow = Backend.sortSlotsByExpert(expertIds, 4, counts);
        assertArrayEquals(new int[] {2, 0, 2, 2}, counts);
        assertArrayEquals(new int[] {1, 4, 0, 3, 2, 5}, slotOfRow);
    }

    @Test
    void trailingAndLeadingEmptyExperts() {
        // All slots to expert 2 of 5: experts 0, 1, 3, 4 empty; order is the identity.
        int[] counts = new int[5];
        assertArrayEquals(new int[] {0, 1, 2, 3}, Backend.sortSlotsByExpert(new int[] {2, 2, 2, 2}, 5,
                counts));
        assertArrayEquals(new int[] {0, 0, 4, 0, 0}, counts);
    }

    @Test
    void expertIdOutOfRangeIsRejected() {
        assertThrows(IllegalArgumentException.class,
                () -> Backend.sortSlotsByExpert(new int[] {0, 4}, 4, new int[4]));
        assertThrows(IllegalArgumentException.class,
                () -> Backend.sortSlotsByExpert(new int[] {-1, 0}, 4, new int[4]));
    }

    @Test
    void dispatchThenCombineWorkedExample() {
        CpuBackend be = new CpuBackend();
        // Token rows hold their token number: hidden [3, 2] = {{0, 0.5}, {1, 1.5}, {2, 2.5}}.
        Tensor hidden = Tensor.of(new float[] {0f, 0.5f, 1f, 1.5f, 2f, 2.5f}, 3, 2);
        int[] expertIds = {2, 0, 3, 2, 0, 3};
        TokenDispatcher.Dispatch d = LocalTokenDispatcher.INSTANCE.dispatch(be, hidden, Tensor.ofInts(expertIds, 6), 3,
                2, 2, 4);
        // Routed rows follow slotOfRow {1, 4, 0, 3, 2, 5}: tokens 0, 2, 0, 1, 1, 2.
        assertArrayEquals(new float[] {0f, 0.5f, 2f, 2.5f, 0f, 0.5f, 1f, 1.5f, 1f, 1.5f, 2f, 2.5f},
                d.routed().floats());
        assertArrayEquals(new int[] {2, 0, 2, 2}, d.localCounts());
        assertEquals(6, d.rows());
        // An "expert" that adds 10 * (row index) lets us see where each row lands after combine.
        Tensor out = d.routed().copy();
        for (int j = 0; j < 6; j++) {
            out.floats()[2 * j] += 10 * j;
        }
        TokenDispatcher.SlotRows slots = LocalTokenDispatcher.INSTANCE.combine(be, out, d);
        // the slots are the experts' rows where they are: slot s is routed row j with slotOfRow[j] = s
        assertSame(out, slots.rows());
        assertArrayEquals(new int[] {2, 0, 4, 3, 1, 5}, slots.rowOfSlot().ints());
        // the combine reads slot 0 <- row 2, 1 <- 0, 2 <- 4, 3 <- 3, 4 <- 1, 5 <- 5; weights 1 and 0.5
        Tensor weights = Tensor.of(new float[] {1f, 0.5f, 1f, 0.5f, 1f, 0.5f}, 6);
        Tensor y = Tensor.zeros(DType.F32, 3, 2);
        be.moeCombine(slots.rows(), slots.rowOfSlot(), weights, 3, 2, 2, y);
        assertArrayEquals(new float[] {20f + 0f, 0.75f, 41f + 15.5f, 2.25f, 12f + 26f, 3.75f}, y.floats());
        // its backward writes each slot's gradient at that slot's row
        Tensor dRows = Tensor.zeros(DType.F32, 6, 2);
        Tensor dWeights = Tensor.zeros(DType.F32, 6);
        be.moeCombineBackward(Tensor.of(new float[] {1f, 0f, 0f, 2f, 4f, 0f}, 3, 2), slots.rows(),
                slots.rowOfSlot(), weights, 3, 2, 2, dRows, dWeights);
        // row j holds slot slotOfRow[j] = {1, 4, 0, 3, 2, 5}: weights 0.5, 1, 1, 0.5, 1, 0.5 times its token's dy
        assertArrayEquals(new float[] {0.5f, 0f, 4f, 0f, 1f, 0f, 0f, 1f, 0f, 2f, 2f, 0f}, dRows.floats());
        // dWeights[s] = dot(dy[token], slot s's row): token 0 {1, 0}, 1 {0, 2}, 2 {4, 0}
        assertArrayEquals(new float[] {20f, 0f, 3f, 3f, 48f, 208f}, dWeights.floats());
        // dispatchBackward sums each token's two slots back into its row.
        Tensor dHidden = Tensor.zeros(DType.F32, 3, 2);
        LocalTokenDispatcher.INSTANCE.dispatchBackward(be, out, d, dHidden);
        assertArrayEquals(new float[] {20f + 0f, 1f, 41f + 31f, 3f, 12f + 52f, 5f}, dHidden.floats());
    }
}
