package dev.sparkmoe.parallel.plan;

import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.parallel.fsdp.FullyShard;
import dev.sparkmoe.parallel.fsdp.MixedPrecisionPolicy;
import dev.sparkmoe.parallel.mesh.DeviceMesh;
import dev.sparkmoe.parallel.mesh.ParallelDims;

/** A model family's parallelize function: applies its plan (EP, FSDP) to a model. */
@FunctionalInterface
public interface ModelParallelizer {

    /**
     * Parallelises {@code model} in place. On entry every parameter holds the full weight, or every one is
     * unmaterialised (a shape only); on return each holds only what this rank owns, and {@code fsdp} manages the
     * shards (of an unmaterialised model: zero shards for the caller to fill).
     */
    void parallelize(Module model, DeviceMesh mesh, ParallelDims dims, MixedPrecisionPolicy policy, FullyShard fsdp);
}
