package dev.sparkmoe.gpu.cuda;

import dev.sparkmoe.core.tensor.DType;
import dev.sparkmoe.core.tensor.Tensor;
import org.bytedeco.cuda.cublas.cublasContext;
import org.bytedeco.cuda.global.cublas;
import org.bytedeco.cuda.global.cudart;
import org.bytedeco.javacpp.FloatPointer;

/**
 * Dense matrix products through cuBLAS on the compute stream: row-major C = op(A) op(B) is computed as the
 * column-major C^T = op(B)^T op(A)^T by {@code cublasGemmEx} (strided-batched: {@code cublasGemmStridedBatchedEx})
 * with f32 storage and the compute type of the current {@link CudaBackend.GemmPrecision}, which the grouped GEMM and
 * attention also consult; on BF16 operands (both A and B, C in F32) with bf16 storage and f32 accumulation. Called
 * under the backend's lock.
 */
final class CublasGemm {
    private static final String K = KernelLauncher.GEMM_SCALE;

    private final CudaMemory memory;
    private final KernelLauncher launcher;
    private final cublasContext handle;
    private final FloatPointer alphaP = new FloatPointer(1);
    private final FloatPointer betaP = new FloatPointer(1);
    private CudaBackend.GemmPrecision precision = CudaBackend.GemmPrecision.F32;

