package dev.sparkmoe.parallel.fsdp;

import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.parallel.comm.Communicator;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.function.ToIntFunction;
import java.util.logging.Logger;

/**
 * {@code fully_shard} for this codebase: makes a module an FSDP unit over a group. Apply it bottom-up (experts, then
 * decoder layers, then the output head, then the root) as torchtitan does: each call takes the parameters of the
 * module's subtree that no earlier call took. Parameters are sharded along the dim that {@code shardPlacement} picks
 * (0 by default, 1 for stacked experts whose dim 0 expert parallelism already split). A parameter that is
 * materialised (full) when this runs is sliced; an unmaterialised one (shape only) gets a zero shard that its owner
 * fills, so no rank ever holds the full weight. Afterwards each holds only the local shard until a hook gathers it.
 */
public final class FullyShard {
    private static final Logger LOG = Logger.getLogger(FullyShard.class.getName());
    private final Map<Parameter, FsdpParam> managed = new IdentityHashMap<>();
    private final List<FsdpUnit> units = new ArrayList<>();
    private final FsdpUnit.Schedule schedule;
    private final List<Communicator> selfGroups = new ArrayList<>();

    /** Shards every parameter on dim 0. */
    public static final ToIntFunction<Parameter> SHARD_DIM_0 = p -> 0;

    /** Units gathered ahead by default (the trainer's {@code training.fsdp_prefetch} default). */
    public static final int DEFAULT_PREFETCH = 2;

    /** Units gather {@link #DEFAULT_PREFETCH} units ahead. */
    public FullyShard() {
        this(DEFAULT_PREFETCH);
    }

    /**
     * @param prefetch how many units ahead a unit starts gathering, in forward and in backward (at least 1, FSDP2's
     *                 default). In the MoE plan a layer's attention unit is small and its experts unit large, so with
     *                 one unit of look-ahead the experts' gather has only the attention's compute to hide under; with
     *                 two it starts a whole experts unit earlier. Each unit more keeps one more unit's gathered
     *                 weights alive at a time.
     */
    public FullyShard(int prefetch) {
        if (prefetch < 1) {
            throw new IllegalArgumentException("FSDP prefetch (" + prefetch + ") must be at least 1 (units whose "
                    + "all-gathers start ahead of the unit computing; 1 is FSDP2's default, 2 ours)");
        }
        this.schedule = new FsdpUnit.Schedule(prefetch);
    }

    public FsdpUnit fullyShard(Module module, Communicator group, ToIntFunction<Parameter> shardPlacement,
                               MixedPrecisionPolicy policy, boolean reshardAfterForward) {
        return fullyShard(module, group, shardPlacement, policy, reshardAfterForward, Set.of());
    }

    /**
     * As above; the parameters in {@code computedOnShard} are ones the module computes with sharded (the LM head
     * under the vocabulary-parallel loss): they take their shard's shape and are never gathered, and their gradients
     * are their shards' ({@link FsdpParam#computesOnShard()}). Under a param dtype narrower than f32 each such
     * parameter's compute copy goes over the wire of a group of its rank alone, split from {@code group} here
     * (collective over it), so that it is rounded exactly where a gathered weight would be.
     */
    public FsdpUnit fullyShard(Module module, Communicator group, ToIntFunction<Parameter> shardPlacement,
                               MixedPrecisionPolicy policy, boolean reshardAfterForward,
                               Set<Parameter> computedOnShard) {
        List<FsdpParam> params = new ArrayList<>();
        for (Parameter p : module.parameters()) {
            if (managed.containsKey(p)) {
                continue;
            }
            boolean onShard = computedOnShard.contains(p);
            FsdpParam fp = new FsdpParam(p, group, shardPlacement.applyAsInt(p), onShard);
            fp.paramDtype(policy.paramDtype());
            if (onShard && policy.paramDtype() != dev.sparkmoe.core.tensor.DType.F32) {
                Communicator self = group.split(group.rank(), 0, group.name() + "-self");
                selfGroups.add(self);
                fp.computeThrough(self, policy.paramDtype());
            }
            managed.put(p, fp);
            params.add(fp);
        }
        FsdpUnit unit = new FsdpUnit(module.path().isEmpty() ? "<root>" : module.path(), params, reshardAfterForward,
                policy.paramDtype(), schedule);
        unit.reshard();
        module.addHook(unit);
        units.add(unit);
        if (policy.paramDtype() != dev.sparkmoe.core.tensor.DType.F32) {
            LOG.fine(() -> "FSDP unit " + unit.path() + ": param dtype " + policy.paramDtype()
                    + " requested: gathered in it where the communicator can; kernels of a backend without it compute "
                    + "in f32");
        }
        return unit;
    }

    /**
     * Every managed parameter, in the order units were created (for the Qwen3-MoE plan: each layer's experts and
     * the layer, the head, then the root's embedding), each unit's in its module's {@code parameters()} order.
     */
    public List<FsdpParam> params() {
        List<FsdpParam> out = new ArrayList<>();
        for (FsdpUnit u : units) {
            out.addAll(u.params());
        }
        return out;
    }

    /** Closes the groups of one rank that parameters computed on their shards round their compute copies through. */
    public void close() {
        for (Communicator c : selfGroups) {
            c.close();
        }
        selfGroups.clear();
    }

    public List<FsdpUnit> units() {
        return List.copyOf(units);
    }

    public FsdpParam get(Parameter p) {
        return managed.get(p);
    }
}
