package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import java.util.List;

/** The dense SwiGLU MLP of the layers that {@code mlp_only_layers} / {@code decoder_sparse_step} make dense. */
public final class DenseMlp extends Module {
    final Parameter gateProj; // [I, H]
    final Parameter upProj;   // [I, H]
    final Parameter downProj; // [H, I]
    private final int inter;

    DenseMlp(String path, Qwen3MoeConfig c, Backend be) {
        super(path);
        int hidden = c.hiddenSize();
        inter = c.intermediateSize();
        gateProj = new Parameter(path + ".gate_proj.weight", be, inter, hidden).readByGemmsOnly();
        upProj = new Parameter(path + ".up_proj.weight", be, inter, hidden).readByGemmsOnly();
        downProj = new Parameter(path + ".down_proj.weight", be, hidden, inter).readByGemmsOnly();
    }

    @Override
    public List<Parameter> ownParameters() {
        return List.of(gateProj, upProj, downProj);
    }

    static final class Cache {
        Tensor x;
        Tensor gate;
        Tensor up;
        Tensor act;
    }

    Tensor forward(Backend be, Tensor x, int tokens, Cache c) {
        activations(be, x, tokens, c);
        return Linear.forward(be, c.act, tokens, downProj);
    }

    /** gate, up and silu(gate) * up of input x into the cache: the forward pass up to the down projection. */
    void activations(Backend be, Tensor x, int tokens, Cache c) {
        c.x = x;
        c.gate = Linear.forward(be, x, tokens, gateProj);
        c.up = Linear.forward(be, x, tokens, upProj);
        c.act = be.empty(DType.F32, tokens, inter);
        be.siluMulForward(c.gate, 0, c.up, 0, tokens, inter, inter, c.act);
    }

    /** Gives back the cache's activations ({@link #activations} makes them again); the input is only forgotten. */
    void drop(Backend be, Cache c) {
        Release.all(be, c.gate, c.up, c.act);
        c.gate = c.up = c.act = null;
        c.x = null;
    }

    /** dy [N, H] -> dx [N, H]; releases the cache (not its input {@code c.x}, the caller's) and temporaries. */
    Tensor backward(Backend be, Tensor dy, int tokens, Cache c) {
        Tensor dAct = Linear.backward(be, dy, c.act, tokens, downProj);
        Tensor dGate = be.empty(DType.F32, tokens, inter);
        Tensor dUp = be.empty(DType.F32, tokens, inter);
        be.siluMulBackward(dAct, c.gate, 0, c.up, 0, tokens, inter, inter, dGate, dUp);
        Release.all(be, dAct, c.act, c.gate, c.up);
        Tensor dx = Linear.backward(be, dGate, c.x, tokens, gateProj);
        Linear.backward(be, dUp, c.x, tokens, upProj, dx, 1f);
        Release.all(be, dGate, dUp);
        return dx;
    }
}
