package dev.sparkmoe.core.io;

import dev.sparkmoe.core.tensor.DType;
import java.util.Arrays;

/**
 * One entry of a safetensors header: name, dtype name as written (any dtype the reference library knows), shape and
 * byte offsets relative to the start of the data section. Immutable.
 */
public final class TensorInfo {
    private final String name;
    private final String dtypeName;
    private final long[] shape;
    private final long begin;
    private final long end;

    public TensorInfo(String name, String dtypeName, long[] shape, long begin, long end) {
        this.name = name;
        this.dtypeName = dtypeName;
        this.shape = shape.clone();
        this.begin = begin;
        this.end = end;
    }

    public String name() {
        return name;
    }

    /** The dtype string of the header ("F32", "BF16", "F8_E4M3", ...). */
    public String dtypeName() {
        return dtypeName;
    }

    /** Our dtype, or null when the file's dtype is one the reference knows but we do not load. */
    public DType dtype() {
        return DType.fromSafetensorsName(dtypeName);
    }

    /** Whether {@link SafeTensors#read} can load this tensor (F32, BF16, F16, I32, I64). */
    public boolean supported() {
        return dtype() != null;
    }

    public long[] shape() {
        return shape.clone();
    }

    public long numel() {
        long n = 1;
        for (long d : shape) {
            n *= d;
        }
        return n;
    }

    /** First byte of the tensor in the data section (inclusive). */
    public long begin() {
        return begin;
    }

    /** End byte of the tensor in the data section (exclusive). */
    public long end() {
        return end;
    }

    public long byteSize() {
        return end - begin;
    }

    @Override
    public boolean equals(Object o) {
        if (!(o instanceof TensorInfo)) {
            return false;
        }
        TensorInfo t = (TensorInfo) o;
        return name.equals(t.name) && dtypeName.equals(t.dtypeName) && Arrays.equals(shape, t.shape)
                && begin == t.begin && end == t.end;
    }

    @Override
    public int hashCode() {
        return name.hashCode() * 31 + Arrays.hashCode(shape);
    }

    @Override
    public String toString() {
        return name + ": " + dtypeName + " " + Arrays.toString(shape) + " [" + begin + ", " + end + ")";
    }
}
