package dev.sparkmoe.core.backend;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import dev.sparkmoe.core.tensor.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.CyclicBarrier;
import org.junit.jupiter.api.Test;

/**
 * Threads that accumulate GEMMs into interleaved blocks of one matrix (the attention heads of a row, written by
 * different tasks) must not disturb each other: the result equals the same products done one after the other.
 */
class CpuBackendConcurrencyTest {

    @Test
    void interleavedColumnBlocksWithBetaOneDoNotRace() throws Exception {
        CpuBackend be = new CpuBackend();
        int rows = 64;
        int block = 16;
        int blocks = 4;
        int k = 24;
        SplittableRandom r = new SplittableRandom(11);
        float[] a = new float[rows * k];
        float[] b = new float[k * block];
        for (int i = 0; i < a.length; i++) {
            a[i] = (float) r.nextDouble(-1, 1);
        }
        for (int i = 0; i < b.length; i++) {
            b[i] = (float) r.nextDouble(-1, 1);
        }
        Tensor ta = Tensor.of(a, rows, k);
        Tensor tb = Tensor.of(b, k, block);
        int repeats = 200;
        // sequential reference: every block gets `repeats` accumulations of A B
        Tensor expected = Tensor.zeros(dev.sparkmoe.core.tensor.DType.F32, rows, block * blocks);
        for (int rep = 0; rep < repeats; rep++) {
            for (int blk = 0; blk < blocks; blk++) {
                be.gemm(false, false, rows, block, k, 1f, ta, 0, k, tb, 0, block, 1f, expected, blk * block,
                        block * blocks);
            }
        }
        Tensor c = Tensor.zeros(dev.sparkmoe.core.tensor.DType.F32, rows, block * blocks);
        CyclicBarrier start = new CyclicBarrier(blocks);
        List<Thread> threads = new ArrayList<>();
        List<Throwable> errors = new java.util.concurrent.CopyOnWriteArrayList<>();
        for (int blk = 0; blk < blocks; blk++) {
            int off = blk * block;
            Thread t = new Thread(() -> {
                try {
                    start.await();
                    for (int rep = 0; rep < repeats; rep++) {
                        be.gemm(false, false, rows, block, k, 1f, ta, 0, k, tb, 0, block, 1f, c, off, block * blocks);
                    }
                } catch (Throwable e) {
                    errors.add(e);
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        assertArrayEquals(new Object[0], errors.toArray());
        assertArrayEquals(expected.floats(), c.floats());
    }
}
