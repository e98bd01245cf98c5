package dev.sparkmoe.core.bench;

import dev.sparkmoe.core.model.Qwen3MoeConfig;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;

/** The two model shapes the benchmarks use. */
final class BenchConfigs {
    private BenchConfigs() {
    }

    /** The Hugging Face tiny fixture (hidden 64, 8 experts top-2, moe inter 32, vocab 512, 2 layers). */
    static Qwen3MoeConfig fixture() {
        try (InputStream in = BenchConfigs.class.getResourceAsStream("/fixtures/qwen3moe-tiny/config.json")) {
            if (in == null) {
                throw new IllegalStateException("fixtures/qwen3moe-tiny/config.json is not on the class path "
                        + "(the bench profile copies it into target/classes)");
            }
            return Qwen3MoeConfig.parse(new String(in.readAllBytes(), StandardCharsets.UTF_8));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /**
     * A ~18.4M-parameter config: vocab 8192, hidden 256, 8 layers, 8 heads / 4 kv heads of dim 32, 8 experts top-2
     * with moe inter 256, untied LM head. Parameters: embedding 2,097,152 + LM head 2,097,152 + final norm 256 +
     * 8 layers x 1,772,096 (attention 196,608, q/k norms 64, layer norms 512, router 2,048, experts 1,572,864)
     * = 18,371,328. Active per token (top-2 of 8 experts): 8 x 591,872 + LM head 2,097,152 = 6,832,128 (the
     * embedding lookup does no arithmetic).
     */
    static Qwen3MoeConfig m20() {
        return Qwen3MoeConfig.builder()
                .vocabSize(8192).hiddenSize(256).intermediateSize(768).moeIntermediateSize(256)
                .numHiddenLayers(8).numAttentionHeads(8).numKeyValueHeads(4).headDim(32)
                .numExperts(8).numExpertsPerTok(2).normTopkProb(true)
                .tieWordEmbeddings(false).maxPositionEmbeddings(1024).ropeTheta(10000).rmsNormEps(1e-6)
                .routerAuxLossCoef(0.001)
                .build();
    }

    static Qwen3MoeConfig byName(String name) {
        switch (name) {
            case "fixture": return fixture();
            case "m20": return m20();
            default: throw new IllegalArgumentException("unknown config " + name + " (fixture, m20)");
        }
    }
}
