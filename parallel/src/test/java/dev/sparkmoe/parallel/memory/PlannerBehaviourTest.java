package dev.sparkmoe.parallel.memory;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * What the planner derives beyond the measured CPU peaks of {@link MemoryPlannerTest}: the CUDA backend's peaks that
 * TrainBench measured for the landed code, the inputs for features being built elsewhere (activation checkpointing,
 * the chunked fused loss, expert load imbalance) as exact consequences of what they keep, the advice, the checks on
 * the request and the report.
 */
class PlannerBehaviourTest {

    /** qwen3moe-c1 of shared/bench, the GPU benchmark's model. */
    static Qwen3MoeConfig c1() {
        return Qwen3MoeConfig.builder().vocabSize(32000).hiddenSize(1024).intermediateSize(3072)
                .moeIntermediateSize(512).numHiddenLayers(8).numAttentionHeads(16).numKeyValueHeads(4).headDim(64)
                .numExperts(32).numExpertsPerTok(4).maxPositionEmbeddings(4096).ropeTheta(10000).rmsNormEps(1e-6)
                .build();
    }

    /** Qwen3-30B-A3B's config.json (shared/bench/qwen3-30b-a3b-config.json). */
    static Qwen3MoeConfig qwen3_30b() {
        return Qwen3MoeConfig.builder().vocabSize(151936).hiddenSize(2048).intermediateSize(6144)
                .moeIntermediateSize(768).numHiddenLayers(48).numAttentionHeads(32).numKeyValueHeads(4).headDim(128)
                .numExperts(128).numExpertsPerTok(8).maxPositionEmbeddings(40960).ropeTheta(1e6).rmsNormEps(1e-6)
                .build();
    }

    @Test
    void theCudaPlanReproducesTheBenchmarksMeasuredPeak() {
        // TrainBench on qwen3moe-c1, B=4 x T=2048 on one GPU, bf16 (GPU-RESULTS.md): 11.46 GB, the caching
        // allocator's high-water mark, measured before the loss was fused and before the weights kept bf16 compute
        // copies. A loss in one chunk of all 8,192 rows (Qwen3MoeModel.setLossChunkRows(B*T), TrainBench --loss-chunk
        // 8192) allocates what that loss did (gpu-executor/MEMORY-RESULTS.md), and the copies live through the whole
        // step; MemoryPlanGpuTest checks the plans of the code as it is on a GPU host.
        PlanRequest one = PlanRequest.defaults(c1()).withBatch(4, 2048, 1);
        MemoryPlan oneChunk = MemoryPlanner.plan(one.withLossChunk(8192));
        assertEquals(11.46, (oneChunk.peakBytes() - oneChunk.bytes(Category.COMPUTE_COPIES)) / 1e9, 0.10 * 11.46);
        assertTrue(MemoryPlanner.plan(one).peakBytes() < MemoryPlanner.plan(one.withLossChunk(8192)).peakBytes());
        assertTrue(MemoryPlanner.plan(one).fits());
    }

    @Test
    void blocksAreTheCachingAllocatorsSizeClasses() {
        assertEquals(512, Ledger.blockBytes(0));
        assertEquals(512, Ledger.blockBytes(1));
        assertEquals(1024, Ledger.blockBytes(513));
        assertEquals(4096, Ledger.blockBytes(4096));
        assertEquals(5120, Ledger.blockBytes(4097)); // 4096 < b <= 8192: classes of 1024
        assertEquals((1 << 20) + (1 << 18), Ledger.blockBytes((1 << 20) + 1)); // eight classes per power of two
        Ledger cuda = new Ledger(true);
        Ledger cpu = new Ledger(false);
        cuda.f32(Category.TEMPORARIES, 1025, "x");
        cpu.f32(Category.TEMPORARIES, 1025, "x");
        assertEquals(5120, cuda.live());
        assertEquals(4100, cpu.live());
    }

    /** A config whose activations are large beside its weights (3 layers, 2 x 1024 tokens, vocabulary 16k). */
    private static PlanRequest activationBound(ActivationCheckpointing mode) {
        Qwen3MoeConfig c = MeasuredPeaks.tiny().vocabSize(16384).numHiddenLayers(3).maxPositionEmbeddings(4096).build();
        return PlanRequest.defaults(c).withBatch(2, 1024, 1).withCheckpointing(mode)
                .withPrecision(PlanRequest.Precision.F32, PlanRequest.Device.CPU);
    }

