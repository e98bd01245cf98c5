package dev.sparkmoe.parallel.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.io.HfCheckpointReader;
import dev.sparkmoe.core.io.HfModelWriter;
import dev.sparkmoe.core.io.ModelFormat;
import dev.sparkmoe.core.io.OutputDir;
import dev.sparkmoe.core.model.Fixtures;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.dtensor.DTensor;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import dev.sparkmoe.parallel.tools.StepCommand;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Every rank holds only its shards, from construction through load to save. A model of 12 experts (so that ep = 3
 * and 4 divide them) saved by our writer as bf16 over several files and as f32 in one file, with the same values:
 * at every layout the two give bit-for-bit the same losses and gradients; while they are built, the ranks allocate
 * exactly their shards plus one bounded piece and read exactly the bytes of their shards; the model they export is
 * the checkpoint they read, byte for byte, at any layout.
 */
class ShardedCheckpointsTest {
    static final int SEQ = 8;
    static Qwen3MoeConfig config;
    static Path bf16Sharded;
    static Path f32Single;
    static List<int[]> batch = new ArrayList<>();
    static Result reference;

    @TempDir
    static Path dirs;

    @TempDir
    Path tmp;

    @BeforeAll
    static void setUp() throws Exception {
        config = Qwen3MoeConfig.builder().vocabSize(96).hiddenSize(32).intermediateSize(64).moeIntermediateSize(16)
                .numHiddenLayers(2).numAttentionHeads(4).numKeyValueHeads(2).headDim(8).numExperts(12)
                .numExpertsPerTok(2).maxPositionEmbeddings(32).ropeTheta(10000).rmsNormEps(1e-6).build();
        bf16Sharded = dirs.resolve("bf16-sharded");
        SyntheticCheckpoint.write(bf16Sharded, config, 3,
                new ModelFormat(DType.BF16, SyntheticCheckpoint.maxShardFor(config, DType.BF16, 4)));
        f32Single = dirs.resolve("f32-single");
        SyntheticCheckpoint.write(f32Single, config, 3, new ModelFormat(DType.F32, Long.MAX_VALUE));
        for (int s = 0; s < 8; s++) {
            int[] seq = new int[SEQ + 1];
            for (int t = 0; t <= SEQ; t++) {
                seq[t] = (s * 37 + t * 11 + s * t) % 96;
            }
            batch.add(seq);
        }
        reference = run(f32Single, 1, 1, DistributedTrainer.LOAD_PIECE);
    }

