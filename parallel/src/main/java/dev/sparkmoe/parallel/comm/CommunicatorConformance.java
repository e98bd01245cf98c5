package dev.sparkmoe.parallel.comm;

import dev.sparkmoe.core.tensor.Tensor;
import java.util.Arrays;

/**
 * Conformance suite (TCK) for {@link Communicator} implementations: in-JVM, TCP, NCCL. Every member of a group calls
 * {@link #runAll(Communicator)} concurrently; it runs every collective with data derived deterministically from the
 * rank, checks each result exactly, and throws {@link AssertionError} with a precise message at the first mismatch.
 *
 * <p>Sums are checked on data whose sums are exact in any order (so that implementations may reduce in any order);
 * bitwise agreement across members and across repetitions is checked separately, on order-sensitive data. Buffers
 * carry guard elements around the addressed range, which must stay untouched. Point-to-point calls are ordered so
 * that they work with rendezvous sends (NCCL) as well as buffered ones.
 */
public final class CommunicatorConformance {

    private static final float GUARD = -7777.25f;

    private CommunicatorConformance() {
    }

    /** Runs every check on {@code c}; collective: every member calls it concurrently. */
    public static void runAll(Communicator c) {
        basics(c);
        allReduceFloatExact(c);
        allReduceBitwiseConsistent(c);
        allReduceDouble(c);
        allReduceLong(c);
        allReduceMax(c);
        allGatherFloat(c);
        allGatherInPlace(c);
        allGatherInt(c);
        allGatherBytes(c);
        reduceScatter(c);
        startedGroups(c);
        allToAllFloat(c, 0);
        allToAllFloat(c, 1);
        allToAllInt(c);
        broadcast(c, c.size() - 1);
        broadcast(c, 0);
        broadcastBytes(c);
        c.barrier();
        sendRecvRing(c);
        splitParity(c);
        splitPairsAndNested(c);
        c.barrier();
    }

    // ---- helpers ----

    private static AssertionError fail(Communicator c, String check, String what) {
        return new AssertionError("conformance check '" + check + "' failed on group '" + c.name() + "' rank "
                + c.rank() + " of " + c.size() + ": " + what);
    }

    private static void eq(Communicator c, String check, String where, double expected, double actual) {
        if (Double.doubleToRawLongBits(expected) != Double.doubleToRawLongBits(actual)) {
            throw fail(c, check, where + " = " + actual + ", expected " + expected);
        }
    }

    private static void eqF(Communicator c, String check, String where, float expected, float actual) {
        if (Float.floatToRawIntBits(expected) != Float.floatToRawIntBits(actual)) {
            throw fail(c, check, where + " = " + actual + ", expected " + expected);
        }
    }

    private static void eqL(Communicator c, String check, String where, long expected, long actual) {
        if (expected != actual) {
            throw fail(c, check, where + " = " + actual + ", expected " + expected);
        }
    }

    private static float[] guarded(int off, int len, int tail) {
        float[] a = new float[off + len + tail];
        Arrays.fill(a, GUARD);
        return a;
    }

    private static void guardsIntact(Communicator c, String check, float[] a, int off, int len) {
        for (int k = 0; k < a.length; k++) {
            if ((k < off || k >= off + len) && Float.floatToRawIntBits(a[k]) != Float.floatToRawIntBits(GUARD)) {
                throw fail(c, check, "element " + k + " outside the addressed range [" + off + ", " + (off + len)
                        + ") was overwritten with " + a[k]);
            }
        }
    }

    // ---- checks ----

    private static void basics(Communicator c) {
        String check = "basics";
        int n = c.size();
        if (n < 1 || c.rank() < 0 || c.rank() >= n) {
            throw fail(c, check, "rank " + c.rank() + " / size " + n + " out of range");
        }
        if (c.name() == null || c.name().isEmpty()) {
            throw fail(c, check, "name() is empty");
        }
        int[] ranks = new int[n];
        c.allGather(new int[] {c.rank()}, 0, 1, ranks, 0);
        for (int r = 0; r < n; r++) {
            eqL(c, check, "gathered rank at slot " + r, r, ranks[r]);
        }
    }

