package dev.sparkmoe.gpu.training;

import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.gpu.cuda.Cuda;
import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.nccl.NcclCommunicator;
import dev.sparkmoe.gpu.runtime.GpuWorld;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.memory.MemoryPlan;
import dev.sparkmoe.parallel.memory.MemoryPlanner;
import dev.sparkmoe.parallel.memory.PlanRequest;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import org.bytedeco.cuda.global.cudart;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * The memory planner against the CUDA backend's caching allocator (its high-water mark, what TrainBench reports as
 * peak_mem_gb): the GPU benchmark's model (qwen3moe-c1) on one GPU and on two (NCCL, one thread per GPU), bf16 and f32,
 * with and without expert parallelism, without and with activation checkpointing (full, selective). The plan is the
 * trainer's spec's ({@link PlanRequest#forTrainer}). For each rank: the peak while the trainer is built, the bytes in
 * use between steps, and the peak of the second step (the first records FSDP's unit order); the busiest rank's must
 * lie within 10% of the plan. Each case prints one line with the planned and measured numbers. Skipped without CUDA
 * (and a case without as many GPUs as ranks).
 */
class MemoryPlanGpuTest {

    @BeforeAll
    static void cuda() {
        assumeTrue(Cuda.available(), () -> "no CUDA: " + Cuda.unavailableReason());
    }

    static int gpus() {
        int[] n = new int[1];
        return cudart.cudaGetDeviceCount(n) == cudart.cudaSuccess ? n[0] : 0;
    }

    /** shared/bench/qwen3moe-c1.json. */
    static Qwen3MoeConfig c1() {
        return Qwen3MoeConfig.builder().vocabSize(32000).hiddenSize(1024).intermediateSize(3072)
                .moeIntermediateSize(512).numHiddenLayers(8).numAttentionHeads(16).numKeyValueHeads(4).headDim(64)
                .numExperts(32).numExpertsPerTok(4).maxPositionEmbeddings(4096).routerAuxLossCoef(0.001)
                .ropeTheta(10000).rmsNormEps(1e-6).build();
    }

    @ParameterizedTest(name = "{0} GPU(s), ep {1}, B={2} T={3}, {4}, ac {5}")
    @CsvSource({"1,1,4,2048,bf16,none", "1,1,4,2048,bf16,selective", "1,1,4,2048,bf16,full", "1,1,2,1024,f32,none",
        "2,1,4,2048,bf16,none", "2,2,4,2048,bf16,none", "2,2,4,2048,bf16,selective", "2,1,2,1024,f32,full"})
    void theAllocatorsPeaksAreThePlans(int world, int ep, int batch, int seq, String precision, String ac) {
        assumeTrue(gpus() >= world, () -> "needs " + world + " GPUs, found " + gpus());
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-4, 1e-4, 0, 10, "constant", 0.9,
                0.999, 1e-8, 0.01, 0, 1);
        TrainerSpec spec = new TrainerSpec(c1().toJson(), null, 0, world, ep, seq, opt, "cuda", -1, precision, ac);
        PlanRequest request = PlanRequest.forTrainer(spec, batch);
        MemoryPlan plan = MemoryPlanner.plan(request);
        List<long[]> ranks = InJvmRanks.run(world, Duration.ofMinutes(5), host -> {
            try (CudaBackend be = new CudaBackend(host.rank());
                 NcclCommunicator nccl = GpuWorld.create(host, be, Duration.ofMinutes(5))) {
                be.setGemmPrecision("bf16".equals(precision) ? CudaBackend.GemmPrecision.BF16
                        : CudaBackend.GemmPrecision.F32);
                try (DistributedTrainer t = new DistributedTrainer(spec, nccl, be, null)) {
                    long construction = be.memoryStats().peakBytesInUse();
                    long between = be.memoryStats().bytesInUse();
                    SplittableRandom r = new SplittableRandom(host.rank() + 1);
                    List<int[]> data = new ArrayList<>();
                    for (int b = 0; b < batch; b++) {
                        int[] s = new int[seq + 1];
                        for (int i = 0; i <= seq; i++) {
                            s[i] = r.nextInt(c1().vocabSize());
                        }
                        data.add(s);
                    }
                    t.step(data);
                    be.synchronize();
                    be.resetPeakMemory();
                    t.step(data);
                    be.synchronize();
                    return new long[] {construction, between, be.memoryStats().peakBytesInUse()};
                }
            }
        });
        long[] busiest = ranks.get(0);
        for (long[] m : ranks) {
            if (m[2] > busiest[2]) {
                busiest = m;
            }
        }
        long[] measured = busiest;
        System.out.printf(Locale.ROOT, "memory plan, %d GPU(s), ep %d, B=%d T=%d %s, ac %s: step peak planned %.3f "
                        + "GB, measured %.3f GB (%+.1f%%); between steps %.3f / %.3f GB; construction peak %.3f / %.3f "
                        + "GB; planned peak at %s%n", world, ep, batch, seq, precision, ac, plan.stepPeakBytes() / 1e9,
                measured[2] / 1e9, 100.0 * (plan.stepPeakBytes() - measured[2]) / measured[2],
                plan.persistentBytes() / 1e9, measured[1] / 1e9, plan.constructionPeakBytes() / 1e9,
                measured[0] / 1e9, plan.stepPeakPhase());
        within("step peak", plan.stepPeakBytes(), measured[2]);
        within("bytes between steps", plan.persistentBytes(), measured[1]);
        within("construction peak", plan.constructionPeakBytes(), measured[0]);
    }

    private static void within(String what, long planned, long measured) {
        double error = (double) planned / measured - 1;
        assertTrue(Math.abs(error) <= 0.10, () -> String.format(Locale.ROOT, "%s: planned %d B, measured %d B "
                + "(%+.1f%%, tolerance 10%%)", what, planned, measured, 100 * error));
    }
}
