package dev.sparkmoe.parallel.memory;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.Bf16Gemms;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

/**
 * Peaks of real training steps on the CPU backend, each rank's backend wrapped in a {@link MemoryTracker}: the peak
 * of building the trainer, what is live between steps (before the first and after the second), and the peak of the
 * second step (the first records FSDP's unit order), as TrainBench --memory measures them. The CPU backend may be
 * made to take bf16 GEMM operands ({@link Bf16Gemms}, as the CUDA backend at bf16 precision): at bf16 precision the
 * trainer then keeps the compute copies and the model makes the GEMMs' bf16 copies for real.
 */
final class MeasuredPeaks {
    private MeasuredPeaks() {
    }

    /** One rank's measurements; {@code afterSteps}: what is live after the second step. */
    record Rank(long construction, long persistent, long step, long afterSteps) {
    }

    static Qwen3MoeConfig.Builder tiny() { // ModelPresets' qwen3-moe-tiny
        return Qwen3MoeConfig.builder().vocabSize(512).hiddenSize(64).intermediateSize(128).moeIntermediateSize(32)
                .numHiddenLayers(2).numAttentionHeads(4).numKeyValueHeads(2).headDim(16).numExperts(8)
                .numExpertsPerTok(2).maxPositionEmbeddings(512).ropeTheta(10000).rmsNormEps(1e-6);
    }

    static Qwen3MoeConfig.Builder small() { // ModelPresets' qwen3-moe-small
        return Qwen3MoeConfig.builder().vocabSize(32768).hiddenSize(512).intermediateSize(1536)
                .moeIntermediateSize(256).numHiddenLayers(8).numAttentionHeads(8).numKeyValueHeads(4).headDim(64)
                .numExperts(16).numExpertsPerTok(4).maxPositionEmbeddings(2048).ropeTheta(10000).rmsNormEps(1e-6);
    }

    /**
     * Every rank's measurements for a trainer of {@code r}'s model, layout, batch, precision, activation
     * checkpointing, FSDP prefetch and loss chunks on the CPU.
     */
    static List<Rank> measure(PlanRequest r) {
        return measure(r, false);
    }

    /** As {@link #measure(PlanRequest)}, on a CPU backend whose GEMMs take bf16 where {@code bf16Gemms}. */
    static List<Rank> measure(PlanRequest r, boolean bf16Gemms) {
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-4, 1e-4, 0, 10, "constant", 0.9,
                0.95, 1e-8, 0.1, 1.0, r.gradAccum());
        TrainerSpec spec = new TrainerSpec(r.model().toJson(), null, 3, r.worldSize(), r.ep(), r.seqLen(), opt, "cpu",
                -1, r.precision().name().toLowerCase(java.util.Locale.ROOT), r.prefetch(),
                TrainerSpec.DEFAULT_CPU_BLAS_THREADS, r.checkpointing().configName());
        return InJvmRanks.run(r.worldSize(), Duration.ofMinutes(3), world -> {
            Backend be = MemoryTracker.wrap(bf16Gemms ? Bf16Gemms.over(new CpuBackend()) : new CpuBackend());
            MemoryTracker tracker = MemoryTracker.of(be);
            tracker.setFollowing(false);
            try (DistributedTrainer t = new DistributedTrainer(spec, world, be, null)) {
                t.model().setLossChunkRows(r.lossChunkRows());
                long construction = tracker.peakBytes();
                long persistent = tracker.liveBytes();
                SplittableRandom random = new SplittableRandom(1000 + world.rank());
                List<int[]> data = new ArrayList<>();
                for (int s = 0; s < r.batch(); s++) {
                    int[] seq = new int[r.seqLen() + 1];
                    for (int i = 0; i < seq.length; i++) {
                        seq[i] = random.nextInt(r.model().vocabSize());
                    }
                    data.add(seq);
                }
                t.step(data); // records FSDP's unit order; prefetching starts with the next step
                tracker.resetPeak();
                t.step(data);
                return new Rank(construction, persistent, tracker.peakBytes(), tracker.liveBytes());
            }
        });
    }
}