    private static void allReduceFloatExact(Communicator c) {
        String check = "allReduceSum(float) exact";
        int n = c.size();
        int off = 3;
        int len = 37;
        float[] buf = guarded(off, len, 2);
        for (int k = 0; k < len; k++) {
            buf[off + k] = (k % 2 == 0 ? 1 : -1) * (c.rank() + 1) * (k + 1) * 0.25f;
        }
        c.allReduceSum(buf, off, len);
        for (int k = 0; k < len; k++) {
            float expected = (k % 2 == 0 ? 1 : -1) * 0.25f * (k + 1) * (n * (n + 1) / 2);
            eqF(c, check, "buf[" + (off + k) + "]", expected, buf[off + k]);
        }
        guardsIntact(c, check, buf, off, len);
        c.allReduceSum(buf, off, 0); // zero-length is legal
        guardsIntact(c, check + " len=0", buf, off, len);
    }

    private static float[] orderSensitive(int rank, int len) {
        float[] v = new float[len];
        for (int k = 0; k < len; k++) {
            v[k] = (float) (Math.sin(rank * 131.0 + k * 0.7) * Math.pow(10, (k + rank) % 7 - 3));
        }
        return v;
    }

    private static void allReduceBitwiseConsistent(Communicator c) {
        String check = "allReduceSum(float) bitwise identical across members and repetitions";
        int n = c.size();
        int len = 53;
        float[] first = orderSensitive(c.rank(), len);
        c.allReduceSum(first, 0, len);
        float[] second = orderSensitive(c.rank(), len);
        c.allReduceSum(second, 0, len);
        for (int k = 0; k < len; k++) {
            eqF(c, check, "repetition 2 element " + k + " (repetition 1 gave " + first[k] + ")", first[k], second[k]);
        }
        float[] all = new float[n * len];
        c.allGather(first, 0, len, all, 0);
        for (int r = 0; r < n; r++) {
            for (int k = 0; k < len; k++) {
                if (Float.floatToRawIntBits(all[r * len + k]) != Float.floatToRawIntBits(first[k])) {
                    throw fail(c, check, "element " + k + " is " + first[k] + " here but " + all[r * len + k]
                            + " on rank " + r);
                }
            }
        }
    }

    private static void allReduceDouble(Communicator c) {
        String check = "allReduceSum(double)";
        int n = c.size();
        int off = 1;
        int len = 9;
        double[] buf = new double[off + len + 1];
        Arrays.fill(buf, GUARD);
        for (int k = 0; k < len; k++) {
            buf[off + k] = (c.rank() + 1) * 1e10 + k * 0.5;
        }
        c.allReduceSum(buf, off, len);
        for (int k = 0; k < len; k++) {
            eq(c, check, "buf[" + (off + k) + "]", 1e10 * (n * (n + 1) / 2) + n * k * 0.5, buf[off + k]);
        }
        eq(c, check, "guard buf[0]", GUARD, buf[0]);
        eq(c, check, "guard buf[last]", GUARD, buf[off + len]);
    }

    private static void allReduceLong(Communicator c) {
        String check = "allReduceSum(long)";
        int n = c.size();
        int off = 2;
        int len = 7;
        long[] buf = new long[off + len + 1];
        Arrays.fill(buf, -99);
        for (int k = 0; k < len; k++) {
            buf[off + k] = (1L << 40) * (c.rank() + 1) + k - c.rank();
        }
        c.allReduceSum(buf, off, len);
        for (int k = 0; k < len; k++) {
            long expected = (1L << 40) * ((long) n * (n + 1) / 2) + (long) n * k - (long) n * (n - 1) / 2;
            eqL(c, check, "buf[" + (off + k) + "]", expected, buf[off + k]);
        }
        eqL(c, check, "guard buf[1]", -99, buf[1]);
        eqL(c, check, "guard buf[last]", -99, buf[off + len]);
    }

