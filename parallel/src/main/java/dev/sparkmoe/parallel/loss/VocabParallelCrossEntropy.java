package dev.sparkmoe.parallel.loss;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.backend.GemmOperand;
import dev.sparkmoe.core.model.LmHeadLoss;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import dev.sparkmoe.parallel.comm.Communicator;
import dev.sparkmoe.parallel.fsdp.ShardLayout;
import java.util.Arrays;

/**
 * The LM head and cross-entropy computed vocabulary-parallel over a group, as tensor parallelism's "loss parallel"
 * (Megatron-LM's vocab-parallel cross-entropy, torchtitan's {@code loss_parallel}): rank r holds rows
 * {@code [v0, v1)} of the LM head weight [V, H] (torch.chunk's split, so V need not divide by the group) and never
 * the whole head or its whole gradient.
 *
 * <p>One call, on every rank of the group at once:
 * <pre>
 *   hiddenAll [n * maxN, H]  = all-gather of every rank's rows (padded to the largest rank's N; pad rows have no target)
 *   for each chunk of rows of hiddenAll (the same chunks on every rank):
 *     z [c, V_r]    = hiddenAll[chunk] W_r^T                       this rank's logits
 *     lse_r [c]     = log sum exp z over this rank's columns      (see below)
 *     all-gather of lse_r (one small collective)  ->  LSE = log sum_r exp lse_r, and the other ranks' share
 *     dz [c, V_r]   = (exp(z - LSE) - onehot) * gradScale          written over z
 *     dHiddenAll[chunk] = dz W_r;   dW_r += dz^T hiddenAll[chunk]
 *   dHidden [N, H] = reduce-scatter of dHiddenAll back to each rank's own rows
 *   loss           = sum over the rows with a target of LSE - z[target], summed by the rank owning the target's column
 *                    and all-reduced to the rank owning the row
 * </pre>
 * The ranks move n x N x H hidden states and their gradients instead of the V x H head and its V x H gradient, and a
 * rank's LM head gradient is only its rows (no reduce-scatter of it). The loss and every gradient equal
 * {@link LmHeadLoss#LOCAL}'s up to the order of f32 sums (and the float rounding of one column, below).
 *
 * <p>The per-row statistics are made with the backend's existing kernels, so that every backend runs this as it is:
 * the logits are computed into a buffer of two more columns ({@code [c, V_r + 2]}). The row maximum m is the top-1
 * of the row ({@link Backend#routerTopK}, the extra columns holding {@link #NO_MASS}); with m written into the first
 * extra column, the softmax that {@link Backend#crossEntropy} writes gives that column p = e^m / (sum e^z + e^m), a
 * value in [1 / (V_r + 1), 1/2], so lse_r = m + log(1/p - 1) without overflow or cancellation. For the gradient the
 * two extra columns hold the other ranks' share of the row, exp(b1) + exp(b2) = sum over the other ranks of exp(z)
 * (b1 the largest float not above its log, b2 what remains, so that the f32 columns carry it to about the square of
 * a float's rounding, 1e-10 for |log| < 128), and
 * the cross-entropy over [z | b1 | b2] with the target's column (or, when the target is another rank's, column b1)
 * writes exactly exp(z - LSE) * gradScale minus the one-hot into this rank's columns. The target logits for the
 * loss are read with {@link Backend#gatherRows}.
 *
 * <p>Chunk size: as the local loss, {@code H} rows unless requested (capped by the rows and by 2^31 elements), of the
 * largest shard's width, so that every rank cuts the same chunks; two buffers of [rows, V_r + 2] (the logits, the
 * statistics' softmax), each about the size of the rank's LM head gradient.
 *
 * <p>Where the group's rows outnumber the vocabulary (n x N > V: many tokens per rank, a small vocabulary), the
 * gathered hidden states and their gradient would take more than the head and its gradient: such a call gathers the
 * head for the local fused loss and reduce-scatters its gradient instead (decided from the row counts, which every
 * rank knows, so every rank takes the same path).
 *
 * <p>Retained logits: each rank keeps its columns of every gathered row and one all-to-all gives every rank its own
 * rows over the whole vocabulary ([N, V], as the local loss returns them).
 *
 * <p>Dtypes, as the local loss: where the backend's GEMMs take bf16 operands ({@link Backend#gemmDType()}) the
 * GEMMs read bf16 copies of this rank's rows of the head and of the gathered hidden states ({@link GemmOperand}),
 * and the last cross-entropy of a chunk writes the gradient in bf16 into a buffer of its own for the two gradient
 * GEMMs; the logits, the statistics and the loss stay f32.
 */
