package dev.sparkmoe.gpu.bench;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.backend.MemoryTracker;
import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.gpu.cuda.CudaBackend;
import dev.sparkmoe.gpu.launch.RankContext;
import dev.sparkmoe.gpu.launch.RankEntry;
import dev.sparkmoe.parallel.comm.TimedCommunicator;
import dev.sparkmoe.parallel.fsdp.FsdpParam;
import dev.sparkmoe.parallel.memory.MemoryPlanner;
import dev.sparkmoe.parallel.memory.PlanRequest;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.tools.Cli;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;
import picocli.CommandLine;

/**
 * The GPU training benchmark, run on every rank by the launcher:
 * {@code spark-moe launch --nproc N --entry dev.sparkmoe.gpu.bench.TrainBench -- --config qwen3moe-c1.json}.
 * It trains the given config from random weights on random token ids (B sequences of T tokens per GPU, as the
 * PyTorch baselines of shared/bench do), times {@code --steps} steps after {@code --warmup} and prints one JSON line
 * with the baselines' fields: tokens/s (per GPU), model FLOPs utilisation against 989 TFLOP/s dense bf16 with the
 * baselines' FLOP count, peak device memory (and the memory planner's peak for the same run beside it), the last
 * loss.
 *
 * <p>Options: --config FILE|JSON, --batch B (4), --seq T (2048), --steps N (8), --warmup N (3), --ep M (1),
 * --gemm f32|tf32|bf16 (bf16: tensor cores with f32 accumulation), --seed S (0), --out FILE (JSON also written),
 * --fsdp-prefetch N (2: FSDP units gathered ahead, the job key training.fsdp_prefetch), --cpu-blas-threads N (1: the
 * CPU backend's OpenBLAS threads, training.cpu_blas_threads),
 * --profile 1 (after the timed steps, one step traced on the device's timeline, one with every backend call timed on
 * the host and one timed on the device alone; see {@link OpProfiler}), --memory 1 (after the timed steps, one step
 * with every allocation followed: the peak of
 * live tensor bytes and who held them at that moment, see {@link MemoryTracker}; works on the CPU backend too),
 * --ac none|full|selective (activation checkpointing, as the key {@code training.activation_checkpointing}; none),
 * --loss-chunk N (token rows per chunk of the fused LM head and cross-entropy; 0, the default, chooses them from the
 * hidden size; B*T or more computes the loss in one chunk, with [B*T, V] logits as the unfused loss held them).
 */
public final class TrainBench implements RankEntry {

    /**
     * The CUDA backend of the benchmark entries: GEMMs in {@code gemm} (f32, tf32 or bf16), and the launcher's NCCL
     * world, if any, attached to it (ordered after its stream, its kernels for bf16 gathers).
     */
    static CudaBackend cudaBackend(RankContext ctx, String gemm) {
        CudaBackend cuda = new CudaBackend(ctx.device());
        cuda.setGemmPrecision(CudaBackend.GemmPrecision.valueOf(gemm.toUpperCase(Locale.ROOT)));
        ctx.nccl().ifPresent(n -> n.attach(cuda));
        return cuda;
    }

    /**
     * The trainer precision that goes with {@code --gemm}: bf16 GEMMs come with FSDP's bf16 param dtype, as a job's
     * {@code training.precision: bf16} sets both (DefaultRankTrainerFactory).
     */
    static String precision(String gemm) {
        return "bf16".equals(gemm) ? "bf16" : "f32";
    }

    /** GEMM precisions of the benchmark entries. */
    enum Gemm { f32, tf32, bf16 }

