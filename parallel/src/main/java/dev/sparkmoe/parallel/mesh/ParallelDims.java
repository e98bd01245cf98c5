package dev.sparkmoe.parallel.mesh;

import java.util.ArrayList;
import java.util.List;

/**
 * The parallelism degrees of a training job, validated up front (torchtitan {@code parallel_dims.py}).
 *
 * <p>Every rank is one FSDP shard ({@code dpShard == worldSize}); expert parallelism borrows its ranks from the
 * dp_shard dimension: {@code ep} consecutive ranks form one expert-parallel group, and FSDP of the experts runs over
 * the remaining {@code dpShard / ep} ("dp_shard_mod_ep"). Errors quote every degree and the world size and give a
 * hint.
 *
 * @param dpShard   FSDP degree over all parameters (the whole world)
 * @param ep        expert-parallel degree, dividing dpShard
 * @param worldSize number of ranks
 */
public record ParallelDims(int dpShard, int ep, int worldSize) {

    public ParallelDims {
        String degrees = "(dp_shard=" + dpShard + ", ep=" + ep + ", world_size=" + worldSize + ")";
        if (worldSize < 1) {
            throw new IllegalArgumentException("world size (" + worldSize + ") must be >= 1 " + degrees);
        }
        if (dpShard < 1) {
            throw new IllegalArgumentException("dp_shard (" + dpShard + ") must be >= 1 " + degrees
                    + "; use ParallelDims.infer(ep, worldSize) to take dp_shard = world size");
        }
        if (ep < 1) {
            throw new IllegalArgumentException("ep (" + ep + ") must be >= 1 " + degrees + "; ep = 1 disables expert"
                    + " parallelism");
        }
        if (dpShard != worldSize) {
            throw new IllegalArgumentException("dp_shard (" + dpShard + ") must equal world size (" + worldSize + ") "
                    + degrees + "; no other parallelism (tp, pp, cp, dp_replicate) is supported, so every rank is one"
                    + " FSDP shard: set dp_shard = " + worldSize + " or run " + dpShard + " ranks");
        }
        if (dpShard % ep != 0) {
            throw new IllegalArgumentException("ep (" + ep + ") must divide dp_shard (" + dpShard + ") " + degrees
                    + "; choose ep in " + divisors(dpShard));
        }
    }

    /** dp_shard = worldSize, the usual choice. */
    public static ParallelDims infer(int ep, int worldSize) {
        return new ParallelDims(worldSize, ep, worldSize);
    }

    /** Checks the degrees against the model: ep must divide the number of routed experts. Returns this. */
    public ParallelDims validateFor(int numExperts) {
        if (numExperts < 1) {
            throw new IllegalArgumentException("num_experts (" + numExperts + ") must be >= 1");
        }
        if (numExperts % ep != 0) {
            List<Integer> ok = new ArrayList<>();
            for (int d : divisors(numExperts)) {
                if (dpShard % d == 0) {
                    ok.add(d);
                }
            }
            throw new IllegalArgumentException("ep (" + ep + ") must divide num_experts (" + numExperts + ") (dp_shard="
                    + dpShard + ", ep=" + ep + ", world_size=" + worldSize + "); choose ep in " + ok
                    + " (the divisors of both num_experts (" + numExperts + ") and dp_shard (" + dpShard + "))");
        }
        return this;
    }

    /** Size of the FSDP dimension of the experts: {@code dpShard / ep}. */
    public int dpShardModEp() {
        return dpShard / ep;
    }

    /** Size of the expert-parallel dimension carved out of dp_shard: {@code ep}. */
    public int dpShardInEp() {
        return ep;
    }

    public boolean epEnabled() {
        return ep > 1;
    }

    public boolean fsdpEnabled() {
        return dpShard > 1;
    }

    static List<Integer> divisors(int n) {
        List<Integer> d = new ArrayList<>();
        for (int k = 1; k <= n; k++) {
            if (n % k == 0) {
                d.add(k);
            }
        }
        return d;
    }
}
