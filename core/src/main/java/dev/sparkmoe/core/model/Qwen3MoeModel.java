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
 * <p>The root module owns no parameter; its children are the {@link TokenEmbedding}, the {@link LmHead} (final norm
 * and LM head, whose weight is the embedding when tied) and the decoder layers. FSDP and other wrappers hook the
 * root, the embedding, the head and each decoder layer: the root's hooks enclose the whole forward and the whole
 * backward, the embedding's its lookup (forward, first) and its gradient's scatter-add (backward, last), the head's
 * the final norm, the LM head and the loss (forward, after the last layer) and the hand-over of their gradients
 * (backward, before the last layer's). The head's backward reads no weight: the fused loss computes the LM head's
 * gradients, and then the final norm's, in the head's forward. {@link #parameters()} lists the embedding, the final
 * norm, the LM head, then the layers' parameters (the order they had when the root owned all three). The model never
 * refers to ranks or meshes: global statistics go through a {@link StatsReducer}.
 */
public final class Qwen3MoeModel extends Module {
    private final Qwen3MoeConfig config;
    private final Backend backend;
    final TokenEmbedding embedding;
    final Parameter embed;     // [V, H], the embedding's table
    final LmHead head;         // final norm [H] and LM head [V, H] (the embedding when tied)
    final DecoderLayer[] layers;
    private ActivationCheckpointing checkpointing = ActivationCheckpointing.NONE;
    private int lossChunkRows; // 0: the loss's rule
    private LmHeadLoss lmHeadLoss = LmHeadLoss.LOCAL;

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
        embedding = new TokenEmbedding(config, backend);
        embed = embedding.weight;
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

    /** None: the embedding is the {@link TokenEmbedding}'s, the final norm and an untied LM head the head's. */
    @Override
    public List<Parameter> ownParameters() {
        return List.of();
    }

    /**
     * The embedding, the head, then the decoder layers: in this order {@link #parameters()} (and with it
     * {@link #namedParameters()}, {@link #state()}) keeps the order it had when the root owned the embedding, the
     * final norm and the LM head. Forward and backward call the modules' hooks in execution order, whatever this
     * order.
     */
    @Override
    public List<Module> children() {
        List<Module> out = new ArrayList<>(layers.length + 2);
        out.add(embedding);
        out.add(head);
        out.addAll(List.of(layers));
        return out;
    }

    /** The token embedding, a module of its own (an FSDP unit under the parallel plan when untied). */
    public TokenEmbedding embedding() {
        return embedding;
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

    /**
     * What each decoder layer keeps for its backward pass from now on ({@link ActivationCheckpointing}); a pass
     * already made keeps the setting it was made with. Every setting gives the same results.
     */
    public void setActivationCheckpointing(ActivationCheckpointing mode) {
        if (mode == null) {
            throw new IllegalArgumentException("activation checkpointing must be none, full or selective, not null");
        }
        this.checkpointing = mode;
    }

    public ActivationCheckpointing activationCheckpointing() {
        return checkpointing;
    }

    /**
     * Token rows per chunk of the fused LM head and cross-entropy; 0 (the default) chooses them from the memory bound
     * that {@link FusedLinearCrossEntropy} documents (the hidden size). A value of at least B*T computes the loss in
     * one chunk, holding [B*T, V] logits as the unfused loss did (for comparisons and benchmarks; a chunk never
     * exceeds 2^31 - 1 elements).
     */
    public void setLossChunkRows(int rows) {
        if (rows < 0) {
            throw new IllegalArgumentException("loss chunk rows must be 0 (automatic) or positive, got " + rows);
        }
        this.lossChunkRows = rows;
    }

    /**
     * How the head computes the LM head and the loss from now on: {@link LmHeadLoss#LOCAL} (the default) on the
     * weight the head holds, or what a parallel plan installs (a vocabulary-parallel loss over the rank's rows of an
     * untied LM head). Every implementation gives the same loss and gradients.
     */
    public void setLmHeadLoss(LmHeadLoss loss) {
        if (loss == null) {
            throw new IllegalArgumentException("the LM head loss must not be null (LmHeadLoss.LOCAL is the default)");
        }
        this.lmHeadLoss = loss;
    }

    public LmHeadLoss lmHeadLoss() {
        return lmHeadLoss;
    }

    /** The rows per loss chunk that a forward pass over {@code tokens} tokens uses (the local loss's rule). */
    public int lossChunkRows(int tokens) {
        return lossChunkRows(config, tokens, lossChunkRows);
    }

    /**
     * The rows per loss chunk of a model of config {@code c} over {@code tokens} tokens with {@code requested} rows
     * set ({@link #setLossChunkRows}; 0: the rule), without a model (the memory planner's).
     */
    public static int lossChunkRows(Qwen3MoeConfig c, int tokens, int requested) {
        return LmHeadLoss.chunkRows(tokens, c.hiddenSize(), c.vocabSize(), requested);
    }

    /** One forward pass over a batch, holding what the backward pass needs. */
    public static final class Pass {
        final int batch;
        final int seqLen;
        final Tensor ids;      // I32 [N] on the backend
        final Tensor targets;  // I32 [N] on the backend
        final DecoderLayer.Cache[] caches;
        final ActivationCheckpointing checkpointing;
        // The head's gradients, all computed in the forward pass (the fused loss, then the final norm's backward) and
        // handed over by backward: no weight is read after the head's forward.
        Tensor dResidual;   // [N, H] d(loss)/d(input of the final norm), the last layer's output gradient
        Tensor dNormWeight; // [H] d(loss)/d(final norm weight); added to its gradient by backward
        Tensor dHeadWeight; // [V, H] d(loss)/d(LM head weight); likewise
        Tensor logits;      // [N, V], only when the forward pass was asked to retain them
        double lmLossSum;
        double auxLoss;
        Tensor auxGrad;     // [E] d(loss)/d(probs[row, e]) from the load-balancing loss
        long localPredicted;
        final List<Tensor> routerLogits = new ArrayList<>();
        final double[] routerStats; // counts[E], prob sums[E], rows: the load-balancing loss's statistics

        Pass(int batch, int seqLen, Tensor ids, Tensor targets, int layers, ActivationCheckpointing checkpointing,
             int experts) {
            this.batch = batch;
            this.seqLen = seqLen;
            this.ids = ids;
            this.targets = targets;
            this.checkpointing = checkpointing;
            caches = new DecoderLayer.Cache[layers];
            routerStats = new double[2 * experts + 1];
        }

        /** Logits [B*T, V], when {@link #forward} was asked to retain them. */
        public Tensor logits() {
            if (logits == null) {
                throw new IllegalStateException("this forward pass did not retain its logits (the fused loss never "
                        + "holds more than a chunk of them); call forward with retainLogits = true to read them");
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
     * they were made in closes) at the cost of a [B*T, V] buffer. The LM head and the cross-entropy run fused and
     * chunked ({@link FusedLinearCrossEntropy}, or the {@link #setLmHeadLoss} a plan installed): the LM head's gradients (its weight's and its input's) are computed
     * here, chunk by chunk, so no [B*T, V] tensor exists unless the logits are retained; with its input's gradient
     * known, the final norm's backward runs here too. The pass holds the head's three gradients (LM head weight,
     * final norm weight, the last layer's output) until {@link #backward} hands them over, so the head's backward
     * reads no weight. The parameters' gradients are not touched before {@link #backward}. Each decoder layer keeps
     * what {@link #activationCheckpointing()} says.
     */
    public Pass forward(int[] ids, int[] targets, int batch, int seqLen, double lmNormalizer, double auxWeight,
                        StatsReducer reducer, boolean retainLogits) {
        int n = checkBatch(ids, targets, batch, seqLen);
        Backend be = backend;
        int h = config.hiddenSize();
        ActivationCheckpointing mode = checkpointing;
        Pass pass = new Pass(batch, seqLen, be.upload(Tensor.ofInts(ids.clone(), n)),
                be.upload(Tensor.ofInts(targets.clone(), n)), layers.length, mode, config.numExperts());
        for (int t : targets) {
            pass.localPredicted += t == -100 ? 0 : 1;
        }
        beforeForward();
        embedding.beforeForward();
        Tensor x = be.empty(DType.F32, n, h);
        be.embeddingForward(embed.value(), pass.ids, n, h, x);
        embedding.afterForward();
        for (int i = 0; i < layers.length; i++) {
            layers[i].beforeForward();
            DecoderLayer.Cache c = new DecoderLayer.Cache();
            pass.caches[i] = c;
            x = layers[i].forward(be, x, batch, seqLen, c);
            if (layers[i].isMoe()) {
                pass.routerLogits.add(c.moe.routerLogits);
                if (mode == ActivationCheckpointing.FULL) {
                    addRouterStats(pass, i); // before the routing is given back
                }
            }
            layers[i].dropForRecompute(be, c, mode);
            layers[i].afterForward();
        }
        head.beforeForward();
        Tensor finalOut = be.empty(DType.F32, n, h);
        Tensor finalRstd = be.empty(DType.F32, n);
        be.rmsNormForward(x, head.norm.value(), (float) config.rmsNormEps(), n, h, finalOut, finalRstd);
        LmHeadLoss.Result loss = lmHeadLoss.run(be, finalOut, pass.targets, n, head.weight.value(),
                (float) (1.0 / lmNormalizer), true, retainLogits, lossChunkRows);
        be.release(finalOut);
        pass.lmLossSum = loss.lossSum();
        pass.dHeadWeight = loss.dWeight();
        pass.logits = loss.logits();
        // the final norm's backward, now that its output's gradient is known: its weight stays gathered for it
        pass.dResidual = be.empty(DType.F32, n, h);
        pass.dNormWeight = be.zeros(DType.F32, h);
        be.rmsNormBackward(loss.dHidden(), x, head.norm.value(), finalRstd, n, h, pass.dResidual, pass.dNormWeight);
        Release.all(be, loss.dHidden(), x, finalRstd);
        head.afterForward();
        if (mode != ActivationCheckpointing.FULL) {
            for (int i = 0; i < layers.length; i++) {
                addRouterStats(pass, i); // read back from a device backend: after the head's work was queued
            }
        }
        computeAux(pass, auxWeight, reducer);
        afterForward();
        return pass;
    }

    /**
     * Forward pass for scoring: returns the summed cross-entropy over the positions with a target (-100: none) and
     * computes no gradient. Each layer's activations are given back as soon as the next layer has its input, and
     * the loss is chunked as in training, so the memory held is about one layer's.
     */
    public double evaluate(int[] ids, int[] targets, int batch, int seqLen) {
        int n = checkBatch(ids, targets, batch, seqLen);
        Backend be = backend;
        int h = config.hiddenSize();
        Tensor idsT = be.upload(Tensor.ofInts(ids.clone(), n));
        Tensor targetsT = be.upload(Tensor.ofInts(targets.clone(), n));
        beforeForward();
        embedding.beforeForward();
        Tensor x = be.empty(DType.F32, n, h);
        be.embeddingForward(embed.value(), idsT, n, h, x);
        embedding.afterForward();
        be.release(idsT);
        for (DecoderLayer layer : layers) {
            layer.beforeForward();
            DecoderLayer.Cache c = new DecoderLayer.Cache();
            Tensor out = layer.forward(be, x, batch, seqLen, c);
            layer.releaseAll(be, c); // its input x included
            layer.afterForward();
            x = out;
        }
        head.beforeForward();
        Tensor finalOut = be.empty(DType.F32, n, h);
        Tensor rstd = be.empty(DType.F32, n);
        be.rmsNormForward(x, head.norm.value(), (float) config.rmsNormEps(), n, h, finalOut, rstd);
        Release.all(be, x, rstd);
        double loss = lmHeadLoss.run(be, finalOut, targetsT, n, head.weight.value(), 0f, false, false,
                lossChunkRows).lossSum();
        Release.all(be, finalOut, targetsT);
        head.afterForward();
        afterForward();
        return loss;
    }

    /** Checks a batch's sizes; returns its token count. */
    private int checkBatch(int[] ids, int[] targets, int batch, int seqLen) {
        int n = batch * seqLen;
        if (ids.length != n || targets.length != n) {
            throw new IllegalArgumentException("expected " + n + " ids and targets for batch " + batch + " x seq "
                    + seqLen + ", got " + ids.length + " ids and " + targets.length + " targets");
        }
        if (seqLen > config.maxPositionEmbeddings()) {
            throw new IllegalArgumentException("sequence length " + seqLen + " exceeds max_position_embeddings ("
                    + config.maxPositionEmbeddings() + ")");
        }
        return n;
    }

    /** Adds MoE layer {@code i}'s routing counts and probability sums to the pass's statistics (no-op if dense). */
    private void addRouterStats(Pass pass, int i) {
        if (layers[i].isMoe()) {
            int e = config.numExperts();
            int n = pass.batch * pass.seqLen;
            layers[i].moe().routerStats(backend, n, pass.caches[i].moe, pass.routerStats);
            pass.routerStats[2 * e] += n;
        }
    }

    /**
     * transformers' load_balancing_loss_func over the concatenated router logits of all MoE layers:
     * aux = E * sum_e (selections of e / rows) * (mean probability of e), with rows = layers * tokens, both over the
     * global batch. Its gradient with respect to probs[row, e] is E * count_e / rows^2 for every row.
     */
    private void computeAux(Pass pass, double auxWeight, StatsReducer reducer) {
        int e = config.numExperts();
        double[] stats = pass.routerStats; // counts[E], prob sums[E], rows: summed layer by layer
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
     * Backward of {@link #forward}: accumulates d(lm_loss + auxWeight * aux) into every parameter's grad (the head's,
     * the final norm's and the LM head's, come from the forward pass, which computed them in the head's forward: the
     * head's backward only adds them to the gradients, and the embedding's scatters the input gradient into its
     * table's, so neither reads a weight). A layer that the pass's activation
     * checkpointing made drop activations first computes them again (inside its backward hooks, so that wrappers see
     * the order of a backward pass: FSDP's gathered weights serve both). Each activation is released as soon as the
     * backward pass has consumed it, so the memory held falls layer by layer instead of peaking at forward
     * activations plus every layer's gradient temporaries; afterwards only the retained logits, the router logits and
     * a few small tensors remain (until the caller's scope closes).
     */
    public void backward(Pass pass) {
        Backend be = backend;
        int n = pass.batch * pass.seqLen;
        int h = config.hiddenSize();
        beforeBackward();
        head.beforeBackward();
        head.weight.accumulateGrad(pass.dHeadWeight);
        head.norm.accumulateGrad(pass.dNormWeight);
        Tensor dx = pass.dResidual;
        pass.dHeadWeight = pass.dNormWeight = pass.dResidual = null;
        head.afterBackward();
        for (int i = layers.length - 1; i >= 0; i--) {
            layers[i].beforeBackward();
            layers[i].recompute(be, pass.caches[i], pass.batch, pass.seqLen, pass.checkpointing);
            Tensor dIn = layers[i].backward(be, dx, pass.batch, pass.seqLen, pass.caches[i], pass.auxGrad);
            be.release(dx);
            dx = dIn;
            layers[i].afterBackward();
            pass.caches[i] = null; // the layer released its activations
        }
        embedding.beforeBackward();
        be.embeddingBackward(dx, pass.ids, n, h, embed.grad());
        be.release(dx);
        embedding.afterBackward();
        afterBackward();
    }
}
