package dev.sparkmoe.spark.config;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.io.ModelFormat;
import dev.sparkmoe.core.tensor.DType;
import java.util.List;
import org.junit.jupiter.api.Test;

class TrainConfigTest {
    static final String YAML = String.join("\n",
            "model:",
            "  preset: qwen3-moe-tiny",
            "  config: {num_experts: 4}",
            "data:",
            "  path: file:/data/corpus",
            "  format: json",
            "layout: {world_size: 4, ep: 2}",
            "training:",
            "  steps: 1_000",
            "  lr: 1e-3",
            "  min_lr: 0.0001",
            "training.seq_len: 128",
            "output: {dir: 'file:/tmp/out/'}",
            "");

    @Test
    void nestedSectionsDottedKeysOverridesAndDefaults() {
        TrainConfig c = TrainConfig.parse(YAML, "run.yaml", List.of("training.steps=20", "model.config.vocab_size=300",
                "spark.conf.spark.executor.memory=4g"));
        assertEquals(20, c.steps());
        assertEquals(128, c.seqLen());
        assertEquals(1e-3, c.lr());
        assertEquals(4, c.worldSize());
        assertEquals("json", c.getString(ConfigKey.DATA_FORMAT));
        assertEquals(8, c.batchSequences(), "default");
        assertEquals("none", c.getString(ConfigKey.TRAINING_ACTIVATION_CHECKPOINTING), "default");
        assertEquals("selective", TrainConfig.parse(YAML, "run.yaml", List.of("training.activation_checkpointing="
                + "Selective")).getString(ConfigKey.TRAINING_ACTIVATION_CHECKPOINTING));
        assertEquals("file:/tmp/out", c.outputDir());
        assertEquals("file:/tmp/out/run-001/checkpoints", c.checkpointDir("file:/tmp/out/run-001"));
        assertEquals(4, c.getMap(ConfigKey.MODEL_CONFIG).get("num_experts"));
        assertEquals(300, c.getMap(ConfigKey.MODEL_CONFIG).get("vocab_size"));
        assertEquals("4g", c.getMap(ConfigKey.SPARK_CONF).get("spark.executor.memory"));
        assertEquals(ModelFormat.DEFAULT, c.modelFormat(), "bf16 in files of at most 5 GB, as transformers");
        assertEquals(new ModelFormat(DType.F32, 512L << 20), TrainConfig.parse(YAML, "run.yaml",
                List.of("output.dtype=f32", "output.max_shard_size=512MiB")).modelFormat());
        ModelSource m = ModelSource.resolve(c);
        assertEquals(300, m.vocabSize());
        assertEquals(4, m.numExperts());
    }

    @Test
    void unknownKeysAreRejectedWithASuggestion() {
        ConfigException e = assertThrows(ConfigException.class,
                () -> TrainConfig.parse(YAML + "training.warmup: 10\n", "run.yaml", List.of()));
        assertTrue(e.getMessage().contains("unknown configuration key 'training.warmup'")
                && e.getMessage().contains("did you mean 'training.warmup_steps'"), e.getMessage());
        ConfigException e2 = assertThrows(ConfigException.class,
                () -> TrainConfig.parse(YAML, "run.yaml", List.of("layout.wrld_size=2")));
        assertTrue(e2.getMessage().contains("did you mean 'layout.world_size'")
                && e2.getMessage().endsWith("(spark-moe keys lists every key)"), e2.getMessage());
        // a section given twice would silently replace the first
        ConfigException twice = assertThrows(ConfigException.class,
                () -> TrainConfig.parse(YAML + "training:\n  warmup_steps: 10\n", "run.yaml", List.of()));
        assertTrue(twice.getMessage().startsWith("run.yaml, line ")
                && twice.getMessage().contains("found duplicate key training"), twice.getMessage());
        // a value where a section belongs names the key it most likely meant
        ConfigException value = assertThrows(ConfigException.class,
                () -> TrainConfig.parse("model: qwen3-moe-small\n", "run.yaml", List.of()));
        assertTrue(value.getMessage().contains("write it as model: {preset: qwen3-moe-small}"), value.getMessage());
        ConfigException other = assertThrows(ConfigException.class,
                () -> TrainConfig.parse("training: fast\n", "run.yaml", List.of()));
        assertTrue(other.getMessage().startsWith("training = 'fast': 'training' is a section of keys")
                && other.getMessage().contains("set one of its keys, e.g. training.steps: ..."), other.getMessage());
    }

