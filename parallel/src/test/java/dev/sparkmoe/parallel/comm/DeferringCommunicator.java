package dev.sparkmoe.parallel.comm;

import dev.sparkmoe.core.tensor.Tensor;
import java.util.Arrays;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A test communicator whose started collectives ({@link #allGatherStart}, {@link #reduceScatterSumStart}) behave as
 * the worst legal GPU schedule: nothing happens until {@link Pending#complete()}, and the receive buffer reads NaN
 * until then. A caller that uses a result before completing it, or never completes it, computes NaN or misses the
 * result. Every rank runs the same program, so deferred collectives still meet in the same order on every rank.
 */
public final class DeferringCommunicator extends ForwardingCommunicator {
    private final AtomicInteger open;

    public DeferringCommunicator(Communicator inner) {
        this(inner, new AtomicInteger());
    }

    private DeferringCommunicator(Communicator inner, AtomicInteger open) {
        super(inner);
        this.open = open;
    }

    /** Started collectives of this group and its splits not completed yet. */
    public int open() {
        return open.get();
    }

    @Override
    public Pending allGatherStart(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        Arrays.fill(recv.floats(), rOff, rOff + len * size(), Float.NaN);
        return defer(() -> inner.allGather(send, sOff, len, recv, rOff));
    }

    @Override
    public Pending reduceScatterSumStart(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        Arrays.fill(recv.floats(), rOff, rOff + recvLen, Float.NaN);
        return defer(() -> inner.reduceScatterSum(send, sOff, recv, rOff, recvLen));
    }

    private Pending defer(Runnable collective) {
        open.incrementAndGet();
        boolean[] done = {false};
        return () -> {
            if (!done[0]) {
                done[0] = true;
                open.decrementAndGet();
                collective.run();
            }
        };
    }

    @Override
    public Communicator split(int color, int key, String name) {
        return new DeferringCommunicator(inner.split(color, key, name), open);
    }
}
