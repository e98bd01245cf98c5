package dev.sparkmoe.parallel.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.checkpoint.Regions;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

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

    /** One AdamW step at (dp, ep), then every rank's state. */
    static List<Map<String, Tensor>> statesAfterOneStep(int dp, int ep) {
        return InJvmRanks.run(dp, Duration.ofSeconds(60), c -> {
            try (DistributedTrainer t = new DistributedTrainer(LayoutEquivalenceTest.spec(dp, ep), c, new CpuBackend(),
                    LayoutEquivalenceTest.full)) {
                List<int[]> mine = new ArrayList<>();
                for (int i = c.rank(); i < LayoutEquivalenceTest.batch.size(); i += dp) {
                    mine.add(LayoutEquivalenceTest.batch.get(i));
                }
                t.step(mine);
                return t.rankState();
            }
        });
    }

    /**
     * A state saved by four ranks with expert parallelism 2 resumes on one, two and three ranks (resume on fewer
     * executors): each rank cuts its shards out of the saved ones, and the states they then save cover the same
     * values, parameters and both AdamW moments, bit for bit.
     */
    @ParameterizedTest(name = "saved at (4, 2), resumed at ({0}, {1})")
    @CsvSource({"1,1", "2,1", "2,2", "3,1"})
    void aStateSavedAtOneLayoutResumesAtAnother(int dp, int ep) {
        List<Map<String, Tensor>> saved = statesAfterOneStep(4, 2);
        Map<String, Tensor> want = assemble(saved);
        List<Map<String, Tensor>> resumed = InJvmRanks.run(dp, Duration.ofSeconds(60), c -> {
            try (DistributedTrainer t = new DistributedTrainer(LayoutEquivalenceTest.spec(dp, ep), c, new CpuBackend(),
                    null)) {
                t.loadResharded(saved.size(), saved::get);
                assertEquals(1, t.stepsTaken());
                return t.rankState();
            }
        });
        Map<String, Tensor> got = assemble(resumed);
        assertEquals(want.keySet(), got.keySet());
        for (String k : want.keySet()) {
            assertArrayEquals(want.get(k).floats(), got.get(k).floats(), k);
        }
    }

    @Test
    void aResumeFromStatesThatDoNotCoverItsShardsIsRefused() {
        List<Map<String, Tensor>> saved = statesAfterOneStep(2, 1);
        InJvmRanks.run(1, Duration.ofSeconds(60), c -> {
            try (DistributedTrainer t = new DistributedTrainer(LayoutEquivalenceTest.spec(1, 1), c, new CpuBackend(),
                    null)) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                        () -> t.loadResharded(1, r -> saved.get(0)));
                assertTrue(e.getMessage().contains("saved ranks cover") && e.getMessage().contains(EXPERT),
                        e.getMessage());
                return null;
            }
        });
    }

    /** Full tensors per state key ("param/NAME" ...), assembled from every rank's regions. */
    static Map<String, Tensor> assemble(List<Map<String, Tensor>> states) {
        Map<String, Tensor> out = new java.util.TreeMap<>();
        Map<String, int[]> shapes = new java.util.HashMap<>();
        for (Map<String, Tensor> st : states) {
            for (Map.Entry<String, Tensor> e : st.entrySet()) {
                if (e.getKey().startsWith("region/")) {
                    int[][] r = Regions.of(e.getValue());
                    int[] hi = shapes.computeIfAbsent(e.getKey().substring(7), k -> new int[r.length]);
                    for (int d = 0; d < r.length; d++) {
                        hi[d] = Math.max(hi[d], r[d][1]);
                    }
                }
            }
        }
        for (Map<String, Tensor> st : states) {
            for (String kind : new String[] {"param/", "exp_avg/", "exp_avg_sq/"}) {
                for (Map.Entry<String, int[]> n : shapes.entrySet()) {
                    int[][] region = Regions.of(st.get("region/" + n.getKey()));
                    int[][] whole = new int[region.length][];
                    for (int d = 0; d < region.length; d++) {
                        whole[d] = new int[] {0, n.getValue()[d]};
                    }
                    Tensor full = out.computeIfAbsent(kind + n.getKey(),
                            k -> Tensor.zeros(dev.sparkmoe.core.tensor.DType.F32, n.getValue()));
                    Regions.copyOverlap(st.get(kind + n.getKey()), region, full, whole);
                }
            }
        }
        return out;
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
