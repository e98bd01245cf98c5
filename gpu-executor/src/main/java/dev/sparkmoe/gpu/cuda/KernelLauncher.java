package dev.sparkmoe.gpu.cuda;

import org.bytedeco.cuda.cudart.CUfunc_st;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.Pointer;
import org.bytedeco.javacpp.PointerPointer;

import java.util.HashMap;
import java.util.Map;

/**
 * Launches the NVRTC-compiled kernels of a {@link CudaBackend} ({@link KernelLibrary} compiles and caches them) on
 * its compute stream through the driver API: scalar arguments packed one per 8-byte slot of a reused buffer, the
 * dynamic shared-memory limit of a kernel raised once where it asks for more than the default 48 KB; plus the launch
 * geometry every part shares. Kernels that take one struct by value (the grouped GEMM, its operand cast, the
 * part-wise conversions) keep their own argument buffers and launch through {@link #function}. Called under the
 * backend's lock.
 */
final class KernelLauncher {
    /** The kernel sources (resources of this package), one per concern; each part launches from its own. */
    static final String ELEMENTWISE = "elementwise.cu";
    static final String NORM_ROPE = "norm_rope.cu";
    static final String EMBEDDING_LOSS = "embedding_loss.cu";
    static final String MOE_ROUTING = "moe_routing.cu";
    static final String ADAMW = "adamw.cu";
    /** f32 to bf16 and back: Elementwise's convert, FlashAttention's operand copies, Bf16Parts. */
    static final String BF16_CONVERSIONS = "bf16_conversions.cu";
    /** The k == 0 case of a GEMM (CublasGemm, GroupedGemm). */
    static final String GEMM_SCALE = "gemm_scale.cu";
    static final String ATTENTION = "attention.cu";
    static final String FLASH_ATTENTION = "flash_attention.cu";
    static final String GROUPED_GEMM = "grouped_gemm_bf16.cu";
    /** The wgmma grouped GEMM, compiled for sm_90a ({@link KernelLibrary#arch(String)}). */
    static final String GROUPED_GEMM_SM90 = "grouped_gemm_sm90.cu";
    /** Threads per block of the element-wise kernels. */
    static final int THREADS = 256;

    private final KernelLibrary kernels;
    private final CudaDevice device;
    private final BytePointer argBytes = new BytePointer(8 * 32);
    private final PointerPointer<Pointer> argPtrs = new PointerPointer<>(32);
    private final Map<String, Boolean> sharedRaised = new HashMap<>();

    KernelLauncher(KernelLibrary kernels, CudaDevice device) {
        this.kernels = kernels;
        this.device = device;
        for (int i = 0; i < 32; i++) {
            argPtrs.put(i, RawPointer.of(argBytes.address() + 8L * i, 0));
        }
    }

    /** "sm_90" and the like. */
    String arch() {
        return kernels.arch();
    }

    /** The compute capability's major number. */
    int smMajor() {
        return kernels.smMajor();
    }

    /** The kernel {@code kernel} of source {@code file}, compiled and loaded on first use. */
    CUfunc_st function(String file, String kernel) {
        return kernels.function(file, kernel);
    }

    /** Lets {@code f} take {@code sharedBytes} of dynamic shared memory (the attribute is set once per size). */
    void raiseSharedOnce(String file, String kernel, CUfunc_st f, int sharedBytes) {
        if (sharedRaised.putIfAbsent(file + "#" + kernel + "#" + sharedBytes, true) == null) {
            Cuda.checkDriver(cudart.cuFuncSetAttribute(f, cudart.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    sharedBytes), "cuFuncSetAttribute(" + kernel + ", max dynamic shared = " + sharedBytes + ")");
        }
    }

    static int blocksFor(long n, int threads) {
        long b = (n + threads - 1) / threads;
        return (int) Math.max(1, Math.min(b, 65535L * 16));
    }

    /** One thread per element (grid-stride beyond 65535 x 16 blocks), {@link #THREADS} a block. */
    void launch1D(String file, String kernel, long n, Object... args) {
        launch(file, kernel, blocksFor(n, THREADS), 1, THREADS, 0, args);
    }

    /** Launches {@code kernel} with args packed one per 8-byte slot (Integer, Long, Float, Double). */
    void launch(String file, String kernel, int gridX, int gridY, int block, int sharedBytes, Object... args) {
        if (args.length > 32) {
            throw new IllegalArgumentException("too many kernel arguments");
        }
        CUfunc_st f = kernels.function(file, kernel);
        if (sharedBytes > 48 * 1024) {
            raiseSharedOnce(file, kernel, f, sharedBytes);
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
        Cuda.checkDriver(cudart.cuLaunchKernel(f, gridX, gridY, 1, block, 1, 1, sharedBytes, device.stream(), argPtrs,
                (PointerPointer<?>) null), "cuLaunchKernel(" + kernel + ", grid " + gridX + "x" + gridY + ", block "
                + block + ", shared " + sharedBytes + ")");
    }

    /** A launch with a two-dimensional block (bx x by threads) and no dynamic shared memory. */
    void launch2D(String file, String kernel, int gridX, int gridY, int bx, int by, Object... args) {
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
        Cuda.checkDriver(cudart.cuLaunchKernel(f, gridX, gridY, 1, bx, by, 1, 0, device.stream(), argPtrs,
                (PointerPointer<?>) null), "cuLaunchKernel(" + kernel + ")");
    }

    static int ceilDiv(int a, int b) {
        return (a + b - 1) / b;
    }

    /** Threads for a block that owns one row of {@code dim} elements: a multiple of 32, at most 256. */
    static int rowThreads(int dim) {
        if (dim >= 1024) {
            return 256;
        }
        return Math.max(32, Math.min(256, (dim + 31) / 32 * 32));
    }

    /** Whether every address is 16-byte aligned (float4 loads and stores). */
    static boolean aligned16(long... addresses) {
        for (long a : addresses) {
            if (a % 16 != 0) {
                return false;
            }
        }
        return true;
    }
}
