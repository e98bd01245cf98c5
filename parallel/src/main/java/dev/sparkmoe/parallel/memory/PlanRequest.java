package dev.sparkmoe.parallel.memory;

import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.parallel.mesh.ParallelDims;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.util.Locale;

/**
 * What the memory planner is asked about: a model, a layout, the batch of one rank, and the settings that change what
 * a training step keeps in device memory. Validated on construction; every error names the value and how to fix it.
 *
 * @param model             the model's config (config.json)
 * @param worldSize         ranks, one GPU each (dp_shard equals it: every rank is one FSDP shard)
 * @param ep                expert-parallel degree (divides worldSize and num_experts)
 * @param batch             sequences per rank per optimizer step (training.batch_sequences)
 * @param seqLen            tokens per sequence (training.seq_len)
 * @param gradAccum         micro-batches per step (training.grad_accum), dividing batch
 * @param precision         training.precision
 * @param device            whose allocations are counted: the CUDA backend's caching allocator, or the CPU backend's
 *                          tensors as {@code MemoryTracker} counts them
 * @param checkpointing     what each decoder layer keeps for backward (training.activation_checkpointing)
 * @param lossChunkRows     token rows per chunk of the fused LM head and loss, as
 *                          {@code Qwen3MoeModel.setLossChunkRows}: 0 for the model's rule (the hidden size), a count
 *                          of at least the micro-batch's tokens for one chunk of all of them
 * @param expertImbalance   rows routed to the busiest rank's experts over the mean (1: balanced routing); only expert
 *                          parallelism depends on it
 * @param deviceMemoryBytes memory of one GPU
 * @param reserveBytes      memory of the GPU that the allocator cannot use: CUDA context, cuBLAS workspace, NCCL
 *                          buffers
 * @param prefetch          FSDP units whose all-gathers start ahead of the unit computing (training.fsdp_prefetch)
 */
