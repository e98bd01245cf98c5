package dev.sparkmoe.core.model;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.json.JsonException;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.TreeMap;

/**
 * The Qwen3-MoE model configuration, immutable and validated on construction.
 *
 * <p>{@link #parse(String)} reads a Hugging Face {@code config.json} in either spelling: transformers 4.x / Hub
 * ({@code num_experts}, {@code rope_theta}) or 5.x ({@code num_local_experts}, {@code rope_parameters.rope_theta}).
 * When both spellings are present they must agree. Keys this class does not model are kept in {@link #extras()} and
 * written back by {@link #toJson()}, which emits the 5.x spelling plus the 4.x aliases so that both versions load it.
 *
 * <p>Required keys: vocab_size, hidden_size, intermediate_size, moe_intermediate_size, num_hidden_layers,
 * num_attention_heads, num_experts (or num_local_experts), num_experts_per_tok. Defaults (those of transformers'
 * Qwen3MoeConfig): num_key_value_heads = num_attention_heads, head_dim = hidden_size / num_attention_heads,
 * norm_topk_prob false, decoder_sparse_step 1, mlp_only_layers [], max_position_embeddings 32768, rope_theta 10000.0,
 * rms_norm_eps 1e-6, tie_word_embeddings false, router_aux_loss_coef 0.001.
 *
 * <p>Not supported, rejected with an error: attention_bias true, use_sliding_window true, hidden_act other than
 * silu, a rope type other than default, model_type other than qwen3_moe.
 */
public final class Qwen3MoeConfig {
    public static final String MODEL_TYPE = "qwen3_moe";
    public static final String ARCHITECTURE = "Qwen3MoeForCausalLM";

    private static final Set<String> KNOWN = Set.of("model_type", "architectures", "vocab_size", "hidden_size",
            "intermediate_size", "moe_intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "num_experts", "num_local_experts", "num_experts_per_tok",
            "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers", "max_position_embeddings", "rope_theta",
            "rope_parameters", "rope_scaling", "rms_norm_eps", "tie_word_embeddings", "router_aux_loss_coef",
            "attention_bias", "use_sliding_window", "hidden_act");

    private final int vocabSize;
    private final int hiddenSize;
    private final int intermediateSize;
    private final int moeIntermediateSize;
    private final int numHiddenLayers;
    private final int numAttentionHeads;
    private final int numKeyValueHeads;
    private final int headDim;
    private final int numExperts;
    private final int numExpertsPerTok;
    private final boolean normTopkProb;
    private final int decoderSparseStep;
    private final List<Integer> mlpOnlyLayers;
    private final int maxPositionEmbeddings;
    private final double ropeTheta;
    private final double rmsNormEps;
    private final boolean tieWordEmbeddings;
    private final double routerAuxLossCoef;
    private final Map<String, Object> extras;

