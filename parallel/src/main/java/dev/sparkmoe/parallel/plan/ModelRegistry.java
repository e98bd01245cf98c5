package dev.sparkmoe.parallel.plan;

import java.util.Map;
import java.util.TreeMap;

/** Model type (config.json's {@code model_type}) to its parallelize function. */
public final class ModelRegistry {
    private static final Map<String, ModelParallelizer> PARALLELIZERS = new TreeMap<>();

    static {
        register("qwen3_moe", new Qwen3MoeParallelizer());
    }

    private ModelRegistry() {
    }

    public static synchronized void register(String modelType, ModelParallelizer p) {
        PARALLELIZERS.put(modelType, p);
    }

    /** The parallelize function of {@code modelType}; an unknown type fails with the list of supported ones. */
    public static synchronized ModelParallelizer parallelizer(String modelType) {
        ModelParallelizer p = PARALLELIZERS.get(modelType);
        if (p == null) {
            throw new IllegalArgumentException("unsupported model type '" + modelType + "'; supported model types: "
                    + String.join(", ", PARALLELIZERS.keySet()));
        }
        return p;
    }

    public static synchronized java.util.Set<String> supported() {
        return java.util.Set.copyOf(PARALLELIZERS.keySet());
    }
}
