package dev.sparkmoe.parallel.memory;

import dev.sparkmoe.parallel.memory.UnitLayout.Param;
import dev.sparkmoe.parallel.memory.UnitLayout.Unit;
import java.util.ArrayList;
import java.util.List;

/**
 * The FSDP side of a replayed step, as {@code FsdpUnit} and {@code FsdpParam} allocate: a unit's all-gather makes
 * each parameter's unsharded f32 buffer when it starts (prefetched {@code prefetch} units ahead in the order recorded
 * on the first step), the reduce-scatter of a unit's gradients makes the shard gradients and frees the unsharded ones
 * only when the next unit's backward is done, the units that do not reshard after forward (the last layer) stay
 * gathered into the backward pass, and those whose backward reads no weight (the head, the embedding, the root) are
 * not gathered for it (nor prefetched by the others in backward).
 *
 * <p>On the CUDA backend at bf16 (NCCL's bf16 wire) a started gather also holds a bf16 buffer for the whole unit
 * (each part in a 256-byte aligned slot); when it completes the backend adopts the parts as bf16 images and gives the
 * f32 buffers back, so a gathered unit costs 2 bytes an element until something reads its weights as f32, which
 * widens the whole unit into new f32 buffers and frees the bf16 one ({@code CudaBackend.adoptBf16Images} and
 * {@code materialize}). The experts are read only by the grouped GEMM and stay bf16. Groups of one rank alias the
 * shard and allocate nothing; parameters whose shards are not even contiguous slices (experts split on dim 1, or
 * uneven chunks) are gathered by the blocking, padded collective instead. A parameter computed on its shard (the
 * vocabulary-parallel LM head) is never gathered and its gradient is its shard's, as in a group of one; under a bf16
 * param dtype it computes with an f32 copy of the shard made through the wire of a group of its rank alone, at every
 * unshard. A parameter that keeps a bf16 compute copy ({@code FsdpParam.keepsComputeCopy}: alone with its shard, read
 * only by GEMMs, on a backend whose GEMMs take bf16) computes with that copy, which construction made
 * ({@link StepReplay#construct}): its unshard allocates nothing and its reshard frees nothing.
 */
final class FsdpReplay {
    private final Ledger mem;
    private final boolean bf16Wire;
    private final boolean narrowParams;
    private final int prefetch;
    private final List<Unit> forwardOrder = new ArrayList<>();
    private final List<Unit> backwardOrder = new ArrayList<>();
    private Unit reducing;

    FsdpReplay(Ledger mem, boolean bf16Wire, boolean narrowParams, int prefetch) {
        this.mem = mem;
        this.bf16Wire = bf16Wire;
        this.narrowParams = narrowParams;
        this.prefetch = prefetch;
    }

    /** The units holding gathered weights now: how they are held, and the gathers in flight. */
    String gatheredUnits(List<Unit> units) {
        List<String> held = new ArrayList<>();
        List<String> flying = new ArrayList<>();
        for (Unit u : units) {
            boolean inFlight = false;
            boolean f32 = false;
            boolean images = false;
            for (Param p : u.params) {
                inFlight |= p.pendingGather;
                f32 |= p.value != null && !p.pendingGather;
                images |= p.imaged;
            }
            if (inFlight) {
                flying.add(u.path);
            } else if (f32 || images) {
                held.add(u.path + (images ? " (bf16)" : ""));
            }
        }
        if (held.isEmpty() && flying.isEmpty()) {
            return "no unit gathered";
        }
        return held.size() + " gathered: " + String.join(", ", held) + (flying.isEmpty() ? ""
                : "; " + flying.size() + " in flight: " + String.join(", ", flying));
    }

    // ------------------------------------------------------------------ hooks (FsdpUnit)

    void beforeForward(Unit u) {
        unshard(u);
        for (Unit next : next(forwardOrder, u)) {
            prefetch(next);
        }
    }

    void afterForward(Unit u) {
        if (u.reshardAfterForward) {
            reshard(u);
        }
    }

    void beforeBackward(Unit u) {
        if (u.unshardInBackward) {
            unshard(u);
        }
        for (Unit next : next(backwardOrder, u)) {
            prefetch(next);
        }
    }

