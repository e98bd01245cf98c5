package dev.sparkmoe.core.tensor;

import java.util.Arrays;
import java.util.Objects;

/**
 * A tensor without its values: name, dtype and shape. What a safetensors header entry describes before any data is
 * read, and what a file's header is computed from before any data is written.
 */
public record TensorSpec(String name, DType dtype, int[] shape) {

    public TensorSpec {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(dtype, "dtype");
        shape = shape.clone();
        Tensor.numel(shape); // rejects negative dimensions
    }

    @Override
    public int[] shape() {
        return shape.clone();
    }

    public int rank() {
        return shape.length;
    }

    public int dim(int d) {
        return shape[d];
    }

    public long numel() {
        return Tensor.numel(shape);
    }

    /** Bytes of the values stored in {@link #dtype()}. */
    public long byteSize() {
        return numel() * dtype.byteSize();
    }

    /** The same tensor stored in another dtype. */
    public TensorSpec withDtype(DType d) {
        return new TensorSpec(name, d, shape);
    }

    /** The same tensor under another name. */
    public TensorSpec withName(String n) {
        return new TensorSpec(n, dtype, shape);
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof TensorSpec t && name.equals(t.name) && dtype == t.dtype && Arrays.equals(shape, t.shape);
    }

    @Override
    public int hashCode() {
        return Objects.hash(name, dtype, Arrays.hashCode(shape));
    }

    @Override
    public String toString() {
        return name + ": " + dtype + " " + Arrays.toString(shape);
    }
}
