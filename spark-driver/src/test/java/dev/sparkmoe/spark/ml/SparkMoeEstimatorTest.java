package dev.sparkmoe.spark.ml;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.spark.testing.SparkTestSession;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.apache.spark.ml.Pipeline;
import org.apache.spark.ml.PipelineModel;
import org.apache.spark.ml.PipelineStage;
import org.apache.spark.ml.feature.SQLTransformer;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * spark-moe at the end of a spark.ml Pipeline: a SQL stage cleans the text, the estimator trains the real trainer
 * on local[4], and the fitted pipeline scores rows: text like the training data gets a lower loss than noise.
 */
class SparkMoeEstimatorTest {
    static SparkSession spark;

    @TempDir
    Path tmp;

    @BeforeAll
    static void start() {
        spark = SparkTestSession.start();
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    @Test
    void pipelineTrainsAndScores() throws Exception {
        List<String> docs = new ArrayList<>();
        String[] s = {"the experts route every token", "a barrier stage starts all ranks together",
            "the loss falls as the model learns"};
        for (int i = 0; i < 48; i++) {
            docs.add("  " + s[i % s.length] + " and " + s[(i + 1) % s.length] + "  ");
        }
        docs.add("x"); // too short to score after training: one token
        Dataset<Row> raw = spark.createDataset(docs, Encoders.STRING()).toDF("raw");
        SQLTransformer clean = new SQLTransformer().setStatement("SELECT trim(raw) AS text FROM __THIS__");
        SparkMoeEstimator moe = new SparkMoeEstimator()
                .setting("model.preset", "qwen3-moe-tiny")
                .setting("layout.world_size", 2)
                .setting("training.steps", 20)
                .setting("training.batch_sequences", 2)
                .setting("training.seq_len", 32)
                .setting("training.lr", 1e-2)
                .setting("training.warmup_steps", 2)
                .setting("training.backend", "cpu")
                .setting("output.progress", false)
                .setting("output.dir", tmp.resolve("out").toUri().toString());
        PipelineModel fitted = new Pipeline().setStages(new PipelineStage[] {clean, moe}).fit(raw);
        SparkMoeModel model = (SparkMoeModel) fitted.stages()[1];
        assertEquals(20, model.history().size());
        assertTrue(Files.exists(Path.of(java.net.URI.create(model.modelDir())).resolve("model.safetensors")));

        SplittableRandom r = new SplittableRandom(3);
        StringBuilder noise = new StringBuilder();
        for (int i = 0; i < 60; i++) {
            noise.append((char) ('!' + r.nextInt(90)));
        }
        Dataset<Row> probe = spark.createDataset(List.of("  the experts route every token and the loss falls  ",
                noise.toString(), "x"), Encoders.STRING()).toDF("raw");
        List<Row> scored = fitted.transform(probe).collectAsList();
        assertEquals(3, scored.size());
        double inDomain = scored.get(0).getDouble(scored.get(0).fieldIndex("loss"));
        double garbage = scored.get(1).getDouble(scored.get(1).fieldIndex("loss"));
        assertTrue(inDomain < garbage, "training-like text should score better: " + inDomain + " vs " + garbage);
        assertNull(scored.get(2).get(scored.get(2).fieldIndex("loss")), "one token has nothing to predict");
    }

    @Test
    void badColumnsAreClearErrors() {
        Dataset<Row> nums = spark.range(3).toDF("n");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> new SparkMoeEstimator().setInputCol("text").fit(nums));
        assertTrue(e.getMessage().contains("'text'") && e.getMessage().contains("n"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> new SparkMoeEstimator().setInputCol("n").fit(nums));
        assertTrue(e.getMessage().contains("bigint") && e.getMessage().contains("string"), e.getMessage());
    }
}
