package dev.sparkmoe.core.tensor;

import java.util.Arrays;

/**
 * A dense, row-major, host-resident tensor. Floating tensors (F32, BF16, F16) keep their elements as f32 values in
 * {@link #floats()}; a BF16 or F16 tensor holds values that are exactly representable in that type (they were
 * rounded on creation). Integer tensors keep {@link #longs()} (I64) or {@link #ints()} (I32).
 *
 * <p>Tensors made by {@link #view(int...)} share storage with their source. The class is deliberately small: the
 * numerics live in {@code Backend} implementations, which read and write the arrays directly.
 */
public final class Tensor {
    private final DType dtype;
    private final int[] shape;
    private final float[] f;
    private final long[] l;
    private final int[] i;
    private final Object device;

    private Tensor(DType dtype, int[] shape, Object device) {
        this.dtype = dtype;
        this.shape = shape.clone();
        this.f = null;
        this.l = null;
        this.i = null;
        this.device = device;
        checkedSize(shape);
    }

    private Tensor(DType dtype, int[] shape, float[] f, long[] l, int[] i) {
        this.dtype = dtype;
        this.shape = shape.clone();
        this.f = f;
        this.l = l;
        this.i = i;
        this.device = null;
        long n = numel(shape);
        long have = f != null ? f.length : l != null ? l.length : i.length;
        if (n != have) {
            throw new IllegalArgumentException("shape " + Arrays.toString(shape) + " has " + n
                    + " elements but the storage holds " + have);
        }
    }

