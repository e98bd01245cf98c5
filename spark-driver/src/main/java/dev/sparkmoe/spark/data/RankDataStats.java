package dev.sparkmoe.spark.data;

import java.io.Serializable;

/**
 * What one rank's partition holds, computed on the executors before training so that bad input fails fast.
 *
 * @param rank          partition / rank index
 * @param docs          documents (rows)
 * @param tokens        token ids over all documents
 * @param minId         smallest id (Integer.MAX_VALUE when empty)
 * @param maxId         largest id (-1 when empty)
 * @param maxIdDoc      global row index of a document holding maxId (-1 when empty)
 * @param shortDocs     documents shorter than seq_len + 1
 * @param firstShortDoc global row index of the first such document (-1 when none)
 * @param firstShortLen its length
 * @param sequences     sequences the packer makes from this partition
 */
public record RankDataStats(int rank, long docs, long tokens, int minId, int maxId, long maxIdDoc, long shortDocs,
                            long firstShortDoc, int firstShortLen, long sequences) implements Serializable {
}
