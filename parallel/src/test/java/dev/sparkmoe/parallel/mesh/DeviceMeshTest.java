package dev.sparkmoe.parallel.mesh;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.Ranks;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;

class DeviceMeshTest {

    /** The distinct groups of a view, over all ranks of the layout. */
    private static Set<List<Integer>> groups(ParallelDims dims, String view) {
        Set<List<Integer>> out = new LinkedHashSet<>();
        for (int r = 0; r < dims.worldSize(); r++) {
            DeviceMesh m = DeviceMesh.trainingLayout(dims, r);
            DeviceMesh.Group g = m.get(view);
            assertEquals(r, g.ranks().get(g.localRank()), "rank " + r + " is at its local rank in " + view);
            out.add(g.ranks());
        }
        return out;
    }

    @Test
    void dpShard8Ep2() {
        ParallelDims d = new ParallelDims(8, 2, 8);
        // ep groups are contiguous pairs; dp_shard_mod_ep groups take one rank out of each ep group.
        assertEquals(List.of(List.of(0, 1), List.of(2, 3), List.of(4, 5), List.of(6, 7)),
                new ArrayList<>(groups(d, "ep")));
        assertEquals(groups(d, "ep"), groups(d, "dp_shard_in_ep"));
        assertEquals(List.of(List.of(0, 2, 4, 6), List.of(1, 3, 5, 7)),
                new ArrayList<>(groups(d, "dp_shard_mod_ep")));
        assertEquals(List.of(List.of(0, 1, 2, 3, 4, 5, 6, 7)), new ArrayList<>(groups(d, "fsdp")));
        assertEquals(groups(d, "fsdp"), groups(d, "dp_shard"));
        DeviceMesh m5 = DeviceMesh.trainingLayout(d, 5);
        assertArrayEquals(new int[] {2, 1}, m5.coordinate()); // 5 = i_mod_ep * ep + i_in_ep = 2 * 2 + 1
        assertEquals(1, m5.get("ep").localRank());
        assertEquals(2, m5.get("dp_shard_mod_ep").localRank());
        assertEquals(5, m5.get("fsdp").localRank());
        assertEquals(5, m5.rankAt(2, 1));
    }

    @Test
    void dpShard4Ep4() {
        ParallelDims d = new ParallelDims(4, 4, 4);
        assertEquals(List.of(List.of(0, 1, 2, 3)), new ArrayList<>(groups(d, "ep")));
        assertEquals(List.of(List.of(0), List.of(1), List.of(2), List.of(3)),
                new ArrayList<>(groups(d, "dp_shard_mod_ep")));
    }

    @Test
    void dpShard4Ep1() {
        ParallelDims d = new ParallelDims(4, 1, 4);
        assertEquals(List.of(List.of(0), List.of(1), List.of(2), List.of(3)), new ArrayList<>(groups(d, "ep")));
        assertEquals(List.of(List.of(0, 1, 2, 3)), new ArrayList<>(groups(d, "dp_shard_mod_ep")));
        assertEquals(List.of(List.of(0, 1, 2, 3)), new ArrayList<>(groups(d, "fsdp")));
    }

    @Test
    void dpShard1Ep1() {
        ParallelDims d = new ParallelDims(1, 1, 1);
        for (String v : List.of("ep", "dp_shard_mod_ep", "dp_shard_in_ep", "fsdp", "dp_shard")) {
            assertEquals(List.of(List.of(0)), new ArrayList<>(groups(d, v)));
        }
    }

    @Test
    void unknownNameListsKnownOnes() {
        DeviceMesh m = DeviceMesh.trainingLayout(new ParallelDims(4, 2, 4), 0);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> m.get("tp"));
        assertEquals("no mesh dimension or view named 'tp'; known: [dp_shard_mod_ep, dp_shard_in_ep, ep, fsdp,"
                + " dp_shard]", e.getMessage());
        assertThrows(IllegalStateException.class, () -> m.get("ep").communicator());
    }

    @Test
    void threeDimensionalLayoutWithFlattenedView() {
        // [2, 3, 2] mesh: view over dims a and c for rank 7 = (1, 0, 1).
        DeviceMesh m = DeviceMesh.layout(7, new int[] {2, 3, 2}, new String[] {"a", "b", "c"},
                Map.of("ac", List.of("a", "c")));
        assertArrayEquals(new int[] {1, 0, 1}, m.coordinate());
        assertEquals(List.of(0, 1, 6, 7), m.get("ac").ranks());
        assertEquals(3, m.get("ac").localRank());
        assertEquals(List.of(7, 9, 11), m.get("b").ranks());
        assertThrows(IllegalArgumentException.class, () -> DeviceMesh.layout(0, new int[] {2, 2},
                new String[] {"a", "b"}, Map.of("ba", List.of("b", "a"))));
    }

    @Test
    void communicatorsMatchTheLayout() {
        ParallelDims d = new ParallelDims(8, 2, 8);
        Ranks.runOk(8, world -> {
            try (DeviceMesh m = DeviceMesh.forTraining(world, d)) {
                for (String v : m.names()) {
                    DeviceMesh.Group g = m.get(v);
                    Communicator c = g.communicator();
                    assertEquals(g.size(), c.size(), v);
                    assertEquals(g.localRank(), c.rank(), v);
                    int[] members = new int[c.size()];
                    c.allGather(new int[] {world.rank()}, 0, 1, members, 0);
                    assertEquals(g.ranks(), java.util.Arrays.stream(members).boxed().toList(), v);
                }
                assertTrue(m.get("ep").communicator() == m.get("dp_shard_in_ep").communicator());
                assertEquals("ep", m.get("dp_shard_in_ep").communicator().name());
                assertEquals("fsdp", m.get("dp_shard").communicator().name());
                assertEquals("dp_shard_mod_ep", m.get("dp_shard_mod_ep").communicator().name());
            }
            return null;
        });
    }
}
