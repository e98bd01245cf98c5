package dev.sparkmoe.core.io;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.json.JsonException;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.CharBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ThreadLocalRandom;

/**
 * Reads and writes the safetensors format with the rules of the reference parser (the Rust {@code safetensors}
 * crate, {@code SafeTensors::read_metadata} and {@code Metadata::validate}), plus a few stricter ones:
 *
 * <ol>
 *   <li>the file starts with an 8-byte little-endian header length N; N &lt;= 100,000,000; N &gt;= 2; 8 + N &lt;= file size</li>
 *   <li>the N header bytes are valid UTF-8, start with '{' and hold one JSON object (trailing spaces allowed:
 *       writers pad with them); duplicate keys are rejected</li>
 *   <li>{@code __metadata__}, when present, is an object of string values</li>
 *   <li>every other entry is an object with exactly the keys {@code dtype}, {@code shape}, {@code data_offsets}
 *       (the reference ignores extra keys; we reject them)</li>
 *   <li>dtype is a name the reference knows; shape is a list of non-negative integers; data_offsets is
 *       [begin, end] of non-negative integers with begin &lt;= end</li>
 *   <li>sorted by (begin, end), the tensors tile the data section from 0 with no gap and no overlap, each spans
 *       exactly numel * itemsize bytes (sub-byte dtypes must fill whole bytes), and the data section is exactly as long
 *       as the last end</li>
 * </ol>
 *
 * Reading is all-or-nothing: the whole header and all sizes are checked before any tensor is materialised. Only F32,
 * BF16, F16, I32 and I64 tensors can be loaded; BF16 and F16 are widened to f32 storage with the dtype kept.
 */
public final class SafeTensors {
    /** The reference refuses headers longer than this. */
    public static final long MAX_HEADER_BYTES = 100_000_000L;

    static final String METADATA_KEY = "__metadata__";

    /**
     * Every dtype name the reference knows, in the reference's enum order (which is also its writer's sort key, by
     * descending rank), with the element width in bits.
     */
    private static final String[] KNOWN_DTYPES = {"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2",
        "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
        "F64", "I64", "U64"};
    private static final int[] KNOWN_BITS = {8, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 64, 64, 64,
        64};

    private static final Set<String> TENSOR_KEYS = Set.of("dtype", "shape", "data_offsets");
    private static final int CHUNK = 1 << 20;

    private SafeTensors() {
    }

    static int dtypeRank(String name) {
        return Arrays.asList(KNOWN_DTYPES).indexOf(name);
    }

    static int dtypeBits(String name) {
        int k = dtypeRank(name);
        return k < 0 ? -1 : KNOWN_BITS[k];
    }

    // ------------------------------------------------------------------ header

    /** A validated header: metadata and tensor infos, both in header order. */
    static final class Header {
        final long headerLength;
        final Map<String, String> metadata;
        final Map<String, TensorInfo> tensors;

        Header(long headerLength, Map<String, String> metadata, Map<String, TensorInfo> tensors) {
            this.headerLength = headerLength;
            this.metadata = metadata;
            this.tensors = tensors;
        }

        long dataStart() {
            return 8 + headerLength;
        }
    }