public final class VocabParallelCrossEntropy implements LmHeadLoss {
    /** What the extra columns hold when they carry nothing: exp underflows to 0, and 0 times it is 0. */
    static final float NO_MASS = -1e30f;

    private final Communicator group;
    private final ShardLayout layout;
    private final int vocab;
    private final int v0;
    private final int v1;

    /**
     * @param group  the ranks that share the LM head, in the layout's order
     * @param layout the LM head weight [V, H] split on dim 0 over {@code group}
     */
    public VocabParallelCrossEntropy(Communicator group, ShardLayout layout) {
        int[] full = layout.fullShape();
        if (layout.dim() != 0 || full.length != 2 || layout.world() != group.size()) {
            throw new IllegalArgumentException("the vocabulary-parallel loss needs the LM head [V, H] split on dim 0 "
                    + "over its group of " + group.size() + " ranks; got " + Arrays.toString(full) + " on dim "
                    + layout.dim() + " over " + layout.world() + " ranks");
        }
        this.group = group;
        this.layout = layout;
        this.vocab = full[0];
        int[] mine = layout.range(group.rank());
        this.v0 = mine[0];
        this.v1 = mine[1];
    }

    /** The columns of a chunk buffer on the rank with the largest shard: every rank cuts its chunks by it. */
    int widestChunkColumns() {
        int[] first = layout.range(0);
        return first[1] - first[0] + 2;
    }

    @Override
    public Result run(Backend be, Tensor hidden, Tensor targets, int n, Tensor weight, float gradScale,
                      boolean withGrad, boolean retainLogits, int requestedRows) {
        int world = group.size();
        int me = group.rank();
        int vr = v1 - v0;
        int h = weight.dim(1);
        if (weight.dim(0) != vr) {
            throw new IllegalArgumentException("the vocabulary-parallel loss of rank " + me + " holds LM head rows ["
                    + v0 + ", " + v1 + ") of " + vocab + ", but was given a weight of " + weight.dim(0) + " rows: "
                    + "the head must be placed by the same layout as the loss");
        }
        int[] counts = new int[world];
        group.allGather(new int[] {n}, 0, 1, counts, 0);
        int maxN = Arrays.stream(counts).max().orElse(0);
        int rowsAll = world * maxN;
        if ((long) rowsAll * Math.max(h, vr) > Integer.MAX_VALUE
                || (retainLogits && (long) maxN * vocab > Integer.MAX_VALUE)) {
            throw new IllegalArgumentException("the vocabulary-parallel loss gathers " + world + " x " + maxN
                    + " rows (the largest rank's tokens, " + Arrays.toString(counts) + ") of " + h + " hidden and "
                    + vocab + " vocabulary entries" + (retainLogits ? " with the logits retained" : "")
                    + ": over 2^31 - 1 elements in one tensor; use fewer tokens per forward pass (a smaller batch, "
                    + "sequence or more micro-batches)");
        }
        if (rowsAll > vocab) {
            return gathered(be, hidden, targets, n, weight, gradScale, withGrad, retainLogits, requestedRows);
        }
        int[] allTargets = gatherTargets(be, targets, n, maxN, rowsAll);
        Tensor hiddenAll = gatherHidden(be, hidden, n, maxN, rowsAll, h);
        boolean compute = vr > 0 && rowsAll > 0;
        Tensor dHiddenAll = !withGrad ? null : compute ? be.empty(DType.F32, rowsAll, h) : be.zeros(DType.F32,
                rowsAll, h);
        Tensor dWeight = !withGrad ? null : compute ? be.empty(DType.F32, vr, h) : be.zeros(DType.F32, vr, h);
        Tensor logitsMine = retainLogits ? be.empty(DType.F32, rowsAll, vr) : null; // my columns of every row
        double[] lossByOwner = new double[world];
        if (rowsAll > 0) {
            Tensor wg = compute ? GemmOperand.of(be, weight) : weight; // the GEMMs' operands
            Tensor hg = compute ? GemmOperand.of(be, hiddenAll) : hiddenAll;
            Chunks chunks = new Chunks(be, LmHeadLoss.chunkRows(rowsAll, h, widestChunkColumns(), requestedRows), vr + 2,
                    compute && withGrad);
            try {
                for (int r0 = 0; r0 < rowsAll; r0 += chunks.rows) {
                    int c = Math.min(chunks.rows, rowsAll - r0);
                    chunk(be, chunks, r0, c, maxN, h, wg, hg, allTargets, gradScale, withGrad, dHiddenAll, dWeight,
                            logitsMine, lossByOwner);
                }
            } finally {
                chunks.release(be);
                GemmOperand.release(be, wg, weight);
                GemmOperand.release(be, hg, hiddenAll);
            }
        }
        be.release(hiddenAll);
        group.allReduceSum(lossByOwner, 0, world);
        Tensor dHidden = withGrad ? scatterBack(be, dHiddenAll, n, maxN, h) : null;
        Tensor logits = retainLogits ? ownRows(be, logitsMine, n, maxN) : null;
        return new Result(lossByOwner[me], dHidden, dWeight, logits);
    }

