package dev.sparkmoe.spark.stage;

import dev.sparkmoe.core.io.ModelFormat;
import dev.sparkmoe.parallel.train.RankTrainerFactory;
import dev.sparkmoe.parallel.train.TrainerSpec;
import dev.sparkmoe.spark.ckpt.CheckpointStore;
import dev.sparkmoe.spark.ckpt.SerializableHadoopConf;
import dev.sparkmoe.spark.data.SequencePacker;
import dev.sparkmoe.spark.progress.MetricsAccumulator;
import dev.sparkmoe.spark.progress.ProgressReporter;
import java.io.Serializable;
import java.util.List;

/**
 * Everything the driver decided, shipped to every rank in the barrier task closure. Identical on every rank.
 *
 * @param runKey             application id and run id; with the stage id and attempt it keys the rendezvous
 * @param attempt            1-based driver attempt
 * @param spec               trainer spec (deviceId is filled in per task)
 * @param factory            builds each rank's trainer
 * @param connector          builds the world communicator (holds the job secret)
 * @param store              checkpoints
 * @param checkpointEvery    steps between checkpoints (0: only after the last step)
 * @param keepLast           committed checkpoints to keep
 * @param steps              optimizer steps of the whole run, as agreed on the driver
 * @param batchSequences     sequences per rank per step
 * @param packer             documents to sequences
 * @param shuffle            shuffle each rank's sequences with the seed
 * @param seed               training seed
 * @param rankSequenceCounts sequences per data rank (one per configured rank) as the driver's validation counted
 *                           them; an attempt on fewer ranks trains each rank on several data ranks
 * @param modelDir           where rank 0 writes the final Hugging Face model
 * @param modelFormat        the final model's dtype and largest file
 * @param hadoopConf         Hadoop configuration for checkpoints and the model
 * @param commTimeoutS       seconds to wait for peers
 * @param metrics            rank 0 adds every step's metrics here
 * @param progress           the driver's progress channel (null: none; steps then come with the heartbeats)
 * @param elastic            a checkpoint written at another layout is resharded rather than refused
 */
public record JobPlan(String runKey, int attempt, TrainerSpec spec, RankTrainerFactory factory,
                      WorldConnector connector, CheckpointStore store, int checkpointEvery, int keepLast, long steps,
                      int batchSequences, SequencePacker packer, boolean shuffle, long seed,
                      List<Long> rankSequenceCounts, String modelDir, SerializableHadoopConf hadoopConf,
                      int commTimeoutS, MetricsAccumulator metrics, ModelFormat modelFormat,
                      ProgressReporter.Address progress, boolean elastic) implements Serializable {
}
