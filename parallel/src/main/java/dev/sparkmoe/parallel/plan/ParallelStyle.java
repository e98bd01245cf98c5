package dev.sparkmoe.parallel.plan;

import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.parallel.mesh.DeviceMesh;

/**
 * How one module is parallelised, as torch's ParallelStyle: a partition function that replaces the module's
 * parameters by their local parts, and input/output transforms around its forward (mirrored in its backward).
 * {@link #apply} runs the two in that order. A style holds configuration only, never per-step state: whatever a
 * step's input transform learns (split sizes, permutations) travels to the output transform in an immutable record.
 */
public interface ParallelStyle {

    /** Replaces {@code module}'s parameters by the parts this rank owns on {@code mesh}. */
    void partition(Module module, DeviceMesh mesh);

    /** Installs the transforms of {@code module}'s inputs and outputs (after {@link #partition}). */
    void installTransforms(Module module, DeviceMesh mesh);

    /** Partition, then transforms. */
    default void apply(Module module, DeviceMesh mesh) {
        partition(module, mesh);
        installTransforms(module, mesh);
    }
}