    static TrainerSpec spec(Path dir, int dp, int ep) throws Exception {
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-3, 1e-3, 0, 1, "constant", 0.9,
                0.95, 1e-8, 0.1, 0, 1);
        return new TrainerSpec(Files.readString(dir.resolve("config.json")), dir.toString(), 0, dp, ep, SEQ, opt,
                "cpu", -1);
    }

    /**
     * One layout's numbers, and what each rank allocated and read while its trainer was built: live and peak backend
     * bytes, its shards' bytes, the largest piece it may stage, the checkpoint bytes it read and its shards' bytes in
     * the file's dtype.
     */
    record Result(double lm, double aux, Map<String, Tensor> grads, long[][] memory) {
    }

    static Result run(Path dir, int dp, int ep, int piece) throws Exception {
        TrainerSpec spec = spec(dir, dp, ep);
        int storedBytes = HfCheckpoint.load(dir).values().iterator().next().dtype().byteSize();
        List<Object[]> out = InJvmRanks.run(dp, Duration.ofSeconds(120), c -> {
            Backend be = MemoryTracker.wrap(new CpuBackend());
            try (HfCheckpointReader reader = HfCheckpointReader.open(dir, config.numExperts());
                 DistributedTrainer t = new DistributedTrainer(spec, c, be, reader, piece)) {
                MemoryTracker m = MemoryTracker.of(be);
                long shards = 0;
                long largest = 0;
                for (FsdpParam p : t.shardedParameters()) {
                    shards += 4L * p.shard().numel();
                    largest = Math.max(largest, p.shard().numel());
                }
                long[] memory = {m.liveBytes(), m.peakBytes(), shards, 4L * Math.min(piece, largest),
                    reader.bytesRead(), shards / 4 * storedBytes};
                int[] mine = DTensor.chunkRange(batch.size(), dp, c.rank());
                List<int[]> in = new ArrayList<>();
                List<int[]> tg = new ArrayList<>();
                for (int[] s : batch.subList(mine[0], mine[1])) {
                    in.add(java.util.Arrays.copyOfRange(s, 0, SEQ));
                    tg.add(java.util.Arrays.copyOfRange(s, 1, SEQ + 1));
                }
                DistributedTrainer.Gradients g = t.computeGradients(in, tg, SEQ);
                Map<String, Tensor> grads = new TreeMap<>();
                t.exportGradients("", (name, shape, data, off) -> grads.put(name,
                        Tensor.of(java.util.Arrays.copyOfRange(data, off, off + (int) Tensor.numel(shape)), shape)));
                return new Object[] {g, grads, memory};
            }
        });
        long[][] memory = new long[dp][];
        for (int r = 0; r < dp; r++) {
            memory[r] = (long[]) out.get(r)[2];
        }
        DistributedTrainer.Gradients g = (DistributedTrainer.Gradients) out.get(0)[0];
        @SuppressWarnings("unchecked")
        Map<String, Tensor> grads = (Map<String, Tensor>) out.get(0)[1];
        return new Result(g.lmLoss(), g.auxLoss(), grads, memory);
    }

    @ParameterizedTest(name = "dp_shard={0}, ep={1}")
    @CsvSource({"1,1", "6,3", "8,4", "16,4"})
    void bf16ShardedFilesGiveTheNumbersOfOneF32File(int dp, int ep) throws Exception {
        Result sharded = run(bf16Sharded, dp, ep, DistributedTrainer.LOAD_PIECE);
        Result single = run(f32Single, dp, ep, 100); // pieces of 100 floats: every shard read in many pieces
        assertEquals(Double.doubleToLongBits(single.lm), Double.doubleToLongBits(sharded.lm), "lm loss");
        assertEquals(Double.doubleToLongBits(single.aux), Double.doubleToLongBits(sharded.aux), "aux loss");
        assertEquals(single.grads.keySet(), sharded.grads.keySet());
        for (String k : single.grads.keySet()) {
            assertTrue(single.grads.get(k).bitwiseEquals(sharded.grads.get(k)), "gradient of " + k);
        }
        // and the layout computes what one rank computes
        assertEquals(reference.lm, sharded.lm, 1e-6 * reference.lm, "lm loss against world 1");
        assertEquals(reference.aux, sharded.aux, 1e-6 * reference.aux, "aux loss against world 1");
        for (String k : reference.grads.keySet()) {
            Fixtures.assertClose("gradient of " + k + " against world 1", reference.grads.get(k),
                    sharded.grads.get(k), 1e-5);
        }
    }

    /**
     * Fails if a rank allocates on its backend, or reads from the files, anything but its own shards (and one
     * bounded piece): the full model, a full stacked tensor, or another rank's slice.
     */
    @ParameterizedTest(name = "dp_shard={0}, ep={1}")
    @CsvSource({"1,1", "8,4", "16,4"})
    void ranksAllocateAndReadOnlyTheirShards(int dp, int ep) throws Exception {
        Result r = run(bf16Sharded, dp, ep, 64);
        long total = 0;
        for (int rank = 0; rank < dp; rank++) {
            long[] m = r.memory[rank];
            String who = "rank " + rank + " of (" + dp + ", " + ep + ")";
            assertEquals(3 * m[2], m[0], who + ": live bytes after construction = shards of weights and both moments");
            assertTrue(m[1] - m[0] <= m[3], who + ": peak " + m[1] + " is more than the shards (" + m[0]
                    + ") plus one staged piece (" + m[3] + ")");
            assertEquals(m[5], m[4], who + ": checkpoint bytes read = its shards' bytes in the file");
            total += m[2];
        }
        long params = 0;
        for (Tensor t : HfCheckpoint.load(bf16Sharded).values()) {
            params += t.numel();
        }
        assertEquals(4 * params, total, "the shards of all ranks hold the model once");
    }

    /** A checkpoint that does not fit the config fails with loadState's errors before a rank allocates anything. */
    @Test
    void aMismatchedCheckpointFailsBeforeAnythingIsAllocated() throws Exception {
        Map<String, Tensor> hub = new TreeMap<>(HfCheckpoint.load(bf16Sharded));
        hub.remove("model.layers.1.self_attn.k_norm.weight");
        hub.put("model.layers.0.mlp.gate.weight", Tensor.zeros(DType.BF16, 12, 16));
        Path broken = tmp.resolve("broken");
        HfCheckpoint.save(broken, hub, 100_000);
        Files.copy(bf16Sharded.resolve("config.json"), broken.resolve("config.json"));
        TrainerSpec spec = spec(broken, 4, 2);
        List<Long> allocated = java.util.Collections.synchronizedList(new ArrayList<>());
        IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> InJvmRanks.run(4, Duration.ofSeconds(60), c -> {
                    Backend be = MemoryTracker.wrap(new CpuBackend());
                    try {
                        new DistributedTrainer(spec, c, be).close();
                    } finally {
                        allocated.add(MemoryTracker.of(be).peakBytes());
                    }
                    return null;
                }));
        assertTrue(e.getMessage().contains("weights do not match the model config (2 problems)"), e.getMessage());
        assertTrue(e.getMessage().contains("missing model.layers.1.self_attn.k_norm.weight [8]"), e.getMessage());
        assertTrue(e.getMessage().contains("model.layers.0.mlp.gate.weight: expected shape [12, 32], got [12, 16]"),
                e.getMessage());
        assertEquals(List.of(0L, 0L, 0L, 0L), allocated, "bytes allocated by each rank before the error");
    }

    /** The model a layout exports, streamed into our writer, is the checkpoint it read, byte for byte. */
    @ParameterizedTest(name = "dp_shard={0}, ep={1}")
    @CsvSource({"1,1", "8,4"})
    void theExportedModelIsTheCheckpointItRead(int dp, int ep) throws Exception {
        TrainerSpec spec = spec(bf16Sharded, dp, ep);
        long max = SyntheticCheckpoint.maxShardFor(config, DType.BF16, 4);
        Path out = tmp.resolve("exported");
        InJvmRanks.run(dp, Duration.ofSeconds(120), c -> {
            try (DistributedTrainer t = new DistributedTrainer(spec, c, new CpuBackend())) {
                if (c.rank() != 0) {
                    t.exportModel(null);
                    return null;
                }
                try (HfModelWriter w = new HfModelWriter(OutputDir.local(out), t.modelTensors(),
                        new ModelFormat(DType.BF16, max))) {
                    t.exportModel(w);
                    return w.finish();
                }
            }
        });
        List<String> files;
        try (Stream<Path> s = Files.list(bf16Sharded)) {
            files = s.map(p -> p.getFileName().toString()).filter(n -> !n.equals("config.json")).sorted().toList();
        }
        try (Stream<Path> s = Files.list(out)) {
            assertEquals(files, s.map(p -> p.getFileName().toString()).sorted().toList());
        }
        assertEquals(5, files.size(), files.toString()); // 4 files and the index
        for (String f : files) {
            assertArrayEquals(Files.readAllBytes(bf16Sharded.resolve(f)), Files.readAllBytes(out.resolve(f)), f);
        }
    }

    /** spark-moe step reads slices and streams its outputs: the same file from either checkpoint at (8, 4). */
    @Test
    void stepWritesTheSameOutputsFromEitherCheckpoint() throws Exception {
        SyntheticCheckpoint.writeInputs(tmp.resolve("in.safetensors"), 4, SEQ, 96, 9);
        Map<String, Path> outs = new TreeMap<>();
        for (Object[] c : new Object[][] {{bf16Sharded, 8, 4}, {f32Single, 8, 4}, {f32Single, 1, 1}}) {
            Path o = tmp.resolve("out-" + outs.size() + ".safetensors");
            StepCommand.run(new String[] {"--checkpoint", c[0].toString(), "--inputs",
                tmp.resolve("in.safetensors").toString(), "--out", o.toString(), "--adamw", "lr=0.01",
                "--dp-shard", c[1].toString(), "--ep", c[2].toString()});
            outs.put(outs.size() + "", o);
        }
        assertArrayEquals(Files.readAllBytes(outs.get("1")), Files.readAllBytes(outs.get("0")),
                "bf16 sharded and f32 single at (8, 4)");
        Map<String, Tensor> sharded = dev.sparkmoe.core.io.SafeTensors.read(outs.get("0")).tensors();
        Map<String, Tensor> one = dev.sparkmoe.core.io.SafeTensors.read(outs.get("2")).tensors();
        assertEquals(one.keySet(), sharded.keySet());
        float lm = one.get("lm_loss").floats()[0];
        assertEquals(lm, sharded.get("lm_loss").floats()[0], 1e-6 * lm, "lm loss at (8, 4) against world 1");
        for (String k : one.keySet()) {
            if (k.startsWith("grad.") || k.equals("logits")) {
                Fixtures.assertClose(k, one.get(k), sharded.get(k), 1e-5);
            }
        }
    }
}