    private Qwen3MoeConfig(Builder b) {
        List<String> unset = new ArrayList<>();
        this.vocabSize = required(b.vocabSize, "vocab_size", unset);
        this.hiddenSize = required(b.hiddenSize, "hidden_size", unset);
        this.intermediateSize = required(b.intermediateSize, "intermediate_size", unset);
        this.moeIntermediateSize = required(b.moeIntermediateSize, "moe_intermediate_size", unset);
        this.numHiddenLayers = required(b.numHiddenLayers, "num_hidden_layers", unset);
        this.numAttentionHeads = required(b.numAttentionHeads, "num_attention_heads", unset);
        this.numExperts = required(b.numExperts, "num_experts", unset);
        this.numExpertsPerTok = required(b.numExpertsPerTok, "num_experts_per_tok", unset);
        if (!unset.isEmpty()) {
            throw new IllegalArgumentException("Qwen3-MoE config is missing required keys " + unset);
        }
        this.numKeyValueHeads = b.numKeyValueHeads != null ? b.numKeyValueHeads : numAttentionHeads;
        this.normTopkProb = b.normTopkProb;
        this.decoderSparseStep = b.decoderSparseStep;
        this.mlpOnlyLayers = List.copyOf(b.mlpOnlyLayers);
        this.maxPositionEmbeddings = b.maxPositionEmbeddings;
        this.ropeTheta = b.ropeTheta;
        this.rmsNormEps = b.rmsNormEps;
        this.tieWordEmbeddings = b.tieWordEmbeddings;
        this.routerAuxLossCoef = b.routerAuxLossCoef;
        this.extras = Collections.unmodifiableMap(new TreeMap<>(b.extras));

        positive("vocab_size", vocabSize);
        positive("hidden_size", hiddenSize);
        positive("intermediate_size", intermediateSize);
        positive("num_hidden_layers", numHiddenLayers);
        positive("num_attention_heads", numAttentionHeads);
        positive("num_key_value_heads", numKeyValueHeads);
        positive("max_position_embeddings", maxPositionEmbeddings);
        if (b.headDim != null) {
            positive("head_dim", b.headDim);
            this.headDim = b.headDim;
        } else {
            if (hiddenSize % numAttentionHeads != 0) {
                throw new IllegalArgumentException("hidden_size (" + hiddenSize + ") is not divisible by"
                        + " num_attention_heads (" + numAttentionHeads + "), so head_dim has no default; set head_dim");
            }
            this.headDim = hiddenSize / numAttentionHeads;
        }
        if (numAttentionHeads % numKeyValueHeads != 0) {
            throw new IllegalArgumentException("num_attention_heads (" + numAttentionHeads + ") must be divisible by"
                    + " num_key_value_heads (" + numKeyValueHeads + ")");
        }
        if (numExperts < 0) {
            throw new IllegalArgumentException("num_experts (" + numExperts + ") must be >= 0");
        }
        if (numExperts > 0) {
            positive("moe_intermediate_size", moeIntermediateSize);
            if (numExpertsPerTok < 1 || numExpertsPerTok > numExperts) {
                throw new IllegalArgumentException("num_experts_per_tok (" + numExpertsPerTok + ") must be between 1"
                        + " and num_experts (" + numExperts + ")");
            }
        }
        if (decoderSparseStep < 1) {
            throw new IllegalArgumentException("decoder_sparse_step (" + decoderSparseStep + ") must be >= 1");
        }
        Set<Integer> seen = new HashSet<>();
        for (Integer layer : mlpOnlyLayers) {
            if (layer < 0 || layer >= numHiddenLayers || !seen.add(layer)) {
                throw new IllegalArgumentException("mlp_only_layers " + mlpOnlyLayers + " must hold distinct layer"
                        + " indices in [0, num_hidden_layers=" + numHiddenLayers + "), found " + layer);
            }
        }
        if (!(ropeTheta > 0) || Double.isInfinite(ropeTheta)) {
            throw new IllegalArgumentException("rope_theta (" + ropeTheta + ") must be a positive finite number");
        }
        if (!(rmsNormEps > 0) || Double.isInfinite(rmsNormEps)) {
            throw new IllegalArgumentException("rms_norm_eps (" + rmsNormEps + ") must be a positive finite number");
        }
        if (!(routerAuxLossCoef >= 0) || Double.isInfinite(routerAuxLossCoef)) {
            throw new IllegalArgumentException("router_aux_loss_coef (" + routerAuxLossCoef
                    + ") must be a finite number >= 0");
        }
        for (String k : extras.keySet()) {
            if (KNOWN.contains(k)) {
                throw new IllegalArgumentException("extra key '" + k + "' is a modelled config key; set it through"
                        + " the builder instead");
            }
        }
    }

    private static int required(Integer v, String key, List<String> unset) {
        if (v == null) {
            unset.add(key);
            return 0;
        }
        return v;
    }

    private static void positive(String key, int v) {
        if (v <= 0) {
            throw new IllegalArgumentException(key + " (" + v + ") must be positive");
        }
    }

    // ------------------------------------------------------------------ parsing

    /** Reads a {@code config.json} file; errors name the file. */
    public static Qwen3MoeConfig load(Path file) throws IOException {
        String text = Files.readString(file, StandardCharsets.UTF_8);
        try {
            return parse(text);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException(file + ": " + e.getMessage(), e);
        }
    }

    /** Parses config.json text in 4.x or 5.x spelling. */
    public static Qwen3MoeConfig parse(String json) {
        Map<String, Object> m;
        try {
            m = Json.parseObject(json);
        } catch (JsonException e) {
            throw new IllegalArgumentException("config is not valid JSON: " + e.getMessage(), e);
        }
        try {
            return fromMap(m);
        } catch (JsonException e) {
            throw new IllegalArgumentException("invalid Qwen3-MoE config: " + e.getMessage(), e);
        }
    }

