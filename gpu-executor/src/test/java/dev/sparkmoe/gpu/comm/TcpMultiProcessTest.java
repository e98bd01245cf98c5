package dev.sparkmoe.gpu.comm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.IntFunction;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Ranks as separate JVM processes on loopback; the secret travels by environment variable or 0600 file, never argv. */
class TcpMultiProcessTest {

    @TempDir
    Path tmp;

    private record Child(Process process, Path out, Path err, List<String> command) {
    }

    private List<Child> spawn(int n, JobSecret secret, Path secretFile, int collectiveTimeoutMs,
                              IntFunction<Map<String, String>> extraEnv) throws IOException {
        int port = TcpHarness.freePort();
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        String cp = System.getProperty("java.class.path");
        List<Child> children = new ArrayList<>();
        for (int r = 0; r < n; r++) {
            List<String> cmd = List.of(java, "-Xmx256m", "-cp", cp, TcpConformanceChild.class.getName());
            ProcessBuilder pb = new ProcessBuilder(cmd);
            Map<String, String> env = pb.environment();
            env.remove(JobSecret.ENV);
            env.remove(JobSecret.ENV_FILE);
            env.put(TcpRendezvous.ENV_WORLD_SIZE, Integer.toString(n));
            env.put(TcpRendezvous.ENV_RANK, Integer.toString(r));
            env.put(TcpRendezvous.ENV_MASTER, TcpHarness.HOST + ":" + port);
            env.put(TcpRendezvous.ENV_LISTEN_HOST, TcpHarness.HOST);
            env.put(TcpRendezvous.ENV_CONNECT_TIMEOUT_MS, "30000");
            env.put(TcpRendezvous.ENV_COLLECTIVE_TIMEOUT_MS, Integer.toString(collectiveTimeoutMs));
            env.put(TcpRendezvous.ENV_HANDSHAKE_TIMEOUT_MS, "2000");
            // half the ranks read the secret from a 0600 file, half from the environment
            if (r % 2 == 0) {
                env.put(JobSecret.ENV_FILE, secretFile.toString());
            } else {
                env.put(JobSecret.ENV, secret.encode());
            }
            env.putAll(extraEnv.apply(r));
            for (String arg : cmd) {
                assertTrue(!arg.contains(secret.encode()), "secret on a command line");
            }
            Path out = tmp.resolve("rank" + r + ".out");
            Path err = tmp.resolve("rank" + r + ".err");
            pb.redirectOutput(out.toFile()).redirectError(err.toFile());
            children.add(new Child(pb.start(), out, err, cmd));
        }
        return children;
    }

    private static List<String> awaitAll(List<Child> children, long seconds) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        List<String> outs = new ArrayList<>();
        StringBuilder failures = new StringBuilder();
        for (int r = 0; r < children.size(); r++) {
            Child c = children.get(r);
            boolean done = c.process().waitFor(Math.max(1, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
            if (!done) {
                c.process().destroyForcibly().waitFor(10, TimeUnit.SECONDS);
            }
            String out = Files.readString(c.out(), StandardCharsets.UTF_8);
            String err = Files.readString(c.err(), StandardCharsets.UTF_8);
            outs.add(out);
            if (!done || c.process().exitValue() != 0) {
                failures.append("\n--- rank ").append(r).append(done ? " exited " + c.process().exitValue() : " hung (killed)")
                        .append("\nstdout:\n").append(out).append("\nstderr:\n").append(err);
            }
        }
        if (failures.length() > 0) {
            for (Child c : children) {
                c.process().destroyForcibly();
            }
            fail("child ranks failed:" + failures);
        }
        return outs;
    }

    @Test
    void fourProcessesPassConformance() throws Exception {
        JobSecret secret = JobSecret.generate();
        Path secretFile = secret.writeTo(tmp.resolve("job.secret"));
        List<Child> children = spawn(4, secret, secretFile, 30000, r -> Map.of());
        List<String> outs = awaitAll(children, 120);
        for (int r = 0; r < 4; r++) {
            assertTrue(outs.get(r).contains("DIGEST "), "rank " + r + " printed no digest: " + outs.get(r));
        }
        // the in-process thread run gives the same results, bit for bit
        int port = TcpHarness.freePort();
        List<String> threadDigests = TcpHarness.values(TcpHarness.withWorld(4,
                r -> TcpHarness.rendezvous(4, r, port, secret).build(), java.time.Duration.ofSeconds(60), TcpChecks::runAll));
        for (int r = 0; r < 4; r++) {
            assertTrue(outs.get(r).contains("DIGEST " + threadDigests.get(r)), "rank " + r + " digest differs");
        }
    }

    @Test
    void processThatNeverCallsTheCollectiveIsNamed() throws Exception {
        JobSecret secret = JobSecret.generate();
        Path secretFile = secret.writeTo(tmp.resolve("job.secret"));
        long t0 = System.nanoTime();
        List<Child> children = spawn(4, secret, secretFile, 2000, r -> r == 3
                ? Map.of("TCP_CHILD_MODE", "idle", "TCP_CHILD_IDLE_MS", "4000")
                : Map.of("TCP_CHILD_MODE", "expect-timeout", "TCP_CHILD_MISSING", "3"));
        List<String> outs = awaitAll(children, 60);
        for (int r = 0; r < 3; r++) {
            assertTrue(outs.get(r).contains("TIMEOUT after"), outs.get(r));
            long ms = Long.parseLong(outs.get(r).replaceAll("(?s).*TIMEOUT after (\\d+) ms.*", "$1"));
            assertTrue(ms >= 1900 && ms < 6000, "rank " + r + " timed out after " + ms + " ms, timeout is 2000 ms");
        }
        assertEquals(4, outs.size());
        assertTrue(System.nanoTime() - t0 < TimeUnit.SECONDS.toNanos(60));
    }
}
