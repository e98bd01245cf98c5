package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.gpu.comm.Frame.Op;
import dev.sparkmoe.gpu.comm.TcpGroup.Call;
import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.nio.ByteBuffer;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.List;

/**
 * {@code split(color, key)} of a {@link TcpGroup}, as {@code MPI_Comm_split}: every member shares its (color, key);
 * the members of one color form a sub-group ordered by key, then by parent rank. The sub-group reuses the world's
 * connections; its group id is derived from the parent's id, the split's call number and the color, so every member of
 * it computes the same id and no two groups share one.
 */
final class GroupSplit {

    private GroupSplit() {
    }

    /** This member's sub-group (a collective call on {@code g}). */
    static TcpGroup split(TcpGroup g, GroupExchange x, int color, int key, String newName) {
        Call c = g.begin(Op.SPLIT);
        try {
            byte[] mine = ByteBuffer.allocate(8).putInt(color).putInt(key).array();
            x.postToAll(c, 0, 0, mine);
            Frame[] got = x.receiveFromAll(c, 0, 0, null);
            int n = g.size();
            int[] colors = new int[n];
            int[] keys = new int[n];
            for (int p = 0; p < n; p++) {
                ByteBuffer b = ByteBuffer.wrap(p == g.rank ? mine : got[p].payload());
                if (b.remaining() != 8) {
                    throw new CommunicatorException(g.where(Op.SPLIT) + ": malformed split message from rank " + p);
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
                newMembers[i] = g.members[same.get(i)];
                if (same.get(i) == g.rank) {
                    newRank = i;
                }
            }
            long newGroup = childGroupId(g.id, c.seq(), color);
            return new TcpGroup(g.transport, newGroup, newMembers, newRank, newName);
        } catch (RuntimeException e) {
            throw g.fail(e);
        }
    }

    private static long childGroupId(long parent, long seq, int color) {
        try {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            md.update(ByteBuffer.allocate(20).putLong(parent).putLong(seq).putInt(color).array());
            long id = ByteBuffer.wrap(md.digest()).getLong();
            return (id == Frame.CONTROL_GROUP || id == TcpGroup.WORLD_GROUP) ? id + 2 : id;
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
