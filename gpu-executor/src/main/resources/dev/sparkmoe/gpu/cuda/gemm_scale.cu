// The k == 0 case of a GEMM (C = beta * C, or 0 where beta == 0), for CublasGemm and GroupedGemm's empty groups.
// Compiled at run time by NVRTC (see KernelLibrary); CudaBackendTest compares it with CpuBackend's gemm.

#include "kernels_common.cuh"  // error word, reductions, grid-stride loop, float4 and bf16 helpers

extern "C" {

// C[m, n] (row stride ldc) = beta == 0 ? 0 : beta * C: the k == 0 case of gemm.
__global__ void scale_rows_f32(float* c, int m, int n, int ldc, float beta) {
    GRID_STRIDE(i, (long long)m * n) {
        long long r = i / n, col = i % n;
        float* p = c + r * ldc + col;
        *p = beta == 0.f ? 0.f : *p * beta;
    }
}

}  // extern "C"
