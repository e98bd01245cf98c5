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
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class HfCheckpointTest {
    static final Path FIXTURE_DIR = SafeTensorsTest.FIXTURES;

    @TempDir
    Path tmp;

    private static void assertBitwiseEqual(Map<String, Tensor> a, Map<String, Tensor> b) {
        assertEquals(a.keySet(), b.keySet());
        for (String k : a.keySet()) {
            assertTrue(a.get(k).bitwiseEquals(b.get(k)), k + ": " + a.get(k) + " vs " + b.get(k));
        }
    }

    private static Map<String, Tensor> fixture() throws IOException {
        return HfCheckpoint.load(FIXTURE_DIR);
    }

    // ------------------------------------------------------------------ stacking

    @Test
    void fixtureStackUnstackIsBitwiseIdentity() throws IOException {
        Map<String, Tensor> hub = fixture();
        Map<String, Tensor> stacked = HfCheckpoint.stackExperts(hub, 8);
        assertArrayEquals(new int[] {8, 32, 64}, stacked.get("model.layers.0.mlp.experts.gate_proj").shape());
        assertArrayEquals(new int[] {8, 32, 64}, stacked.get("model.layers.1.mlp.experts.up_proj").shape());
        assertArrayEquals(new int[] {8, 64, 32}, stacked.get("model.layers.1.mlp.experts.down_proj").shape());
        assertFalse(stacked.keySet().stream().anyMatch(k -> k.contains("experts.0.")));
        assertEquals(hub.size() - 2 * 8 * 3 + 2 * 3, stacked.size());
        assertEquals(stacked.keySet().stream().sorted().toList(), List.copyOf(stacked.keySet()));
        // expert 5's gate weight is slab 5 of the stack
        Tensor g5 = hub.get("model.layers.0.mlp.experts.5.gate_proj.weight");
        float[] st = stacked.get("model.layers.0.mlp.experts.gate_proj").floats();
        for (int k = 0; k < g5.numel(); k++) {
            assertEquals(g5.floats()[k], st[5 * 32 * 64 + k]);
        }
        assertBitwiseEqual(hub, HfCheckpoint.unstackExperts(stacked));
        assertBitwiseEqual(stacked, HfCheckpoint.stackExperts(stacked, 8)); // stacking is idempotent
        assertBitwiseEqual(stacked, HfCheckpoint.loadStacked(FIXTURE_DIR, 8));
    }

    /** Worked example: 2 experts, I = 1, H = 2. */
    @Test
    void fusedTransformers5FormWorkedExample() {
        String p = "model.layers.0.mlp.experts";
        Map<String, Tensor> fused = new LinkedHashMap<>();
        // gate_up_proj [E=2, 2I=2, H=2]: expert 0 gate row (1,2), up row (3,4); expert 1 gate (5,6), up (7,8)
        fused.put(p + ".gate_up_proj", Tensor.of(new float[] {1, 2, 3, 4, 5, 6, 7, 8}, 2, 2, 2));
        fused.put(p + ".down_proj", Tensor.of(new float[] {9, 10, 11, 12}, 2, 2, 1)); // [E, H, I]
        fused.put("model.norm.weight", Tensor.of(new float[] {1, 1}, 2));
        Map<String, Tensor> s = HfCheckpoint.stackExperts(fused, 2);
        assertEquals(List.of(p + ".down_proj", p + ".gate_proj", p + ".up_proj", "model.norm.weight"),
                List.copyOf(s.keySet()));
        assertArrayEquals(new float[] {1, 2, 5, 6}, s.get(p + ".gate_proj").floats());
        assertArrayEquals(new int[] {2, 1, 2}, s.get(p + ".gate_proj").shape());
        assertArrayEquals(new float[] {3, 4, 7, 8}, s.get(p + ".up_proj").floats());
        assertArrayEquals(new float[] {9, 10, 11, 12}, s.get(p + ".down_proj").floats());

        Map<String, Tensor> hub = HfCheckpoint.unstackExperts(s);
        assertArrayEquals(new float[] {5, 6}, hub.get(p + ".1.gate_proj.weight").floats());
        assertArrayEquals(new int[] {1, 2}, hub.get(p + ".1.gate_proj.weight").shape());
        assertArrayEquals(new float[] {11, 12}, hub.get(p + ".1.down_proj.weight").floats());
        assertArrayEquals(new int[] {2, 1}, hub.get(p + ".1.down_proj.weight").shape());
        assertBitwiseEqual(hub, HfCheckpoint.unstackExperts(fused)); // unstack also accepts the fused form
        assertBitwiseEqual(s, HfCheckpoint.stackExperts(hub, 2));
    }

    @Test
    void fusedFormOfTheFixtureMatchesPerExpertForm() throws IOException {
        Map<String, Tensor> stacked = HfCheckpoint.stackExperts(fixture(), 8);
        Map<String, Tensor> fused = new TreeMap<>(stacked);
        for (int layer = 0; layer < 2; layer++) {
            String p = "model.layers." + layer + ".mlp.experts";
            Tensor g = fused.remove(p + ".gate_proj");
            Tensor u = fused.remove(p + ".up_proj");
            float[] gu = new float[g.numel() * 2];
            int slab = 32 * 64;
            for (int e = 0; e < 8; e++) {
                System.arraycopy(g.floats(), e * slab, gu, 2 * e * slab, slab);
                System.arraycopy(u.floats(), e * slab, gu, 2 * e * slab + slab, slab);
            }
            fused.put(p + ".gate_up_proj", Tensor.of(gu, 8, 64, 64));
        }
        assertBitwiseEqual(stacked, HfCheckpoint.stackExperts(fused, 8));
    }

    private static IllegalArgumentException stackFails(Map<String, Tensor> m, int e, String... fragments) {
        IllegalArgumentException ex = assertThrows(IllegalArgumentException.class, () -> HfCheckpoint.stackExperts(m, e));
        for (String f : fragments) {
            assertTrue(ex.getMessage().contains(f), "expected '" + f + "' in: " + ex.getMessage());
        }
        return ex;
    }

    @Test
    void stackingErrorsNameTheTensor() throws IOException {
        Map<String, Tensor> hub = new TreeMap<>(fixture());
        stackFails(hub, 4, "tensor 'model.layers.0.mlp.experts.4.down_proj.weight' has expert index 4 but num_experts is 4");

        Map<String, Tensor> missing = new TreeMap<>(hub);
        missing.remove("model.layers.1.mlp.experts.3.up_proj.weight");
        stackFails(missing, 8, "experts of model.layers.1.mlp.experts are incomplete", "1 of 8 up_proj",
                "'model.layers.1.mlp.experts.3.up_proj.weight'");

        Map<String, Tensor> badShape = new TreeMap<>(hub);
        badShape.put("model.layers.0.mlp.experts.2.gate_proj.weight", Tensor.zeros(DType.F32, 32, 63));
        stackFails(badShape, 8, "tensor 'model.layers.0.mlp.experts.2.gate_proj.weight' is F32 [32, 63]",
                "'model.layers.0.mlp.experts.0.gate_proj.weight' is F32 [32, 64]");

        Map<String, Tensor> badDtype = new TreeMap<>(hub);
        badDtype.put("model.layers.0.mlp.experts.7.up_proj.weight", Tensor.zeros(DType.BF16, 32, 64));
        stackFails(badDtype, 8, "tensor 'model.layers.0.mlp.experts.7.up_proj.weight' is BF16");

        Map<String, Tensor> mixed = new TreeMap<>(hub);
        mixed.put("model.layers.0.mlp.experts.gate_up_proj", Tensor.zeros(DType.F32, 8, 64, 64));
        stackFails(mixed, 8, "'model.layers.0.mlp.experts.gate_up_proj'", "a checkpoint must use one form");

        Map<String, Tensor> downT = new TreeMap<>(hub);
        for (int e = 0; e < 8; e++) {
            downT.put("model.layers.0.mlp.experts." + e + ".down_proj.weight", Tensor.zeros(DType.F32, 32, 64));
        }
        stackFails(downT, 8, "experts of model.layers.0.mlp.experts disagree", "down_proj F32 [8, 32, 64]");

        stackFails(Map.of("m.mlp.experts.gate_up_proj", Tensor.zeros(DType.F32, 2, 3, 4),
                "m.mlp.experts.down_proj", Tensor.zeros(DType.F32, 2, 4, 1)), 2, "tensor 'm.mlp.experts.gate_up_proj'",
                "[2, 3, 4]");
        stackFails(Map.of("m.mlp.experts.gate_up_proj", Tensor.zeros(DType.F32, 2, 2, 4)), 2,
                "no matching 'm.mlp.experts.down_proj'");
        stackFails(Map.of("m.mlp.experts.gate_proj", Tensor.zeros(DType.F32, 3, 2, 4)), 2,
                "tensor 'm.mlp.experts.gate_proj' has shape [3, 2, 4]");
        stackFails(Map.of("m.mlp.experts.01.gate_proj.weight", Tensor.zeros(DType.F32, 2, 4)), 2, "expert index 01");
    }

    @Test
    void unstackErrors() {
        assertThrows(IllegalArgumentException.class, () -> HfCheckpoint.unstackExperts(
                Map.of("m.mlp.experts.gate_proj", Tensor.zeros(DType.F32, 2, 4))));
        Map<String, Tensor> both = new LinkedHashMap<>();
        both.put("m.mlp.experts.gate_proj", Tensor.zeros(DType.F32, 1, 2, 4));
        both.put("m.mlp.experts.0.gate_proj.weight", Tensor.zeros(DType.F32, 2, 4));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> HfCheckpoint.unstackExperts(both));
        assertTrue(e.getMessage().contains("produced twice"), e.getMessage());
    }

    // ------------------------------------------------------------------ directories

    @Test
    void singleFileSaveLoadRoundTrip() throws IOException {
        Map<String, Tensor> hub = fixture();
        Path dir = tmp.resolve("single");
        HfCheckpoint.save(dir, hub);
        assertTrue(Files.isRegularFile(dir.resolve("model.safetensors")));
        assertFalse(Files.exists(dir.resolve("model.safetensors.index.json")));
        // byte-identical to the file the Python reference wrote
        assertArrayEquals(Files.readAllBytes(FIXTURE_DIR.resolve("model.safetensors")),
                Files.readAllBytes(dir.resolve("model.safetensors")));
        assertBitwiseEqual(hub, HfCheckpoint.load(dir));
    }

    @Test
    void shardedSaveLoadRoundTrip() throws IOException {
        Map<String, Tensor> hub = fixture();
        long total = hub.values().stream().mapToLong(t -> 4L * t.numel()).sum();
        Path dir = tmp.resolve("sharded");
        HfCheckpoint.save(dir, hub, 200_000); // embed/lm_head (131072 bytes each) force several shards
        List<String> files;
        try (Stream<Path> s = Files.list(dir)) {
            files = s.map(p -> p.getFileName().toString()).sorted().toList();
        }
        int n = files.size() - 1;
        assertTrue(n > 2, files.toString());
        assertEquals("model-00001-of-0000" + n + ".safetensors", files.get(0));
        assertEquals("model.safetensors.index.json", files.get(n));

        Map<String, Object> index = Json.parseObject(Files.readString(dir.resolve("model.safetensors.index.json")));
        assertEquals(List.of("metadata", "weight_map"), List.copyOf(index.keySet()));
        assertEquals(Map.of("total_size", total), index.get("metadata"));
        @SuppressWarnings("unchecked")
        Map<String, Object> wm = (Map<String, Object>) index.get("weight_map");
        assertEquals(hub.keySet(), wm.keySet());
        assertEquals(List.copyOf(hub.keySet()), List.copyOf(wm.keySet()), "weight_map sorted by name");
        assertEquals("model-00001-of-0000" + n + ".safetensors", wm.get("lm_head.weight"));
        for (String f : files.subList(0, n)) {
            long size = SafeTensors.readHeader(dir.resolve(f)).values().stream().mapToLong(TensorInfo::byteSize).sum();
            assertTrue(size <= 200_000 || SafeTensors.readHeader(dir.resolve(f)).size() == 1, f + " " + size);
            assertEquals(Map.of("format", "pt"), SafeTensors.readMetadata(dir.resolve(f)));
        }
        assertBitwiseEqual(hub, HfCheckpoint.load(dir));

        // re-saving as one file removes the stale shards and index
        HfCheckpoint.save(dir, hub);
        try (Stream<Path> s = Files.list(dir)) {
            assertEquals(List.of("model.safetensors"), s.map(p -> p.getFileName().toString()).toList());
        }
        assertBitwiseEqual(hub, HfCheckpoint.load(dir));
    }

    @Test
    void shardingFollowsHuggingFaceRule() throws IOException {
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put("a", Tensor.zeros(DType.F32, 10)); // 40 bytes
        m.put("b", Tensor.zeros(DType.F32, 10)); // 40 -> 80 > 64: new shard
        m.put("c", Tensor.zeros(DType.BF16, 100)); // 200 > 64: own shard, emitted before b's open shard (as HF does)
        m.put("d", Tensor.zeros(DType.I32, 6)); // 24 -> 40 + 24 = 64 fits with b
        Path dir = tmp.resolve("rule");
        HfCheckpoint.save(dir, m, 64);
        Map<String, String> wm = HfCheckpoint.readIndex(dir.resolve("model.safetensors.index.json"));
        assertEquals(Map.of("a", "model-00001-of-00003.safetensors", "c", "model-00002-of-00003.safetensors",
                "b", "model-00003-of-00003.safetensors", "d", "model-00003-of-00003.safetensors"), wm);
        assertBitwiseEqual(new TreeMap<>(m), HfCheckpoint.load(dir));
        String text = Files.readString(dir.resolve("model.safetensors.index.json"));
        assertTrue(text.startsWith("{\n  \"metadata\": {\n    \"total_size\": 304\n  },\n  \"weight_map\": {\n"), text);
        assertTrue(text.endsWith("}\n"));
    }

    private Path shardedCopy() throws IOException {
        Path dir = Files.createTempDirectory(tmp, "ck");
        HfCheckpoint.save(dir, fixture(), 300_000);
        return dir;
    }

    private static SafeTensorsFormatException loadFails(Path dir, String... fragments) {
        SafeTensorsFormatException e = assertThrows(SafeTensorsFormatException.class, () -> HfCheckpoint.load(dir));
        for (String f : fragments) {
            assertTrue(e.getMessage().contains(f), "expected '" + f + "' in: " + e.getMessage());
        }
        return e;
    }

    private static void rewriteIndex(Path dir, java.util.function.Consumer<Map<String, Object>> edit)
            throws IOException {
        Path idx = dir.resolve(HfCheckpoint.INDEX_FILE);
        Map<String, Object> index = Json.parseObject(Files.readString(idx));
        edit.accept(index);
        Files.writeString(idx, Json.write(index, true));
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> weightMap(Map<String, Object> index) {
        return (Map<String, Object>) index.get("weight_map");
    }

    @Test
    void badIndexErrors() throws IOException {
        loadFails(tmp.resolve("nothing-here"), "holds neither model.safetensors nor", "does not exist");

        Path d1 = shardedCopy();
        Files.delete(d1.resolve("model-00002-of-00003.safetensors"));
        loadFails(d1, "are missing", "model-00002-of-00003.safetensors");

        Path d2 = shardedCopy();
        rewriteIndex(d2, ix -> weightMap(ix).put("model.extra.weight", "model-00001-of-00003.safetensors"));
        loadFails(d2, "tensor 'model.extra.weight'", "listed in model.safetensors.index.json for shard"
                + " model-00001-of-00003.safetensors but that shard does not contain it");

        Path d3 = shardedCopy();
        rewriteIndex(d3, ix -> weightMap(ix).remove("model.norm.weight"));
        loadFails(d3, "tensor 'model.norm.weight'", "does not list it");

        Path d4 = shardedCopy();
        rewriteIndex(d4, ix -> weightMap(ix).put("lm_head.weight", "model-00002-of-00003.safetensors"));
        loadFails(d4, "tensor 'lm_head.weight'", "is stored in shard model-00001-of-00003.safetensors but the index"
                + " lists it in model-00002-of-00003.safetensors");

        // a tensor stored in two shards
        Path d5 = shardedCopy();
        Path last = d5.resolve("model-00003-of-00003.safetensors");
        Map<String, Tensor> lastTensors = new TreeMap<>(SafeTensors.read(last).tensors());
        lastTensors.put("lm_head.weight", fixture().get("lm_head.weight"));
        SafeTensors.write(last, lastTensors, Map.of("format", "pt"));
        loadFails(d5, "tensor 'lm_head.weight'", "is stored in two shards, model-00001-of-00003.safetensors and"
                + " model-00003-of-00003.safetensors");

        Path d6 = shardedCopy();
        rewriteIndex(d6, ix -> weightMap(ix).put("lm_head.weight", "../escape.safetensors"));
        loadFails(d6, "is not a plain file name");

        Path d7 = shardedCopy();
        rewriteIndex(d7, ix -> ix.remove("weight_map"));
        loadFails(d7, "must have an object \"weight_map\"");

        Path d8 = shardedCopy();
        Files.writeString(d8.resolve(HfCheckpoint.INDEX_FILE), "{\"weight_map\": {\"a\": \"x\",}}");
        loadFails(d8, "is not a valid JSON object", "line 1");

        Path d9 = shardedCopy();
        Files.copy(FIXTURE_DIR.resolve("model.safetensors"), d9.resolve("model.safetensors"));
        loadFails(d9, "holds both model.safetensors and model.safetensors.index.json");

        // a corrupt shard fails the whole load
        Path d10 = shardedCopy();
        Path s2 = d10.resolve("model-00002-of-00003.safetensors");
        byte[] b = Files.readAllBytes(s2);
        Files.write(s2, java.util.Arrays.copyOf(b, b.length - 4));
        loadFails(d10, "model-00002-of-00003.safetensors", "4 bytes short");
    }
}
