package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.moe.LocalTokenDispatcher;
import dev.sparkmoe.core.model.moe.TokenDispatcher;
import dev.sparkmoe.core.model.moe.TokenDispatcher.Dispatch;
import dev.sparkmoe.core.model.moe.TokenDispatcher.SlotRows;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.List;

/**
 * The stacked SwiGLU experts of one MoE layer, run as one grouped GEMM over rows grouped by expert. Holds the
 * experts {@code [firstExpert, firstExpert + localExperts)}: all of them without expert parallelism, a contiguous
 * slice of them under it. The {@link TokenDispatcher} decides where rows come from (its dispatch is this module's
 * input transform, its combine the output transform).
 */
public final class Experts extends Module {
    final Parameter gateProj; // [E_local, I, H]
    final Parameter upProj;   // [E_local, I, H]
    final Parameter downProj; // [E_local, H, I]
    private final int hidden;
    private final int inter;
    private final int numExperts;
    private int localExperts;
    private int firstExpert;
    private TokenDispatcher dispatcher = LocalTokenDispatcher.INSTANCE;

    Experts(String path, Qwen3MoeConfig c, Backend be) {
        super(path);
        hidden = c.hiddenSize();
        inter = c.moeIntermediateSize();
        numExperts = c.numExperts();
        localExperts = numExperts;
        gateProj = new Parameter(path + ".gate_proj", be, numExperts, inter, hidden).readByGemmsOnly();
        upProj = new Parameter(path + ".up_proj", be, numExperts, inter, hidden).readByGemmsOnly();
        downProj = new Parameter(path + ".down_proj", be, numExperts, hidden, inter).readByGemmsOnly();
    }

    @Override
    public List<Parameter> ownParameters() {
        return List.of(gateProj, upProj, downProj);
    }

    public int numExperts() {
        return numExperts;
    }

    public int localExperts() {
        return localExperts;
    }

    public int firstExpert() {
        return firstExpert;
    }

    public TokenDispatcher dispatcher() {
        return dispatcher;
    }

    /**
     * Keeps only experts [first, first + count) on this module (expert parallelism's partition function). The
     * parameters lose their values; the caller installs the local slices.
     */
    public void partition(int first, int count) {
        if (first < 0 || count <= 0 || first + count > numExperts) {
            throw new IllegalArgumentException("expert slice [" + first + ", " + (first + count)
                    + ") does not fit " + numExperts + " experts in " + path());
        }
        this.firstExpert = first;
        this.localExperts = count;
        gateProj.reshape(new int[] {count, inter, hidden});
        upProj.reshape(new int[] {count, inter, hidden});
        downProj.reshape(new int[] {count, hidden, inter});
    }

    /**
     * Replaces how rows reach the experts and come back (the input and output transforms of this module). Its
     * dispatch must deliver rows for exactly this module's local experts.
     */
    public void setDispatcher(TokenDispatcher newDispatcher) {
        this.dispatcher = newDispatcher;
    }

    /**
     * What the backward pass needs. silu(gate) * up is not kept (the backward makes it again from gate and up: one
     * elementwise pass instead of [rows, I] held per layer), nor are the routed rows where the dispatcher can gather
     * them again locally.
     */
    static final class Cache {
        Dispatch dispatch;
        Tensor hidden; // [N, H] the input (the caller's)
        Tensor routed; // [rows, H] the dispatch's routed rows, or null when the dispatcher regathers them
        Tensor gateUp; // [rows, 2I] each row's gate projection in columns [0, I), its up projection in [I, 2I)
    }

    /** Per-expert GEMM geometry of one dispatch: row counts and element offsets of each expert's blocks. */
    private final class Groups {
        final int n = localExperts;
        final int[] rows;       // tokens of each local expert
        final int[] inter;      // I for every expert (a GEMM dimension)
        final int[] inter2;     // 2I for every expert (gate and up side by side)
        final int[] hid;        // H for every expert
        final int[] xOff;       // offset of the expert's first row in [rows, H] buffers
        final int[] iOff;       // offset of the expert's first row in [rows, I] buffers
        final int[] guOff;      // offset of the expert's first row in [rows, 2I] buffers (its gate block)
        final int[] upOff;      // guOff + I: the up block of the same rows
        final int[] wIH;        // offset of the expert's [I, H] weight
        final int[] wHI;        // offset of the expert's [H, I] weight

        Groups(int[] counts) {
            rows = counts.clone();
            inter = new int[n];
            inter2 = new int[n];
            hid = new int[n];
            xOff = new int[n];
            iOff = new int[n];
            guOff = new int[n];
            upOff = new int[n];
            wIH = new int[n];
            wHI = new int[n];
            int i = Experts.this.inter;
            int row = 0;
            for (int e = 0; e < n; e++) {
                inter[e] = i;
                inter2[e] = 2 * i;
                hid[e] = hidden;
                xOff[e] = row * hidden;
                iOff[e] = row * i;
                guOff[e] = row * 2 * i;
                upOff[e] = guOff[e] + i;
                wIH[e] = e * i * hidden;
                wHI[e] = e * hidden * i;
                row += counts[e];
            }
        }
    }

