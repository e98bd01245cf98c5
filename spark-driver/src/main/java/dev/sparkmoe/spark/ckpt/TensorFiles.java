package dev.sparkmoe.spark.ckpt;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
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
 * resumed run continues with identical state.
 */
public final class TensorFiles {
    private static final byte[] MAGIC = "SMOERS01".getBytes(java.nio.charset.StandardCharsets.US_ASCII);

    private TensorFiles() {
    }

    public static void write(OutputStream os, Map<String, Tensor> tensors) throws IOException {
        DataOutputStream out = new DataOutputStream(new java.io.BufferedOutputStream(os, 1 << 16));
        out.write(MAGIC);
        Map<String, Tensor> sorted = new TreeMap<>(tensors);
        out.writeInt(sorted.size());
        for (Map.Entry<String, Tensor> e : sorted.entrySet()) {
            Tensor t = e.getValue();
            out.writeUTF(e.getKey());
            out.writeUTF(t.dtype().name());
            int[] shape = t.shape();
            out.writeInt(shape.length);
            for (int d : shape) {
                out.writeInt(d);
            }
            switch (t.dtype()) {
                case I64:
                    for (long v : t.longs()) {
                        out.writeLong(v);
                    }
                    break;
                case I32:
                    for (int v : t.ints()) {
                        out.writeInt(v);
                    }
                    break;
                default:
                    for (float v : t.floats()) {
                        out.writeInt(Float.floatToRawIntBits(v));
                    }
            }
        }
        out.flush();
    }

    public static Map<String, Tensor> read(InputStream is, String source) throws IOException {
        DataInputStream in = new DataInputStream(new java.io.BufferedInputStream(is, 1 << 16));
        byte[] magic = new byte[MAGIC.length];
        in.readFully(magic);
        if (!Arrays.equals(magic, MAGIC)) {
            throw new IOException(source + " is not a spark-moe rank-state file (bad magic)");
        }
        int n = in.readInt();
        Map<String, Tensor> m = new TreeMap<>();
        for (int k = 0; k < n; k++) {
            String name = in.readUTF();
            DType dt = DType.valueOf(in.readUTF());
            int[] shape = new int[in.readInt()];
            for (int d = 0; d < shape.length; d++) {
                shape[d] = in.readInt();
            }
            Tensor t = Tensor.zeros(dt, shape);
            switch (dt) {
                case I64: {
                    long[] a = t.longs();
                    for (int i = 0; i < a.length; i++) {
                        a[i] = in.readLong();
                    }
                    break;
                }
                case I32: {
                    int[] a = t.ints();
                    for (int i = 0; i < a.length; i++) {
                        a[i] = in.readInt();
                    }
                    break;
                }
                default: {
                    float[] a = t.floats();
                    for (int i = 0; i < a.length; i++) {
                        a[i] = Float.intBitsToFloat(in.readInt());
                    }
                }
            }
            m.put(name, t);
        }
        return m;
    }
}
