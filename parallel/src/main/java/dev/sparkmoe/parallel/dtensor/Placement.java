package dev.sparkmoe.parallel.dtensor;

/**
 * How a {@link DTensor} is laid over one mesh dimension, as PyTorch DTensor's placements: {@link Shard} splits one
 * tensor dimension into {@code torch.chunk} pieces (chunk size ceil(n / size); the last pieces may be smaller or
 * empty), {@link Replicate} holds the whole tensor on every member, {@link Partial} holds addends whose sum over the
 * members is the value.
 */
public sealed interface Placement permits Placement.Shard, Placement.Replicate, Placement.Partial {

    /** Split tensor dimension {@code dim} across the members, in member rank order. */
    record Shard(int dim) implements Placement {
        public Shard {
            if (dim < 0) {
                throw new IllegalArgumentException("Shard dim must be >= 0, got " + dim);
            }
        }

        @Override
        public String toString() {
            return "Shard(" + dim + ")";
        }
    }

    /** The whole tensor on every member. */
    record Replicate() implements Placement {
        @Override
        public String toString() {
            return "Replicate()";
        }
    }

    /** Pending sum: the value is the sum of the members' local tensors. */
    record Partial() implements Placement {
        @Override
        public String toString() {
            return "Partial(sum)";
        }
    }

    static Shard shard(int dim) {
        return new Shard(dim);
    }

    static Replicate replicate() {
        return new Replicate();
    }

    static Partial partial() {
        return new Partial();
    }
}
