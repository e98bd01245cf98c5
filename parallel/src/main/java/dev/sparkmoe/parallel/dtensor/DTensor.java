package dev.sparkmoe.parallel.dtensor;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * A distributed f32 tensor, as PyTorch's DTensor: this rank's local tensor, the communicators of the mesh
 * dimensions it is laid on, one {@link Placement} per mesh dimension, and the global shape.
 *
 * <p>Layout: starting from the global shape, the placements apply in list order; {@code Shard(d)} on a mesh
 * dimension of size n, where this rank has local rank r, keeps {@link #chunkRange chunkRange(size_d, n, r)} of tensor
 * dimension d (torch.chunk semantics: chunk size ceil(size_d / n), the last chunks may be smaller or empty). Two
 * mesh dimensions may shard the same tensor dimension (nested, in list order) for {@link #distribute} and
 * {@link #fullTensor}; {@link #redistribute} supports one shard per tensor dimension. The experts' layout is
 * {@code [Shard(0) on ep, Shard(1) on dp_shard_mod_ep]} of an [E, I, H] tensor.
 *
 * <p>The mesh-dimension communicators must be views of one mesh (each member of dimension i's group shares this
 * rank's coordinates on the other dimensions), as {@link DeviceMesh} provides. Instances are immutable: operations
 * return new DTensors and never write into this one's local tensor.
 */
public final class DTensor {

    private final Tensor local;
    private final List<Communicator> meshDims;
    private final List<Placement> placements;
    private final int[] globalShape;

    private DTensor(Tensor local, List<Communicator> meshDims, List<Placement> placements, int[] globalShape) {
        this.local = local;
        this.meshDims = List.copyOf(meshDims);
        this.placements = List.copyOf(placements);
        this.globalShape = globalShape.clone();
    }

    // ---- chunking ----

    /**
     * The [begin, end) range of chunk {@code index} when {@code n} elements are split into {@code world} chunks as
     * torch.chunk does: chunk size ceil(n / world); chunks past the end are empty. E.g. 5 over 4: [0,2) [2,4) [4,5)
     * [5,5).
     */
    public static int[] chunkRange(int n, int world, int index) {
        if (n < 0 || world < 1 || index < 0 || index >= world) {
            throw new IllegalArgumentException("chunkRange(n=" + n + ", world=" + world + ", index=" + index
                    + "): need n >= 0, world >= 1, 0 <= index < world");
        }
        int chunk = ceilDiv(n, world);
        int begin = (int) Math.min((long) index * chunk, n);
        int end = (int) Math.min((long) begin + chunk, n);
        return new int[] {begin, end};
    }

    private static int ceilDiv(int a, int b) {
        return (a + b - 1) / b;
    }

    // ---- construction ----

    /**
     * Lays {@code full} (the same tensor on every rank) out on {@code meshDims}: each rank copies its own part; no
     * communication. A {@code Partial} placement keeps the values on local rank 0 of that mesh dimension and zeros
     * elsewhere.
     */
    public static DTensor distribute(Tensor full, List<Communicator> meshDims, List<Placement> placements) {
        checkArgs(full.shape(), meshDims, placements);
        requireF32(full);
        Tensor cur = full;
        for (int i = 0; i < placements.size(); i++) {
            Placement p = placements.get(i);
            Communicator c = meshDims.get(i);
            if (p instanceof Placement.Shard s) {
                int[] range = chunkRange(cur.dim(s.dim()), c.size(), c.rank());
                cur = narrow(cur, s.dim(), range[0], range[1]);
            } else if (p instanceof Placement.Partial && c.rank() != 0) {
                cur = Tensor.zeros(DType.F32, cur.shape());
            }
        }
        return new DTensor(cur == full ? full.copy() : cur, meshDims, placements, full.shape());
    }

    /** {@link #distribute(Tensor, List, List)} over named views of {@code mesh}. */
    public static DTensor distribute(Tensor full, DeviceMesh mesh, List<String> dims, List<Placement> placements) {
        return distribute(full, communicators(mesh, dims), placements);
    }

    /**
     * Wraps this rank's local part (not copied) of a tensor of {@code globalShape}; its shape must be what the
     * placements give this rank.
     */
    public static DTensor fromLocal(Tensor local, List<Communicator> meshDims, List<Placement> placements,
                                    int[] globalShape) {
        checkArgs(globalShape, meshDims, placements);
        requireF32(local);
        int[] expected = localShape(globalShape, meshDims, placements);
        if (!Arrays.equals(expected, local.shape())) {
            throw new IllegalArgumentException("local tensor has shape " + Arrays.toString(local.shape())
                    + " but placements " + placements + " of global shape " + Arrays.toString(globalShape)
                    + " give this rank " + Arrays.toString(expected) + " (local ranks " + ranksOf(meshDims) + ")");
        }
        return new DTensor(local, meshDims, placements, globalShape);
    }

    private static List<Communicator> communicators(DeviceMesh mesh, List<String> dims) {
        List<Communicator> out = new ArrayList<>();
        for (String d : dims) {
            out.add(mesh.get(d).communicator());
        }
        return out;
    }

    private static void checkArgs(int[] globalShape, List<Communicator> meshDims, List<Placement> placements) {
        if (meshDims.size() != placements.size() || meshDims.isEmpty()) {
            throw new IllegalArgumentException("need one placement per mesh dimension: " + meshDims.size()
                    + " mesh dimensions, placements " + placements);
        }
        for (Placement p : placements) {
            if (p instanceof Placement.Shard s && s.dim() >= globalShape.length) {
                throw new IllegalArgumentException(p + " is out of range for a tensor of shape "
                        + Arrays.toString(globalShape) + " (placements " + placements + ")");
            }
        }
    }

    private static void requireF32(Tensor t) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException("DTensor holds F32 tensors, got " + t.dtype() + "; convert with"
                    + " tensor.to(DType.F32)");
        }
    }

    private static List<Integer> ranksOf(List<Communicator> meshDims) {
        List<Integer> r = new ArrayList<>();
        for (Communicator c : meshDims) {
            r.add(c.rank());
        }
        return r;
    }

    /** Shapes before each placement applies: levels[0] = global, levels[i + 1] = after placement i. */
    private static int[][] levels(int[] globalShape, List<Communicator> meshDims, List<Placement> placements) {
        int[][] lv = new int[placements.size() + 1][];
        lv[0] = globalShape.clone();
        for (int i = 0; i < placements.size(); i++) {
            lv[i + 1] = lv[i].clone();
            if (placements.get(i) instanceof Placement.Shard s) {
                int[] range = chunkRange(lv[i][s.dim()], meshDims.get(i).size(), meshDims.get(i).rank());
                lv[i + 1][s.dim()] = range[1] - range[0];
            }
        }
        return lv;
    }

    /** The local shape the placements give this rank. */
    public static int[] localShape(int[] globalShape, List<Communicator> meshDims, List<Placement> placements) {
        return levels(globalShape, meshDims, placements)[placements.size()];
    }

    // ---- accessors ----

    /** This rank's part (shared, not copied; do not modify). */
    public Tensor local() {
        return local;
    }

    public List<Placement> placements() {
        return placements;
    }

    public List<Communicator> meshDims() {
        return meshDims;
    }

    public int[] globalShape() {
        return globalShape.clone();
    }

    /** Offset of the local part in the global tensor, per tensor dimension (Partial/Replicate add nothing). */
    public int[] localOffset() {
        int[] off = new int[globalShape.length];
        int[] cur = globalShape.clone();
        for (int i = 0; i < placements.size(); i++) {
            if (placements.get(i) instanceof Placement.Shard s) {
                int[] range = chunkRange(cur[s.dim()], meshDims.get(i).size(), meshDims.get(i).rank());
                off[s.dim()] += range[0];
                cur[s.dim()] = range[1] - range[0];
            }
        }
        return off;
    }

    // ---- collectives ----

    /** Collective over all mesh dimensions: the whole tensor on every rank (all-gathers, all-reduces). */
    public Tensor fullTensor() {
        int[][] lv = levels(globalShape, meshDims, placements);
        Tensor cur = local;
        for (int i = placements.size() - 1; i >= 0; i--) {
            Placement p = placements.get(i);
            if (p instanceof Placement.Shard s) {
                cur = gather(cur, s.dim(), lv[i][s.dim()], meshDims.get(i));
            } else if (p instanceof Placement.Partial) {
                cur = allReduce(cur, meshDims.get(i));
            }
        }
        return cur == local ? local.copy() : cur;
    }

    /**
     * Collective: the same tensor with {@code target} placements. Transitions, per mesh dimension in order:
     * Shard -> Replicate (all-gather), Replicate -> Shard (local slice), Shard(d) -> Shard(e) (gather then slice),
     * Partial -> Replicate (all-reduce), Partial -> Shard (reduce-scatter), Replicate -> Partial (values on local rank
     * 0, zeros elsewhere), Shard -> Partial (gather, then as Replicate).
     */
    public DTensor redistribute(List<Placement> target) {
        checkArgs(globalShape, meshDims, target);
        List<Placement> cur = new ArrayList<>(placements);
        Tensor t = local;
        for (int i = 0; i < cur.size(); i++) {
            Placement from = cur.get(i);
            Placement to = target.get(i);
            if (from.equals(to)) {
                continue;
            }
            Communicator c = meshDims.get(i);
            if (from instanceof Placement.Shard s) {
                requireUnnested(cur, i, s.dim(), target);
                t = gather(t, s.dim(), globalShape[s.dim()], c);
                from = new Placement.Replicate();
                cur.set(i, from);
                if (from.equals(to)) {
                    continue;
                }
            }
            if (from instanceof Placement.Replicate) {
                if (to instanceof Placement.Shard s) {
                    requireUnnested(cur, i, s.dim(), target);
                    int[] range = chunkRange(t.dim(s.dim()), c.size(), c.rank());
                    t = narrow(t, s.dim(), range[0], range[1]);
                } else if (to instanceof Placement.Partial) {
                    t = c.rank() == 0 ? t : Tensor.zeros(DType.F32, t.shape());
                }
            } else if (from instanceof Placement.Partial) {
                if (to instanceof Placement.Replicate) {
                    t = allReduce(t, c);
                } else if (to instanceof Placement.Shard s) {
                    requireUnnested(cur, i, s.dim(), target);
                    t = reduceScatter(t, s.dim(), c);
                }
            }
            cur.set(i, to);
        }
        return new DTensor(t == local ? local.copy() : t, meshDims, target, globalShape);
    }

    private void requireUnnested(List<Placement> cur, int i, int dim, List<Placement> target) {
        for (int j = 0; j < cur.size(); j++) {
            if (j != i && new Placement.Shard(dim).equals(cur.get(j))) {
                throw new UnsupportedOperationException("redistribute " + placements + " -> " + target
                        + ": tensor dimension " + dim + " is sharded by mesh dimensions " + i + " and " + j
                        + " (nested sharding); redistribute one of them to Replicate first");
            }
        }
    }

    // ---- tensor helpers ----

    private static int outer(int[] shape, int dim) {
        int n = 1;
        for (int k = 0; k < dim; k++) {
            n *= shape[k];
        }
        return n;
    }

    private static int inner(int[] shape, int dim) {
        int n = 1;
        for (int k = dim + 1; k < shape.length; k++) {
            n *= shape[k];
        }
        return n;
    }

    /** Indices [begin, end) of dimension {@code dim}, copied. */
    static Tensor narrow(Tensor t, int dim, int begin, int end) {
        int[] shape = t.shape();
        int outer = outer(shape, dim);
        int inner = inner(shape, dim);
        int len = end - begin;
        float[] src = t.floats();
        float[] dst = new float[outer * len * inner];
        for (int o = 0; o < outer; o++) {
            System.arraycopy(src, (o * shape[dim] + begin) * inner, dst, o * len * inner, len * inner);
        }
        shape[dim] = len;
        return Tensor.of(dst, shape);
    }

    /** All-gather along {@code dim}: every member holds its torch.chunk piece of a dimension of size {@code full}. */
    private static Tensor gather(Tensor t, int dim, int full, Communicator c) {
        int n = c.size();
        int[] shape = t.shape();
        int outer = outer(shape, dim);
        int inner = inner(shape, dim);
        int chunk = ceilDiv(full, n);
        int[] outShape = shape.clone();
        outShape[dim] = full;
        if (outer == 1 && full == chunk * n) {
            // Even split of the leading dimension: gather straight into the result.
            float[] out = new float[full * inner];
            c.allGather(t.floats(), 0, chunk * inner, out, 0);
            return Tensor.of(out, outShape);
        }
        int mine = shape[dim];
        int slot = outer * chunk * inner;
        float[] padded = new float[slot]; // [outer, chunk, inner], zero padding past this member's rows
        float[] src = t.floats();
        for (int o = 0; o < outer; o++) {
            System.arraycopy(src, o * mine * inner, padded, o * chunk * inner, mine * inner);
        }
        float[] all = new float[n * slot]; // [n, outer, chunk, inner]
        c.allGather(padded, 0, slot, all, 0);
        float[] out = new float[outer * full * inner];
        for (int p = 0; p < n; p++) {
            int[] range = chunkRange(full, n, p);
            int rows = range[1] - range[0];
            for (int o = 0; o < outer; o++) {
                System.arraycopy(all, p * slot + o * chunk * inner, out, (o * full + range[0]) * inner, rows * inner);
            }
        }
        return Tensor.of(out, outShape);
    }

    private static Tensor allReduce(Tensor t, Communicator c) {
        float[] v = t.floats().clone();
        c.allReduceSum(v, 0, v.length);
        return Tensor.of(v, t.shape());
    }

    /** Reduce-scatter along {@code dim}: sums the members' full tensors and keeps this member's torch.chunk piece. */
    private static Tensor reduceScatter(Tensor t, int dim, Communicator c) {
        int n = c.size();
        int[] shape = t.shape();
        int full = shape[dim];
        int outer = outer(shape, dim);
        int inner = inner(shape, dim);
        int chunk = ceilDiv(full, n);
        int[] mine = chunkRange(full, n, c.rank());
        int rows = mine[1] - mine[0];
        int[] outShape = shape.clone();
        outShape[dim] = rows;
        if (outer == 1 && full == chunk * n) {
            float[] out = new float[rows * inner];
            c.reduceScatterSum(t.floats(), 0, out, 0, chunk * inner);
            return Tensor.of(out, outShape);
        }
        int slot = outer * chunk * inner;
        float[] packed = new float[n * slot]; // [n, outer, chunk, inner], zero padding
        float[] src = t.floats();
        for (int p = 0; p < n; p++) {
            int[] range = chunkRange(full, n, p);
            int r = range[1] - range[0];
            for (int o = 0; o < outer; o++) {
                System.arraycopy(src, (o * full + range[0]) * inner, packed, p * slot + o * chunk * inner, r * inner);
            }
        }
        float[] recv = new float[slot];
        c.reduceScatterSum(packed, 0, recv, 0, slot);
        float[] out = new float[outer * rows * inner];
        for (int o = 0; o < outer; o++) {
            System.arraycopy(recv, o * chunk * inner, out, o * rows * inner, rows * inner);
        }
        return Tensor.of(out, outShape);
    }

    @Override
    public String toString() {
        StringBuilder sb = new StringBuilder("DTensor(global ").append(Arrays.toString(globalShape)).append(", local ")
                .append(Arrays.toString(local.shape())).append(", ");
        for (int i = 0; i < placements.size(); i++) {
            sb.append(i == 0 ? "" : ", ").append(placements.get(i)).append(" on '").append(meshDims.get(i).name())
                    .append("'");
        }
        return sb.append(')').toString();
    }
}
