package dev.sparkmoe.parallel.memory;

import dev.sparkmoe.core.model.ActivationCheckpointing;
import dev.sparkmoe.core.model.LmHeadLoss;
import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.core.model.Qwen3MoeModel;
import dev.sparkmoe.parallel.dtensor.DTensor;
import dev.sparkmoe.parallel.memory.DeviceModel.Operand;
import dev.sparkmoe.parallel.memory.Ledger.Buf;
import dev.sparkmoe.parallel.memory.UnitLayout.Layer;
import dev.sparkmoe.parallel.memory.UnitLayout.Param;
import java.util.ArrayList;
import java.util.List;

/**
 * Replays what rank 0 allocates, in the order it allocates it: {@code DistributedTrainer}'s construction (each rank
 * allocates its shards, fills them a bounded piece at a time, then makes the AdamW moments), then its {@code step}
 * (one allocation scope: the micro-batches' forward and backward passes of {@code Qwen3MoeModel}, the
 * reduce-scatters, AdamW in place). Each method mirrors the code it is named after, tensor by tensor: what the forward
 * pass keeps in each layer's cache ({@code DecoderLayer}, {@code Attention}, {@code MoeBlock}, {@code Experts} and
 * the token dispatchers), what {@code ActivationCheckpointing} gives back after a layer's forward and makes again at
 * the start of its backward, the fused LM head and loss ({@code FusedLinearCrossEntropy}: per chunk of rows the
 * logits, their gradient in place, the head input's and the head weight's gradients; then the final norm's backward,
 * all in the head's forward), what the backward pass makes and releases, and when FSDP gathers, reshards and reduces
 * ({@link FsdpReplay}) and the backend adds its own buffers ({@link DeviceModel}). The {@link Ledger} keeps the peak
 * and what was live at that moment.
 *
 * <p>Where the backend's GEMMs take bf16 operands ({@code Backend.gemmDType()}: the CUDA backend at bf16 precision)
 * the model's dense GEMMs read bf16 copies of their f32 operands ({@code GemmOperand}, made just before the GEMM and
 * given back after it, one copy of an input shared by q, k and v), and a weight that keeps a bf16 compute copy
 * ({@code FsdpParam.keepsComputeCopy}: alone with its shard, read only by GEMMs, under the bf16 param dtype) is read
 * as that copy: no copy of it is made, and the grouped GEMM reads the experts' in place. On the CUDA backend at bf16
 * the experts' GEMM operands (the routed rows, the SwiGLU activations and their gradients:
 * {@code Backend.emptyGemmOperand}) are BF16 tensors, which the grouped GEMM reads in place ({@link DeviceModel}).
 */
final class StepReplay {
    private final PlanRequest r;
    private final Qwen3MoeConfig c;
    private final ActivationCheckpointing mode;
    final UnitLayout units;
    final Ledger mem;
    private final FsdpReplay fsdp;
    final DeviceModel dev;
    private final int h;
    private final int v;
    private final int e;
    private final int k;
    private final int seq;
    private final int qHeads;
    private final int kvHeads;
    private final int headDim;
    private final long qDim;
    private final long kvDim;
    private final boolean bf16Gemms;     // Backend.gemmDType() is BF16
    private final boolean computeCopies; // the policy's param dtype is the GEMMs' dtype (bf16 on both sides)
    private long denseWeightCopies;

    /** The replay of {@code r} on its device: the CUDA backend's GEMMs take bf16 at bf16 precision, the CPU's f32. */
    StepReplay(PlanRequest r) {
        this(r, r.bf16Device());
    }

    /**
     * The replay of {@code r} on a backend whose GEMMs take bf16 operands or not, whatever its device (the CPU backend
     * that {@code Bf16Gemms} makes take bf16 in tests; on CUDA they do exactly at bf16 precision).
     */
    StepReplay(PlanRequest r, boolean bf16Gemms) {
        this.r = r;
        this.bf16Gemms = bf16Gemms;
        this.computeCopies = bf16Gemms && r.precision() == PlanRequest.Precision.BF16;
        this.c = r.model();
        this.mode = r.checkpointing();
        units = new UnitLayout(c, r.worldSize(), r.ep());
        mem = new Ledger(r.device() == PlanRequest.Device.CUDA);
        fsdp = new FsdpReplay(mem, r.bf16Device(), r.precision() == PlanRequest.Precision.BF16, r.prefetch());
        dev = new DeviceModel(mem, r);
        mem.context(() -> fsdp.gatheredUnits(units.units));
        h = c.hiddenSize();
        v = c.vocabSize();
        e = c.numExperts();
        k = c.numExpertsPerTok();
        seq = r.seqLen();
        qHeads = c.numAttentionHeads();
        kvHeads = c.numKeyValueHeads();
        headDim = c.headDim();
        qDim = (long) qHeads * headDim;
        kvDim = (long) kvHeads * headDim;
    }

    PlanRequest request() {
        return r;
    }

    private Buf f32(Category cat, long elements, String what) {
        return mem.f32(cat, elements, what);
    }

    // ------------------------------------------------------------------ construction (DistributedTrainer)

