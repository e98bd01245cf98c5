package dev.sparkmoe.spark.stage;

import java.io.Serializable;
import java.util.List;

/**
 * What a rank returns to the driver when the stage succeeds.
 *
 * @param rank           the rank
 * @param resumedFrom    step of the checkpoint this attempt started from (0: a fresh start)
 * @param stepsTaken     steps taken at the end
 * @param metricsJson    rank 0: every step's metrics (restored ones included) as JSON; other ranks: empty
 * @param device         "cpu" or "cuda:N"
 */
public record RankOutcome(int rank, long resumedFrom, long stepsTaken, List<String> metricsJson, String device)
        implements Serializable {
}
