package dev.sparkmoe.gpu.nccl;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparkmoe.gpu.launch.CollectiveSmokeEntry;
import dev.sparkmoe.gpu.launch.Launcher;
import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.CommunicatorConformance;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import org.junit.jupiter.api.Test;

/**
 * Needs a GPU and libnccl.so.2 (skipped otherwise): a one-rank NCCL world through the conformance suite and the
 * device-tensor checks; with two or more GPUs, the launcher with --backend cuda (conformance, device checks, a small
 * bus-bandwidth run) and a collective that one rank never joins, which must time out and abort, not hang.
 */
class NcclCommunicatorGpuTest {

    private static Nccl.Availability gpu() {
        Nccl.Availability a = Nccl.probe();
        assumeTrue(a.ok(), () -> "no NCCL here: " + a.reason());
        assumeTrue("0".equals(System.getenv(NcclCommunicator.ENV_NVLS)), "NCCL_NVLS_ENABLE=0 is not set");
        return a;
    }

    private static NcclBootstrap single() {
        return new NcclBootstrap() {
            @Override
            public int rank() {
                return 0;
            }

            @Override
            public int size() {
                return 1;
            }

            @Override
            public byte[] broadcastFromRank0(byte[] mine) {
                return mine;
            }
        };
    }

    @Test
    void oneRankWorldPassesConformanceAndDeviceChecks() {
        gpu();
        try (NcclCommunicator c = NcclCommunicator.create(single(), NcclOptions.defaults(0))) {
            assertEquals(0, c.rank());
            assertEquals(1, c.size());
            assertTrue(c.stream() != 0);
            CommunicatorConformance.runAll(c);
            CollectiveSmokeEntry.deviceChecks(c);
        }
    }

