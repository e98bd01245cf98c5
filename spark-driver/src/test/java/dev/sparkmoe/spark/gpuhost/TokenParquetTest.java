package dev.sparkmoe.spark.gpuhost;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The GPU host's token parquet: one row of byte-level ids per line, the text repeated up to the tokens asked for. */
class TokenParquetTest {
    @TempDir
    Path tmp;

    @Test
    void writesTheLinesAsTokenIdRowsRepeatedUpToTheTokensAskedFor() throws Exception {
        Path text = Files.writeString(tmp.resolve("t.txt"), "ab\n\nçé\n", StandardCharsets.UTF_8);
        // as spark-submit runs it on the GPU host: Spark's default serializer
        SparkSession spark = SparkSession.builder().master("local[2]").appName("token-parquet-test")
                .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
                .config("spark.driver.bindAddress", "127.0.0.1").getOrCreate();
        try {
            String out = tmp.resolve("ids").toUri().toString();
            // two lines of 2 and 4 bytes (+1 for the separator each): 8 tokens a pass, 3 passes for 20
            assertEquals(6, TokenParquet.write(spark, text, out, 20));
            List<Row> rows = spark.read().parquet(out).collectAsList();
            assertEquals(6, rows.size());
            assertEquals(List.of(97, 98), rows.get(0).getList(0));
            assertEquals(List.of(0xC3, 0xA7, 0xC3, 0xA9), rows.get(1).getList(0));
            assertEquals("array<int>", spark.read().parquet(out).schema().apply("input_ids").dataType().simpleString());
        } finally {
            spark.stop();
        }
    }
}