    /**
     * Builds rank 0's part of the model: FullyShard gives every parameter a zero shard (units in creation order) and,
     * where it keeps one, its bf16 compute copy right after it (FsdpParam.paramDtype), then each shard is filled from
     * the weights a piece of at most {@code Qwen3MoeModel.LOAD_PIECE} floats at a time (WeightSource.copyInto uploads
     * each piece and gives it back), then AdamW makes the moments of each shard. Returns with shards, compute copies
     * and moments live: they live as long as the trainer.
     */
    void construct() {
        List<Param> params = units.params();
        mem.phase("construction: each rank's shards, filled a piece at a time");
        for (Param p : params) {
            f32(Category.PARAMETERS, p.shardElements(), p.name);
            if (p.keepsComputeCopy(computeCopies)) {
                p.computeCopy = mem.alloc(Category.COMPUTE_COPIES, p.shardElements(), 2,
                        "bf16 compute copy of " + p.name);
            }
        }
        for (Param p : params) {
            for (long off = 0; off < p.shardElements(); off += Qwen3MoeModel.LOAD_PIECE) {
                mem.free(f32(Category.LOAD_BUFFER, Math.min(Qwen3MoeModel.LOAD_PIECE, p.shardElements() - off),
                        "a piece of " + p.name));
            }
        }
        mem.phase("construction: AdamW state");
        for (Param p : params) { // AdamW.State: m and v of each shard
            f32(Category.OPTIMIZER, p.shardElements(), "exp_avg of " + p.name);
            f32(Category.OPTIMIZER, p.shardElements(), "exp_avg_sq of " + p.name);
        }
    }

    // ------------------------------------------------------------------ the step (DistributedTrainer.step)

    /** One optimizer step in one allocation scope (computeGradients, applyGradients). */
    void step() {
        mem.openScope();
        List<Param> params = units.params();
        for (Param p : params) {
            fsdp.zeroGrad(p);
        }
        int micro = r.gradAccum();
        for (int m = 0; m < micro; m++) {
            int[] range = DTensor.chunkRange(r.batch(), micro, m);
            Pass pass = forward(range[1] - range[0], micro > 1 ? " (micro-batch " + (m + 1) + ")" : "");
            backward(pass);
        }
        mem.phase("optimizer: gradient norm, clipping, AdamW on the shards");
        for (Param p : params) {
            fsdp.shardGrad(p);
        }
        for (Param p : params) { // AdamW updates in place
            fsdp.zeroGrad(p);
        }
        mem.closeScope();
    }

    /** What a forward pass holds for its backward pass (Qwen3MoeModel.Pass). */
    private static final class Pass {
        final int batch;
        final long n;
        final String tag;
        final Cache[] caches;
        Buf dResidual;   // the last layer's output gradient, from the head's forward
        Buf dNormWeight; // the final norm weight's gradient, likewise
        Buf dHeadWeight; // the LM head weight's gradient, likewise
        final List<Buf> kept = new ArrayList<>(); // ids, targets, router logits, aux gradient: to the scope's end

        Pass(int batch, long n, int layers, String tag) {
            this.batch = batch;
            this.n = n;
            this.tag = tag;
            caches = new Cache[layers];
        }
    }

    /** A decoder layer's saved activations (DecoderLayer.Cache with its Attention, MoeBlock and Experts caches). */
    private static final class Cache {
        Buf x;
        Buf h1;
        Buf rstd1;
        Buf x2;
        Buf h2;
        Buf rstd2;
        // attention
        Buf qRaw;
        Buf kRaw;
        Buf qRstd;
        Buf kRstd;
        Buf q;
        Buf k;
        Buf v;
        Buf lse;
        Buf attn;
        // MoE block and experts
        Buf routerLogits;
        Buf probs;
        Buf topIdx;
        Buf topVal;
        Buf weights;
        Buf slots;
        Buf slotOfRow;
        Buf rowOfSlot;   // LocalTokenDispatcher: the inverse of slotOfRow
        Buf localOfRecv;
        Buf routed;      // kept only where the dispatcher cannot regather (all-to-all)
        Buf gateUp;      // the experts' gate and up projections, [rows, 2I]
        // dense MLP
        Buf gate;
        Buf up;
        Buf act;
    }

