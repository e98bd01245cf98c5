package dev.sparkmoe.core.io;

import dev.sparkmoe.core.tensor.Tensor;
import java.nio.file.Path;
import java.util.Map;

/**
 * The fully loaded, validated contents of one safetensors file. The maps are unmodifiable; {@link #tensors()} is
 * ordered by tensor name (String order), whatever order the file's header used.
 */
public final class SafeTensorsFile {
    private final Path path;
    private final Map<String, Tensor> tensors;
    private final Map<String, String> metadata;

    SafeTensorsFile(Path path, Map<String, Tensor> tensors, Map<String, String> metadata) {
        this.path = path;
        this.tensors = tensors;
        this.metadata = metadata;
    }

    public Path path() {
        return path;
    }

    /** Tensors by name, sorted by name. */
    public Map<String, Tensor> tensors() {
        return tensors;
    }

    /** The {@code __metadata__} map in header order; empty when the header has none. */
    public Map<String, String> metadata() {
        return metadata;
    }

    /** The named tensor; an error listing a few names when it is absent. */
    public Tensor get(String name) {
        Tensor t = tensors.get(name);
        if (t == null) {
            throw new IllegalArgumentException(path + " has no tensor '" + name + "' (it holds " + tensors.size()
                    + " tensors, e.g. " + tensors.keySet().stream().limit(5).toList() + ")");
        }
        return t;
    }
}
