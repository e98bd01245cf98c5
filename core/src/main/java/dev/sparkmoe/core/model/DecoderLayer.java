package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.GemmOperand;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.List;

/** One transformer block: x + attn(norm(x)), then + mlp(norm(.)) where mlp is the MoE block or a dense MLP. */
public final class DecoderLayer extends Module {
    final Parameter inputNorm; // [H]
    final Parameter postNorm;  // [H]
    final Attention attention;
    final MoeBlock moe;        // null for a dense layer
    final DenseMlp mlp;        // null for a sparse layer
    private final int hidden;
    private final float eps;

    DecoderLayer(int index, Qwen3MoeConfig c, Backend be) {
        super("model.layers." + index);
        hidden = c.hiddenSize();
        eps = (float) c.rmsNormEps();
        inputNorm = new Parameter(path() + ".input_layernorm.weight", be, hidden);
        postNorm = new Parameter(path() + ".post_attention_layernorm.weight", be, hidden);
        attention = new Attention(path() + ".self_attn", c, be);
        if (c.isMoeLayer(index)) {
            moe = new MoeBlock(path() + ".mlp", c, be);
            mlp = null;
        } else {
            moe = null;
            mlp = new DenseMlp(path() + ".mlp", c, be);
        }
    }

    @Override
    public List<Parameter> ownParameters() {
        return List.of(inputNorm, postNorm);
    }

    @Override
    public List<Module> children() {
        return List.of(attention, moe != null ? moe : mlp);
    }

    public boolean isMoe() {
        return moe != null;
    }

    public MoeBlock moe() {
        return moe;
    }

    static final class Cache {
        Tensor x;
        Tensor rstd1;
        Tensor h1;
        Tensor x2;
        Tensor rstd2;
        Tensor h2;
        final Attention.Cache attn = new Attention.Cache();
        final MoeBlock.Cache moe = new MoeBlock.Cache();
        final DenseMlp.Cache mlp = new DenseMlp.Cache();
    }

    Tensor forward(Backend be, Tensor x, int batch, int seqLen, Cache c) {
        int n = batch * seqLen;
        c.x = x;
        attentionHalf(be, batch, seqLen, c);
        Tensor m = moe != null ? moe.forward(be, c.h2, n, c.moe) : mlp.forward(be, c.h2, n, c.mlp);
        be.axpy(1f, c.x2, 0, m, 0, m.numel()); // out = x2 + mlp(norm(x2)), in place into the mlp output
        return m;
    }

    /** From the input {@code c.x}: h1 = norm1(x), x2 = x + attn(h1), h2 = norm2(x2), with what their backward needs. */
    private void attentionHalf(Backend be, int batch, int seqLen, Cache c) {
        int n = batch * seqLen;
        c.h1 = GemmOperand.empty(be, n, hidden); // read by the q, k and v projections only
        c.rstd1 = be.empty(DType.F32, n);
        be.rmsNormForward(c.x, inputNorm.value(), eps, n, hidden, c.h1, c.rstd1);
        c.x2 = attention.forward(be, c.h1, batch, seqLen, c.attn);
        c.h2 = GemmOperand.empty(be, n, hidden); // read by the router and the experts' (or MLP's) projections
        c.rstd2 = be.empty(DType.F32, n);
        // x2 = x + attn(norm(x)), accumulated in place into the attention output, and its norm
        be.residualRmsNormForward(c.x2, c.x, postNorm.value(), eps, n, hidden, c.h2, c.rstd2);
    }

    /**
     * After {@link #forward}: gives back what {@code mode} does not keep for the backward pass
     * ({@link ActivationCheckpointing}); {@link #recompute} makes it again. The input {@code c.x} always stays.
     */
    void dropForRecompute(Backend be, Cache c, ActivationCheckpointing mode) {
        if (mode == ActivationCheckpointing.NONE) {
            return;
        }
        Release.all(be, c.h1, c.rstd1, c.x2, c.rstd2, c.h2);
        c.h1 = c.rstd1 = c.x2 = c.rstd2 = c.h2 = null;
        attention.drop(be, c.attn);
        if (moe != null) {
            moe.drop(be, c.moe, mode);
        } else {
            mlp.drop(be, c.mlp);
        }
    }

    /**
     * At the start of the backward pass (inside this layer's backward hooks): computes again what
     * {@link #dropForRecompute} gave back, with the same kernels in the same order on the same input as
     * {@link #forward}, so the backward pass reads the same values. A no-op for {@link ActivationCheckpointing#NONE}.
     */
    void recompute(Backend be, Cache c, int batch, int seqLen, ActivationCheckpointing mode) {
        if (mode == ActivationCheckpointing.NONE) {
            return;
        }
        int n = batch * seqLen;
        attentionHalf(be, batch, seqLen, c);
        if (moe != null) {
            moe.recompute(be, c.h2, n, c.moe, mode);
        } else {
            mlp.activations(be, c.h2, n, c.mlp);
        }
    }

    /** Gives back everything a forward pass made, its input {@code c.x} and its router logits included. */
    void releaseAll(Backend be, Cache c) {
        dropForRecompute(be, c, ActivationCheckpointing.FULL);
        if (moe != null) {
            be.release(c.moe.routerLogits);
            c.moe.routerLogits = null;
        }
        be.release(c.x);
        c.x = null;
    }

    /**
     * dOut [N, H] -> dx [N, H] (a new tensor; dOut stays the caller's). Releases the whole cache, the layer's input
     * {@code c.x} included, and every temporary once consumed: after the backward of layer i only the activations of
     * layers below i are still held.
     */
    Tensor backward(Backend be, Tensor dOut, int batch, int seqLen, Cache c, Tensor auxGrad) {
        int n = batch * seqLen;
        Tensor dh2 = moe != null ? moe.backward(be, dOut, n, c.moe, auxGrad)
                : mlp.backward(be, dOut, n, c.mlp);
        // dx2 = norm2'(dh2) + dOut
        Tensor dx2 = be.empty(DType.F32, n, hidden);
        be.rmsNormBackwardResidual(dh2, c.x2, postNorm.value(), c.rstd2, n, hidden, dOut, dx2, postNorm.grad());
        Release.all(be, dh2, c.x2, c.rstd2, c.h2);
        Tensor dh1 = attention.backward(be, dx2, batch, seqLen, c.attn);
        // dx = norm1'(dh1) + dx2
        Tensor dx = be.empty(DType.F32, n, hidden);
        be.rmsNormBackwardResidual(dh1, c.x, inputNorm.value(), c.rstd1, n, hidden, dx2, dx, inputNorm.grad());
        Release.all(be, dh1, c.h1, c.rstd1, c.x);
        be.release(dx2);
        return dx;
    }
}
