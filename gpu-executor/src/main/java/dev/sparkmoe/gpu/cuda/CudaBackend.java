package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.backend.Backend;
import dev.sparkmoe.core.optim.AdamW;
import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.cublas.cublasContext;
import org.bytedeco.cuda.cudart.CUevent_st;
import org.bytedeco.cuda.cudart.CUfunc_st;
import org.bytedeco.cuda.cudart.CUstream_st;
import org.bytedeco.cuda.cudart.cudaDeviceProp;
import org.bytedeco.cuda.global.cublas;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.DoublePointer;
import org.bytedeco.javacpp.FloatPointer;
import org.bytedeco.javacpp.IntPointer;
import org.bytedeco.javacpp.LongPointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerPointer;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.logging.Logger;

/**
 * The CUDA backend: f32 device storage (BF16/F16 tensors are kept as f32 values, as on the host; I32 as int32, I64
 * as int64), a caching allocator ({@link CachingAllocator}) with allocation scopes, one non-blocking CUDA stream on
 * which every copy, kernel and cuBLAS call is queued in order, NVRTC-compiled kernels ({@code kernels.cu},
 * {@code attention.cu} in this package) launched through the driver API, and cuBLAS for the matrix products.
 *
 * <p>Matrix products: row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T by
 * {@code cublasGemmEx} with f32 storage and the compute type of {@link GemmPrecision} ({@link #setGemmPrecision}:
 * {@code CUBLAS_COMPUTE_32F}, exact f32, until the trainer or benchmark sets the run's precision; TF32 and BF16 run on
 * the tensor cores). {@link #groupedGemm} (the experts of a MoE layer) runs, by default ({@link GroupedMode#AUTO}), as
 * ONE launch (per 64 groups) of a bf16 tensor-core grouped GEMM kernel ({@link GroupedMode#KERNEL}) when the precision
 * is {@link GemmPrecision#BF16} (and the device is sm_80 or newer), and otherwise ({@link GroupedMode#LOOP}: F32 and
 * TF32, the exact-parity modes) as one {@code cublasGemmEx} per non-empty group on the stream.
 *
 * <p>{@link GroupedMode#KERNEL} reads bf16 operands: an operand held as a bf16 image is read in place
 * ({@link #adoptBf16Images}: the FSDP bf16 gathers' weights; {@link #emptyGemmOperand}: the experts' inputs,
 * activations and their gradients, written in bf16 by the ops that make them); any other is first rounded (nearest
 * even) by one {@code grouped_cast_bf16} launch per operand into a stream-ordered scratch buffer (groups packed, rows
 * padded to 16 bytes with zeros, so any offset and stride works; 2 bytes per operand element for the duration of the
 * launch). {@code grouped_gemm_bf16.cu} then reads them through a 3-stage cp.async ring (128 x 128 x 64 tiles), with
 * f32 accumulation; beta == 0 never reads C, and k == 0 scales C_g by beta.
 *
 * <p>Attention ({@link AttentionMode}): by default ({@link AttentionMode#AUTO}) the bf16 tensor-core flash-attention
 * kernels ({@link AttentionMode#FLASH}, {@code flash_attention.cu}: no T x T matrix in device memory, bf16 operands,
 * f32 softmax and accumulation) when the GEMM precision is {@link GemmPrecision#BF16}, the head dim is 64 or 128 and
 * the device is sm_80 or newer; otherwise (F32 and TF32, the parity settings, or another head dim) chunked
 * strided-batched cuBLAS products with the current {@link GemmPrecision} and row kernels for the causal softmax and
 * its gradient ({@link AttentionMode#GEMM}). The choice is made at every call, so a later {@link #setGemmPrecision}
 * changes it.
 *
 * <p>Errors: every native status is checked ({@link Cuda}). Index errors found by kernels (an embedding id, a
 * cross-entropy target, a gather/scatter index out of range) are recorded in a device error word and thrown as
 * {@link IllegalArgumentException} at the next synchronisation point ({@link #synchronize}, {@link #download},
 * {@link #crossEntropy}, {@link #sumSquares}, {@link #routerStats}) rather than at the call, so that no kernel
 * launch waits for the device. Shapes and offsets are checked on the host before launch.
 *
 * <p>Determinism: every kernel sums in a fixed order except {@link #embeddingBackward} (atomicAdd into repeated
 * rows) and the expert counts of {@link #routerStats} (exact integer counts, so order does not matter).
 *
 * <p>Threads: the backend may be called from any thread but not from two at once (its methods are synchronized);
 * the device is made current for the calling thread when it changes.
 */
public final class CudaBackend implements Backend, AutoCloseable {
    private static final Logger LOG = Logger.getLogger(CudaBackend.class.getName());
    private static final String K = "kernels.cu";
    private static final String A = "attention.cu";
    private static final String FA = "flash_attention.cu";
    private static final String GB = "grouped_gemm_bf16.cu";
    /** grouped_cast_bf16's GCParams (see grouped_gemm_bf16.cu): srcLd, dstLd, count, pad, src[64], dst[64],
     *  rows[64], cols[64]. */
    private static final long GC_OFF_SRC = 16;
    private static final long GC_OFF_DST = GC_OFF_SRC + 8L * 64;
    private static final long GC_OFF_ROWS = GC_OFF_DST + 8L * 64;
    private static final long GC_OFF_COLS = GC_OFF_ROWS + 4L * 64;
    private static final long GC_PARAMS_BYTES = GC_OFF_COLS + 4L * 64; // 1552
    /** Groups per launch of the grouped GEMM kernel and the byte layout of its GBParams (see grouped_gemm_bf16.cu). */
    private static final int GG_MAX_GROUPS = 64;
    private static final int GG_TILE_M = 128;
    private static final long GG_OFF_A = 24;
    private static final long GG_OFF_B = GG_OFF_A + 8L * GG_MAX_GROUPS;
    private static final long GG_OFF_C = GG_OFF_B + 8L * GG_MAX_GROUPS;
    private static final long GG_OFF_M = GG_OFF_C + 8L * GG_MAX_GROUPS;
    private static final long GG_OFF_N = GG_OFF_M + 4L * GG_MAX_GROUPS;
    private static final long GG_OFF_K = GG_OFF_N + 4L * GG_MAX_GROUPS;
    private static final long GG_OFF_TILE = GG_OFF_K + 4L * GG_MAX_GROUPS;
    private static final long GG_OFF_FLAGS = GG_OFF_TILE + 4L * GG_MAX_GROUPS;
    private static final long GG_PARAMS_BYTES = GG_OFF_FLAGS + 4L * GG_MAX_GROUPS; // 2840, as static_assert'ed there
    private static final int THREADS = 256;
    private static final boolean POISON = Boolean.getBoolean("sparkmoe.cuda.poison");

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
         * One launch of the grouped GEMM kernel per 64 groups ({@code grouped_gemm_bf16.cu}, on bf16 operands: images
         * read in place, anything else cast first): bf16 inputs (rounded to nearest even), f32 accumulation and
         * output, whatever the {@link GemmPrecision}; needs sm_80 or newer.
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

    private final int device;
    private final String name;
    private final String deviceName;
    private final int smCount;
    private final int smMajor;
    /** grouped_gemm_bf16.cu's GB_BN, and its dynamic shared memory (GB_STAGES stages of bf16 A and B tiles; the
     *  default 3 x 36 KB) and whether the device grants it; its block size (64 x GB_WARPS_N) and the cast's
     *  GC_UNROLL. */
    private final int gbTileN;
    private final int gbThreads;
    private final int gcUnroll;
    private final int gbSharedBytes;
    private final boolean gbFits;
    private final CUstream_st stream;
    private final cublasContext cublasHandle;
    private final KernelLibrary kernels;
    private final CachingAllocator allocator = new CachingAllocator();
    private final ArrayDeque<CudaScope> scopes = new ArrayDeque<>();
    private final FloatPointer alphaP = new FloatPointer(1);
    private final FloatPointer betaP = new FloatPointer(1);
    private final BytePointer argBytes = new BytePointer(8 * 32);
    private final PointerPointer<Pointer> argPtrs = new PointerPointer<>(32);
    /** The grouped GEMM kernel's only parameter, a GBParams struct passed by value, and its kernelParams array. */
    private final BytePointer ggParams = new BytePointer(GG_PARAMS_BYTES);
    private final PointerPointer<Pointer> ggArgPtrs = new PointerPointer<>(1);
    private final BytePointer gcParams = new BytePointer(GC_PARAMS_BYTES);
    /**
     * {@link GroupedMode#KERNEL}: the bf16 copies of the last grouped GEMM's operands, kept for the very next
     * backend call only. Where that call is a grouped GEMM that would convert the same f32 blocks (same source
     * addresses, block shapes and stride), it reads the kept copy instead of converting again: {@code Experts} orders
     * its grouped GEMMs so that neighbours share an operand (the routed rows of the gate and up projections, the
     * output gradient of the down projection's input and weight gradients, ...). Any other backend call in between
     * (counted by {@link #ops}, in {@link #current()}), a scope closing or the backend closing drops them, released
     * stream-ordered. Nothing but a backend call can write a tensor's memory in between (collectives write only
     * buffers the caller made or chose with backend calls), so a kept copy is still exact when it is reused.
     */
    private final List<HeldCast> heldCasts = new ArrayList<>(2);
    private long heldAt; // the backend call that made or last used the kept copies
    private long ops; // backend calls so far
    private long operandCasts; // grouped_cast_bf16 launches so far

    /** An operand copy and what it converted ({@link #castKey}). */
    private record HeldCast(DeviceBuffer copy, long[] key) {
    }
    private final PointerPointer<Pointer> gcArgPtrs = new PointerPointer<>(1);
    private final DeviceBuffer errorWord;
    private final Map<String, DeviceBuffer> ropeFreqs = new HashMap<>();
    /** rope's cos and sin tables (seqLen x headDim / 2 each, one buffer) by theta / headDim / seqLen. */
    private final Map<String, DeviceBuffer> ropeTables = new HashMap<>();
    /** The largest rope table, in (position, i) cells: 16 MiB of cos and sin. */
    private static final long ROPE_TABLE_MAX = 1L << 21;
    private final Map<String, Boolean> sharedRaised = new HashMap<>();
    private GemmPrecision gemmPrecision = GemmPrecision.F32;
    private GroupedMode groupedMode = GroupedMode.AUTO;
    private AttentionMode attentionMode = AttentionMode.AUTO;
    private FlashKernels flashKernels = FlashKernels.V2_W8;
    /**
     * Timing hook for the tests (package-private): which stages of a FLASH backward run, as bits (1: the bf16 copies
     * and Di, 2: dk/dv, 4: dq); 7 (all) unless a timing test changes it. Any other value leaves outputs unwritten.
     */
    int flashBackwardStages = 7;
    private long attentionChunkBytes = DEFAULT_ATTENTION_CHUNK_BYTES;
    private long nextBufferId;
    private long nextScopeId;
    private Thread lastThread;
    private boolean closed;

    /** A backend on device 0. */
    public CudaBackend() {
        this(0);
    }

