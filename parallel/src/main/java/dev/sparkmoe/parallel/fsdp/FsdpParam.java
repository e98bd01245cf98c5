package dev.sparkmoe.parallel.fsdp;

import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;

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

    FsdpParam(Parameter param, Communicator group, int shardDim) {
        this.param = param;
        this.group = group;
        this.layout = new ShardLayout(param.shape(), shardDim, group.size());
        this.shard = layout.slice(param.value(), group.rank());
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
        System.arraycopy(t.floats(), 0, shard.floats(), 0, shard.numel());
    }

    /** The accumulated gradient shard, zero when none was reduced since the last {@link #zeroGrad()}. */
    public Tensor shardGrad() {
        if (shardGrad == null) {
            shardGrad = Tensor.zeros(DType.F32, shard.shape());
        }
        return shardGrad;
    }

    public void zeroGrad() {
        shardGrad = null;
    }

    void unshard() {
        if (!param.isMaterialised()) {
            param.setValue(layout.allGather(group, shard));
        }
    }

    void reshard() {
        param.setValue(null);
    }

    /** Reduce-scatters the full gradient into the shard gradient (accumulating) and frees the full one. */
    void reduceGrad() {
        Tensor full = param.hasGrad() ? param.grad() : Tensor.zeros(DType.F32, param.shape());
        Tensor part = layout.reduceScatter(group, full, 1f);
        float[] acc = shardGrad().floats();
        float[] pf = part.floats();
        for (int i = 0; i < acc.length; i++) {
            acc[i] += pf[i];
        }
        param.clearGrad();
    }
}
