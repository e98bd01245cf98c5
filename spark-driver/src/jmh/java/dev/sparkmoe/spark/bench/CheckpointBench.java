package dev.sparkmoe.spark.bench;

import dev.sparkmoe.core.io.HfModelWriter;
import dev.sparkmoe.core.io.ModelFormat;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import dev.sparkmoe.spark.ckpt.CheckpointStore;
import dev.sparkmoe.spark.ckpt.HadoopOutputDir;
import dev.sparkmoe.spark.ckpt.TensorFiles;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.zip.CRC32;
import java.util.zip.CheckedOutputStream;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * Where the time of a checkpoint goes, on the CPU: one or more ranks' states (parameters, two AdamW moments, regions,
 * the step counter, as {@code RankTrainer.rankState()} makes them) written and read back through
 * {@link CheckpointStore} on a {@code file:} URI, and the final model written through {@link HfModelWriter} into a
 * Hadoop directory (BF16 and F32). Stages are timed apart: the serialization alone (into a null stream), with the
 * manifest's CRC, the raw disk speed for the same bytes (FileChannel, with and without fsync), the store's write, its
 * read (with verification), the model saves. A plain main, not JMH: each pass moves gigabytes.
 *
 * <pre>
 * java -Xmx8g -cp spark-driver/target/bench/classes:$(cat spark-driver/target/bench/classpath.txt) \
 *     dev.sparkmoe.spark.bench.CheckpointBench DIR [state MB per rank, default 1536] [ranks, default 1] [passes, 2]
 * </pre>
 */
public final class CheckpointBench {
    private static final int TENSOR_FLOATS = 4 << 20; // 16 MB per tensor, as a mid-sized expert shard

