package dev.sparkmoe.parallel.memory;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.core.nn.Parameter;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * The CUDA backend's plans of the param-dtype compute copies ({@code FsdpParam.keepsComputeCopy}), as exact
 * consequences of what the code allocates (the CPU side is measured in {@link MemoryPlannerTest} and
 * {@link UnitLayoutTest}): at bf16 on one GPU every weight the model marks read only by GEMMs
 * ({@code Parameter.readByGemmsOnly}) keeps a bf16 copy of its shard, allocated with the shards and kept for the
 * trainer's life, the caching allocator's block of 2 bytes an element each; the grouped GEMM reads the experts' copies
 * in place (no cast copy of a weight), or widens them first where their rows are not whole 16-byte chunks; nothing is
 * kept where no parameter is alone with its shard, at f32, or on the CPU.
 */
class ComputeCopyPlanTest {

    /** The CUDA allocator's blocks for a bf16 copy of each parameter the model marks read only by GEMMs. */
    private static long gemmOnlyCopyBlocks(Qwen3MoeConfig c) {
        long bytes = 0;
        for (Parameter p : Qwen3MoeModel.unmaterialised(c, new CpuBackend()).parameters()) {
            if (p.isReadByGemmsOnly()) {
                bytes += MemoryPlanner.cudaBlockBytes(2L * p.numel());
            }
        }
        return bytes;
    }

    @Test
    void atOneGpuEveryGemmWeightKeepsABf16CopyForTheTrainersLife() {
        List<PlanRequest> requests = List.of(
                PlanRequest.defaults(PlannerBehaviourTest.c1()).withBatch(4, 2048, 1),
                PlanRequest.defaults(MeasuredPeaks.tiny().tieWordEmbeddings(true).mlpOnlyLayers(List.of(0)).build())
                        .withBatch(2, 64, 1),
                PlanRequest.defaults(PlannerBehaviourTest.qwen3_30b().toBuilder().numHiddenLayers(4).build()).withBatch(2, 4096, 1));
        for (PlanRequest bf16 : requests) {
            String what = bf16.model().numHiddenLayers() + " layers, hidden " + bf16.model().hiddenSize();
            long copies = gemmOnlyCopyBlocks(bf16.model());
            assertTrue(copies > 0, what);
            MemoryPlan with = MemoryPlanner.plan(bf16);
            MemoryPlan without = MemoryPlanner.plan(bf16.withPrecision(PlanRequest.Precision.F32,
                    PlanRequest.Device.CUDA)); // f32: the same shards and moments, no copy
            assertEquals(without.persistentBytes() + copies, with.persistentBytes(), what + ": between steps");
            assertEquals(without.constructionPeakBytes() + copies, with.constructionPeakBytes(),
                    what + ": construction");
            assertEquals(copies, with.bytes(Category.COMPUTE_COPIES), what + ": the copies at the step's peak");
            assertEquals(0, without.bytes(Category.COMPUTE_COPIES), what);
        }
    }

    /** Construction and two steps of {@code r}'s replay: the grouped GEMMs' weight casts, in-place reads, widenings. */
    private static long[] groupedGemmWeights(PlanRequest r) {
        StepReplay replay = new StepReplay(r);
        replay.construct();
        replay.step();
        replay.step();
        return new long[] {replay.dev.weightCasts(), replay.dev.bf16InPlace(), replay.dev.widened()};
    }

    @Test
    void theGroupedGemmReadsTheExpertsCopiesInPlaceOrWidensThem() {
        // per MoE layer and step: gate, up and down in forward, down, gate and up in backward
        Qwen3MoeConfig tiny = MeasuredPeaks.tiny().build();
        int moeLayers = tiny.numHiddenLayers();
        PlanRequest one = PlanRequest.defaults(tiny).withBatch(2, 64, 1);
        assertEquals(List.of(0L, 2L * 6 * moeLayers, 0L), List.of(box(groupedGemmWeights(one))),
                "one GPU: no weight is cast, each is its compute copy read in place");
        // rows of 36 values are not whole 16-byte chunks: down's copy is widened (read twice a step), gate's and up's
        // rows are 64 values
        PlanRequest odd = PlanRequest.defaults(MeasuredPeaks.tiny().moeIntermediateSize(36).build()).withBatch(2, 64, 1);
        long[] w = groupedGemmWeights(odd);
        assertEquals(List.of(2L * 2 * moeLayers, 2L * 4 * moeLayers, 2L * 2 * moeLayers), List.of(box(w)),
                "down widened, then cast as any f32 operand; gate and up read in place");
        // two GPUs: the experts are gathered as bf16 images and read in place, no copy is kept
        assertEquals(List.of(0L, 0L, 0L), List.of(box(groupedGemmWeights(one.withLayout(2, 1)))));
        // two experts on four GPUs, split on dim 1: gathered in f32 by the blocking gather, cast at every use
        PlanRequest dim1 = PlanRequest.defaults(MeasuredPeaks.tiny().numExperts(2).numExpertsPerTok(1).build())
                .withLayout(4, 1).withBatch(2, 64, 1);
        assertTrue(groupedGemmWeights(dim1)[0] > 0);
        // f32 on one GPU: the grouped GEMM takes f32 operands, nothing is cast or kept
        assertEquals(List.of(0L, 0L, 0L), List.of(box(groupedGemmWeights(one.withPrecision(
                PlanRequest.Precision.F32, PlanRequest.Device.CUDA)))));
    }

