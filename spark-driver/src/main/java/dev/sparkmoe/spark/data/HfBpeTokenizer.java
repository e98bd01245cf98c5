package dev.sparkmoe.spark.data;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.text.Normalizer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A Hugging Face {@code tokenizer.json} with a byte-level BPE model, as GPT-2, Llama 3 and Qwen use: optional NFC/NFKC
 * normalizer; pre-tokenizer ByteLevel (GPT-2 regex or none) or a Sequence of Split(regex, Isolated) and ByteLevel;
 * BPE merges by rank; added tokens matched verbatim before anything else. Anything else in the file is rejected
 * with an error that names the unsupported part.
 */
public final class HfBpeTokenizer implements Tokenizer {
    private static final long serialVersionUID = 1L;

    static final String GPT2_PATTERN =
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

    private final String source;
    private final Map<String, Integer> vocab;
    private final Map<String, Integer> mergeRanks; // "a b" -> rank
    private final List<String> splitPatterns; // applied in order, Isolated behaviour
    private final boolean addPrefixSpace;
    private final boolean ignoreMerges;
    private final Normalizer.Form normalization; // null: none
    private final Map<String, Integer> addedTokens;
    private final int eos;
    private final int maxId;
    private transient Pattern addedPattern;
    private transient volatile List<Pattern> compiled;
    private transient volatile Map<String, int[]> cache;
    private transient int[] byteTokens; // byte value -> id of its byte-level symbol
    private transient MergeTable merges;
    private static final int CACHE_ENTRIES = 100_000;

    private static final char[] BYTE_TO_CHAR = new char[256];

    static {
        List<Integer> bs = new ArrayList<>();
        for (int b = '!'; b <= '~'; b++) {
            bs.add(b);
        }
        for (int b = 0xA1; b <= 0xAC; b++) {
            bs.add(b);
        }
        for (int b = 0xAE; b <= 0xFF; b++) {
            bs.add(b);
        }
        int n = 0;
        for (int b = 0; b < 256; b++) {
            if (bs.contains(b)) {
                BYTE_TO_CHAR[b] = (char) b;
            } else {
                BYTE_TO_CHAR[b] = (char) (256 + n++);
            }
        }
    }

    private HfBpeTokenizer(String source, Map<String, Integer> vocab, Map<String, Integer> mergeRanks,
                           List<String> splitPatterns, boolean addPrefixSpace, boolean ignoreMerges,
                           Normalizer.Form normalization, Map<String, Integer> addedTokens) {
        this.source = source;
        this.vocab = vocab;
        this.mergeRanks = mergeRanks;
        this.splitPatterns = splitPatterns;
        this.addPrefixSpace = addPrefixSpace;
        this.ignoreMerges = ignoreMerges;
        this.normalization = normalization;
        this.addedTokens = addedTokens;
        int e = -1;
        for (String name : List.of("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")) {
            if (addedTokens.containsKey(name)) {
                e = addedTokens.get(name);
                break;
            }
            if (vocab.containsKey(name)) {
                e = vocab.get(name);
                break;
            }
        }
        this.eos = e;
        int m = 0;
        for (int v : vocab.values()) {
            m = Math.max(m, v);
        }
        for (int v : addedTokens.values()) {
            m = Math.max(m, v);
        }
        this.maxId = m;
    }

