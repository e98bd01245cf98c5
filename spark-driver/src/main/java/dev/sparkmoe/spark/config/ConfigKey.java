package dev.sparkmoe.spark.config;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Every configuration key, in one place: its name, type, default and documentation. The YAML loader, the
 * {@code --set} overrides, validation and the README reference section ({@link #markdownTable()}) all read this
 * table, so a key cannot exist in one and not in the others.
 */
public enum ConfigKey {
    // ---- model ----
    MODEL_HF_DIR("model.hf_dir", Type.STRING, null,
            "Hugging Face checkpoint directory (config.json + *.safetensors), local path readable by every executor. "
                    + "Training starts from these weights. Exclusive with model.preset."),
    MODEL_PRESET("model.preset", Type.ENUM, null,
            "Built-in Qwen3-MoE config for random initialisation: " + String.join(", ", ModelPresets.names())
                    + ". Exclusive with model.hf_dir.", ModelPresets.names().toArray(new String[0])),
    MODEL_CONFIG("model.config", Type.MAP, null,
            "Inline config.json fields, applied over the preset (or used alone when it holds a whole config), "
                    + "e.g. {num_experts: 8, vocab_size: 512}."),

    // ---- data ----
    DATA_PATH("data.path", Type.STRING, null,
            "Training data: a file or directory URI on any Hadoop file system (file:, hdfs:, s3a:). Required unless "
                    + "the Java API is given a Dataset or RDD."),
    DATA_FORMAT("data.format", Type.ENUM, "parquet",
            "Reader for data.path: text (one document per line), parquet or json (JSON lines).",
            "text", "parquet", "json"),
    DATA_COLUMN("data.column", Type.STRING, "auto",
            "Column to train on: array<int>/array<bigint> of token ids, or a string that is tokenized. auto: "
                    + "input_ids if present, else text (value for the text format)."),
    DATA_TOKENIZER("data.tokenizer", Type.STRING, "byte",
            "Tokenizer for text columns: byte (UTF-8 bytes as ids 0..255; needs vocab_size >= 256) or the path of a "
                    + "Hugging Face tokenizer.json (BPE with a ByteLevel pre-tokenizer, as GPT-2 and Qwen use)."),
    DATA_EOS_ID("data.eos_id", Type.INT, "-1",
            "Token that separates packed documents. -1: the tokenizer's end-of-text token, else the model's "
                    + "eos_token_id, else 0."),
    DATA_PACKING("data.packing", Type.ENUM, "concat",
            "concat: documents are joined with data.eos_id and cut into sequences of training.seq_len + 1 tokens. "
                    + "none: every row is one sequence and must hold at least training.seq_len + 1 tokens "
                    + "(longer rows are truncated).", "concat", "none"),
    DATA_SHUFFLE("data.shuffle", Type.BOOL, "true",
            "Shuffle each rank's packed sequences with training.seed (deterministic)."),

    // ---- layout ----
    LAYOUT_WORLD_SIZE("layout.world_size", Type.INT, "1",
            "Number of ranks (one Spark barrier task each, one GPU each on a GPU cluster)."),
    LAYOUT_EP("layout.ep", Type.INT, "1",
            "Expert-parallel degree; must divide layout.world_size and the model's num_experts."),

    // ---- training ----
    TRAINING_STEPS("training.steps", Type.LONG, "100",
            "Optimizer steps. Fewer are taken when the data runs out first (min over ranks of full batches)."),
    TRAINING_BATCH("training.batch_sequences", Type.INT, "8",
            "Sequences per rank per optimizer step (the global batch is this times layout.world_size)."),
    TRAINING_SEQ_LEN("training.seq_len", Type.INT, "512", "Tokens per training sequence (context length)."),
    TRAINING_LR("training.lr", Type.DOUBLE, "3e-4", "Peak learning rate."),
    TRAINING_MIN_LR("training.min_lr", Type.DOUBLE, "3e-5", "Learning rate at the end of the decay."),
    TRAINING_WARMUP("training.warmup_steps", Type.LONG, "0", "Linear warm-up steps from 0 to training.lr."),
    TRAINING_SCHEDULE("training.schedule", Type.ENUM, "cosine", "Decay after warm-up.", "cosine", "linear",
            "constant"),
    TRAINING_CLIP("training.clip", Type.DOUBLE, "1.0", "Clip the global gradient norm to this value (0: off)."),
    TRAINING_GRAD_ACCUM("training.grad_accum", Type.INT, "1",
            "Micro-batches per optimizer step; must divide training.batch_sequences."),
    TRAINING_SEED("training.seed", Type.LONG, "42", "Seed for initialisation and data order."),
    TRAINING_WEIGHT_DECAY("training.weight_decay", Type.DOUBLE, "0.1", "AdamW decoupled weight decay."),
    TRAINING_BETA1("training.beta1", Type.DOUBLE, "0.9", "AdamW beta1."),
    TRAINING_BETA2("training.beta2", Type.DOUBLE, "0.95", "AdamW beta2."),
    TRAINING_EPS("training.eps", Type.DOUBLE, "1e-8", "AdamW epsilon."),
    TRAINING_BACKEND("training.backend", Type.ENUM, "auto",
            "auto: cuda when the task was given a GPU, else cpu.", "auto", "cpu", "cuda"),
    TRAINING_PRECISION("training.precision", Type.ENUM, "bf16",
            "Compute precision (FSDP2's MixedPrecisionPolicy): bf16 runs the GPU's matrix products on tensor cores with "
            + "bf16 inputs and f32 accumulation; f32 computes exactly. Master weights, AdamW state and gradient "
            + "reductions are f32 either way; the CPU backend always computes in f32 (and logs it).",
            "bf16", "f32"),
    TRAINING_FSDP_PREFETCH("training.fsdp_prefetch", Type.INT, "2",
            "FSDP units whose parameter all-gathers start ahead of the unit computing, in forward and backward, so that "
                    + "they overlap its compute. Each unit more keeps one more unit's gathered weights alive at a time: "
                    + "lower it to 1 (FSDP2's default) when memory is short; 2 hides an experts unit's gather under a "
                    + "whole layer."),
    TRAINING_CPU_BLAS_THREADS("training.cpu_blas_threads", Type.INT, "1",
            "OpenBLAS threads of the CPU backend's matrix products (process-wide in each executor JVM). 1 suits "
                    + "several ranks per JVM (local[N]), whose kernels already spread over every core; raise it for "
                    + "one rank on a many-core host."),
    TRAINING_ACTIVATION_CHECKPOINTING("training.activation_checkpointing", Type.ENUM, "none",
            "What each decoder layer keeps from its forward pass for its backward pass; only memory and time differ "
                    + "(on the CPU backend the results are the same bit for bit). none: every activation. full: only "
                    + "the layer's input; "
                    + "its backward first runs its forward again (routing and, with layout.ep > 1, the token "
                    + "all-to-alls included). selective: the input, the routing, the token dispatch and the experts' "
                    + "outputs; the backward recomputes the norms, attention and the experts' gate and up projections "
                    + "(dense layers as full).",
            "none", "full", "selective"),
    TRAINING_MAX_ATTEMPTS("training.max_attempts", Type.INT, "3",
            "Barrier-stage attempts; every attempt after the first resumes from the newest committed checkpoint (one "
                    + "this run cannot resume ends the run at once)."),
    TRAINING_COMM_TIMEOUT("training.comm_timeout_s", Type.INT, "600",
            "Seconds a rank waits for its peers (rendezvous and collectives) before failing the attempt."),
    TRAINING_ELASTIC("training.elastic", Type.BOOL, "false",
            "When a retried attempt cannot get layout.world_size task slots within training.elastic_wait_s (an "
                    + "executor lost for good), resume from the newest checkpoint on the slots there are (and the "
                    + "largest ep <= layout.ep that divides them and num_experts), keeping the global batch by "
                    + "gradient accumulation. Off: the attempt waits for all its slots."),
    TRAINING_ELASTIC_WAIT_S("training.elastic_wait_s", Type.INT, "60",
            "Seconds an attempt waits for layout.world_size task slots (the first for the executors to register, a "
                    + "retried one for a lost executor's replacement) before it is submitted anyway or, retried "
                    + "with training.elastic, resumes on fewer."),
    TRAINING_TRAINER_FACTORY("training.trainer_factory", Type.STRING,
            "dev.sparkmoe.gpu.runtime.DefaultRankTrainerFactory",
            "Class name of the RankTrainerFactory (public no-arg constructor) that builds each rank's trainer."),

    // ---- checkpoint ----
    CHECKPOINT_DIR("checkpoint.dir", Type.STRING, null,
            "Checkpoint directory URI on any Hadoop file system. Default: the run folder's checkpoints/. A set "
                    + "checkpoint.dir is shared by every run: one that already holds checkpoints is only used with "
                    + "checkpoint.resume."),
    CHECKPOINT_EVERY("checkpoint.every", Type.INT, "50",
            "Write a checkpoint every N steps (0: only after the last step)."),
    CHECKPOINT_KEEP_LAST("checkpoint.keep_last", Type.INT, "2", "Committed checkpoints to keep (older are deleted)."),
    CHECKPOINT_RESUME("checkpoint.resume", Type.STRING, "no",
            "no: train in a new run folder. latest: continue the newest run folder under output.dir from its newest "
                    + "committed checkpoint. A run folder's name (e.g. run-002): continue that one. The CLI's "
                    + "--resume[=RUN] sets it."),

    // ---- spark ----
    SPARK_MASTER("spark.master", Type.STRING, null,
            "Spark master, e.g. local[4]. Unset: taken from spark-submit / spark-defaults; local[world_size] when "
                    + "there is none."),
    SPARK_APP_NAME("spark.app_name", Type.STRING, "spark-moe", "Spark application name."),
    SPARK_CONF("spark.conf", Type.MAP, null, "Extra Spark properties, e.g. {spark.executor.memory: 8g}."),

    // ---- output ----
    OUTPUT_DIR("output.dir", Type.STRING, null,
            "Output directory URI. Every run gets a folder in it (run-001, run-002, ...) with the final model in "
                    + "Hugging Face layout (model/), the checkpoints (checkpoints/) and the metrics plot "
                    + "(metrics.png); checkpoint.resume continues an earlier run instead."),
    OUTPUT_DTYPE("output.dtype", Type.ENUM, "bf16",
            "Dtype of the final model's tensors (the Hub's Qwen3-MoE checkpoints are bf16; f32 keeps the master "
                    + "weights exactly).", "bf16", "f32"),
    OUTPUT_MAX_SHARD_SIZE("output.max_shard_size", Type.STRING, "5GB",
            "Largest file of the final model, as transformers' max_shard_size: bytes, or a number with KB, MB, GB "
                    + "(powers of 1000) or KiB, MiB, GiB (powers of 1024). A larger model is split into "
                    + "model-0000k-of-0000n.safetensors files plus model.safetensors.index.json."),
    OUTPUT_METRICS_FILE("output.metrics_file", Type.STRING, null,
            "JSON-lines metrics file on the driver's local disk. Default: none (metrics still reach the console)."),
    OUTPUT_PROGRESS("output.progress", Type.BOOL, "true", "Print a progress line on the driver console.");

    /** Value types. */
    public enum Type { STRING, INT, LONG, DOUBLE, BOOL, ENUM, MAP }

    private final String key;
    private final Type type;
    private final String defaultValue;
    private final String doc;
    private final List<String> choices;

    ConfigKey(String key, Type type, String defaultValue, String doc, String... choices) {
        this.key = key;
        this.type = type;
        this.defaultValue = defaultValue;
        this.doc = doc;
        this.choices = List.of(choices);
    }

    public String key() {
        return key;
    }

    public Type type() {
        return type;
    }

    public String defaultValue() {
        return defaultValue;
    }

    public String doc() {
        return doc;
    }

    public List<String> choices() {
        return choices;
    }

    public static ConfigKey byName(String name) {
        for (ConfigKey k : values()) {
            if (k.key.equals(name)) {
                return k;
            }
        }
        return null;
    }

    /** The key a mistyped name most likely meant (edit distance), or null when nothing is close. */
    public static String suggest(String name) {
        String best = null;
        int bestD = Integer.MAX_VALUE;
        for (ConfigKey k : values()) {
            int d = distance(name, k.key);
            if (k.key.startsWith(name) || name.startsWith(k.key)) {
                d = Math.min(d, 1); // a truncated or over-long key
            }
            if (!section(name).equals(section(k.key))) {
                d += 2; // prefer keys of the section the user wrote
            }
            if (d < bestD) {
                bestD = d;
                best = k.key;
            }
        }
        return bestD <= Math.max(3, name.length() / 3) ? best : null;
    }

    private static String section(String s) {
        int i = s.indexOf('.');
        return i < 0 ? s : s.substring(0, i);
    }

    static int distance(String a, String b) {
        int[] prev = new int[b.length() + 1];
        int[] cur = new int[b.length() + 1];
        for (int j = 0; j <= b.length(); j++) {
            prev[j] = j;
        }
        for (int i = 1; i <= a.length(); i++) {
            cur[0] = i;
            for (int j = 1; j <= b.length(); j++) {
                int c = a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1;
                cur[j] = Math.min(Math.min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + c);
            }
            int[] t = prev;
            prev = cur;
            cur = t;
        }
        return prev[b.length()];
    }

    /** The README's configuration reference, generated from this table. */
    public static String markdownTable() {
        StringBuilder sb = new StringBuilder("| key | type | default | meaning |\n| --- | --- | --- | --- |\n");
        for (ConfigKey k : values()) {
            String t = k.type == Type.ENUM ? String.join(" \\| ", k.choices) : k.type.name().toLowerCase(Locale.ROOT);
            sb.append("| `").append(k.key).append("` | ").append(t).append(" | ")
                    .append(k.defaultValue == null ? "" : "`" + k.defaultValue + "`").append(" | ")
                    .append(k.doc.replace("|", "\\|")).append(" |\n");
        }
        return sb.toString();
    }

    /** Keys grouped by their section (model, data, ...), in declaration order. */
    public static Map<String, List<ConfigKey>> sections() {
        Map<String, List<ConfigKey>> m = new java.util.LinkedHashMap<>();
        for (ConfigKey k : values()) {
            m.computeIfAbsent(k.key.substring(0, k.key.indexOf('.')), x -> new ArrayList<>()).add(k);
        }
        return m;
    }

    @Override
    public String toString() {
        return key;
    }

    static List<String> allNames() {
        return Arrays.stream(values()).map(ConfigKey::key).toList();
    }
}
