package dev.sparkmoe.core.io;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.json.JsonException;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ThreadLocalRandom;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Hugging Face checkpoint directories ({@code model.safetensors}, or {@code model.safetensors.index.json} plus
 * {@code model-00001-of-0000N.safetensors} shards) and the conversion between the Hub's per-expert tensors and the
 * stacked expert tensors our model keeps.
 *
 * <p>Expert layouts (L = layer, E = experts, I = moe_intermediate_size, H = hidden_size):
 * <pre>
 *   ours (stacked):  model.layers.L.mlp.experts.gate_proj       [E, I, H]
 *                    model.layers.L.mlp.experts.up_proj         [E, I, H]
 *                    model.layers.L.mlp.experts.down_proj       [E, H, I]
 *   Hub (per expert): model.layers.L.mlp.experts.e.gate_proj.weight [I, H]   (likewise up_proj)
 *                    model.layers.L.mlp.experts.e.down_proj.weight  [H, I]
 *   transformers 5.x: model.layers.L.mlp.experts.gate_up_proj    [E, 2I, H]  (gate rows, then up rows)
 *                    model.layers.L.mlp.experts.down_proj       [E, H, I]
 * </pre>
 * All maps returned here are unmodifiable and ordered by name.
 */
public final class HfCheckpoint {
    public static final String SINGLE_FILE = "model.safetensors";
    public static final String INDEX_FILE = "model.safetensors.index.json";
    /** Metadata written into every safetensors file, as transformers does. */
    public static final Map<String, String> FILE_METADATA = Map.of("format", "pt");

    static final Pattern SHARD_NAME = Pattern.compile("model-\\d{5}-of-\\d{5}\\.safetensors");
    private static final Pattern FUSED = ExpertStacking.FUSED;
    private static final Pattern STACKED = ExpertStacking.STACKED;

    private HfCheckpoint() {
    }

    // ------------------------------------------------------------------ load

    /**
     * Loads every tensor of a checkpoint directory by its stored name. The directory must hold exactly one of
     * {@value #SINGLE_FILE} and {@value #INDEX_FILE}. The index and all shard headers are validated before any tensor is
     * read: every shard file exists, every listed tensor is in the shard the index names, no tensor is in two shards,
     * no shard holds a tensor the index does not list, and every dtype is loadable.
     */
    public static Map<String, Tensor> load(Path dir) throws IOException {
        Path single = dir.resolve(SINGLE_FILE);
        if (checkpointFiles(dir).equals(single)) {
            return SafeTensors.read(single).tensors();
        }
        Catalog c = catalog(dir);
        Map<String, Tensor> out = new TreeMap<>();
        for (Map.Entry<Path, SafeTensors.Header> e : c.headers().entrySet()) {
            Path p = e.getKey();
            SafeTensors.Header h = e.getValue();
            try (FileChannel ch = c.open(p)) {
                for (TensorInfo t : h.tensors.values()) {
                    out.put(t.name(), SafeTensors.readTensor(p, ch, h.dataStart(), t));
                }
            }
        }
        return Collections.unmodifiableMap(new LinkedHashMap<>(out));
    }

    /**
     * Which file holds a checkpoint: {@value #SINGLE_FILE} or {@value #INDEX_FILE} of {@code dir}, whichever exists;
     * both, or neither, is an error.
     */
    private static Path checkpointFiles(Path dir) throws SafeTensorsFormatException {
        Path single = dir.resolve(SINGLE_FILE);
        Path index = dir.resolve(INDEX_FILE);
        boolean hasSingle = Files.isRegularFile(single);
        boolean hasIndex = Files.isRegularFile(index);
        if (hasSingle && hasIndex) {
            throw new SafeTensorsFormatException(dir, null, "holds both " + SINGLE_FILE + " and " + INDEX_FILE
                    + "; it is unclear which checkpoint to load", "delete the stale one");
        }
        if (hasSingle) {
            return single;
        }
        if (!hasIndex) {
            throw new SafeTensorsFormatException(dir, null, "holds neither " + SINGLE_FILE + " nor " + INDEX_FILE
                    + (Files.isDirectory(dir) ? "" : " (the directory does not exist)"),
                    "point at a Hugging Face checkpoint directory saved with safetensors");
        }
        return index;
    }