    /**
     * hidden [N, H], expertIds (I32 [N*K], on the backend) -> the expert outputs as the token slots read them
     * ({@link TokenDispatcher#combine}: in slot order, or the experts' rows with each slot's row).
     */
    SlotRows forward(Backend be, Tensor hiddenStates, Tensor expertIds, int tokens, int topK, Cache c) {
        Dispatch d = dispatcher.dispatch(be, hiddenStates, expertIds, tokens, topK, hidden, numExperts);
        if (d.localCounts().length != localExperts || d.firstExpert() != firstExpert) {
            throw new IllegalStateException(path() + " holds experts [" + firstExpert + ", " + (firstExpert
                    + localExperts) + ") but its dispatcher delivered rows for " + d.localCounts().length
                    + " experts from " + d.firstExpert() + "; partition and dispatcher disagree");
        }
        c.dispatch = d;
        c.hidden = hiddenStates;
        int rows = d.rows();
        Groups g = new Groups(d.localCounts());
        // gateUp [rows_e, 2I] = x_e [rows_e, H] * [Wg_e; Wu_e]^T ; out [rows_e, H] = act_e [rows_e, I] * Wd_e^T
        gateAndUp(be, d.routed(), g, c);
        if (dispatcher.canRegather()) {
            be.release(d.routed());
        } else {
            c.routed = d.routed();
        }
        Tensor act = activation(be, c, rows);
        Tensor out = be.empty(DType.F32, rows, hidden);
        be.groupedGemm(false, true, g.n, g.rows, g.hid, g.inter, 1f, act, g.iOff, inter, downProj.value(),
                g.wHI, inter, 0f, out, g.xOff, hidden);
        be.release(act);
        SlotRows slots = dispatcher.combine(be, out, d);
        if (slots.rows() != out) {
            be.release(out);
        }
        return slots;
    }

    /**
     * c.gateUp [rows, 2I] (a new tensor) from the routed rows [rows, H]: one grouped GEMM whose B is the gate and up
     * weights stacked, [Wg_e; Wu_e] [2I, H], split at n = I.
     */
    private void gateAndUp(Backend be, Tensor routed, Groups g, Cache c) {
        int rows = routed.dim(0);
        c.gateUp = be.empty(DType.F32, rows, 2 * inter);
        be.groupedGemmSplitB(true, g.n, g.rows, g.inter2, g.hid, 1f, routed, g.xOff, hidden, gateProj.value(), g.wIH,
                upProj.value(), g.wIH, hidden, inter, 0f, c.gateUp, g.guOff, 2 * inter);
    }

    /**
     * Activation checkpointing, after {@link #forward}: gives back the gate and up projections ([rows, 2I]) and, under
     * {@link ActivationCheckpointing#FULL}, the dispatch too (its routed rows and index tensors: the recompute
     * dispatches again). {@link ActivationCheckpointing#SELECTIVE} keeps the dispatch, so that
     * {@link #recomputeActivations} neither routes nor moves tokens. The hidden states are the caller's and only
     * forgotten.
     */
    void drop(Backend be, Cache c, ActivationCheckpointing mode) {
        Release.all(be, c.gateUp);
        c.gateUp = null;
        c.hidden = null;
        if (mode == ActivationCheckpointing.FULL) {
            Release.all(be, c.routed);
            c.routed = null;
            dispatcher.release(be, c.dispatch);
            c.dispatch = null;
        }
    }

    /**
     * The gate and up projections of the kept dispatch made again from the same hidden states [N, H] (the routed rows
     * gathered again where the dispatcher can, else the kept ones): the cache as {@link #forward} left it.
     */
    void recomputeActivations(Backend be, Tensor hiddenStates, Cache c) {
        Dispatch d = c.dispatch;
        if (d == null) {
            throw new IllegalStateException(path() + ": no kept dispatch to recompute the activations of (the "
                    + "forward pass gave it back: recompute with the full forward instead)");
        }
        c.hidden = hiddenStates;
        Tensor routed = c.routed != null ? c.routed : dispatcher.regather(be, hiddenStates, d);
        gateAndUp(be, routed, new Groups(d.localCounts()), c);
        if (routed != c.routed) {
            be.release(routed);
        }
    }

    /** silu(gate) * up [rows, I] from c.gateUp's column blocks, a new tensor read only as a grouped GEMM operand. */
    private Tensor activation(Backend be, Cache c, int rows) {
        Tensor act = be.emptyGemmOperand(rows, inter);
        be.siluMulForward(c.gateUp, 0, c.gateUp, inter, rows, inter, 2 * inter, act);
        return act;
    }

