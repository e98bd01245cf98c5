package dev.sparkmoe.parallel.memory;

import dev.sparkmoe.core.model.Qwen3MoeConfig;
import dev.sparkmoe.parallel.dtensor.DTensor;
import dev.sparkmoe.parallel.memory.DeviceModel.Operand;
import dev.sparkmoe.parallel.memory.Ledger.Buf;
import dev.sparkmoe.parallel.memory.UnitLayout.Layer;
import dev.sparkmoe.parallel.memory.UnitLayout.Param;
import java.util.ArrayList;
import java.util.List;

/**
 * Replays what rank 0 allocates, in the order it allocates it: {@code DistributedTrainer}'s construction, then its
 * {@code step} (one allocation scope: the micro-batches' forward and backward passes of {@code Qwen3MoeModel}, the
 * reduce-scatters, AdamW in place). Each method mirrors the code it is named after, tensor by tensor: what the forward
 * pass keeps in each layer's cache, what the backward pass makes and releases, and when FSDP gathers, reshards and
 * reduces ({@link FsdpReplay}) and the backend adds its own buffers ({@link DeviceModel}). The {@link Ledger} keeps
 * the peak and what was live at that moment.
 *
 * <p>Activation checkpointing and the chunked fused loss are replayed as they would allocate: with checkpointing a
 * layer keeps its input (and with SELECTIVE its routing) and runs its forward again at the start of its backward;
 * the fused loss makes the LM head's gradients chunk by chunk in the forward pass and never the [tokens, V] logits.
 */
final class StepReplay {
    private final PlanRequest r;
    private final Qwen3MoeConfig c;
    final UnitLayout units;
    final Ledger mem;
    private final FsdpReplay fsdp;
    private final DeviceModel dev;
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

