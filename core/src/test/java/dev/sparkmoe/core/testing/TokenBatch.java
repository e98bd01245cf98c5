package dev.sparkmoe.core.testing;

import java.util.SplittableRandom;

/** Token ids and next-token targets for a model step in a test. */
public record TokenBatch(int[] ids, int[] targets) {
    /** {@code n} ids and targets drawn uniformly below {@code vocab}, an id then its target, position by position. */
    public static TokenBatch random(SplittableRandom r, int vocab, int n) {
        int[] ids = new int[n];
        int[] targets = new int[n];
        for (int i = 0; i < n; i++) {
            ids[i] = r.nextInt(vocab);
            targets[i] = r.nextInt(vocab);
        }
        return new TokenBatch(ids, targets);
    }
}
