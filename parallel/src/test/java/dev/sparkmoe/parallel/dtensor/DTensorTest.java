package dev.sparkmoe.parallel.dtensor;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.Ranks;
import dev.sparkmoe.parallel.dtensor.Placement.Partial;
import dev.sparkmoe.parallel.dtensor.Placement.Replicate;
import dev.sparkmoe.parallel.dtensor.Placement.Shard;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import dev.sparkmoe.parallel.mesh.ParallelDims;
import java.util.List;
import org.junit.jupiter.api.Test;

class DTensorTest {

    private static Tensor iota(int... shape) {
        float[] v = new float[(int) Tensor.numel(shape)];
        for (int k = 0; k < v.length; k++) {
            v[k] = k * 0.37f - 3f;
        }
        return Tensor.of(v, shape);
    }

    private static void assertBitwise(Tensor expected, Tensor actual) {
        assertTrue(expected.bitwiseEquals(actual), "expected " + expected + " " + java.util.Arrays.toString(
                expected.floats()) + " but got " + actual + " " + java.util.Arrays.toString(actual.floats()));
    }

    @Test
    void chunkRangeWorkedExamples() {
        int[][] fiveOverFour = {{0, 2}, {2, 4}, {4, 5}, {5, 5}};
        for (int r = 0; r < 4; r++) {
            assertArrayEquals(fiveOverFour[r], DTensor.chunkRange(5, 4, r));
        }
        int[][] twoOverFour = {{0, 1}, {1, 2}, {2, 2}, {2, 2}};
        for (int r = 0; r < 4; r++) {
            assertArrayEquals(twoOverFour[r], DTensor.chunkRange(2, 4, r));
        }
        assertArrayEquals(new int[] {0, 0}, DTensor.chunkRange(0, 3, 2));
        assertArrayEquals(new int[] {4, 8}, DTensor.chunkRange(8, 2, 1));
        assertArrayEquals(new int[] {6, 7}, DTensor.chunkRange(7, 3, 2)); // chunk 3: [0,3) [3,6) [6,7)
        assertThrows(IllegalArgumentException.class, () -> DTensor.chunkRange(5, 4, 4));
    }

    @Test
    void unevenRowShardsAndRoundTrip() {
        Tensor full = iota(5, 3);
        List<int[]> shapes = Ranks.runOk(4, c -> {
            DTensor d = DTensor.distribute(full, List.of(c), List.of(new Shard(0)));
            int[] range = DTensor.chunkRange(5, 4, c.rank());
            assertBitwise(DTensor.narrow(full, 0, range[0], range[1]), d.local());
            assertArrayEquals(new int[] {range[0], 0}, d.localOffset());
            assertBitwise(full, d.fullTensor());
            return d.local().shape();
        });
        assertArrayEquals(new int[] {2, 3}, shapes.get(0));
        assertArrayEquals(new int[] {2, 3}, shapes.get(1));
        assertArrayEquals(new int[] {1, 3}, shapes.get(2));
        assertArrayEquals(new int[] {0, 3}, shapes.get(3));
    }

    @Test
    void emptyShardsAndInnerDimension() {
        Tensor rows = iota(2, 4);
        Tensor cols = iota(3, 5, 2);
        Ranks.runOk(4, c -> {
            DTensor d = DTensor.distribute(rows, List.of(c), List.of(new Shard(0)));
            assertEquals(c.rank() < 2 ? 1 : 0, d.local().dim(0));
            assertBitwise(rows, d.fullTensor());
            DTensor e = DTensor.distribute(cols, List.of(c), List.of(new Shard(1)));
            int[] range = DTensor.chunkRange(5, 4, c.rank());
            assertArrayEquals(new int[] {3, range[1] - range[0], 2}, e.local().shape());
            assertBitwise(DTensor.narrow(cols, 1, range[0], range[1]), e.local());
            assertBitwise(cols, e.fullTensor());
            return null;
        });
    }

    @Test
    void expertsOnTwoMeshDimensions() {
        // Experts [E=4, I=5, H=3] on (dp_shard=4, ep=2): Shard(0) on ep, Shard(1) on dp_shard_mod_ep.
        Tensor experts = iota(4, 5, 3);
        ParallelDims dims = new ParallelDims(4, 2, 4);
        Ranks.runOk(4, world -> {
            try (DeviceMesh mesh = DeviceMesh.forTraining(world, dims)) {
                DTensor d = DTensor.distribute(experts, mesh, List.of("ep", "dp_shard_mod_ep"),
                        List.of(new Shard(0), new Shard(1)));
                int r = world.rank();
                int epRank = r % 2; // rank = i_mod_ep * ep + i_in_ep
                int modRank = r / 2;
                int[] iRange = DTensor.chunkRange(5, 2, modRank); // [0,3) or [3,5)
                Tensor expected = DTensor.narrow(DTensor.narrow(experts, 0, 2 * epRank, 2 * epRank + 2), 1,
                        iRange[0], iRange[1]);
                assertBitwise(expected, d.local());
                assertArrayEquals(new int[] {2 * epRank, iRange[0], 0}, d.localOffset());
                assertBitwise(experts, d.fullTensor());
                // Unshard the FSDP dimension only: every ep rank holds its experts whole.
                DTensor epOnly = d.redistribute(List.of(new Shard(0), new Replicate()));
                assertBitwise(DTensor.narrow(experts, 0, 2 * epRank, 2 * epRank + 2), epOnly.local());
                // Move the shard to the other mesh dimension.
                DTensor moved = epOnly.redistribute(List.of(new Replicate(), new Shard(0)));
                assertBitwise(DTensor.narrow(experts, 0, 2 * modRank, 2 * modRank + 2), moved.local());
            }
            return null;
        });
    }

