package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * Gives activations back as soon as the backward pass has consumed them. The rule the modules follow: a module's
 * backward releases its own cache and its temporaries; tensors it was handed (its input, the incoming gradient) stay
 * the caller's.
 */
final class Release {
    private Release() {
    }

    /** Releases each tensor (nulls skipped). */
    static void all(Backend be, Tensor... tensors) {
        for (Tensor t : tensors) {
            if (t != null) {
                be.release(t);
            }
        }
    }
}
