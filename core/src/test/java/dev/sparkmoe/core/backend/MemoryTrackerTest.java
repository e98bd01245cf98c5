package dev.sparkmoe.core.backend;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.List;
import org.junit.jupiter.api.Test;

class MemoryTrackerTest {

    @Test
    void countsLiveBytesAsADeviceStoresThemAndKeepsThePeak() {
        Backend be = MemoryTracker.wrap(new CpuBackend());
        MemoryTracker m = MemoryTracker.of(be);
        Tensor a = be.zeros(DType.F32, 10, 10);  // 400 B
        Tensor b = be.empty(DType.BF16, 8);      // 2 bytes an element: 16 B
        Tensor c = be.zeros(DType.I64, 5);       // 40 B
        Tensor d = be.upload(Tensor.ofInts(new int[3], 3)); // 12 B
        assertEquals(468, m.liveBytes());
        be.release(a);
        assertEquals(68, m.liveBytes());
        assertEquals(468, m.peakBytes());
        m.resetPeak();
        assertEquals(68, m.peakBytes());
        be.release(b);
        be.release(c);
        be.release(d);
        assertEquals(0, m.liveBytes());
    }

    @Test
    void aScopeGivesBackWhatWasMadeInsideItAndNothingElse() {
        Backend be = MemoryTracker.wrap(new CpuBackend());
        MemoryTracker m = MemoryTracker.of(be);
        Tensor kept = be.zeros(DType.F32, 100);
        try (Backend.Scope outer = be.openScope()) {
            be.zeros(DType.F32, 50);
            try (Backend.Scope inner = be.openScope()) {
                Tensor t = be.zeros(DType.F32, 25);
                be.release(t); // released early: the scope must not count it twice
                be.zeros(DType.F32, 10);
                assertEquals(4 * 160, m.liveBytes());
            }
            assertEquals(4 * 150, m.liveBytes());
        }
        assertEquals(4 * 100, m.liveBytes());
        assertEquals(4 * 175, m.peakBytes()); // 100 + 50 + 25, before the 25 went
        be.scale(kept, 2f); // still valid
    }

    @Test
    void aTensorUsedAfterItsReleaseIsRefusedWithWhereItCameFrom() {
        Backend be = MemoryTracker.wrap(new CpuBackend());
        Tensor x = be.zeros(DType.F32, 4);
        Tensor y = be.zeros(DType.F32, 4);
        be.release(x);
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> be.axpy(1f, x, 0, y, 0, 4));
        assertTrue(e.getMessage().contains("axpy"), e.getMessage());
        assertTrue(e.getMessage().contains("allocated at MemoryTrackerTest.aTensorUsedAfterItsReleaseIsRefused"),
                e.getMessage());
        assertTrue(e.getMessage().contains("released at MemoryTrackerTest"), e.getMessage());
        IllegalStateException twice = assertThrows(IllegalStateException.class, () -> be.release(x));
        assertTrue(twice.getMessage().contains("released twice"), twice.getMessage());
        // inside a list argument too
        assertThrows(IllegalStateException.class, () -> be.sumSquares(List.of(y, x)));
    }

    @Test
    void aTensorOfAClosedScopeIsRefused() {
        Backend be = MemoryTracker.wrap(new CpuBackend());
        Tensor t;
        try (Backend.Scope s = be.openScope()) {
            t = be.zeros(DType.F32, 4);
        }
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> be.fill(t, 1f));
        assertTrue(e.getMessage().contains("released when its scope closed"), e.getMessage());
    }

    @Test
    void theReportNamesTheSitesHoldingThePeak() {
        Backend be = MemoryTracker.wrap(new CpuBackend());
        MemoryTracker m = MemoryTracker.of(be);
        Tensor big = bigAllocation(be);
        be.release(big);
        be.zeros(DType.F32, 10);
        String report = m.report();
        assertTrue(report.startsWith("memory: peak 0.004 GB live (reached at MemoryTrackerTest.bigAllocation"), report);
        assertTrue(report.contains("MemoryTrackerTest.bigAllocation"), report);
        assertTrue(report.contains("4.0 MB      1 tensors"), report);
        m.setFollowing(false);
        be.zeros(DType.F32, 2000, 1000);
        assertTrue(m.report().contains("8.0 MB      1 tensors  (not followed)"), m.report());
    }

    private static Tensor bigAllocation(Backend be) {
        return be.zeros(DType.F32, 1000, 1000);
    }
}
