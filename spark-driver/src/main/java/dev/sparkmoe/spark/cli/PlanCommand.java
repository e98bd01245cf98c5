package dev.sparkmoe.spark.cli;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.parallel.memory.MemoryPlan;
import dev.sparkmoe.parallel.memory.MemoryPlanner;
import dev.sparkmoe.parallel.memory.PlanReport;
import dev.sparkmoe.parallel.memory.PlanRequest;
import dev.sparkmoe.spark.config.ConfigException;
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
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * {@code spark-moe plan}: the memory planner ({@link MemoryPlanner}) on the command line. This class only reads the
 * options into a {@link PlanRequest} and prints {@link PlanReport}; exit 0 when the run fits, 1 when it does not, 2 on
 * bad input.
 */
public final class PlanCommand {
    private PlanCommand() {
    }

    static final String USAGE = String.join("\n",
            "usage: spark-moe plan (--model PRESET|CONFIG.json|CHECKPOINT_DIR | --config RUN.yaml [--set key=value ...])",
            "                      [--world-size N] [--ep M] [--batch B] [--seq T] [--grad-accum A] [--precision bf16|f32]",
            "                      [--gpu-memory 80GB] [--reserve 2GB] [--backend cuda|cpu] [--json]",
            "                      [--activation-checkpointing none|full|selective] [--loss-chunk TOKENS]",
            "                      [--expert-imbalance F]",
            "Per-rank device memory of a training run: parameters, gradients, AdamW state, gathered FSDP units,",
            "activations, workspace and the peak; whether it fits the GPU, and if not, what to change.",
            "  --model            a preset (" + String.join(", ", ModelPresets.names()) + "), a config.json, or a",
            "                     Hugging Face checkpoint directory (its config.json)",
            "  --config RUN.yaml  the model, layout and training keys of a train config (options below override)",
            "  --world-size N     ranks, one GPU each (dp_shard = N; --dp-shard is the same), default 1",
            "  --ep M             expert-parallel degree, default 1",
            "  --batch B          sequences per rank per step (training.batch_sequences), default 8",
            "  --seq T            tokens per sequence (training.seq_len), default 512",
            "  --grad-accum A     micro-batches per step (training.grad_accum), default 1",
            "  --precision        training.precision, default bf16",
            "  --gpu-memory SIZE  memory of one GPU, e.g. 80GB, 141GB, 80GiB; default 80GB",
            "  --reserve SIZE     memory the allocator cannot use (CUDA context, cuBLAS, NCCL), default 2GB",
            "  --backend          count the CUDA backend's allocator blocks (cuda, default) or the CPU backend's tensors",
            "  --activation-checkpointing  what a layer keeps for backward (default none)",
            "  --loss-chunk N     rows per chunk of the fused LM head and loss (default 0: the hidden size)",
            "  --expert-imbalance rows of the busiest rank's experts over the mean under ep > 1, default 1",
            "  --json             one JSON object instead of the table");

    /** Runs the command; {@code args} excludes the word "plan". */
    public static int run(String[] args, PrintStream out, PrintStream err) {
        PlanRequest request;
        boolean json;
        try {
            Options o = parse(args);
            if (o.help) {
                out.println(USAGE);
                return 0;
            }
            request = o.request;
            json = o.json;
        } catch (IllegalArgumentException e) { // ConfigException too
            err.println("spark-moe plan: " + e.getMessage());
            return 2;
        }
        MemoryPlan plan = MemoryPlanner.plan(request);
        List<dev.sparkmoe.parallel.memory.Suggestion> advice = MemoryPlanner.advise(request);
        out.print(json ? PlanReport.json(plan, advice) + "\n" : PlanReport.text(plan, advice));
        return plan.fits() ? 0 : 1;
    }

    /** Parsed options. */
    record Options(PlanRequest request, boolean json, boolean help) {
    }

