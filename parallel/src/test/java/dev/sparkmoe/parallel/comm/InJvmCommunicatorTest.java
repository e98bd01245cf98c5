package dev.sparkmoe.parallel.comm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.Test;

class InJvmCommunicatorTest {

    private static final Duration SHORT = Duration.ofMillis(300);

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 3, 4, 8})
    void conformance(int size) {
        Ranks.runOk(size, c -> {
            CommunicatorConformance.runAll(c);
            CommunicatorConformance.runAll(c); // twice: sequence numbers and phases keep lockstep
            return null;
        });
    }

    @Test
    void allReduceIsRankOrderedAndBitwiseIdentical() {
        // 1e8 + 1 + (-1e8) in rank order gives 0 in f32 ((1e8 + 1) rounds to 1e8); other orders would give 1.
        float[] inputs = {1e8f, 1f, -1e8f};
        List<float[]> results = Ranks.runOk(3, c -> {
            float[] v = {inputs[c.rank()]};
            c.allReduceSum(v, 0, 1);
            return v;
        });
        for (float[] v : results) {
            assertEquals(0f, v[0]);
        }
    }

    @Test
    void timeoutNamesTheMissingRankAndReleasesEveryone() {
        long t0 = System.nanoTime();
        List<Ranks.Outcome<Object>> out = Ranks.run(4, SHORT, c -> {
            if (c.rank() == 2) {
                Thread.sleep(1000); // hangs (alive, not closed) past the timeout: never calls the collectives
                return null;
            }
            c.barrier(); // sequence #0
            c.allReduceSum(new float[4], 0, 4); // sequence #1: rank 2 is missing
            return null;
        });
        long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
        assertTrue(ms < 3000, "took " + ms + " ms");
        // The barrier never completes either: rank 2 does not arrive there.
        for (int r : new int[] {0, 1, 3}) {
            Throwable e = out.get(r).error();
            assertInstanceOf(CollectiveTimeoutException.class, e);
            assertEquals("barrier on group 'world' (sequence #0) timed out after 300 ms: 1 of 4 ranks never arrived:"
                    + " [2]; arrived: [0, 1, 3]", e.getMessage());
        }
        assertNull(out.get(2).error());
    }

    @Test
    void timeoutInSubGroupNamesWorldRanks() {
        List<Ranks.Outcome<Object>> out = Ranks.run(4, SHORT, c -> {
            try (Communicator ep = c.split(c.rank() / 2, 0, "ep")) {
                if (c.rank() == 3) {
                    Thread.sleep(1000);
                    return null;
                }
                for (int i = 0; i < 17; i++) {
                    ep.barrier();
                }
                if (c.rank() != 3) {
                    ep.allReduceSum(new float[1], 0, 1);
                }
                return null;
            }
        });
        Throwable e = out.get(2).error();
        assertInstanceOf(CollectiveTimeoutException.class, e);
        assertTrue(e.getMessage().startsWith("barrier on group 'ep' (sequence #0) timed out after 300 ms: 1 of 2 ranks"
                + " never arrived: [1] (world ranks [3]); arrived: [0]"), e.getMessage());
        assertNull(out.get(0).error());
        assertNull(out.get(1).error());
    }

    @Test
    void sequenceNumberInTimeoutMessage() {
        List<Ranks.Outcome<Object>> out = Ranks.run(2, SHORT, c -> {
            for (int i = 0; i < 17; i++) {
                c.barrier();
            }
            if (c.rank() == 0) {
                c.allReduceSum(new float[2], 0, 2);
            } else {
                Thread.sleep(1000);
            }
            return null;
        });
        assertEquals("allReduceSum on group 'world' (sequence #17) timed out after 300 ms: 1 of 2 ranks never"
                + " arrived: [1]; arrived: [0]", out.get(0).error().getMessage());
    }

    @Test
    void abortReleasesOthersPromptlyWithCause() {
        long t0 = System.nanoTime();
        List<Ranks.Outcome<Object>> out = Ranks.run(3, Duration.ofSeconds(20), c -> {
            if (c.rank() == 1) {
                Thread.sleep(50);
                throw new IllegalStateException("out of memory on rank 1");
            }
            c.allGather(new float[1], 0, 1, new float[3], 0);
            return null;
        });
        long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
        assertTrue(ms < 5000, "abort took " + ms + " ms; the timeout is 20 s");
        for (int r : new int[] {0, 2}) {
            Throwable e = out.get(r).error();
            assertInstanceOf(CommunicatorException.class, e);
            assertTrue(e.getMessage().contains("allGather on group 'world' (sequence #0) failed: rank 1 of in-JVM world"
                    + " (unregistered) aborted: java.lang.IllegalStateException: out of memory on rank 1"),
                    e.getMessage());
            assertInstanceOf(IllegalStateException.class, e.getCause());
        }
    }

    @Test
    void abortFailsSubGroupsAndLaterCalls() {
        List<Ranks.Outcome<Object>> out = Ranks.run(4, Duration.ofSeconds(20), c -> {
            Communicator pair = c.split(c.rank() / 2, 0, "pair");
            if (c.rank() == 0) {
                ((InJvmCommunicator) c).abort(new RuntimeException("boom"));
                return null;
            }
            pair.barrier(); // ranks 2 and 3 may complete it before the abort, rank 1 waits for rank 0
            Thread.sleep(100);
            pair.barrier();
            return null;
        });
        for (int r = 1; r < 4; r++) {
            Throwable e = out.get(r).error();
            assertNotNull(e, "rank " + r);
            assertTrue(e.getMessage().contains("on group 'pair'") && e.getMessage().contains("rank 0 of in-JVM world"
                    + " (unregistered) aborted: java.lang.RuntimeException: boom"), e.getMessage());
        }
    }

    @Test
    void mismatchedCollectivesAreReportedOnEveryMember() {
        List<Ranks.Outcome<Object>> out = Ranks.run(2, Duration.ofSeconds(10), c -> {
            if (c.rank() == 0) {
                c.allGather(new float[4], 0, 4, new float[8], 0);
            } else {
                c.allReduceSum(new float[4], 0, 4);
            }
            return null;
        });
        String expected = "mismatched collectives on group 'world' (sequence #0): rank 0 called allGather(float[],"
                + " len=4), rank 1 called allReduceSum(float[], len=4); every member must call the same collective"
                + " with agreeing arguments, in the same order";
        assertEquals(expected, out.get(0).error().getMessage());
        assertEquals(expected, out.get(1).error().getMessage());
    }

    @Test
    void mismatchedLengthsAndRoots() {
        List<Ranks.Outcome<Object>> out = Ranks.run(3, Duration.ofSeconds(10), c -> {
            c.allReduceSum(new double[8], 0, c.rank() == 2 ? 7 : 8);
            return null;
        });
        assertTrue(out.get(0).error().getMessage().contains("rank 1 called allReduceSum(double[], len=8), rank 2"
                + " called allReduceSum(double[], len=7)"), out.get(0).error().getMessage());
        out = Ranks.run(2, Duration.ofSeconds(10), c -> {
            c.broadcast(new float[1], 0, 1, c.rank());
            return null;
        });
        assertTrue(out.get(1).error().getMessage().contains("rank 0 called broadcast(float[], len=1, root=0), rank 1"
                + " called broadcast(float[], len=1, root=1)"), out.get(1).error().getMessage());
    }

    @Test
    void invalidArgumentsOnOneRankFailEveryMember() {
        List<Ranks.Outcome<Object>> out = Ranks.run(2, Duration.ofSeconds(10), c -> {
            c.allReduceSum(new float[c.rank() == 1 ? 3 : 4], 0, 4);
            return null;
        });
        String expected = "allReduceSum on group 'world' (sequence #0): invalid arguments: rank 1: buf range [0, 4)"
                + " does not fit an array of length 3";
        assertEquals(expected, out.get(0).error().getMessage());
        assertEquals(expected, out.get(1).error().getMessage());
    }

    @Test
    void allToAllRecvCountsMismatchNamesBothSides() {
        List<Ranks.Outcome<Object>> out = Ranks.run(2, Duration.ofSeconds(10), c -> {
            int[] send = {1, 2};
            // Rank 0 sends 2 to rank 1, but rank 1 expects 3 from rank 0.
            int[] recvCounts = c.rank() == 0 ? new int[] {1, 1} : new int[] {3, 2};
            c.allToAll(new float[3], send, new float[5], recvCounts);
            return null;
        });
        String msg = out.get(0).error().getMessage();
        assertEquals(msg, out.get(1).error().getMessage());
        assertEquals("allToAll on group 'world' (sequence #0): split sizes disagree: rank 1 expects recvCounts[0] = 3"
                + " from rank 0, but rank 0 sends sendCounts[1] = 2; recvCounts[p] on rank r must equal"
                + " sendCounts[r] on rank p", msg);
    }

    @Test
    void recvTimeoutAndLengthMismatch() {
        List<Ranks.Outcome<Object>> out = Ranks.run(2, SHORT, c -> {
            if (c.rank() == 1) {
                c.recv(new float[2], 0, 2, 0);
            } else {
                Thread.sleep(1000);
            }
            return null;
        });
        assertInstanceOf(CollectiveTimeoutException.class, out.get(1).error());
        assertTrue(out.get(1).error().getMessage().contains("recv by rank 1 from rank 0 on group 'world'"),
                out.get(1).error().getMessage());
        out = Ranks.run(2, Duration.ofSeconds(10), c -> {
            if (c.rank() == 0) {
                c.send(new float[3], 0, 3, 1);
            } else {
                c.recv(new float[2], 0, 2, 0);
            }
            return null;
        });
        assertEquals("recv by rank 1 from rank 0 on group 'world': rank 1 expects 2 floats but rank 0 sent 3; send"
                + " and recv lengths must agree", out.get(1).error().getMessage());
    }

    @Test
    void closingWhileOthersWaitFailsThemPromptly() {
        long t0 = System.nanoTime();
        List<Ranks.Outcome<Object>> out = Ranks.run(InJvmWorld.create(2, Duration.ofSeconds(20)), c -> {
            if (c.rank() == 0) {
                c.barrier();
            } else {
                Thread.sleep(50);
            }
            return null; // rank 1 closes without calling the barrier
        }, true);
        assertTrue(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0) < 5000);
        assertEquals("barrier on group 'world' (sequence #0) can never complete: rank [1] closed the group while"
                + " ranks [0] wait in it", out.get(0).error().getMessage());
    }

    /** What communicators built over this one (an NCCL world) wait: the world's timeout, in every sub-group too. */
    @Test
    void everyGroupSaysItsWorldsTimeout() {
        List<Ranks.Outcome<Object>> out = Ranks.run(InJvmWorld.create(2, Duration.ofSeconds(17)), c -> {
            assertEquals(java.util.Optional.of(Duration.ofSeconds(17)), c.timeout());
            try (Communicator sub = c.split(0, c.rank(), "sub")) {
                assertEquals(java.util.Optional.of(Duration.ofSeconds(17)), sub.timeout());
            }
            return null;
        }, false);
        for (Ranks.Outcome<Object> o : out) {
            assertNull(o.error());
        }
    }

    @Test
    void registryFindsTheSameWorldAndForgetsItWhenAllClosed() throws Exception {
        String key = "app-1/stage-3.attempt-0/" + System.nanoTime();
        int before = InJvmWorld.registeredWorlds();
        int n = 3;
        CountDownLatch done = new CountDownLatch(n);
        float[][] results = new float[n][];
        Throwable[] errors = new Throwable[n];
        for (int r = 0; r < n; r++) {
            int rank = r;
            Thread t = new Thread(() -> {
                try (Communicator c = InJvmWorld.join(key, n, Duration.ofSeconds(10)).rank(rank)) {
                    float[] v = {rank + 1};
                    c.allReduceSum(v, 0, 1);
                    results[rank] = v;
                } catch (Throwable e) {
                    errors[rank] = e;
                } finally {
                    done.countDown();
                }
            });
            t.setDaemon(true);
            t.start();
        }
        assertTrue(done.await(10, TimeUnit.SECONDS));
        for (int r = 0; r < n; r++) {
            assertNull(errors[r]);
            assertEquals(6f, results[r][0]);
        }
        assertEquals(before, InJvmWorld.registeredWorlds());
        InJvmWorld w = InJvmWorld.join(key + "x", 2, SHORT);
        assertSame(w, InJvmWorld.join(key + "x", 2, SHORT));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> InJvmWorld.join(key + "x", 3, SHORT));
        assertTrue(e.getMessage().contains("has size 2 but this rank joined with size 3"), e.getMessage());
        w.rank(0).close();
        assertThrows(IllegalStateException.class, () -> w.rank(0));
        w.rank(1).close();
        assertEquals(before, InJvmWorld.registeredWorlds());
    }
}
