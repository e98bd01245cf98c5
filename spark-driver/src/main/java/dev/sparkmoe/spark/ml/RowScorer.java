package dev.sparkmoe.spark.ml;

import dev.sparkmoe.core.backend.CpuBackend;
import dev.sparkmoe.core.io.HfCheckpointReader;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.spark.ckpt.SerializableHadoopConf;
import dev.sparkmoe.spark.data.Tokenizer;
import dev.sparkmoe.spark.data.Tokenizers;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.spark.api.java.function.FlatMapFunction;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import scala.collection.JavaConverters;

/** Scores the rows of one partition: loads the model once, then appends each row's mean next-token loss. */
final class RowScorer implements FlatMapFunction<Iterator<Row>, Row> {
    private static final long serialVersionUID = 1L;
    private final String modelDir;
    private final SerializableHadoopConf conf;
    private final String tokenizer;
    private final int col;
    private final boolean text;

    RowScorer(String modelDir, SerializableHadoopConf conf, String tokenizer, int col, boolean text) {
        this.modelDir = modelDir;
        this.conf = conf;
        this.tokenizer = tokenizer;
        this.col = col;
        this.text = text;
    }

    /** Copies the model directory from its file system to a local temporary directory and loads it. */
    private Qwen3MoeModel load() throws IOException {
        java.nio.file.Path local = Files.createTempDirectory("spark-moe-model");
        Path dir = new Path(modelDir);
        FileSystem fs = dir.getFileSystem(conf.get());
        for (FileStatus st : fs.listStatus(dir)) {
            if (st.isFile()) {
                fs.copyToLocalFile(false, st.getPath(), new Path(local.resolve(st.getPath().getName()).toUri()), true);
            }
        }
        Qwen3MoeConfig config = Qwen3MoeConfig.load(local.resolve("config.json"));
        Qwen3MoeModel model = Qwen3MoeModel.unmaterialised(config, new CpuBackend());
        try (HfCheckpointReader weights = HfCheckpointReader.open(local, config.numExperts())) {
            model.loadState(weights); // read straight into the parameters, a bounded piece at a time
        }
        try (var files = Files.list(local)) {
            for (java.nio.file.Path f : (Iterable<java.nio.file.Path>) files::iterator) {
                Files.deleteIfExists(f);
            }
        }
        Files.deleteIfExists(local);
        return model;
    }

    private int[] ids(Row row, Tokenizer tok) {
        if (row.isNullAt(col)) {
            return new int[0];
        }
        if (text) {
            return tok.encode(row.getString(col));
        }
        List<Object> values = JavaConverters.seqAsJavaList(row.getSeq(col));
        int[] out = new int[values.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = ((Number) values.get(i)).intValue();
        }
        return out;
    }

    /** Mean next-token cross-entropy of {@code ids}, in windows of at most the context length; null under 2 ids. */
    static Double score(Qwen3MoeModel model, int[] ids) {
        if (ids.length < 2) {
            return null;
        }
        int window = model.config().maxPositionEmbeddings();
        double sum = 0;
        long count = 0;
        for (int start = 0; start + 1 < ids.length; start += window - 1) {
            int len = Math.min(window, ids.length - start);
            int[] in = java.util.Arrays.copyOfRange(ids, start, start + len);
            int[] targets = new int[len];
            for (int t = 0; t < len; t++) {
                targets[t] = t + 1 < len ? in[t + 1] : -100;
            }
            sum += model.evaluate(in, targets, 1, len);
            count += len - 1;
        }
        return sum / count;
    }

    @Override
    public Iterator<Row> call(Iterator<Row> rows) throws Exception {
        if (!rows.hasNext()) {
            return rows;
        }
        Qwen3MoeModel model;
        try {
            model = load();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot load the model from " + modelDir, e);
        }
        Tokenizer tok = text ? Tokenizers.load(tokenizer, conf.get()) : null;
        List<Row> out = new ArrayList<>();
        while (rows.hasNext()) {
            Row r = rows.next();
            Object[] values = new Object[r.length() + 1];
            for (int i = 0; i < r.length(); i++) {
                values[i] = r.get(i);
            }
            values[r.length()] = score(model, ids(r, tok));
            out.add(RowFactory.create(values));
        }
        return out.iterator();
    }
}
