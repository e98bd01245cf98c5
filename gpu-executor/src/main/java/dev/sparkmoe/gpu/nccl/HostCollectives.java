package dev.sparkmoe.gpu.nccl;

import dev.sparkmoe.parallel.comm.CommunicatorException;
import java.util.Arrays;
import java.util.Objects;
import org.bytedeco.cuda.global.nccl;

/**
 * The {@link dev.sparkmoe.parallel.comm.Communicator} forms on host arrays (and so on host tensors, which the SPI maps
 * to arrays): staged through pinned memory and device buffers ({@link PinnedStaging}) and run by NCCL on the member's
 * stream; each blocks until done, with the communicator's timeout. The conformance suite runs on them unchanged.
 */
final class HostCollectives {
    private final NcclCalls calls;
    private final PinnedStaging staging;

    /** Element types of the staged forms. */
    enum Kind {
        F32(4, nccl.ncclFloat32), F64(8, nccl.ncclFloat64), I64(8, nccl.ncclInt64), I32(4, nccl.ncclInt32),
        U8(1, nccl.ncclUint8);

        final int bytes;
        final int type;

        Kind(int bytes, int type) {
            this.bytes = bytes;
            this.type = type;
        }
    }

    HostCollectives(NcclCalls calls, PinnedStaging staging) {
        this.calls = calls;
        this.staging = staging;
    }

    void allReduceSum(float[] buf, int off, int len) {
        inPlace("allReduceSum(float[" + len + "])", Kind.F32, buf, off, len, nccl.ncclSum, -1);
    }

    void allReduceSum(double[] buf, int off, int len) {
        inPlace("allReduceSum(double[" + len + "])", Kind.F64, buf, off, len, nccl.ncclSum, -1);
    }

    void allReduceSum(long[] buf, int off, int len) {
        inPlace("allReduceSum(long[" + len + "])", Kind.I64, buf, off, len, nccl.ncclSum, -1);
    }

    void allReduceMax(float[] buf, int off, int len) {
        inPlace("allReduceMax(float[" + len + "])", Kind.F32, buf, off, len, nccl.ncclMax, -1);
    }

    void broadcast(float[] buf, int off, int len, int root) {
        calls.checkPeer("broadcast root", root);
        inPlace("broadcast(float[" + len + "], root " + root + ")", Kind.F32, buf, off, len, -1, root);
    }

    void allGather(float[] send, int sOff, int len, float[] recv, int rOff) {
        gather("allGather(float[" + len + "])", Kind.F32, send, sOff, len, recv, rOff);
    }

    void allGather(int[] send, int sOff, int len, int[] recv, int rOff) {
        gather("allGather(int[" + len + "])", Kind.I32, send, sOff, len, recv, rOff);
    }

    byte[][] allGatherBytes(byte[] mine) {
        Objects.requireNonNull(mine, "mine");
        int size = calls.size();
        int[] lens = new int[size];
        allGather(new int[] {mine.length}, 0, 1, lens, 0);
        int max = Arrays.stream(lens).max().orElse(0);
        byte[][] out = new byte[size][];
        if (max > 0) {
            byte[] padded = Arrays.copyOf(mine, max);
            byte[] all = new byte[size * max];
            gather("allGatherBytes(" + max + " bytes padded)", Kind.U8, padded, 0, max, all, 0);
            for (int r = 0; r < size; r++) {
                out[r] = Arrays.copyOfRange(all, r * max, r * max + lens[r]);
            }
        } else {
            for (int r = 0; r < size; r++) {
                out[r] = new byte[0];
            }
        }
        return out;
    }

    void reduceScatterSum(float[] send, int sOff, float[] recv, int rOff, int recvLen) {
        int size = calls.size();
        String what = "reduceScatterSum(float[" + size + " x " + recvLen + "])";
        calls.checkRange(what + " send", send.length, sOff, (long) size * recvLen);
        calls.checkRange(what + " recv", recv.length, rOff, recvLen);
        if (recvLen == 0) {
            return;
        }
        calls.begin(what);
        long inBytes = 4L * size * recvLen;
        long outBytes = 4L * recvLen;
        staging.ensure(inBytes, outBytes);
        staging.toPinned(send, sOff, size * recvLen, 0);
        staging.h2d(staging.devIn(), inBytes, what);
        calls.enqueue(what, "ncclReduceScatter", () -> nccl.ncclReduceScatter(staging.devIn(), staging.devOut(),
                recvLen, nccl.ncclFloat32, nccl.ncclSum, calls.comm(), calls.stream()));
        staging.d2h(staging.devOut(), outBytes, what);
        calls.awaitDone(what);
        staging.fromPinned(recv, rOff, recvLen, 0);
    }