    /**
     * Every tensor of a checkpoint directory, located in its file, after the checks {@link #load} makes before it
     * reads anything (every header, the index against the shards, every dtype loadable).
     *
     * @param headers each file's validated header, in file name order
     * @param located each tensor's file, by tensor name
     */
    record Catalog(Map<Path, SafeTensors.Header> headers, Map<String, Path> located) {
        /** The header entry of a tensor. */
        TensorInfo info(String name) {
            return headers.get(located.get(name)).tensors.get(name);
        }

        /** Opens a file of the checkpoint for reading, failing when it changed size since its header was read. */
        FileChannel open(Path p) throws IOException {
            SafeTensors.Header h = headers.get(p);
            FileChannel ch = FileChannel.open(p, StandardOpenOption.READ);
            if (ch.size() != h.dataStart() + lastEnd(h)) {
                ch.close();
                throw new SafeTensorsFormatException(p, null, "changed size while the checkpoint was loading", null);
            }
            return ch;
        }
    }

    static Catalog catalog(Path dir) throws IOException {
        Path file = checkpointFiles(dir);
        if (file.getFileName().toString().equals(SINGLE_FILE)) {
            SafeTensors.Header h;
            try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
                h = SafeTensors.parseHeader(file, ch);
            }
            Map<String, Path> located = new TreeMap<>();
            for (TensorInfo t : h.tensors.values()) {
                SafeTensors.checkLoadable(file, t);
                located.put(t.name(), file);
            }
            return new Catalog(Map.of(file, h), Collections.unmodifiableMap(located));
        }
        return shardedCatalog(dir, file);
    }

    /** {@link #load} followed by {@link #stackExperts}. */
    public static Map<String, Tensor> loadStacked(Path dir, int numExperts) throws IOException {
        return stackExperts(load(dir), numExperts);
    }

    /** The weight_map of an index file (tensor name to shard file name), validated for shape only. */
    public static Map<String, String> readIndex(Path index) throws IOException {
        String text = Files.readString(index, StandardCharsets.UTF_8);
        Map<String, Object> json;
        try {
            json = Json.parseObject(text);
        } catch (JsonException e) {
            throw new SafeTensorsFormatException(index, null, "is not a valid JSON object: " + e.getMessage(),
                    "the index is corrupted", e);
        }
        Object wm = json.get("weight_map");
        if (!(wm instanceof Map)) {
            throw new SafeTensorsFormatException(index, null, "must have an object \"weight_map\" (tensor name ->"
                    + " shard file), got " + (json.containsKey("weight_map") ? Json.typeName(wm) : "no such key"),
                    "the index format is {\"metadata\": {\"total_size\": N}, \"weight_map\": {...}}");
        }
        if (json.containsKey("metadata") && !(json.get("metadata") instanceof Map)) {
            throw new SafeTensorsFormatException(index, null, "\"metadata\" must be an object, got "
                    + Json.typeName(json.get("metadata")), null);
        }
        Map<String, String> out = new TreeMap<>();
        for (Map.Entry<?, ?> e : ((Map<?, ?>) wm).entrySet()) {
            Object f = e.getValue();
            if (!(f instanceof String)) {
                throw new SafeTensorsFormatException(index, (String) e.getKey(), "weight_map value must be a shard file"
                        + " name, got " + Json.typeName(f) + " " + f, null);
            }
            String shard = (String) f;
            if (shard.isEmpty() || shard.contains("/") || shard.contains("\\") || shard.equals(".")
                    || shard.equals("..")) {
                throw new SafeTensorsFormatException(index, (String) e.getKey(), "shard \"" + shard
                        + "\" is not a plain file name", "shards must live next to the index file");
            }
            out.put((String) e.getKey(), shard);
        }
        return Collections.unmodifiableMap(out);
    }

    private static Catalog shardedCatalog(Path dir, Path index) throws IOException {
        Map<String, String> weightMap = readIndex(index);
        Set<String> shards = new TreeSet<>(weightMap.values());
        List<String> missing = new ArrayList<>();
        for (String s : shards) {
            if (!Files.isRegularFile(dir.resolve(s))) {
                missing.add(s);
            }
        }
        if (!missing.isEmpty()) {
            throw new SafeTensorsFormatException(index, null, "names " + shards.size() + " shard files but "
                    + missing.size() + " are missing from " + dir + ": " + missing,
                    "copy the missing shards or re-save the checkpoint");
        }
        Map<String, SafeTensors.Header> headers = new LinkedHashMap<>();
        Map<String, String> foundIn = new TreeMap<>();
        for (String s : shards) {
            Path p = dir.resolve(s);
            SafeTensors.Header h;
            try (FileChannel ch = FileChannel.open(p, StandardOpenOption.READ)) {
                h = SafeTensors.parseHeader(p, ch);
            }
            headers.put(s, h);
            for (TensorInfo t : h.tensors.values()) {
                String listed = weightMap.get(t.name());
                String other = foundIn.put(t.name(), s);
                if (other != null) {
                    throw new SafeTensorsFormatException(p, t.name(), "is stored in two shards, " + other + " and " + s,
                            "each tensor must be stored in exactly one shard; re-save the checkpoint");
                }
                if (listed == null) {
                    throw new SafeTensorsFormatException(p, t.name(), "is stored in shard " + s + " but the index "
                            + INDEX_FILE + " does not list it", "the index is out of date; re-save the checkpoint");
                }
                if (!listed.equals(s)) {
                    throw new SafeTensorsFormatException(p, t.name(), "is stored in shard " + s + " but the index "
                            + "lists it in " + listed, "the index is out of date; re-save the checkpoint");
                }
                SafeTensors.checkLoadable(p, t);
            }
        }
        for (Map.Entry<String, String> e : weightMap.entrySet()) {
            if (!headers.get(e.getValue()).tensors.containsKey(e.getKey())) {
                throw new SafeTensorsFormatException(dir.resolve(e.getValue()), e.getKey(), "is listed in " + INDEX_FILE
                        + " for shard " + e.getValue() + " but that shard does not contain it",
                        "the index is out of date or a shard is from another checkpoint");
            }
        }
        Map<Path, SafeTensors.Header> byPath = new LinkedHashMap<>();
        Map<String, Path> located = new TreeMap<>();
        for (Map.Entry<String, SafeTensors.Header> e : headers.entrySet()) {
            Path p = dir.resolve(e.getKey());
            byPath.put(p, e.getValue());
            for (String t : e.getValue().tensors.keySet()) {
                located.put(t, p);
            }
        }
        return new Catalog(Collections.unmodifiableMap(byPath), Collections.unmodifiableMap(located));
    }

    private static long lastEnd(SafeTensors.Header h) {
        long end = 0;
        for (TensorInfo t : h.tensors.values()) {
            end = Math.max(end, t.end());
        }
        return end;
    }

    // ------------------------------------------------------------------ save

    /** Saves a state dict as a single {@value #SINGLE_FILE}. */
    public static void save(Path dir, Map<String, Tensor> stateDict) throws IOException {
        save(dir, stateDict, Long.MAX_VALUE);
    }

    /**
     * Saves a state dict (names as given; use {@link #unstackExperts} first for a Hub layout), split like
     * huggingface_hub's {@code split_torch_state_dict_into_shards}: tensors in name order fill a shard until the next
     * one would push it past {@code maxShardBytes}; a tensor larger than the limit gets a shard of its own. One shard
     * is written as {@value #SINGLE_FILE}; several as {@code model-0000k-of-0000n.safetensors} plus {@value #INDEX_FILE}
     * ({@code metadata.total_size} and a sorted {@code weight_map}). Each file is written atomically; the index is
     * written last; checkpoint files of an earlier save that are not part of this one are then deleted.
     */
    public static void save(Path dir, Map<String, Tensor> stateDict, long maxShardBytes) throws IOException {
        if (maxShardBytes <= 0) {
            throw new IllegalArgumentException("maxShardBytes must be positive, got " + maxShardBytes);
        }
        Files.createDirectories(dir);
        Map<String, Tensor> sorted = new TreeMap<>(stateDict);
        List<TensorSpec> specs = new ArrayList<>();
        long totalSize = 0;
        for (Map.Entry<String, Tensor> e : sorted.entrySet()) {
            specs.add(new TensorSpec(e.getKey(), e.getValue().dtype(), e.getValue().shape()));
            totalSize += specs.get(specs.size() - 1).byteSize();
        }
        List<Map<String, Tensor>> shards = new ArrayList<>();
        for (List<TensorSpec> part : HfModelWriter.split(specs, maxShardBytes)) {
            Map<String, Tensor> shard = new LinkedHashMap<>();
            for (TensorSpec t : part) {
                shard.put(t.name(), sorted.get(t.name()));
            }
            shards.add(shard);
        }
        Set<String> written = new TreeSet<>();
        if (shards.size() == 1) {
            SafeTensors.write(dir.resolve(SINGLE_FILE), shards.get(0), FILE_METADATA);
            written.add(SINGLE_FILE);
        } else {
            Map<String, Object> weightMap = new TreeMap<>();
            for (int k = 0; k < shards.size(); k++) {
                String name = String.format("model-%05d-of-%05d.safetensors", k + 1, shards.size());
                SafeTensors.write(dir.resolve(name), shards.get(k), FILE_METADATA);
                written.add(name);
                for (String t : shards.get(k).keySet()) {
                    weightMap.put(t, name);
                }
            }
            Map<String, Object> index = new LinkedHashMap<>();
            index.put("metadata", Map.of("total_size", totalSize));
            index.put("weight_map", weightMap);
            writeStringAtomically(dir.resolve(INDEX_FILE), Json.write(index, true) + "\n");
            written.add(INDEX_FILE);
        }
        OutputDir.local(dir).finish(written);
    }

    /** Writes text (UTF-8) through a temporary file in the same directory and an atomic move. */
    public static void writeStringAtomically(Path file, String text) throws IOException {
        Path abs = file.toAbsolutePath();
        Path tmp = abs.resolveSibling("." + abs.getFileName() + "."
                + Long.toHexString(ThreadLocalRandom.current().nextLong()) + ".tmp");
        boolean moved = false;
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(text.getBytes(StandardCharsets.UTF_8));
                while (b.hasRemaining()) {
                    ch.write(b);
                }
                ch.force(true);
            }
            Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            moved = true;
        } finally {
            if (!moved) {
                Files.deleteIfExists(tmp);
            }
        }
    }

    // ------------------------------------------------------------------ expert stacking

    /**
     * Converts Hub expert tensors to our stacked layout. Accepts per-expert tensors
     * ({@code ...experts.e.gate_proj.weight}) and the fused transformers 5.x form ({@code ...experts.gate_up_proj}
     * [E, 2I, H] with {@code ...experts.down_proj} [E, H, I]); already stacked tensors pass through after a check of
     * dim 0. Every other tensor passes through unchanged. Errors name the tensor: an expert index &gt;= numExperts, a
     * missing expert, shapes or dtypes that disagree, or two forms mixed in one layer.
     */
    public static Map<String, Tensor> stackExperts(Map<String, Tensor> hub, int numExperts) {
        Map<String, TensorSpec> specs = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> e : hub.entrySet()) {
            specs.put(e.getKey(), new TensorSpec(e.getKey(), e.getValue().dtype(), e.getValue().shape()));
        }
        Map<String, Tensor> out = new TreeMap<>();
        for (ExpertStacking.Stacked s : ExpertStacking.plan(specs, numExperts).values()) {
            Tensor t;
            if (s.source() instanceof ExpertStacking.Whole w) {
                t = hub.get(w.hubName());
            } else if (s.source() instanceof ExpertStacking.PerExpert pe) {
                List<Tensor> parts = new ArrayList<>();
                for (String n : pe.hubNames()) {
                    parts.add(hub.get(n));
                }
                t = stack(parts);
            } else {
                ExpertStacking.FusedHalf f = (ExpertStacking.FusedHalf) s.source();
                t = splitFused(hub.get(f.hubName()))[f.half()];
            }
            out.put(s.spec().name(), t);
        }
        return Collections.unmodifiableMap(new LinkedHashMap<>(out));
    }

    /**
     * The Hub name of expert {@code e} of a stacked expert weight: {@code model.layers.3.mlp.experts.gate_proj} and 5
     * give {@code model.layers.3.mlp.experts.5.gate_proj.weight}. Null for a name that is not a stacked expert weight.
     */
    public static String perExpertName(String stackedName, int e) {
        return ExpertStacking.perExpertName(stackedName, e);
    }

    /**
     * Converts stacked (or fused 5.x) expert tensors to the Hub's per-expert tensors
     * {@code ...experts.e.{gate,up,down}_proj.weight}; every other tensor passes through unchanged.
     */
    public static Map<String, Tensor> unstackExperts(Map<String, Tensor> stacked) {
        Map<String, Tensor> out = new TreeMap<>();
        for (Map.Entry<String, Tensor> e : stacked.entrySet()) {
            String name = e.getKey();
            Tensor t = e.getValue();
            Matcher s = STACKED.matcher(name);
            Matcher f = FUSED.matcher(name);
            if (s.matches() || f.matches()) {
                if (t.rank() != 3) {
                    throw new IllegalArgumentException("tensor '" + name + "' has shape " + Arrays.toString(t.shape())
                            + "; a stacked expert weight must be 3-D [E, ., .]");
                }
                if (f.matches()) {
                    if (t.dim(1) % 2 != 0) {
                        throw new IllegalArgumentException("tensor '" + name + "' has shape "
                                + Arrays.toString(t.shape()) + "; dim 1 must be 2 * moe_intermediate_size (even)");
                    }
                    Tensor[] split = splitFused(t);
                    putExperts(out, f.group(1), "gate_proj", split[0], name);
                    putExperts(out, f.group(1), "up_proj", split[1], name);
                } else {
                    putExperts(out, s.group(1), s.group(2), t, name);
                }
                continue;
            }
            putUnique(out, name, t, name);
        }
        return Collections.unmodifiableMap(new LinkedHashMap<>(out));
    }

    private static void putExperts(Map<String, Tensor> out, String prefix, String proj, Tensor t, String source) {
        int[] shape = t.shape();
        for (int k = 0; k < shape[0]; k++) {
            putUnique(out, prefix + "." + k + "." + proj + ".weight", t.sliceRows(k, k + 1).view(shape[1], shape[2]),
                    source);
        }
    }

    private static void putUnique(Map<String, Tensor> out, String name, Tensor t, String source) {
        if (out.put(name, t) != null) {
            throw new IllegalArgumentException("tensor '" + name + "' (from '" + source
                    + "') is produced twice; the state dict mixes per-expert and stacked forms");
        }
    }

    /** [E, 2I, H] -> {gate [E, I, H], up [E, I, H]}: per expert, the first I rows are gate, the next I are up. */
    private static Tensor[] splitFused(Tensor gu) {
        int e = gu.dim(0);
        int i2 = gu.dim(1);
        int h = gu.dim(2);
        int half = i2 / 2 * h;
        Tensor gate = Tensor.zeros(gu.dtype(), e, i2 / 2, h);
        Tensor up = Tensor.zeros(gu.dtype(), e, i2 / 2, h);
        for (int k = 0; k < e; k++) {
            copy(gu, (long) k * i2 * h, gate, (long) k * half, half);
            copy(gu, (long) k * i2 * h + half, up, (long) k * half, half);
        }
        return new Tensor[] {gate, up};
    }

    /** Stacks equally shaped tensors along a new dim 0, keeping the dtype. */
    static Tensor stack(List<Tensor> parts) {
        Tensor first = parts.get(0);
        int[] inner = first.shape();
        int[] shape = new int[inner.length + 1];
        shape[0] = parts.size();
        System.arraycopy(inner, 0, shape, 1, inner.length);
        Tensor out = Tensor.zeros(first.dtype(), shape);
        int n = first.numel();
        for (int k = 0; k < parts.size(); k++) {
            copy(parts.get(k), 0, out, (long) k * n, n);
        }
        return out;
    }

    private static void copy(Tensor src, long srcPos, Tensor dst, long dstPos, int len) {
        if (src.dtype() != dst.dtype()) {
            throw new IllegalArgumentException("dtype mismatch " + src.dtype() + " vs " + dst.dtype());
        }
        if (src.dtype() == DType.I64) {
            System.arraycopy(src.longs(), (int) srcPos, dst.longs(), (int) dstPos, len);
        } else if (src.dtype() == DType.I32) {
            System.arraycopy(src.ints(), (int) srcPos, dst.ints(), (int) dstPos, len);
        } else {
            System.arraycopy(src.floats(), (int) srcPos, dst.floats(), (int) dstPos, len);
        }
    }
}
