package dev.sparkmoe.spark;

import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.spark.data.RankDataStats;
import java.util.List;

/**
 * What {@code fit()} returns.
 *
 * @param modelDir      URI of the final model in Hugging Face layout (config.json, model.safetensors or, past
 *                      output.max_shard_size, model-0000k-of-0000n.safetensors and model.safetensors.index.json)
 * @param history       metrics of every step, 1..steps (steps before a resume come from the checkpoint)
 * @param steps         optimizer steps taken
 * @param attempts      barrier-stage attempts it took (1: no failure)
 * @param resumedFrom   step of the checkpoint the successful attempt started from (0: fresh)
 * @param checkpointDir URI of the checkpoint directory
 * @param device        rank 0's device ("cpu" or "cuda:N")
 * @param data          per-rank data statistics from validation
 */
public record TrainResult(String modelDir, List<StepMetrics> history, long steps, int attempts, long resumedFrom,
                          String checkpointDir, String device, List<RankDataStats> data) {

    public StepMetrics last() {
        return history.get(history.size() - 1);
    }
}
