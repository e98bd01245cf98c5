package dev.sparkmoe.parallel.comm;

import dev.sparkmoe.core.tensor.Tensor;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A communicator that measures where collective time goes: wall time and call count per collective kind
 * (all-gather, reduce-scatter, all-to-all, all-reduce, ...), summed over this group and every group split from it.
 * {@code drain} runs before and after each timed call (for a GPU: synchronise the compute stream, which waits for
 * the collective) so that the time is the collective's own, neither the compute queued before it nor cut short by a
 * collective that returns before it completed.
 */
public final class TimedCommunicator extends ForwardingCommunicator {
    private final Runnable drain;
    private final Map<String, AtomicLong[]> stats;
    private final AtomicBoolean enabled;

    public TimedCommunicator(Communicator inner, Runnable drain) {
        this(inner, drain, new ConcurrentHashMap<>(), new AtomicBoolean(true));
    }

    private TimedCommunicator(Communicator inner, Runnable drain, Map<String, AtomicLong[]> stats,
                              AtomicBoolean enabled) {
        super(inner);
        this.drain = drain;
        this.stats = stats;
        this.enabled = enabled;
    }

    /** Switches timing (and the drain before each collective) on or off for this group and its splits. */
    public void setEnabled(boolean on) {
        enabled.set(on);
    }

    /** Seconds and calls per collective kind since the last {@link #reset()}. */
    public Map<String, double[]> snapshot() {
        Map<String, double[]> out = new TreeMap<>();
        stats.forEach((k, v) -> out.put(k, new double[] {v[0].get() / 1e9, v[1].get()}));
        return out;
    }

    public void reset() {
        stats.clear();
    }

    private long start() {
        if (!enabled.get()) {
            return -1;
        }
        drain.run();
        return System.nanoTime();
    }

    private void end(String kind, long t0) {
        if (t0 < 0) {
            return;
        }
        drain.run(); // a device collective may return before it completed
        AtomicLong[] s = stats.computeIfAbsent(kind, k -> new AtomicLong[] {new AtomicLong(), new AtomicLong()});
        s[0].addAndGet(System.nanoTime() - t0);
        s[1].incrementAndGet();
    }

    @Override
    public void allReduceSum(float[] buf, int off, int len) {
        long t = start();
        inner.allReduceSum(buf, off, len);
        end("all_reduce", t);
    }

    @Override
    public void allReduceSum(double[] buf, int off, int len) {
        long t = start();
        inner.allReduceSum(buf, off, len);
        end("all_reduce", t);
    }

    @Override
    public void allReduceSum(long[] buf, int off, int len) {
        long t = start();
        inner.allReduceSum(buf, off, len);
        end("all_reduce", t);
    }

    @Override
    public void allReduceMax(float[] buf, int off, int len) {
        long t = start();
        inner.allReduceMax(buf, off, len);
        end("all_reduce", t);
    }

    @Override
    public void allGather(float[] send, int sOff, int len, float[] recv, int rOff) {
        long t = start();
        inner.allGather(send, sOff, len, recv, rOff);
        end("all_gather", t);
    }

    @Override
    public void allGather(int[] send, int sOff, int len, int[] recv, int rOff) {
        long t = start();
        inner.allGather(send, sOff, len, recv, rOff);
        end("all_gather", t);
    }

    @Override
    public byte[][] allGatherBytes(byte[] mine) {
        long t = start();
        byte[][] r = inner.allGatherBytes(mine);
        end("all_gather", t);
        return r;
    }

    @Override
    public void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen) {
        long t = start();
        inner.reduceScatterSum(send, sOff, recv, rOff, recvLen);
        end("reduce_scatter", t);
    }

    @Override
    public void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts) {
        long t = start();
        inner.allToAll(send, sendCounts, recv, recvCounts);
        end("all_to_all", t);
    }

    @Override
    public void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts) {
        long t = start();
        inner.allToAll(send, sendCounts, recv, recvCounts);
        end("all_to_all", t);
    }

    @Override
    public void broadcast(float[] buf, int off, int len, int root) {
        long t = start();
        inner.broadcast(buf, off, len, root);
        end("broadcast", t);
    }

    @Override
    public byte[] broadcastBytes(byte[] mine, int root) {
        long t = start();
        byte[] r = inner.broadcastBytes(mine, root);
        end("broadcast", t);
        return r;
    }

    @Override
    public void barrier() {
        long t = start();
        inner.barrier();
        end("barrier", t);
    }

    @Override
    public void send(float[] buf, int off, int len, int peer) {
        long t = start();
        inner.send(buf, off, len, peer);
        end("send_recv", t);
    }

    @Override
    public void recv(float[] buf, int off, int len, int peer) {
        long t = start();
        inner.recv(buf, off, len, peer);
        end("send_recv", t);
    }

    @Override
    public void allReduceSum(Tensor buf, int off, int len) {
        long t = start();
        inner.allReduceSum(buf, off, len);
        end("all_reduce", t);
    }

    @Override
    public void allGather(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        long t = start();
        inner.allGather(send, sOff, len, recv, rOff);
        end("all_gather", t);
    }

    @Override
    public void reduceScatterSum(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        long t = start();
        inner.reduceScatterSum(send, sOff, recv, rOff, recvLen);
        end("reduce_scatter", t);
    }

    @Override
    public Pending allGatherStart(Tensor send, int sOff, int len, Tensor recv, int rOff) {
        return timedStart("all_gather", () -> inner.allGatherStart(send, sOff, len, recv, rOff));
    }

    @Override
    public Pending reduceScatterSumStart(Tensor send, int sOff, Tensor recv, int rOff, int recvLen) {
        return timedStart("reduce_scatter", () -> inner.reduceScatterSumStart(send, sOff, recv, rOff, recvLen));
    }

    @Override
    public Pending allGatherStart(java.util.List<Part> parts) {
        return timedStart("all_gather", () -> inner.allGatherStart(parts));
    }

    @Override
    public Pending allGatherStart(java.util.List<Part> parts, dev.sparkmoe.core.tensor.DType wire) {
        return timedStart("all_gather", () -> inner.allGatherStart(parts, wire));
    }

    @Override
    public Pending reduceScatterSumStart(java.util.List<Part> parts) {
        return timedStart("reduce_scatter", () -> inner.reduceScatterSumStart(parts));
    }

    /** Started collectives are timed whole (start, complete, drain) while timing is on, else passed through. */
    private Pending timedStart(String kind, java.util.function.Supplier<Pending> begin) {
        long t = start();
        Pending p = begin.get();
        if (t < 0) {
            return p;
        }
        p.complete();
        end(kind, t);
        return Pending.DONE;
    }

    @Override
    public void allToAll(Tensor send, int[] sendCounts, Tensor recv, int[] recvCounts) {
        long t = start();
        inner.allToAll(send, sendCounts, recv, recvCounts);
        end("all_to_all", t);
    }

    @Override
    public void broadcast(Tensor buf, int off, int len, int root) {
        long t = start();
        inner.broadcast(buf, off, len, root);
        end("broadcast", t);
    }

    @Override
    public Communicator split(int color, int key, String name) {
        return new TimedCommunicator(inner.split(color, key, name), drain, stats, enabled);
    }
}
