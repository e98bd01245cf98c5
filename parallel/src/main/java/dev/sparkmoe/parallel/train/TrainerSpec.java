package dev.sparkmoe.parallel.train;

import dev.sparkmoe.core.model.ActivationCheckpointing;
import java.io.Serializable;

/**
 * Everything a rank needs to build its {@link RankTrainer}: identical on every rank of a job, serialisable so that
 * the Spark driver can ship it inside the barrier task closure.
 *
 * @param hfConfigJson      the model's Hugging Face config.json text
 * @param initCheckpointDir a local directory holding Hugging Face safetensors weights (single or sharded), or null
 *                          for random initialisation from {@code seed}
 * @param seed              seed for random initialisation (and anything else random in the trainer)
 * @param dpShard           FSDP degree (equals the world size)
 * @param ep                expert-parallel degree (divides dpShard and num_experts)
 * @param seqLen            tokens per training sequence (each sequence handed to {@link RankTrainer#step} has
 *                          seqLen + 1 ids)
 * @param optimizer         AdamW, schedule, clipping and accumulation settings
 * @param backend           "auto", "cpu" or "cuda"
 * @param deviceId          GPU ordinal for the cuda backend (-1 when none)
 * @param precision         "f32" or "bf16": the mixed-precision policy's compute dtype (master weights, optimizer
 *                          state and gradient reduction stay f32). A backend without bf16 kernels (the CPU backend)
 *                          computes in f32 and logs that it does.
 * @param fsdpPrefetch      FSDP units whose all-gathers start ahead of the unit computing (at least 1; see
 *                          {@code FullyShard(int)})
 * @param cpuBlasThreads    OpenBLAS threads of the CPU backend (at least 1; a process-wide setting)
 * @param activationCheckpointing "none", "full" or "selective": what each decoder layer keeps for its backward
 *                          pass ({@link ActivationCheckpointing}); the same results
 */
public record TrainerSpec(String hfConfigJson, String initCheckpointDir, long seed, int dpShard, int ep, int seqLen,
                          OptimizerSettings optimizer, String backend, int deviceId, String precision,
                          int fsdpPrefetch, int cpuBlasThreads, String activationCheckpointing)
        implements Serializable {

    /** FSDP units gathered ahead unless the job says otherwise. */
    public static final int DEFAULT_FSDP_PREFETCH = dev.sparkmoe.parallel.fsdp.FullyShard.DEFAULT_PREFETCH;
    /** OpenBLAS threads of the CPU backend unless the job says otherwise. */
    public static final int DEFAULT_CPU_BLAS_THREADS = 1;

    public TrainerSpec {
        if (precision == null || !(precision.equals("f32") || precision.equals("bf16"))) {
            throw new IllegalArgumentException("precision must be f32 or bf16, got '" + precision + "'");
        }
        if (fsdpPrefetch < 1) {
            throw new IllegalArgumentException("fsdpPrefetch (" + fsdpPrefetch + ") must be at least 1 (FSDP units "
                    + "gathered ahead; " + DEFAULT_FSDP_PREFETCH + " is the default)");
        }
        if (cpuBlasThreads < 1) {
            throw new IllegalArgumentException("cpuBlasThreads (" + cpuBlasThreads + ") must be at least 1 (OpenBLAS "
                    + "threads of the CPU backend; " + DEFAULT_CPU_BLAS_THREADS + " is the default)");
        }
        activationCheckpointing = ActivationCheckpointing.parse(activationCheckpointing).configName();
    }

    /** A spec with the default FSDP prefetch and CPU BLAS threads. */
    public TrainerSpec(String hfConfigJson, String initCheckpointDir, long seed, int dpShard, int ep, int seqLen,
                       OptimizerSettings optimizer, String backend, int deviceId, String precision,
                       String activationCheckpointing) {
        this(hfConfigJson, initCheckpointDir, seed, dpShard, ep, seqLen, optimizer, backend, deviceId, precision,
                DEFAULT_FSDP_PREFETCH, DEFAULT_CPU_BLAS_THREADS, activationCheckpointing);
    }

    /** A spec without activation checkpointing. */
    public TrainerSpec(String hfConfigJson, String initCheckpointDir, long seed, int dpShard, int ep, int seqLen,
                       OptimizerSettings optimizer, String backend, int deviceId, String precision) {
        this(hfConfigJson, initCheckpointDir, seed, dpShard, ep, seqLen, optimizer, backend, deviceId, precision,
                "none");
    }

    /** A spec in full f32 precision, without activation checkpointing. */
    public TrainerSpec(String hfConfigJson, String initCheckpointDir, long seed, int dpShard, int ep, int seqLen,
                       OptimizerSettings optimizer, String backend, int deviceId) {
        this(hfConfigJson, initCheckpointDir, seed, dpShard, ep, seqLen, optimizer, backend, deviceId, "f32");
    }

    /** The same spec for another backend and device (what a Spark task knows once it has its GPU). */
    public TrainerSpec onDevice(String newBackend, int newDeviceId) {
        return new TrainerSpec(hfConfigJson, initCheckpointDir, seed, dpShard, ep, seqLen, optimizer, newBackend,
                newDeviceId, precision, fsdpPrefetch, cpuBlasThreads, activationCheckpointing);
    }

    /**
     * The same spec at another layout: {@code world} ranks (the FSDP degree), expert parallelism {@code ep} and
     * {@code gradAccumSteps} micro-batches per step (what an attempt resumed on fewer ranks trains with).
     */
    public TrainerSpec atLayout(int world, int epDegree, int gradAccumSteps) {
        OptimizerSettings o = optimizer;
        OptimizerSettings opt = new OptimizerSettings(o.lr(), o.minLr(), o.warmupSteps(), o.totalSteps(), o.schedule(),
                o.beta1(), o.beta2(), o.eps(), o.weightDecay(), o.clipNorm(), gradAccumSteps);
        return new TrainerSpec(hfConfigJson, initCheckpointDir, seed, world, epDegree, seqLen, opt, backend, deviceId,
                precision, fsdpPrefetch, cpuBlasThreads, activationCheckpointing);
    }

    /** The same spec with another activation checkpointing setting ("none", "full" or "selective"). */
    public TrainerSpec withActivationCheckpointing(String mode) {
        return new TrainerSpec(hfConfigJson, initCheckpointDir, seed, dpShard, ep, seqLen, optimizer, backend,
                deviceId, precision, fsdpPrefetch, cpuBlasThreads, mode);
    }

    /** {@link #activationCheckpointing()} as the model's setting. */
    public ActivationCheckpointing checkpointing() {
        return ActivationCheckpointing.parse(activationCheckpointing);
    }

    /**
     * @param lr             peak learning rate
     * @param minLr          learning rate at the end of the decay
     * @param warmupSteps    linear warm-up steps from 0 to lr
     * @param totalSteps     steps of the whole run (the decay ends here)
     * @param schedule       "cosine", "linear" or "constant" decay after warm-up
     * @param beta1          AdamW beta1
     * @param beta2          AdamW beta2
     * @param eps            AdamW epsilon
     * @param weightDecay    decoupled weight decay
     * @param clipNorm       clip the global gradient norm to this value (0 or less: no clipping)
     * @param gradAccumSteps micro-batches per optimizer step: a rank's sequences are split into this many parts,
     *                       whose gradients are summed before the update
     */
    public record OptimizerSettings(double lr, double minLr, long warmupSteps, long totalSteps, String schedule,
                                    double beta1, double beta2, double eps, double weightDecay, double clipNorm,
                                    int gradAccumSteps) implements Serializable {
    }
}
