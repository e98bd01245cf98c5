package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.cudart.CUfunc_st;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerPointer;

import java.util.List;

/**
 * The grouped GEMM of a MoE layer's experts ({@link dev.sparkmoe.core.backend.Backend#groupedGemm}): by default
 * ({@link CudaBackend.GroupedMode#AUTO}) ONE launch (per 64 groups) of a bf16 tensor-core kernel
 * ({@link CudaBackend.GroupedMode#KERNEL}) when the precision is {@link CudaBackend.GemmPrecision#BF16} and the device
 * is sm_80 or newer with the kernel's shared memory, and otherwise ({@link CudaBackend.GroupedMode#LOOP}: F32 and
 * TF32, the exact-parity modes) one {@code cublasGemmEx} per non-empty group on the stream. The kernel is
 * {@code grouped_gemm_sm90.cu} (wgmma, compiled for sm_90a) on compute capability 9.0 and {@code grouped_gemm_bf16.cu}
 * (mma.sync) elsewhere ({@link Kernel}); both take the same GBParams, filled here by one code path. They read bf16
 * operands ({@link GroupedGemmOperands}), accumulate in f32, never read C when beta == 0 and scale C_g by beta where
 * k == 0. C is F32 or BF16 (a weight gradient in FSDP's param dtype): a BF16 C holds the f32 result alpha * AB + beta *
 * C (C widened where beta != 0) rounded to nearest even once, as cuBLAS writes a bf16 C; the kernels take it through
 * {@link #FLAG_C_BF16}, the loop through an f32 block ({@link #loopBf16C}). A B in two blocks
 * ({@link dev.sparkmoe.core.backend.Backend#groupedGemmSplitB}) is one launch of the sm90 kernel where
 * {@link #fusesSplitB} says so ({@link #groupedGemmSplitB}); the backend runs it as two grouped GEMMs otherwise.
 * Called under the backend's lock.
 */
final class GroupedGemm {
    /** Groups per launch of the grouped GEMM kernels and the byte layout of their GBParams (grouped_gemm_params.cuh). */
    static final int MAX_GROUPS = 64;
    private static final int TILE_M = 128;
    static final long OFF_A = 24;
    static final long OFF_B = OFF_A + 8L * MAX_GROUPS;
    static final long OFF_C = OFF_B + 8L * MAX_GROUPS;
    static final long OFF_M = OFF_C + 8L * MAX_GROUPS;
    static final long OFF_N = OFF_M + 4L * MAX_GROUPS;
    static final long OFF_K = OFF_N + 4L * MAX_GROUPS;
    static final long OFF_TILE = OFF_K + 4L * MAX_GROUPS;
    static final long OFF_FLAGS = OFF_TILE + 4L * MAX_GROUPS;
    static final long OFF_B2 = OFF_FLAGS + 4L * MAX_GROUPS;
    static final long OFF_SPLIT = OFF_B2 + 8L * MAX_GROUPS;
    static final long PARAMS_BYTES = OFF_SPLIT + 8; // bSplit and pad: 3360, as static_assert'ed there
    /** GBParams.flags bit 2 (GB_FLAG_C_BF16): C_g is bf16 (ldc in elements either way). */
    static final int FLAG_C_BF16 = 4;

    private final CudaDevice device;
    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final CublasGemm cublas;
    private final GroupedGemmOperands operands;
    /** grouped_gemm_bf16.cu's tile columns, block size and dynamic shared memory ({@link Tiles}), and whether the
     *  device grants a block that much. */
    private final int tileN;
    private final int threads;
    private final int sharedBytes;
    private final boolean fits;
    /** The kernel's only parameter, a GBParams struct passed by value, and its kernelParams array. */
    private final BytePointer params = new BytePointer(PARAMS_BYTES);
    private final PointerPointer<Pointer> argPtrs = new PointerPointer<>(1);
    /** grouped_gemm_sm90.cu's tile columns and dynamic shared memory, and whether this device runs it. */
    private final int sm90TileN;
    private final int sm90SharedBytes;
    private final boolean sm90Fits;
    private CudaBackend.GroupedMode mode = CudaBackend.GroupedMode.AUTO;
    private Kernel kernelChoice = Kernel.AUTO;
    /** CTAs of each sm90 kernel an SM holds (cuOccupancyMaxActiveBlocksPerMultiprocessor, asked once a kernel). */
    private final java.util.Map<String, Integer> sm90BlocksPerSm = new java.util.HashMap<>();
    /** Launches of the sm90 kernel with B in two blocks so far (tests). */
    private long splitLaunches;

