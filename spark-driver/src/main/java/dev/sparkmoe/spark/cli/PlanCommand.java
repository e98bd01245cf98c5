package dev.sparkmoe.spark.cli;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.parallel.memory.MemoryPlan;
import dev.sparkmoe.parallel.memory.MemoryPlanner;
import dev.sparkmoe.parallel.memory.PlanReport;
import dev.sparkmoe.parallel.memory.PlanRequest;
import dev.sparkmoe.parallel.memory.Suggestion;
import dev.sparkmoe.parallel.tools.Cli;
import dev.sparkmoe.parallel.train.TrainerSpec;
import dev.sparkmoe.spark.config.ConfigKey;
import dev.sparkmoe.spark.config.ModelPresets;
import dev.sparkmoe.spark.config.ModelSource;
import dev.sparkmoe.spark.config.TrainConfig;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import picocli.CommandLine;

/**
 * {@code spark-moe plan}: the memory planner ({@link MemoryPlanner}) on the command line. It reads the model and
 * the run's settings (from the options, or from a train config through the {@link TrainerSpec} the trainer would
 * get: {@link PlanRequest#forTrainer}) into a {@link PlanRequest} and prints {@link PlanReport}; exit 0 when the run
 * fits, 1 when it does not, 2 on bad input (one {@code error:} line naming the value and the fix).
 */
@CommandLine.Command(name = "plan", mixinStandardHelpOptions = true, usageHelpAutoWidth = true, sortOptions = false,
        description = {"Per-GPU memory of a training run before it runs: parameter shards, gradients, AdamW state, "
                + "gathered FSDP units, the activations each layer keeps, the fused loss, workspace and the peak; "
                + "whether it fits the GPU and, if not, the mildest change of each kind that would.",
            "The model comes from --model or from a train config (--config); the options override what the config "
                + "says."},
        footer = {"", "Exit status: 0 the run fits, 1 it does not (the changes that would fit are listed), 2 bad "
                + "input."})
final class PlanCommand implements Callable<Integer> {
    private final PrintStream out;

    @CommandLine.Option(names = "--model", paramLabel = "PRESET|CONFIG.json|DIR",
            description = "a preset (${COMPLETION-CANDIDATES}), a config.json, or a Hugging Face checkpoint "
                    + "directory (its config.json)", completionCandidates = Presets.class)
    String model;

    @CommandLine.Option(names = "--config", paramLabel = "RUN.yaml",
            description = "a train config: its model, layout.world_size, layout.ep, training.batch_sequences, "
                    + "training.seq_len, training.grad_accum, training.precision, training.backend, "
                    + "training.activation_checkpointing and training.fsdp_prefetch")
    Path config;

    @CommandLine.Option(names = "--set", paramLabel = "KEY=VALUE",
            description = "override one key of --config (repeatable), as spark-moe train does")
    List<String> sets = new ArrayList<>();

    @CommandLine.Option(names = {"--world-size", "--dp-shard"}, paramLabel = "N",
            description = "ranks, one GPU each (dp_shard = N); default 1")
    Integer worldSize;

    @CommandLine.Option(names = "--ep", paramLabel = "M", description = "expert-parallel degree; default 1")
    Integer ep;

    @CommandLine.Option(names = "--batch", paramLabel = "B",
            description = "sequences per rank per step (training.batch_sequences); default 8")
    Integer batch;

    @CommandLine.Option(names = "--seq", paramLabel = "T",
            description = "tokens per sequence (training.seq_len); default 512")
    Integer seq;

    @CommandLine.Option(names = "--grad-accum", paramLabel = "A",
            description = "micro-batches per step (training.grad_accum); default 1")
    Integer gradAccum;

    @CommandLine.Option(names = "--precision", paramLabel = "bf16|f32",
            description = "training.precision; default bf16")
    PlanRequest.Precision precision;

    @CommandLine.Option(names = {"--activation-checkpointing", "--ac"}, paramLabel = "none|full|selective",
            description = "what each layer keeps for its backward (training.activation_checkpointing); default none")
    ActivationCheckpointing checkpointing;

