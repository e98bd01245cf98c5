package dev.sparkmoe.spark.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.parallel.memory.MemoryPlanner;
import dev.sparkmoe.parallel.memory.PlanRequest;
import dev.sparkmoe.spark.config.ModelPresets;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code spark-moe plan} through {@link Main} (a picocli subcommand like the others): the model from a preset, a
 * config.json, a checkpoint directory or a train config, whose training.activation_checkpointing, training.fsdp_prefetch
 * and training.backend reach the plan as the trainer's spec carries them; the options reach the planner and override
 * the config; exit 0 when the run fits, 1 when it does not (with what to change), 2 on bad input with one
 * {@code error:} line naming the value and the fix; {@code --help} lists the options.
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
                "1.5GB", "--activation-checkpointing", "selective", "--loss-chunk", "128", "--fsdp-prefetch", "1",
                "--json");
        assertEquals(0, r.rc(), r.err());
        Map<String, Object> j = Json.parseObject(r.out());
        assertEquals(2L, j.get("world_size"));
        assertEquals(2L, j.get("grad_accum"));
        assertEquals("f32", j.get("precision"));
        assertEquals("cpu", j.get("backend"));
        assertEquals("selective", j.get("activation_checkpointing"));
        assertEquals(128L, j.get("loss_chunk_rows"));
        assertEquals(1L, j.get("fsdp_prefetch"));
        assertEquals(24L << 30, j.get("device_memory_bytes"));
        assertEquals(1_500_000_000L, j.get("reserve_bytes"));
        Qwen3MoeConfig small = Qwen3MoeConfig.parse(Json.write(ModelPresets.get("qwen3-moe-small"), false));
        PlanRequest same = PlanRequest.defaults(small).withLayout(2, 1).withBatch(4, 512, 2)
                .withPrecision(PlanRequest.Precision.F32, PlanRequest.Device.CPU).withMemory(24L << 30, 1_500_000_000L)
                .withCheckpointing(ActivationCheckpointing.SELECTIVE).withLossChunk(128).withPrefetch(1);
        assertEquals(MemoryPlanner.plan(same).peakBytes(), ((Number) j.get("peak_bytes")).longValue());
        // the rule's chunks (the hidden size, 512 rows) otherwise
        Run rule = plan("--model", "qwen3-moe-small", "--json");
        assertEquals(512L, Json.parseObject(rule.out()).get("loss_chunk_rows"));
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
                "training: {batch_sequences: 6, seq_len: 128, grad_accum: 3, precision: f32, backend: cpu,",
                "           activation_checkpointing: full, fsdp_prefetch: 1}",
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
        assertEquals("cpu", j.get("backend"));
        assertEquals("full", j.get("activation_checkpointing"));
        assertEquals(1L, j.get("fsdp_prefetch"));
        Run overridden = plan("--config", yaml.toString(), "--batch", "3", "--grad-accum", "1", "--ac", "selective",
                "--fsdp-prefetch", "2", "--backend", "cuda", "--json");
        Map<String, Object> o = Json.parseObject(overridden.out());
        assertEquals(3L, o.get("batch"));
        assertEquals("selective", o.get("activation_checkpointing"));
        assertEquals(2L, o.get("fsdp_prefetch"));
        assertEquals("cuda", o.get("backend"));
        Run badKey = plan("--config", yaml.toString(), "--set", "training.activation_checkpointing=some");
        assertEquals(2, badKey.rc());
        assertTrue(lastLine(badKey.err()).startsWith("error: ") && badKey.err().contains("training"
                + ".activation_checkpointing"), badKey.err());
    }

    @Test
    void aRunThatDoesNotFitExitsOneAndSaysWhatToChange() {
        Run r = plan("--model", "qwen3-moe-small", "--batch", "16", "--seq", "2048", "--gpu-memory", "11GB");
        assertEquals(1, r.rc(), r.out() + r.err());
        assertTrue(r.out().contains("DOES NOT FIT"), r.out());
        assertTrue(r.out().contains("what would fit:"), r.out());
        assertTrue(r.out().contains("--grad-accum 2"), r.out());
    }

    @Test
    void badInputIsAUsageErrorNamingTheValue() {
        Run none = plan("--world-size", "2");
        assertUsage(none, "give the model by --model PRESET|CONFIG.json|DIR or a train config by --config");
        Run both = plan("--model", "qwen3-moe-tiny", "--config", "run.yaml");
        assertUsage(both, "(one of them)");
        Run preset = plan("--model", "qwen3-moe-huge");
        assertUsage(preset, "'qwen3-moe-huge' is neither a preset (qwen3-moe-tiny, qwen3-moe-small)");
        Run size = plan("--model", "qwen3-moe-tiny", "--gpu-memory", "80");
        assertUsage(size, "'80' is not a size with a unit, e.g. 80GB");
        Run ep = plan("--model", "qwen3-moe-tiny", "--world-size", "4", "--ep", "3");
        assertUsage(ep, "ep (3) must divide dp_shard (4)");
        Run number = plan("--model", "qwen3-moe-tiny", "--batch", "two");
        assertUsage(number, "--batch");
        assertTrue(number.err().contains("'two'"), number.err());
        Run mode = plan("--model", "qwen3-moe-tiny", "--ac", "some");
        assertUsage(mode, "'some'");
        assertTrue(mode.err().contains("none, full, selective") || mode.err().contains("NONE, FULL, SELECTIVE"),
                mode.err());
        Run prefetch = plan("--model", "qwen3-moe-tiny", "--fsdp-prefetch", "0");
        assertUsage(prefetch, "FSDP prefetch (0) must be >= 1");
        Run set = plan("--model", "qwen3-moe-tiny", "--set", "layout.ep=2");
        assertUsage(set, "--set overrides keys of --config RUN.yaml");
        Run unknown = plan("--model", "qwen3-moe-tiny", "--gpus", "8");
        assertUsage(unknown, "--gpus");
        Run help = plan("--help");
        assertEquals(0, help.rc());
        assertTrue(help.out().startsWith("Usage: spark-moe plan"), help.out());
        for (String option : List.of("--model", "--config", "--set", "--world-size", "--ep", "--batch", "--seq",
            "--grad-accum", "--precision", "--activation-checkpointing", "--fsdp-prefetch", "--loss-chunk",
            "--backend", "--gpu-memory", "--reserve", "--expert-imbalance", "--json")) {
            assertTrue(help.out().contains(option), option + " in\n" + help.out());
        }
        assertTrue(help.out().contains("qwen3-moe-small"), help.out());
        assertEquals(Main.run(new String[] {"help", "plan"}, new PrintStream(new ByteArrayOutputStream()),
                new PrintStream(new ByteArrayOutputStream())), 0);
    }

    /** Exit 2, and the last line of stderr is the one error line, holding {@code text}. */
    private static void assertUsage(Run r, String text) {
        assertEquals(2, r.rc(), r.out() + r.err());
        String last = lastLine(r.err());
        assertTrue(last.startsWith("error: ") && last.contains(text), "expected an error line with '" + text
                + "', got:\n" + r.err());
        assertEquals(1, r.err().lines().filter(l -> l.startsWith("error:")).count(), r.err());
    }

    private static String lastLine(String s) {
        List<String> lines = s.lines().toList();
        return lines.isEmpty() ? "" : lines.get(lines.size() - 1);
    }
}
