package dev.sparkmoe.spark.config;

import dev.sparkmoe.core.io.ModelFormat;
import dev.sparkmoe.core.tensor.DType;
import java.io.IOException;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.EnumMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.yaml.snakeyaml.LoaderOptions;
import org.yaml.snakeyaml.Yaml;
import org.yaml.snakeyaml.constructor.DuplicateKeyException;
import org.yaml.snakeyaml.constructor.SafeConstructor;
import org.yaml.snakeyaml.error.Mark;
import org.yaml.snakeyaml.error.MarkedYAMLException;

/**
 * A validated set of {@link ConfigKey} values: YAML first, then {@code --set key=value} overrides, then defaults.
 * Immutable once built; every accessor returns the parsed, typed value.
 */
public final class TrainConfig implements Serializable {
    private static final long serialVersionUID = 1L;

    private final EnumMap<ConfigKey, Object> values;

    private TrainConfig(EnumMap<ConfigKey, Object> values) {
        this.values = values;
    }

    // ------------------------------------------------------------------ loading

    public static TrainConfig load(Path yamlFile, List<String> overrides) {
        String text;
        if (!Files.isRegularFile(yamlFile)) {
            throw new ConfigException("config file " + yamlFile + " " + (Files.isDirectory(yamlFile)
                    ? "is a directory" : "does not exist") + " (looked for " + yamlFile.toAbsolutePath()
                    + "); give the path of a YAML config, e.g. spark-driver/examples/europarl.yaml");
        }
        try {
            text = Files.readString(yamlFile, StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new ConfigException("config file " + yamlFile + " cannot be read: " + e.getMessage());
        }
        return parse(text, yamlFile.toString(), overrides);
    }

    /** SnakeYAML that rejects a key given twice (a second section would silently replace the first). */
    private static Yaml yaml() {
        LoaderOptions o = new LoaderOptions();
        o.setAllowDuplicateKeys(false);
        return new Yaml(new SafeConstructor(o));
    }

    /** Parses YAML text (nested sections or dotted keys), applies {@code key=value} overrides and validates. */
    public static TrainConfig parse(String yamlText, String source, List<String> overrides) {
        Builder b = new Builder();
        Object root;
        try {
            root = yaml().load(yamlText);
        } catch (MarkedYAMLException e) {
            Mark at = e.getProblemMark();
            String problem = e.getProblem();
            boolean duplicate = e instanceof DuplicateKeyException;
            throw new ConfigException(source + (at != null ? ", line " + (at.getLine() + 1) + ", column "
                    + (at.getColumn() + 1) : "") + ": " + (duplicate ? problem + " (the second would silently "
                    + "replace the first); merge the two into one section" : "not valid YAML: " + problem
                    + "; YAML nests with spaces (no tabs) and needs a space after each ':'"));
        } catch (RuntimeException e) {
            throw new ConfigException(source + " is not valid YAML: " + e.getMessage());
        }
        if (root != null && !(root instanceof Map)) {
            throw new ConfigException(source + " must hold a YAML mapping of sections (model:, data:, ...), found "
                    + root.getClass().getSimpleName());
        }
        if (root != null) {
            b.putTree("", (Map<?, ?>) root);
        }
        for (String o : overrides) {
            int eq = o.indexOf('=');
            if (eq <= 0) {
                throw new ConfigException("--set " + o + ": expected key=value, e.g. --set training.steps=100");
            }
            String key = o.substring(0, eq).trim();
            String raw = o.substring(eq + 1).trim();
            Object v;
            try {
                v = yaml().load(raw);
            } catch (RuntimeException e) {
                v = raw;
            }
            b.set(key, v == null ? raw : v);
        }
        return b.build();
    }

    public static Builder builder() {
        return new Builder();
    }

    /** Collects raw values, then {@link #build()} parses and validates them. */
    public static final class Builder {
        private final Map<ConfigKey, Object> raw = new LinkedHashMap<>();

        /** Sets a key by name; {@code model.config.num_experts} style names set one field of a map key. */
        @SuppressWarnings("unchecked")
        public Builder set(String name, Object value) {
            ConfigKey k = ConfigKey.byName(name);
            if (k == null) {
                for (ConfigKey m : ConfigKey.values()) {
                    if (m.type() == ConfigKey.Type.MAP && name.startsWith(m.key() + ".")) {
                        Object cur = raw.get(m);
                        Map<String, Object> map = cur instanceof Map ? new LinkedHashMap<>((Map<String, Object>) cur)
                                : new LinkedHashMap<>();
                        map.put(name.substring(m.key().length() + 1), value);
                        raw.put(m, map);
                        return this;
                    }
                }
                if (ConfigKey.sections().containsKey(name)) {
                    throw sectionGivenAValue(name, value);
                }
                String s = ConfigKey.suggest(name);
                throw new ConfigException("unknown configuration key '" + name + "'"
                        + (s != null ? "; did you mean '" + s + "'?" : "")
                        + " (spark-moe keys lists every key)");
            }
            if (k.type() == ConfigKey.Type.MAP && value instanceof Map && raw.get(k) instanceof Map) {
                Map<String, Object> merged = new LinkedHashMap<>((Map<String, Object>) raw.get(k));
                ((Map<String, Object>) value).forEach((a, b) -> merged.put(String.valueOf(a), b));
                raw.put(k, merged);
            } else {
                raw.put(k, value);
            }
            return this;
        }

        public Builder set(ConfigKey key, Object value) {
            return set(key.key(), value);
        }

        /** {@code model: qwen3-moe-tiny}: a value where a section of keys belongs; names the key it most likely meant. */
        private static ConfigException sectionGivenAValue(String section, Object value) {
            List<ConfigKey> keys = ConfigKey.sections().get(section);
            String meant = null;
            for (ConfigKey k : keys) {
                if (k.choices().contains(String.valueOf(value).trim().toLowerCase(Locale.ROOT))) {
                    meant = k.key();
                }
            }
            String names = String.join(", ", keys.stream().map(ConfigKey::key).toList());
            return new ConfigException(section, value, "'" + section + "' is a section of keys (" + names
                    + "), not a value" + (meant != null ? "; write it as " + section + ": {"
                    + meant.substring(section.length() + 1) + ": " + value + "} (the key " + meant + ")"
                    : "; set one of its keys, e.g. " + keys.get(0).key() + ": ..."));
        }

        void putTree(String prefix, Map<?, ?> tree) {
            for (Map.Entry<?, ?> e : tree.entrySet()) {
                String name = prefix + e.getKey();
                ConfigKey k = ConfigKey.byName(name);
                if (k == null && e.getValue() instanceof Map && isPrefix(name)) {
                    putTree(name + ".", (Map<?, ?>) e.getValue());
                } else {
                    set(name, e.getValue());
                }
            }
        }

        private static boolean isPrefix(String name) {
            for (ConfigKey k : ConfigKey.values()) {
                if (k.key().startsWith(name + ".")) {
                    return true;
                }
            }
            return false;
        }

        public TrainConfig build() {
            EnumMap<ConfigKey, Object> v = new EnumMap<>(ConfigKey.class);
            for (ConfigKey k : ConfigKey.values()) {
                Object r = raw.containsKey(k) ? raw.get(k) : k.defaultValue();
                if (r != null) {
                    v.put(k, convert(k, r));
                }
            }
            TrainConfig c = new TrainConfig(v);
            c.validate();
            return c;
        }
    }

    private static Object convert(ConfigKey k, Object r) {
        String s = String.valueOf(r).trim();
        try {
            switch (k.type()) {
                case STRING:
                    if (r instanceof Map || r instanceof List) {
                        throw new ConfigException(k.key(), r, "expected a single value, not a "
                                + (r instanceof Map ? "mapping" : "list"));
                    }
                    return s;
                case INT:
                    if (r instanceof Number n && !(r instanceof Double || r instanceof Float)) {
                        return Math.toIntExact(n.longValue());
                    }
                    return Integer.parseInt(s.replace("_", ""));
                case LONG:
                    if (r instanceof Number n && !(r instanceof Double || r instanceof Float)) {
                        return n.longValue();
                    }
                    return Long.parseLong(s.replace("_", ""));
                case DOUBLE:
                    if (r instanceof Number n) {
                        return n.doubleValue();
                    }
                    return Double.parseDouble(s);
                case BOOL:
                    if (r instanceof Boolean bo) {
                        return bo;
                    }
                    if (s.equalsIgnoreCase("true") || s.equalsIgnoreCase("false")) {
                        return Boolean.parseBoolean(s);
                    }
                    throw new ConfigException(k.key(), r, "expected true or false");
                case ENUM:
                    String low = s.toLowerCase(Locale.ROOT);
                    if (!k.choices().contains(low)) {
                        throw new ConfigException(k.key(), r, "expected one of " + k.choices());
                    }
                    return low;
                case MAP:
                    if (!(r instanceof Map)) {
                        throw new ConfigException(k.key(), r, "expected a mapping, e.g. {name: value}");
                    }
                    Map<String, Object> m = new LinkedHashMap<>();
                    ((Map<?, ?>) r).forEach((a, b) -> m.put(String.valueOf(a), b));
                    return m;
                default:
                    throw new AssertionError(k.type());
            }
        } catch (NumberFormatException | ArithmeticException e) {
            throw new ConfigException(k.key(), r, "expected " + (k.type() == ConfigKey.Type.DOUBLE ? "a number"
                    : "an integer") + ", e.g. " + (k.defaultValue() != null ? k.defaultValue() : "1"));
        }
    }

    // ------------------------------------------------------------------ validation

    private void validate() {
        positive(ConfigKey.LAYOUT_WORLD_SIZE);
        positive(ConfigKey.LAYOUT_EP);
        positive(ConfigKey.TRAINING_STEPS);
        positive(ConfigKey.TRAINING_BATCH);
        positive(ConfigKey.TRAINING_SEQ_LEN);
        positive(ConfigKey.TRAINING_GRAD_ACCUM);
        positive(ConfigKey.TRAINING_MAX_ATTEMPTS);
        positive(ConfigKey.TRAINING_COMM_TIMEOUT);
        positive(ConfigKey.TRAINING_FSDP_PREFETCH);
        positive(ConfigKey.TRAINING_CPU_BLAS_THREADS);
        nonNegative(ConfigKey.TRAINING_ELASTIC_WAIT_S);
        positive(ConfigKey.CHECKPOINT_KEEP_LAST);
        nonNegative(ConfigKey.CHECKPOINT_EVERY);
        nonNegative(ConfigKey.TRAINING_WARMUP);
        nonNegative(ConfigKey.TRAINING_CLIP);
        nonNegative(ConfigKey.TRAINING_WEIGHT_DECAY);
        if (!(getDouble(ConfigKey.TRAINING_LR) > 0)) {
            throw new ConfigException(ConfigKey.TRAINING_LR.key(), get(ConfigKey.TRAINING_LR),
                    "must be a positive number, e.g. 3e-4");
        }
        if (getDouble(ConfigKey.TRAINING_MIN_LR) < 0 || getDouble(ConfigKey.TRAINING_MIN_LR) > lr()) {
            throw new ConfigException(ConfigKey.TRAINING_MIN_LR.key(), get(ConfigKey.TRAINING_MIN_LR),
                    "must lie in [0, training.lr = " + lr() + "]");
        }
        for (ConfigKey b : List.of(ConfigKey.TRAINING_BETA1, ConfigKey.TRAINING_BETA2)) {
            double x = getDouble(b);
            if (!(x >= 0 && x < 1)) {
                throw new ConfigException(b.key(), x, "must lie in [0, 1)");
            }
        }
        if (batchSequences() % gradAccum() != 0) {
            throw new ConfigException(ConfigKey.TRAINING_GRAD_ACCUM.key(), gradAccum(),
                    "must divide training.batch_sequences (" + batchSequences() + ")");
        }
        if (worldSize() % ep() != 0) {
            throw new ConfigException(ConfigKey.LAYOUT_EP.key(), ep(), "must divide layout.world_size ("
                    + worldSize() + "); choose one of " + divisors(worldSize()));
        }
        if (has(ConfigKey.MODEL_HF_DIR) && has(ConfigKey.MODEL_PRESET)) {
            throw new ConfigException(ConfigKey.MODEL_PRESET.key(), get(ConfigKey.MODEL_PRESET),
                    "model.preset and model.hf_dir exclude each other; keep one");
        }
        try {
            ModelFormat.parseSize(getString(ConfigKey.OUTPUT_MAX_SHARD_SIZE));
        } catch (IllegalArgumentException e) {
            throw new ConfigException(ConfigKey.OUTPUT_MAX_SHARD_SIZE.key(), get(ConfigKey.OUTPUT_MAX_SHARD_SIZE),
                    "expected a positive size such as 5GB, 500MB or 2GiB");
        }
        if (!has(ConfigKey.OUTPUT_DIR)) {
            throw new ConfigException("output.dir is not set: give the URI where the model and checkpoints go, "
                    + "e.g. --set output.dir=file:/tmp/run1");
        }
    }

    static List<Integer> divisors(long n) {
        List<Integer> d = new ArrayList<>();
        for (int i = 1; i <= n; i++) {
            if (n % i == 0) {
                d.add(i);
            }
        }
        return d;
    }

    private void positive(ConfigKey k) {
        if (((Number) get(k)).doubleValue() <= 0) {
            throw new ConfigException(k.key(), get(k), "must be positive");
        }
    }

    private void nonNegative(ConfigKey k) {
        if (((Number) get(k)).doubleValue() < 0) {
            throw new ConfigException(k.key(), get(k), "must not be negative");
        }
    }

    // ------------------------------------------------------------------ access

    public boolean has(ConfigKey k) {
        return values.containsKey(k);
    }

    public Object get(ConfigKey k) {
        return values.get(k);
    }

    public String getString(ConfigKey k) {
        return (String) values.get(k);
    }

    public int getInt(ConfigKey k) {
        return (Integer) values.get(k);
    }

    public long getLong(ConfigKey k) {
        return (Long) values.get(k);
    }

    public double getDouble(ConfigKey k) {
        return (Double) values.get(k);
    }

    public boolean getBool(ConfigKey k) {
        return (Boolean) values.get(k);
    }

    @SuppressWarnings("unchecked")
    public Map<String, Object> getMap(ConfigKey k) {
        Object v = values.get(k);
        return v == null ? Map.of() : (Map<String, Object>) v;
    }

    /** A copy with one more value set (re-validated). */
    public TrainConfig with(ConfigKey k, Object value) {
        Builder b = new Builder();
        values.forEach((key, v) -> b.raw.put(key, v));
        b.set(k, value);
        return b.build();
    }

    public int worldSize() {
        return getInt(ConfigKey.LAYOUT_WORLD_SIZE);
    }

    public int ep() {
        return getInt(ConfigKey.LAYOUT_EP);
    }

    public long steps() {
        return getLong(ConfigKey.TRAINING_STEPS);
    }

    public int batchSequences() {
        return getInt(ConfigKey.TRAINING_BATCH);
    }

    public int seqLen() {
        return getInt(ConfigKey.TRAINING_SEQ_LEN);
    }

    public int gradAccum() {
        return getInt(ConfigKey.TRAINING_GRAD_ACCUM);
    }

    public double lr() {
        return getDouble(ConfigKey.TRAINING_LR);
    }

    public long seed() {
        return getLong(ConfigKey.TRAINING_SEED);
    }

    public String outputDir() {
        return stripSlash(getString(ConfigKey.OUTPUT_DIR));
    }

    /** How the final model is saved: output.dtype and output.max_shard_size. */
    public ModelFormat modelFormat() {
        return new ModelFormat(DType.parse(getString(ConfigKey.OUTPUT_DTYPE)),
                ModelFormat.parseSize(getString(ConfigKey.OUTPUT_MAX_SHARD_SIZE)));
    }

    /** checkpoint.dir when set, else the run folder's own {@code checkpoints}. */
    public String checkpointDir(String runDir) {
        return has(ConfigKey.CHECKPOINT_DIR) ? stripSlash(getString(ConfigKey.CHECKPOINT_DIR))
                : runDir + "/checkpoints";
    }

    private static String stripSlash(String s) {
        return s.endsWith("/") && s.length() > 1 ? s.substring(0, s.length() - 1) : s;
    }

    /** Every key with its effective value, for logs (spark.conf values that look secret are masked). */
    public String describe() {
        StringBuilder sb = new StringBuilder();
        values.forEach((k, v) -> sb.append("  ").append(k.key()).append(" = ").append(v).append('\n'));
        return sb.toString();
    }
}