    /** Creates the cuBLAS handle on the device's stream (the stream must exist). */
    CublasGemm(CudaDevice device, CudaMemory memory, KernelLauncher launcher) {
        this.memory = memory;
        this.launcher = launcher;
        this.handle = new cublasContext();
        Cuda.checkCublas(cublas.cublasCreate_v2(handle), "cublasCreate");
        Cuda.checkCublas(cublas.cublasSetStream_v2(handle, device.stream()), "cublasSetStream");
        Cuda.checkCublas(cublas.cublasSetMathMode(handle, cublas.CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    }

    CudaBackend.GemmPrecision precision() {
        return precision;
    }

    void setPrecision(CudaBackend.GemmPrecision p) {
        this.precision = p;
    }

    /** The {@code what} operand [rows x cols] at {@code off} with row stride {@code ld} must lie inside {@code t}. */
    static void checkSpan(String what, Tensor t, int off, int rows, int cols, int ld) {
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

    /** {@link dev.sparkmoe.core.backend.Backend#gemm}; k == 0 scales C by beta. */
    void gemm(boolean transA, boolean transB, int m, int n, int k, float alpha, Tensor a, int aOff, int lda, Tensor b,
              int bOff, int ldb, float beta, Tensor c, int cOff, int ldc) {
        if (m == 0 || n == 0) {
            return;
        }
        checkSpan("C", c, cOff, m, n, ldc);
        if (k == 0 && c.dtype() != DType.F32) {
            throw new IllegalArgumentException("gemm with k = 0 scales C by beta, which runs on F32 C only; C is "
                    + c + " (make C F32, or do not call a GEMM with an empty inner dimension)");
        }
        if (k == 0) {
            launcher.launch1D(K, "scale_rows_f32", (long) m * n, memory.addr(c, "C", cOff, 0), m, n, ldc, beta);
            return;
        }
        checkSpan("A", a, aOff, transA ? k : m, transA ? m : k, lda);
        checkSpan("B", b, bOff, transB ? n : k, transB ? k : n, ldb);
        if (a.dtype() == DType.BF16 || b.dtype() == DType.BF16) {
            if (a.dtype() != DType.BF16 || b.dtype() != DType.BF16
                    || c.dtype() != DType.F32 && c.dtype() != DType.BF16) {
                throw new IllegalArgumentException("gemm on " + a.dtype() + " A, " + b.dtype() + " B and "
                        + c.dtype() + " C: bf16 operands go in pairs (both A and B BF16, C F32 or BF16); convert the "
                        + "other operand to BF16 first (Backend.convert)");
            }
            boolean c16 = c.dtype() == DType.BF16;
            cublasGemmEx(transA, transB, m, n, k, alpha, memory.addrOf(a, DType.BF16, "A", aOff, 0), lda,
                    memory.addrOf(b, DType.BF16, "B", bOff, 0), ldb, beta,
                    c16 ? memory.addrOf(c, DType.BF16, "C", cOff, 0) : memory.addr(c, "C", cOff, 0), ldc,
                    cudart.CUDA_R_16BF, c16 ? cudart.CUDA_R_16BF : cudart.CUDA_R_32F, cublas.CUBLAS_COMPUTE_32F,
                    c16 ? "bf16, bf16 C" : "bf16");
            return;
        }
        if (c.dtype() != DType.F32) {
            throw new IllegalArgumentException("gemm on F32 A and B writes F32 C, not " + c + " (BF16 C takes BF16 A "
                    + "and B: Backend.convert them first)");
        }
        gemmEx(transA, transB, m, n, k, alpha, memory.addr(a, "A", aOff, 0), lda, memory.addr(b, "B", bOff, 0), ldb,
                beta, memory.addr(c, "C", cOff, 0), ldc);
    }

    /** One cublasGemmEx on device addresses (row-major, strides in elements). */
    void gemmEx(boolean transA, boolean transB, int m, int n, int k, float alpha, long a, int lda, long b, int ldb,
                float beta, long c, int ldc) {
        cublasGemmEx(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, cudart.CUDA_R_32F,
                cudart.CUDA_R_32F, precision.cublasCompute, precision.toString());
    }

    /** Row-major C = op(A) op(B) as column-major C^T = op(B)^T op(A)^T: A and B of {@code abType}, C of {@code cType}. */
    private void cublasGemmEx(boolean transA, boolean transB, int m, int n, int k, float alpha, long a, int lda, long b,
                              int ldb, float beta, long c, int ldc, int abType, int cType, int compute, String what) {
        alphaP.put(alpha);
        betaP.put(beta);
        Cuda.checkCublas(cublas.cublasGemmEx(handle, transB ? cublas.CUBLAS_OP_T : cublas.CUBLAS_OP_N,
                transA ? cublas.CUBLAS_OP_T : cublas.CUBLAS_OP_N, n, m, k, alphaP, RawPointer.of(b, 0), abType, ldb,
                RawPointer.of(a, 0), abType, lda, betaP, RawPointer.of(c, 0), cType, ldc, compute,
                cublas.CUBLAS_GEMM_DEFAULT),
                "cublasGemmEx(m=" + m + ", n=" + n + ", k=" + k + ", transA=" + transA + ", transB=" + transB + ", "
                        + what + ")");
    }

    /**
     * Row-major strided-batched C_i = alpha op(A_i) op(B_i) + beta C_i (byte addresses, strides in elements), through
     * the column-major C^T = op(B)^T op(A)^T like {@link #gemmEx}.
     */
    void gemmStrided(boolean transA, boolean transB, int m, int n, int k, float alpha, long a, int lda, long strideA,
                     long b, int ldb, long strideB, float beta, long c, int ldc, long strideC, int count) {
        alphaP.put(alpha);
        betaP.put(beta);
        Cuda.checkCublas(cublas.cublasGemmStridedBatchedEx(handle, transB ? cublas.CUBLAS_OP_T : cublas.CUBLAS_OP_N,
                transA ? cublas.CUBLAS_OP_T : cublas.CUBLAS_OP_N, n, m, k, alphaP, RawPointer.of(b, 0),
                cudart.CUDA_R_32F, ldb, strideB, RawPointer.of(a, 0), cudart.CUDA_R_32F, lda, strideA, betaP,
                RawPointer.of(c, 0), cudart.CUDA_R_32F, ldc, strideC, count, precision.cublasCompute,
                cublas.CUBLAS_GEMM_DEFAULT),
                "cublasGemmStridedBatchedEx(m=" + m + ", n=" + n + ", k=" + k + ", batch=" + count + ", transA="
                        + transA + ", transB=" + transB + ", " + precision + ")");
    }

    /** Destroys the handle (after the stream is drained). */
    void destroy() {
        Cuda.checkCublas(cublas.cublasDestroy_v2(handle), "cublasDestroy");
    }
}