    public CudaBackend(int device) {
        if (!Cuda.available()) {
            throw new IllegalStateException("CUDA is not available: " + Cuda.unavailableReason()
                    + " (run with -Dorg.bytedeco.javacpp.pathsFirst=true and LD_LIBRARY_PATH naming the CUDA 13 libraries)");
        }
        this.device = device;
        this.name = "cuda:" + device;
        Cuda.check(cudart.cudaSetDevice(device), "cudaSetDevice(" + device + ")");
        Cuda.check(cudart.cudaFree(null), "cudaFree(null) (context creation)");
        Cuda.checkDriver(cudart.cuInit(0), "cuInit(0)");
        lastThread = Thread.currentThread();
        cudaDeviceProp props = new cudaDeviceProp();
        Cuda.check(cudart.cudaGetDeviceProperties(props, device), "cudaGetDeviceProperties(" + device + ")");
        this.deviceName = props.name().getString();
        this.smCount = props.multiProcessorCount();
        this.smMajor = props.major();
        int pad = 8;
        this.gbTileN = KernelLibrary.defineValue("GB_BN", 128);
        this.gbThreads = 64 * KernelLibrary.defineValue("GB_WARPS_N", 4);
        this.gcUnroll = Math.max(1, KernelLibrary.defineValue("GC_UNROLL", 4));
        int gbBk = KernelLibrary.defineValue("GB_BK", 64);
        this.gbSharedBytes = KernelLibrary.defineValue("GB_STAGES", 3) * 2
                * (Math.max(GG_TILE_M * (gbBk + pad), gbBk * (GG_TILE_M + pad))
                + Math.max(gbTileN * (gbBk + pad), gbBk * (gbTileN + pad)));
        this.gbFits = props.major() >= 8 && props.sharedMemPerBlockOptin() >= gbSharedBytes;
        this.kernels = new KernelLibrary(props.major(), props.minor());
        this.stream = new CUstream_st();
        Cuda.check(cudart.cudaStreamCreateWithFlags(stream, cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        this.cublasHandle = new cublasContext();
        Cuda.checkCublas(cublas.cublasCreate_v2(cublasHandle), "cublasCreate");
        Cuda.checkCublas(cublas.cublasSetStream_v2(cublasHandle, stream), "cublasSetStream");
        Cuda.checkCublas(cublas.cublasSetMathMode(cublasHandle, cublas.CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
        for (int i = 0; i < 32; i++) {
            argPtrs.put(i, RawPointer.of(argBytes.address() + 8L * i, 0));
        }
        ggArgPtrs.put(0, ggParams);
        gcArgPtrs.put(0, gcParams);
        bfpArgPtrs.put(0, bfpParams);
        this.errorWord = allocate(16);
        Cuda.check(cudart.cudaMemsetAsync(ptr(errorWord, 0), 0, 16, stream), "cudaMemsetAsync(error word)");
        LOG.info(String.format("CUDA backend %s: %s, %s, %d SMs, gemm %s, grouped gemm %s (now %s), attention %s "
                        + "(score chunk %d MiB)", name, deviceName, kernels.arch(), smCount, gemmPrecision, groupedMode,
                effectiveGroupedMode(), attentionMode, attentionChunkBytes >> 20));
    }

    @Override
    public String name() {
        return name;
    }

    /** The device's name as the driver reports it ("NVIDIA H100 80GB HBM3"). */
    public String deviceName() {
        return deviceName;
    }

    /** "sm_90" and the like. */
    public String arch() {
        return kernels.arch();
    }

    public synchronized void setGemmPrecision(GemmPrecision p) {
        LOG.info(name + ": gemm precision " + gemmPrecision + " -> " + p);
        this.gemmPrecision = p;
    }

    public synchronized GemmPrecision gemmPrecision() {
        return gemmPrecision;
    }

    /** {@link GroupedMode#AUTO} (the default) follows the {@link GemmPrecision}; the others force a path. */
    public synchronized void setGroupedMode(GroupedMode m) {
        this.groupedMode = java.util.Objects.requireNonNull(m, "grouped mode");
    }

    /** The mode as set (possibly {@link GroupedMode#AUTO}); {@link #effectiveGroupedMode} says what runs. */
    public synchronized GroupedMode groupedMode() {
        return groupedMode;
    }

    /** The path {@link #groupedGemm} takes now: never {@link GroupedMode#AUTO}. */
    public synchronized GroupedMode effectiveGroupedMode() {
        if (groupedMode != GroupedMode.AUTO) {
            return groupedMode;
        }
        return gemmPrecision == GemmPrecision.BF16 && groupedKernelSupported() ? GroupedMode.KERNEL : GroupedMode.LOOP;
    }

    /** Whether {@link GroupedMode#KERNEL} can run here: bf16 tensor cores (sm_80+) and the kernel's shared memory. */
    synchronized boolean groupedKernelSupported() {
        return kernels.smMajor() >= 8 && gbFits;
    }

    public synchronized void setAttentionMode(AttentionMode m) {
        if (m != attentionMode) {
            LOG.info(name + ": attention " + attentionMode + " -> " + m);
        }
        this.attentionMode = m;
    }

    /** Test hook: the kernels {@link AttentionMode#FLASH} runs. */
    synchronized void setFlashKernels(FlashKernels k) {
        this.flashKernels = java.util.Objects.requireNonNull(k, "flash kernels");
    }

    /** The kernels {@link AttentionMode#FLASH} runs ({@link FlashKernels#V2_W8} unless a test set another). */
    synchronized FlashKernels flashKernels() {
        return flashKernels;
    }

    /** The configured mode ({@link AttentionMode#AUTO} unless set); {@link #effectiveAttentionMode} says what runs. */
    public synchronized AttentionMode attentionMode() {
        return attentionMode;
    }

    /**
     * The mode an attention call with this head dim runs now: {@link AttentionMode#GEMM} or
     * {@link AttentionMode#FLASH} ({@link AttentionMode#AUTO} resolved against the current {@link GemmPrecision};
     * FLASH falls back to GEMM where it does not support the head dim or device).
     */
    public synchronized AttentionMode effectiveAttentionMode(int headDim) {
        switch (attentionMode) {
            case GEMM:
                return AttentionMode.GEMM;
            case FLASH:
                return flashSupported(headDim) ? AttentionMode.FLASH : AttentionMode.GEMM;
            default:
                return gemmPrecision == GemmPrecision.BF16 && flashSupported(headDim) ? AttentionMode.FLASH
                        : AttentionMode.GEMM;
        }
    }

    /** Whether the flash kernels are built for this head dim (64, 128) and the device has bf16 mma (sm_80+). */
    private boolean flashSupported(int headDim) {
        return (headDim == 64 || headDim == 128) && smMajor >= 8;
    }

    /**
     * Bound, in bytes, of the transient T x T score buffers of {@link AttentionMode#GEMM} attention (at least one
     * head's worth is always used).
     */
    public synchronized void setAttentionChunkBytes(long bytes) {
        if (bytes <= 0) {
            throw new IllegalArgumentException("attention chunk bytes must be positive, got " + bytes);
        }
        this.attentionChunkBytes = bytes;
    }

    public synchronized long attentionChunkBytes() {
        return attentionChunkBytes;
    }

    /** Allocator statistics (bytes counted in allocator blocks). */
    public synchronized MemoryStats memoryStats() {
        return allocator.stats();
    }

    /** Peak bytes in use restarts from the current bytes in use. */
    public synchronized void resetPeakMemory() {
        allocator.resetPeak();
    }

    /** Gives every cached (free) block back to the device. */
    public synchronized void emptyCache() {
        current();
        allocator.emptyCache();
    }

    /** The stream every operation is queued on (for NCCL and other libraries that must share it). */
    /** The CUDA device ordinal this backend runs on. */
    public int device() {
        return device;
    }

    public CUstream_st stream() {
        return stream;
    }

    /** Whether {@code t} is a live device tensor of this backend. */
    public boolean owns(Tensor t) {
        return t != null && t.deviceHandle() instanceof DeviceBuffer b && b.owner() == this && !b.released;
    }

    /** The device address of element {@code offset} of a tensor of this backend. */
    public long address(Tensor t, long offset) {
        DeviceBuffer b = buf(t, "tensor");
        return b.address() + offset * elementBytes(t.dtype());
    }

    /**
     * Milliseconds of device time taken by the work {@code body} queues, measured with CUDA events on the stream
     * (waits for it).
     */
    public synchronized float timeMillis(Runnable body) {
        current();
        CUevent_st start = new CUevent_st();
        CUevent_st end = new CUevent_st();
        Cuda.check(cudart.cudaEventCreate(start), "cudaEventCreate");
        Cuda.check(cudart.cudaEventCreate(end), "cudaEventCreate");
        try {
            Cuda.check(cudart.cudaEventRecord(start, stream), "cudaEventRecord");
            body.run();
            Cuda.check(cudart.cudaEventRecord(end, stream), "cudaEventRecord");
            Cuda.check(cudart.cudaEventSynchronize(end), "cudaEventSynchronize");
            float[] ms = new float[1];
            Cuda.check(cudart.cudaEventElapsedTime(ms, start, end), "cudaEventElapsedTime");
            return ms[0];
        } finally {
            Cuda.check(cudart.cudaEventDestroy(start), "cudaEventDestroy");
            Cuda.check(cudart.cudaEventDestroy(end), "cudaEventDestroy");
        }
    }

    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        current();
        dropHeldCasts();
        Cuda.check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        closed = true;
        Cuda.checkCublas(cublas.cublasDestroy_v2(cublasHandle), "cublasDestroy");
        Cuda.check(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy");
        allocator.emptyCache();
    }

    // ------------------------------------------------------------------ memory

    private void current() {
        if (closed) {
            throw new IllegalStateException("backend " + name + " is closed");
        }
        ops++;
        if (!heldCasts.isEmpty() && heldAt < ops - 1) {
            dropHeldCasts(); // a call came between: the copies may be stale
        }
        deviceOnThisThread();
    }

    /** Makes this backend's device current for the calling thread when the thread changed. */
    private void deviceOnThisThread() {
        Thread t = Thread.currentThread();
        if (t != lastThread) {
            Cuda.check(cudart.cudaSetDevice(device), "cudaSetDevice(" + device + ")");
            lastThread = t;
        }
    }

    static int elementBytes(DType d) {
        return d == DType.I64 ? 8 : 4;
    }

    private DeviceBuffer allocate(long bytes) {
        long[] block = new long[1];
        long address = allocator.allocate(bytes, block);
        return inScope(new DeviceBuffer(address, bytes, block[0], this, nextBufferId++));
    }

    /** Registers a new buffer with the innermost open scope, if any (closing it releases the buffer). */
    private DeviceBuffer inScope(DeviceBuffer b) {
        CudaScope s = scopes.peek();
        if (s != null) {
            b.scope = s;
            s.buffers.add(b);
        }
        return b;
    }

    private void free(DeviceBuffer b) {
        if (b.released) {
            throw new IllegalStateException("double release of " + b);
        }
        b.released = true; // first: the image bookkeeping below must not free it again
        if (b.imagesIn != null) {
            // a bf16 scratch freed while images still live in it (its scope closed first): write them out now,
            // queued before the memory goes back to the allocator
            for (Bf16Image img : new ArrayList<>(b.imagesIn)) {
                if (img.target().images != null && !img.target().released) {
                    materialize(img.target());
                }
            }
            b.imagesIn = null;
        }
        if (b.images != null) { // released unread: the images go, their scratch with the last of them
            List<Bf16Image> gone = b.images;
            b.images = null;
            for (Bf16Image img : gone) {
                dropImage(img);
            }
        }
        if (b.backed) {
            allocator.release(b.rawAddress(), b.blockBytes());
        }
    }

    // ------------------------------------------------------------------ bf16 images

    /**
     * A bf16 image: {@code count} bf16 values at device address {@code address} (inside {@code scratch}) that stand
     * for f32 elements {@code [element, element + count)} of {@code target}, which are not written yet. The bf16
     * wire's all-gathers leave their results so ({@link #adoptBf16Images}): FSDP's bf16 param dtype computes from
     * bf16 values anyway, so the grouped GEMM reads an image in place of rounding the f32 weights into a copy at every
     * call, and the widening pass back to f32 runs only if something reads the f32 values: {@link
     * DeviceBuffer#address()}, which every f32 access goes through, widens the images into place first.
     */
    record Bf16Image(DeviceBuffer target, long element, long count, DeviceBuffer scratch, long address) {
        boolean overlaps(long from, long n) {
            return from < element + count && element < from + n;
        }
    }

    private long imagesAdopted; // images taken so far (tests)
    private long imagesWidened; // images written out to f32 so far (tests)
    private long imageOperands; // grouped GEMM operands read from an image (tests)
    private long gemmOperands; // tensors made by emptyGemmOperand as bf16 images (tests)
    private long bf16Writes; // ops that wrote such a tensor in bf16 (tests)

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
        if (target.length != off.length || target.length != src.length || target.length != n.length) {
            throw new IllegalArgumentException("adoptBf16Images: " + target.length + " targets, " + off.length
                    + " offsets, " + src.length + " sources and " + n.length + " lengths");
        }
        DeviceBuffer s = buf(scratch, "bf16 image scratch");
        if (s.images != null || s.imagesIn != null) {
            throw new IllegalArgumentException("adoptBf16Images: the scratch " + s + " already holds images");
        }
        DeviceBuffer[] t = new DeviceBuffer[target.length];
        for (int i = 0; i < target.length; i++) { // every part checked before any is taken
            if (n[i] <= 0) {
                continue;
            }
            t[i] = buf(target[i], "bf16 image target " + i);
            if (!target[i].dtype().isFloating() || off[i] < 0 || off[i] + n[i] > target[i].numel()) {
                throw new IllegalArgumentException("adoptBf16Images: part " + i + " is elements [" + off[i] + ", "
                        + (off[i] + n[i]) + ") of " + target[i] + ", which is not an f32 range of it");
            }
            if (src[i] < s.rawAddress() || src[i] + 2 * n[i] > s.rawAddress() + s.bytes()) {
                throw new IllegalArgumentException("adoptBf16Images: part " + i + "'s " + n[i] + " values at 0x"
                        + Long.toHexString(src[i]) + " do not lie inside the scratch " + s);
            }
            for (int j = 0; j < i; j++) {
                if (t[j] == t[i] && off[j] < off[i] + n[i] && off[i] < off[j] + n[j]) {
                    throw new IllegalArgumentException("adoptBf16Images: parts " + j + " and " + i
                            + " overlap in " + target[i] + "; one gather writes each element once");
                }
            }
        }
        List<Bf16Image> made = new ArrayList<>();
        for (int i = 0; i < target.length; i++) {
            if (t[i] == null) {
                continue;
            }
            if (t[i].images != null) {
                final long from = off[i], len = n[i];
                if (t[i].images.stream().anyMatch(img -> img.overlaps(from, len))) {
                    materialize(t[i]);
                }
            }
            Bf16Image img = new Bf16Image(t[i], off[i], n[i], s, src[i]);
            if (t[i].images == null) {
                t[i].images = new ArrayList<>(2);
            }
            t[i].images.add(img);
            made.add(img);
        }
        imagesAdopted += made.size();
        if (made.isEmpty()) {
            releaseScratch(s);
            return;
        }
        s.imagesIn = made;
        for (Bf16Image img : made) { // a target wholly held by images needs no f32 memory until they are widened
            DeviceBuffer b = img.target();
            long held = 0;
            for (Bf16Image i : b.images) {
                held += i.count();
            }
            if (b.backed && held * 4 == b.bytes()) {
                allocator.release(b.rawAddress(), b.blockBytes());
                b.backed = false;
            }
        }
    }

    /**
     * Widens every image of {@code b} into its f32 range and lets them go; called by {@link DeviceBuffer#address()}
     * before the f32 values are used. The other images in the same scratch buffers (the rest of one gather: the
     * parameters of one FSDP unit, which are read together) are widened in the same launch, on this backend's stream.
     */
    synchronized void materialize(DeviceBuffer b) {
        if (b.images == null) {
            return;
        }
        java.util.LinkedHashSet<Bf16Image> all = new java.util.LinkedHashSet<>();
        for (Bf16Image img : b.images) {
            all.add(img);
            if (img.scratch().imagesIn != null) {
                all.addAll(img.scratch().imagesIn);
            }
        }
        deviceOnThisThread();
        int count = all.size();
        long[] src = new long[count], dst = new long[count], len = new long[count];
        int i = 0;
        for (Bf16Image img : all) {
            DeviceBuffer t = img.target();
            if (!t.backed) { // gave its block back to its images: a new one for the widened values
                long[] block = new long[1];
                long address = allocator.allocate(t.bytes(), block);
                t.rebind(address, block[0]);
            }
            t.images.remove(img);
            if (t.images.isEmpty()) {
                t.images = null;
            }
            src[i] = img.address();
            dst[i] = t.rawAddress() + 4 * img.element();
            len[i] = img.count();
            i++;
        }
        launchParts("bf16_to_f32_parts", src, dst, len, stream, false);
        imagesWidened += count;
        for (Bf16Image img : all) {
            dropImage(img); // stream-ordered after the widening that read it
        }
    }

    /** Takes an image out of its scratch, which goes back to the allocator with its last image. */
    private void dropImage(Bf16Image img) {
        DeviceBuffer s = img.scratch();
        if (s.imagesIn == null) {
            return;
        }
        s.imagesIn.remove(img);
        if (s.imagesIn.isEmpty()) {
            s.imagesIn = null;
            if (!s.released) {
                free(s); // its scope (if any) skips it once released
            }
        }
    }

    /**
     * Images adopted, images widened, grouped GEMM operands read from images, tensors made as bf16 images by
     * {@link #emptyGemmOperand}, ops that wrote bf16 into them, so far (tests).
     */
    synchronized long[] imageCounts() {
        return new long[] {imagesAdopted, imagesWidened, imageOperands, gemmOperands, bf16Writes};
    }

    private Tensor newTensor(DType dtype, int... shape) {
        long n = Tensor.numel(shape);
        return Tensor.onDevice(dtype, allocate(n * elementBytes(dtype)), shape);
    }

    private DeviceBuffer buf(Tensor t, String what) {
        if (t == null) {
            throw new IllegalArgumentException(what + " is null");
        }
        if (t.isHost()) {
            throw new IllegalArgumentException(what + " " + t + " is a host tensor; upload it to " + name + " first");
        }
        if (!(t.deviceHandle() instanceof DeviceBuffer) || ((DeviceBuffer) t.deviceHandle()).owner() != this) {
            throw new IllegalArgumentException(what + " " + t + " lives on another backend (" + t.deviceHandle()
                    + "), not on " + name);
        }
        DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
        if (b.released) {
            throw new IllegalStateException(what + " " + t + " was released (" + b + ")");
        }
        return b;
    }

    /** Device pointer to element {@code off} of t, after checking that [off, off + n) lies inside it. */
    private Pointer ptr(Tensor t, String what, long off, long n) {
        DeviceBuffer b = buf(t, what);
        if (off < 0 || n < 0 || off + n > t.numel()) {
            throw new IndexOutOfBoundsException(what + ": elements [" + off + ", " + (off + n) + ") of " + t
                    + " (" + t.numel() + " elements)");
        }
        return RawPointer.of(b.address() + off * elementBytes(t.dtype()), 0);
    }

    private long addr(Tensor t, String what, long off, long n) {
        return ptr(t, what, off, n).address();
    }

    private static Pointer ptr(DeviceBuffer b, long byteOff) {
        return RawPointer.of(b.address() + byteOff, 0);
    }

    private static void requireF32Storage(Tensor t, String what) {
        if (!t.dtype().isFloating()) {
            throw new IllegalArgumentException(what + " must be a floating tensor, got " + t);
        }
    }

    private static void requireI32(Tensor t, String what) {
        if (t.dtype() != DType.I32) {
            throw new IllegalArgumentException(what + " must be I32, got " + t);
        }
    }

    @Override
    public synchronized Tensor zeros(DType dtype, int... shape) {
        current();
        Tensor t = newTensor(dtype, shape);
        DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
        if (b.bytes() > 0) {
            Cuda.check(cudart.cudaMemsetAsync(ptr(b, 0), 0, b.bytes(), stream), "cudaMemsetAsync(" + b + ")");
        }
        return t;
    }

    /**
     * Without the zero fill. With {@code -Dsparkmoe.cuda.poison=true} (the GPU tests set it) the memory is filled
     * with NaN (f32) or -1 (integers) instead, so that a caller that reads before writing fails loudly.
     */
    @Override
    public synchronized Tensor empty(DType dtype, int... shape) {
        current();
        Tensor t = newTensor(dtype, shape);
        if (POISON && t.numel() > 0) {
            DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
            Cuda.check(cudart.cudaMemsetAsync(ptr(b, 0), 0xff, b.bytes(), stream), "cudaMemsetAsync(" + b + ")");
        }
        return t;
    }

    /**
     * At {@link GemmPrecision#BF16} with the grouped GEMM kernel on bf16 operands (the benchmark setting), the tensor
     * is held as a bf16 image from the start ({@link #adoptBf16Images}): no f32 block behind it, 2 bytes an element.
     * The ops that write the experts' operands ({@link #gatherRows}, {@link #siluMulForward},
     * {@link #siluMulBackward}) write bf16 into it, rounded to nearest even, and the grouped GEMM reads it in place of
     * casting it; any other access widens it into a new f32 block first ({@link DeviceBuffer#address()}). Otherwise
     * {@link #empty}.
     */
    @Override
    public synchronized Tensor emptyGemmOperand(int... shape) {
        if (gemmPrecision != GemmPrecision.BF16 || effectiveGroupedMode() != GroupedMode.KERNEL
                || !groupedKernelSupported()) {
            return empty(DType.F32, shape);
        }
        current();
        long n = Tensor.numel(shape);
        if (n == 0) {
            return empty(DType.F32, shape);
        }
        // the tensor first, then its scratch: a scope closing frees the tensor (and with it the scratch) first
        DeviceBuffer t = inScope(new DeviceBuffer(0, 4 * n, 0, this, nextBufferId++));
        t.backed = false;
        DeviceBuffer scratch = allocate((2 * n + 15) & ~15L);
        if (POISON) { // 0xffff: a bf16 NaN
            Cuda.check(cudart.cudaMemsetAsync(ptr(scratch, 0), 0xff, scratch.bytes(), stream),
                    "cudaMemsetAsync(" + scratch + ")");
        }
        Bf16Image img = new Bf16Image(t, 0, n, scratch, scratch.rawAddress());
        t.images = new ArrayList<>(List.of(img));
        scratch.imagesIn = new ArrayList<>(List.of(img));
        gemmOperands++;
        return Tensor.onDevice(DType.F32, t, shape);
    }

    /**
     * Where an op may write elements [off, off + n) of {@code t} as bf16: the address of element off's bf16 value when
     * {@code t} is held wholly by one image ({@link #emptyGemmOperand}) that covers them, else 0 (write f32 through
     * {@link #addr}, which widens any image first). Does not widen anything.
     */
    private long bf16Target(Tensor t, long off, long n) {
        DeviceBuffer b = buf(t, "output");
        if (b.backed || b.images == null || b.images.size() != 1) {
            return 0;
        }
        Bf16Image img = b.images.get(0);
        if (off < img.element() || off + n > img.element() + img.count()) {
            return 0;
        }
        return img.address() + 2 * (off - img.element());
    }

    @Override
    public synchronized Tensor upload(Tensor host) {
        if (!host.isHost()) {
            throw new IllegalArgumentException("upload needs a host tensor, got " + host + " (" + host.deviceHandle() + ")");
        }
        current();
        Tensor t = newTensor(host.dtype(), host.shape());
        DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
        int n = host.numel();
        if (n == 0) {
            return t;
        }
        Pointer src;
        switch (host.dtype()) {
            case I32: src = new IntPointer(host.ints()); break;
            case I64: src = new LongPointer(host.longs()); break;
            default: src = new FloatPointer(host.floats());
        }
        try {
            // Pageable source: the call returns once the bytes are staged, so the host buffer may be freed after it.
            Cuda.check(cudart.cudaMemcpyAsync(ptr(b, 0), src, b.bytes(), cudart.cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync(host -> " + b + ")");
        } finally {
            src.close();
        }
        return t;
    }

    @Override
    public synchronized Tensor download(Tensor t) {
        current();
        DeviceBuffer b = buf(t, "download source");
        Tensor host = Tensor.zeros(t.dtype(), t.shape());
        int n = t.numel();
        if (n > 0) {
            Pointer dst;
            switch (t.dtype()) {
                case I32: dst = new IntPointer(n); break;
                case I64: dst = new LongPointer(n); break;
                default: dst = new FloatPointer(n);
            }
            try {
                Cuda.check(cudart.cudaMemcpyAsync(dst, ptr(b, 0), (long) n * elementBytes(t.dtype()),
                        cudart.cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync(" + b + " -> host)");
                syncAndCheck();
                switch (t.dtype()) {
                    case I32: ((IntPointer) dst).get(host.ints()); break;
                    case I64: ((LongPointer) dst).get(host.longs()); break;
                    default: ((FloatPointer) dst).get(host.floats());
                }
            } finally {
                dst.close();
            }
        } else {
            syncAndCheck();
        }
        return host;
    }

    @Override
    public synchronized void copy(Tensor src, int srcOff, Tensor dst, int dstOff, int n) {
        if (src.dtype() != dst.dtype()) {
            throw new IllegalArgumentException("copy from " + src + " to " + dst + ": dtypes differ");
        }
        current();
        if (n == 0) {
            return;
        }
        long bytes = (long) n * elementBytes(src.dtype());
        Cuda.check(cudart.cudaMemcpyAsync(ptr(dst, "copy dst", dstOff, n), ptr(src, "copy src", srcOff, n), bytes,
                cudart.cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync(device -> device, " + bytes + " B)");
    }

    @Override
    public synchronized void copyRows(Tensor src, int srcOff, int srcStride, Tensor dst, int dstOff, int dstStride,
                                      int rows, int rowLen) {
        if (src.dtype() != dst.dtype()) {
            throw new IllegalArgumentException("copyRows from " + src + " to " + dst + ": dtypes differ");
        }
        current();
        if (rowLen == 0 || rows == 0) {
            return;
        }
        if (srcStride < rowLen || dstStride < rowLen) {
            throw new IllegalArgumentException("copyRows: strides (" + srcStride + ", " + dstStride
                    + ") must be at least the row length " + rowLen);
        }
        int es = elementBytes(src.dtype());
        long srcSpan = (long) (rows - 1) * srcStride + rowLen;
        long dstSpan = (long) (rows - 1) * dstStride + rowLen;
        Cuda.check(cudart.cudaMemcpy2DAsync(ptr(dst, "copyRows dst", dstOff, dstSpan), (long) dstStride * es,
                ptr(src, "copyRows src", srcOff, srcSpan), (long) srcStride * es, (long) rowLen * es, rows,
                cudart.cudaMemcpyDeviceToDevice, stream), "cudaMemcpy2DAsync(" + rows + " rows of " + rowLen + ")");
    }

    @Override
    public synchronized void fill(Tensor t, float value) {
        current();
        long n = t.numel();
        if (n == 0) {
            return;
        }
        switch (t.dtype()) {
            case I32: launch1D(K, "fill_i32", n, addr(t, "fill", 0, n), n, (int) value); break;
            case I64: launch1D(K, "fill_i64", n, addr(t, "fill", 0, n), n, (long) value); break;
            default: launch1D(K, "fill_f32", n, addr(t, "fill", 0, n), n, value);
        }
    }

    @Override
    public synchronized void release(Tensor t) {
        current();
        DeviceBuffer b = buf(t, "release");
        free(b);
        if (b.scope != null) {
            b.scope.buffers.remove(b);
        }
    }

    @Override
    public synchronized Scope openScope() {
        current();
        CudaScope s = new CudaScope(nextScopeId++);
        scopes.push(s);
        return s;
    }

    @Override
    public synchronized void synchronize() {
        current();
        syncAndCheck();
    }

    /** Scopes in use (innermost first), for diagnostics. */
    public synchronized int openScopes() {
        return scopes.size();
    }

    /** An allocation scope of this backend; closing it releases the buffers allocated in it that are still live. */
    public final class CudaScope implements Scope {
        final long id;
        final List<DeviceBuffer> buffers = new ArrayList<>();
        private boolean open = true;

        CudaScope(long id) {
            this.id = id;
        }

        @Override
        public void close() {
            synchronized (CudaBackend.this) {
                if (!open) {
                    return;
                }
                if (scopes.peek() != this) {
                    throw new IllegalStateException("scope #" + id + " closed while an inner scope #"
                            + scopes.peek().id + " is still open; close scopes innermost first");
                }
                dropHeldCasts(); // kept operand copies may belong to this scope
                scopes.pop();
                open = false;
                for (DeviceBuffer b : buffers) {
                    if (!b.released) {
                        free(b);
                    }
                }
                buffers.clear();
            }
        }

        /** Buffers allocated in this scope and not yet released. */
        public int liveBuffers() {
            synchronized (CudaBackend.this) {
                return (int) buffers.stream().filter(b -> !b.released).count();
            }
        }
    }

    private void syncAndCheck() {
        Cuda.check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        checkErrorWord();
    }

    private void checkErrorWord() {
        int[] w = new int[4];
        try (IntPointer p = new IntPointer(4)) {
            Cuda.check(cudart.cudaMemcpyAsync(p, ptr(errorWord, 0), 16, cudart.cudaMemcpyDeviceToHost, stream),
                    "cudaMemcpyAsync(error word)");
            Cuda.check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize");
            p.get(w);
        }
        if (w[0] == 0) {
            return;
        }
        Cuda.check(cudart.cudaMemsetAsync(ptr(errorWord, 0), 0, 16, stream), "cudaMemsetAsync(error word)");
        String msg;
        switch (w[0]) {
            case 1: msg = "embeddingForward: token id " + w[2] + " at position " + w[1]
                    + " is outside the vocabulary [0, " + w[3] + ")"; break;
            case 2: msg = "crossEntropy: target id " + w[2] + " at row " + w[1] + " is outside the vocabulary [0, "
                    + w[3] + ") (use -100 to ignore a position)"; break;
            case 3: msg = "embeddingBackward: token id " + w[2] + " at position " + w[1]
                    + " is outside the table [0, " + w[3] + ")"; break;
            case 4: msg = "gatherRows: index " + w[2] + " at " + w[1] + " selects a row outside the source [0, "
                    + w[3] + ") (after division by the divisor)"; break;
            case 5: msg = "scatterRows: index " + w[2] + " at " + w[1] + " is outside the destination rows [0, "
                    + w[3] + ")"; break;
            case 6: msg = "routerStats: expert id " + w[2] + " at " + w[1] + " is outside [0, " + w[3] + ")"; break;
            case 7: msg = "groupByExpert: expert id " + w[2] + " at slot " + w[1] + " is outside [0, " + w[3] + ")";
                break;
            default: msg = "kernel error code " + w[0] + " (" + w[1] + ", " + w[2] + ", " + w[3] + ")";
        }
        throw new IllegalArgumentException(msg + " (found on " + name + " by a kernel queued before this call)");
    }

    // ------------------------------------------------------------------ launching

    private static int blocksFor(long n, int threads) {
        long b = (n + threads - 1) / threads;
        return (int) Math.max(1, Math.min(b, 65535L * 16));
    }

    private void launch1D(String file, String kernel, long n, Object... args) {
        launch(file, kernel, blocksFor(n, THREADS), 1, THREADS, 0, args);
    }

    /** Launches {@code kernel} with args packed one per 8-byte slot (Integer, Long, Float, Double). */
    private void launch(String file, String kernel, int gridX, int gridY, int block, int sharedBytes, Object... args) {
        launchOn(stream, file, kernel, gridX, gridY, block, sharedBytes, args);
    }

    /** {@link #launch} on stream {@code on} of this device. */
    private void launchOn(CUstream_st on, String file, String kernel, int gridX, int gridY, int block,
                          int sharedBytes, Object... args) {
        if (args.length > 32) {
            throw new IllegalArgumentException("too many kernel arguments");
        }
        CUfunc_st f = kernels.function(file, kernel);
        if (sharedBytes > 48 * 1024 && sharedRaised.putIfAbsent(file + "#" + kernel + "#" + sharedBytes, true) == null) {
            Cuda.checkDriver(cudart.cuFuncSetAttribute(f, cudart.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    sharedBytes), "cuFuncSetAttribute(" + kernel + ", max dynamic shared = " + sharedBytes + ")");
        }
        for (int i = 0; i < args.length; i++) {
            Object a = args[i];
            long o = 8L * i;
            if (a instanceof Integer) {
                argBytes.putInt(o, (Integer) a);
            } else if (a instanceof Long) {
                argBytes.putLong(o, (Long) a);
            } else if (a instanceof Float) {
                argBytes.putFloat(o, (Float) a);
            } else if (a instanceof Double) {
                argBytes.putDouble(o, (Double) a);
            } else {
                throw new IllegalArgumentException("kernel argument " + i + " of " + kernel + " has type "
                        + (a == null ? "null" : a.getClass().getName()));
            }
        }
        Cuda.checkDriver(cudart.cuLaunchKernel(f, gridX, gridY, 1, block, 1, 1, sharedBytes, on, argPtrs,
                (PointerPointer<?>) null), "cuLaunchKernel(" + kernel + ", grid " + gridX + "x" + gridY + ", block "
                + block + ", shared " + sharedBytes + ")");
    }

    private void launch2D(String file, String kernel, int gridX, int gridY, int bx, int by, Object... args) {
        CUfunc_st f = kernels.function(file, kernel);
        for (int i = 0; i < args.length; i++) {
            Object a = args[i];
            long o = 8L * i;
            if (a instanceof Integer) {
                argBytes.putInt(o, (Integer) a);
            } else if (a instanceof Long) {
                argBytes.putLong(o, (Long) a);
            } else {
                argBytes.putFloat(o, (Float) a);
            }
        }
        Cuda.checkDriver(cudart.cuLaunchKernel(f, gridX, gridY, 1, bx, by, 1, 0, stream, argPtrs,
                (PointerPointer<?>) null), "cuLaunchKernel(" + kernel + ")");
    }

    private Tensor scratch(DType dtype, int n) {
        return newTensor(dtype, n);
    }

    private void dispose(Tensor t) {
        DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
        free(b);
        if (b.scope != null) {
            b.scope.buffers.remove(b);
        }
    }

    // ------------------------------------------------------------------ dense algebra

    private static void checkSpan(String what, Tensor t, int off, int rows, int cols, int ld) {
        if (ld < cols) {
            throw new IllegalArgumentException("gemm: leading dimension of " + what + " (" + ld
                    + ") is smaller than its row length (" + cols + ")");
        }
        long last = (long) off + (long) (rows - 1) * ld + cols;
        if (off < 0 || last > t.numel()) {
            throw new IndexOutOfBoundsException("gemm: " + what + " [" + rows + " x " + cols + "] at offset " + off
                    + " with stride " + ld + " needs " + last + " elements but the buffer has " + t.numel());
        }
    }

    @Override
    public synchronized void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, Tensor a, int aOff,
                                  int lda, Tensor b, int bOff, int ldb, float beta, Tensor c, int cOff, int ldc) {
        current();
        if (m == 0 || n == 0) {
            return;
        }
        checkSpan("C", c, cOff, m, n, ldc);
        if (k == 0) {
            launch1D(K, "scale_rows_f32", (long) m * n, addr(c, "C", cOff, 0), m, n, ldc, beta);
            return;
        }
        checkSpan("A", a, aOff, transA ? k : m, transA ? m : k, lda);
        checkSpan("B", b, bOff, transB ? n : k, transB ? k : n, ldb);
        gemmEx(transA, transB, m, n, k, alpha, addr(a, "A", aOff, 0), lda, addr(b, "B", bOff, 0), ldb, beta,
                addr(c, "C", cOff, 0), ldc);
    }

    /** A dense bf16 copy of the [rows, cols] block of {@code t} at {@code off} with row stride {@code ld}. */
    private DeviceBuffer bf16Copy(Tensor t, String what, int off, int ld, int rows, int cols) {
        DeviceBuffer d = allocate(2L * rows * cols);
        launch1D(K, "f32_to_bf16_rows", (long) rows * ((cols + 1) / 2), addr(t, what, off, 0), (long) ld, rows,
                cols, d.address());
        return d;
    }

    private void gemmEx(boolean transA, boolean transB, int m, int n, int k, float alpha, long a, int lda, long b,
                        int ldb, float beta, long c, int ldc) {
        alphaP.put(alpha);
        betaP.put(beta);
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
        Cuda.checkCublas(cublas.cublasGemmEx(cublasHandle, transB ? cublas.CUBLAS_OP_T : cublas.CUBLAS_OP_N,
                transA ? cublas.CUBLAS_OP_T : cublas.CUBLAS_OP_N, n, m, k, alphaP, RawPointer.of(b, 0),
                cudart.CUDA_R_32F, ldb, RawPointer.of(a, 0), cudart.CUDA_R_32F, lda, betaP, RawPointer.of(c, 0),
                cudart.CUDA_R_32F, ldc, gemmPrecision.cublasCompute, cublas.CUBLAS_GEMM_DEFAULT),
                "cublasGemmEx(m=" + m + ", n=" + n + ", k=" + k + ", transA=" + transA + ", transB=" + transB + ", "
                        + gemmPrecision + ")");
    }

    @Override
    public synchronized void groupedGemm(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k,
                                         float alpha, Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, int ldb,
                                         float beta, Tensor c, int[] cOff, int ldc) {
        current();
        GroupedMode mode = effectiveGroupedMode();
        if (mode == GroupedMode.KERNEL && !groupedKernelSupported()) {
            throw new IllegalStateException("GroupedMode.KERNEL needs bf16 tensor cores (sm_80 or newer) and "
                    + gbSharedBytes + " bytes of shared memory per block; " + name + " is " + kernels.arch()
                    + " (with less shared memory, try -Dsparkmoe.cuda.defines=GB_STAGES=2)");
        }
        // The kernel computes row * ld + col in 32 bits inside a 256-row slice of its bf16 operands, whose padded
        // strides stay below max(lda, ldb) + 8; absurd strides take the loop.
        boolean kernel = mode == GroupedMode.KERNEL
                && 256L * (Math.max(Math.max(lda, ldb), 1) + 8) <= Integer.MAX_VALUE;
        int[] active = new int[groups];
        int count = 0;
        for (int g = 0; g < groups; g++) {
            if (m[g] == 0 || n[g] == 0) {
                continue;
            }
            checkSpan("C[" + g + "]", c, cOff[g], m[g], n[g], ldc);
            if (k[g] == 0) {
                if (kernel) {
                    active[count++] = g; // the kernel scales C_g by beta itself (and never reads it when beta == 0)
                } else {
                    launch1D(K, "scale_rows_f32", (long) m[g] * n[g], addr(c, "C", cOff[g], 0), m[g], n[g], ldc,
                            beta);
                }
                continue;
            }
            checkSpan("A[" + g + "]", a, aOff[g], transA ? k[g] : m[g], transA ? m[g] : k[g], lda);
            checkSpan("B[" + g + "]", b, bOff[g], transB ? n[g] : k[g], transB ? k[g] : n[g], ldb);
            active[count++] = g;
        }
        if (count == 0) {
            return;
        }
        if (kernel) {
            groupedKernel(transA, transB, active, count, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff,
                    ldc);
            return;
        }
        for (int q = 0; q < count; q++) {
            int g = active[q];
            gemmEx(transA, transB, m[g], n[g], k[g], alpha, addr(a, "A", aOff[g], 0), lda, addr(b, "B", bOff[g], 0),
                    ldb, beta, addr(c, "C", cOff[g], 0), ldc);
        }
    }

    /**
     * {@link GroupedMode#KERNEL}: one launch of {@code grouped_gemm_bf16_<ta><tb>} per 64 groups (the active ones:
     * m, n > 0; k may be 0), on bf16 operands ({@link #bf16Operand}: an image read in place, or a copy made by
     * {@link #castGroupedOperand}, released stream-ordered after the launch unless kept for the next call; a and b
     * then address them and lda, ldb are their strides). The per-group descriptors travel BY VALUE as the kernel's
     * only parameter, a 2840-byte GBParams
     * struct (under the classic 4 KB kernel-parameter limit, so no device table, upload or stream-ordered allocation
     * is needed, and the launch is the only host cost): cuLaunchKernel copies it from {@link #ggParams} at launch
     * time, so the buffer is reused by the next launch. Layout: int lda, ldb, ldc, groups; float alpha, beta; then
     * arrays of 64: long long a, b, c (device byte addresses of A_g, B_g, C_g); int m, n, k, tileStart (prefix sum of
     * the groups' 128 x gbTileN tiles; the grid is the total) and flags (unused by this kernel: bit 0, A_g's address
     * is 16-byte aligned and the caller's lda a multiple of 4; bit 1, the same for B_g). Groups write disjoint C_g
     * in parallel (overlapping C_g would race, where the loop would apply them in order). The kernel takes
     * {@link #gbSharedBytes} of dynamic shared memory (raised once per function); groups are passed largest k first.
     */
    private void groupedKernel(boolean transA, boolean transB, int[] active, int count, int[] m, int[] n, int[] k,
                               float alpha, Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, int ldb, float beta,
                               Tensor c, int[] cOff, int ldc) {
        String kernel = "grouped_gemm_bf16_" + (transA ? "t" : "n") + (transB ? "t" : "n");
        String file = GB;
        int shared = gbSharedBytes;
        int tileN = gbTileN;
        CUfunc_st f = kernels.function(file, kernel);
        if (sharedRaised.putIfAbsent(file + "#" + kernel + "#" + shared, true) == null) {
            Cuda.checkDriver(cudart.cuFuncSetAttribute(f, cudart.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared), "cuFuncSetAttribute(" + kernel + ", max dynamic shared = " + shared + ")");
        }
        // Largest k first (stable): a CTA's time grows with k, so the longest tiles start in the first wave and the
        // short ones fill the tail (weight gradients: k is the expert's ragged row count).
        for (int i = 1; i < count; i++) {
            int g = active[i], j = i;
            for (; j > 0 && k[active[j - 1]] < k[g]; j--) {
                active[j] = active[j - 1];
            }
            active[j] = g;
        }
        int[][] dims = operandDims(transA, transB, m, n, k);
        long[] aAt = new long[GG_MAX_GROUPS + 1], bAt = new long[GG_MAX_GROUPS + 1];
        boolean keep = count <= GG_MAX_GROUPS; // one launch: its copies may serve the next call
        List<HeldCast> offered = new ArrayList<>(heldCasts);
        heldCasts.clear();
        for (int start = 0; start < count; start += GG_MAX_GROUPS) {
            int here = Math.min(GG_MAX_GROUPS, count - start);
            DeviceBuffer a16 = null, b16 = null;
            HeldCast aCast = null, bCast = null;
            try {
                Bf16Operand ao = bf16Operand(a, "A", aOff, lda, dims[0], dims[1], k, active, start, here, aAt,
                        offered);
                aCast = ao.cast();
                a16 = aCast == null ? null : aCast.copy();
                Bf16Operand bo = bf16Operand(b, "B", bOff, ldb, dims[2], dims[3], k, active, start, here, bAt,
                        offered);
                bCast = bo.cast();
                b16 = bCast == null ? null : bCast.copy();
                long aBase = ao.base(), bBase = bo.base(); // where aAt / bAt count from
                ggParams.putInt(0, ao.ld());
                ggParams.putInt(4, bo.ld());
                ggParams.putInt(8, ldc);
                ggParams.putInt(12, here);
                ggParams.putFloat(16, alpha);
                ggParams.putFloat(20, beta);
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
                    int flags = (aAddr % 16 == 0 && lda % 4 == 0 ? 1 : 0) | (bAddr % 16 == 0 && ldb % 4 == 0 ? 2 : 0);
                    ggParams.putLong(GG_OFF_A + 8L * q, aAddr);
                    ggParams.putLong(GG_OFF_B + 8L * q, bAddr);
                    ggParams.putLong(GG_OFF_C + 8L * q, addr(c, "C", cOff[g], 0));
                    ggParams.putInt(GG_OFF_M + 4L * q, m[g]);
                    ggParams.putInt(GG_OFF_N + 4L * q, n[g]);
                    ggParams.putInt(GG_OFF_K + 4L * q, k[g]);
                    ggParams.putInt(GG_OFF_TILE + 4L * q, (int) tiles);
                    ggParams.putInt(GG_OFF_FLAGS + 4L * q, flags);
                    tiles += (long) ((m[g] + GG_TILE_M - 1) / GG_TILE_M) * ((n[g] + tileN - 1) / tileN);
                    if (tiles > Integer.MAX_VALUE) {
                        throw new IllegalArgumentException("groupedGemm: more than 2^31 - 1 tiles in one launch");
                    }
                }
                Cuda.checkDriver(cudart.cuLaunchKernel(f, (int) tiles, 1, 1, gbThreads, 1, 1,
                        shared, stream,
                        ggArgPtrs, (PointerPointer<?>) null), "cuLaunchKernel(" + kernel + ", " + here + " groups, "
                        + tiles + " tiles)");
                if (keep) {
                    for (HeldCast h : new HeldCast[] {aCast, bCast}) {
                        if (h != null && !heldCasts.contains(h)) {
                            heldCasts.add(h);
                        }
                    }
                    heldAt = ops;
                }
            } finally {
                // stream-ordered: a later user of these blocks queues behind the kernel that reads them
                for (DeviceBuffer d : new DeviceBuffer[] {a16, b16 == a16 ? null : b16}) {
                    if (d != null && !d.released && heldCasts.stream().noneMatch(h -> h.copy() == d)) {
                        releaseScratch(d);
                    }
                }
            }
        }
        for (HeldCast h : offered) { // kept by the previous call and not used by this one
            if (!h.copy().released && heldCasts.stream().noneMatch(x -> x.copy() == h.copy())) {
                releaseScratch(h.copy());
            }
        }
    }

    /** Where the bf16 kernel reads one operand: its base address and row stride, and the cast copy if one was made. */
    private record Bf16Operand(long base, int ld, HeldCast cast) {
    }

    /**
     * One operand of a {@link GroupedMode#KERNEL} launch: an operand held as a bf16 image (the FSDP gathers'
     * weights, {@link #emptyGemmOperand}'s tensors) is read in place ({@link #imageOperand}); any other is cast
     * ({@link #castGroupedOperand}, which widens images first). Fills at[] as both do.
     */
    private Bf16Operand bf16Operand(Tensor t, String what, int[] off, int ld, int[] rows, int[] cols, int[] k,
                                    int[] active, int start, int here, long[] at, List<HeldCast> offered) {
        Bf16Image img = imageOperand(t, off, ld, rows, cols, k, active, start, here, at);
        if (img != null) {
            return new Bf16Operand(img.address(), ld, null);
        }
        HeldCast cast = castGroupedOperand(t, what, off, ld, rows, cols, k, active, start, here, at, offered);
        return new Bf16Operand(cast == null ? 0 : cast.copy().address(), (int) at[GG_MAX_GROUPS], cast);
    }

    /**
     * The bf16 image of {@code t} that holds the [rows, cols] block (stride ld, at element off[g]) of every group
     * active[start .. start + here) that reads the operand (k > 0), when the bf16 kernel can read it in place: one
     * image holds them all, ld and every block's cols are multiples of 8 (16-byte rows, and no 16-byte chunk runs
     * past a row's end, where the kernel expects zeros) and every block starts 16-byte aligned. Fills at[q] with the
     * element offset of group active[start + q]'s block from the image's first value. Null otherwise (the caller
     * casts, which writes the images out first).
     */
    private Bf16Image imageOperand(Tensor t, int[] off, int ld, int[] rows, int[] cols, int[] k, int[] active,
                                   int start, int here, long[] at) {
        if (!(t.deviceHandle() instanceof DeviceBuffer) || ld % 8 != 0) {
            return null;
        }
        DeviceBuffer b = (DeviceBuffer) t.deviceHandle();
        if (b.images == null || b.released || b.owner() != this) {
            return null;
        }
        Bf16Image found = null;
        for (int q = 0; q < here; q++) {
            int g = active[start + q];
            at[q] = 0;
            if (k[g] <= 0) {
                continue;
            }
            long from = off[g], n = (long) (rows[g] - 1) * ld + cols[g];
            if (found == null) { // the image of the first block; every other block must lie in it too
                for (Bf16Image img : b.images) {
                    if (from >= img.element() && from + n <= img.element() + img.count()) {
                        found = img;
                        break;
                    }
                }
            }
            if (found == null || cols[g] % 8 != 0 || from < found.element()
                    || from + n > found.element() + found.count()) {
                return null;
            }
            at[q] = from - found.element();
            if ((found.address() + 2 * at[q]) % 16 != 0) {
                return null;
            }
        }
        if (found == null) {
            return null;
        }
        at[GG_MAX_GROUPS] = ld;
        imageOperands++;
        return found;
    }

    /** Releases the kept operand copies (stream-ordered). */
    private void dropHeldCasts() {
        for (HeldCast h : heldCasts) {
            if (!h.copy().released) {
                releaseScratch(h.copy());
            }
        }
        heldCasts.clear();
    }

    /** Number of kept operand copies (tests). */
    synchronized int heldOperandCopies() {
        return heldCasts.size();
    }

    /** Operand blocks converted to bf16 so far (grouped_cast_bf16 launches; tests). */
    synchronized long operandCasts() {
        return operandCasts;
    }

    /** The stored [rows, cols] of every group's A and B: {aRows, aCols, bRows, bCols}. */
    private static int[][] operandDims(boolean transA, boolean transB, int[] m, int[] n, int[] k) {
        int groups = m.length;
        int[][] d = new int[4][groups];
        for (int g = 0; g < groups; g++) {
            d[0][g] = transA ? k[g] : m[g];
            d[1][g] = transA ? m[g] : k[g];
            d[2][g] = transB ? n[g] : k[g];
            d[3][g] = transB ? k[g] : n[g];
        }
        return d;
    }

    /**
     * {@link GroupedMode#KERNEL}: one {@code grouped_cast_bf16} launch rounding the [rows, cols] block of every
     * group active[start .. start + here) that reads its operands (k > 0) from f32 {@code t} (offset off[g], stride
     * ld) into a new bf16 scratch buffer, packed group after group in group order with row stride dstLd = the widest cols rounded
     * up to 8 (the padding columns written as zeros), so that every block and row is 16-byte aligned whatever off
     * and ld are. Fills at[q] with the element offset of group active[start + q]'s block in the scratch and
     * at[64] with dstLd. Returns null where no group reads the operand. Chunk counts stay below 2^31: rows * ld
     * is an int span and dstLd <= ld + 7.
     */
    private HeldCast castGroupedOperand(Tensor t, String what, int[] off, int ld, int[] rows, int[] cols, int[] k,
                                        int[] active, int start, int here, long[] at, List<HeldCast> offered) {
        // Blocks are packed in group order (not launch order), so that a neighbour with another launch order (a
        // weight gradient sorts its groups by k) finds the same copy: the key and the layout depend only on which
        // groups read the operand, where their blocks are and how large they are.
        int[] reading = new int[here];
        int count = 0;
        for (int q = 0; q < here; q++) {
            if (k[active[start + q]] > 0) {
                reading[count++] = active[start + q];
            }
        }
        reading = Arrays.copyOf(reading, count);
        Arrays.sort(reading);
        long[] key = castKey(t, what, off, ld, rows, cols, reading);
        HeldCast found = null;
        for (HeldCast h : offered) {
            if (Arrays.equals(h.key(), key)) {
                found = h;
                break;
            }
        }
        int dstLd = 0, entries = 0;
        long total = 0, maxChunks = 0;
        for (int g : reading) {
            dstLd = Math.max(dstLd, cols[g]);
        }
        dstLd = (dstLd + 7) / 8 * 8;
        java.util.Map<Integer, Long> blockAt = new HashMap<>();
        for (int g : reading) {
            blockAt.put(g, total);
            total += (long) rows[g] * dstLd;
            maxChunks = Math.max(maxChunks, (long) rows[g] * dstLd / 8);
        }
        for (int q = 0; q < here; q++) {
            at[q] = blockAt.getOrDefault(active[start + q], 0L);
        }
        at[GG_MAX_GROUPS] = dstLd;
        if (total == 0) {
            return null;
        }
        if (found != null) {
            return found; // the same blocks, converted by the previous call: the same layout
        }
        DeviceBuffer d = allocate(2 * total);
        HeldCast made = new HeldCast(d, key);
        operandCasts++;
        gcParams.putInt(0, ld);
        gcParams.putInt(4, dstLd);
        for (int g : reading) {
            gcParams.putLong(GC_OFF_SRC + 8L * entries, addr(t, what, off[g], 0));
            gcParams.putLong(GC_OFF_DST + 8L * entries, d.address() + 2 * blockAt.get(g));
            gcParams.putInt(GC_OFF_ROWS + 4L * entries, rows[g]);
            gcParams.putInt(GC_OFF_COLS + 4L * entries, cols[g]);
            entries++;
        }
        gcParams.putInt(8, entries);
        gcParams.putInt(12, 0);
        long perBlock = 256L * gcUnroll; // GC_UNROLL chunks a thread
        int gridX = (int) Math.max(1, Math.min(65535, (maxChunks + perBlock - 1) / perBlock));
        CUfunc_st f = kernels.function(GB, "grouped_cast_bf16");
        Cuda.checkDriver(cudart.cuLaunchKernel(f, gridX, entries, 1, 256, 1, 1, 0, stream, gcArgPtrs,
                (PointerPointer<?>) null), "cuLaunchKernel(grouped_cast_bf16, " + what + ", " + entries + " groups)");
        return made;
    }

    /**
     * What a {@link #castGroupedOperand} converts, as numbers: the stride, then for each group that reads the
     * operand, in group order, its index and its source block's device address, rows and columns. Equal keys give
     * equal copies, laid out alike, while the source memory is unchanged.
     */
    private long[] castKey(Tensor t, String what, int[] off, int ld, int[] rows, int[] cols, int[] reading) {
        long[] key = new long[1 + 4 * reading.length];
        key[0] = ld;
        for (int i = 0; i < reading.length; i++) {
            int g = reading[i];
            key[1 + 4 * i] = g;
            key[2 + 4 * i] = addr(t, what, off[g], 0);
            key[3 + 4 * i] = rows[g];
            key[4 + 4 * i] = cols[g];
        }
        return key;
    }

    /**
     * Test hook for timing: only the bf16 operand casts that {@link GroupedMode#KERNEL} runs before its kernels
     * (same grouping: m, n, k > 0, largest k first, 64 groups a launch), the scratch released at once.
     */
    synchronized void groupedOperandCastOnly(boolean transA, boolean transB, int groups, int[] m, int[] n, int[] k,
                                             Tensor a, int[] aOff, int lda, Tensor b, int[] bOff, int ldb) {
        current();
        int[] active = new int[groups];
        int count = 0;
        for (int g = 0; g < groups; g++) {
            if (m[g] > 0 && n[g] > 0 && k[g] > 0) {
                active[count++] = g;
            }
        }
        int[][] dims = operandDims(transA, transB, m, n, k);
        long[] at = new long[GG_MAX_GROUPS + 1];
        for (int start = 0; start < count; start += GG_MAX_GROUPS) {
            int here = Math.min(GG_MAX_GROUPS, count - start);
            HeldCast a16 = castGroupedOperand(a, "A", aOff, lda, dims[0], dims[1], k, active, start, here, at,
                    List.of());
            HeldCast b16 = castGroupedOperand(b, "B", bOff, ldb, dims[2], dims[3], k, active, start, here, at,
                    List.of());
            if (a16 != null) {
                releaseScratch(a16.copy());
            }
            if (b16 != null) {
                releaseScratch(b16.copy());
            }
        }
    }

    /**
     * Rounds {@code n[i]} f32 values at device address {@code src[i]} to bf16 (nearest even) at {@code dst[i]} (2 bytes
     * each) for every part i, enqueued on {@code on}, a stream of this device: a communicator's, for its bf16 wire.
     * One launch per {@value #BFP_MAX} parts ({@code f32_to_bf16_parts}), whatever their sizes: a unit's parameters
     * are a handful of large tensors and many small ones, and a launch per part cost more host time than the large
     * ones' conversion. Ordering against this backend's stream is the caller's (the communicator's stream waits for
     * the compute stream before a collective).
     */
    public synchronized void roundToBf16(long[] src, long[] dst, long[] n, CUstream_st on) {
        convertParts("f32_to_bf16_parts", src, dst, n, on, true);
    }

    /** Widens {@code n[i]} bf16 values at {@code src[i]} to f32 at {@code dst[i]} (exactly), as {@link #roundToBf16}. */
    public synchronized void widenBf16(long[] src, long[] dst, long[] n, CUstream_st on) {
        convertParts("bf16_to_f32_parts", src, dst, n, on, false);
    }

    /** Parts per launch of the part-wise conversions (BFP_MAX in kernels.cu). */
    static final int BFP_MAX = 64;
    private static final long BFP_UNITS = 8, BFP_SRC = BFP_UNITS + 8L * (BFP_MAX + 1), BFP_DST = BFP_SRC + 8L * BFP_MAX,
            BFP_N = BFP_DST + 8L * BFP_MAX, BFP_VEC = BFP_N + 8L * BFP_MAX, BFP_BYTES = BFP_VEC + 4L * BFP_MAX;
    private final BytePointer bfpParams = new BytePointer(BFP_BYTES); // struct BfParts (2320 bytes), by value
    private final PointerPointer<Pointer> bfpArgPtrs = new PointerPointer<>(1);

    private void convertParts(String kernel, long[] src, long[] dst, long[] n, CUstream_st on, boolean toBf16) {
        current();
        launchParts(kernel, src, dst, n, on, toBf16);
    }

    private void launchParts(String kernel, long[] src, long[] dst, long[] n, CUstream_st on, boolean toBf16) {
        if (src.length != dst.length || src.length != n.length) {
            throw new IllegalArgumentException(kernel + ": " + src.length + " sources, " + dst.length
                    + " destinations and " + n.length + " lengths");
        }
        for (int start = 0; start < src.length; start += BFP_MAX) {
            int count = 0;
            long units = 0;
            for (int i = start; i < Math.min(src.length, start + BFP_MAX); i++) {
                if (n[i] <= 0) {
                    continue;
                }
                // vectors of four: the f32 side 16-byte aligned, the bf16 side 8-byte aligned
                boolean vec = toBf16 ? src[i] % 16 == 0 && dst[i] % 8 == 0 : src[i] % 8 == 0 && dst[i] % 16 == 0;
                long quads = vec ? n[i] >> 2 : 0;
                bfpParams.putLong(BFP_UNITS + 8L * count, units);
                bfpParams.putLong(BFP_SRC + 8L * count, src[i]);
                bfpParams.putLong(BFP_DST + 8L * count, dst[i]);
                bfpParams.putLong(BFP_N + 8L * count, n[i]);
                bfpParams.putInt(BFP_VEC + 4L * count, vec ? 1 : 0);
                units += quads + (n[i] - 4 * quads);
                count++;
            }
            if (count == 0) {
                continue;
            }
            bfpParams.putInt(0, count);
            bfpParams.putLong(BFP_UNITS + 8L * count, units);
            int st = cudart.cuLaunchKernel(kernels.function(K, kernel), blocksFor(units, THREADS), 1, 1, THREADS, 1,
                    1, 0, on, bfpArgPtrs, (PointerPointer<?>) null);
            if (st != 0) {
                Cuda.checkDriver(st, "cuLaunchKernel(" + kernel + ", " + count + " parts, " + units + " units)");
            }
        }
    }

    @Override
    public synchronized void axpy(float alpha, Tensor x, int xOff, Tensor y, int yOff, int n) {
        current();
        if (n == 0) {
            return;
        }
        long xa = addr(x, "x", xOff, n);
        long ya = addr(y, "y", yOff, n);
        if (aligned16(xa, ya)) {
            launch1D(K, "axpy_f32x4", Math.max(n / 4, n % 4), alpha, xa, ya, n);
        } else {
            launch1D(K, "axpy_f32", n, alpha, xa, ya, n);
        }
    }

    @Override
    public synchronized void scale(Tensor x, float alpha) {
        current();
        long n = x.numel();
        if (n == 0) {
            return;
        }
        launch1D(K, "scale_f32", n, addr(x, "x", 0, n), n, alpha);
    }

    @Override
    public synchronized double sumSquares(Tensor x) {
        return sumSquares(java.util.List.of(x))[0];
    }

    @Override
    public synchronized double[] sumSquares(java.util.List<Tensor> xs) {
        current();
        int count = xs.size();
        if (count == 0) {
            return new double[0];
        }
        int[] blocks = new int[count];
        long total = count;
        for (int i = 0; i < count; i++) {
            long n = xs.get(i).numel();
            blocks[i] = (int) Math.max(1, Math.min((n + THREADS - 1) / THREADS, 4L * smCount));
            total += blocks[i];
        }
        boolean multi = count > 1 && count <= 65535;
        // 8-byte elements: the sums (doubles) first, then the partials, then (multi) {x, n, blocks, partial} per tensor
        long cells = total + (multi ? 4L * count : 0);
        Tensor partial = scratch(DType.I64, (int) cells);
        try {
            long base = addr(partial, "partial", 0, cells);
            long p = base + 8L * count;
            if (multi) {
                // one launch per pass for the whole list (a step's gradient norm: hundreds of tensors)
                long[] desc = new long[4 * count];
                int maxBlocks = 1;
                for (int i = 0; i < count; i++) {
                    Tensor x = xs.get(i);
                    long n = x.numel();
                    desc[4 * i] = n == 0 ? 0 : addr(x, "x[" + i + "]", 0, n);
                    desc[4 * i + 1] = n;
                    desc[4 * i + 2] = blocks[i];
                    desc[4 * i + 3] = p;
                    maxBlocks = Math.max(maxBlocks, blocks[i]);
                    p += 8L * blocks[i];
                }
                long d = base + 8L * total;
                try (LongPointer h = new LongPointer(desc)) {
                    Cuda.check(cudart.cudaMemcpyAsync(RawPointer.of(d, 0), h, 8L * desc.length,
                            cudart.cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync(sum of squares table)");
                }
                launch(K, "sum_squares_partial_multi", maxBlocks, count, THREADS, 0, d);
                launch(K, "sum_partials_f64_multi", count, 1, 1024, 0, d, base);
            } else {
                for (int i = 0; i < count; i++) {
                    Tensor x = xs.get(i);
                    long n = x.numel();
                    launch(K, "sum_squares_partial", blocks[i], 1, THREADS, 0, addr(x, "x[" + i + "]", 0, n), n, p);
                    launch(K, "sum_partials_f64", 1, 1, 1024, 0, p, blocks[i], base + 8L * i);
                    p += 8L * blocks[i];
                }
            }
            double[] out = new double[count];
            try (DoublePointer d = new DoublePointer(Math.max(1, count))) {
                Cuda.check(cudart.cudaMemcpyAsync(d, RawPointer.of(base, 0), 8L * count,
                        cudart.cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync(device -> host, sums of squares)");
                syncAndCheck();
                d.get(out);
            }
            return out;
        } finally {
            dispose(partial);
        }
    }

    private double readDouble(long address) {
        try (DoublePointer d = new DoublePointer(1)) {
            Cuda.check(cudart.cudaMemcpyAsync(d, RawPointer.of(address, 0), 8, cudart.cudaMemcpyDeviceToHost, stream),
                    "cudaMemcpyAsync(device -> host, 8 B)");
            syncAndCheck();
            return d.get();
        }
    }

    // ------------------------------------------------------------------ transformer layers

    @Override
    public synchronized void rmsNormForward(Tensor x, Tensor w, float eps, int rows, int dim, Tensor y, Tensor rstd) {
        current();
        if (rows == 0) {
            return;
        }
        long n = (long) rows * dim;
        long xA = addr(x, "x", 0, n);
        long wA = addr(w, "w", 0, dim);
        long yA = addr(y, "y", 0, n);
        long rA = addr(rstd, "rstd", 0, rows);
        int[] lv = rmsNormVec(dim, xA, wA, yA);
        if (lv != null) {
            int rowsPerBlock = THREADS / lv[0];
            launch(K, "rmsnorm_fwd_l" + lv[0] + "v" + lv[1], ceilDiv(rows, rowsPerBlock), 1, THREADS, 0, xA, wA, eps,
                    rows, dim, yA, rA);
            return;
        }
        launch(K, "rmsnorm_fwd", rows, 1, rowThreads(dim), 0, xA, wA, eps, rows, dim, yA, rA);
    }

    /**
     * The vectorised RMSNorm kernels' {lanes per row, float4 per lane} for rows of {@code dim} floats (dim % 4 == 0,
     * at most 1024, every address 16-byte aligned), else null (the block-per-row kernels).
     */
    private static int[] rmsNormVec(int dim, long... addresses) {
        if (dim % 4 != 0 || dim > 1024 || !aligned16(addresses)) {
            return null;
        }
        int d4 = dim / 4;
        int lanes = 4;
        while (lanes < 32 && lanes < d4) {
            lanes *= 2;
        }
        int v = 1;
        while (v * lanes < d4) {
            v *= 2;
        }
        return new int[] {lanes, v};
    }

    /** Row blocks of the vectorised RMSNorm backward (and so dW partials) aimed at: fixed, so the sum order is. */
    private static final int RMSNORM_BWD_BLOCKS = 512;

    private static int rowThreads(int dim) {
        if (dim >= 1024) {
            return 256;
        }
        return Math.max(32, Math.min(256, (dim + 31) / 32 * 32));
    }

    @Override
    public synchronized void rmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, int rows, int dim, Tensor dx,
                                             Tensor dw) {
        current();
        if (rows == 0) {
            return;
        }
        long n = (long) rows * dim;
        long dyA = addr(dy, "dy", 0, n);
        long xA = addr(x, "x", 0, n);
        long rA = addr(rstd, "rstd", 0, rows);
        long wA = addr(w, "w", 0, dim);
        long dxA = addr(dx, "dx", 0, n);
        int[] lv = rmsNormVec(dim, dyA, xA, wA, dxA);
        if (lv != null) {
            // dx and each block's dW partial in one pass over x and dy; then the partials summed in a fixed order
            int groups = THREADS / lv[0];
            int rowsPerBlock = groups * Math.max(1, ceilDiv(rows, groups * RMSNORM_BWD_BLOCKS));
            int blocks = ceilDiv(rows, rowsPerBlock);
            Tensor partial = scratch(DType.F32, blocks * dim);
            try {
                long pA = addr(partial, "partial", 0, (long) blocks * dim);
                launch(K, "rmsnorm_bwd_l" + lv[0] + "v" + lv[1], blocks, 1, THREADS, 4 * groups * dim, dyA, xA, wA,
                        rA, rows, dim, rowsPerBlock, dxA, pA);
                launch2D(K, "sum_chunks_accumulate_2d", ceilDiv(dim, 32), 1, 32, 32, pA, blocks, dim,
                        addr(dw, "dw", 0, dim));
            } finally {
                dispose(partial);
            }
            return;
        }
        launch(K, "rmsnorm_bwd_dx", rows, 1, rowThreads(dim), 0, dyA, xA, wA, rA, rows, dim, dxA);
        int rowsPerChunk = 256;
        int chunks = (rows + rowsPerChunk - 1) / rowsPerChunk;
        Tensor partial = scratch(DType.F32, chunks * dim);
        try {
            long pA = addr(partial, "partial", 0, (long) chunks * dim);
            launch2D(K, "rmsnorm_bwd_dw_partial", (dim + 31) / 32, chunks, 32, 8, dyA, xA, rA, rows, dim,
                    rowsPerChunk, pA);
            launch1D(K, "sum_chunks_accumulate", dim, pA, chunks, dim, addr(dw, "dw", 0, dim));
        } finally {
            dispose(partial);
        }
    }

    @Override
    public synchronized void rope(Tensor x, int tokens, int heads, int headDim, int seqLen, float theta,
                                  boolean inverse) {
        current();
        if (tokens == 0) {
            return;
        }
        int half = headDim / 2;
        String key = theta + "/" + headDim;
        DeviceBuffer freq = ropeFreqs.get(key);
        if (freq == null) {
            float[] invFreq = new float[half];
            for (int i = 0; i < half; i++) {
                invFreq[i] = 1f / (float) Math.pow(theta, (float) (2 * i) / headDim);
            }
            // persistent: allocate outside any scope
            ArrayDeque<CudaScope> hold = new ArrayDeque<>(scopes);
            scopes.clear();
            try {
                freq = allocate(4L * Math.max(1, half));
            } finally {
                scopes.addAll(hold);
            }
            try (FloatPointer h = new FloatPointer(invFreq)) {
                Cuda.check(cudart.cudaMemcpyAsync(ptr(freq, 0), h, 4L * half, cudart.cudaMemcpyHostToDevice, stream),
                        "cudaMemcpyAsync(rope frequencies)");
            }
            ropeFreqs.put(key, freq);
        }
        long n = (long) tokens * heads * headDim;
        long xA = addr(x, "x", 0, n);
        long cells = (long) seqLen * half;
        if (half % 4 == 0 && aligned16(xA) && cells <= ROPE_TABLE_MAX) {
            // cos and sin per (position, i) computed once per (theta, headDim, seqLen) with rope_f32's arithmetic
            String tkey = key + "/" + seqLen;
            DeviceBuffer table = ropeTables.get(tkey);
            if (table == null) {
                ArrayDeque<CudaScope> hold = new ArrayDeque<>(scopes);
                scopes.clear();
                try {
                    table = allocate(8L * cells);
                } finally {
                    scopes.addAll(hold);
                }
                launch1D(K, "rope_table", cells, freq.address(), seqLen, half, table.address(),
                        table.address() + 4L * cells);
                ropeTables.put(tkey, table);
            }
            launch1D(K, "rope_tab_v4", (long) tokens * heads * (half / 4), xA, table.address(),
                    table.address() + 4L * cells, tokens, heads, headDim, seqLen, inverse ? -1f : 1f);
            return;
        }
        launch1D(K, "rope_f32", (long) tokens * half, xA, freq.address(), tokens, heads, headDim,
                seqLen, inverse ? -1f : 1f);
    }

    private static void checkHeads(int qHeads, int kvHeads) {
        if (kvHeads <= 0 || qHeads % kvHeads != 0) {
            throw new IllegalArgumentException("attention: kv heads (" + kvHeads + ") must divide query heads ("
                    + qHeads + ")");
        }
    }

    /**
     * Causal GQA attention (SPI semantics in {@link Backend#attentionForward}); {@link #effectiveAttentionMode} picks
     * the kernels at each call (by default FLASH with {@link GemmPrecision#BF16} and head dim 64 or 128, else GEMM).
     *
     * <p>{@link AttentionMode#FLASH} ({@code flash_attention.cu}, FlashAttention-2 style): one CTA of 8 warps per
     * (block of 128 query rows, batch item, query head), each warp owning 16 rows; K and V tiles of 64 keys are
     * rounded to bf16 into shared memory ([64][D+8], 18 KiB at D=64, 34 KiB at D=128) and the CTA walks the key
     * tiles up to the diagonal (tiles wholly after a warp's rows are skipped, the diagonal tile masked). S = Q K^T and
     * O += P V are {@code mma.sync.m16n8k16} bf16 products with f32 accumulators (Q kept as register fragments, V^T
     * fragments by {@code ldmatrix.trans}); the online softmax (running max and sum, exp2 domain) is f32 and P is
     * rounded to bf16 only as the operand of P V. O and lse = max + log(sum) are written in f32. Error against the
     * f32 reference: bf16 rounding of q, k, v and P (about 4e-3 relative each), so about 1e-2 of the max magnitude.
     * {@link FlashKernels#V2_W8} copies q, k, v to bf16 once per call (scratch, released stream-ordered) and stages
     * the K, V tiles by {@code cp.async} in a ring of 3; {@link FlashKernels#V1} (the tests' reference) rounds while
     * staging. Same bits either way.
     *
     * <p>In {@link AttentionMode#GEMM} mode this is a batched-GEMM version on the tensor cores (with the current
     * {@link GemmPrecision}):
     * per chunk of heads of one batch row, {@code cublasGemmStridedBatchedEx} computes S = scale * Q K^T into a
     * transient [heads, T, T] buffer (bounded by {@link #setAttentionChunkBytes}, default 512 MiB), a row kernel
     * turns S into the causal softmax P in place (f32, {@code -inf} above the diagonal, lse saved), and a second
     * batched GEMM gives O = P V. The T x T buffer lives only inside the call. The full T x T products are computed
     * (twice the causal work) and S makes a round trip through device memory, which FLASH avoids.
     */
    @Override
    public synchronized void attentionForward(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads,
                                              int kvHeads, int headDim, float scale, Tensor out, Tensor lse) {
        current();
        checkHeads(qHeads, kvHeads);
        if (batch == 0 || seqLen == 0) {
            return;
        }
        AttentionMode mode = effectiveAttentionMode(headDim);
        if (mode != AttentionMode.FLASH
                || !attentionForwardFlash(q, k, v, batch, seqLen, qHeads, kvHeads, headDim, scale, out, lse)) {
            // GEMM, or FLASH where the flash kernels cannot take these tensors (see flashUsable)
            attentionForwardGemm(q, k, v, batch, seqLen, qHeads, kvHeads, headDim, scale, out, lse);
        }
    }

    /**
     * Backward of {@link #attentionForward} (mode chosen the same way; lse from any mode serves any other: it is the
     * natural-log log-sum-exp of the scaled scores everywhere). dq, dk and dv are written, not accumulated.
     *
     * <p>{@link AttentionMode#FLASH}: a small kernel writes Di = rowsum(dO * O) (f32); then one CTA of 4 warps per
     * (block of 64 keys, batch item, kv head) recomputes, for every query head of the group and every 64-row (32 at
     * D=128) query block at or after the key block, S^T = K Q^T, P^T = exp(scale S^T - lse), dV += P^T dO,
     * dP^T = V dO^T, dS^T = P^T (dP^T - Di), dK += dS^T Q, and writes dk = scale dK and dv (each owned by one CTA: no
     * atomics, deterministic); a third kernel, one CTA of 4 warps per (block of 64 query rows, batch item, query
     * head), recomputes S, P, dP, dS over the key tiles (64 keys, 32 at D=128) up to the diagonal and writes
     * dq = scale dS K. bf16 operands and f32 accumulation as in the forward pass. These are the
     * {@link FlashKernels#V1} kernels' tiles; {@link FlashKernels#V2_W8} (the kernels that run) copies q, k, v to bf16
     * and a prep kernel writes bf16 dO with Di; its dk/dv and dq kernels stage their streamed tiles by
     * {@code cp.async} in a ring of 3, read B operands by ldmatrix and have 8 warps a CTA (128 key rows per dk/dv CTA,
     * 128 query rows per dq CTA). Same bits as V1.
     *
     * <p>In {@link AttentionMode#GEMM} mode, per chunk of heads: S = scale Q K^T
     * and dP = dO V^T (batched GEMMs), a row kernel writes P = exp(S - lse) (masked) and dS = P (dP - D) scale in
     * place (D = rowsum(dO * O) from a small kernel), then dV += P^T dO and dK += dS^T Q (dk, dv zeroed first, each
     * kv head summed over the query heads of its group in stream order: deterministic) and dQ = dS K. Two transient
     * [heads, T, T] buffers share the chunk budget.
     */
    @Override
    public synchronized void attentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                                               int batch, int seqLen, int qHeads, int kvHeads, int headDim,
                                               float scale, Tensor dq, Tensor dk, Tensor dv) {
        current();
        checkHeads(qHeads, kvHeads);
        if (batch == 0 || seqLen == 0) {
            return;
        }
        AttentionMode mode = effectiveAttentionMode(headDim);
        if (mode != AttentionMode.FLASH || !attentionBackwardFlash(dOut, q, k, v, out, lse, batch, seqLen,
                qHeads, kvHeads, headDim, scale, dq, dk, dv)) {
            // GEMM, or FLASH where the flash kernels cannot take these tensors (see flashUsable)
            attentionBackwardGemm(dOut, q, k, v, out, lse, batch, seqLen, qHeads, kvHeads, headDim, scale, dq, dk, dv);
        }
    }

    /**
     * Row-major strided-batched C_i = alpha op(A_i) op(B_i) + beta C_i (byte addresses, strides in elements), through
     * the column-major C^T = op(B)^T op(A)^T like {@link #gemmEx}.
     */
    private void gemmStrided(boolean transA, boolean transB, int m, int n, int k, float alpha, long a, int lda,
                             long strideA, long b, int ldb, long strideB, float beta, long c, int ldc, long strideC,
                             int count) {
        alphaP.put(alpha);
        betaP.put(beta);
        Cuda.checkCublas(cublas.cublasGemmStridedBatchedEx(cublasHandle, transB ? cublas.CUBLAS_OP_T : cublas.CUBLAS_OP_N,
                transA ? cublas.CUBLAS_OP_T : cublas.CUBLAS_OP_N, n, m, k, alphaP, RawPointer.of(b, 0),
                cudart.CUDA_R_32F, ldb, strideB, RawPointer.of(a, 0), cudart.CUDA_R_32F, lda, strideA, betaP,
                RawPointer.of(c, 0), cudart.CUDA_R_32F, ldc, strideC, count, gemmPrecision.cublasCompute,
                cublas.CUBLAS_GEMM_DEFAULT),
                "cublasGemmStridedBatchedEx(m=" + m + ", n=" + n + ", k=" + k + ", batch=" + count + ", transA="
                        + transA + ", transB=" + transB + ", " + gemmPrecision + ")");
    }

    /**
     * Heads per chunk (nHH query heads of each group times nG kv heads) for {@code buffers} T x T f32 buffers per
     * head under the chunk budget: {nHH, nG}. At least one head.
     */
    private int[] attentionChunk(int seqLen, int group, int kvHeads, int buffers) {
        long perHead = (long) seqLen * seqLen * 4L * buffers;
        long maxHeads = Math.max(1, attentionChunkBytes / perHead);
        int nG = (int) Math.min(kvHeads, maxHeads);
        int nHH = nG == kvHeads ? (int) Math.max(1, Math.min(group, maxHeads / kvHeads)) : 1;
        return new int[] {nHH, nG};
    }

    private DeviceBuffer attentionScratch(long elements) {
        return allocate(elements * 4L);
    }

    private void releaseScratch(DeviceBuffer b) {
        free(b);
        if (b.scope != null) {
            b.scope.buffers.remove(b);
        }
    }

    private void attentionForwardGemm(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads, int kvHeads,
                                      int headDim, float scale, Tensor out, Tensor lse) {
        final int T = seqLen, D = headDim, G = qHeads / kvHeads;
        long nq = (long) batch * T * qHeads * D;
        long nkv = (long) batch * T * kvHeads * D;
        long qA = addr(q, "q", 0, nq), kA = addr(k, "k", 0, nkv), vA = addr(v, "v", 0, nkv);
        long oA = addr(out, "out", 0, nq), lseA = addr(lse, "lse", 0, (long) batch * qHeads * T);
        int[] ch = attentionChunk(T, G, kvHeads, 1);
        long tt = (long) T * T;
        DeviceBuffer sBuf = attentionScratch((long) ch[0] * ch[1] * tt);
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
                            gemmStrided(false, true, T, T, D, scale, qA + 4 * qOff, qHeads * D, (long) G * D,
                                    kA + 4 * kOff, kvHeads * D, D, 0f, sA + 4 * hl * nG * tt, T, tt, nG);
                        }
                        long rows = (long) nHH * nG * T;
                        launch(A, "attn_gemm_softmax", (int) rows, 1, rowThreads(T), 0, sA, T, b, hh0, g0, nG, G,
                                qHeads, lseA);
                        for (int hl = 0; hl < nHH; hl++) {
                            int hh = hh0 + hl;
                            long qOff = (long) b * T * qHeads * D + (long) (g0 * G + hh) * D;
                            long kOff = (long) b * T * kvHeads * D + (long) g0 * D;
                            gemmStrided(false, false, T, D, T, 1f, sA + 4 * hl * nG * tt, T, tt, vA + 4 * kOff,
                                    kvHeads * D, D, 0f, oA + 4 * qOff, qHeads * D, (long) G * D, nG);
                        }
                    }
                }
            }
        } finally {
            releaseScratch(sBuf);
        }
    }

    private void attentionBackwardGemm(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int batch,
                                       int seqLen, int qHeads, int kvHeads, int headDim, float scale, Tensor dq,
                                       Tensor dk, Tensor dv) {
        final int T = seqLen, D = headDim, G = qHeads / kvHeads;
        long nq = (long) batch * T * qHeads * D;
        long nkv = (long) batch * T * kvHeads * D;
        int rowsL = batch * qHeads * T;
        long dOA = addr(dOut, "dOut", 0, nq), qA = addr(q, "q", 0, nq), kA = addr(k, "k", 0, nkv);
        long vA = addr(v, "v", 0, nkv), lseA = addr(lse, "lse", 0, rowsL);
        long dqA = addr(dq, "dq", 0, nq), dkA = addr(dk, "dk", 0, nkv), dvA = addr(dv, "dv", 0, nkv);
        long outA = addr(out, "out", 0, nq);
        Cuda.check(cudart.cudaMemsetAsync(RawPointer.of(dkA, 0), 0, 4 * nkv, stream), "cudaMemsetAsync(dk)");
        Cuda.check(cudart.cudaMemsetAsync(RawPointer.of(dvA, 0), 0, 4 * nkv, stream), "cudaMemsetAsync(dv)");
        int[] ch = attentionChunk(T, G, kvHeads, 2);
        long tt = (long) T * T;
        long chunkElems = (long) ch[0] * ch[1] * tt;
        Tensor di = scratch(DType.F32, rowsL);
        DeviceBuffer sBuf = attentionScratch(chunkElems);
        DeviceBuffer pBuf = attentionScratch(chunkElems);
        try {
            long diA = addr(di, "di", 0, rowsL);
            long warps = (long) batch * T * qHeads;
            launch(A, "attn_bwd_di", blocksFor(warps * 32, THREADS), 1, THREADS, 0, dOA, outA, batch, T, qHeads, D,
                    diA);
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
                            gemmStrided(false, true, T, T, D, scale, qA + qOff, qld, qStr, kA + kOff, kld, D, 0f,
                                    sA + sl, T, tt, nG);
                            gemmStrided(false, true, T, T, D, 1f, dOA + qOff, qld, qStr, vA + kOff, kld, D, 0f,
                                    pA + sl, T, tt, nG);
                        }
                        long rows = (long) nHH * nG * T;
                        launch(A, "attn_gemm_ds", (int) rows, 1, rowThreads(T), 0, sA, pA, T, b, hh0, g0, nG, G,
                                qHeads, lseA, diA, scale);
                        for (int hl = 0; hl < nHH; hl++) {
                            long qOff = 4 * ((long) b * T * qHeads * D + (long) (g0 * G + hh0 + hl) * D);
                            long sl = 4 * hl * nG * tt;
                            // dV_g += P^T dO_h, dK_g += dS^T Q_h (kv head g of each batch item), dQ_h = dS K_g.
                            gemmStrided(true, false, T, D, T, 1f, sA + sl, T, tt, dOA + qOff, qld, qStr, 1f,
                                    dvA + kOff, kld, D, nG);
                            gemmStrided(true, false, T, D, T, 1f, pA + sl, T, tt, qA + qOff, qld, qStr, 1f,
                                    dkA + kOff, kld, D, nG);
                            gemmStrided(false, false, T, D, T, 1f, pA + sl, T, tt, kA + kOff, kld, D, 0f,
                                    dqA + qOff, qld, qStr, nG);
                        }
                    }
                }
            }
        } finally {
            releaseScratch(pBuf);
            releaseScratch(sBuf);
            dispose(di);
        }
    }