    /**
     * The gathered path, for calls whose gathered rows outnumber the vocabulary (then the group's hidden states and
     * their gradient, 2 x rows x H per rank, would outweigh the whole head and its gradient, 2 x V x H): the head is
     * all-gathered from the ranks' rows, the local fused loss runs on this rank's rows, and the head's gradient is
     * reduce-scattered back to each rank's rows, as FSDP does for a gathered unit. Same results, same shapes.
     */
    private Result gathered(Backend be, Tensor hidden, Tensor targets, int n, Tensor weight, float gradScale,
                            boolean withGrad, boolean retainLogits, int requestedRows) {
        // The head's rows travel in f32, as every gathered weight: a bf16 compute copy (FsdpParam) is widened first,
        // exactly (ShardLayout.allGather), so the gathered head holds the values the copy holds.
        Tensor full = layout.allGather(be, group, weight);
        Result local = LmHeadLoss.LOCAL.run(be, hidden, targets, n, full, gradScale, withGrad, retainLogits,
                requestedRows);
        be.release(full);
        Tensor dWeight = null;
        if (withGrad) {
            dWeight = layout.reduceScatter(be, group, local.dWeight(), 1f);
            be.release(local.dWeight());
        }
        return new Result(local.lossSum(), local.dHidden(), dWeight, local.logits());
    }

    /** The targets of every rank's rows, each rank's padded to {@code maxN} with -100, checked against V. */
    private int[] gatherTargets(Backend be, Tensor targets, int n, int maxN, int rowsAll) {
        int[] mine = new int[maxN];
        Arrays.fill(mine, -100);
        if (n > 0) {
            System.arraycopy(be.download(targets).ints(), 0, mine, 0, n);
        }
        int[] all = new int[rowsAll];
        if (maxN > 0) {
            group.allGather(mine, 0, maxN, all, 0);
        }
        for (int i = 0; i < rowsAll; i++) {
            int t = all[i];
            if (t != -100 && (t < 0 || t >= vocab)) { // every rank sees it: all of them fail, none waits
                throw new IllegalArgumentException("target id " + t + " at row " + i % maxN + " of rank " + i / maxN
                        + " is outside the vocabulary [0, " + vocab + ") (use -100 to ignore a position)");
            }
        }
        return all;
    }

    /** Every rank's final hidden states, rank after rank, each padded with zero rows to {@code maxN}. */
    private Tensor gatherHidden(Backend be, Tensor hidden, int n, int maxN, int rowsAll, int h) {
        Tensor all = be.empty(DType.F32, rowsAll, h);
        if (maxN == 0) {
            return all;
        }
        Tensor send = hidden;
        if (n != maxN) {
            send = be.zeros(DType.F32, maxN, h);
            if (n > 0) {
                be.copy(hidden, 0, send, 0, n * h);
            }
        }
        group.allGather(send, 0, maxN * h, all, 0);
        if (send != hidden) {
            be.release(send);
        }
        return all;
    }

    /** The per-chunk buffers, made once. */
    private static final class Chunks {
        final int rows;
        final int width;
        final Tensor z;        // [rows, width]: logits | two extra columns; then their gradient (in f32)
        final Tensor grad;     // [rows, width] the gradient in the GEMMs' dtype where that is not F32, else z
        final Tensor softmax;  // [rows, width]: the statistics' softmax
        final Tensor column;   // [rows] a column's values on their way in or out
        final Tensor noMass;   // [rows] NO_MASS
        final Tensor zeroTargets;
        final Tensor chunkTargets;
        final Tensor topIdx;
        final Tensor topVal;
        final Tensor topWeights;
        final Tensor picked;