    private static float maxValue(int rank, int k, int n) {
        return ((rank * 7 + k * 3) % (n + 2)) - 2.5f;
    }

    private static void allReduceMax(Communicator c) {
        String check = "allReduceMax(float)";
        int n = c.size();
        int off = 1;
        int len = 11;
        float[] buf = guarded(off, len, 1);
        for (int k = 0; k < len; k++) {
            buf[off + k] = maxValue(c.rank(), k, n);
        }
        c.allReduceMax(buf, off, len);
        for (int k = 0; k < len; k++) {
            float expected = Float.NEGATIVE_INFINITY;
            for (int r = 0; r < n; r++) {
                expected = Math.max(expected, maxValue(r, k, n));
            }
            eqF(c, check, "buf[" + (off + k) + "]", expected, buf[off + k]);
        }
        guardsIntact(c, check, buf, off, len);
    }

    private static void allGatherFloat(Communicator c) {
        String check = "allGather(float)";
        int n = c.size();
        int len = 5;
        float[] send = guarded(2, len, 1);
        for (int k = 0; k < len; k++) {
            send[2 + k] = c.rank() * 100 + k + 0.5f;
        }
        float[] recv = guarded(1, n * len, 3);
        c.allGather(send, 2, len, recv, 1);
        for (int r = 0; r < n; r++) {
            for (int k = 0; k < len; k++) {
                eqF(c, check, "recv[" + (1 + r * len + k) + "] (rank " + r + ", element " + k + ")",
                        r * 100 + k + 0.5f, recv[1 + r * len + k]);
            }
        }
        guardsIntact(c, check, recv, 1, n * len);
        float[] empty = guarded(1, 0, 1);
        c.allGather(send, 0, 0, empty, 1);
        guardsIntact(c, check + " len=0", empty, 1, 0);
    }

    private static void allGatherInPlace(Communicator c) {
        String check = "allGather(float) in place (send is this rank's slot of recv)";
        int n = c.size();
        int len = 3;
        float[] buf = guarded(1, n * len, 1);
        for (int k = 0; k < len; k++) {
            buf[1 + c.rank() * len + k] = -(c.rank() * 10 + k);
        }
        c.allGather(buf, 1 + c.rank() * len, len, buf, 1);
        for (int r = 0; r < n; r++) {
            for (int k = 0; k < len; k++) {
                eqF(c, check, "buf[" + (1 + r * len + k) + "]", -(r * 10 + k), buf[1 + r * len + k]);
            }
        }
        guardsIntact(c, check, buf, 1, n * len);
    }

    private static void allGatherInt(Communicator c) {
        String check = "allGather(int)";
        int n = c.size();
        int len = 4;
        int[] send = new int[len + 1];
        for (int k = 0; k < len; k++) {
            send[1 + k] = c.rank() * 1_000_003 + k;
        }
        int[] recv = new int[n * len + 2];
        Arrays.fill(recv, -5);
        c.allGather(send, 1, len, recv, 2);
        for (int r = 0; r < n; r++) {
            for (int k = 0; k < len; k++) {
                eqL(c, check, "recv[" + (2 + r * len + k) + "]", r * 1_000_003 + k, recv[2 + r * len + k]);
            }
        }
        eqL(c, check, "guard recv[0]", -5, recv[0]);
        eqL(c, check, "guard recv[1]", -5, recv[1]);
    }

    private static byte[] bytesOf(int rank) {
        byte[] b = new byte[rank * 3];
        for (int i = 0; i < b.length; i++) {
            b[i] = (byte) (rank * 31 + i);
        }
        return b;
    }

