package dev.sparkmoe.parallel.comm;

import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The TCK must reject a subtly wrong implementation with a precise message. */
class ConformanceCatchesBugsTest {

    /** Delegates everything; its float all-reduce drops the last element's update on rank 1 (a typical off-by-one). */
    private static final class OffByOne implements Communicator {
        private final Communicator d;

        OffByOne(Communicator d) {
            this.d = d;
        }

        public int rank() { return d.rank(); }
        public int size() { return d.size(); }
        public String name() { return d.name(); }
        public void allReduceSum(float[] b, int o, int l) {
            float keep = l > 0 ? b[o + l - 1] : 0;
            d.allReduceSum(b, o, l);
            if (rank() == 1 && l > 0) {
                b[o + l - 1] = keep;
            }
        }
        public void allReduceSum(double[] b, int o, int l) { d.allReduceSum(b, o, l); }
        public void allReduceSum(long[] b, int o, int l) { d.allReduceSum(b, o, l); }
        public void allReduceMax(float[] b, int o, int l) { d.allReduceMax(b, o, l); }
        public void allGather(float[] s, int so, int l, float[] r, int ro) { d.allGather(s, so, l, r, ro); }
        public void allGather(int[] s, int so, int l, int[] r, int ro) { d.allGather(s, so, l, r, ro); }
        public byte[][] allGatherBytes(byte[] m) { return d.allGatherBytes(m); }
        public void reduceScatterSum(float[] s, int so, float[] r, int ro, int l) { d.reduceScatterSum(s, so, r, ro, l); }
        public void allToAll(float[] s, int[] sc, float[] r, int[] rc) { d.allToAll(s, sc, r, rc); }
        public void allToAll(int[] s, int[] sc, int[] r, int[] rc) { d.allToAll(s, sc, r, rc); }
        public void broadcast(float[] b, int o, int l, int root) { d.broadcast(b, o, l, root); }
        public byte[] broadcastBytes(byte[] m, int root) { return d.broadcastBytes(m, root); }
        public void barrier() { d.barrier(); }
        public void send(float[] b, int o, int l, int p) { d.send(b, o, l, p); }
        public void recv(float[] b, int o, int l, int p) { d.recv(b, o, l, p); }
        public Communicator split(int color, int key, String name) { return d.split(color, key, name); }
        public void close() { d.close(); }
    }

    @Test
    void offByOneAllReduceIsReported() {
        List<Ranks.Outcome<Object>> out = Ranks.run(2, Duration.ofSeconds(10), c -> {
            CommunicatorConformance.runAll(new OffByOne(c));
            return null;
        });
        Throwable e = out.get(1).error();
        assertNotNull(e);
        assertInstanceOf(AssertionError.class, e);
        assertTrue(e.getMessage().startsWith("conformance check 'allReduceSum(float) exact' failed on group 'world'"
                + " rank 1 of 2: buf[39] = "), e.getMessage());
    }
}
