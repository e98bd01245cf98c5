package dev.sparkmoe.core.model;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.nn.Module;
import dev.sparkmoe.core.nn.Parameter;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.io.WeightSource;
import dev.sparkmoe.core.tensor.Region;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.core.tensor.TensorSpec;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

/**
 * Qwen3MoeForCausalLM as transformers defines it, with an explicit backward pass: token embedding, decoder layers,
 * final RMSNorm, LM head (tied or untied), causal-LM cross-entropy and the load-balancing auxiliary loss.
 *
 * <p>Parameter names are the Hub names, except that each MoE layer's experts are stacked:
 * {@code model.layers.L.mlp.experts.gate_proj} [E, I, H], {@code up_proj} [E, I, H], {@code down_proj} [E, H, I].
 *
 * <p>The root module owns the embedding; its children are the {@link LmHead} (final norm and LM head, whose weight
 * is the embedding when tied) and the decoder layers. FSDP and other wrappers hook the root, the head and each
 * decoder layer: the root's hooks enclose the whole forward and the whole backward, the head's the final norm and
 * the LM head projection (forward, after the last layer) and their gradients (backward, before the last layer's).
 * {@link #parameters()} lists the embedding, the final norm, the LM head, then the layers' parameters (the order
 * they had when the root owned all three). The model never refers to ranks or meshes: global statistics go through
 * a {@link StatsReducer}.
 */
public final class Qwen3MoeModel extends Module {
    private final Qwen3MoeConfig config;
    private final Backend backend;
    final Parameter embed;     // [V, H]
    final LmHead head;         // final norm [H] and LM head [V, H] (the embedding when tied)
    final DecoderLayer[] layers;

    /** The model with every parameter allocated (zeros) on {@code backend}. */
    public Qwen3MoeModel(Qwen3MoeConfig config, Backend backend) {
        this(config, backend, true);
    }

    private Qwen3MoeModel(Qwen3MoeConfig config, Backend backend, boolean materialise) {
        super("");
        this.config = config;
        this.backend = backend;
        int v = config.vocabSize();
        int h = config.hiddenSize();
        embed = new Parameter("model.embed_tokens.weight", backend, v, h);
        head = new LmHead(config, backend, embed);
        layers = new DecoderLayer[config.numHiddenLayers()];
        for (int i = 0; i < layers.length; i++) {
            layers[i] = new DecoderLayer(i, config, backend);
        }
        if (materialise) {
            for (Parameter p : parameters()) {
                p.setValue(backend.zeros(DType.F32, p.shape()));
            }
        }
    }

    /**
     * The model with parameters that have their shapes and no memory (torch's meta device): a parallel plan places
     * them first, then each rank allocates and fills only its own shards. {@link #initRandom} and
     * {@link #loadState} materialise them whole instead.
     */
    public static Qwen3MoeModel unmaterialised(Qwen3MoeConfig config, Backend backend) {
        return new Qwen3MoeModel(config, backend, false);
    }

    public Qwen3MoeConfig config() {
        return config;
    }

    public Backend backend() {
        return backend;
    }

    /** The embedding (the LM head weight too when tied); the final norm and an untied LM head are the head's. */
    @Override
    public List<Parameter> ownParameters() {
        return List.of(embed);
    }

    /**
     * The head, then the decoder layers: the head comes first so that {@link #parameters()} (and with it
     * {@link #namedParameters()}, {@link #state()}) keeps the order it had when the root owned the final norm and the
     * LM head. Forward and backward call the modules' hooks in execution order, whatever this order.
     */
    @Override
    public List<Module> children() {
        List<Module> out = new ArrayList<>(layers.length + 1);
        out.add(head);
        out.addAll(List.of(layers));
        return out;
    }

    /** The final norm and LM head, a module of its own (an FSDP unit under the parallel plan). */
    public LmHead head() {
        return head;
    }

    public List<DecoderLayer> layers() {
        return List.of(layers);
    }

    /** Parameters by name, in declaration order. */
    public Map<String, Parameter> namedParameters() {
        Map<String, Parameter> out = new LinkedHashMap<>();
        for (Parameter p : parameters()) {
            out.put(p.name(), p);
        }
        return out;
    }

    /** Number of MoE layers (the first dimension of the router-logits output). */
    public int moeLayerCount() {
        int n = 0;
        for (DecoderLayer l : layers) {
            n += l.isMoe() ? 1 : 0;
        }
        return n;
    }