    static Options parse(String[] args) {
        String model = null;
        String config = null;
        List<String> sets = new ArrayList<>();
        Map<String, String> v = new java.util.LinkedHashMap<>();
        boolean json = false;
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            switch (a) {
                case "-h":
                case "--help":
                    return new Options(null, false, true);
                case "--json":
                    json = true;
                    continue;
                default:
                    break;
            }
            if (!a.startsWith("--")) {
                throw new IllegalArgumentException("unexpected argument '" + a + "'\n" + USAGE);
            }
            if (i + 1 >= args.length) {
                throw new IllegalArgumentException("option " + a + " needs a value\n" + USAGE);
            }
            String value = args[++i];
            switch (a) {
                case "--model": model = value; break;
                case "--config": config = value; break;
                case "--set": sets.add(value); break;
                case "--dp-shard": v.put("--world-size", value); break;
                case "--world-size": case "--ep": case "--batch": case "--seq": case "--grad-accum":
                case "--precision": case "--gpu-memory": case "--reserve": case "--backend":
                case "--activation-checkpointing": case "--loss-chunk":
                case "--expert-imbalance":
                    v.put(a, value);
                    break;
                default:
                    throw new IllegalArgumentException("unknown option " + a + "\n" + USAGE);
            }
        }
        if ((model == null) == (config == null)) {
            throw new IllegalArgumentException("give the model by --model or a train config by --config (one of "
                    + "them)\n" + USAGE);
        }
        if (!sets.isEmpty() && config == null) {
            throw new IllegalArgumentException("--set overrides keys of --config RUN.yaml; with --model use the "
                    + "options (--world-size, --batch, ...)");
        }
        PlanRequest r;
        if (config != null) {
            TrainConfig c = TrainConfig.load(Path.of(config), sets);
            r = PlanRequest.defaults(Qwen3MoeConfig.parse(ModelSource.resolve(c).hfConfigJson()))
                    .withLayout(c.worldSize(), c.ep()).withBatch(c.batchSequences(), c.seqLen(), c.gradAccum())
                    .withPrecision(PlanRequest.Precision.parse(c.getString(ConfigKey.TRAINING_PRECISION)),
                            PlanRequest.Device.CUDA);
        } else {
            r = PlanRequest.defaults(model(model));
        }
        r = r.withLayout(integer(v, "--world-size", r.worldSize()), integer(v, "--ep", r.ep()))
                .withBatch(integer(v, "--batch", r.batch()), integer(v, "--seq", r.seqLen()),
                        integer(v, "--grad-accum", r.gradAccum()))
                .withPrecision(v.containsKey("--precision") ? PlanRequest.Precision.parse(v.get("--precision"))
                        : r.precision(), v.containsKey("--backend") ? PlanRequest.Device.parse(v.get("--backend"))
                        : r.device())
                .withMemory(size(v, "--gpu-memory", r.deviceMemoryBytes()), size(v, "--reserve", r.reserveBytes()))
                .withLossChunk(integer(v, "--loss-chunk", r.lossChunkRows()))
                .withExpertImbalance(v.containsKey("--expert-imbalance") ? number(v, "--expert-imbalance")
                        : r.expertImbalance());
        if (v.containsKey("--activation-checkpointing")) {
            r = r.withCheckpointing(dev.sparkmoe.core.model.ActivationCheckpointing.parse(
                    v.get("--activation-checkpointing")));
        }
        return new Options(r, json, false);
    }

    /** A preset name, a config.json file, or a checkpoint directory holding one. */
    static Qwen3MoeConfig model(String m) {
        Path p = Path.of(m);
        if (Files.isDirectory(p)) {
            Path cj = p.resolve("config.json");
            if (!Files.isRegularFile(cj)) {
                throw new IllegalArgumentException("--model " + m + " is a directory without config.json; point it "
                        + "at a Hugging Face checkpoint directory or a config.json");
            }
            p = cj;
        }
        String text;
        if (Files.isRegularFile(p)) {
            try {
                text = Files.readString(p, StandardCharsets.UTF_8);
            } catch (IOException e) {
                throw new IllegalArgumentException("cannot read --model " + p + ": " + e.getMessage());
            }
        } else if (ModelPresets.names().contains(m)) {
            text = Json.write(ModelPresets.get(m), false);
        } else {
            throw new IllegalArgumentException("--model '" + m + "' is neither a preset (" + String.join(", ",
                    ModelPresets.names()) + ") nor an existing config.json or checkpoint directory");
        }
        try {
            return Qwen3MoeConfig.parse(text);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("--model " + m + ": " + e.getMessage());
        }
    }

    private static int integer(Map<String, String> v, String opt, int dflt) {
        String s = v.get(opt);
        if (s == null) {
            return dflt;
        }
        try {
            return Integer.parseInt(s.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(opt + " '" + s + "' is not a whole number");
        }
    }

    private static double number(Map<String, String> v, String opt) {
        String s = v.get(opt);
        try {
            return Double.parseDouble(s.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(opt + " '" + s + "' is not a number, e.g. 1.2");
        }
    }

    private static final Pattern SIZE = Pattern.compile("(\\d+(?:\\.\\d+)?)\\s*([KMGT]i?B|B)",
            Pattern.CASE_INSENSITIVE);

    /** A memory size with its unit: decimal (GB = 10^9 bytes, as TrainBench reports) or binary (GiB = 2^30). */
    static long size(Map<String, String> v, String opt, long dflt) {
        String s = v.get(opt);
        if (s == null) {
            return dflt;
        }
        Matcher m = SIZE.matcher(s.trim());
        if (!m.matches()) {
            throw new IllegalArgumentException(opt + " '" + s + "' is not a size with a unit, e.g. 80GB (10^9 bytes) "
                    + "or 80GiB (2^30 bytes)");
        }
        String unit = m.group(2).toUpperCase(Locale.ROOT);
        int power = "KMGT".indexOf(unit.charAt(0)) + 1; // 0 for plain bytes
        double base = unit.contains("I") ? 1024 : 1000;
        return Math.round(Double.parseDouble(m.group(1)) * Math.pow(base, power));
    }
}
