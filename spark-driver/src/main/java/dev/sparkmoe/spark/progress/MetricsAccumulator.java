package dev.sparkmoe.spark.progress;

import dev.sparkmoe.parallel.train.StepMetrics;
import java.util.ArrayList;
import java.util.List;
import org.apache.spark.util.AccumulatorV2;

/**
 * Step metrics of one barrier-stage attempt, added by rank 0 after every step. Named, so it shows on the stage page
 * of the Spark UI; executors report its partial value with every heartbeat, which is how
 * {@link ProgressListener} sees steps while the task still runs, on a cluster as in local mode.
 */
public final class MetricsAccumulator extends AccumulatorV2<StepMetrics, List<StepMetrics>> {
    private static final long serialVersionUID = 1L;
    private ArrayList<StepMetrics> steps = new ArrayList<>();

    @Override
    public boolean isZero() {
        return steps.isEmpty();
    }

    @Override
    public MetricsAccumulator copy() {
        MetricsAccumulator c = new MetricsAccumulator();
        synchronized (this) {
            c.steps = new ArrayList<>(steps);
        }
        return c;
    }

    @Override
    public synchronized void reset() {
        steps = new ArrayList<>();
    }

    @Override
    public synchronized void add(StepMetrics v) {
        steps.add(v);
    }

    @Override
    public synchronized void merge(org.apache.spark.util.AccumulatorV2<StepMetrics, List<StepMetrics>> other) {
        steps.addAll(other.value());
    }

    @Override
    public synchronized List<StepMetrics> value() {
        return new ArrayList<>(steps);
    }
}
