// f32 <-> bf16 conversions, rounded to nearest even on the way to bf16, exact on the way back: FlashAttention's
// bf16 operand copies (f32_to_bf16_rows), Elementwise's Backend.convert (convert_f32_bf16, convert_bf16_f32) and
// Bf16Parts' many-part conversions for a communicator's bf16 wire (f32_to_bf16_parts, bf16_to_f32_parts). Compiled
// at run time by NVRTC (see KernelLibrary); CudaBackendTest compares them with CpuBackend.

#include "kernels_common.cuh"  // error word, reductions, grid-stride loop, float4 and bf16 helpers

extern "C" {

// ------------------------------------------------------------------ bf16 operand copies (GemmPrecision.BF16)

// src [rows][cols] f32 with row stride ld -> dst [rows][cols] bf16 bits, dense (row stride cols), rounded to nearest
// even as cuBLAS's FAST_16BF compute rounds its f32 inputs: the operand copies of a bf16-storage cublasGemmEx. Two
// neighbours per thread; one bf16x2 store where the pair is 4-byte aligned in dst (cols even), two halves otherwise.
__global__ void f32_to_bf16_rows(const float* src, long long ld, int rows, int cols, unsigned short* dst) {
    long long pairsPerRow = (cols + 1) >> 1;
    GRID_STRIDE(p, (long long)rows * pairsPerRow) {
        long long r = p / pairsPerRow;
        int c = (int)(p - r * pairsPerRow) * 2;
        const float* s = src + r * ld + c;
        bool two = c + 1 < cols;
        float lo = s[0];
        float hi = two ? s[1] : 0.f;
        unsigned int packed = bf16x2_rn(lo, hi);
        long long o = r * cols + c;
        if (two && (o & 1) == 0) {
            *reinterpret_cast<unsigned int*>(dst + o) = packed;
        } else {
            dst[o] = (unsigned short)(packed & 0xffffu);
            if (two) dst[o + 1] = (unsigned short)(packed >> 16);
        }
    }
}

// Backend.convert: n values f32 -> bf16 (rounded to nearest even, as f32_to_bf16_rows) or bf16 -> f32 (exact).
// With vec != 0 (the host checked n % 4 == 0, the f32 side 16-byte and the bf16 side 8-byte aligned) four values a
// thread in one load and one store, else one.
__global__ void convert_f32_bf16(const float* src, long long n, unsigned short* dst, int vec) {
    if (vec) {
        GRID_STRIDE(c, n >> 2) st4_bf16(dst, c, reinterpret_cast<const float4*>(src)[c]);
    } else {
        GRID_STRIDE(i, n) dst[i] = bf16_rn(src[i]);
    }
}

__global__ void convert_bf16_f32(const unsigned short* src, long long n, float* dst, int vec) {
    if (vec) {
        GRID_STRIDE(c, n >> 2) {
            uint2 p = reinterpret_cast<const uint2*>(src)[c];
            reinterpret_cast<float4*>(dst)[c] = make_float4(__uint_as_float(p.x << 16), __uint_as_float(p.x & 0xffff0000u),
                                                            __uint_as_float(p.y << 16), __uint_as_float(p.y & 0xffff0000u));
        }
    } else {
        GRID_STRIDE(i, n) dst[i] = __uint_as_float((unsigned int)src[i] << 16);
    }
}

// Conversions for a communicator's bf16 wire (NcclCommunicator's all-gather with a BF16 wire dtype), many parts in
// one launch (a unit's parameters: some of millions of values, some of a few hundred): part i converts n[i] values
// from src[i] to dst[i], rounded to nearest even on the way to bf16 (as f32_to_bf16_rows), widened exactly on the way
// back. A part with vec[i] != 0 (the host checked the f32 side 16-byte and the bf16 side 8-byte aligned) moves its
// first n / 4 * 4 values four at a time, the rest one at a time. The parts' work units (quads, then single values)
// are numbered one after the other (unitStart: prefix sums, unitStart[count] the total); a thread finds its part by
// binary search. The descriptor travels by value (2,320 bytes, under the 4 KB parameter limit).
#define BFP_MAX 64
struct BfParts {
    int count;
    int pad;
    long long unitStart[BFP_MAX + 1];
    long long src[BFP_MAX];
    long long dst[BFP_MAX];
    long long n[BFP_MAX];
    int vec[BFP_MAX];
};
static_assert(sizeof(BfParts) == 2320, "BfParts layout changed: update CudaBackend.convertParts");

// The part of unit u and the unit's index inside it.
__device__ __forceinline__ int bfp_part(const BfParts& p, long long u) {
    int lo = 0, hi = p.count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (p.unitStart[mid] <= u) lo = mid; else hi = mid - 1;
    }
    return lo;
}

__global__ void f32_to_bf16_parts(const BfParts p) {
    GRID_STRIDE(u, p.unitStart[p.count]) {
        int i = bfp_part(p, u);
        long long local = u - p.unitStart[i];
        const float* src = reinterpret_cast<const float*>(p.src[i]);
        unsigned short* dst = reinterpret_cast<unsigned short*>(p.dst[i]);
        long long quads = p.vec[i] ? p.n[i] >> 2 : 0;
        if (local < quads) {
            st4_bf16(dst, local, reinterpret_cast<const float4*>(src)[local]);
        } else {
            long long e = 4 * quads + (local - quads);
            dst[e] = bf16_rn(src[e]);
        }
    }
}

__global__ void bf16_to_f32_parts(const BfParts p) {
    GRID_STRIDE(u, p.unitStart[p.count]) {
        int i = bfp_part(p, u);
        long long local = u - p.unitStart[i];
        const unsigned short* src = reinterpret_cast<const unsigned short*>(p.src[i]);
        float* dst = reinterpret_cast<float*>(p.dst[i]);
        long long quads = p.vec[i] ? p.n[i] >> 2 : 0;
        if (local < quads) {
            uint2 b = reinterpret_cast<const uint2*>(src)[local];
            reinterpret_cast<float4*>(dst)[local] = make_float4(__uint_as_float(b.x << 16),
                    __uint_as_float(b.x & 0xffff0000u), __uint_as_float(b.y << 16), __uint_as_float(b.y & 0xffff0000u));
        } else {
            long long e = 4 * quads + (local - quads);
            dst[e] = __uint_as_float((unsigned int)src[e] << 16);
        }
    }
}

}  // extern "C"