    /**
     * Reads and validates only the header (all rules, including the file length), without loading tensor data.
     * Tensors of dtypes we cannot load are listed too (see {@link TensorInfo#supported()}). Sorted by name.
     */
    public static Map<String, TensorInfo> readHeader(Path file) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            return sortedByName(parseHeader(file, ch).tensors);
        }
    }

    /** The {@code __metadata__} map of a file (empty when absent), after validating the whole header. */
    public static Map<String, String> readMetadata(Path file) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            return parseHeader(file, ch).metadata;
        }
    }

    private static <V> Map<String, V> sortedByName(Map<String, V> m) {
        return Collections.unmodifiableMap(new LinkedHashMap<>(new TreeMap<>(m)));
    }

    static Header parseHeader(Path file, FileChannel ch) throws IOException {
        long fileSize = ch.size();
        if (fileSize < 8) {
            throw new SafeTensorsFormatException(file, null, "file is " + fileSize
                    + " bytes long, shorter than the 8-byte header length prefix",
                    "the file is truncated or not a safetensors file");
        }
        ByteBuffer prefix = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
        readFully(file, ch, prefix, 0);
        long n = prefix.getLong(0);
        if (n < 0 || n > MAX_HEADER_BYTES) {
            throw new SafeTensorsFormatException(file, null, "header length " + Long.toUnsignedString(n)
                    + " exceeds the limit of " + MAX_HEADER_BYTES + " bytes",
                    "the first 8 bytes must be the little-endian header length; this is not a safetensors file or it is"
                    + " corrupted");
        }
        if (n < 2) {
            throw new SafeTensorsFormatException(file, null, "header length " + n
                    + " is too small to hold a JSON object (\"{}\" takes 2 bytes)", "the file is corrupted");
        }
        if (8 + n > fileSize) {
            throw new SafeTensorsFormatException(file, null, "header length " + n + " runs past the end of the file ("
                    + fileSize + " bytes, so at most " + (fileSize - 8) + " header bytes)",
                    "the file is truncated or its length prefix is corrupted");
        }
        ByteBuffer hb = ByteBuffer.allocate((int) n);
        readFully(file, ch, hb, 8);
        hb.flip();
        String text;
        CharsetDecoder dec = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        try {
            CharBuffer cb = dec.decode(hb);
            text = cb.toString();
        } catch (CharacterCodingException e) {
            throw new SafeTensorsFormatException(file, null, "header (" + n + " bytes) is not valid UTF-8 (near byte "
                    + (8 + firstInvalidUtf8(hb.rewind())) + " of the file)", "the header is corrupted", e);
        }
        if (text.isEmpty() || text.charAt(0) != '{') {
            throw new SafeTensorsFormatException(file, null, "header must start with '{' but starts with "
                    + describeStart(text), "the header must be a JSON object with no leading whitespace");
        }
        Map<String, Object> json;
        try {
            json = Json.parseObject(text);
        } catch (JsonException e) {
            throw new SafeTensorsFormatException(file, null, "header is not valid JSON: " + e.getMessage(),
                    "the header is corrupted or was written by a broken writer", e);
        }

        Map<String, String> metadata = new LinkedHashMap<>();
        Map<String, TensorInfo> infos = new LinkedHashMap<>();
        for (Map.Entry<String, Object> e : json.entrySet()) {
            String name = e.getKey();
            Object v = e.getValue();
            if (name.equals(METADATA_KEY)) {
                if (!(v instanceof Map)) {
                    throw new SafeTensorsFormatException(file, null, "__metadata__ must be an object of strings, got "
                            + Json.typeName(v), "write metadata as {\"key\": \"value\", ...}");
                }
                for (Map.Entry<?, ?> m : ((Map<?, ?>) v).entrySet()) {
                    if (!(m.getValue() instanceof String)) {
                        throw new SafeTensorsFormatException(file, null, "__metadata__ value for key '" + m.getKey()
                                + "' must be a string, got " + Json.typeName(m.getValue()) + " " + m.getValue(),
                                "safetensors metadata maps strings to strings; encode other values as strings");
                    }
                    metadata.put((String) m.getKey(), (String) m.getValue());
                }
                continue;
            }
            infos.put(name, tensorInfo(file, name, v));
        }
        long dataLength = validateLayout(file, infos.values());
        long actual = fileSize - 8 - n;
        if (actual != dataLength) {
            String what = actual < dataLength
                    ? "is " + (dataLength - actual) + " bytes short: the file is truncated"
                    : "has " + (actual - dataLength) + " bytes after the last tensor";
            throw new SafeTensorsFormatException(file, null, "data section is " + actual + " bytes but the tensors end at "
                    + dataLength + " (file " + fileSize + " bytes = 8 + header " + n + " + data " + actual + "); it "
                    + what, "the data section must end exactly where the last tensor ends");
        }
        return new Header(n, Collections.unmodifiableMap(metadata), Collections.unmodifiableMap(infos));
    }

    private static String describeStart(String text) {
        if (text.isEmpty()) {
            return "nothing";
        }
        char c = text.charAt(0);
        return c < 0x20 ? String.format("control character U+%04X", (int) c) : "'" + c + "'";
    }

    private static int firstInvalidUtf8(ByteBuffer b) {
        CharsetDecoder dec = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        CharBuffer out = CharBuffer.allocate(b.remaining() + 1);
        dec.decode(b, out, true);
        return b.position();
    }

    private static TensorInfo tensorInfo(Path file, String name, Object v) throws SafeTensorsFormatException {
        if (!(v instanceof Map)) {
            throw new SafeTensorsFormatException(file, name, "header entry must be an object with dtype, shape and"
                    + " data_offsets, got " + Json.typeName(v), null);
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> m = (Map<String, Object>) v;
        if (!m.keySet().equals(TENSOR_KEYS)) {
            List<String> missing = new ArrayList<>();
            List<String> extra = new ArrayList<>();
            for (String k : List.of("dtype", "shape", "data_offsets")) {
                if (!m.containsKey(k)) {
                    missing.add(k);
                }
            }
            for (String k : m.keySet()) {
                if (!TENSOR_KEYS.contains(k)) {
                    extra.add(k);
                }
            }
            throw new SafeTensorsFormatException(file, name, "header entry must have exactly the keys dtype, shape,"
                    + " data_offsets" + (missing.isEmpty() ? "" : "; missing " + missing)
                    + (extra.isEmpty() ? "" : "; unexpected " + extra), null);
        }
        Object dt = m.get("dtype");
        if (!(dt instanceof String) || dtypeRank((String) dt) < 0) {
            throw new SafeTensorsFormatException(file, name, "unknown dtype " + (dt instanceof String ? "\"" + dt + "\""
                    : Json.typeName(dt) + " " + dt), "the format defines " + String.join(", ", KNOWN_DTYPES));
        }
        Object sh = m.get("shape");
        if (!(sh instanceof List)) {
            throw new SafeTensorsFormatException(file, name, "shape must be a list of non-negative integers, got "
                    + Json.typeName(sh) + " " + sh, null);
        }
        List<?> shl = (List<?>) sh;
        long[] shape = new long[shl.size()];
        for (int k = 0; k < shape.length; k++) {
            Object d = shl.get(k);
            if (!(d instanceof Long) || (Long) d < 0) {
                throw new SafeTensorsFormatException(file, name, "shape " + sh + " has dimension " + k + " = "
                        + d + "; dimensions must be non-negative integers", null);
            }
            shape[k] = (Long) d;
        }
        Object off = m.get("data_offsets");
        if (!(off instanceof List) || ((List<?>) off).size() != 2 || !(((List<?>) off).get(0) instanceof Long)
                || !(((List<?>) off).get(1) instanceof Long) || (Long) ((List<?>) off).get(0) < 0
                || (Long) ((List<?>) off).get(1) < 0) {
            throw new SafeTensorsFormatException(file, name, "data_offsets must be [begin, end] with two non-negative"
                    + " integers, got " + off, null);
        }
        long begin = (Long) ((List<?>) off).get(0);
        long end = (Long) ((List<?>) off).get(1);
        if (end < begin) {
            throw new SafeTensorsFormatException(file, name, "data_offsets [" + begin + ", " + end
                    + "] end before they begin", "data_offsets must satisfy begin <= end");
        }
        return new TensorInfo(name, (String) dt, shape, begin, end);
    }

    /** Checks tiling and sizes; returns the data section length the tensors imply. */
    private static long validateLayout(Path file, java.util.Collection<TensorInfo> infos)
            throws SafeTensorsFormatException {
        List<TensorInfo> sorted = new ArrayList<>(infos);
        sorted.sort(Comparator.comparingLong(TensorInfo::begin).thenComparingLong(TensorInfo::end));
        long expected = 0;
        TensorInfo prev = null;
        for (TensorInfo t : sorted) {
            if (t.begin() != expected) {
                String rel = prev == null ? "the data section starts at 0"
                        : "the previous tensor '" + prev.name() + "' ends at " + expected;
                String kind = t.begin() > expected ? "a gap of " + (t.begin() - expected) + " bytes"
                        : "an overlap of " + (expected - t.begin()) + " bytes";
                throw new SafeTensorsFormatException(file, t.name(), "data_offsets [" + t.begin() + ", " + t.end()
                        + "] start at " + t.begin() + " but " + rel + " (" + kind + ")",
                        "tensors must tile the data section contiguously from offset 0, with no gap and no overlap");
            }
            long numel = 1;
            int bits = dtypeBits(t.dtypeName());
            long nbits;
            try {
                for (long d : t.shape()) {
                    numel = Math.multiplyExact(numel, d);
                }
                nbits = Math.multiplyExact(numel, (long) bits);
            } catch (ArithmeticException overflow) {
                throw new SafeTensorsFormatException(file, t.name(), "shape " + Arrays.toString(t.shape())
                        + " of dtype " + t.dtypeName() + " overflows 64-bit size arithmetic", "the header is corrupted");
            }
            if (nbits % 8 != 0) {
                throw new SafeTensorsFormatException(file, t.name(), "dtype " + t.dtypeName() + " (" + bits
                        + " bits) with shape " + Arrays.toString(t.shape()) + " has " + numel + " elements = " + nbits
                        + " bits, not a whole number of bytes", "sub-byte dtypes must fill whole bytes");
            }
            long need = nbits / 8;
            if (t.end() - t.begin() != need) {
                throw new SafeTensorsFormatException(file, t.name(), "dtype " + t.dtypeName() + " with shape "
                        + Arrays.toString(t.shape()) + " needs " + numel + " x " + bits / 8.0 + " = " + need
                        + " bytes but data_offsets [" + t.begin() + ", " + t.end() + "] span " + (t.end() - t.begin()),
                        "data_offsets must span exactly numel * itemsize bytes");
            }
            expected = t.end();
            prev = t;
        }
        return expected;
    }

    // ------------------------------------------------------------------ read

    /** Reads a whole file: header validated first, then every tensor materialised. */
    public static SafeTensorsFile read(Path file) throws IOException {
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            Header h = parseHeader(file, ch);
            // Everything that could make loading fail is checked before any tensor is materialised.
            for (TensorInfo t : h.tensors.values()) {
                checkLoadable(file, t);
            }
            Map<String, Tensor> out = new TreeMap<>();
            for (TensorInfo t : h.tensors.values()) {
                out.put(t.name(), readTensor(file, ch, h.dataStart(), t));
            }
            return new SafeTensorsFile(file, Collections.unmodifiableMap(new LinkedHashMap<>(out)), h.metadata);
        }
    }

    static void checkLoadable(Path file, TensorInfo t) throws SafeTensorsFormatException {
        if (t.dtype() == null) {
            throw new SafeTensorsFormatException(file, t.name(), "dtype " + t.dtypeName() + " is a valid safetensors"
                    + " dtype but cannot be loaded: only F32, BF16, F16, I32 and I64 are supported",
                    "convert the checkpoint to one of those dtypes (e.g. with torch: t.to(torch.bfloat16))");
        }
        for (long d : t.shape()) {
            if (d > Integer.MAX_VALUE) {
                throw new SafeTensorsFormatException(file, t.name(), "shape " + Arrays.toString(t.shape())
                        + " has a dimension larger than 2^31 - 1", "such a tensor cannot be held in one Java array");
            }
        }
        if (t.numel() > Integer.MAX_VALUE - 8) {
            throw new SafeTensorsFormatException(file, t.name(), "shape " + Arrays.toString(t.shape()) + " has "
                    + t.numel() + " elements, more than a Java array can hold (2^31 - 9)", "shard the tensor");
        }
    }

    static int[] intShape(TensorInfo t) {
        long[] s = t.shape();
        int[] out = new int[s.length];
        for (int k = 0; k < s.length; k++) {
            out[k] = (int) s[k];
        }
        return out;
    }

    static Tensor readTensor(Path file, FileChannel ch, long dataStart, TensorInfo t) throws IOException {
        DType dtype = t.dtype();
        int[] shape = intShape(t);
        int n = (int) t.numel();
        int size = dtype.byteSize();
        float[] f = dtype.isFloating() ? new float[n] : null;
        int[] iv = dtype == DType.I32 ? new int[n] : null;
        long[] lv = dtype == DType.I64 ? new long[n] : null;
        ByteBuffer buf = ByteBuffer.allocate((int) Math.min(CHUNK, Math.max(8, t.byteSize()))).order(
                ByteOrder.LITTLE_ENDIAN);
        int perChunk = buf.capacity() / size;
        long pos = dataStart + t.begin();
        for (int done = 0; done < n; ) {
            int count = Math.min(perChunk, n - done);
            buf.clear().limit(count * size);
            readFully(file, ch, buf, pos);
            buf.flip();
            switch (dtype) {
                case F32: buf.asFloatBuffer().get(f, done, count); break;
                case BF16:
                    for (int k = 0; k < count; k++) {
                        f[done + k] = DType.bf16ToFloat(buf.getShort());
                    }
                    break;
                case F16:
                    for (int k = 0; k < count; k++) {
                        f[done + k] = DType.f16ToFloat(buf.getShort());
                    }
                    break;
                case I32: buf.asIntBuffer().get(iv, done, count); break;
                case I64: buf.asLongBuffer().get(lv, done, count); break;
                default: throw new AssertionError(dtype);
            }
            pos += (long) count * size;
            done += count;
        }
        switch (dtype) {
            case I32: return Tensor.ofInts(iv, shape);
            case I64: return Tensor.ofLongs(lv, shape);
            case F32: return Tensor.of(f, shape);
            default: return Tensor.ofFloating(dtype, f, shape);
        }
    }

    /**
     * Reads elements {@code [from, from + count)} of a floating tensor (F32, BF16 or F16) as f32 into
     * {@code dst[dstOff..]}: only their bytes, through {@code buf} (any capacity of at least 4 bytes). Returns the
     * bytes read.
     */
    static long readFloats(Path file, FileChannel ch, long dataStart, TensorInfo t, long from, int count, float[] dst,
                           int dstOff, ByteBuffer buf) throws IOException {
        DType dtype = t.dtype();
        if (dtype == null || !dtype.isFloating()) {
            throw new IllegalArgumentException(t.name() + " in " + file + " is " + t.dtypeName()
                    + ", not a floating dtype that can be read as f32");
        }
        if (from < 0 || count < 0 || from + count > t.numel()) {
            throw new IllegalArgumentException("elements [" + from + ", " + (from + count) + ") outside " + t);
        }
        int size = dtype.byteSize();
        int perChunk = buf.capacity() / size;
        long pos = dataStart + t.begin() + from * size;
        buf.order(ByteOrder.LITTLE_ENDIAN);
        for (int done = 0; done < count; ) {
            int n = Math.min(perChunk, count - done);
            buf.clear().limit(n * size);
            readFully(file, ch, buf, pos);
            buf.flip();
            int at = dstOff + done;
            switch (dtype) {
                case F32: buf.asFloatBuffer().get(dst, at, n); break;
                case BF16:
                    for (int k = 0; k < n; k++) {
                        dst[at + k] = DType.bf16ToFloat(buf.getShort());
                    }
                    break;
                case F16:
                    for (int k = 0; k < n; k++) {
                        dst[at + k] = DType.f16ToFloat(buf.getShort());
                    }
                    break;
                default: throw new AssertionError(dtype);
            }
            pos += (long) n * size;
            done += n;
        }
        return (long) count * size;
    }

    private static void readFully(Path file, FileChannel ch, ByteBuffer buf, long pos) throws IOException {
        long p = pos;
        while (buf.hasRemaining()) {
            int r = ch.read(buf, p);
            if (r < 0) {
                throw new EOFException(file + ": unexpected end of file at byte " + p
                        + " (the file changed while it was being read?)");
            }
            p += r;
        }
    }

    // ------------------------------------------------------------------ write

    /**
     * The order the reference writer lays tensors out in: descending dtype rank (the reference's enum order, roughly
     * alignment: I64, F32, I32, BF16, F16 for ours), then name by UTF-8 bytes.
     */
    static List<Map.Entry<String, Tensor>> writeOrder(Map<String, Tensor> tensors) {
        List<Map.Entry<String, Tensor>> list = new ArrayList<>(tensors.entrySet());
        list.sort((a, b) -> {
            int c = Integer.compare(dtypeRank(b.getValue().dtype().safetensorsName()),
                    dtypeRank(a.getValue().dtype().safetensorsName()));
            return c != 0 ? c : Arrays.compareUnsigned(a.getKey().getBytes(StandardCharsets.UTF_8),
                    b.getKey().getBytes(StandardCharsets.UTF_8));
        });
        return list;
    }

    /**
     * The header bytes (without the length prefix) the reference writer produces: compact JSON, {@code __metadata__}
     * first when given (in the map's order; the reference uses a hash map), tensors in {@link #writeOrder} with keys
     * dtype, shape, data_offsets; padded with spaces so that 8 + N is a multiple of 8.
     */
    static byte[] encodeHeader(List<Map.Entry<String, Tensor>> ordered, Map<String, String> metadata) {
        List<TensorSpec> specs = new ArrayList<>(ordered.size());
        for (Map.Entry<String, Tensor> e : ordered) {
            specs.add(new TensorSpec(e.getKey(), e.getValue().dtype(), e.getValue().shape()));
        }
        return header(specs, metadata);
    }

    /**
     * The header bytes of a file holding {@code ordered} (data laid out in this order), as {@link #encodeHeader}:
     * computed from names, dtypes and shapes alone, so a writer can emit it before any tensor's values exist.
     */
    static byte[] header(List<TensorSpec> ordered, Map<String, String> metadata) {
        Map<String, Object> header = new LinkedHashMap<>();
        if (metadata != null) {
            header.put(METADATA_KEY, new LinkedHashMap<>(metadata));
        }
        long offset = 0;
        for (TensorSpec t : ordered) {
            long bytes = t.byteSize();
            Map<String, Object> info = new LinkedHashMap<>();
            info.put("dtype", t.dtype().safetensorsName());
            info.put("shape", t.shape());
            info.put("data_offsets", List.of(offset, offset + bytes));
            header.put(t.name(), info);
            offset += bytes;
        }
        byte[] json = Json.write(header, false).getBytes(StandardCharsets.UTF_8);
        int padded = (json.length + 7) / 8 * 8;
        byte[] out = Arrays.copyOf(json, padded);
        Arrays.fill(out, json.length, padded, (byte) ' ');
        return out;
    }

    /**
     * Writes tensors (each in its own dtype; BF16/F16 rounded from the f32 storage) and optional metadata (null: no
     * {@code __metadata__} entry) exactly as the reference writer lays them out. The write is atomic: the bytes go to a
     * temporary file in the target's directory which is then moved over the target, so a failure leaves any existing
     * target untouched.
     */
    public static void write(Path file, Map<String, Tensor> tensors, Map<String, String> metadata) throws IOException {
        for (Map.Entry<String, Tensor> e : tensors.entrySet()) {
            if (e.getKey() == null || e.getValue() == null) {
                throw new IllegalArgumentException("cannot write " + file + ": null tensor name or tensor ("
                        + e.getKey() + ")");
            }
            if (e.getKey().equals(METADATA_KEY)) {
                throw new IllegalArgumentException("cannot write " + file + ": '" + METADATA_KEY
                        + "' is reserved for metadata and cannot name a tensor");
            }
        }
        if (metadata != null) {
            for (Map.Entry<String, String> e : metadata.entrySet()) {
                if (e.getKey() == null || e.getValue() == null) {
                    throw new IllegalArgumentException("cannot write " + file + ": metadata key and value must be"
                            + " non-null strings, got " + e.getKey() + " -> " + e.getValue());
                }
            }
        }
        List<Map.Entry<String, Tensor>> ordered = writeOrder(tensors);
        byte[] header = encodeHeader(ordered, metadata);
        if (header.length > MAX_HEADER_BYTES) {
            throw new IllegalArgumentException("cannot write " + file + ": header would be " + header.length
                    + " bytes, over the format's limit of " + MAX_HEADER_BYTES + "; split the tensors over shards");
        }
        Path abs = file.toAbsolutePath();
        Path dir = abs.getParent();
        if (dir == null || !Files.isDirectory(dir)) {
            throw new IOException("cannot write " + file + ": directory " + dir + " does not exist");
        }
        Path tmp = dir.resolve("." + abs.getFileName() + "." + Long.toHexString(ThreadLocalRandom.current().nextLong())
                + ".tmp");
        boolean moved = false;
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                ByteBuffer buf = ByteBuffer.allocate(CHUNK).order(ByteOrder.LITTLE_ENDIAN);
                buf.putLong(header.length);
                buf.flip();
                writeFully(ch, buf);
                writeFully(ch, ByteBuffer.wrap(header));
                for (Map.Entry<String, Tensor> e : ordered) {
                    writeTensor(ch, buf, e.getValue());
                }
                ch.force(true);
            }
            try {
                Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                throw new IOException("cannot write " + file + " atomically: the file system does not support atomic"
                        + " moves within " + dir, e);
            }
            moved = true;
        } finally {
            if (!moved) {
                Files.deleteIfExists(tmp);
            }
        }
    }

    private static void writeTensor(FileChannel ch, ByteBuffer buf, Tensor t) throws IOException {
        DType dtype = t.dtype();
        int n = t.numel();
        int size = dtype.byteSize();
        int perChunk = buf.capacity() / size;
        for (int done = 0; done < n; ) {
            int count = Math.min(perChunk, n - done);
            buf.clear();
            switch (dtype) {
                case F32: {
                    float[] f = t.floats();
                    for (int k = 0; k < count; k++) {
                        buf.putFloat(f[done + k]);
                    }
                    break;
                }
                case BF16: {
                    float[] f = t.floats();
                    for (int k = 0; k < count; k++) {
                        buf.putShort(DType.floatToBf16(f[done + k]));
                    }
                    break;
                }
                case F16: {
                    float[] f = t.floats();
                    for (int k = 0; k < count; k++) {
                        buf.putShort(DType.floatToF16(f[done + k]));
                    }
                    break;
                }
                case I32: {
                    int[] v = t.ints();
                    for (int k = 0; k < count; k++) {
                        buf.putInt(v[done + k]);
                    }
                    break;
                }
                case I64: {
                    long[] v = t.longs();
                    for (int k = 0; k < count; k++) {
                        buf.putLong(v[done + k]);
                    }
                    break;
                }
                default: throw new AssertionError(dtype);
            }
            buf.flip();
            writeFully(ch, buf);
            done += count;
        }
    }

    private static void writeFully(FileChannel ch, ByteBuffer buf) throws IOException {
        while (buf.hasRemaining()) {
            ch.write(buf);
        }
    }
}
