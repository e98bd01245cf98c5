package dev.sparkmoe.gpu.comm;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * How {@link TcpCommunicator} puts one array type on the wire and reduces it: bulk little-endian conversion of a range
 * of elements to and from a frame's payload, and the element-wise operation of a reduction ({@link #FLOAT_SUM},
 * {@link #FLOAT_MAX}, {@link #DOUBLE_SUM}, {@link #LONG_SUM}, {@link #INT_SUM}; the sums also serve as plain codecs).
 */
abstract class ElementKind<A> {
    final int bytes;

    ElementKind(int bytes) {
        this.bytes = bytes;
    }

    abstract A newArray(int len);

    abstract byte[] encode(A src, int off, int len);

    /** {@code dst[dstOff, +len)} = elements {@code [elemOff, +len)} of {@code src}. */
    abstract void decode(byte[] src, int elemOff, A dst, int dstOff, int len);

    /** {@code acc[accOff + i] = acc[accOff + i] op x[xOff + i]}. */
    abstract void combine(A acc, int accOff, A x, int xOff, int len);

    ByteBuffer wrap(byte[] b) {
        return ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
    }

    private static final class FloatKind extends ElementKind<float[]> {
        private final boolean max;

        FloatKind(boolean max) {
            super(4);
            this.max = max;
        }

        @Override
        float[] newArray(int len) {
            return new float[len];
        }

        @Override
        byte[] encode(float[] src, int off, int len) {
            byte[] b = new byte[len * 4];
            wrap(b).asFloatBuffer().put(src, off, len);
            return b;
        }

        @Override
        void decode(byte[] src, int elemOff, float[] dst, int dstOff, int len) {
            wrap(src).position(elemOff * 4).slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(dst, dstOff, len);
        }

        @Override
        void combine(float[] acc, int accOff, float[] x, int xOff, int len) {
            if (max) {
                for (int i = 0; i < len; i++) {
                    acc[accOff + i] = Math.max(acc[accOff + i], x[xOff + i]);
                }
            } else {
                for (int i = 0; i < len; i++) {
                    acc[accOff + i] += x[xOff + i];
                }
            }
        }
    }

    static final ElementKind<float[]> FLOAT_SUM = new FloatKind(false);
    static final ElementKind<float[]> FLOAT_MAX = new FloatKind(true);

    static final ElementKind<double[]> DOUBLE_SUM = new ElementKind<>(8) {
        @Override
        double[] newArray(int len) {
            return new double[len];
        }

        @Override
        byte[] encode(double[] src, int off, int len) {
            byte[] b = new byte[len * 8];
            wrap(b).asDoubleBuffer().put(src, off, len);
            return b;
        }

        @Override
        void decode(byte[] src, int elemOff, double[] dst, int dstOff, int len) {
            wrap(src).position(elemOff * 8).slice().order(ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(dst, dstOff, len);
        }

        @Override
        void combine(double[] acc, int accOff, double[] x, int xOff, int len) {
            for (int i = 0; i < len; i++) {
                acc[accOff + i] += x[xOff + i];
            }
        }
    };

    static final ElementKind<long[]> LONG_SUM = new ElementKind<>(8) {
        @Override
        long[] newArray(int len) {
            return new long[len];
        }

        @Override
        byte[] encode(long[] src, int off, int len) {
            byte[] b = new byte[len * 8];
            wrap(b).asLongBuffer().put(src, off, len);
            return b;
        }

        @Override
        void decode(byte[] src, int elemOff, long[] dst, int dstOff, int len) {
            wrap(src).position(elemOff * 8).slice().order(ByteOrder.LITTLE_ENDIAN).asLongBuffer().get(dst, dstOff, len);
        }

        @Override
        void combine(long[] acc, int accOff, long[] x, int xOff, int len) {
            for (int i = 0; i < len; i++) {
                acc[accOff + i] += x[xOff + i];
            }
        }
    };

    static final ElementKind<int[]> INT_SUM = new ElementKind<>(4) {
        @Override
        int[] newArray(int len) {
            return new int[len];
        }

        @Override
        byte[] encode(int[] src, int off, int len) {
            byte[] b = new byte[len * 4];
            wrap(b).asIntBuffer().put(src, off, len);
            return b;
        }

        @Override
        void decode(byte[] src, int elemOff, int[] dst, int dstOff, int len) {
            wrap(src).position(elemOff * 4).slice().order(ByteOrder.LITTLE_ENDIAN).asIntBuffer().get(dst, dstOff, len);
        }

        @Override
        void combine(int[] acc, int accOff, int[] x, int xOff, int len) {
            for (int i = 0; i < len; i++) {
                acc[accOff + i] += x[xOff + i];
            }
        }
    };
}
