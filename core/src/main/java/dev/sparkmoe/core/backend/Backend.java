package dev.sparkmoe.core.backend;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The compute kernels the model, the loss, the MoE routing and the optimizer are written in, and the memory they
 * run on. Every kernel has a plain-Java reference in {@link CpuBackend}; other backends are tested against it op by
 * op with a tolerance stated per dtype.
 *
 * <p>Tensors passed to a backend live on that backend ({@link #zeros}, {@link #upload}); kernels never allocate
 * their outputs (the caller owns every buffer) except where a method says it returns a new tensor. Shapes are given
 * explicitly; offsets and strides count elements. Integer index tensors are I32.
 *
 * <p>Memory: allocations made while a {@link Scope} is open belong to it and are released when it closes (one
 * training step is one scope); allocations made outside any scope persist until {@link #release}. On the CPU both
 * are the garbage collector's business and these calls do nothing.
 *
 * <p>Naming: N = tokens (B*T), H = hidden size, D = head dim, V = vocab, E = experts, K = experts per token.
 */
public interface Backend {

    /** A short name for logs ("cpu", "cuda:0"). */
    String name();

    // ------------------------------------------------------------------ memory

    /** A zero-filled tensor on this backend. */
    Tensor zeros(DType dtype, int... shape);

    /**
     * A tensor whose contents are unspecified (a GPU backend skips the zero fill): for outputs that a kernel writes
     * completely before anything reads them (a GEMM with beta = 0, a collective's receive buffer). The default is
     * {@link #zeros}.
     */
    default Tensor empty(DType dtype, int... shape) {
        return zeros(dtype, shape);
    }

    /**
     * A new tensor, contents unspecified as {@link #empty}, whose values the caller reads only as operands of
     * {@link #groupedGemm} (the expert GEMMs' inputs: routed rows, activations and their gradients): F32, or BF16 on a
     * backend whose grouped GEMM reads bf16 operands (the CUDA backend at bf16 precision), 2 bytes an element. The ops
     * that write such a tensor ({@link #gatherRows}, {@link #siluMulForward}, {@link #siluMulBackward},
     * {@link #moeCombineBackward}'s dRows) then round each value to bf16 (nearest even), and the grouped GEMM reads it
     * as it is instead of rounding it at every call. The default is {@link #empty} in F32, exact.
     */
    default Tensor emptyGemmOperand(int... shape) {
        return empty(DType.F32, shape);
    }

    /**
     * The dtype in which this backend's dense GEMMs take their operands at the run's precision (FSDP2's
     * {@code param_dtype}): {@link DType#F32} on the CPU and in the exact precisions; {@link DType#BF16} on a device
     * backend at bf16 precision, whose GEMMs round F32 operands to bf16 as they read them anyway. A tensor made only
     * to feed GEMMs (a weight's compute copy, a gradient that only GEMMs read) may be held in this dtype:
     * {@link #convert} makes it, {@link #gemm} takes it (both operands in it, C in F32), and
     * {@link #crossEntropy} can write its gradient in it.
     */
    default DType gemmDType() {
        return DType.F32;
    }

    /**
     * dst = src in dst's dtype, element by element (the same number of elements; floating dtypes: F32, BF16, F16):
     * rounded to nearest even where dst is narrower, exact where it is wider.
     */
    void convert(Tensor src, Tensor dst);

    /** A copy of a host tensor on this backend (the CPU backend returns the tensor itself). */
    Tensor upload(Tensor host);

    /**
     * dst[i] = host[i] for every element of {@code host} (same dtype): the upload goes through a temporary that is
     * released at once, so nothing is left behind outside a scope.
     */
    default void copyFromHost(Tensor host, Tensor dst) {
        Tensor d = upload(host);
        copy(d, 0, dst, 0, host.numel());
        if (d != host) {
            release(d);
        }
    }

    /** A host copy of a tensor of this backend (the CPU backend returns the tensor itself). */
    Tensor download(Tensor t);

    /** dst[dstOff + i] = src[srcOff + i] for i in [0, n); same dtype. */
    void copy(Tensor src, int srcOff, Tensor dst, int dstOff, int n);

    /** Strided copy of {@code rows} runs of {@code rowLen} elements (a 2-D block copy). */
    void copyRows(Tensor src, int srcOff, int srcStride, Tensor dst, int dstOff, int dstStride, int rows,
                  int rowLen);

    /** Sets every element to {@code value}. */
    void fill(Tensor t, float value);

    /** Gives a tensor's memory back now; the tensor must not be used again. */
    void release(Tensor t);

    /** Opens an allocation scope (nested scopes allowed); closing it releases what was allocated inside. */
    Scope openScope();

    /** Waits for all queued work of this backend. */
    void synchronize();

    /** An allocation scope. */
    interface Scope extends AutoCloseable {
        @Override
        void close();
    }

    // ------------------------------------------------------------------ dense algebra

    /**
     * C = alpha * op(A) * op(B) + beta * C, row-major, as BLAS sgemm. op(A) is [m, k], op(B) is [k, n], C is [m, n];
     * lda/ldb/ldc are the row strides of A, B and C as stored. A and B are both F32 or both in {@link #gemmDType()};
     * C is F32, or in the GEMM dtype too where A and B are (the f32-accumulated product rounded to it once: a chunk of
     * the LM head's logits).
     */
    void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, Tensor a, int aOff, int lda,
              Tensor b, int bOff, int ldb, float beta, Tensor c, int cOff, int ldc);

    /**
     * Many independent GEMMs of possibly different sizes in one call (the experts of a rank): for each group g with
     * m[g], n[g] and k[g] all positive, C_g = alpha * op(A_g) * op(B_g) + beta * C_g with A_g at aOff[g], B_g at
     * bOff[g], C_g at cOff[g]. Groups with m, n or k = 0 are skipped (with k = 0, C_g is scaled by beta).
     * C is F32 or BF16 (a weight gradient in FSDP's param dtype); a BF16 C_g holds the f32 result alpha * op(A_g) *
     * op(B_g) + beta * C_g (C_g read as bf16 widened to f32 where beta != 0, never read where beta == 0) rounded to
     * nearest even once, as cuBLAS writes a bf16 C; with k = 0, beta * C_g rounded. Any other C dtype is refused.
     */
    void groupedGemm(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k, float alpha, Tensor a,
                     int[] aOff, int lda, Tensor b, int[] bOff, int ldb, float beta, Tensor c, int[] cOff, int ldc);

    /**
     * {@link #groupedGemm} without transA whose B_g is two blocks stacked along its stored rows: rows [0, split) at
     * bOff[g] of {@code b}, rows [split, ...) at b2Off[g] of {@code b2}, both with row stride {@code ldb}. The stored
     * rows are B's k rows where B is stored [k, n] (transB false: the k of every group is at least split, so that C_g
     * = alpha * (A_g[:, :split] B1_g + A_g[:, split:] B2_g) + beta * C_g), its n rows where it is stored [n, k] (transB
     * true: n[g] at least split; C_g's first split columns come from B1_g, the rest from B2_g). The experts' gate and
     * up projections are one GEMM this way, on their two weights as they are. The default runs one
     * {@link #groupedGemm} a block (without transB the second adds into C with beta 1); a device backend may run both
     * blocks in one kernel, whose sums then accumulate in another order (f32 either way).
     */
    default void groupedGemmSplitB(boolean transB, int groups, int[] m, int[] n, int[] k, float alpha, Tensor a,
                                   int[] aOff, int lda, Tensor b, int[] bOff, Tensor b2, int[] b2Off, int ldb,
                                   int split, float beta, Tensor c, int[] cOff, int ldc) {
        checkSplitB(transB, groups, m, n, k, split);
        int[] first = new int[groups];
        int[] rest = new int[groups];
        int[] off2 = new int[groups];
        for (int g = 0; g < groups; g++) {
            int along = transB ? n[g] : k[g];
            first[g] = split;
            rest[g] = Math.max(0, along - split); // a group with m == 0 may end before the split
            off2[g] = transB ? cOff[g] + split : aOff[g] + split;
        }
        if (transB) { // C's first split columns from B1, the rest from B2
            groupedGemm(false, true, groups, m, first, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
            groupedGemm(false, true, groups, m, rest, k, alpha, a, aOff, lda, b2, b2Off, ldb, beta, c, off2, ldc);
        } else { // A's first split columns times B1, then the rest times B2 added
            groupedGemm(false, false, groups, m, n, first, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
            groupedGemm(false, false, groups, m, n, rest, alpha, a, off2, lda, b2, b2Off, ldb, 1f, c, cOff, ldc);
        }
    }

    /**
     * The split rules of {@link #groupedGemmSplitB}: a split of 0 or more that every group with rows (m > 0) reaches
     * along B's stored rows (n with transB, else k); an error naming the group and the fix otherwise.
     */
    static void checkSplitB(boolean transB, int groups, int[] m, int[] n, int[] k, int split) {
        String along = transB ? "n" : "k";
        if (split < 0) {
            throw new IllegalArgumentException("groupedGemmSplitB: split " + split + " is negative: pass the number of "
                    + "B's stored rows in the first block (0 to every group's " + along + ")");
        }
        for (int g = 0; g < groups; g++) {
            int rows = transB ? n[g] : k[g];
            if (m[g] > 0 && rows < split) {
                throw new IllegalArgumentException("groupedGemmSplitB: group " + g + " has " + along + " = " + rows
                        + ", fewer than the split " + split + " (B's first block alone is larger): pass the split of "
                        + "the stacked weights, at most every group's " + along);
            }
        }
    }

    /** y[yOff..] += alpha * x[xOff..] over n elements. */
    void axpy(float alpha, Tensor x, int xOff, Tensor y, int yOff, int n);

    /** x *= alpha over all elements. */
    void scale(Tensor x, float alpha);

    /**
     * Sum of squares of all elements, in double. {@code x} is F32 or BF16 (a bf16 gradient: its values widened to
     * f32, which is exact, so a BF16 tensor gives what an F32 tensor holding the same values gives).
     */
    double sumSquares(Tensor x);

    /**
     * {@link #sumSquares(Tensor)} of each tensor, in one round trip where the backend can (a GPU reads all the sums
     * back at once instead of waiting once per tensor); the list may mix F32 and BF16 tensors.
     */
    default double[] sumSquares(java.util.List<Tensor> xs) {
        double[] out = new double[xs.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = sumSquares(xs.get(i));
        }
        return out;
    }

    // ------------------------------------------------------------------ transformer layers

    /**
     * y[r] = w * x[r] / sqrt(mean(x[r]^2) + eps) for each of {@code rows} rows of {@code dim}; rstd[r] saved. y is F32,
     * or in {@link #gemmDType()} where only GEMMs read it ({@link GemmOperand#empty}): each value computed in f32 and
     * rounded to nearest even once.
     */
    void rmsNormForward(Tensor x, Tensor w, float eps, int rows, int dim, Tensor y, Tensor rstd);

    /** dx of the above given dy (written), dw += its weight gradient (accumulated). */
    void rmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim, Tensor dx, Tensor dw);

    /**
     * The residual add before a norm: x += residual (in place: x becomes the residual stream), then
     * {@link #rmsNormForward} of it. A backend may do both in one pass; the sums are axpy's, rounded once each.
     */
    default void residualRmsNormForward(Tensor x, Tensor residual, Tensor w, float eps, int rows, int dim, Tensor y,
                                        Tensor rstd) {
        axpy(1f, residual, 0, x, 0, rows * dim);
        rmsNormForward(x, w, eps, rows, dim, y, rstd);
    }

    /**
     * {@link #rmsNormBackward}, then dx += residualGrad (the gradient that reaches the norm's input through the
     * residual path as well). A backend may do both in one pass; the sums are axpy's, rounded once each.
     */
    default void rmsNormBackwardResidual(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim,
                                         Tensor residualGrad, Tensor dx, Tensor dw) {
        rmsNormBackward(dy, x, w, rstd, rows, dim, dx, dw);
        axpy(1f, residualGrad, 0, dx, 0, rows * dim);
    }

    /**
     * Rotary embedding in place on x [B*T, heads, D] with the rotate-half convention of Hugging Face; token n has
     * position n % seqLen. {@code inverse} applies the transpose rotation (the backward pass).
     */
    void rope(Tensor x, int tokens, int heads, int headDim, int seqLen, float theta, boolean inverse);

    /**
     * y = rope(rmsNorm(x)) over the {@code tokens * heads} rows of {@code headDim} (the q and k norms of Qwen3 before
     * attention; rstd as {@link #rmsNormForward}). y is F32 or in {@link #attentionInputDType}: each value computed in
     * f32 and rounded once. A backend may do it in one pass; the values are those of the ops one by one.
     */
    default void rmsNormRopeForward(Tensor x, Tensor w, float eps, int tokens, int heads, int headDim, int seqLen,
                                    float theta, Tensor y, Tensor rstd) {
        intoF32(y, wide -> {
            rmsNormForward(x, w, eps, tokens * heads, headDim, wide, rstd);
            rope(wide, tokens, heads, headDim, seqLen, theta, false);
        });
    }

    /**
     * Backward of {@link #rmsNormRopeForward}: dy is the gradient of y (F32; its contents may be overwritten), dx
     * the gradient of x (written: F32, or in {@link #gemmDType()} where only GEMMs read it, rounded once), dw
     * accumulated. A backend may do it in one pass; the values are those of the ops one by one.
     */
    default void rmsNormRopeBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int tokens, int heads, int headDim,
                                     int seqLen, float theta, Tensor dx, Tensor dw) {
        rope(dy, tokens, heads, headDim, seqLen, theta, true);
        intoF32(dx, wide -> rmsNormBackward(dy, x, w, rstd, tokens * heads, headDim, wide, dw));
    }

    /**
     * {@code f32Op} writing an F32 tensor of {@code out}'s shape: {@code out} itself where it is F32, else a scratch
     * that is then converted into {@code out} (each value rounded once) and given back.
     */
    private void intoF32(Tensor out, java.util.function.Consumer<Tensor> f32Op) {
        if (out.dtype() == DType.F32) {
            f32Op.accept(out);
            return;
        }
        Tensor wide = empty(DType.F32, out.shape());
        f32Op.accept(wide);
        convert(wide, out);
        release(wide);
    }

    /**
     * The dtype in which {@link #attentionForward} and {@link #attentionBackward} read q, k and v at this head dim:
     * F32 by default; BF16 where the attention kernels multiply bf16 copies of them anyway (the CUDA flash kernels),
     * so that tensors made only for attention may be held in it (no copy, the same values).
     */
    default DType attentionInputDType(int headDim) {
        return DType.F32;
    }

    /**
     * Causal grouped-query attention. q [B*T, Hq*D], k and v [B*T, Hkv*D], out [B*T, Hq*D]; query head h reads kv
     * head h / (Hq/Hkv). lse [B*Hq*T] receives the log-sum-exp of each score row (scores scaled by {@code scale}),
     * which is all the backward pass keeps: no T x T matrix outlives a call. q, k and v are F32 or in
     * {@link #attentionInputDType} (in both passes); out and lse are F32.
     */
    void attentionForward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads, int headDim,
                          float scale, Tensor out, Tensor lse);

    /** Backward of {@link #attentionForward}: dq, dk, dv are written (not accumulated). */
    void attentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int batch, int seqLen,
                           int qHeads, int kvHeads, int headDim, float scale, Tensor dq, Tensor dk, Tensor dv);

    /**
     * out = silu(gate) * up over [rows, cols] blocks: element (r, c) of gate is at {@code gateOff + r * ld + c} of
     * {@code gate}, of up at {@code upOff + r * ld + c} of {@code up} (the two may be one tensor: the column blocks of
     * the experts' fused [rows, 2I] gate-and-up projection), of out at {@code r * cols + c} (contiguous, written). A
     * contiguous gate and up are {@code ld = cols} at offset 0. Geometry that does not fit is refused
     * ({@link SiluMulBlocks}).
     */
    void siluMulForward(Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols, int ld, Tensor out);

    /**
     * dGate and dUp of {@link #siluMulForward} given dOut (contiguous [rows, cols]): dGate's element (r, c) is written
     * at {@code gateOff + r * ld + c} of {@code dGate}, dUp's at {@code upOff + r * ld + c} of {@code dUp}, the gate
     * and up blocks read as in the forward. dGate and dUp may be one tensor (one [rows, 2I] GEMM operand,
     * {@link #emptyGemmOperand}, so F32 or BF16 as {@link #siluMulForward}'s out) whose blocks do not overlap.
     */
    void siluMulBackward(Tensor dOut, Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols, int ld,
                         Tensor dGate, Tensor dUp);

    /** out[n] = table[ids[n]] for rows of width H; ids is I32 [N]. Out-of-range ids are an error. */
    void embeddingForward(Tensor table, Tensor ids, int tokens, int hidden, Tensor out);

    /** dTable[ids[n]] += dOut[n] (accumulated). */
    void embeddingBackward(Tensor dOut, Tensor ids, int tokens, int hidden, Tensor dTable);

    /**
     * Cross-entropy of logits [rows, V] against targets (I32 [rows], ignore index -100): returns the summed loss over
     * rows with a target, and writes dLogits = (softmax - onehot) * gradScale for those rows, 0 for ignored rows.
     * A target outside [0, V) is an error. {@code dLogits} may be {@code logits} itself (the gradient is then written
     * over the logits, which training does to save a [rows, V] buffer), or a tensor of {@link #gemmDType()} (the
     * gradient rounded to it, for the GEMMs that read it next).
     */
    double crossEntropy(Tensor logits, Tensor targets, int rows, int vocab, float gradScale, Tensor dLogits);

    // ------------------------------------------------------------------ mixture of experts

    /** Row-wise softmax of [rows, cols], in f32. */
    void softmaxRows(Tensor x, int rows, int cols, Tensor out);

    /**
     * Router top-k over probs [rows, E]: topIdx (I32 [rows*K]) and topVal [rows*K] in descending order (ties to the
     * lower expert id), and weights [rows*K] = topVal, divided by the row's sum of topVal when {@code normalize}.
     */
    void routerTopK(Tensor probs, int rows, int experts, int k, boolean normalize, Tensor topIdx, Tensor topVal,
                    Tensor weights);

    /**
     * Adds this batch's router statistics to {@code stats} (host, length 2E): stats[e] += times expert e was chosen,
     * stats[E + e] += sum over rows of probs[row, e].
     */
    void routerStats(Tensor topIdx, Tensor probs, int rows, int experts, int k, double[] stats);

    /**
     * Backward of softmax + top-k (+ renormalisation): from dWeights [rows*K] and the load-balancing gradient
     * auxGrad [E] (added to d probs[row, e] for every row), writes dLogits [rows, E].
     */
    void routerBackward(Tensor dWeights, Tensor topIdx, Tensor topVal, Tensor probs, Tensor auxGrad, int rows,
                        int experts, int k, boolean normalize, Tensor dLogits);

    /**
     * Groups token slots by expert, as a stable counting sort: {@code slotOfRow} (I32 [n], written) lists the slots
     * of expert 0 in slot order, then those of expert 1, and so on; returns {@code counts} (host, length
     * {@code experts}) with the number of slots of each expert. {@code expertOfSlot} is I32 [n] on this backend; an id
     * outside [0, experts) is an error. The counts are all that comes back to the host (they size the expert GEMMs):
     * a device backend sorts on the device. The default downloads the ids and sorts them with
     * {@link #sortSlotsByExpert}.
     */
    default int[] groupByExpert(Tensor expertOfSlot, int n, int experts, Tensor slotOfRow) {
        int[] ids = java.util.Arrays.copyOf(download(expertOfSlot).ints(), n);
        int[] counts = new int[experts];
        copyFromHost(Tensor.ofInts(sortSlotsByExpert(ids, experts, counts), n), slotOfRow);
        return counts;
    }

    /**
     * The host reference of {@link #groupByExpert}: returns slotOfRow for {@code expertIds} and fills
     * {@code counts[e]}. Slots of one expert keep their slot order (token-major), which makes results independent of
     * anything but the routing.
     */
    static int[] sortSlotsByExpert(int[] expertIds, int numExperts, int[] counts) {
        for (int e : expertIds) {
            if (e < 0 || e >= numExperts) {
                throw new IllegalArgumentException("expert id " + e + " outside [0, " + numExperts + ")");
            }
            counts[e]++;
        }
        int[] start = new int[numExperts];
        for (int e = 1; e < numExperts; e++) {
            start[e] = start[e - 1] + counts[e - 1];
        }
        int[] slotOfRow = new int[expertIds.length];
        for (int s = 0; s < expertIds.length; s++) {
            slotOfRow[start[expertIds[s]]++] = s;
        }
        return slotOfRow;
    }

    /**
     * dst[j] = src[index[j] / divisor] for j in [0, n), rows of {@code width}. {@code dst} is F32, or BF16 where it is
     * a GEMM operand of a backend that makes them so ({@link #emptyGemmOperand}: each value rounded as written).
     * {@code src} is F32, or in {@link #gemmDType()} ({@link GemmOperand#empty}: a norm's output), whose values an F32
     * or BF16 dst holds exactly.
     */
    void gatherRows(Tensor src, Tensor index, int n, int width, int divisor, Tensor dst);

    /** dst[index[j]] = src[j] for j in [0, n), rows of {@code width}. */
    void scatterRows(Tensor src, Tensor index, int n, int width, Tensor dst);

    /** inverse[index[j]] = j for j in [0, n): the inverse of a permutation of [0, n) (I32 tensors). */
    void invertIndex(Tensor index, int n, Tensor inverse);

    /**
     * y[t] = sum over k of weights[t*K + k] * slot(t*K + k), rows of {@code width}; y is written. Slot s is row
     * {@code rowOfSlot[s]} of {@code rows} (I32 [tokens*K]: the experts' outputs where they are, no copy in slot
     * order), or row s where {@code rowOfSlot} is null.
     */
    void moeCombine(Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens, int k, int width, Tensor y);

    /**
     * Backward of {@link #moeCombine}, slot s at row r(s) = {@code rowOfSlot[s]} (s where null) of {@code rows} and of
     * {@code dRows}: dRows[r(s)] = w[s] * dy[t] (written; dRows may be a GEMM operand, {@link #emptyGemmOperand}, so
     * F32 or BF16, each value rounded as written), dWeights[s] = dot(dy[t], rows[r(s)]) (written).
     */
    void moeCombineBackward(Tensor dy, Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens, int k, int width,
                            Tensor dRows, Tensor dWeights);

    /**
     * dst[t] += sum over k of slot(t*K + k), rows of {@code width} (the gradient of copying a token K times), slot s
     * at row {@code rowOfSlot[s]} of {@code src} (row s where null).
     */
    void sumSlots(Tensor src, Tensor rowOfSlot, int tokens, int k, int width, Tensor dst);

    // ------------------------------------------------------------------ optimizer

    /**
     * One AdamW step (torch.optim.AdamW semantics, single-tensor path) on n elements: decoupled weight decay,
     * moments updated in place, bias correction for step {@code step} (1-based). The parameter and the moments are F32;
     * the gradient is F32 or BF16 (FSDP2's gradient in the param dtype, read widened to f32: the same step as an F32
     * gradient holding the same values).
     */
    void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, int n, float lr, float beta1, float beta2, float eps,
               float weightDecay, long step);

    /**
     * One tensor of an optimizer step ({@link #adamwStep}): the parameter (its master values, updated in place), its
     * gradient, both moments, and the compute copy that receives the updated values in its own dtype (FSDP's compute
     * copy under a narrower param dtype; null for none). All hold the parameter's element count. The parameter and
     * the moments are F32; the gradient is F32 or BF16 (a weight whose gradient the GEMMs write in the param dtype,
     * as FSDP2 with {@code param_dtype=bf16} hands it to the optimizer: read widened to f32, which is exact).
     */
    record AdamWSlot(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor compute) {
        /**
         * Checks a step's slots (each tensor holds its parameter's element count; the parameter and moments are F32,
         * the gradient F32 or BF16) and {@code squares} (null, or one entry a slot) before anything is updated,
         * naming the first that does not fit.
         */
        public static void check(java.util.List<AdamWSlot> slots, double[] squares) {
            for (int i = 0; i < slots.size(); i++) {
                AdamWSlot s = slots.get(i);
                checkDTypes(s.param(), s.grad(), s.m(), s.v(), "adamwStep slot " + i);
                long n = s.param().numel();
                for (Tensor t : new Tensor[] {s.grad(), s.m(), s.v(), s.compute()}) {
                    if (t != null && t.numel() != n) {
                        throw new IllegalArgumentException("adamwStep slot " + i + ": " + t + " does not hold the "
                                + n + " elements of the parameter " + s.param());
                    }
                }
            }
            if (squares != null && squares.length != slots.size()) {
                throw new IllegalArgumentException("adamwStep: " + squares.length + " sums of squares asked for "
                        + slots.size() + " slots");
            }
        }

        /**
         * Refuses a parameter or moment that is not F32 or a gradient that is neither F32 nor BF16, naming
         * {@code where}.
         */
        public static void checkDTypes(Tensor param, Tensor grad, Tensor m, Tensor v, String where) {
            String[] names = {"parameter", "m", "v"};
            Tensor[] master = {param, m, v};
            for (int t = 0; t < 3; t++) {
                if (master[t] == null || master[t].dtype() != DType.F32) {
                    throw new IllegalArgumentException(where + ": the " + names[t] + " " + master[t] + " must be F32 "
                            + "(master weights and optimizer state stay f32 under every MixedPrecisionPolicy); keep "
                            + "an F32 copy and convert into it");
                }
            }
            if (grad == null || (grad.dtype() != DType.F32 && grad.dtype() != DType.BF16)) {
                throw new IllegalArgumentException(where + ": the gradient " + grad + " must be F32 or BF16 (the "
                        + "optimizer reads a gradient in f32 or in a bf16 param dtype); convert it to F32 first "
                        + "(Backend.convert)");
            }
        }
    }

    /**
     * One AdamW step over many tensors, as {@link #adamw(Tensor, Tensor, Tensor, Tensor, int, float, float, float,
     * float, float, long)} on each slot's whole parameter with its gradient read times {@code gradScale} (gradient
     * clipping's coefficient, 1 for none: the f32 products {@link #scale} would store; the gradient tensors may be left
     * scaled or not), then the updated parameter written into the slot's compute copy where it has one
     * ({@link #convert}). Where {@code squares} is not null it receives, slot by slot, the sum of squares of each
     * gradient as given (before {@code gradScale}), as {@link #sumSquares} computes it (f64; a device may add in
     * another fixed order): the gradient norm of a step that clips nothing, measured in the optimizer's pass. A BF16
     * gradient (see {@link AdamWSlot}) gives, bit for bit, what an F32 gradient holding the same values gives, and
     * keeps bf16 values. The default runs sumSquares, then scale, adamw and convert slot by slot (a BF16 gradient is
     * scaled in an F32 copy, since the f32 products are not bf16 values); a device backend does each slot in one pass.
     */
    default void adamwStep(java.util.List<AdamWSlot> slots, float lr, float beta1, float beta2, float eps,
                           float weightDecay, long step, float gradScale, double[] squares) {
        AdamWSlot.check(slots, squares);
        if (squares != null) {
            java.util.List<Tensor> grads = new java.util.ArrayList<>(slots.size());
            for (AdamWSlot s : slots) {
                grads.add(s.grad());
            }
            System.arraycopy(sumSquares(grads), 0, squares, 0, slots.size());
        }
        for (AdamWSlot s : slots) {
            Tensor grad = s.grad();
            Tensor scaled = null; // the f32 products of a BF16 gradient
            if (gradScale != 1f) {
                if (grad.dtype() == DType.BF16) {
                    scaled = empty(DType.F32, grad.shape());
                    convert(grad, scaled);
                    grad = scaled;
                }
                scale(grad, gradScale);
            }
            try {
                adamw(s.param(), grad, s.m(), s.v(), s.param().numel(), lr, beta1, beta2, eps, weightDecay, step);
            } finally {
                if (scaled != null) {
                    release(scaled);
                }
            }
            if (s.compute() != null) {
                convert(s.param(), s.compute());
            }
        }
    }
}
