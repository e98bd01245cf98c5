package dev.sparkmoe.core.io;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Region;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The sliced reader against the whole-tensor loader: every region of every stacked tensor holds the bits
 * {@link HfCheckpoint#loadStacked} gives, in every stored form (per-expert, fused, stacked; F32, BF16, F16; one file or
 * sharded), the reader reads exactly the bytes of the region, and a broken checkpoint gives the loader's errors.
 */
class HfCheckpointReaderTest {
    static final Path FIXTURE_DIR = SafeTensorsTest.FIXTURES;

    @TempDir
    Path tmp;

    static Map<String, Tensor> converted(Map<String, Tensor> m, DType d) {
        Map<String, Tensor> out = new TreeMap<>();
        m.forEach((k, v) -> out.put(k, v.to(d)));
        return out;
    }

    /** The fixture's experts in the fused transformers 5.x form (gate_up_proj [E, 2I, H], down_proj stacked). */
    static Map<String, Tensor> fused(Map<String, Tensor> stacked) {
        Map<String, Tensor> out = new TreeMap<>(stacked);
        for (int layer = 0; layer < 2; layer++) {
            String p = "model.layers." + layer + ".mlp.experts";
            Tensor g = out.remove(p + ".gate_proj");
            Tensor u = out.remove(p + ".up_proj");
            float[] gu = new float[g.numel() * 2];
            int slab = 32 * 64;
            for (int e = 0; e < 8; e++) {
                System.arraycopy(g.floats(), e * slab, gu, 2 * e * slab, slab);
                System.arraycopy(u.floats(), e * slab, gu, 2 * e * slab + slab, slab);
            }
            out.put(p + ".gate_up_proj", Tensor.ofFloating(g.dtype(), gu, 8, 64, 64));
        }
        return out;
    }

    /** Regions of a tensor: whole, a range of dim 0, a range of dim 1, a box inside every dim. */
    static List<Region> regions(int[] shape) {
        List<Region> out = new ArrayList<>();
        out.add(Region.whole(shape));
        int[][] box = new int[shape.length][];
        for (int d = 0; d < shape.length; d++) {
            box[d] = new int[] {0, shape[d]};
        }
        int[][] b0 = copy(box);
        b0[0] = new int[] {1, Math.max(1, shape[0] - 2)};
        out.add(new Region(shape, b0));
        if (shape.length > 1) {
            int[][] b1 = copy(box);
            b1[1] = new int[] {3, shape[1] - 1};
            out.add(new Region(shape, b1));
            int[][] inside = copy(box);
            for (int d = 0; d < shape.length; d++) {
                inside[d] = new int[] {1, shape[d] - 1};
            }
            out.add(new Region(shape, inside));
        }
        return out;
    }

    private static int[][] copy(int[][] b) {
        int[][] c = new int[b.length][];
        for (int d = 0; d < b.length; d++) {
            c[d] = b[d].clone();
        }
        return c;
    }

    /** The region's elements of a whole tensor, in box order. */
    static float[] expected(Tensor whole, Region r) throws IOException {
        float[] out = new float[(int) r.numel()];
        float[] src = whole.floats();
        r.forEachRun(0, out.length, (f, at, len) -> System.arraycopy(src, (int) f, out, at, len));
        return out;
    }

    /** Reads every region of every tensor in pieces of 1000 elements and compares it with the whole-tensor load. */
    static void readsLikeTheLoader(Path dir, DType stored) throws IOException {
        Map<String, Tensor> whole = HfCheckpoint.loadStacked(dir, 8);
        try (HfCheckpointReader r = HfCheckpointReader.open(dir, 8)) {
            assertEquals(whole.keySet(), r.tensors().keySet());
            for (Map.Entry<String, Tensor> e : whole.entrySet()) {
                TensorSpec spec = r.tensors().get(e.getKey());
                assertEquals(new TensorSpec(e.getKey(), e.getValue().dtype(), e.getValue().shape()), spec);
                assertEquals(stored, spec.dtype(), e.getKey());
                for (Region region : regions(spec.shape())) {
                    float[] got = new float[(int) region.numel()];
                    long before = r.bytesRead();
                    for (long off = 0; off < got.length; off += 1000) {
                        r.read(e.getKey(), region, off, (int) Math.min(1000, got.length - off), got, (int) off);
                    }
                    assertTrue(java.util.Arrays.equals(expected(e.getValue(), region), got), e.getKey() + " " + region);
                    assertEquals(region.numel() * stored.byteSize(), r.bytesRead() - before,
                            e.getKey() + " " + region + ": bytes read");
                }
            }
        }
    }