    private static void allGatherBytes(Communicator c) {
        String check = "allGatherBytes (lengths 0, 3, 6, ...)";
        byte[][] all = c.allGatherBytes(bytesOf(c.rank()));
        if (all.length != c.size()) {
            throw fail(c, check, "got " + all.length + " arrays for " + c.size() + " members");
        }
        for (int r = 0; r < c.size(); r++) {
            if (!Arrays.equals(bytesOf(r), all[r])) {
                throw fail(c, check, "array of rank " + r + " is " + Arrays.toString(all[r]) + ", expected "
                        + Arrays.toString(bytesOf(r)));
            }
        }
    }

    private static void reduceScatter(Communicator c) {
        String check = "reduceScatterSum(float)";
        int n = c.size();
        int recvLen = 3;
        float[] send = guarded(1, n * recvLen, 1);
        for (int j = 0; j < n * recvLen; j++) {
            send[1 + j] = (c.rank() + 1) * (j + 1) * 0.5f;
        }
        float[] sendCopy = send.clone();
        float[] recv = guarded(2, recvLen, 1);
        c.reduceScatterSum(send, 1, recv, 2, recvLen);
        for (int k = 0; k < recvLen; k++) {
            int j = c.rank() * recvLen + k;
            eqF(c, check, "recv[" + (2 + k) + "]", (j + 1) * 0.5f * (n * (n + 1) / 2), recv[2 + k]);
        }
        guardsIntact(c, check, recv, 2, recvLen);
        if (!Arrays.equals(send, sendCopy)) {
            throw fail(c, check, "the send buffer was modified");
        }
    }

    /** FSDP's form: a group of all-gathers, then of reduce-scatters, started and then completed once each. */
    private static void startedGroups(Communicator c) {
        String check = "allGatherStart / reduceScatterSumStart (groups of 2)";
        int n = c.size();
        int[] lens = {3, 1};
        float[][] send = new float[2][];
        float[][] recv = new float[2][];
        java.util.List<Communicator.Part> gather = new java.util.ArrayList<>();
        for (int i = 0; i < 2; i++) {
            send[i] = guarded(1, lens[i], 1);
            for (int k = 0; k < lens[i]; k++) {
                send[i][1 + k] = c.rank() * 10 + i * 100 + k;
            }
            recv[i] = guarded(2, n * lens[i], 1);
            gather.add(new Communicator.Part(Tensor.of(send[i], send[i].length), 1,
                    Tensor.of(recv[i], recv[i].length), 2, lens[i]));
        }
        c.allGatherStart(gather).complete();
        java.util.List<Communicator.Part> reduce = new java.util.ArrayList<>();
        float[][] out = new float[2][];
        for (int i = 0; i < 2; i++) {
            for (int r = 0; r < n; r++) {
                for (int k = 0; k < lens[i]; k++) {
                    eqF(c, check, "gathered part " + i + " recv[" + (2 + r * lens[i] + k) + "]", r * 10 + i * 100 + k,
                            recv[i][2 + r * lens[i] + k]);
                }
            }
            guardsIntact(c, check, recv[i], 2, n * lens[i]);
            out[i] = guarded(1, lens[i], 1);
            reduce.add(new Communicator.Part(Tensor.of(recv[i], recv[i].length), 2, Tensor.of(out[i], out[i].length),
                    1, lens[i]));
        }
        c.reduceScatterSumStart(reduce).complete();
        for (int i = 0; i < 2; i++) {
            for (int k = 0; k < lens[i]; k++) { // every rank sent the same gathered buffer: n times this rank's chunk
                eqF(c, check, "reduced part " + i + " out[" + (1 + k) + "]", n * (c.rank() * 10 + i * 100 + k),
                        out[i][1 + k]);
            }
            guardsIntact(c, check, out[i], 1, lens[i]);
        }
    }

    private static int a2aCount(int src, int dst, int variant) {
        return variant == 0 ? (src + 2 * dst) % 3 : (src + dst + 1) % 4;
    }

