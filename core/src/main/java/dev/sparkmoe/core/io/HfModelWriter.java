package dev.sparkmoe.core.io;

import dev.sparkmoe.core.json.Json;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.Closeable;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;

/**
 * Saves a model in Hugging Face layout as a stream of tensors: the split into files is decided up front from the
 * tensors' names, shapes and the {@link ModelFormat}, as huggingface_hub's {@code split_torch_state_dict_into_shards}
 * makes it; then each file is written as its tensors arrive ({@link SafeTensorsWriter}) and committed when its last
 * one is in. One file is {@value HfCheckpoint#SINGLE_FILE}; several are {@code model-0000k-of-0000n.safetensors}
 * plus {@value HfCheckpoint#INDEX_FILE}, written last, so that an index never names a file that is not complete.
 * Nothing holds more than the tensor being written and a bounded conversion buffer.
 */
public final class HfModelWriter implements TensorSink, Closeable {

    /** One file of the save: its name and its tensors (in the dtype they are stored in), in order. */
    public record ShardFile(String name, List<TensorSpec> tensors) {
        public long dataBytes() {
            long n = 0;
            for (TensorSpec t : tensors) {
                n += t.byteSize();
            }
            return n;
        }
    }

    private final OutputDir dir;
    private final List<ShardFile> files;
    private final Set<String> written = new LinkedHashSet<>();
    private int file = -1;
    private OutputDir.Output output;
    private SafeTensorsWriter writer;
    private boolean finished;

    /**
     * A save of {@code tensors} (f32 values to be delivered in this order; names unique) into {@code dir}, stored as
     * {@code format} says.
     */
    public HfModelWriter(OutputDir dir, List<TensorSpec> tensors, ModelFormat format) {
        this.dir = dir;
        this.files = plan(tensors, format);
    }

    /**
     * Splits tensors, taken in the given order with their sizes in the stored dtype, as huggingface_hub does: a
     * tensor larger than {@code maxShardBytes} gets a file of its own; the others fill the current file until the
     * next one would push it past the limit. Never returns an empty list.
     */
    public static List<List<TensorSpec>> split(List<TensorSpec> ordered, long maxShardBytes) {
        if (maxShardBytes <= 0) {
            throw new IllegalArgumentException("maxShardBytes must be positive, got " + maxShardBytes);
        }
        List<List<TensorSpec>> shards = new ArrayList<>();
        List<TensorSpec> current = new ArrayList<>();
        long currentSize = 0;
        for (TensorSpec t : ordered) {
            long size = t.byteSize();
            if (size > maxShardBytes) {
                shards.add(List.of(t));
                continue;
            }
            if (currentSize + size > maxShardBytes && !current.isEmpty()) {
                shards.add(current);
                current = new ArrayList<>();
                currentSize = 0;
            }
            current.add(t);
            currentSize += size;
        }
        if (!current.isEmpty() || shards.isEmpty()) {
            shards.add(current);
        }
        return shards;
    }

    /** The files a save of {@code tensors} in {@code format} makes, with their names. */
    public static List<ShardFile> plan(List<TensorSpec> tensors, ModelFormat format) {
        Set<String> names = new HashSet<>();
        List<TensorSpec> stored = new ArrayList<>(tensors.size());
        for (TensorSpec t : tensors) {
            if (!names.add(t.name())) {
                throw new IllegalArgumentException("tensor '" + t.name() + "' is listed twice for one model");
            }
            stored.add(t.withDtype(format.dtype()));
        }
        List<List<TensorSpec>> shards = split(stored, format.maxShardBytes());
        List<ShardFile> out = new ArrayList<>();
        for (int k = 0; k < shards.size(); k++) {
            String name = shards.size() == 1 ? HfCheckpoint.SINGLE_FILE
                    : String.format("model-%05d-of-%05d.safetensors", k + 1, shards.size());
            out.add(new ShardFile(name, List.copyOf(shards.get(k))));
        }
        return List.copyOf(out);
    }

    /** The files this save writes, in order. */
    public List<ShardFile> files() {
        return files;
    }

    /** Writes the next tensor of the plan, opening its file first and committing the file after its last tensor. */
    @Override
    public void write(String name, int[] shape, float[] data, int offset) throws IOException {
        if (finished) {
            throw new IllegalStateException("tensor '" + name + "' written after the save was finished");
        }
        if (writer == null) {
            if (file + 1 >= files.size()) {
                throw new IllegalStateException("tensor '" + name + "' written after every tensor of the model");
            }
            file++;
            output = dir.create(files.get(file).name());
            writer = new SafeTensorsWriter(output.stream(), files.get(file).tensors(), HfCheckpoint.FILE_METADATA);
        }
        writer.write(name, shape, data, offset);
        if (writer.expected() == null) {
            writer.finish();
            output.commit();
            output.close();
            written.add(files.get(file).name());
            writer = null;
            output = null;
        }
    }

    /**
     * Completes the save: every tensor must have been written; with several files, the index
     * ({@code metadata.total_size} and a sorted {@code weight_map}) is written last. Returns the names of the files
     * written.
     */
    public List<String> finish() throws IOException {
        TensorSpec next = writer != null ? writer.expected()
                : file + 1 < files.size() && !files.get(file + 1).tensors().isEmpty()
                ? files.get(file + 1).tensors().get(0) : null;
        if (next != null) {
            throw new IllegalStateException("the model is incomplete: " + next + " and the tensors after it were "
                    + "not written");
        }
        if (written.isEmpty()) {
            writeEmpty(files.get(0));
        }
        if (files.size() > 1) {
            Map<String, Object> weightMap = new TreeMap<>();
            long total = 0;
            for (ShardFile f : files) {
                for (TensorSpec t : f.tensors()) {
                    weightMap.put(t.name(), f.name());
                    total += t.byteSize();
                }
            }
            Map<String, Object> index = new LinkedHashMap<>();
            index.put("metadata", Map.of("total_size", total));
            index.put("weight_map", weightMap);
            try (OutputDir.Output o = dir.create(HfCheckpoint.INDEX_FILE)) {
                o.stream().write((Json.write(index, true) + "\n").getBytes(StandardCharsets.UTF_8));
                o.commit();
            }
            written.add(HfCheckpoint.INDEX_FILE);
        }
        finished = true;
        dir.finish(Set.copyOf(written));
        return List.copyOf(written);
    }

    /** A model without tensors is one file with only a header. */
    private void writeEmpty(ShardFile f) throws IOException {
        try (OutputDir.Output o = dir.create(f.name())) {
            new SafeTensorsWriter(o.stream(), f.tensors(), HfCheckpoint.FILE_METADATA).finish();
            o.commit();
        }
        written.add(f.name());
    }

    /** Discards the file being written, if any (a failed save leaves no partial file and no index). */
    @Override
    public void close() throws IOException {
        if (output != null) {
            output.close();
            output = null;
            writer = null;
        }
    }
}
