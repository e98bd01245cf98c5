package dev.sparkmoe.spark.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import org.junit.jupiter.api.Test;

class TokenizerAndPackerTest {

    @Test
    void byteLevelIsUtf8Bytes() {
        assertArrayEquals(new int[] {104, 105, 0xC3, 0xA9}, new ByteLevelTokenizer().encode("hié"));
        assertEquals(256, new ByteLevelTokenizer().minVocabSize());
    }

    /** A tiny GPT-2 style file: "Ġ" is the byte-level form of a space. */
    static String tokenizerJson(String preTokenizer, String modelType) {
        return "{\"added_tokens\":[{\"id\":9,\"content\":\"<|endoftext|>\",\"special\":true}],"
                + "\"normalizer\":{\"type\":\"NFC\"},"
                + "\"pre_tokenizer\":" + preTokenizer + ","
                + "\"model\":{\"type\":\"" + modelType + "\",\"vocab\":{\"a\":0,\"b\":1,\"Ġ\":2,\"ab\":3,\"Ġab\":4,"
                + "\"c\":5,\"abc\":6,\"!\":7},\"merges\":[\"a b\",\"Ġ ab\",[\"ab\",\"c\"]]}}";
    }

    static HfBpeTokenizer load(String json) throws Exception {
        return HfBpeTokenizer.load(new ByteArrayInputStream(json.getBytes(StandardCharsets.UTF_8)), "tokenizer.json");
    }

    @Test
    void bpeWithByteLevelPreTokenizer() throws Exception {
        HfBpeTokenizer t = load(tokenizerJson("{\"type\":\"ByteLevel\",\"add_prefix_space\":false}", "BPE"));
        // "ab ab abc!" -> pre-tokens "ab", " ab", " abc", "!"; " abc" = Ġ a b c -> (a b) -> (Ġ ab) -> [Ġab, c]:
        // "ab c" never applies because "Ġ ab" ranks first
        assertArrayEquals(new int[] {3, 4, 4, 5, 7}, t.encode("ab ab abc!"));
        assertArrayEquals(new int[] {6}, t.encode("abc"));
        assertArrayEquals(new int[] {3, 9, 1}, t.encode("ab<|endoftext|>b"));
        assertEquals(9, t.eosId());
        assertEquals(10, t.minVocabSize());
    }

    @Test
    void bpeWithSplitThenByteLevelAsQwen() throws Exception {
        String pre = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
                + "\"\\\\s?\\\\p{L}+|\\\\p{P}\"},\"behavior\":\"Isolated\",\"invert\":false},"
                + "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}";
        HfBpeTokenizer t = load(tokenizerJson(pre, "BPE"));
        assertArrayEquals(new int[] {3, 4, 4, 5, 7}, t.encode("ab ab abc!"));
    }

    @Test
    void unsupportedTokenizersFailClearly() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> load(tokenizerJson("{\"type\":\"ByteLevel\"}", "WordPiece")));
        assertTrue(e.getMessage().contains("model type 'WordPiece' is not supported"), e.getMessage());
        IllegalArgumentException e2 = assertThrows(IllegalArgumentException.class,
                () -> load(tokenizerJson("{\"type\":\"Metaspace\"}", "BPE")));
        assertTrue(e2.getMessage().contains("pre-tokenizer 'Metaspace' is not supported"), e2.getMessage());
    }

    @Test
    void packingWorkedExample() {
        SequencePacker p = new SequencePacker(3, 9, true);
        List<int[]> s = p.pack(List.of(new int[] {1, 2}, new int[] {3, 4, 5}, new int[] {6}).iterator());
        assertEquals(2, s.size());
        assertArrayEquals(new int[] {1, 2, 9, 3}, s.get(0));
        assertArrayEquals(new int[] {4, 5, 9, 6}, s.get(1));
        assertEquals(2, p.countSequences(3, 6, 0));
        SequencePacker none = new SequencePacker(3, 9, false);
        List<int[]> n = none.pack(List.of(new int[] {1, 2}, new int[] {3, 4, 5, 6, 7}).iterator());
        assertEquals(1, n.size());
        assertArrayEquals(new int[] {3, 4, 5, 6}, n.get(0));
    }

    @Test
    void orderIsAPermutationFixedBySeedAndRank() {
        int[] a = SequencePacker.order(10, 42, 1, true);
        assertArrayEquals(a, SequencePacker.order(10, 42, 1, true));
        assertTrue(!java.util.Arrays.equals(a, SequencePacker.order(10, 42, 2, true)));
        assertArrayEquals(new int[] {0, 1, 2}, SequencePacker.order(3, 42, 1, false));
        assertEquals(45, java.util.Arrays.stream(a).sum());
    }
}