    private static void allToAllFloat(Communicator c, int variant) {
        String check = "allToAll(float) uneven splits, variant " + variant;
        int n = c.size();
        int me = c.rank();
        int[] sendCounts = new int[n];
        int[] recvCounts = new int[n];
        int sTotal = 0;
        int rTotal = 0;
        for (int p = 0; p < n; p++) {
            sendCounts[p] = a2aCount(me, p, variant);
            recvCounts[p] = a2aCount(p, me, variant);
            sTotal += sendCounts[p];
            rTotal += recvCounts[p];
        }
        float[] send = new float[sTotal + 2]; // trailing slack is allowed
        int s = 0;
        for (int p = 0; p < n; p++) {
            for (int i = 0; i < sendCounts[p]; i++) {
                send[s++] = me * 1000 + p * 10 + i;
            }
        }
        float[] recv = new float[rTotal];
        Arrays.fill(recv, GUARD);
        c.allToAll(send, sendCounts, recv, recvCounts);
        int d = 0;
        for (int p = 0; p < n; p++) {
            for (int i = 0; i < recvCounts[p]; i++) {
                eqF(c, check, "recv[" + d + "] (from rank " + p + ", element " + i + "; recvCounts="
                        + Arrays.toString(recvCounts) + ")", p * 1000 + me * 10 + i, recv[d]);
                d++;
            }
        }
    }

    private static void allToAllInt(Communicator c) {
        String check = "allToAll(int) uneven splits";
        int n = c.size();
        int me = c.rank();
        int[] sendCounts = new int[n];
        int[] recvCounts = new int[n];
        int sTotal = 0;
        int rTotal = 0;
        for (int p = 0; p < n; p++) {
            sendCounts[p] = a2aCount(me, p, 0) + (p == me ? 1 : 0);
            recvCounts[p] = a2aCount(p, me, 0) + (p == me ? 1 : 0);
            sTotal += sendCounts[p];
            rTotal += recvCounts[p];
        }
        int[] send = new int[sTotal];
        int s = 0;
        for (int p = 0; p < n; p++) {
            for (int i = 0; i < sendCounts[p]; i++) {
                send[s++] = -(me * 100_000 + p * 100 + i);
            }
        }
        int[] recv = new int[rTotal + 1];
        recv[rTotal] = 42;
        c.allToAll(send, sendCounts, recv, recvCounts);
        int d = 0;
        for (int p = 0; p < n; p++) {
            for (int i = 0; i < recvCounts[p]; i++) {
                eqL(c, check, "recv[" + d + "] (from rank " + p + ", element " + i + ")",
                        -(p * 100_000 + me * 100 + i), recv[d]);
                d++;
            }
        }
        eqL(c, check, "trailing recv element", 42, recv[rTotal]);
    }

    private static void broadcast(Communicator c, int root) {
        String check = "broadcast(float) from root " + root;
        int len = 6;
        float[] buf = guarded(1, len, 1);
        for (int k = 0; k < len; k++) {
            buf[1 + k] = c.rank() == root ? root * 10 + k + 0.125f : -1;
        }
        c.broadcast(buf, 1, len, root);
        for (int k = 0; k < len; k++) {
            eqF(c, check, "buf[" + (1 + k) + "]", root * 10 + k + 0.125f, buf[1 + k]);
        }
        guardsIntact(c, check, buf, 1, len);
    }

    private static void broadcastBytes(Communicator c) {
        int root = c.size() / 2;
        String check = "broadcastBytes from root " + root;
        byte[] expected = ("root-" + root + "-payload").getBytes(java.nio.charset.StandardCharsets.UTF_8);
        byte[] mine = c.rank() == root ? expected.clone() : new byte[] {9, 9};
        byte[] got = c.broadcastBytes(mine, root);
        if (!Arrays.equals(expected, got)) {
            throw fail(c, check, "got " + Arrays.toString(got) + ", expected " + Arrays.toString(expected));
        }
    }

