package dev.sparkmoe.spark.testing;

import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.RankTrainerFactory;
import dev.sparkmoe.parallel.train.TrainerSpec;

/** Builds {@link BigramTrainer}s, optionally with a fault plan. Has a no-arg constructor for class-name loading. */
public final class BigramFactory implements RankTrainerFactory {
    private static final long serialVersionUID = 1L;
    private final Faults.Plan faults;

    public BigramFactory() {
        this(null);
    }

    public BigramFactory(Faults.Plan faults) {
        this.faults = faults;
    }

    @Override
    public RankTrainer create(TrainerSpec spec, Communicator world) {
        return new BigramTrainer(spec, world, faults);
    }
}
