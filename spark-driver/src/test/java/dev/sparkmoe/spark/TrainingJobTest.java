package dev.sparkmoe.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.io.SafeTensors;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.spark.ckpt.CheckpointStore;
import dev.sparkmoe.spark.testing.BigramFactory;
import dev.sparkmoe.spark.testing.Faults;
import dev.sparkmoe.spark.testing.SparkTestSession;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** End to end on local[4] with the bigram test double: training, retry and resume, checkpoint integrity. */
class TrainingJobTest {
    static SparkSession spark;
    static Dataset<Row> corpus;

    @TempDir
    Path tmp;

    @BeforeAll
    static void start() {
        spark = SparkTestSession.start();
        List<String> lines = new ArrayList<>();
        String[] words = {"the quick brown fox", "jumps over the lazy dog", "spark moe trains experts",
            "a barrier stage has one task per rank", "checkpoints are committed last"};
        for (int i = 0; i < 80; i++) {
            lines.add(words[i % words.length] + " " + words[(i * 3 + 1) % words.length] + " #" + (i % 7));
        }
        corpus = spark.createDataset(lines, Encoders.STRING()).toDF("text");
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    SparkMoeTrainer.Builder job(Path out, int steps) {
        return SparkMoeTrainer.builder()
                .spark(spark)
                .dataset(corpus)
                .trainerFactory(new BigramFactory())
                .set("model.preset", "qwen3-moe-tiny")
                .set("model.config.vocab_size", 260)
                .set("data.eos_id", 257)
                .set("layout.world_size", 4)
                .set("layout.ep", 2)
                .set("training.steps", steps)
                .set("training.batch_sequences", 2)
                .set("training.seq_len", 16)
                .set("training.lr", 50.0)
                .set("training.min_lr", 5.0)
                .set("training.warmup_steps", 1)
                .set("training.clip", 5.0)
                .set("training.comm_timeout_s", 30)
                .set("output.progress", false)
                .set("output.dir", out.toUri().toString());
    }

    static Map<String, Tensor> model(TrainResult r) throws Exception {
        Path dir = Path.of(java.net.URI.create(r.modelDir()));
        assertTrue(Files.isRegularFile(dir.resolve("config.json")), "config.json in " + dir);
        return SafeTensors.read(dir.resolve("model.safetensors")).tensors();
    }

    @Test
    void trainsEndToEndWithFallingLossCheckpointsAndMetrics() throws Exception {
        List<StepMetrics> live = new ArrayList<>();
        Path metrics = tmp.resolve("metrics.jsonl");
        TrainResult r = job(tmp.resolve("run"), 12)
                .set("checkpoint.every", 4)
                .set("checkpoint.keep_last", 2)
                .set("output.metrics_file", metrics.toString())
                .onStep(live::add)
                .fit();
        assertEquals(12, r.steps());
        assertEquals(1, r.attempts());
        assertEquals(12, r.history().size());
        double first = r.history().get(0).loss();
        double last = r.last().loss();
        assertTrue(last < first * 0.8, "loss should fall: first " + first + ", last " + last);
        assertEquals(List.of(8L, 12L), new CheckpointStore(r.checkpointDir(), new Configuration()).committedSteps());
        Tensor w = model(r).get("lm_head.weight");
        assertEquals(260, w.dim(0));
        List<String> lines = Files.readAllLines(metrics);
        assertEquals(12, lines.size(), String.join("\n", lines));
        assertTrue(lines.get(0).contains("\"step\":1"));
        assertEquals(12, live.size());
    }

    @Test
    void failedAttemptIsRetriedFromCheckpointAndEndsBitwiseEqual() throws Exception {
        TrainResult ref = job(tmp.resolve("ref"), 10).set("checkpoint.every", 3).fit();
        Faults.Plan once = Faults.plan("retry-once", 2, 7, "step", 1);
        TrainResult r = job(tmp.resolve("faulty"), 10).set("checkpoint.every", 3)
                .trainerFactory(new BigramFactory(once)).fit();
        assertEquals(1, Faults.fired("retry-once", 1));
        assertEquals(2, r.attempts());
        assertEquals(6, r.resumedFrom());
        assertTrue(model(ref).get("lm_head.weight").bitwiseEquals(model(r).get("lm_head.weight")),
                "resumed run must end bitwise equal to the uninterrupted one");
        for (int i = 0; i < 10; i++) {
            assertEquals(ref.history().get(i).loss(), r.history().get(i).loss(), 0.0, "loss of step " + (i + 1));
        }
        CheckpointStore a = new CheckpointStore(ref.checkpointDir(), new Configuration());
        CheckpointStore b = new CheckpointStore(r.checkpointDir(), new Configuration());
        for (int rank = 0; rank < 4; rank++) {
            Map<String, Tensor> sa = a.readRank(a.latest().orElseThrow(), rank);
            Map<String, Tensor> sb = b.readRank(b.latest().orElseThrow(), rank);
            for (String k : sa.keySet()) {
                assertTrue(sa.get(k).bitwiseEquals(sb.get(k)), "rank " + rank + " state " + k);
            }
        }
    }

    @Test
    void everyAttemptFailingLeavesTheLastCompleteCheckpointIntact() throws Exception {
        Faults.Plan always = Faults.plan("always", 1, 5, "step", Integer.MAX_VALUE);
        Path out = tmp.resolve("doomed");
        TrainingFailedException e = assertThrows(TrainingFailedException.class, () -> job(out, 8)
                .set("checkpoint.every", 2).set("training.max_attempts", 2)
                .trainerFactory(new BigramFactory(always)).fit());
        assertTrue(e.getMessage().contains("all 2 attempts"), e.getMessage());
        assertTrue(e.getMessage().contains("injected failure on rank 1 at step 5"), e.getMessage());
        assertTrue(e.getMessage().contains("step 4"), e.getMessage());
        CheckpointStore store = new CheckpointStore(out.toUri() + "/run-001/checkpoints", new Configuration());
        assertEquals(4, store.latest().orElseThrow().step());
        assertTrue(e.getMessage().contains("--resume=run-001"), e.getMessage());
        // the checkpoint really is usable: a healthy run resumes from it and finishes
        TrainResult r = job(out, 8).set("checkpoint.every", 2).set("checkpoint.resume", "run-001").fit();
        assertEquals(4, r.resumedFrom());
        assertEquals(8, r.steps());
        assertEquals(8, r.history().size());
    }

    @Test
    void aCheckpointThisRunCannotResumeIsNamedAndNotOfferedForAnotherTry() throws Exception {
        Path out = tmp.resolve("other-layout");
        job(out, 4).set("checkpoint.every", 2).fit();
        TrainingFailedException e = assertThrows(TrainingFailedException.class, () -> job(out, 6)
                .set("checkpoint.every", 2).set("training.max_attempts", 3).set("checkpoint.resume", "latest")
                .set("layout.world_size", 2).set("layout.ep", 1).fit());
        assertTrue(e.getMessage().contains("CheckpointMismatchException") && e.getMessage().contains("world_size 4"),
                e.getMessage());
        // deterministic: one attempt, not three
        assertTrue(e.getMessage().startsWith("training failed in attempt 1 of 3 and was not retried"), e.getMessage());
        assertTrue(e.getMessage().contains("cannot resume from it (checkpoint.resume = latest): drop --resume"),
                e.getMessage());
        assertFalse(e.getMessage().contains("run again with"), e.getMessage());
        // untouched: the run that wrote it still resumes from it, and a new run at the other layout trains afresh
        assertEquals(4, job(out, 6).set("checkpoint.every", 2).set("checkpoint.resume", "latest").fit().resumedFrom());
        TrainResult fresh = job(out, 6).set("checkpoint.every", 2).set("layout.world_size", 2).set("layout.ep", 1).fit();
        assertEquals(0, fresh.resumedFrom());
        assertTrue(fresh.runDir().endsWith("/run-002"), fresh.runDir());
    }

    @Test
    void crashWhileCheckpointingNeverLeavesALoadableCheckpoint() throws Exception {
        Faults.Plan ckpt = Faults.plan("ckpt-crash", 3, 4, "checkpoint", Integer.MAX_VALUE);
        Path out = tmp.resolve("ckpt");
        assertThrows(TrainingFailedException.class, () -> job(out, 6).set("checkpoint.every", 2)
                .set("training.max_attempts", 1).trainerFactory(new BigramFactory(ckpt)).fit());
        CheckpointStore store = new CheckpointStore(out.toUri() + "/run-001/checkpoints", new Configuration());
        assertEquals(List.of(2L), store.committedSteps());
        assertEquals(2, store.latest().orElseThrow().step());
        assertFalse(Files.exists(out.resolve("run-001/checkpoints/step-00000004/_COMMITTED")));
    }

    @Test
    void afterARetryEveryStepIsReportedOnceInOrderWithCheckpointsAfterTheirSteps() throws Exception {
        Faults.Plan once = Faults.plan("progress-retry", 2, 8, "step", 1);
        java.io.ByteArrayOutputStream console = new java.io.ByteArrayOutputStream();
        Path metrics = tmp.resolve("retry-metrics.jsonl");
        TrainResult r = job(tmp.resolve("retry-progress"), 10).set("checkpoint.every", 3)
                .set("output.progress", true).set("output.metrics_file", metrics.toString())
                .console(new java.io.PrintStream(console, true, java.nio.charset.StandardCharsets.UTF_8))
                .trainerFactory(new BigramFactory(once)).fit();
        assertEquals(2, r.attempts());
        List<String> lines = console.toString(java.nio.charset.StandardCharsets.UTF_8).lines().toList();
        List<Long> steps = new ArrayList<>();
        for (String l : lines) {
            java.util.regex.Matcher m = java.util.regex.Pattern.compile("step (\\d+)/10").matcher(l);
            if (m.find()) {
                steps.add(Long.parseLong(m.group(1)));
            }
        }
        assertEquals(java.util.stream.LongStream.rangeClosed(1, 10).boxed().toList(), steps, String.join("\n", lines));
        int ckpt6 = indexOf(lines, "step-00000006 committed");
        assertTrue(ckpt6 > indexOf(lines, "step 6/10") && ckpt6 < indexOf(lines, "step 7/10"), String.join("\n", lines));
        assertTrue(indexOf(lines, "resuming from checkpoint") > indexOf(lines, "step 7/10"), String.join("\n", lines));
        assertEquals(lines.size() - 1, indexOf(lines, "model written"), String.join("\n", lines));
        List<String> records = Files.readAllLines(metrics);
        assertEquals(10, records.size(), String.join("\n", records));
        for (int i = 0; i < 10; i++) {
            assertTrue(records.get(i).startsWith("{\"run\":\"" + r.runId() + "\",\"step\":" + (i + 1) + ","),
                    records.get(i));
        }
    }

    static int indexOf(List<String> lines, String part) {
        for (int i = 0; i < lines.size(); i++) {
            if (lines.get(i).contains(part)) {
                return i;
            }
        }
        throw new AssertionError("no line with '" + part + "' in\n" + String.join("\n", lines));
    }

    /**
     * One byte flipped in a rank's state of the newest checkpoint, without Hadoop's .crc beside it (as rank files are
     * written now: the manifest's CRC is their check) or with one (as earlier versions wrote them): the checkpoint is
     * set aside, never deleted, and the run resumes from the one before it and ends as an uninterrupted run does.
     */
    @org.junit.jupiter.params.ParameterizedTest(name = "keep .crc: {0}")
    @org.junit.jupiter.params.provider.ValueSource(booleans = {true, false})
    void aDamagedCheckpointIsSetAsideAndTheRunResumesFromTheOneBefore(boolean keepCrc) throws Exception {
        TrainResult ref = job(tmp.resolve("undamaged"), 10).set("checkpoint.every", 2).fit();
        Path out = tmp.resolve("damaged-" + keepCrc);
        Faults.Plan stop = Faults.plan("stop-at-9-" + keepCrc, 0, 9, "step", Integer.MAX_VALUE);
        assertThrows(TrainingFailedException.class, () -> job(out, 10).set("checkpoint.every", 2)
                .set("training.max_attempts", 1).trainerFactory(new BigramFactory(stop)).fit()); // leaves 6 and 8
        Path step8 = out.resolve("run-001/checkpoints/step-00000008");
        Path file = step8.resolve("rank-00001.state");
        byte[] bytes = Files.readAllBytes(file);
        Path crc = step8.resolve(".rank-00001.state.crc");
        assertFalse(Files.exists(crc), "rank files are checked by the manifest's CRC, not by a Hadoop .crc");
        if (keepCrc) { // the intact bytes rewritten through the checksummed file system: an earlier version's file
            try (java.io.OutputStream os = org.apache.hadoop.fs.FileSystem.getLocal(
                    new org.apache.hadoop.conf.Configuration()).create(new org.apache.hadoop.fs.Path(file.toUri()),
                    true)) {
                os.write(bytes);
            }
            assertTrue(Files.exists(crc));
        }
        bytes[bytes.length / 2] ^= 0x10;
        Files.write(file, bytes);
        java.io.ByteArrayOutputStream console = new java.io.ByteArrayOutputStream();
        TrainResult r = job(out, 10).set("checkpoint.every", 2).set("output.progress", true)
                .set("checkpoint.resume", "latest").console(new java.io.PrintStream(console, true, java.nio.charset.StandardCharsets.UTF_8)).fit();
        assertEquals(1, r.attempts(), "found and set aside within the attempt");
        assertEquals(6, r.resumedFrom());
        String text = console.toString(java.nio.charset.StandardCharsets.UTF_8);
        assertTrue(text.contains("step-00000008 is damaged") && text.contains("set aside as")
                && text.contains("rank-00001.state"), text);
        Path aside = out.resolve("run-001/checkpoints/step-00000008.damaged");
        assertTrue(Files.isRegularFile(aside.resolve("rank-00001.state")), "set aside, not deleted");
        assertTrue(Files.readString(aside.resolve("_DAMAGED")).contains("rank-00001.state"));
        assertTrue(model(ref).get("lm_head.weight").bitwiseEquals(model(r).get("lm_head.weight")));
        // the steps this run took again (7 and 8, whose checkpoint was set aside) are reported, once and in order;
        // those its checkpoint restored were reported by the run that took them
        List<Long> steps = new ArrayList<>();
        for (String l : text.lines().toList()) {
            java.util.regex.Matcher m = java.util.regex.Pattern.compile("step (\\d+)/10").matcher(l);
            if (m.find()) {
                steps.add(Long.parseLong(m.group(1)));
            }
        }
        assertEquals(List.of(7L, 8L, 9L, 10L), steps, text);
    }

    @Test
    void theFinalErrorNeverCallsADamagedCheckpointIntact() throws Exception {
        Path out = tmp.resolve("damaged-then-failing");
        job(out, 4).set("checkpoint.every", 2).fit();
        Path file = out.resolve("run-001/checkpoints/step-00000004/rank-00002.state");
        byte[] bytes = Files.readAllBytes(file);
        bytes[bytes.length - 5] ^= 0x01;
        Files.write(file, bytes);
        Faults.Plan always = Faults.plan("after-damage", 1, 3, "step", Integer.MAX_VALUE);
        TrainingFailedException e = assertThrows(TrainingFailedException.class, () -> job(out, 8)
                .set("checkpoint.every", 2).set("training.max_attempts", 2).set("checkpoint.resume", "latest")
                .trainerFactory(new BigramFactory(always)).fit());
        assertFalse(e.getMessage().contains("step 4 at"), e.getMessage());
        assertTrue(e.getMessage().contains("The newest committed checkpoint, step 2 at")
                && e.getMessage().contains("is intact (every file matches its manifest)"), e.getMessage());
        assertTrue(e.getMessage().contains("--resume=run-001"), e.getMessage());
        assertTrue(Files.isDirectory(out.resolve("run-001/checkpoints/step-00000004.damaged")));
    }

    /** A rank that runs out of heap is named with its own error, not as the rank that left its peers waiting. */
    @Test
    void aRankThatRunsOutOfMemoryIsNamedWithItsOwnError() {
        Faults.Plan oom = Faults.plan("oom", 3, 2, "oom", Integer.MAX_VALUE);
        TrainingFailedException e = assertThrows(TrainingFailedException.class, () -> job(tmp.resolve("oom"), 4)
                .set("training.max_attempts", 1).trainerFactory(new BigramFactory(oom)).fit());
        assertTrue(e.getMessage().contains("last error: rank 3 failed on its own")
                && e.getMessage().contains("RankOutOfMemoryException: rank 3 ran out of memory")
                && e.getMessage().contains("java.lang.OutOfMemoryError: Java heap space")
                && e.getMessage().contains("spark.executor.memory"), e.getMessage());
        // no Error reached Spark, in this rank's failure or in its peers': the application lives on
        assertFalse(spark.sparkContext().isStopped());
        assertEquals(3, spark.range(3).count());
    }
}
