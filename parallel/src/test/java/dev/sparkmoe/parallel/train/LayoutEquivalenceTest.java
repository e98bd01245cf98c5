package dev.sparkmoe.parallel.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.model.Fixtures;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.io.SafeTensors;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.dtensor.DTensor;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Distributed equivalence (DESIGN convention 11): the fixture model on the same global batch at world 1 and under
 * every supported (dp_shard, ep) layout gives the same losses, gathered gradients and parameters after 3 AdamW
 * steps. Ranks are threads of this JVM with the in-JVM communicator, as Spark local[N] runs them.
 */
class LayoutEquivalenceTest {
    static String configJson;
    static Map<String, Tensor> full;
    static List<int[]> batch;
    static final int SEQ = 16;
    static Result reference;

    /** What one layout computed: per-step losses, the first step's gathered gradients, the final parameters. */
    record Result(double[] lm, double[] aux, Map<String, Tensor> grads, Map<String, Tensor> params) {
    }

    static Path fixture() throws Exception {
        return Fixtures.tiny();
    }

    @BeforeAll
    static void setUp() throws Exception {
        loadFixture();
        reference = run(1, 1);
    }

    /** The fixture's config, weights and a global batch, loaded once for the tests of this package. */
    static synchronized void loadFixture() throws Exception {
        if (full != null) {
            return;
        }
        Path dir = fixture();
        configJson = Files.readString(dir.resolve("config.json"));
        Qwen3MoeConfig config = Qwen3MoeConfig.parse(configJson);
        full = HfCheckpoint.loadStacked(dir, config.numExperts());
        Tensor ids = SafeTensors.read(dir.resolve("io.safetensors")).tensors().get("input_ids");
        // A global batch of 6 sequences of SEQ+1 tokens built from the fixture's ids: more sequences than some
        // layouts have ranks (uneven shares) and fewer than others (empty ranks).
        batch = new ArrayList<>();
        int n = ids.numel();
        for (int s = 0; s < 6; s++) {
            int[] seq = new int[SEQ + 1];
            for (int t = 0; t <= SEQ; t++) {
                seq[t] = (int) ids.longAt((s * 7 + t * 3) % n);
            }
            batch.add(seq);
        }
    }