    /** Which kernel {@link CudaBackend.GroupedMode#KERNEL} launches. */
    enum Kernel {
        /** {@link #SM90} on compute capability 9.0 with its shared memory, else {@link #MMA_SYNC}. */
        AUTO,
        /** {@code grouped_gemm_bf16_*} (mma.sync m16n8k16; sm_80 or newer). */
        MMA_SYNC,
        /** {@code grouped_gemm_sm90_*} (wgmma; compute capability 9.0 only). */
        SM90
    }

    /** Threads of a grouped_gemm_sm90 CTA (two warpgroups: GS_THREADS). */
    private static final int SM90_THREADS = 256;

    /**
     * The host's mirror of the kernels' tuning macros (defaults, or as {@code -Dsparkmoe.cuda.defines} sets them):
     * GB_BN (tile columns), the block size (64 x GB_WARPS_N), the dynamic shared memory (GB_STAGES stages of bf16 A
     * and B tiles of GB_BK: the default 3 x 36 KB) and the cast's GC_UNROLL of grouped_gemm_bf16.cu; GS_BN and the
     * dynamic shared memory (GS_STAGES stages of 128 x 64 and GS_BN x 64 bf16 tiles, plus 1 KB of alignment slack) of
     * grouped_gemm_sm90.cu.
     */
    record Tiles(int tileN, int threads, int sharedBytes, int castUnroll, int sm90TileN, int sm90SharedBytes) {
        static Tiles fromDefines() {
            int pad = 8;
            int tileN = KernelLibrary.defineValue("GB_BN", 128);
            int threads = 64 * KernelLibrary.defineValue("GB_WARPS_N", 4);
            int castUnroll = Math.max(1, KernelLibrary.defineValue("GC_UNROLL", 4));
            int bk = KernelLibrary.defineValue("GB_BK", 64);
            int sharedBytes = KernelLibrary.defineValue("GB_STAGES", 3) * 2
                    * (Math.max(TILE_M * (bk + pad), bk * (TILE_M + pad))
                    + Math.max(tileN * (bk + pad), bk * (tileN + pad)));
            int sm90TileN = KernelLibrary.defineValue("GS_BN", 256);
            int sm90SharedBytes = KernelLibrary.defineValue("GS_STAGES", 4) * 2 * (TILE_M * 64 + sm90TileN * 64) + 1024;
            return new Tiles(tileN, threads, sharedBytes, castUnroll, sm90TileN, sm90SharedBytes);
        }
    }

    GroupedGemm(Tiles tiles, CudaDevice device, CudaMemory memory, KernelLauncher launcher, CublasGemm cublas,
                GroupedGemmOperands operands) {
        this.device = device;
        this.memory = memory;
        this.launcher = launcher;
        this.cublas = cublas;
        this.operands = operands;
        this.tileN = tiles.tileN();
        this.threads = tiles.threads();
        this.sharedBytes = tiles.sharedBytes();
        this.fits = device.smMajor() >= 8 && device.sharedMemPerBlockOptin() >= sharedBytes;
        this.sm90TileN = tiles.sm90TileN();
        this.sm90SharedBytes = tiles.sm90SharedBytes();
        this.sm90Fits = device.smMajor() == 9 && device.smMinor() == 0
                && device.sharedMemPerBlockOptin() >= sm90SharedBytes;
        argPtrs.put(0, params);
    }

    CudaBackend.GroupedMode mode() {
        return mode;
    }

