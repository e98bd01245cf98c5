package dev.sparkmoe.spark.bench;

import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer;
import dev.sparkmoe.spark.data.HfBpeTokenizer;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.ToIntFunction;
import java.util.zip.GZIPInputStream;
import org.openjdk.jmh.annotations.AuxCounters;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Threads;
import org.openjdk.jmh.annotations.Warmup;

/**
 * Qwen3's tokenizer on one thread: a text file encoded line by line (split at \n, empty lines dropped; each line a
 * document, as data.tokenizer does on the executors), by spark-moe's {@link HfBpeTokenizer} and by DJL's JNI binding of Hugging Face tokenizers
 * (Rust), in the same JVM. The {@code bytes} counter is the file's UTF-8 bytes per encoded file, so its rate divided
 * by 1e6 is MB/s per core. Both keep a cache of words already merged, as in real use.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.Throughput)
@OutputTimeUnit(TimeUnit.SECONDS)
@Warmup(iterations = 3, time = 3)
@Measurement(iterations = 5, time = 3)
@Fork(value = 1, jvmArgsAppend = {"-Xmx4g"})
@Threads(1)
public class TokenizerBench {
    /** A text file, one document per line (relative to the directory the benchmark runs in). */
    @Param({"data/europarl-en.txt"})
    public String file;

    /** spark-moe: HfBpeTokenizer; djl: ai.djl.huggingface.tokenizers (Hugging Face tokenizers over JNI). */
    @Param({"spark-moe", "djl"})
    public String impl;

    @Param({"spark-driver/src/test/resources/tokenizers/qwen3/tokenizer.json.gz"})
    public String tokenizer;

    private List<String> lines;
    private long fileBytes;
    private ToIntFunction<String> encode;
    private HuggingFaceTokenizer djl;
    private Path unpacked;

    /** Bytes of text encoded, reported as a rate. */
    @State(Scope.Thread)
    @AuxCounters(AuxCounters.Type.OPERATIONS)
    public static class Bytes {
        public long bytes;
    }

    @Setup(Level.Trial)
    public void setUp() throws IOException {
        // as the Rust library's measurement does: the file split at \n, empty lines dropped, the whole file's bytes
        String text = Files.readString(Path.of(file), StandardCharsets.UTF_8);
        lines = java.util.Arrays.stream(text.split("\n")).filter(l -> !l.isEmpty()).toList();
        fileBytes = text.getBytes(StandardCharsets.UTF_8).length;
        unpacked = Files.createTempFile("qwen3-tokenizer", ".json");
        try (InputStream in = new GZIPInputStream(Files.newInputStream(Path.of(tokenizer)))) {
            Files.copy(in, unpacked, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
        }
        if ("djl".equals(impl)) {
            djl = HuggingFaceTokenizer.newInstance(unpacked, Map.of("addSpecialTokens", "false",
                    "truncation", "false", "modelMaxLength", "100000000"));
            encode = s -> djl.encode(s, false, false).getIds().length;
        } else {
            HfBpeTokenizer t;
            try (InputStream in = Files.newInputStream(unpacked)) {
                t = HfBpeTokenizer.load(in, tokenizer);
            }
            encode = s -> t.encode(s).length;
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() throws IOException {
        if (djl != null) {
            djl.close();
        }
        Files.deleteIfExists(unpacked);
    }

    @Benchmark
    public long encodeFile(Bytes counter) {
        long tokens = 0;
        for (String l : lines) {
            tokens += encode.applyAsInt(l);
        }
        counter.bytes += fileBytes;
        return tokens;
    }
}