    /** TrainBench's arguments (after {@code --} on the launcher's command line). */
    @CommandLine.Command(name = "launch -- (TrainBench)", mixinStandardHelpOptions = true, sortOptions = false,
            description = "Train a config from random weights on random token ids and print one JSON line of timings.")
    static final class Args {
        @CommandLine.Option(names = "--config", required = true, paramLabel = "FILE|JSON",
                description = "model config: a config.json file or its JSON text")
        String config;
        @CommandLine.Option(names = "--batch", paramLabel = "B", description = "sequences per GPU (${DEFAULT-VALUE})")
        int batch = 4;
        @CommandLine.Option(names = "--seq", paramLabel = "T", description = "tokens per sequence (${DEFAULT-VALUE})")
        int seq = 2048;
        @CommandLine.Option(names = "--steps", paramLabel = "N", description = "timed steps (${DEFAULT-VALUE})")
        int steps = 8;
        @CommandLine.Option(names = "--warmup", paramLabel = "N", description = "untimed steps first (${DEFAULT-VALUE})")
        int warmup = 3;
        @CommandLine.Option(names = "--ep", paramLabel = "M", description = "expert-parallel degree (${DEFAULT-VALUE})")
        int ep = 1;
        @CommandLine.Option(names = "--gemm", paramLabel = "P", description = "f32, tf32 or bf16 (${DEFAULT-VALUE})")
        Gemm gemm = Gemm.bf16;
        @CommandLine.Option(names = "--seed", paramLabel = "S", description = "seed (${DEFAULT-VALUE})")
        long seed = 0;
        @CommandLine.Option(names = "--out", paramLabel = "FILE", description = "also write the JSON line here")
        Path out;
        @CommandLine.Option(names = "--fsdp-prefetch", paramLabel = "N",
                description = "FSDP units gathered ahead, as training.fsdp_prefetch (${DEFAULT-VALUE})")
        int fsdpPrefetch = TrainerSpec.DEFAULT_FSDP_PREFETCH;
        @CommandLine.Option(names = "--cpu-blas-threads", paramLabel = "N",
                description = "OpenBLAS threads of the CPU backend, as training.cpu_blas_threads (${DEFAULT-VALUE})")
        int cpuBlasThreads = TrainerSpec.DEFAULT_CPU_BLAS_THREADS;
        @CommandLine.Option(names = "--ac", paramLabel = "MODE",
                description = "activation checkpointing, as training.activation_checkpointing: none, full or "
                        + "selective (${DEFAULT-VALUE})")
        String ac = "none";
        @CommandLine.Option(names = "--loss-chunk", paramLabel = "ROWS",
                description = "token rows per chunk of the fused LM-head loss; 0: the model's rule (${DEFAULT-VALUE})")
        int lossChunk = 0;
        @CommandLine.Option(names = "--profile", paramLabel = "1", description = "1: profile one step after the timed ones")
        int profile;
        @CommandLine.Option(names = "--memory", paramLabel = "1", description = "1: follow one step's allocations")
        int memory;

        Args check() {
            if (batch < 1 || seq < 1 || steps < 1 || warmup < 0 || ep < 1 || fsdpPrefetch < 1 || cpuBlasThreads < 1
                    || lossChunk < 0) {
                throw new Cli.UsageException("--batch, --seq, --steps, --ep, --fsdp-prefetch and --cpu-blas-threads "
                        + "must be >= 1 and --warmup and --loss-chunk >= 0; got " + batch + ", " + seq + ", " + steps
                        + ", " + ep + ", " + fsdpPrefetch + ", " + cpuBlasThreads + ", " + warmup + ", " + lossChunk);
            }
            return this;
        }
    }

