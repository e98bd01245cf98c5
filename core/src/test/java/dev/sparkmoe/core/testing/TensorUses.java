package dev.sparkmoe.core.testing;

import dev.sparkmoe.core.tensor.Tensor;
import java.util.Map;
import java.util.function.Predicate;

/**
 * Where a backend call passes the tensors a test watches: for an {@link Intercept} handler that holds some tensors to
 * a few calls and argument positions.
 */
public final class TensorUses {
    private TensorUses() {
    }

    /** One argument of a call that is a watched tensor, and whether the call may take it in that position. */
    @FunctionalInterface
    public interface Use {
        void at(Tensor t, int position, boolean allowed);
    }

    /**
     * Calls {@code use} for each argument of the call {@code name} that is a tensor {@code watched} accepts; allowed
     * where {@code allowed} lists that position for that call.
     */
    public static void each(String name, Object[] args, Map<String, int[]> allowed, Predicate<Tensor> watched,
                            Use use) {
        int[] positions = allowed.get(name);
        for (int i = 0; args != null && i < args.length; i++) {
            if (!(args[i] instanceof Tensor t) || !watched.test(t)) {
                continue;
            }
            boolean ok = false;
            for (int a = 0; positions != null && a < positions.length; a++) {
                ok |= positions[a] == i;
            }
            use.at(t, i, ok);
        }
    }
}
