package dev.sparkmoe.parallel.comm;

import dev.sparkmoe.parallel.comm.InJvmGroup.Call;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * One member of an in-JVM process group (see {@link InJvmWorld}); ranks are threads of one JVM.
 *
 * <p>Each collective is a rendezvous: every member posts references to its buffers, then computes its own result by
 * reading the posted buffers directly (no staging copies, except where an in-place result would overwrite a buffer
 * that peers still read: all-reduce accumulates into one scratch array, copied back after everyone finished
 * reading). Reductions add the members' buffers in rank order 0..n-1, so every member gets the same bits, on every
 * run. A completion barrier keeps every member's buffers untouched until all peers have read them.
 *
 * <p>Arguments are checked across members: a different collective, length, root or count on some member fails the
 * collective on every member with a message listing each rank's call; all-to-all checks each {@code recvCounts[p]}
 * against peer p's {@code sendCounts[rank]}. Buffers: {@code send} and {@code recv} of one call must not overlap,
 * except the in-place forms (all-gather whose send is this rank's own slot of recv, reduce-scatter whose recv lies in
 * send).
 *
 * <p>{@link #send} is buffered (it copies and returns at once, like {@code MPI_Bsend}); {@link #recv} waits up to the
 * timeout. Portable code orders send/recv so that it would not deadlock with a rendezvous send either.
 *
 * <p>A communicator is used by one thread at a time.
 */
public final class InJvmCommunicator implements Communicator {

    private record Buf(Object array, int off, int len) { }

    private record A2A(Object send, int[] sendCounts, int[] recvCounts, int[] sendOffsets) { }

    private record SplitArgs(int color, int key, String name) { }

    private final InJvmGroup group;
    private final int rank;
    private final int worldRank;
    private long seq;
    private long phase;
    private boolean closed;

    InJvmCommunicator(InJvmGroup group, int rank, int worldRank) {
        this.group = group;
        this.rank = rank;
        this.worldRank = worldRank;
    }

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return group.size;
    }

    @Override
    public String name() {
        return group.name;
    }

    @Override
    public java.util.Optional<java.time.Duration> timeout() {
        return java.util.Optional.of(group.world.timeout());
    }

    /** This member's rank in the world the group was split from. */
    public int worldRank() {
        return worldRank;
    }

    /** Aborts the whole world on behalf of this member: see {@link InJvmWorld#abort(int, Throwable)}. */
    public void abort(Throwable cause) {
        group.world.abort(worldRank, cause);
    }

    // ---- the two barrier phases ----

    private Call[] arrive(String op, String signature, String localError, Object payload,
                          InJvmGroup.Validator validator) {
        return arrive(op, signature, localError, payload, validator, null);
    }

    private Call[] arrive(String op, String signature, String localError, Object payload,
                          InJvmGroup.Validator validator, java.util.function.Function<Call[], Object[]> onComplete) {
        if (closed) {
            throw new IllegalStateException(op + " on closed communicator '" + group.name + "' (rank " + rank + ")");
        }
        Call c = new Call(op, seq++, signature, localError, payload);
        Call[] calls = group.phase(rank, phase, c, validator, onComplete);
        phase++;
        return calls;
    }

    /** Waits until every member finished reading the posted buffers of the collective {@code calls} belong to. */
    private void complete(Call[] calls) {
        Call mine = calls[rank];
        Call c = new Call(mine.op + " (completion)", mine.seq, mine.signature + " (completion)", null, null);
        group.phase(rank, phase, c, null, null);
        phase++;
    }

    private static String rangeError(String what, int arrayLength, int off, int len) {
        if (off < 0 || len < 0 || (long) off + len > arrayLength) {
            return what + " range [" + off + ", " + ((long) off + len) + ") does not fit an array of length "
                    + arrayLength;
        }
        return null;
    }

    private static String join(String a, String b) {
        return a == null ? b : b == null ? a : a + "; " + b;
    }

    // ---- reductions ----

    @Override
    public void allReduceSum(float[] buf, int off, int len) {
        Call[] calls = arrive("allReduceSum", "allReduceSum(float[], len=" + len + ")",
                rangeError("buf", buf.length, off, len), new Buf(buf, off, len), null);
        float[] acc = new float[len];
        Buf b0 = (Buf) calls[0].payload;
        System.arraycopy(b0.array, b0.off, acc, 0, len);
        for (int p = 1; p < calls.length; p++) {
            Buf b = (Buf) calls[p].payload;
            float[] src = (float[]) b.array;
            for (int k = 0, s = b.off; k < len; k++, s++) {
                acc[k] += src[s];
            }
        }
        complete(calls);
        System.arraycopy(acc, 0, buf, off, len);
    }

    @Override
    public void allReduceSum(double[] buf, int off, int len) {
        Call[] calls = arrive("allReduceSum", "allReduceSum(double[], len=" + len + ")",
                rangeError("buf", buf.length, off, len), new Buf(buf, off, len), null);
        double[] acc = new double[len];
        Buf b0 = (Buf) calls[0].payload;
        System.arraycopy(b0.array, b0.off, acc, 0, len);
        for (int p = 1; p < calls.length; p++) {
            Buf b = (Buf) calls[p].payload;
            double[] src = (double[]) b.array;
            for (int k = 0, s = b.off; k < len; k++, s++) {
                acc[k] += src[s];
            }
        }
        complete(calls);
        System.arraycopy(acc, 0, buf, off, len);
    }

    @Override
    public void allReduceSum(long[] buf, int off, int len) {
        Call[] calls = arrive("allReduceSum", "allReduceSum(long[], len=" + len + ")",
                rangeError("buf", buf.length, off, len), new Buf(buf, off, len), null);
        long[] acc = new long[len];
        Buf b0 = (Buf) calls[0].payload;
        System.arraycopy(b0.array, b0.off, acc, 0, len);
        for (int p = 1; p < calls.length; p++) {
            Buf b = (Buf) calls[p].payload;
            long[] src = (long[]) b.array;
            for (int k = 0, s = b.off; k < len; k++, s++) {
                acc[k] += src[s];
            }
        }
        complete(calls);
        System.arraycopy(acc, 0, buf, off, len);
    }

    @Override
    public void allReduceMax(float[] buf, int off, int len) {
        Call[] calls = arrive("allReduceMax", "allReduceMax(float[], len=" + len + ")",
                rangeError("buf", buf.length, off, len), new Buf(buf, off, len), null);
        float[] acc = new float[len];
        Buf b0 = (Buf) calls[0].payload;
        System.arraycopy(b0.array, b0.off, acc, 0, len);
        for (int p = 1; p < calls.length; p++) {
            Buf b = (Buf) calls[p].payload;
            float[] src = (float[]) b.array;
            for (int k = 0, s = b.off; k < len; k++, s++) {
                acc[k] = Math.max(acc[k], src[s]); // NaN-propagating, as torch.max
            }
        }
        complete(calls);
        System.arraycopy(acc, 0, buf, off, len);
    }

    @Override
    public void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen) {
        int n = size();
        long total = (long) n * recvLen;
        String err = join(recvLen < 0 ? "recvLen " + recvLen + " is negative" : null,
                join(total > Integer.MAX_VALUE ? "size * recvLen overflows" : rangeError("send", send.length, sOff,
                        (int) Math.min(total, Integer.MAX_VALUE)), rangeError("recv", recv.length, rOff, recvLen)));
        Call[] calls = arrive("reduceScatterSum", "reduceScatterSum(float[], recvLen=" + recvLen + ")", err,
                new Buf(send, sOff, recvLen), null);
        int myBase = rank * recvLen;
        boolean inPlace = recv == send;
        float[] acc = inPlace ? new float[recvLen] : recv;
        int aOff = inPlace ? 0 : rOff;
        Buf b0 = (Buf) calls[0].payload;
        System.arraycopy(b0.array, b0.off + myBase, acc, aOff, recvLen);
        for (int p = 1; p < n; p++) {
            Buf b = (Buf) calls[p].payload;
            float[] src = (float[]) b.array;
            for (int k = 0, s = b.off + myBase; k < recvLen; k++, s++) {
                acc[aOff + k] += src[s];
            }
        }
        complete(calls);
        if (inPlace) {
            System.arraycopy(acc, 0, recv, rOff, recvLen);
        }
    }

    // ---- gathers ----

    private void gather(String sig, Object send, int sOff, int len, Object recv, int recvLength, int rOff) {
        int n = size();
        String err = join(rangeError("send", java.lang.reflect.Array.getLength(send), sOff, len),
                (long) n * len > Integer.MAX_VALUE ? "size * len overflows"
                        : rangeError("recv", recvLength, rOff, n * len));
        Call[] calls = arrive("allGather", sig + ", len=" + len + ")", err, new Buf(send, sOff, len), null);
        for (int p = 0; p < n; p++) {
            Buf b = (Buf) calls[p].payload;
            int dst = rOff + p * len;
            if (!(p == rank && b.array == recv && b.off == dst)) { // in place: our own slot already holds it
                System.arraycopy(b.array, b.off, recv, dst, len);
            }
        }
        complete(calls);
    }

    @Override
    public void allGather(float[] send, int sOff, int len, float[] recv, int rOff) {
        gather("allGather(float[]", send, sOff, len, recv, recv.length, rOff);
    }

    @Override
    public void allGather(int[] send, int sOff, int len, int[] recv, int rOff) {
        gather("allGather(int[]", send, sOff, len, recv, recv.length, rOff);
    }

    @Override
    public byte[][] allGatherBytes(byte[] mine) {
        Call[] calls = arrive("allGatherBytes", "allGatherBytes(byte[])", mine == null ? "mine is null" : null,
                mine, null);
        byte[][] out = new byte[calls.length][];
        for (int p = 0; p < calls.length; p++) {
            out[p] = ((byte[]) calls[p].payload).clone();
        }
        complete(calls);
        return out;
    }

    // ---- all-to-all ----

    private void allToAll(String type, Object send, int sendLength, int[] sendCounts, Object recv, int recvLength,
                          int[] recvCounts) {
        int n = size();
        String err = null;
        int[] sendOffsets = new int[n];
        if (sendCounts == null || sendCounts.length != n) {
            err = "sendCounts has " + (sendCounts == null ? "null" : sendCounts.length + " entries")
                    + " but the group has " + n + " members";
        } else if (recvCounts == null || recvCounts.length != n) {
            err = "recvCounts has " + (recvCounts == null ? "null" : recvCounts.length + " entries")
                    + " but the group has " + n + " members";
        } else {
            long sTotal = 0;
            long rTotal = 0;
            for (int p = 0; p < n; p++) {
                if (sendCounts[p] < 0 || recvCounts[p] < 0) {
                    err = "negative count for peer " + p + ": sendCounts=" + Arrays.toString(sendCounts)
                            + ", recvCounts=" + Arrays.toString(recvCounts);
                    break;
                }
                sendOffsets[p] = (int) Math.min(sTotal, Integer.MAX_VALUE);
                sTotal += sendCounts[p];
                rTotal += recvCounts[p];
            }
            if (err == null && sTotal > sendLength) {
                err = "sendCounts " + Arrays.toString(sendCounts) + " add up to " + sTotal
                        + " but send holds " + sendLength;
            } else if (err == null && rTotal > recvLength) {
                err = "recvCounts " + Arrays.toString(recvCounts) + " add up to " + rTotal
                        + " but recv holds " + recvLength;
            }
        }
        Call[] calls = arrive("allToAll", "allToAll(" + type + "[])", err,
                new A2A(send, sendCounts, recvCounts, sendOffsets), cs -> {
                    StringBuilder sb = new StringBuilder();
                    for (int r = 0; r < cs.length; r++) {
                        A2A a = (A2A) cs[r].payload;
                        for (int p = 0; p < cs.length; p++) {
                            int sent = ((A2A) cs[p].payload).sendCounts[r];
                            if (a.recvCounts[p] != sent) {
                                sb.append(sb.length() == 0 ? "" : "; ").append("rank ").append(r)
                                        .append(" expects recvCounts[").append(p).append("] = ")
                                        .append(a.recvCounts[p]).append(" from rank ").append(p).append(", but rank ")
                                        .append(p).append(" sends sendCounts[").append(r).append("] = ")
                                        .append(sent);
                            }
                        }
                    }
                    return sb.length() == 0 ? null : group.describe(cs[0]) + ": split sizes disagree: " + sb
                            + "; recvCounts[p] on rank r must equal sendCounts[r] on rank p";
                });
        int dst = 0;
        for (int p = 0; p < n; p++) {
            A2A a = (A2A) calls[p].payload;
            int cnt = recvCounts[p];
            System.arraycopy(a.send, a.sendOffsets[rank], recv, dst, cnt);
            dst += cnt;
        }
        complete(calls);
    }

    @Override
    public void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts) {
        allToAll("float", send, send.length, sendCounts, recv, recv.length, recvCounts);
    }

    @Override
    public void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts) {
        allToAll("int", send, send.length, sendCounts, recv, recv.length, recvCounts);
    }

    // ---- broadcast, barrier ----

    private String rootError(int root) {
        return root < 0 || root >= size() ? "root " + root + " is not a rank of a group of size " + size() : null;
    }

    @Override
    public void broadcast(float[] buf, int off, int len, int root) {
        Call[] calls = arrive("broadcast", "broadcast(float[], len=" + len + ", root=" + root + ")",
                join(rootError(root), rangeError("buf", buf.length, off, len)), new Buf(buf, off, len), null);
        if (rank != root) {
            Buf b = (Buf) calls[root].payload;
            System.arraycopy(b.array, b.off, buf, off, len);
        }
        complete(calls);
    }

    @Override
    public byte[] broadcastBytes(byte[] mine, int root) {
        String err = rootError(root);
        if (err == null && rank == root && mine == null) {
            err = "the root's array is null";
        }
        Call[] calls = arrive("broadcastBytes", "broadcastBytes(root=" + root + ")", err, mine, null);
        byte[] out = rank == root ? mine : ((byte[]) calls[root].payload).clone();
        complete(calls);
        return out;
    }

    @Override
    public void barrier() {
        arrive("barrier", "barrier()", null, null, null);
    }

    // ---- point to point ----

    private String peerError(int peer) {
        return peer < 0 || peer >= size() ? "peer " + peer + " is not a rank of group '" + name() + "' of size "
                + size() : null;
    }

    @Override
    public void send(float[] buf, int off, int len, int peer) {
        String err = join(peerError(peer), rangeError("buf", buf.length, off, len));
        if (err != null) {
            throw new IllegalArgumentException("send on group '" + name() + "' by rank " + rank + ": " + err);
        }
        if (closed) {
            throw new IllegalStateException("send on closed communicator '" + name() + "'");
        }
        group.send(rank, peer, Arrays.copyOfRange(buf, off, off + len));
    }

    @Override
    public void recv(float[] buf, int off, int len, int peer) {
        String err = join(peerError(peer), rangeError("buf", buf.length, off, len));
        if (err != null) {
            throw new IllegalArgumentException("recv on group '" + name() + "' by rank " + rank + ": " + err);
        }
        if (closed) {
            throw new IllegalStateException("recv on closed communicator '" + name() + "'");
        }
        float[] data = group.recv(peer, rank, len);
        System.arraycopy(data, 0, buf, off, len);
    }

    // ---- split ----

    @Override
    public Communicator split(int color, int key, String name) {
        String err = name == null || name.isEmpty() ? "name is empty" : null;
        Call[] calls = arrive("split", "split()", err, new SplitArgs(color, key, name), null, cs -> {
            // Run once, by the last arriver: one new group per color, members ordered by (key, old rank).
            Map<Integer, List<Integer>> byColor = new TreeMap<>();
            for (int r = 0; r < cs.length; r++) {
                byColor.computeIfAbsent(((SplitArgs) cs[r].payload).color, c -> new ArrayList<>()).add(r);
            }
            Object[] out = new Object[cs.length];
            for (List<Integer> members : byColor.values()) {
                members.sort((a, b) -> {
                    int c = Integer.compare(((SplitArgs) cs[a].payload).key, ((SplitArgs) cs[b].payload).key);
                    return c != 0 ? c : Integer.compare(a, b);
                });
                int[] wr = new int[members.size()];
                for (int i = 0; i < wr.length; i++) {
                    wr[i] = group.worldRanks[members.get(i)];
                }
                InJvmGroup g = group.world.newGroup(((SplitArgs) cs[members.get(0)].payload).name, wr);
                for (int i = 0; i < wr.length; i++) {
                    out[members.get(i)] = new InJvmCommunicator(g, i, wr[i]);
                }
            }
            return out;
        });
        Communicator mine = (Communicator) group.results()[rank];
        complete(calls);
        return mine;
    }

    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        group.close(rank);
        if (group.isWorld) {
            group.world.worldRankClosed();
        }
    }

    @Override
    public String toString() {
        return "InJvmCommunicator(" + name() + ", rank " + rank + "/" + size() + ", world rank " + worldRank + ")";
    }
}