    static TrainerSpec spec(int dp, int ep) {
        // AdamW moves a weight by about lr * g / (|g| + eps): where |g| is near eps, a rounding difference in g
        // between reduction orders (1e-9 on gradients of 1e-2) changes the update by up to dg / eps of lr. eps 1e-6
        // and lr 1e-4 bound that at ~1e-7, under the 1e-5-of-max tolerance, while an update applied to the wrong
        // shard element (a real bug) still moves a weight by ~lr = 1e-4, far over it.
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-4, 1e-5, 1, 3, "cosine", 0.9, 0.95,
                1e-6, 0.1, 1.0, 1);
        return new TrainerSpec(configJson, null, 0, dp, ep, SEQ, opt, "cpu", -1);
    }

    static Result run(int dp, int ep) {
        return InJvmRanks.run(dp, Duration.ofSeconds(60), c -> rank(c, dp, ep)).get(0);
    }

    /**
     * FSDP's overlap (prefetched all-gathers, reduce-scatters completed one unit later) against a communicator that
     * runs a started collective only when it is completed and shows NaN until then: the same bits as the blocking
     * run, and nothing left uncompleted. FSDP starts each unit's gathers and reductions as groups, never one by one.
     */
    @ParameterizedTest(name = "dp_shard={0}, ep={1}")
    @CsvSource({"2,1", "4,2"})
    void startedCollectivesGiveTheSameBits(int dp, int ep) {
        Result plain = run(dp, ep);
        List<Object[]> out = InJvmRanks.run(dp, Duration.ofSeconds(60), c -> {
            dev.sparkmoe.parallel.comm.DeferringCommunicator d = new dev.sparkmoe.parallel.comm.DeferringCommunicator(c);
            Result r = rank(d, dp, ep);
            return new Object[] {r, d.open(), d.singlesStarted(), d.groupsStarted(), d.wireGroups()};
        });
        Result r = (Result) out.get(0)[0];
        for (Object[] o : out) {
            assertEquals(0, (Integer) o[1], "started collectives never completed");
            assertEquals(0, (Integer) o[2], "collectives started one by one instead of as a unit's group");
            assertTrue((Integer) o[3] > 0, "no grouped collectives started");
        }
        for (Object[] o : out) {
            assertEquals(0, (Integer) o[4], "an f32 run asked for a narrower wire");
        }
        assertTrue(java.util.Arrays.equals(plain.lm, r.lm), "lm losses");
        assertTrue(java.util.Arrays.equals(plain.aux, r.aux), "aux losses");
        for (String k : plain.params.keySet()) {
            assertTrue(java.util.Arrays.equals(plain.grads.get(k).floats(), r.grads.get(k).floats()), "grad " + k);
            assertTrue(java.util.Arrays.equals(plain.params.get(k).floats(), r.params.get(k).floats()), "param " + k);
        }
    }

    static Result rank(Communicator c, int dp, int ep) {
        return rank(c, spec(dp, ep), full);
    }

    static Result rank(Communicator c, TrainerSpec spec, Map<String, Tensor> state) {
        int dp = spec.dpShard();
        // tracked: a tensor used after its release (FSDP, expert dispatch, the model) fails the test
        try (DistributedTrainer t = new DistributedTrainer(spec, c, MemoryTracker.wrap(new CpuBackend()), state)) {
            int[] mine = DTensor.chunkRange(batch.size(), dp, c.rank());
            List<int[]> share = batch.subList(mine[0], mine[1]);
            double[] lm = new double[3];
            double[] aux = new double[3];
            Map<String, Tensor> grads = new TreeMap<>();
            for (int step = 0; step < 3; step++) {
                List<int[]> in = new ArrayList<>();
                List<int[]> tg = new ArrayList<>();
                for (int[] s : share) {
                    in.add(java.util.Arrays.copyOfRange(s, 0, SEQ));
                    tg.add(java.util.Arrays.copyOfRange(s, 1, SEQ + 1));
                }
                DistributedTrainer.Gradients g = t.computeGradients(in, tg, SEQ);
                lm[step] = g.lmLoss();
                aux[step] = g.auxLoss();
                if (step == 0) {
                    for (FsdpParam p : t.shardedParameters()) {
                        grads.put(p.parameter().name(), t.gatherFull(p, p.shardGrad()));
                    }
                }
                t.applyGradients(g.gradNorm());
            }
            return new Result(lm, aux, grads, t.fullStackedState());
        }
    }

    @ParameterizedTest(name = "dp_shard={0}, ep={1}")
    @CsvSource({"2,1", "4,1", "2,2", "4,2", "4,4", "8,2"})
    void layoutMatchesWorldOne(int dp, int ep) throws Exception {
        Result r = run(dp, ep);
        for (int s = 0; s < 3; s++) {
            assertEquals(reference.lm[s], r.lm[s], 1e-6 * Math.abs(reference.lm[s]), "lm loss, step " + (s + 1));
            assertEquals(reference.aux[s], r.aux[s], 1e-6 * Math.abs(reference.aux[s]), "aux loss, step " + (s + 1));
        }
        assertEquals(reference.grads.keySet(), r.grads.keySet());
        for (String k : reference.grads.keySet()) {
            Fixtures.assertClose("grad " + k, reference.grads.get(k), r.grads.get(k), 1e-5);
            Fixtures.assertClose("param after 3 steps " + k, reference.params.get(k), r.params.get(k), 1e-5);
        }
    }

    /**
     * FSDP's bf16 param dtype on a communicator that honours a bf16 wire (as NCCL does; the CPU ones gather f32):
     * every weight a rank gathers holds its value rounded to bf16, so the first step at (dp_shard, ep) = (2, 1),
     * where every weight is gathered, computes exactly what world 1 computes on the weights rounded to bf16 (and
     * not what it computes on the f32 weights).
     */
    @org.junit.jupiter.api.Test
    void bf16ParamDtypeGathersBf16RoundedWeights() {
        // the fixture's weights are bf16 values already: scaled by 1 + 2^-10 most are not
        Map<String, Tensor> scaled = new TreeMap<>();
        Map<String, Tensor> rounded = new TreeMap<>();
        for (Map.Entry<String, Tensor> e : full.entrySet()) {
            float[] v = e.getValue().floats().clone();
            float[] w = new float[v.length];
            for (int i = 0; i < v.length; i++) {
                v[i] *= 1f + 0x1p-10f;
                w[i] = dev.sparkmoe.core.tensor.DType.roundToBf16(v[i]);
            }
            scaled.put(e.getKey(), Tensor.of(v, e.getValue().shape()));
            rounded.put(e.getKey(), Tensor.of(w, e.getValue().shape()));
        }
        Result onScaled = InJvmRanks.run(1, Duration.ofSeconds(60), c -> rank(c, spec(1, 1), scaled)).get(0);
        Result onRounded = InJvmRanks.run(1, Duration.ofSeconds(60), c -> rank(c, spec(1, 1), rounded)).get(0);
        TrainerSpec f32 = spec(2, 1);
        TrainerSpec bf16 = new TrainerSpec(f32.hfConfigJson(), null, 0, 2, 1, SEQ, f32.optimizer(), "cpu", -1, "bf16");
        List<Object[]> out = InJvmRanks.run(2, Duration.ofSeconds(60), c -> {
            dev.sparkmoe.parallel.comm.DeferringCommunicator d = new dev.sparkmoe.parallel.comm.DeferringCommunicator(c);
            Result r = rank(d, bf16, scaled);
            return new Object[] {r, d.wireGroups(), d.open()};
        });
        Result r = (Result) out.get(0)[0];
        for (Object[] o : out) {
            assertTrue((Integer) o[1] > 0, "no all-gather asked for a bf16 wire");
            assertEquals(0, (Integer) o[2], "started collectives never completed");
        }
        assertEquals(onRounded.lm[0], r.lm[0], 1e-6 * Math.abs(onRounded.lm[0]), "step 1 lm loss on bf16 weights");
        assertEquals(onRounded.aux[0], r.aux[0], 1e-6 * Math.abs(onRounded.aux[0]), "step 1 aux loss on bf16 weights");
        for (String k : onRounded.grads.keySet()) {
            Fixtures.assertClose("step 1 grad " + k, onRounded.grads.get(k), r.grads.get(k), 1e-5);
        }
        assertTrue(Math.abs(onScaled.lm[0] - r.lm[0]) > 1e-5 * Math.abs(onScaled.lm[0]),
                "the bf16-gathered step gave the f32 loss " + r.lm[0] + ": the weights were not rounded");
    }
}
