package dev.sparkmoe.spark.config;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.io.IOException;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The model a run trains: its Hugging Face config (from model.hf_dir, or a preset plus inline fields) and where its
 * initial weights come from. Resolved on the driver; the numbers the driver validates against (vocabulary size,
 * expert count) come from here.
 */
public record ModelSource(String hfConfigJson, String initCheckpointDir, int vocabSize, int numExperts,
                          int eosTokenId) implements Serializable {

    private static final ObjectMapper JSON = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);

    public static ModelSource resolve(TrainConfig c) {
        Map<String, Object> cfg;
        String initDir = null;
        if (c.has(ConfigKey.MODEL_HF_DIR)) {
            String dir = c.getString(ConfigKey.MODEL_HF_DIR);
            Path local = dir.startsWith("file:") ? Paths.get(java.net.URI.create(dir)) : Paths.get(dir);
            Path cj = local.resolve("config.json");
            if (!Files.isRegularFile(cj)) {
                throw new ConfigException(ConfigKey.MODEL_HF_DIR.key(), dir,
                        "no config.json there; point it at a Hugging Face checkpoint directory");
            }
            try {
                cfg = JSON.readValue(Files.readString(cj, StandardCharsets.UTF_8),
                        new TypeReference<LinkedHashMap<String, Object>>() { });
            } catch (IOException e) {
                throw new ConfigException(ConfigKey.MODEL_HF_DIR.key(), dir, "cannot parse " + cj + ": "
                        + e.getMessage());
            }
            initDir = local.toAbsolutePath().toString();
        } else if (c.has(ConfigKey.MODEL_PRESET)) {
            cfg = ModelPresets.get(c.getString(ConfigKey.MODEL_PRESET));
        } else if (!c.getMap(ConfigKey.MODEL_CONFIG).isEmpty()) {
            cfg = new LinkedHashMap<>();
        } else {
            throw new ConfigException("no model: set model.preset (one of " + ModelPresets.names()
                    + "), model.hf_dir or model.config");
        }
        cfg.putAll(c.getMap(ConfigKey.MODEL_CONFIG));
        int vocab = intField(cfg, "vocab_size", -1);
        int experts = intField(cfg, "num_experts", intField(cfg, "num_local_experts", -1));
        if (vocab <= 0) {
            throw new ConfigException("model config has no positive vocab_size; set model.config.vocab_size");
        }
        if (experts <= 0) {
            throw new ConfigException("model config has no positive num_experts (or num_local_experts); set "
                    + "model.config.num_experts");
        }
        int maxPositions = intField(cfg, "max_position_embeddings", -1);
        if (maxPositions > 0 && c.seqLen() > maxPositions) {
            throw new ConfigException(ConfigKey.TRAINING_SEQ_LEN.key(), c.seqLen(), "longer than the model's "
                    + "max_position_embeddings (" + maxPositions + "); lower training.seq_len to at most "
                    + maxPositions + (c.has(ConfigKey.MODEL_HF_DIR) ? "" : ", or raise "
                    + "model.config.max_position_embeddings"));
        }
        int eos = intField(cfg, "eos_token_id", -1);
        int ep = c.ep();
        if (experts % ep != 0) {
            throw new ConfigException(ConfigKey.LAYOUT_EP.key(), ep, "ep (" + ep + ") must divide num_experts ("
                    + experts + ") and world_size (" + c.worldSize() + "); choose one of "
                    + commonDivisors(experts, c.worldSize()));
        }
        try {
            return new ModelSource(JSON.writeValueAsString(cfg), initDir, vocab, experts, eos);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    static java.util.List<Integer> commonDivisors(int a, int b) {
        java.util.List<Integer> d = new java.util.ArrayList<>();
        for (int i = 1; i <= Math.min(a, b); i++) {
            if (a % i == 0 && b % i == 0) {
                d.add(i);
            }
        }
        return d;
    }

    private static int intField(Map<String, Object> cfg, String name, int dflt) {
        Object v = cfg.get(name);
        if (v instanceof Number n) {
            return n.intValue();
        }
        if (v instanceof java.util.List<?> l && !l.isEmpty() && l.get(0) instanceof Number n) {
            return n.intValue(); // eos_token_id may be a list
        }
        return dflt;
    }
}
