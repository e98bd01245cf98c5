package dev.sparkmoe.core.tensor;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Worked examples of a region's runs (DESIGN convention 12). */
class RegionTest {

    /** Runs as {fullIndex, at, length}. */
    static List<long[]> runs(Region r, long from, int count) throws IOException {
        List<long[]> out = new ArrayList<>();
        r.forEachRun(from, count, (full, at, len) -> out.add(new long[] {full, at, len}));
        return out;
    }

    static void assertRuns(List<long[]> got, long[]... expected) {
        assertEquals(expected.length, got.size(), "number of runs");
        for (int i = 0; i < expected.length; i++) {
            assertArrayEquals(expected[i], got.get(i), "run " + i);
        }
    }

    @Test
    void wholeRowsOfAMatrixAreOneRun() throws IOException {
        Region r = new Region(new int[] {4, 4}, new int[][] {{1, 3}, {0, 4}});
        assertEquals(8, r.numel());
        assertArrayEquals(new int[] {2, 4}, r.shape());
        assertRuns(runs(r, 0, 8), new long[] {4, 0, 8});
        assertRuns(runs(r, 3, 4), new long[] {7, 0, 4});
    }

    @Test
    void columnsOfAMatrixAreOneRunPerRow() throws IOException {
        Region r = new Region(new int[] {4, 4}, new int[][] {{0, 2}, {1, 3}});
        assertRuns(runs(r, 0, 4), new long[] {1, 0, 2}, new long[] {5, 2, 2});
        // a range that starts inside a run
        assertRuns(runs(r, 1, 2), new long[] {2, 0, 1}, new long[] {5, 1, 1});
    }

    @Test
    void expertsSplitOnDimOneAreOneRunPerExpert() throws IOException {
        // [E=4, I=6, H=5], experts 1..2, rows 2..3 of each: 10 contiguous elements per expert
        Region r = new Region(new int[] {4, 6, 5}, new int[][] {{1, 3}, {2, 4}, {0, 5}});
        assertRuns(runs(r, 0, 20), new long[] {40, 0, 10}, new long[] {70, 10, 10});
        assertRuns(runs(r, 5, 10), new long[] {45, 0, 5}, new long[] {70, 5, 5});
    }

    @Test
    void expertsSplitOnDimZeroAreOneRun() throws IOException {
        Region r = new Region(new int[] {4, 6, 5}, new int[][] {{1, 3}, {0, 6}, {0, 5}});
        assertRuns(runs(r, 0, 60), new long[] {30, 0, 60});
    }

    @Test
    void aBoxInsideEveryDimension() throws IOException {
        // [3, 4, 5]: [1,3) x [1,3) x [2,4): rows (1,1) (1,2) (2,1) (2,2), 2 elements each
        Region r = new Region(new int[] {3, 4, 5}, new int[][] {{1, 3}, {1, 3}, {2, 4}});
        assertRuns(runs(r, 0, 8), new long[] {27, 0, 2}, new long[] {32, 2, 2}, new long[] {47, 4, 2},
                new long[] {52, 6, 2});
    }

    @Test
    void wholeTensorsAndScalars() throws IOException {
        assertRuns(runs(Region.whole(3, 7), 0, 21), new long[] {0, 0, 21});
        assertRuns(runs(Region.whole(3, 7), 20, 1), new long[] {20, 0, 1});
        assertRuns(runs(Region.whole(), 0, 1), new long[] {0, 0, 1});
        assertEquals(0, Region.whole(0, 5).numel());
        assertRuns(runs(new Region(new int[] {4, 4}, new int[][] {{4, 4}, {0, 4}}), 0, 0));
    }

    @Test
    void everyElementIsVisitedOnceInBoxOrder() throws IOException {
        int[] full = {5, 3, 4};
        Region r = new Region(full, new int[][] {{1, 4}, {0, 2}, {1, 4}});
        List<Long> seen = new ArrayList<>();
        for (long from = 0; from < r.numel(); from += 4) {
            int count = (int) Math.min(4, r.numel() - from);
            r.forEachRun(from, count, (f, at, len) -> {
                for (int i = 0; i < len; i++) {
                    seen.add(f + i);
                }
            });
        }
        List<Long> expected = new ArrayList<>();
        for (int a = 1; a < 4; a++) {
            for (int b = 0; b < 2; b++) {
                for (int c = 1; c < 4; c++) {
                    expected.add((long) (a * 12 + b * 4 + c));
                }
            }
        }
        assertEquals(expected, seen);
    }

    @Test
    void badBoxesAreClearErrors() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> new Region(new int[] {4, 4}, new int[][] {{0, 5}, {0, 4}}));
        assertTrue(e.getMessage().contains("[0, 5] x [0, 4]") && e.getMessage().contains("<= 4"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> new Region(new int[] {4, 4}, new int[][] {{0, 4}}));
        assertTrue(e.getMessage().contains("1 dimensions"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Region.whole(2, 2).forEachRun(3, 2, (f, a, l) -> { }));
        assertTrue(e.getMessage().contains("[3, 5)"), e.getMessage());
    }
}