        Chunks(Backend be, int rows, int width, boolean withGrad) {
            this.rows = rows;
            this.width = width;
            z = be.empty(DType.F32, rows, width);
            grad = withGrad && be.gemmDType() != DType.F32 ? be.empty(be.gemmDType(), rows, width) : z;
            softmax = be.empty(DType.F32, rows, width);
            column = be.empty(DType.F32, rows);
            float[] none = new float[rows];
            Arrays.fill(none, NO_MASS);
            noMass = be.upload(Tensor.of(none, rows));
            zeroTargets = be.upload(Tensor.ofInts(new int[rows], rows));
            chunkTargets = be.empty(DType.I32, rows);
            topIdx = be.empty(DType.I32, rows);
            topVal = be.empty(DType.F32, rows);
            topWeights = be.empty(DType.F32, rows);
            picked = be.empty(DType.F32, rows);
        }

        void release(Backend be) {
            for (Tensor t : new Tensor[] {z, softmax, column, noMass, zeroTargets, chunkTargets, topIdx, topVal,
                    topWeights, picked}) {
                be.release(t);
            }
            if (grad != z) {
                be.release(grad);
            }
        }
    }

    /** Rows [r0, r0 + c) of the gathered rows: see the class comment. */
    private void chunk(Backend be, Chunks k, int r0, int c, int maxN, int h, Tensor weight, Tensor hiddenAll,
                       int[] allTargets, float gradScale, boolean withGrad, Tensor dHiddenAll, Tensor dWeight,
                       Tensor logitsMine, double[] lossByOwner) {
        int vr = v1 - v0;
        int w = k.width;
        float[] stats = new float[2 * c]; // this rank's lse of each row, as a float and the float of its remainder
        if (vr > 0) {
            be.gemm(false, true, c, vr, h, 1f, hiddenAll, r0 * h, h, weight, 0, h, 0f, k.z, 0, w);
            be.copyRows(k.noMass, 0, 1, k.z, vr, w, c, 1);
            be.copyRows(k.noMass, 0, 1, k.z, vr + 1, w, c, 1);
            be.routerTopK(k.z, c, w, 1, false, k.topIdx, k.topVal, k.topWeights); // the row maximum m
            be.copyRows(k.topVal, 0, 1, k.z, vr, w, c, 1);
            be.crossEntropy(k.z, k.zeroTargets, c, w, 1f, k.softmax);
            be.copyRows(k.softmax, vr, w, k.column, 0, 1, c, 1);     // p = e^m / (sum e^z + e^m)
            float[] m = be.download(k.topVal).floats();
            float[] p = be.download(k.column).floats();
            for (int i = 0; i < c; i++) {
                double lse = m[i] + Math.log(1.0 / p[i] - 1.0);
                float hi = (float) lse;
                stats[2 * i] = hi;
                stats[2 * i + 1] = (float) (lse - hi);
            }
        } else {
            for (int i = 0; i < c; i++) {
                stats[2 * i] = Float.NEGATIVE_INFINITY;
            }
        }
        int world = group.size();
        int me = group.rank();
        float[] all = new float[2 * c * world];
        group.allGather(stats, 0, 2 * c, all, 0);
        if (vr == 0) {
            return; // no columns here: the others' loss and gradients do not involve this rank any further
        }
        float[] b1 = new float[c];
        float[] b2 = new float[c];
        int[] target = new int[c];
        int[] pick = new int[c];
        int[] pickRow = new int[c];
        double[] pickLse = new double[c];
        int picks = 0;
        double[] lse = new double[world];
        for (int i = 0; i < c; i++) {
            for (int q = 0; q < world; q++) {
                float hi = all[q * 2 * c + 2 * i];
                lse[q] = Double.isInfinite(hi) ? hi : (double) hi + all[q * 2 * c + 2 * i + 1];
            }
            double total = logSumExp(lse, -1);
            double others = logSumExp(lse, me);
            splitInTwoColumns(others, b1, b2, i);
            int t = allTargets[r0 + i];
            if (t == -100) {
                target[i] = -100;
            } else if (t >= v0 && t < v1) {
                target[i] = t - v0;
                pick[picks] = i * w + t - v0;
                pickRow[picks] = r0 + i;
                pickLse[picks] = total;
                picks++;
            } else {
                target[i] = vr; // the others' share: no one-hot in this rank's columns
            }
        }
        if (picks > 0) { // the target logits of the rows whose target is one of this rank's columns
            be.copyFromHost(Tensor.ofInts(Arrays.copyOf(pick, picks), picks), k.chunkTargets);
            be.gatherRows(k.z, k.chunkTargets, picks, 1, 1, k.picked);
            float[] z = be.download(k.picked).floats();
            for (int j = 0; j < picks; j++) {
                lossByOwner[pickRow[j] / maxN] += pickLse[j] - z[j];
            }
        }
        if (logitsMine != null) {
            be.copyRows(k.z, 0, w, logitsMine, r0 * vr, vr, c, vr);
        }
        if (dHiddenAll == null) {
            return;
        }
        be.copyFromHost(Tensor.of(b1, c), k.column);
        be.copyRows(k.column, 0, 1, k.z, vr, w, c, 1);
        be.copyFromHost(Tensor.of(b2, c), k.column);
        be.copyRows(k.column, 0, 1, k.z, vr + 1, w, c, 1);
        be.copyFromHost(Tensor.ofInts(target, c), k.chunkTargets);
        be.crossEntropy(k.z, k.chunkTargets, c, w, gradScale, k.grad);
        be.gemm(false, false, c, h, vr, 1f, k.grad, 0, w, weight, 0, h, 0f, dHiddenAll, r0 * h, h);
        be.gemm(true, false, vr, h, c, 1f, k.grad, 0, w, hiddenAll, r0 * h, h, r0 == 0 ? 0f : 1f, dWeight, 0, h);
    }

