package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import java.util.List;

/**
 * The output head of {@link Qwen3MoeModel}: the final RMSNorm ({@code model.norm.weight}) and the LM head
 * projection ({@code lm_head.weight}), a module of its own so that wrappers can hook it apart from the root, as
 * torchtitan's {@code fully_shard([model.norm, model.output])} makes it an FSDP unit of its own: its weights are then
 * gathered while the last decoder layer computes, and its gradients reduced as soon as its backward, the first of
 * the backward pass, is done, instead of at the end of the step with the root's.
 *
 * <p>With tied word embeddings the LM head weight is the embedding, which the root owns: the head then owns only
 * the final norm (and uses the embedding while the root keeps it gathered). The parameter names are the Hub names;
 * the module path {@value #PATH} is not one (Hugging Face has no module holding both).
 */
public final class LmHead extends Module {
    /** The module path. */
    public static final String PATH = "head";

    final Parameter norm;   // [H]
    final Parameter weight; // [V, H], or the embedding when tied
    private final boolean tied;

    LmHead(Qwen3MoeConfig c, Backend be, Parameter embed) {
        super(PATH);
        int h = c.hiddenSize();
        tied = c.tieWordEmbeddings();
        norm = new Parameter("model.norm.weight", be, h);
        weight = tied ? embed : new Parameter("lm_head.weight", be, c.vocabSize(), h).readByGemmsOnly();
    }

    /** The final norm, and the LM head weight unless it is the (tied) embedding, which the root owns. */
    @Override
    public List<Parameter> ownParameters() {
        return tied ? List.of(norm) : List.of(norm, weight);
    }

    /** The LM head weight [V, H] (the embedding's table when tied). */
    public Parameter weight() {
        return weight;
    }

    /** Whether the LM head weight is the embedding (and so not a parameter of this module). */
    public boolean tied() {
        return tied;
    }
}
