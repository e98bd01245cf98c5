package dev.sparkmoe.gpu.bench;

import dev.sparkmoe.gpu.cuda.Cuda;
import dev.sparkmoe.gpu.cuda.CudaBackend;
import java.util.ArrayList;
import java.util.List;
import org.bytedeco.cuda.cudart.CUevent_st;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.FloatPointer;

/**
 * Marks on the timeline of the device that runs a backend's work, for {@link OpProfiler.Mode#TRACE}: a mark is
 * reached when the device has done everything enqueued before it, so the time between one op's end mark and the next
 * op's start mark is time the device sat idle (waiting for the host to enqueue more, or for another stream's event).
 */
interface Timeline {

    /** Places the next mark after the work enqueued so far. */
    void mark();

    /** Waits for the device, returns every mark's time in ms since the first one, and forgets them. */
    double[] drain();

    /** The device's timeline for a CUDA backend (events on its stream), the host clock for any other. */
    static Timeline of(Object backend) {
        return backend instanceof CudaBackend cuda ? new Events(cuda) : new HostClock();
    }

    /** A host-only backend works while its call runs: the host clock is its timeline. */
    final class HostClock implements Timeline {
        private final List<Long> marks = new ArrayList<>();

        @Override
        public void mark() {
            marks.add(System.nanoTime());
        }

        @Override
        public double[] drain() {
            double[] ms = new double[marks.size()];
            for (int i = 0; i < ms.length; i++) {
                ms[i] = (marks.get(i) - marks.get(0)) / 1e6;
            }
            marks.clear();
            return ms;
        }
    }

    /** CUDA events recorded on the backend's stream, from a pool that grows to the largest step. */
    final class Events implements Timeline {
        private final CudaBackend backend;
        private final List<CUevent_st> pool = new ArrayList<>();
        private int used;

        Events(CudaBackend backend) {
            this.backend = backend;
        }

        @Override
        public void mark() {
            if (used == pool.size()) {
                CUevent_st e = new CUevent_st();
                Cuda.check(cudart.cudaEventCreate(e), "cudaEventCreate (profiler timeline)");
                pool.add(e);
            }
            Cuda.check(cudart.cudaEventRecord(pool.get(used++), backend.stream()), "cudaEventRecord (profiler)");
        }

        @Override
        public double[] drain() {
            double[] ms = new double[used];
            if (used > 0) {
                Cuda.check(cudart.cudaEventSynchronize(pool.get(used - 1)), "cudaEventSynchronize (profiler)");
                try (FloatPointer f = new FloatPointer(1)) {
                    for (int i = 1; i < used; i++) {
                        Cuda.check(cudart.cudaEventElapsedTime(f, pool.get(0), pool.get(i)),
                                "cudaEventElapsedTime (profiler)");
                        ms[i] = f.get();
                    }
                }
            }
            used = 0;
            return ms;
        }
    }
}
