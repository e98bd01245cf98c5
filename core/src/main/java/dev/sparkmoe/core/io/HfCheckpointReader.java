package dev.sparkmoe.core.io;

import dev.sparkmoe.core.tensor.Region;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A Hugging Face checkpoint directory (one file or a sharded index; F32, BF16 or F16 tensors) seen in the stacked
 * naming of our model, read a region at a time: {@link #read} reads from the files only the bytes of the elements
 * asked for, widened to f32, through one bounded buffer ({@value #BUFFER_BYTES} bytes). A stacked expert weight
 * stored per expert or fused ({@link HfCheckpoint}'s forms) is read from the stored tensors of the experts the region
 * covers: no stacked tensor is ever made.
 *
 * <p>{@link #open} makes every check {@link HfCheckpoint#load} and {@link HfCheckpoint#stackExperts} make, with the
 * same errors, before anything is read. Not thread-safe: one reader per rank.
 */
public final class HfCheckpointReader implements WeightSource {
    /** The read buffer: the host memory a reader uses besides its caller's destination. */
    public static final int BUFFER_BYTES = 1 << 20;

    private final Path dir;
    private final HfCheckpoint.Catalog catalog;
    private final Map<String, ExpertStacking.Stacked> stacked;
    private final Map<String, TensorSpec> specs;
    private final Map<Path, FileChannel> open = new HashMap<>();
    private final ByteBuffer buf = ByteBuffer.allocate(BUFFER_BYTES);
    private long bytesRead;

    private HfCheckpointReader(Path dir, HfCheckpoint.Catalog catalog, Map<String, ExpertStacking.Stacked> stacked) {
        this.dir = dir;
        this.catalog = catalog;
        this.stacked = stacked;
        Map<String, TensorSpec> s = new LinkedHashMap<>();
        for (Map.Entry<String, ExpertStacking.Stacked> e : stacked.entrySet()) {
            s.put(e.getKey(), e.getValue().spec());
        }
        this.specs = Collections.unmodifiableMap(s);
    }

    /**
     * Opens a checkpoint directory: the index and every file's header are validated and the experts' layout is
     * worked out (for {@code numExperts}); no tensor data is read yet.
     */
    public static HfCheckpointReader open(Path dir, int numExperts) throws IOException {
        HfCheckpoint.Catalog c = HfCheckpoint.catalog(dir);
        Map<String, TensorSpec> hub = new LinkedHashMap<>();
        for (String name : c.located().keySet()) {
            TensorInfo t = c.info(name);
            hub.put(name, new TensorSpec(name, t.dtype(), SafeTensors.intShape(t)));
        }
        return new HfCheckpointReader(dir, c, ExpertStacking.plan(hub, numExperts));
    }

    public Path dir() {
        return dir;
    }

    /** Stacked-naming tensors with the dtype they are stored in and their full shapes, by name. */
    @Override
    public Map<String, TensorSpec> tensors() {
        return specs;
    }

    /** Bytes of tensor data read from the files so far. */
    public long bytesRead() {
        return bytesRead;
    }

    @Override
    public void read(String name, Region region, long from, int count, float[] dst, int dstOff) throws IOException {
        ExpertStacking.Stacked s = stacked.get(name);
        if (s == null) {
            throw new IllegalArgumentException(dir + " holds no tensor " + name + " (in stacked-expert naming)");
        }
        if (!Arrays.equals(s.spec().shape(), region.fullShape())) {
            throw new IllegalArgumentException("region " + region + " asked of " + s.spec());
        }
        ExpertStacking.Source src = s.source();
        region.forEachRun(from, count, (at, pos, len) -> {
            if (src instanceof ExpertStacking.Whole w) {
                readStored(w.hubName(), at, len, dst, dstOff + pos);
                return;
            }
            int[] shape = s.spec().shape();
            long block = (long) shape[1] * shape[2]; // one expert's elements
            long g = at;
            int done = 0;
            while (done < len) {
                int e = (int) (g / block);
                long within = g % block;
                int n = (int) Math.min(len - done, block - within);
                if (src instanceof ExpertStacking.PerExpert pe) {
                    readStored(pe.hubNames().get(e), within, n, dst, dstOff + pos + done);
                } else {
                    ExpertStacking.FusedHalf f = (ExpertStacking.FusedHalf) src;
                    readStored(f.hubName(), (2L * e + f.half()) * block + within, n, dst, dstOff + pos + done);
                }
                g += n;
                done += n;
            }
        });
    }

    /** Elements {@code [from, from + n)} of the stored tensor {@code hubName}. */
    private void readStored(String hubName, long from, int n, float[] dst, int dstOff) throws IOException {
        Path file = catalog.located().get(hubName);
        FileChannel ch = open.get(file);
        if (ch == null) {
            ch = catalog.open(file);
            open.put(file, ch);
        }
        bytesRead += SafeTensors.readFloats(file, ch, catalog.headers().get(file).dataStart(), catalog.info(hubName),
                from, n, dst, dstOff, buf);
    }

    /** The stored (Hub) tensors the stacked tensor {@code name} is read from. */
    public List<String> storedAs(String name) {
        ExpertStacking.Source src = stacked.get(name).source();
        if (src instanceof ExpertStacking.Whole w) {
            return List.of(w.hubName());
        }
        if (src instanceof ExpertStacking.PerExpert pe) {
            return pe.hubNames();
        }
        return List.of(((ExpertStacking.FusedHalf) src).hubName());
    }

    @Override
    public void close() throws IOException {
        IOException first = null;
        for (FileChannel ch : open.values()) {
            try {
                ch.close();
            } catch (IOException e) {
                first = first == null ? e : first;
            }
        }
        open.clear();
        if (first != null) {
            throw first;
        }
    }
}
