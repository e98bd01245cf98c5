package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.cuda.global.cublas;

import java.util.logging.Logger;

/**
 * The CUDA backend: a facade over the parts that each own one concern of running the {@link Backend} SPI on one GPU.
 * Device storage in the tensor's dtype (F32; BF16 and F16 as 16-bit words, read by the ops that {@link #gemmDType}
 * names; I32 as int32, I64 as int64); every
 * copy, kernel and cuBLAS call is queued in order on one non-blocking stream.
 * <ul>
 *   <li>{@link CudaDevice}: the device, its context on the calling thread, the stream, event timing;</li>
 *   <li>{@link CudaMemory}: the caching allocator ({@link CachingAllocator}), device buffers and allocation scopes
 *       ({@link CudaScope}); {@link Transfers}: made, uploaded, downloaded and copied tensors;</li>
 *   <li>{@link KernelLibrary} (NVRTC compile and cache of the {@code .cu} resources of this package) and
 *       {@link KernelLauncher} (launches through the driver API); {@link KernelErrors}: index errors kernels
 *       record;</li>
 *   <li>{@link CublasGemm}: dense GEMMs in the current {@link GemmPrecision}; {@link GroupedGemm} and
 *       {@link GroupedGemmOperands}: the experts' grouped GEMM and its bf16 operands;</li>
 *   <li>{@link Attention} (mode choice, the batched-GEMM path) and {@link FlashAttention};</li>
 *   <li>{@link Elementwise}, {@link NormAndRope}, {@link EmbeddingAndLoss}: the other layers' kernels;
 *       {@link MoeRouting}: routing, grouping by expert, gathers, scatters and the combine; {@link AdamWKernel};</li>
 *   <li>{@link Bf16Images} and {@link Bf16Parts}: bf16 values standing for f32 tensors not written yet (what the
 *       NCCL bf16 wire's all-gathers leave), and the part-wise conversions behind them and that wire.</li>
 * </ul>
 *
 * <p>Matrix products run in the {@link GemmPrecision} set by {@link #setGemmPrecision} ({@code CUBLAS_COMPUTE_32F},
 * exact f32, until the trainer or benchmark sets the run's precision; TF32 and BF16 run on the tensor cores). The
 * grouped GEMM ({@link GroupedMode}) and attention ({@link AttentionMode}) follow it: at
 * {@link GemmPrecision#BF16} the bf16 grouped GEMM kernel and the flash kernels run, at F32 and TF32 (the parity
 * settings) cuBLAS products. The choice is made at every call, so a later {@link #setGemmPrecision} changes it.
 *
 * <p>Errors: every native status is checked ({@link Cuda}). Index errors found by kernels (an embedding id, a
 * cross-entropy target, a gather/scatter index out of range) are recorded in a device error word and thrown as
 * {@link IllegalArgumentException} at the next synchronisation point ({@link #synchronize}, {@link #download},
 * {@link #crossEntropy}, {@link #sumSquares}, {@link #routerStats}) rather than at the call, so that no kernel
 * launch waits for the device. Shapes and offsets are checked on the host before launch.
 *
 * <p>Determinism: every kernel sums in a fixed order ({@link #embeddingBackward} too: each table row's tokens in token
 * order) except the expert counts of {@link #routerStats} (exact integer counts, so order does not matter).
 *
 * <p>Threads: the backend may be called from any thread but not from two at once (its methods are synchronized, and
 * the parts are used only under its lock); the device is made current for the calling thread when it changes.
 */
public final class CudaBackend implements Backend, AutoCloseable {
    private static final Logger LOG = Logger.getLogger(CudaBackend.class.getName());

    /** Compute type of the f32 matrix products. */
    public enum GemmPrecision {
        /** CUBLAS_COMPUTE_32F: exact f32 (the CPU reference's arithmetic up to summation order). */
        F32(cublas.CUBLAS_COMPUTE_32F),
        /** CUBLAS_COMPUTE_32F_FAST_TF32: tensor cores with tf32 inputs, f32 accumulation (about 3e-4 relative). */
        TF32(cublas.CUBLAS_COMPUTE_32F_FAST_TF32),
        /** CUBLAS_COMPUTE_32F_FAST_16BF: tensor cores with bf16 inputs, f32 accumulation (about 1e-2 relative). */
        BF16(cublas.CUBLAS_COMPUTE_32F_FAST_16BF);

        final int cublasCompute;

        GemmPrecision(int c) {
            this.cublasCompute = c;
        }
    }

