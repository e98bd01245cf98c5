// The parameter of the grouped GEMM kernels (grouped_gemm_bf16.cu: mma.sync, sm_80+; grouped_gemm_sm90.cu: wgmma,
// sm_90a), included by both. KernelLibrary hands it to NVRTC as an in-memory header; GroupedGemm fills it (one code
// path for both kernels) and mirrors its byte layout.
#ifndef SPARKMOE_GROUPED_GEMM_PARAMS_CUH
#define SPARKMOE_GROUPED_GEMM_PARAMS_CUH

#define GB_MAX_GROUPS 64

// One launch's groups, passed BY VALUE as the kernels' only parameter (2840 bytes, under the classic 4 KB limit).
// lda / ldb: the bf16 operands' row strides (elements); ldc: C's (f32). Per group g: a, b, c the device byte addresses
// of A_g, B_g, C_g; m, n, k; tileStart the prefix sum of the tiles (of the kernel's tile shape) of the groups before
// g, strictly increasing: the host passes only groups with m, n > 0, largest k first; flags unused by the kernels.
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
};
static_assert(sizeof(GBParams) == 2840, "GBParams layout changed: update GroupedGemm's offsets");

// The group of flat tile index t (blockIdx.x): the largest g with tileStart[g] <= t (binary search).
__device__ __forceinline__ int gb_group_of(const GBParams& p, int t) {
    int lo = 0, hi = p.groups - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (p.tileStart[mid] <= t) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// The epilogue's store of C[row, col] and C[row, col + 1] (crow = C_g + row * ldc): alpha * v + beta * C, C never
// read when beta == 0; float2 where vecC (C_g 8-byte aligned, ldc even) and both columns are inside N, else scalar
// stores of the columns below N.
__device__ __forceinline__ void gb_store_pair(float* crow, int col, int N, float v0, float v1, float alpha,
                                              float beta, bool vecC) {
    v0 *= alpha;
    v1 *= alpha;
    if (vecC && col + 1 < N) {
        float2* q = reinterpret_cast<float2*>(crow + col);
        if (beta != 0.f) {
            const float2 o = *q;
            v0 = fmaf(beta, o.x, v0);
            v1 = fmaf(beta, o.y, v1);
        }
        *q = make_float2(v0, v1);
    } else {
        if (col < N) crow[col] = beta != 0.f ? fmaf(beta, crow[col], v0) : v0;
        if (col + 1 < N) crow[col + 1] = beta != 0.f ? fmaf(beta, crow[col + 1], v1) : v1;
    }
}

#endif  // SPARKMOE_GROUPED_GEMM_PARAMS_CUH
