package dev.sparkmoe.parallel.train;

import dev.sparkmoe.parallel.comm.Communicator;
import java.io.Serializable;

/** Builds a rank's trainer over the job's world communicator. Collective: every rank calls it together. */
@FunctionalInterface
public interface RankTrainerFactory extends Serializable {
    RankTrainer create(TrainerSpec spec, Communicator world);
}
