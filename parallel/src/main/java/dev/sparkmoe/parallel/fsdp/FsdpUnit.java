package dev.sparkmoe.parallel.fsdp;

import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.ModuleHook;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.comm.Pending;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.BiConsumer;
import java.util.function.BiFunction;
import java.util.function.Function;

/**
 * The FSDP hooks of one module (a "unit", as fully_shard makes one): all-gather its parameters before forward and
 * before backward, free them after forward (unless {@code reshardAfterForward} is off, as for the last decoder
 * layer), and after backward reduce-scatter the gradients into the shards and free the gathered weights. A unit
 * whose backward reads none of its weights ({@link #setUnshardInBackward}, as FSDP2's
 * {@code FSDPModule.set_unshard_in_backward(False)}: an embedding, or an output head whose gradients its forward
 * computed) is not gathered before its backward; its gradients are reduce-scattered all the same.
 *
 * <p>Overlap, as FSDP2 does it: the units' order of use is recorded on the first forward and backward; afterwards a
 * unit that gathers starts the next units' all-gathers too (the {@link FullyShard}'s prefetch depth, 2 unless the
 * trainer says otherwise: {@code training.fsdp_prefetch}), so that they run while this
 * unit computes, and a unit's reduce-scatter is started when its backward ends and completed only when the next unit
 * finishes its backward. On a communicator whose collectives are synchronous this changes nothing but the order of
 * calls.
 *
 * <p>For the Qwen3-MoE plan the recorded orders are: forward root, the embedding (untied), then each layer and its
 * experts, then the head (so the last layer prefetches the head, two units ahead); backward root, head, then the
 * layers from the last, then the embedding (so the head's reduce-scatter, started first, runs under the last layer's
 * backward). Backward prefetching looks only at the units that gather for their backward. The reduce-scatter of the
 * last unit (the embedding's, or the tied embedding's with the root) starts at the end of the backward; the trainer
 * completes it when it reads the shard gradients.
 */
public final class FsdpUnit implements ModuleHook {
    private final String path;
    private final List<FsdpParam> params;
    private final boolean reshardAfterForward;
    private final DType paramDtype;
    private final Schedule schedule;
    private boolean unshardInBackward = true;

    FsdpUnit(String path, List<FsdpParam> params, boolean reshardAfterForward, DType paramDtype, Schedule schedule) {
        this.path = path;
        this.params = List.copyOf(params);
        this.reshardAfterForward = reshardAfterForward;
        this.paramDtype = paramDtype;
        this.schedule = schedule;
    }

    public String path() {
        return path;
    }

    public List<FsdpParam> params() {
        return params;
    }

    /**
     * Whether the unit's backward reads its weights, so that they must be gathered before it (the default). Off
     * (FSDP2's {@code set_unshard_in_backward(False)}), the backward hook neither gathers this unit nor counts it
     * among the units the others prefetch for backward: its weights live only in its forward (with
     * {@code reshardAfterForward}), its backward only accumulates gradients, which are reduce-scattered as any
     * unit's. Reading a weight in such a backward fails (the parameter is not materialised).
     */
    public FsdpUnit setUnshardInBackward(boolean unshard) {
        this.unshardInBackward = unshard;
        return this;
    }

    public boolean unshardInBackward() {
        return unshardInBackward;
    }

    /** Whether the unit frees its gathered weights after its forward (else they stay into its backward). */
    public boolean reshardAfterForward() {
        return reshardAfterForward;
    }

    /** Gathers the parameters: one started group for those that allow it, then the blocking gather for the rest. */
    public void unshard() {
        prefetch();
        for (FsdpParam p : params) {
            p.unshard();
        }
    }

    public void reshard() {
        for (FsdpParam p : params) {
            p.reshard();
        }
    }