    void allToAll(float[] send, int[] sendCounts, float[] recv, int[] recvCounts) {
        exchange("allToAll(float)", Kind.F32, send, sendCounts, recv, recvCounts);
    }

    void allToAll(int[] send, int[] sendCounts, int[] recv, int[] recvCounts) {
        exchange("allToAll(int)", Kind.I32, send, sendCounts, recv, recvCounts);
    }

    byte[] broadcastBytes(byte[] mine, int root) {
        calls.checkPeer("broadcastBytes root", root);
        int rank = calls.rank();
        int[] len = {rank == root ? Objects.requireNonNull(mine, "root's bytes").length : 0};
        inPlace("broadcastBytes(length, root " + root + ")", Kind.I32, len, 0, 1, -1, root);
        byte[] out = rank == root ? mine.clone() : new byte[len[0]];
        if (len[0] > 0) {
            inPlace("broadcastBytes(" + len[0] + " bytes, root " + root + ")", Kind.U8, out, 0, len[0], -1, root);
        }
        return out;
    }

    void barrier() {
        inPlace("barrier", Kind.I32, new int[1], 0, 1, nccl.ncclSum, -1);
    }

    void send(float[] buf, int off, int len, int peer) {
        String what = "send(float[" + len + "] to rank " + peer + ")";
        calls.checkPeer(what, peer);
        if (peer == calls.rank()) {
            throw new IllegalArgumentException(what + " on group '" + calls.name() + "': a rank cannot send to itself");
        }
        calls.checkRange(what, buf.length, off, len);
        calls.begin(what);
        long bytes = 4L * len;
        staging.ensure(Math.max(bytes, 1), 1);
        staging.toPinned(buf, off, len, 0);
        staging.h2d(staging.devIn(), bytes, what);
        calls.enqueue(what, "ncclSend", () -> nccl.ncclSend(staging.devIn(), len, nccl.ncclFloat32, peer, calls.comm(),
                calls.stream()));
        calls.awaitDone(what);
    }

    void recv(float[] buf, int off, int len, int peer) {
        String what = "recv(float[" + len + "] from rank " + peer + ")";
        calls.checkPeer(what, peer);
        if (peer == calls.rank()) {
            throw new IllegalArgumentException(what + " on group '" + calls.name()
                    + "': a rank cannot receive from itself");
        }
        calls.checkRange(what, buf.length, off, len);
        calls.begin(what);
        long bytes = 4L * len;
        staging.ensure(1, Math.max(bytes, 1));
        calls.enqueue(what, "ncclRecv", () -> nccl.ncclRecv(staging.devOut(), len, nccl.ncclFloat32, peer,
                calls.comm(), calls.stream()));
        staging.d2h(staging.devOut(), bytes, what);
        calls.awaitDone(what);
        staging.fromPinned(buf, off, len, 0);
    }

    /** Staged in-place all-reduce ({@code op >= 0}) or broadcast ({@code root >= 0}) of a host array range. */
    private void inPlace(String what, Kind k, Object arr, int off, int len, int op, int root) {
        calls.checkRange(what, java.lang.reflect.Array.getLength(arr), off, len);
        if (len == 0) {
            return;
        }
        calls.begin(what);
        long bytes = (long) k.bytes * len;
        staging.ensure(bytes, 1);
        if (root < 0 || root == calls.rank()) {
            staging.toPinned(arr, off, len, 0);
            staging.h2d(staging.devIn(), bytes, what);
        }
        if (root >= 0) {
            calls.enqueue(what, "ncclBroadcast", () -> nccl.ncclBroadcast(staging.devIn(), staging.devIn(), len,
                    k.type, root, calls.comm(), calls.stream()));
        } else {
            calls.enqueue(what, "ncclAllReduce", () -> nccl.ncclAllReduce(staging.devIn(), staging.devIn(), len,
                    k.type, op, calls.comm(), calls.stream()));
        }
        staging.d2h(staging.devIn(), bytes, what);
        calls.awaitDone(what);
        staging.fromPinned(arr, off, len, 0);
    }

