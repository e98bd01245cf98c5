package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.THREADS;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.blocksFor;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.rowThreads;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.global.cudart;

/**
 * Causal grouped-query attention (SPI semantics in {@link dev.sparkmoe.core.backend.Backend#attentionForward}):
 * {@link #effectiveMode} picks the kernels at each call: by default ({@link CudaBackend.AttentionMode#AUTO}) the flash
 * kernels ({@link FlashAttention}) with {@link CudaBackend.GemmPrecision#BF16} and head dim 64 or 128 on sm_80 or
 * newer, else the batched-GEMM path of this class ({@link CudaBackend.AttentionMode#GEMM}: F32 and TF32, the parity
 * settings, or another head dim). lse is the natural-log log-sum-exp of the scaled scores in both, so either backward
 * takes either forward's lse. Called under the backend's lock.
 *
 * <p>{@link CudaBackend.AttentionMode#GEMM}, forward: per chunk of heads of one batch row,
 * {@code cublasGemmStridedBatchedEx} (with the current {@link CudaBackend.GemmPrecision}) computes S = scale * Q K^T
 * into a transient [heads, T, T] buffer (bounded by {@link #setChunkBytes}, default 512 MiB), a row kernel turns S
 * into the causal softmax P in place (f32, {@code -inf} above the diagonal, lse saved), and a second batched GEMM gives
 * O = P V. The T x T buffer lives only inside the call. The full T x T products are computed (twice the causal work)
 * and S makes a round trip through device memory, which the flash kernels avoid. Backward, per chunk of heads:
 * S = scale Q K^T and dP = dO V^T (batched GEMMs), a row kernel writes P = exp(S - lse) (masked) and
 * dS = P (dP - D) scale in place (D = rowsum(dO * O) from a small kernel), then dV += P^T dO and dK += dS^T Q (dk, dv
 * zeroed first, each kv head summed over the query heads of its group in stream order: deterministic) and dQ = dS K.
 * Two transient [heads, T, T] buffers share the chunk budget.
 */
final class Attention {
    private static final String A = KernelLauncher.ATTENTION;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final CublasGemm cublas;
    private final FlashAttention flash;
    private final Elementwise elementwise;
    private CudaBackend.AttentionMode mode = CudaBackend.AttentionMode.AUTO;
    private long chunkBytes = CudaBackend.DEFAULT_ATTENTION_CHUNK_BYTES;

