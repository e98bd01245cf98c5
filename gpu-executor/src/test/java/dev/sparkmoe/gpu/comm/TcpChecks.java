package dev.sparkmoe.gpu.comm;

import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.CommunicatorConformance;
import java.nio.ByteBuffer;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import java.util.HexFormat;

/**
 * Conformance checks for any {@link Communicator}: every member calls {@link #runAll(Communicator)} concurrently.
 * Inputs are deterministic functions of (rank, index); expected results are recomputed locally with the documented
 * summation order (rank 0..n-1) and compared bit for bit. Returns a digest of every result, so two runs (e.g. with
 * and without strangers knocking) can be compared.
 */
public final class TcpChecks {

    private TcpChecks() {
    }

    /**
     * Runs the shared {@link CommunicatorConformance} suite, then these extra checks (rank-order bitwise sums on the
     * large all-reduce path, self send/recv, interleaved groups); throws AssertionError on a mismatch; returns a hex
     * digest of the extra checks' results.
     */
    public static String runAll(Communicator c) {
        CommunicatorConformance.runAll(c);
        return runExtra(c);
    }

    /** Only this class's checks. */
    public static String runExtra(Communicator c) {
        Digest d = new Digest();
        int n = c.size();
        int r = c.rank();
        check(r >= 0 && r < n, "rank " + r + " in [0," + n + ")");

        // all-reduce, small (direct) and large (reduce-scatter + all-gather, uneven chunks)
        for (int len : new int[] {0, 1, 37, TcpCollectives.DIRECT_ALL_REDUCE_MAX + 1003}) {
            float[] buf = new float[len + 5];
            for (int i = 0; i < len; i++) {
                buf[i + 3] = fval(r, i);
            }
            c.allReduceSum(buf, 3, len);
            for (int i = 0; i < len; i++) {
                float want = fval(0, i);
                for (int p = 1; p < n; p++) {
                    want += fval(p, i);
                }
                checkBits(want, buf[i + 3], "allReduceSum(float) len " + len + " [" + i + "]");
            }
            check(buf[0] == 0 && buf[len + 4] == 0, "allReduceSum wrote outside [off, off+len)");
            d.floats(buf);

            float[] mx = new float[len];
            for (int i = 0; i < len; i++) {
                mx[i] = fval(r, i);
            }
            c.allReduceMax(mx, 0, len);
            for (int i = 0; i < len; i++) {
                float want = fval(0, i);
                for (int p = 1; p < n; p++) {
                    want = Math.max(want, fval(p, i));
                }
                checkBits(want, mx[i], "allReduceMax [" + i + "]");
            }
            d.floats(mx);

            double[] db = new double[len];
            long[] lb = new long[len];
            for (int i = 0; i < len; i++) {
                db[i] = fval(r, i) * 1.000000001;
                lb[i] = (long) r * 1_000_000_007L + i;
            }
            c.allReduceSum(db, 0, len);
            c.allReduceSum(lb, 0, len);
            for (int i = 0; i < len; i++) {
                double want = fval(0, i) * 1.000000001;
                long lwant = i;
                for (int p = 1; p < n; p++) {
                    want += fval(p, i) * 1.000000001;
                    lwant += (long) p * 1_000_000_007L + i;
                }
                check(Double.doubleToRawLongBits(want) == Double.doubleToRawLongBits(db[i]), "allReduceSum(double) [" + i + "]");
                check(lwant == lb[i], "allReduceSum(long) [" + i + "] want " + lwant + " got " + lb[i]);
            }
            d.doubles(db);
            d.longs(lb);
        }

        // all-gather float and int, with offsets
        int gl = 11;
        float[] gs = new float[gl + 2];
        int[] gi = new int[gl + 2];
        for (int i = 0; i < gl; i++) {
            gs[i + 2] = fval(r, i);
            gi[i + 2] = r * 1000 + i;
        }
        float[] gr = new float[n * gl + 1];
        int[] gir = new int[n * gl + 1];
        c.allGather(gs, 2, gl, gr, 1);
        c.allGather(gi, 2, gl, gir, 1);
        for (int p = 0; p < n; p++) {
            for (int i = 0; i < gl; i++) {
                checkBits(fval(p, i), gr[1 + p * gl + i], "allGather(float) from " + p + " [" + i + "]");
                check(gir[1 + p * gl + i] == p * 1000 + i, "allGather(int) from " + p + " [" + i + "]");
            }
        }
        d.floats(gr);
        d.ints(gir);

        // bytes all-gather with different lengths (including empty)
        byte[] mine = new byte[r * 3];
        Arrays.fill(mine, (byte) (r + 1));
        byte[][] all = c.allGatherBytes(mine);
        check(all.length == n, "allGatherBytes length");
        for (int p = 0; p < n; p++) {
            byte[] want = new byte[p * 3];
            Arrays.fill(want, (byte) (p + 1));
            check(Arrays.equals(want, all[p]), "allGatherBytes from " + p);
            d.bytes(all[p]);
        }

        // reduce-scatter
        int rl = 13;
        float[] rs = new float[n * rl + 4];
        for (int i = 0; i < n * rl; i++) {
            rs[4 + i] = fval(r, i + 7);
        }
        float[] rr = new float[rl + 1];
        c.reduceScatterSum(rs, 4, rr, 1, rl);
        for (int i = 0; i < rl; i++) {
            int gidx = r * rl + i;
            float want = fval(0, gidx + 7);
            for (int p = 1; p < n; p++) {
                want += fval(p, gidx + 7);
            }
            checkBits(want, rr[1 + i], "reduceScatterSum [" + i + "]");
        }
        d.floats(rr);

        // uneven all-to-all, zeros included
        int[] sc = new int[n];
        int[] rc = new int[n];
        int st = 0;
        int rt = 0;
        for (int p = 0; p < n; p++) {
            sc[p] = count(r, p);
            rc[p] = count(p, r);
            st += sc[p];
            rt += rc[p];
        }
        float[] as = new float[st];
        int[] ais = new int[st];
        for (int p = 0, k = 0; p < n; p++) {
            for (int j = 0; j < sc[p]; j++, k++) {
                as[k] = r * 1000 + p * 100 + j + 0.5f;
                ais[k] = r * 1000 + p * 100 + j;
            }
        }
        float[] ar = new float[rt + 3];
        int[] air = new int[rt];
        c.allToAll(as, sc, ar, rc);
        c.allToAll(ais, sc, air, rc);
        for (int p = 0, k = 0; p < n; p++) {
            for (int j = 0; j < rc[p]; j++, k++) {
                checkBits(p * 1000 + r * 100 + j + 0.5f, ar[k], "allToAll(float) from " + p + " [" + j + "]");
                check(air[k] == p * 1000 + r * 100 + j, "allToAll(int) from " + p + " [" + j + "]");
            }
        }
        d.floats(ar);
        d.ints(air);

        // broadcast float and bytes
        int root = n - 1;
        float[] bb = new float[9];
        if (r == root) {
            for (int i = 0; i < 7; i++) {
                bb[i + 1] = fval(root, i);
            }
        }
        c.broadcast(bb, 1, 7, root);
        for (int i = 0; i < 7; i++) {
            checkBits(fval(root, i), bb[i + 1], "broadcast [" + i + "]");
        }
        d.floats(bb);
        byte[] bytesRoot = ("config from rank " + (n > 1 ? 1 : 0)).getBytes(java.nio.charset.StandardCharsets.UTF_8);
        int broot = n > 1 ? 1 : 0;
        byte[] got = c.broadcastBytes(r == broot ? bytesRoot : null, broot);
        check(Arrays.equals(bytesRoot, got), "broadcastBytes");
        d.bytes(got);

        c.barrier();

        // point-to-point: ring, then self
        int next = (r + 1) % n;
        int prev = (r - 1 + n) % n;
        float[] ps = new float[6];
        for (int i = 0; i < 6; i++) {
            ps[i] = fval(r, 100 + i);
        }
        float[] pr = new float[6];
        c.send(ps, 0, 6, next);
        c.recv(pr, 0, 6, prev);
        for (int i = 0; i < 6; i++) {
            checkBits(fval(prev, 100 + i), pr[i], "send/recv from " + prev + " [" + i + "]");
        }
        d.floats(pr);
        float[] selfIn = new float[2];
        c.send(new float[] {1.5f, -2.5f}, 0, 2, r);
        c.recv(selfIn, 0, 2, r);
        check(selfIn[0] == 1.5f && selfIn[1] == -2.5f, "send/recv to self");

        // split: parity colors, keys reverse the order
        try (Communicator sub = c.split(r % 2, -r, "parity")) {
            int subSize = (n - (r % 2) + 1) / 2;
            check(sub.size() == subSize, "split size " + sub.size() + " want " + subSize);
            // members of my color in descending old rank
            int[] mem = new int[subSize];
            for (int i = 0, p = n - 1; p >= 0; p--) {
                if (p % 2 == r % 2) {
                    mem[i++] = p;
                }
            }
            check(mem[sub.rank()] == r, "split rank order by key: sub rank " + sub.rank());
            check("parity".equals(sub.name()), "split name");
            float[] sb = {fval(r, 1), fval(r, 2)};
            sub.allReduceSum(sb, 0, 2);
            for (int i = 0; i < 2; i++) {
                float want = fval(mem[0], i + 1);
                for (int k = 1; k < subSize; k++) {
                    want += fval(mem[k], i + 1);
                }
                checkBits(want, sb[i], "sub-group allReduceSum [" + i + "]");
            }
            d.floats(sb);
            // world and sub-group interleave
            c.barrier();
            int[] sg = new int[subSize];
            sub.allGather(new int[] {r}, 0, 1, sg, 0);
            check(Arrays.equals(sg, mem), "sub-group allGather " + Arrays.toString(sg));
            try (Communicator single = sub.split(sub.rank(), 0, "single")) {
                check(single.size() == 1 && single.rank() == 0, "singleton split");
                float[] one = {3f};
                single.allReduceSum(one, 0, 1);
                check(one[0] == 3f, "singleton allReduce");
            }
        }
        try (Communicator same = c.split(7, 0, "same")) {
            check(same.size() == n && same.rank() == r, "split with one color keeps order");
            long[] x = {r};
            same.allReduceSum(x, 0, 1);
            check(x[0] == (long) n * (n - 1) / 2, "same-color allReduce");
        }
        c.barrier();
        return d.hex();
    }