    /** log sum exp of {@code x} without entry {@code skip} (-1: all); -inf when nothing is left. */
    static double logSumExp(double[] x, int skip) {
        double max = Double.NEGATIVE_INFINITY;
        for (int q = 0; q < x.length; q++) {
            if (q != skip) {
                max = Math.max(max, x[q]);
            }
        }
        if (max == Double.NEGATIVE_INFINITY) {
            return max;
        }
        double sum = 0;
        for (int q = 0; q < x.length; q++) {
            if (q != skip) {
                sum += Math.exp(x[q] - max);
            }
        }
        return max + Math.log(sum);
    }

    /**
     * Two floats b1, b2 with exp(b1) + exp(b2) = exp(x) to about ulp(x)^2 relative (b2's rounding times its share):
     * b1 the largest float not above x, b2 the log of what remains ({@link #NO_MASS} for nothing).
     */
    static void splitInTwoColumns(double x, float[] b1, float[] b2, int i) {
        if (x == Double.NEGATIVE_INFINITY) {
            b1[i] = NO_MASS;
            b2[i] = NO_MASS;
            return;
        }
        float hi = (float) x;
        if (hi > x) {
            hi = Math.nextDown(hi);
        }
        double rest = Math.expm1(x - hi); // exp(x) - exp(hi) = exp(hi) * rest
        b1[i] = hi;
        b2[i] = rest > 0 ? (float) (hi + Math.log(rest)) : NO_MASS;
    }

    /** Sums every rank's partial input gradients into each rank's own rows: [n, H]. */
    private Tensor scatterBack(Backend be, Tensor dHiddenAll, int n, int maxN, int h) {
        Tensor mine = be.empty(DType.F32, maxN, h);
        if (maxN > 0) {
            group.reduceScatterSum(dHiddenAll, 0, mine, 0, maxN * h);
        }
        be.release(dHiddenAll);
        if (n == maxN) {
            return mine;
        }
        Tensor out = be.empty(DType.F32, n, h);
        if (n > 0) {
            be.copy(mine, 0, out, 0, n * h);
        }
        be.release(mine);
        return out;
    }

    /** This rank's rows over the whole vocabulary [n, V], from every rank's columns of them (one all-to-all). */
    private Tensor ownRows(Backend be, Tensor logitsMine, int n, int maxN) {
        int world = group.size();
        int vr = v1 - v0;
        int[] sendCounts = new int[world];
        int[] recvCounts = new int[world];
        for (int q = 0; q < world; q++) {
            int[] rg = layout.range(q);
            sendCounts[q] = maxN * vr;
            recvCounts[q] = maxN * (rg[1] - rg[0]);
        }
        Tensor recv = be.empty(DType.F32, maxN * vocab);
        group.allToAll(logitsMine, sendCounts, recv, recvCounts);
        be.release(logitsMine);
        Tensor logits = be.empty(DType.F32, n, vocab);
        int off = 0;
        for (int q = 0; q < world; q++) {
            int[] rg = layout.range(q);
            int vq = rg[1] - rg[0];
            if (vq > 0 && n > 0) {
                be.copyRows(recv, off, vq, logits, rg[0], vocab, n, vq);
            }
            off += recvCounts[q];
        }
        be.release(recv);
        return logits;
    }
}