    private Pass forward(int batch, String tag) {
        long n = (long) batch * seq;
        Pass p = new Pass(batch, n, units.layers.length, tag);
        mem.phase("forward: embedding" + tag);
        p.kept.add(f32(Category.INPUTS, n, "input ids"));
        p.kept.add(f32(Category.INPUTS, n, "targets"));
        fsdp.beforeForward(units.root);
        if (units.embeddingIsAUnit()) {
            fsdp.beforeForward(units.embedding);
        }
        Buf x = f32(Category.RESIDUAL, n * h, "embedding output [N, H]");
        fsdp.readAsF32(units.embedding); // embeddingForward reads the table
        if (units.embeddingIsAUnit()) {
            fsdp.afterForward(units.embedding);
        }
        for (int i = 0; i < units.layers.length; i++) {
            Layer l = units.layers[i];
            mem.phase("forward: layer " + i + tag);
            fsdp.beforeForward(l.unit);
            Cache cache = new Cache();
            cache.x = x;
            attentionHalf(l, cache, batch, n);
            Buf out = l.moe ? moeForward(l, cache, n) : denseForward(l, cache, n);
            p.caches[i] = cache;
            if (cache.routerLogits != null) {
                p.kept.add(cache.routerLogits); // the pass's router-logits output
            }
            dropForRecompute(l, cache);
            x = out;
            fsdp.afterForward(l.unit);
        }
        mem.phase("forward: final norm, fused LM head and loss" + tag);
        fsdp.beforeForward(units.head);
        Buf finalOut = f32(Category.LOSS, n * h, "final norm output [N, H]");
        Buf finalRstd = f32(Category.LOSS, n, "final norm rstd");
        fsdp.readAsF32(units.head); // rmsNormForward reads the final norm
        Buf dHidden = units.lmHead.computesOnShard ? vocabParallelLoss(p) : fusedLoss(p, units.lmHead.computeCopy != null);
        mem.free(finalOut);
        // the final norm's backward, in the head's forward
        p.dResidual = f32(Category.LOSS, n * h, "final norm input gradient [N, H]");
        p.dNormWeight = f32(Category.UNIT_GRADIENTS, h, "gradient of " + units.headNorm.name);
        mem.free(dHidden, x, finalRstd);
        fsdp.afterForward(units.head);
        p.kept.add(f32(Category.INPUTS, e, "aux-loss gradient [E]"));
        fsdp.afterForward(units.root);
        return p;
    }

    /**
     * FusedLinearCrossEntropy.run: the head input's gradient [N, H] and the head weight's [V, H]; on bf16 GEMM
     * operands (CUDA at bf16) the input's bf16 copy and the weight's, unless the weight is its compute copy
     * ({@code weightIsBf16}); then per chunk of rows the logits (in the GEMMs' dtype: f32, or bf16 on bf16 operands;
     * their gradient written over them) and the chunk's targets; no [N, V] tensor. Returns the head input's gradient;
     * the weight's goes to the pass.
     */
    private Buf fusedLoss(Pass p, boolean weightIsBf16) {
        long rows = r.lossChunkRows((int) p.n);
        Buf dHidden = f32(Category.LOSS, p.n * h, "final norm output gradient [N, H]");
        p.dHeadWeight = f32(Category.UNIT_GRADIENTS, (long) v * h, "gradient of " + units.lmHead.name);
        if (units.lmHead == units.embed) {
            fsdp.readAsF32(units.embedding); // tied: the head's GEMMs (or its bf16 copy) read the embedding
        }
        boolean copies = bf16Gemms;
        List<Buf> made = new ArrayList<>();
        if (copies) {
            if (!weightIsBf16) {
                made.add(mem.alloc(Category.LOSS, (long) v * h, 2, "bf16 copy of " + units.lmHead.name));
            }
            made.add(mem.alloc(Category.LOSS, p.n * h, 2, "bf16 copy of the final norm output [N, H]"));
        }
        if (copies) { // the chunk in the GEMMs' dtype, its gradient written over it
            made.add(mem.alloc(Category.LOSS, rows * v, 2, "bf16 logits chunk [C, V]"));
        } else {
            made.add(f32(Category.LOSS, rows * v, "logits chunk [C, V]"));
        }
        made.add(f32(Category.LOSS, rows, "targets of a chunk"));
        dev.crossEntropy(rows);
        mem.free(made.toArray(new Buf[0]));
        return dHidden;
    }

