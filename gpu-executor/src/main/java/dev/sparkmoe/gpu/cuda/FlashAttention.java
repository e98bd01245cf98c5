package dev.sparkmoe.gpu.cuda;

import static dev.sparkmoe.gpu.cuda.KernelLauncher.THREADS;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.blocksFor;
import static dev.sparkmoe.gpu.cuda.KernelLauncher.ceilDiv;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;

/**
 * The tensor-core flash-attention kernels of {@code flash_attention.cu} (FlashAttention-2 style, causal, grouped
 * query heads; {@link CudaBackend.AttentionMode#FLASH}): no T x T matrix in device memory, bf16 operands, f32 online
 * softmax, lse and accumulators. Head dim 64 or 128 on sm_80 or newer; tensors that are not 16-byte aligned, or
 * sequences past the grid limit, are left to the GEMM path ({@link #forward} and {@link #backward} answer false).
 * Called under the backend's lock.
 *
 * <p>Forward: one CTA of 8 warps per (block of 128 query rows, batch item, query head), each warp owning 16 rows; K
 * and V tiles of 64 keys in shared memory ([64][D+8], 18 KiB at D=64, 34 KiB at D=128); the CTA walks the key tiles
 * up to the diagonal (tiles wholly after a warp's rows are skipped, the diagonal tile masked). S = Q K^T and O += P V
 * are {@code mma.sync.m16n8k16} bf16 products with f32 accumulators (Q kept as register fragments, V^T fragments by
 * {@code ldmatrix.trans}); the online softmax (running max and sum, exp2 domain) is f32 and P is rounded to bf16 only
 * as the operand of P V. O and lse = max + log(sum) are written in f32. Error against the f32 reference: bf16
 * rounding of q, k, v and P (about 4e-3 relative each), so about 1e-2 of the max magnitude.
 *
 * <p>Backward: a small kernel writes Di = rowsum(dO * O) (f32); then one CTA per (block of keys, batch item, kv head)
 * recomputes, for every query head of the group and every query block at or after the key block, S^T = K Q^T,
 * P^T = exp(scale S^T - lse), dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - Di), dK += dS^T Q, and writes
 * dk = scale dK and dv (each owned by one CTA: no atomics, deterministic); a third kernel, one CTA per (block of query
 * rows, batch item, query head), recomputes S, P, dP, dS over the key tiles up to the diagonal and writes
 * dq = scale dS K. bf16 operands and f32 accumulation as in the forward pass.
 *
 * <p>Two kernel sets ({@link CudaBackend.FlashKernels}), the same bits: {@link CudaBackend.FlashKernels#V2_W8}, which
 * runs, reads q, k, v as they are where they are BF16 (the model holds them so: Backend.attentionInputDType) or
 * copies F32 ones to bf16 once per call (scratch, released stream-ordered), and a prep kernel writes bf16 dO with
 * Di; its kernels stage their streamed tiles by {@code cp.async} in a ring of 3, read B operands by ldmatrix, and its
 * backward CTAs have 8 warps (128 key rows per dk/dv CTA, 128 query rows per dq CTA).
 * {@link CudaBackend.FlashKernels#V1}, the tests' reference (the one the emulator transliterates), rounds f32 inputs
 * while staging each tile, with 4-warp backward CTAs (64 rows; dk/dv's key blocks and dq's key tiles 32 at D=128); it
 * takes no BF16 inputs (the GEMM path widens them).
 */
final class FlashAttention {
    private static final String FA = KernelLauncher.FLASH_ATTENTION;
    // Tile configuration of flash_attention.cu (its FA_INSTANCES lines): threads = 32 * warps; a forward / dq CTA
    // owns 16 * warps query rows, a dk/dv CTA 16 * warps key rows.
    private static final int FLASH_FWD_WARPS = 8;
    private static final int FLASH_FWD_BN = 64;
    private static final int FLASH_DQ_WARPS = 4;
    private static final int FLASH_DKDV_WARPS = 4;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private CudaBackend.FlashKernels kernels = CudaBackend.FlashKernels.V2_W8;
    /**
     * Timing hook: which stages of a backward run, as bits (1: the bf16 copies and Di, 2: dk/dv, 4: dq); 7 (all)
     * unless a timing run changes it. Any other value leaves outputs unwritten.
     */
    private int backwardStages = 7;