    private static Qwen3MoeConfig fromMap(Map<String, Object> m) {
        String modelType = Json.getString(m, "model_type", null);
        if (modelType != null && !modelType.equals(MODEL_TYPE)) {
            throw new IllegalArgumentException("model_type '" + modelType + "' is not supported; supported model types: "
                    + MODEL_TYPE);
        }
        String act = Json.getString(m, "hidden_act", "silu");
        if (!act.equals("silu")) {
            throw new IllegalArgumentException("hidden_act '" + act + "' is not supported; Qwen3-MoE uses 'silu'");
        }
        if (Json.getBoolean(m, "attention_bias", false)) {
            throw new IllegalArgumentException("attention_bias=true is not supported (Qwen3-MoE attention has no"
                    + " biases); set it to false");
        }
        if (Json.getBoolean(m, "use_sliding_window", false)) {
            throw new IllegalArgumentException("use_sliding_window=true is not supported (sliding_window="
                    + m.get("sliding_window") + "); only full causal attention is implemented");
        }
        Json.getList(m, "architectures"); // type check only; toJson writes Qwen3MoeForCausalLM

        Builder b = new Builder();
        b.vocabSize = optInt(m, "vocab_size");
        b.hiddenSize = optInt(m, "hidden_size");
        b.intermediateSize = optInt(m, "intermediate_size");
        b.moeIntermediateSize = optInt(m, "moe_intermediate_size");
        b.numHiddenLayers = optInt(m, "num_hidden_layers");
        b.numAttentionHeads = optInt(m, "num_attention_heads");
        b.numKeyValueHeads = optInt(m, "num_key_value_heads");
        b.headDim = optInt(m, "head_dim");
        Integer e4 = optInt(m, "num_experts");
        Integer e5 = optInt(m, "num_local_experts");
        if (e4 != null && e5 != null && !e4.equals(e5)) {
            throw new IllegalArgumentException("num_experts (" + e4 + ") and num_local_experts (" + e5
                    + ") disagree; they are the 4.x and 5.x names of one setting");
        }
        b.numExperts = e5 != null ? e5 : e4;
        b.numExpertsPerTok = optInt(m, "num_experts_per_tok");
        b.normTopkProb = Json.getBoolean(m, "norm_topk_prob", false);
        b.decoderSparseStep = Json.getInt(m, "decoder_sparse_step", 1);
        List<Object> mlpOnly = Json.getList(m, "mlp_only_layers");
        if (mlpOnly != null) {
            List<Integer> layers = new ArrayList<>();
            for (Object o : mlpOnly) {
                if (!(o instanceof Long) || (Long) o < Integer.MIN_VALUE || (Long) o > Integer.MAX_VALUE) {
                    throw new IllegalArgumentException("mlp_only_layers must be a list of layer indices, found "
                            + Json.typeName(o) + " " + o);
                }
                layers.add(((Long) o).intValue());
            }
            b.mlpOnlyLayers = layers;
        }
        b.maxPositionEmbeddings = Json.getInt(m, "max_position_embeddings", 32768);
        b.ropeTheta = ropeTheta(m);
        b.rmsNormEps = Json.getDouble(m, "rms_norm_eps", 1e-6);
        b.tieWordEmbeddings = Json.getBoolean(m, "tie_word_embeddings", false);
        b.routerAuxLossCoef = Json.getDouble(m, "router_aux_loss_coef", 0.001);
        for (Map.Entry<String, Object> e : m.entrySet()) {
            if (!KNOWN.contains(e.getKey())) {
                b.extras.put(e.getKey(), e.getValue());
            }
        }
        return b.build();
    }

    private static Integer optInt(Map<String, Object> m, String key) {
        return m.get(key) == null ? null : Json.getInt(m, key, 0);
    }

    private static double ropeTheta(Map<String, Object> m) {
        Double top = m.get("rope_theta") == null ? null : Json.getDouble(m, "rope_theta", 0);
        Double nested = null;
        Map<String, Object> rp = Json.getObject(m, "rope_parameters");
        if (rp != null) {
            checkRopeType(rp, "rope_parameters");
            for (String k : rp.keySet()) {
                if (!k.equals("rope_theta") && !k.equals("rope_type")) {
                    throw new IllegalArgumentException("rope_parameters key '" + k + "' is not supported (only"
                            + " rope_theta with rope_type 'default')");
                }
            }
            nested = rp.get("rope_theta") == null ? null : Json.getDouble(rp, "rope_theta", 0);
        }
        Map<String, Object> rs = Json.getObject(m, "rope_scaling");
        if (rs != null) {
            checkRopeType(rs, "rope_scaling");
        }
        if (top != null && nested != null && !top.equals(nested)) {
            throw new IllegalArgumentException("rope_theta (" + top + ") and rope_parameters.rope_theta (" + nested
                    + ") disagree; they are the 4.x and 5.x places of one setting");
        }
        return nested != null ? nested : top != null ? top : 10000.0;
    }