    private static void sendRecvRing(Communicator c) {
        String check = "send/recv ring";
        int n = c.size();
        if (n == 1) {
            return;
        }
        int me = c.rank();
        int next = (me + 1) % n;
        int prev = (me + n - 1) % n;
        int len = 4;
        float[] out = new float[len + 1];
        for (int k = 0; k < len; k++) {
            out[1 + k] = me * 10 + k;
        }
        float[] in = guarded(2, len, 1);
        // Even ranks send first, odd ranks receive first: no cycle of waiting sends even with rendezvous semantics.
        if (me % 2 == 0) {
            c.send(out, 1, len, next);
            c.recv(in, 2, len, prev);
        } else {
            c.recv(in, 2, len, prev);
            c.send(out, 1, len, next);
        }
        for (int k = 0; k < len; k++) {
            eqF(c, check, "in[" + (2 + k) + "] from rank " + prev, prev * 10 + k, in[2 + k]);
        }
        guardsIntact(c, check, in, 2, len);
        c.barrier();
    }

    private static void splitParity(Communicator c) {
        String check = "split(color = rank % 2, key = -rank)";
        int n = c.size();
        int me = c.rank();
        int expectedSize = 0;
        int expectedRank = 0;
        float expectedSum = 0;
        for (int r = 0; r < n; r++) {
            if (r % 2 == me % 2) {
                expectedSize++;
                expectedSum += r;
                if (r > me) {
                    expectedRank++;
                }
            }
        }
        try (Communicator sub = c.split(me % 2, -me, "parity")) {
            eqL(c, check, "sub-group size", expectedSize, sub.size());
            eqL(c, check, "sub-group rank", expectedRank, sub.rank());
            int[] members = new int[sub.size()];
            sub.allGather(new int[] {me}, 0, 1, members, 0);
            for (int i = 0; i < members.length; i++) {
                // Descending old ranks of my parity.
                int expected = (n - 1) - i * 2 - ((n - 1) % 2 == me % 2 ? 0 : 1);
                eqL(c, check, "old rank of sub-group member " + i, expected, members[i]);
            }
            float[] v = {me};
            sub.allReduceSum(v, 0, 1);
            eqF(c, check, "sum of old ranks in the sub-group", expectedSum, v[0]);
            allToAllFloat(sub, 1);
        }
    }

    private static void splitPairsAndNested(Communicator c) {
        String check = "split(color = rank / 2, key = 0) then nested split";
        int n = c.size();
        int me = c.rank();
        int pairSize = Math.min(2, n - 2 * (me / 2));
        try (Communicator pair = c.split(me / 2, 0, "pair")) {
            eqL(c, check, "pair size", pairSize, pair.size());
            eqL(c, check, "pair rank", me % 2, pair.rank());
            float[] b = {pair.rank() == 0 ? me + 0.5f : -1};
            pair.broadcast(b, 0, 1, 0);
            eqF(c, check, "value broadcast from the pair's rank 0", (me / 2) * 2 + 0.5f, b[0]);
            try (Communicator rev = pair.split(7, -pair.rank(), "pair-reversed")) {
                eqL(c, check, "nested size", pairSize, rev.size());
                eqL(c, check, "nested rank", pairSize - 1 - pair.rank(), rev.rank());
                int[] members = new int[rev.size()];
                rev.allGather(new int[] {me}, 0, 1, members, 0);
                for (int i = 0; i < members.length; i++) {
                    eqL(c, check, "old rank of nested member " + i, (me / 2) * 2 + (pairSize - 1 - i), members[i]);
                }
            }
            pair.barrier();
        }
        try (Communicator all = c.split(0, 0, "everyone")) {
            eqL(c, check, "split with one color: size", n, all.size());
            eqL(c, check, "split with one color: rank", me, all.rank());
            allReduceFloatExact(all);
        }
    }
}
