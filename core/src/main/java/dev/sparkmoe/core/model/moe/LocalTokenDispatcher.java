package dev.sparkmoe.core.model.moe;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/** All experts on this rank: dispatch is a permutation of the token slots into expert-major order. */
public final class LocalTokenDispatcher implements TokenDispatcher {
    public static final LocalTokenDispatcher INSTANCE = new LocalTokenDispatcher();

    /**
     * Row j of the routed tensor holds slot {@code slotOfRow[j]}, slot s is row {@code rowOfSlot[s]} (both I32 on the
     * backend, inverse permutations).
     */
    record Meta(Tensor slotOfRow, Tensor rowOfSlot, int rows, int tokens, int topK) {
    }

    @Override
    public Dispatch dispatch(Backend backend, Tensor hidden, Tensor expertIds, int tokens, int topK, int hiddenSize,
                             int numExperts) {
        int rows = tokens * topK;
        Grouping g = group(backend, expertIds, rows, numExperts);
        Tensor rowOfSlot = backend.empty(DType.I32, rows);
        backend.invertIndex(g.slotOfRow(), rows, rowOfSlot);
        Meta meta = new Meta(g.slotOfRow(), rowOfSlot, rows, tokens, topK);
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
        Meta m = (Meta) d.meta();
        backend.release(m.slotOfRow());
        backend.release(m.rowOfSlot());
    }

    /** The experts' rows themselves: the combine reads each slot where its expert wrote it (no copy). */
    @Override
    public SlotRows combine(Backend backend, Tensor expertOut, Dispatch d) {
        return new SlotRows(expertOut, ((Meta) d.meta()).rowOfSlot());
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
        // Each token adds its K contributions in slot order, whatever rank its experts ran on.
        backend.sumSlots(dRouted, m.rowOfSlot, m.tokens, m.topK, dRouted.dim(1), dHidden);
    }
}