    /** How {@link #groupedGemm} runs ({@link #setGroupedMode}; tests force a path with it). */
    public enum GroupedMode {
        /** One {@code cublasGemmEx} per group with the current {@link GemmPrecision}. */
        LOOP,
        /**
         * One launch of the grouped GEMM kernel per 64 groups ({@code grouped_gemm_bf16.cu}, on bf16 operands: BF16
         * tensors and images read in place, anything else cast first): bf16 inputs (rounded to nearest even), f32
         * accumulation and output, whatever the {@link GemmPrecision}; needs sm_80 or newer.
         */
        KERNEL,
        /** {@link #KERNEL} when the precision is {@link GemmPrecision#BF16} on sm_80 or newer, else {@link #LOOP}. */
        AUTO
    }

    /**
     * How {@link #attentionForward} and {@link #attentionBackward} run ({@link #setAttentionMode}; see
     * {@link #effectiveAttentionMode} for what a call actually runs).
     */
    public enum AttentionMode {
        /**
         * The default: {@link #FLASH} when the GEMM precision is {@link GemmPrecision#BF16} (the benchmark setting)
         * and FLASH supports the head dim and device, else {@link #GEMM}. Resolved at every call.
         */
        AUTO,
        /** Chunked strided-batched cuBLAS products with the current {@link GemmPrecision} plus row kernels. */
        GEMM,
        /**
         * The flash-attention kernels on the tensor cores ({@code flash_attention.cu}): bf16 operands (inputs rounded
         * when staged), f32 online softmax, lse and accumulators, whatever the GEMM precision. Head dim 64 or 128 on
         * sm_80 or newer; other head dims fall back to {@link #GEMM}.
         */
        FLASH
    }

    /**
     * Which kernels of {@code flash_attention.cu} {@link AttentionMode#FLASH} runs: {@link #V2_W8}, except in tests,
     * which also run {@link #V1} ({@link #setFlashKernels}). Both give the same bits (same products, rounding points
     * and accumulation orders).
     */
    enum FlashKernels {
        /**
         * The first kernels, which {@code gpu-executor/scripts/flash_attention_emulator.py} transliterates lane by
         * lane: f32 inputs rounded to bf16 while staging each tile (synchronous loads). The tests' reference for
         * {@link #V2_W8}.
         */
        V1("", 0, 0),
        /**
         * bf16 copies of q, k, v (and dO with Di, in the backward) made once per call, tiles staged by cp.async in a
         * ring of 3, B operands by ldmatrix, 8-warp backward CTAs (128 query rows per dq CTA, 128 key rows per dk/dv
         * CTA).
         */
        V2_W8("w8", 3, 8);

        final String backwardSuffix;
        final int stages;
        final int backwardWarps;

        FlashKernels(String backwardSuffix, int stages, int backwardWarps) {
            this.backwardSuffix = backwardSuffix;
            this.stages = stages;
            this.backwardWarps = backwardWarps;
        }
    }

    /** Default bound of the transient score buffers of {@link AttentionMode#GEMM} attention (bytes per call). */
    public static final long DEFAULT_ATTENTION_CHUNK_BYTES = 512L << 20;

    private final CudaDevice device;
    private final KernelLauncher launcher;
    private final CudaMemory memory;
    private final KernelErrors errors;
    private final Transfers transfers;
    private final CublasGemm dense;
    private final Bf16Parts parts;
    private final Bf16Images images;
    private final GroupedGemmOperands operands;
    private final GroupedGemm grouped;
    private final FlashAttention flash;
    private final Attention attention;
    private final Elementwise elementwise;
    private final NormAndRope normAndRope;
    private final EmbeddingAndLoss embeddingAndLoss;
    private final MoeRouting routing;
    private final AdamWKernel adamw;
    private boolean closed;

    /** A backend on device 0. */
    public CudaBackend() {
        this(0);
    }

