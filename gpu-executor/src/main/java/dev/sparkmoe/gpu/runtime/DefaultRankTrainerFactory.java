package dev.sparkmoe.gpu.runtime;

import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.train.DistributedTrainer;
import dev.sparkmoe.parallel.train.RankTrainer;
import dev.sparkmoe.parallel.train.RankTrainerFactory;
import dev.sparkmoe.parallel.train.TrainerSpec;
import java.util.Map;

/**
 * The trainer every launcher uses (Spark barrier tasks, the standalone launcher): picks the backend for this rank,
 * loads the initial weights (or initialises them from the seed) and builds the distributed trainer over the world.
 */
public final class DefaultRankTrainerFactory implements RankTrainerFactory {
    private static final long serialVersionUID = 1L;

    @Override
    public RankTrainer create(TrainerSpec spec, Communicator world) {
        Qwen3MoeConfig config = Qwen3MoeConfig.parse(spec.hfConfigJson());
        Map<String, Tensor> initial = DistributedTrainer.initialState(spec, config);
        return new DistributedTrainer(spec, world, Backends.create(spec.backend(), spec.deviceId()), initial);
    }
}
