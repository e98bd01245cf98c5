package dev.sparkmoe.core.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class SafeTensorsTest {
    static final Path FIXTURES = Paths.get("src/test/resources/fixtures/qwen3moe-tiny");

    @TempDir
    Path tmp;

    // ------------------------------------------------------------------ helpers

    private Path craft(long n, byte[] header, int dataBytes) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(8 + header.length + dataBytes).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(n).put(header);
        Path p = tmp.resolve("bad-" + System.nanoTime() + ".safetensors");
        Files.write(p, b.array());
        return p;
    }

    private Path craft(String header, int dataBytes) throws IOException {
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        return craft(h.length, h, dataBytes);
    }

    /** Asserts both read and readHeader reject the file, and the message holds every fragment. */
    private SafeTensorsFormatException rejects(Path p, String... fragments) {
        SafeTensorsFormatException e = assertThrows(SafeTensorsFormatException.class, () -> SafeTensors.read(p));
        assertThrows(SafeTensorsFormatException.class, () -> SafeTensors.readHeader(p));
        assertTrue(e.getMessage().startsWith(p.toString()), e.getMessage());
        for (String f : fragments) {
            assertTrue(e.getMessage().contains(f), "expected '" + f + "' in: " + e.getMessage());
        }
        return e;
    }

    private static String entry(String name, String dtype, String shape, long b, long e) {
        return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" + b + "," + e
                + "]}";
    }

    // ------------------------------------------------------------------ one negative test per rule

    @Test
    void fileShorterThanPrefix() throws IOException {
        Path p = tmp.resolve("short.safetensors");
        Files.write(p, new byte[5]);
        rejects(p, "5 bytes long, shorter than the 8-byte header length prefix", "Hint:");
    }

    @Test
    void headerTooLarge() throws IOException {
        rejects(craft(100_000_001L, new byte[0], 0), "header length 100000001 exceeds the limit of 100000000");
        rejects(craft(-1L, new byte[0], 0), "header length 18446744073709551615 exceeds");
    }

    @Test
    void headerTooSmall() throws IOException {
        rejects(craft(0, new byte[0], 0), "header length 0 is too small");
        rejects(craft(1, "{".getBytes(StandardCharsets.UTF_8), 0), "header length 1 is too small");
    }

    @Test
    void headerPastEndOfFile() throws IOException {
        rejects(craft(100, "{}".getBytes(StandardCharsets.UTF_8), 0),
                "header length 100 runs past the end of the file (10 bytes, so at most 2 header bytes)");
    }

    @Test
    void headerNotUtf8() throws IOException {
        byte[] h = {'{', '"', (byte) 0xC3, (byte) 0x28, '"', ':', '1', '}'};
        rejects(craft(h.length, h, 0), "not valid UTF-8", "near byte 10");
    }

    @Test
    void headerMustStartWithBrace() throws IOException {
        rejects(craft(" {}", 0), "must start with '{' but starts with ' '");
        rejects(craft("[]", 0), "starts with '['");
    }

    @Test
    void headerNotJson() throws IOException {
        rejects(craft("{\"a\":}", 0), "header is not valid JSON", "line 1, column 6");
        rejects(craft("{} x", 0), "header is not valid JSON", "expected end of input");
    }

    @Test
    void duplicateKeys() throws IOException {
        rejects(craft("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("a", "F32", "[1]", 4, 8) + "}", 8),
                "duplicate key \"a\"");
    }

    @Test
    void metadataMustBeMapOfStrings() throws IOException {
        rejects(craft("{\"__metadata__\":[1]}", 0), "__metadata__ must be an object of strings, got array");
        rejects(craft("{\"__metadata__\":{\"format\":\"pt\",\"n\":3}}", 0),
                "__metadata__ value for key 'n' must be a string, got integer 3");
    }

    @Test
    void entryMustBeObject() throws IOException {
        rejects(craft("{\"a\":[0,4]}", 0), "tensor 'a': header entry must be an object");
    }

    @Test
    void entryMustHaveExactlyThreeKeys() throws IOException {
        rejects(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0), "tensor 'a'", "missing [data_offsets]");
        rejects(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4),
                "tensor 'a'", "unexpected [x]");
    }

    @Test
    void unknownDtype() throws IOException {
        rejects(craft("{" + entry("a", "F128", "[1]", 0, 16) + "}", 16), "tensor 'a': unknown dtype \"F128\"",
                "F8_E4M3");
        rejects(craft("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "unknown dtype integer 4");
    }

    @Test
    void shapeMustBeNonNegativeIntegers() throws IOException {
        rejects(craft("{" + entry("a", "F32", "[2,-1]", 0, 0) + "}", 0), "tensor 'a': shape [2, -1] has dimension 1 = -1");
        rejects(craft("{" + entry("a", "F32", "[1.0]", 0, 4) + "}", 4), "dimension 0 = 1.0");
        rejects(craft("{" + entry("a", "F32", "3", 0, 12) + "}", 12), "shape must be a list");
    }

    @Test
    void dataOffsetsMustBeTwoNonNegativeIntegers() throws IOException {
        rejects(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4),
                "data_offsets must be [begin, end] with two non-negative integers, got [0, 4, 8]");
        rejects(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4), "got [-4, 0]");
        rejects(craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 4), "got [0, 4]");
    }

    @Test
    void dataOffsetsEndBeforeBegin() throws IOException {
        rejects(craft("{" + entry("a", "F32", "[0]", 4, 0) + "}", 4), "tensor 'a': data_offsets [4, 0] end before");
    }

    @Test
    void firstTensorMustStartAtZero() throws IOException {
        rejects(craft("{" + entry("a", "F32", "[1]", 4, 8) + "}", 8),
                "tensor 'a': data_offsets [4, 8] start at 4 but the data section starts at 0 (a gap of 4 bytes)");
    }

    @Test
    void gapBetweenTensors() throws IOException {
        rejects(craft("{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}", 12),
                "tensor 'b'", "start at 8 but the previous tensor 'a' ends at 4 (a gap of 4 bytes)");
    }

    @Test
    void overlappingTensors() throws IOException {
        rejects(craft("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 4, 8) + "}", 8),
                "tensor 'b'", "start at 4 but the previous tensor 'a' ends at 8 (an overlap of 4 bytes)");
    }

    @Test
    void sizeMustMatchShapeAndDtype() throws IOException {
        rejects(craft("{" + entry("w", "BF16", "[2,3]", 0, 24) + "}", 24),
                "tensor 'w': dtype BF16 with shape [2, 3] needs 6 x 2.0 = 12 bytes but data_offsets [0, 24] span 24");
    }

    @Test
    void subByteDtypeMustFillWholeBytes() throws IOException {
        rejects(craft("{" + entry("q", "F4", "[3]", 0, 1) + "}", 1), "tensor 'q': dtype F4 (4 bits)",
                "not a whole number of bytes");
    }

    @Test
    void sizeArithmeticOverflow() throws IOException {
        rejects(craft("{" + entry("a", "F32", "[4294967296,4294967296]", 0, 0) + "}", 0),
                "tensor 'a'", "overflows 64-bit size arithmetic");
    }

    @Test
    void dataSectionTruncated() throws IOException {
        rejects(craft("{" + entry("a", "F32", "[4]", 0, 16) + "}", 12),
                "data section is 12 bytes but the tensors end at 16", "4 bytes short");
    }

    @Test
    void dataSectionHasTrailingBytes() throws IOException {
        rejects(craft("{" + entry("a", "F32", "[4]", 0, 16) + "}", 20),
                "data section is 20 bytes but the tensors end at 16", "4 bytes after the last tensor");
    }

    @Test
    void knownButUnsupportedDtypeFailsReadOnly() throws IOException {
        Path p = craft("{" + entry("ok", "F32", "[1]", 0, 4) + "," + entry("mask", "U8", "[4]", 4, 8) + "}", 8);
        Map<String, TensorInfo> h = SafeTensors.readHeader(p);
        assertFalse(h.get("mask").supported());
        assertTrue(h.get("ok").supported());
        SafeTensorsFormatException e = assertThrows(SafeTensorsFormatException.class, () -> SafeTensors.read(p));
        assertEquals("mask", e.tensor());
        assertTrue(e.getMessage().contains("tensor 'mask': dtype U8"), e.getMessage());
        assertTrue(e.getMessage().contains("only F32, BF16, F16, I32 and I64 are supported"), e.getMessage());
    }

    @Test
    void tensorTooLargeForJavaArrayIsRejectedBeforeReading() throws IOException {
        long numel = 1L << 31;
        String header = "{" + entry("huge", "BF16", "[65536,32768]", 0, numel * 2) + "}";
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        Path p = tmp.resolve("huge.safetensors");
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            ByteBuffer b = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(h.length);
            f.write(b.array());
            f.write(h);
            f.setLength(8 + h.length + numel * 2); // sparse
        }
        assertEquals(numel, SafeTensors.readHeader(p).get("huge").numel());
        SafeTensorsFormatException e = assertThrows(SafeTensorsFormatException.class, () -> SafeTensors.read(p));
        assertTrue(e.getMessage().contains("more than a Java array can hold"), e.getMessage());
    }

    @Test
    void truncatedFixtureNeverYieldsPartialResult() throws IOException {
        byte[] all = Files.readAllBytes(FIXTURES.resolve("model.safetensors"));
        Path p = tmp.resolve("trunc.safetensors");
        Files.write(p, Arrays.copyOf(all, all.length - 1));
        rejects(p, "1 bytes short");
    }

    // ------------------------------------------------------------------ positive

    @Test
    void emptyFileWithNoTensors() throws IOException {
        Path p = craft("{}      ", 0);
        assertTrue(SafeTensors.read(p).tensors().isEmpty());
        assertTrue(SafeTensors.read(p).metadata().isEmpty());
    }

    @Test
    void zeroSizedTensorsAndAnyHeaderOrder() throws IOException {
        // header order differs from offset order; zero-sized tensors share an offset
        Path p = craft("{" + entry("z", "I64", "[2]", 4, 20) + "," + entry("e", "F32", "[0,3]", 0, 0) + ","
                + entry("a", "I32", "[1]", 0, 4) + "}", 20);
        SafeTensorsFile f = SafeTensors.read(p);
        assertEquals(List.of("a", "e", "z"), List.copyOf(f.tensors().keySet()));
        assertArrayEquals(new int[] {0, 3}, f.get("e").shape());
        assertEquals(DType.I64, f.get("z").dtype());
        assertThrows(IllegalArgumentException.class, () -> f.get("nope"));
    }

    @Test
    void readsFixture() throws IOException {
        SafeTensorsFile f = SafeTensors.read(FIXTURES.resolve("model.safetensors"));
        assertEquals(Map.of("format", "pt"), f.metadata());
        assertEquals(69, f.tensors().size());
        Tensor gate = f.get("model.layers.0.mlp.experts.0.gate_proj.weight");
        assertArrayEquals(new int[] {32, 64}, gate.shape());
        assertEquals(DType.F32, gate.dtype());
        List<String> names = List.copyOf(f.tensors().keySet());
        assertEquals(names.stream().sorted().toList(), names);

        SafeTensorsFile io = SafeTensors.read(FIXTURES.resolve("io.safetensors"));
        assertEquals(DType.I64, io.get("input_ids").dtype());
        assertArrayEquals(new int[] {2, 16}, io.get("input_ids").shape());
        for (long id : io.get("input_ids").longs()) {
            assertTrue(id >= 0 && id < 512, "token id " + id);
        }
    }

    @Test
    void rewritingFixturesReproducesTheReferenceBytes() throws IOException {
        for (String name : List.of("model.safetensors", "grads.safetensors", "io.safetensors",
                "after_adamw_step.safetensors")) {
            Path src = FIXTURES.resolve(name);
            SafeTensorsFile f = SafeTensors.read(src);
            Path out = tmp.resolve(name);
            SafeTensors.write(out, f.tensors(), f.metadata().isEmpty() ? null : f.metadata());
            SafeTensorsFile g = SafeTensors.read(out);
            assertEquals(f.tensors().keySet(), g.tensors().keySet());
            for (String t : f.tensors().keySet()) {
                assertTrue(f.get(t).bitwiseEquals(g.get(t)), name + " " + t);
            }
            assertEquals(f.metadata(), g.metadata());
            // the header has the reference's structure, entry by entry and in the same order ...
            assertEquals(Json.parse(headerText(src)).toString(), Json.parse(headerText(out)).toString(), name);
            // ... and the whole file is byte-for-byte what the Python reference wrote
            assertArrayEquals(Files.readAllBytes(src), Files.readAllBytes(out), name);
        }
    }

    private static String headerText(Path p) throws IOException {
        byte[] b = Files.readAllBytes(p);
        long n = ByteBuffer.wrap(b, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
        return new String(b, 8, (int) n, StandardCharsets.UTF_8);
    }

    @Test
    void writtenHeaderBytesFollowTheFormat() throws IOException {
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put("b", Tensor.of(new float[] {1f, -2f}, 2));
        m.put("a", Tensor.ofFloating(DType.BF16, new float[] {1.5f}, 1));
        m.put("ids", Tensor.ofLongs(new long[] {7, 8}, 2));
        m.put("h", Tensor.ofFloating(DType.F16, new float[] {0.5f, 2f, 3f}, 3, 1));
        m.put("c", Tensor.ofInts(new int[] {-1}, 1, 1));
        Map<String, String> meta = new LinkedHashMap<>();
        meta.put("format", "pt");
        meta.put("note", "q\"\n\u00e9");
        Path p = tmp.resolve("w.safetensors");
        SafeTensors.write(p, m, meta);
        byte[] b = Files.readAllBytes(p);

        String json = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"q\\\"\\n\u00e9\"},"
                + "\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                + "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]},"
                + "\"c\":{\"dtype\":\"I32\",\"shape\":[1,1],\"data_offsets\":[24,28]},"
                + "\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[28,30]},"
                + "\"h\":{\"dtype\":\"F16\",\"shape\":[3,1],\"data_offsets\":[30,36]}}";
        byte[] jb = json.getBytes(StandardCharsets.UTF_8);
        int n = (jb.length + 7) / 8 * 8;
        ByteBuffer bb = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
        assertEquals(n, bb.getLong(0), "length prefix");
        assertEquals(0, (8 + n) % 8, "data section aligned to 8");
        assertArrayEquals(jb, Arrays.copyOfRange(b, 8, 8 + jb.length), "header JSON");
        for (int k = 8 + jb.length; k < 8 + n; k++) {
            assertEquals(0x20, b[k], "padding byte " + k);
        }
        assertEquals(8 + n + 36, b.length);
        int d = 8 + n;
        assertEquals(7L, bb.getLong(d));
        assertEquals(8L, bb.getLong(d + 8));
        assertEquals(Float.floatToRawIntBits(1f), bb.getInt(d + 16));
        assertEquals(Float.floatToRawIntBits(-2f), bb.getInt(d + 20));
        assertEquals(-1, bb.getInt(d + 24));
        assertEquals((short) 0x3FC0, bb.getShort(d + 28)); // bf16 1.5
        assertEquals((short) 0x3800, bb.getShort(d + 30)); // f16 0.5
        assertEquals((short) 0x4000, bb.getShort(d + 32)); // f16 2
        assertEquals((short) 0x4200, bb.getShort(d + 34)); // f16 3

        SafeTensorsFile f = SafeTensors.read(p);
        assertEquals(meta, f.metadata());
        for (String k : m.keySet()) {
            assertTrue(m.get(k).bitwiseEquals(f.get(k)), k);
        }
    }

    @Test
    void headerPaddingForEveryLength() {
        for (int len = 1; len <= 9; len++) {
            Map<String, Tensor> m = Map.of("x".repeat(len), Tensor.of(new float[] {1}, 1));
            byte[] h = SafeTensors.encodeHeader(SafeTensors.writeOrder(m), null);
            assertEquals(0, (8 + h.length) % 8);
            String s = new String(h, StandardCharsets.UTF_8);
            assertEquals(s.stripTrailing().length() + (h.length - s.stripTrailing().length()), h.length);
            assertTrue(h.length - s.stripTrailing().length() < 8);
        }
    }

    @Test
    void writeOrderIsDtypeRankDescendingThenName() {
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put("f16", Tensor.zeros(DType.F16, 1));
        m.put("b_bf16", Tensor.zeros(DType.BF16, 1));
        m.put("a_bf16", Tensor.zeros(DType.BF16, 1));
        m.put("i32", Tensor.zeros(DType.I32, 1));
        m.put("f32", Tensor.zeros(DType.F32, 1));
        m.put("i64", Tensor.zeros(DType.I64, 1));
        m.put("B", Tensor.zeros(DType.F32, 1));
        assertEquals(List.of("i64", "B", "f32", "i32", "a_bf16", "b_bf16", "f16"),
                SafeTensors.writeOrder(m).stream().map(Map.Entry::getKey).toList());
    }

    @Test
    void bf16AndF16WriteReadRoundTrip() throws IOException {
        float[] vals = {0f, -0f, 1f, -1.5f, 3.14159f, 1e-3f, 65504f, 1e-7f, 6e-8f, Float.POSITIVE_INFINITY,
            Float.NEGATIVE_INFINITY, Float.NaN, 1e30f, -2.75e-20f};
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put("bf", Tensor.ofFloating(DType.BF16, vals.clone(), 2, 7));
        m.put("h", Tensor.ofFloating(DType.F16, vals.clone(), 7, 2));
        Path p = tmp.resolve("half.safetensors");
        SafeTensors.write(p, m, Map.of());
        SafeTensorsFile f = SafeTensors.read(p);
        assertTrue(m.get("bf").bitwiseEquals(f.get("bf")));
        assertTrue(m.get("h").bitwiseEquals(f.get("h")));
        assertEquals(DType.BF16, f.get("bf").dtype());
        assertEquals(DType.F16, f.get("h").dtype());
        assertTrue(new String(Files.readAllBytes(p), StandardCharsets.UTF_8).contains("\"__metadata__\":{}"));

        // a large multi-chunk tensor survives too
        float[] big = new float[700_001];
        for (int k = 0; k < big.length; k++) {
            big[k] = (float) Math.sin(k) * k;
        }
        Map<String, Tensor> m2 = new LinkedHashMap<>();
        m2.put("big", Tensor.ofFloating(DType.BF16, big.clone(), big.length));
        m2.put("big16", Tensor.ofFloating(DType.F16, big.clone(), 1, big.length));
        m2.put("big32", Tensor.of(big.clone(), big.length, 1));
        Path p2 = tmp.resolve("big.safetensors");
        SafeTensors.write(p2, m2, null);
        SafeTensorsFile f2 = SafeTensors.read(p2);
        for (String k : m2.keySet()) {
            assertTrue(m2.get(k).bitwiseEquals(f2.get(k)), k);
        }
    }

    @Test
    void writeIsAtomic() throws IOException {
        Path p = tmp.resolve("target.safetensors");
        SafeTensors.write(p, Map.of("a", Tensor.of(new float[] {1}, 1)), null);
        byte[] before = Files.readAllBytes(p);
        Map<String, Tensor> bad = new LinkedHashMap<>();
        bad.put("x", Tensor.of(new float[] {2}, 1));
        bad.put("__metadata__", Tensor.of(new float[] {3}, 1));
        assertThrows(IllegalArgumentException.class, () -> SafeTensors.write(p, bad, null));
        assertArrayEquals(before, Files.readAllBytes(p));
        assertThrows(IOException.class, () -> SafeTensors.write(tmp.resolve("no/such/dir/x.safetensors"),
                Map.of("a", Tensor.of(new float[] {1}, 1)), null));
        SafeTensors.write(p, Map.of("b", Tensor.of(new float[] {2}, 1)), null);
        assertEquals(List.of("b"), List.copyOf(SafeTensors.read(p).tensors().keySet()));
        try (Stream<Path> s = Files.list(tmp)) {
            assertEquals(List.of(p), s.toList(), "no temporary files left behind");
        }
    }
}
