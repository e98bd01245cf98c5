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
    private transient List<Pattern> compiled;
    private transient Map<String, int[]> cache;

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

    private void init() {
        if (compiled == null) {
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
            addedPattern = names.isEmpty() ? null : Pattern.compile(alt.toString());
            cache = new ConcurrentHashMap<>();
            compiled = c;
        }
    }

    @Override
    public int[] encode(String text) {
        init();
        List<Integer> out = new ArrayList<>();
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
        int[] ids = new int[out.size()];
        for (int i = 0; i < ids.length; i++) {
            ids[i] = out.get(i);
        }
        return ids;
    }

    private void encodeOrdinary(String text, List<Integer> out) {
        if (text.isEmpty()) {
            return;
        }
        if (normalization != null) {
            text = Normalizer.normalize(text, normalization);
        }
        if (addPrefixSpace && !text.startsWith(" ")) {
            text = " " + text;
        }
        List<String> pieces = Collections.singletonList(text);
        for (Pattern p : compiled) {
            List<String> next = new ArrayList<>();
            for (String s : pieces) {
                Matcher m = p.matcher(s);
                int last = 0;
                while (m.find()) {
                    if (m.start() > last) {
                        next.add(s.substring(last, m.start()));
                    }
                    if (m.end() > m.start()) {
                        next.add(m.group());
                    }
                    last = m.end();
                }
                if (last < s.length()) {
                    next.add(s.substring(last));
                }
            }
            pieces = next;
        }
        for (String piece : pieces) {
            for (int id : bpe(piece)) {
                out.add(id);
            }
        }
    }

    private int[] bpe(String piece) {
        int[] hit = cache.get(piece);
        if (hit != null) {
            return hit;
        }
        byte[] bytes = piece.getBytes(StandardCharsets.UTF_8);
        StringBuilder mapped = new StringBuilder(bytes.length);
        for (byte b : bytes) {
            mapped.append(BYTE_TO_CHAR[b & 0xFF]);
        }
        String word = mapped.toString();
        List<String> syms = new ArrayList<>();
        if (ignoreMerges && vocab.containsKey(word)) {
            syms.add(word);
        } else {
            for (int i = 0; i < word.length(); i++) {
                syms.add(String.valueOf(word.charAt(i)));
            }
            while (syms.size() > 1) {
                int best = -1;
                int bestRank = Integer.MAX_VALUE;
                for (int i = 0; i + 1 < syms.size(); i++) {
                    Integer rk = mergeRanks.get(syms.get(i) + " " + syms.get(i + 1));
                    if (rk != null && rk < bestRank) {
                        bestRank = rk;
                        best = i;
                    }
                }
                if (best < 0) {
                    break;
                }
                String a = syms.get(best);
                String b = syms.get(best + 1);
                List<String> merged = new ArrayList<>(syms.size());
                for (int i = 0; i < syms.size(); i++) {
                    if (i + 1 < syms.size() && syms.get(i).equals(a) && syms.get(i + 1).equals(b)) {
                        merged.add(a + b);
                        i++;
                    } else {
                        merged.add(syms.get(i));
                    }
                }
                syms = merged;
            }
        }
        int[] ids = new int[syms.size()];
        for (int i = 0; i < ids.length; i++) {
            Integer id = vocab.get(syms.get(i));
            if (id == null) {
                throw new IllegalArgumentException(source + ": symbol '" + syms.get(i) + "' of '" + piece
                        + "' is not in the vocabulary (the file's vocab and merges disagree)");
            }
            ids[i] = id;
        }
        if (cache.size() < 100_000) {
            cache.put(piece, ids);
        }
        return ids;
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
        return "BPE from " + source + " (" + vocab.size() + " tokens, " + mergeRanks.size() + " merges)";
    }
}
