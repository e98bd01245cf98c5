package dev.sparkmoe.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.spark.ckpt.CheckpointStore;
import dev.sparkmoe.spark.kryo.SparkMoeKryoRegistrator;
import dev.sparkmoe.spark.testing.PacedFactory;
import dev.sparkmoe.spark.testing.StandaloneCluster;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.io.TempDir;

/**
 * The Spark job as it runs on a cluster: a standalone Master and two Workers, each a JVM of its own, one one-core
 * executor JVM per Worker, world 2 with expert parallelism 2, ranks meeting over the TCP mesh, the real trainer on
 * the CPU. An executor killed ({@code kill -9}) after a committed checkpoint makes the driver retry and resume, and
 * the model ends byte-identical to a {@code local[2]} run; with {@code training.elastic}, a Worker stopped for good
 * leaves the job to finish on the one rank left, its losses continuing the curve of the uninterrupted run. Both runs
 * are jobs of one application (its executors start once), and the cluster boots while the {@code local[2]} reference
 * trains: on a busy 2-core machine the JVMs' start-up is most of the time.
 */
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class SeparateExecutorsTest {
    static final int STEPS = 12;
    @TempDir
    static Path tmp;
    static StandaloneCluster cluster;
    static SparkSession app;
    static TrainResult reference;
    static byte[] referenceModel;

    static List<String> corpus() {
        List<String> lines = new ArrayList<>();
        String[] s = {"the experts route every token to the two best of eight", "spark schedules one task per rank",
            "a barrier stage starts all ranks together", "the loss must fall as the model learns the text"};
        for (int i = 0; i < 64; i++) {
            lines.add(s[i % s.length] + ". " + s[(i * 3 + 1) % s.length] + ".");
        }
        return lines;
    }

    static SparkSession session(String master, Map<String, String> conf) {
        SparkSession.Builder b = SparkSession.builder().master(master).appName("spark-moe-separate-executors")
                .config("spark.ui.enabled", "false")
                .config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
                .config("spark.kryo.registrator", SparkMoeKryoRegistrator.class.getName())
                .config("spark.sql.shuffle.partitions", "2")
                .config("spark.default.parallelism", "2")
                .config("spark.driver.host", "127.0.0.1")
                .config("spark.driver.bindAddress", "127.0.0.1");
        conf.forEach(b::config);
        return b.getOrCreate();
    }

    static TrainResult train(SparkSession spark, Path out, Consumer<SparkMoeTrainer.Builder> more) {
        SparkMoeTrainer.Builder b = SparkMoeTrainer.builder()
                .spark(spark)
                .dataset(spark.createDataset(corpus(), Encoders.STRING()).toDF("text"))
                .trainerFactory(new PacedFactory(250))
                .set("model.preset", "qwen3-moe-tiny")
                .set("layout.world_size", 2)
                .set("layout.ep", 2)
                .set("training.steps", STEPS)
                .set("training.batch_sequences", 2)
                .set("training.seq_len", 32)
                .set("training.lr", 1e-3)
                .set("training.min_lr", 1e-4)
                .set("training.warmup_steps", 2)
                .set("training.backend", "cpu")
                .set("training.comm_timeout_s", 60)
                .set("training.elastic_wait_s", 120)
                .set("checkpoint.every", 4)
                .set("output.progress", false)
                .set("output.dir", out.toUri().toString());
        more.accept(b);
        return b.fit();
    }

    @BeforeAll
    static void start() throws Exception {
        java.util.concurrent.CompletableFuture<StandaloneCluster> booting =
                java.util.concurrent.CompletableFuture.supplyAsync(() -> {
                    try {
                        return new StandaloneCluster(tmp.resolve("cluster"), 2, 1, "1g");
                    } catch (java.io.IOException | InterruptedException e) {
                        throw new java.util.concurrent.CompletionException(e);
                    }
                });
        try {
            SparkSession local = session("local[2]", Map.of());
            try {
                reference = train(local, tmp.resolve("local"), b -> { });
            } finally {
                local.stop();
            }
        } finally {
            cluster = booting.join();
        }
        referenceModel = Files.readAllBytes(tmp.resolve("local/run-001/model/model.safetensors"));
        app = session(cluster.masterUrl(), cluster.appConf());
    }

    @AfterAll
    static void stop() {
        try {
            if (app != null) {
                app.stop();
            }
        } finally {
            if (cluster != null) {
                cluster.close();
            }
        }
    }

    /** Runs {@code action} once {@code out}'s checkpoint of step 4 is committed (the job runs meanwhile). */
    static Thread after(Path out, Runnable action) {
        CheckpointStore store = new CheckpointStore(out.toUri() + "/run-001/checkpoints", new Configuration());
        Thread t = new Thread(() -> {
            long deadline = System.nanoTime() + Duration.ofMinutes(5).toNanos();
            try {
                while (!store.committedSteps().contains(4L) && System.nanoTime() < deadline) {
                    Thread.sleep(20);
                }
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException(e);
            } catch (InterruptedException e) {
                return;
            }
            action.run();
        });
        t.setDaemon(true);
        t.start();
        return t;
    }

    @Test
    @Order(1)
    void anExecutorKilledAfterACheckpointIsRetriedAndTheModelIsByteIdenticalToLocalMode() throws Exception {
        Path out = tmp.resolve("killed");
        int[] killed = {0};
        Thread killer = after(out, () -> killed[0] = cluster.killExecutors(1));
        TrainResult r = train(app, out, b -> { });
        killer.join();
        assertEquals(1, killed[0], "one executor JVM killed");
        assertEquals(2, r.attempts());
        assertTrue(r.resumedFrom() >= 4, "resumed from the committed checkpoint: " + r.resumedFrom());
        assertArrayEquals(referenceModel, Files.readAllBytes(out.resolve("run-001/model/model.safetensors")),
                "model.safetensors differs from the local[2] run's");
    }

    @Test
    @Order(2)
    void aWorkerStoppedForGoodLeavesTheJobToFinishOnFewerRanksContinuingTheCurve() throws Exception {
        Path out = tmp.resolve("elastic");
        Path metrics = tmp.resolve("elastic-metrics.jsonl");
        Thread stopper = after(out, () -> cluster.stopWorker(1));
        TrainResult r = train(app, out, b -> b.set("training.elastic", true).set("training.elastic_wait_s", 3)
                .set("output.metrics_file", metrics.toString()));
        stopper.join();
        assertEquals(2, r.attempts());
        assertEquals(4, r.resumedFrom(), "the stage failed before the next checkpoint");
        assertEquals(STEPS, r.history().size());
        for (int i = 0; i < STEPS; i++) {
            StepMetrics want = reference.history().get(i);
            StepMetrics got = r.history().get(i);
            assertEquals(want.tokens(), got.tokens(), "same global batch at step " + (i + 1));
            // one rank sums its two data ranks' micro-batches where two ranks summed one each: the same
            // gradients up to rounding (and the load-balancing loss's per-micro-batch statistics)
            assertEquals(want.loss(), got.loss(), 1e-4 * want.loss(), "loss of step " + (i + 1));
        }
        List<String> records = Files.readAllLines(metrics);
        assertEquals(STEPS, records.size(), String.join("\n", records));
        assertTrue(records.get(STEPS - 1).contains("\"world_size\":1") && records.get(STEPS - 1)
                .contains("\"grad_accum\":2") && records.get(STEPS - 1).contains("\"attempt\":2"),
                records.get(STEPS - 1));
    }
}