    // ------------------------------------------------------------------ weights

    /** Every parameter's name, dtype (f32) and full shape, in declaration order. Before any parallel plan. */
    public List<TensorSpec> parameterSpecs() {
        List<TensorSpec> out = new ArrayList<>();
        for (Parameter p : parameters()) {
            out.add(new TensorSpec(p.name(), DType.F32, p.shape()));
        }
        return out;
    }

    /**
     * Random initialisation as transformers does it for this model: normal(0, initializer_range) for linear and
     * embedding weights, ones for norms, each element a function of the seed, the parameter's name and the element's
     * index ({@link WeightInit}), so that a sharded model initialises every shard to the same values.
     */
    public void initRandom(long seed, double std) {
        try {
            loadState(WeightInit.source(parameterSpecs(), seed, std));
        } catch (IOException e) {
            throw new UncheckedIOException(e); // computed, never read from a file
        }
    }

    /**
     * Checks a set of weights (stacked-expert naming, see the class comment) against the parameters: every parameter
     * must be present with its exact shape and a floating dtype, and nothing else may be given. The error lists the
     * problems. Call it before any parallel plan changes the parameters' shapes.
     */
    public void checkWeights(Map<String, TensorSpec> weights) {
        Map<String, Parameter> params = namedParameters();
        List<String> problems = new ArrayList<>();
        for (Map.Entry<String, Parameter> e : params.entrySet()) {
            TensorSpec t = weights.get(e.getKey());
            if (t == null) {
                problems.add("missing " + e.getKey() + " " + Arrays.toString(e.getValue().shape()));
            } else if (!Arrays.equals(t.shape(), e.getValue().shape())) {
                problems.add(e.getKey() + ": expected shape " + Arrays.toString(e.getValue().shape()) + ", got "
                        + Arrays.toString(t.shape()));
            } else if (!t.dtype().isFloating()) {
                problems.add(e.getKey() + ": expected a floating dtype, got " + t.dtype());
            }
        }
        TreeSet<String> unexpected = new TreeSet<>(weights.keySet());
        unexpected.removeAll(params.keySet());
        if (config.tieWordEmbeddings()) {
            unexpected.remove("lm_head.weight"); // some checkpoints store the tied head anyway
        }
        for (String u : unexpected) {
            problems.add("unexpected tensor " + u + " (not a parameter of this config)");
        }
        if (!problems.isEmpty()) {
            throw new IllegalArgumentException("weights do not match the model config (" + problems.size()
                    + " problems): " + String.join("; ", problems.subList(0, Math.min(12, problems.size())))
                    + (problems.size() > 12 ? "; ..." : "")
                    + ". Check that config.json belongs to this checkpoint.");
        }
    }

    /**
     * Copies full weights (stacked-expert naming, see the class comment) into the parameters. Every parameter must
     * be present with its exact shape and nothing else may be given; all is checked before anything is written.
     */
    public void loadState(Map<String, Tensor> state) {
        Map<String, TensorSpec> specs = new LinkedHashMap<>();
        for (Map.Entry<String, Tensor> e : state.entrySet()) {
            specs.put(e.getKey(), new TensorSpec(e.getKey(), e.getValue().dtype(), e.getValue().shape()));
        }
        checkWeights(specs);
        for (Parameter p : parameters()) {
            Tensor src = state.get(p.name());
            Tensor f32 = src.dtype() == DType.F32 ? src : Tensor.of(src.floats().clone(), src.shape());
            if (!p.isMaterialised()) {
                p.setValue(backend.zeros(DType.F32, p.shape()));
            }
            backend.copyFromHost(f32, p.value());
        }
    }

    /**
     * Reads every parameter from {@code source} (checked first as {@link #checkWeights}), a bounded piece at a time:
     * the host memory used besides the parameters is {@value #LOAD_PIECE} floats, however large the model.
     */
    public void loadState(WeightSource source) throws IOException {
        checkWeights(source.tensors());
        float[] staging = new float[LOAD_PIECE];
        for (Parameter p : parameters()) {
            if (!p.isMaterialised()) {
                p.setValue(backend.zeros(DType.F32, p.shape()));
            }
            WeightSource.copyInto(source, p.name(), Region.whole(p.shape()), backend, p.value(), staging);
        }
    }

    /** Floats per piece when weights are read from a {@link WeightSource}: 4 MiB. */
    public static final int LOAD_PIECE = 1 << 20;

