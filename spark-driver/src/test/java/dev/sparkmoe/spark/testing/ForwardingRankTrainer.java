package dev.sparkmoe.spark.testing;

import dev.sparkmoe.core.io.TensorSink;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.StepMetrics;
import java.io.IOException;
import java.util.List;
import java.util.Map;
import java.util.function.IntFunction;

/**
 * A trainer that hands every call to a real one: the test factories override the step (to record, pace or fail it)
 * and keep everything else, resharded resume included, exactly as the real trainer does it.
 */
public class ForwardingRankTrainer implements RankTrainer {
    protected final RankTrainer real;

    public ForwardingRankTrainer(RankTrainer real) {
        this.real = real;
    }

    @Override
    public StepMetrics step(List<int[]> sequences) {
        return real.step(sequences);
    }

    @Override
    public long stepsTaken() {
        return real.stepsTaken();
    }

    @Override
    public Map<String, Tensor> rankState() {
        return real.rankState();
    }

    @Override
    public void loadState(Map<String, Tensor> state) {
        real.loadState(state);
    }

    @Override
    public void loadResharded(int savedRanks, IntFunction<Map<String, Tensor>> saved) {
        real.loadResharded(savedRanks, saved);
    }

    @Override
    public List<TensorSpec> modelTensors() {
        return real.modelTensors();
    }

    @Override
    public void exportModel(TensorSink sink) throws IOException {
        real.exportModel(sink);
    }

    @Override
    public String hfConfigJson() {
        return real.hfConfigJson();
    }

    @Override
    public void close() {
        real.close();
    }
}