    @CommandLine.Option(names = "--fsdp-prefetch", paramLabel = "UNITS",
            description = "FSDP units gathered ahead (training.fsdp_prefetch); default "
                    + TrainerSpec.DEFAULT_FSDP_PREFETCH)
    Integer prefetch;

    @CommandLine.Option(names = "--loss-chunk", paramLabel = "ROWS",
            description = "token rows per chunk of the fused LM head and loss (TrainBench --loss-chunk); default 0: "
                    + "the model's rule, as many rows as the hidden size")
    Integer lossChunk;

    @CommandLine.Option(names = "--backend", paramLabel = "cuda|cpu",
            description = "count the CUDA backend's allocator blocks, or the CPU backend's tensors as MemoryTracker "
                    + "does; default cuda (cpu when the config's training.backend is cpu)")
    PlanRequest.Device backend;

    @CommandLine.Option(names = "--gpu-memory", paramLabel = "SIZE", converter = SizeConverter.class,
            description = "memory of one GPU, e.g. 80GB (10^9 bytes), 141GB, 80GiB (2^30 bytes); default 80GB")
    Long gpuMemory;

    @CommandLine.Option(names = "--reserve", paramLabel = "SIZE", converter = SizeConverter.class,
            description = "memory the allocator cannot use (CUDA context, cuBLAS, NCCL); default 2GB")
    Long reserve;

    @CommandLine.Option(names = "--expert-imbalance", paramLabel = "F",
            description = "rows of the busiest rank's experts over the mean under ep > 1; default 1 (balanced)")
    Double expertImbalance;

    @CommandLine.Option(names = "--json", description = "one JSON object instead of the table")
    boolean json;

    PlanCommand(PrintStream out) {
        this.out = out;
    }

    @Override
    public Integer call() {
        PlanRequest request = request();
        MemoryPlan plan = MemoryPlanner.plan(request);
        List<Suggestion> advice = MemoryPlanner.advise(request);
        out.print(json ? PlanReport.json(plan, advice) + "\n" : PlanReport.text(plan, advice));
        out.flush();
        return plan.fits() ? Cli.OK : Cli.FAILED;
    }

    /** The request the options describe; bad input throws {@link Cli.UsageException} naming the value. */
    PlanRequest request() {
        try {
            return build();
        } catch (Cli.UsageException e) {
            throw e;
        } catch (IllegalArgumentException e) { // ConfigException and PlanRequest's checks too
            throw new Cli.UsageException(e.getMessage());
        }
    }

    private PlanRequest build() {
        if ((model == null) == (config == null)) {
            throw new Cli.UsageException("give the model by --model PRESET|CONFIG.json|DIR or a train config by "
                    + "--config RUN.yaml (one of them)");
        }
        if (!sets.isEmpty() && config == null) {
            throw new Cli.UsageException("--set overrides keys of --config RUN.yaml; with --model use the options "
                    + "(--world-size, --batch, ...)");
        }
        PlanRequest r = config != null ? fromConfig(TrainConfig.load(config, sets))
                : PlanRequest.defaults(model(model));
        r = r.withLayout(or(worldSize, r.worldSize()), or(ep, r.ep()))
                .withBatch(or(batch, r.batch()), or(seq, r.seqLen()), or(gradAccum, r.gradAccum()))
                .withPrecision(precision != null ? precision : r.precision(), backend != null ? backend : r.device())
                .withMemory(gpuMemory != null ? gpuMemory : r.deviceMemoryBytes(),
                        reserve != null ? reserve : r.reserveBytes())
                .withLossChunk(or(lossChunk, r.lossChunkRows()))
                .withPrefetch(or(prefetch, r.prefetch()))
                .withExpertImbalance(expertImbalance != null ? expertImbalance : r.expertImbalance());
        return checkpointing != null ? r.withCheckpointing(checkpointing) : r;
    }

    private static int or(Integer v, int dflt) {
        return v != null ? v : dflt;
    }

