// Grouped GEMM on the tensor cores: ONE launch computes every group of CudaBackend.groupedGemm
// (GroupedMode.KERNEL). Compiled at run time by NVRTC (see KernelLibrary); needs sm_80 or newer (bf16 wmma).
//
// Semantics (row-major f32 storage, as Backend.groupedGemm): for each group g
//     C_g = alpha * op(A_g) * op(B_g) + beta * C_g,   op(A_g) [m, k], op(B_g) [k, n], C_g [m, n]
// A_g is stored [m, k] (row stride lda) or, transposed, [k, m]; B_g is stored [k, n] (ldb) or [n, k]; C_g [m, n]
// (ldc). The f32 operands are rounded to bf16 (round-to-nearest-even, __float2bfloat16) while they are staged into
// shared memory; products accumulate in f32 (wmma 16x16x16 bf16 fragments); the epilogue applies alpha and beta in
// f32. With beta == 0, C is never read (it may hold NaN). k == 0 gives C_g = beta * C_g (0 where beta == 0).
//
// Tiling: a CTA of 256 threads (8 warps, 2 x 4) computes a 128 x 128 tile of one group's C; each warp a 64 x 32
// sub-tile (4 x 2 accumulator fragments). K is walked in steps of 32 with two shared-memory stages: while the tensor
// cores work on stage s, the threads load the next 128x32 f32 slices of A and B from global memory into registers
// (float4 loads where the group's base address is 16-byte aligned and its stride a multiple of 4, scalar loads
// otherwise and at ragged edges; out-of-range elements are zero), then convert them to bf16 and store them into
// stage s^1. One __syncthreads per K step. Shared tiles keep the operand's contiguous dimension contiguous (the
// wmma layout, row_major or col_major, follows the transposition), with rows padded by 8 bf16 (16 bytes) so that
// the fragment loads are free of bank conflicts. 40 KB of static shared memory; the f32 epilogue reuses it.
//
// Group mapping: blockIdx.x is a flat tile index over all groups of the launch. GGParams (passed BY VALUE as the
// only kernel parameter, 2840 bytes, under the classic 4 KB parameter limit) holds per group the device addresses of
// A_g, B_g, C_g, m, n, k, the prefix sum of tiles before the group (tileStart, strictly increasing: the host passes
// only groups with m, n > 0) and flags (bit 0: A_g float4-loadable, bit 1: B_g). A CTA finds its group by binary
// search over tileStart, then its tile row and column inside the group (row-major over the group's tiles, so that
// consecutive CTAs share A's row block and B_g stays in L2). The host launches once per 64 groups.

#include <cuda_bf16.h>
#include <mma.h>

#define GG_MAX_GROUPS 64
#define GG_BM 128
#define GG_BN 128
#define GG_BK 32
#define GG_PAD 8
#define GG_THREADS 256
#ifndef GG_MIN_BLOCKS  // blocks per SM the compiler must fit (registers): 2 caps them at 128, 1 lets them grow
#define GG_MIN_BLOCKS 2
#endif
#define GG_STAGE_LD 36  // f32 epilogue staging row stride (multiple of 4 as wmma needs for float)

// Layout shared with CudaBackend.groupedKernel (byte offsets listed below).
struct GGParams {
    int lda, ldb, ldc, groups;
    float alpha, beta;
    long long a[GG_MAX_GROUPS];  // device byte addresses of A_g, B_g, C_g (element (0, 0) of each)
    long long b[GG_MAX_GROUPS];
    long long c[GG_MAX_GROUPS];
    int m[GG_MAX_GROUPS];
    int n[GG_MAX_GROUPS];
    int k[GG_MAX_GROUPS];
    int tileStart[GG_MAX_GROUPS];
    int flags[GG_MAX_GROUPS];
};
// Byte offsets (no padding anywhere: 24 is 8-aligned): lda 0, ldb 4, ldc 8, groups 12, alpha 16, beta 20, a 24,
// b 536, c 1048, m 1560, n 1816, k 2072, tileStart 2328, flags 2584; size 2840. (NVRTC before 13.4 has no
// __builtin_offsetof, so only the size is asserted.)
static_assert(sizeof(GGParams) == 2840, "GGParams layout changed: update CudaBackend.groupedKernel");