    static float fval(int rank, int i) {
        // values of mixed magnitude, so that summation order changes the bits
        return (float) (Math.sin(rank * 131.7 + i * 0.37) * Math.pow(10, (i + rank) % 7 - 3));
    }

    static int count(int src, int dst) {
        return (src * 3 + dst * 5) % 7;
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError("conformance check failed: " + what);
        }
    }

    static void checkBits(float want, float got, String what) {
        if (Float.floatToRawIntBits(want) != Float.floatToRawIntBits(got)) {
            throw new AssertionError("conformance check failed: " + what + ": want " + want + " got " + got);
        }
    }

    private static final class Digest {
        private final MessageDigest md;

        Digest() {
            try {
                md = MessageDigest.getInstance("SHA-256");
            } catch (NoSuchAlgorithmException e) {
                throw new IllegalStateException(e);
            }
        }

        void floats(float[] a) {
            ByteBuffer b = ByteBuffer.allocate(a.length * 4);
            b.asFloatBuffer().put(a);
            md.update(b.array());
        }

        void doubles(double[] a) {
            ByteBuffer b = ByteBuffer.allocate(a.length * 8);
            b.asDoubleBuffer().put(a);
            md.update(b.array());
        }

        void longs(long[] a) {
            ByteBuffer b = ByteBuffer.allocate(a.length * 8);
            b.asLongBuffer().put(a);
            md.update(b.array());
        }

        void ints(int[] a) {
            ByteBuffer b = ByteBuffer.allocate(a.length * 4);
            b.asIntBuffer().put(a);
            md.update(b.array());
        }

        void bytes(byte[] a) {
            md.update(ByteBuffer.allocate(4).putInt(a.length).array());
            md.update(a);
        }

        String hex() {
            return HexFormat.of().formatHex(md.digest());
        }
    }
}
