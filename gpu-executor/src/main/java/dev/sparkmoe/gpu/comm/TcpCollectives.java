package dev.sparkmoe.gpu.comm;

import static dev.sparkmoe.gpu.comm.TcpGroup.checkRange;

import dev.sparkmoe.gpu.comm.Frame.Op;
import dev.sparkmoe.gpu.comm.TcpGroup.Call;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * The collectives of a {@link TcpCommunicator}'s group, as direct exchanges: every member sends its part straight to
 * the member that needs it, through {@link GroupExchange}, so a missing member is named by everyone that waits for it.
 * Reductions are computed by each member over contributions in rank order 0..n-1 ({@code ((x0 + x1) + x2) + ...}), so
 * every member gets bitwise-identical results; all-reduces above {@link #DIRECT_ALL_REDUCE_MAX} elements
 * reduce-scatter then all-gather with the same per-element order. Any {@link CommunicatorException} breaks the group
 * ({@link TcpGroup#fail}).
 */
final class TcpCollectives {

    /** Below this many elements an all-reduce sends whole buffers; above, it reduce-scatters and all-gathers. */
    static final int DIRECT_ALL_REDUCE_MAX = 8192;

    private final TcpGroup g;
    private final GroupExchange x;
    private final int rank;

    TcpCollectives(TcpGroup group, GroupExchange exchange) {
        this.g = group;
        this.x = exchange;
        this.rank = group.rank;
    }

    private int size() {
        return g.size();
    }

    void allReduceSum(float[] buf, int off, int len) {
        checkRange(buf.length, off, len, "buf");
        allReduce(Op.ALL_REDUCE_SUM_F, ElementKind.FLOAT_SUM, buf, off, len);
    }

    void allReduceSum(double[] buf, int off, int len) {
        checkRange(buf.length, off, len, "buf");
        allReduce(Op.ALL_REDUCE_SUM_D, ElementKind.DOUBLE_SUM, buf, off, len);
    }

    void allReduceSum(long[] buf, int off, int len) {
        checkRange(buf.length, off, len, "buf");
        allReduce(Op.ALL_REDUCE_SUM_L, ElementKind.LONG_SUM, buf, off, len);
    }

    void allReduceMax(float[] buf, int off, int len) {
        checkRange(buf.length, off, len, "buf");
        allReduce(Op.ALL_REDUCE_MAX_F, ElementKind.FLOAT_MAX, buf, off, len);
    }

    private <A> void allReduce(Op op, ElementKind<A> kind, A buf, int off, int len) {
        Call c = g.begin(op);
        try {
            int n = size();
            if (n == 1) {
                return;
            }
            if (len <= DIRECT_ALL_REDUCE_MAX) {
                byte[] mine = kind.encode(buf, off, len);
                x.postToAll(c, 0, len, mine);
                Frame[] got = x.receiveFromAll(c, 0, len, "len");
                reduceInRankOrder(kind, buf, off, len, got, 0, buf, off);
                return;
            }
            // reduce-scatter: member p reduces chunk p
            for (int p = 0; p < n; p++) {
                if (p != rank) {
                    x.post(c, p, 1, len, kind.encode(buf, off + chunkStart(len, n, p), chunkLen(len, n, p)));
                }
            }
            Frame[] got = x.receiveFromAll(c, 1, len, "len");
            int myStart = chunkStart(len, n, rank);
            int myLen = chunkLen(len, n, rank);
            A acc = kind.newArray(myLen);
            reduceInRankOrder(kind, buf, off + myStart, myLen, got, 0, acc, 0);
            System.arraycopy(acc, 0, buf, off + myStart, myLen);
            // all-gather of the reduced chunks
            byte[] reduced = kind.encode(acc, 0, myLen);
            x.postToAll(c, 2, len, reduced);
            Frame[] parts = x.receiveFromAll(c, 2, len, "len");
            for (int p = 0; p < n; p++) {
                if (p != rank) {
                    int cl = chunkLen(len, n, p);
                    g.expectPayload(c, p, parts[p], cl * kind.bytes, cl + " elements");
                    kind.decode(parts[p].payload(), 0, buf, off + chunkStart(len, n, p), cl);
                }
            }
        } catch (RuntimeException e) {
            throw g.fail(e);
        }
    }

    /**
     * {@code out[outOff + i] = x0[i] op x1[i] op ...} in rank order, where this member's contribution is
     * {@code local[localOff + i]} and peer p's is {@code frames[p]} starting at element {@code frameElemOff}.
     */
    private <A> void reduceInRankOrder(ElementKind<A> kind, A local, int localOff, int len, Frame[] frames,
                                       int frameElemOff, A out, int outOff) {
        A tmp = kind.newArray(len);
        A acc = (out == local && outOff == localOff) ? kind.newArray(len) : null;
        A target = acc != null ? acc : out;
        int targetOff = acc != null ? 0 : outOff;
        for (int p = 0; p < size(); p++) {
            if (p == rank) {
                if (p == 0) {
                    System.arraycopy(local, localOff, target, targetOff, len);
                } else {
                    kind.combine(target, targetOff, local, localOff, len);
                }
                continue;
            }
            byte[] payload = frames[p].payload();
            if (payload.length < (frameElemOff + len) * kind.bytes) {
                throw new CommunicatorException(g.where(null) + ": rank " + p + " sent " + payload.length / kind.bytes
                        + " elements, expected " + (frameElemOff + len));
            }
            kind.decode(payload, frameElemOff, tmp, 0, len);
            if (p == 0) {
                System.arraycopy(tmp, 0, target, targetOff, len);
            } else {
                kind.combine(target, targetOff, tmp, 0, len);
            }
        }
        if (acc != null) {
            System.arraycopy(acc, 0, out, outOff, len);
        }
    }

    void allGather(float[] send, int sOff, int len, float[] recv, int rOff) {
        checkRange(send.length, sOff, len, "send");
        checkRange(recv.length, rOff, (long) len * size(), "recv");
        gather(Op.ALL_GATHER_F, ElementKind.FLOAT_SUM, send, sOff, len, recv, rOff);
    }

    void allGather(int[] send, int sOff, int len, int[] recv, int rOff) {
        checkRange(send.length, sOff, len, "send");
        checkRange(recv.length, rOff, (long) len * size(), "recv");
        gather(Op.ALL_GATHER_I, ElementKind.INT_SUM, send, sOff, len, recv, rOff);
    }

    private <A> void gather(Op op, ElementKind<A> kind, A send, int sOff, int len, A recv, int rOff) {
        Call c = g.begin(op);
        try {
            byte[] mine = kind.encode(send, sOff, len);
            x.postToAll(c, 0, len, mine);
            Frame[] got = x.receiveFromAll(c, 0, len, "len");
            System.arraycopy(send, sOff, recv, rOff + rank * len, len);
            for (int p = 0; p < size(); p++) {
                if (p != rank) {
                    g.expectPayload(c, p, got[p], len * kind.bytes, len + " elements");
                    kind.decode(got[p].payload(), 0, recv, rOff + p * len, len);
                }
            }
        } catch (RuntimeException e) {
            throw g.fail(e);
        }
    }

    byte[][] allGatherBytes(byte[] mine) {
        Objects.requireNonNull(mine, "mine");
        Call c = g.begin(Op.ALL_GATHER_BYTES);
        try {
            x.postToAll(c, 0, 0, mine.clone());
            Frame[] got = x.receiveFromAll(c, 0, 0, null);
            byte[][] out = new byte[size()][];
            for (int p = 0; p < size(); p++) {
                out[p] = p == rank ? mine.clone() : got[p].payload();
            }
            return out;
        } catch (RuntimeException e) {
            throw g.fail(e);
        }
    }

    void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen) {
        checkRange(send.length, sOff, (long) recvLen * size(), "send");
        checkRange(recv.length, rOff, recvLen, "recv");
        Call c = g.begin(Op.REDUCE_SCATTER_F);
        try {
            for (int p = 0; p < size(); p++) {
                if (p != rank) {
                    x.post(c, p, 0, recvLen, ElementKind.FLOAT_SUM.encode(send, sOff + p * recvLen, recvLen));
                }
            }
            Frame[] got = x.receiveFromAll(c, 0, recvLen, "recvLen");
            float[] acc = new float[recvLen];
            reduceInRankOrder(ElementKind.FLOAT_SUM, send, sOff + rank * recvLen, recvLen, got, 0, acc, 0);
            System.arraycopy(acc, 0, recv, rOff, recvLen);
        } catch (RuntimeException e) {
            throw g.fail(e);
        }
    }

    void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts) {
        allToAll(Op.ALL_TO_ALL_F, ElementKind.FLOAT_SUM, send, send.length, sendCounts, recv, recv.length, recvCounts);
    }

    void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts) {
        allToAll(Op.ALL_TO_ALL_I, ElementKind.INT_SUM, send, send.length, sendCounts, recv, recv.length, recvCounts);
    }

    private <A> void allToAll(Op op, ElementKind<A> kind, A send, int sendLength, int[] sendCounts, A recv, int recvLength,
                              int[] recvCounts) {
        int n = size();
        long sendTotal = checkCounts(op, "sendCounts", sendCounts, sendLength, "send");
        long recvTotal = checkCounts(op, "recvCounts", recvCounts, recvLength, "recv");
        assert sendTotal >= 0 && recvTotal >= 0;
        if (sendCounts[rank] != recvCounts[rank]) {
            throw new CommunicatorException(g.where(op) + ": sendCounts[" + rank + "]=" + sendCounts[rank] + " but recvCounts["
                    + rank + "]=" + recvCounts[rank] + " for this member's own slice; they must be equal");
        }
        Call c = g.begin(op);
        try {
            int[] sendStart = prefix(sendCounts);
            int[] recvStart = prefix(recvCounts);
            for (int p = 0; p < n; p++) {
                if (p != rank) {
                    x.post(c, p, 0, sendCounts[p], kind.encode(send, sendStart[p], sendCounts[p]));
                }
            }
            Frame[] got = x.receiveFromAll(c, 0, 0, null);
            List<String> mismatches = new ArrayList<>();
            for (int p = 0; p < n; p++) {
                if (p != rank && got[p].aux() != recvCounts[p]) {
                    mismatches.add("rank " + rank + " expects recvCounts[" + p + "]=" + recvCounts[p] + " from rank " + p
                            + " but rank " + p + " sends sendCounts[" + rank + "]=" + got[p].aux());
                }
            }
            if (!mismatches.isEmpty()) {
                throw new CommunicatorException(g.where(op) + ": split sizes disagree: " + String.join("; ", mismatches));
            }
            System.arraycopy(send, sendStart[rank], recv, recvStart[rank], sendCounts[rank]);
            for (int p = 0; p < n; p++) {
                if (p != rank) {
                    g.expectPayload(c, p, got[p], recvCounts[p] * kind.bytes, recvCounts[p] + " elements");
                    kind.decode(got[p].payload(), 0, recv, recvStart[p], recvCounts[p]);
                }
            }
        } catch (RuntimeException e) {
            throw g.fail(e);
        }
    }

    private long checkCounts(Op op, String what, int[] counts, int arrayLength, String arrayName) {
        if (counts == null || counts.length != size()) {
            throw new IllegalArgumentException(g.where(op) + ": " + what + " has length "
                    + (counts == null ? "null" : counts.length) + " but the group has " + size() + " members");
        }
        long total = 0;
        for (int p = 0; p < counts.length; p++) {
            if (counts[p] < 0) {
                throw new IllegalArgumentException(g.where(op) + ": " + what + "[" + p + "]=" + counts[p] + " is negative");
            }
            total += counts[p];
        }
        if (total > arrayLength) {
            throw new IllegalArgumentException(g.where(op) + ": " + what + " sum to " + total + " but " + arrayName
                    + " has only " + arrayLength + " elements");
        }
        return total;
    }

    private static int[] prefix(int[] counts) {
        int[] start = new int[counts.length];
        for (int i = 1; i < counts.length; i++) {
            start[i] = start[i - 1] + counts[i - 1];
        }
        return start;
    }

    void broadcast(float[] buf, int off, int len, int root) {
        checkRange(buf.length, off, len, "buf");
        g.checkRoot(Op.BROADCAST_F, root);
        Call c = g.begin(Op.BROADCAST_F);
        try {
            byte[] payload = rank == root ? ElementKind.FLOAT_SUM.encode(buf, off, len) : new byte[0];
            x.postToAll(c, 0, root, payload);
            Frame[] got = x.receiveFromAll(c, 0, root, "root");
            if (rank != root) {
                g.expectPayload(c, root, got[root], len * 4, len + " elements (len)");
                ElementKind.FLOAT_SUM.decode(got[root].payload(), 0, buf, off, len);
            }
        } catch (RuntimeException e) {
            throw g.fail(e);
        }
    }

    byte[] broadcastBytes(byte[] mine, int root) {
        g.checkRoot(Op.BROADCAST_BYTES, root);
        if (rank == root) {
            Objects.requireNonNull(mine, "mine (on the root)");
        }
        Call c = g.begin(Op.BROADCAST_BYTES);
        try {
            x.postToAll(c, 0, root, rank == root ? mine.clone() : new byte[0]);
            Frame[] got = x.receiveFromAll(c, 0, root, "root");
            return rank == root ? mine : got[root].payload();
        } catch (RuntimeException e) {
            throw g.fail(e);
        }
    }

    void barrier() {
        Call c = g.begin(Op.BARRIER);
        try {
            x.postToAll(c, 0, 0, new byte[0]);
            x.receiveFromAll(c, 0, 0, null);
        } catch (RuntimeException e) {
            throw g.fail(e);
        }
    }

    private static int chunkStart(int len, int n, int p) {
        int base = len / n;
        int rem = len % n;
        return p * base + Math.min(p, rem);
    }

    private static int chunkLen(int len, int n, int p) {
        return len / n + (p < len % n ? 1 : 0);
    }
}