    /**
     * Starts gathering this unit's parameters ahead of use, as one grouped all-gather per communicator (FSDP2 gathers
     * a unit in one collective too): one launch instead of one per tensor, many of them small. The values travel as
     * the policy's param dtype where the communicator can ({@link Communicator#allGatherStart(List, DType)}: NCCL
     * sends bf16, so the gathered weights hold bf16-rounded values, as FSDP2's bf16 param dtype computes with), exact
     * f32 elsewhere. The master shards stay f32 in every case.
     */
    public void prefetch() {
        startGrouped(FsdpParam::beginGather, (c, parts) -> c.allGatherStart(parts, paramDtype),
                FsdpParam::gatherStarted);
    }

    /**
     * Collects each parameter's part ({@code begin}, null for none), starts the parts of each communicator as one
     * group ({@code start}) and hands every parameter its group's handle ({@code started}), completed once.
     */
    private void startGrouped(Function<FsdpParam, Communicator.Part> begin,
                              BiFunction<Communicator, List<Communicator.Part>, Pending> start,
                              BiConsumer<FsdpParam, Pending> started) {
        Map<Communicator, List<FsdpParam>> who = new LinkedHashMap<>();
        Map<Communicator, List<Communicator.Part>> parts = new LinkedHashMap<>();
        for (FsdpParam p : params) {
            Communicator.Part part = begin.apply(p);
            if (part != null) {
                who.computeIfAbsent(p.group(), g -> new ArrayList<>()).add(p);
                parts.computeIfAbsent(p.group(), g -> new ArrayList<>()).add(part);
            }
        }
        for (Map.Entry<Communicator, List<Communicator.Part>> e : parts.entrySet()) {
            Pending group = Pending.once(start.apply(e.getKey(), e.getValue()));
            for (FsdpParam p : who.get(e.getKey())) {
                started.accept(p, group);
            }
        }
    }

    @Override
    public void beforeForward(Module m) {
        unshard();
        for (FsdpUnit next : schedule.next(schedule.forward, this, schedule.prefetch)) {
            next.prefetch();
        }
    }

    @Override
    public void afterForward(Module m) {
        if (reshardAfterForward) {
            reshard();
        }
    }

    @Override
    public void beforeBackward(Module m) {
        if (unshardInBackward) {
            unshard();
        }
        for (FsdpUnit next : schedule.next(schedule.backward, this, schedule.prefetch)) {
            next.prefetch();
        }
    }

    @Override
    public void afterBackward(Module m) {
        startGrouped(FsdpParam::beginReduce, Communicator::reduceScatterSumStart, FsdpParam::reduceStarted);
        reshard();
        // the previous unit's reduce-scatters ran under this unit's backward: complete them, freeing their inputs
        FsdpUnit previous = schedule.reducing;
        if (previous != null && previous != this) {
            for (FsdpParam p : previous.params) {
                p.finishReduce();
            }
        }
        schedule.reducing = this;
    }

    /**
     * The order in which the units of one model are used, recorded on first use, and how many units ahead a unit
     * starts gathering; shared by the units.
     */
    static final class Schedule {
        final List<FsdpUnit> forward = new java.util.ArrayList<>();
        final List<FsdpUnit> backward = new java.util.ArrayList<>();
        final int prefetch;
        FsdpUnit reducing;

        Schedule(int prefetch) {
            this.prefetch = prefetch;
        }

        /**
         * Up to {@code ahead} units after {@code u} in {@code order} that gather in that pass (in backward: those
         * that unshard in backward), recording {@code u} at the end when it is new.
         */
        List<FsdpUnit> next(List<FsdpUnit> order, FsdpUnit u, int ahead) {
            int i = order.indexOf(u);
            if (i < 0) {
                order.add(u);
                return List.of();
            }
            List<FsdpUnit> out = new ArrayList<>(ahead);
            for (int j = i + 1; j < order.size() && out.size() < ahead; j++) {
                if (order != backward || order.get(j).unshardInBackward) {
                    out.add(order.get(j));
                }
            }
            return out;
        }
    }
}