    public CudaBackend(int device) {
        this.device = new CudaDevice(device);
        GroupedGemm.Tiles tiles = GroupedGemm.Tiles.fromDefines();
        KernelLibrary kernels = new KernelLibrary(this.device.smMajor(), this.device.smMinor());
        this.device.createStream();
        this.launcher = new KernelLauncher(kernels, this.device);
        this.memory = new CudaMemory(this, this.device.name());
        this.dense = new CublasGemm(this.device, memory, launcher);
        this.parts = new Bf16Parts(launcher);
        this.images = new Bf16Images(this.device, memory, parts);
        memory.attach(images);
        this.operands = new GroupedGemmOperands(tiles, this.device, memory, launcher, images);
        this.grouped = new GroupedGemm(tiles, this.device, memory, launcher, dense, operands);
        this.errors = new KernelErrors(this.device, memory);
        this.transfers = new Transfers(this.device, memory, errors);
        this.flash = new FlashAttention(this.device, memory, launcher);
        this.elementwise = new Elementwise(this.device, memory, launcher, errors, transfers);
        this.attention = new Attention(this.device, memory, launcher, dense, flash, elementwise);
        this.normAndRope = new NormAndRope(this.device, memory, launcher, elementwise);
        this.embeddingAndLoss = new EmbeddingAndLoss(this.device, memory, launcher, errors);
        this.routing = new MoeRouting(this.device, memory, launcher, errors, elementwise);
        this.adamw = new AdamWKernel(this.device, memory, launcher, errors);
        LOG.info(String.format("CUDA backend %s: %s, %s, %d SMs, gemm %s, grouped gemm %s (now %s, kernel %s), "
                        + "attention %s (score chunk %d MiB)", name(), deviceName(), arch(), this.device.smCount(),
                dense.precision(), grouped.mode(), effectiveGroupedMode(), grouped.effectiveKernel(), attention.mode(),
                attention.chunkBytes() >> 20));
    }

    @Override
    public String name() {
        return device.name();
    }

    /** The device's name as the driver reports it ("NVIDIA H100 80GB HBM3"). */
    public String deviceName() {
        return device.deviceName();
    }

    /** "sm_90" and the like. */
    public String arch() {
        return launcher.arch();
    }

    /** The CUDA device ordinal this backend runs on. */
    public int device() {
        return device.ordinal();
    }

    /** The stream every operation is queued on (for NCCL and other libraries that must share it). */
    public CUstream_st stream() {
        return device.stream();
    }

    // ------------------------------------------------------------------ settings

    public synchronized void setGemmPrecision(GemmPrecision p) {
        LOG.info(name() + ": gemm precision " + dense.precision() + " -> " + p);
        dense.setPrecision(p);
    }

    public synchronized GemmPrecision gemmPrecision() {
        return dense.precision();
    }

    /** {@link GroupedMode#AUTO} (the default) follows the {@link GemmPrecision}; the others force a path. */
    public synchronized void setGroupedMode(GroupedMode m) {
        grouped.setMode(m);
    }

    /** The mode as set (possibly {@link GroupedMode#AUTO}); {@link #effectiveGroupedMode} says what runs. */
    public synchronized GroupedMode groupedMode() {
        return grouped.mode();
    }

    /** The path {@link #groupedGemm} takes now: never {@link GroupedMode#AUTO}. */
    public synchronized GroupedMode effectiveGroupedMode() {
        return grouped.effectiveMode();
    }

    /** Whether {@link GroupedMode#KERNEL} can run here: bf16 tensor cores (sm_80+) and the kernel's shared memory. */
    synchronized boolean groupedKernelSupported() {
        return grouped.kernelSupported();
    }

    /** Test and benchmark hook: which kernel {@link GroupedMode#KERNEL} launches (default AUTO: sm90 on sm_90). */
    synchronized void setGroupedKernel(GroupedGemm.Kernel k) {
        grouped.setKernelChoice(k);
    }

    /** The kernel {@link GroupedMode#KERNEL} launches now (never AUTO). */
    synchronized GroupedGemm.Kernel effectiveGroupedKernel() {
        return grouped.effectiveKernel();
    }

    /** Whether the sm90 (wgmma) grouped kernel runs here: compute capability 9.0 with its shared memory. */
    synchronized boolean groupedSm90Supported() {
        return grouped.sm90Supported();
    }

    public synchronized void setAttentionMode(AttentionMode m) {
        if (m != attention.mode()) {
            LOG.info(name() + ": attention " + attention.mode() + " -> " + m);
        }
        attention.setMode(m);
    }

    /** The configured mode ({@link AttentionMode#AUTO} unless set); {@link #effectiveAttentionMode} says what runs. */
    public synchronized AttentionMode attentionMode() {
        return attention.mode();
    }

    /**
     * The mode an attention call with this head dim runs now: {@link AttentionMode#GEMM} or
     * {@link AttentionMode#FLASH} ({@link AttentionMode#AUTO} resolved against the current {@link GemmPrecision};
     * FLASH falls back to GEMM where it does not support the head dim or device).
     */
    public synchronized AttentionMode effectiveAttentionMode(int headDim) {
        return attention.effectiveMode(headDim);
    }

    /**
     * Bound, in bytes, of the transient T x T score buffers of {@link AttentionMode#GEMM} attention (at least one
     * head's worth is always used).
     */
    public synchronized void setAttentionChunkBytes(long bytes) {
        attention.setChunkBytes(bytes);
    }

