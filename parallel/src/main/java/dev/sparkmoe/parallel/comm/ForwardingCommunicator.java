package dev.sparkmoe.parallel.comm;

/**
 * A communicator that hands every call to another one: the base of wrappers that change a few calls (a test's
 * deferred collectives, say) and keep the rest. {@link #split} must be overridden by a wrapper that wants its
 * sub-groups wrapped too; by default they are the inner communicator's own.
 */
public abstract class ForwardingCommunicator implements Communicator {
    protected final Communicator inner;

    protected ForwardingCommunicator(Communicator inner) {
        this.inner = inner;
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
    public java.util.Optional<java.time.Duration> timeout() {
        return inner.timeout();
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
        return inner.split(color, key, name);
    }

    @Override
    public void close() {
        inner.close();
    }
}