    /**
     * VocabParallelCrossEntropy.run over the FSDP group of G ranks (balanced: N rows each): every rank's final norm
     * outputs gathered [G*N, H], their partial gradient [G*N, H] and this rank's rows of the head's gradient
     * [V_r, H]; per chunk of the gathered rows the local logits with two extra columns and the statistics' softmax
     * ([C, V_r + 2] each) and a few per-row vectors, one of them uploaded at a time; on bf16 GEMM operands (CUDA at
     * bf16) also the bf16 copies of the gathered rows and of this rank's head rows (none where the head computes with
     * its compute copy), and the chunk's gradient in bf16; then the gathered rows go, and the reduce-scatter gives
     * this rank's input gradient [N, H]. Returns it; the weight's gradient goes to the pass.
     */
    private Buf vocabParallelLoss(Pass p) {
        int g = units.lmHead.groupSize;
        long all = (long) g * p.n;
        int[] mine = units.lmHead.layout.range(0);
        long vr = mine[1] - mine[0];
        if (all > v) {
            return gatheredHeadLoss(p, vr);
        }
        long width = vr + 2;
        long rows = LmHeadLoss.chunkRows((int) all, h, (int) width,
                r.lossChunkRows());
        Buf hiddenAll = f32(Category.LOSS, all * h, "every rank's final norm output [G*N, H]");
        Buf dHiddenAll = f32(Category.LOSS, all * h, "their partial input gradient [G*N, H]");
        p.dHeadWeight = f32(Category.GRADIENT_SHARDS, vr * h, "gradient of " + units.lmHead.name + " (its rows)");
        List<Buf> chunk = new ArrayList<>();
        boolean copies = bf16Gemms && vr > 0;
        if (copies) {
            if (units.lmHead.computeCopy == null) {
                chunk.add(mem.alloc(Category.LOSS, vr * h, 2, "bf16 copy of " + units.lmHead.name + " (its rows)"));
            }
            chunk.add(mem.alloc(Category.LOSS, all * h, 2, "bf16 copy of the gathered rows [G*N, H]"));
        }
        chunk.add(f32(Category.LOSS, rows * width, "local logits chunk [C, V_r + 2]"));
        chunk.add(f32(Category.LOSS, rows * width, "its statistics' softmax [C, V_r + 2]"));
        for (String v : new String[] {"a column", "no-mass column", "zero targets", "chunk targets", "top index",
                "top value", "top weight", "picked target logits"}) {
            chunk.add(f32(Category.LOSS, rows, v + " [C]"));
        }
        if (copies) {
            chunk.add(mem.alloc(Category.LOSS, rows * width, 2, "bf16 gradient of the chunk [C, V_r + 2]"));
        }
        if (dev.cuda()) { // Backend.copyFromHost uploads it on CUDA; the CPU backend writes from the host array
            mem.free(f32(Category.WORKSPACE, rows, "a column uploaded"));
        }
        dev.crossEntropy(rows);
        for (Buf b : chunk) {
            mem.free(b);
        }
        mem.free(hiddenAll);
        Buf dHidden = f32(Category.LOSS, p.n * h, "final norm output gradient [N, H]");
        mem.free(dHiddenAll);
        return dHidden;
    }

    /**
     * VocabParallelCrossEntropy's gathered path (more gathered rows than words): the head gathered (ShardLayout's
     * blocking all-gather, into an f32 tensor; a compute copy widened to f32 rows first), the local fused loss with it, the head freed, then its gradient
     * reduce-scattered to this rank's rows (padded buffers when the rows are uneven) and the full gradient freed.
     */
    private Buf gatheredHeadLoss(Pass p, long vr) {
        UnitLayout.Param head = units.lmHead;
        int g = head.groupSize;
        long piece = head.pieceElements();
        boolean even = (long) vr * g == v;
        // a compute copy is widened into f32 rows first: the head travels in f32
        Buf wide = head.computeCopy != null ? f32(Category.WORKSPACE, vr * h, "the head's rows widened") : null;
        Buf full = f32(Category.GATHERED, (long) v * h, units.lmHead.name + " gathered for the loss");
        if (!even) {
            mem.free(f32(Category.WORKSPACE, piece * g, "all-gather receive buffer"));
        }
        if (wide != null) {
            mem.free(wide);
        }
        Buf dHidden = fusedLoss(p, false);
        mem.free(full);
        Buf fullGrad = p.dHeadWeight;
        p.dHeadWeight = f32(Category.GRADIENT_SHARDS, vr * h, "gradient of " + head.name + " (its rows)");
        if (!even) {
            Buf send = f32(Category.WORKSPACE, piece * g, "reduce-scatter send buffer");
            Buf recv = f32(Category.WORKSPACE, piece, "reduce-scatter receive buffer");
            mem.free(send, recv);
        }
        mem.free(fullGrad);
        return dHidden;
    }

    /** DecoderLayer.attentionHalf: h1 = norm1(x), x2 = x + attn(h1), h2 = norm2(x2). */
    private void attentionHalf(Layer l, Cache c, int batch, long n) {
        c.h1 = gemmInput(Category.RESIDUAL, n * h, "input norm output");
        c.rstd1 = f32(Category.RESIDUAL, n, "input norm rstd");
        fsdp.readAsF32(l.unit); // rmsNormForward reads the input norm
        c.qRaw = f32(Category.ATTENTION, n * qDim, "q before q_norm");
        linearForward(0, l.q);
        c.kRaw = f32(Category.ATTENTION, n * kvDim, "k before k_norm");
        linearForward(0, l.k);
        c.v = f32(Category.ATTENTION, n * kvDim, "v");
        linearForward(0, l.v);
        boolean bf16Attention = dev.attentionInBf16(headDim); // Backend.attentionInputDType
        if (bf16Attention) { // v converted, the f32 projection given back
            Buf v16 = floats(Category.ATTENTION, n * kvDim, true, "v");
            mem.free(c.v);
            c.v = v16;
        }
        c.q = floats(Category.ATTENTION, n * qDim, bf16Attention, "q");
        c.k = floats(Category.ATTENTION, n * kvDim, bf16Attention, "k");
        c.qRstd = f32(Category.ATTENTION, n * qHeads, "q_norm rstd");
        c.kRstd = f32(Category.ATTENTION, n * kvHeads, "k_norm rstd");
        c.attn = f32(Category.ATTENTION, n * qDim, "attention output");
        c.lse = f32(Category.ATTENTION, n * qHeads, "attention lse");
        dev.attentionForward(batch, seq, qHeads, kvHeads, headDim);
        c.x2 = f32(Category.RESIDUAL, n * h, "o_proj output, the residual stream after attention");
        linearForward(n * qDim, l.o);
        c.h2 = gemmInput(Category.RESIDUAL, n * h, "post-attention norm output");
        c.rstd2 = f32(Category.RESIDUAL, n, "post-attention norm rstd");
    }

