package dev.sparkmoe.parallel.memory;

import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.parallel.fsdp.ShardLayout;
import dev.sparkmoe.parallel.plan.Qwen3MoeParallelizer;
import java.util.ArrayList;
import java.util.List;

/**
 * The parameters of a Qwen3-MoE model and the FSDP units the {@code qwen3_moe} plan makes of them, for rank 0 of a
 * layout (the rank with the largest shards: torch.chunk gives the first ranks the full chunks). Mirrors
 * {@code Qwen3MoeModel} (parameter names, shapes and construction order, and which it marks read only by GEMMs:
 * the projections, the router, the experts and an untied LM head), {@code ExpertParallel} (each MoE layer keeps
 * experts [0, E/ep) on rank 0) and {@code Qwen3MoeParallelizer} with {@code FullyShard} (per MoE layer an experts unit
 * on dp_shard_mod_ep and a layer unit on the whole world, then the head, then the embedding when untied, then the
 * root, which holds the embedding when tied; the last layer's units stay gathered from forward to backward, the head,
 * the embedding and the root reshard after forward and are not gathered for backward). {@code UnitLayoutTest} checks
 * it against the parameters, shards and units of a real {@code DistributedTrainer}.
 */
final class UnitLayout {

    /** One parameter as rank 0 holds it, with the planner's replay state. */
    static final class Param {
        final String name;
        final int[] globalShape; // the model's shape (stacked experts: all E)
        final int[] shape;       // the shape FSDP shards (stacked experts: the rank's E/ep)
        final int groupSize;
        final ShardLayout layout;
        boolean computesOnShard; // the LM head under the vocabulary-parallel loss: never gathered, its gradient its own
        boolean readByGemmsOnly; // Parameter.readByGemmsOnly: projections, router, experts, an untied LM head
        Unit unit;
        // replay state (FsdpReplay)
        Ledger.Buf computeCopy;  // the kept bf16 compute copy of the shard (FsdpParam.keepsComputeCopy), or null
        Ledger.Buf value;        // the gathered f32 value, or null while resharded or held only as a bf16 image
        boolean imaged;          // held as a bf16 image in its unit's wire buffer
        boolean pendingGather;   // part of a started all-gather not completed yet
        Ledger.Buf grad;         // the unsharded gradient (Parameter.grad())
        Ledger.Buf shardGrad;
        Ledger.Buf reducingFrom; // the unsharded gradient a started reduce-scatter reads

        Param(String name, int[] globalShape, int[] shape, int shardDim, int groupSize) {
            this.name = name;
            this.globalShape = globalShape;
            this.shape = shape;
            this.groupSize = groupSize;
            this.layout = new ShardLayout(shape, shardDim, groupSize);
        }

        long globalElements() {
            return numel(globalShape);
        }

        /** Elements of the unsharded tensor FSDP gathers. */
        long elements() {
            return numel(shape);
        }

        /** Elements of rank 0's shard. */
        long shardElements() {
            return numel(layout.shardShape(0));
        }

        /** Whether the value is the shard itself (a group of one, or computed on its shard). */
        boolean alone() {
            return groupSize == 1 || computesOnShard;
        }

        /**
         * FsdpParam.keepsComputeCopy: alone with its shard, read only by GEMMs, under a param dtype that the
         * backend's GEMMs take ({@code paramDtypeIsGemmDtype}: bf16 on a backend whose {@code gemmDType()} is BF16,
         * the CUDA backend at bf16 precision).
         */
        boolean keepsComputeCopy(boolean paramDtypeIsGemmDtype) {
            return paramDtypeIsGemmDtype && alone() && readByGemmsOnly;
        }

        /** Elements of the value the module computes with: the shard where computed on it, else the whole. */
        long valueElements() {
            return computesOnShard ? shardElements() : elements();
        }

        /** Elements one rank sends in the padded all-gather and reduce-scatter of an uneven or strided layout. */
        long pieceElements() {
            int chunk = (shape[layout.dim()] + groupSize - 1) / groupSize;
            return elements() / shape[layout.dim()] * chunk;
        }

        @Override
        public String toString() {
            return name + java.util.Arrays.toString(shape);
        }
    }

