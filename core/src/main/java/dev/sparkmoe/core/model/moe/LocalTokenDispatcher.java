package dev.sparkmoe.core.model.moe;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/** All experts on this rank: dispatch is a permutation of the token slots into expert-major order. */
public final class LocalTokenDispatcher implements TokenDispatcher {
    public static final LocalTokenDispatcher INSTANCE = new LocalTokenDispatcher();

    /** Row j of the routed tensor holds slot {@code slotOfRow[j]}. */
    record Meta(int[] slotOfRow, int tokens, int topK) {
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
        Tensor routed = Tensor.zeros(DType.F32, slotOfRow.length, hiddenSize);
        float[] src = hidden.floats();
        float[] dst = routed.floats();
        for (int j = 0; j < slotOfRow.length; j++) {
            System.arraycopy(src, (slotOfRow[j] / topK) * hiddenSize, dst, j * hiddenSize, hiddenSize);
        }
        return new Dispatch(routed, counts, 0, new Meta(slotOfRow, tokens, topK));
    }

    @Override
    public Tensor combine(Backend backend, Tensor expertOut, Dispatch d) {
        Meta m = (Meta) d.meta();
        int h = expertOut.dim(1);
        Tensor slots = Tensor.zeros(DType.F32, m.tokens * m.topK, h);
        float[] src = expertOut.floats();
        float[] dst = slots.floats();
        for (int j = 0; j < m.slotOfRow.length; j++) {
            System.arraycopy(src, j * h, dst, m.slotOfRow[j] * h, h);
        }
        return slots;
    }

    @Override
    public Tensor combineBackward(Backend backend, Tensor dSlots, Dispatch d) {
        Meta m = (Meta) d.meta();
        int h = dSlots.dim(1);
        Tensor dOut = Tensor.zeros(DType.F32, m.slotOfRow.length, h);
        float[] src = dSlots.floats();
        float[] dst = dOut.floats();
        for (int j = 0; j < m.slotOfRow.length; j++) {
            System.arraycopy(src, m.slotOfRow[j] * h, dst, j * h, h);
        }
        return dOut;
    }

    @Override
    public void dispatchBackward(Backend backend, Tensor dRouted, Dispatch d, Tensor dHidden) {
        Meta m = (Meta) d.meta();
        addSlotsToTokens(combine(backend, dRouted, d), m.tokens, m.topK, dHidden);
    }

    /**
     * dHidden[n] += sum over k of dSlots[n * topK + k]: the gradient of copying each token to its topK slots. Each
     * token adds its contributions in slot order, so the result does not depend on where the experts ran.
     */
    public static void addSlotsToTokens(Tensor dSlots, int tokens, int topK, Tensor dHidden) {
        int h = dSlots.dim(1);
        float[] s = dSlots.floats();
        float[] dh = dHidden.floats();
        for (int n = 0; n < tokens; n++) {
            for (int k = 0; k < topK; k++) {
                int so = (n * topK + k) * h;
                int o = n * h;
                for (int j = 0; j < h; j++) {
                    dh[o + j] += s[so + j];
                }
            }
        }
    }
}
