package dev.sparkmoe.parallel.checkpoint;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.model.Fixtures;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Save a sharded checkpoint at (4,2), load it at (2,1) and (8,4): the gathered state is bitwise equal. */
class ReshardingTest {
    static String configJson;
    static Map<String, Tensor> full;

    @BeforeAll
    static void setUp() throws Exception {
        Path dir = Fixtures.tiny();
        configJson = Files.readString(dir.resolve("config.json"));
        full = HfCheckpoint.loadStacked(dir, Qwen3MoeConfig.parse(configJson).numExperts());
    }

    static TrainerSpec spec(int dp, int ep) {
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-3, 1e-3, 0, 10, "constant", 0.9,
                0.95, 1e-8, 0.1, 1.0, 1);
        return new TrainerSpec(configJson, null, 0, dp, ep, 8, opt, "cpu", -1);
    }

    /** Everything a checkpoint holds, gathered to full tensors: weights and both AdamW moments, plus the step. */
    static Map<String, Tensor> gathered(DistributedTrainer t) {
        Map<String, Tensor> out = new TreeMap<>();
        for (FsdpParam p : t.shardedParameters()) {
            String n = p.parameter().name();
            out.put("param/" + n, t.gatherFull(p, p.shard()));
            out.put("exp_avg/" + n, t.gatherFull(p, t.optimizerState().get(p).m));
            out.put("exp_avg_sq/" + n, t.gatherFull(p, t.optimizerState().get(p).v));
        }
        out.put("steps", Tensor.ofLongs(new long[] {t.stepsTaken()}, 1));
        return out;
    }

    static List<int[]> sequences(int rank, int world) {
        List<int[]> out = new ArrayList<>();
        for (int s = rank; s < 4; s += world) {
            int[] seq = new int[9];
            for (int i = 0; i < 9; i++) {
                seq[i] = (s * 31 + i * 17) % 512;
            }
            out.add(seq);
        }
        return out;
    }

    @Test
    void saveAtFourTwoLoadsAtTwoOneAndEightFour(@TempDir Path tmp) {
        Path ckpt = tmp.resolve("ckpt");
        Map<String, Tensor> saved = InJvmRanks.run(4, Duration.ofSeconds(60), c -> {
            try (DistributedTrainer t = new DistributedTrainer(spec(4, 2), c, new CpuBackend(), full)) {
                t.step(sequences(c.rank(), 4));
                ShardedCheckpoint.save(ckpt, t);
                return gathered(t);
            }
        }).get(0);
        assertTrue(Files.exists(ckpt.resolve(ShardedCheckpoint.MANIFEST)));
        for (int[] layout : new int[][] {{2, 1}, {8, 4}, {4, 2}}) {
            Map<String, Tensor> loaded = InJvmRanks.run(layout[0], Duration.ofSeconds(60), c -> {
                try (DistributedTrainer t = new DistributedTrainer(spec(layout[0], layout[1]), c, new CpuBackend(),
                        null)) {
                    ShardedCheckpoint.load(ckpt, t);
                    return gathered(t);
                }
            }).get(0);
            assertEquals(saved.keySet(), loaded.keySet());
            for (String k : saved.keySet()) {
                assertTrue(saved.get(k).bitwiseEquals(loaded.get(k)),
                        k + " differs after loading at (" + layout[0] + "," + layout[1] + ")");
            }
        }
    }

    @Test
    void incompleteCheckpointIsRefused(@TempDir Path tmp) throws Exception {
        Path ckpt = tmp.resolve("partial");
        Files.createDirectories(ckpt);
        Files.writeString(ckpt.resolve("rank-00000.safetensors"), "not a finished save");
        Exception e = assertThrows(IllegalStateException.class, () -> InJvmRanks.run(1, Duration.ofSeconds(30), c -> {
            try (DistributedTrainer t = new DistributedTrainer(spec(1, 1), c, new CpuBackend(), null)) {
                try {
                    ShardedCheckpoint.load(ckpt, t);
                } catch (java.io.IOException io) {
                    throw new IllegalStateException(io.getMessage(), io);
                }
                return null;
            }
        }));
        assertTrue(e.getMessage().contains("manifest.json"), e.getMessage());
    }
}