    /** One FSDP unit. */
    static final class Unit {
        final String path;
        final List<Param> params = new ArrayList<>();
        final int groupSize;
        final boolean reshardAfterForward;
        /** Whether its backward reads its weights (FsdpUnit.unshardInBackward). */
        final boolean unshardInBackward;
        /** Whether anything reads its weights as f32 (all but the experts, which only the grouped GEMM reads). */
        final boolean readAsF32;
        // replay state (FsdpReplay)
        Ledger.Buf wire;         // the bf16 buffer of its gather (in flight, then the images' home)

        Unit(String path, int groupSize, boolean reshardAfterForward, boolean unshardInBackward, boolean readAsF32) {
            this.path = path;
            this.groupSize = groupSize;
            this.reshardAfterForward = reshardAfterForward;
            this.unshardInBackward = unshardInBackward;
            this.readAsF32 = readAsF32;
        }

        void add(Param p) {
            params.add(p);
            p.unit = this;
        }

        long elements() {
            long n = 0;
            for (Param p : params) {
                n += p.elements();
            }
            return n;
        }

        @Override
        public String toString() {
            return path;
        }
    }

    /** The parameters of one decoder layer. */
    static final class Layer {
        final boolean moe;
        Param inputNorm;
        Param postNorm;
        Param q;
        Param k;
        Param v;
        Param o;
        Param qNorm;
        Param kNorm;
        Param router;      // MoE
        Param gate;        // experts (MoE) or dense MLP
        Param up;
        Param down;
        Unit unit;
        Unit experts;      // null for a dense layer

        Layer(boolean moe) {
            this.moe = moe;
        }
    }

    final Qwen3MoeConfig config;
    final int world;
    final int ep;
    final int localExperts;
    final Param embed;
    final Param headNorm;
    final Param lmHead;       // the embedding when tied
    final Layer[] layers;
    final Unit root;
    final Unit head;
    /** The unit holding the embedding: its own (untied), or the root's (tied). */
    final Unit embedding;
    /** In the order FullyShard made them. */
    final List<Unit> units = new ArrayList<>();
    /** In the order the model constructs them (Qwen3MoeModel's constructor). */
    final List<Param> constructionOrder = new ArrayList<>();

    UnitLayout(Qwen3MoeConfig c, int world, int ep) {
        this.config = c;
        this.world = world;
        this.ep = ep;
        int v = c.vocabSize();
        int h = c.hiddenSize();
        int e = c.numExperts();
        localExperts = e / ep;
        int expertGroup = world / ep;
        int expertDim = Qwen3MoeParallelizer.expertShardDim(localExperts, expertGroup);
        embed = param("model.embed_tokens.weight", world, 0, v, h);
        headNorm = param("model.norm.weight", world, 0, h);
        lmHead = c.tieWordEmbeddings() ? embed : gemmOnly(param("lm_head.weight", world, 0, v, h));
        lmHead.computesOnShard = !c.tieWordEmbeddings() && world > 1; // Qwen3MoeParallelizer: vocabulary-parallel
        layers = new Layer[c.numHiddenLayers()];
        for (int i = 0; i < layers.length; i++) {
            Layer l = new Layer(c.isMoeLayer(i));
            String p = "model.layers." + i;
            int hq = c.numAttentionHeads() * c.headDim();
            int hkv = c.numKeyValueHeads() * c.headDim();
            l.inputNorm = param(p + ".input_layernorm.weight", world, 0, h);
            l.postNorm = param(p + ".post_attention_layernorm.weight", world, 0, h);
            l.q = gemmOnly(param(p + ".self_attn.q_proj.weight", world, 0, hq, h));
            l.k = gemmOnly(param(p + ".self_attn.k_proj.weight", world, 0, hkv, h));
            l.v = gemmOnly(param(p + ".self_attn.v_proj.weight", world, 0, hkv, h));
            l.o = gemmOnly(param(p + ".self_attn.o_proj.weight", world, 0, h, hq));
            l.qNorm = param(p + ".self_attn.q_norm.weight", world, 0, c.headDim());
            l.kNorm = param(p + ".self_attn.k_norm.weight", world, 0, c.headDim());
            if (l.moe) {
                int in = c.moeIntermediateSize();
                l.router = gemmOnly(param(p + ".mlp.gate.weight", world, 0, e, h));
                l.gate = gemmOnly(expert(p + ".mlp.experts.gate_proj", expertGroup, expertDim, e, in, h));
                l.up = gemmOnly(expert(p + ".mlp.experts.up_proj", expertGroup, expertDim, e, in, h));
                l.down = gemmOnly(expert(p + ".mlp.experts.down_proj", expertGroup, expertDim, e, h, in));
            } else {
                int in = c.intermediateSize();
                l.gate = gemmOnly(param(p + ".mlp.gate_proj.weight", world, 0, in, h));
                l.up = gemmOnly(param(p + ".mlp.up_proj.weight", world, 0, in, h));
                l.down = gemmOnly(param(p + ".mlp.down_proj.weight", world, 0, h, in));
            }
            layers[i] = l;
        }
        // FSDP bottom-up, as Qwen3MoeParallelizer applies it: the last layer stays gathered into its backward
        for (int i = 0; i < layers.length; i++) {
            Layer l = layers[i];
            boolean reshard = i < layers.length - 1;
            if (l.moe) {
                l.experts = unit(p(i) + ".mlp.experts", expertGroup, reshard, true, false, l.gate, l.up, l.down);
                l.unit = unit(p(i), world, reshard, true, true, l.inputNorm, l.postNorm, l.q, l.k, l.v, l.o, l.qNorm,
                        l.kNorm, l.router);
            } else {
                l.unit = unit(p(i), world, reshard, true, true, l.inputNorm, l.postNorm, l.q, l.k, l.v, l.o, l.qNorm,
                        l.kNorm, l.gate, l.up, l.down);
            }
        }
        // the head, the embedding and the root: resharded after forward, not gathered for backward
        head = c.tieWordEmbeddings() ? unit("head", world, true, false, true, headNorm)
                : unit("head", world, true, false, true, headNorm, lmHead);
        Unit ownEmbedding = c.tieWordEmbeddings() ? null
                : unit("model.embed_tokens", world, true, false, true, embed);
        root = c.tieWordEmbeddings() ? unit("<root>", world, true, false, true, embed)
                : unit("<root>", world, true, false, true);
        embedding = ownEmbedding != null ? ownEmbedding : root;
    }

