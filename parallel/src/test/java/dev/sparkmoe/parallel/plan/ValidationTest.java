package dev.sparkmoe.parallel.plan;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.model.Fixtures;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** Impossible layouts and unknown models fail before any work, with messages that quote the values. */
class ValidationTest {
    static String configJson;

    @BeforeAll
    static void load() throws Exception {
        configJson = Files.readString(Fixtures.tiny().resolve("config.json"));
    }

    static TrainerSpec spec(String cfg, int dp, int ep) {
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-3, 1e-3, 0, 1, "constant", 0.9,
                0.95, 1e-8, 0.0, 0.0, 1);
        return new TrainerSpec(cfg, null, 0, dp, ep, 8, opt, "cpu", -1);
    }

    static String failure(int world, TrainerSpec spec) {
        RuntimeException e = assertThrows(RuntimeException.class, () -> InJvmRanks.run(world, Duration.ofSeconds(10),
                c -> new DistributedTrainer(spec, c, new CpuBackend(), null)));
        return e.getMessage();
    }

    @Test
    void runtimeSettingsBelowOneAreRefusedByName() {
        TrainerSpec ok = spec(configJson, 1, 1);
        IllegalArgumentException p = assertThrows(IllegalArgumentException.class, () -> new TrainerSpec(
                ok.hfConfigJson(), null, 0, 1, 1, 8, ok.optimizer(), "cpu", -1, "f32", 0, 1, "none"));
        assertTrue(p.getMessage().contains("fsdpPrefetch (0) must be at least 1"), p.getMessage());
        IllegalArgumentException b = assertThrows(IllegalArgumentException.class, () -> new TrainerSpec(
                ok.hfConfigJson(), null, 0, 1, 1, 8, ok.optimizer(), "cpu", -1, "f32", 2, 0, "none"));
        assertTrue(b.getMessage().contains("cpuBlasThreads (0) must be at least 1"), b.getMessage());
        TrainerSpec moved = new TrainerSpec(ok.hfConfigJson(), null, 0, 1, 1, 8, ok.optimizer(), "auto", -1, "f32",
                3, 2, "selective").onDevice("cuda", 1);
        assertTrue(moved.fsdpPrefetch() == 3 && moved.cpuBlasThreads() == 2
                && moved.activationCheckpointing().equals("selective"), "onDevice keeps the settings");
    }

    @Test
    void epMustDivideNumExperts() {
        // 6 ranks, ep 3: divides dp_shard but not the fixture's 8 experts
        String m = failure(6, spec(configJson, 6, 3));
        assertTrue(m.contains("ep (3)") && m.contains("num_experts (8)"), m);
    }

    @Test
    void epMustDivideDpShard() {
        String m = failure(4, spec(configJson, 4, 8));
        assertTrue(m.contains("ep (8)") && m.contains("dp_shard (4)"), m);
    }

    @Test
    void worldSizeMustEqualDpShard() {
        String m = failure(2, spec(configJson, 4, 2));
        assertTrue(m.contains("4") && m.contains("world") && m.contains("2"), m);
    }

    @Test
    void unknownModelTypeListsTheSupportedOnes() {
        String m = failure(1, spec(configJson.replace("\"qwen3_moe\"", "\"llama\""), 1, 1));
        assertTrue(m.contains("llama") && m.contains("qwen3_moe"), m);
    }

    @Test
    void planPatternThatMatchesNothingIsAnError() {
        assertTrue(Parallelize.matches("model.layers.*.mlp.experts", "model.layers.12.mlp.experts"));
        assertTrue(!Parallelize.matches("model.layers.*.mlp.experts", "model.layers.1.mlp"));
    }
}