    // Tile configuration of flash_attention.cu (its FA_INSTANCES lines): threads = 32 * warps; a forward / dq CTA
    // owns 16 * warps query rows, a dk/dv CTA 16 * warps key rows.
    private static final int FLASH_FWD_WARPS = 8;
    private static final int FLASH_FWD_BN = 64;
    private static final int FLASH_DQ_WARPS = 4;
    private static final int FLASH_DKDV_WARPS = 4;

    private static int flashDqBn(int headDim) {
        return headDim == 64 ? 64 : 32;
    }

    private static int flashDkdvBm(int headDim) {
        return headDim == 64 ? 64 : 32;
    }

    private static int ceilDiv(int a, int b) {
        return (a + b - 1) / b;
    }

    /**
     * Whether the flash kernels can take these tensors: 16-byte aligned addresses (their 16- and 8-byte vector loads
     * and stores; the allocator's blocks are 512-byte aligned) and grid rows within the 65535 limit.
     */
    private static boolean flashUsable(int seqLen, long... addresses) {
        for (long a : addresses) {
            if ((a & 15) != 0) {
                return false;
            }
        }
        return ceilDiv(seqLen, 64) <= 65535;
    }

    private boolean attentionForwardFlash(Tensor q, Tensor k, Tensor v, int batch, int seqLen, int qHeads,
                                          int kvHeads, int headDim, float scale, Tensor out, Tensor lse) {
        final int T = seqLen, D = headDim, ld = D + 8;
        long nq = (long) batch * T * qHeads * D;
        long nkv = (long) batch * T * kvHeads * D;
        long qA = addr(q, "q", 0, nq), kA = addr(k, "k", 0, nkv), vA = addr(v, "v", 0, nkv);
        long oA = addr(out, "out", 0, nq), lseA = addr(lse, "lse", 0, (long) batch * qHeads * T);
        if (!flashUsable(T, qA, kA, vA, oA)) {
            return false;
        }
        int bm = 16 * FLASH_FWD_WARPS;
        if (flashKernels == FlashKernels.V1) {
            launch(FA, "fa_fwd_d" + D, batch * qHeads, ceilDiv(T, bm), 32 * FLASH_FWD_WARPS, 4 * FLASH_FWD_BN * ld, qA,
                    kA, vA, T, qHeads, kvHeads, scale, oA, lseA);
            return true;
        }
        DeviceBuffer q16 = bf16Copy(q, "q", 0, qHeads * D, batch * T, qHeads * D);
        DeviceBuffer k16 = bf16Copy(k, "k", 0, kvHeads * D, batch * T, kvHeads * D);
        DeviceBuffer v16 = bf16Copy(v, "v", 0, kvHeads * D, batch * T, kvHeads * D);
        try {
            launch(FA, "fa_fwd2_d" + D, batch * qHeads, ceilDiv(T, bm),
                    32 * FLASH_FWD_WARPS, 4 * flashKernels.stages * FLASH_FWD_BN * ld,
                    q16.address(), k16.address(), v16.address(), T, qHeads, kvHeads, scale, oA, lseA);
        } finally {
            // stream-ordered: a later user of these blocks queues behind the kernel that reads them
            releaseScratch(q16);
            releaseScratch(k16);
            releaseScratch(v16);
        }
        return true;
    }

