package dev.sparkmoe.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.train.TrainerSpec;
import dev.sparkmoe.spark.testing.Faults;
import dev.sparkmoe.spark.testing.RecordingFactory;
import dev.sparkmoe.spark.testing.SparkTestSession;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The Spark job with the real trainer (Qwen3-MoE, FSDP and expert parallelism over in-JVM ranks) on local[4]: the
 * loss falls, the run equals the same data order replayed outside Spark (at the same layout and on a single rank),
 * and a failed attempt resumes from its checkpoint to end bitwise equal to an uninterrupted run. The Spark runs
 * checkpoint activations (selective, full), the replays and the uninterrupted run do not: the setting reaches the
 * ranks and changes no bit.
 */
class RealTrainerJobTest {
    static SparkSession spark;
    static Dataset<Row> corpus;

    @TempDir
    Path tmp;

    @BeforeAll
    static void start() {
        spark = SparkTestSession.start();
        List<String> lines = new ArrayList<>();
        String[] s = {"the experts route every token to the two best of eight", "spark schedules one task per rank",
            "a barrier stage starts all ranks together", "the loss must fall as the model learns the text"};
        for (int i = 0; i < 64; i++) {
            lines.add(s[i % s.length] + ". " + s[(i * 3 + 1) % s.length] + ".");
        }
        corpus = spark.createDataset(lines, Encoders.STRING()).toDF("text");
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    SparkMoeTrainer.Builder job(Path out, int steps, RecordingFactory factory) {
        return SparkMoeTrainer.builder()
                .spark(spark)
                .dataset(corpus)
                .trainerFactory(factory)
                .set("model.preset", "qwen3-moe-tiny")
                .set("layout.world_size", 4)
                .set("layout.ep", 2)
                .set("training.steps", steps)
                .set("training.batch_sequences", 2)
                .set("training.seq_len", 32)
                .set("training.lr", 1e-2)
                .set("training.min_lr", 1e-3)
                .set("training.warmup_steps", 2)
                .set("training.backend", "cpu")
                .set("training.comm_timeout_s", 60)
                .set("output.progress", false)
                .set("output.max_shard_size", "100KB") // the model in several files and an index
                .set("output.dir", out.toUri().toString());
    }

    /** Replays a recorded run outside Spark on {@code world} in-JVM ranks; returns rank 0's metrics and weights. */
    static List<Object> replay(String runId, int steps, int world, int ep) {
        TrainerSpec s = RecordingFactory.spec(runId);
        TrainerSpec spec = new TrainerSpec(s.hfConfigJson(), s.initCheckpointDir(), s.seed(), world, ep, s.seqLen(),
                s.optimizer(), "cpu", -1);
        return InJvmRanks.run(world, Duration.ofSeconds(60), c -> {
            try (DistributedTrainer t = new DistributedTrainer(spec, c, new CpuBackend(), null)) {
                List<StepMetrics> m = new ArrayList<>();
                for (long step = 1; step <= steps; step++) {
                    List<int[]> mine = new ArrayList<>();
                    for (int r = 0; r < 4; r++) {
                        if (world == 4 ? r == c.rank() : true) {
                            mine.addAll(RecordingFactory.recorded(runId, r, step));
                        }
                    }
                    m.add(t.step(mine));
                }
                return List.<Object>of(m, t.fullModelState());
            }
        }).get(0);
    }

    static Map<String, Tensor> model(TrainResult r) throws Exception {
        Path dir = Path.of(java.net.URI.create(r.modelDir()));
        assertTrue(Files.isRegularFile(dir.resolve(HfCheckpoint.INDEX_FILE)), "the model is split: " + dir);
        return HfCheckpoint.load(dir);
    }

    @Test
    @SuppressWarnings("unchecked")
    void lossFallsAndTheRunEqualsTheSameDataReplayedOutsideSpark() throws Exception {
        // training.fsdp_prefetch reaches the ranks; it changes when gathers start, not what the step computes, so
        // the replay below (default prefetch, no checkpointing) still matches bit for bit; so does
        // training.activation_checkpointing, which changes only what the layers keep
        TrainResult r = job(tmp.resolve("run"), 12, new RecordingFactory("e2e", null))
                .set("training.fsdp_prefetch", 1).set("training.activation_checkpointing", "selective").fit();
        assertEquals(1, RecordingFactory.spec("e2e").fsdpPrefetch());
        assertEquals(1, RecordingFactory.spec("e2e").cpuBlasThreads());
        assertEquals("selective", RecordingFactory.spec("e2e").activationCheckpointing());
        double first = r.history().get(0).loss();
        double last = r.last().loss();
        assertTrue(last < first / 2, "loss should fall by at least 2x: first " + first + ", last " + last);
        List<Object> same = replay("e2e", 12, 4, 2);
        List<Object> single = replay("e2e", 12, 1, 1);
        for (int i = 0; i < 12; i++) {
            double spark = r.history().get(i).loss();
            assertEquals(spark, ((List<StepMetrics>) same.get(0)).get(i).loss(), 0.0, "same layout, step " + (i + 1));
            if (i < 3) {
                // One rank sums the gradients in another order; at this run's high learning rate AdamW amplifies
                // that rounding step by step (LayoutEquivalenceTest covers layouts with well-conditioned settings),
                // so the single-rank run is held to 1e-5 over the first steps.
                assertEquals(spark, ((List<StepMetrics>) single.get(0)).get(i).loss(), 1e-5 * spark,
                        "single rank, step " + (i + 1));
            }
        }
        Map<String, Tensor> sparkModel = model(r);
        Map<String, Tensor> replayed = (Map<String, Tensor>) same.get(1);
        assertEquals(replayed.keySet(), sparkModel.keySet());
        for (String k : replayed.keySet()) { // saved in bf16 (output.dtype's default), rounded to nearest even
            assertTrue(replayed.get(k).to(DType.BF16).bitwiseEquals(sparkModel.get(k)), k + " differs from the replay");
        }
    }

    @Test
    void aFailedAttemptResumesFromItsCheckpointAndEndsBitwiseEqual() throws Exception {
        TrainResult ref = job(tmp.resolve("ref"), 7, new RecordingFactory("ref", null))
                .set("checkpoint.every", 3).fit();
        Faults.Plan once = Faults.plan("real-retry", 1, 5, "step", 1);
        TrainResult r = job(tmp.resolve("faulty"), 7, new RecordingFactory("faulty", once))
                .set("checkpoint.every", 3).set("training.activation_checkpointing", "full").fit();
        assertEquals("full", RecordingFactory.spec("faulty").activationCheckpointing());
        assertEquals(1, Faults.fired("real-retry", 1));
        assertEquals(2, r.attempts());
        assertEquals(3, r.resumedFrom());
        Map<String, Tensor> a = model(ref);
        Map<String, Tensor> b = model(r);
        for (String k : a.keySet()) {
            assertTrue(a.get(k).bitwiseEquals(b.get(k)), k + ": the resumed run differs from the uninterrupted one");
        }
    }
}