    FlashAttention(CudaDevice device, CudaMemory memory, KernelLauncher launcher) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
    }

    CudaBackend.FlashKernels kernels() {
        return kernels;
    }

    void setKernels(CudaBackend.FlashKernels k) {
        this.kernels = java.util.Objects.requireNonNull(k, "flash kernels");
    }

    void setBackwardStages(int bits) {
        this.backwardStages = bits;
    }

    /** Whether the flash kernels are built for this head dim (64, 128) and the device has bf16 mma (sm_80+). */
    boolean supports(int headDim) {
        return (headDim == 64 || headDim == 128) && device.smMajor() >= 8;
    }

    private static int flashDqBn(int headDim) {
        return headDim == 64 ? 64 : 32;
    }

    private static int flashDkdvBm(int headDim) {
        return headDim == 64 ? 64 : 32;
    }

    /**
     * Whether the flash kernels can take these tensors: 16-byte aligned addresses (their 16- and 8-byte vector loads
     * and stores; the allocator's blocks are 512-byte aligned) and grid rows within the 65535 limit.
     */
    private static boolean usable(int seqLen, long... addresses) {
        for (long a : addresses) {
            if ((a & 15) != 0) {
                return false;
            }
        }
        return ceilDiv(seqLen, 64) <= 65535;
    }

    private static boolean anyBf16(Tensor... ts) {
        for (Tensor t : ts) {
            if (t.dtype() == DType.BF16) {
                return true;
            }
        }
        return false;
    }

    /**
     * The bf16 [rows, cols] matrix of {@code t} (dense, row stride cols) that the v2 kernels read: {@code t} itself
     * where it is BF16 (null: nothing to give back), else a new copy, rounded where {@code write} (else left unwritten:
     * backward2's timing hook).
     */
    private DeviceBuffer bf16Of(Tensor t, String what, int rows, int cols, boolean write) {
        if (t.dtype() == DType.BF16) {
            return null;
        }
        return write ? bf16Copy(t, what, 0, cols, rows, cols) : memory.allocate(2L * rows * cols);
    }

    private static long address(DeviceBuffer copy, long original) {
        return copy != null ? copy.address() : original;
    }

    private void release(DeviceBuffer... copies) {
        for (DeviceBuffer d : copies) {
            if (d != null) {
                memory.release(d);
            }
        }
    }

    /** A dense bf16 copy of the [rows, cols] block of {@code t} at {@code off} with row stride {@code ld}. */
    private DeviceBuffer bf16Copy(Tensor t, String what, int off, int ld, int rows, int cols) {
        DeviceBuffer d = memory.allocate(2L * rows * cols);
        launcher.launch1D(KernelLauncher.BF16_CONVERSIONS, "f32_to_bf16_rows", (long) rows * ((cols + 1) / 2),
                memory.addr(t, what, off, 0), (long) ld, rows, cols, d.address());
        return d;
    }

    /**
     * The forward pass; false (nothing queued) where the kernels cannot take these tensors (BF16 inputs included for
     * the V1 kernels, which read f32).
     */
    boolean forward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads, int headDim,
                    float scale, Tensor out, Tensor lse) {
        final int T = seqLen, D = headDim, ld = D + 8;
        long nq = (long) batch * T * qHeads * D;
        long nkv = (long) batch * T * kvHeads * D;
        long qA = memory.addrF32OrBf16(q, "q", 0, nq), kA = memory.addrF32OrBf16(k, "k", 0, nkv);
        long vA = memory.addrF32OrBf16(v, "v", 0, nkv);
        long oA = memory.addr(out, "out", 0, nq), lseA = memory.addr(lse, "lse", 0, (long) batch * qHeads * T);
        if (!usable(T, qA, kA, vA, oA) || kernels == CudaBackend.FlashKernels.V1 && anyBf16(q, k, v)) {
            return false;
        }
        int bm = 16 * FLASH_FWD_WARPS;
        if (kernels == CudaBackend.FlashKernels.V1) {
            launcher.launch(FA, "fa_fwd_d" + D, batch * qHeads, ceilDiv(T, bm), 32 * FLASH_FWD_WARPS,
                    4 * FLASH_FWD_BN * ld, qA, kA, vA, T, qHeads, kvHeads, scale, oA, lseA);
            return true;
        }
        DeviceBuffer q16 = bf16Of(q, "q", batch * T, qHeads * D, true);
        DeviceBuffer k16 = bf16Of(k, "k", batch * T, kvHeads * D, true);
        DeviceBuffer v16 = bf16Of(v, "v", batch * T, kvHeads * D, true);
        try {
            launcher.launch(FA, "fa_fwd2_d" + D, batch * qHeads, ceilDiv(T, bm),
                    32 * FLASH_FWD_WARPS, 4 * kernels.stages * FLASH_FWD_BN * ld,
                    address(q16, qA), address(k16, kA), address(v16, vA), T, qHeads, kvHeads, scale, oA, lseA);
        } finally {
            // stream-ordered: a later user of these blocks queues behind the kernel that reads them
            release(q16, k16, v16);
        }
        return true;
    }

    /** The backward pass; false (nothing queued) where the kernels cannot take these tensors (as the forward). */
    boolean backward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int batch, int seqLen,
                     int qHeads, int kvHeads, int headDim, float scale, Tensor dq, Tensor dk, Tensor dv) {
        final int T = seqLen, D = headDim, ld = D + 8;
        long nq = (long) batch * T * qHeads * D;
        long nkv = (long) batch * T * kvHeads * D;
        int rowsL = batch * qHeads * T;
        long dOA = memory.addr(dOut, "dOut", 0, nq), qA = memory.addrF32OrBf16(q, "q", 0, nq);
        long kA = memory.addrF32OrBf16(k, "k", 0, nkv);
        long vA = memory.addrF32OrBf16(v, "v", 0, nkv), lseA = memory.addr(lse, "lse", 0, rowsL);
        long outA = memory.addr(out, "out", 0, nq);
        long dqA = memory.addr(dq, "dq", 0, nq), dkA = memory.addr(dk, "dk", 0, nkv);
        long dvA = memory.addr(dv, "dv", 0, nkv);
        if (!usable(T, dOA, qA, kA, vA, dqA, dkA, dvA) || kernels == CudaBackend.FlashKernels.V1 && anyBf16(q, k, v)) {
            return false;
        }
        if (kernels != CudaBackend.FlashKernels.V1) {
            backward2(dOA, outA, q, qA, k, kA, v, vA, lseA, batch, T, qHeads, kvHeads, D, scale, dqA, dkA, dvA);
            return true;
        }
        Tensor di = memory.scratch(DType.F32, rowsL);
        try {
            long diA = memory.addr(di, "di", 0, rowsL);
            if ((backwardStages & 1) != 0) {
                launcher.launch(FA, "fa_bwd_di", blocksFor((long) rowsL * 32, THREADS), 1, THREADS, 0, dOA, outA,
                        batch, T, qHeads, D, diA);
            }
            int bnKv = 16 * FLASH_DKDV_WARPS, bmKv = flashDkdvBm(D);
            if ((backwardStages & 2) != 0) {
                launcher.launch(FA, "fa_bwd_dkdv_d" + D, batch * kvHeads, ceilDiv(T, bnKv), 32 * FLASH_DKDV_WARPS,
                        4 * (bnKv + bmKv) * ld + 8 * bmKv, dOA, qA, kA, vA, lseA, diA, T, qHeads, kvHeads, scale, dkA,
                        dvA);
            }
            int bmQ = 16 * FLASH_DQ_WARPS;
            if ((backwardStages & 4) != 0) {
                launcher.launch(FA, "fa_bwd_dq_d" + D, batch * qHeads, ceilDiv(T, bmQ), 32 * FLASH_DQ_WARPS,
                        4 * flashDqBn(D) * ld, dOA, qA, kA, vA, lseA, diA, T, qHeads, kvHeads, scale, dqA);
            }
        } finally {
            memory.release(di);
        }
        return true;
    }

    /**
     * The backward of {@link CudaBackend.FlashKernels#V2_W8}: bf16 copies (of F32 inputs), dO copy with Di, dk/dv,
     * dq.
     */
    private void backward2(long dOA, long outA, Tensor q, long qA, Tensor k, long kA, Tensor v, long vA, long lseA,
                           int batch, int T, int qHeads, int kvHeads, int D, float scale, long dqA, long dkA,
                           long dvA) {
        final int ld = D + 8, rowsL = batch * qHeads * T;
        String suf = kernels.backwardSuffix;
        int warps = kernels.backwardWarps, stages = kernels.stages;
        final int rows = batch * T, qCols = qHeads * D, kvCols = kvHeads * D;
        DeviceBuffer di = memory.allocate(4L * rowsL);
        DeviceBuffer dO16 = memory.allocate(2L * rows * qCols);
        boolean prep = (backwardStages & 1) != 0;  // else (timing hook) the copies are left unwritten
        DeviceBuffer q16 = bf16Of(q, "q", rows, qCols, prep);
        DeviceBuffer k16 = bf16Of(k, "k", rows, kvCols, prep);
        DeviceBuffer v16 = bf16Of(v, "v", rows, kvCols, prep);
        try {
            long diA = di.address();
            if (prep) {
                launcher.launch(FA, "fa_bwd_prep", blocksFor((long) rowsL * 32, THREADS), 1, THREADS, 0, dOA, outA,
                        batch, T, qHeads, D, diA, dO16.address());
            }
            long dO16A = dO16.address(), q16A = address(q16, qA), k16A = address(k16, kA), v16A = address(v16, vA);
            int bnKv = 16 * warps, bmKv = flashDkdvBm(D);
            if ((backwardStages & 2) != 0) {
                launcher.launch(FA, "fa_bwd_dkdv2" + suf + "_d" + D, batch * kvHeads, ceilDiv(T, bnKv), 32 * warps,
                        2 * (2 * bnKv + 2 * stages * bmKv) * ld + 8 * stages * bmKv, dO16A, q16A, k16A, v16A, lseA,
                        diA, T, qHeads, kvHeads, scale, dkA, dvA);
            }
            int bmQ = 16 * warps;
            if ((backwardStages & 4) != 0) {
                launcher.launch(FA, "fa_bwd_dq2" + suf + "_d" + D, batch * qHeads, ceilDiv(T, bmQ), 32 * warps,
                        4 * stages * flashDqBn(D) * ld, dO16A, q16A, k16A, v16A, lseA, diA, T, qHeads, kvHeads, scale,
                        dqA);
            }
        } finally {
            // stream-ordered: a later user of these blocks queues behind the kernels that read them
            memory.release(di);
            memory.release(dO16);
            release(q16, k16, v16);
        }
    }
}
