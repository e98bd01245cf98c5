package dev.sparkmoe.spark.testing;

import dev.sparkmoe.core.io.TensorSink;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import dev.sparkmoe.gpu.runtime.DefaultRankTrainerFactory;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.RankTrainerFactory;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.io.IOException;
import java.util.List;
import java.util.Map;
import java.util.function.IntFunction;

/**
 * The real trainer, each step started after a pause: a test that kills an executor between two checkpoints gets the
 * time to do it. The pause changes no number the trainer computes.
 */
public final class PacedFactory implements RankTrainerFactory {
    private static final long serialVersionUID = 1L;
    private final long pauseMs;

    public PacedFactory(long pauseMs) {
        this.pauseMs = pauseMs;
    }

    @Override
    public RankTrainer create(TrainerSpec spec, Communicator world) {
        RankTrainer real = new DefaultRankTrainerFactory().create(spec, world);
        return new RankTrainer() {
            @Override
            public StepMetrics step(List<int[]> sequences) {
                try {
                    Thread.sleep(pauseMs);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new IllegalStateException("interrupted", e);
                }
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
        };
    }
}