    StepReplay(PlanRequest r) {
        this.r = r;
        this.c = r.model();
        units = new UnitLayout(c, r.worldSize(), r.ep(), r.keepLastLayerGathered());
        mem = new Ledger(r.device() == PlanRequest.Device.CUDA);
        fsdp = new FsdpReplay(mem, r.bf16Device(), r.prefetch());
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

    private Buf f32(Category cat, long elements, String what) {
        return mem.f32(cat, elements, what);
    }

    // ------------------------------------------------------------------ construction (DistributedTrainer)

    /** Builds the model, parallelises it and makes the AdamW state; returns with shards and moments live. */
    void construct() {
        List<Param> params = units.params();
        if (r.construction() == PlanRequest.Construction.FULL) {
            mem.phase("construction: full f32 model on the rank (Qwen3MoeModel), then sharded");
            java.util.Map<Param, Buf> built = new java.util.IdentityHashMap<>();
            for (Param p : units.constructionOrder) {
                built.put(p, f32(Category.MODEL_BUILD, p.globalElements(), p.name));
            }
            if (dev.cuda()) { // initRandom / loadState: copyFromHost through an uploaded copy of each weight
                for (Param p : units.constructionOrder) {
                    mem.free(f32(Category.MODEL_BUILD, p.globalElements(), p.name));
                }
            }
            if (r.ep() > 1) { // ExpertParallel.partition: each rank keeps its E/ep experts
                for (Layer l : units.layers) {
                    if (l.moe) {
                        for (Param p : new Param[] {l.gate, l.up, l.down}) {
                            Buf slice = f32(Category.MODEL_BUILD, p.elements(), p.name);
                            mem.free(built.put(p, slice));
                        }
                    }
                }
            }
            for (UnitLayout.Unit u : units.units) { // FullyShard: the unit's shards, then its full values go
                for (Param p : u.params) {
                    f32(Category.PARAMETERS, p.shardElements(), p.name);
                }
                for (Param p : u.params) {
                    mem.free(built.remove(p));
                }
            }
        } else {
            mem.phase("construction: each rank's shards");
            for (Param p : params) {
                f32(Category.PARAMETERS, p.shardElements(), p.name);
                if (dev.cuda()) { // filled through a buffer of the shard's size
                    mem.free(f32(Category.MODEL_BUILD, p.shardElements(), p.name));
                }
            }
        }
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
        Buf finalIn;
        Buf finalOut;
        Buf finalRstd;
        Buf dLogits;
        Buf dFinal;    // fused loss: the final norm's output gradient, made in the forward pass
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
        Buf out;
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
        Buf localOfRecv;
        Buf routed;
        Buf gate;
        Buf up;
        // dense MLP
        Buf act;

        /** Takes over the tensors a recomputing forward made (everything {@link #recomputed} lists). */
        void adoptRecomputed(Cache again, PlanRequest.Checkpointing mode) {
            h1 = again.h1;
            rstd1 = again.rstd1;
            x2 = again.x2;
            h2 = again.h2;
            rstd2 = again.rstd2;
            qRaw = again.qRaw;
            kRaw = again.kRaw;
            qRstd = again.qRstd;
            kRstd = again.kRstd;
            q = again.q;
            k = again.k;
            v = again.v;
            lse = again.lse;
            attn = again.attn;
            slots = again.slots;
            slotOfRow = again.slotOfRow;
            localOfRecv = again.localOfRecv;
            routed = again.routed;
            gate = again.gate;
            up = again.up;
            act = again.act;
            if (mode == PlanRequest.Checkpointing.FULL && again.probs != null) {
                probs = again.probs;
                topIdx = again.topIdx;
                topVal = again.topVal;
                weights = again.weights;
            }
        }

        /** What checkpointing drops after the layer's forward and makes again before its backward. */
        List<Buf> recomputed(PlanRequest.Checkpointing mode) {
            List<Buf> out = new ArrayList<>(List.of(h1, rstd1, x2, h2, rstd2, qRaw, kRaw, qRstd, kRstd, q, k, v,
                    lse, attn));
            for (Buf b : new Buf[] {slots, slotOfRow, localOfRecv, routed, gate, up, act}) {
                if (b != null) {
                    out.add(b);
                }
            }
            if (mode == PlanRequest.Checkpointing.FULL && probs != null) {
                out.addAll(List.of(probs, topIdx, topVal, weights));
            }
            return out;
        }
    }

    private Pass forward(int batch, String tag) {
        long n = (long) batch * seq;
        Pass p = new Pass(batch, n, units.layers.length, tag);
        mem.phase("forward: embedding" + tag);
        p.kept.add(f32(Category.INPUTS, n, "input ids"));
        p.kept.add(f32(Category.INPUTS, n, "targets"));
        fsdp.beforeForward(units.root);
        Buf x = f32(Category.RESIDUAL, n * h, "embedding output [N, H]");
        fsdp.readAsF32(units.root); // embeddingForward reads the embedding
        for (int i = 0; i < units.layers.length; i++) {
            Layer l = units.layers[i];
            mem.phase("forward: layer " + i + tag);
            fsdp.beforeForward(l.unit);
            Cache cache = layerForward(l, x, batch, n, true);
            p.caches[i] = cache;
            if (cache.routerLogits != null) {
                p.kept.add(cache.routerLogits); // the pass's router-logits output
            }
            if (r.checkpointing() != PlanRequest.Checkpointing.NONE) {
                for (Buf b : cache.recomputed(r.checkpointing())) {
                    mem.free(b);
                }
            }
            x = cache.out;
            fsdp.afterForward(l.unit);
        }
        mem.phase("forward: final norm, LM head and loss" + tag);
        fsdp.beforeForward(units.head);
        p.finalIn = x;
        p.finalOut = f32(Category.LOGITS, n * h, "final norm output [N, H]");
        p.finalRstd = f32(Category.LOGITS, n, "final norm rstd");
        fsdp.readAsF32(units.head); // rmsNormForward reads the final norm
        if (r.lossChunkTokens() == 0) {
            Buf logits = f32(Category.LOGITS, n * v, "logits [N, V]");
            fsdp.afterForward(units.head);
            p.dLogits = logits; // the loss gradient is written over the logits
            dev.crossEntropy(n);
        } else {
            fusedLoss(p);
            fsdp.afterForward(units.head);
        }
        p.kept.add(f32(Category.INPUTS, e, "aux-loss gradient [E]"));
        fsdp.afterForward(units.root);
        return p;
    }

    /**
     * The chunked fused LM head and cross-entropy: per chunk of tokens the logits, their loss gradient in place, the
     * final norm output's gradient and the LM head weight's gradient; no [tokens, V] tensor.
     */
    private void fusedLoss(Pass p) {
        long chunk = Math.min(p.n, r.lossChunkTokens());
        p.dFinal = f32(Category.LOGITS, p.n * h, "final norm output gradient [N, H]");
        fsdp.grad(units.lmHead);
        Buf logits = f32(Category.LOGITS, chunk * v, "logits chunk [C, V]");
        dev.crossEntropy(chunk);
        mem.free(logits);
        mem.free(p.finalOut);
        p.finalOut = null;
    }

    private Cache layerForward(Layer l, Buf x, int batch, long n, boolean first) {
        Cache c = new Cache();
        c.x = x;
        c.h1 = f32(Category.RESIDUAL, n * h, "input norm output");
        c.rstd1 = f32(Category.RESIDUAL, n, "input norm rstd");
        fsdp.readAsF32(l.unit); // rmsNormForward reads the input norm
        attentionForward(c, batch, n);
        c.h2 = f32(Category.RESIDUAL, n * h, "post-attention norm output");
        c.rstd2 = f32(Category.RESIDUAL, n, "post-attention norm rstd");
        c.out = l.moe ? moeForward(l, c, n, first) : denseForward(c, n);
        return c;
    }

    private void attentionForward(Cache c, int batch, long n) {
        c.qRaw = f32(Category.ATTENTION, n * qDim, "q before q_norm");
        c.kRaw = f32(Category.ATTENTION, n * kvDim, "k before k_norm");
        c.v = f32(Category.ATTENTION, n * kvDim, "v");
        c.q = f32(Category.ATTENTION, n * qDim, "q");
        c.k = f32(Category.ATTENTION, n * kvDim, "k");
        c.qRstd = f32(Category.ATTENTION, n * qHeads, "q_norm rstd");
        c.kRstd = f32(Category.ATTENTION, n * kvHeads, "k_norm rstd");
        c.attn = f32(Category.ATTENTION, n * qDim, "attention output");
        c.lse = f32(Category.ATTENTION, n * qHeads, "attention lse");
        dev.attentionForward(batch, seq, qHeads, kvHeads, headDim);
        c.x2 = f32(Category.RESIDUAL, n * h, "o_proj output, the residual stream after attention");
    }

    /** Rows the local experts of rank 0 compute: every slot without EP, the busiest rank's share with it. */
    private long expertRows(long n) {
        return r.ep() == 1 ? n * k : Math.round(n * k * r.expertImbalance());
    }

    private Buf moeForward(Layer l, Cache c, long n, boolean first) {
        if (first || r.checkpointing() == PlanRequest.Checkpointing.FULL) {
            c.routerLogits = f32(Category.MOE, n * e, "router logits [N, E]");
            c.probs = f32(Category.MOE, n * e, "router probabilities [N, E]");
            c.topIdx = f32(Category.MOE, n * k, "top-k experts");
            c.topVal = f32(Category.MOE, n * k, "top-k probabilities");
            c.weights = f32(Category.MOE, n * k, "combine weights");
        }
        if (first) { // a recomputing forward runs under the layer's backward hooks, its experts gathered already
            fsdp.beforeForward(l.experts);
        }
        expertsForward(l, c, n);
        if (first) {
            fsdp.afterForward(l.experts);
        }
        return f32(Category.RESIDUAL, n * h, "MoE output, the residual stream after the layer");
    }

    private void expertsForward(Layer l, Cache c, long n) {
        long slots = n * k;
        long rows = expertRows(n);
        int local = units.localExperts;
        int inter = inter(l);
        Buf routed;
        c.slotOfRow = f32(Category.MOE, slots, "slots grouped by expert");
        if (r.ep() == 1) { // LocalTokenDispatcher: the routed rows as a GEMM operand, regathered in backward
            routed = dev.operand(Category.MOE, rows * h, "routed rows");
        } else { // AllToAllTokenDispatcher: rows to their experts' ranks, kept for backward
            c.localOfRecv = f32(Category.MOE, rows, "received rows' local order");
            Buf send = f32(Category.TEMPORARIES, slots * h, "all-to-all send buffer");
            Buf recv = f32(Category.TEMPORARIES, rows * h, "all-to-all receive buffer");
            mem.free(send);
            routed = f32(Category.MOE, rows * h, "routed rows");
            mem.free(recv);
        }
        boolean routedImage = r.ep() == 1 && dev.operandsAreImages();
        c.gate = f32(Category.MOE, rows * inter, "gate projections");
        c.up = f32(Category.MOE, rows * inter, "up projections");
        dev.groupedGemm(local, new Operand(routed, rows * h, routedImage), weight(l.gate));
        dev.groupedGemm(local, new Operand(routed, rows * h, routedImage), weight(l.up));
        if (r.ep() == 1) {
            mem.free(routed);
            dev.dropCasts();
        } else {
            c.routed = routed;
        }
        Buf act = dev.operand(Category.TEMPORARIES, rows * inter, "silu(gate) * up");
        dev.dropCasts();
        Buf out = f32(Category.TEMPORARIES, rows * h, "expert outputs");
        dev.groupedGemm(local, new Operand(act, rows * inter, dev.operandsAreImages()), weight(l.down));
        mem.free(act);
        dev.dropCasts();
        if (r.ep() == 1) {
            c.slots = f32(Category.MOE, slots * h, "expert outputs in slot order");
        } else {
            Buf back = f32(Category.TEMPORARIES, rows * h, "all-to-all send buffer");
            Buf recv = f32(Category.TEMPORARIES, slots * h, "all-to-all receive buffer");
            mem.free(back);
            c.slots = f32(Category.MOE, slots * h, "expert outputs in slot order");
            mem.free(recv);
        }
        mem.free(out);
    }

    private int inter(Layer l) {
        return l.moe ? c.moeIntermediateSize() : c.intermediateSize();
    }

    private Operand weight(Param p) {
        return new Operand(p, p.elements(), fsdp.heldAsImage(p));
    }

    private Buf denseForward(Cache c, long n) {
        long inter = this.c.intermediateSize();
        c.gate = f32(Category.MOE, n * inter, "dense MLP gate projection");
        c.up = f32(Category.MOE, n * inter, "dense MLP up projection");
        c.act = f32(Category.MOE, n * inter, "dense MLP silu(gate) * up");
        return f32(Category.RESIDUAL, n * h, "MLP output, the residual stream after the layer");
    }

    // ------------------------------------------------------------------ backward

    private void backward(Pass p) {
        long n = p.n;
        mem.phase("backward: LM head" + p.tag);
        fsdp.beforeBackward(units.root);
        fsdp.beforeBackward(units.head);
        Buf dx;
        if (p.dLogits != null) {
            Buf dFinal = f32(Category.TEMPORARIES, n * h, "final norm output gradient");
            fsdp.grad(units.lmHead); // the LM head's weight gradient
            mem.free(p.dLogits, p.finalOut);
            p.dLogits = null;
            dx = f32(Category.TEMPORARIES, n * h, "residual stream gradient");
            fsdp.grad(units.headNorm);
            mem.free(dFinal, p.finalIn, p.finalRstd);
        } else {
            dx = f32(Category.TEMPORARIES, n * h, "residual stream gradient");
            fsdp.grad(units.headNorm);
            mem.free(p.dFinal, p.finalIn, p.finalRstd);
        }
        fsdp.afterBackward(units.head);
        for (int i = units.layers.length - 1; i >= 0; i--) {
            Layer l = units.layers[i];
            mem.phase("backward: layer " + i + p.tag);
            fsdp.beforeBackward(l.unit);
            if (r.checkpointing() != PlanRequest.Checkpointing.NONE) {
                recompute(l, p.caches[i], p.batch, n);
            }
            Buf dIn = layerBackward(l, dx, p.caches[i], p.batch, n);
            mem.free(dx);
            dx = dIn;
            fsdp.afterBackward(l.unit);
            p.caches[i] = null;
        }
        mem.phase("backward: embedding" + p.tag);
        fsdp.grad(units.embed);
        mem.free(dx);
        fsdp.afterBackward(units.root);
    }

    /** Checkpointing: the layer's forward again, from its saved input (and routing), keeping what backward reads. */
    private void recompute(Layer l, Cache saved, int batch, long n) {
        if (l.moe) {
            fsdp.unshard(l.experts); // prefetched by the layer's backward hook
        }
        Cache again = layerForward(l, saved.x, batch, n, false);
        if (again.routerLogits != null) {
            mem.free(again.routerLogits); // the pass keeps the first forward's
        }
        mem.free(again.out); // the first forward's output was the next layer's input
        saved.adoptRecomputed(again, r.checkpointing());
    }

    private Buf layerBackward(Layer l, Buf dOut, Cache c, int batch, long n) {
        Buf dh2 = l.moe ? moeBackward(l, dOut, c, n) : denseBackward(l, c, n);
        Buf dx2 = f32(Category.TEMPORARIES, n * h, "post-attention residual gradient");
        fsdp.grad(l.postNorm);
        mem.free(dh2, c.x2, c.rstd2, c.h2);
        Buf dh1 = attentionBackward(l, dx2, c, batch, n);
        Buf dx = f32(Category.TEMPORARIES, n * h, "layer input gradient");
        fsdp.grad(l.inputNorm);
        mem.free(dh1, c.h1, c.rstd1, c.x);
        mem.free(dx2);
        return dx;
    }

    private Buf moeBackward(Layer l, Buf dy, Cache c, long n) {
        Buf dSlots = f32(Category.TEMPORARIES, n * k * h, "expert output gradients in slot order");
        Buf dWeights = f32(Category.TEMPORARIES, n * k, "combine weight gradients");
        mem.free(c.slots, c.weights);
        Buf dx = f32(Category.TEMPORARIES, n * h, "MoE input gradient");
        fsdp.beforeBackward(l.experts);
        expertsBackward(l, c, n);
        fsdp.afterBackward(l.experts);
        mem.free(dSlots);
        Buf dLogits = f32(Category.TEMPORARIES, n * e, "router logits gradient");
        mem.free(dWeights, c.topIdx, c.topVal, c.probs);
        fsdp.readAsF32(l.unit); // the router's backward reads its weight
        fsdp.grad(l.router);
        mem.free(dLogits);
        return dx;
    }

    private void expertsBackward(Layer l, Cache c, long n) {
        long slots = n * k;
        long rows = expertRows(n);
        int local = units.localExperts;
        int inter = inter(l);
        boolean images = dev.operandsAreImages();
        Buf dOut;
        if (r.ep() == 1) {
            dOut = dev.operand(Category.TEMPORARIES, rows * h, "expert output gradients");
        } else {
            Buf send = f32(Category.TEMPORARIES, slots * h, "all-to-all send buffer");
            Buf recv = f32(Category.TEMPORARIES, rows * h, "all-to-all receive buffer");
            mem.free(send);
            dOut = f32(Category.TEMPORARIES, rows * h, "expert output gradients");
            mem.free(recv);
        }
        boolean dOutImage = r.ep() == 1 && images;
        Buf dAct = f32(Category.TEMPORARIES, rows * inter, "silu(gate) * up gradient");
        Buf dGate = dev.operand(Category.TEMPORARIES, rows * inter, "gate gradient");
        Buf dUp = dev.operand(Category.TEMPORARIES, rows * inter, "up gradient");
        Buf dRouted = f32(Category.TEMPORARIES, rows * h, "routed rows gradient");
        Buf act = dev.operand(Category.TEMPORARIES, rows * inter, "silu(gate) * up");
        dev.groupedGemm(local, new Operand(dOut, rows * h, dOutImage), weight(l.down));
        fsdp.grad(l.down);
        dev.groupedGemm(local, new Operand(dOut, rows * h, dOutImage), new Operand(act, rows * inter, images));
        mem.free(dOut, act);
        dev.dropCasts();
        mem.free(dAct, c.gate, c.up);
        Buf routed = r.ep() == 1 ? dev.operand(Category.TEMPORARIES, rows * h, "routed rows (regathered)")
                : c.routed;
        boolean routedImage = r.ep() == 1 && images;
        dev.groupedGemm(local, new Operand(dGate, rows * inter, images), weight(l.gate));
        fsdp.grad(l.gate);
        dev.groupedGemm(local, new Operand(dGate, rows * inter, images), new Operand(routed, rows * h, routedImage));
        fsdp.grad(l.up);
        dev.groupedGemm(local, new Operand(dUp, rows * inter, images), new Operand(routed, rows * h, routedImage));
        dev.groupedGemm(local, new Operand(dUp, rows * inter, images), weight(l.up));
        mem.free(dGate, dUp, routed);
        dev.dropCasts();
        if (r.ep() == 1) {
            mem.free(f32(Category.TEMPORARIES, slots * h, "routed rows gradient in slot order"));
        } else {
            Buf back = f32(Category.TEMPORARIES, rows * h, "all-to-all send buffer");
            Buf recv = f32(Category.TEMPORARIES, slots * h, "all-to-all receive buffer");
            mem.free(back);
            Buf home = f32(Category.TEMPORARIES, slots * h, "routed rows gradient in slot order");
            mem.free(recv);
            mem.free(home);
        }
        mem.free(dRouted);
        mem.free(c.slotOfRow, c.localOfRecv);
        c.routed = null;
    }

    private Buf denseBackward(Layer l, Cache c, long n) {
        long inter = this.c.intermediateSize();
        fsdp.readAsF32(l.unit);
        Buf dAct = f32(Category.TEMPORARIES, n * inter, "dense MLP activation gradient");
        fsdp.grad(l.down);
        Buf dGate = f32(Category.TEMPORARIES, n * inter, "dense MLP gate gradient");
        Buf dUp = f32(Category.TEMPORARIES, n * inter, "dense MLP up gradient");
        mem.free(dAct, c.act, c.gate, c.up);
        Buf dx = f32(Category.TEMPORARIES, n * h, "MLP input gradient");
        fsdp.grad(l.gate);
        fsdp.grad(l.up);
        mem.free(dGate, dUp);
        return dx;
    }

    private Buf attentionBackward(Layer l, Buf dy, Cache c, int batch, long n) {
        Buf dAttn = f32(Category.TEMPORARIES, n * qDim, "attention output gradient");
        fsdp.grad(l.o);
        Buf dq = f32(Category.TEMPORARIES, n * qDim, "q gradient");
        Buf dk = f32(Category.TEMPORARIES, n * kvDim, "k gradient");
        Buf dv = f32(Category.TEMPORARIES, n * kvDim, "v gradient");
        dev.attentionBackward(batch, seq, qHeads, kvHeads, headDim);
        mem.free(dAttn, c.attn, c.q, c.k, c.v, c.lse);
        Buf dqRaw = f32(Category.TEMPORARIES, n * qDim, "q gradient before q_norm");
        Buf dkRaw = f32(Category.TEMPORARIES, n * kvDim, "k gradient before k_norm");
        fsdp.grad(l.qNorm);
        fsdp.grad(l.kNorm);
        mem.free(dq, dk, c.qRaw, c.kRaw, c.qRstd, c.kRstd);
        Buf dx = f32(Category.TEMPORARIES, n * h, "attention input gradient");
        fsdp.grad(l.q);
        fsdp.grad(l.k);
        fsdp.grad(l.v);
        mem.free(dqRaw, dkRaw, dv);
        return dx;
    }
}