    @Test
    void checkpointingLowersThePeakInItsOrder() {
        MemoryPlan none = MemoryPlanner.plan(activationBound(ActivationCheckpointing.NONE));
        MemoryPlan selective = MemoryPlanner.plan(activationBound(ActivationCheckpointing.SELECTIVE));
        MemoryPlan full = MemoryPlanner.plan(activationBound(ActivationCheckpointing.FULL));
        assertTrue(none.stepPeakBytes() > selective.stepPeakBytes() && selective.stepPeakBytes()
                > full.stepPeakBytes(), none.stepPeakBytes() + " " + selective.stepPeakBytes() + " "
                + full.stepPeakBytes());
        // none and selective keep attention's activations to the head: the peak is in the forward pass's loss
        assertTrue(none.stepPeakPhase().startsWith("forward: final norm, fused LM head and loss"),
                none.stepPeakPhase());
        assertTrue(none.bytes(Category.ATTENTION) > 0);
        assertEquals(none.persistentBytes(), full.persistentBytes());
        assertEquals(none.persistentBytes(), selective.persistentBytes());
    }

    @Test
    void theLossHoldsOneChunkOfLogitsAndTheHeadsGradients() {
        PlanRequest r = activationBound(ActivationCheckpointing.NONE);
        Qwen3MoeConfig c = r.model();
        long n = 2 * 1024;
        int v = c.vocabSize();
        MemoryPlan rule = MemoryPlanner.plan(r);
        MemoryPlan oneChunk = MemoryPlanner.plan(r.withLossChunk((int) n));
        // the rule: chunks of H rows, whose logits take the bytes of the head weight's gradient
        assertEquals((long) c.hiddenSize() * v, rule.largestTensorElements(), rule.largestTensor());
        // one chunk of every row holds the [N, V] logits, as the loss before it was fused did
        assertEquals(n * v, oneChunk.largestTensorElements());
        assertEquals("logits chunk [C, V]", oneChunk.largestTensor());
        // ... and the chunk's targets
        assertEquals((n - c.hiddenSize()) * (v + 1) * 4, oneChunk.stepPeakBytes() - rule.stepPeakBytes());
        // Qwen3-30B-A3B at 16k tokens per micro-batch: a chunk stays under 2^31 elements whatever is asked
        PlanRequest big = PlanRequest.defaults(qwen3_30b()).withLayout(16, 8).withBatch(4, 4096, 1);
        assertTrue(MemoryPlanner.plan(big).tensorsAddressable());
        MemoryPlan asked = MemoryPlanner.plan(big.withLossChunk(16384));
        assertTrue(asked.tensorsAddressable());
        assertEquals(Integer.MAX_VALUE / 151936, asked.largestTensorElements() / 151936);
    }

    @Test
    void expertImbalanceGrowsOnlyTheExpertSide() {
        PlanRequest r = PlanRequest.defaults(MeasuredPeaks.tiny().build()).withLayout(4, 2).withBatch(2, 256, 1)
                .withPrecision(PlanRequest.Precision.F32, PlanRequest.Device.CPU);
        MemoryPlan balanced = MemoryPlanner.plan(r);
        MemoryPlan skewed = MemoryPlanner.plan(r.withExpertImbalance(1.5));
        assertTrue(skewed.stepPeakBytes() > balanced.stepPeakBytes());
        assertEquals(balanced.persistentBytes(), skewed.persistentBytes());
        assertThrows(IllegalArgumentException.class, () -> r.withExpertImbalance(2.5)); // over ep
    }

