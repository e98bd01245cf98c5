package dev.sparkmoe.parallel.fsdp;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.Pending;
import dev.sparkmoe.parallel.dtensor.DTensor;

/**
 * How one tensor is split along one dimension over a group, with torch.chunk semantics (chunk = ceil(n / world);
 * the last shards may be smaller or empty), and the collectives that move between the full tensor and the shards.
 * Shards are padded to the chunk size on the wire, as FSDP2 does, so every collective has equal-sized pieces.
 */
public final class ShardLayout {
    private final int[] fullShape;
    private final int dim;
    private final int world;
    private final int outer;
    private final int inner;
    private final int chunk;

    public ShardLayout(int[] fullShape, int dim, int world) {
        if (dim < 0 || dim >= fullShape.length) {
            throw new IllegalArgumentException("cannot shard a tensor of rank " + fullShape.length + " on dim " + dim);
        }
        this.fullShape = fullShape.clone();
        this.dim = dim;
        this.world = world;
        int o = 1;
        for (int i = 0; i < dim; i++) {
            o *= fullShape[i];
        }
        int in = 1;
        for (int i = dim + 1; i < fullShape.length; i++) {
            in *= fullShape[i];
        }
        this.outer = o;
        this.inner = in;
        this.chunk = (fullShape[dim] + world - 1) / world;
    }

    public int dim() {
        return dim;
    }

    /** The shape of the whole tensor. */
    public int[] fullShape() {
        return fullShape.clone();
    }

    /** Number of ranks the tensor is split over. */
    public int world() {
        return world;
    }

    /** [begin, end) of rank r's rows along the sharded dim. */
    public int[] range(int r) {
        return DTensor.chunkRange(fullShape[dim], world, r);
    }

    public int[] shardShape(int r) {
        int[] s = fullShape.clone();
        int[] rg = range(r);
        s[dim] = rg[1] - rg[0];
        return s;
    }

    /** Rank r's shard of a full tensor (a copy on the same backend). */
    public Tensor slice(Backend be, Tensor full, int r) {
        int[] rg = range(r);
        int rows = rg[1] - rg[0];
        Tensor out = be.empty(DType.F32, shardShape(r));
        be.copyRows(full, rg[0] * inner, fullShape[dim] * inner, out, 0, rows * inner, outer, rows * inner);
        return out;
    }

    /**
     * True when every rank's shard is a whole chunk and the shards are contiguous slices of the full tensor (dim 0,
     * or nothing before the sharded dim): then the collectives need no padding and no copies, because the wire
     * layout is the full tensor's own.
     */
    public boolean contiguousEven() {
        return outer == 1 && (long) chunk * world == fullShape[dim];
    }

    /**
     * The all-gather of a {@link #contiguousEven()} layout from {@code shard} into {@code full} (the full shape), as
     * one part of a started group ({@link Communicator#allGatherStart(java.util.List)}).
     */
    public Communicator.Part gatherPart(Tensor shard, Tensor full) {
        requireContiguousEven("gatherPart");
        return new Communicator.Part(shard, 0, full, 0, chunk * inner);
    }

    /**
     * The reduce-scatter (sum) of a {@link #contiguousEven()} layout from {@code full} into {@code shard}, as one
     * part of a started group ({@link Communicator#reduceScatterSumStart(java.util.List)}).
     */
    public Communicator.Part reducePart(Tensor full, Tensor shard) {
        requireContiguousEven("reducePart");
        return new Communicator.Part(full, 0, shard, 0, chunk * inner);
    }

    private void requireContiguousEven(String what) {
        if (!contiguousEven()) {
            throw new IllegalStateException(what + " needs even contiguous shards; " + java.util.Arrays.toString(
                    fullShape) + " on dim " + dim + " over " + world + " ranks is not: use the blocking form");
        }
    }

    /**
     * Collective over {@code group}: every rank's shard to the full tensor on every rank, in F32 (the wire and the full
     * tensor are f32, as every gathered weight travels: a narrower shard, a bf16 compute copy or gradient, is widened
     * first, exactly).
     */
    public Tensor allGather(Backend be, Communicator group, Tensor shard) {
        if (shard.dtype() != DType.F32) {
            Tensor wide = be.empty(DType.F32, shard.shape());
            be.convert(shard, wide);
            try {
                return allGather(be, group, wide);
            } finally {
                be.release(wide);
            }
        }
        Tensor full = be.empty(DType.F32, fullShape);
        int piece = outer * chunk * inner;
        if (contiguousEven()) {
            group.allGather(shard, 0, piece, full, 0);
            return full;
        }
        int myRows = rows(group.rank());
        Tensor send = shard;
        if (myRows != chunk) { // pad to the chunk on the wire
            send = be.zeros(DType.F32, piece);
            be.copyRows(shard, 0, myRows * inner, send, 0, chunk * inner, outer, myRows * inner);
        }
        Tensor recv = be.empty(DType.F32, piece * world);
        group.allGather(send, 0, piece, recv, 0);
        if (send != shard) {
            be.release(send);
        }
        int n = fullShape[dim];
        for (int r = 0; r < world; r++) {
            int[] rg = range(r);
            be.copyRows(recv, r * piece, chunk * inner, full, rg[0] * inner, n * inner, outer, rows(r) * inner);
        }
        be.release(recv);
        return full;
    }

    /**
     * Collective over {@code group}: sums the full tensors of all ranks and returns this rank's shard of the sum,
     * multiplied by {@code scale}.
     */
    public Tensor reduceScatter(Backend be, Communicator group, Tensor full, float scale) {
        int piece = outer * chunk * inner;
        int me = group.rank();
        Tensor shard = be.empty(DType.F32, shardShape(me));
        if (contiguousEven()) {
            group.reduceScatterSum(full, 0, shard, 0, piece);
        } else {
            Tensor send = be.zeros(DType.F32, piece * world); // the padding must be zero: it is summed
            int n = fullShape[dim];
            for (int r = 0; r < world; r++) {
                int[] rg = range(r);
                be.copyRows(full, rg[0] * inner, n * inner, send, r * piece, chunk * inner, outer, rows(r) * inner);
            }
            Tensor recv = be.empty(DType.F32, piece);
            group.reduceScatterSum(send, 0, recv, 0, piece);
            be.release(send);
            int myRows = rows(me);
            be.copyRows(recv, 0, chunk * inner, shard, 0, myRows * inner, outer, myRows * inner);
            be.release(recv);
        }
        if (scale != 1f) {
            be.scale(shard, scale);
        }
        return shard;
    }

    private int rows(int r) {
        int[] rg = range(r);
        return rg[1] - rg[0];
    }
}