    Attention(CudaDevice device, CudaMemory memory, KernelLauncher launcher, CublasGemm cublas, FlashAttention flash,
              Elementwise elementwise) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.cublas = cublas;
        this.flash = flash;
        this.elementwise = elementwise;
    }

    CudaBackend.AttentionMode mode() {
        return mode;
    }

    void setMode(CudaBackend.AttentionMode m) {
        this.mode = m;
    }

    long chunkBytes() {
        return chunkBytes;
    }

    /**
     * Bound, in bytes, of the transient T x T score buffers of {@link CudaBackend.AttentionMode#GEMM} attention (at
     * least one head's worth is always used).
     */
    void setChunkBytes(long bytes) {
        if (bytes <= 0) {
            throw new IllegalArgumentException("attention chunk bytes must be positive, got " + bytes);
        }
        this.chunkBytes = bytes;
    }

    /**
     * The mode an attention call with this head dim runs now: {@link CudaBackend.AttentionMode#GEMM} or
     * {@link CudaBackend.AttentionMode#FLASH} ({@link CudaBackend.AttentionMode#AUTO} resolved against the current
     * {@link CudaBackend.GemmPrecision}; FLASH falls back to GEMM where it does not support the head dim or device).
     */
    CudaBackend.AttentionMode effectiveMode(int headDim) {
        switch (mode) {
            case GEMM:
                return CudaBackend.AttentionMode.GEMM;
            case FLASH:
                return flash.supports(headDim) ? CudaBackend.AttentionMode.FLASH : CudaBackend.AttentionMode.GEMM;
            default:
                return cublas.precision() == CudaBackend.GemmPrecision.BF16 && flash.supports(headDim)
                        ? CudaBackend.AttentionMode.FLASH : CudaBackend.AttentionMode.GEMM;
        }
    }

    private static void checkHeads(int qHeads, int kvHeads) {
        if (kvHeads <= 0 || qHeads % kvHeads != 0) {
            throw new IllegalArgumentException("attention: kv heads (" + kvHeads + ") must divide query heads ("
                    + qHeads + ")");
        }
    }

    void forward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads, int headDim,
                 float scale, Tensor out, Tensor lse) {
        checkHeads(qHeads, kvHeads);
        if (batch == 0 || seqLen == 0) {
            return;
        }
        CudaBackend.AttentionMode mode = effectiveMode(headDim);
        if (mode != CudaBackend.AttentionMode.FLASH
                || !flash.forward(q, k, v, batch, seqLen, qHeads, kvHeads, headDim, scale, out, lse)) {
            // GEMM, or FLASH where the flash kernels cannot take these tensors (see FlashAttention.usable)
            Tensor q32 = widened(q), k32 = widened(k), v32 = widened(v);
            try {
                forwardGemm(q32, k32, v32, batch, seqLen, qHeads, kvHeads, headDim, scale, out, lse);
            } finally {
                releaseWidened(q32, q, k32, k, v32, v);
            }
        }
    }

    /**
     * The dtype attention reads q, k and v in at this head dim (Backend.attentionInputDType): BF16 where the flash
     * kernels run and read bf16 copies of them (the v2 kernels), else F32.
     */
    DType inputDType(int headDim) {
        return effectiveMode(headDim) == CudaBackend.AttentionMode.FLASH
                && flash.kernels() != CudaBackend.FlashKernels.V1 ? DType.BF16 : DType.F32;
    }

    /** q, k or v as the f32 paths read it: itself, or where it is BF16 an f32 copy of its values (exact). */
    private Tensor widened(Tensor t) {
        return t.dtype() == DType.BF16 ? elementwise.widened(t) : t;
    }

    /** Gives back the scratch copies of {@link #widened}: pairs (copy, original). */
    private void releaseWidened(Tensor... pairs) {
        for (int i = 0; i < pairs.length; i += 2) {
            if (pairs[i] != pairs[i + 1]) {
                memory.release(pairs[i]); // stream-ordered: a later user queues behind the kernels that read it
            }
        }
    }

    /** dq, dk and dv are written, not accumulated. */
    void backward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int batch, int seqLen,
                  int qHeads, int kvHeads, int headDim, float scale, Tensor dq, Tensor dk, Tensor dv) {
        checkHeads(qHeads, kvHeads);
        if (batch == 0 || seqLen == 0) {
            return;
        }
        CudaBackend.AttentionMode mode = effectiveMode(headDim);
        if (mode != CudaBackend.AttentionMode.FLASH || !flash.backward(dOut, q, k, v, out, lse, batch, seqLen,
                qHeads, kvHeads, headDim, scale, dq, dk, dv)) {
            // GEMM, or FLASH where the flash kernels cannot take these tensors (see FlashAttention.usable)
            Tensor q32 = widened(q), k32 = widened(k), v32 = widened(v);
            try {
                backwardGemm(dOut, q32, k32, v32, out, lse, batch, seqLen, qHeads, kvHeads, headDim, scale, dq, dk,
                        dv);
            } finally {
                releaseWidened(q32, q, k32, k, v32, v);
            }
        }
    }

    /**
     * Heads per chunk (nHH query heads of each group times nG kv heads) for {@code buffers} T x T f32 buffers per
     * head under the chunk budget: {nHH, nG}. At least one head.
     */
    private int[] chunk(int seqLen, int group, int kvHeads, int buffers) {
        long perHead = (long) seqLen * seqLen * 4L * buffers;
        long maxHeads = Math.max(1, chunkBytes / perHead);
        int nG = (int) Math.min(kvHeads, maxHeads);
        int nHH = nG == kvHeads ? (int) Math.max(1, Math.min(group, maxHeads / kvHeads)) : 1;
        return new int[] {nHH, nG};
    }

    private DeviceBuffer scratch(long elements) {
        return memory.allocate(elements * 4L);
    }

    private void forwardGemm(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads,
                             int headDim, float scale, Tensor out, Tensor lse) {
        final int T = seqLen, D = headDim, G = qHeads / kvHeads;
        long nq = (long) batch * T * qHeads * D;
        long nkv = (long) batch * T * kvHeads * D;
        long qA = memory.addr(q, "q", 0, nq), kA = memory.addr(k, "k", 0, nkv), vA = memory.addr(v, "v", 0, nkv);
        long oA = memory.addr(out, "out", 0, nq), lseA = memory.addr(lse, "lse", 0, (long) batch * qHeads * T);
        int[] ch = chunk(T, G, kvHeads, 1);
        long tt = (long) T * T;
        DeviceBuffer sBuf = scratch((long) ch[0] * ch[1] * tt);
        try {
            long sA = sBuf.address();
            for (int b = 0; b < batch; b++) {
                for (int hh0 = 0; hh0 < G; hh0 += ch[0]) {
                    int nHH = Math.min(ch[0], G - hh0);
                    for (int g0 = 0; g0 < kvHeads; g0 += ch[1]) {
                        int nG = Math.min(ch[1], kvHeads - g0);
                        for (int hl = 0; hl < nHH; hl++) {
                            int hh = hh0 + hl;
                            long qOff = (long) b * T * qHeads * D + (long) (g0 * G + hh) * D;
                            long kOff = (long) b * T * kvHeads * D + (long) g0 * D;
                            cublas.gemmStrided(false, true, T, T, D, scale, qA + 4 * qOff, qHeads * D, (long) G * D,
                                    kA + 4 * kOff, kvHeads * D, D, 0f, sA + 4 * hl * nG * tt, T, tt, nG);
                        }
                        long rows = (long) nHH * nG * T;
                        launcher.launch(A, "attn_gemm_softmax", (int) rows, 1, rowThreads(T), 0, sA, T, b, hh0, g0,
                                nG, G, qHeads, lseA);
                        for (int hl = 0; hl < nHH; hl++) {
                            int hh = hh0 + hl;
                            long qOff = (long) b * T * qHeads * D + (long) (g0 * G + hh) * D;
                            long kOff = (long) b * T * kvHeads * D + (long) g0 * D;
                            cublas.gemmStrided(false, false, T, D, T, 1f, sA + 4 * hl * nG * tt, T, tt,
                                    vA + 4 * kOff, kvHeads * D, D, 0f, oA + 4 * qOff, qHeads * D, (long) G * D, nG);
                        }
                    }
                }
            }
        } finally {
            memory.release(sBuf);
        }
    }

    private void backwardGemm(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int batch,
                              int seqLen, int qHeads, int kvHeads, int headDim, float scale, Tensor dq, Tensor dk,
                              Tensor dv) {
        final int T = seqLen, D = headDim, G = qHeads / kvHeads;
        long nq = (long) batch * T * qHeads * D;
        long nkv = (long) batch * T * kvHeads * D;
        int rowsL = batch * qHeads * T;
        long dOA = memory.addr(dOut, "dOut", 0, nq), qA = memory.addr(q, "q", 0, nq);
        long kA = memory.addr(k, "k", 0, nkv);
        long vA = memory.addr(v, "v", 0, nkv), lseA = memory.addr(lse, "lse", 0, rowsL);
        long dqA = memory.addr(dq, "dq", 0, nq), dkA = memory.addr(dk, "dk", 0, nkv);
        long dvA = memory.addr(dv, "dv", 0, nkv);
        long outA = memory.addr(out, "out", 0, nq);
        Cuda.check(cudart.cudaMemsetAsync(RawPointer.of(dkA, 0), 0, 4 * nkv, device.stream()),
                "cudaMemsetAsync(dk)");
        Cuda.check(cudart.cudaMemsetAsync(RawPointer.of(dvA, 0), 0, 4 * nkv, device.stream()),
                "cudaMemsetAsync(dv)");
        int[] ch = chunk(T, G, kvHeads, 2);
        long tt = (long) T * T;
        long chunkElems = (long) ch[0] * ch[1] * tt;
        Tensor di = memory.scratch(DType.F32, rowsL);
        DeviceBuffer sBuf = scratch(chunkElems);
        DeviceBuffer pBuf = scratch(chunkElems);
        try {
            long diA = memory.addr(di, "di", 0, rowsL);
            long warps = (long) batch * T * qHeads;
            launcher.launch(A, "attn_bwd_di", blocksFor(warps * 32, THREADS), 1, THREADS, 0, dOA, outA, batch, T,
                    qHeads, D, diA);
            long sA = sBuf.address(), pA = pBuf.address();
            int qld = qHeads * D, kld = kvHeads * D;
            long qStr = (long) G * D;
            for (int b = 0; b < batch; b++) {
                for (int hh0 = 0; hh0 < G; hh0 += ch[0]) {
                    int nHH = Math.min(ch[0], G - hh0);
                    for (int g0 = 0; g0 < kvHeads; g0 += ch[1]) {
                        int nG = Math.min(ch[1], kvHeads - g0);
                        long kOff = 4 * ((long) b * T * kvHeads * D + (long) g0 * D);
                        for (int hl = 0; hl < nHH; hl++) {
                            long qOff = 4 * ((long) b * T * qHeads * D + (long) (g0 * G + hh0 + hl) * D);
                            long sl = 4 * hl * nG * tt;
                            cublas.gemmStrided(false, true, T, T, D, scale, qA + qOff, qld, qStr, kA + kOff, kld, D,
                                    0f, sA + sl, T, tt, nG);
                            cublas.gemmStrided(false, true, T, T, D, 1f, dOA + qOff, qld, qStr, vA + kOff, kld, D,
                                    0f, pA + sl, T, tt, nG);
                        }
                        long rows = (long) nHH * nG * T;
                        launcher.launch(A, "attn_gemm_ds", (int) rows, 1, rowThreads(T), 0, sA, pA, T, b, hh0, g0,
                                nG, G, qHeads, lseA, diA, scale);
                        for (int hl = 0; hl < nHH; hl++) {
                            long qOff = 4 * ((long) b * T * qHeads * D + (long) (g0 * G + hh0 + hl) * D);
                            long sl = 4 * hl * nG * tt;
                            // dV_g += P^T dO_h, dK_g += dS^T Q_h (kv head g of each batch item), dQ_h = dS K_g.
                            cublas.gemmStrided(true, false, T, D, T, 1f, sA + sl, T, tt, dOA + qOff, qld, qStr, 1f,
                                    dvA + kOff, kld, D, nG);
                            cublas.gemmStrided(true, false, T, D, T, 1f, pA + sl, T, tt, qA + qOff, qld, qStr, 1f,
                                    dkA + kOff, kld, D, nG);
                            cublas.gemmStrided(false, false, T, D, T, 1f, pA + sl, T, tt, kA + kOff, kld, D, 0f,
                                    dqA + qOff, qld, qStr, nG);
                        }
                    }
                }
            }
        } finally {
            memory.release(pBuf);
            memory.release(sBuf);
            memory.release(di);
        }
    }
}
