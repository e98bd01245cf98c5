package dev.sparkmoe.gpu.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.gpu.launch.Launcher;
import dev.sparkmoe.parallel.memory.MemoryPlanner;
import dev.sparkmoe.parallel.memory.PlanRequest;
import dev.sparkmoe.parallel.tools.Cli;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The training benchmark through the launcher, on CPU ranks (two processes, TCP world, expert parallelism 2, with
 * selective activation checkpointing and the loss in chunks of 16 rows): it trains, and its JSON line carries the
 * baselines' fields, the settings and the per-collective times.
 */
class TrainBenchTest {
    static final String TINY = "{\"vocab_size\": 512, \"hidden_size\": 64, \"intermediate_size\": 128, "
            + "\"moe_intermediate_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
            + "\"num_key_value_heads\": 2, \"head_dim\": 16, \"num_experts\": 8, \"num_experts_per_tok\": 2, "
            + "\"norm_topk_prob\": true, \"max_position_embeddings\": 256}";

    @Test
    void twoCpuRanksReportThroughputAndCollectiveTimes(@TempDir Path tmp) throws Exception {
        Path cfg = tmp.resolve("c.json");
        Files.writeString(cfg, TINY);
        Path out = tmp.resolve("bench.json");
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int code;
        try (PrintStream po = new PrintStream(o, true, StandardCharsets.UTF_8);
             PrintStream pe = new PrintStream(e, true, StandardCharsets.UTF_8)) {
            code = Launcher.run(new String[] {"--nproc", "2", "--backend", "cpu", "--entry", TrainBench.class.getName(),
                "--", "--config", cfg.toString(), "--batch", "2", "--seq", "32", "--steps", "2", "--warmup", "1",
                "--ep", "2", "--fsdp-prefetch", "1", "--ac", "selective", "--loss-chunk", "16", "--out",
                out.toString()}, po, pe);
        }
        String stdout = o.toString(StandardCharsets.UTF_8);
        assertEquals(0, code, () -> stdout + "\n" + e.toString(StandardCharsets.UTF_8));
        Map<String, Object> r = Json.parseObject(Files.readString(out));
        assertEquals("spark-moe", r.get("impl"));
        assertEquals(2L, r.get("world"));
        assertEquals(2L, r.get("ep"));
        assertEquals(1L, r.get("fsdp_prefetch"));
        assertEquals("selective", r.get("ac"));
        assertEquals(16L, r.get("loss_chunk_rows"));
        assertTrue(((Number) r.get("tokens_per_s_per_gpu")).doubleValue() > 0, r.toString());
        assertEquals(189824L, r.get("params")); // the tiny config's parameter count, before sharding
        double loss = ((Number) r.get("loss")).doubleValue();
        assertTrue(loss > 5 && loss < 7, "loss of a random tiny model on random ids is near ln 512: " + loss);
        assertTrue(r.containsKey("planned_peak_gb"), "the memory planner's peak beside peak_mem_gb: " + r);
        // the plan of this run: its --ac, --fsdp-prefetch and --loss-chunk, on the CPU backend
        PlanRequest request = PlanRequest.defaults(Qwen3MoeConfig.parse(TINY)).withLayout(2, 2).withBatch(2, 32, 1)
                .withPrecision(PlanRequest.Precision.BF16, PlanRequest.Device.CPU)
                .withCheckpointing(ActivationCheckpointing.SELECTIVE).withPrefetch(1).withLossChunk(16);
        assertEquals(MemoryPlanner.plan(request).peakBytes(), ((Number) r.get("planned_peak_bytes")).longValue());
        assertTrue(MemoryPlanner.plan(request.withCheckpointing(ActivationCheckpointing.NONE)).peakBytes()
                != MemoryPlanner.plan(request).peakBytes());
        @SuppressWarnings("unchecked")
        Map<String, Object> comm = (Map<String, Object>) r.get("comm_per_step");
        for (String k : new String[] {"all_gather_ms", "reduce_scatter_ms", "all_to_all_ms"}) {
            assertTrue(comm.containsKey(k), k + " missing from " + comm);
        }
    }

    @Test
    void benchmarkArgumentsAreParsedWithTheSameErrorsAsEveryCommand() {
        TrainBench.Args a = Cli.parse(new TrainBench.Args(), "--config", "c.json", "--gemm", "TF32", "--profile", "1");
        assertEquals(TrainBench.Gemm.tf32, a.gemm);
        assertEquals(4, a.batch);
        assertEquals(1, a.profile);
        Cli.UsageException e = assertThrows(Cli.UsageException.class,
                () -> Cli.parse(new TrainBench.Args(), "--config", "c.json", "--gemm", "fp8"));
        assertTrue(e.getMessage().startsWith("Invalid value for option '--gemm'"), e.getMessage());
        e = assertThrows(Cli.UsageException.class, () -> Cli.parse(new TrainBench.Args(), "--batch", "2"));
        assertTrue(e.getMessage().startsWith("Missing required option: '--config=FILE|JSON'"), e.getMessage());
        e = assertThrows(Cli.UsageException.class, () -> Cli.parse(new LossCurve.Args(), "--init", "d"));
        assertTrue(e.getMessage().contains("'--data=FILE'") && e.getMessage().contains("'--out=FILE'"),
                e.getMessage());
        LossCurve.Args lc = Cli.parse(new LossCurve.Args(), "--init", "d", "--data", "t", "--out", "o",
                "--torch", "a.json,b.json,c.json", "--widen", "0.02");
        assertEquals(java.util.List.of(Path.of("a.json"), Path.of("b.json"), Path.of("c.json")), lc.torch);
        assertEquals(0.02, lc.widen);
        assertEquals(0.9, lc.inside);
    }
}