    /** Rows the local experts of rank 0 compute: every slot without EP, the busiest rank's share with it. */
    private long expertRows(long n) {
        return r.ep() == 1 ? n * k : Math.round(n * k * r.expertImbalance());
    }

    /** MoeBlock.forward: router, routing, the experts (in their own unit's hooks), the combine's output. */
    private Buf moeForward(Layer l, Cache c, long n) {
        c.routerLogits = f32(Category.MOE, n * e, "router logits [N, E]");
        linearForward(0, l.router);
        route(c, n);
        fsdp.beforeForward(l.experts);
        c.slots = expertsForward(l, c, n);
        fsdp.afterForward(l.experts);
        return f32(Category.RESIDUAL, n * h, "MoE output, the residual stream after the layer");
    }

    /** MoeBlock.route: probabilities, top-k experts, probabilities and weights. */
    private void route(Cache c, long n) {
        c.probs = f32(Category.MOE, n * e, "router probabilities [N, E]");
        c.topIdx = f32(Category.MOE, n * k, "top-k experts");
        c.topVal = f32(Category.MOE, n * k, "top-k probabilities");
        c.weights = f32(Category.MOE, n * k, "combine weights");
    }

    /** Experts.forward: dispatch, gate and up, SwiGLU, down, combine; returns the outputs in slot order. */
    private Buf expertsForward(Layer l, Cache c, long n) {
        long slots = n * k;
        long rows = expertRows(n);
        int local = units.localExperts;
        int inter = inter(l);
        Buf routed = dispatch(c, n);
        gateAndUp(l, c, rowsOperand(routed, rows, r.ep() == 1), rows);
        if (r.ep() == 1) { // LocalTokenDispatcher regathers the routed rows in backward
            mem.free(routed);
            dev.dropCasts();
        } else {
            c.routed = routed;
        }
        Buf act = dev.operand(Category.TEMPORARIES, rows * inter, "silu(gate) * up");
        dev.dropCasts();
        // LocalTokenDispatcher.combine: the outputs are the slots, read where the experts wrote them
        Buf out = r.ep() == 1 ? f32(Category.MOE, rows * h, "expert outputs (the slots, by row)")
                : f32(Category.TEMPORARIES, rows * h, "expert outputs");
        dev.groupedGemm(local, dev.gemmOperand(act, rows * inter, inter), weight(l.down));
        mem.free(act);
        dev.dropCasts();
        if (r.ep() == 1) {
            return out;
        }
        Buf back = f32(Category.TEMPORARIES, rows * h, "all-to-all send buffer");
        Buf recv = f32(Category.TEMPORARIES, slots * h, "all-to-all receive buffer");
        mem.free(back);
        Buf slotRows = f32(Category.MOE, slots * h, "expert outputs in slot order");
        mem.free(recv);
        mem.free(out);
        return slotRows;
    }

    /** The dispatch's slot order (and received order under EP) into the cache; returns the routed rows. */
    private Buf dispatch(Cache c, long n) {
        long slots = n * k;
        long rows = expertRows(n);
        c.slotOfRow = f32(Category.MOE, slots, "slots grouped by expert");
        if (r.ep() == 1) { // LocalTokenDispatcher: each slot's row, the routed rows as a GEMM operand
            c.rowOfSlot = f32(Category.MOE, slots, "each slot's row");
            return dev.operand(Category.MOE, rows * h, "routed rows");
        }
        // AllToAllTokenDispatcher: rows to their experts' ranks
        c.localOfRecv = f32(Category.MOE, rows, "received rows' local order");
        Buf send = f32(Category.TEMPORARIES, slots * h, "all-to-all send buffer");
        Buf recv = f32(Category.TEMPORARIES, rows * h, "all-to-all receive buffer");
        mem.free(send);
        Buf routed = f32(Category.MOE, rows * h, "routed rows");
        mem.free(recv);
        return routed;
    }

    /** Experts.gateAndUp: c.gateUp [rows, 2I] from the routed rows, one grouped GEMM on both weights. */
    private void gateAndUp(Layer l, Cache c, Operand routed, long rows) {
        int inter = inter(l);
        c.gateUp = f32(Category.MOE, rows * 2 * inter, "gate and up projections");
        dev.groupedGemmSplitB(units.localExperts, true, routed, weight(l.gate), weight(l.up));
    }

    /**
     * Hidden-wide expert rows [rows, H] (the routed rows, the output gradients) as the experts' grouped GEMMs read
     * them: a GEMM operand where LocalTokenDispatcher made them ({@code operand}: BF16 at bf16 on CUDA), else the
     * all-to-all's f32 rows.
     */
    private Operand rowsOperand(Buf b, long rows, boolean operand) {
        return operand ? dev.gemmOperand(b, rows * h, h) : new Operand(b, rows * h, false);
    }

    private int inter(Layer l) {
        return l.moe ? c.moeIntermediateSize() : c.intermediateSize();
    }

