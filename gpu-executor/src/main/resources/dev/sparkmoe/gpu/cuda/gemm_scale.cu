// The k == 0 case of a GEMM (C = beta * C, or 0 where beta == 0), for CublasGemm and GroupedGemm's empty groups, and
// the moves of GroupedGemm's loop (cuBLAS per group on f32 operands) for a bf16 C: cuBLAS writes a bf16 C only from
// bf16 A and B, so the loop computes C_g in an f32 block of the same row stride and rounds it into C_g once.
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

// The same on bf16 C (bits): beta * C computed in f32 from C widened, rounded to nearest even; 0 where beta == 0
// (C never read).
__global__ void scale_rows_bf16(unsigned short* c, int m, int n, int ldc, float beta) {
    GRID_STRIDE(i, (long long)m * n) {
        long long r = i / n, col = i % n;
        unsigned short* p = c + r * ldc + col;
        *p = beta == 0.f ? (unsigned short)0 : bf16_rn(__uint_as_float((unsigned int)*p << 16) * beta);
    }
}

// dst[m, n] f32 = src[m, n] bf16 widened (exact), both with row stride ld: C_g before an f32 cuBLAS call with
// beta != 0.
__global__ void widen_rows_bf16(const unsigned short* src, int m, int n, int ld, float* dst) {
    GRID_STRIDE(i, (long long)m * n) {
        long long o = (i / n) * ld + i % n;
        dst[o] = __uint_as_float((unsigned int)src[o] << 16);
    }
}

// dst[m, n] bf16 = src[m, n] f32 rounded to nearest even, both with row stride ld: the f32 result into C_g.
__global__ void round_rows_bf16(const float* src, int m, int n, int ld, unsigned short* dst) {
    GRID_STRIDE(i, (long long)m * n) {
        long long o = (i / n) * ld + i % n;
        dst[o] = bf16_rn(src[o]);
    }
}

}  // extern "C"
