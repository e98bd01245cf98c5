package dev.sparkmoe.parallel.fsdp;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
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

    /** Rank r's shard of a full tensor (a copy). */
    public Tensor slice(Tensor full, int r) {
        int[] rg = range(r);
        int rows = rg[1] - rg[0];
        Tensor out = Tensor.zeros(DType.F32, shardShape(r));
        float[] src = full.floats();
        float[] dst = out.floats();
        int n = fullShape[dim];
        for (int o = 0; o < outer; o++) {
            System.arraycopy(src, (o * n + rg[0]) * inner, dst, o * rows * inner, rows * inner);
        }
        return out;
    }

    /** Collective over {@code group}: every rank's shard to the full tensor on every rank. */
    public Tensor allGather(Communicator group, Tensor shard) {
        int piece = outer * chunk * inner;
        int me = group.rank();
        int[] myRange = range(me);
        int myRows = myRange[1] - myRange[0];
        float[] send = new float[piece];
        float[] sf = shard.floats();
        for (int o = 0; o < outer; o++) {
            System.arraycopy(sf, o * myRows * inner, send, o * chunk * inner, myRows * inner);
        }
        float[] recv = new float[piece * world];
        group.allGather(send, 0, piece, recv, 0);
        Tensor full = Tensor.zeros(DType.F32, fullShape);
        float[] ff = full.floats();
        int n = fullShape[dim];
        for (int r = 0; r < world; r++) {
            int[] rg = range(r);
            int rows = rg[1] - rg[0];
            for (int o = 0; o < outer; o++) {
                System.arraycopy(recv, r * piece + o * chunk * inner, ff, (o * n + rg[0]) * inner, rows * inner);
            }
        }
        return full;
    }

    /**
     * Collective over {@code group}: sums the full tensors of all ranks and returns this rank's shard of the sum,
     * multiplied by {@code scale}.
     */
    public Tensor reduceScatter(Communicator group, Tensor full, float scale) {
        int piece = outer * chunk * inner;
        float[] send = new float[piece * world];
        float[] ff = full.floats();
        int n = fullShape[dim];
        for (int r = 0; r < world; r++) {
            int[] rg = range(r);
            int rows = rg[1] - rg[0];
            for (int o = 0; o < outer; o++) {
                System.arraycopy(ff, (o * n + rg[0]) * inner, send, r * piece + o * chunk * inner, rows * inner);
            }
        }
        float[] recv = new float[piece];
        group.reduceScatterSum(send, 0, recv, 0, piece);
        int me = group.rank();
        Tensor shard = Tensor.zeros(DType.F32, shardShape(me));
        int[] myRange = range(me);
        int myRows = myRange[1] - myRange[0];
        float[] sf = shard.floats();
        for (int o = 0; o < outer; o++) {
            System.arraycopy(recv, o * chunk * inner, sf, o * myRows * inner, myRows * inner);
        }
        if (scale != 1f) {
            for (int i = 0; i < sf.length; i++) {
                sf[i] *= scale;
            }
        }
        return shard;
    }
}