    public synchronized long attentionChunkBytes() {
        return attention.chunkBytes();
    }

    /** Test hook: the kernels {@link AttentionMode#FLASH} runs. */
    synchronized void setFlashKernels(FlashKernels k) {
        flash.setKernels(k);
    }

    /** The kernels {@link AttentionMode#FLASH} runs ({@link FlashKernels#V2_W8} unless a test set another). */
    synchronized FlashKernels flashKernels() {
        return flash.kernels();
    }

    /**
     * Timing hook: which stages of a FLASH backward run, as bits (1: the bf16 copies and Di, 2: dk/dv, 4: dq); 7
     * (all) unless a timing run changes it. Any other value leaves outputs unwritten.
     */
    synchronized void setFlashBackwardStages(int bits) {
        flash.setBackwardStages(bits);
    }

    // ------------------------------------------------------------------ memory, timing, lifetime

    /** Allocator statistics (bytes counted in allocator blocks). */
    public synchronized MemoryStats memoryStats() {
        return memory.stats();
    }

    /** Peak bytes in use restarts from the current bytes in use. */
    public synchronized void resetPeakMemory() {
        memory.resetPeak();
    }

    /** Gives every cached (free) block back to the device. */
    public synchronized void emptyCache() {
        current();
        memory.emptyCache();
    }

    /** Whether {@code t} is a live device tensor of this backend. */
    public boolean owns(Tensor t) {
        return memory.owns(t);
    }

    /** The device address of element {@code offset} of a tensor of this backend. */
    public long address(Tensor t, long offset) {
        DeviceBuffer b = memory.buf(t, "tensor");
        return b.address() + offset * CudaMemory.elementBytes(t.dtype());
    }

    /**
     * Milliseconds of device time taken by the work {@code body} queues, measured with CUDA events on the stream
     * (waits for it).
     */
    public synchronized float timeMillis(Runnable body) {
        current();
        return device.timeMillis(body);
    }

    /** Scopes in use (innermost first), for diagnostics. */
    public synchronized int openScopes() {
        return memory.openScopes();
    }