    void setMode(CudaBackend.GroupedMode m) {
        this.mode = java.util.Objects.requireNonNull(m, "grouped mode");
    }

    /** The path {@link #groupedGemm} takes now: never {@link CudaBackend.GroupedMode#AUTO}. */
    CudaBackend.GroupedMode effectiveMode() {
        if (mode != CudaBackend.GroupedMode.AUTO) {
            return mode;
        }
        return cublas.precision() == CudaBackend.GemmPrecision.BF16 && kernelSupported()
                ? CudaBackend.GroupedMode.KERNEL : CudaBackend.GroupedMode.LOOP;
    }

    /** Whether {@link CudaBackend.GroupedMode#KERNEL} can run here: bf16 tensor cores (sm_80+) and the shared
     *  memory of one of the kernels. */
    boolean kernelSupported() {
        return launcher.smMajor() >= 8 && (fits || sm90Fits);
    }

    /** Forces a kernel (tests and benchmarks compare them); {@link Kernel#AUTO} is the default. */
    void setKernelChoice(Kernel k) {
        this.kernelChoice = java.util.Objects.requireNonNull(k, "grouped kernel");
    }

    /** The kernel {@link CudaBackend.GroupedMode#KERNEL} launches now: never {@link Kernel#AUTO}. */
    Kernel effectiveKernel() {
        if (kernelChoice != Kernel.AUTO) {
            return kernelChoice;
        }
        return sm90Fits ? Kernel.SM90 : Kernel.MMA_SYNC;
    }

    /** Whether {@link Kernel#SM90} runs here: compute capability 9.0 with its shared memory. */
    boolean sm90Supported() {
        return sm90Fits;
    }

    /**
     * Whether {@link #groupedGemm} reads {@code a} and {@code b} as they are: true for an F32 operand, and for a BF16
     * one (a weight's compute copy) where the kernel runs and can read it in place
     * ({@link GroupedGemmOperands#readableInPlace}); the caller widens the others to F32 first.
     */
    boolean[] takesAsIs(boolean transA, boolean transB, int[] m, int[] n, int[] k, Tensor a, int[] aOff, int lda,
                        Tensor b, int[] bOff, int ldb) {
        boolean kernel = a.dtype() == DType.BF16 || b.dtype() == DType.BF16
                ? effectiveMode() == CudaBackend.GroupedMode.KERNEL && kernelSupported()
                && (effectiveKernel() != Kernel.SM90 || sm90Fits)
                && 256L * (Math.max(Math.max(lda, ldb), 1) + 8) <= Integer.MAX_VALUE : false;
        int[][] dims = GroupedGemmOperands.operandDims(transA, transB, m, n, k);
        return new boolean[] {
            a.dtype() != DType.BF16 || kernel && operands.readableInPlace(a, aOff, lda, dims[0], dims[1], m, n, k),
            b.dtype() != DType.BF16 || kernel && operands.readableInPlace(b, bOff, ldb, dims[2], dims[3], m, n, k)};
    }

    private static void checkC(Tensor c) {
        if (c.dtype() != DType.F32 && c.dtype() != DType.BF16) {
            throw new IllegalArgumentException("groupedGemm writes C in F32 or BF16 (the f32 result rounded once); C is "
                    + c + " of dtype " + c.dtype() + ": pass an F32 or BF16 C and convert it afterwards "
                    + "(Backend.convert)");
        }
    }

