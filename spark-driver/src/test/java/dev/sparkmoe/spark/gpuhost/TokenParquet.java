package dev.sparkmoe.spark.gpuhost;

import dev.sparkmoe.spark.data.ByteLevelTokenizer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

/**
 * Writes the token-id DataFrame the GPU host's Spark job trains on ({@code gpu-executor/scripts/spark-gpu-run.sh}):
 * a parquet folder with one {@code input_ids array<int>} row per line of a text file (the byte-level tokenizer's
 * ids), the text repeated until the rows hold at least {@code --min-tokens} ids.
 *
 * <pre>
 * spark-submit --class dev.sparkmoe.spark.gpuhost.TokenParquet tools.jar --text FILE --out DIR --min-tokens N
 * </pre>
 */
public final class TokenParquet {
    private TokenParquet() {
    }

    public static void main(String[] args) throws Exception {
        String text = null;
        String out = null;
        long minTokens = 0;
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--text" -> text = args[i + 1];
                case "--out" -> out = args[i + 1];
                case "--min-tokens" -> minTokens = Long.parseLong(args[i + 1]);
                default -> throw new IllegalArgumentException("unknown option " + args[i]
                        + "; usage: --text FILE --out DIR --min-tokens N");
            }
        }
        if (text == null || out == null) {
            throw new IllegalArgumentException("usage: --text FILE --out DIR --min-tokens N");
        }
        SparkSession spark = SparkSession.builder().appName("spark-moe token parquet").getOrCreate();
        try {
            long rows = write(spark, Path.of(text), out, minTokens);
            System.out.println("wrote " + rows + " rows of token ids to " + out);
        } finally {
            spark.stop();
        }
    }

    /** Writes the rows; returns how many. */
    static long write(SparkSession spark, Path text, String out, long minTokens) throws java.io.IOException {
        List<String> lines = Files.readAllLines(text).stream().filter(l -> !l.isBlank()).toList();
        if (lines.isEmpty()) {
            throw new IllegalArgumentException(text + " has no text");
        }
        ByteLevelTokenizer tok = new ByteLevelTokenizer();
        List<Row> rows = new ArrayList<>();
        long tokens = 0;
        do {
            for (String l : lines) {
                int[] ids = tok.encode(l);
                Integer[] boxed = new Integer[ids.length];
                for (int i = 0; i < ids.length; i++) {
                    boxed[i] = ids[i];
                }
                rows.add(RowFactory.create((Object) boxed));
                tokens += ids.length + 1;
            }
        } while (tokens < minTokens);
        StructType schema = new StructType().add("input_ids", DataTypes.createArrayType(DataTypes.IntegerType), false);
        Dataset<Row> df = spark.createDataFrame(rows, schema);
        df.coalesce(1).write().mode("overwrite").parquet(out);
        return rows.size();
    }
}
