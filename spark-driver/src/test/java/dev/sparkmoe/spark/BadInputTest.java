package dev.sparkmoe.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.RankTrainerFactory;
import dev.sparkmoe.parallel.train.TrainerSpec;
import dev.sparkmoe.spark.config.ConfigException;
import dev.sparkmoe.spark.testing.BigramFactory;
import dev.sparkmoe.spark.testing.SparkTestSession;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Bad input fails before training starts, with an error that names the problem and the fix; uneven data works. */
class BadInputTest {
    static SparkSession spark;
    static final AtomicInteger CREATED = new AtomicInteger();

    @TempDir
    Path tmp;

    /** Counts trainer creations: none may happen when the input is bad. */
    static final class CountingFactory implements RankTrainerFactory {
        private static final long serialVersionUID = 1L;

        @Override
        public RankTrainer create(TrainerSpec spec, Communicator world) {
            CREATED.incrementAndGet();
            return new BigramFactory().create(spec, world);
        }
    }

    @BeforeAll
    static void start() {
        spark = SparkTestSession.start();
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    Dataset<Row> text(List<String> lines) {
        return spark.createDataset(lines, Encoders.STRING()).toDF("text");
    }

    Dataset<Row> ids(List<int[]> rows) {
        StructType schema = new StructType().add("input_ids", DataTypes.createArrayType(DataTypes.IntegerType));
        List<Row> r = new ArrayList<>();
        for (int[] ids : rows) {
            Integer[] boxed = new Integer[ids.length];
            for (int i = 0; i < ids.length; i++) {
                boxed[i] = ids[i];
            }
            r.add(RowFactory.create((Object) boxed));
        }
        return spark.createDataFrame(r, schema);
    }

    static List<String> lines(int n, int len) {
        List<String> l = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            l.add("x".repeat(len - 3) + (i % 10) + "yz".substring(0, 2));
        }
        return l;
    }

    SparkMoeTrainer.Builder job(Dataset<Row> data) {
        return SparkMoeTrainer.builder().spark(spark).dataset(data).trainerFactory(new CountingFactory())
                .set("model.preset", "qwen3-moe-tiny")
                .set("model.config.vocab_size", 260)
                .set("layout.world_size", 4)
                .set("training.steps", 3)
                .set("training.batch_sequences", 2)
                .set("training.seq_len", 16)
                .set("training.lr", 1.0)
                .set("training.min_lr", 0.1)
                .set("training.comm_timeout_s", 30)
                .set("output.progress", false)
                .set("output.dir", tmp.resolve("out").toUri().toString());
    }

    String failsBeforeTraining(SparkMoeTrainer.Builder b) {
        int before = CREATED.get();
        ConfigException e = assertThrows(ConfigException.class, b::fit);
        assertEquals(before, CREATED.get(), "no trainer may be built for bad input");
        assertFalse(Files.exists(tmp.resolve("out")), "nothing may be written for bad input, not even a run folder");
        return e.getMessage();
    }

    @Test
    void emptyDataset() {
        String m = failsBeforeTraining(job(text(List.of())));
        assertTrue(m.contains("is empty") && m.contains("0 rows"), m);
    }

    @Test
    void rowsShorterThanTheContext() {
        String m = failsBeforeTraining(job(text(lines(40, 30))).set("data.packing", "none")
                .set("training.seq_len", 64));
        assertTrue(m.contains("shorter than the context") && m.contains("65 tokens") && m.contains("row 0"), m);
        String m2 = failsBeforeTraining(job(text(List.of("tiny"))).set("training.seq_len", 64));
        assertTrue(m2.contains("make no sequence") && m2.contains("lower training.seq_len"), m2);
    }

    @Test
    void tokenIdsOutsideTheVocabulary() {
        List<int[]> rows = new ArrayList<>();
        for (int i = 0; i < 40; i++) {
            int[] r = new int[40];
            for (int k = 0; k < r.length; k++) {
                r[k] = (i * 7 + k) % 200;
            }
            rows.add(r);
        }
        rows.get(13)[5] = 999;
        String m = failsBeforeTraining(job(ids(rows)));
        assertTrue(m.contains("token id 999 in row 13") && m.contains("vocab_size 260"), m);
    }

    @Test
    void missingColumn() {
        String m = failsBeforeTraining(job(text(lines(40, 30))).set("data.column", "body"));
        assertTrue(m.contains("data.column = 'body'") && m.contains("[text]"), m);
    }

    @Test
    void moreRanksThanSlots() {
        String m = failsBeforeTraining(job(text(lines(40, 30))).set("layout.world_size", 5));
        assertTrue(m.contains("layout.world_size = 5") && m.contains("offers 4"), m);
    }

    @Test
    void epDegreeThatDoesNotFit() {
        String m = failsBeforeTraining(job(text(lines(40, 30))).set("layout.ep", 4)
                .set("model.config.num_experts", 6));
        assertTrue(m.contains("ep (4) must divide num_experts (6)") && m.contains("[1, 2]"), m);
        String m2 = failsBeforeTraining(job(text(lines(40, 30))).set("layout.ep", 3));
        assertTrue(m2.contains("layout.ep = 3") && m2.contains("must divide layout.world_size (4)"), m2);
    }

    @Test
    void unknownKeyAndBadValue() {
        ConfigException e = assertThrows(ConfigException.class, () -> job(text(lines(4, 30)))
                .set("training.step", 5));
        assertTrue(e.getMessage().contains("did you mean 'training.steps'"), e.getMessage());
        String m = failsBeforeTraining(job(text(lines(40, 30))).set("training.lr", "fast"));
        assertTrue(m.contains("training.lr = 'fast'") && m.contains("expected a number"), m);
    }

    @Test
    void ranksWithoutDataStillTakePartAndNothingHangs() throws Exception {
        // 2 long documents on 4 ranks: ranks 2 and 3 get nothing and step with empty batches
        TrainResult r = job(text(List.of("a".repeat(200), "b".repeat(200)))).set("checkpoint.every", 2).fit();
        assertEquals(3, r.steps());
        assertEquals(List.of(11L, 11L, 0L, 0L), r.data().stream().map(d -> d.sequences()).toList());
        assertEquals(2 * 2 * 16, r.last().tokens(), "two ranks with data, 2 sequences of 16 predicted tokens each");
    }
}
