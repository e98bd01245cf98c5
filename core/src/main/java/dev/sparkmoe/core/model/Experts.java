package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.model.moe.LocalTokenDispatcher;
import dev.sparkmoe.core.model.moe.TokenDispatcher;
import dev.sparkmoe.core.model.moe.TokenDispatcher.Dispatch;
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

    Experts(String path, Qwen3MoeConfig c) {
        super(path);
        hidden = c.hiddenSize();
        inter = c.moeIntermediateSize();
        numExperts = c.numExperts();
        localExperts = numExperts;
        gateProj = new Parameter(path + ".gate_proj", Tensor.zeros(DType.F32, numExperts, inter, hidden));
        upProj = new Parameter(path + ".up_proj", Tensor.zeros(DType.F32, numExperts, inter, hidden));
        downProj = new Parameter(path + ".down_proj", Tensor.zeros(DType.F32, numExperts, hidden, inter));
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
    public void partition(int first, int count, TokenDispatcher newDispatcher) {
        if (first < 0 || count <= 0 || first + count > numExperts) {
            throw new IllegalArgumentException("expert slice [" + first + ", " + (first + count)
                    + ") does not fit " + numExperts + " experts in " + path());
        }
        this.firstExpert = first;
        this.localExperts = count;
        this.dispatcher = newDispatcher;
        gateProj.reshape(new int[] {count, inter, hidden});
        upProj.reshape(new int[] {count, inter, hidden});
        downProj.reshape(new int[] {count, hidden, inter});
    }

    static final class Cache {
        Dispatch dispatch;
        Tensor gate;  // [rows, I]
        Tensor up;    // [rows, I]
        Tensor act;   // [rows, I]
    }

    /** hidden [N, H], expertIds [N*K] -> expert outputs in slot order [N*K, H]. */
    Tensor forward(Backend be, Tensor hiddenStates, int[] expertIds, int tokens, int topK, Cache c) {
        Dispatch d = dispatcher.dispatch(be, hiddenStates, expertIds, tokens, topK, hidden, numExperts);
        c.dispatch = d;
        int rows = d.rows();
        c.gate = Tensor.zeros(DType.F32, rows, inter);
        c.up = Tensor.zeros(DType.F32, rows, inter);
        c.act = Tensor.zeros(DType.F32, rows, inter);
        Tensor out = Tensor.zeros(DType.F32, rows, hidden);
        Tensor wg = gateProj.value();
        Tensor wu = upProj.value();
        Tensor wd = downProj.value();
        int row = 0;
        for (int e = 0; e < localExperts; e++) {
            int cnt = d.localCounts()[e];
            if (cnt > 0) {
                int xo = row * hidden;
                int io = row * inter;
                be.gemm(false, true, cnt, inter, hidden, 1f, d.routed(), xo, hidden, wg, e * inter * hidden, hidden,
                        0f, c.gate, io, inter);
                be.gemm(false, true, cnt, inter, hidden, 1f, d.routed(), xo, hidden, wu, e * inter * hidden, hidden,
                        0f, c.up, io, inter);
                be.siluMulForward(c.gate, c.up, c.act, io, cnt * inter);
                be.gemm(false, true, cnt, hidden, inter, 1f, c.act, io, inter, wd, e * hidden * inter, inter,
                        0f, out, xo, hidden);
            }
            row += cnt;
        }
        return dispatcher.combine(be, out, d);
    }

    /** dSlots [N*K, H] -> accumulates into dHidden [N, H] and the expert weight gradients. */
    void backward(Backend be, Tensor dSlots, Cache c, Tensor dHidden) {
        Dispatch d = c.dispatch;
        Tensor dOut = dispatcher.combineBackward(be, dSlots, d);
        int rows = d.rows();
        Tensor dAct = Tensor.zeros(DType.F32, rows, inter);
        Tensor dGate = Tensor.zeros(DType.F32, rows, inter);
        Tensor dUp = Tensor.zeros(DType.F32, rows, inter);
        Tensor dRouted = Tensor.zeros(DType.F32, rows, hidden);
        Tensor wg = gateProj.value();
        Tensor wu = upProj.value();
        Tensor wd = downProj.value();
        Tensor gg = gateProj.grad();
        Tensor gu = upProj.grad();
        Tensor gd = downProj.grad();
        int row = 0;
        for (int e = 0; e < localExperts; e++) {
            int cnt = d.localCounts()[e];
            if (cnt > 0) {
                int xo = row * hidden;
                int io = row * inter;
                // dAct = dOut Wd_e ; dWd_e += dOut^T act
                be.gemm(false, false, cnt, inter, hidden, 1f, dOut, xo, hidden, wd, e * hidden * inter, inter,
                        0f, dAct, io, inter);
                be.gemm(true, false, hidden, inter, cnt, 1f, dOut, xo, hidden, c.act, io, inter,
                        1f, gd, e * hidden * inter, inter);
                be.siluMulBackward(dAct, c.gate, c.up, dGate, dUp, io, cnt * inter);
                // dRouted = dGate Wg_e + dUp Wu_e ; dWg_e += dGate^T x ; dWu_e += dUp^T x
                be.gemm(false, false, cnt, hidden, inter, 1f, dGate, io, inter, wg, e * inter * hidden, hidden,
                        0f, dRouted, xo, hidden);
                be.gemm(false, false, cnt, hidden, inter, 1f, dUp, io, inter, wu, e * inter * hidden, hidden,
                        1f, dRouted, xo, hidden);
                be.gemm(true, false, inter, hidden, cnt, 1f, dGate, io, inter, d.routed(), xo, hidden,
                        1f, gg, e * inter * hidden, hidden);
                be.gemm(true, false, inter, hidden, cnt, 1f, dUp, io, inter, d.routed(), xo, hidden,
                        1f, gu, e * inter * hidden, hidden);
            }
            row += cnt;
        }
        dispatcher.dispatchBackward(be, dRouted, d, dHidden);
    }
}