    @Test
    void aTrainerSpecIsARequest() {
        dev.sparkmoe.parallel.train.TrainerSpec.OptimizerSettings opt =
                new dev.sparkmoe.parallel.train.TrainerSpec.OptimizerSettings(1e-4, 1e-4, 0, 1, "constant", 0.9, 0.95,
                        1e-8, 0.1, 1.0, 2);
        dev.sparkmoe.parallel.train.TrainerSpec spec = new dev.sparkmoe.parallel.train.TrainerSpec(c1().toJson(),
                null, 1, 4, 2, 2048, opt, "cuda", 0, "bf16");
        PlanRequest r = PlanRequest.forTrainer(spec, 8);
        assertEquals(4, r.worldSize());
        assertEquals(2, r.ep());
        assertEquals(8, r.batch());
        assertEquals(2048, r.seqLen());
        assertEquals(2, r.gradAccum());
        assertEquals(PlanRequest.Precision.BF16, r.precision());
        assertEquals(PlanRequest.Device.CUDA, r.device());
        assertEquals(c1(), r.model());
        assertEquals(ActivationCheckpointing.NONE, r.checkpointing());
        assertEquals(dev.sparkmoe.parallel.train.TrainerSpec.DEFAULT_FSDP_PREFETCH, r.prefetch());
        assertEquals(PlanRequest.Device.CPU, PlanRequest.forTrainer(spec.onDevice("cpu", -1), 8).device());
        // training.activation_checkpointing and training.fsdp_prefetch come from the spec
        dev.sparkmoe.parallel.train.TrainerSpec tuned = new dev.sparkmoe.parallel.train.TrainerSpec(c1().toJson(),
                null, 1, 4, 2, 2048, opt, "cuda", 0, "bf16", 1, 1, "selective");
        PlanRequest t = PlanRequest.forTrainer(tuned, 8);
        assertEquals(ActivationCheckpointing.SELECTIVE, t.checkpointing());
        assertEquals(1, t.prefetch());
        assertTrue(MemoryPlanner.plan(t).stepPeakBytes() < MemoryPlanner.plan(r).stepPeakBytes());
    }

    @Test
    void aRunThatFitsGetsNoAdvice() {
        PlanRequest r = PlanRequest.defaults(MeasuredPeaks.small().build()).withBatch(4, 1024, 1);
        assertTrue(MemoryPlanner.plan(r).fits());
        assertTrue(MemoryPlanner.advise(r).isEmpty());
    }

    @Test
    void adviceGivesTheMildestChangeOfEachKindThatFits() {
        // the small preset, 16 x 2048 tokens on one 11 GB GPU (9 GB usable): 9.8 GB
        PlanRequest r = PlanRequest.defaults(MeasuredPeaks.small().build()).withBatch(16, 2048, 1)
                .withMemory(11_000_000_000L, 2_000_000_000L);
        MemoryPlan plan = MemoryPlanner.plan(r);
        assertFalse(plan.fits());
        List<Suggestion> advice = MemoryPlanner.advise(r);
        assertFalse(advice.isEmpty());
        for (Suggestion s : advice) {
            assertTrue(s.plan().fits(), s.change());
        }
        Suggestion accum = advice.stream().filter(s -> s.change().startsWith("gradient accumulation")).findFirst()
                .orElseThrow();
        assertEquals(2, accum.plan().request().gradAccum()); // the mildest: 2 micro-batches of 8
        assertEquals(16, accum.plan().request().batch());    // the same global batch
        Suggestion batch = advice.stream().filter(s -> s.change().contains("sequences per rank")).findFirst()
                .orElseThrow();
        int b = batch.plan().request().batch();
        assertTrue(MemoryPlanner.plan(r.withBatch(b + 1, 2048, 1)).peakBytes() > plan.usableBytes(),
                "one sequence more would not fit");
        Suggestion gpus = advice.stream().filter(s -> s.change().contains("GPUs")).findFirst().orElse(null);
        if (gpus != null) {
            assertTrue(gpus.plan().request().worldSize() > 1);
        }
        String text = PlanReport.text(plan, advice);
        assertTrue(text.contains("DOES NOT FIT"), text);
        assertTrue(text.contains("--grad-accum 2"), text);
    }

