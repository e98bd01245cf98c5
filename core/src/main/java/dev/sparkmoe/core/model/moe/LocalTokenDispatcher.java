package dev.sparkmoe.core.model.moe;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/** All experts on this rank: dispatch is a permutation of the token slots into expert-major order. */
public final class LocalTokenDispatcher implements TokenDispatcher {
    public static final LocalTokenDispatcher INSTANCE = new LocalTokenDispatcher();

    /** Row j of the routed tensor holds slot {@code slotOfRow[j]} (I32 on the backend). */
    record Meta(Tensor slotOfRow, int rows, int tokens, int topK) {
    }

    @Override
    public Dispatch dispatch(Backend backend, Tensor hidden, Tensor expertIds, int tokens, int topK, int hiddenSize,
                             int numExperts) {
        int rows = tokens * topK;
        Grouping g = group(backend, expertIds, rows, numExperts);
        Meta meta = new Meta(g.slotOfRow(), rows, tokens, topK);
        return new Dispatch(gather(backend, hidden, meta, hiddenSize), g.counts(), 0, meta);
    }

    /** Slots in expert-major order (I32 [rows] on the backend) and the rows of each expert (host). */
    public record Grouping(Tensor slotOfRow, int[] counts) {
    }

    /**
     * The {@code rows} slots grouped by expert ({@link Backend#groupByExpert}: on the device, only the counts come
     * back) into a new tensor, which is given back if the grouping fails (an expert id out of range).
     */
    public static Grouping group(Backend backend, Tensor expertIds, int rows, int numExperts) {
        Tensor slotOfRow = backend.empty(DType.I32, rows);
        try {
            return new Grouping(slotOfRow, backend.groupByExpert(expertIds, rows, numExperts, slotOfRow));
        } catch (RuntimeException e) {
            backend.release(slotOfRow);
            throw e;
        }
    }

    private static Tensor gather(Backend backend, Tensor hidden, Meta m, int hiddenSize) {
        Tensor routed = backend.emptyGemmOperand(m.rows, hiddenSize); // read only by the experts' grouped GEMMs
        backend.gatherRows(hidden, m.slotOfRow, m.rows, hiddenSize, m.topK, routed);
        return routed;
    }

    @Override
    public boolean canRegather() {
        return true;
    }

    @Override
    public Tensor regather(Backend backend, Tensor hidden, Dispatch d) {
        return gather(backend, hidden, (Meta) d.meta(), hidden.dim(1));
    }

    @Override
    public void release(Backend backend, Dispatch d) {
        backend.release(((Meta) d.meta()).slotOfRow());
    }

    @Override
    public Tensor combine(Backend backend, Tensor expertOut, Dispatch d) {
        Meta m = (Meta) d.meta();
        int h = expertOut.dim(1);
        Tensor slots = backend.empty(DType.F32, m.tokens * m.topK, h);
        backend.scatterRows(expertOut, m.slotOfRow, m.rows, h, slots);
        return slots;
    }

    @Override
    public Tensor combineBackward(Backend backend, Tensor dSlots, Dispatch d) {
        Meta m = (Meta) d.meta();
        int h = dSlots.dim(1);
        Tensor dOut = backend.emptyGemmOperand(m.rows, h); // read only by the experts' grouped GEMMs
        backend.gatherRows(dSlots, m.slotOfRow, m.rows, h, 1, dOut);
        return dOut;
    }

    @Override
    public void dispatchBackward(Backend backend, Tensor dRouted, Dispatch d, Tensor dHidden) {
        Meta m = (Meta) d.meta();
        Tensor dSlots = combine(backend, dRouted, d);
        // Each token adds its K contributions in slot order, whatever rank its experts ran on.
        backend.sumSlots(dSlots, m.tokens, m.topK, dRouted.dim(1), dHidden);
        backend.release(dSlots);
    }
}
