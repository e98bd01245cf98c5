package dev.sparkmoe.parallel.checkpoint;

import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.io.SafeTensors;
import dev.sparkmoe.core.io.SafeTensorsFile;
import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.optim.AdamW;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A sharded save of model and optimizer state that loads at any layout (resharding), in the spirit of torch
 * distributed checkpointing: every rank writes its own shards to {@code rank-RRRRR.safetensors}, each tensor tagged
 * with the region of the full tensor it covers; rank 0 writes {@code manifest.json} last, after every rank has
 * finished, so a directory without a manifest is incomplete. Loading reads the regions of all files and lets each
 * rank cut out what its own layout owns.
 */
public final class ShardedCheckpoint {
    public static final String MANIFEST = "manifest.json";
    private static final String[] KINDS = {"param/", "exp_avg/", "exp_avg_sq/"};

    private ShardedCheckpoint() {
    }

    /** Collective. Writes this rank's shards, then (rank 0, after a barrier) the manifest. */
    public static void save(Path dir, DistributedTrainer trainer) throws IOException {
        Communicator world = trainer.world();
        Files.createDirectories(dir);
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        Map<String, Object> regions = new LinkedHashMap<>();
        for (FsdpParam p : trainer.shardedParameters()) {
            String name = p.parameter().name();
            AdamW.State st = trainer.optimizerState().get(p);
            Tensor[] values = {p.shard(), st.m, st.v};
            Map<String, Object> region = new LinkedHashMap<>();
            region.put("global_shape", toList(trainer.globalShape(p)));
            List<Object> dims = new ArrayList<>();
            for (int[] r : trainer.shardRegion(p)) {
                dims.add(toList(r));
            }
            region.put("region", dims);
            for (int k = 0; k < KINDS.length; k++) {
                tensors.put(KINDS[k] + name, values[k]);
                regions.put(KINDS[k] + name, region);
            }
        }
        Map<String, String> meta = new LinkedHashMap<>();
        meta.put("format", "spark-moe-sharded");
        meta.put("regions", Json.write(regions, false));
        SafeTensors.write(dir.resolve(String.format("rank-%05d.safetensors", world.rank())), tensors, meta);
        world.barrier();
        if (world.rank() == 0) {
            Map<String, Object> manifest = new LinkedHashMap<>();
            manifest.put("world_size", (long) world.size());
            manifest.put("dp_shard", (long) trainer.dims().dpShard());
            manifest.put("ep", (long) trainer.dims().ep());
            manifest.put("steps", trainer.stepsTaken());
            manifest.put("config", Json.parse(trainer.hfConfigJson()));
            HfCheckpoint.writeStringAtomically(dir.resolve(MANIFEST), Json.write(manifest, true));
        }
        world.barrier();
    }

