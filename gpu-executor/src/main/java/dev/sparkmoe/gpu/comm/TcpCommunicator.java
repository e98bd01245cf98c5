package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.Communicator;
import java.net.InetSocketAddress;
import java.time.Duration;
import java.util.Arrays;
import java.util.Objects;
import java.util.Optional;

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
 * <p>Parts, each one concern: {@link TcpTransport} (bootstrap, connections, close) with {@link TcpHandshake} and
 * {@link Link}, {@link TcpGroup} (membership, call state, error naming), {@link GroupExchange} (frames of a call,
 * timeouts and failure detection), {@link TcpCollectives} (the algorithms) with {@link ElementKind} (wire codecs and
 * reductions), {@link PointToPoint}, {@link GroupSplit}.
 *
 * <p>A communicator is used by one thread at a time; distinct groups may be used from distinct threads.
 */
public final class TcpCommunicator implements Communicator {

    private final TcpGroup group;
    private final boolean ownsTransport;
    private final GroupExchange exchange;
    private final TcpCollectives collectives;
    private final PointToPoint p2p;

    private TcpCommunicator(TcpGroup group, boolean owns) {
        this.group = group;
        this.ownsTransport = owns;
        this.exchange = new GroupExchange(group);
        this.collectives = new TcpCollectives(group, exchange);
        this.p2p = new PointToPoint(group, exchange);
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
        return new TcpCommunicator(new TcpGroup(t, TcpGroup.WORLD_GROUP, world, r.rank(), r.name()), true);
    }

    @Override
    public int rank() {
        return group.rank;
    }

    @Override
    public int size() {
        return group.size();
    }

    @Override
    public String name() {
        return group.name;
    }

    /** This member's rank in the world (the job). */
    public int worldRank() {
        return group.members[group.rank];
    }

    /** Where this rank's listener accepts connections (null in a world of one). */
    public InetSocketAddress listenAddress() {
        return group.transport.listenAddress();
    }

    @Override
    public String toString() {
        return "TcpCommunicator['" + name() + "' rank " + rank() + " of " + size() + ", world rank " + worldRank() + "]";
    }

    @Override
    public Optional<Duration> timeout() {
        return Optional.of(Duration.ofNanos(group.timeoutNanos()));
    }

    // ------------------------------------------------------------------------------------------------ collectives

    @Override
    public void allReduceSum(float[] buf, int off, int len) {
        collectives.allReduceSum(buf, off, len);
    }

    @Override
    public void allReduceSum(double[] buf, int off, int len) {
        collectives.allReduceSum(buf, off, len);
    }

    @Override
    public void allReduceSum(long[] buf, int off, int len) {
        collectives.allReduceSum(buf, off, len);
    }

    @Override
    public void allReduceMax(float[] buf, int off, int len) {
        collectives.allReduceMax(buf, off, len);
    }

    @Override
    public void allGather(float[] send, int sOff, int len, float[] recv, int rOff) {
        collectives.allGather(send, sOff, len, recv, rOff);
    }

    @Override
    public void allGather(int[] send, int sOff, int len, int[] recv, int rOff) {
        collectives.allGather(send, sOff, len, recv, rOff);
    }

    @Override
    public byte[][] allGatherBytes(byte[] mine) {
        return collectives.allGatherBytes(mine);
    }

    @Override
    public void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen) {
        collectives.reduceScatterSum(send, sOff, recv, rOff, recvLen);
    }

    @Override
    public void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts) {
        collectives.allToAll(send, sendCounts, recv, recvCounts);
    }

    @Override
    public void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts) {
        collectives.allToAll(send, sendCounts, recv, recvCounts);
    }

    @Override
    public void broadcast(float[] buf, int off, int len, int root) {
        collectives.broadcast(buf, off, len, root);
    }

    @Override
    public byte[] broadcastBytes(byte[] mine, int root) {
        return collectives.broadcastBytes(mine, root);
    }

    @Override
    public void barrier() {
        collectives.barrier();
    }

    @Override
    public void send(float[] buf, int off, int len, int peer) {
        p2p.send(buf, off, len, peer);
    }

    @Override
    public void recv(float[] buf, int off, int len, int peer) {
        p2p.recv(buf, off, len, peer);
    }

    // ------------------------------------------------------------------------------------------------ groups

    @Override
    public Communicator split(int color, int key, String newName) {
        Objects.requireNonNull(newName, "name");
        return new TcpCommunicator(GroupSplit.split(group, exchange, color, key, newName), false);
    }

    /** Closes this group; closing the world communicator closes every connection (and so every sub-group). */
    @Override
    public void close() {
        if (!group.markClosed()) {
            return;
        }
        if (ownsTransport) {
            group.transport.close();
        } else {
            for (int w : group.members) {
                Link l = group.transport.link(w);
                if (l != null) {
                    l.dropBoxes(group.id);
                }
            }
        }
    }
}