    private static void checkRopeType(Map<String, Object> rope, String where) {
        String type = Json.getString(rope, "rope_type", Json.getString(rope, "type", "default"));
        if (!type.equals("default")) {
            throw new IllegalArgumentException(where + " rope_type '" + type + "' is not supported; only 'default'"
                    + " RoPE is implemented");
        }
    }

    // ------------------------------------------------------------------ output

    /** The config as a JSON object: sorted keys, 5.x spelling plus the 4.x aliases, extras preserved. */
    public Map<String, Object> toMap() {
        Map<String, Object> m = new TreeMap<>(extras);
        m.put("model_type", MODEL_TYPE);
        m.put("architectures", List.of(ARCHITECTURE));
        m.put("vocab_size", vocabSize);
        m.put("hidden_size", hiddenSize);
        m.put("intermediate_size", intermediateSize);
        m.put("moe_intermediate_size", moeIntermediateSize);
        m.put("num_hidden_layers", numHiddenLayers);
        m.put("num_attention_heads", numAttentionHeads);
        m.put("num_key_value_heads", numKeyValueHeads);
        m.put("head_dim", headDim);
        m.put("num_local_experts", numExperts);
        m.put("num_experts", numExperts);
        m.put("num_experts_per_tok", numExpertsPerTok);
        m.put("norm_topk_prob", normTopkProb);
        m.put("decoder_sparse_step", decoderSparseStep);
        m.put("mlp_only_layers", mlpOnlyLayers);
        m.put("max_position_embeddings", maxPositionEmbeddings);
        Map<String, Object> rope = new LinkedHashMap<>();
        rope.put("rope_theta", ropeTheta);
        rope.put("rope_type", "default");
        m.put("rope_parameters", rope);
        m.put("rope_theta", ropeTheta);
        m.put("rms_norm_eps", rmsNormEps);
        m.put("tie_word_embeddings", tieWordEmbeddings);
        m.put("router_aux_loss_coef", routerAuxLossCoef);
        m.put("attention_bias", false);
        m.put("use_sliding_window", false);
        m.put("hidden_act", "silu");
        return m;
    }

    /** config.json text (two-space indent, sorted keys, trailing newline, as transformers writes it). */
    public String toJson() {
        return Json.write(toMap(), true) + "\n";
    }

    // ------------------------------------------------------------------ queries

    /** Whether layer {@code layer} has a sparse MoE block (else a dense MLP of intermediate_size). */
    public boolean isMoeLayer(int layer) {
        return !mlpOnlyLayers.contains(layer) && numExperts > 0 && (layer + 1) % decoderSparseStep == 0;
    }

    public int vocabSize() {
        return vocabSize;
    }

    public int hiddenSize() {
        return hiddenSize;
    }

    /** Width of the dense MLP (layers that are not MoE). */
    public int intermediateSize() {
        return intermediateSize;
    }

    /** Width of each expert's MLP. */
    public int moeIntermediateSize() {
        return moeIntermediateSize;
    }

    public int numHiddenLayers() {
        return numHiddenLayers;
    }

    public int numAttentionHeads() {
        return numAttentionHeads;
    }

    public int numKeyValueHeads() {
        return numKeyValueHeads;
    }

    public int headDim() {
        return headDim;
    }

    public int numExperts() {
        return numExperts;
    }

    public int numExpertsPerTok() {
        return numExpertsPerTok;
    }

    public boolean normTopkProb() {
        return normTopkProb;
    }

    public int decoderSparseStep() {
        return decoderSparseStep;
    }

    public List<Integer> mlpOnlyLayers() {
        return mlpOnlyLayers;
    }

    public int maxPositionEmbeddings() {
        return maxPositionEmbeddings;
    }

    public double ropeTheta() {
        return ropeTheta;
    }

    public double rmsNormEps() {
        return rmsNormEps;
    }

    public boolean tieWordEmbeddings() {
        return tieWordEmbeddings;
    }

    public double routerAuxLossCoef() {
        return routerAuxLossCoef;
    }

    /** Keys of the parsed config.json this class does not model (sorted), written back by {@link #toJson()}. */
    public Map<String, Object> extras() {
        return extras;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Qwen3MoeConfig && toJson().equals(((Qwen3MoeConfig) o).toJson());
    }

    @Override
    public int hashCode() {
        return toJson().hashCode();
    }

