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
 * @param runDir        URI of the run folder (under output.dir) that holds the model, the checkpoints and the plot
 * @param runId         the id in this run's metrics records (and Spark job group)
 */
public record TrainResult(String modelDir, List<StepMetrics> history, long steps, int attempts, long resumedFrom,
                          String checkpointDir, String device, List<RankDataStats> data, String runDir,
                          String runId) {

    /** URI of the metrics plot (loss, aux loss, learning rate and tokens/s against the step). */
    public String plot() {
        return runDir + "/" + dev.sparkmoe.spark.progress.MetricsPlot.FILE_NAME;
    }

    public StepMetrics last() {
        return history.get(history.size() - 1);
    }
}