    @Test
    void badValuesNameKeyValueAndFix() {
        String[][] cases = {
            {"training.steps=ten", "training.steps = 'ten': expected an integer"},
            {"training.schedule=exp", "training.schedule = 'exp': expected one of [cosine, linear, constant]"},
            {"data.shuffle=maybe", "data.shuffle = 'maybe': expected true or false"},
            {"training.activation_checkpointing=partial",
                "training.activation_checkpointing = 'partial': expected one of [none, full, selective]"},
            {"training.batch_sequences=0", "training.batch_sequences = 0: must be positive"},
            {"training.fsdp_prefetch=0", "training.fsdp_prefetch = 0: must be positive"},
            {"training.cpu_blas_threads=-2", "training.cpu_blas_threads = -2: must be positive"},
            {"training.grad_accum=3", "training.grad_accum = 3: must divide training.batch_sequences (8)"},
            {"layout.ep=3", "layout.ep = 3: must divide layout.world_size (4); choose one of [1, 2, 4]"},
            {"training.min_lr=1", "training.min_lr = 1.0: must lie in [0, training.lr = 0.001]"},
            {"output.dtype=f16", "output.dtype = 'f16': expected one of [bf16, f32]"},
            {"output.max_shard_size=5XB", "output.max_shard_size = '5XB': expected a positive size such as 5GB"},
            {"output.max_shard_size=0", "output.max_shard_size = '0': expected a positive size"},
        };
        for (String[] c : cases) {
            ConfigException e = assertThrows(ConfigException.class, () -> TrainConfig.parse(YAML, "run.yaml",
                    List.of(c[0])), c[0]);
            assertTrue(e.getMessage().contains(c[1]), c[0] + " -> " + e.getMessage());
        }
        ConfigException e = assertThrows(ConfigException.class,
                () -> TrainConfig.parse("model: {preset: qwen3-moe-tiny}", "x.yaml", List.of()));
        assertTrue(e.getMessage().contains("output.dir is not set"), e.getMessage());
        ConfigException y = assertThrows(ConfigException.class, () -> TrainConfig.parse("a: [", "x.yaml", List.of()));
        assertTrue(y.getMessage().startsWith("x.yaml, line 1, column 5: not valid YAML"), y.getMessage());
    }

    @Test
    void modelErrors() {
        TrainConfig none = TrainConfig.parse("output: {dir: /tmp/o}", "x", List.of());
        assertTrue(assertThrows(ConfigException.class, () -> ModelSource.resolve(none)).getMessage()
                .contains("no model: set model.preset"));
        TrainConfig badEp = TrainConfig.parse(YAML, "x", List.of("model.config.num_experts=6", "layout.ep=4"));
        assertTrue(assertThrows(ConfigException.class, () -> ModelSource.resolve(badEp)).getMessage()
                .contains("ep (4) must divide num_experts (6)"));
        TrainConfig longSeq = TrainConfig.parse(YAML, "x", List.of("training.seq_len=600"));
        assertTrue(assertThrows(ConfigException.class, () -> ModelSource.resolve(longSeq)).getMessage()
                .startsWith("training.seq_len = 600: longer than the model's max_position_embeddings (512)"));
    }

    @Test
    void referenceTableListsEveryKey() {
        String md = ConfigKey.markdownTable();
        for (ConfigKey k : ConfigKey.values()) {
            assertTrue(md.contains("| `" + k.key() + "` |"), k.key());
        }
        assertEquals(ConfigKey.values().length + 2, md.split("\n").length);
    }
}
