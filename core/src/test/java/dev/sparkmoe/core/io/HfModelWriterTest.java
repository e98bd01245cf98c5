package dev.sparkmoe.core.io;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The streaming writers: one safetensors file, and a Hugging Face model split into files with its index. */
class HfModelWriterTest {
    static final Path FIXTURE_DIR = SafeTensorsTest.FIXTURES;

    @TempDir
    Path tmp;

    static List<TensorSpec> specs(Map<String, Tensor> m) {
        List<TensorSpec> out = new ArrayList<>();
        m.forEach((k, v) -> out.add(new TensorSpec(k, DType.F32, v.shape())));
        return out;
    }

    /** Saves {@code m} (in its iteration order) through the streaming writer; returns the files written. */
    static List<String> save(Path dir, Map<String, Tensor> m, ModelFormat format) throws IOException {
        try (HfModelWriter w = new HfModelWriter(OutputDir.local(dir), specs(m), format)) {
            for (Map.Entry<String, Tensor> e : m.entrySet()) {
                w.write(e.getKey(), e.getValue().shape(), e.getValue().floats(), 0);
            }
            return w.finish();
        }
    }

    @Test
    void splitsAndIndexesAsTheInMemorySave() throws IOException {
        Map<String, Tensor> hub = new TreeMap<>(HfCheckpoint.load(FIXTURE_DIR));
        Path streamed = tmp.resolve("streamed");
        Path saved = tmp.resolve("saved");
        List<String> files = save(streamed, hub, new ModelFormat(DType.F32, 200_000));
        HfCheckpoint.save(saved, hub, 200_000);
        assertEquals(files.get(files.size() - 1), HfCheckpoint.INDEX_FILE, "the index is written last");
        assertTrue(files.size() > 3, files.toString());
        String index = Files.readString(streamed.resolve(HfCheckpoint.INDEX_FILE));
        assertEquals(Files.readString(saved.resolve(HfCheckpoint.INDEX_FILE)), index);
        assertEquals(Json.parseObject(index).get("weight_map"),
                Json.parseObject(Files.readString(saved.resolve(HfCheckpoint.INDEX_FILE))).get("weight_map"));
        Map<String, Tensor> back = HfCheckpoint.load(streamed);
        assertEquals(hub.keySet(), back.keySet());
        for (String k : hub.keySet()) {
            assertTrue(hub.get(k).bitwiseEquals(back.get(k)), k);
        }
    }

    @Test
    void bf16SavesRoundToNearestEvenAndOneFileNeedsNoIndex() throws IOException {
        Map<String, Tensor> hub = new TreeMap<>(HfCheckpoint.load(FIXTURE_DIR));
        Map<String, Tensor> scaled = new TreeMap<>();
        hub.forEach((k, v) -> {
            float[] f = v.floats().clone();
            for (int i = 0; i < f.length; i++) {
                f[i] *= 1f + 0x1p-10f; // not bf16 values any more
            }
            scaled.put(k, Tensor.of(f, v.shape()));
        });
        List<String> files = save(tmp, scaled, ModelFormat.DEFAULT);
        assertEquals(List.of(HfCheckpoint.SINGLE_FILE), files);
        Map<String, Tensor> back = HfCheckpoint.load(tmp);
        for (String k : scaled.keySet()) {
            assertTrue(scaled.get(k).to(DType.BF16).bitwiseEquals(back.get(k)), k);
        }
    }

    @Test
    void aFailedSaveLeavesNoIndexAndNoPartialFile() throws IOException {
        Map<String, Tensor> hub = new TreeMap<>(HfCheckpoint.load(FIXTURE_DIR));
        List<TensorSpec> specs = specs(hub);
        int stopAt = specs.size() * 2 / 3;
        IOException e = assertThrows(IOException.class, () -> {
            try (HfModelWriter w = new HfModelWriter(OutputDir.local(tmp), specs,
                    new ModelFormat(DType.F32, 200_000))) {
                int k = 0;
                for (Map.Entry<String, Tensor> t : hub.entrySet()) {
                    if (k++ == stopAt) {
                        throw new IOException("disk full");
                    }
                    w.write(t.getKey(), t.getValue().shape(), t.getValue().floats(), 0);
                }
                w.finish();
            }
        });
        assertEquals("disk full", e.getMessage());
        try (Stream<Path> s = Files.list(tmp)) {
            List<String> left = s.map(p -> p.getFileName().toString()).sorted().toList();
            assertFalse(left.contains(HfCheckpoint.INDEX_FILE), left.toString());
            assertTrue(left.stream().noneMatch(n -> n.endsWith(".tmp")), "a partial file is left: " + left);
            assertFalse(left.isEmpty(), "the files completed before the failure are kept");
        }
    }

