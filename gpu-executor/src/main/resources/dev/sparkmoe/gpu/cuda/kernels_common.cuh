// What the f32 kernel files of this package share (elementwise.cu, norm_rope.cu, embedding_loss.cu, moe_routing.cu,
// adamw.cu, bf16_conversions.cu, gemm_scale.cu): the error word and its codes, the warp and block reductions, the
// grid-stride loop, the float4 moves, the f32 -> bf16 rounding stores and the loads that widen bf16 to f32.
// KernelLibrary hands it to NVRTC as an in-memory header (its text is part of the cubin cache key).
// Conventions of those files: element counts are int (the SPI's tensors hold < 2^31 elements), products that can pass
// 2^31 are computed in long long. Index errors are recorded in the error word err[4] = {code, a, b, c} (first one
// wins) and thrown by the Java side (KernelErrors decodes the codes) at its next synchronisation point.
#ifndef SPARKMOE_KERNELS_COMMON_CUH
#define SPARKMOE_KERNELS_COMMON_CUH

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)  // NVRTC has no math.h
#endif

#define ERR_EMBED_ID 1
#define ERR_CE_TARGET 2
#define ERR_GATHER_INDEX 4
#define ERR_SCATTER_INDEX 5
#define ERR_STATS_INDEX 6
#define ERR_SORT_INDEX 7
#define ERR_INVERT_INDEX 8
#define ERR_EMBED_BWD_ID 9

__device__ __forceinline__ void report(int* err, int code, int a, int b, int c) {
    if (atomicCAS(err, 0, code) == 0) {
        err[1] = a; err[2] = b; err[3] = c;
    }
}

struct SumOp {
    template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Butterfly reduction over the 32 lanes of a warp; every lane gets the result.
template <class T, class Op> __device__ __forceinline__ T warpReduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide reduction (blockDim.x a multiple of 32, at most 1024); every thread gets the result. Lanes beyond the
// block's warps contribute identity. Each instantiation has its own shared memory.
template <class T, class Op> __device__ T blockReduce(T v, T identity, Op op) {
    __shared__ T sh[32];
    __shared__ T total;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warpReduce(v, op);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        T x = lane < (blockDim.x >> 5) ? sh[lane] : identity;
        x = warpReduce(x, op);
        if (lane == 0) total = x;
    }
    __syncthreads();
    return total;
}

__device__ __forceinline__ float warpSum(float v) { return warpReduce(v, SumOp()); }
__device__ __forceinline__ float warpMax(float v) { return warpReduce(v, MaxOp()); }
__device__ float blockSum(float v) { return blockReduce(v, 0.f, SumOp()); }
__device__ double blockSumD(double v) { return blockReduce(v, 0.0, SumOp()); }
__device__ float blockMax(float v) { return blockReduce(v, -INFINITY, MaxOp()); }

#define GRID_STRIDE(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
                               i += (long long)gridDim.x * blockDim.x)

__device__ __forceinline__ float4 ld4(const float* p, int c) { return reinterpret_cast<const float4*>(p)[c]; }
__device__ __forceinline__ void st4(float* p, int c, float4 v) { reinterpret_cast<float4*>(p)[c] = v; }
// f32 to bf16, rounded to nearest even (as grouped_cast_bf16 rounds): bf16x2_rn packs lo in the low half, hi in the
// high one; bf16_rn rounds one value; st4_bf16 stores four at element 4c (8-byte aligned).
__device__ __forceinline__ unsigned int bf16x2_rn(float lo, float hi) {
    unsigned int packed;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(hi), "f"(lo));
    return packed;
}
__device__ __forceinline__ unsigned short bf16_rn(float x) { return (unsigned short)(bf16x2_rn(x, 0.f) & 0xffffu); }
__device__ __forceinline__ void st4_bf16(unsigned short* p, long long c, float4 v) {
    reinterpret_cast<uint2*>(p)[c] = make_uint2(bf16x2_rn(v.x, v.y), bf16x2_rn(v.z, v.w));
}

// Loads of an input held as f32 or as bf16 (a gradient in the param dtype), as f32: widening bf16 is exact (its bits
// are the f32's high half), so a bf16 input reads as an f32 input holding the same values. ld1 loads element i; the
// bf16 ld4 loads four at element 4c (8-byte aligned), as the f32 ld4 above does (16-byte aligned).
__device__ __forceinline__ float ld1(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld1(const unsigned short* p, long long i) {
    return __uint_as_float((unsigned int)p[i] << 16);
}
__device__ __forceinline__ float4 ld4(const unsigned short* p, int c) {
    uint2 u = reinterpret_cast<const uint2*>(p)[c];
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                       __uint_as_float(u.y & 0xffff0000u));
}

// Stores of an f32 result into f32 (st4o: 16-byte aligned) or bf16 outputs (8-byte aligned: a BF16 grouped GEMM
// operand, CudaBackend.emptyGemmOperand), one kernel body for both.
__device__ __forceinline__ void st4o(float* p, long long c, float4 v) { reinterpret_cast<float4*>(p)[c] = v; }
__device__ __forceinline__ void st4o(unsigned short* p, long long c, float4 v) { st4_bf16(p, c, v); }
__device__ __forceinline__ void st1o(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st1o(unsigned short* p, long long i, float v) { p[i] = bf16_rn(v); }

#endif  // SPARKMOE_KERNELS_COMMON_CUH
