package dev.sparkmoe.parallel.expert;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.model.moe.TokenDispatcher;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Worked examples of token counts, split sizes and permutation indices (DESIGN convention 12). */
class DispatchWorkedExamplesTest {

    @Test
    void localOrderGroupsReceivedRowsByExpertThenSource() {
        // 2 local experts, 3 source ranks. Received rows arrive source-major:
        //   source 0: e0 x1, e1 x2 -> rows 0 | 1 2
        //   source 1: e0 x0, e1 x0 -> (sends nothing)
        //   source 2: e0 x2, e1 x1 -> rows 3 4 | 5
        // Local order is expert-major: e0 rows [0 (s0), 3, 4 (s2)], e1 rows [1, 2 (s0), 5 (s2)].
        int[][] recv = {{1, 2}, {0, 0}, {2, 1}};
        int[] counts = new int[2];
        int[] localOf = AllToAllTokenDispatcher.localOrder(recv, 2, counts);
        assertArrayEquals(new int[] {3, 3}, counts);
        // received row r -> local row: 0->0, 1->3, 2->4, 3->1, 4->2, 5->5
        assertArrayEquals(new int[] {0, 3, 4, 1, 2, 5}, localOf);
    }

    @Test
    void localOrderWithAnExpertThatGetsNothing() {
        int[][] recv = {{0, 2}, {0, 1}};
        int[] counts = new int[2];
        int[] localOf = AllToAllTokenDispatcher.localOrder(recv, 2, counts);
        assertArrayEquals(new int[] {0, 3}, counts);
        assertArrayEquals(new int[] {0, 1, 2}, localOf);
    }

    @Test
    void slotsSortByExpertStably() {
        // 3 tokens, top-2: slots (token,k) = 0:(0,0) 1:(0,1) 2:(1,0) 3:(1,1) 4:(2,0) 5:(2,1)
        int[] expertOfSlot = {3, 0, 0, 2, 3, 0};
        int[] counts = new int[4];
        int[] slotOfRow = Backend.sortSlotsByExpert(expertOfSlot, 4, counts);
        assertArrayEquals(new int[] {3, 0, 1, 2}, counts); // expert 1 gets no tokens
        assertArrayEquals(new int[] {1, 2, 5, 3, 0, 4}, slotOfRow);
    }

    /**
     * Two ep ranks, 4 experts (2 each). Rank 0 routes its 2 tokens (top-1) to experts 3 and 2, rank 1 sends
     * nothing (no tokens). Rank 1 must receive both rows, in local order expert 2 then 3, and combine must return
     * each expert's output to the right slot of rank 0.
     */
    @Test
    void allToAllDispatchAndCombineWithARankThatSendsNothing() {
        List<float[]> results = InJvmRanks.run(2, Duration.ofSeconds(10), c -> {
            AllToAllTokenDispatcher d = new AllToAllTokenDispatcher(c, 4);
            CpuBackend be = new CpuBackend();
            int tokens = c.rank() == 0 ? 2 : 0;
            Tensor hidden = Tensor.of(c.rank() == 0 ? new float[] {10, 11, 20, 21} : new float[0], tokens, 2);
            int[] experts = c.rank() == 0 ? new int[] {3, 2} : new int[0];
            TokenDispatcher.Dispatch disp = d.dispatch(be, hidden, Tensor.ofInts(experts, experts.length), tokens, 1,
                    2, 4);
            if (c.rank() == 1) {
                assertArrayEquals(new int[] {1, 1}, disp.localCounts());
                assertEquals(2, disp.firstExpert());
                // expert 2's row (token 1: 20, 21) first, then expert 3's (token 0: 10, 11)
                assertArrayEquals(new float[] {20, 21, 10, 11}, disp.routed().floats());
            } else {
                assertArrayEquals(new int[] {0, 0}, disp.localCounts());
            }
            // "experts" add 100 * (local row + 1) so that misplaced rows show
            float[] out = disp.routed().floats().clone();
            for (int r = 0; r < disp.rows(); r++) {
                out[2 * r] += 100 * (r + 1);
                out[2 * r + 1] += 100 * (r + 1);
            }
            Tensor slots = d.combine(be, Tensor.of(out, disp.rows(), 2), disp).rows(); // in slot order
            return slots.floats();
        });
        // token 0 went to expert 3 (local row 1 on rank 1: +200), token 1 to expert 2 (local row 0: +100)
        assertArrayEquals(new float[] {210, 211, 120, 121}, results.get(0));
        assertArrayEquals(new float[0], results.get(1));
    }
}