    @Override
    public int run(RankContext ctx, String[] args) throws Exception {
        Args a = Cli.parse(new Args(), args).check();
        String cfgArg = a.config;
        String cfgText = Files.exists(Path.of(cfgArg)) ? Files.readString(Path.of(cfgArg)) : cfgArg;
        Map<String, Object> cfg = Json.parseObject(cfgText);
        cfg.putIfAbsent("model_type", "qwen3_moe");
        Qwen3MoeConfig config = Qwen3MoeConfig.parse(Json.write(cfg, false));
        int batch = a.batch;
        int seq = a.seq;
        int steps = a.steps;
        int warmup = a.warmup;
        int ep = a.ep;
        long seed = a.seed;
        String gemm = a.gemm.name();
        int prefetch = a.fsdpPrefetch;
        int blasThreads = a.cpuBlasThreads;
        String ac = a.ac;
        int lossChunk = a.lossChunk;

        Backend backend;
        Backend profiled = null; // the OpProfiler-wrapped backend, with --profile
        CudaBackend cudaBackend = null;
        if (ctx.isCuda()) {
            CudaBackend cuda = cudaBackend(ctx, gemm);
            cudaBackend = cuda;
            backend = a.profile > 0 ? profiled = OpProfiler.wrap(cuda) : cuda;
        } else {
            backend = new CpuBackend(blasThreads);
        }
        if (a.memory > 0) {
            backend = MemoryTracker.wrap(backend); // sites followed while the trainer is built and in the memory step
        }
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(1e-4, 1e-4, 0, warmup + steps,
                "constant", 0.9, 0.999, 1e-8, 0.01, 0, 1);
        TrainerSpec spec = new TrainerSpec(config.toJson(), null, seed, ctx.worldSize(), ep, seq, opt,
                ctx.backend(), ctx.device(), precision(gemm), prefetch, blasThreads, ac);
        // Collectives are timed by a wrapper that first drains the compute stream, so each collective's time is its
        // own; the throughput figures come from steps with the timer switched off.
        TimedCommunicator timed = new TimedCommunicator(ctx.world(), backend::synchronize);
        timed.setEnabled(false);
        try (DistributedTrainer trainer = new DistributedTrainer(spec, timed, backend, null)) {
            trainer.model().setLossChunkRows(lossChunk);
            SplittableRandom r = new SplittableRandom(seed * 1_000_003L + ctx.rank());
            List<int[]> data = new ArrayList<>();
            for (int b = 0; b < batch; b++) {
                int[] s = new int[seq + 1];
                for (int i = 0; i <= seq; i++) {
                    s[i] = r.nextInt(config.vocabSize());
                }
                data.add(s);
            }
            if (a.memory > 0) {
                MemoryTracker.of(backend).setFollowing(false); // no stack walks in the timed steps
            }
            StepMetrics last = null;
            for (int i = 0; i < warmup; i++) {
                last = trainer.step(data);
            }
            backend.synchronize();
            ctx.world().barrier();
            long t0 = System.nanoTime();
            for (int i = 0; i < steps; i++) {
                last = trainer.step(data);
            }
            backend.synchronize();
            double dt = (System.nanoTime() - t0) / 1e9 / steps;
            int timedSteps = 2;
            timed.reset();
            timed.setEnabled(true);
            for (int i = 0; i < timedSteps; i++) {
                trainer.step(data);
            }
            timed.setEnabled(false);
            Map<String, double[]> comm = timed.snapshot();
            if (a.memory > 0) {
                MemoryTracker tracker = MemoryTracker.of(backend);
                tracker.setFollowing(true);
                tracker.resetPeak();
                trainer.step(data);
                tracker.setFollowing(false);
                if (ctx.rank() == 0) {
                    System.out.print(tracker.report());
                }
            }
            if (profiled != null) {
                OpProfiler prof = OpProfiler.handler(profiled);
                // one unreported traced step first: it creates the trace's events and runs its code paths once, so
                // that the reported step's idle times are the step's own, not the profiler's first-time costs
                backend.synchronize();
                prof.start(OpProfiler.Mode.TRACE);
                trainer.step(data);
                prof.stop();
                for (OpProfiler.Mode m : new OpProfiler.Mode[] {OpProfiler.Mode.TRACE, OpProfiler.Mode.HOST,
                    OpProfiler.Mode.DEVICE}) {
                    backend.synchronize();
                    prof.start(m);
                    long p0 = System.nanoTime();
                    trainer.step(data);
                    backend.synchronize();
                    long p1 = System.nanoTime();
                    prof.stop();
                    if (ctx.rank() == 0) {
                        System.out.printf(Locale.ROOT, "profiled step wall %.2f ms%n%s", (p1 - p0) / 1e6,
                                prof.report(1));
                    }
                }
            }
            long params = 0;
            for (FsdpParam p : trainer.shardedParameters()) {
                params += Tensor.numel(trainer.globalShape(p));
            }
            int l = config.numHiddenLayers();
            int e = config.numExperts();
            int k = config.numExpertsPerTok();
            long active = params - (long) l * (e - k) * 3L * config.hiddenSize() * config.moeIntermediateSize();
            double flopsPerToken = 6.0 * active + 12.0 * l * config.numAttentionHeads() * config.headDim() * seq;
            double tokPerGpu = batch * (double) seq / dt;
            long peak = cudaBackend != null ? cudaBackend.memoryStats().peakBytesInUse() : -1;
            float[] peakGb = {(float) (peak / 1e9)};
            ctx.world().allReduceMax(peakGb, 0, 1); // the largest rank's peak
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("impl", "spark-moe");
            out.put("world", (long) ctx.worldSize());
            out.put("ep", (long) ep);
            out.put("gemm", gemm);
            out.put("fsdp_prefetch", (long) prefetch);
            out.put("B", (long) batch);
            out.put("T", (long) seq);
            out.put("ac", spec.activationCheckpointing());
            out.put("loss_chunk_rows", (long) trainer.model().lossChunkRows(batch * seq));
            out.put("step_s", round(dt, 4));
            out.put("tokens_per_s", Math.round(tokPerGpu * ctx.worldSize()));
            out.put("tokens_per_s_per_gpu", Math.round(tokPerGpu));
            out.put("params", params);
            out.put("active_params", active);
            out.put("mfu_bf16_dense_989", round(flopsPerToken * tokPerGpu / 989e12, 4));
            out.put("loss", last == null ? null : round(last.loss(), 4));
            out.put("peak_mem_gb", round(peakGb[0], 2));
            long planned = plannedPeak(spec, ctx, batch, lossChunk);
            out.put("planned_peak_gb", round(planned / 1e9, 2));
            out.put("planned_peak_bytes", planned);
            out.put("device", cudaBackend != null ? cudaBackend.deviceName() : "cpu");
            Map<String, Object> perStep = new LinkedHashMap<>();
            for (Map.Entry<String, double[]> c : comm.entrySet()) {
                perStep.put(c.getKey() + "_ms", round(c.getValue()[0] * 1000 / timedSteps, 2));
            }
            out.put("comm_per_step", perStep);
            String line = Json.write(out, false);
            if (ctx.rank() == 0) {
                System.out.println(line);
                if (a.out != null) {
                    Files.writeString(a.out, line + "\n");
                }
            }
        } finally {
            if (cudaBackend != null) {
                cudaBackend.close();
            }
        }
        return 0;
    }

    /**
     * The memory planner's peak for this run (the larger of building the model and a step, rank 0), to set beside
     * peak_mem_gb: the request of the trainer's spec (layout, sequence length, precision, activation checkpointing,
     * FSDP prefetch), {@code batch} sequences per rank and the run's loss chunk rows; the CUDA allocator's blocks, or
     * on the CPU the tensors MemoryTracker counts.
     */
    static long plannedPeak(TrainerSpec spec, RankContext ctx, int batch, int lossChunkRows) {
        PlanRequest r = PlanRequest.forTrainer(spec, batch).withLossChunk(lossChunkRows);
        r = r.withPrecision(r.precision(), ctx.isCuda() ? PlanRequest.Device.CUDA : PlanRequest.Device.CPU);
        return MemoryPlanner.plan(r).peakBytes();
    }

    private static double round(double v, int digits) {
        double f = Math.pow(10, digits);
        return Math.round(v * f) / f;
    }
}