    /**
     * The request of the trainer a train config makes: the {@link TrainerSpec} {@code spark-moe train} would build
     * (model, layout, sequence length, accumulation, precision, backend, FSDP prefetch, activation checkpointing),
     * with the config's sequences per rank.
     */
    static PlanRequest fromConfig(TrainConfig c) {
        ModelSource model = ModelSource.resolve(c);
        TrainerSpec.OptimizerSettings opt = new TrainerSpec.OptimizerSettings(c.lr(),
                c.getDouble(ConfigKey.TRAINING_MIN_LR), c.getLong(ConfigKey.TRAINING_WARMUP), c.steps(),
                c.getString(ConfigKey.TRAINING_SCHEDULE), c.getDouble(ConfigKey.TRAINING_BETA1),
                c.getDouble(ConfigKey.TRAINING_BETA2), c.getDouble(ConfigKey.TRAINING_EPS),
                c.getDouble(ConfigKey.TRAINING_WEIGHT_DECAY), c.getDouble(ConfigKey.TRAINING_CLIP), c.gradAccum());
        TrainerSpec spec = new TrainerSpec(model.hfConfigJson(), model.initCheckpointDir(), c.seed(), c.worldSize(),
                c.ep(), c.seqLen(), opt, c.getString(ConfigKey.TRAINING_BACKEND), -1,
                c.getString(ConfigKey.TRAINING_PRECISION), c.getInt(ConfigKey.TRAINING_FSDP_PREFETCH),
                c.getInt(ConfigKey.TRAINING_CPU_BLAS_THREADS),
                c.getString(ConfigKey.TRAINING_ACTIVATION_CHECKPOINTING));
        return PlanRequest.forTrainer(spec, c.batchSequences());
    }

    /** A preset name, a config.json file, or a checkpoint directory holding one. */
    static Qwen3MoeConfig model(String m) {
        Path p = Path.of(m);
        if (Files.isDirectory(p)) {
            Path cj = p.resolve("config.json");
            if (!Files.isRegularFile(cj)) {
                throw new Cli.UsageException("--model " + m + " is a directory without config.json; point it at a "
                        + "Hugging Face checkpoint directory or a config.json");
            }
            p = cj;
        }
        String text;
        if (Files.isRegularFile(p)) {
            try {
                text = Files.readString(p, StandardCharsets.UTF_8);
            } catch (IOException e) {
                throw new Cli.UsageException("cannot read --model " + p + ": " + e.getMessage());
            }
        } else if (ModelPresets.names().contains(m)) {
            text = Json.write(ModelPresets.get(m), false);
        } else {
            throw new Cli.UsageException("--model '" + m + "' is neither a preset (" + String.join(", ",
                    ModelPresets.names()) + ") nor an existing config.json or checkpoint directory");
        }
        try {
            return Qwen3MoeConfig.parse(text);
        } catch (IllegalArgumentException e) {
            throw new Cli.UsageException("--model " + m + ": " + e.getMessage());
        }
    }

    /** The presets, for --model's help. */
    static final class Presets extends ArrayList<String> {
        private static final long serialVersionUID = 1L;

        Presets() {
            super(ModelPresets.names());
        }
    }

    private static final Pattern SIZE = Pattern.compile("(\\d+(?:\\.\\d+)?)\\s*([KMGT]i?B|B)",
            Pattern.CASE_INSENSITIVE);

    /** A memory size with its unit: decimal (GB = 10^9 bytes, as TrainBench reports) or binary (GiB = 2^30). */
    static long size(String s) {
        Matcher m = SIZE.matcher(s.trim());
        if (!m.matches()) {
            throw new IllegalArgumentException("'" + s + "' is not a size with a unit, e.g. 80GB (10^9 bytes) or "
                    + "80GiB (2^30 bytes)");
        }
        String unit = m.group(2).toUpperCase(Locale.ROOT);
        int power = "KMGT".indexOf(unit.charAt(0)) + 1; // 0 for plain bytes
        double base = unit.contains("I") ? 1024 : 1000;
        return Math.round(Double.parseDouble(m.group(1)) * Math.pow(base, power));
    }

    /** --gpu-memory and --reserve. */
    static final class SizeConverter implements CommandLine.ITypeConverter<Long> {
        @Override
        public Long convert(String value) {
            try {
                return size(value);
            } catch (IllegalArgumentException e) {
                throw new CommandLine.TypeConversionException(e.getMessage());
            }
        }
    }
}