public record PlanRequest(Qwen3MoeConfig model, int worldSize, int ep, int batch, int seqLen, int gradAccum,
                          Precision precision, Device device, ActivationCheckpointing checkpointing, int lossChunkRows,
                          double expertImbalance, long deviceMemoryBytes, long reserveBytes, int prefetch) {

    /** The compute precision (FSDP2's mixed-precision policy); master weights and AdamW state are f32 either way. */
    public enum Precision {
        BF16, F32;

        public static Precision parse(String s) {
            return parseEnum(Precision.class, "precision", s);
        }
    }

    /** The backend whose allocations the plan counts. */
    public enum Device {
        /** CudaBackend: its caching allocator's block sizes, bf16 images and copies, kernels' scratch. */
        CUDA,
        /** CpuBackend: the tensors the model and FSDP allocate, as MemoryTracker counts them (4 bytes a float). */
        CPU;

        public static Device parse(String s) {
            return parseEnum(Device.class, "backend", s);
        }
    }

    /** 80 GB, the memory of an H100 (decimal gigabytes, as TrainBench's peak_mem_gb). */
    public static final long DEFAULT_DEVICE_MEMORY = 80_000_000_000L;
    /** What a GPU keeps outside the caching allocator: CUDA context, cuBLAS workspace, NCCL's buffers. */
    public static final long DEFAULT_RESERVE = 2_000_000_000L;

    public PlanRequest {
        if (model == null) {
            throw new IllegalArgumentException("no model config given; pass a preset, a config.json or a checkpoint "
                    + "directory");
        }
        if (model.numExperts() < 1) {
            throw new IllegalArgumentException("num_experts is " + model.numExperts() + ": the planner covers "
                    + "Qwen3-MoE models with routed experts (num_experts >= 1)");
        }
        ParallelDims.infer(ep, worldSize).validateFor(model.numExperts());
        positive("batch (sequences per rank)", batch, "the global batch is batch x world size");
        positive("sequence length", seqLen, "e.g. 2048");
        if (seqLen > model.maxPositionEmbeddings()) {
            throw new IllegalArgumentException("sequence length " + seqLen + " exceeds max_position_embeddings ("
                    + model.maxPositionEmbeddings() + ") of the model; use at most " + model.maxPositionEmbeddings());
        }
        positive("grad_accum", gradAccum, "1 runs the whole batch at once");
        if (batch % gradAccum != 0) {
            throw new IllegalArgumentException("grad_accum (" + gradAccum + ") must divide the batch (" + batch
                    + " sequences per rank); choose one of " + divisors(batch));
        }
        if (precision == null || device == null || checkpointing == null) {
            throw new IllegalArgumentException("precision, device and activation checkpointing must be given");
        }
        if (lossChunkRows < 0) {
            throw new IllegalArgumentException("loss chunk (" + lossChunkRows + " rows) must be >= 0; 0 chooses the "
                    + "model's rule (as many rows as the hidden size)");
        }
        if (!(expertImbalance >= 1.0) || expertImbalance > ep) {
            throw new IllegalArgumentException("expert imbalance (" + expertImbalance + ") must lie in [1, ep = "
                    + ep + "]: it is the rows of the busiest rank's experts over the mean (1 = balanced routing)");
        }
        if (deviceMemoryBytes <= 0) {
            throw new IllegalArgumentException("GPU memory (" + deviceMemoryBytes + " bytes) must be positive, "
                    + "e.g. 80GB");
        }
        if (reserveBytes < 0 || reserveBytes >= deviceMemoryBytes) {
            throw new IllegalArgumentException("reserve (" + reserveBytes + " bytes) must lie in [0, GPU memory = "
                    + deviceMemoryBytes + " bytes)");
        }
        positive("FSDP prefetch", prefetch, "units gathered ahead of the one computing (training.fsdp_prefetch; "
                + TrainerSpec.DEFAULT_FSDP_PREFETCH + " by default)");
    }

    /**
     * A request with the defaults of {@code spark-moe train} (world 1, ep 1, 8 sequences of 512 tokens, no
     * accumulation, bf16, no activation checkpointing, FSDP's default prefetch) on an 80 GB GPU: the CUDA backend, the
     * model's loss chunks, balanced routing.
     */
    public static PlanRequest defaults(Qwen3MoeConfig model) {
        return new PlanRequest(model, 1, 1, 8, Math.min(512, model.maxPositionEmbeddings()), 1, Precision.BF16,
                Device.CUDA, ActivationCheckpointing.NONE, 0, 1.0, DEFAULT_DEVICE_MEMORY, DEFAULT_RESERVE,
                TrainerSpec.DEFAULT_FSDP_PREFETCH);
    }

    /**
     * The request of a trainer about to be built (a pre-flight check): its model, layout, sequence length,
     * accumulation, precision, activation checkpointing and FSDP prefetch, {@code batchSequences} sequences per rank,
     * on the CUDA backend unless the spec says cpu.
     */
    public static PlanRequest forTrainer(TrainerSpec spec, int batchSequences) {
        return defaults(Qwen3MoeConfig.parse(spec.hfConfigJson())).withLayout(spec.dpShard(), spec.ep())
                .withBatch(batchSequences, spec.seqLen(), Math.max(1, spec.optimizer().gradAccumSteps()))
                .withPrecision(Precision.parse(spec.precision()), "cpu".equals(spec.backend()) ? Device.CPU
                        : Device.CUDA)
                .withCheckpointing(spec.checkpointing()).withPrefetch(spec.fsdpPrefetch());
    }

    public PlanRequest withLayout(int newWorld, int newEp) {
        return new PlanRequest(model, newWorld, newEp, batch, seqLen, gradAccum, precision, device, checkpointing,
                lossChunkRows, expertImbalance, deviceMemoryBytes, reserveBytes, prefetch);
    }

    public PlanRequest withBatch(int newBatch, int newSeqLen, int newGradAccum) {
        return new PlanRequest(model, worldSize, ep, newBatch, newSeqLen, newGradAccum, precision, device,
                checkpointing, lossChunkRows, expertImbalance, deviceMemoryBytes, reserveBytes, prefetch);
    }

    public PlanRequest withPrecision(Precision p, Device d) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, p, d, checkpointing, lossChunkRows,
                expertImbalance, deviceMemoryBytes, reserveBytes, prefetch);
    }

    public PlanRequest withCheckpointing(ActivationCheckpointing c) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, device, c, lossChunkRows,
                expertImbalance, deviceMemoryBytes, reserveBytes, prefetch);
    }

    /** Rows per loss chunk, as {@code Qwen3MoeModel.setLossChunkRows} (0: the model's rule). */
    public PlanRequest withLossChunk(int rows) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, device, checkpointing,
                rows, expertImbalance, deviceMemoryBytes, reserveBytes, prefetch);
    }

    public PlanRequest withExpertImbalance(double f) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, device, checkpointing,
                lossChunkRows, f, deviceMemoryBytes, reserveBytes, prefetch);
    }

    public PlanRequest withMemory(long device, long reserve) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, this.device, checkpointing,
                lossChunkRows, expertImbalance, device, reserve, prefetch);
    }

    public PlanRequest withPrefetch(int units) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, device, checkpointing,
                lossChunkRows, expertImbalance, deviceMemoryBytes, reserveBytes, units);
    }

    /** Tokens of one micro-batch (what one forward pass sees). */
    public long microBatchTokens() {
        return (long) batch / gradAccum * seqLen;
    }

    /** The rows of each loss chunk in a micro-batch of {@code tokens} tokens, as the model chooses them. */
    public int lossChunkRows(int tokens) {
        return Qwen3MoeModel.lossChunkRows(model, tokens, lossChunkRows);
    }

    /** Whether the backend holds bf16 images and copies (the CUDA backend at bf16). */
    boolean bf16Device() {
        return device == Device.CUDA && precision == Precision.BF16;
    }

    private static void positive(String what, int v, String hint) {
        if (v < 1) {
            throw new IllegalArgumentException(what + " (" + v + ") must be >= 1; " + hint);
        }
    }

    private static java.util.List<Integer> divisors(int n) {
        java.util.List<Integer> d = new java.util.ArrayList<>();
        for (int k = 1; k <= n; k++) {
            if (n % k == 0) {
                d.add(k);
            }
        }
        return d;
    }

    static <E extends Enum<E>> E parseEnum(Class<E> type, String what, String s) {
        if (s != null) {
            for (E e : type.getEnumConstants()) {
                if (e.name().equalsIgnoreCase(s.trim())) {
                    return e;
                }
            }
        }
        StringBuilder names = new StringBuilder();
        for (E e : type.getEnumConstants()) {
            names.append(names.length() == 0 ? "" : " | ").append(e.name().toLowerCase(Locale.ROOT));
        }
        throw new IllegalArgumentException(what + " '" + s + "' is not one of " + names);
    }
}
