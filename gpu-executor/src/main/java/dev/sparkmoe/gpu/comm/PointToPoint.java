package dev.sparkmoe.gpu.comm;

import static dev.sparkmoe.gpu.comm.TcpGroup.checkRange;

import dev.sparkmoe.gpu.comm.Frame.Op;
import dev.sparkmoe.gpu.comm.Link.StreamKey;
import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.util.List;

/**
 * Point-to-point send and receive of a {@link TcpGroup}: messages travel outside the collective sequence, on a stream of
 * their own per peer, numbered per (peer, direction) so that a receive that meets another send than the one it pairs
 * with fails naming both numbers. A send never blocks; a receive waits up to the collective timeout. A failure breaks
 * the group as a collective's does.
 */
final class PointToPoint {

    private final TcpGroup g;
    private final GroupExchange x;
    private final long[] sendSeq;
    private final long[] recvSeq;

    PointToPoint(TcpGroup group, GroupExchange exchange) {
        this.g = group;
        this.x = exchange;
        this.sendSeq = new long[group.size()];
        this.recvSeq = new long[group.size()];
    }

    void send(float[] buf, int off, int len, int peer) {
        checkRange(buf.length, off, len, "buf");
        g.checkPeer(peer);
        g.ensureUsable(Op.SEND_F);
        Link l = x.linkForSend(Op.SEND_F, peer);
        long s = ++sendSeq[peer];
        l.post(new Frame(g.id, s, Op.SEND_F.code, (byte) 0, len, true, ElementKind.FLOAT_SUM.encode(buf, off, len)));
    }

    void recv(float[] buf, int off, int len, int peer) {
        checkRange(buf.length, off, len, "buf");
        g.checkPeer(peer);
        g.ensureUsable(Op.SEND_F);
        long s = ++recvSeq[peer];
        long deadline = System.nanoTime() + g.timeoutNanos();
        Link l = g.link(peer);
        try {
            Frame f = x.take(Op.SEND_F, l, new StreamKey(g.id, true), deadline);
            if (f == null) {
                throw new CollectiveTimeoutException(g.where(Op.SEND_F) + ": recv of " + len + " floats timed out after "
                        + g.timeoutMs() + " ms: no message from " + g.rankNames(List.of(peer)));
            }
            if (f.seq() != s) {
                throw new CommunicatorException(g.where(Op.SEND_F) + ": recv #" + s + " from rank " + peer
                        + " got its send #" + f.seq());
            }
            if (f.aux() != len) {
                throw new CommunicatorException(g.where(Op.SEND_F) + ": recv expects len=" + len + " floats from rank "
                        + peer + " but rank " + peer + " sent len=" + f.aux());
            }
            ElementKind.FLOAT_SUM.decode(f.payload(), 0, buf, off, len);
        } catch (CommunicatorException e) {
            throw g.fail(e);
        }
    }
}