    @Test
    void perExpertF32SingleFile() throws IOException {
        readsLikeTheLoader(FIXTURE_DIR, DType.F32);
    }

    @Test
    void perExpertBf16ShardedOverSeveralFiles() throws IOException {
        HfCheckpoint.save(tmp, converted(HfCheckpoint.load(FIXTURE_DIR), DType.BF16), 100_000);
        assertTrue(Files.exists(tmp.resolve(HfCheckpoint.INDEX_FILE)));
        readsLikeTheLoader(tmp, DType.BF16);
    }

    @Test
    void fusedF16AndStackedBf16() throws IOException {
        Map<String, Tensor> stacked = HfCheckpoint.loadStacked(FIXTURE_DIR, 8);
        Path f = tmp.resolve("fused");
        HfCheckpoint.save(f, fused(converted(stacked, DType.F16)), 150_000);
        readsLikeTheLoader(f, DType.F16);
        Path s = tmp.resolve("stacked");
        HfCheckpoint.save(s, converted(stacked, DType.BF16));
        readsLikeTheLoader(s, DType.BF16);
    }

    /** The reader's error for a broken directory is the loader's (same class and message). */
    static void failsLikeTheLoader(Path dir, String fragment) {
        Exception loader = assertThrows(Exception.class, () -> HfCheckpoint.loadStacked(dir, 8));
        Exception reader = assertThrows(Exception.class, () -> HfCheckpointReader.open(dir, 8).close());
        assertEquals(loader.getClass(), reader.getClass());
        assertEquals(loader.getMessage(), reader.getMessage());
        assertTrue(reader.getMessage().contains(fragment), reader.getMessage());
    }

    @Test
    void brokenCheckpointsFailAsTheLoaderFails() throws IOException {
        Map<String, Tensor> hub = new TreeMap<>(HfCheckpoint.load(FIXTURE_DIR));

        Path missingExpert = tmp.resolve("missing-expert");
        Map<String, Tensor> m = new TreeMap<>(hub);
        m.remove("model.layers.1.mlp.experts.3.up_proj.weight");
        HfCheckpoint.save(missingExpert, m);
        failsLikeTheLoader(missingExpert, "1 of 8 up_proj tensors are missing");

        Path mixed = tmp.resolve("mixed");
        m = new TreeMap<>(hub);
        m.put("model.layers.0.mlp.experts.gate_proj", Tensor.zeros(DType.F32, 8, 32, 64));
        HfCheckpoint.save(mixed, m);
        failsLikeTheLoader(mixed, "a checkpoint must use one form");

        Path missingShard = tmp.resolve("missing-shard");
        HfCheckpoint.save(missingShard, hub, 300_000);
        Files.delete(missingShard.resolve("model-00002-of-00003.safetensors"));
        failsLikeTheLoader(missingShard, "are missing");

        Path both = tmp.resolve("both");
        HfCheckpoint.save(both, hub, 300_000);
        Files.copy(FIXTURE_DIR.resolve("model.safetensors"), both.resolve("model.safetensors"));
        failsLikeTheLoader(both, "holds both");

        Path truncated = tmp.resolve("truncated");
        HfCheckpoint.save(truncated, hub, 300_000);
        Path last = truncated.resolve("model-00003-of-00003.safetensors");
        byte[] bytes = Files.readAllBytes(last);
        Files.write(last, java.util.Arrays.copyOf(bytes, bytes.length - 4));
        failsLikeTheLoader(truncated, "truncated");
    }

    @Test
    void aFileChangedAfterOpeningIsRefusedBeforeItIsRead() throws IOException {
        HfCheckpoint.save(tmp, HfCheckpoint.load(FIXTURE_DIR), 300_000);
        try (HfCheckpointReader r = HfCheckpointReader.open(tmp, 8)) {
            Path f = tmp.resolve("model-00001-of-00003.safetensors");
            Files.write(f, new byte[] {0}, java.nio.file.StandardOpenOption.APPEND);
            String first = r.storedAs("lm_head.weight").get(0);
            assertEquals("lm_head.weight", first);
            SafeTensorsFormatException e = assertThrows(SafeTensorsFormatException.class,
                    () -> r.read("lm_head.weight", Region.whole(512, 64), 0, 10, new float[10], 0));
            assertTrue(e.getMessage().contains("changed size"), e.getMessage());
        }
    }
}