    void groupedGemm(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k, float alpha, Tensor a,
                     int[] aOff, int lda, Tensor b, int[] bOff, int ldb, float beta, Tensor c, int[] cOff, int ldc) {
        checkC(c);
        boolean c16 = c.dtype() == DType.BF16;
        CudaBackend.GroupedMode mode = effectiveMode();
        if (mode == CudaBackend.GroupedMode.KERNEL && !kernelSupported()) {
            throw new IllegalStateException("GroupedMode.KERNEL needs bf16 tensor cores (sm_80 or newer) and "
                    + sharedBytes + " bytes of shared memory per block; " + device.name() + " is " + launcher.arch()
                    + " (with less shared memory, try -Dsparkmoe.cuda.defines=GB_STAGES=2)");
        }
        if (mode == CudaBackend.GroupedMode.KERNEL) {
            Kernel kind = effectiveKernel();
            if (kind == Kernel.SM90 && !sm90Fits) {
                throw new IllegalStateException("the sm90 grouped GEMM kernel needs compute capability 9.0 (wgmma) and "
                        + sm90SharedBytes + " bytes of shared memory per block; " + device.name() + " is "
                        + launcher.arch() + " with " + device.sharedMemPerBlockOptin() + " (use Kernel.AUTO or "
                        + "MMA_SYNC there, or fewer stages: -Dsparkmoe.cuda.defines=GS_STAGES=4)");
            }
            if (kind == Kernel.MMA_SYNC && !fits) {
                throw new IllegalStateException("the mma.sync grouped GEMM kernel needs " + sharedBytes + " bytes of "
                        + "shared memory per block; " + device.name() + " grants " + device.sharedMemPerBlockOptin()
                        + " (try -Dsparkmoe.cuda.defines=GB_STAGES=2)");
            }
        }
        // The kernel computes row * ld + col in 32 bits inside a 256-row slice of its bf16 operands, whose padded
        // strides stay below max(lda, ldb) + 8; absurd strides take the loop.
        boolean kernel = mode == CudaBackend.GroupedMode.KERNEL
                && 256L * (Math.max(Math.max(lda, ldb), 1) + 8) <= Integer.MAX_VALUE;
        int[] active = new int[groups];
        int count = 0;
        for (int g = 0; g < groups; g++) {
            if (m[g] == 0 || n[g] == 0) {
                continue;
            }
            CublasGemm.checkSpan("C[" + g + "]", c, cOff[g], m[g], n[g], ldc);
            if (k[g] == 0) {
                if (kernel) {
                    active[count++] = g; // the kernel scales C_g by beta itself (and never reads it when beta == 0)
                } else {
                    launcher.launch1D(KernelLauncher.GEMM_SCALE, c16 ? "scale_rows_bf16" : "scale_rows_f32",
                            (long) m[g] * n[g], memory.addrOf(c, c.dtype(), "C", cOff[g], 0), m[g], n[g], ldc, beta);
                }
                continue;
            }
            CublasGemm.checkSpan("A[" + g + "]", a, aOff[g], transA ? k[g] : m[g], transA ? m[g] : k[g], lda);
            CublasGemm.checkSpan("B[" + g + "]", b, bOff[g], transB ? n[g] : k[g], transB ? k[g] : n[g], ldb);
            active[count++] = g;
        }
        if (count == 0) {
            return;
        }
        if (kernel) {
            kernel(transA, transB, active, count, m, n, k, alpha, a, aOff, lda, b, bOff, null, null, 0, ldb, beta, c,
                    cOff, ldc);
            return;
        }
        if (c16) {
            loopBf16C(transA, transB, active, count, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
            return;
        }
        for (int q = 0; q < count; q++) {
            int g = active[q];
            cublas.gemmEx(transA, transB, m[g], n[g], k[g], alpha, memory.addr(a, "A", aOff[g], 0), lda,
                    memory.addr(b, "B", bOff[g], 0), ldb, beta, memory.addr(c, "C", cOff[g], 0), ldc);
        }
    }

    /**
     * Whether {@link #groupedGemmSplitB} runs these operands as one launch: a split of 1 or more, KERNEL mode on the
     * sm90 kernel, and both blocks of B BF16 tensors that it reads in place
     * ({@link GroupedGemmOperands#readableInPlace}: ldb a multiple of 8, every block of every group that reads B
     * 16-byte aligned with whole 16-byte rows; a group whose B_g lies wholly in the first block does not read the
     * second); strides within the kernel's 32-bit slice arithmetic. A may be anything {@link #groupedGemm} takes.
     */
    boolean fusesSplitB(boolean transB, int[] m, int[] n, int[] k, int lda, Tensor b, int[] bOff, Tensor b2,
                        int[] b2Off, int ldb, int split) {
        if (split <= 0 || b.dtype() != DType.BF16 || b2.dtype() != DType.BF16
                || effectiveMode() != CudaBackend.GroupedMode.KERNEL || !kernelSupported()
                || effectiveKernel() != Kernel.SM90 || !sm90Fits
                || 256L * (Math.max(Math.max(lda, ldb), 1) + 8) > Integer.MAX_VALUE) {
            return false;
        }
        int groups = m.length;
        int[] rows1 = new int[groups], rows2 = new int[groups], cols = new int[groups], m2 = m.clone();
        for (int g = 0; g < groups; g++) {
            int along = transB ? n[g] : k[g];
            rows1[g] = split;
            rows2[g] = along - split;
            cols[g] = transB ? k[g] : n[g];
            if (rows2[g] <= 0) {
                m2[g] = 0; // B_g ends at the split: its second block is not read
            }
        }
        return operands.readableInPlace(b, bOff, ldb, rows1, cols, m, n, k)
                && operands.readableInPlace(b2, b2Off, ldb, rows2, cols, m2, n, k);
    }

    /**
     * {@link dev.sparkmoe.core.backend.Backend#groupedGemmSplitB} as ONE launch of {@code grouped_gemm_sm90_n<tb>}
     * per 64 groups, where {@link #fusesSplitB} (the caller checks it; A is F32 or a BF16 tensor it reads in place,
     * as for {@link #groupedGemm}): B_g's stored rows below {@code split} from {@code b} at bOff[g], the rest from
     * {@code b2} at b2Off[g] (GBParams.b2 and bSplit), tiles and k walk of the whole GEMM (n and k are the whole
     * group's). Checks the split rules (every group with m > 0 reaches the split along B's stored rows) and the spans
     * of C, A and both blocks.
     */
    void groupedGemmSplitB(boolean transB, int groups, int[] m, int[] n, int[] k, float alpha, Tensor a, int[] aOff,
                           int lda, Tensor b, int[] bOff, Tensor b2, int[] b2Off, int ldb, int split, float beta,
                           Tensor c, int[] cOff, int ldc) {
        checkC(c);
        if (!fusesSplitB(transB, m, n, k, lda, b, bOff, b2, b2Off, ldb, split)) {
            throw new IllegalStateException("groupedGemmSplitB: these operands do not run as one launch here (split "
                    + split + ", B " + b.dtype() + " and " + b2.dtype() + ", mode " + effectiveMode() + ", kernel "
                    + effectiveKernel() + "): ask fusesSplitB first and run two groupedGemm calls otherwise");
        }
        dev.sparkmoe.core.backend.Backend.checkSplitB(transB, groups, m, n, k, split);
        int[] active = new int[groups];
        int count = 0;
        for (int g = 0; g < groups; g++) {
            int along = transB ? n[g] : k[g];
            if (m[g] == 0 || n[g] == 0) {
                continue;
            }
            CublasGemm.checkSpan("C[" + g + "]", c, cOff[g], m[g], n[g], ldc);
            if (k[g] > 0) {
                int cols = transB ? k[g] : n[g];
                CublasGemm.checkSpan("A[" + g + "]", a, aOff[g], m[g], k[g], lda);
                CublasGemm.checkSpan("B[" + g + "] (first block, rows 0.." + split + ")", b, bOff[g], split, cols,
                        ldb);
                if (along > split) {
                    CublasGemm.checkSpan("B[" + g + "] (second block, rows " + split + ".." + along + ")", b2,
                            b2Off[g], along - split, cols, ldb);
                }
            }
            active[count++] = g; // k == 0 (transB): the kernel scales C_g by beta
        }
        if (count > 0) {
            kernel(false, transB, active, count, m, n, k, alpha, a, aOff, lda, b, bOff, b2, b2Off, split, ldb, beta,
                    c, cOff, ldc);
        }
    }

    /** Launches of the sm90 kernel with B in two blocks so far (tests: the fused path really ran). */
    long splitLaunches() {
        return splitLaunches;
    }

    /**
     * {@link CudaBackend.GroupedMode#LOOP} into a BF16 C (the active groups, k > 0). The loop's A and B are F32 (the
     * backend widens BF16 operands for it), and cublasGemmEx writes a bf16 C only from bf16 A and B, which would round
     * the operands; so each C_g is computed by the same f32 {@code cublasGemmEx} as for an F32 C, into one f32 block
     * of C_g's row stride (C_g widened into it first where beta != 0: exact), and rounded into C_g once
     * ({@code round_rows_bf16}). The block starts at C_g's element offset's byte alignment as an F32 C would have it
     * (modulo 256), so that cuBLAS sees the same shapes, strides and alignment and the result is the F32 C's, rounded.
     * The block is released stream-ordered after the last group.
     */
    private void loopBf16C(boolean transA, boolean transB, int[] active, int count, int[] m, int[] n, int[] k,
                           float alpha, Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, int ldb, float beta,
                           Tensor c, int[] cOff, int ldc) {
        long span = 0;
        for (int q = 0; q < count; q++) {
            int g = active[q];
            span = Math.max(span, (long) (m[g] - 1) * ldc + n[g]);
        }
        DeviceBuffer block = memory.allocate(4 * span + 256);
        try {
            for (int q = 0; q < count; q++) {
                int g = active[q];
                long f32 = block.address() + (4L * cOff[g]) % 256;
                long cAt = memory.addrOf(c, DType.BF16, "C", cOff[g], 0);
                long elements = (long) m[g] * n[g];
                if (beta != 0f) {
                    launcher.launch1D(KernelLauncher.GEMM_SCALE, "widen_rows_bf16", elements, cAt, m[g], n[g], ldc,
                            f32);
                }
                cublas.gemmEx(transA, transB, m[g], n[g], k[g], alpha, memory.addr(a, "A", aOff[g], 0), lda,
                        memory.addr(b, "B", bOff[g], 0), ldb, beta, f32, ldc);
                launcher.launch1D(KernelLauncher.GEMM_SCALE, "round_rows_bf16", elements, f32, m[g], n[g], ldc, cAt);
            }
        } finally {
            memory.release(block);
        }
    }

    /**
     * {@link CudaBackend.GroupedMode#KERNEL}: one launch of {@code grouped_gemm_sm90_<ta><tb>} or
     * {@code grouped_gemm_bf16_<ta><tb>} ({@link #effectiveKernel}) per 64 groups (the
     * active ones: m, n > 0; k may be 0), on bf16 operands ({@link GroupedGemmOperands#bf16Operand}: an image read in
     * place, or a copy made by its cast, released stream-ordered after the launch unless kept for the next call; a
     * and b then address them and lda, ldb are their strides). The per-group descriptors travel BY VALUE as the
     * kernel's only parameter, a 3360-byte GBParams struct (under the classic 4 KB kernel-parameter limit, so no
     * device table, upload or stream-ordered allocation is needed, and the launch is the only host cost):
     * cuLaunchKernel copies it from {@link #params} at launch time, so the buffer is reused by the next launch.
     * Layout: int lda, ldb, ldc, groups; float alpha, beta; then arrays of 64: long long a, b, c (device byte
     * addresses of A_g, B_g, C_g); int m, n, k, tileStart (prefix sum of the groups' 128 x tileN tiles, in the
     * launched kernel's tileN; the grid is
     * the total) and flags (bit 0, A_g's address is 16-byte aligned and the caller's lda a multiple of 4; bit 1, the
     * same for B_g: read by no kernel; bit 2, {@link #FLAG_C_BF16}: C_g is bf16, set on every group where C is BF16;
     * ldc counts elements of C's dtype either way). Groups write disjoint C_g in parallel (overlapping C_g would race, where
     * the loop would apply them in order). The kernel takes {@link #sharedBytes} (mma.sync) or {@link #sm90SharedBytes}
     * of dynamic shared memory (raised once per function); groups are passed largest k first. Then long long b2[64]
     * and int bSplit (+ 4 bytes of padding: 3360 bytes): where {@code b2} is given (sm90 only, both B blocks BF16
     * read in place), B_g's stored rows at or past {@code split} are read at b2[g] (0 for a group whose B_g ends at
     * the split); otherwise bSplit is 0 (one block, b2 unread).
     */
    private void kernel(boolean transA, boolean transB, int[] active, int count, int[] m, int[] n, int[] k,
                        float alpha, Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, Tensor b2, int[] b2Off,
                        int split, int ldb, float beta, Tensor c, int[] cOff, int ldc) {
        boolean sm90 = effectiveKernel() == Kernel.SM90;
        if (b2 != null && (!sm90 || transA)) {
            throw new IllegalStateException("a B in two blocks runs on the sm90 kernel without transA only (kernel "
                    + effectiveKernel() + ", transA " + transA + ")");
        }
        String kernel = (sm90 ? "grouped_gemm_sm90_" : "grouped_gemm_bf16_") + (transA ? "t" : "n") + (transB ? "t" : "n");
        String file = sm90 ? KernelLauncher.GROUPED_GEMM_SM90 : KernelLauncher.GROUPED_GEMM;
        int shared = sm90 ? sm90SharedBytes : sharedBytes;
        int tileCols = sm90 ? sm90TileN : tileN;
        int blockThreads = sm90 ? SM90_THREADS : threads;
        CUfunc_st f = launcher.function(file, kernel);
        launcher.raiseSharedOnce(file, kernel, f, shared);
        // Largest k first (stable): a CTA's time grows with k, so the longest tiles start in the first wave and the
        // short ones fill the tail (weight gradients: k is the expert's ragged row count).
        for (int i = 1; i < count; i++) {
            int g = active[i], j = i;
            for (; j > 0 && k[active[j - 1]] < k[g]; j--) {
                active[j] = active[j - 1];
            }
            active[j] = g;
        }
        int[][] dims = GroupedGemmOperands.operandDims(transA, transB, m, n, k);
        long[] aAt = new long[MAX_GROUPS + 1], bAt = new long[MAX_GROUPS + 1], b2At = new long[MAX_GROUPS + 1];
        boolean keep = count <= MAX_GROUPS; // one launch: its copies may serve the next call
        List<GroupedGemmOperands.HeldCast> offered = operands.takeHeld();
        for (int start = 0; start < count; start += MAX_GROUPS) {
            int here = Math.min(MAX_GROUPS, count - start);
            DeviceBuffer a16 = null, b16 = null;
            GroupedGemmOperands.HeldCast aCast = null, bCast = null;
            try {
                GroupedGemmOperands.Bf16Operand ao = operands.bf16Operand(a, "A", aOff, lda, dims[0], dims[1], k,
                        active, start, here, aAt, offered);
                aCast = ao.cast();
                a16 = aCast == null ? null : aCast.copy();
                GroupedGemmOperands.Bf16Operand bo = operands.bf16Operand(b, "B", bOff, ldb, dims[2], dims[3], k,
                        active, start, here, bAt, offered);
                bCast = bo.cast();
                b16 = bCast == null ? null : bCast.copy();
                long b2Base = 0;
                if (b2 != null) {
                    GroupedGemmOperands.Bf16Operand b2o = operands.bf16Operand(b2, "B2", b2Off, ldb, dims[2], dims[3],
                            k, active, start, here, b2At, offered);
                    if (bCast != null || b2o.cast() != null || bo.ld() != ldb || b2o.ld() != ldb) {
                        throw new IllegalStateException("a B in two blocks must be read in place (BF16, ldb " + ldb
                                + "), not cast: check fusesSplitB first");
                    }
                    b2Base = b2o.base();
                }
                params.putInt(OFF_SPLIT, b2 != null ? split : 0);
                params.putInt(OFF_SPLIT + 4, 0);
                long aBase = ao.base(), bBase = bo.base(); // where aAt / bAt count from
                params.putInt(0, ao.ld());
                params.putInt(4, bo.ld());
                params.putInt(8, ldc);
                params.putInt(12, here);
                params.putFloat(16, alpha);
                params.putFloat(20, beta);
                long tiles = 0;
                for (int q = 0; q < here; q++) {
                    int g = active[start + q];
                    boolean readsAB = k[g] > 0; // k == 0: A_g and B_g are never read (and their offsets not checked)
                    long aAddr, bAddr;
                    if (!readsAB) {
                        aAddr = 0;
                        bAddr = 0;
                    } else {
                        aAddr = aBase + 2 * aAt[q];
                        bAddr = bBase + 2 * bAt[q];
                    }
                    int flags = (aAddr % 16 == 0 && lda % 4 == 0 ? 1 : 0) | (bAddr % 16 == 0 && ldb % 4 == 0 ? 2 : 0)
                            | (c.dtype() == DType.BF16 ? FLAG_C_BF16 : 0);
                    params.putLong(OFF_A + 8L * q, aAddr);
                    params.putLong(OFF_B + 8L * q, bAddr);
                    boolean readsB2 = b2 != null && readsAB && (transB ? n[g] : k[g]) > split;
                    params.putLong(OFF_B2 + 8L * q, readsB2 ? b2Base + 2 * b2At[q] : 0);
                    params.putLong(OFF_C + 8L * q, memory.addrOf(c, c.dtype(), "C", cOff[g], 0));
                    params.putInt(OFF_M + 4L * q, m[g]);
                    params.putInt(OFF_N + 4L * q, n[g]);
                    params.putInt(OFF_K + 4L * q, k[g]);
                    params.putInt(OFF_TILE + 4L * q, (int) tiles);
                    params.putInt(OFF_FLAGS + 4L * q, flags);
                    tiles += (long) ((m[g] + TILE_M - 1) / TILE_M) * ((n[g] + tileCols - 1) / tileCols);
                    if (tiles > Integer.MAX_VALUE) {
                        throw new IllegalArgumentException("groupedGemm: more than 2^31 - 1 tiles in one launch");
                    }
                }
                // the sm90 kernel's CTAs are persistent (each runs every grid-th tile); mma.sync's run one tile each
                int grid = sm90 ? (int) Math.min(tiles, (long) device.smCount() * sm90BlocksPerSm(kernel, f, shared))
                        : (int) tiles;
                Cuda.checkDriver(cudart.cuLaunchKernel(f, grid, 1, 1, blockThreads, 1, 1, shared, device.stream(),
                        argPtrs, (PointerPointer<?>) null), "cuLaunchKernel(" + kernel + ", " + here + " groups, "
                        + tiles + " tiles, " + grid + " CTAs" + (b2 != null ? ", B split at " + split : "") + ")");
                if (b2 != null) {
                    splitLaunches++;
                }
                if (keep) {
                    operands.hold(aCast, bCast);
                }
            } finally {
                operands.releaseUnheld(a16, b16);
            }
        }
        operands.releaseUnused(offered);
    }

    private int sm90BlocksPerSm(String kernel, CUfunc_st f, int shared) {
        Integer n = sm90BlocksPerSm.get(kernel);
        if (n == null) {
            int[] blocks = new int[1];
            Cuda.checkDriver(cudart.cuOccupancyMaxActiveBlocksPerMultiprocessor(blocks, f, SM90_THREADS, shared),
                    "cuOccupancyMaxActiveBlocksPerMultiprocessor(" + kernel + ", " + shared + " bytes shared)");
            if (blocks[0] < 1) {
                throw new IllegalStateException(kernel + " fits no CTA on an SM of " + device.name() + " with "
                        + shared + " bytes of dynamic shared memory (fewer stages: -Dsparkmoe.cuda.defines=GS_STAGES=4)");
            }
            n = blocks[0];
            sm90BlocksPerSm.put(kernel, n);
        }
        return n;
    }
}