    private boolean attentionBackwardFlash(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                                           int batch, int seqLen, int qHeads, int kvHeads, int headDim, float scale,
                                           Tensor dq, Tensor dk, Tensor dv) {
        final int T = seqLen, D = headDim, ld = D + 8;
        long nq = (long) batch * T * qHeads * D;
        long nkv = (long) batch * T * kvHeads * D;
        int rowsL = batch * qHeads * T;
        long dOA = addr(dOut, "dOut", 0, nq), qA = addr(q, "q", 0, nq), kA = addr(k, "k", 0, nkv);
        long vA = addr(v, "v", 0, nkv), lseA = addr(lse, "lse", 0, rowsL), outA = addr(out, "out", 0, nq);
        long dqA = addr(dq, "dq", 0, nq), dkA = addr(dk, "dk", 0, nkv), dvA = addr(dv, "dv", 0, nkv);
        if (!flashUsable(T, dOA, qA, kA, vA, dqA, dkA, dvA)) {
            return false;
        }
        if (flashKernels != FlashKernels.V1) {
            attentionBackwardFlash2(dOA, outA, q, k, v, lseA, batch, T, qHeads, kvHeads, D, scale, dqA, dkA, dvA);
            return true;
        }
        Tensor di = scratch(DType.F32, rowsL);
        try {
            long diA = addr(di, "di", 0, rowsL);
            if ((flashBackwardStages & 1) != 0) {
                launch(FA, "fa_bwd_di", blocksFor((long) rowsL * 32, THREADS), 1, THREADS, 0, dOA, outA, batch, T,
                        qHeads, D, diA);
            }
            int bnKv = 16 * FLASH_DKDV_WARPS, bmKv = flashDkdvBm(D);
            if ((flashBackwardStages & 2) != 0) {
                launch(FA, "fa_bwd_dkdv_d" + D, batch * kvHeads, ceilDiv(T, bnKv), 32 * FLASH_DKDV_WARPS,
                        4 * (bnKv + bmKv) * ld + 8 * bmKv, dOA, qA, kA, vA, lseA, diA, T, qHeads, kvHeads, scale, dkA,
                        dvA);
            }
            int bmQ = 16 * FLASH_DQ_WARPS;
            if ((flashBackwardStages & 4) != 0) {
                launch(FA, "fa_bwd_dq_d" + D, batch * qHeads, ceilDiv(T, bmQ), 32 * FLASH_DQ_WARPS,
                        4 * flashDqBn(D) * ld, dOA, qA, kA, vA, lseA, diA, T, qHeads, kvHeads, scale, dqA);
            }
        } finally {
            dispose(di);
        }
        return true;
    }