    private void gather(String what, Kind k, Object send, int sOff, int len, Object recv, int rOff) {
        int size = calls.size();
        calls.checkRange(what + " send", java.lang.reflect.Array.getLength(send), sOff, len);
        calls.checkRange(what + " recv", java.lang.reflect.Array.getLength(recv), rOff, (long) size * len);
        if (len == 0) {
            return;
        }
        calls.begin(what);
        long inBytes = (long) k.bytes * len;
        long outBytes = inBytes * size;
        staging.ensure(inBytes, outBytes);
        staging.toPinned(send, sOff, len, 0);
        staging.h2d(staging.devIn(), inBytes, what);
        calls.enqueue(what, "ncclAllGather",
                () -> nccl.ncclAllGather(staging.devIn(), staging.devOut(), len, k.type, calls.comm(), calls.stream()));
        staging.d2h(staging.devOut(), outBytes, what);
        calls.awaitDone(what);
        staging.fromPinned(recv, rOff, size * len, 0);
    }

    private void exchange(String what, Kind k, Object send, int[] sendCounts, Object recv, int[] recvCounts) {
        long[] tot = checkSplits(what, sendCounts, recvCounts);
        calls.checkRange(what + " send", java.lang.reflect.Array.getLength(send), 0, tot[0]);
        calls.checkRange(what + " recv", java.lang.reflect.Array.getLength(recv), 0, tot[1]);
        calls.begin(what);
        long inBytes = k.bytes * tot[0];
        long outBytes = k.bytes * tot[1];
        staging.ensure(Math.max(inBytes, 1), Math.max(outBytes, 1));
        if (tot[0] > 0) {
            staging.toPinned(send, 0, (int) tot[0], 0);
            staging.h2d(staging.devIn(), inBytes, what);
        }
        calls.groupedExchange(what, staging.devIn().address(), sendCounts, staging.devOut().address(), recvCounts,
                k.bytes, k.type);
        if (tot[1] > 0) {
            staging.d2h(staging.devOut(), outBytes, what);
        }
        calls.awaitDone(what);
        if (tot[1] > 0) {
            staging.fromPinned(recv, 0, (int) tot[1], 0);
        }
    }

    /**
     * Validates split sizes locally, then against every peer: gathers everyone's send and receive counts (2 * size
     * ints each, over this communicator) so that every member finds the same mismatch and fails alike. Returns the
     * send and receive totals.
     */
    long[] checkSplits(String what, int[] sendCounts, int[] recvCounts) {
        int size = calls.size();
        String name = calls.name();
        if (sendCounts.length != size || recvCounts.length != size) {
            throw new IllegalArgumentException(what + " on group '" + name + "': sendCounts has " + sendCounts.length
                    + " and recvCounts " + recvCounts.length + " entries; both need one per member (" + size + ")");
        }
        long s = 0;
        long r = 0;
        for (int p = 0; p < size; p++) {
            if (sendCounts[p] < 0 || recvCounts[p] < 0) {
                throw new IllegalArgumentException(what + " on group '" + name + "': negative count for peer " + p
                        + " (send " + sendCounts[p] + ", recv " + recvCounts[p] + ")");
            }
            s += sendCounts[p];
            r += recvCounts[p];
        }
        int[] mine = new int[2 * size];
        System.arraycopy(sendCounts, 0, mine, 0, size);
        System.arraycopy(recvCounts, 0, mine, size, size);
        int[] all = new int[2 * size * size];
        allGather(mine, 0, 2 * size, all, 0);
        for (int q = 0; q < size; q++) {
            for (int p = 0; p < size; p++) {
                int sent = all[q * 2 * size + p];
                int expected = all[p * 2 * size + size + q];
                if (sent != expected) {
                    throw new CommunicatorException(what + " on group '" + name + "': rank " + p
                            + " expects recvCounts[" + q + "] = " + expected + " elements from rank " + q
                            + ", but rank " + q + " sends sendCounts[" + p + "] = " + sent
                            + "; hint: exchange the counts first (allToAll of int counts)");
                }
            }
        }
        return new long[] {s, r};
    }
}
