package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Par;
import dev.sparkmoe.core.io.WeightSource;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Region;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Random initialisation as transformers does it for Qwen3-MoE (normal(0, initializer_range) for projection and
 * embedding weights, ones for norm weights), computed element by element: the value of an element depends only on
 * the seed, the parameter's name and the element's flat index in the full (stacked) tensor. A rank that holds one
 * shard computes exactly the values that the whole tensor holds there, so every layout starts from the same weights
 * without any rank making the whole tensor.
 *
 * <p>The generator is counter-based, as Philox and SplitMix are: a key from the seed and the name (FNV-1a of its
 * UTF-8 bytes), two 64-bit hashes (SplitMix64's finaliser) of the key and the index, and Box-Muller on them, with
 * {@link StrictMath} so that every JVM computes the same bits.
 */
public final class WeightInit {
    private static final long GOLDEN = 0x9E3779B97F4A7C15L;

    private WeightInit() {
    }

    /** Norm weights start at one; everything else is drawn. */
    public static boolean isNorm(String name) {
        return name.endsWith("norm.weight");
    }

    /** The key of a parameter's stream. */
    public static long key(long seed, String name) {
        long h = 0xcbf29ce484222325L;
        for (byte b : name.getBytes(StandardCharsets.UTF_8)) {
            h = (h ^ (b & 0xff)) * 0x100000001b3L;
        }
        return mix(mix(seed) ^ h);
    }

    /** Element {@code index} of the stream {@code key}: a normal(0, std) value. */
    public static float normal(long key, long index, double std) {
        long a = mix(key + GOLDEN * (2 * index + 1));
        long b = mix(key + GOLDEN * (2 * index + 2));
        double u1 = ((a >>> 11) + 1) * 0x1.0p-53; // (0, 1]
        double u2 = (b >>> 11) * 0x1.0p-53;       // [0, 1)
        return (float) (StrictMath.sqrt(-2.0 * StrictMath.log(u1)) * StrictMath.cos(2.0 * StrictMath.PI * u2) * std);
    }

    private static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
        z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
        return z ^ (z >>> 31);
    }

    /**
     * The initial values of {@code params} (names and full shapes) for a seed, as a weight source: reading a region
     * computes just that region.
     */
    public static WeightSource source(Collection<TensorSpec> params, long seed, double std) {
        Map<String, TensorSpec> specs = new LinkedHashMap<>();
        for (TensorSpec p : params) {
            specs.put(p.name(), p.withDtype(DType.F32));
        }
        Map<String, TensorSpec> listed = Collections.unmodifiableMap(specs);
        return new WeightSource() {
            @Override
            public Map<String, TensorSpec> tensors() {
                return listed;
            }

            @Override
            public void read(String name, Region region, long from, int count, float[] dst, int dstOff)
                    throws java.io.IOException {
                TensorSpec p = listed.get(name);
                if (p == null || !Arrays.equals(p.shape(), region.fullShape())) {
                    throw new IllegalArgumentException("no parameter " + name + " of shape "
                            + Arrays.toString(region.fullShape()) + " to initialise (have " + p + ")");
                }
                boolean norm = isNorm(name);
                long k = key(seed, name);
                region.forEachRun(from, count, (at, pos, len) -> {
                    if (norm) {
                        Arrays.fill(dst, dstOff + pos, dstOff + pos + len, 1f);
                    } else {
                        Par.range(len, 64, (a, b) -> {
                            for (int i = a; i < b; i++) {
                                dst[dstOff + pos + i] = normal(k, at + i, std);
                            }
                        });
                    }
                });
            }
        };
    }
}
