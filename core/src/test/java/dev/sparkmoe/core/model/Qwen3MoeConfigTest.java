package dev.sparkmoe.core.model;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.json.Json;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class Qwen3MoeConfigTest {
    static final Path CONFIG = Paths.get("src/test/resources/fixtures/qwen3moe-tiny/config.json");

    @TempDir
    Path tmp;

    /** A 4.x / Hub spelled config equivalent to the fixture. */
    static final String HUB_4X = "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"model_type\":\"qwen3_moe\","
            + "\"vocab_size\":512,\"hidden_size\":64,\"intermediate_size\":128,\"moe_intermediate_size\":32,"
            + "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,"
            + "\"num_experts\":8,\"num_experts_per_tok\":2,\"norm_topk_prob\":true,\"decoder_sparse_step\":1,"
            + "\"mlp_only_layers\":[],\"max_position_embeddings\":128,\"rope_theta\":10000.0,\"rope_scaling\":null,"
            + "\"rms_norm_eps\":1e-06,\"tie_word_embeddings\":false,\"router_aux_loss_coef\":0.01,"
            + "\"attention_bias\":false,\"use_sliding_window\":false,\"sliding_window\":null,\"hidden_act\":\"silu\","
            + "\"torch_dtype\":\"bfloat16\"}";

    private static Map<String, Object> fixtureMap() throws IOException {
        return Json.parseObject(Files.readString(CONFIG));
    }

    private static String with(Map<String, Object> base, String key, Object value) {
        Map<String, Object> m = new TreeMap<>(base);
        if (value == REMOVE) {
            m.remove(key);
        } else {
            m.put(key, value);
        }
        return Json.write(m, false);
    }

    private static final Object REMOVE = new Object();

    private static void fails(String json, String... fragments) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Qwen3MoeConfig.parse(json));
        for (String f : fragments) {
            assertTrue(e.getMessage().contains(f), "expected '" + f + "' in: " + e.getMessage());
        }
    }

    @Test
    void parsesFixture5xSpelling() throws IOException {
        Qwen3MoeConfig c = Qwen3MoeConfig.load(CONFIG);
        assertEquals(512, c.vocabSize());
        assertEquals(64, c.hiddenSize());
        assertEquals(128, c.intermediateSize());
        assertEquals(32, c.moeIntermediateSize());
        assertEquals(2, c.numHiddenLayers());
        assertEquals(4, c.numAttentionHeads());
        assertEquals(2, c.numKeyValueHeads());
        assertEquals(16, c.headDim());
        assertEquals(8, c.numExperts());
        assertEquals(2, c.numExpertsPerTok());
        assertTrue(c.normTopkProb());
        assertEquals(1, c.decoderSparseStep());
        assertEquals(List.of(), c.mlpOnlyLayers());
        assertEquals(128, c.maxPositionEmbeddings());
        assertEquals(10000.0, c.ropeTheta());
        assertEquals(1e-6, c.rmsNormEps());
        assertFalse(c.tieWordEmbeddings());
        assertEquals(0.01, c.routerAuxLossCoef());
        assertTrue(c.isMoeLayer(0));
        assertTrue(c.isMoeLayer(1));
        assertEquals("5.17.0", c.extras().get("transformers_version"));
        assertTrue(c.extras().containsKey("bos_token_id"));
        assertNull(c.extras().get("bos_token_id"));
        assertTrue((Boolean) c.extras().get("output_router_logits"));
    }

    @Test
    void parses4xSpellingToTheSameConfig() throws IOException {
        Qwen3MoeConfig hub = Qwen3MoeConfig.parse(HUB_4X);
        Qwen3MoeConfig fx = Qwen3MoeConfig.load(CONFIG);
        assertEquals(8, hub.numExperts());
        assertEquals(10000.0, hub.ropeTheta());
        Qwen3MoeConfig.Builder b = fx.toBuilder();
        // equal apart from extras, which differ between the two files
        assertEquals(hub.toBuilder().build().toMap().get("num_experts"), fx.toMap().get("num_experts"));
        Map<String, Object> a = new TreeMap<>(hub.toMap());
        Map<String, Object> c = new TreeMap<>(b.build().toMap());
        a.keySet().removeAll(hub.extras().keySet());
        c.keySet().removeAll(fx.extras().keySet());
        assertEquals(a, c);
        // both spellings present and agreeing is fine
        String both = with(fixtureMap(), "num_experts", 8L);
        assertEquals(8, Qwen3MoeConfig.parse(with(Json.parseObject(both), "rope_theta", 10000L)).numExperts());
    }

    @Test
    void conflictingSpellingsAreErrors() throws IOException {
        fails(with(fixtureMap(), "num_experts", 16L), "num_experts (16) and num_local_experts (8) disagree");
        fails(with(fixtureMap(), "rope_theta", 1e6), "rope_theta (1000000.0) and rope_parameters.rope_theta (10000.0)"
                + " disagree");
    }

    @Test
    void defaults() {
        String minimal = "{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":16,\"moe_intermediate_size\":4,"
                + "\"num_hidden_layers\":3,\"num_attention_heads\":2,\"num_experts\":4,\"num_experts_per_tok\":2}";
        Qwen3MoeConfig c = Qwen3MoeConfig.parse(minimal);
        assertEquals(2, c.numKeyValueHeads());
        assertEquals(4, c.headDim());
        assertEquals(1, c.decoderSparseStep());
        assertEquals(List.of(), c.mlpOnlyLayers());
        assertEquals(10000.0, c.ropeTheta());
        assertEquals(1e-6, c.rmsNormEps());
        assertFalse(c.tieWordEmbeddings());
        assertFalse(c.normTopkProb());
        assertEquals(0.001, c.routerAuxLossCoef());
        assertEquals(32768, c.maxPositionEmbeddings());
        assertTrue(c.extras().isEmpty());
        fails("{\"vocab_size\":10}", "missing required keys [hidden_size, intermediate_size, moe_intermediate_size,"
                + " num_hidden_layers, num_attention_heads, num_experts, num_experts_per_tok]");
    }

    @Test
    void isMoeLayerWorkedExample() {
        Qwen3MoeConfig c = tiny().numHiddenLayers(6).decoderSparseStep(2).mlpOnlyLayers(List.of(3)).build();
        // (layer + 1) % 2 == 0 -> layers 1, 3, 5; layer 3 is forced dense
        assertEquals(List.of(false, true, false, false, false, true),
                List.of(c.isMoeLayer(0), c.isMoeLayer(1), c.isMoeLayer(2), c.isMoeLayer(3), c.isMoeLayer(4),
                        c.isMoeLayer(5)));
        Qwen3MoeConfig dense = tiny().numExperts(0).build();
        assertFalse(dense.isMoeLayer(0));
    }

    static Qwen3MoeConfig.Builder tiny() {
        return Qwen3MoeConfig.builder().vocabSize(512).hiddenSize(64).intermediateSize(128).moeIntermediateSize(32)
                .numHiddenLayers(2).numAttentionHeads(4).numKeyValueHeads(2).numExperts(8).numExpertsPerTok(2);
    }

    @Test
    void validationErrorsQuoteValues() throws IOException {
        Map<String, Object> f = fixtureMap();
        fails(with(f, "num_key_value_heads", 3L), "num_attention_heads (4) must be divisible by num_key_value_heads (3)");
        fails(with(f, "num_experts_per_tok", 9L), "num_experts_per_tok (9) must be between 1 and num_experts (8)");
        fails(with(f, "num_experts_per_tok", 0L), "num_experts_per_tok (0)");
        fails(with(f, "hidden_size", 0L), "hidden_size (0) must be positive");
        fails(with(f, "vocab_size", -5L), "vocab_size (-5) must be positive");
        fails(with(f, "num_hidden_layers", 0L), "num_hidden_layers (0) must be positive");
        fails(with(f, "moe_intermediate_size", 0L), "moe_intermediate_size (0) must be positive");
        fails(with(f, "intermediate_size", 0L), "intermediate_size (0) must be positive");
        fails(with(f, "head_dim", 0L), "head_dim (0) must be positive");
        fails(with(f, "max_position_embeddings", 0L), "max_position_embeddings (0) must be positive");
        fails(with(f, "num_local_experts", -1L), "num_experts (-1) must be >= 0");
        fails(with(f, "decoder_sparse_step", 0L), "decoder_sparse_step (0) must be >= 1");
        fails(with(f, "mlp_only_layers", List.of(2L)), "mlp_only_layers [2] must hold distinct layer indices in"
                + " [0, num_hidden_layers=2), found 2");
        fails(with(f, "mlp_only_layers", List.of(0L, 0L)), "found 0");
        fails(with(f, "mlp_only_layers", List.of("0")), "mlp_only_layers must be a list of layer indices");
        fails(with(f, "rms_norm_eps", 0.0), "rms_norm_eps (0.0) must be a positive");
        fails(with(f, "router_aux_loss_coef", -0.1), "router_aux_loss_coef (-0.1)");
        fails(with(f, "rope_parameters", Map.of("rope_theta", -1.0, "rope_type", "default")), "rope_theta (-1.0)");
        Map<String, Object> noHeadDim = new TreeMap<>(f);
        noHeadDim.remove("head_dim");
        fails(with(noHeadDim, "hidden_size", 66L), "hidden_size (66) is not divisible by num_attention_heads (4)");
        // wrong JSON types name the key and the type
        fails(with(f, "hidden_size", "64"), "key 'hidden_size' must be an integer, got string \"64\"");
        fails(with(f, "hidden_size", 64.0), "key 'hidden_size' must be an integer, got number 64.0");
        fails(with(f, "norm_topk_prob", 1L), "key 'norm_topk_prob' must be a boolean, got integer 1");
        fails("{\"a\":", "config is not valid JSON", "line 1");
    }

    @Test
    void unsupportedFeaturesAreClearErrors() throws IOException {
        Map<String, Object> f = fixtureMap();
        fails(with(f, "model_type", "llama"), "model_type 'llama' is not supported; supported model types: qwen3_moe");
        fails(with(f, "attention_bias", true), "attention_bias=true is not supported");
        fails(with(f, "use_sliding_window", true), "use_sliding_window=true is not supported");
        fails(with(f, "hidden_act", "gelu"), "hidden_act 'gelu' is not supported");
        fails(with(f, "rope_parameters", Map.of("rope_theta", 1e4, "rope_type", "yarn")),
                "rope_parameters rope_type 'yarn' is not supported");
        fails(with(f, "rope_scaling", Map.of("type", "linear", "factor", 2.0)),
                "rope_scaling rope_type 'linear' is not supported");
        assertEquals(8, Qwen3MoeConfig.parse(with(f, "model_type", REMOVE)).numExperts());
    }

    @Test
    void toJsonRoundTripsAndKeepsEveryInputKey() throws IOException {
        Qwen3MoeConfig c = Qwen3MoeConfig.load(CONFIG);
        String json = c.toJson();
        assertTrue(json.endsWith("}\n"));
        Qwen3MoeConfig back = Qwen3MoeConfig.parse(json);
        assertEquals(c, back);
        assertEquals(json, back.toJson());
        Map<String, Object> out = Json.parseObject(json);
        assertEquals(List.copyOf(new TreeMap<>(out).keySet()), List.copyOf(out.keySet()), "keys sorted");
        Map<String, Object> in = fixtureMap();
        for (Map.Entry<String, Object> e : in.entrySet()) {
            assertTrue(out.containsKey(e.getKey()), e.getKey());
            assertEquals(e.getValue(), out.get(e.getKey()), e.getKey());
        }
        // the 4.x aliases and the architecture are added
        assertEquals(8L, out.get("num_experts"));
        assertEquals(10000.0, out.get("rope_theta"));
        assertEquals(List.of("Qwen3MoeForCausalLM"), out.get("architectures"));
        // a 4.x input comes out with the 5.x keys as well
        Map<String, Object> from4 = Json.parseObject(Qwen3MoeConfig.parse(HUB_4X).toJson());
        assertEquals(8L, from4.get("num_local_experts"));
        assertEquals(Map.of("rope_theta", 10000.0, "rope_type", "default"), from4.get("rope_parameters"));
        assertEquals("bfloat16", from4.get("torch_dtype"));
    }

    @Test
    void builderAndToBuilder() {
        Qwen3MoeConfig c = tiny().ropeTheta(1e6).extra("torch_dtype", "bfloat16").build();
        assertEquals(16, c.headDim());
        Qwen3MoeConfig d = c.toBuilder().numExperts(16).numExpertsPerTok(4).build();
        assertEquals(16, d.numExperts());
        assertEquals(8, c.numExperts());
        assertEquals(1e6, d.ropeTheta());
        assertEquals("bfloat16", d.extras().get("torch_dtype"));
        assertEquals(d, Qwen3MoeConfig.parse(d.toJson()));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> tiny().numExpertsPerTok(9).build());
        assertTrue(e.getMessage().contains("num_experts_per_tok (9)"));
        assertThrows(IllegalArgumentException.class, () -> tiny().extra("hidden_size", 3).build());
    }

    @Test
    void loadNamesTheFile() throws IOException {
        Path p = tmp.resolve("config.json");
        Files.writeString(p, "{\"model_type\":\"mixtral\"}");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Qwen3MoeConfig.load(p));
        assertTrue(e.getMessage().startsWith(p + ": model_type 'mixtral'"), e.getMessage());
    }
}