    /** Whether the embedding is a unit of its own (untied), not the root's. */
    boolean embeddingIsAUnit() {
        return embedding != root;
    }

    private static String p(int layer) {
        return "model.layers." + layer;
    }

    private Param param(String name, int group, int dim, int... shape) {
        Param p = new Param(name, shape, shape, dim, group);
        constructionOrder.add(p);
        return p;
    }

    /** Marks a parameter as the model marks it read only by GEMMs ({@code Parameter.readByGemmsOnly}). */
    private static Param gemmOnly(Param p) {
        p.readByGemmsOnly = true;
        return p;
    }

    private Param expert(String name, int group, int dim, int e, int rows, int cols) {
        Param p = new Param(name, new int[] {e, rows, cols}, new int[] {localExperts, rows, cols}, dim, group);
        constructionOrder.add(p);
        return p;
    }

    private Unit unit(String path, int group, boolean reshard, boolean unshardInBackward, boolean readAsF32,
                      Param... params) {
        Unit u = new Unit(path, group, reshard, unshardInBackward, readAsF32);
        for (Param p : params) {
            u.add(p);
        }
        units.add(u);
        return u;
    }

    /** Every parameter FSDP manages, in FullyShard's order (units in creation order). */
    List<Param> params() {
        List<Param> out = new ArrayList<>();
        for (Unit u : units) {
            out.addAll(u.params);
        }
        return out;
    }

    /** Parameters of the whole model (all experts). */
    long globalParameters() {
        long n = 0;
        for (Param p : constructionOrder) {
            n += p.globalElements();
        }
        return n;
    }

    /** Parameters a token uses: all but the experts it is not routed to. */
    long activeParameters() {
        long n = globalParameters();
        for (Layer l : layers) {
            if (l.moe) {
                long perExpert = (l.gate.globalElements() + l.up.globalElements() + l.down.globalElements())
                        / config.numExperts();
                n -= perExpert * (config.numExperts() - config.numExpertsPerTok());
            }
        }
        return n;
    }

    static long numel(int[] shape) {
        long n = 1;
        for (int d : shape) {
            n *= d;
        }
        return n;
    }
}
