package dev.sparkmoe.gpu.comm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

class TcpCommunicatorTest {

    @Test
    void fourThreadRanksPassConformanceAndAgree() {
        JobSecret secret = JobSecret.generate();
        int port = TcpHarness.freePort();
        List<String> digests = TcpHarness.values(TcpHarness.withWorld(4,
                r -> TcpHarness.rendezvous(4, r, port, secret).build(), Duration.ofSeconds(60), TcpChecks::runAll));
        assertEquals(4, digests.size());
    }

    @Test
    void worldOfOne() {
        TcpRendezvous r = TcpRendezvous.builder().worldSize(1).rank(0).secret(JobSecret.generate()).build();
        try (TcpCommunicator c = TcpCommunicator.connect(r)) {
            TcpChecks.runAll(c);
        }
    }

    @Test
    void threeRanksUnevenChunks() {
        JobSecret secret = JobSecret.generate();
        int port = TcpHarness.freePort();
        TcpHarness.values(TcpHarness.withWorld(3,
                r -> TcpHarness.rendezvous(3, r, port, secret).build(), Duration.ofSeconds(60), TcpChecks::runAll));
    }

    @Test
    void mismatchedCollectivesNameBothCalls() {
        JobSecret secret = JobSecret.generate();
        int port = TcpHarness.freePort();
        var outs = TcpHarness.withWorld(2, r -> TcpHarness.rendezvous(2, r, port, secret)
                .collectiveTimeout(Duration.ofSeconds(5)).build(), Duration.ofSeconds(30), c -> {
                    if (c.rank() == 0) {
                        c.allReduceSum(new float[4], 0, 4);
                    } else {
                        c.barrier();
                    }
                    return null;
                });
        for (var o : outs) {
            assertNotNull(o.error());
            String m = o.error().getMessage();
            assertTrue(m.contains("allReduceSum(float)") && m.contains("barrier"), m);
        }
    }

    @Test
    void mismatchedLengthsAndSplitSizesAreNamed() {
        JobSecret secret = JobSecret.generate();
        int port = TcpHarness.freePort();
        var outs = TcpHarness.withWorld(2, r -> TcpHarness.rendezvous(2, r, port, secret)
                .collectiveTimeout(Duration.ofSeconds(5)).build(), Duration.ofSeconds(30), c -> {
                    int len = c.rank() == 0 ? 4 : 5;
                    Throwable e1 = assertThrows(CommunicatorException.class, () -> c.allReduceSum(new float[5], 0, len));
                    assertTrue(e1.getMessage().contains("len=4") && e1.getMessage().contains("len=5"), e1.getMessage());
                    return null;
                });
        TcpHarness.values(outs);
        int port2 = TcpHarness.freePort();
        var outs2 = TcpHarness.withWorld(2, r -> TcpHarness.rendezvous(2, r, port2, secret)
                .collectiveTimeout(Duration.ofSeconds(5)).build(), Duration.ofSeconds(30), c -> {
                    // rank 0 sends 3 to rank 1, but rank 1 expects 2 from rank 0
                    int[] sc = c.rank() == 0 ? new int[] {1, 3} : new int[] {2, 1};
                    int[] rc = c.rank() == 0 ? new int[] {1, 2} : new int[] {2, 1};
                    c.allToAll(new float[4], sc, new float[4], rc);
                    return null;
                });
        assertNotNull(outs2.get(1).error());
        String m = outs2.get(1).error().getMessage();
        assertTrue(m.contains("recvCounts[0]=2") && m.contains("sendCounts[1]=3") && m.contains("rank 0"), m);
        assertNull(outs2.get(0).error(), "rank 0's counts agree with rank 1's, so rank 0 completes");
    }

