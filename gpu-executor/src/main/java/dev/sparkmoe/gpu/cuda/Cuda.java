package dev.sparkmoe.gpu.cuda;

import org.bytedeco.cuda.global.cublas;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.cuda.global.nvrtc;
import org.bytedeco.javacpp.BytePointer;
import org.bytedeco.javacpp.Loader;
import org.bytedeco.javacpp.PointerPointer;

/**
 * Status-code checks for every native call of the CUDA backend (DESIGN.md convention 9): each one turns a non-zero
 * status into a {@link CudaException} that names the call and decodes the code (cudaGetErrorName/String,
 * cuGetErrorName/String, nvrtcGetErrorString, cublasGetStatusName/String). Nothing is dropped.
 *
 * <p>Also the availability probe used by tests and backend selection: {@link #available()} loads the JavaCPP
 * bindings and asks cudart for a device, and never throws.
 */
public final class Cuda {
    private Cuda() {
    }

    /** Checks a CUDA runtime status (cudaError_t). */
    public static void check(int status, String call) {
        if (status != cudart.cudaSuccess) {
            throw new CudaException("cudart", call, status, runtimeName(status) + ": " + runtimeString(status),
                    hint(status));
        }
    }

    /** Checks a CUDA driver status (CUresult). */
    public static void checkDriver(int status, String call) {
        if (status != cudart.CUDA_SUCCESS) {
            throw new CudaException("driver", call, status, driverDecode(status), hint(status));
        }
    }

    /** Checks an NVRTC status (nvrtcResult). */
    public static void checkNvrtc(int status, String call) {
        if (status != nvrtc.NVRTC_SUCCESS) {
            String s;
            try {
                BytePointer p = nvrtc.nvrtcGetErrorString(status);
                s = p == null ? "unknown" : p.getString();
            } catch (Throwable t) {
                s = "undecodable: " + t;
            }
            throw new CudaException("nvrtc", call, status, s, null);
        }
    }

    /** Checks a cuBLAS status (cublasStatus_t). */
    public static void checkCublas(int status, String call) {
        if (status != cublas.CUBLAS_STATUS_SUCCESS) {
            throw new CudaException("cublas", call, status, cublasName(status), status == cublas.CUBLAS_STATUS_NOT_SUPPORTED
                    ? "this cuBLAS does not support the requested combination (shape, layout, compute type)" : null);
        }
    }

    /** A status name for a cuBLAS status, decoded by cuBLAS itself where possible. */
    public static String cublasName(int status) {
        try {
            BytePointer n = cublas.cublasGetStatusName(status);
            BytePointer s = cublas.cublasGetStatusString(status);
            return (n == null ? "?" : n.getString()) + ": " + (s == null ? "?" : s.getString());
        } catch (Throwable t) {
            switch (status) {
                case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
                case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
                case 7: return "CUBLAS_STATUS_INVALID_VALUE";
                case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
                case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
                case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
                case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
                case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
                case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
                default: return "cuBLAS status " + status;
            }
        }
    }

    static String runtimeName(int status) {
        try {
            BytePointer p = cudart.cudaGetErrorName(status);
            return p == null ? "?" : p.getString();
        } catch (Throwable t) {
            return "?";
        }
    }

    static String runtimeString(int status) {
        try {
            BytePointer p = cudart.cudaGetErrorString(status);
            return p == null ? "?" : p.getString();
        } catch (Throwable t) {
            return "?";
        }
    }

    static String driverDecode(int status) {
        try (PointerPointer<BytePointer> name = new PointerPointer<>(1); PointerPointer<BytePointer> str = new PointerPointer<>(1)) {
            int a = cudart.cuGetErrorName(status, name);
            int b = cudart.cuGetErrorString(status, str);
            String n = a == 0 && name.get(0) != null ? name.getString(0) : "?";
            String s = b == 0 && str.get(0) != null ? str.getString(0) : "?";
            return n + ": " + s;
        } catch (Throwable t) {
            return "CUresult " + status;
        }
    }

    private static String hint(int status) {
        if (status == cudart.cudaErrorMemoryAllocation) {
            return "the device is out of memory: release tensors, close scopes, or empty the allocator's cache";
        }
        if (status == cudart.cudaErrorInsufficientDriver) {
            return "the driver is older than the CUDA runtime found through LD_LIBRARY_PATH";
        }
        if (status == cudart.cudaErrorNoDevice) {
            return "no CUDA device is visible (CUDA_VISIBLE_DEVICES?)";
        }
        return null;
    }

    private static volatile String unavailableReason;
    private static volatile Boolean available;

    /**
     * True when the CUDA bindings load and at least one device is visible. Loads with
     * {@code org.bytedeco.javacpp.pathsFirst} semantics as configured by the caller; never throws.
     */
    public static boolean available() {
        Boolean a = available;
        if (a != null) {
            return a;
        }
        synchronized (Cuda.class) {
            if (available != null) {
                return available;
            }
            boolean ok;
            try {
                Loader.load(cudart.class);
                int[] count = new int[1];
                int st = cudart.cudaGetDeviceCount(count);
                if (st != cudart.cudaSuccess) {
                    unavailableReason = "cudaGetDeviceCount returned " + st + " (" + runtimeName(st) + ")";
                    ok = false;
                } else if (count[0] < 1) {
                    unavailableReason = "no CUDA device";
                    ok = false;
                } else {
                    ok = true;
                }
            } catch (Throwable t) {
                unavailableReason = "CUDA libraries did not load: " + t;
                ok = false;
            }
            available = ok;
            return ok;
        }
    }

    /** Why {@link #available()} said no (null when it said yes or was not asked). */
    public static String unavailableReason() {
        return unavailableReason;
    }
}
