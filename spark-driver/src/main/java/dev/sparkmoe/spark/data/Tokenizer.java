package dev.sparkmoe.spark.data;

import java.io.Serializable;

/** Text to token ids, shipped to the executors inside the barrier task closure. */
public interface Tokenizer extends Serializable {

    /** Token ids of {@code text} (no special tokens added). */
    int[] encode(String text);

    /** The end-of-text token that separates packed documents, or -1 when the tokenizer has none. */
    int eosId();

    /** The smallest model vocabulary that can hold every id this tokenizer produces. */
    int minVocabSize();

    /** A short description for logs. */
    String describe();
}