    /** Starts the reduce-scatters, reshards, and completes the previous unit's reduce-scatters. */
    void afterBackward(Unit u) {
        for (Param p : u.params) {
            beginReduce(p);
        }
        reshard(u);
        if (reducing != null && reducing != u) {
            for (Param p : reducing.params) {
                finishReduce(p);
            }
        }
        reducing = u;
    }

    /**
     * Up to {@code prefetch} units after {@code u} that gather in this pass (in backward: those that unshard in
     * backward), recording {@code u} when it is new (FsdpUnit.Schedule).
     */
    private List<Unit> next(List<Unit> order, Unit u) {
        int i = order.indexOf(u);
        if (i < 0) {
            order.add(u);
            return List.of();
        }
        List<Unit> out = new ArrayList<>();
        for (int j = i + 1; j < order.size() && out.size() < prefetch; j++) {
            if (order != backwardOrder || order.get(j).unshardInBackward) {
                out.add(order.get(j));
            }
        }
        return out;
    }

    // ------------------------------------------------------------------ gathers (FsdpParam)

    private static boolean materialised(Param p) {
        return p.value != null || p.imaged;
    }

    /** Starts the unit's grouped all-gather of every parameter that allows one (FsdpParam.beginGather). */
    void prefetch(Unit u) {
        List<Param> parts = new ArrayList<>();
        for (Param p : u.params) {
            if (materialised(p) || p.alone() || !p.layout.contiguousEven()) {
                continue;
            }
            p.value = mem.f32(Category.GATHERED, p.elements(), p.name);
            p.pendingGather = true;
            parts.add(p);
        }
        if (!parts.isEmpty() && bf16Wire) {
            long bytes = 0;
            for (Param p : parts) {
                bytes += (2 * p.elements() + 255) & ~255L;
            }
            u.wire = mem.f32(Category.GATHERED, Math.max(1, (bytes + 3) / 4), "bf16 wire of " + u.path);
        }
    }

    void unshard(Unit u) {
        prefetch(u);
        complete(u);
        for (Param p : u.params) {
            if (!materialised(p) && !p.alone()) {
                blockingGather(p);
            } else if (p.computesOnShard && narrowParams && p.shardElements() > 0 && p.value == null
                    && p.computeCopy == null) {
                // its compute copy, through the wire of a group of its rank alone (FsdpParam.unshard), where it keeps
                // no bf16 one
                p.value = mem.f32(Category.GATHERED, p.shardElements(), p.name + " (compute copy of the shard)");
            }
        }
    }

    /** A started gather completes: on the bf16 wire its parts become images and give their f32 buffers back. */
    private void complete(Unit u) {
        for (Param p : u.params) {
            if (!p.pendingGather) {
                continue;
            }
            p.pendingGather = false;
            if (bf16Wire) {
                mem.free(p.value);
                p.value = null;
                p.imaged = true;
            }
        }
    }

    /** ShardLayout.allGather of a layout that is not even and contiguous: padded pieces through a receive buffer. */
    private void blockingGather(Param p) {
        p.value = mem.f32(Category.GATHERED, p.elements(), p.name);
        long piece = p.pieceElements();
        int n = p.shape[p.layout.dim()];
        int[] r = p.layout.range(0);
        Ledger.Buf send = r[1] - r[0] == (n + p.groupSize - 1) / p.groupSize ? null
                : mem.f32(Category.WORKSPACE, piece, "all-gather padding");
        Ledger.Buf recv = mem.f32(Category.WORKSPACE, piece * p.groupSize, "all-gather receive buffer");
        mem.free(send);
        mem.free(recv);
    }

    /** The first f32 read of a unit's weights: its bf16 images are widened into new f32 buffers (materialize). */
    void readAsF32(Unit u) {
        if (u.wire == null || !bf16Wire) {
            return;
        }
        for (Param p : u.params) {
            if (p.imaged) {
                p.value = mem.f32(Category.GATHERED, p.elements(), p.name);
                p.imaged = false;
            }
        }
        mem.free(u.wire);
        u.wire = null;
    }

    void reshard(Unit u) {
        complete(u); // prefetched but never used
        for (Param p : u.params) {
            if (p.value != null) {
                mem.free(p.value);
                p.value = null;
            }
            p.imaged = false;
        }
        if (u.wire != null) { // the images went with their targets, and their buffer with the last of them
            mem.free(u.wire);
            u.wire = null;
        }
    }

