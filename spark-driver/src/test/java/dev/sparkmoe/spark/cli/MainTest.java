package dev.sparkmoe.spark.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.spark.testing.SparkTestSession;
import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import javax.imageio.ImageIO;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The CLI end to end: YAML + --set, parquet data written by Spark, the trainer factory by class name; run folders and
 * --resume; every user error ending in one error: line; help.
 */
class MainTest {
    @TempDir
    Path tmp;

    int run(ByteArrayOutputStream out, ByteArrayOutputStream err, String... args) {
        return Main.run(args, new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8));
    }

    /** What one command line printed and returned. */
    record Ran(int code, String out, String err) {
        String lastErrLine() {
            String[] l = err.strip().split("\n");
            return l[l.length - 1];
        }
    }

    Ran cli(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int rc = run(out, err, args);
        return new Ran(rc, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    Path yaml(String... extraLines) throws Exception {
        SparkSession spark = SparkTestSession.start(); // the CLI's getOrCreate picks it up and stops it at the end
        List<String> docs = new ArrayList<>();
        for (int i = 0; i < 60; i++) {
            docs.add("document number " + i + " says hello to the experts");
        }
        Path data = tmp.resolve("corpus.parquet");
        if (!Files.exists(data)) {
            spark.createDataset(docs, Encoders.STRING()).toDF("text").write().parquet(data.toString());
        }
        Path yaml = tmp.resolve("run.yaml");
        List<String> lines = new ArrayList<>(List.of(
                "model: {preset: qwen3-moe-tiny, config: {vocab_size: 260}}",
                "data: {path: '" + data.toUri() + "', format: parquet}",
                "layout: {world_size: 2}",
                "training:",
                "  steps: 4",
                "  batch_sequences: 2",
                "  seq_len: 16",
                "  lr: 20.0",
                "  min_lr: 1.0",
                "  trainer_factory: dev.sparkmoe.spark.testing.BigramFactory",
                "spark: {master: 'local[4]'}",
                "checkpoint: {every: 2}",
                "output: {dir: '" + tmp.resolve("out").toUri() + "', metrics_file: '" + tmp.resolve("m.jsonl") + "'}"));
        lines.addAll(List.of(extraLines));
        Files.writeString(yaml, String.join("\n", lines) + "\n");
        return yaml;
    }

    @Test
    void theSameCommandTwiceTrainsTwiceAndResumeIsAChoice() throws Exception {
        Path yaml = yaml();
        Ran first = cli("train", yaml.toString(), "--set", "training.steps=3");
        assertEquals(0, first.code(), first.err());
        assertTrue(first.out().contains("[spark-moe] new run run-001 in "), first.out());
        assertTrue(first.out().contains("trained 3 steps in 1 attempt(s)"), first.out());
        assertTrue(first.out().contains("[spark-moe] step 3/3"), first.out());
        assertTrue(Files.exists(tmp.resolve("out/run-001/model/model.safetensors")));
        BufferedImage png = ImageIO.read(tmp.resolve("out/run-001/metrics.png").toFile());
        assertEquals(1000, png.getWidth());

        // the same command again trains again, in a folder of its own, and shows all of its steps
        yaml();
        Ran second = cli("train", yaml.toString(), "--set", "training.steps=3");
        assertEquals(0, second.code(), second.err());
        assertTrue(second.out().contains("[spark-moe] new run run-002 in "), second.out());
        assertTrue(second.out().contains("[spark-moe] step 1/3") && second.out().contains("step 3/3"), second.out());

        // --resume continues the newest run from its checkpoint: only the new steps are shown
        yaml();
        Ran resumed = cli("train", yaml.toString(), "--set", "training.steps=4", "--resume");
        assertEquals(0, resumed.code(), resumed.err());
        assertTrue(resumed.out().contains("[spark-moe] continuing run-002 in ") && resumed.out().contains(
                "from its checkpoint at step 3 of 4"), resumed.out());
        assertFalse(resumed.out().contains("step 3/4"), resumed.out());
        assertTrue(resumed.out().contains("step 4/4"), resumed.out());

        // the README's override right after: another layout is simply a new run
        yaml();
        Ran other = cli("train", yaml.toString(), "--set", "layout.world_size=4", "--set", "layout.ep=2");
        assertEquals(0, other.code(), other.err());
        assertTrue(other.out().contains("new run run-003"), other.out());

        // the metrics file tells the runs apart: 3 + 3 + 1 + 4 records under 4 run ids
        List<String> records = Files.readAllLines(tmp.resolve("m.jsonl"));
        assertEquals(11, records.size(), String.join("\n", records));
        assertEquals(4, records.stream().map(r -> r.substring(0, r.indexOf(",\"step\""))).distinct().count(),
                String.join("\n", records));

        // resuming at another layout: one error line naming the key, the value and the fix, no stack trace
        yaml();
        Ran mismatch = cli("train", yaml.toString(), "--set", "training.steps=6", "--resume=run-003",
                "--set", "layout.world_size=2", "--set", "layout.ep=1");
        assertEquals(1, mismatch.code(), mismatch.err());
        assertTrue(mismatch.lastErrLine().startsWith("error: training failed in attempt 1 of 3 and was not retried")
                && mismatch.lastErrLine().contains("checkpoint.resume = run-003")
                && mismatch.lastErrLine().contains("drop --resume"), mismatch.err());
        assertFalse(mismatch.err().contains("\tat "), mismatch.err());
    }

    /** Every error a user can cause: exit 2, one error: line at the end naming what to change, no stack trace. */
    @Test
    void badInputEndsInOneErrorLine() throws Exception {
        Path yaml = yaml();
        assertError(cli("train", tmp.resolve("nope.yaml").toString()), "error: config file ", "nope.yaml does not exist");
        Path tabs = tmp.resolve("tabs.yaml");
        Files.writeString(tabs, "training:\n\tsteps: 3\n");
        assertError(cli("train", tabs.toString()), "error: " + tabs + ", line 2, column 1: not valid YAML");
        Path twice = tmp.resolve("twice.yaml");
        Files.writeString(twice, Files.readString(yaml) + "training: {steps: 9}\n");
        assertError(cli("train", twice.toString()), "error: " + twice + ", line 14", "duplicate key training",
                "merge the two");
        Path value = tmp.resolve("value.yaml");
        Files.writeString(value, "model: qwen3-moe-tiny\n");
        assertError(cli("train", value.toString()), "error: model = 'qwen3-moe-tiny': 'model' is a section",
                "write it as model: {preset: qwen3-moe-tiny}");
        assertError(cli("train", yaml.toString(), "--set", "training.setps=3"), "did you mean 'training.steps'",
                "spark-moe keys lists every key");
        assertError(cli("train", yaml.toString(), "--set", "training.seq_len=1024"),
                "error: training.seq_len = 1024: longer than the model's max_position_embeddings (512)");
        assertError(cli("train", yaml.toString(), "--set", "training.trainer_factory=com.example.Nope"),
                "error: training.trainer_factory = 'com.example.Nope': class not found");
        assertError(cli("train", yaml.toString(), "--resume"),
                "error: checkpoint.resume = 'latest': output.dir ", "holds no run folder");
        yaml();
        assertError(cli("train", yaml.toString(), "--set", "data.path=" + tmp.resolve("missing.txt")),
                "error: data.path = '" + tmp.resolve("missing.txt") + "': no such file or directory");
        assertFalse(Files.exists(tmp.resolve("out")), "bad input trains nothing and claims no run folder");
        // no session to reuse: the CLI starts its own from spark.master
        for (var s : List.of(SparkSession.getActiveSession(), SparkSession.getDefaultSession())) {
            if (s.isDefined()) {
                s.get().stop();
            }
        }
        assertError(cli("train", yaml.toString(), "--set", "spark.master=locl[2]"),
                "error: spark.master = 'locl[2]': Spark did not start: ", "check spark.master");
    }

    private static void assertError(Ran r, String... parts) {
        assertEquals(2, r.code(), r.out() + r.err());
        String last = r.lastErrLine();
        assertTrue(last.startsWith("error: "), r.err());
        for (String p : parts) {
            assertTrue(last.contains(p), "'" + p + "' in:\n" + r.err());
        }
        assertFalse(r.err().contains("\tat "), "no stack trace:\n" + r.err());
    }

    @Test
    void helpAndUsage() {
        Ran help = cli("help");
        assertEquals(0, help.code());
        assertTrue(help.out().contains("train") && help.out().contains("launch") && help.out().contains("keys"),
                help.out());
        Ran trainHelp = cli("train", "--help");
        assertEquals(0, trainHelp.code());
        assertTrue(trainHelp.out().contains("--resume[=RUN]") && trainHelp.out().contains("--set=KEY=VALUE"),
                trainHelp.out());
        assertEquals(trainHelp.out(), cli("help", "train").out());
        assertFalse(trainHelp.out().contains("\u001b["), "no ANSI codes when the output is not a terminal");
        Ran none = cli();
        assertEquals(2, none.code());
        assertTrue(none.lastErrLine().startsWith("error: no command given"), none.err());
        Ran unknown = cli("trian");
        assertEquals(2, unknown.code());
        assertTrue(unknown.err().contains("Did you mean: spark-moe plan or spark-moe train?"), unknown.err());
        assertTrue(unknown.lastErrLine().startsWith("error: Unmatched argument at index 0: 'trian'"), unknown.err());
        Ran noConfig = cli("train");
        assertEquals(2, noConfig.code());
        assertTrue(noConfig.lastErrLine().startsWith("error: Missing required parameter: 'CONFIG.yaml'"),
                noConfig.err());
        Ran version = cli("train", "--version");
        assertEquals(0, version.code());
        assertTrue(version.out().startsWith("spark-moe "), version.out());
        Ran keys = cli("keys");
        assertEquals(0, keys.code());
        assertTrue(keys.out().contains("`layout.ep`"));
    }

    @Test
    void stepAndLaunchAreSubcommandsOfTheSameCli() throws Exception {
        Path fixture = dev.sparkmoe.core.model.Fixtures.tiny();
        Path stepOut = tmp.resolve("step.safetensors");
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int rc = run(out, err, "step", "--checkpoint", fixture.toString(), "--inputs",
                fixture.resolve("io.safetensors").toString(), "--out", stepOut.toString());
        assertEquals(0, rc, err.toString());
        assertTrue(Files.size(stepOut) > 0);
        // launch: two CPU ranks in separate processes running the collective smoke test
        out.reset();
        err.reset();
        rc = run(out, err, "launch", "--nproc", "2", "--backend", "cpu");
        String o = out.toString(StandardCharsets.UTF_8);
        assertEquals(0, rc, o + err);
        assertTrue(o.contains("[rank 1] rank 1/2: SMOKE OK"), o);
        // bad options are usage errors (exit 2) naming the problem
        err.reset();
        assertEquals(2, run(out, err, "step", "--checkpoint", fixture.toString()));
        assertTrue(err.toString().contains("error: Missing required options: '--inputs=FILE', '--out=FILE'"),
                err.toString());
    }
}
