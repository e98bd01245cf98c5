package dev.sparkmoe.spark.ckpt;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.io.BufferedOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Writes one safetensors file to any stream (the final model goes through a Hadoop FileSystem stream): 8-byte
 * little-endian header length, JSON header padded with spaces to a multiple of 8, then the tensors little-endian in
 * name order. BF16/F16 tensors are stored in their own width.
 */
public final class SafeTensorsWriter {
    private SafeTensorsWriter() {
    }

    public static void write(OutputStream os, Map<String, Tensor> tensors, Map<String, String> metadata)
            throws IOException {
        Map<String, Tensor> sorted = new TreeMap<>(tensors);
        Map<String, Object> header = new LinkedHashMap<>();
        if (metadata != null && !metadata.isEmpty()) {
            header.put("__metadata__", new TreeMap<>(metadata));
        }
        long off = 0;
        for (Map.Entry<String, Tensor> e : sorted.entrySet()) {
            Tensor t = e.getValue();
            long bytes = (long) t.numel() * t.dtype().byteSize();
            Map<String, Object> h = new LinkedHashMap<>();
            h.put("dtype", t.dtype().safetensorsName());
            h.put("shape", java.util.Arrays.stream(t.shape()).boxed().toList());
            h.put("data_offsets", List.of(off, off + bytes));
            header.put(e.getKey(), h);
            off += bytes;
        }
        byte[] json = new ObjectMapper().writeValueAsBytes(header);
        int padded = (json.length + 7) / 8 * 8;
        OutputStream out = new BufferedOutputStream(os, 1 << 16);
        ByteBuffer len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(padded);
        out.write(len.array());
        out.write(json);
        for (int i = json.length; i < padded; i++) {
            out.write(' ');
        }
        ByteBuffer buf = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
        for (Tensor t : sorted.values()) {
            int n = t.numel();
            for (int i = 0; i < n; i++) {
                if (buf.remaining() < 8) {
                    out.write(buf.array(), 0, buf.position());
                    buf.clear();
                }
                switch (t.dtype()) {
                    case F32: buf.putFloat(t.floats()[i]); break;
                    case BF16: buf.putShort(DType.floatToBf16(t.floats()[i])); break;
                    case F16: buf.putShort(DType.floatToF16(t.floats()[i])); break;
                    case I32: buf.putInt(t.ints()[i]); break;
                    case I64: buf.putLong(t.longs()[i]); break;
                    default: throw new AssertionError(t.dtype());
                }
            }
        }
        out.write(buf.array(), 0, buf.position());
        out.flush();
    }

    /** Reads the header of a safetensors file (for tests and checks). */
    public static Map<String, Object> readHeader(byte[] file) throws IOException {
        long n = ByteBuffer.wrap(file, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
        @SuppressWarnings("unchecked")
        Map<String, Object> h = new ObjectMapper().readValue(new String(file, 8, (int) n, StandardCharsets.UTF_8),
                Map.class);
        return h;
    }
}
