package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.gpu.comm.Frame.Op;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * One process group of a {@link TcpCommunicator} (the world or a split sub-group): who its members are (group rank to
 * world rank, and the link to each), its call sequence, whether it is still usable (closed, or broken by an earlier
 * failure, after which every call is refused), and how its errors name the group, the op and the ranks. The argument
 * checks that every collective shares live here too, so their messages read the same everywhere.
 */
final class TcpGroup {

    /** Group id of the world; sub-groups derive theirs from it (see {@link GroupSplit}). */
    static final long WORLD_GROUP = 1L;

    final TcpTransport transport;
    final long id;
    final int[] members; // group rank -> world rank
    final int rank;
    final String name;
    private long seq;
    private volatile boolean closed;
    private volatile String broken;

    TcpGroup(TcpTransport transport, long id, int[] members, int rank, String name) {
        this.transport = transport;
        this.id = id;
        this.members = members;
        this.rank = rank;
        this.name = name;
    }

    int size() {
        return members.length;
    }

    // ------------------------------------------------------------------------------------------------ call state

    /** One collective call: its op and sequence number in this group. */
    record Call(Op op, long seq) {
    }

    /** Starts a collective call: refuses it if the group is unusable, else numbers it. */
    Call begin(Op op) {
        ensureUsable(op);
        return new Call(op, ++seq);
    }

    void ensureUsable(Op op) {
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

    /** Marks the group unusable after a communicator failure (the first one is kept); returns {@code e} to throw. */
    RuntimeException fail(RuntimeException e) {
        if (e instanceof CommunicatorException && broken == null) {
            broken = e.getMessage();
        }
        return e;
    }

    /** Marks the group closed; false if it already was. */
    boolean markClosed() {
        if (closed) {
            return false;
        }
        closed = true;
        return true;
    }

    // ------------------------------------------------------------------------------------------------ members

    /** The link to a group member (this member's own link loops back locally). */
    Link link(int groupRank) {
        return groupRank == rank ? transport.self() : transport.link(members[groupRank]);
    }

    int groupRankOf(int worldRank) {
        for (int i = 0; i < members.length; i++) {
            if (members[i] == worldRank) {
                return i;
            }
        }
        return -1;
    }

    // ------------------------------------------------------------------------------------------------ naming

    /** "rank 2" or "ranks [1, 3]", with the world ranks in a sub-group. */
    String rankNames(List<Integer> groupRanks) {
        List<Integer> world = new ArrayList<>();
        for (int g : groupRanks) {
            world.add(members[g]);
        }
        if (groupRanks.size() == 1) {
            return "rank " + groupRanks.get(0) + (id == WORLD_GROUP ? "" : " (world rank " + world.get(0) + ")");
        }
        return "ranks " + groupRanks + (id == WORLD_GROUP ? "" : " (world ranks " + world + ")");
    }

    /** "allGather(float) on group 'dp' (rank 1 of 4)"; without the op when {@code op} is null. */
    String where(Op op) {
        return (op == null ? "" : op.label + " on ") + "group '" + name + "' (rank " + rank + " of " + size() + ")";
    }

    long timeoutNanos() {
        return transport.collectiveTimeoutNanos;
    }

    long timeoutMs() {
        return TimeUnit.NANOSECONDS.toMillis(transport.collectiveTimeoutNanos);
    }

    // ------------------------------------------------------------------------------------------------ checks

    void expectPayload(Call c, int peer, Frame f, long bytes, String what) {
        if (f.payload().length != bytes) {
            throw new CommunicatorException(where(c.op()) + " (call #" + c.seq() + "): rank " + rank + " expects " + what
                    + " from rank " + peer + " but rank " + peer + " sent " + f.payload().length + " bytes");
        }
    }

    static void checkRange(int arrayLength, int off, long len, String what) {
        if (off < 0 || len < 0 || off + len > arrayLength) {
            throw new IndexOutOfBoundsException(what + "[" + off + ", " + off + "+" + len + ") is outside an array of "
                    + arrayLength + " elements");
        }
        if (len * 8 > Integer.MAX_VALUE - 64) {
            throw new IllegalArgumentException(what + " length " + len + " exceeds " + ((Integer.MAX_VALUE - 64) / 8)
                    + " elements, the per-call limit of the TCP communicator (2 GiB frames); hint: split the buffer");
        }
    }

    void checkRoot(Op op, int root) {
        if (root < 0 || root >= size()) {
            throw new IllegalArgumentException(where(op) + ": root " + root + " is not in [0, " + size() + ")");
        }
    }

    void checkPeer(int peer) {
        if (peer < 0 || peer >= size()) {
            throw new IllegalArgumentException(where(Op.SEND_F) + ": peer " + peer + " is not in [0, " + size() + ")");
        }
    }
}
