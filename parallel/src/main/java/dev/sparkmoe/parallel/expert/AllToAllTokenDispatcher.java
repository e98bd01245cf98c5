package dev.sparkmoe.parallel.expert;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.moe.LocalTokenDispatcher;
import dev.sparkmoe.core.model.moe.TokenDispatcher;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;

/**
 * Expert-parallel token movement over the {@code ep} group, as torchtitan's ExpertParallel does it: the experts are
 * split in contiguous blocks of {@code E / ep} over the group's ranks. Dispatch sorts this rank's token slots by
 * expert, exchanges the per-expert counts by all-to-all, derives the split sizes, sends the rows by all-to-all and
 * permutes what arrives (grouped by source rank, then expert) into local-expert-major order for one grouped GEMM.
 * Combine runs the inverse: un-permute, all-to-all back, un-sort into slot order. The backward passes run the same
 * exchanges in the opposite direction. All per-step state lives in the immutable {@link Meta}.
 */
public final class AllToAllTokenDispatcher implements TokenDispatcher {
    private final Communicator ep;
    private final int numExperts;
    private final int localExperts;

    public AllToAllTokenDispatcher(Communicator ep, int numExperts) {
        if (numExperts % ep.size() != 0) {
            throw new IllegalArgumentException("ep (" + ep.size() + ") must divide num_experts (" + numExperts + ")");
        }
        this.ep = ep;
        this.numExperts = numExperts;
        this.localExperts = numExperts / ep.size();
    }

    public int localExperts() {
        return localExperts;
    }

    public int firstLocalExpert() {
        return ep.rank() * localExperts;
    }

    /**
     * Everything combine and the backward passes need.
     *
     * @param slotOfRow       send order: row j of the send buffer holds token slot slotOfRow[j] (sorted by expert),
     *                        I32 on the backend
     * @param sendTotal       rows sent in all
     * @param sendRowsPerPeer rows sent to each ep rank
     * @param recvRowsPerPeer rows received from each ep rank
     * @param recvCounts      [source rank][local expert] rows received
     * @param localOfRecv     received row r (source-major order) sits at local row localOfRecv[r] (expert-major),
     *                        I32 on the backend
     * @param recvTotal       rows received in all
     */
    public record Meta(Tensor slotOfRow, int sendTotal, int[] sendRowsPerPeer, int[] recvRowsPerPeer,
                       int[][] recvCounts, Tensor localOfRecv, int recvTotal, int tokens, int topK) {
    }

    /**
     * Worked out on one rank without communication: given the counts this rank receives ([source][local expert]),
     * the local-expert-major position of each received row. Rows from source s for expert e are contiguous in the
     * receive buffer (sources in rank order, experts ascending within a source); locally, expert e's rows come
     * first ordered by source.
     */
    public static int[] localOrder(int[][] recvCounts, int localExperts, int[] localCountsOut) {
        int sources = recvCounts.length;
        int[] expertStart = new int[localExperts];
        for (int e = 0; e < localExperts; e++) {
            int c = 0;
            for (int s = 0; s < sources; s++) {
                c += recvCounts[s][e];
            }
            localCountsOut[e] = c;
            if (e > 0) {
                expertStart[e] = expertStart[e - 1] + localCountsOut[e - 1];
            }
        }
        int total = 0;
        for (int c : localCountsOut) {
            total += c;
        }
        int[] localOf = new int[total];
        int[] fill = expertStart.clone();
        int r = 0;
        for (int s = 0; s < sources; s++) {
            for (int e = 0; e < localExperts; e++) {
                for (int i = 0; i < recvCounts[s][e]; i++) {
                    localOf[r++] = fill[e]++;
                }
            }
        }
        return localOf;
    }

