package dev.sparkmoe.spark.data;

import java.nio.charset.StandardCharsets;

/** The built-in tokenizer: the UTF-8 bytes of the text as ids 0..255. Needs a vocabulary of at least 256. */
public final class ByteLevelTokenizer implements Tokenizer {
    private static final long serialVersionUID = 1L;

    @Override
    public int[] encode(String text) {
        byte[] b = text.getBytes(StandardCharsets.UTF_8);
        int[] ids = new int[b.length];
        for (int i = 0; i < b.length; i++) {
            ids[i] = b[i] & 0xFF;
        }
        return ids;
    }

    @Override
    public int eosId() {
        return -1;
    }

    @Override
    public int minVocabSize() {
        return 256;
    }

    @Override
    public String describe() {
        return "byte-level (UTF-8 bytes as ids 0..255)";
    }
}
