package dev.sparkmoe.gpu.comm;

/**
 * One message on a connection. Wire layout (big-endian header, 26 bytes, then the payload):
 * {@code long group | long seq | byte op | byte phase | int aux | int length | byte[length] payload}.
 *
 * <p>{@code group} identifies the process group (the world or a split sub-group); {@code seq} is the group's call
 * counter (or a per-peer counter for point-to-point); {@code op} the collective; {@code phase} the step within it;
 * {@code aux} an argument that all members must agree on (a length, a root) so that mismatches are caught.
 */
record Frame(long group, long seq, byte op, byte phase, int aux, boolean p2p, byte[] payload) {

    static final int HEADER_BYTES = 8 + 8 + 1 + 1 + 4 + 4;
    /** Group id of connection-level control messages (goodbye). */
    static final long CONTROL_GROUP = 0L;
    /** Bit set in the op byte of point-to-point messages, which travel outside the collective sequence. */
    static final byte P2P_FLAG = (byte) 0x80;

    /** Collective and control op codes, with the names used in error messages. */
    enum Op {
        BYE(1, "close"),
        ALL_REDUCE_SUM_F(10, "allReduceSum(float)"),
        ALL_REDUCE_SUM_D(11, "allReduceSum(double)"),
        ALL_REDUCE_SUM_L(12, "allReduceSum(long)"),
        ALL_REDUCE_MAX_F(13, "allReduceMax(float)"),
        ALL_GATHER_F(20, "allGather(float)"),
        ALL_GATHER_I(21, "allGather(int)"),
        ALL_GATHER_BYTES(22, "allGatherBytes"),
        REDUCE_SCATTER_F(30, "reduceScatterSum(float)"),
        ALL_TO_ALL_F(40, "allToAll(float)"),
        ALL_TO_ALL_I(41, "allToAll(int)"),
        BROADCAST_F(50, "broadcast(float)"),
        BROADCAST_BYTES(51, "broadcastBytes"),
        BARRIER(60, "barrier"),
        SPLIT(70, "split"),
        SEND_F(80, "send/recv(float)");

        final byte code;
        final String label;

        Op(int code, String label) {
            this.code = (byte) code;
            this.label = label;
        }

        static String labelOf(byte code) {
            for (Op o : values()) {
                if (o.code == (byte) (code & ~P2P_FLAG)) {
                    return o.label;
                }
            }
            return "unknown op " + (code & 0xff);
        }
    }
}