    @Override
    public Dispatch dispatch(Backend backend, Tensor hidden, Tensor expertIds, int tokens, int topK, int hiddenSize,
                             int totalExperts) {
        if (totalExperts != numExperts) {
            throw new IllegalArgumentException("dispatcher built for " + numExperts + " experts, model has "
                    + totalExperts);
        }
        int peers = ep.size();
        int rows = tokens * topK;
        LocalTokenDispatcher.Grouping grouping = LocalTokenDispatcher.group(backend, expertIds, rows, numExperts);
        Tensor slotOfRow = grouping.slotOfRow();
        int[] counts = grouping.counts();
        // Exchange counts: to peer p go the counts of p's experts.
        int[] countSplits = new int[peers];
        java.util.Arrays.fill(countSplits, localExperts);
        int[] recvFlat = new int[peers * localExperts];
        ep.allToAll(counts, countSplits, recvFlat, countSplits);
        int[][] recvCounts = new int[peers][localExperts];
        int[] sendRows = new int[peers];
        int[] recvRows = new int[peers];
        for (int p = 0; p < peers; p++) {
            for (int e = 0; e < localExperts; e++) {
                recvCounts[p][e] = recvFlat[p * localExperts + e];
                recvRows[p] += recvCounts[p][e];
                sendRows[p] += counts[p * localExperts + e];
            }
        }
        int totalRecv = 0;
        for (int r : recvRows) {
            totalRecv += r;
        }
        int[] localCounts = new int[localExperts];
        int[] localOf = localOrder(recvCounts, localExperts, localCounts);
        Meta meta = new Meta(slotOfRow, rows, sendRows, recvRows, recvCounts,
                backend.upload(Tensor.ofInts(localOf, totalRecv)), totalRecv, tokens, topK);
        // Rows in expert order are already grouped by destination rank.
        Tensor sendBuf = backend.empty(DType.F32, rows, hiddenSize);
        backend.gatherRows(hidden, meta.slotOfRow, rows, hiddenSize, topK, sendBuf);
        Tensor routed = exchange(backend, sendBuf, sendRows, recvRows, meta.localOfRecv, totalRecv, hiddenSize);
        return new Dispatch(routed, localCounts, firstLocalExpert(), meta);
    }

    private static int[] scaled(int[] rows, int width) {
        int[] out = new int[rows.length];
        for (int i = 0; i < rows.length; i++) {
            out[i] = rows[i] * width;
        }
        return out;
    }

    /**
     * Sends rows by all-to-all ({@code sendRows[p]} to each peer p, {@code recvRows[p]} from it) and scatters what
     * arrives to the positions {@code placeOf} (local-expert-major order going out, slot order coming home).
     */
    private Tensor exchange(Backend backend, Tensor sendBuf, int[] sendRows, int[] recvRows, Tensor placeOf,
                            int totalRecv, int h) {
        Tensor recvBuf = backend.empty(DType.F32, totalRecv, h); // every row arrives
        ep.allToAll(sendBuf, scaled(sendRows, h), recvBuf, scaled(recvRows, h));
        backend.release(sendBuf);
        Tensor local = backend.empty(DType.F32, totalRecv, h); // placeOf is a permutation
        backend.scatterRows(recvBuf, placeOf, totalRecv, h, local);
        backend.release(recvBuf);
        return local;
    }

    /** Local-expert-major rows back to receive order, sent home, placed in slot order. */
    private Tensor homeInSlotOrder(Backend backend, Tensor localRows, Meta m) {
        int h = localRows.dim(1);
        Tensor back = backend.empty(DType.F32, m.recvTotal, h);
        backend.gatherRows(localRows, m.localOfRecv, m.recvTotal, h, 1, back);
        // every token slot was sent exactly once, so the rows coming home fill all tokens * topK slots
        return exchange(backend, back, m.recvRowsPerPeer, m.sendRowsPerPeer, m.slotOfRow, m.sendTotal, h);
    }

    /** Slot-ordered rows sent to the experts' ranks and placed in local-expert-major order. */
    private Tensor awayInLocalOrder(Backend backend, Tensor slotRows, Meta m) {
        int h = slotRows.dim(1);
        Tensor sendBuf = backend.empty(DType.F32, m.sendTotal, h);
        backend.gatherRows(slotRows, m.slotOfRow, m.sendTotal, h, 1, sendBuf);
        return exchange(backend, sendBuf, m.sendRowsPerPeer, m.recvRowsPerPeer, m.localOfRecv, m.recvTotal, h);
    }

    @Override
    public void release(Backend backend, Dispatch d) {
        Meta m = (Meta) d.meta();
        backend.release(m.slotOfRow);
        backend.release(m.localOfRecv);
    }

    @Override
    public SlotRows combine(Backend backend, Tensor expertOut, Dispatch d) {
        return new SlotRows(homeInSlotOrder(backend, expertOut, (Meta) d.meta()), null);
    }

    @Override
    public Tensor combineBackward(Backend backend, Tensor dSlots, Dispatch d) {
        return awayInLocalOrder(backend, dSlots, (Meta) d.meta());
    }

    @Override
    public void dispatchBackward(Backend backend, Tensor dRouted, Dispatch d, Tensor dHidden) {
        Meta m = (Meta) d.meta();
        Tensor dSlots = homeInSlotOrder(backend, dRouted, m);
        backend.sumSlots(dSlots, null, m.tokens, m.topK, dRouted.dim(1), dHidden);
        backend.release(dSlots);
    }
}
