package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import java.util.List;

/**
 * The token embedding of {@link Qwen3MoeModel} ({@code model.embed_tokens}, as Hugging Face names the module): a
 * module of its own so that wrappers can hook the embedding lookup apart from the root, whose hooks enclose the whole
 * forward and backward. Its backward is a scatter-add of the incoming gradient into the table's gradient
 * ({@link Backend#embeddingBackward}), which reads no weight. With tied word embeddings the table is also the LM
 * head weight, which {@link LmHead} uses at the other end of the forward pass.
 */
public final class TokenEmbedding extends Module {
    /** The module path. */
    public static final String PATH = "model.embed_tokens";

    final Parameter weight; // [V, H]

    TokenEmbedding(Qwen3MoeConfig c, Backend be) {
        super(PATH);
        weight = new Parameter(PATH + ".weight", be, c.vocabSize(), c.hiddenSize());
    }

    @Override
    public List<Parameter> ownParameters() {
        return List.of(weight);
    }

    /** The table [V, H]. */
    public Parameter weight() {
        return weight;
    }
}
