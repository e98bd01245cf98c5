package dev.sparkmoe.core.backend;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.tensor.Tensor;
import java.util.concurrent.atomic.AtomicIntegerArray;
import org.junit.jupiter.api.Test;

/** Par.range visits every index exactly once; reductions built on it are bit-for-bit deterministic. */
class ParTest {

    @Test
    void everyIndexVisitedExactlyOnce() {
        int[] sizes = {0, 1, 2, 3, 5, 7, 8, 9, 16, 17, 100, 1000, 4097, 100_003};
        for (int n : sizes) {
            for (long work : new long[] {1, 1 << 20}) { // serial path and forced parallel path
                AtomicIntegerArray visits = new AtomicIntegerArray(Math.max(n, 1));
                Par.range(n, work, (from, to) -> {
                    assertTrue(0 <= from && from <= to && to <= n, "chunk [" + from + ", " + to + ") of " + n);
                    for (int i = from; i < to; i++) {
                        visits.incrementAndGet(i);
                    }
                });
                for (int i = 0; i < n; i++) {
                    assertEquals(1, visits.get(i), "n=" + n + " work=" + work + ": index " + i);
                }
            }
        }
    }

    @Test
    void nestedRangesVisitEveryIndexOnce() {
        int outer = 13;
        int inner = 101;
        AtomicIntegerArray visits = new AtomicIntegerArray(outer * inner);
        Par.range(outer, 1 << 20, (f0, t0) -> {
            for (int o = f0; o < t0; o++) {
                int base = o * inner;
                Par.range(inner, 1 << 20, (f1, t1) -> {
                    for (int i = f1; i < t1; i++) {
                        visits.incrementAndGet(base + i);
                    }
                });
            }
        });
        for (int i = 0; i < outer * inner; i++) {
            assertEquals(1, visits.get(i), "index " + i);
        }
    }

    @Test
    void sumSquaresIsBitIdenticalAcrossRuns() {
        Rand r = new Rand(41);
        Tensor x = Tensor.of(r.floats(1_000_003, 3), 1_000_003);
        CpuBackend be = new CpuBackend();
        double first = be.sumSquares(x);
        for (int rep = 0; rep < 20; rep++) {
            assertEquals(Double.doubleToRawLongBits(first), Double.doubleToRawLongBits(be.sumSquares(x)),
                    "run " + rep);
        }
        double ref = 0;
        for (float f : x.floats()) {
            ref += (double) f * f;
        }
        assertEquals(ref, first, 1e-12 * ref);
    }

    @Test
    void rmsNormBackwardWeightGradIsBitIdenticalAcrossRuns() {
        Rand r = new Rand(42);
        int rows = 512;
        int dim = 256;
        Tensor x = r.tensor(1, rows, dim);
        Tensor dy = r.tensor(1, rows, dim);
        Tensor w = Tensor.of(r.uniform(dim, 0.5, 1.5), dim);
        CpuBackend be = new CpuBackend();
        Tensor y = Tensor.zeros(dev.sparkmoe.core.tensor.DType.F32, rows, dim);
        Tensor rstd = Tensor.zeros(dev.sparkmoe.core.tensor.DType.F32, rows);
        be.rmsNormForward(x, w, 1e-6f, rows, dim, y, rstd);
        Tensor first = null;
        for (int rep = 0; rep < 5; rep++) {
            Tensor dx = Tensor.zeros(dev.sparkmoe.core.tensor.DType.F32, rows, dim);
            Tensor dw = Tensor.zeros(dev.sparkmoe.core.tensor.DType.F32, dim);
            be.rmsNormBackward(dy, x, w, rstd, rows, dim, dx, dw);
            if (first == null) {
                first = dw;
            } else {
                assertTrue(first.bitwiseEquals(dw), "run " + rep + " differs");
            }
        }
    }
}
