package dev.sparkmoe.core.io;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.Region;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.IOException;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;

/**
 * Initial weights in the model's naming (stacked experts), read a region at a time: a rank reads only the regions
 * of its shards and never holds a whole tensor it does not own. Implementations: a checkpoint on disk
 * ({@link HfCheckpointReader}), full tensors in memory ({@link #of}), random initialisation
 * ({@code dev.sparkmoe.core.model.WeightInit}).
 */
public interface WeightSource extends AutoCloseable {

    /** Every tensor the source holds by name, with the dtype it is stored in and its full shape. */
    Map<String, TensorSpec> tensors();

    /**
     * Writes elements {@code [from, from + count)} of {@code region}'s row-major numbering of tensor {@code name},
     * widened to f32, into {@code dst[dstOff, dstOff + count)}. The region's full shape must be the tensor's.
     */
    void read(String name, Region region, long from, int count, float[] dst, int dstOff) throws IOException;

    /** Releases files; the default holds none. */
    @Override
    default void close() throws IOException {
    }

    /**
     * Copies {@code region} of tensor {@code name} into {@code dst} (a backend tensor of the region's shape), in pieces
     * of at most {@code staging.length} elements: the host memory used is {@code staging} plus one piece.
     */
    static void copyInto(WeightSource source, String name, Region region, Backend backend, Tensor dst,
                         float[] staging) throws IOException {
        long n = region.numel();
        if (dst.numel() != n) {
            throw new IllegalArgumentException("cannot load " + name + " " + region + " (" + n + " elements) into a "
                    + "tensor of shape " + Arrays.toString(dst.shape()));
        }
        for (long off = 0; off < n; off += staging.length) {
            int count = (int) Math.min(staging.length, n - off);
            source.read(name, region, off, count, staging, 0);
            float[] piece = count == staging.length ? staging : Arrays.copyOf(staging, count);
            Tensor onBackend = backend.upload(Tensor.of(piece, count));
            backend.copy(onBackend, 0, dst, (int) off, count);
            backend.release(onBackend); // on the CPU the piece itself: nothing to free
        }
    }

    /** Full tensors held in memory (floating ones are read as f32; others are listed and refuse to be read). */
    static WeightSource of(Map<String, Tensor> tensors) {
        Map<String, TensorSpec> specs = new TreeMap<>();
        for (Map.Entry<String, Tensor> e : tensors.entrySet()) {
            specs.put(e.getKey(), new TensorSpec(e.getKey(), e.getValue().dtype(), e.getValue().shape()));
        }
        Map<String, TensorSpec> listed = Collections.unmodifiableMap(new LinkedHashMap<>(specs));
        return new WeightSource() {
            @Override
            public Map<String, TensorSpec> tensors() {
                return listed;
            }

            @Override
            public void read(String name, Region region, long from, int count, float[] dst, int dstOff)
                    throws IOException {
                Tensor t = tensors.get(name);
                if (t == null) {
                    throw new IllegalArgumentException("no tensor " + name + " among " + listed.size() + " tensors");
                }
                if (!t.isFloating() || !Arrays.equals(t.shape(), region.fullShape())) {
                    throw new IllegalArgumentException("cannot read " + region + " of " + name + " ("
                            + t.dtype() + " " + Arrays.toString(t.shape()) + ") as f32");
                }
                float[] src = t.floats();
                region.forEachRun(from, count, (at, pos, len) -> System.arraycopy(src, (int) at, dst, dstOff + pos,
                        len));
            }
        };
    }
}