    @Test
    void checkpointingAdviceGoesFromTheRequestsSettingToAStrongerOne() {
        // Qwen3-30B-A3B on 8 GPUs, ep 8, 2 x 4096 tokens: over with selective, fits with full (README's table)
        PlanRequest r = PlanRequest.defaults(qwen3_30b()).withLayout(8, 8).withBatch(2, 4096, 1)
                .withCheckpointing(ActivationCheckpointing.SELECTIVE);
        assertFalse(MemoryPlanner.plan(r).fits());
        Suggestion full = MemoryPlanner.advise(r).stream().filter(s -> s.change().startsWith("full activation"))
                .findFirst().orElseThrow();
        assertEquals(ActivationCheckpointing.FULL, full.plan().request().checkpointing());
        assertTrue(full.plan().fits());
        assertTrue(MemoryPlanner.advise(r.withCheckpointing(ActivationCheckpointing.FULL).withBatch(16, 4096, 1))
                .stream().noneMatch(s -> s.change().contains("activation checkpointing (")));
    }

    @Test
    void eachRankBuildsOnlyItsShards() {
        // Qwen3-30B-A3B on 8 GPUs: a rank allocates its shards (and the compute copies of its experts, alone in
        // their groups at ep 8), fills them a 4 MiB piece at a time, then makes the moments: the construction peak is
        // what lives between steps (the full f32 model would be 122 GB)
        PlanRequest r = PlanRequest.defaults(qwen3_30b()).withLayout(8, 8).withBatch(1, 2048, 1);
        MemoryPlan plan = MemoryPlanner.plan(r);
        assertEquals(plan.persistentBytes(), plan.constructionPeakBytes());
        long shards = (plan.persistentBytes() - plan.bytes(Category.COMPUTE_COPIES)) / 3;
        assertEquals(4.0 * plan.parameters() / 8, shards, 0.01 * shards);
        assertTrue(plan.constructionPeakBytes() < plan.usableBytes());
        assertTrue(MemoryPlanner.plan(r.withCheckpointing(ActivationCheckpointing.SELECTIVE)).fits());
    }

    @Test
    void badRequestsNameTheValueAndTheFix() {
        PlanRequest r = PlanRequest.defaults(MeasuredPeaks.tiny().build());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> r.withLayout(4, 3));
        assertTrue(e.getMessage().contains("ep (3) must divide dp_shard (4)"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> r.withLayout(6, 3));
        assertTrue(e.getMessage().contains("ep (3) must divide num_experts (8)") && e.getMessage().contains("[1, 2]"),
                e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> r.withBatch(6, 64, 4));
        assertTrue(e.getMessage().contains("grad_accum (4) must divide the batch (6") && e.getMessage().contains(
                "[1, 2, 3, 6]"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> r.withBatch(1, 1024, 1));
        assertTrue(e.getMessage().contains("1024 exceeds max_position_embeddings (512)"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> r.withMemory(1_000_000_000L, 2_000_000_000L));
        assertTrue(e.getMessage().contains("reserve (2000000000 bytes)"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> r.withLossChunk(-1));
        assertTrue(e.getMessage().contains("loss chunk (-1 rows) must be >= 0"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> r.withPrefetch(0));
        assertTrue(e.getMessage().contains("FSDP prefetch (0) must be >= 1"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PlanRequest.defaults(MeasuredPeaks.tiny()
                .numExperts(0).numExpertsPerTok(0).build()));
        assertTrue(e.getMessage().contains("num_experts is 0"), e.getMessage());
    }

    @Test
    void theReportIsTheTableOrOneJsonObject() {
        PlanRequest r = PlanRequest.defaults(c1()).withLayout(2, 1).withBatch(4, 2048, 1);
        MemoryPlan p = MemoryPlanner.plan(r);
        String text = PlanReport.text(p, List.of());
        for (Category c : Category.values()) {
            if (c != Category.LOAD_BUFFER) {
                assertTrue(text.contains(c.label()), c.label());
            }
        }
        assertTrue(text.contains("fits: "), text);
        Map<String, Object> json = Json.parseObject(PlanReport.json(p, List.of()));
        assertEquals(p.peakBytes(), ((Number) json.get("peak_bytes")).longValue());
        assertEquals(Math.max(p.stepPeakBytes(), p.constructionPeakBytes()), p.peakBytes());
        assertEquals(true, json.get("fits"));
        @SuppressWarnings("unchecked")
        Map<String, Object> at = (Map<String, Object>) json.get("at_step_peak_bytes");
        long sum = 0;
        for (Object v : at.values()) {
            sum += ((Number) v).longValue();
        }
        assertEquals(p.stepPeakBytes(), sum, "the categories add up to the peak");
    }
}
