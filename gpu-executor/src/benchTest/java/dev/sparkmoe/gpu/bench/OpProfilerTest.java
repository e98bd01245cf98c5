package dev.sparkmoe.gpu.bench;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.junit.jupiter.api.Test;

/** The profiler on the CPU backend: it forwards every call unchanged and, while on, counts them by op and shape. */
class OpProfilerTest {

    @Test
    void forwardsAndCountsCallsWhileOn() {
        Backend be = OpProfiler.wrap(new CpuBackend());
        OpProfiler prof = OpProfiler.handler(be);
        Tensor a = Tensor.of(new float[] {1, 2, 3, 4}, 2, 2);
        Tensor c = be.zeros(DType.F32, 2, 2);
        be.gemm(false, false, 2, 2, 2, 1f, a, 0, 2, a, 0, 2, 0f, c, 0, 2); // off: not counted
        prof.start(OpProfiler.Mode.HOST);
        be.gemm(false, true, 2, 2, 2, 1f, a, 0, 2, a, 0, 2, 0f, c, 0, 2);
        be.axpy(1f, a, 0, c, 0, 4);
        be.axpy(1f, a, 0, c, 0, 4);
        prof.stop();
        assertArrayEquals(new float[] {7, 15, 17, 33}, c.floats()); // a a^T + 2 a
        String report = prof.report(1);
        assertTrue(report.startsWith("op profile (HOST)"), report);
        assertTrue(report.contains("1 calls  gemm NT 2x2x2"), report);
        assertTrue(report.contains("2 calls  axpy"), report);
        assertFalse(report.contains("gemm NN"), report);
        // a backend's exception reaches the caller as itself, not wrapped by the proxy
        Tensor bad = Tensor.ofInts(new int[] {5, 0}, 2); // target 5 outside a vocabulary of 2
        assertThrows(IllegalArgumentException.class, () -> be.crossEntropy(a, bad, 2, 2, 1f, c));
    }

    /**
     * TRACE on a host backend (its timeline is the host clock): each call's time is its own, and the time between
     * calls, here a sleep of the caller, is reported as idle before the call that followed it.
     */
    @Test
    void traceChargesTheGapBetweenCallsToTheCallAfterIt() throws InterruptedException {
        Backend be = OpProfiler.wrap(new CpuBackend());
        OpProfiler prof = OpProfiler.handler(be);
        Tensor a = Tensor.of(new float[] {1, 2, 3, 4}, 2, 2);
        Tensor c = be.zeros(DType.F32, 2, 2);
        prof.start(OpProfiler.Mode.TRACE);
        be.axpy(1f, a, 0, c, 0, 4);
        Thread.sleep(40);
        be.scale(c, 2f);
        prof.stop();
        assertArrayEquals(new float[] {2, 4, 6, 8}, c.floats());
        String report = prof.report(1);
        assertTrue(report.startsWith("op trace (TRACE)"), report);
        java.util.regex.Matcher idle = java.util.regex.Pattern
                .compile("([0-9.]+) ms idle between them").matcher(report);
        assertTrue(idle.find(), report);
        double ms = Double.parseDouble(idle.group(1));
        assertTrue(ms >= 39 && ms < 1000, report);
        assertTrue(report.contains("1 calls  idle before scale"), report);
        assertFalse(report.contains("idle before axpy"), report); // nothing ran before the first call
        assertTrue(report.contains("after axpy, before scale"), report);
        // the host slept between the two calls: the gap's host time says so (about as long as the idle time)
        java.util.regex.Matcher host = java.util.regex.Pattern
                .compile("call      1 \\(host between calls ([0-9.]+) ms\\)").matcher(report);
        assertTrue(host.find(), report);
        double hostMs = Double.parseDouble(host.group(1));
        assertTrue(hostMs >= 39 && hostMs <= ms + 0.5, report);
    }
}
