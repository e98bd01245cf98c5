package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
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

    DecoderLayer(int index, Qwen3MoeConfig c) {
        super("model.layers." + index);
        hidden = c.hiddenSize();
        eps = (float) c.rmsNormEps();
        inputNorm = new Parameter(path() + ".input_layernorm.weight", Tensor.zeros(DType.F32, hidden));
        postNorm = new Parameter(path() + ".post_attention_layernorm.weight", Tensor.zeros(DType.F32, hidden));
        attention = new Attention(path() + ".self_attn", c);
        if (c.isMoeLayer(index)) {
            moe = new MoeBlock(path() + ".mlp", c);
            mlp = null;
        } else {
            moe = null;
            mlp = new DenseMlp(path() + ".mlp", c);
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
        c.h1 = Tensor.zeros(DType.F32, n, hidden);
        c.rstd1 = Tensor.zeros(DType.F32, n);
        be.rmsNormForward(x, inputNorm.value(), eps, n, hidden, c.h1, c.rstd1);
        Tensor a = attention.forward(be, c.h1, batch, seqLen, c.attn);
        c.x2 = x.copy();
        be.axpy(1f, a, 0, c.x2, 0, c.x2.numel());
        c.h2 = Tensor.zeros(DType.F32, n, hidden);
        c.rstd2 = Tensor.zeros(DType.F32, n);
        be.rmsNormForward(c.x2, postNorm.value(), eps, n, hidden, c.h2, c.rstd2);
        Tensor m = moe != null ? moe.forward(be, c.h2, n, c.moe) : mlp.forward(be, c.h2, n, c.mlp);
        Tensor out = c.x2.copy();
        be.axpy(1f, m, 0, out, 0, out.numel());
        return out;
    }

    Tensor backward(Backend be, Tensor dOut, int batch, int seqLen, Cache c, float[] auxGradPerExpert) {
        int n = batch * seqLen;
        Tensor dh2 = moe != null ? moe.backward(be, dOut, n, c.moe, auxGradPerExpert)
                : mlp.backward(be, dOut, n, c.mlp);
        Tensor dx2 = dOut.copy();
        Tensor tmp = Tensor.zeros(DType.F32, n, hidden);
        be.rmsNormBackward(dh2, c.x2, postNorm.value(), c.rstd2, n, hidden, tmp, postNorm.grad());
        be.axpy(1f, tmp, 0, dx2, 0, dx2.numel());
        Tensor dh1 = attention.backward(be, dx2, batch, seqLen, c.attn);
        Tensor dx = dx2.copy();
        be.rmsNormBackward(dh1, c.x, inputNorm.value(), c.rstd1, n, hidden, tmp, inputNorm.grad());
        be.axpy(1f, tmp, 0, dx, 0, dx.numel());
        return dx;
    }
}