    @Test
    void twoGpusThroughTheLauncher() {
        Nccl.Availability a = gpu();
        assumeTrue(a.deviceCount() >= 2, "needs 2 GPUs");
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int code = Launcher.run(new String[] {"--nproc", "2", "--backend", "cuda", "--", "--busbw-bytes",
            Long.toString(64L << 20)}, new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8));
        String o = out.toString(StandardCharsets.UTF_8);
        assertEquals(0, code, () -> o + "\n" + err.toString(StandardCharsets.UTF_8));
        assertTrue(o.contains("NCCL conformance passed"), o);
        assertTrue(o.contains("busbw"), o);
    }

    @Test
    void aCollectiveNobodyElseJoinsTimesOutAndAborts() {
        NcclCommunicator[] cs = twoRanksInThisJvm(Duration.ofSeconds(3));
        CollectiveTimeoutException e = assertThrows(CollectiveTimeoutException.class,
                () -> cs[0].allReduceSum(new float[8], 0, 8));
        assertTrue(e.getMessage().contains("allReduceSum(float[8])"), e.getMessage());
        assertTrue(e.getMessage().contains("ncclCommAbort"), e.getMessage());
        assertTrue(cs[0].isAborted());
        closeBoth(cs);
    }

    /**
     * On a blocking communicator the host itself can block in NCCL: a send whose peer never receives waits in the
     * connection setup. The watchdog aborts it after the timeout; the call returns and throws, naming it.
     */
    @Test
    @org.junit.jupiter.api.Timeout(value = 90, threadMode = org.junit.jupiter.api.Timeout.ThreadMode.SEPARATE_THREAD)
    void theWatchdogAbortsAnEnqueueThatBlocksTheHost() {
        NcclCommunicator[] cs = twoRanksInThisJvm(Duration.ofSeconds(3));
        long t0 = System.nanoTime();
        RuntimeException e = assertThrows(RuntimeException.class, () -> cs[0].send(new float[8], 0, 8, 1));
        assertTrue(System.nanoTime() - t0 < 60_000_000_000L);
        assertTrue(e.getMessage().contains("send"), e.getMessage());
        assertTrue(e.getMessage().contains("ncclCommAbort") || e.getMessage().contains("abort"), e.getMessage());
        assertTrue(cs[0].isAborted());
        closeBoth(cs);
    }

    /**
     * A device collective returns before it completes; when nobody joins it, the watchdog aborts the communicator
     * after the timeout, a stream waiting on it is released (no hang), and the next call names what happened.
     */
    @Test
    void theWatchdogAbortsADeviceCollectiveNobodyJoins() throws Exception {
        NcclCommunicator[] cs = twoRanksInThisJvm(Duration.ofSeconds(3));
        try (dev.sparkmoe.gpu.cuda.CudaBackend be = new dev.sparkmoe.gpu.cuda.CudaBackend(0)) {
            cs[0].setComputeStream(be.stream());
            dev.sparkmoe.core.tensor.Tensor t = be.upload(dev.sparkmoe.core.tensor.Tensor.of(new float[1024], 1024));
            // one all-reduce that both join, so that NCCL has connected the peers: a first collective without its
            // peer is refused at enqueue time (the test above), a later one is accepted and then waits on the GPU
            Thread peer = new Thread(() -> cs[1].allReduceSum(new float[1024], 0, 1024));
            peer.start();
            cs[0].allReduceSum(new float[1024], 0, 1024);
            peer.join(60_000);
            long t0 = System.nanoTime();
            cs[0].allReduceSum(t, 0, 1024); // enqueued; returns at once
            assertTrue(System.nanoTime() - t0 < 2_000_000_000L, "the device form must not wait for its peer");
            assertEquals(1, cs[0].inFlight());
            be.synchronize(); // the compute stream waits for the all-reduce until the watchdog aborts it
            assertTrue(System.nanoTime() - t0 < 60_000_000_000L);
            assertTrue(cs[0].isAborted());
            dev.sparkmoe.parallel.comm.CommunicatorException next = assertThrows(
                    dev.sparkmoe.parallel.comm.CommunicatorException.class, () -> cs[0].allReduceSum(t, 0, 1024));
            assertTrue(next.getMessage().contains("watchdog") && next.getMessage().contains("allReduceSum"),
                    next.getMessage());
        } finally {
            closeBoth(cs);
        }
    }

    private static void closeBoth(NcclCommunicator[] cs) {
        try {
            cs[0].close();
        } catch (RuntimeException ignored) {
            assertTrue(cs[0].isAborted());
        }
        try {
            cs[1].close(); // its peer aborted: finalising may fail (and abort) instead
        } catch (RuntimeException ignored) {
            assertTrue(cs[1].isAborted());
        }
    }

    /** Two ranks in this JVM on devices 0 and 1 (skips without two GPUs). */
    private static NcclCommunicator[] twoRanksInThisJvm(Duration timeout) {
        Nccl.Availability a = gpu();
        assumeTrue(a.deviceCount() >= 2, "needs 2 GPUs");
        java.util.concurrent.atomic.AtomicReference<byte[]> id = new java.util.concurrent.atomic.AtomicReference<>();
        java.util.concurrent.CountDownLatch have = new java.util.concurrent.CountDownLatch(1);
        NcclCommunicator[] cs = new NcclCommunicator[2];
        Thread[] ts = new Thread[2];
        for (int r = 0; r < 2; r++) {
            int rank = r;
            ts[r] = new Thread(() -> {
                NcclBootstrap b = new NcclBootstrap() {
                    @Override
                    public int rank() {
                        return rank;
                    }

                    @Override
                    public int size() {
                        return 2;
                    }

                    @Override
                    public byte[] broadcastFromRank0(byte[] mine) {
                        if (rank == 0) {
                            id.set(mine);
                            have.countDown();
                            return mine;
                        }
                        try {
                            have.await();
                        } catch (InterruptedException e) {
                            throw new IllegalStateException(e);
                        }
                        return id.get();
                    }
                };
                cs[rank] = NcclCommunicator.create(b, NcclOptions.defaults(rank).withTimeout(timeout));
            });
            ts[r].start();
        }
        for (Thread t : ts) {
            try {
                t.join(120_000);
            } catch (InterruptedException e) {
                throw new AssertionError(e);
            }
        }
        return cs;
    }
}
