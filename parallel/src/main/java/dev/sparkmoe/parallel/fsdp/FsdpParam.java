package dev.sparkmoe.parallel.fsdp;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.nn.GradAccumulation;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.Pending;
import java.util.List;

/**
 * One parameter under FSDP: the rank's shard of the weight (the master copy the optimizer updates), the shard of the
 * accumulated gradient, and the layout that gathers and scatters them over the group.
 *
 * <p>A parameter that its module computes with sharded ({@link #computesOnShard()}: the LM head under the
 * vocabulary-parallel loss, which works on its rows of the head with the other ranks of the group) is never gathered:
 * the parameter takes its shard's shape, its value is the shard itself, and its gradient is the shard's gradient,
 * accumulated without a reduce-scatter, as in a group of one. Its layout still describes the whole tensor, so
 * checkpoints, loading and export see it as any FSDP shard.
 *
 * <p>A parameter that computes with its shard (alone in its group, or {@link #computesOnShard()}) under a param dtype
 * that the backend's GEMMs take ({@link Backend#gemmDType()}: BF16 on CUDA at bf16) and that only GEMMs read
 * ({@link Parameter#isReadByGemmsOnly()}) computes with a <em>compute copy</em>: the shard in the param dtype, kept
 * from step to step. The optimizer step writes it in the same pass as the master shard ({@link #computeCopyToUpdate});
 * anything else that writes the shard ({@link #setShard}) has it made again before the next use. FSDP2 rounds the
 * master weights into its bf16 all-gather buffer at every unshard, before the forward and again before the backward;
 * GEMMs reading the compute copy see those same values, made once per step instead of twice, and the copies each GEMM
 * made of an f32 value are gone.
 *
 * <p>Such a parameter's gradient is made in the param dtype too ({@link Parameter#gradDType(DType)}), as FSDP2 makes
 * the unsharded gradient: its GEMMs write it in bf16, and since nothing reduces it (the parameter is alone with its
 * shard) it is the shard gradient the optimizer reads, widened as it reads it. Under gradient accumulation the first
 * micro-batch's gradient is widened to f32 when the second is added ({@link GradAccumulation}), as FSDP2 accumulates
 * its f32 reduce dtype: a sum of micro-batches is never rounded to bf16.
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
    private final boolean computesOnShard;
    private Communicator self;  // a group of this rank alone, whose wire rounds the compute copy (null: none)
    private DType wire = DType.F32;
    private DType paramDtype = DType.F32;
    private Tensor computeCopy;   // the shard in paramDtype, or null (none kept, or not made yet)
    private boolean computeStale; // the shard was written since computeCopy was

    /**
     * The shard of a full weight is sliced from it; an unmaterialised parameter gets a zero shard of this rank's
     * shape, which its owner then fills (the full weight is never made). With {@code computesOnShard} the parameter
     * is reshaped to the shard's shape (see the class comment).
     */
    FsdpParam(Parameter param, Communicator group, int shardDim, boolean computesOnShard) {
        this.param = param;
        this.group = group;
        this.layout = new ShardLayout(param.shape(), shardDim, group.size());
        this.computesOnShard = computesOnShard;
        Backend be = param.backend();
        this.shard = param.isMaterialised() ? layout.slice(be, param.value(), group.rank())
                : be.zeros(DType.F32, layout.shardShape(group.rank()));
        if (computesOnShard) {
            if (param.isMaterialised()) {
                be.release(param.value());
            }
            param.reshape(layout.shardShape(group.rank()));
        }
    }

    /**
     * For a parameter computed on its shard under a param dtype narrower than f32: its compute copy is the shard sent
     * over {@code self}'s wire as {@code wire} (a group of this rank alone, split from the FSDP group), so it holds
     * what a gathered weight would hold: rounded where the communicator rounds (NCCL's bf16 wire), exact f32 where it
     * gathers f32 (the CPU communicators). {@code self} is owned by the caller.
     */
    void computeThrough(Communicator self, DType wire) {
        this.self = self;
        this.wire = wire;
    }

    /**
     * The FSDP unit's param dtype: what the weights are gathered and computed in. Where it makes this parameter keep a
     * compute copy (see the class comment), the copy is allocated here, with the shards, outside any step's
     * allocation scope (which would release it at the step's end); it is filled from the shard at its first use.
     */
    void paramDtype(DType dtype) {
        this.paramDtype = dtype;
        if (keepsComputeCopy() && computeCopy == null) {
            computeCopy = param.backend().empty(paramDtype, shard.shape());
            computeStale = true;
        }
        param.gradDType(keepsComputeCopy() ? paramDtype : DType.F32);
    }

    /**
     * Whether this parameter computes with a compute copy kept from step to step (see the class comment): alone with
     * its shard, a param dtype narrower than f32 that the backend's GEMMs take, and read by GEMMs only.
     */
    public boolean keepsComputeCopy() {
        return alone() && paramDtype != DType.F32 && param.isReadByGemmsOnly()
                && param.backend().gemmDType() == paramDtype;
    }

    /**
     * For the optimizer step that is about to update the shard: the kept compute copy, which that step must write
     * too (it then counts as current), or null where none is kept.
     */
    public Tensor computeCopyToUpdate() {
        if (computeCopy != null) {
            computeStale = false;
        }
        return computeCopy;
    }

    /** The kept compute copy as it is now (null where none is kept); read it only while it is current. */
    public Tensor computeCopy() {
        return computeCopy;
    }

    /** The kept compute copy, made again from the shard where the shard was written since (no allocation). */
    private Tensor currentComputeCopy() {
        if (computeStale) {
            param.backend().convert(shard, computeCopy);
            computeStale = false;
        }
        return computeCopy;
    }

    /**
     * Whether the module computes with this rank's shard instead of the gathered weight: never gathered, its
     * gradient is the shard's (no reduce-scatter).
     */
    public boolean computesOnShard() {
        return computesOnShard;
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
        computeStale = true;
    }

    /**
     * The accumulated gradient shard, zero when none was reduced since the last {@link #zeroGrad()}: F32, or the param
     * dtype for a parameter with a compute copy after a single micro-batch (see the class comment).
     */
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

    /**
     * A group of one, or a parameter computed on its shard: the value is the shard, so gathering is aliasing and
     * reducing is adding.
     */
    private boolean alone() {
        return group.size() == 1 || computesOnShard;
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
        if (param.isMaterialised()) {
            return;
        }
        if (keepsComputeCopy()) {
            param.setValue(currentComputeCopy());
            return;
        }
        if (computesOnShard && self != null && wire != DType.F32 && shard.numel() > 0) {
            Tensor copy = param.backend().empty(DType.F32, shard.shape());
            self.allGatherStart(List.of(new Communicator.Part(shard, 0, copy, 0, shard.numel())), wire)
                    .complete();
            param.setValue(copy);
            return;
        }
        param.setValue(alone() ? shard : layout.allGather(param.backend(), group, shard));
    }

    void reshard() {
        finishGather(); // prefetched but never used: order the release after the gather
        if (param.isMaterialised() && param.value() != shard && param.value() != computeCopy) {
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
        shardGrad = shardGrad == null ? part : GradAccumulation.add(be, shardGrad, part);
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
