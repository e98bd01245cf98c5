package dev.sparkmoe.gpu.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/**
 * The host's plan of the deterministic embedding backward ({@link EmbeddingAndLoss#runsById}), no GPU needed: token
 * positions sorted by id with each id's positions in token order, the start of each run of equal ids and its id;
 * an id outside the table refused by name.
 */
class EmbeddingRunsTest {

    @Test
    void positionsByIdInTokenOrderWithTheirRuns() {
        int[] ids = {5, 2, 5, 9, 2, 5, 0};
        int[] plan = EmbeddingAndLoss.runsById(ids, 10);
        int tokens = ids.length;
        // order: id 0 at 6; id 2 at 1, 4; id 5 at 0, 2, 5; id 9 at 3
        assertArrayEquals(new int[] {6, 1, 4, 0, 2, 5, 3}, java.util.Arrays.copyOfRange(plan, 0, tokens));
        assertArrayEquals(new int[] {0, 1, 3, 6, 7}, java.util.Arrays.copyOfRange(plan, tokens, tokens + 5));
        assertArrayEquals(new int[] {0, 2, 5, 9}, java.util.Arrays.copyOfRange(plan, tokens + 5, plan.length));
        assertArrayEquals(new int[] {0, 0, 1, 3}, EmbeddingAndLoss.runsById(new int[] {3}, 4));
    }

    @Test
    void refusesAnIdOutsideTheTable() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> EmbeddingAndLoss.runsById(new int[] {1, 4, 2}, 4));
        assertTrue(e.getMessage().contains("token id 4 at position 1 is outside the table [0, 4)"), e.getMessage());
    }
}
