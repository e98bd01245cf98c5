package dev.sparkmoe.core.backend;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.ForkJoinTask;
import java.util.concurrent.RecursiveAction;

/** Data-parallel loops over index ranges on the common fork-join pool (both cores of a small machine). */
public final class Par {
    /** Work below this many inner operations runs on the calling thread. */
    private static final long SERIAL_WORK = 1 << 15;

    private Par() {
    }

    @FunctionalInterface
    public interface RangeBody {
        void run(int from, int to);
    }

    /**
     * Runs {@code body} over [0, n) split into contiguous chunks; {@code workPerItem} estimates the inner operations
     * per index so that tiny loops stay serial. Each index is visited exactly once; chunk boundaries depend only on n
     * and the pool size, never on timing, and bodies must write disjoint outputs, so results are deterministic.
     */
    public static void range(int n, long workPerItem, RangeBody body) {
        int threads = ForkJoinPool.getCommonPoolParallelism() + 1;
        if (n <= 1 || threads <= 1 || (long) n * Math.max(1, workPerItem) < SERIAL_WORK) {
            body.run(0, n);
            return;
        }
        int chunks = Math.min(n, threads * 4);
        List<RecursiveAction> tasks = new ArrayList<>(chunks);
        for (int c = 0; c < chunks; c++) {
            int from = (int) ((long) n * c / chunks);
            int to = (int) ((long) n * (c + 1) / chunks);
            tasks.add(new RecursiveAction() {
                @Override
                protected void compute() {
                    body.run(from, to);
                }
            });
        }
        if (ForkJoinTask.inForkJoinPool()) {
            ForkJoinTask.invokeAll(tasks);
        } else {
            ForkJoinPool.commonPool().invoke(new RecursiveAction() {
                @Override
                protected void compute() {
                    ForkJoinTask.invokeAll(tasks);
                }
            });
        }
    }
}
