package dev.sparkmoe.notebooks;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Executes zeppelin/train-from-dataframe.zpln paragraph by paragraph in a Scala interpreter and checks its output. */
class ZeppelinNoteTest {
    static final Path NOTE = Path.of("zeppelin/train-from-dataframe.zpln");

    @TempDir
    Path replClasses;

    /** A Spark session as Zeppelin's Spark interpreter makes it: serving the interpreter's classes to executors. */
    static SparkSession zeppelinSession(ScalaKernel k) {
        return SparkSession.builder()
                .master("local[4]")
                .appName("zeppelin spark interpreter")
                .config("spark.repl.class.outputDir", k.outputDir().toString())
                .config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
                .config("spark.kryo.registrator", "dev.sparkmoe.spark.kryo.SparkMoeKryoRegistrator")
                .config("spark.sql.shuffle.partitions", "4")
                .getOrCreate();
    }

    @Test
    void trainFromRddOfTokenIdsRunsAndTheLossFalls() throws Exception {
        Notebook nb = Notebook.readZpln(NOTE);
        List<NotebookRunner.Executed> run;
        try (ScalaKernel k = new ScalaKernel(replClasses)) {
            SparkSession spark = zeppelinSession(k);
            try {
                k.zeppelinPrelude();
                run = NotebookRunner.run(nb, k);
            } finally {
                spark.stop();
            }
        }
        Timings.print(nb, run);
        assertEquals(nb.codeCells().size(), run.size());
        String out = NotebookRunner.allOutput(run);
        Outputs.assertLossFell(out);
        assertTrue(out.contains("%table step\tloss\taux_loss\tlr\n1\t"), "a %table of the loss curve:\n" + out);
        assertTrue(out.contains("step 12  loss"), "every step's loss is printed by onStep:\n" + out);
        Path modelDir = Path.of(Outputs.group(out, "model dir: (.+)"));
        assertTrue(Files.isRegularFile(modelDir.resolve("config.json")), "config.json in " + modelDir);
        assertTrue(Files.size(modelDir.resolve("model.safetensors")) > 0, "model.safetensors in " + modelDir);
        assertEquals("config.json, model.safetensors", Outputs.group(out, "model files: (.+)"));
        // the metrics plot, shown inline as a %html result holding the PNG
        String png = Outputs.group(out, "%html <img width=\"800\" src=\"data:image/png;base64,([A-Za-z0-9+/=]+)\"/>");
        java.awt.image.BufferedImage plot = javax.imageio.ImageIO.read(
                new java.io.ByteArrayInputStream(java.util.Base64.getDecoder().decode(png)));
        assertEquals(1000, plot.getWidth());
        assertEquals(1100, plot.getHeight());
    }
}