    @Test
    void nestedShardingOfOneDimension() {
        Tensor full = iota(7, 2);
        Ranks.runOk(4, world -> {
            try (DeviceMesh mesh = DeviceMesh.forTraining(world, new ParallelDims(4, 2, 4))) {
                // Rows split over dp_shard_mod_ep (7 -> 4, 3), then each piece over ep (4 -> 2, 2; 3 -> 2, 1).
                DTensor d = DTensor.distribute(full, mesh, List.of("dp_shard_mod_ep", "ep"),
                        List.of(new Shard(0), new Shard(0)));
                int[] offsets = {0, 2, 4, 6};
                int[] rows = {2, 2, 2, 1};
                int r = world.rank();
                assertBitwise(DTensor.narrow(full, 0, offsets[r], offsets[r] + rows[r]), d.local());
                assertBitwise(full, d.fullTensor());
                UnsupportedOperationException e = assertThrows(UnsupportedOperationException.class,
                        () -> d.redistribute(List.of(new Replicate(), new Shard(0))));
                assertTrue(e.getMessage().contains("nested sharding"), e.getMessage());
            }
            return null;
        });
    }

    @Test
    void partialToReplicateSums() {
        Ranks.runOk(3, c -> {
            float[] mine = new float[6];
            for (int k = 0; k < 6; k++) {
                mine[k] = (c.rank() + 1) * (k - 2) * 0.5f;
            }
            DTensor p = DTensor.fromLocal(Tensor.of(mine, 2, 3), List.of(c), List.of(new Partial()), new int[] {2, 3});
            DTensor r = p.redistribute(List.of(new Replicate()));
            for (int k = 0; k < 6; k++) {
                assertEquals(6 * (k - 2) * 0.5f, r.local().floats()[k]); // (1 + 2 + 3) * (k - 2) / 2
            }
            assertEquals((c.rank() + 1) * -1f, p.local().floats()[0]); // the source is untouched
            assertBitwise(r.local(), p.fullTensor());
            return null;
        });
    }

    @Test
    void partialToShardReduceScatters() {
        Ranks.runOk(4, c -> {
            // 5 rows of 2 over 4 ranks: the sum keeps rows chunkRange(5, 4, rank).
            float[] mine = new float[10];
            float[] sum = new float[10];
            for (int k = 0; k < 10; k++) {
                mine[k] = (c.rank() + 1) * k;
                sum[k] = 10 * k;
            }
            DTensor p = DTensor.fromLocal(Tensor.of(mine, 5, 2), List.of(c), List.of(new Partial()), new int[] {5, 2});
            DTensor s = p.redistribute(List.of(new Shard(0)));
            int[] range = DTensor.chunkRange(5, 4, c.rank());
            assertBitwise(DTensor.narrow(Tensor.of(sum, 5, 2), 0, range[0], range[1]), s.local());
            // Along an inner dimension too: [2, 5] sharded on dim 1.
            DTensor q = DTensor.fromLocal(Tensor.of(mine.clone(), 2, 5), List.of(c), List.of(new Partial()),
                    new int[] {2, 5}).redistribute(List.of(new Shard(1)));
            assertBitwise(DTensor.narrow(Tensor.of(sum, 2, 5), 1, range[0], range[1]), q.local());
            assertBitwise(Tensor.of(sum, 2, 5), q.fullTensor());
            return null;
        });
    }

    @Test
    void shardReplicateTransitions() {
        Tensor full = iota(6, 5);
        Ranks.runOk(3, c -> {
            DTensor rows = DTensor.distribute(full, List.of(c), List.of(new Shard(0)));
            DTensor rep = rows.redistribute(List.of(new Replicate()));
            assertBitwise(full, rep.local());
            DTensor cols = rows.redistribute(List.of(new Shard(1)));
            int[] range = DTensor.chunkRange(5, 3, c.rank());
            assertBitwise(DTensor.narrow(full, 1, range[0], range[1]), cols.local());
            DTensor back = rep.redistribute(List.of(new Shard(0)));
            assertBitwise(rows.local(), back.local());
            DTensor partial = rep.redistribute(List.of(new Partial()));
            assertBitwise(full, partial.fullTensor());
            return null;
        });
    }

    @Test
    void argumentErrors() {
        Ranks.runOk(2, c -> {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> DTensor.fromLocal(iota(1, 2), List.of(c), List.of(new Shard(0)), new int[] {5, 2}));
            assertTrue(e.getMessage().startsWith("local tensor has shape [1, 2] but placements [Shard(0)] of global"
                    + " shape [5, 2] give this rank [" + (c.rank() == 0 ? 3 : 2) + ", 2]"), e.getMessage());
            assertThrows(IllegalArgumentException.class,
                    () -> DTensor.distribute(iota(3), List.of(c), List.of(new Shard(1))));
            assertThrows(IllegalArgumentException.class,
                    () -> DTensor.distribute(iota(3), List.<Communicator>of(c), List.of()));
            return null;
        });
    }
}