    /** The backward of the v2 {@link FlashKernels}: bf16 copies, dO copy with Di, dk/dv, dq. */
    private void attentionBackwardFlash2(long dOA, long outA, Tensor q, Tensor k, Tensor v, long lseA, int batch,
                                         int T, int qHeads, int kvHeads, int D, float scale, long dqA, long dkA,
                                         long dvA) {
        final int ld = D + 8, rowsL = batch * qHeads * T;
        String suf = flashKernels.backwardSuffix;
        int warps = flashKernels.backwardWarps, stages = flashKernels.stages;
        final int rows = batch * T, qCols = qHeads * D, kvCols = kvHeads * D;
        DeviceBuffer di = allocate(4L * rowsL);
        DeviceBuffer dO16 = allocate(2L * rows * qCols);
        boolean prep = (flashBackwardStages & 1) != 0;  // else (timing hook) the copies are left unwritten
        DeviceBuffer q16 = prep ? bf16Copy(q, "q", 0, qCols, rows, qCols) : allocate(2L * rows * qCols);
        DeviceBuffer k16 = prep ? bf16Copy(k, "k", 0, kvCols, rows, kvCols) : allocate(2L * rows * kvCols);
        DeviceBuffer v16 = prep ? bf16Copy(v, "v", 0, kvCols, rows, kvCols) : allocate(2L * rows * kvCols);
        try {
            long diA = di.address();
            if (prep) {
                launch(FA, "fa_bwd_prep", blocksFor((long) rowsL * 32, THREADS), 1, THREADS, 0, dOA, outA, batch, T,
                        qHeads, D, diA, dO16.address());
            }
            long dO16A = dO16.address(), q16A = q16.address(), k16A = k16.address(), v16A = v16.address();
            int bnKv = 16 * warps, bmKv = flashDkdvBm(D);
            if ((flashBackwardStages & 2) != 0) {
                launch(FA, "fa_bwd_dkdv2" + suf + "_d" + D, batch * kvHeads, ceilDiv(T, bnKv), 32 * warps,
                        2 * (2 * bnKv + 2 * stages * bmKv) * ld + 8 * stages * bmKv, dO16A, q16A, k16A, v16A, lseA,
                        diA, T, qHeads, kvHeads, scale, dkA, dvA);
            }
            int bmQ = 16 * warps;
            if ((flashBackwardStages & 4) != 0) {
                launch(FA, "fa_bwd_dq2" + suf + "_d" + D, batch * qHeads, ceilDiv(T, bmQ), 32 * warps,
                        4 * stages * flashDqBn(D) * ld, dO16A, q16A, k16A, v16A, lseA, diA, T, qHeads, kvHeads, scale,
                        dqA);
            }
        } finally {
            // stream-ordered: a later user of these blocks queues behind the kernels that read them
            releaseScratch(di);
            releaseScratch(dO16);
            releaseScratch(q16);
            releaseScratch(k16);
            releaseScratch(v16);
        }
    }