    /**
     * An expert weight as the grouped GEMM reads it: its compute copy (read in place where every row of the [E, r, c]
     * stack is whole 16-byte chunks, c a multiple of 8, else widened: {@code GroupedGemm.takesAsIs}; the plan assumes
     * the grouped GEMM kernel runs, as it does for the images), its gathered bf16 image, or an f32 tensor.
     */
    private Operand weight(Param p) {
        if (p.computeCopy != null) {
            return Operand.bf16(p, p.elements(), p.shape[p.shape.length - 1] % 8 == 0);
        }
        return new Operand(p, p.elements(), fsdp.heldAsImage(p));
    }

    /** DenseMlp.forward: gate, up and their SwiGLU kept, the down projection's output returned. */
    private Buf denseForward(Layer l, Cache c, long n) {
        denseActivations(l, c, n);
        Buf out = f32(Category.RESIDUAL, n * h, "MLP output, the residual stream after the layer");
        linearForward(n * this.c.intermediateSize(), l.down);
        return out;
    }

    private void denseActivations(Layer l, Cache c, long n) {
        long inter = this.c.intermediateSize();
        c.gate = f32(Category.MOE, n * inter, "dense MLP gate projection");
        linearForward(0, l.gate);
        c.up = f32(Category.MOE, n * inter, "dense MLP up projection");
        linearForward(0, l.up);
        c.act = f32(Category.MOE, n * inter, "dense MLP silu(gate) * up");
    }

    // ------------------------------------------------------------------ the dense GEMMs' operands (GemmOperand)

    /**
     * GemmOperand.empty: a tensor that only GEMMs (and the experts' row gathers) read, in the GEMMs' dtype (the decoder
     * layers' norm outputs): 2 bytes an element where they take bf16.
     */
    private Buf gemmInput(Category cat, long elements, String what) {
        return floats(cat, elements, bf16Gemms, what);
    }

    /** A tensor in bf16 where {@code bf16} (named so), else in f32. */
    private Buf floats(Category cat, long elements, boolean bf16, String what) {
        return mem.floats(cat, elements, bf16, bf16 ? what + " (bf16)" : what);
    }

    /** GemmOperand.of on an f32 tensor: its bf16 copy where the GEMMs take bf16, else nothing (null). */
    private Buf gemmCopy(long elements, String what) {
        return bf16Gemms && elements > 0 ? mem.alloc(Category.WORKSPACE, elements, 2, "bf16 copy of " + what) : null;
    }

    /** GemmOperand.of on a weight's value: nothing where it is its bf16 compute copy. */
    private Buf weightCopy(Param w) {
        Buf copy = w.computeCopy != null ? null : gemmCopy(w.valueElements(), w.name);
        denseWeightCopies += copy != null ? 1 : 0;
        return copy;
    }

    /** The bf16 copies of weights the dense GEMMs (Linear) made so far (tests). */
    long denseWeightCopies() {
        return denseWeightCopies;
    }

    /**
     * Linear.forward's GEMM, after its output: the copies of the input ({@code xElements}; 0 where it needs none: the
     * caller made its bf16 copy, or it is in the GEMMs' dtype already) and of the weight, made for the GEMM and given
     * back after it.
     */
    private void linearForward(long xElements, Param w) {
        Buf x16 = xElements > 0 ? gemmCopy(xElements, "a GEMM input") : null;
        Buf w16 = weightCopy(w);
        mem.free(x16, w16);
    }

    /**
     * Linear.backward into the input gradient that the caller made: the output gradient's copy (read by both GEMMs;
     * {@code dyElements} 0 where it is in the GEMMs' dtype already), the weight's for the input gradient's GEMM, then
     * the weight's gradient and the input's copy ({@code xElements}; 0 where it needs none, as in
     * {@link #linearForward}) for the weight gradient's.
     */
    private void linearBackward(long dyElements, long xElements, Param w) {
        Buf dy16 = gemmCopy(dyElements, "an output gradient");
        mem.free(weightCopy(w));
        fsdp.grad(w);
        mem.free(xElements > 0 ? gemmCopy(xElements, "a GEMM input") : null);
        mem.free(dy16);
    }

    /**
     * DecoderLayer.dropForRecompute: what the mode does not keep goes after the layer's forward. full and selective
     * both give back the norms, the attention and the SwiGLU inputs (a dense layer's activations); full gives back
     * the routing, the dispatch and the slots too (the router logits stay: the pass returns them).
     */
    private void dropForRecompute(Layer l, Cache c) {
        if (mode == ActivationCheckpointing.NONE) {
            return;
        }
        mem.free(c.h1, c.rstd1, c.x2, c.rstd2, c.h2);
        mem.free(c.qRaw, c.kRaw, c.qRstd, c.kRstd, c.q, c.k, c.v, c.lse, c.attn);
        if (l.moe) {
            if (mode == ActivationCheckpointing.FULL) {
                mem.free(c.probs, c.topIdx, c.topVal, c.weights, c.slots);
            }
            mem.free(c.gateUp);
            if (mode == ActivationCheckpointing.FULL) {
                mem.free(c.routed, c.slotOfRow, c.rowOfSlot, c.localOfRecv);
                c.routed = c.slotOfRow = c.rowOfSlot = c.localOfRecv = null;
            }
        } else {
            mem.free(c.gate, c.up, c.act);
        }
    }

