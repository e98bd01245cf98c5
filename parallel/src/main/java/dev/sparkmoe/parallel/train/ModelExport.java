package dev.sparkmoe.parallel.train;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.io.TensorSink;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Region;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import dev.sparkmoe.parallel.fsdp.FullyShard;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Function;

/**
 * A sharded model (or its gradients) streamed to rank 0 one tensor at a time, in Hugging Face Hub naming: each
 * parameter, in the model's declaration order, is gathered whole on rank 0 only (every other rank sends its shard
 * point to point, placed by the region it covers), handed to the sink (a stacked expert weight as its per-expert
 * tensors), and dropped before the next. So no rank holds more than one whole tensor of the model, and the ranks
 * other than 0 none.
 */
final class ModelExport {
    private final DistributedTrainer trainer;
    private final List<FsdpParam> order = new ArrayList<>();
    private int[][][][] regions; // [rank][parameter][dim] {begin, end}: on rank 0, gathered on first use

    ModelExport(DistributedTrainer trainer, FullyShard fsdp) {
        this.trainer = trainer;
        for (Parameter p : trainer.model().parameters()) {
            order.add(fsdp.get(p));
        }
    }

    /** The exported tensors, in order: names prefixed, stacked experts as per-expert tensors, f32. */
    List<TensorSpec> hubTensors(String prefix) {
        List<TensorSpec> out = new ArrayList<>();
        for (FsdpParam p : order) {
            String name = p.parameter().name();
            int[] g = trainer.globalShape(p);
            if (HfCheckpoint.perExpertName(name, 0) != null) {
                for (int e = 0; e < g[0]; e++) {
                    out.add(new TensorSpec(prefix + HfCheckpoint.perExpertName(name, e), DType.F32,
                            new int[] {g[1], g[2]}));
                }
            } else {
                out.add(new TensorSpec(prefix + name, DType.F32, g));
            }
        }
        return out;
    }

    /**
     * Collective over the world. Hands {@code values.apply(p)} (a shard of each parameter: its weight or its
     * gradient) whole to {@code sink} on rank 0, tensor by tensor, as {@link #hubTensors} lists them.
     */
    void export(Function<FsdpParam, Tensor> values, String prefix, TensorSink sink) throws IOException {
        Communicator w = trainer.world();
        if (w.rank() == 0 && sink == null) {
            throw new IllegalArgumentException("rank 0 receives the exported model and needs a sink");
        }
        gatherRegions();
        for (int i = 0; i < order.size(); i++) {
            FsdpParam p = order.get(i);
            float[] full = gatherToRankZero(p, i, values.apply(p));
            if (full == null) {
                continue;
            }
            String name = p.parameter().name();
            int[] g = trainer.globalShape(p);
            if (HfCheckpoint.perExpertName(name, 0) != null) {
                int block = g[1] * g[2];
                for (int e = 0; e < g[0]; e++) {
                    sink.write(prefix + HfCheckpoint.perExpertName(name, e), new int[] {g[1], g[2]}, full, e * block);
                }
            } else {
                sink.write(prefix + name, g, full, 0);
            }
        }
    }

    /** Every rank's shard region of every parameter, on rank 0 (one all-gather of a few bytes per parameter). */
    private void gatherRegions() {
        if (regions != null) {
            return;
        }
        Communicator w = trainer.world();
        int ints = 0;
        for (FsdpParam p : order) {
            ints += 2 * p.parameter().shape().length;
        }
        ByteBuffer mine = ByteBuffer.allocate(4 * ints);
        for (FsdpParam p : order) {
            for (int[] d : trainer.shardRegion(p)) {
                mine.putInt(d[0]).putInt(d[1]);
            }
        }
        byte[][] all = w.allGatherBytes(mine.array());
        int[][][][] r = new int[w.size()][order.size()][][];
        for (int rank = 0; rank < w.size(); rank++) {
            ByteBuffer b = ByteBuffer.wrap(all[rank]);
            for (int i = 0; i < order.size(); i++) {
                int dims = order.get(i).parameter().shape().length;
                r[rank][i] = new int[dims][];
                for (int d = 0; d < dims; d++) {
                    r[rank][i][d] = new int[] {b.getInt(), b.getInt()};
                }
            }
        }
        regions = r;
    }

    /**
     * Collective over the world: the whole value of one sharded tensor on rank 0 (a host array that the caller may
     * read until the next call), null on the other ranks, which send their shards to it.
     */
    private float[] gatherToRankZero(FsdpParam p, int index, Tensor shard) throws IOException {
        Communicator w = trainer.world();
        Backend be = trainer.model().backend();
        float[] mine = be.download(shard).floats(); // on the CPU the shard itself, not a copy
        if (w.size() == 1) {
            return mine;
        }
        if (w.rank() != 0) {
            if (mine.length > 0) {
                w.send(mine, 0, mine.length, 0);
            }
            return null;
        }
        int[] global = trainer.globalShape(p);
        float[] full = new float[(int) Tensor.numel(global)];
        long placed = place(full, new Region(global, regions[0][index]), mine);
        float[] buf = new float[0];
        for (int r = 1; r < w.size(); r++) {
            Region region = new Region(global, regions[r][index]);
            int n = (int) region.numel();
            if (n == 0) {
                continue;
            }
            if (buf.length < n) {
                buf = new float[n];
            }
            w.recv(buf, 0, n, r);
            placed += place(full, region, buf);
        }
        if (placed != full.length) {
            throw new IllegalStateException("the shards of " + p.parameter().name() + " cover " + placed + " of its "
                    + full.length + " elements: the ranks' regions do not tile it");
        }
        return full;
    }

    private static long place(float[] full, Region region, float[] values) throws IOException {
        int n = (int) region.numel();
        region.forEachRun(0, n, (at, pos, len) -> System.arraycopy(values, pos, full, (int) at, len));
        return n;
    }
}