    @Override
    public synchronized void siluMulForward(Tensor gate, Tensor up, Tensor out, int off, int n) {
        current();
        if (n == 0) {
            return;
        }
        long g = addr(gate, "gate", off, n), u = addr(up, "up", off, n);
        long o16 = bf16Target(out, off, n);
        if (o16 != 0 && aligned16(g, u) && o16 % 8 == 0) {
            bf16Writes++;
            launch1D(K, "silu_mul_fwd_x4_bf16", Math.max(n / 4, n % 4), g, u, o16, n);
            return;
        }
        long o = addr(out, "out", off, n);
        if (aligned16(g, u, o)) {
            launch1D(K, "silu_mul_fwd_x4", Math.max(n / 4, n % 4), g, u, o, n);
        } else {
            launch1D(K, "silu_mul_fwd", n, g, u, o, n);
        }
    }

    @Override
    public synchronized void siluMulBackward(Tensor dOut, Tensor gate, Tensor up, Tensor dGate, Tensor dUp, int off,
                                             int n) {
        current();
        if (n == 0) {
            return;
        }
        long d = addr(dOut, "dOut", off, n), g = addr(gate, "gate", off, n), u = addr(up, "up", off, n);
        long dg16 = bf16Target(dGate, off, n), du16 = bf16Target(dUp, off, n);
        if (dg16 != 0 && du16 != 0 && aligned16(d, g, u) && dg16 % 8 == 0 && du16 % 8 == 0) {
            bf16Writes++;
            launch1D(K, "silu_mul_bwd_x4_bf16", Math.max(n / 4, n % 4), d, g, u, dg16, du16, n);
            return;
        }
        long dg = addr(dGate, "dGate", off, n), du = addr(dUp, "dUp", off, n);
        if (aligned16(d, g, u, dg, du)) {
            launch1D(K, "silu_mul_bwd_x4", Math.max(n / 4, n % 4), d, g, u, dg, du, n);
        } else {
            launch1D(K, "silu_mul_bwd", n, d, g, u, dg, du, n);
        }
    }