    @Override
    public String toString() {
        return "Qwen3MoeConfig" + Json.write(toMap(), false);
    }

    // ------------------------------------------------------------------ builder

    public static Builder builder() {
        return new Builder();
    }

    /** A builder holding this config's values. */
    public Builder toBuilder() {
        Builder b = new Builder();
        b.vocabSize = vocabSize;
        b.hiddenSize = hiddenSize;
        b.intermediateSize = intermediateSize;
        b.moeIntermediateSize = moeIntermediateSize;
        b.numHiddenLayers = numHiddenLayers;
        b.numAttentionHeads = numAttentionHeads;
        b.numKeyValueHeads = numKeyValueHeads;
        b.headDim = headDim;
        b.numExperts = numExperts;
        b.numExpertsPerTok = numExpertsPerTok;
        b.normTopkProb = normTopkProb;
        b.decoderSparseStep = decoderSparseStep;
        b.mlpOnlyLayers = new ArrayList<>(mlpOnlyLayers);
        b.maxPositionEmbeddings = maxPositionEmbeddings;
        b.ropeTheta = ropeTheta;
        b.rmsNormEps = rmsNormEps;
        b.tieWordEmbeddings = tieWordEmbeddings;
        b.routerAuxLossCoef = routerAuxLossCoef;
        b.extras = new LinkedHashMap<>(extras);
        return b;
    }

    /** Mutable builder; {@link #build()} validates. Unset optional values take the documented defaults. */
    public static final class Builder {
        private Integer vocabSize;
        private Integer hiddenSize;
        private Integer intermediateSize;
        private Integer moeIntermediateSize;
        private Integer numHiddenLayers;
        private Integer numAttentionHeads;
        private Integer numKeyValueHeads;
        private Integer headDim;
        private Integer numExperts;
        private Integer numExpertsPerTok;
        private boolean normTopkProb;
        private int decoderSparseStep = 1;
        private List<Integer> mlpOnlyLayers = new ArrayList<>();
        private int maxPositionEmbeddings = 32768;
        private double ropeTheta = 10000.0;
        private double rmsNormEps = 1e-6;
        private boolean tieWordEmbeddings;
        private double routerAuxLossCoef = 0.001;
        private Map<String, Object> extras = new LinkedHashMap<>();

        private Builder() {
        }

        public Builder vocabSize(int v) {
            vocabSize = v;
            return this;
        }

        public Builder hiddenSize(int v) {
            hiddenSize = v;
            return this;
        }

        public Builder intermediateSize(int v) {
            intermediateSize = v;
            return this;
        }

        public Builder moeIntermediateSize(int v) {
            moeIntermediateSize = v;
            return this;
        }

        public Builder numHiddenLayers(int v) {
            numHiddenLayers = v;
            return this;
        }

        public Builder numAttentionHeads(int v) {
            numAttentionHeads = v;
            return this;
        }

        public Builder numKeyValueHeads(int v) {
            numKeyValueHeads = v;
            return this;
        }

        /** Explicit head_dim; null restores the default hidden_size / num_attention_heads. */
        public Builder headDim(Integer v) {
            headDim = v;
            return this;
        }

        public Builder numExperts(int v) {
            numExperts = v;
            return this;
        }

        public Builder numExpertsPerTok(int v) {
            numExpertsPerTok = v;
            return this;
        }

        public Builder normTopkProb(boolean v) {
            normTopkProb = v;
            return this;
        }

        public Builder decoderSparseStep(int v) {
            decoderSparseStep = v;
            return this;
        }

        public Builder mlpOnlyLayers(List<Integer> v) {
            mlpOnlyLayers = new ArrayList<>(Objects.requireNonNull(v, "mlpOnlyLayers"));
            return this;
        }

        public Builder maxPositionEmbeddings(int v) {
            maxPositionEmbeddings = v;
            return this;
        }

        public Builder ropeTheta(double v) {
            ropeTheta = v;
            return this;
        }

        public Builder rmsNormEps(double v) {
            rmsNormEps = v;
            return this;
        }

        public Builder tieWordEmbeddings(boolean v) {
            tieWordEmbeddings = v;
            return this;
        }

        public Builder routerAuxLossCoef(double v) {
            routerAuxLossCoef = v;
            return this;
        }

        /** Sets an unmodelled config.json key (a JSON value: Map, List, String, Number, Boolean or null). */
        public Builder extra(String key, Object value) {
            extras.put(key, value);
            return this;
        }

        public Qwen3MoeConfig build() {
            return new Qwen3MoeConfig(this);
        }
    }
}
