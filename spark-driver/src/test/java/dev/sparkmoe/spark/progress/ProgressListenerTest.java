package dev.sparkmoe.spark.progress;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.parallel.train.StepMetrics;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Every step is reported once, in order, whatever order and how often its sources (the progress channel, the
 * heartbeats, the final history) deliver it, across attempts; events print after the step they follow. A run that
 * continues an earlier one reports only the steps it takes.
 */
class ProgressListenerTest {
    @TempDir
    Path tmp;

    static StepMetrics step(long s) {
        return new StepMetrics(s, 10.0 / s, 0.1, 1e-3, 1.0, 100, 0.5);
    }

    @Test
    void stepsArriveOnceInOrderAcrossAResumedAttempt() throws Exception {
        ByteArrayOutputStream console = new ByteArrayOutputStream();
        Path metrics = tmp.resolve("m.jsonl");
        List<Long> called = new ArrayList<>();
        try (ProgressListener p = new ProgressListener(8, true, new PrintStream(console, true, StandardCharsets.UTF_8),
                metrics, m -> called.add(m.step()), "r1")) {
            p.watch(new MetricsAccumulator(), 1);
            p.deliver(step(1), 1);
            p.deliver(step(3), 1);            // early: waits for 2
            p.event(1, 2, "checkpoint step-2 committed");
            p.deliver(step(2), 1);
            p.deliver(step(2), 1);            // again (a heartbeat after the channel): dropped
            p.deliver(step(4), 1);            // attempt 1 dies after step 4; the checkpoint is at step 2
            p.watch(new MetricsAccumulator(), 2, "1 of 2 ranks, ep 1, grad_accum 2",
                    Map.of("world_size", 1));
            for (long s = 1; s <= 2; s++) {
                p.deliver(step(s), 0);        // restored from the checkpoint
            }
            for (long s = 3; s <= 8; s++) {
                p.deliver(step(s), 2);        // re-taken 3 and 4 were reported already
            }
            p.event(2, 8, "model written");
            for (long s = 1; s <= 8; s++) {
                p.deliver(step(s), 2);        // the final history
            }
        }
        List<String> lines = console.toString(StandardCharsets.UTF_8).lines().toList();
        List<String> expected = List.of("step 1/8", "step 2/8", "checkpoint step-2 committed", "step 3/8",
                "step 4/8", "step 5/8 (attempt 2, 1 of 2 ranks", "step 6/8", "step 7/8", "step 8/8", "model written");
        assertEquals(expected.size(), lines.size(), String.join("\n", lines));
        for (int i = 0; i < expected.size(); i++) {
            assertTrue(lines.get(i).contains(expected.get(i)), "line " + i + ": " + lines.get(i));
        }
        assertEquals(List.of(1L, 2L, 3L, 4L, 5L, 6L, 7L, 8L), called);
        List<String> records = Files.readAllLines(metrics);
        assertEquals(8, records.size(), String.join("\n", records));
        for (int i = 0; i < 8; i++) {
            assertTrue(records.get(i).startsWith("{\"run\":\"r1\",\"step\":" + (i + 1) + ","), records.get(i));
        }
        assertTrue(records.get(4).contains("\"attempt\":2") && records.get(4).contains("\"world_size\":1"),
                records.get(4));
        assertTrue(records.get(0).contains("\"attempt\":1") && !records.get(0).contains("world_size"),
                records.get(0));
    }

    @Test
    void aRanksOwnFailureComesBeforeItsPeersReports() {
        try (ProgressListener p = new ProgressListener(1, false, System.out, null, null, "r1")) {
            p.failure(1, 3, "rank 3 failed on its own (host/42): RankOutOfMemoryException: rank 3 ran out of memory");
            String why = p.takeFailure(0);
            assertTrue(why.startsWith("rank 3 failed on its own"), why);
        } catch (java.io.IOException e) {
            throw new AssertionError(e);
        }
    }

    @Test
    void aContinuedRunReportsOnlyTheStepsItTakes() throws Exception {
        ByteArrayOutputStream console = new ByteArrayOutputStream();
        Path metrics = tmp.resolve("m.jsonl");
        List<Long> called = new ArrayList<>();
        try (ProgressListener p = new ProgressListener(8, true, new PrintStream(console, true, StandardCharsets.UTF_8),
                metrics, m -> called.add(m.step()), "r2")) {
            p.continues(6);                   // the earlier run's newest checkpoint: step 6
            p.watch(new MetricsAccumulator(), 1);
            p.deliver(step(5), 1);            // taken before the restored steps arrive (heartbeats): waits
            p.event(1, 0, "checkpoint step-6 is damaged: set aside");
            for (long s = 1; s <= 4; s++) {
                p.deliver(step(s), 0);        // restored from step 4, the newest intact checkpoint
            }
            for (long s = 5; s <= 8; s++) {
                p.deliver(step(s), 1);        // 5 and 6 are taken again by this run: reported
            }
            for (long s = 1; s <= 8; s++) {
                p.deliver(step(s), s <= 4 ? 0 : 1); // the final history
            }
        }
        List<String> lines = console.toString(StandardCharsets.UTF_8).lines().toList();
        List<String> expected = List.of("checkpoint step-6 is damaged", "step 5/8", "step 6/8", "step 7/8",
                "step 8/8");
        assertEquals(expected.size(), lines.size(), String.join("\n", lines));
        for (int i = 0; i < expected.size(); i++) {
            assertTrue(lines.get(i).contains(expected.get(i)), "line " + i + ": " + lines.get(i));
        }
        assertEquals(List.of(5L, 6L, 7L, 8L), called);
        List<String> records = Files.readAllLines(metrics);
        assertEquals(4, records.size(), String.join("\n", records));
        assertTrue(records.get(0).startsWith("{\"run\":\"r2\",\"step\":5,"), records.get(0));
    }
}