    private CheckpointBench() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: CheckpointBench DIR [state MB per rank] [ranks] [passes]");
            System.exit(2);
        }
        java.nio.file.Path dir = java.nio.file.Path.of(args[0]).toAbsolutePath();
        long mb = args.length > 1 ? Long.parseLong(args[1]) : 1536;
        int ranks = args.length > 2 ? Integer.parseInt(args[2]) : 1;
        int passes = args.length > 3 ? Integer.parseInt(args[3]) : 2;
        Files.createDirectories(dir);
        System.out.printf("java %s, %d cores, max heap %.1f GB; %d rank(s) of %d MB of state in %s%n",
                System.getProperty("java.version"), Runtime.getRuntime().availableProcessors(),
                Runtime.getRuntime().maxMemory() / 1e9, ranks, mb, dir);

        List<Map<String, Tensor>> states = new ArrayList<>();
        for (int r = 0; r < ranks; r++) {
            states.add(state(mb, r));
        }
        long bytes = serializedBytes(states.get(0));
        double gb = bytes * ranks / 1e9;
        CheckpointStore store = new CheckpointStore(dir.resolve("ckpt").toUri().toString(), new Configuration());

        for (int pass = 1; pass <= passes; pass++) {
            System.out.printf("pass %d (%.2f GB per stage)%n", pass, gb);
            time("serialize only (null stream)", gb, ranks, r -> TensorFiles.write(OutputStream.nullOutputStream(),
                    states.get(r)));
            time("serialize + crc32", gb, ranks, r -> TensorFiles.write(
                    new CheckedOutputStream(OutputStream.nullOutputStream(), new CRC32()), states.get(r)));
            byte[] chunk = new byte[1 << 22];
            time("disk: FileChannel, no fsync", gb, ranks, r -> raw(dir.resolve("raw-" + r), bytes, chunk, false));
            time("disk: FileChannel + fsync", gb, ranks, r -> raw(dir.resolve("raw-" + r), bytes, chunk, true));
            org.apache.hadoop.fs.LocalFileSystem local = FileSystem.getLocal(new Configuration());
            for (FileSystem fs : new FileSystem[] {local, local.getRawFileSystem()}) {
                String kind = fs == local ? "checksummed" : "raw";
                time("hadoop " + kind + " write, 1 MB buffer", gb, ranks, r -> hadoopWrite(fs,
                        dir.resolve("h-" + r), bytes, chunk));
                time("hadoop " + kind + " read, 1 MB buffer", gb, ranks, r -> hadoopRead(fs,
                        dir.resolve("h-" + r), chunk));
                for (int r = 0; r < ranks; r++) {
                    local.delete(new Path(dir.resolve("h-" + r).toUri()), false);
                }
            }
            long step = pass;
            List<CheckpointStore.FileInfo> files = new ArrayList<>();
            for (int r = 0; r < ranks; r++) {
                files.add(null);
            }
            time("store.writeRank", gb, ranks, r -> files.set(r, store.writeRank(step, "bench", r, states.get(r))));
            CheckpointStore.Manifest m = new CheckpointStore.Manifest(1, step, ranks, 1, 0, 1, List.of(),
                    files, List.of(), "bench");
            time("store.commit", gb, 1, r -> store.commit(m, 1));
            time("store.readRank (verified)", gb, ranks, r -> {
                Map<String, Tensor> back = store.readRank(m, r);
                if (back.size() != states.get(r).size()) {
                    throw new IllegalStateException("read " + back.size() + " tensors, wrote "
                            + states.get(r).size());
                }
            });
            Map<String, Tensor> params = new LinkedHashMap<>();
            for (Map.Entry<String, Tensor> e : states.get(0).entrySet()) {
                if (e.getKey().startsWith("param/")) {
                    params.put(e.getKey().substring(6), e.getValue());
                }
            }
            double modelGb = params.values().stream().mapToLong(Tensor::numel).sum() * 4 / 1e9;
            for (DType dt : new DType[] {DType.BF16, DType.F32}) {
                time("model save " + dt + " (f32 values in)", modelGb, 1, r -> model(dir, params, dt));
            }
        }
    }

    private interface Stage {
        void run(int rank) throws Exception;
    }

    private static void time(String what, double gb, int ranks, Stage s) throws Exception {
        long t0 = System.nanoTime();
        if (ranks == 1) {
            s.run(0);
        } else {
            ExecutorService ex = Executors.newFixedThreadPool(ranks);
            try {
                List<Future<?>> fs = new ArrayList<>();
                for (int r = 0; r < ranks; r++) {
                    int rank = r;
                    fs.add(ex.submit(() -> {
                        s.run(rank);
                        return null;
                    }));
                }
                for (Future<?> f : fs) {
                    f.get();
                }
            } finally {
                ex.shutdown();
            }
        }
        double sec = (System.nanoTime() - t0) / 1e9;
        System.out.printf("  %-36s %7.2f s  %8.0f MB/s%n", what, sec, gb * 1e3 / sec);
    }

    /** A rank state of about {@code mb} MB: param, exp_avg and exp_avg_sq of each tensor, regions, steps. */
    static Map<String, Tensor> state(long mb, int rank) {
        long floatsPerKind = mb * 1_000_000 / 12;
        Map<String, Tensor> out = new LinkedHashMap<>();
        SplittableRandom rnd = new SplittableRandom(rank);
        int k = 0;
        for (long left = floatsPerKind; left > 0; k++) {
            int n = (int) Math.min(TENSOR_FLOATS, left);
            left -= n;
            int rows = n % 1024 == 0 ? n / 1024 : n;
            int[] shape = rows == n ? new int[] {n} : new int[] {rows, 1024};
            String name = "model.layers." + k + ".mlp.experts.gate_up_proj";
            for (String kind : new String[] {"param/", "exp_avg/", "exp_avg_sq/"}) {
                float[] v = new float[n];
                for (int i = 0; i < n; i++) {
                    v[i] = (float) rnd.nextGaussian() * 0.02f;
                }
                out.put(kind + name, Tensor.of(v, shape));
            }
            out.put("region/" + name, Tensor.ofInts(new int[] {0, shape[0], 0, shape.length > 1 ? shape[1] : 1},
                    4));
            // a norm weight beside each big tensor, as the model has
            String norm = "model.layers." + k + ".input_layernorm.weight";
            for (String kind : new String[] {"param/", "exp_avg/", "exp_avg_sq/"}) {
                out.put(kind + norm, Tensor.of(new float[1024], 1024));
            }
            out.put("region/" + norm, Tensor.ofInts(new int[] {0, 1024}, 2));
        }
        out.put("trainer/steps", Tensor.ofLongs(new long[] {7}, 1));
        return out;
    }

    private static long serializedBytes(Map<String, Tensor> state) throws IOException {
        long[] n = new long[1];
        TensorFiles.write(new OutputStream() {
            @Override
            public void write(int b) {
                n[0]++;
            }

            @Override
            public void write(byte[] b, int off, int len) {
                n[0] += len;
            }
        }, state);
        return n[0];
    }

    private static void raw(java.nio.file.Path p, long bytes, byte[] chunk, boolean fsync) throws IOException {
        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                StandardOpenOption.TRUNCATE_EXISTING)) {
            for (long left = bytes; left > 0; ) {
                int n = (int) Math.min(chunk.length, left);
                ByteBuffer b = ByteBuffer.wrap(chunk, 0, n);
                while (b.hasRemaining()) {
                    ch.write(b);
                }
                left -= n;
            }
            if (fsync) {
                ch.force(true);
            }
        }
        Files.delete(p);
    }

    private static void hadoopWrite(FileSystem fs, java.nio.file.Path p, long bytes, byte[] chunk)
            throws IOException {
        try (OutputStream os = fs.create(new Path(p.toUri()), true, 1 << 20)) {
            for (long left = bytes; left > 0; ) {
                int n = (int) Math.min(chunk.length, left);
                os.write(chunk, 0, n);
                left -= n;
            }
        }
    }

    private static void hadoopRead(FileSystem fs, java.nio.file.Path p, byte[] chunk) throws IOException {
        try (java.io.InputStream in = fs.open(new Path(p.toUri()), 1 << 20)) {
            while (in.read(chunk, 0, chunk.length) >= 0) {
                // bytes only
            }
        }
    }

    private static void model(java.nio.file.Path dir, Map<String, Tensor> params, DType dtype) throws IOException {
        FileSystem fs = FileSystem.get(dir.toUri(), new Configuration());
        Path out = new Path(dir.resolve("model-" + dtype).toUri());
        fs.delete(out, true);
        List<TensorSpec> specs = new ArrayList<>();
        for (Map.Entry<String, Tensor> e : params.entrySet()) {
            specs.add(new TensorSpec(e.getKey(), DType.F32, e.getValue().shape()));
        }
        try (HfModelWriter w = new HfModelWriter(HadoopOutputDir.of(fs, out), specs,
                new ModelFormat(dtype, 256_000_000L))) {
            for (Map.Entry<String, Tensor> e : params.entrySet()) {
                w.write(e.getKey(), e.getValue().shape(), e.getValue().floats(), 0);
            }
            w.finish();
        }
    }
}
