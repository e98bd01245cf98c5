package dev.sparkmoe.parallel.plan;

import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.parallel.mesh.DeviceMesh;

/**
 * How one module is parallelised, as torch's ParallelStyle: a partition function that replaces the module's
 * parameters by their local parts, and input/output transforms around its forward (and, mirrored, its backward).
 * A style holds configuration only, never per-step state.
 */
public interface ParallelStyle {

    /** Partitions {@code module}'s parameters over {@code mesh} and installs its input and output transforms. */
    void apply(Module module, DeviceMesh mesh);
}
