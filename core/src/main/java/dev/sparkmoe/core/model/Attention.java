package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.GemmOperand;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.List;

/**
 * Qwen3 attention: q/k/v projections, per-head RMSNorm of q and k (q_norm, k_norm), rotary embedding, causal
 * grouped-query attention, output projection. No biases.
 */
public final class Attention extends Module {
    final Parameter qProj;   // [Hq*D, H]
    final Parameter kProj;   // [Hkv*D, H]
    final Parameter vProj;   // [Hkv*D, H]
    final Parameter oProj;   // [H, Hq*D]
    final Parameter qNorm;   // [D]
    final Parameter kNorm;   // [D]
    private final int hidden;
    private final int qHeads;
    private final int kvHeads;
    private final int headDim;
    private final float eps;
    private final float theta;

    Attention(String path, Qwen3MoeConfig c, Backend be) {
        super(path);
        hidden = c.hiddenSize();
        qHeads = c.numAttentionHeads();
        kvHeads = c.numKeyValueHeads();
        headDim = c.headDim();
        eps = (float) c.rmsNormEps();
        theta = (float) c.ropeTheta();
        qProj = new Parameter(path + ".q_proj.weight", be, qHeads * headDim, hidden).readByGemmsOnly();
        kProj = new Parameter(path + ".k_proj.weight", be, kvHeads * headDim, hidden).readByGemmsOnly();
        vProj = new Parameter(path + ".v_proj.weight", be, kvHeads * headDim, hidden).readByGemmsOnly();
        oProj = new Parameter(path + ".o_proj.weight", be, hidden, qHeads * headDim).readByGemmsOnly();
        qNorm = new Parameter(path + ".q_norm.weight", be, headDim);
        kNorm = new Parameter(path + ".k_norm.weight", be, headDim);
    }

    @Override
    public List<Parameter> ownParameters() {
        return List.of(qProj, kProj, vProj, oProj, qNorm, kNorm);
    }

    /** Saved activations of one forward. */
    static final class Cache {
        Tensor x;        // [N, H] input
        Tensor qRaw;     // [N, Hq*D] before q_norm
        Tensor kRaw;     // [N, Hkv*D] before k_norm
        Tensor qRstd;    // [N*Hq]
        Tensor kRstd;    // [N*Hkv]
        Tensor q;        // [N, Hq*D] after norm and rope, in the attention's input dtype
        Tensor k;        // [N, Hkv*D] after norm and rope, in the attention's input dtype
        Tensor v;        // [N, Hkv*D] in the attention's input dtype
        Tensor lse;      // [B*Hq*T] log-sum-exp of each attention score row
        Tensor attn;     // [N, Hq*D] attention output before o_proj
    }

    float scale() {
        return (float) Math.pow(headDim, -0.5);
    }

    Tensor forward(Backend be, Tensor x, int batch, int seqLen, Cache c) {
        int n = batch * seqLen;
        c.x = x;
        Tensor xg = GemmOperand.of(be, x); // converted once for the three projections
        c.qRaw = Linear.forward(be, xg, n, qProj);
        c.kRaw = Linear.forward(be, xg, n, kProj);
        Tensor v = Linear.forward(be, xg, n, vProj);
        GemmOperand.release(be, xg, x);
        // q, k and v as attention reads them (bf16 where its kernels multiply bf16 copies: the same values)
        DType inDType = be.attentionInputDType(headDim);
        if (inDType == DType.F32) {
            c.v = v;
        } else {
            c.v = be.empty(inDType, n, kvHeads * headDim);
            be.convert(v, c.v);
            be.release(v);
        }
        c.q = be.empty(inDType, n, qHeads * headDim);
        c.k = be.empty(inDType, n, kvHeads * headDim);
        c.qRstd = be.empty(DType.F32, n * qHeads);
        c.kRstd = be.empty(DType.F32, n * kvHeads);
        be.rmsNormRopeForward(c.qRaw, qNorm.value(), eps, n, qHeads, headDim, seqLen, theta, c.q, c.qRstd);
        be.rmsNormRopeForward(c.kRaw, kNorm.value(), eps, n, kvHeads, headDim, seqLen, theta, c.k, c.kRstd);
        c.attn = be.empty(DType.F32, n, qHeads * headDim);
        c.lse = be.empty(DType.F32, batch * qHeads * seqLen);
        be.attentionForward(c.q, c.k, c.v, batch, seqLen, qHeads, kvHeads, headDim, scale(), c.attn, c.lse);
        return Linear.forward(be, c.attn, n, oProj);
    }

    /**
     * Gives back every activation of the cache (activation checkpointing: {@link #forward} on the same input makes
     * them again); the input {@code c.x} is the caller's and only forgotten.
     */
    void drop(Backend be, Cache c) {
        Release.all(be, c.qRaw, c.kRaw, c.qRstd, c.kRstd, c.q, c.k, c.v, c.lse, c.attn);
        c.qRaw = c.kRaw = c.qRstd = c.kRstd = c.q = c.k = c.v = c.lse = c.attn = null;
        c.x = null;
    }

    /**
     * Returns dx [N, H] and accumulates the parameter gradients. Releases every tensor of the cache except its input
     * {@code c.x} (owned by the caller) and every temporary as soon as it is consumed.
     */
    Tensor backward(Backend be, Tensor dy, int batch, int seqLen, Cache c) {
        int n = batch * seqLen;
        Tensor dAttn = Linear.backward(be, dy, c.attn, n, oProj);
        Tensor dq = be.empty(DType.F32, n, qHeads * headDim);
        Tensor dk = be.empty(DType.F32, n, kvHeads * headDim);
        Tensor dv = be.empty(DType.F32, n, kvHeads * headDim);
        be.attentionBackward(dAttn, c.q, c.k, c.v, c.attn, c.lse, batch, seqLen, qHeads, kvHeads, headDim, scale(),
                dq, dk, dv);
        Release.all(be, dAttn, c.attn, c.q, c.k, c.v, c.lse);
        // the projections' output gradients, read only by their GEMMs
        Tensor dqRaw = GemmOperand.empty(be, n, qHeads * headDim);
        Tensor dkRaw = GemmOperand.empty(be, n, kvHeads * headDim);
        be.rmsNormRopeBackward(dq, c.qRaw, qNorm.value(), c.qRstd, n, qHeads, headDim, seqLen, theta, dqRaw,
                qNorm.grad());
        be.rmsNormRopeBackward(dk, c.kRaw, kNorm.value(), c.kRstd, n, kvHeads, headDim, seqLen, theta, dkRaw,
                kNorm.grad());
        Release.all(be, dq, dk, c.qRaw, c.kRaw, c.qRstd, c.kRstd);
        Tensor xg = GemmOperand.of(be, c.x);
        Tensor dx = Linear.backward(be, dqRaw, xg, n, qProj);
        Linear.backward(be, dkRaw, xg, n, kProj, dx, 1f);
        Linear.backward(be, dv, xg, n, vProj, dx, 1f);
        GemmOperand.release(be, xg, c.x);
        Release.all(be, dqRaw, dkRaw, dv);
        return dx;
    }
}