    // ------------------------------------------------------------------ backward

    private void backward(Pass p) {
        long n = p.n;
        mem.phase("backward: the head's gradients handed over" + p.tag);
        fsdp.beforeBackward(units.root);
        fsdp.beforeBackward(units.head);
        fsdp.adoptGrad(units.lmHead, p.dHeadWeight);
        fsdp.adoptGrad(units.headNorm, p.dNormWeight);
        Buf dx = p.dResidual;
        fsdp.afterBackward(units.head);
        for (int i = units.layers.length - 1; i >= 0; i--) {
            Layer l = units.layers[i];
            mem.phase("backward: layer " + i + p.tag);
            fsdp.beforeBackward(l.unit);
            recompute(l, p.caches[i], p.batch, n);
            Buf dIn = layerBackward(l, dx, p.caches[i], p.batch, n);
            mem.free(dx);
            dx = dIn;
            fsdp.afterBackward(l.unit);
            p.caches[i] = null;
        }
        mem.phase("backward: embedding" + p.tag);
        if (units.embeddingIsAUnit()) {
            fsdp.beforeBackward(units.embedding);
        }
        fsdp.grad(units.embed); // the scatter-add of the input gradient into the table's gradient
        mem.free(dx);
        if (units.embeddingIsAUnit()) {
            fsdp.afterBackward(units.embedding);
        }
        fsdp.afterBackward(units.root);
    }

    /**
     * DecoderLayer.recompute, inside the layer's backward hooks: the norms and the attention again; full: the routing
     * from the kept router logits and the whole experts' forward; selective: the gate and up projections of the kept
     * dispatch; a dense layer its activations. The experts' backward hooks run here (their gather serves both).
     */
    private void recompute(Layer l, Cache c, int batch, long n) {
        if (mode == ActivationCheckpointing.NONE) {
            return;
        }
        attentionHalf(l, c, batch, n);
        if (!l.moe) {
            denseActivations(l, c, n);
            return;
        }
        if (mode == ActivationCheckpointing.FULL) {
            route(c, n);
        }
        fsdp.beforeBackward(l.experts);
        if (mode == ActivationCheckpointing.FULL) {
            c.slots = expertsForward(l, c, n);
        } else { // Experts.recomputeActivations
            long rows = expertRows(n);
            Buf routed = c.routed != null ? c.routed
                    : dev.operand(Category.TEMPORARIES, rows * h, "routed rows (regathered)");
            gateAndUp(l, c, rowsOperand(routed, rows, c.routed == null), rows);
            if (routed != c.routed) {
                mem.free(routed);
            }
        }
    }

    private Buf layerBackward(Layer l, Buf dOut, Cache c, int batch, long n) {
        Buf dh2 = l.moe ? moeBackward(l, c, n) : denseBackward(l, c, n);
        Buf dx2 = f32(Category.TEMPORARIES, n * h, "post-attention residual gradient");
        fsdp.grad(l.postNorm);
        mem.free(dh2, c.x2, c.rstd2, c.h2);
        Buf dh1 = attentionBackward(l, c, batch, n);
        Buf dx = f32(Category.TEMPORARIES, n * h, "layer input gradient");
        fsdp.grad(l.inputNorm);
        mem.free(dh1, c.h1, c.rstd1, c.x);
        mem.free(dx2);
        return dx;
    }

    private Buf moeBackward(Layer l, Cache c, long n) {
        Buf dWeights = f32(Category.TEMPORARIES, n * k, "combine weight gradients");
        Buf dOut = combineBackward(n);
        mem.free(c.slots, c.weights);
        Buf dx = f32(Category.TEMPORARIES, n * h, "MoE input gradient");
        if (mode == ActivationCheckpointing.NONE) { // else the recompute ran the experts' backward hooks
            fsdp.beforeBackward(l.experts);
        }
        expertsBackward(l, c, n, dOut);
        fsdp.afterBackward(l.experts);
        Buf dLogits = f32(Category.TEMPORARIES, n * e, "router logits gradient");
        mem.free(dWeights, c.topIdx, c.topVal, c.probs);
        fsdp.readAsF32(l.unit); // the router's backward reads its weight
        linearBackward(n * e, 0, l.router);
        mem.free(dLogits);
        return dx;
    }

    /**
     * Experts.combineBackward: the expert outputs' gradient in the experts' row order, written there directly
     * (LocalTokenDispatcher) or in slot order and sent to the experts' ranks.
     */
    private Buf combineBackward(long n) {
        long slots = n * k;
        long rows = expertRows(n);
        if (r.ep() == 1) {
            return dev.operand(Category.TEMPORARIES, rows * h, "expert output gradients");
        }
        Buf dSlots = f32(Category.TEMPORARIES, slots * h, "expert output gradients in slot order");
        Buf send = f32(Category.TEMPORARIES, slots * h, "all-to-all send buffer");
        Buf recv = f32(Category.TEMPORARIES, rows * h, "all-to-all receive buffer");
        mem.free(send);
        Buf dOut = f32(Category.TEMPORARIES, rows * h, "expert output gradients");
        mem.free(recv);
        mem.free(dSlots);
        return dOut;
    }

