package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.gpu.comm.Frame.Op;
import dev.sparkmoe.gpu.comm.TcpGroup.Call;
import dev.sparkmoe.gpu.comm.Link.StreamKey;
import dev.sparkmoe.parallel.comm.CollectiveTimeoutException;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * The frames of a {@link TcpGroup}'s calls: posting a call's part to one member or to all of them, and waiting for
 * every member's part with the collective timeout. This is where failures are detected and named: a member whose link
 * has dropped (with the reason), members that never sent their part within the timeout
 * ({@link CollectiveTimeoutException}), and a member that called a different collective, another call number, phase,
 * or disagreeing arguments.
 */
final class GroupExchange {

    private final TcpGroup g;

    GroupExchange(TcpGroup group) {
        this.g = group;
    }

    /** Posts this member's part of call {@code c} to group member {@code peer}. */
    void post(Call c, int peer, int phase, int aux, byte[] payload) {
        linkForSend(c.op(), peer).post(new Frame(g.id, c.seq(), c.op().code, (byte) phase, aux, false, payload));
    }

    /** The link to a group member, failing with the member's name if it has dropped. */
    Link linkForSend(Op op, int peer) {
        Link l = g.link(peer);
        String why = l.failure();
        if (why != null) {
            throw new CommunicatorException(g.where(op) + ": cannot send: " + downMembers());
        }
        return l;
    }

    /** Posts to every live member, then fails naming every member that has dropped (if any). */
    void postToAll(Call c, int phase, int aux, byte[] payload) {
        boolean anyDown = false;
        for (int p = 0; p < g.size(); p++) {
            if (p != g.rank) {
                Link l = g.link(p);
                if (l.failure() != null) {
                    anyDown = true;
                } else {
                    l.post(new Frame(g.id, c.seq(), c.op().code, (byte) phase, aux, false, payload));
                }
            }
        }
        if (anyDown) {
            throw new CommunicatorException(g.where(c.op()) + ": cannot send: " + downMembers());
        }
    }

    /** "rank 1 dropped: why; rank 3 dropped: why" for every member whose link is down. */
    private String downMembers() {
        List<String> parts = new ArrayList<>();
        for (int p = 0; p < g.size(); p++) {
            String why = p == g.rank ? null : g.link(p).failure();
            if (why != null) {
                parts.add(g.rankNames(List.of(p)) + " dropped: " + why);
            }
        }
        return String.join("; ", parts);
    }

    /**
     * One frame of call {@code c}, phase {@code phase} from every other member (indexed by group rank), checking op,
     * sequence and (when {@code auxName} is non-null) that the peer's {@code aux} equals ours.
     */
    Frame[] receiveFromAll(Call c, int phase, int aux, String auxName) {
        int n = g.size();
        int rank = g.rank;
        Frame[] got = new Frame[n];
        long deadline = System.nanoTime() + g.timeoutNanos();
        StreamKey key = new StreamKey(g.id, false);
        for (int p = 0; p < n; p++) {
            if (p == rank) {
                continue;
            }
            Frame f = take(c.op(), g.link(p), key, deadline);
            if (f == null) {
                List<Integer> missing = new ArrayList<>();
                missing.add(p);
                for (int q = p + 1; q < n; q++) {
                    if (q != rank && g.link(q).box(key).isEmpty()) {
                        missing.add(q);
                    }
                }
                throw new CollectiveTimeoutException(g.where(c.op()) + " (call #" + c.seq() + ") timed out after "
                        + g.timeoutMs() + " ms: missing " + g.rankNames(missing) + " (never sent its part of this call;"
                        + " hung, slow, or calling a different sequence of collectives?)");
            }
            if (f.op() != c.op().code || f.seq() != c.seq()) {
                throw new CommunicatorException("collective mismatch on group '" + g.name + "': rank " + rank + " called "
                        + c.op().label + " (call #" + c.seq() + ") but rank " + p + " called " + Op.labelOf(f.op())
                        + " (call #" + f.seq() + "); hint: every member must call the same collectives in the same order");
            }
            if (auxName != null && f.aux() != aux) {
                throw new CommunicatorException(g.where(c.op()) + " (call #" + c.seq() + "): arguments disagree: rank "
                        + rank + " passed " + auxName + "=" + aux + " but rank " + p + " passed " + auxName + "="
                        + f.aux());
            }
            if (f.phase() != phase) {
                throw new CommunicatorException(g.where(c.op()) + " (call #" + c.seq() + "): rank " + p + " is in phase "
                        + f.phase() + ", expected " + phase);
            }
            got[p] = f;
        }
        return got;
    }

    /** Next frame of a stream from a peer, or null at the deadline; a dropped peer is an error naming it. */
    Frame take(Op op, Link l, StreamKey key, long deadline) {
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
                    throw new CommunicatorException(g.where(op) + ": " + downMembers());
                }
                if (g.transport.isClosed()) {
                    throw new CommunicatorException(g.where(op) + ": the world communicator was closed");
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
            throw new CommunicatorException(g.where(op) + ": interrupted while waiting for rank "
                    + g.groupRankOf(l.peer));
        }
    }
}
