package dev.sparkmoe.parallel.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * A rank state (what Spark checkpoints hold per rank) restores only at the shard placement it was saved with: it
 * records each shard's region, and a state from another placement is refused by name before anything is loaded.
 */
class RankStateTest {
    static final String EXPERT = "model.layers.0.mlp.experts.gate_proj";

    @BeforeAll
    static void setUp() throws Exception {
        LayoutEquivalenceTest.loadFixture();
    }

    /** Runs {@code body} on rank 0 of a (2, 1) trainer (rank 1 builds its trainer alongside). */
    static void onRankZero(java.util.function.Consumer<DistributedTrainer> body) {
        InJvmRanks.run(2, Duration.ofSeconds(60), c -> {
            try (DistributedTrainer t = new DistributedTrainer(LayoutEquivalenceTest.spec(2, 1), c, new CpuBackend(),
                    LayoutEquivalenceTest.full)) {
                if (c.rank() == 0) {
                    body.accept(t);
                }
                return null;
            }
        });
    }

    @Test
    void statesRecordTheirRegionsAndLoadAtTheirPlacement() {
        onRankZero(t -> {
            Map<String, Tensor> state = t.rankState();
            assertTrue(state.containsKey("region/" + EXPERT), state.keySet().toString());
            t.loadState(state);
            assertEquals(state.keySet(), t.rankState().keySet());
            for (String k : state.keySet()) {
                if (k.startsWith("param/")) {
                    assertArrayEquals(state.get(k).floats(), t.rankState().get(k).floats(), k);
                }
            }
        });
    }

    @Test
    void aStateFromAnotherPlacementIsRefusedBeforeAnythingLoads() {
        onRankZero(t -> {
            Map<String, Tensor> before = t.rankState();
            Map<String, Tensor> other = changedParams(before);
            int[] region = before.get("region/" + EXPERT).ints().clone();
            region[3] = region[3] + 1; // dim 1 covered differently
            other.put("region/" + EXPERT, Tensor.ofInts(region, region.length));
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> t.loadState(other));
            assertTrue(e.getMessage().contains(EXPERT) && e.getMessage().contains("another shard placement"),
                    e.getMessage());
            assertUnchanged(before, t.rankState());
        });
    }

    @Test
    void aStateWithoutRegionsIsCheckedByItsShapes() {
        onRankZero(t -> {
            Map<String, Tensor> before = t.rankState();
            Map<String, Tensor> legacy = changedParams(before);
            legacy.keySet().removeIf(k -> k.startsWith("region/"));
            t.loadState(legacy); // same shapes: an older state at the same placement loads
            t.loadState(before);
            Tensor m = legacy.get("exp_avg/" + EXPERT);
            int[] s = m.shape(); // the same elements split the other way, as dim-1 expert shards were
            legacy.put("exp_avg/" + EXPERT, Tensor.of(m.floats().clone(), s[0] / 2, s[1] * 2, s[2]));
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> t.loadState(legacy));
            assertTrue(e.getMessage().contains("exp_avg/") && e.getMessage().contains("checkpoint directory"),
                    e.getMessage());
            assertUnchanged(before, t.rankState());
        });
    }

    /** A copy of {@code state} whose parameters all differ, so that a partial load would show. */
    private static Map<String, Tensor> changedParams(Map<String, Tensor> state) {
        Map<String, Tensor> out = new LinkedHashMap<>(state);
        for (Map.Entry<String, Tensor> e : state.entrySet()) {
            if (e.getKey().startsWith("param/")) {
                Tensor c = e.getValue().copy();
                float[] f = c.floats();
                for (int i = 0; i < f.length; i++) {
                    f[i] += 1f;
                }
                out.put(e.getKey(), c);
            }
        }
        return out;
    }

    private static void assertUnchanged(Map<String, Tensor> before, Map<String, Tensor> after) {
        for (String k : before.keySet()) {
            if (before.get(k).dtype().isFloating()) {
                assertArrayEquals(before.get(k).floats(), after.get(k).floats(), k + " changed by a refused load");
            }
        }
    }
}
