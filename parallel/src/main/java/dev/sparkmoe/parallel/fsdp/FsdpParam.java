package dev.sparkmoe.parallel.fsdp;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.Pending;

/**
 * One parameter under FSDP: the rank's shard of the weight (the master copy the optimizer updates), the shard of the
 * accumulated gradient, and the layout that gathers and scatters them over the group.
 */
public final class FsdpParam {
    private final Parameter param;
    private final Communicator group;
    private final ShardLayout layout;
    private Tensor shard;
    private Tensor shardGrad;
    private Pending gathering;    // a started all-gather into param.value()
    private Pending reducing;     // a started reduce-scatter into shardGrad
    private Tensor reducingFrom;  // the full gradient it reads, freed once it completed

    /**
     * The shard of a full weight is sliced from it; an unmaterialised parameter gets a zero shard of this rank's
     * shape, which its owner then fills (the full weight is never made).
     */
    FsdpParam(Parameter param, Communicator group, int shardDim) {
        this.param = param;
        this.group = group;
        this.layout = new ShardLayout(param.shape(), shardDim, group.size());
        this.shard = param.isMaterialised() ? layout.slice(param.backend(), param.value(), group.rank())
                : param.backend().zeros(DType.F32, layout.shardShape(group.rank()));
    }

    public Parameter parameter() {
        return param;
    }

    public Communicator group() {
        return group;
    }

    public ShardLayout layout() {
        return layout;
    }

    /** The local shard of the weight (updated in place by the optimizer). */
    public Tensor shard() {
        return shard;
    }

    /** Replaces the shard (checkpoint load); the shape must match this rank's shard shape. */
    public void setShard(Tensor t) {
        if (!java.util.Arrays.equals(t.shape(), layout.shardShape(group.rank()))) {
            throw new IllegalArgumentException(param.name() + ": shard shape " + java.util.Arrays.toString(t.shape())
                    + " does not match " + java.util.Arrays.toString(layout.shardShape(group.rank())));
        }
        Backend be = param.backend();
        be.copyFromHost(t, shard);
    }

    /** The accumulated gradient shard, zero when none was reduced since the last {@link #zeroGrad()}. */
    public Tensor shardGrad() {
        finishReduce();
        if (shardGrad == null) {
            shardGrad = param.backend().zeros(DType.F32, shard.shape());
        }
        return shardGrad;
    }

    public void zeroGrad() {
        finishReduce();
        shardGrad = null;
    }

    /** A group of one: the shard is the full tensor, so gathering is aliasing and reducing is adding. */
    private boolean alone() {
        return group.size() == 1;
    }

    /**
     * Makes the full weight's buffer and returns the part of the unit's started all-gather that fills it
     * ({@link #gatherStarted} then hands over the started group, {@link #unshard()} completes it); null when this
     * parameter needs none: gathered or gathering already, alone in its group, or a layout that only the blocking
     * gather handles.
     */
    Communicator.Part beginGather() {
        if (param.isMaterialised() || alone() || !layout.contiguousEven()) {
            return null;
        }
        Tensor full = param.backend().empty(DType.F32, param.shape());
        param.setValue(full);
        return layout.gatherPart(shard, full);
    }

    void gatherStarted(Pending group) {
        gathering = group;
    }

    void unshard() {
        finishGather();
        if (!param.isMaterialised()) {
            param.setValue(alone() ? shard : layout.allGather(param.backend(), group, shard));
        }
    }

    void reshard() {
        finishGather(); // prefetched but never used: order the release after the gather
        if (param.isMaterialised() && param.value() != shard) {
            param.backend().release(param.value());
        }
        param.setValue(null);
    }

    /**
     * Reduce-scatters the full gradient into the shard gradient and frees the full one. The first reduction after
     * {@link #zeroGrad()} adopts the result as the shard gradient; later ones (gradient accumulation) add to it.
     * Where the reduction can run under the next unit's backward, nothing is reduced here: the returned part joins
     * the unit's started reduce-scatter ({@link #reduceStarted}), which {@link #shardGrad()} or
     * {@link #finishReduce()} completes. Otherwise it is done here and the result is null.
     */
    Communicator.Part beginReduce() {
        Backend be = param.backend();
        Tensor full = param.grad(); // zeros when backward never touched it (an expert without tokens)
        param.clearGrad();
        finishReduce();
        if (!alone() && shardGrad == null && layout.contiguousEven()) {
            shardGrad = be.empty(DType.F32, shard.shape());
            reducingFrom = full;
            return layout.reducePart(full, shardGrad);
        }
        Tensor part = alone() ? full : layout.reduceScatter(be, group, full, 1f);
        if (part != full) {
            be.release(full);
        }
        if (shardGrad == null) {
            shardGrad = part;
        } else {
            be.axpy(1f, part, 0, shardGrad, 0, part.numel());
            be.release(part);
        }
        return null;
    }

    void reduceStarted(Pending group) {
        reducing = group;
    }

    /** Completes a started all-gather (no-op without one). */
    private void finishGather() {
        if (gathering != null) {
            gathering.complete();
            gathering = null;
        }
    }

    /** Completes a started reduce-scatter (no-op without one) and frees the full gradient it read. */
    void finishReduce() {
        if (reducing != null) {
            reducing.complete();
            reducing = null;
            param.backend().release(reducingFrom);
            reducingFrom = null;
        }
    }
}
