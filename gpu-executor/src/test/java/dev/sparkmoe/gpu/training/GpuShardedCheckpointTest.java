package dev.sparkmoe.gpu.training;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.io.HfCheckpoint;
import dev.sparkmoe.core.model.Fixtures;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.cuda.Cuda;
import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.runtime.GpuWorld;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.InJvmRanks;
import dev.sparkmoe.parallel.dtensor.DTensor;
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
import org.bytedeco.cuda.global.cudart;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Sharded construction, load and export on GPUs (f32 GEMMs): each rank's trainer reads its slices of a bf16 checkpoint
 * sharded over several files straight into device shards, holding on the device exactly its shards (weights and both
 * AdamW moments) plus one staged piece; it exports the checkpoint's values bit for bit; and its first step matches
 * the CPU trainer's at the same layout. Skipped without CUDA (and each layout without as many GPUs as ranks).
 */
class GpuShardedCheckpointTest {
    static Path bf16;

    @TempDir
    static Path tmp;

    @BeforeAll
    static void save() throws Exception {
        assumeTrue(Cuda.available(), () -> "no CUDA: " + Cuda.unavailableReason());
        Path dir = Fixtures.tiny();
        bf16 = tmp.resolve("bf16");
        Map<String, Tensor> hub = new TreeMap<>();
        HfCheckpoint.load(dir).forEach((k, v) -> hub.put(k, v.to(DType.BF16)));
        HfCheckpoint.save(bf16, hub, 200_000);
        Files.copy(dir.resolve("config.json"), bf16.resolve("config.json"));
    }

    static int gpus() {
        int[] n = new int[1];
        return cudart.cudaGetDeviceCount(n) == cudart.cudaSuccess ? n[0] : 0;
    }

    /** Rank 0's first-step losses and gradients, its export, and every rank's {live, peak, shard} device bytes. */
    record Result(double lm, double aux, Map<String, Tensor> grads, Map<String, Tensor> exported, long[][] memory) {
    }

    static Result run(int dp, int ep, boolean cuda) throws Exception {
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-4, 1e-5, 1, 3, "cosine", 0.9, 0.95,
                1e-6, 0.1, 1.0, 1);
        TrainerSpec spec = new TrainerSpec(Files.readString(bf16.resolve("config.json")), bf16.toString(), 0, dp, ep,
                16, opt, cuda ? "cuda" : "cpu", -1);
        List<Object[]> out = InJvmRanks.run(dp, Duration.ofMinutes(2), host -> {
            CudaBackend gpu = cuda ? new CudaBackend(host.rank()) : null;
            Communicator world = cuda ? GpuWorld.create(host, gpu, Duration.ofMinutes(2)) : host;
            try {
                if (gpu != null) {
                    gpu.setGemmPrecision(CudaBackend.GemmPrecision.F32);
                }
                Backend be = MemoryTracker.wrap(gpu != null ? gpu : new CpuBackend());
                try (DistributedTrainer t = new DistributedTrainer(spec, world, be)) {
                    MemoryTracker m = MemoryTracker.of(be);
                    long shards = 0;
                    for (FsdpParam p : t.shardedParameters()) {
                        shards += 4L * p.shard().numel();
                    }
                    long[] memory = {m.liveBytes(), m.peakBytes(), shards};
                    Map<String, Tensor> exported = t.fullModelState();
                    int[] mine = DTensor.chunkRange(4, dp, host.rank());
                    List<int[]> in = new ArrayList<>();
                    List<int[]> tg = new ArrayList<>();
                    for (int s = mine[0]; s < mine[1]; s++) {
                        int[] a = new int[16];
                        int[] b = new int[16];
                        for (int i = 0; i < 16; i++) {
                            a[i] = (s * 131 + i * 29) % 512;
                            b[i] = (s * 131 + (i + 1) * 29) % 512;
                        }
                        in.add(a);
                        tg.add(b);
                    }
                    DistributedTrainer.Gradients g = t.computeGradients(in, tg, 16);
                    Map<String, Tensor> grads = new TreeMap<>();
                    t.exportGradients("", (name, shape, data, off) -> grads.put(name, Tensor.of(
                            java.util.Arrays.copyOfRange(data, off, off + (int) Tensor.numel(shape)), shape)));
                    return new Object[] {g, grads, exported, memory};
                }
            } finally {
                if (gpu != null) {
                    world.close();
                    gpu.close();
                }
            }
        });
        long[][] memory = new long[dp][];
        for (int r = 0; r < dp; r++) {
            memory[r] = (long[]) out.get(r)[3];
        }
        DistributedTrainer.Gradients g = (DistributedTrainer.Gradients) out.get(0)[0];
        @SuppressWarnings("unchecked")
        Map<String, Tensor> grads = (Map<String, Tensor>) out.get(0)[1];
        @SuppressWarnings("unchecked")
        Map<String, Tensor> exported = (Map<String, Tensor>) out.get(0)[2];
        return new Result(g.lmLoss(), g.auxLoss(), grads, exported, memory);
    }

    @ParameterizedTest(name = "dp_shard={0}, ep={1}")
    @CsvSource({"1,1", "2,1", "2,2"})
    void gpuRanksHoldOnlyTheirShardsAndComputeWhatTheCpuComputes(int dp, int ep) throws Exception {
        assumeTrue(gpus() >= dp, () -> "needs " + dp + " GPUs, found " + gpus());
        Result gpu = run(dp, ep, true);
        Result cpu = run(dp, ep, false);
        for (int r = 0; r < dp; r++) {
            long[] m = gpu.memory[r];
            assertEquals(3 * m[2], m[0], "rank " + r + ": device bytes after construction = weight and moment shards");
            assertTrue(m[1] - m[0] <= 4L * DistributedTrainer.LOAD_PIECE, "rank " + r + ": peak " + m[1]
                    + " is more than the shards (" + m[0] + ") plus one staged piece");
        }
        Map<String, Tensor> stored = HfCheckpoint.load(bf16);
        assertEquals(stored.keySet(), gpu.exported.keySet());
        for (String k : stored.keySet()) {
            assertTrue(java.util.Arrays.equals(stored.get(k).floats(), gpu.exported.get(k).floats()),
                    "exported " + k + " differs from the checkpoint");
        }
        assertEquals(cpu.lm, gpu.lm, 1e-6 * cpu.lm, "lm loss against the CPU");
        assertEquals(cpu.aux, gpu.aux, 1e-6 * cpu.aux, "aux loss against the CPU");
        for (String k : cpu.grads.keySet()) {
            Fixtures.assertClose("gradient of " + k + " against the CPU", cpu.grads.get(k), gpu.grads.get(k), 1e-5);
        }
    }
}
