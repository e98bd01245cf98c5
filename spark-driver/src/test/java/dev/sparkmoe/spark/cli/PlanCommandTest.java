package dev.sparkmoe.spark.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.parallel.memory.MemoryPlanner;
import dev.sparkmoe.parallel.memory.PlanRequest;
import dev.sparkmoe.spark.config.ModelPresets;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code spark-moe plan} through {@link Main}: the model from a preset, a config.json, a checkpoint directory or a
 * train config; the options reach the planner; exit 0 when the run fits, 1 when it does not (with what to change),
 * 2 on bad input with the value and the fix.
 */
class PlanCommandTest {
    @TempDir
    Path tmp;

    record Run(int rc, String out, String err) {
    }

    static Run plan(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        String[] all = new String[args.length + 1];
        all[0] = "plan";
        System.arraycopy(args, 0, all, 1, args.length);
        int rc = Main.run(all, new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8));
        return new Run(rc, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    @Test
    void aPresetThatFitsPrintsTheTable() {
        Run r = plan("--model", "qwen3-moe-small", "--world-size", "4", "--ep", "2", "--batch", "8", "--seq", "1024");
        assertEquals(0, r.rc(), r.err());
        assertTrue(r.out().contains("layout: 4 ranks (dp_shard 4, ep 2: 8 experts per rank), 8 x 1024 tokens"),
                r.out());
        assertTrue(r.out().contains("parameters (f32 master shards)"), r.out());
        assertTrue(r.out().contains("step peak"), r.out());
        assertTrue(r.out().contains("fits: "), r.out());
    }

    @Test
    void theOptionsReachThePlannerAndJsonIsOneObject() {
        Run r = plan("--model", "qwen3-moe-small", "--dp-shard", "2", "--batch", "4", "--seq", "512",
                "--grad-accum", "2", "--precision", "f32", "--backend", "cpu", "--gpu-memory", "24GiB", "--reserve",
                "1.5GB", "--activation-checkpointing", "selective", "--loss-chunk", "512", "--construction",
                "sharded", "--json");
        assertEquals(0, r.rc(), r.err());
        Map<String, Object> j = Json.parseObject(r.out());
        assertEquals(2L, j.get("world_size"));
        assertEquals(2L, j.get("grad_accum"));
        assertEquals("f32", j.get("precision"));
        assertEquals("cpu", j.get("backend"));
        assertEquals("selective", j.get("activation_checkpointing"));
        assertEquals(512L, j.get("loss_chunk_tokens"));
        assertEquals("sharded", j.get("construction"));
        assertEquals(24L << 30, j.get("device_memory_bytes"));
        assertEquals(1_500_000_000L, j.get("reserve_bytes"));
        Qwen3MoeConfig small = Qwen3MoeConfig.parse(Json.write(ModelPresets.get("qwen3-moe-small"), false));
        PlanRequest same = PlanRequest.defaults(small).withLayout(2, 1).withBatch(4, 512, 2)
                .withPrecision(PlanRequest.Precision.F32, PlanRequest.Device.CPU).withMemory(24L << 30, 1_500_000_000L)
                .withCheckpointing(PlanRequest.Checkpointing.SELECTIVE).withLossChunk(512)
                .withConstruction(PlanRequest.Construction.SHARDED);
        assertEquals(MemoryPlanner.plan(same).peakBytes(), ((Number) j.get("peak_bytes")).longValue());
    }

    @Test
    void aConfigFileACheckpointDirectoryAndATrainConfigAreModelsToo() throws Exception {
        Path dir = tmp.resolve("ckpt");
        Files.createDirectories(dir);
        Map<String, Object> cfg = ModelPresets.get("qwen3-moe-tiny");
        cfg.put("num_hidden_layers", 3);
        Files.writeString(dir.resolve("config.json"), Json.write(cfg, true));
        Run byFile = plan("--model", dir.resolve("config.json").toString(), "--json");
        Run byDir = plan("--model", dir.toString(), "--json");
        assertEquals(0, byFile.rc(), byFile.err());
        assertEquals(byFile.out(), byDir.out());
        Path yaml = tmp.resolve("run.yaml");
        Files.writeString(yaml, String.join("\n",
                "model: {hf_dir: '" + dir + "'}",
                "layout: {world_size: 4, ep: 2}",
                "training: {batch_sequences: 6, seq_len: 128, grad_accum: 3, precision: f32}",
                "output: {dir: '" + tmp.resolve("out").toUri() + "'}", ""));
        Run byYaml = plan("--config", yaml.toString(), "--set", "training.seq_len=256", "--json");
        assertEquals(0, byYaml.rc(), byYaml.err());
        Map<String, Object> j = Json.parseObject(byYaml.out());
        assertEquals(4L, j.get("world_size"));
        assertEquals(2L, j.get("ep"));
        assertEquals(6L, j.get("batch"));
        assertEquals(256L, j.get("seq_len"));
        assertEquals(3L, j.get("grad_accum"));
        assertEquals("f32", j.get("precision"));
        Run overridden = plan("--config", yaml.toString(), "--batch", "3", "--grad-accum", "1", "--json");
        assertEquals(3L, Json.parseObject(overridden.out()).get("batch"));
    }

    @Test
    void aRunThatDoesNotFitExitsOneAndSaysWhatToChange() {
        Run r = plan("--model", "qwen3-moe-small", "--batch", "16", "--seq", "2048", "--gpu-memory", "12GB");
        assertEquals(1, r.rc(), r.out() + r.err());
        assertTrue(r.out().contains("DOES NOT FIT"), r.out());
        assertTrue(r.out().contains("what would fit:"), r.out());
        assertTrue(r.out().contains("--grad-accum 2"), r.out());
    }

    @Test
    void badInputIsAUsageErrorNamingTheValue() {
        Run none = plan("--world-size", "2");
        assertEquals(2, none.rc());
        assertTrue(none.err().contains("give the model by --model or a train config by --config"), none.err());
        Run preset = plan("--model", "qwen3-moe-huge");
        assertEquals(2, preset.rc());
        assertTrue(preset.err().contains("'qwen3-moe-huge' is neither a preset (qwen3-moe-tiny, qwen3-moe-small)"),
                preset.err());
        Run size = plan("--model", "qwen3-moe-tiny", "--gpu-memory", "80");
        assertEquals(2, size.rc());
        assertTrue(size.err().contains("--gpu-memory '80' is not a size with a unit, e.g. 80GB"), size.err());
        Run ep = plan("--model", "qwen3-moe-tiny", "--world-size", "4", "--ep", "3");
        assertEquals(2, ep.rc());
        assertTrue(ep.err().contains("ep (3) must divide dp_shard (4)"), ep.err());
        Run number = plan("--model", "qwen3-moe-tiny", "--batch", "two");
        assertEquals(2, number.rc());
        assertTrue(number.err().contains("--batch 'two' is not a whole number"), number.err());
        Run unknown = plan("--model", "qwen3-moe-tiny", "--gpus", "8");
        assertEquals(2, unknown.rc());
        assertTrue(unknown.err().contains("unknown option --gpus"), unknown.err());
        Run help = plan("--help");
        assertEquals(0, help.rc());
        assertTrue(help.out().startsWith("usage: spark-moe plan"), help.out());
    }
}
