// The parameter of the grouped GEMM kernels (grouped_gemm_bf16.cu: mma.sync, sm_80+; grouped_gemm_sm90.cu: wgmma,
// sm_90a), the cp.async wrappers both fill their shared-memory stages with and the C element loads and stores of
// both epilogues, included by both. KernelLibrary hands it to NVRTC as an in-memory header; GroupedGemm fills it (one code
// path for both kernels) and mirrors its byte layout.
#ifndef SPARKMOE_GROUPED_GEMM_PARAMS_CUH
#define SPARKMOE_GROUPED_GEMM_PARAMS_CUH

#define GB_MAX_GROUPS 64
#define GB_FLAG_C_BF16 4  // GBParams.flags: C_g is bf16

// One launch's groups, passed BY VALUE as the kernels' only parameter (3360 bytes, under the classic 4 KB limit).
// lda / ldb: the bf16 operands' row strides (elements); ldc: C's, in elements of C's dtype (f32 or bf16). Per group g:
// a, b, c the device byte addresses of A_g, B_g, C_g; m, n, k; tileStart the prefix sum of the tiles (of the kernel's
// tile shape) of the groups before g, strictly increasing: the host passes only groups with m, n > 0, largest k first;
// flags: bit 0, A_g's address is 16-byte aligned and lda a multiple of 4, bit 1 the same for B_g (both set by the
// host, read by no kernel); bit 2 (GB_FLAG_C_BF16), C_g holds bf16 (the f32 result alpha * AB + beta * C, C read as
// bf16 widened where beta != 0, rounded to nearest even once) instead of f32. GroupedGemm sets bit 2 on every group of
// a launch or on none.
// B split in two blocks (Backend.groupedGemmSplitB; grouped_gemm_sm90.cu only, the mma.sync kernel never gets one):
// where bSplit > 0, B_g's stored rows (n rows of a B stored [n, k], k rows of one stored [k, n]) at or past bSplit
// come from b2[g]: stored row r is at b[g] + r * ldb for r < bSplit and at b2[g] + (r - bSplit) * ldb after it (the
// same ldb). bSplit == 0: one block (b2 unread). Appended after flags so that every older offset stays.
struct GBParams {
    int lda, ldb, ldc, groups;
    float alpha, beta;
    long long a[GB_MAX_GROUPS];
    long long b[GB_MAX_GROUPS];
    long long c[GB_MAX_GROUPS];
    int m[GB_MAX_GROUPS];
    int n[GB_MAX_GROUPS];
    int k[GB_MAX_GROUPS];
    int tileStart[GB_MAX_GROUPS];
    int flags[GB_MAX_GROUPS];
    long long b2[GB_MAX_GROUPS];
    int bSplit;
    int pad;
};
static_assert(sizeof(GBParams) == 3360, "GBParams layout changed: update GroupedGemm's offsets");
static_assert(sizeof(GBParams) <= 4096, "GBParams must stay under the classic 4 KB kernel-parameter limit");

// The group of flat tile index t (blockIdx.x): the largest g with tileStart[g] <= t (binary search).
__device__ __forceinline__ int gb_group_of(const GBParams& p, int t) {
    int lo = 0, hi = p.groups - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (p.tileStart[mid] <= t) lo = mid; else hi = mid - 1;
    }
    return lo;
}

__device__ __forceinline__ unsigned gg_shared_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; srcBytes 0 fills them with zeros (src must still be a valid address).
__device__ __forceinline__ void gg_cp16(unsigned dst, const void* src, int srcBytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(srcBytes) : "memory");
}

__device__ __forceinline__ void gg_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void gg_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// C's elements in either dtype (both kernels' epilogues; the files include cuda_bf16.h before this header): a pair at
// p (8 bytes of f32 or 4 of bf16, aligned so), one element, read widened to f32 or written from f32 (rounded to
// nearest even once for bf16).
__device__ __forceinline__ float2 gg_ld2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 gg_ld2(const __nv_bfloat16* p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ void gg_st2(float* p, float v0, float v1) {
    *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
}
__device__ __forceinline__ void gg_st2(__nv_bfloat16* p, float v0, float v1) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v0, v1);
}
__device__ __forceinline__ float gg_ld1(const float* p) { return *p; }
__device__ __forceinline__ float gg_ld1(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void gg_st1(float* p, float v) { *p = v; }
__device__ __forceinline__ void gg_st1(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

#endif  // SPARKMOE_GROUPED_GEMM_PARAMS_CUH
