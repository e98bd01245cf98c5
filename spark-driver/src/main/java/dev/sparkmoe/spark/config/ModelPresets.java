package dev.sparkmoe.spark.config;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Built-in Qwen3-MoE configs for random initialisation (config.json fields as transformers writes them). */
public final class ModelPresets {
    private ModelPresets() {
    }

    public static List<String> names() {
        return List.of("qwen3-moe-tiny", "qwen3-moe-small");
    }

    /** A fresh, mutable copy of the preset's config.json fields. */
    public static Map<String, Object> get(String name) {
        Map<String, Object> c = new LinkedHashMap<>();
        c.put("architectures", List.of("Qwen3MoeForCausalLM"));
        c.put("model_type", "qwen3_moe");
        c.put("attention_bias", false);
        c.put("attention_dropout", 0.0);
        c.put("decoder_sparse_step", 1);
        c.put("hidden_act", "silu");
        c.put("initializer_range", 0.02);
        c.put("mlp_only_layers", List.of());
        c.put("norm_topk_prob", true);
        c.put("output_router_logits", true);
        c.put("rms_norm_eps", 1e-6);
        c.put("rope_theta", 10000.0);
        c.put("router_aux_loss_coef", 0.01);
        c.put("tie_word_embeddings", false);
        c.put("use_sliding_window", false);
        c.put("torch_dtype", "float32");
        switch (name) {
            case "qwen3-moe-tiny":
                c.put("vocab_size", 512);
                c.put("hidden_size", 64);
                c.put("intermediate_size", 128);
                c.put("moe_intermediate_size", 32);
                c.put("num_hidden_layers", 2);
                c.put("num_attention_heads", 4);
                c.put("num_key_value_heads", 2);
                c.put("head_dim", 16);
                c.put("num_experts", 8);
                c.put("num_experts_per_tok", 2);
                c.put("max_position_embeddings", 512);
                break;
            case "qwen3-moe-small":
                c.put("vocab_size", 32768);
                c.put("hidden_size", 512);
                c.put("intermediate_size", 1536);
                c.put("moe_intermediate_size", 256);
                c.put("num_hidden_layers", 8);
                c.put("num_attention_heads", 8);
                c.put("num_key_value_heads", 4);
                c.put("head_dim", 64);
                c.put("num_experts", 16);
                c.put("num_experts_per_tok", 4);
                c.put("max_position_embeddings", 2048);
                break;
            default:
                throw new ConfigException("model.preset", name, "use one of " + names());
        }
        return c;
    }
}