// Shared memory: two stages of A (128 x (32+8) or 32 x (128+8) bf16) and two of B.
#define GG_A_STAGE (GG_BM * (GG_BK + GG_PAD))  // elements; >= GG_BK * (GG_BM + GG_PAD)
#define GG_B_STAGE (GG_BN * (GG_BK + GG_PAD))  // elements; >= GG_BK * (GG_BN + GG_PAD)
#define GG_SMEM_BYTES ((2 * GG_A_STAGE + 2 * GG_B_STAGE) * 2)
static_assert(GG_BK * (GG_BM + GG_PAD) <= GG_A_STAGE, "A stage too small for the transposed layout");
static_assert(GG_BK * (GG_BN + GG_PAD) <= GG_B_STAGE, "B stage too small for the row-major layout");
static_assert(GG_SMEM_BYTES <= 48 * 1024, "static shared memory limit");
static_assert((GG_A_STAGE * 2) % 128 == 0 && (GG_B_STAGE * 2) % 128 == 0, "stage alignment");
static_assert((GG_THREADS / 32) * 16 * GG_STAGE_LD * 4 <= GG_SMEM_BYTES, "epilogue staging does not fit");

template <bool C, class T, class F> struct gg_cond { typedef T type; };
template <class T, class F> struct gg_cond<false, T, F> { typedef F type; };

// Loads a ROWS x COLS f32 slice (COLS contiguous in memory, row stride ld) starting at base into registers:
// vector v = threadIdx.x + i * 256 holds row v / (COLS/4), columns 4 * (v % (COLS/4)) .. +3. Elements at or past
// rows (valid rows from base) or cols (valid columns) are 0 and never read.
template <int ROWS, int COLS>
__device__ __forceinline__ void gg_load(const float* __restrict__ base, int ld, int rows, int cols, bool vec,
                                        float4 (&r)[ROWS * COLS / 4 / GG_THREADS]) {
    constexpr int VPR = COLS / 4;
    constexpr int N = ROWS * COLS / 4 / GG_THREADS;
    static_assert(N * 4 * GG_THREADS == ROWS * COLS, "tile does not split evenly");
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int v = threadIdx.x + i * GG_THREADS;
        const int row = v / VPR;
        const int col = (v % VPR) * 4;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row < rows) {
            const float* q = base + (row * ld + col);  // < 2^31: inside the tensor
            if (vec && col + 3 < cols) {
                x = __ldg(reinterpret_cast<const float4*>(q));
            } else {
                if (col < cols) x.x = __ldg(q);
                if (col + 1 < cols) x.y = __ldg(q + 1);
                if (col + 2 < cols) x.z = __ldg(q + 2);
                if (col + 3 < cols) x.w = __ldg(q + 3);
            }
        }
        r[i] = x;
    }
}

// Stores the registers of gg_load, rounded to bf16, into a shared tile with row stride LD (elements).
template <int ROWS, int COLS, int LD>
__device__ __forceinline__ void gg_store(__nv_bfloat16* s, const float4 (&r)[ROWS * COLS / 4 / GG_THREADS]) {
    constexpr int VPR = COLS / 4;
    constexpr int N = ROWS * COLS / 4 / GG_THREADS;
    static_assert(LD % 8 == 0, "shared rows must stay 16-byte aligned");
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int v = threadIdx.x + i * GG_THREADS;
        const int row = v / VPR;
        const int col = (v % VPR) * 4;
        __nv_bfloat162 lo = __floats2bfloat162_rn(r[i].x, r[i].y);  // .x = first (lower address)
        __nv_bfloat162 hi = __floats2bfloat162_rn(r[i].z, r[i].w);
        uint2 u;
        u.x = *reinterpret_cast<unsigned int*>(&lo);
        u.y = *reinterpret_cast<unsigned int*>(&hi);
        *reinterpret_cast<uint2*>(s + row * LD + col) = u;  // 8-byte aligned: LD * 2 % 16 == 0, col % 4 == 0
    }
}

