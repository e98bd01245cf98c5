package dev.sparkmoe.parallel.memory;

import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.parallel.mesh.ParallelDims;
import dev.sparkmoe.parallel.plan.Qwen3MoeParallelizer;
import java.util.Locale;

/**
 * What the memory planner is asked about: a model, a layout, the batch of one rank, and the settings that change what
 * a training step keeps in device memory. Validated on construction; every error names the value and how to fix it.
 *
 * @param model                   the model's config (config.json)
 * @param worldSize               ranks, one GPU each (dp_shard equals it: every rank is one FSDP shard)
 * @param ep                      expert-parallel degree (divides worldSize and num_experts)
 * @param batch                   sequences per rank per optimizer step (training.batch_sequences)
 * @param seqLen                  tokens per sequence (training.seq_len)
 * @param gradAccum               micro-batches per step (training.grad_accum), dividing batch
 * @param precision               training.precision
 * @param device                  whose allocations are counted: the CUDA backend's caching allocator, or the CPU
 *                                backend's tensors as {@code MemoryTracker} counts them
 * @param checkpointing           what each decoder layer keeps for backward (training.activation_checkpointing)
 * @param lossChunkTokens         0: the LM head writes the whole [tokens, V] logits (the loss as it is today); n > 0:
 *                                a fused LM head and cross-entropy over chunks of n tokens, with no [tokens, V] tensor
 * @param construction            how a rank builds its model before the first step
 * @param expertImbalance         rows routed to the busiest rank's experts over the mean (1: balanced routing); only
 *                                expert parallelism depends on it
 * @param deviceMemoryBytes       memory of one GPU
 * @param reserveBytes            memory of the GPU that the allocator cannot use: CUDA context, cuBLAS workspace,
 *                                NCCL buffers
 * @param prefetch                how many FSDP units ahead a unit starts gathering
 * @param keepLastLayerGathered   whether the last decoder layer keeps its gathered weights from forward to backward
 */
public record PlanRequest(Qwen3MoeConfig model, int worldSize, int ep, int batch, int seqLen, int gradAccum,
                          Precision precision, Device device, Checkpointing checkpointing, int lossChunkTokens,
                          Construction construction, double expertImbalance, long deviceMemoryBytes,
                          long reserveBytes, int prefetch, boolean keepLastLayerGathered) {

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

    /** training.activation_checkpointing: what a decoder layer keeps from its forward for its backward. */
    public enum Checkpointing {
        /** Every activation the backward pass reads. */
        NONE,
        /** Only the layer's input; the backward pass runs the layer's forward again first. */
        FULL,
        /** The layer's input and its routing (router probabilities, top-k choices and weights). */
        SELECTIVE;

        public static Checkpointing parse(String s) {
            return parseEnum(Checkpointing.class, "activation checkpointing", s);
        }
    }

    /** How a rank builds the model before the first step. */
    public enum Construction {
        /** The full f32 model on every rank, then sharded (what DistributedTrainer does on this branch). */
        FULL,
        /** Each rank allocates only its shards and fills them from a bounded buffer. */
        SHARDED;

        public static Construction parse(String s) {
            return parseEnum(Construction.class, "construction", s);
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
        if (precision == null || device == null || checkpointing == null || construction == null) {
            throw new IllegalArgumentException("precision, device, checkpointing and construction must be given");
        }
        if (lossChunkTokens < 0) {
            throw new IllegalArgumentException("loss chunk (" + lossChunkTokens + " tokens) must be >= 0; 0 keeps "
                    + "the whole logits");
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
        positive("prefetch", prefetch, "FSDP gathers at least the next unit");
    }

    /**
     * A request with the defaults of {@code spark-moe train} (world 1, ep 1, 8 sequences of 512 tokens, no
     * accumulation, bf16) on an 80 GB GPU, for the code as it is: the CUDA backend, no activation checkpointing, the
     * whole logits, full construction, balanced routing, FSDP's prefetch depth and last-layer plan as configured.
     */
    public static PlanRequest defaults(Qwen3MoeConfig model) {
        return new PlanRequest(model, 1, 1, 8, Math.min(512, model.maxPositionEmbeddings()), 1, Precision.BF16,
                Device.CUDA, Checkpointing.NONE, 0, Construction.FULL, 1.0, DEFAULT_DEVICE_MEMORY, DEFAULT_RESERVE,
                dev.sparkmoe.parallel.fsdp.FullyShard.DEFAULT_PREFETCH, Qwen3MoeParallelizer.keepsLastLayerGathered());
    }

    /**
     * The request of a trainer about to be built (a pre-flight check): its model, layout, sequence length,
     * accumulation and precision, {@code batchSequences} sequences per rank, on the CUDA backend unless the spec says
     * cpu.
     */
    public static PlanRequest forTrainer(dev.sparkmoe.parallel.train.TrainerSpec spec, int batchSequences) {
        return defaults(Qwen3MoeConfig.parse(spec.hfConfigJson())).withLayout(spec.dpShard(), spec.ep())
                .withBatch(batchSequences, spec.seqLen(), Math.max(1, spec.optimizer().gradAccumSteps()))
                .withPrecision(Precision.parse(spec.precision()), "cpu".equals(spec.backend()) ? Device.CPU
                        : Device.CUDA);
    }

    public PlanRequest withLayout(int newWorld, int newEp) {
        return new PlanRequest(model, newWorld, newEp, batch, seqLen, gradAccum, precision, device, checkpointing,
                lossChunkTokens, construction, expertImbalance, deviceMemoryBytes, reserveBytes, prefetch,
                keepLastLayerGathered);
    }

    public PlanRequest withBatch(int newBatch, int newSeqLen, int newGradAccum) {
        return new PlanRequest(model, worldSize, ep, newBatch, newSeqLen, newGradAccum, precision, device,
                checkpointing, lossChunkTokens, construction, expertImbalance, deviceMemoryBytes, reserveBytes,
                prefetch, keepLastLayerGathered);
    }

    public PlanRequest withPrecision(Precision p, Device d) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, p, d, checkpointing, lossChunkTokens,
                construction, expertImbalance, deviceMemoryBytes, reserveBytes, prefetch, keepLastLayerGathered);
    }

    public PlanRequest withCheckpointing(Checkpointing c) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, device, c, lossChunkTokens,
                construction, expertImbalance, deviceMemoryBytes, reserveBytes, prefetch, keepLastLayerGathered);
    }

    public PlanRequest withLossChunk(int tokens) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, device, checkpointing,
                tokens, construction, expertImbalance, deviceMemoryBytes, reserveBytes, prefetch,
                keepLastLayerGathered);
    }

    public PlanRequest withConstruction(Construction c) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, device, checkpointing,
                lossChunkTokens, c, expertImbalance, deviceMemoryBytes, reserveBytes, prefetch,
                keepLastLayerGathered);
    }

    public PlanRequest withExpertImbalance(double f) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, device, checkpointing,
                lossChunkTokens, construction, f, deviceMemoryBytes, reserveBytes, prefetch, keepLastLayerGathered);
    }

    public PlanRequest withMemory(long device, long reserve) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, this.device, checkpointing,
                lossChunkTokens, construction, expertImbalance, device, reserve, prefetch, keepLastLayerGathered);
    }

    public PlanRequest withFsdpSchedule(int newPrefetch, boolean keepLast) {
        return new PlanRequest(model, worldSize, ep, batch, seqLen, gradAccum, precision, device, checkpointing,
                lossChunkTokens, construction, expertImbalance, deviceMemoryBytes, reserveBytes, newPrefetch, keepLast);
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