    /** Parses a tokenizer.json; {@code source} names it in errors. */
    public static HfBpeTokenizer load(InputStream in, String source) throws IOException {
        JsonNode root = new ObjectMapper().readTree(in);
        JsonNode model = root.path("model");
        String type = model.path("type").asText("BPE");
        if (!"BPE".equals(type)) {
            throw new IllegalArgumentException(source + ": tokenizer model type '" + type
                    + "' is not supported; only byte-level BPE (GPT-2, Llama 3, Qwen) is. Use data.tokenizer=byte "
                    + "or pre-tokenize into an input_ids column");
        }
        if (model.path("byte_fallback").asBoolean(false)) {
            throw new IllegalArgumentException(source + ": BPE with byte_fallback (SentencePiece style) is not "
                    + "supported; pre-tokenize into an input_ids column");
        }
        Map<String, Integer> vocab = new HashMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = model.path("vocab").fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            vocab.put(e.getKey(), e.getValue().asInt());
        }
        Map<String, Integer> ranks = new HashMap<>();
        int r = 0;
        for (JsonNode m : model.path("merges")) {
            String pair = m.isArray() ? m.get(0).asText() + " " + m.get(1).asText() : m.asText();
            ranks.putIfAbsent(pair, r++);
        }
        Normalizer.Form form = null;
        JsonNode norm = root.path("normalizer");
        if (!norm.isMissingNode() && !norm.isNull()) {
            String nt = norm.path("type").asText();
            if ("NFC".equals(nt)) {
                form = Normalizer.Form.NFC;
            } else if ("NFKC".equals(nt)) {
                form = Normalizer.Form.NFKC;
            } else {
                throw new IllegalArgumentException(source + ": normalizer '" + nt + "' is not supported (NFC, NFKC "
                        + "or none are)");
            }
        }
        List<String> patterns = new ArrayList<>();
        boolean[] prefix = {false};
        JsonNode pre = root.path("pre_tokenizer");
        if (pre.isMissingNode() || pre.isNull()) {
            throw new IllegalArgumentException(source + ": no pre_tokenizer; only ByteLevel BPE tokenizers are "
                    + "supported");
        }
        List<JsonNode> steps = new ArrayList<>();
        if ("Sequence".equals(pre.path("type").asText())) {
            pre.path("pretokenizers").forEach(steps::add);
        } else {
            steps.add(pre);
        }
        boolean sawByteLevel = false;
        for (JsonNode s : steps) {
            String st = s.path("type").asText();
            switch (st) {
                case "ByteLevel":
                    sawByteLevel = true;
                    prefix[0] = s.path("add_prefix_space").asBoolean(false);
                    if (s.path("use_regex").asBoolean(true)) {
                        patterns.add(GPT2_PATTERN);
                    }
                    break;
                case "Split":
                    String behavior = s.path("behavior").asText("Isolated");
                    if (!"Isolated".equals(behavior) || s.path("invert").asBoolean(false)) {
                        throw new IllegalArgumentException(source + ": Split pre-tokenizer with behavior '" + behavior
                                + "'" + (s.path("invert").asBoolean(false) ? " inverted" : "")
                                + " is not supported (only Isolated)");
                    }
                    JsonNode p = s.path("pattern");
                    patterns.add(p.has("Regex") ? p.get("Regex").asText() : Pattern.quote(p.path("String").asText()));
                    break;
                default:
                    throw new IllegalArgumentException(source + ": pre-tokenizer '" + st + "' is not supported; "
                            + "supported are ByteLevel and Split(Isolated) inside a Sequence");
            }
        }
        if (!sawByteLevel) {
            throw new IllegalArgumentException(source + ": the pre-tokenizer has no ByteLevel step; only byte-level "
                    + "BPE tokenizers are supported");
        }
        Map<String, Integer> added = new HashMap<>();
        for (JsonNode a : root.path("added_tokens")) {
            added.put(a.path("content").asText(), a.path("id").asInt());
        }
        return new HfBpeTokenizer(source, vocab, ranks, patterns, prefix[0],
                model.path("ignore_merges").asBoolean(false), form, added);
    }

    /** Builds the derived tables once per JVM (they are not serialized: executors rebuild them from the fields). */
    private void init() {
        if (compiled != null) {
            return;
        }
        synchronized (this) {
            if (compiled != null) {
                return;
            }
            List<Pattern> c = new ArrayList<>();
            for (String p : splitPatterns) {
                c.add(Pattern.compile(p, Pattern.UNICODE_CHARACTER_CLASS));
            }
            List<String> names = new ArrayList<>(addedTokens.keySet());
            names.sort((a, b) -> b.length() - a.length());
            StringBuilder alt = new StringBuilder();
            for (String n : names) {
                alt.append(alt.length() == 0 ? "" : "|").append(Pattern.quote(n));
            }
            int[] bytes = new int[256];
            for (int b = 0; b < 256; b++) {
                Integer id = vocab.get(String.valueOf(BYTE_TO_CHAR[b]));
                bytes[b] = id == null ? -1 : id;
            }
            MergeTable m = new MergeTable(mergeRanks.size());
            for (Map.Entry<String, Integer> e : mergeRanks.entrySet()) {
                String pair = e.getKey();
                int sp = pair.indexOf(' ', 1);
                Integer left = vocab.get(pair.substring(0, sp));
                Integer right = vocab.get(pair.substring(sp + 1));
                Integer merged = vocab.get(pair.substring(0, sp) + pair.substring(sp + 1));
                if (left != null && right != null && merged != null) {
                    m.put(left, right, e.getValue(), merged);
                }
            }
            addedPattern = names.isEmpty() ? null : Pattern.compile(alt.toString());
            cache = new ConcurrentHashMap<>();
            byteTokens = bytes;
            merges = m;
            compiled = c;
        }
    }

    @Override
    public int[] encode(String text) {
        init();
        IntList out = new IntList(Math.max(16, text.length() / 3));
        if (addedPattern == null) {
            encodeOrdinary(text, out);
        } else {
            Matcher m = addedPattern.matcher(text);
            int last = 0;
            while (m.find()) {
                encodeOrdinary(text.substring(last, m.start()), out);
                out.add(addedTokens.get(m.group()));
                last = m.end();
            }
            encodeOrdinary(text.substring(last), out);
        }
        return out.toArray();
    }

    private void encodeOrdinary(String text, IntList out) {
        if (text.isEmpty()) {
            return;
        }
        if (normalization != null && !Normalizer.isNormalized(text, normalization)) {
            text = Normalizer.normalize(text, normalization);
        }
        if (addPrefixSpace && !text.startsWith(" ")) {
            text = " " + text;
        }
        if (compiled.size() == 1) { // Qwen, Llama 3: one Split, then ByteLevel without its own regex
            split(compiled.get(0), text, piece -> bpe(piece, out));
            return;
        }
        List<String> pieces = Collections.singletonList(text);
        for (Pattern p : compiled) {
            List<String> next = new ArrayList<>();
            for (String s : pieces) {
                split(p, s, next::add);
            }
            pieces = next;
        }
        for (String piece : pieces) {
            bpe(piece, out);
        }
    }

    /** Split with the Isolated behaviour: every match is a piece, and so is the text between matches. */
    private static void split(Pattern p, String s, java.util.function.Consumer<String> piece) {
        Matcher m = p.matcher(s);
        int last = 0;
        while (m.find()) {
            if (m.start() > last) {
                piece.accept(s.substring(last, m.start()));
            }
            if (m.end() > m.start()) {
                piece.accept(s.substring(m.start(), m.end()));
            }
            last = m.end();
        }
        if (last < s.length()) {
            piece.accept(s.substring(last));
        }
    }

    /** Appends the ids of one pre-token: its UTF-8 bytes as byte-level symbols, merged by rank. */
    private void bpe(String piece, IntList out) {
        int[] hit = cache.get(piece);
        if (hit == null) {
            hit = merge(piece);
            if (cache.size() < CACHE_ENTRIES) {
                cache.put(piece, hit);
            }
        }
        out.addAll(hit);
    }

    private int[] merge(String piece) {
        byte[] bytes = piece.getBytes(StandardCharsets.UTF_8);
        if (ignoreMerges) {
            StringBuilder mapped = new StringBuilder(bytes.length);
            for (byte b : bytes) {
                mapped.append(BYTE_TO_CHAR[b & 0xFF]);
            }
            Integer whole = vocab.get(mapped.toString());
            if (whole != null) {
                return new int[] {whole};
            }
        }
        int[] syms = new int[bytes.length];
        for (int i = 0; i < bytes.length; i++) {
            syms[i] = byteTokens[bytes[i] & 0xFF];
            if (syms[i] < 0) {
                throw new IllegalArgumentException(source + ": byte " + (bytes[i] & 0xFF) + " of '" + piece
                        + "' has no token (symbol '" + BYTE_TO_CHAR[bytes[i] & 0xFF] + "' is not in the vocabulary)");
            }
        }
        int n = syms.length;
        while (n > 1) {
            // the lowest-ranked pair; all its occurrences merge left to right (merges made from it rank higher)
            long best = Long.MAX_VALUE;
            for (int i = 0; i + 1 < n; i++) {
                long rm = merges.get(syms[i], syms[i + 1]);
                if (rm < best) {
                    best = rm;
                }
            }
            if (best == Long.MAX_VALUE) {
                break;
            }
            int merged = (int) best;
            int a = -1;
            int b = -1;
            for (int i = 0; i + 1 < n; i++) {
                if (merges.get(syms[i], syms[i + 1]) == best) {
                    a = syms[i];
                    b = syms[i + 1];
                    break;
                }
            }
            int w = 0;
            for (int i = 0; i < n; ) {
                if (i + 1 < n && syms[i] == a && syms[i + 1] == b) {
                    syms[w++] = merged;
                    i += 2;
                } else {
                    syms[w++] = syms[i++];
                }
            }
            n = w;
        }
        return n == syms.length ? syms : java.util.Arrays.copyOf(syms, n);
    }

    /** Merge rules as (left id, right id) -> rank << 32 | merged id, in an open-addressing table of longs. */
    static final class MergeTable {
        private final long[] keys;
        private final long[] values;
        private final int mask;

        MergeTable(int entries) {
            int cap = Integer.highestOneBit(Math.max(4, entries * 2 - 1)) << 1;
            keys = new long[cap];
            values = new long[cap];
            java.util.Arrays.fill(keys, -1L);
            mask = cap - 1;
        }

        private static long key(int left, int right) {
            return ((long) left << 32) | (right & 0xFFFFFFFFL);
        }

        private static int slot(long k, int mask) {
            long h = k * 0x9E3779B97F4A7C15L;
            return (int) (h ^ (h >>> 29)) & mask;
        }

        void put(int left, int right, int rank, int merged) {
            long k = key(left, right);
            int i = slot(k, mask);
            while (keys[i] != -1L && keys[i] != k) {
                i = (i + 1) & mask;
            }
            if (keys[i] == -1L || (values[i] >>> 32) > rank) { // the first (lowest-ranked) rule for a pair wins
                keys[i] = k;
                values[i] = ((long) rank << 32) | (merged & 0xFFFFFFFFL);
            }
        }

        /** rank << 32 | merged id, or Long.MAX_VALUE when the pair does not merge. */
        long get(int left, int right) {
            long k = key(left, right);
            int i = slot(k, mask);
            while (true) {
                long at = keys[i];
                if (at == k) {
                    return values[i];
                }
                if (at == -1L) {
                    return Long.MAX_VALUE;
                }
                i = (i + 1) & mask;
            }
        }
    }

    /** A growable int array (the ids of one text). */
    private static final class IntList {
        private int[] a;
        private int n;

        IntList(int capacity) {
            a = new int[capacity];
        }

        void add(int v) {
            if (n == a.length) {
                a = java.util.Arrays.copyOf(a, a.length * 2);
            }
            a[n++] = v;
        }

        void addAll(int[] vs) {
            if (n + vs.length > a.length) {
                a = java.util.Arrays.copyOf(a, Math.max(a.length * 2, n + vs.length));
            }
            System.arraycopy(vs, 0, a, n, vs.length);
            n += vs.length;
        }

        int[] toArray() {
            return java.util.Arrays.copyOf(a, n);
        }
    }

    @Override
    public int eosId() {
        return eos;
    }

    @Override
    public int minVocabSize() {
        return maxId + 1;
    }

    @Override
    public String describe() {
        return "BPE from " + source + " (" + vocab.size() + " tokens, " + mergeRanks.size() + " merges, "
                + addedTokens.size() + " added tokens)";
    }
}
