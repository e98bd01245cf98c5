package dev.sparkmoe.spark.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparkmoe.spark.testing.SparkTestSession;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The CLI end to end: YAML + --set, parquet data written by Spark, the trainer factory by class name. */
class MainTest {
    @TempDir
    Path tmp;

    int run(ByteArrayOutputStream out, ByteArrayOutputStream err, String... args) {
        return Main.run(args, new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8));
    }

    @Test
    void trainsFromAYamlFileAndRejectsBadConfigs() throws Exception {
        SparkSession spark = SparkTestSession.start(); // the CLI's getOrCreate picks it up and stops it at the end
        List<String> docs = new ArrayList<>();
        for (int i = 0; i < 60; i++) {
            docs.add("document number " + i + " says hello to the experts");
        }
        Path data = tmp.resolve("corpus.parquet");
        spark.createDataset(docs, Encoders.STRING()).toDF("text").write().parquet(data.toString());
        Path yaml = tmp.resolve("run.yaml");
        Files.writeString(yaml, String.join("\n",
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
                "output: {dir: '" + tmp.resolve("out").toUri() + "', metrics_file: '" + tmp.resolve("m.jsonl") + "'}",
                ""));
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int rc = run(out, err, "train", yaml.toString(), "--set", "training.steps=3");
        assertEquals(0, rc, err.toString());
        String o = out.toString(StandardCharsets.UTF_8);
        assertTrue(o.contains("trained 3 steps in 1 attempt(s)"), o);
        assertTrue(o.contains("[spark-moe] step 3/3"), o);
        assertTrue(Files.exists(tmp.resolve("out/model/model.safetensors")));
        assertEquals(3, Files.readAllLines(tmp.resolve("m.jsonl")).size());

        ByteArrayOutputStream err2 = new ByteArrayOutputStream();
        assertEquals(2, run(new ByteArrayOutputStream(), err2, "train", yaml.toString(), "--set", "training.setps=3"));
        assertTrue(err2.toString().contains("did you mean 'training.steps'"), err2.toString());
        ByteArrayOutputStream err3 = new ByteArrayOutputStream();
        assertEquals(2, run(new ByteArrayOutputStream(), err3, "train", yaml.toString(), "--set",
                "training.trainer_factory=com.example.Nope"));
        assertTrue(err3.toString().contains("class not found"), err3.toString());
        ByteArrayOutputStream keys = new ByteArrayOutputStream();
        assertEquals(0, run(keys, new ByteArrayOutputStream(), "keys"));
        assertTrue(keys.toString().contains("`layout.ep`"));
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
        assertTrue(err.toString().contains("--out"), err.toString());
    }
}