__shared__ __align__(128) unsigned char gg_smem[GG_SMEM_BYTES];

template <bool TA, bool TB>
__device__ __forceinline__ void gg_impl(const GGParams& p) {
#if __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    // ---- which group and tile
    const int t = blockIdx.x;
    int lo = 0, hi = p.groups - 1;
    while (lo < hi) {  // largest g with tileStart[g] <= t
        const int mid = (lo + hi + 1) >> 1;
        if (p.tileStart[mid] <= t) lo = mid; else hi = mid - 1;
    }
    const int g = lo;
    const int M = p.m[g], N = p.n[g], K = p.k[g];
    const int tilesN = (N + GG_BN - 1) / GG_BN;
    const int local = t - p.tileStart[g];
    const int m0 = (local / tilesN) * GG_BM;
    const int n0 = (local % tilesN) * GG_BN;
    const float* __restrict__ A = reinterpret_cast<const float*>(p.a[g]);
    const float* __restrict__ B = reinterpret_cast<const float*>(p.b[g]);
    float* __restrict__ C = reinterpret_cast<float*>(p.c[g]);
    const bool vecA = (p.flags[g] & 1) != 0;
    const bool vecB = (p.flags[g] & 2) != 0;
    const int lda = p.lda, ldb = p.ldb;

    __nv_bfloat16* As = reinterpret_cast<__nv_bfloat16*>(gg_smem);
    __nv_bfloat16* Bs = As + 2 * GG_A_STAGE;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = warp >> 2;  // 0..1: rows wm*64 .. +63 of the tile
    const int wn = warp & 3;   // 0..3: columns wn*32 .. +31

    typedef typename gg_cond<TA, wmma::col_major, wmma::row_major>::type LayoutA;
    typedef typename gg_cond<TB, wmma::col_major, wmma::row_major>::type LayoutB;
    // Shared strides (elements): A [BM][BK+PAD] (row-major op(A)) or [BK][BM+PAD] (transposed storage);
    // B [BK][BN+PAD] or [BN][BK+PAD].
    constexpr int LDA_S = TA ? GG_BM + GG_PAD : GG_BK + GG_PAD;
    constexpr int LDB_S = TB ? GG_BK + GG_PAD : GG_BN + GG_PAD;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);
    }

    constexpr int NA = GG_BM * GG_BK / 4 / GG_THREADS;
    constexpr int NB = GG_BN * GG_BK / 4 / GG_THREADS;
    float4 ra[NA], rb[NB];

    const int numK = (K + GG_BK - 1) / GG_BK;
    if (numK > 0) {
        // Slice kt of A starts at aPtr + kt * aStep, of B at bPtr + kt * bStep (k0 = kt * BK).
        const float* aPtr = TA ? A + m0 : A + (long long)m0 * lda;
        const float* bPtr = TB ? B + (long long)n0 * ldb : B + n0;
        const long long aStep = TA ? (long long)GG_BK * lda : GG_BK;
        const long long bStep = TB ? GG_BK : (long long)GG_BK * ldb;
        auto loadTiles = [&](int kt) {
            const int kLeft = K - kt * GG_BK;
            const float* a = aPtr + kt * aStep;
            const float* b = bPtr + kt * bStep;
            if constexpr (!TA) gg_load<GG_BM, GG_BK>(a, lda, M - m0, kLeft, vecA, ra);
            else gg_load<GG_BK, GG_BM>(a, lda, kLeft, M - m0, vecA, ra);
            if constexpr (!TB) gg_load<GG_BK, GG_BN>(b, ldb, kLeft, N - n0, vecB, rb);
            else gg_load<GG_BN, GG_BK>(b, ldb, N - n0, kLeft, vecB, rb);
        };
        auto storeTiles = [&](int s) {
            if constexpr (!TA) gg_store<GG_BM, GG_BK, LDA_S>(As + s * GG_A_STAGE, ra);
            else gg_store<GG_BK, GG_BM, LDA_S>(As + s * GG_A_STAGE, ra);
            if constexpr (!TB) gg_store<GG_BK, GG_BN, LDB_S>(Bs + s * GG_B_STAGE, rb);
            else gg_store<GG_BN, GG_BK, LDB_S>(Bs + s * GG_B_STAGE, rb);
        };

        loadTiles(0);
        storeTiles(0);
        __syncthreads();
        for (int kt = 0; kt < numK; kt++) {
            const int s = kt & 1;
            const bool more = kt + 1 < numK;
            if (more) loadTiles(kt + 1);  // global -> registers, overlapping the MMAs below
            const __nv_bfloat16* as = As + s * GG_A_STAGE;
            const __nv_bfloat16* bs = Bs + s * GG_B_STAGE;
#pragma unroll 1
            for (int ks = 0; ks < GG_BK; ks += 16) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb[2];
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const int c = wn * 32 + j * 16;
                    // element (kk, col) of op(B): row-major at bs[kk * LDB_S + col], col-major at bs[col * LDB_S + kk]
                    if constexpr (!TB) wmma::load_matrix_sync(fb[j], bs + ks * LDB_S + c, LDB_S);
                    else wmma::load_matrix_sync(fb[j], bs + c * LDB_S + ks, LDB_S);
                }
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> fa;
                    const int r = wm * 64 + i * 16;
                    // element (row, kk) of op(A): row-major at as[row * LDA_S + kk], col-major at as[kk * LDA_S + row]
                    if constexpr (!TA) wmma::load_matrix_sync(fa, as + r * LDA_S + ks, LDA_S);
                    else wmma::load_matrix_sync(fa, as + ks * LDA_S + r, LDA_S);
#pragma unroll
                    for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
                }
            }
            if (more) storeTiles(s ^ 1);  // stage s^1 was last read in step kt-1, before the barrier below it
            __syncthreads();
        }
    }

    // ---- epilogue: each warp stages 16 x 32 of its accumulators at a time in shared memory (the pipeline stages
    // are free: every warp passed the last barrier of the loop), then lane l writes column l of those 16 rows.
    float* stage = reinterpret_cast<float*>(gg_smem) + warp * (16 * GG_STAGE_LD);
    const float alpha = p.alpha, beta = p.beta;
    const int col = n0 + wn * 32 + lane;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        wmma::store_matrix_sync(stage, acc[i][0], GG_STAGE_LD, wmma::mem_row_major);
        wmma::store_matrix_sync(stage + 16, acc[i][1], GG_STAGE_LD, wmma::mem_row_major);
        __syncwarp();
        const int rowBase = m0 + wm * 64 + i * 16;
        if (col < N) {
            for (int r = 0; r < 16; r++) {
                const int row = rowBase + r;
                if (row >= M) break;
                float* q = C + (long long)row * p.ldc + col;
                float v = alpha * stage[r * GG_STAGE_LD + lane];
                if (beta != 0.f) v = fmaf(beta, *q, v);
                *q = v;
            }
        }
        __syncwarp();
    }
#else
    __trap();  // bf16 tensor cores need sm_80; CudaBackend never launches this kernel below it
#endif
}

extern "C" {

__global__ void __launch_bounds__(GG_THREADS, GG_MIN_BLOCKS) grouped_gemm_nn(const GGParams p) { gg_impl<false, false>(p); }
__global__ void __launch_bounds__(GG_THREADS, GG_MIN_BLOCKS) grouped_gemm_nt(const GGParams p) { gg_impl<false, true>(p); }
__global__ void __launch_bounds__(GG_THREADS, GG_MIN_BLOCKS) grouped_gemm_tn(const GGParams p) { gg_impl<true, false>(p); }
__global__ void __launch_bounds__(GG_THREADS, GG_MIN_BLOCKS) grouped_gemm_tt(const GGParams p) { gg_impl<true, true>(p); }

}  // extern "C"
