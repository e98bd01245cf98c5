package dev.sparkmoe.core.io;

import java.io.IOException;
import java.nio.file.Path;

/**
 * A safetensors file (or a checkpoint directory) that breaks a rule of the format. The message names the file, the
 * tensor where one is involved, the numbers that disagree, and a hint.
 */
public class SafeTensorsFormatException extends IOException {
    private static final long serialVersionUID = 1L;

    private final transient Path file;
    private final String tensor;

    public SafeTensorsFormatException(Path file, String tensor, String problem, String hint) {
        this(file, tensor, problem, hint, null);
    }

    public SafeTensorsFormatException(Path file, String tensor, String problem, String hint, Throwable cause) {
        super(file + ": " + (tensor != null ? "tensor '" + tensor + "': " : "") + problem
                + (hint != null ? ". Hint: " + hint : ""), cause);
        this.file = file;
        this.tensor = tensor;
    }

    /** The file (or directory) at fault. */
    public Path file() {
        return file;
    }

    /** The tensor at fault, or null when the problem is not about one tensor. */
    public String tensor() {
        return tensor;
    }
}