    /** Host copies of the full weights, stacked-expert naming. Requires materialised parameters. */
    public Map<String, Tensor> state() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Parameter p : parameters()) {
            Tensor host = backend.download(p.value());
            out.put(p.name(), host == p.value() ? host.copy() : host);
        }
        return out;
    }

    // ------------------------------------------------------------------ forward / backward

    /** One forward pass over a batch, holding what the backward pass needs. */
    public static final class Pass {
        final int batch;
        final int seqLen;
        final Tensor ids;      // I32 [N] on the backend
        final Tensor targets;  // I32 [N] on the backend
        final DecoderLayer.Cache[] caches;
        Tensor finalIn;     // [N, H] input of the final norm
        Tensor finalRstd;   // [N]
        Tensor finalOut;    // [N, H]
        Tensor logits;      // [N, V], only when the forward pass was asked to retain them
        Tensor dLogits;     // [N, V] (written over the logits when they are not retained)
        double lmLossSum;
        double auxLoss;
        Tensor auxGrad;     // [E] d(loss)/d(probs[row, e]) from the load-balancing loss
        long localPredicted;
        final List<Tensor> routerLogits = new ArrayList<>();

        Pass(int batch, int seqLen, Tensor ids, Tensor targets, int layers) {
            this.batch = batch;
            this.seqLen = seqLen;
            this.ids = ids;
            this.targets = targets;
            caches = new DecoderLayer.Cache[layers];
        }

        /** Logits [B*T, V], when {@link #forward} was asked to retain them. */
        public Tensor logits() {
            if (logits == null) {
                throw new IllegalStateException("this forward pass did not retain its logits (the loss gradient was "
                        + "written over them); call forward with retainLogits = true to read them");
            }
            return logits;
        }

        /** Sum over this rank's predicted tokens of the cross-entropy. */
        public double lmLossSum() {
            return lmLossSum;
        }

        /** The load-balancing loss over the global batch (before the coefficient). */
        public double auxLoss() {
            return auxLoss;
        }

        /** Tokens with a target on this rank. */
        public long localPredicted() {
            return localPredicted;
        }

        /** Router logits of each MoE layer, [B*T, E] each, in layer order. */
        public List<Tensor> routerLogits() {
            return routerLogits;
        }
    }

    /**
     * Forward pass with losses. {@code targets[n]} is the token that position n must predict, or -100.
     *
     * @param lmNormalizer  the global number of predicted tokens the LM loss is averaged over (the gradient of
     *                      the summed cross-entropy is scaled by its inverse)
     * @param auxWeight     the weight of the auxiliary loss in the total loss whose gradient backward computes
     *                      (router_aux_loss_coef, divided by the number of accumulated micro-batches)
     * @param reducer       sums router statistics over data-parallel ranks
     */
    public Pass forward(int[] ids, int[] targets, int batch, int seqLen, double lmNormalizer, double auxWeight,
                        StatsReducer reducer) {
        return forward(ids, targets, batch, seqLen, lmNormalizer, auxWeight, reducer, false);
    }

    /**
     * As above; with {@code retainLogits} the logits stay readable through {@link Pass#logits()} (until the scope
     * they were made in closes) at the cost of a second [B*T, V] buffer. Without it the loss gradient is written over
     * them, which is what training wants: at a vocabulary of 32k and 8k tokens that is 1 GB less at the peak.
     */
    public Pass forward(int[] ids, int[] targets, int batch, int seqLen, double lmNormalizer, double auxWeight,
                        StatsReducer reducer, boolean retainLogits) {
        int n = batch * seqLen;
        if (ids.length != n || targets.length != n) {
            throw new IllegalArgumentException("expected " + n + " ids and targets for batch " + batch + " x seq "
                    + seqLen + ", got " + ids.length + " ids and " + targets.length + " targets");
        }
        if (seqLen > config.maxPositionEmbeddings()) {
            throw new IllegalArgumentException("sequence length " + seqLen + " exceeds max_position_embeddings ("
                    + config.maxPositionEmbeddings() + ")");
        }
        Backend be = backend;
        int h = config.hiddenSize();
        int v = config.vocabSize();
        Pass pass = new Pass(batch, seqLen, be.upload(Tensor.ofInts(ids.clone(), n)),
                be.upload(Tensor.ofInts(targets.clone(), n)), layers.length);
        for (int t : targets) {
            pass.localPredicted += t == -100 ? 0 : 1;
        }
        beforeForward();
        Tensor x = be.empty(DType.F32, n, h);
        be.embeddingForward(embed.value(), pass.ids, n, h, x);
        for (int i = 0; i < layers.length; i++) {
            layers[i].beforeForward();
            pass.caches[i] = new DecoderLayer.Cache();
            x = layers[i].forward(be, x, batch, seqLen, pass.caches[i]);
            if (layers[i].isMoe()) {
                pass.routerLogits.add(pass.caches[i].moe.routerLogits);
            }
            layers[i].afterForward();
        }
        head.beforeForward();
        pass.finalIn = x;
        pass.finalOut = be.empty(DType.F32, n, h);
        pass.finalRstd = be.empty(DType.F32, n);
        be.rmsNormForward(x, head.norm.value(), (float) config.rmsNormEps(), n, h, pass.finalOut, pass.finalRstd);
        Tensor logits = Linear.forward(be, pass.finalOut, n, head.weight);
        head.afterForward();
        pass.logits = retainLogits ? logits : null;
        pass.dLogits = retainLogits ? be.empty(DType.F32, n, v) : logits;
        pass.lmLossSum = be.crossEntropy(logits, pass.targets, n, v, (float) (1.0 / lmNormalizer), pass.dLogits);
        computeAux(pass, auxWeight, reducer);
        afterForward();
        return pass;
    }

    /**
     * transformers' load_balancing_loss_func over the concatenated router logits of all MoE layers:
     * aux = E * sum_e (selections of e / rows) * (mean probability of e), with rows = layers * tokens, both over the
     * global batch. Its gradient with respect to probs[row, e] is E * count_e / rows^2 for every row.
     */
    private void computeAux(Pass pass, double auxWeight, StatsReducer reducer) {
        int e = config.numExperts();
        double[] stats = new double[2 * e + 1]; // counts[E], prob sums[E], rows
        int n = pass.batch * pass.seqLen;
        for (int i = 0; i < layers.length; i++) {
            if (layers[i].isMoe()) {
                layers[i].moe().routerStats(backend, n, pass.caches[i].moe, stats);
                stats[2 * e] += n;
            }
        }
        reducer.sum(stats);
        double rows = stats[2 * e];
        float[] auxGrad = new float[e];
        double aux = 0;
        if (rows > 0) {
            for (int j = 0; j < e; j++) {
                aux += (stats[j] / rows) * (stats[e + j] / rows);
                auxGrad[j] = (float) (auxWeight * e * (stats[j] / rows) / rows);
            }
        }
        pass.auxLoss = aux * e;
        pass.auxGrad = backend.upload(Tensor.of(auxGrad, e));
    }

    /**
     * Backward of {@link #forward}: accumulates d(lm_loss + auxWeight * aux) into every parameter's grad. Each
     * activation is released as soon as the backward pass has consumed it, so the memory held falls layer by layer
     * instead of peaking at forward activations plus every layer's gradient temporaries; afterwards only the
     * retained logits, the router logits and a few small tensors remain (until the caller's scope closes).
     */
    public void backward(Pass pass) {
        Backend be = backend;
        int n = pass.batch * pass.seqLen;
        int h = config.hiddenSize();
        int v = config.vocabSize();
        beforeBackward();
        head.beforeBackward();
        Tensor dFinal = be.empty(DType.F32, n, h);
        Linear.backwardInput(be, pass.dLogits, 0, n, head.weight.value(), 0, h, v, dFinal, 0, 0f);
        Linear.backwardWeight(be, pass.dLogits, n, pass.finalOut, head.weight);
        Release.all(be, pass.dLogits, pass.finalOut);
        pass.dLogits = null;
        Tensor dx = be.empty(DType.F32, n, h);
        be.rmsNormBackward(dFinal, pass.finalIn, head.norm.value(), pass.finalRstd, n, h, dx, head.norm.grad());
        Release.all(be, dFinal, pass.finalIn, pass.finalRstd);
        head.afterBackward();
        for (int i = layers.length - 1; i >= 0; i--) {
            layers[i].beforeBackward();
            Tensor dIn = layers[i].backward(be, dx, pass.batch, pass.seqLen, pass.caches[i], pass.auxGrad);
            be.release(dx);
            dx = dIn;
            layers[i].afterBackward();
            pass.caches[i] = null; // the layer released its activations
        }
        be.embeddingBackward(dx, pass.ids, n, h, embed.grad());
        be.release(dx);
        afterBackward();
    }
}