    @Test
    void tensorsMustComeInThePlannedOrderAndAllOfThem() throws IOException {
        List<TensorSpec> specs = List.of(new TensorSpec("a", DType.F32, new int[] {2}),
                new TensorSpec("b", DType.F32, new int[] {3}));
        try (HfModelWriter w = new HfModelWriter(OutputDir.local(tmp), specs, ModelFormat.DEFAULT)) {
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> w.write("b", new int[] {3}, new float[3], 0));
            assertTrue(e.getMessage().contains("where the file's header has a: BF16 [2]"), e.getMessage());
            w.write("a", new int[] {2}, new float[] {1, 2}, 0);
            e = assertThrows(IllegalStateException.class, w::finish);
            assertTrue(e.getMessage().contains("b: BF16 [3]"), e.getMessage());
        }
        assertFalse(Files.exists(tmp.resolve(HfCheckpoint.SINGLE_FILE)));
        IllegalArgumentException dup = assertThrows(IllegalArgumentException.class, () -> new HfModelWriter(
                OutputDir.local(tmp), List.of(specs.get(0), specs.get(0)), ModelFormat.DEFAULT));
        assertTrue(dup.getMessage().contains("listed twice"), dup.getMessage());
    }

    /**
     * BF16 and F16 over more than one conversion buffer, from an offset, with every special value: the data section
     * is, byte for byte, each value converted by {@link DType}'s scalar conversion and stored little-endian.
     */
    @Test
    void halfPrecisionDataIsTheScalarConversionLittleEndianAcrossBuffers() throws IOException {
        int n = (1 << 20) / 2 * 2 + 11; // two 1 MB buffers of 2-byte values and a remainder
        float[] v = new float[n + 3];
        java.util.SplittableRandom rnd = new java.util.SplittableRandom(5);
        for (int i = 0; i < v.length; i++) {
            v[i] = (float) (rnd.nextGaussian() * Math.pow(2, rnd.nextInt(-30, 20)));
        }
        float[] special = {Float.NaN, Float.intBitsToFloat(0xff812345), Float.POSITIVE_INFINITY,
            Float.NEGATIVE_INFINITY, -0f, Float.MIN_VALUE, 65520f, 1.00390625f, 1.01171875f, 6.1e-5f, 3e-8f};
        System.arraycopy(special, 0, v, 3, special.length);
        for (DType dt : new DType[] {DType.BF16, DType.F16}) {
            List<TensorSpec> specs = List.of(new TensorSpec("h", dt, new int[] {n}));
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            SafeTensorsWriter w = new SafeTensorsWriter(bytes, specs, null);
            w.write("h", new int[] {n}, v, 3);
            w.finish();
            byte[] b = bytes.toByteArray();
            int data = b.length - 2 * n;
            for (int i = 0; i < n; i++) {
                short want = dt == DType.BF16 ? DType.floatToBf16(v[3 + i]) : DType.floatToF16(v[3 + i]);
                short got = (short) ((b[data + 2 * i] & 0xff) | (b[data + 2 * i + 1] << 8));
                if (want != got) {
                    assertEquals(want, got, dt + " element " + i + " (" + v[3 + i] + ")");
                }
            }
        }
    }

    @Test
    void theSingleFileWriterMatchesTheReferenceLayoutFromHeaderAlone() throws IOException {
        List<TensorSpec> specs = List.of(new TensorSpec("x", DType.F16, new int[] {2, 3}),
                new TensorSpec("s", DType.F32, new int[0]), new TensorSpec("y", DType.BF16, new int[] {4}));
        float[] x = {0.1f, -2.5f, 3e-5f, 65504f, 1e9f, -0f};
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        SafeTensorsWriter w = new SafeTensorsWriter(bytes, specs, Map.of("format", "pt"));
        w.write("x", new int[] {2, 3}, x, 0);
        w.write("s", new int[0], new float[] {9, 7.25f}, 1);
        w.write("y", Tensor.of(new float[] {1.00390625f, 2, 3, 4}, 4));
        w.finish();
        assertEquals(SafeTensorsWriter.fileSize(specs, Map.of("format", "pt")), bytes.size());
        Path f = tmp.resolve("t.safetensors");
        Files.write(f, bytes.toByteArray());
        SafeTensorsFile read = SafeTensors.read(f);
        assertTrue(Tensor.of(x.clone(), 2, 3).to(DType.F16).bitwiseEquals(read.get("x")));
        assertEquals(7.25f, read.get("s").floats()[0]);
        assertEquals(DType.BF16, read.get("y").dtype());
        assertEquals(1f, read.get("y").floats()[0]); // 1 + 2^-8 ties to even
        assertEquals("pt", read.metadata().get("format"));
    }

    @Test
    void sizesParseAsTransformersWritesThem() {
        assertEquals(5_000_000_000L, ModelFormat.parseSize("5GB"));
        assertEquals(500_000_000L, ModelFormat.parseSize("500MB"));
        assertEquals(2L << 30, ModelFormat.parseSize("2GiB"));
        assertEquals(1536, ModelFormat.parseSize("1.5kib"));
        assertEquals(123, ModelFormat.parseSize("123"));
        assertEquals(100_000, ModelFormat.parseSize(" 100 KB "));
        for (String bad : new String[] {"", "5 GBs", "-1", "0", "0.5B", "GB", "5PB"}) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> ModelFormat.parseSize(bad), bad);
            assertTrue(e.getMessage().contains("'" + bad + "'"), e.getMessage());
        }
        assertThrows(IllegalArgumentException.class, () -> new ModelFormat(DType.I32, 10));
        assertThrows(IllegalArgumentException.class, () -> new ModelFormat(DType.BF16, 0));
    }
}