    @Override
    public synchronized void embeddingForward(Tensor table, Tensor ids, int tokens, int hidden, Tensor out) {
        current();
        requireI32(ids, "ids");
        if (tokens == 0) {
            return;
        }
        int rows = table.numel() / hidden;
        long n = (long) tokens * hidden;
        launch1D(K, "embedding_fwd", n, addr(table, "table", 0, (long) rows * hidden), rows, addr(ids, "ids", 0, tokens),
                tokens, hidden, addr(out, "out", 0, n), errorWord.address());
    }

    @Override
    public synchronized void embeddingBackward(Tensor dOut, Tensor ids, int tokens, int hidden, Tensor dTable) {
        current();
        requireI32(ids, "ids");
        if (tokens == 0) {
            return;
        }
        int rows = dTable.numel() / hidden;
        long n = (long) tokens * hidden;
        launch1D(K, "embedding_bwd", n, addr(dOut, "dOut", 0, n), addr(ids, "ids", 0, tokens), tokens, hidden,
                addr(dTable, "dTable", 0, (long) rows * hidden), rows, errorWord.address());
    }

    @Override
    public synchronized double crossEntropy(Tensor logits, Tensor targets, int rows, int vocab, float gradScale,
                                            Tensor dLogits) {
        current();
        requireI32(targets, "targets");
        if (rows == 0) {
            syncAndCheck();
            return 0.0;
        }
        long n = (long) rows * vocab;
        Tensor rowLoss = scratch(DType.I64, rows + 1); // doubles
        try {
            long rl = addr(rowLoss, "rowLoss", 0, rows + 1);
            long la = addr(logits, "logits", 0, n), da = addr(dLogits, "dLogits", 0, n);
            boolean vec = vocab % 4 == 0 && vocab >= 4096 && aligned16(la, da);
            launch(K, vec ? "cross_entropy_fwd_bwd_v4" : "cross_entropy_fwd_bwd", rows, 1,
                    vocab >= 4096 ? 512 : rowThreads(vocab), 0, la, addr(targets, "targets", 0, rows), rows, vocab,
                    gradScale, da, rl, errorWord.address());
            launch(K, "sum_partials_f64", 1, 1, 1024, 0, rl, rows, rl + 8L * rows);
            return readDouble(rl + 8L * rows);
        } finally {
            dispose(rowLoss);
        }
    }

