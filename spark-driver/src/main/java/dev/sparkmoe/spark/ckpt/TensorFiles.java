package dev.sparkmoe.spark.ckpt;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.Map;
import java.util.TreeMap;

/**
 * The rank-state file format: exact bits of every tensor, names sorted, big-endian.
 *
 * <pre>
 * "SMOERS01" | int count | count x ( UTF name | UTF dtype | int rank | int[rank] shape | payload )
 * payload: F32/BF16/F16 as f32 bits (int each), I32 as int, I64 as long
 * </pre>
 *
 * Floating tensors keep their f32 working values bit for bit (a BF16 tensor's values are already exact BF16), so a
 * resumed run continues with identical state. Payloads move in bulk through a {@value #CHUNK_BYTES}-byte buffer (the
 * byte order converted by the buffer's view, never element by element through a stream).
 */
public final class TensorFiles {
    private static final byte[] MAGIC = "SMOERS01".getBytes(java.nio.charset.StandardCharsets.US_ASCII);
    static final int CHUNK_BYTES = 1 << 20;

    private TensorFiles() {
    }

    public static void write(OutputStream os, Map<String, Tensor> tensors) throws IOException {
        DataOutputStream out = new DataOutputStream(new java.io.BufferedOutputStream(os, 1 << 16));
        out.write(MAGIC);
        Map<String, Tensor> sorted = new TreeMap<>(tensors);
        out.writeInt(sorted.size());
        ByteBuffer chunk = ByteBuffer.allocate(CHUNK_BYTES).order(ByteOrder.BIG_ENDIAN);
        for (Map.Entry<String, Tensor> e : sorted.entrySet()) {
            Tensor t = e.getValue();
            out.writeUTF(e.getKey());
            out.writeUTF(t.dtype().name());
            int[] shape = t.shape();
            out.writeInt(shape.length);
            for (int d : shape) {
                out.writeInt(d);
            }
            int n = t.numel();
            int per = CHUNK_BYTES / elementBytes(t.dtype());
            for (int done = 0; done < n; ) {
                int count = Math.min(per, n - done);
                chunk.clear();
                switch (t.dtype()) {
                    case I64: chunk.asLongBuffer().put(t.longs(), done, count); break;
                    case I32: chunk.asIntBuffer().put(t.ints(), done, count); break;
                    default: chunk.asFloatBuffer().put(t.floats(), done, count); // raw bits: NaN payloads kept
                }
                out.write(chunk.array(), 0, count * elementBytes(t.dtype()));
                done += count;
            }
        }
        out.flush();
    }

    /**
     * Reads a rank-state file of {@code length} bytes (its recorded length): a header that claims more payload than
     * the bytes left is refused before anything is allocated for it, so a damaged shape never costs memory.
     */
    public static Map<String, Tensor> read(InputStream is, String source, long length) throws IOException {
        DataInputStream in = new DataInputStream(new java.io.BufferedInputStream(is, 1 << 16));
        byte[] magic = new byte[MAGIC.length];
        in.readFully(magic);
        if (!Arrays.equals(magic, MAGIC)) {
            throw new IOException(source + " is not a spark-moe rank-state file (bad magic)");
        }
        int n = in.readInt();
        if (n < 0) {
            throw new IOException(source + ": negative tensor count " + n);
        }
        long payloadLeft = length - MAGIC.length - 4;
        Map<String, Tensor> m = new TreeMap<>();
        byte[] chunk = new byte[CHUNK_BYTES];
        ByteBuffer view = ByteBuffer.wrap(chunk).order(ByteOrder.BIG_ENDIAN);
        for (int k = 0; k < n; k++) {
            String name = in.readUTF();
            String dtypeName = in.readUTF();
            DType dt;
            try {
                dt = DType.valueOf(dtypeName);
            } catch (IllegalArgumentException e) {
                throw new IOException(source + ": tensor " + name + " has unknown dtype '" + dtypeName + "'");
            }
            int rank = in.readInt();
            if (rank < 0 || rank > 16) {
                throw new IOException(source + ": tensor " + name + " has rank " + rank);
            }
            int[] shape = new int[rank];
            long numel = 1;
            for (int d = 0; d < rank; d++) {
                shape[d] = in.readInt();
                if (shape[d] < 0) {
                    throw new IOException(source + ": tensor " + name + " has a negative dimension "
                            + Arrays.toString(shape));
                }
                numel *= shape[d];
            }
            payloadLeft -= 4L * (1 + rank) + 4 + name.length() + dtypeName.length();
            long bytes = numel * elementBytes(dt);
            if (numel > Integer.MAX_VALUE - 8 || bytes > payloadLeft) {
                throw new IOException(source + ": tensor " + name + " of shape " + Arrays.toString(shape) + " ("
                        + numel + " elements) does not fit in what is left of the file");
            }
            payloadLeft -= bytes;
            Tensor t = Tensor.zeros(dt, shape);
            int size = elementBytes(dt);
            int per = CHUNK_BYTES / size;
            for (int done = 0; done < numel; ) {
                int count = (int) Math.min(per, numel - done);
                in.readFully(chunk, 0, count * size);
                view.clear();
                switch (dt) {
                    case I64: view.asLongBuffer().get(t.longs(), done, count); break;
                    case I32: view.asIntBuffer().get(t.ints(), done, count); break;
                    default: view.asFloatBuffer().get(t.floats(), done, count);
                }
                done += count;
            }
            m.put(name, t);
        }
        if (in.read() != -1) {
            throw new IOException(source + ": bytes after the last of its " + n + " tensors");
        }
        return m;
    }

    private static int elementBytes(DType dt) {
        return dt == DType.I64 ? 8 : 4;
    }
}