    private void expertsBackward(Layer l, Cache c, long n, Buf dOut) {
        long slots = n * k;
        long rows = expertRows(n);
        int local = units.localExperts;
        int inter = inter(l);
        Buf dAct = f32(Category.TEMPORARIES, rows * inter, "silu(gate) * up gradient");
        Buf dGateUp = dev.operand(Category.TEMPORARIES, rows * 2 * inter, "gate and up gradients");
        Buf dRouted = f32(Category.TEMPORARIES, rows * h, "routed rows gradient");
        Buf act = dev.operand(Category.TEMPORARIES, rows * inter, "silu(gate) * up");
        Operand dOutRows = rowsOperand(dOut, rows, r.ep() == 1);
        dev.groupedGemm(local, dOutRows, weight(l.down));
        fsdp.grad(l.down);
        dev.groupedGemm(local, dOutRows, dev.gemmOperand(act, rows * inter, inter));
        mem.free(dOut, act);
        dev.dropCasts();
        mem.free(dAct, c.gateUp);
        Buf routed = r.ep() == 1 ? dev.operand(Category.TEMPORARIES, rows * h, "routed rows (regathered)")
                : c.routed;
        Operand routedRows = rowsOperand(routed, rows, r.ep() == 1);
        // dRouted from both blocks at once; then each weight's gradient from its column block of dGateUp
        Operand dGate = dev.gemmOperand(dGateUp, rows * inter, inter);
        dev.groupedGemmSplitB(local, false, dGate, weight(l.gate), weight(l.up));
        fsdp.grad(l.gate);
        dev.groupedGemm(local, dGate, routedRows);
        fsdp.grad(l.up);
        dev.groupedGemm(local, DeviceModel.secondBlock(dGate), routedRows);
        mem.free(dGateUp, routed);
        dev.dropCasts();
        if (r.ep() != 1) { // LocalTokenDispatcher sums each token's rows where they are
            Buf back = f32(Category.TEMPORARIES, rows * h, "all-to-all send buffer");
            Buf recv = f32(Category.TEMPORARIES, slots * h, "all-to-all receive buffer");
            mem.free(back);
            Buf home = f32(Category.TEMPORARIES, slots * h, "routed rows gradient in slot order");
            mem.free(recv);
            mem.free(home);
        }
        mem.free(dRouted);
        mem.free(c.slotOfRow, c.rowOfSlot, c.localOfRecv);
        c.routed = c.slotOfRow = c.rowOfSlot = c.localOfRecv = null;
    }

    private Buf denseBackward(Layer l, Cache c, long n) {
        long inter = this.c.intermediateSize();
        fsdp.readAsF32(l.unit);
        Buf dAct = f32(Category.TEMPORARIES, n * inter, "dense MLP activation gradient");
        linearBackward(n * h, n * inter, l.down);
        Buf dGate = f32(Category.TEMPORARIES, n * inter, "dense MLP gate gradient");
        Buf dUp = f32(Category.TEMPORARIES, n * inter, "dense MLP up gradient");
        mem.free(dAct, c.act, c.gate, c.up);
        Buf dx = f32(Category.TEMPORARIES, n * h, "MLP input gradient");
        linearBackward(n * inter, 0, l.gate);
        linearBackward(n * inter, 0, l.up);
        mem.free(dGate, dUp);
        return dx;
    }

    private Buf attentionBackward(Layer l, Cache c, int batch, long n) {
        Buf dAttn = f32(Category.TEMPORARIES, n * qDim, "attention output gradient");
        linearBackward(n * h, n * qDim, l.o);
        Buf dq = f32(Category.TEMPORARIES, n * qDim, "q gradient");
        Buf dk = f32(Category.TEMPORARIES, n * kvDim, "k gradient");
        Buf dv = f32(Category.TEMPORARIES, n * kvDim, "v gradient");
        dev.attentionBackward(batch, seq, qHeads, kvHeads, headDim);
        mem.free(dAttn, c.attn, c.q, c.k, c.v, c.lse);
        // read only by the projections' GEMMs: in their dtype (no copies of them)
        Buf dqRaw = gemmInput(Category.TEMPORARIES, n * qDim, "q gradient before q_norm");
        Buf dkRaw = gemmInput(Category.TEMPORARIES, n * kvDim, "k gradient before k_norm");
        fsdp.grad(l.qNorm);
        fsdp.grad(l.kNorm);
        mem.free(dq, dk, c.qRaw, c.kRaw, c.qRstd, c.kRstd);
        Buf dx = f32(Category.TEMPORARIES, n * h, "attention input gradient");
        linearBackward(0, 0, l.q);
        linearBackward(0, 0, l.k);
        linearBackward(n * kvDim, 0, l.v);
        mem.free(dqRaw, dkRaw, dv);
        return dx;
    }
}