    public static long numel(int[] shape) {
        long n = 1;
        for (int d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            }
            n *= d;
        }
        return n;
    }

    private static int checkedSize(int[] shape) {
        long n = numel(shape);
        if (n > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("tensor of shape " + Arrays.toString(shape) + " has " + n
                    + " elements, more than a Java array can hold (2^31 - 9); shard it");
        }
        return (int) n;
    }

    public static Tensor zeros(DType dtype, int... shape) {
        int n = checkedSize(shape);
        switch (dtype) {
            case I64: return new Tensor(dtype, shape, null, new long[n], null);
            case I32: return new Tensor(dtype, shape, null, null, new int[n]);
            default: return new Tensor(dtype, shape, new float[n], null, null);
        }
    }

    /** Wraps (does not copy) f32 values. */
    public static Tensor of(float[] values, int... shape) {
        return new Tensor(DType.F32, shape, values, null, null);
    }

    /** Wraps f32 values as a tensor of a floating dtype, rounding them to that dtype in place. */
    public static Tensor ofFloating(DType dtype, float[] values, int... shape) {
        if (!dtype.isFloating()) {
            throw new IllegalArgumentException("ofFloating needs a floating dtype, got " + dtype);
        }
        if (dtype == DType.BF16) {
            for (int k = 0; k < values.length; k++) {
                values[k] = DType.roundToBf16(values[k]);
            }
        } else if (dtype == DType.F16) {
            for (int k = 0; k < values.length; k++) {
                values[k] = DType.f16ToFloat(DType.floatToF16(values[k]));
            }
        }
        return new Tensor(dtype, shape, values, null, null);
    }

    public static Tensor ofLongs(long[] values, int... shape) {
        return new Tensor(DType.I64, shape, null, values, null);
    }

    public static Tensor ofInts(int[] values, int... shape) {
        return new Tensor(DType.I32, shape, null, null, values);
    }

    /**
     * A tensor whose elements live in a backend's device memory; {@code handle} is that backend's own description of
     * the memory (a device pointer and its owner). Its host accessors throw: download it first.
     */
    public static Tensor onDevice(DType dtype, Object handle, int... shape) {
        if (handle == null) {
            throw new IllegalArgumentException("device tensor needs a handle");
        }
        return new Tensor(dtype, shape, handle);
    }

    /** True when the elements are on the JVM heap. */
    public boolean isHost() {
        return device == null;
    }

    /** The backend's handle of a device tensor (null for host tensors). */
    public Object deviceHandle() {
        return device;
    }

    private void hostOnly() {
        if (device != null) {
            throw onDeviceError();
        }
    }

    private IllegalStateException onDeviceError() {
        return new IllegalStateException("tensor " + this + " lives in device memory (" + device
                + "); download it through its backend before reading it on the host");
    }

    public static Tensor scalar(float v) {
        return of(new float[] {v});
    }

    public DType dtype() {
        return dtype;
    }

    public int[] shape() {
        return shape.clone();
    }

    public int rank() {
        return shape.length;
    }

    public int dim(int d) {
        return shape[d < 0 ? shape.length + d : d];
    }

    public int numel() {
        return f != null ? f.length : l != null ? l.length : i != null ? i.length : (int) numel(shape);
    }

    public boolean isFloating() {
        return dtype.isFloating();
    }

    /** The f32 storage of a floating tensor (shared, not copied). */
    public float[] floats() {
        if (device != null) {
            throw onDeviceError();
        }
        if (f == null) {
            throw new IllegalStateException("tensor of dtype " + dtype + " has no float storage");
        }
        return f;
    }

    public long[] longs() {
        if (device != null) {
            throw onDeviceError();
        }
        if (l == null) {
            throw new IllegalStateException("tensor of dtype " + dtype + " has no I64 storage");
        }
        return l;
    }

    public int[] ints() {
        if (device != null) {
            throw onDeviceError();
        }
        if (i == null) {
            throw new IllegalStateException("tensor of dtype " + dtype + " has no I32 storage");
        }
        return i;
    }

    /** Token ids and other integer data as long values, whatever the integer dtype. */
    public long longAt(int k) {
        if (device != null) {
            throw onDeviceError();
        }
        return l != null ? l[k] : i != null ? i[k] : (long) f[k];
    }

    /** The same storage seen with another shape of equal element count. */
    public Tensor view(int... newShape) {
        if (numel(newShape) != numel()) {
            throw new IllegalArgumentException("cannot view shape " + Arrays.toString(shape) + " as "
                    + Arrays.toString(newShape) + ": element counts differ");
        }
        return device != null ? new Tensor(dtype, newShape, device) : new Tensor(dtype, newShape, f, l, i);
    }

    /** The same values relabelled with another floating dtype, rounding as needed; shares nothing. */
    public Tensor to(DType target) {
        hostOnly();
        if (target == dtype) {
            return copy();
        }
        if (isFloating() && target.isFloating()) {
            return ofFloating(target, f.clone(), shape);
        }
        if (!isFloating() && !target.isFloating()) {
            int n = numel();
            if (target == DType.I64) {
                long[] out = new long[n];
                for (int k = 0; k < n; k++) {
                    out[k] = i[k];
                }
                return ofLongs(out, shape);
            }
            int[] out = new int[n];
            for (int k = 0; k < n; k++) {
                if (l[k] < Integer.MIN_VALUE || l[k] > Integer.MAX_VALUE) {
                    throw new ArithmeticException("value " + l[k] + " at index " + k + " does not fit I32");
                }
                out[k] = (int) l[k];
            }
            return ofInts(out, shape);
        }
        throw new IllegalArgumentException("cannot convert " + dtype + " to " + target);
    }

    public Tensor copy() {
        hostOnly();
        return new Tensor(dtype, shape, f == null ? null : f.clone(), l == null ? null : l.clone(),
                i == null ? null : i.clone());
    }

    /** Rows [from, to) of the first dimension, copied. */
    public Tensor sliceRows(int from, int to) {
        hostOnly();
        int rowSize = shape.length == 0 ? 1 : numel() / Math.max(1, shape[0]);
        int[] s = shape.clone();
        s[0] = to - from;
        if (f != null) {
            return new Tensor(dtype, s, Arrays.copyOfRange(f, from * rowSize, to * rowSize), null, null);
        }
        if (l != null) {
            return new Tensor(dtype, s, null, Arrays.copyOfRange(l, from * rowSize, to * rowSize), null);
        }
        return new Tensor(dtype, s, null, null, Arrays.copyOfRange(i, from * rowSize, to * rowSize));
    }

    /** Bitwise equality of dtype, shape and contents. */
    public boolean bitwiseEquals(Tensor o) {
        hostOnly();
        if (o == null || o.dtype != dtype || !Arrays.equals(o.shape, shape)) {
            return false;
        }
        if (f != null) {
            for (int k = 0; k < f.length; k++) {
                if (Float.floatToRawIntBits(f[k]) != Float.floatToRawIntBits(o.f[k])) {
                    return false;
                }
            }
            return true;
        }
        return l != null ? Arrays.equals(l, o.l) : Arrays.equals(i, o.i);
    }

    /** Largest absolute value (0 for an empty tensor). */
    public float maxAbs() {
        float m = 0;
        for (float v : floats()) {
            m = Math.max(m, Math.abs(v));
        }
        return m;
    }

    @Override
    public String toString() {
        return "Tensor(" + dtype + ", " + Arrays.toString(shape) + ")";
    }
}
