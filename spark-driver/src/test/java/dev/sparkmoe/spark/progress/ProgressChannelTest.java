package dev.sparkmoe.spark.progress;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.gpu.comm.JobSecret;
import dev.sparkmoe.parallel.train.StepMetrics;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The progress channel over a real socket: messages in the order sent, a flush that waits, strangers refused. */
class ProgressChannelTest {

    static final class Recording implements ProgressServer.Sink {
        final List<String> got = Collections.synchronizedList(new ArrayList<>());

        @Override
        public void step(int attempt, String metricsJson) {
            got.add("step " + attempt + " " + MetricsJson.fromJson(metricsJson).step());
        }

        @Override
        public void event(int attempt, long afterStep, String text) {
            got.add("event " + afterStep + " " + text);
        }

        @Override
        public void failure(int attempt, int rank, String text) {
            got.add("failure " + rank + " " + text);
        }
    }

    @Test
    void messagesArriveInOrderAndFlushWaitsForThem() throws Exception {
        Recording sink = new Recording();
        JobSecret secret = JobSecret.generate();
        try (ProgressServer server = new ProgressServer("127.0.0.1", "127.0.0.1", secret, sink);
             ProgressReporter r = ProgressReporter.connect(server.address(), 2, Duration.ofSeconds(10))) {
            assertFalse(server.address().toString().contains(secret.encode()), server.address().toString());
            for (long s = 1; s <= 50; s++) {
                r.step(new StepMetrics(s, 1, 0, 1e-3, 1, 10, 0.1));
            }
            r.event(50, "checkpoint committed");
            r.flush(Duration.ofSeconds(10));
            assertEquals(51, sink.got.size(), sink.got.toString());
            for (int s = 1; s <= 50; s++) {
                assertEquals("step 2 " + s, sink.got.get(s - 1));
            }
            assertEquals("event 50 checkpoint committed", sink.got.get(50));
            r.failure(1, "rank 1 failed on its own", Duration.ofSeconds(10));
            assertEquals("failure 1 rank 1 failed on its own", sink.got.get(51));
        }
    }

    @Test
    void aRankWithoutTheSecretIsRefusedAndReporterDropsQuietly() throws Exception {
        Recording sink = new Recording();
        try (ProgressServer server = new ProgressServer("127.0.0.1", "127.0.0.1", JobSecret.generate(), sink)) {
            ProgressReporter.Address wrong = new ProgressReporter.Address("127.0.0.1", server.address().port(),
                    JobSecret.generate().encode());
            try (ProgressReporter r = ProgressReporter.connect(wrong, 1, Duration.ofSeconds(5))) {
                r.step(new StepMetrics(1, 1, 0, 1e-3, 1, 10, 0.1));
                r.flush(Duration.ofSeconds(2));
            }
            assertTrue(sink.got.isEmpty(), sink.got.toString());
        }
        // nobody listening: the rank trains on without the channel
        try (ProgressReporter r = ProgressReporter.connect(new ProgressReporter.Address("127.0.0.1", 1,
                JobSecret.generate().encode()), 1, Duration.ofSeconds(2))) {
            r.step(new StepMetrics(1, 1, 0, 1e-3, 1, 10, 0.1));
            r.flush(Duration.ofSeconds(1));
        }
    }
}
