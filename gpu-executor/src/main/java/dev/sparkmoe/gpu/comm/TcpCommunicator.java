package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.gpu.comm.Frame.Op;
import dev.sparkmoe.gpu.comm.TcpTransport.Link;
import dev.sparkmoe.gpu.comm.TcpTransport.StreamKey;
import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A {@link Communicator} for CPU ranks in separate processes (or threads), over a full mesh of authenticated TCP
 * connections on loopback or a LAN.
 *
 * <p>Bootstrap: {@link #connect(TcpRendezvous)} on every rank. Rank 0 listens on the rendezvous address; the others
 * connect to it, authenticate with the job secret (HMAC-SHA256 challenge-response, both directions), and learn each
 * other's listening addresses; then every pair of ranks holds one authenticated connection. Connections that cannot
 * authenticate are closed and logged; they change nothing for the job.
 *
 * <p>Algorithms are direct exchanges (every member sends its part straight to the member that needs it), so a missing
 * member is named by everyone that waits for it. Reductions are computed by each member over contributions in rank
 * order 0..n-1 ({@code ((x0 + x1) + x2) + ...}), so every member gets bitwise-identical results; large all-reduces
 * reduce-scatter then all-gather with the same per-element order.
 *
 * <p>Sub-groups from {@link #split} reuse the world's connections; messages carry a group id, a call sequence number
 * and an op code, so mismatched collectives fail with an error naming both calls. After any failure a group is
 * unusable: close it (closing the world communicator closes the connections).
 *
 * <p>A communicator is used by one thread at a time; distinct groups may be used from distinct threads.
 */
public final class TcpCommunicator implements Communicator {

    /** Below this many elements an all-reduce sends whole buffers; above, it reduce-scatters and all-gathers. */
    static final int DIRECT_ALL_REDUCE_MAX = 8192;
    private static final long WORLD_GROUP = 1L;

    private final TcpTransport transport;
    private final boolean ownsTransport;
    private final long groupId;
    private final int[] members; // group rank -> world rank
    private final int rank;
    private final String name;
    private final long[] p2pSendSeq;
    private final long[] p2pRecvSeq;
    private long seq;
    private volatile boolean closed;
    private volatile String broken;

    private TcpCommunicator(TcpTransport transport, boolean owns, long groupId, int[] members, int rank, String name) {
        this.transport = transport;
        this.ownsTransport = owns;
        this.groupId = groupId;
        this.members = members;
        this.rank = rank;
        this.name = name;
        this.p2pSendSeq = new long[members.length];
        this.p2pRecvSeq = new long[members.length];
    }

    /**
     * Joins the job described by {@code r}: returns once this rank holds an authenticated connection to every other
     * rank. Fails with a {@link CollectiveTimeoutException} naming the ranks that did not show up within the connect
     * timeout.
     */
    public static TcpCommunicator connect(TcpRendezvous r) {
        Objects.requireNonNull(r, "rendezvous");
        TcpTransport t = TcpTransport.connect(r);
        int[] world = new int[r.worldSize()];
        Arrays.setAll(world, i -> i);
        return new TcpCommunicator(t, true, WORLD_GROUP, world, r.rank(), r.name());
    }

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return members.length;
    }

    @Override
    public String name() {
        return name;
    }

    /** This member's rank in the world (the job). */
    public int worldRank() {
        return members[rank];
    }

    /** Where this rank's listener accepts connections (null in a world of one). */
    public InetSocketAddress listenAddress() {
        return transport.listenAddress();
    }

    @Override
    public String toString() {
        return "TcpCommunicator['" + name + "' rank " + rank + " of " + size() + ", world rank " + worldRank() + "]";
    }

    // ------------------------------------------------------------------------------------------------ collectives

    @Override
    public void allReduceSum(float[] buf, int off, int len) {
        checkRange(buf.length, off, len, "buf");
        allReduce(Op.ALL_REDUCE_SUM_F, FLOAT_SUM, buf, off, len);
    }

    @Override
    public void allReduceSum(double[] buf, int off, int len) {
        checkRange(buf.length, off, len, "buf");
        allReduce(Op.ALL_REDUCE_SUM_D, DOUBLE_SUM, buf, off, len);
    }

    @Override
    public void allReduceSum(long[] buf, int off, int len) {
        checkRange(buf.length, off, len, "buf");
        allReduce(Op.ALL_REDUCE_SUM_L, LONG_SUM, buf, off, len);
    }

    @Override
    public void allReduceMax(float[] buf, int off, int len) {
        checkRange(buf.length, off, len, "buf");
        allReduce(Op.ALL_REDUCE_MAX_F, FLOAT_MAX, buf, off, len);
    }

    private <A> void allReduce(Op op, Kind<A> kind, A buf, int off, int len) {
        Call c = begin(op);
        try {
            int n = size();
            if (n == 1) {
                return;
            }
            if (len <= DIRECT_ALL_REDUCE_MAX) {
                byte[] mine = kind.encode(buf, off, len);
                postToAll(c, 0, len, mine);
                Frame[] got = receiveFromAll(c, 0, len, "len");
                reduceInRankOrder(kind, buf, off, len, got, 0, buf, off);
                return;
            }
            // reduce-scatter: member p reduces chunk p
            for (int p = 0; p < n; p++) {
                if (p != rank) {
                    post(c, p, 1, len, kind.encode(buf, off + chunkStart(len, n, p), chunkLen(len, n, p)));
                }
            }
            Frame[] got = receiveFromAll(c, 1, len, "len");
            int myStart = chunkStart(len, n, rank);
            int myLen = chunkLen(len, n, rank);
            A acc = kind.newArray(myLen);
            reduceInRankOrder(kind, buf, off + myStart, myLen, got, 0, acc, 0);
            System.arraycopy(acc, 0, buf, off + myStart, myLen);
            // all-gather of the reduced chunks
            byte[] reduced = kind.encode(acc, 0, myLen);
            postToAll(c, 2, len, reduced);
            Frame[] parts = receiveFromAll(c, 2, len, "len");
            for (int p = 0; p < n; p++) {
                if (p != rank) {
                    int cl = chunkLen(len, n, p);
                    expectPayload(c, p, parts[p], cl * kind.bytes, cl + " elements");
                    kind.decode(parts[p].payload(), 0, buf, off + chunkStart(len, n, p), cl);
                }
            }
        } catch (RuntimeException e) {
            throw fail(e);
        }
    }

    /**
     * {@code out[outOff + i] = x0[i] op x1[i] op ...} in rank order, where this member's contribution is
     * {@code local[localOff + i]} and peer p's is {@code frames[p]} starting at element {@code frameElemOff}.
     */
    private <A> void reduceInRankOrder(Kind<A> kind, A local, int localOff, int len, Frame[] frames, int frameElemOff,
                                       A out, int outOff) {
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
                throw new CommunicatorException(where(null) + ": rank " + p + " sent " + payload.length / kind.bytes
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

    @Override
    public void allGather(float[] send, int sOff, int len, float[] recv, int rOff) {
        checkRange(send.length, sOff, len, "send");
        checkRange(recv.length, rOff, (long) len * size(), "recv");
        gather(Op.ALL_GATHER_F, FLOAT_SUM, send, sOff, len, recv, rOff);
    }

    @Override
    public void allGather(int[] send, int sOff, int len, int[] recv, int rOff) {
        checkRange(send.length, sOff, len, "send");
        checkRange(recv.length, rOff, (long) len * size(), "recv");
        gather(Op.ALL_GATHER_I, INT_SUM, send, sOff, len, recv, rOff);
    }

    private <A> void gather(Op op, Kind<A> kind, A send, int sOff, int len, A recv, int rOff) {
        Call c = begin(op);
        try {
            byte[] mine = kind.encode(send, sOff, len);
            postToAll(c, 0, len, mine);
            Frame[] got = receiveFromAll(c, 0, len, "len");
            System.arraycopy(send, sOff, recv, rOff + rank * len, len);
            for (int p = 0; p < size(); p++) {
                if (p != rank) {
                    expectPayload(c, p, got[p], len * kind.bytes, len + " elements");
                    kind.decode(got[p].payload(), 0, recv, rOff + p * len, len);
                }
            }
        } catch (RuntimeException e) {
            throw fail(e);
        }
    }

    @Override
    public byte[][] allGatherBytes(byte[] mine) {
        Objects.requireNonNull(mine, "mine");
        Call c = begin(Op.ALL_GATHER_BYTES);
        try {
            postToAll(c, 0, 0, mine.clone());
            Frame[] got = receiveFromAll(c, 0, 0, null);
            byte[][] out = new byte[size()][];
            for (int p = 0; p < size(); p++) {
                out[p] = p == rank ? mine.clone() : got[p].payload();
            }
            return out;
        } catch (RuntimeException e) {
            throw fail(e);
        }
    }

    @Override
    public void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen) {
        checkRange(send.length, sOff, (long) recvLen * size(), "send");
        checkRange(recv.length, rOff, recvLen, "recv");
        Call c = begin(Op.REDUCE_SCATTER_F);
        try {
            for (int p = 0; p < size(); p++) {
                if (p != rank) {
                    post(c, p, 0, recvLen, FLOAT_SUM.encode(send, sOff + p * recvLen, recvLen));
                }
            }
            Frame[] got = receiveFromAll(c, 0, recvLen, "recvLen");
            float[] acc = new float[recvLen];
            reduceInRankOrder(FLOAT_SUM, send, sOff + rank * recvLen, recvLen, got, 0, acc, 0);
            System.arraycopy(acc, 0, recv, rOff, recvLen);
        } catch (RuntimeException e) {
            throw fail(e);
        }
    }

    @Override
    public void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts) {
        allToAll(Op.ALL_TO_ALL_F, FLOAT_SUM, send, send.length, sendCounts, recv, recv.length, recvCounts);
    }

    @Override
    public void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts) {
        allToAll(Op.ALL_TO_ALL_I, INT_SUM, send, send.length, sendCounts, recv, recv.length, recvCounts);
    }

    private <A> void allToAll(Op op, Kind<A> kind, A send, int sendLength, int[] sendCounts, A recv, int recvLength,
                              int[] recvCounts) {
        int n = size();
        long sendTotal = checkCounts(op, "sendCounts", sendCounts, sendLength, "send");
        long recvTotal = checkCounts(op, "recvCounts", recvCounts, recvLength, "recv");
        assert sendTotal >= 0 && recvTotal >= 0;
        if (sendCounts[rank] != recvCounts[rank]) {
            throw new CommunicatorException(where(op) + ": sendCounts[" + rank + "]=" + sendCounts[rank] + " but recvCounts["
                    + rank + "]=" + recvCounts[rank] + " for this member's own slice; they must be equal");
        }
        Call c = begin(op);
        try {
            int[] sendStart = prefix(sendCounts);
            int[] recvStart = prefix(recvCounts);
            for (int p = 0; p < n; p++) {
                if (p != rank) {
                    post(c, p, 0, sendCounts[p], kind.encode(send, sendStart[p], sendCounts[p]));
                }
            }
            Frame[] got = receiveFromAll(c, 0, 0, null);
            List<String> mismatches = new ArrayList<>();
            for (int p = 0; p < n; p++) {
                if (p != rank && got[p].aux() != recvCounts[p]) {
                    mismatches.add("rank " + rank + " expects recvCounts[" + p + "]=" + recvCounts[p] + " from rank " + p
                            + " but rank " + p + " sends sendCounts[" + rank + "]=" + got[p].aux());
                }
            }
            if (!mismatches.isEmpty()) {
                throw new CommunicatorException(where(op) + ": split sizes disagree: " + String.join("; ", mismatches));
            }
            System.arraycopy(send, sendStart[rank], recv, recvStart[rank], sendCounts[rank]);
            for (int p = 0; p < n; p++) {
                if (p != rank) {
                    expectPayload(c, p, got[p], recvCounts[p] * kind.bytes, recvCounts[p] + " elements");
                    kind.decode(got[p].payload(), 0, recv, recvStart[p], recvCounts[p]);
                }
            }
        } catch (RuntimeException e) {
            throw fail(e);
        }
    }

    private long checkCounts(Op op, String what, int[] counts, int arrayLength, String arrayName) {
        if (counts == null || counts.length != size()) {
            throw new IllegalArgumentException(where(op) + ": " + what + " has length "
                    + (counts == null ? "null" : counts.length) + " but the group has " + size() + " members");
        }
        long total = 0;
        for (int p = 0; p < counts.length; p++) {
            if (counts[p] < 0) {
                throw new IllegalArgumentException(where(op) + ": " + what + "[" + p + "]=" + counts[p] + " is negative");
            }
            total += counts[p];
        }
        if (total > arrayLength) {
            throw new IllegalArgumentException(where(op) + ": " + what + " sum to " + total + " but " + arrayName
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

    @Override
    public void broadcast(float[] buf, int off, int len, int root) {
        checkRange(buf.length, off, len, "buf");
        checkRoot(Op.BROADCAST_F, root);
        Call c = begin(Op.BROADCAST_F);
        try {
            byte[] payload = rank == root ? FLOAT_SUM.encode(buf, off, len) : new byte[0];
            postToAll(c, 0, root, payload);
            Frame[] got = receiveFromAll(c, 0, root, "root");
            if (rank != root) {
                expectPayload(c, root, got[root], len * 4, len + " elements (len)");
                FLOAT_SUM.decode(got[root].payload(), 0, buf, off, len);
            }
        } catch (RuntimeException e) {
            throw fail(e);
        }
    }

    @Override
    public byte[] broadcastBytes(byte[] mine, int root) {
        checkRoot(Op.BROADCAST_BYTES, root);
        if (rank == root) {
            Objects.requireNonNull(mine, "mine (on the root)");
        }
        Call c = begin(Op.BROADCAST_BYTES);
        try {
            postToAll(c, 0, root, rank == root ? mine.clone() : new byte[0]);
            Frame[] got = receiveFromAll(c, 0, root, "root");
            return rank == root ? mine : got[root].payload();
        } catch (RuntimeException e) {
            throw fail(e);
        }
    }

    @Override
    public void barrier() {
        Call c = begin(Op.BARRIER);
        try {
            postToAll(c, 0, 0, new byte[0]);
            receiveFromAll(c, 0, 0, null);
        } catch (RuntimeException e) {
            throw fail(e);
        }
    }

    @Override
    public void send(float[] buf, int off, int len, int peer) {
        checkRange(buf.length, off, len, "buf");
        checkPeer(peer);
        ensureUsable(Op.SEND_F);
        Link l = linkForSend(Op.SEND_F, peer);
        long s = ++p2pSendSeq[peer];
        l.post(new Frame(groupId, s, Op.SEND_F.code, (byte) 0, len, true, FLOAT_SUM.encode(buf, off, len)));
    }

    @Override
    public void recv(float[] buf, int off, int len, int peer) {
        checkRange(buf.length, off, len, "buf");
        checkPeer(peer);
        ensureUsable(Op.SEND_F);
        long s = ++p2pRecvSeq[peer];
        long deadline = System.nanoTime() + transport.collectiveTimeoutNanos;
        Link l = link(peer);
        try {
            Frame f = take(Op.SEND_F, l, new StreamKey(groupId, true), deadline);
            if (f == null) {
                throw new CollectiveTimeoutException(where(Op.SEND_F) + ": recv of " + len + " floats timed out after "
                        + timeoutMs() + " ms: no message from " + rankNames(List.of(peer)));
            }
            if (f.seq() != s) {
                throw new CommunicatorException(where(Op.SEND_F) + ": recv #" + s + " from rank " + peer + " got its send #" + f.seq());
            }
            if (f.aux() != len) {
                throw new CommunicatorException(where(Op.SEND_F) + ": recv expects len=" + len + " floats from rank " + peer
                        + " but rank " + peer + " sent len=" + f.aux());
            }
            FLOAT_SUM.decode(f.payload(), 0, buf, off, len);
        } catch (CommunicatorException e) {
            throw failP2p(e, peer);
        }
    }

    @Override
    public Communicator split(int color, int key, String newName) {
        Objects.requireNonNull(newName, "name");
        Call c = begin(Op.SPLIT);
        try {
            byte[] mine = ByteBuffer.allocate(8).putInt(color).putInt(key).array();
            postToAll(c, 0, 0, mine);
            Frame[] got = receiveFromAll(c, 0, 0, null);
            int n = size();
            int[] colors = new int[n];
            int[] keys = new int[n];
            for (int p = 0; p < n; p++) {
                ByteBuffer b = ByteBuffer.wrap(p == rank ? mine : got[p].payload());
                if (b.remaining() != 8) {
                    throw new CommunicatorException(where(Op.SPLIT) + ": malformed split message from rank " + p);
                }
                colors[p] = b.getInt();
                keys[p] = b.getInt();
            }
            List<Integer> same = new ArrayList<>();
            for (int p = 0; p < n; p++) {
                if (colors[p] == color) {
                    same.add(p);
                }
            }
            same.sort((a, b) -> keys[a] != keys[b] ? Integer.compare(keys[a], keys[b]) : Integer.compare(a, b));
            int[] newMembers = new int[same.size()];
            int newRank = -1;
            for (int i = 0; i < newMembers.length; i++) {
                newMembers[i] = members[same.get(i)];
                if (same.get(i) == rank) {
                    newRank = i;
                }
            }
            long newGroup = childGroupId(groupId, c.seq, color);
            return new TcpCommunicator(transport, false, newGroup, newMembers, newRank, newName);
        } catch (RuntimeException e) {
            throw fail(e);
        }
    }

    private static long childGroupId(long parent, long seq, int color) {
        try {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            md.update(ByteBuffer.allocate(20).putLong(parent).putLong(seq).putInt(color).array());
            long id = ByteBuffer.wrap(md.digest()).getLong();
            return (id == Frame.CONTROL_GROUP || id == WORLD_GROUP) ? id + 2 : id;
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Closes this group; closing the world communicator closes every connection (and so every sub-group). */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        if (ownsTransport) {
            transport.close();
        } else {
            for (int w : members) {
                Link l = transport.link(w);
                if (l != null) {
                    l.dropBoxes(groupId);
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------------------ plumbing

    /** One collective call: its op and sequence number in this group. */
    private record Call(Op op, long seq) {
    }

    private Call begin(Op op) {
        ensureUsable(op);
        return new Call(op, ++seq);
    }

    private void ensureUsable(Op op) {
        if (closed) {
            throw new CommunicatorException(op.label + " on group '" + name + "': communicator is closed");
        }
        if (transport.isClosed()) {
            throw new CommunicatorException(op.label + " on group '" + name + "': the world communicator was closed");
        }
        String b = broken;
        if (b != null) {
            throw new CommunicatorException(op.label + " on group '" + name + "' is refused: the group is unusable after "
                    + "an earlier failure (" + b + "); hint: close it and fail the job");
        }
    }

    private RuntimeException fail(RuntimeException e) {
        if (e instanceof CommunicatorException && broken == null) {
            broken = e.getMessage();
        }
        return e;
    }

    private RuntimeException failP2p(CommunicatorException e, int peer) {
        if (broken == null) {
            broken = e.getMessage();
        }
        return e;
    }

    private Link link(int groupRank) {
        return groupRank == rank ? transport.self() : transport.link(members[groupRank]);
    }

    private void post(Call c, int peer, int phase, int aux, byte[] payload) {
        linkForSend(c.op, peer).post(new Frame(groupId, c.seq, c.op.code, (byte) phase, aux, false, payload));
    }

    /** The link to a group member, failing with the member's name if it has dropped. */
    private Link linkForSend(Op op, int peer) {
        Link l = link(peer);
        String why = l.failure();
        if (why != null) {
            throw new CommunicatorException(where(op) + ": cannot send: " + downMembers());
        }
        return l;
    }

    /** Posts to every live member, then fails naming every member that has dropped (if any). */
    private void postToAll(Call c, int phase, int aux, byte[] payload) {
        boolean anyDown = false;
        for (int p = 0; p < size(); p++) {
            if (p != rank) {
                Link l = link(p);
                if (l.failure() != null) {
                    anyDown = true;
                } else {
                    l.post(new Frame(groupId, c.seq, c.op.code, (byte) phase, aux, false, payload));
                }
            }
        }
        if (anyDown) {
            throw new CommunicatorException(where(c.op) + ": cannot send: " + downMembers());
        }
    }

    /** "rank 1 dropped: why; rank 3 dropped: why" for every member whose link is down. */
    private String downMembers() {
        List<String> parts = new ArrayList<>();
        for (int p = 0; p < size(); p++) {
            String why = p == rank ? null : link(p).failure();
            if (why != null) {
                parts.add(rankNames(List.of(p)) + " dropped: " + why);
            }
        }
        return String.join("; ", parts);
    }

    /**
     * One frame of call {@code c}, phase {@code phase} from every other member (indexed by group rank), checking op,
     * sequence and (when {@code auxName} is non-null) that the peer's {@code aux} equals ours.
     */
    private Frame[] receiveFromAll(Call c, int phase, int aux, String auxName) {
        int n = size();
        Frame[] got = new Frame[n];
        long deadline = System.nanoTime() + transport.collectiveTimeoutNanos;
        StreamKey key = new StreamKey(groupId, false);
        for (int p = 0; p < n; p++) {
            if (p == rank) {
                continue;
            }
            Frame f = take(c.op, link(p), key, deadline);
            if (f == null) {
                List<Integer> missing = new ArrayList<>();
                missing.add(p);
                for (int q = p + 1; q < n; q++) {
                    if (q != rank && link(q).box(key).isEmpty()) {
                        missing.add(q);
                    }
                }
                throw new CollectiveTimeoutException(where(c.op) + " (call #" + c.seq + ") timed out after " + timeoutMs()
                        + " ms: missing " + rankNames(missing) + " (never sent its part of this call; hung, slow,"
                        + " or calling a different sequence of collectives?)");
            }
            if (f.op() != c.op.code || f.seq() != c.seq) {
                throw new CommunicatorException("collective mismatch on group '" + name + "': rank " + rank + " called "
                        + c.op.label + " (call #" + c.seq + ") but rank " + p + " called " + Op.labelOf(f.op())
                        + " (call #" + f.seq() + "); hint: every member must call the same collectives in the same order");
            }
            if (auxName != null && f.aux() != aux) {
                throw new CommunicatorException(where(c.op) + " (call #" + c.seq + "): arguments disagree: rank " + rank
                        + " passed " + auxName + "=" + aux + " but rank " + p + " passed " + auxName + "=" + f.aux());
            }
            if (f.phase() != phase) {
                throw new CommunicatorException(where(c.op) + " (call #" + c.seq + "): rank " + p + " is in phase "
                        + f.phase() + ", expected " + phase);
            }
            got[p] = f;
        }
        return got;
    }

    /** Next frame of a stream from a peer, or null at the deadline; a dropped peer is an error naming it. */
    private Frame take(Op op, Link l, StreamKey key, long deadline) {
        LinkedBlockingQueue<Frame> box = l.box(key);
        try {
            while (true) {
                Frame f = box.poll();
                if (f != null) {
                    return f;
                }
                String why = l.failure();
                if (why != null) {
                    f = box.poll(); // a frame may have landed just before the link went down
                    if (f != null) {
                        return f;
                    }
                    throw new CommunicatorException(where(op) + ": " + downMembers());
                }
                if (transport.isClosed()) {
                    throw new CommunicatorException(where(op) + ": the world communicator was closed");
                }
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    return null;
                }
                f = box.poll(Math.min(left, TimeUnit.MILLISECONDS.toNanos(50)), TimeUnit.NANOSECONDS);
                if (f != null) {
                    return f;
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new CommunicatorException(where(op) + ": interrupted while waiting for rank " + groupRankOf(l.peer));
        }
    }

    private int groupRankOf(int worldRank) {
        for (int i = 0; i < members.length; i++) {
            if (members[i] == worldRank) {
                return i;
            }
        }
        return -1;
    }

    private String rankNames(List<Integer> groupRanks) {
        List<Integer> world = new ArrayList<>();
        for (int g : groupRanks) {
            world.add(members[g]);
        }
        if (groupRanks.size() == 1) {
            return "rank " + groupRanks.get(0) + (groupId == WORLD_GROUP ? "" : " (world rank " + world.get(0) + ")");
        }
        return "ranks " + groupRanks + (groupId == WORLD_GROUP ? "" : " (world ranks " + world + ")");
    }

    private String where(Op op) {
        return (op == null ? "" : op.label + " on ") + "group '" + name + "' (rank " + rank + " of " + size() + ")";
    }

    @Override
    public java.util.Optional<java.time.Duration> timeout() {
        return java.util.Optional.of(java.time.Duration.ofNanos(transport.collectiveTimeoutNanos));
    }

    private long timeoutMs() {
        return TimeUnit.NANOSECONDS.toMillis(transport.collectiveTimeoutNanos);
    }

    private void expectPayload(Call c, int peer, Frame f, long bytes, String what) {
        if (f.payload().length != bytes) {
            throw new CommunicatorException(where(c.op) + " (call #" + c.seq + "): rank " + rank + " expects " + what
                    + " from rank " + peer + " but rank " + peer + " sent " + f.payload().length + " bytes");
        }
    }

    private static void checkRange(int arrayLength, int off, long len, String what) {
        if (off < 0 || len < 0 || off + len > arrayLength) {
            throw new IndexOutOfBoundsException(what + "[" + off + ", " + off + "+" + len + ") is outside an array of "
                    + arrayLength + " elements");
        }
        if (len * 8 > Integer.MAX_VALUE - 64) {
            throw new IllegalArgumentException(what + " length " + len + " exceeds " + ((Integer.MAX_VALUE - 64) / 8)
                    + " elements, the per-call limit of the TCP communicator (2 GiB frames); hint: split the buffer");
        }
    }

    private void checkRoot(Op op, int root) {
        if (root < 0 || root >= size()) {
            throw new IllegalArgumentException(where(op) + ": root " + root + " is not in [0, " + size() + ")");
        }
    }

    private void checkPeer(int peer) {
        if (peer < 0 || peer >= size()) {
            throw new IllegalArgumentException(where(Op.SEND_F) + ": peer " + peer + " is not in [0, " + size() + ")");
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

    // ------------------------------------------------------------------------------------------------ codecs

    /** Bulk little-endian conversion and element-wise combination for one array type. */
    private abstract static class Kind<A> {
        final int bytes;

        Kind(int bytes) {
            this.bytes = bytes;
        }

        abstract A newArray(int len);

        abstract byte[] encode(A src, int off, int len);

        /** {@code dst[dstOff, +len)} = elements {@code [elemOff, +len)} of {@code src}. */
        abstract void decode(byte[] src, int elemOff, A dst, int dstOff, int len);

        /** {@code acc[accOff + i] = acc[accOff + i] op x[xOff + i]}. */
        abstract void combine(A acc, int accOff, A x, int xOff, int len);

        ByteBuffer wrap(byte[] b) {
            return ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
        }
    }

    private static final class FloatKind extends Kind<float[]> {
        private final boolean max;

        FloatKind(boolean max) {
            super(4);
            this.max = max;
        }

        @Override
        float[] newArray(int len) {
            return new float[len];
        }

        @Override
        byte[] encode(float[] src, int off, int len) {
            byte[] b = new byte[len * 4];
            wrap(b).asFloatBuffer().put(src, off, len);
            return b;
        }

        @Override
        void decode(byte[] src, int elemOff, float[] dst, int dstOff, int len) {
            wrap(src).position(elemOff * 4).slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(dst, dstOff, len);
        }

        @Override
        void combine(float[] acc, int accOff, float[] x, int xOff, int len) {
            if (max) {
                for (int i = 0; i < len; i++) {
                    acc[accOff + i] = Math.max(acc[accOff + i], x[xOff + i]);
                }
            } else {
                for (int i = 0; i < len; i++) {
                    acc[accOff + i] += x[xOff + i];
                }
            }
        }
    }

    private static final Kind<float[]> FLOAT_SUM = new FloatKind(false);
    private static final Kind<float[]> FLOAT_MAX = new FloatKind(true);

    private static final Kind<double[]> DOUBLE_SUM = new Kind<>(8) {
        @Override
        double[] newArray(int len) {
            return new double[len];
        }

        @Override
        byte[] encode(double[] src, int off, int len) {
            byte[] b = new byte[len * 8];
            wrap(b).asDoubleBuffer().put(src, off, len);
            return b;
        }

        @Override
        void decode(byte[] src, int elemOff, double[] dst, int dstOff, int len) {
            wrap(src).position(elemOff * 8).slice().order(ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(dst, dstOff, len);
        }

        @Override
        void combine(double[] acc, int accOff, double[] x, int xOff, int len) {
            for (int i = 0; i < len; i++) {
                acc[accOff + i] += x[xOff + i];
            }
        }
    };

    private static final Kind<long[]> LONG_SUM = new Kind<>(8) {
        @Override
        long[] newArray(int len) {
            return new long[len];
        }

        @Override
        byte[] encode(long[] src, int off, int len) {
            byte[] b = new byte[len * 8];
            wrap(b).asLongBuffer().put(src, off, len);
            return b;
        }

        @Override
        void decode(byte[] src, int elemOff, long[] dst, int dstOff, int len) {
            wrap(src).position(elemOff * 8).slice().order(ByteOrder.LITTLE_ENDIAN).asLongBuffer().get(dst, dstOff, len);
        }

        @Override
        void combine(long[] acc, int accOff, long[] x, int xOff, int len) {
            for (int i = 0; i < len; i++) {
                acc[accOff + i] += x[xOff + i];
            }
        }
    };

    private static final Kind<int[]> INT_SUM = new Kind<>(4) {
        @Override
        int[] newArray(int len) {
            return new int[len];
        }

        @Override
        byte[] encode(int[] src, int off, int len) {
            byte[] b = new byte[len * 4];
            wrap(b).asIntBuffer().put(src, off, len);
            return b;
        }

        @Override
        void decode(byte[] src, int elemOff, int[] dst, int dstOff, int len) {
            wrap(src).position(elemOff * 4).slice().order(ByteOrder.LITTLE_ENDIAN).asIntBuffer().get(dst, dstOff, len);
        }

        @Override
        void combine(int[] acc, int accOff, int[] x, int xOff, int len) {
            for (int i = 0; i < len; i++) {
                acc[accOff + i] += x[xOff + i];
            }
        }
    };
}
