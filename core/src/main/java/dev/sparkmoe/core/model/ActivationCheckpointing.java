package dev.sparkmoe.core.model;

import java.util.Locale;

/**
 * What each decoder layer keeps from its forward pass for its backward pass, and what the backward pass computes
 * again (activation checkpointing, per layer, as torchtitan's {@code activation_checkpoint.mode}). The recomputation
 * runs the same kernels in the same order on the same inputs as the forward pass did, so every setting gives the
 * same losses and gradients, bit for bit where the kernels are deterministic (the CPU backend's are); they differ in
 * memory and time only.
 *
 * <ul>
 *   <li>{@link #NONE}: every activation the backward pass reads is kept from the forward pass.</li>
 *   <li>{@link #FULL}: a layer keeps only its input (and its router logits, which the forward pass returns as an
 *       output). Its backward first runs its whole forward again, routing, token dispatch (an all-to-all under
 *       expert parallelism) and combine included, then its backward.</li>
 *   <li>{@link #SELECTIVE}: a layer keeps its input, the routing (router probabilities, top-k experts and weights),
 *       the token dispatch (its permutation and, where the dispatcher cannot gather them again locally, the routed
 *       rows that the all-to-all delivered) and the experts' outputs in slot order (the combine's output, an
 *       all-to-all's under expert parallelism, which the combine's backward reads). Its backward recomputes the
 *       norms, the whole attention and the experts' gate and up projections (the SwiGLU input), and never routes or
 *       moves tokens again. A dense (non-MoE) layer has no routing to keep and is recomputed as under
 *       {@link #FULL}.</li>
 * </ul>
 */
public enum ActivationCheckpointing {
    NONE,
    FULL,
    SELECTIVE;

    /** The setting's name as the configuration writes it ({@code none}, {@code full}, {@code selective}). */
    public String configName() {
        return name().toLowerCase(Locale.ROOT);
    }

    /** Parses {@code none}, {@code full} or {@code selective} (any case). */
    public static ActivationCheckpointing parse(String s) {
        if (s != null) {
            for (ActivationCheckpointing m : values()) {
                if (m.configName().equals(s.strip().toLowerCase(Locale.ROOT))) {
                    return m;
                }
            }
        }
        throw new IllegalArgumentException("activation checkpointing must be none, full or selective, got '" + s
                + "' (none keeps every activation, full recomputes each layer's forward in its backward, selective "
                + "recomputes attention and the experts' SwiGLU but keeps the routing)");
    }
}