    @Test
    void theDenseGemmsReadTheCopiesAsTheyAre() {
        // a dense layer (q, k, v, o, gate, up, down) and a MoE layer (q, k, v, o, router): 12 weights that Linear
        // reads once in forward and once in backward, 24 a step; full checkpointing recomputes the attention's four
        // projections of both layers and the dense layer's gate and up (not down, nor the router: its logits are kept)
        Qwen3MoeConfig c = MeasuredPeaks.tiny().tieWordEmbeddings(true).mlpOnlyLayers(List.of(0)).build();
        PlanRequest one = PlanRequest.defaults(c).withBatch(2, 64, 1);
        assertEquals(0, denseWeightCopies(one), "one GPU: every weight is read as its compute copy");
        assertEquals(2 * 24, denseWeightCopies(one.withLayout(2, 1)), "two GPUs: a bf16 copy of each gathered one");
        assertEquals(2 * (24 + 10), denseWeightCopies(one.withLayout(2, 1).withCheckpointing(
                dev.sparkmoe.core.model.ActivationCheckpointing.FULL)));
        assertEquals(0, denseWeightCopies(one.withLayout(2, 1).withPrecision(PlanRequest.Precision.F32,
                PlanRequest.Device.CUDA)), "f32: the GEMMs read the weights themselves");
    }

    private static long denseWeightCopies(PlanRequest r) {
        StepReplay replay = new StepReplay(r);
        replay.construct();
        replay.step();
        replay.step();
        return replay.denseWeightCopies();
    }

    private static Long[] box(long[] a) {
        Long[] out = new Long[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = a[i];
        }
        return out;
    }

    @Test
    void onlyParametersAloneWithTheirShardsKeepCopies() {
        Qwen3MoeConfig tied = MeasuredPeaks.tiny().tieWordEmbeddings(true).build();
        Qwen3MoeConfig untied = MeasuredPeaks.tiny().build();
        // FSDP over 2 and 4 GPUs without a group of one: no copy, the persistent bytes of f32
        for (int[] layout : new int[][] {{2, 1}, {4, 2}}) {
            PlanRequest r = PlanRequest.defaults(tied).withLayout(layout[0], layout[1]).withBatch(2, 64, 1);
            MemoryPlan p = MemoryPlanner.plan(r);
            assertEquals(0, p.bytes(Category.COMPUTE_COPIES), "dp_shard " + layout[0] + ", ep " + layout[1]);
            assertEquals(MemoryPlanner.plan(r.withPrecision(PlanRequest.Precision.F32, PlanRequest.Device.CUDA))
                    .persistentBytes(), p.persistentBytes());
        }
        // an untied head over 2 GPUs computes on its rows (vocabulary-parallel): their copy only
        int h = untied.hiddenSize();
        int rows = untied.vocabSize() / 2;
        assertEquals(MemoryPlanner.cudaBlockBytes(2L * rows * h), MemoryPlanner.plan(PlanRequest.defaults(untied)
                .withLayout(2, 1).withBatch(2, 64, 1)).bytes(Category.COMPUTE_COPIES));
        // ep 2 over 2 GPUs: the experts' groups are of one rank, each keeps its half of the experts' copies
        long experts = 0;
        int local = untied.numExperts() / 2;
        for (int i = 0; i < untied.numHiddenLayers(); i++) {
            experts += 3 * MemoryPlanner.cudaBlockBytes(2L * local * untied.moeIntermediateSize() * h);
        }
        assertEquals(experts + MemoryPlanner.cudaBlockBytes(2L * rows * h), MemoryPlanner.plan(PlanRequest
                .defaults(untied).withLayout(2, 2).withBatch(2, 64, 1)).bytes(Category.COMPUTE_COPIES));
        // the CPU backend's GEMMs take f32: no copy, and at one rank bf16 plans as f32
        PlanRequest cpu = PlanRequest.defaults(untied).withBatch(2, 64, 1)
                .withPrecision(PlanRequest.Precision.BF16, PlanRequest.Device.CPU);
        MemoryPlan cpuBf16 = MemoryPlanner.plan(cpu);
        MemoryPlan cpuF32 = MemoryPlanner.plan(cpu.withPrecision(PlanRequest.Precision.F32, PlanRequest.Device.CPU));
        assertEquals(0, cpuBf16.bytes(Category.COMPUTE_COPIES));
        assertEquals(cpuF32.persistentBytes(), cpuBf16.persistentBytes());
        assertEquals(cpuF32.stepPeakBytes(), cpuBf16.stepPeakBytes());
    }
}