    /** Whether the grouped GEMM reads this weight in place as a bf16 image (else it casts a bf16 copy). */
    boolean heldAsImage(Param p) {
        return p.imaged;
    }

    // ------------------------------------------------------------------ gradients (FsdpParam)

    /**
     * Parameter.grad() or gradBetaForFullWrite(): the unsharded gradient, made on first use in a micro-batch. In a
     * group of one it becomes the shard gradient itself, unless one exists already (gradient accumulation).
     */
    void grad(Param p) {
        if (p.grad == null) {
            Category c = p.alone() && p.shardGrad == null ? Category.GRADIENT_SHARDS : Category.UNIT_GRADIENTS;
            // Parameter.gradDType: the param dtype (bf16) where the parameter keeps a compute copy
            p.grad = mem.alloc(c, p.elements(), p.computeCopy != null ? 2 : 4, "gradient of " + p.name);
        }
    }

    /**
     * GradAccumulation.add: acc + part in f32. A bf16 acc is widened into a new f32 sum (acc freed), a bf16 part into
     * an f32 copy (part freed, the copy freed after the add); an f32 part is freed after the add. Returns the sum.
     */
    private Ledger.Buf accumulate(Ledger.Buf acc, Ledger.Buf part, long elements, String name) {
        Ledger.Buf sum = acc;
        if (acc.elementBytes < 4) {
            sum = mem.f32(Category.GRADIENT_SHARDS, elements, "gradient of " + name + " widened");
            mem.free(acc);
        }
        Ledger.Buf x = part;
        if (part.elementBytes < 4) {
            x = mem.f32(Category.UNIT_GRADIENTS, elements, "gradient of " + name + " widened");
            mem.free(part);
        }
        mem.free(x);
        return sum;
    }

    /**
     * Parameter.accumulateGrad: a gradient made elsewhere (the fused loss's, in the head's forward) becomes the
     * unsharded gradient when there is none yet, else it is added and given back.
     */
    void adoptGrad(Param p, Ledger.Buf g) {
        p.grad = p.grad == null ? g : accumulate(p.grad, g, p.elements(), p.name);
    }

    private void beginReduce(Param p) {
        grad(p); // zeros when backward never touched it
        Ledger.Buf full = p.grad;
        p.grad = null;
        finishReduce(p);
        if (!p.alone() && p.shardGrad == null && p.layout.contiguousEven()) {
            p.shardGrad = mem.f32(Category.GRADIENT_SHARDS, p.shardElements(), "gradient shard of " + p.name);
            p.reducingFrom = full;
            return;
        }
        Ledger.Buf part = p.alone() ? full : blockingReduceScatter(p);
        if (part != full) {
            mem.free(full);
        }
        p.shardGrad = p.shardGrad == null ? part : accumulate(p.shardGrad, part, p.shardElements(), p.name);
    }

    /** ShardLayout.reduceScatter: the shard of the sum; uneven or strided layouts go through padded buffers. */
    private Ledger.Buf blockingReduceScatter(Param p) {
        Category c = p.shardGrad == null ? Category.GRADIENT_SHARDS : Category.UNIT_GRADIENTS;
        Ledger.Buf shard = mem.f32(c, p.shardElements(), "gradient shard of " + p.name);
        if (!p.layout.contiguousEven()) {
            long piece = p.pieceElements();
            Ledger.Buf send = mem.f32(Category.WORKSPACE, piece * p.groupSize, "reduce-scatter send buffer");
            Ledger.Buf recv = mem.f32(Category.WORKSPACE, piece, "reduce-scatter receive buffer");
            mem.free(send);
            mem.free(recv);
        }
        return shard;
    }

    void finishReduce(Param p) {
        if (p.reducingFrom != null) {
            mem.free(p.reducingFrom);
            p.reducingFrom = null;
        }
    }

    /** FsdpParam.zeroGrad: the shard gradient is dropped (its memory goes when the step's scope closes). */
    void zeroGrad(Param p) {
        finishReduce(p);
        p.shardGrad = null;
    }

    /** FsdpParam.shardGrad(): completes the reduce-scatter; zeros when nothing was reduced. */
    void shardGrad(Param p) {
        finishReduce(p);
        if (p.shardGrad == null) {
            p.shardGrad = mem.f32(Category.GRADIENT_SHARDS, p.shardElements(), "gradient shard of " + p.name);
        }
    }
}