    /** Collective. Restores parameters, optimizer moments and the step count at this trainer's own layout. */
    public static void load(Path dir, DistributedTrainer trainer) throws IOException {
        Path manifestFile = dir.resolve(MANIFEST);
        if (!Files.exists(manifestFile)) {
            throw new IOException("checkpoint " + dir + " has no " + MANIFEST + ": it is incomplete (a save that "
                    + "did not finish) or not a spark-moe sharded checkpoint");
        }
        Map<String, Object> manifest = Json.parseObject(Files.readString(manifestFile));
        int savedWorld = Json.getInt(manifest, "world_size", -1);
        if (savedWorld < 1) {
            throw new IOException(manifestFile + ": world_size missing or invalid (" + savedWorld + ")");
        }
        Map<String, Tensor> full = new LinkedHashMap<>();
        for (int r = 0; r < savedWorld; r++) {
            Path f = dir.resolve(String.format("rank-%05d.safetensors", r));
            if (!Files.exists(f)) {
                throw new IOException("checkpoint " + dir + " lists " + savedWorld + " ranks but " + f.getFileName()
                        + " is missing");
            }
            SafeTensorsFile file = SafeTensors.read(f);
            Map<String, Object> regions = Json.parseObject(file.metadata().get("regions"));
            for (Map.Entry<String, Tensor> e : file.tensors().entrySet()) {
                @SuppressWarnings("unchecked")
                Map<String, Object> reg = (Map<String, Object>) regions.get(e.getKey());
                if (reg == null) {
                    throw new IOException(f + ": tensor " + e.getKey() + " has no region in the metadata");
                }
                int[] shape = toInts(reg.get("global_shape"));
                int[][] region = toRegion(reg.get("region"));
                Tensor dst = full.computeIfAbsent(e.getKey(), k -> Tensor.zeros(DType.F32, shape));
                copyBlock(e.getValue(), region, dst);
            }
        }
        Map<String, Tensor> state = new LinkedHashMap<>();
        for (FsdpParam p : trainer.shardedParameters()) {
            String name = p.parameter().name();
            int[][] mine = trainer.shardRegion(p);
            for (String kind : KINDS) {
                Tensor src = full.get(kind + name);
                if (src == null) {
                    throw new IOException("checkpoint " + dir + " has no " + kind + name);
                }
                if (!java.util.Arrays.equals(src.shape(), trainer.globalShape(p))) {
                    throw new IOException("checkpoint " + dir + ": " + kind + name + " has shape "
                            + java.util.Arrays.toString(src.shape()) + ", the model expects "
                            + java.util.Arrays.toString(trainer.globalShape(p)));
                }
                state.put(kind + name, extractBlock(src, mine));
            }
        }
        state.put("trainer/steps", Tensor.ofLongs(new long[] {Json.getLong(manifest, "steps", 0)}, 1));
        trainer.loadState(state);
    }

    private static List<Object> toList(int[] a) {
        List<Object> out = new ArrayList<>();
        for (int v : a) {
            out.add((long) v);
        }
        return out;
    }

    private static int[] toInts(Object o) {
        List<?> l = (List<?>) o;
        int[] out = new int[l.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = ((Number) l.get(i)).intValue();
        }
        return out;
    }

    private static int[][] toRegion(Object o) {
        List<?> l = (List<?>) o;
        int[][] out = new int[l.size()][];
        for (int i = 0; i < out.length; i++) {
            out[i] = toInts(l.get(i));
        }
        return out;
    }

    /** Visits the rows (last-dim runs) of a block of {@code full}: (offset in the block, offset in full, length). */
    private interface RunVisitor {
        void run(int blockOff, int fullOff, int len);
    }

    private static void forEachRun(int[] fullShape, int[][] region, RunVisitor v) {
        int rank = fullShape.length;
        int[] stride = new int[rank];
        int s = 1;
        for (int d = rank - 1; d >= 0; d--) {
            stride[d] = s;
            s *= fullShape[d];
        }
        int[] extent = new int[rank];
        int runs = 1;
        for (int d = 0; d < rank; d++) {
            extent[d] = region[d][1] - region[d][0];
            if (d < rank - 1) {
                runs *= extent[d];
            }
        }
        int len = rank == 0 ? 1 : extent[rank - 1];
        if (len == 0 || runs == 0) {
            return;
        }
        int[] idx = new int[rank];
        for (int r = 0; r < runs; r++) {
            int rem = r;
            int fullOff = 0;
            for (int d = rank - 2; d >= 0; d--) {
                idx[d] = rem % extent[d];
                rem /= extent[d];
            }
            for (int d = 0; d < rank - 1; d++) {
                fullOff += (region[d][0] + idx[d]) * stride[d];
            }
            fullOff += rank == 0 ? 0 : region[rank - 1][0];
            v.run(r * len, fullOff, len);
        }
    }

    static void copyBlock(Tensor block, int[][] region, Tensor full) {
        float[] b = block.floats();
        float[] f = full.floats();
        forEachRun(full.shape(), region, (bo, fo, len) -> System.arraycopy(b, bo, f, fo, len));
    }

    static Tensor extractBlock(Tensor full, int[][] region) {
        int[] shape = new int[region.length];
        for (int d = 0; d < region.length; d++) {
            shape[d] = region[d][1] - region[d][0];
        }
        Tensor out = Tensor.zeros(DType.F32, shape);
        float[] o = out.floats();
        float[] f = full.floats();
        forEachRun(full.shape(), region, (bo, fo, len) -> System.arraycopy(f, fo, o, bo, len));
        return out;
    }
}