    @Test
    void rankThatNeverCallsTheCollectiveIsNamedWithinTheTimeout() {
        JobSecret secret = JobSecret.generate();
        int port = TcpHarness.freePort();
        CountDownLatch done = new CountDownLatch(3);
        long t0 = System.nanoTime();
        var outs = TcpHarness.withWorld(4, r -> TcpHarness.rendezvous(4, r, port, secret)
                .collectiveTimeout(Duration.ofMillis(1500)).build(), Duration.ofSeconds(30), c -> {
                    if (c.rank() == 2) {
                        try {
                            done.await(20, TimeUnit.SECONDS); // joins the world, never calls the collective
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                        }
                        return null;
                    }
                    try {
                        c.allReduceSum(new float[100], 0, 100);
                        return null;
                    } finally {
                        done.countDown();
                    }
                });
        long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
        for (int r : new int[] {0, 1, 3}) {
            Throwable e = outs.get(r).error();
            assertTrue(e instanceof CollectiveTimeoutException, "rank " + r + ": " + e);
            assertTrue(e.getMessage().contains("missing rank 2 ") && e.getMessage().contains("allReduceSum(float)"), e.getMessage());
        }
        assertTrue(ms < 10_000, "took " + ms + " ms");
    }

    @Test
    void rankThatNeverJoinsIsNamed() {
        JobSecret secret = JobSecret.generate();
        int port = TcpHarness.freePort();
        var outs = TcpHarness.runRanks(3, Duration.ofSeconds(30), r -> {
            // world of 4; rank 3 is never started
            try (TcpCommunicator c = TcpCommunicator.connect(TcpHarness.rendezvous(4, r, port, secret)
                    .connectTimeout(Duration.ofMillis(1500)).build())) {
                return c;
            }
        });
        for (int r = 0; r < 3; r++) {
            Throwable e = outs.get(r).error();
            assertTrue(e instanceof CollectiveTimeoutException, "rank " + r + ": " + e);
            assertTrue(e.getMessage().contains("[3]"), e.getMessage());
        }
    }

    @Test
    void droppedPeerIsNamed() {
        JobSecret secret = JobSecret.generate();
        int port = TcpHarness.freePort();
        CountDownLatch survivors = new CountDownLatch(2);
        var outs = TcpHarness.runRanks(3, Duration.ofSeconds(30), r -> {
            try (TcpCommunicator c = TcpCommunicator.connect(TcpHarness.rendezvous(3, r, port, secret)
                    .collectiveTimeout(Duration.ofSeconds(10)).build())) {
                    c.barrier();
                    if (c.rank() == 1) {
                        c.close();
                        return null;
                    }
                    long t = System.nanoTime();
                    CommunicatorException e = assertThrows(CommunicatorException.class, () -> c.allReduceSum(new float[3], 0, 3));
                    assertTrue(!(e instanceof CollectiveTimeoutException), e.toString());
                    assertTrue(e.getMessage().contains("rank 1 dropped"), e.getMessage());
                    assertTrue(System.nanoTime() - t < TimeUnit.SECONDS.toNanos(5), "drop detected slowly");
                    // the group is unusable afterwards, with a clear error
                    CommunicatorException again = assertThrows(CommunicatorException.class, c::barrier);
                    assertTrue(again.getMessage().contains("unusable"), again.getMessage());
                    survivors.countDown();
                    survivors.await(10, TimeUnit.SECONDS);
                    return null;
            }
        });
        TcpHarness.values(outs);
    }

    @Test
    void closeIsIdempotentAndLaterCallsFail() {
        TcpRendezvous r = TcpRendezvous.builder().worldSize(1).rank(0).secret(JobSecret.generate()).build();
        TcpCommunicator c = TcpCommunicator.connect(r);
        c.close();
        c.close();
        assertThrows(CommunicatorException.class, c::barrier);
    }

    @Test
    void rendezvousToStringHidesSecret() {
        JobSecret s = JobSecret.generate();
        TcpRendezvous r = TcpHarness.rendezvous(2, 1, 1234, s).build();
        assertTrue(!r.toString().contains(s.encode()), r.toString());
    }
}
