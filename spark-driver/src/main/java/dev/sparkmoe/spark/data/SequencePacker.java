package dev.sparkmoe.spark.data;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.SplittableRandom;

/**
 * Turns one rank's documents (in their fixed order) into training sequences of {@code seqLen + 1} ids, and orders
 * them deterministically from the seed.
 *
 * <p>concat: the documents are joined, each followed by {@code eosId}, and the stream is cut into consecutive
 * non-overlapping windows of {@code seqLen + 1}; the tail shorter than a window is dropped. Worked example with
 * seqLen = 3, eos = 9: docs [1,2], [3,4,5], [6] give the stream 1 2 9 3 4 5 9 6 9 and the sequences [1,2,9,3] and
 * [4,5,9,6]; the tail [9] is dropped.
 *
 * <p>none: each document is one sequence, truncated to {@code seqLen + 1}; shorter documents are an error found by
 * validation before training.
 */
public final class SequencePacker implements Serializable {
    private static final long serialVersionUID = 1L;

    private final int seqLen;
    private final int eosId;
    private final boolean concat;

    public SequencePacker(int seqLen, int eosId, boolean concat) {
        this.seqLen = seqLen;
        this.eosId = eosId;
        this.concat = concat;
    }

    public int window() {
        return seqLen + 1;
    }

    /** Number of sequences {@link #pack} makes from documents holding {@code docs} documents and {@code tokens} ids. */
    public long countSequences(long docs, long tokens, long docsLongEnough) {
        return concat ? (tokens + docs) / window() : docsLongEnough;
    }

    public List<int[]> pack(Iterator<int[]> docs) {
        List<int[]> out = new ArrayList<>();
        int w = window();
        if (!concat) {
            while (docs.hasNext()) {
                int[] d = docs.next();
                if (d.length >= w) {
                    out.add(java.util.Arrays.copyOf(d, w));
                }
            }
            return out;
        }
        int[] cur = new int[w];
        int fill = 0;
        while (docs.hasNext()) {
            int[] d = docs.next();
            for (int k = 0; k <= d.length; k++) {
                cur[fill++] = k < d.length ? d[k] : eosId;
                if (fill == w) {
                    out.add(cur);
                    cur = new int[w];
                    fill = 0;
                }
            }
        }
        return out;
    }

    /** A permutation of [0, n) fixed by (seed, rank): Fisher-Yates driven by a SplittableRandom. */
    public static int[] order(int n, long seed, int rank, boolean shuffle) {
        int[] p = new int[n];
        for (int i = 0; i < n; i++) {
            p[i] = i;
        }
        if (shuffle) {
            SplittableRandom rnd = new SplittableRandom(seed * 0x9E3779B97F4A7C15L + 0x632BE59BD9B4E019L * (rank + 1));
            for (int i = n - 1; i > 0; i--) {
                int j = rnd.nextInt(i + 1);
                int t = p[i];
                p[i] = p[j];
                p[j] = t;
            }
        }
        return p;
    }
}
