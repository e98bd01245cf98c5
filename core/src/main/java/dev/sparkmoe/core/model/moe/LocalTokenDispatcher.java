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

    /**
     * Stable counting sort of slots by expert: returns {@code slotOfRow} and fills {@code counts[e]}. Slots of one
     * expert keep their slot order (token-major), which makes results independent of anything but the routing.
     */
    public static int[] sortSlotsByExpert(int[] expertIds, int numExperts, int[] counts) {
        for (int e : expertIds) {
            if (e < 0 || e >= numExperts) {
                throw new IllegalArgumentException("expert id " + e + " outside [0, " + numExperts + ")");
            }
            counts[e]++;
        }
        int[] start = new int[numExperts];
        for (int e = 1; e < numExperts; e++) {
            start[e] = start[e - 1] + counts[e - 1];
        }
        int[] slotOfRow = new int[expertIds.length];
        for (int s = 0; s < expertIds.length; s++) {
            slotOfRow[start[expertIds[s]]++] = s;
        }
        return slotOfRow;
    }

    @Override
    public Dispatch dispatch(Backend backend, Tensor hidden, int[] expertIds, int tokens, int topK, int hiddenSize,
                             int numExperts) {
        int[] counts = new int[numExperts];
        int[] slotOfRow = sortSlotsByExpert(expertIds, numExperts, counts);
        int rows = slotOfRow.length;
        Meta meta = new Meta(backend.upload(Tensor.ofInts(slotOfRow, rows)), rows, tokens, topK);
        return new Dispatch(gather(backend, hidden, meta, hiddenSize), counts, 0, meta);
    }

    private static Tensor gather(Backend backend, Tensor hidden, Meta m, int hiddenSize) {
        Tensor routed = backend.empty(DType.F32, m.rows, hiddenSize);
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
        Tensor dOut = backend.empty(DType.F32, m.rows, h);
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
