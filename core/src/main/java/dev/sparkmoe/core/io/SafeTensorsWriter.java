package dev.sparkmoe.core.io;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Writes one safetensors file as a stream, one tensor at a time: the header is computed from the names, dtypes and
 * shapes given up front and written first, then each tensor's values as they arrive (in the order given, which is
 * also their order in the data section), converted from f32 to the tensor's dtype (BF16 and F16 rounded to nearest
 * even) through a bounded buffer. No tensor needs to exist whole before the file starts, and the file never exists
 * whole in memory; a stream that cannot seek (a Hadoop file) is enough.
 */
public final class SafeTensorsWriter implements TensorSink {
    private static final int BUFFER_BYTES = 1 << 20;

    private final OutputStream out;
    private final List<TensorSpec> entries;
    private final ByteBuffer buf = ByteBuffer.allocate(BUFFER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
    private int next;

    /**
     * Writes the 8-byte length and the header of a file holding {@code entries} (floating dtypes: F32, BF16, F16),
     * with {@code metadata} as {@code __metadata__} (null: none).
     */
    public SafeTensorsWriter(OutputStream out, List<TensorSpec> entries, Map<String, String> metadata)
            throws IOException {
        this.out = out;
        this.entries = List.copyOf(entries);
        Set<String> seen = new HashSet<>();
        for (TensorSpec t : this.entries) {
            if (t.name().equals(SafeTensors.METADATA_KEY)) {
                throw new IllegalArgumentException("'" + SafeTensors.METADATA_KEY
                        + "' is reserved for metadata and cannot name a tensor");
            }
            if (!seen.add(t.name())) {
                throw new IllegalArgumentException("tensor '" + t.name() + "' is listed twice for one file");
            }
            if (!t.dtype().isFloating()) {
                throw new IllegalArgumentException("tensor '" + t.name() + "' has dtype " + t.dtype()
                        + "; this writer stores f32 values as F32, BF16 or F16");
            }
        }
        if (metadata != null) {
            for (Map.Entry<String, String> e : metadata.entrySet()) {
                if (e.getKey() == null || e.getValue() == null) {
                    throw new IllegalArgumentException("metadata key and value must be non-null strings, got "
                            + e.getKey() + " -> " + e.getValue());
                }
            }
        }
        byte[] header = SafeTensors.header(this.entries, metadata);
        if (header.length > SafeTensors.MAX_HEADER_BYTES) {
            throw new IllegalArgumentException("the header of " + this.entries.size() + " tensors would be "
                    + header.length + " bytes, over the format's limit of " + SafeTensors.MAX_HEADER_BYTES
                    + "; split the tensors over more files");
        }
        buf.clear();
        buf.putLong(header.length);
        out.write(buf.array(), 0, 8);
        out.write(header);
    }

    /** Bytes of the file that {@code entries} and {@code metadata} make: 8 + header + data. */
    public static long fileSize(List<TensorSpec> entries, Map<String, String> metadata) {
        long data = 0;
        for (TensorSpec t : entries) {
            data += t.byteSize();
        }
        return 8 + SafeTensors.header(entries, metadata).length + data;
    }

    /** The tensors of the file, in their order. */
    public List<TensorSpec> entries() {
        return entries;
    }

    /** The tensor the next {@link #write} must deliver, or null when all were written. */
    public TensorSpec expected() {
        return next < entries.size() ? entries.get(next) : null;
    }

    @Override
    public void write(String name, int[] shape, float[] data, int offset) throws IOException {
        TensorSpec t = expected();
        if (t == null) {
            throw new IllegalStateException("tensor '" + name + "' written after all " + entries.size()
                    + " tensors of the file");
        }
        if (!t.name().equals(name) || !Arrays.equals(t.shape(), shape)) {
            throw new IllegalStateException("tensor '" + name + "' " + Arrays.toString(shape) + " written where the "
                    + "file's header has " + t + " (tensor " + (next + 1) + " of " + entries.size() + "): tensors "
                    + "must come in the order the header was made from");
        }
        long n = t.numel();
        if (offset < 0 || offset + n > data.length) {
            throw new IllegalArgumentException("tensor '" + name + "' needs " + n + " values from offset " + offset
                    + " but the array holds " + data.length);
        }
        DType dtype = t.dtype();
        int size = dtype.byteSize();
        int perChunk = BUFFER_BYTES / size;
        for (long done = 0; done < n; ) {
            int count = (int) Math.min(perChunk, n - done);
            int at = (int) (offset + done);
            buf.clear();
            switch (dtype) {
                case F32:
                    buf.asFloatBuffer().put(data, at, count);
                    buf.position(count * 4);
                    break;
                case BF16: {
                    byte[] a = buf.array(); // little-endian, straight into the array: no per-element buffer call
                    for (int k = 0; k < count; k++) {
                        short h = DType.floatToBf16(data[at + k]);
                        a[2 * k] = (byte) h;
                        a[2 * k + 1] = (byte) (h >>> 8);
                    }
                    buf.position(count * 2);
                    break;
                }
                case F16: {
                    byte[] a = buf.array();
                    for (int k = 0; k < count; k++) {
                        short h = DType.floatToF16(data[at + k]);
                        a[2 * k] = (byte) h;
                        a[2 * k + 1] = (byte) (h >>> 8);
                    }
                    buf.position(count * 2);
                    break;
                }
                default: throw new AssertionError(dtype);
            }
            out.write(buf.array(), 0, buf.position());
            done += count;
        }
        next++;
    }

    /** Writes a host tensor of the expected name (its floating values). */
    public void write(String name, Tensor t) throws IOException {
        write(name, t.shape(), t.floats(), 0);
    }

    /** Checks that every tensor was written and flushes; the file is then complete (its owner commits it). */
    public void finish() throws IOException {
        if (next < entries.size()) {
            throw new IllegalStateException("the file is incomplete: " + (entries.size() - next) + " of "
                    + entries.size() + " tensors were not written, the next being " + entries.get(next));
        }
        out.flush();
    }
}
