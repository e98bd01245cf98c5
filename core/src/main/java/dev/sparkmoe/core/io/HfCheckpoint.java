package dev.sparkmoe.core.io;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.json.JsonException;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
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
import java.util.stream.Stream;

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

    private static final Pattern SHARD_NAME = Pattern.compile("model-\\d{5}-of-\\d{5}\\.safetensors");
    private static final Pattern PER_EXPERT =
            Pattern.compile("(.+\\.mlp\\.experts)\\.(\\d+)\\.(gate_proj|up_proj|down_proj)\\.weight");
    private static final Pattern FUSED = Pattern.compile("(.+\\.mlp\\.experts)\\.gate_up_proj");
    private static final Pattern STACKED = Pattern.compile("(.+\\.mlp\\.experts)\\.(gate_proj|up_proj|down_proj)");
    private static final List<String> PROJS = List.of("gate_proj", "up_proj", "down_proj");

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
        Path index = dir.resolve(INDEX_FILE);
        boolean hasSingle = Files.isRegularFile(single);
        boolean hasIndex = Files.isRegularFile(index);
        if (hasSingle && hasIndex) {
            throw new SafeTensorsFormatException(dir, null, "holds both " + SINGLE_FILE + " and " + INDEX_FILE
                    + "; it is unclear which checkpoint to load", "delete the stale one");
        }
        if (hasSingle) {
            return SafeTensors.read(single).tensors();
        }
        if (!hasIndex) {
            throw new SafeTensorsFormatException(dir, null, "holds neither " + SINGLE_FILE + " nor " + INDEX_FILE
                    + (Files.isDirectory(dir) ? "" : " (the directory does not exist)"),
                    "point at a Hugging Face checkpoint directory saved with safetensors");
        }
        return loadSharded(dir, index);
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

    private static Map<String, Tensor> loadSharded(Path dir, Path index) throws IOException {
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
        Map<String, Tensor> out = new TreeMap<>();
        for (Map.Entry<String, SafeTensors.Header> e : headers.entrySet()) {
            Path p = dir.resolve(e.getKey());
            SafeTensors.Header h = e.getValue();
            try (FileChannel ch = FileChannel.open(p, StandardOpenOption.READ)) {
                if (ch.size() != h.dataStart() + lastEnd(h)) {
                    throw new SafeTensorsFormatException(p, null, "changed size while the checkpoint was loading", null);
                }
                for (TensorInfo t : h.tensors.values()) {
                    out.put(t.name(), SafeTensors.readTensor(p, ch, h.dataStart(), t));
                }
            }
        }
        return Collections.unmodifiableMap(new LinkedHashMap<>(out));
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
        List<Map<String, Tensor>> shards = new ArrayList<>();
        Map<String, Tensor> current = new LinkedHashMap<>();
        long currentSize = 0;
        long totalSize = 0;
        for (Map.Entry<String, Tensor> e : sorted.entrySet()) {
            long size = (long) e.getValue().numel() * e.getValue().dtype().byteSize();
            totalSize += size;
            if (size > maxShardBytes) {
                shards.add(Map.of(e.getKey(), e.getValue()));
                continue;
            }
            if (currentSize + size > maxShardBytes && !current.isEmpty()) {
                shards.add(current);
                current = new LinkedHashMap<>();
                currentSize = 0;
            }
            current.put(e.getKey(), e.getValue());
            currentSize += size;
        }
        if (!current.isEmpty() || shards.isEmpty()) {
            shards.add(current);
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
        try (Stream<Path> files = Files.list(dir)) {
            for (Path p : (Iterable<Path>) files::iterator) {
                String n = p.getFileName().toString();
                boolean ours = n.equals(SINGLE_FILE) || n.equals(INDEX_FILE) || SHARD_NAME.matcher(n).matches();
                if (ours && !written.contains(n)) {
                    Files.delete(p);
                }
            }
        }
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
        if (numExperts <= 0) {
            throw new IllegalArgumentException("numExperts must be positive, got " + numExperts);
        }
        // prefix -> proj -> expert -> (name, tensor)
        Map<String, Map<String, TreeMap<Integer, Map.Entry<String, Tensor>>>> perExpert = new TreeMap<>();
        Map<String, Tensor> fused = new TreeMap<>();
        Map<String, Tensor> stacked = new TreeMap<>();
        Map<String, Tensor> out = new TreeMap<>();
        for (Map.Entry<String, Tensor> e : hub.entrySet()) {
            String name = e.getKey();
            Matcher m = PER_EXPERT.matcher(name);
            if (m.matches()) {
                String idx = m.group(2);
                if ((idx.length() > 1 && idx.charAt(0) == '0') || idx.length() > 9
                        || Integer.parseInt(idx) >= numExperts) {
                    throw new IllegalArgumentException("tensor '" + name + "' has expert index " + idx
                            + " but num_experts is " + numExperts + " (valid indices 0.." + (numExperts - 1) + ")"
                            + "; check num_experts in the config against the checkpoint");
                }
                perExpert.computeIfAbsent(m.group(1), k -> new TreeMap<>())
                        .computeIfAbsent(m.group(3), k -> new TreeMap<>())
                        .put(Integer.parseInt(idx), e);
                continue;
            }
            if (FUSED.matcher(name).matches()) {
                fused.put(name, e.getValue());
                continue;
            }
            Matcher s = STACKED.matcher(name);
            if (s.matches()) {
                stacked.put(name, e.getValue());
                continue;
            }
            out.put(name, e.getValue());
        }
        for (Map.Entry<String, Map<String, TreeMap<Integer, Map.Entry<String, Tensor>>>> g : perExpert.entrySet()) {
            String prefix = g.getKey();
            for (String form : List.of(prefix + ".gate_up_proj", prefix + ".gate_proj", prefix + ".up_proj",
                    prefix + ".down_proj")) {
                if (fused.containsKey(form) || stacked.containsKey(form)) {
                    throw new IllegalArgumentException("tensor '" + form + "' (stacked or fused) and per-expert tensors"
                            + " such as '" + g.getValue().values().iterator().next().firstEntry().getValue().getKey()
                            + "' both describe the experts of " + prefix + "; a checkpoint must use one form");
                }
            }
            Tensor[] byProj = new Tensor[3];
            for (int p = 0; p < 3; p++) {
                String proj = PROJS.get(p);
                TreeMap<Integer, Map.Entry<String, Tensor>> experts = g.getValue().getOrDefault(proj, new TreeMap<>());
                if (experts.size() != numExperts) {
                    List<Integer> absent = new ArrayList<>();
                    for (int k = 0; k < numExperts && absent.size() < 10; k++) {
                        if (!experts.containsKey(k)) {
                            absent.add(k);
                        }
                    }
                    throw new IllegalArgumentException("experts of " + prefix + " are incomplete: "
                            + (numExperts - experts.size()) + " of " + numExperts + " " + proj
                            + " tensors are missing, e.g. '" + prefix + "." + absent.get(0) + "." + proj
                            + ".weight' (missing indices " + absent + (absent.size() == 10 ? " ..." : "") + ")");
                }
                Map.Entry<String, Tensor> first = experts.firstEntry().getValue();
                List<Tensor> parts = new ArrayList<>();
                for (Map.Entry<String, Tensor> x : experts.values()) {
                    Tensor t = x.getValue();
                    if (t.rank() != 2 || !Arrays.equals(t.shape(), first.getValue().shape())
                            || t.dtype() != first.getValue().dtype()) {
                        throw new IllegalArgumentException("tensor '" + x.getKey() + "' is " + t.dtype() + " "
                                + Arrays.toString(t.shape()) + " but '" + first.getKey() + "' is "
                                + first.getValue().dtype() + " " + Arrays.toString(first.getValue().shape())
                                + "; all experts of a projection must share a 2-D shape and a dtype");
                    }
                    parts.add(t);
                }
                byProj[p] = stack(parts);
            }
            checkTriple(prefix, byProj[0], byProj[1], byProj[2], numExperts);
            for (int p = 0; p < 3; p++) {
                out.put(prefix + "." + PROJS.get(p), byProj[p]);
            }
        }
        for (Map.Entry<String, Tensor> f : fused.entrySet()) {
            String prefix = f.getKey().substring(0, f.getKey().length() - ".gate_up_proj".length());
            Tensor gu = f.getValue();
            Tensor down = stacked.remove(prefix + ".down_proj");
            if (stacked.containsKey(prefix + ".gate_proj") || stacked.containsKey(prefix + ".up_proj")) {
                throw new IllegalArgumentException("tensor '" + f.getKey() + "' (fused) and '" + prefix
                        + ".gate_proj'/'up_proj' (stacked) both describe the experts of " + prefix
                        + "; a checkpoint must use one form");
            }
            if (down == null) {
                throw new IllegalArgumentException("tensor '" + f.getKey() + "' has no matching '" + prefix
                        + ".down_proj' [E, H, I]");
            }
            if (gu.rank() != 3 || gu.dim(0) != numExperts || gu.dim(1) % 2 != 0) {
                throw new IllegalArgumentException("tensor '" + f.getKey() + "' has shape "
                        + Arrays.toString(gu.shape()) + "; expected [num_experts=" + numExperts
                        + ", 2 * moe_intermediate_size, hidden_size]");
            }
            Tensor[] split = splitFused(gu);
            checkTriple(prefix, split[0], split[1], down, numExperts);
            out.put(prefix + ".gate_proj", split[0]);
            out.put(prefix + ".up_proj", split[1]);
            out.put(prefix + ".down_proj", down);
        }
        for (Map.Entry<String, Tensor> s : stacked.entrySet()) {
            Tensor t = s.getValue();
            if (t.rank() != 3 || t.dim(0) != numExperts) {
                throw new IllegalArgumentException("tensor '" + s.getKey() + "' has shape " + Arrays.toString(t.shape())
                        + "; a stacked expert weight must be [num_experts=" + numExperts + ", ., .]");
            }
            out.put(s.getKey(), t);
        }
        return Collections.unmodifiableMap(new LinkedHashMap<>(out));
    }

    private static void checkTriple(String prefix, Tensor gate, Tensor up, Tensor down, int numExperts) {
        int[] g = gate.shape();
        int[] d = down.shape();
        boolean ok = g.length == 3 && d.length == 3 && Arrays.equals(g, up.shape()) && g[0] == numExperts
                && d[0] == numExperts && d[1] == g[2] && d[2] == g[1] && gate.dtype() == up.dtype()
                && gate.dtype() == down.dtype();
        if (!ok) {
            throw new IllegalArgumentException("experts of " + prefix + " disagree: gate_proj " + gate.dtype() + " "
                    + Arrays.toString(g) + ", up_proj " + up.dtype() + " " + Arrays.toString(up.shape())
                    + ", down_proj " + down.dtype() + " " + Arrays.toString(d) + "; expected gate/up [E=" + numExperts
                    + ", I, H] and down [E, H, I] of one dtype");
        }
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
