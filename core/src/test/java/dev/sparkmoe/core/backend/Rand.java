package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.Tensor;
import java.util.SplittableRandom;

/** Seeded random test inputs (never zeros) and small helpers shared by the kernel tests. */
final class Rand {
    private final SplittableRandom r;

    Rand(long seed) {
        r = new SplittableRandom(seed);
    }

    /** Uniform in [-scale, scale). */
    float[] floats(int n, double scale) {
        float[] f = new float[n];
        for (int i = 0; i < n; i++) {
            f[i] = (float) ((r.nextDouble() * 2 - 1) * scale);
        }
        return f;
    }

    Tensor tensor(double scale, int... shape) {
        return Tensor.of(floats((int) Tensor.numel(shape), scale), shape);
    }

    /** Uniform in [lo, hi). */
    float[] uniform(int n, double lo, double hi) {
        float[] f = new float[n];
        for (int i = 0; i < n; i++) {
            f[i] = (float) (lo + r.nextDouble() * (hi - lo));
        }
        return f;
    }

    int nextInt(int bound) {
        return r.nextInt(bound);
    }

    static double[] toDouble(float[] f) {
        double[] d = new double[f.length];
        for (int i = 0; i < f.length; i++) {
            d[i] = f[i];
        }
        return d;
    }

    static double maxAbs(double[] d) {
        double m = 0;
        for (double v : d) {
            m = Math.max(m, Math.abs(v));
        }
        return m;
    }

    /** Asserts |actual - expected| <= tol elementwise, naming the first element that fails. */
    static void assertClose(String what, double[] expected, float[] actual, double tol) {
        org.junit.jupiter.api.Assertions.assertEquals(expected.length, actual.length, what + " length");
        for (int i = 0; i < expected.length; i++) {
            double d = Math.abs(expected[i] - actual[i]);
            if (!(d <= tol)) {
                org.junit.jupiter.api.Assertions.fail(what + "[" + i + "]: expected " + expected[i] + ", got "
                        + actual[i] + " (|diff| " + d + " > tol " + tol + ")");
            }
        }
    }
}
