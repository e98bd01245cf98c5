package dev.sparkmoe.spark.testing;

import dev.sparkmoe.gpu.runtime.DefaultRankTrainerFactory;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.RankTrainerFactory;
import dev.sparkmoe.parallel.train.StepMetrics;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.util.List;

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
        return new ForwardingRankTrainer(real) {
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
        };
    }
}