    // ------------------------------------------------------------------ mixture of experts

    @Override
    public synchronized void softmaxRows(Tensor x, int rows, int cols, Tensor out) {
        current();
        if (rows == 0) {
            return;
        }
        long n = (long) rows * cols;
        launch(K, "softmax_rows", blocksFor(32L * rows, THREADS), 1, THREADS, 0, addr(x, "x", 0, n), rows, cols,
                addr(out, "out", 0, n));
    }

    @Override
    public synchronized void routerTopK(Tensor probs, int rows, int experts, int k, boolean normalize, Tensor topIdx,
                                        Tensor topVal, Tensor weights) {
        current();
        requireI32(topIdx, "topIdx");
        if (rows == 0) {
            return;
        }
        if (k > experts) {
            throw new IllegalArgumentException("routerTopK: k (" + k + ") is larger than the number of experts ("
                    + experts + ")");
        }
        long nk = (long) rows * k;
        if (experts <= 32 * TOPK_EPL) {
            launch(K, "router_topk_warp", blocksFor(32L * rows, THREADS), 1, THREADS, 0,
                    addr(probs, "probs", 0, (long) rows * experts), rows, experts, k, normalize ? 1 : 0,
                    addr(topIdx, "topIdx", 0, nk), addr(topVal, "topVal", 0, nk), addr(weights, "weights", 0, nk));
            return;
        }
        launch(K, "router_topk", blocksFor(rows, 128), 1, 128, 0, addr(probs, "probs", 0, (long) rows * experts), rows,
                experts, k, normalize ? 1 : 0, addr(topIdx, "topIdx", 0, nk), addr(topVal, "topVal", 0, nk),
                addr(weights, "weights", 0, nk));
    }

    /**
     * On the device: {@code expert_counts} tallies each expert's slots (per-block tallies in shared memory), then
     * {@code expert_rows} (a block per expert) writes each expert's slots in slot order from the prefix sum of the
     * counts on; only the E counts come back to the host, instead of the N * K ids going out and a permutation of as
     * many coming back, with a host sort between the two (the device idles while the host sorts).
     */
    @Override
    public synchronized int[] groupByExpert(Tensor expertOfSlot, int n, int experts, Tensor slotOfRow) {
        current();
        requireI32(expertOfSlot, "expertOfSlot");
        requireI32(slotOfRow, "slotOfRow");
        if (experts <= 0) {
            throw new IllegalArgumentException("groupByExpert: " + experts + " experts");
        }
        int[] counts = new int[experts];
        if (n == 0) {
            return counts;
        }
        long ids = addr(expertOfSlot, "expertOfSlot", 0, n);
        long rows = addr(slotOfRow, "slotOfRow", 0, n);
        Tensor c = scratch(DType.I32, experts);
        try {
            long ca = addr(c, "counts", 0, experts);
            Cuda.check(cudart.cudaMemsetAsync(RawPointer.of(ca, 0), 0, 4L * experts, stream), "cudaMemsetAsync(counts)");
            launch(K, "expert_counts", blocksFor(n, THREADS), 1, THREADS, 4 * experts, ids, (long) n, experts, ca,
                    errorWord.address());
            launch(K, "expert_rows", experts, 1, 1024, 0, ids, (long) n, experts, ca, rows);
            try (IntPointer h = new IntPointer(experts)) {
                Cuda.check(cudart.cudaMemcpyAsync(h, RawPointer.of(ca, 0), 4L * experts, cudart.cudaMemcpyDeviceToHost,
                        stream), "cudaMemcpyAsync(expert counts -> host)");
                syncAndCheck(); // an expert id outside [0, experts) throws here, naming it
                h.get(counts);
            }
        } finally {
            dispose(c);
        }
        return counts;
    }

    @Override
    public synchronized void routerStats(Tensor topIdx, Tensor probs, int rows, int experts, int k, double[] stats) {
        current();
        requireI32(topIdx, "topIdx");
        if (stats.length < 2 * experts) {
            throw new IllegalArgumentException("routerStats: stats has " + stats.length + " entries, needs 2E = "
                    + 2 * experts);
        }
        Tensor acc = scratch(DType.I64, 2 * experts); // doubles
        try {
            long a = addr(acc, "stats", 0, 2L * experts);
            Cuda.check(cudart.cudaMemsetAsync(RawPointer.of(a, 0), 0, 16L * experts, stream), "cudaMemsetAsync(stats)");
            long nk = (long) rows * k;
            if (nk > 0) {
                launch1D(K, "router_stats_counts", nk, addr(topIdx, "topIdx", 0, nk), (int) nk, experts, a,
                        errorWord.address());
                launch(K, "router_stats_colsum", experts, 1, THREADS, 0, addr(probs, "probs", 0, (long) rows * experts),
                        rows, experts, a);
            }
            try (DoublePointer h = new DoublePointer(2L * experts)) {
                Cuda.check(cudart.cudaMemcpyAsync(h, RawPointer.of(a, 0), 16L * experts, cudart.cudaMemcpyDeviceToHost,
                        stream), "cudaMemcpyAsync(stats -> host)");
                syncAndCheck();
                for (int i = 0; i < 2 * experts; i++) {
                    stats[i] += h.get(i);
                }
            }
        } finally {
            dispose(acc);
        }
    }

    @Override
    public synchronized void routerBackward(Tensor dWeights, Tensor topIdx, Tensor topVal, Tensor probs,
                                            Tensor auxGrad, int rows, int experts, int k, boolean normalize,
                                            Tensor dLogits) {
        current();
        requireI32(topIdx, "topIdx");
        if (rows == 0) {
            return;
        }
        long nk = (long) rows * k;
        long ne = (long) rows * experts;
        int warps = 4;
        launch(K, "router_bwd", (rows + warps - 1) / warps, 1, 32 * warps, 4 * warps * experts,
                addr(dWeights, "dWeights", 0, nk), addr(topIdx, "topIdx", 0, nk), addr(topVal, "topVal", 0, nk),
                addr(probs, "probs", 0, ne), addr(auxGrad, "auxGrad", 0, experts), rows, experts, k,
                normalize ? 1 : 0, addr(dLogits, "dLogits", 0, ne));
    }

    /** router_topk_warp's experts per lane (TOPK_EPL in kernels.cu). */
    private static final int TOPK_EPL = 8;

    /** Whether every address is 16-byte aligned (float4 loads and stores). */
    private static boolean aligned16(long... addresses) {
        for (long a : addresses) {
            if (a % 16 != 0) {
                return false;
            }
        }
        return true;
    }

    /** 1 when rows of {@code width} floats at these base addresses can move as float4 (16-byte aligned rows). */
    private static int rowVector(int width, long a, long b) {
        return width % 4 == 0 && a % 16 == 0 && b % 16 == 0 ? 1 : 0;
    }

    /** Threads for one row copy: one per float4 (or float), a multiple of 32, at most 256. */
    private static int rowThreadsFor(int width, int vec) {
        int units = vec == 1 ? width / 4 : width;
        return Math.max(32, Math.min(256, (units + 31) / 32 * 32));
    }

    @Override
    public synchronized void gatherRows(Tensor src, Tensor index, int n, int width, int divisor, Tensor dst) {
        current();
        requireI32(index, "index");
        if (n == 0 || width == 0) {
            return;
        }
        int srcRows = src.numel() / width;
        long from = addr(src, "src", 0, (long) srcRows * width);
        long to16 = bf16Target(dst, 0, (long) n * width);
        if (to16 != 0 && width % 4 == 0 && from % 16 == 0 && to16 % 8 == 0) {
            bf16Writes++;
            launch(K, "gather_rows_warp_bf16", blocksFor(32L * n, THREADS), 1, THREADS, 0, from, srcRows,
                    addr(index, "index", 0, n), n, width, divisor, to16, errorWord.address());
            return;
        }
        long to = addr(dst, "dst", 0, (long) n * width);
        int vec = rowVector(width, from, to);
        if (vec == 1) {
            launch(K, "gather_rows_warp", blocksFor(32L * n, THREADS), 1, THREADS, 0, from, srcRows,
                    addr(index, "index", 0, n), n, width, divisor, to, errorWord.address());
            return;
        }
        launch(K, "gather_rows", n, 1, rowThreadsFor(width, vec), 0, from, srcRows, addr(index, "index", 0, n), n,
                width, divisor, to, errorWord.address(), vec);
    }

    @Override
    public synchronized void scatterRows(Tensor src, Tensor index, int n, int width, Tensor dst) {
        current();
        requireI32(index, "index");
        if (n == 0 || width == 0) {
            return;
        }
        int dstRows = dst.numel() / width;
        long from = addr(src, "src", 0, (long) n * width);
        long to = addr(dst, "dst", 0, (long) dstRows * width);
        int vec = rowVector(width, from, to);
        if (vec == 1) {
            launch(K, "scatter_rows_warp", blocksFor(32L * n, THREADS), 1, THREADS, 0, from,
                    addr(index, "index", 0, n), n, width, to, dstRows, errorWord.address());
            return;
        }
        launch(K, "scatter_rows", n, 1, rowThreadsFor(width, vec), 0, from, addr(index, "index", 0, n), n, width, to,
                dstRows, errorWord.address(), vec);
    }

    @Override
    public synchronized void moeCombine(Tensor slots, Tensor weights, int tokens, int k, int width, Tensor y) {
        current();
        if (tokens == 0 || width == 0) {
            return;
        }
        long nt = (long) tokens * width;
        long sa = addr(slots, "slots", 0, nt * k), wa = addr(weights, "weights", 0, (long) tokens * k);
        long ya = addr(y, "y", 0, nt);
        if (width % 4 == 0 && aligned16(sa, ya)) {
            launch1D(K, "moe_combine_v4", nt / 4, sa, wa, tokens, k, width, ya);
        } else {
            launch1D(K, "moe_combine", nt, sa, wa, tokens, k, width, ya);
        }
    }

    @Override
    public synchronized void moeCombineBackward(Tensor dy, Tensor slots, Tensor weights, int tokens, int k, int width,
                                                Tensor dSlots, Tensor dWeights) {
        current();
        if (tokens == 0 || k == 0) {
            return;
        }
        long nt = (long) tokens * width;
        long ns = (long) tokens * k;
        long dya = addr(dy, "dy", 0, nt), sa = addr(slots, "slots", 0, ns * width);
        long wa = addr(weights, "weights", 0, ns), dsa = addr(dSlots, "dSlots", 0, ns * width);
        long dwa = addr(dWeights, "dWeights", 0, ns);
        if (width % 4 == 0 && aligned16(dya, sa, dsa)) {
            launch(K, "moe_combine_bwd_warp", blocksFor(32L * ns, THREADS), 1, THREADS, 0, dya, sa, wa, tokens, k,
                    width, dsa, dwa);
        } else {
            launch(K, "moe_combine_bwd", (int) ns, 1, rowThreads(width), 0, dya, sa, wa, tokens, k, width, dsa, dwa);
        }
    }

    @Override
    public synchronized void sumSlots(Tensor src, int tokens, int k, int width, Tensor dst) {
        current();
        if (tokens == 0 || width == 0) {
            return;
        }
        long nt = (long) tokens * width;
        long sa = addr(src, "src", 0, nt * k), da = addr(dst, "dst", 0, nt);
        if (width % 4 == 0 && aligned16(sa, da)) {
            launch1D(K, "sum_slots_v4", nt / 4, sa, tokens, k, width, da);
        } else {
            launch1D(K, "sum_slots", nt, sa, tokens, k, width, da);
        }
    }

    // ------------------------------------------------------------------ optimizer

    @Override
    public synchronized void adamw(Tensor param, Tensor grad, Tensor m, Tensor v, int n, float lr, float beta1,
                                   float beta2, float eps, float weightDecay, long step) {
        current();
        if (n == 0) {
            return;
        }
        AdamW.Coefficients c = AdamW.Coefficients.of(lr, beta1, beta2, weightDecay, step);
        long pa = addr(param, "param", 0, n), ga = addr(grad, "grad", 0, n), ma = addr(m, "m", 0, n);
        long va = addr(v, "v", 0, n);
        boolean vec = aligned16(pa, ga, ma, va);
        launch1D(K, vec ? "adamw_f32x4" : "adamw_f32", vec ? Math.max(n / 4, n % 4) : n, pa, ga, ma, va, n, c.decay(),
                weightDecay != 0f ? 1 : 0, c.w1(), beta2, c.w2(), c.stepSize(), c.bc2Sqrt(), eps);
    }

    @Override
    public String toString() {
        return "CudaBackend(" + name + ", " + deviceName + ", " + kernels.arch() + ")";
    }
}
