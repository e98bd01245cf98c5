package dev.sparkmoe.notebooks;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** Executes jupyter/train-from-dataframe.ipynb cell by cell in JShell and checks what it reports. */
class JupyterNotebookTest {
    static final Path NOTEBOOK = Path.of("jupyter/train-from-dataframe.ipynb");

    @AfterEach
    void stopSpark() {
        // The notebook made (or reused) the session; stop it so the next test starts its own.
        for (var s : List.of(SparkSession.getActiveSession(), SparkSession.getDefaultSession())) {
            if (s.isDefined()) {
                s.get().stop();
            }
        }
    }

    @Test
    void trainFromDataFrameRunsAndTheLossFalls() throws Exception {
        Notebook nb = Notebook.readIpynb(NOTEBOOK);
        List<NotebookRunner.Executed> run;
        try (Kernel k = new JShellKernel()) {
            run = NotebookRunner.run(nb, k);
        }
        Timings.print(nb, run);
        assertEquals(nb.codeCells().size(), run.size());
        String out = NotebookRunner.allOutput(run);
        Outputs.assertLossFell(out);
        Path modelDir = Path.of(Outputs.group(out, "model dir: (.+)"));
        assertTrue(Files.isRegularFile(modelDir.resolve("config.json")), "config.json in " + modelDir);
        assertTrue(Files.size(modelDir.resolve("model.safetensors")) > 0, "model.safetensors in " + modelDir);
        assertEquals("config.json, model.safetensors", Outputs.group(out, "model files: (.+)"));
        assertTrue(out.contains("step 12  loss"), "every step's loss is printed by onStep:\n" + out);
        assertTrue(out.contains("display: image/png 1000x1100, "), "the metrics plot is shown inline:\n" + out);
    }
}