    /**
     * The combine's backward ({@link Backend#moeCombineBackward}: dy [N, H] and the {@code slots} of
     * {@link #forward}, combined with {@code weights} [N*K]): writes dWeights [N*K] and returns the gradient of the
     * expert outputs in the experts' row order [rows, H], a grouped GEMM operand for {@link #backward}. Where the slots
     * are the experts' rows (all experts here) it is written in that order at once; else in slot order and moved by
     * the dispatcher ({@link TokenDispatcher#combineBackward}).
     */
    Tensor combineBackward(Backend be, Tensor dy, SlotRows slots, Tensor weights, int tokens, int topK,
                           Tensor dWeights, Cache c) {
        if (slots.rowOfSlot() != null) {
            Tensor dOut = be.emptyGemmOperand(c.dispatch.rows(), hidden); // read only by the grouped GEMMs
            be.moeCombineBackward(dy, slots.rows(), slots.rowOfSlot(), weights, tokens, topK, hidden, dOut, dWeights);
            return dOut;
        }
        Tensor dSlots = be.empty(DType.F32, tokens * topK, hidden);
        be.moeCombineBackward(dy, slots.rows(), null, weights, tokens, topK, hidden, dSlots, dWeights);
        Tensor dOut = dispatcher.combineBackward(be, dSlots, c.dispatch);
        be.release(dSlots);
        return dOut;
    }

    /**
     * dOut [rows, H] (the gradient of the expert outputs in the experts' row order, {@link #combineBackward}; taken
     * over) -> accumulates into dHidden [N, H] and the expert weight gradients. Releases the cache (the dispatcher's
     * index tensors through {@link TokenDispatcher#release}) and temporaries.
     */
    void backward(Backend be, Tensor dOut, Cache c, Tensor dHidden) {
        Dispatch d = c.dispatch;
        int rows = d.rows();
        Groups g = new Groups(d.localCounts());
        Tensor dAct = be.empty(DType.F32, rows, inter);
        // [rows, 2I]: dGate in columns [0, I), dUp in [I, 2I); read only as grouped GEMM operands
        Tensor dGateUp = be.emptyGemmOperand(rows, 2 * inter);
        Tensor dRouted = be.empty(DType.F32, rows, hidden);
        // Neighbouring grouped GEMMs share an operand (dOut; dGateUp; the routed rows), so that a backend that
        // converts operands (CudaBackend's bf16 copies) converts each once: act and the routed rows are made first.
        // dAct = dOut Wd_e ; dWd_e += dOut^T act
        Tensor act = activation(be, c, rows);
        be.groupedGemm(false, false, g.n, g.rows, g.inter, g.hid, 1f, dOut, g.xOff, hidden, downProj.value(),
                g.wHI, inter, 0f, dAct, g.iOff, inter);
        // the weight gradients: every expert's block is written (k = 0 scales it by beta), so the first write of a
        // step overwrites (beta 0) a gradient made without its zero fill
        be.groupedGemm(true, false, g.n, g.hid, g.inter, g.rows, 1f, dOut, g.xOff, hidden, act, g.iOff, inter,
                downProj.gradBetaForFullWrite(), downProj.grad(), g.wHI, inter);
        Release.all(be, dOut, act);
        be.siluMulBackward(dAct, c.gateUp, 0, c.gateUp, inter, rows, inter, 2 * inter, dGateUp, dGateUp);
        Release.all(be, dAct, c.gateUp);
        // dRouted = [dGate dUp]_e [Wg_e; Wu_e] (k = 2I split at I) ; dWg_e += dGate^T x ; dWu_e += dUp^T x
        Tensor routed = c.routed != null ? c.routed : dispatcher.regather(be, c.hidden, d);
        be.groupedGemmSplitB(false, g.n, g.rows, g.hid, g.inter2, 1f, dGateUp, g.guOff, 2 * inter, gateProj.value(),
                g.wIH, upProj.value(), g.wIH, hidden, inter, 0f, dRouted, g.xOff, hidden);
        be.groupedGemm(true, false, g.n, g.inter, g.hid, g.rows, 1f, dGateUp, g.guOff, 2 * inter, routed, g.xOff,
                hidden, gateProj.gradBetaForFullWrite(), gateProj.grad(), g.wIH, hidden);
        be.groupedGemm(true, false, g.n, g.inter, g.hid, g.rows, 1f, dGateUp, g.upOff, 2 * inter, routed, g.xOff,
                hidden, upProj.gradBetaForFullWrite(), upProj.grad(), g.wIH, hidden);
        Release.all(be, dGateUp, routed);
        dispatcher.dispatchBackward(be, dRouted, d, dHidden);
        be.release(dRouted);
        dispatcher.release(be, d);
        c.dispatch = null;
        c.routed = null;
        c.hidden = null;
    }
}
