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
public final class DeferringCommunicator implements Communicator {
    private final Communicator inner;
    private final AtomicInteger open;

    public DeferringCommunicator(Communicator inner) {
        this(inner, new AtomicInteger());
    }

    private DeferringCommunicator(Communicator inner, AtomicInteger open) {
        this.inner = inner;
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
    public int rank() {
        return inner.rank();
    }

    @Override
    public int size() {
        return inner.size();
    }

    @Override
    public String name() {
        return inner.name();
    }

    @Override
    public void allReduceSum(float[] buf, int off, int len) {
        inner.allReduceSum(buf, off, len);
    }

    @Override
    public void allReduceSum(double[] buf, int off, int len) {
        inner.allReduceSum(buf, off, len);
    }

    @Override
    public void allReduceSum(long[] buf, int off, int len) {
        inner.allReduceSum(buf, off, len);
    }

    @Override
    public void allReduceMax(float[] buf, int off, int len) {
        inner.allReduceMax(buf, off, len);
    }

    @Override
    public void allGather(float[] send, int sOff, int len, float[] recv, int rOff) {
        inner.allGather(send, sOff, len, recv, rOff);
    }

    @Override
    public void allGather(int[] send, int sOff, int len, int[] recv, int rOff) {
        inner.allGather(send, sOff, len, recv, rOff);
    }

    @Override
    public byte[][] allGatherBytes(byte[] mine) {
        return inner.allGatherBytes(mine);
    }

    @Override
    public void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen) {
        inner.reduceScatterSum(send, sOff, recv, rOff, recvLen);
    }

    @Override
    public void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts) {
        inner.allToAll(send, sendCounts, recv, recvCounts);
    }

    @Override
    public void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts) {
        inner.allToAll(send, sendCounts, recv, recvCounts);
    }

    @Override
    public void broadcast(float[] buf, int off, int len, int root) {
        inner.broadcast(buf, off, len, root);
    }

    @Override
    public byte[] broadcastBytes(byte[] mine, int root) {
        return inner.broadcastBytes(mine, root);
    }

    @Override
    public void barrier() {
        inner.barrier();
    }

    @Override
    public void send(float[] buf, int off, int len, int peer) {
        inner.send(buf, off, len, peer);
    }

    @Override
    public void recv(float[] buf, int off, int len, int peer) {
        inner.recv(buf, off, len, peer);
    }

    @Override
    public Communicator split(int color, int key, String name) {
        return new DeferringCommunicator(inner.split(color, key, name), open);
    }

    @Override
    public void close() {
        inner.close();
    }
}