    /** {@link CudaScope#close()}: releases the scope's live buffers (and any kept operand copies). */
    synchronized void closeScope(CudaScope s) {
        if (!s.open) {
            return;
        }
        memory.checkInnermost(s);
        operands.dropHeldCasts(); // kept operand copies may belong to this scope
        memory.close(s);
    }

    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        current();
        operands.dropHeldCasts();
        device.synchronizeStream();
        closed = true;
        dense.destroy();
        device.destroyStream();
        memory.emptyCache();
    }

    /**
     * Every call starts here: refuses a closed backend, counts the call (kept grouped GEMM operand copies live only
     * until the next call) and makes the device current for the calling thread.
     */
    private void current() {
        if (closed) {
            throw new IllegalStateException("backend " + name() + " is closed");
        }
        operands.onBackendCall();
        device.enterThread();
    }

    // ------------------------------------------------------------------ bf16 images

    /**
     * Takes bf16 values that stand for f32 values not yet written: for each part i, the {@code n[i]} bf16 values at
     * device address {@code src[i]}, inside {@code scratch} (a buffer of this backend that holds nothing else
     * alive), are the round-to-nearest-even images of elements {@code [off[i], off[i] + n[i])} of the f32 tensor
     * {@code target[i]}, whose memory there holds nothing yet. From here on the scratch belongs to this backend: it
     * is released (stream-ordered) when the last image in it is written out or its target released. Reading or
     * writing a target's f32 values through any backend call or {@link DeviceMemory#address()} first widens its
     * images into place on this backend's stream (exactly: bf16 widens to f32 without rounding), so each reader
     * sees what an eager widening would have written; a grouped GEMM on bf16 operands reads an image directly. The
     * values must be complete on this backend's stream before the call (an all-gather's consumer waits for it
     * first). A part whose target already holds images over the same range has them written out first. A target
     * whose every element is then held by images gives its f32 block back to the allocator until they are widened
     * (FSDP's gathered weights: 2 bytes an element alive instead of 6); it gets a new block when they are.
     */
    public synchronized void adoptBf16Images(Tensor[] target, long[] off, long[] src, long[] n, Tensor scratch) {
        current();
        images.adopt(target, off, src, n, scratch);
    }

    /** Widens the images of {@code b} into place ({@link DeviceBuffer#address()} calls it before an f32 use). */
    synchronized void materialize(DeviceBuffer b) {
        images.materialize(b);
    }

    /** Images adopted, images widened, grouped GEMM operands read from images, so far (tests). */
    synchronized long[] imageCounts() {
        return images.counts();
    }

    /**
     * Rounds {@code n[i]} f32 values at device address {@code src[i]} to bf16 (nearest even) at {@code dst[i]} (2 bytes
     * each) for every part i, enqueued on {@code on}, a stream of this device: a communicator's, for its bf16 wire
     * ({@link Bf16Parts}: one launch per 64 parts). Ordering against this backend's stream is the caller's (the
     * communicator's stream waits for the compute stream before a collective).
     */
    public synchronized void roundToBf16(long[] src, long[] dst, long[] n, CUstream_st on) {
        current();
        parts.round(src, dst, n, on);
    }

    /** Widens {@code n[i]} bf16 values at {@code src[i]} to f32 at {@code dst[i]} (exactly), as {@link #roundToBf16}
     *  rounds. */
    public synchronized void widenBf16(long[] src, long[] dst, long[] n, CUstream_st on) {
        current();
        parts.widen(src, dst, n, on);
    }

    // ------------------------------------------------------------------ Backend: memory

    @Override
    public synchronized Tensor zeros(DType dtype, int... shape) {
        current();
        return transfers.zeros(dtype, shape);
    }

    /**
     * Without the zero fill. With {@code -Dsparkmoe.cuda.poison=true} (the GPU tests set it) the memory is filled
     * with NaN (f32) or -1 (integers) instead, so that a caller that reads before writing fails loudly.
     */
    @Override
    public synchronized Tensor empty(DType dtype, int... shape) {
        current();
        return transfers.empty(dtype, shape);
    }

    /**
     * A {@link DType#BF16} tensor at {@link GemmPrecision#BF16} with the grouped GEMM kernel (the benchmark setting),
     * whose bf16 operands it reads in place (2 bytes an element); else F32 ({@link #empty}). The ops that write the
     * experts' operands ({@link #gatherRows}, {@link #siluMulForward}, {@link #siluMulBackward},
     * {@link #moeCombineBackward}'s dRows) round each value to bf16 (nearest even) into a BF16 output.
     */
    @Override
    public synchronized Tensor emptyGemmOperand(int... shape) {
        boolean bf16 = dense.precision() == GemmPrecision.BF16 && grouped.effectiveMode() == GroupedMode.KERNEL
                && grouped.kernelSupported();
        return empty(bf16 ? DType.BF16 : DType.F32, shape);
    }

    @Override
    public synchronized Tensor upload(Tensor host) {
        Transfers.requireHost(host);
        current();
        return transfers.upload(host);
    }

    @Override
    public synchronized Tensor download(Tensor t) {
        current();
        return transfers.download(t);
    }

    @Override
    public synchronized void copy(Tensor src, int srcOff, Tensor dst, int dstOff, int n) {
        Transfers.sameDtype("copy", src, dst);
        current();
        transfers.copy(src, srcOff, dst, dstOff, n);
    }

    @Override
    public synchronized void copyRows(Tensor src, int srcOff, int srcStride, Tensor dst, int dstOff, int dstStride,
                                      int rows, int rowLen) {
        Transfers.sameDtype("copyRows", src, dst);
        current();
        transfers.copyRows(src, srcOff, srcStride, dst, dstOff, dstStride, rows, rowLen);
    }

    /**
     * {@link DType#BF16} at {@link GemmPrecision#BF16} (whose GEMMs round F32 operands to bf16 as they read them), else
     * F32. BF16 device tensors are real: 2 bytes an element ({@link #upload} rounds, {@link #download} widens). The
     * ops that take them: {@link #gemm} (A and B both BF16, C F32: bf16 storage, f32 accumulation),
     * {@link #groupedGemm} (operands and C), {@link #convert}, {@link #copy}, {@link #copyRows},
     * {@link #crossEntropy}'s gradient, the grouped GEMM operands ({@link #emptyGemmOperand}) that
     * {@link #gatherRows}, {@link #siluMulForward}, {@link #siluMulBackward} and {@link #moeCombineBackward} write
     * (rounded as written), {@link #rmsNormForward}'s and the norms with rope's outputs, {@link #gatherRows}' source
     * and attention's q, k and v ({@link #attentionInputDType}); any other op refuses one by name.
     */
    @Override
    public synchronized DType gemmDType() {
        return dense.precision() == GemmPrecision.BF16 ? DType.BF16 : DType.F32;
    }

    @Override
    public synchronized void convert(Tensor src, Tensor dst) {
        current();
        elementwise.convert(src, dst);
    }

    @Override
    public synchronized void fill(Tensor t, float value) {
        current();
        elementwise.fill(t, value);
    }

    @Override
    public synchronized void release(Tensor t) {
        current();
        DeviceBuffer b = memory.buf(t, "release");
        memory.release(b);
    }

    @Override
    public synchronized Scope openScope() {
        current();
        return memory.openScope();
    }

    @Override
    public synchronized void synchronize() {
        current();
        errors.syncAndCheck();
    }

    // ------------------------------------------------------------------ Backend: algebra

    @Override
    public synchronized void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, Tensor a, int aOff,
                                  int lda, Tensor b, int bOff, int ldb, float beta, Tensor c, int cOff, int ldc) {
        current();
        dense.gemm(transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
    }

    @Override
    public synchronized void groupedGemm(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k,
                                         float alpha, Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, int ldb,
                                         float beta, Tensor c, int[] cOff, int ldc) {
        current();
        boolean[] asIs = grouped.takesAsIs(transA, transB, m, n, k, a, aOff, lda, b, bOff, ldb);
        Tensor aIn = asIs[0] ? a : elementwise.widened(a);
        Tensor bIn = asIs[1] ? b : elementwise.widened(b);
        try {
            grouped.groupedGemm(transA, transB, groups, m, n, k, alpha, aIn, aOff, lda, bIn, bOff, ldb, beta, c, cOff,
                    ldc);
        } finally { // stream-ordered: a later user of the block queues behind the GEMM that reads it
            if (aIn != a) {
                release(aIn);
            }
            if (bIn != b) {
                release(bIn);
            }
        }
    }

    /**
     * One launch of the sm90 kernel with B in two blocks where {@link GroupedGemm#fusesSplitB} (BF16 blocks read in
     * place, KERNEL mode on compute capability 9.0; A as {@link #groupedGemm} takes it), else the two grouped GEMMs of
     * {@link Backend#groupedGemmSplitB}'s default; a split of 0 is one grouped GEMM on the second block.
     */
    @Override
    public synchronized void groupedGemmSplitB(boolean transB, int groups, int[] m, int[] n, int[] k, float alpha,
                                               Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, Tensor b2,
                                               int[] b2Off, int ldb, int split, float beta, Tensor c, int[] cOff,
                                               int ldc) {
        current();
        if (split == 0) {
            groupedGemm(false, transB, groups, m, n, k, alpha, a, aOff, lda, b2, b2Off, ldb, beta, c, cOff, ldc);
        } else if (!grouped.fusesSplitB(transB, m, n, k, lda, b, bOff, b2, b2Off, ldb, split)) {
            Backend.super.groupedGemmSplitB(transB, groups, m, n, k, alpha, a, aOff, lda, b, bOff, b2, b2Off, ldb,
                    split, beta, c, cOff, ldc);
        } else {
            Tensor aIn = grouped.takesAsIs(false, transB, m, n, k, a, aOff, lda, b, bOff, ldb)[0] ? a
                    : elementwise.widened(a);
            try {
                grouped.groupedGemmSplitB(transB, groups, m, n, k, alpha, aIn, aOff, lda, b, bOff, b2, b2Off, ldb,
                        split, beta, c, cOff, ldc);
            } finally {
                if (aIn != a) {
                    release(aIn);
                }
            }
        }
    }

    /** Launches of the grouped GEMM kernel with B in two blocks so far (tests). */
    synchronized long groupedSplitLaunches() {
        return grouped.splitLaunches();
    }

    /** Number of kept grouped GEMM operand copies (tests). */
    synchronized int heldOperandCopies() {
        return operands.heldOperandCopies();
    }

    /** BF16 grouped GEMM operands read in place so far (tests). */
    synchronized long groupedBf16InPlace() {
        return operands.bf16InPlace();
    }

    /** Operand blocks converted to bf16 so far (grouped_cast_bf16 launches; tests). */
    synchronized long operandCasts() {
        return operands.operandCasts();
    }

    /**
     * Timing hook: only the bf16 operand casts that {@link GroupedMode#KERNEL} runs before its kernels (same
     * grouping: m, n, k > 0, largest k first, 64 groups a launch), the scratch released at once.
     */
    synchronized void groupedOperandCastOnly(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k,
                                             Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, int ldb) {
        current();
        operands.castOnly(transA, transB, groups, m, n, k, a, aOff, lda, b, bOff, ldb);
    }

    @Override
    public synchronized void axpy(float alpha, Tensor x, int xOff, Tensor y, int yOff, int n) {
        current();
        elementwise.axpy(alpha, x, xOff, y, yOff, n);
    }

    @Override
    public synchronized void scale(Tensor x, float alpha) {
        current();
        elementwise.scale(x, alpha);
    }

    @Override
    public synchronized double sumSquares(Tensor x) {
        return sumSquares(java.util.List.of(x))[0];
    }

    @Override
    public synchronized double[] sumSquares(java.util.List<Tensor> xs) {
        current();
        return elementwise.sumSquares(xs);
    }

    // ------------------------------------------------------------------ Backend: transformer layers

    @Override
    public synchronized void rmsNormForward(Tensor x, Tensor w, float eps, int rows, int dim, Tensor y, Tensor rstd) {
        current();
        normAndRope.rmsNormForward(x, null, w, eps, rows, dim, y, rstd);
    }

    @Override
    public synchronized void residualRmsNormForward(Tensor x, Tensor residual, Tensor w, float eps, int rows, int dim,
                                                    Tensor y, Tensor rstd) {
        current();
        normAndRope.rmsNormForward(x, residual, w, eps, rows, dim, y, rstd);
    }

    @Override
    public synchronized void rmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim, Tensor dx,
                                             Tensor dw) {
        current();
        normAndRope.rmsNormBackward(dy, x, w, rstd, rows, dim, null, dx, dw);
    }

    @Override
    public synchronized void rmsNormBackwardResidual(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim,
                                                     Tensor residualGrad, Tensor dx, Tensor dw) {
        current();
        normAndRope.rmsNormBackward(dy, x, w, rstd, rows, dim, residualGrad, dx, dw);
    }

    @Override
    public synchronized void rmsNormRopeForward(Tensor x, Tensor w, float eps, int tokens, int heads, int headDim,
                                                int seqLen, float theta, Tensor y, Tensor rstd) {
        current();
        normAndRope.rmsNormRopeForward(x, w, eps, tokens, heads, headDim, seqLen, theta, y, rstd);
    }

    @Override
    public synchronized void rmsNormRopeBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int tokens, int heads,
                                                 int headDim, int seqLen, float theta, Tensor dx, Tensor dw) {
        current();
        normAndRope.rmsNormRopeBackward(dy, x, w, rstd, tokens, heads, headDim, seqLen, theta, dx, dw);
    }

    /** BF16 where the flash kernels run at this head dim (they multiply bf16 copies of q, k and v), else F32. */
    @Override
    public synchronized DType attentionInputDType(int headDim) {
        return attention.inputDType(headDim);
    }

    @Override
    public synchronized void rope(Tensor x, int tokens, int heads, int headDim, int seqLen, float theta,
                                  boolean inverse) {
        current();
        normAndRope.rope(x, tokens, heads, headDim, seqLen, theta, inverse);
    }

    /** Causal GQA attention; {@link #effectiveAttentionMode} picks the kernels at each call ({@link Attention}). */
    @Override
    public synchronized void attentionForward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads,
                                              int kvHeads, int headDim, float scale, Tensor out, Tensor lse) {
        current();
        attention.forward(q, k, v, batch, seqLen, qHeads, kvHeads, headDim, scale, out, lse);
    }

    /**
     * Backward of {@link #attentionForward} (mode chosen the same way; lse from any mode serves any other). dq, dk
     * and dv are written, not accumulated.
     */
    @Override
    public synchronized void attentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                                               int batch, int seqLen, int qHeads, int kvHeads, int headDim,
                                               float scale, Tensor dq, Tensor dk, Tensor dv) {
        current();
        attention.backward(dOut, q, k, v, out, lse, batch, seqLen, qHeads, kvHeads, headDim, scale, dq, dk, dv);
    }

    @Override
    public synchronized void siluMulForward(Tensor gate, int gateOff, Tensor up, int upOff, int rows, int cols,
                                            int ld, Tensor out) {
        current();
        elementwise.siluMulForward(gate, gateOff, up, upOff, rows, cols, ld, out);
    }

    @Override
    public synchronized void siluMulBackward(Tensor dOut, Tensor gate, int gateOff, Tensor up, int upOff, int rows,
                                             int cols, int ld, Tensor dGate, Tensor dUp) {
        current();
        elementwise.siluMulBackward(dOut, gate, gateOff, up, upOff, rows, cols, ld, dGate, dUp);
    }

    @Override
    public synchronized void embeddingForward(Tensor table, Tensor ids, int tokens, int hidden, Tensor out) {
        current();
        embeddingAndLoss.embeddingForward(table, ids, tokens, hidden, out);
    }

    @Override
    public synchronized void embeddingBackward(Tensor dOut, Tensor ids, int tokens, int hidden, Tensor dTable) {
        current();
        embeddingAndLoss.embeddingBackward(dOut, ids, tokens, hidden, dTable);
    }

    @Override
    public synchronized double crossEntropy(Tensor logits, Tensor targets, int rows, int vocab, float gradScale,
                                            Tensor dLogits) {
        current();
        return embeddingAndLoss.crossEntropy(logits, targets, rows, vocab, gradScale, dLogits);
    }

    // ------------------------------------------------------------------ Backend: mixture of experts

    @Override
    public synchronized void softmaxRows(Tensor x, int rows, int cols, Tensor out) {
        current();
        routing.softmaxRows(x, rows, cols, out);
    }

    @Override
    public synchronized void routerTopK(Tensor probs, int rows, int experts, int k, boolean normalize, Tensor topIdx,
                                        Tensor topVal, Tensor weights) {
        current();
        routing.routerTopK(probs, rows, experts, k, normalize, topIdx, topVal, weights);
    }

    /** On the device, only the E counts coming back to the host ({@link MoeRouting#groupByExpert}). */
    @Override
    public synchronized int[] groupByExpert(Tensor expertOfSlot, int n, int experts, Tensor slotOfRow) {
        current();
        return routing.groupByExpert(expertOfSlot, n, experts, slotOfRow);
    }

    @Override
    public synchronized void routerStats(Tensor topIdx, Tensor probs, int rows, int experts, int k, double[] stats) {
        current();
        routing.routerStats(topIdx, probs, rows, experts, k, stats);
    }

    @Override
    public synchronized void routerBackward(Tensor dWeights, Tensor topIdx, Tensor topVal, Tensor probs,
                                            Tensor auxGrad, int rows, int experts, int k, boolean normalize,
                                            Tensor dLogits) {
        current();
        routing.routerBackward(dWeights, topIdx, topVal, probs, auxGrad, rows, experts, k, normalize, dLogits);
    }

    @Override
    public synchronized void gatherRows(Tensor src, Tensor index, int n, int width, int divisor, Tensor dst) {
        current();
        routing.gatherRows(src, index, n, width, divisor, dst);
    }

    @Override
    public synchronized void scatterRows(Tensor src, Tensor index, int n, int width, Tensor dst) {
        current();
        routing.scatterRows(src, index, n, width, dst);
    }

    @Override
    public synchronized void invertIndex(Tensor index, int n, Tensor inverse) {
        current();
        routing.invertIndex(index, n, inverse);
    }

    @Override
    public synchronized void moeCombine(Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens, int k, int width,
                                        Tensor y) {
        current();
        routing.moeCombine(rows, rowOfSlot, weights, tokens, k, width, y);
    }

    @Override
    public synchronized void moeCombineBackward(Tensor dy, Tensor rows, Tensor rowOfSlot, Tensor weights, int tokens,
                                                int k, int width, Tensor dRows, Tensor dWeights) {
        current();
        routing.moeCombineBackward(dy, rows, rowOfSlot, weights, tokens, k, width, dRows, dWeights);
    }

    @Override
    public synchronized void sumSlots(Tensor src, Tensor rowOfSlot, int tokens, int k, int width, Tensor dst) {
        current();
        routing.sumSlots(src, rowOfSlot, tokens, k, width, dst);
    }

    // ------------------------------------------------------------------ Backend: optimizer

    /** The step of {@link #adamwStep} on one whole tensor without clipping (F32 or BF16 gradient). */
    @Override
    public synchronized void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, int n, float lr, float beta1,
                                   float beta2, float eps, float weightDecay, long step) {
        if (n != param.numel()) {
            throw new IllegalArgumentException("adamw on the GPU updates whole tensors: n = " + n + " for " + param);
        }
        adamwStep(java.util.List.of(new AdamWSlot(param, grad, m, v, null)), lr, beta1, beta2, eps, weightDecay,
                step, 1f, null);
    }

    /**
     * One pass per slot ({@link AdamWKernel}): the clipping coefficient, the BF16 compute copy and the sums of squares
     * in the step's kernel, for F32 and BF16 gradients; a compute copy of another dtype is converted after it.
     */
    @Override
    public synchronized void adamwStep(java.util.List<AdamWSlot> slots, float lr, float beta1, float beta2,
                                       float eps, float weightDecay, long step, float gradScale, double[] squares) {
        for (AdamWSlot s : slots) {
            if (s.compute() != null && s.compute().dtype() != DType.BF16) {
                Backend.super.adamwStep(slots, lr, beta1, beta2, eps, weightDecay, step, gradScale, squares);
                return;
            }
        }
        current();
        adamw.step(slots, lr, beta1, beta2, eps, weightDecay, step, gradScale, squares);
    }

    @Override
    public String toString() {
        return "CudaBackend(" + name() + ", " + deviceName() + ", " + arch() + ")";
    }
}
