// Grouped GEMM on the tensor cores with bf16 OPERANDS in device memory: ONE launch computes every group of
// CudaBackend.groupedGemm (GroupedMode.KERNEL). Compiled at run time by NVRTC (see KernelLibrary); needs sm_80 or
// newer (bf16 mma.sync, cp.async).
//
// Semantics (row-major C, f32, or bf16 where the group's flags have GB_FLAG_C_BF16, as Backend.groupedGemm): for each
// group g
//     C_g = alpha * op(A_g) * op(B_g) + beta * C_g,   op(A_g) [m, k], op(B_g) [k, n], C_g [m, n]
// A_g is stored [m, k] (row stride lda) or, transposed, [k, m]; B_g is stored [k, n] (ldb) or [n, k]; C_g [m, n]
// (ldc elements). A and B are bf16 here (rounded to nearest even by whoever made them); products accumulate in f32
// (mma.sync m16n8k16 bf16); the epilogue applies alpha and beta in f32 (a bf16 C read widened), and a bf16 C is that
// f32 value rounded to nearest even once. With beta == 0, C is never read (it may hold NaN). k == 0 gives
// C_g = beta * C_g (0 where beta == 0).
//
// This file holds
//   grouped_cast_bf16: the cast that the host runs first for an operand that is not held in bf16 already, once per
//     operand and launch: every group's [rows, cols] block of the f32 operand (row stride srcLd, any alignment) is
//     rounded to bf16 (round-to-nearest-even, __floats2bfloat162_rn) into a scratch buffer, packed group after group
//     with row stride dstLd = cols of the widest group rounded up to 8 (16 bytes); columns cols .. dstLd - 1 are
//     written as ZEROS. So every group's bf16 block starts 16-byte aligned, its rows are 16-byte aligned, and a
//     16-byte chunk that starts inside a row holds only valid elements or zeros: the GEMM needs no alignment cases.
//     (A BF16 operand tensor, CudaBackend.emptyGemmOperand's or a compute copy, and a bf16 image of
//     CudaBackend.adoptBf16Images are read in place when their stride and blocks meet the same rules.)
//   grouped_gemm_bf16_{nn,nt,tn,tt}: the GEMM on those bf16 operands. GBParams (grouped_gemm_params.cuh, shared with
//     grouped_gemm_sm90.cu; passed BY VALUE as the only kernel parameter, 3360 bytes, under the classic 4 KB
//     parameter limit): lda / ldb are the bf16 operands' strides, a / b their addresses, flags unused; b2 / bSplit
//     (a B in two blocks) are never set for this kernel (bSplit 0) and never read.
//
// Group mapping: blockIdx.x is a flat tile index over all groups of the launch. GBParams holds per group the device
// addresses of A_g, B_g, C_g, m, n, k and the prefix sum of tiles before the group (tileStart, strictly increasing:
// the host passes only groups with m, n > 0, largest k first so that the longest tiles start first). A CTA finds its
// group by binary search over tileStart, then its tile row and column inside the group (row-major over the group's
// tiles, so that consecutive CTAs share A's row block and B_g stays in L2). The host launches once per 64 groups.
//
// Tiling (defaults; tuning macros below): a CTA of 2 x GB_WARPS_N = 8 warps (256 threads) computes a GB_BM x GB_BN =
// 128 x 128 tile of one group's C; each warp a 64 x GB_BN/GB_WARPS_N = 64 x 32 sub-tile (4 x 4 mma accumulators of
// 16 x 8). K is walked in slices of GB_BK = 64 through a ring of GB_STAGES = 3 shared-memory stages (36 KB each,
// 108 KB: two CTAs per SM on sm_90) filled by cp.async.cg (16 bytes, zero fill by src-size 0 past a group's rows /
// columns), GB_STAGES - 1 slices ahead: step kt waits for slice kt (cp.async.wait_group GB_STAGES - 2), passes the
// step's ONE barrier (after which every warp is done with step kt - 1's stage), issues slice kt + GB_STAGES - 1 into
// that stage and runs the MMAs of slice kt (GB_BK / 16 k16 steps). The bf16 tiles keep the operand's stored layout
// (contiguous dimension contiguous) with rows padded by 8 bf16 (16 bytes), so the 8 rows of an ldmatrix fall in
// distinct bank groups. MMAs: per 16-wide k slice a warp loads its B fragment pairs (16 x 16) and its A fragments
// (16 x 16) with ldmatrix.x4, .trans where the stored layout is the transpose of the fragment's (A stored [k, m];
// B stored [k, n]), and issues mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32. The epilogue writes straight from the
// accumulators: lane (g = lane / 4, q = lane % 4) holds rows g and g + 8, columns 2q and 2q + 1 of each 16 x 8
// block; float2 loads / stores where C_g is 8-byte aligned and ldc even, scalar ones otherwise and at the last odd
// column; a bf16 C_g the same with bf16x2 (4 bytes) where C_g is 4-byte aligned and ldc even (one uniform branch a
// CTA: gb_epilogue's two instantiations).
// Tuning macros (-Dsparkmoe.cuda.defines=...; GroupedGemm mirrors GB_BN, GB_BK, GB_STAGES, GB_WARPS_N and GC_UNROLL
// in its tile count, dynamic shared-memory size, block size and cast grid): GB_BN (128 or 256), GB_BK (32 or 64),
// GB_STAGES (2 or more, within the shared memory: GB_STAGES=2 needs 72 KB, for devices that grant a block less than
// the default's 108 KB, such as sm_86 / sm_89), GB_WARPS_N (4, or 2: 4 warps of 64 x 64 at GB_BN 128),
// GB_MIN_BLOCKS (CTAs per SM the registers must allow), GC_UNROLL (chunks a cast thread loads before storing).
// Timings of the define sets: gpu-executor/GPU-RESULTS.md.
// gpu-executor/scripts/grouped_gemm_emulate.py emulates this file's index arithmetic and the host side.

#include <cuda_bf16.h>

#include "grouped_gemm_params.cuh"  // GBParams, GB_MAX_GROUPS, gb_group_of

#define GB_BM 128
#ifndef GB_BN
#define GB_BN 128
#endif
#ifndef GB_BK
#define GB_BK 64
#endif
#ifndef GB_STAGES
#define GB_STAGES 3
#endif
#ifndef GB_WARPS_N  // warps across n (2 rows of them across m): 4 (8 warps) or 2 (4 warps of 64 x GB_BN/2)
#define GB_WARPS_N 4
#endif
#define GB_WN (GB_BN / GB_WARPS_N)  // warp tile columns: 32 or 64
#define GB_NJ (GB_WN / 8)
#define GB_PAD 8
#define GB_THREADS (64 * GB_WARPS_N)  // CudaBackend mirrors it in the launch
#ifndef GB_MIN_BLOCKS  // 2 caps the registers at 128 a thread (8 warps of 64 x 32: no spills)
#define GB_MIN_BLOCKS (GB_BN == 128 ? 2 : 1)
#endif

// grouped_cast_bf16's parameter (by value). Byte offsets: srcLd 0, dstLd 4, count 8, pad 12, src 16, dst 528,
// rows 1040, cols 1296; size 1552.
struct GCParams {
    int srcLd, dstLd, count, pad;
    long long src[GB_MAX_GROUPS];  // device byte address of the f32 block's element (0, 0)
    long long dst[GB_MAX_GROUPS];  // device byte address of its bf16 copy (16-byte aligned)
    int rows[GB_MAX_GROUPS];
    int cols[GB_MAX_GROUPS];
};
static_assert(sizeof(GCParams) == 1552, "GCParams layout changed: update CudaBackend.castGroupedOperand");

// Stage layout (elements): A [BM][BK+PAD] or, stored transposed, [BK][BM+PAD]; then B [BK][BN+PAD] or [BN][BK+PAD].
#define GB_MAX(x, y) ((x) > (y) ? (x) : (y))
#define GB_A_TILE GB_MAX(GB_BM * (GB_BK + GB_PAD), GB_BK * (GB_BM + GB_PAD))
#define GB_B_TILE GB_MAX(GB_BN * (GB_BK + GB_PAD), GB_BK * (GB_BN + GB_PAD))
#define GB_STAGE (GB_A_TILE + GB_B_TILE)
#define GB_SMEM_BYTES (GB_STAGES * GB_STAGE * 2)
static_assert((GB_A_TILE * 2) % 128 == 0 && (GB_B_TILE * 2) % 128 == 0, "tile alignment");
static_assert(GB_BM == 2 * 64 && (GB_BN == 256 || GB_BN == 128) && (GB_WN == 32 || GB_WN == 64),
              "2 x GB_WARPS_N warps of 64 x 32 or 64 x 64");
static_assert(GB_STAGES >= 2 && (GB_BK == 32 || GB_BK == 64), "ring of 2+ stages; K slices of 32 or 64");

// ---------------------------------------------------------------- PTX wrappers

// (gg_shared_addr, gg_cp16, gg_cp_commit, gg_cp_wait: grouped_gemm_params.cuh)

template <bool TRANS>
__device__ __forceinline__ void gb_ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
    }
}

__device__ __forceinline__ void gb_mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------- the cast

#ifndef GC_UNROLL
#define GC_UNROLL 4  // chunks a thread loads before it stores any (memory-level parallelism); CudaBackend mirrors it
#endif

extern "C" __global__ void __launch_bounds__(256) grouped_cast_bf16(const GCParams p) {
    const int e = blockIdx.y;
    const int rows = p.rows[e], cols = p.cols[e];
    const unsigned cpr = (unsigned)p.dstLd >> 3;  // 16-byte chunks per scratch row
    const unsigned total = (unsigned)rows * cpr;  // < 2^31: the host checks
    const float* __restrict__ src = reinterpret_cast<const float*>(p.src[e]);
    __nv_bfloat16* __restrict__ dst = reinterpret_cast<__nv_bfloat16*>(p.dst[e]);
    const long long srcLd = p.srcLd;
    const bool vec = (reinterpret_cast<unsigned long long>(src) & 15) == 0 && (p.srcLd & 3) == 0;
    for (unsigned c0 = blockIdx.x * (256u * GC_UNROLL) + threadIdx.x; c0 < total; c0 += gridDim.x * (256u * GC_UNROLL)) {
        float v[GC_UNROLL][8];
#pragma unroll
        for (int u = 0; u < GC_UNROLL; u++) {
            const unsigned c = c0 + u * 256u;
            const unsigned r = c / cpr;
            const int col = (int)(c - r * cpr) * 8;
            const float* s = src + r * srcLd + col;
            if (c >= total) {
#pragma unroll
                for (int i = 0; i < 8; i++) v[u][i] = 0.f;
            } else if (vec && col + 8 <= cols) {
                const float4 x = __ldg(reinterpret_cast<const float4*>(s));
                const float4 y = __ldg(reinterpret_cast<const float4*>(s) + 1);
                v[u][0] = x.x; v[u][1] = x.y; v[u][2] = x.z; v[u][3] = x.w;
                v[u][4] = y.x; v[u][5] = y.y; v[u][6] = y.z; v[u][7] = y.w;
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) v[u][i] = col + i < cols ? __ldg(s + i) : 0.f;
            }
        }
#pragma unroll
        for (int u = 0; u < GC_UNROLL; u++) {
            const unsigned c = c0 + u * 256u;
            if (c < total) {
                const unsigned r = c / cpr;
                const int col = (int)(c - r * cpr) * 8;
                uint4 w;
                __nv_bfloat162 h;
                h = __floats2bfloat162_rn(v[u][0], v[u][1]); w.x = *reinterpret_cast<unsigned*>(&h);
                h = __floats2bfloat162_rn(v[u][2], v[u][3]); w.y = *reinterpret_cast<unsigned*>(&h);
                h = __floats2bfloat162_rn(v[u][4], v[u][5]); w.z = *reinterpret_cast<unsigned*>(&h);
                h = __floats2bfloat162_rn(v[u][6], v[u][7]); w.w = *reinterpret_cast<unsigned*>(&h);
                *reinterpret_cast<uint4*>(dst + (long long)r * p.dstLd + col) = w;
            }
        }
    }
}

// ---------------------------------------------------------------- the GEMM

// Issues the cp.async copies of a ROWS x COLS bf16 slice (COLS contiguous, row stride ld elements, 16-byte aligned
// rows) at base into a stage tile with row stride LD: chunk v = threadIdx.x + 256 i covers row v / (COLS/8),
// columns 8 (v % (COLS/8)) .. +7. Chunks at or past rows / cols (valid from base) are zero-filled; a chunk that
// starts before cols is copied whole (its elements past cols are the scratch's zero padding).
template <int ROWS, int COLS, int LD>
__device__ __forceinline__ void gb_copy(unsigned tile, const __nv_bfloat16* base, int ld, int rows, int cols) {
    constexpr int CPR = COLS / 8;
    constexpr int N = ROWS * COLS / 8 / GB_THREADS;
    static_assert(N * 8 * GB_THREADS == ROWS * COLS, "slice does not split into 16-byte chunks evenly");
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int v = threadIdx.x + i * GB_THREADS;
        const int row = v / CPR;
        const int col = (v % CPR) * 8;
        const bool in = row < rows && col < cols;
        gg_cp16(tile + (row * LD + col) * 2, in ? base + (row * ld + col) : base, in ? 16 : 0);
    }
}

// One warp's MMAs over k = KS .. KS+15 of a stage into its 64 x GB_WN accumulators.
template <bool TA, bool TB, int KS>
__device__ __forceinline__ void gb_warp_mma(float (&acc)[4][GB_NJ][4], unsigned aLane, unsigned bLane) {
    constexpr int LDA_S = TA ? GB_BM + GB_PAD : GB_BK + GB_PAD;
    constexpr int LDB_S = TB ? GB_BK + GB_PAD : GB_BN + GB_PAD;
    unsigned b[GB_NJ / 2][4];
#pragma unroll
    for (int j = 0; j < GB_NJ / 2; j++) {
        gb_ldmatrix_x4<!TB>(b[j], bLane + 2 * (TB ? j * 16 * LDB_S + KS : KS * LDB_S + j * 16));
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        unsigned a[4];
        gb_ldmatrix_x4<TA>(a, aLane + 2 * (TA ? KS * LDA_S + i * 16 : i * 16 * LDA_S + KS));
#pragma unroll
        for (int j = 0; j < GB_NJ; j++) gb_mma(acc[i][j], a, b[j >> 1][(j & 1) * 2], b[j >> 1][(j & 1) * 2 + 1]);
    }
}

template <int KS>
struct GbSteps {
    template <bool TA, bool TB>
    __device__ __forceinline__ static void run(float (&acc)[4][GB_NJ][4], unsigned aLane, unsigned bLane) {
        gb_warp_mma<TA, TB, KS>(acc, aLane, bLane);
        if constexpr (KS + 16 < GB_BK) GbSteps<KS + 16>::template run<TA, TB>(acc, aLane, bLane);
    }
};

// alpha * v + beta * C into the pair C[row, col], C[row, col + 1] below N (crow = C_g + row * ldc, CT float or
// __nv_bfloat16): C read widened where beta != 0, the result stored in C's dtype (a bf16 C rounded to nearest even
// once); one pair load and store where vecC (C_g aligned to the pair: 8 bytes of f32, 4 of bf16; ldc even), scalar at
// the last odd column.
template <typename CT>
__device__ __forceinline__ void gb_store_pair(CT* crow, int col, int N, float v0, float v1, float alpha, float beta,
                                              bool vecC) {
    v0 *= alpha;
    v1 *= alpha;
    if (vecC && col + 1 < N) {
        if (beta != 0.f) {
            const float2 o = gg_ld2(crow + col);
            v0 = fmaf(beta, o.x, v0);
            v1 = fmaf(beta, o.y, v1);
        }
        gg_st2(crow + col, v0, v1);
    } else {
        if (col < N) gg_st1(crow + col, beta != 0.f ? fmaf(beta, gg_ld1(crow + col), v0) : v0);
        if (col + 1 < N) gg_st1(crow + col + 1, beta != 0.f ? fmaf(beta, gg_ld1(crow + col + 1), v1) : v1);
    }
}

// A CTA's epilogue into C_g of element type CT (float or __nv_bfloat16), straight from the accumulators.
template <typename CT>
__device__ __forceinline__ void gb_epilogue(const float (&acc)[4][GB_NJ][4], CT* __restrict__ C, int ldc, int M,
                                            int N, int rowBase, int colBase, float alpha, float beta) {
    const bool vecC = (reinterpret_cast<unsigned long long>(C) & (2 * sizeof(CT) - 1)) == 0 && (ldc & 1) == 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = rowBase + i * 16 + h * 8;
            if (row < M) {
                CT* crow = C + (long long)row * ldc;
#pragma unroll
                for (int j = 0; j < GB_NJ; j++) {
                    gb_store_pair(crow, colBase + j * 8, N, acc[i][j][2 * h], acc[i][j][2 * h + 1], alpha, beta,
                                  vecC);
                }
            }
        }
    }
}

extern __shared__ __align__(128) unsigned char gb_smem[];

template <bool TA, bool TB>
__device__ __forceinline__ void gb_impl(const GBParams& p) {
#if __CUDA_ARCH__ >= 800
    const int t = blockIdx.x;
    const int g = gb_group_of(p, t);
    const int M = p.m[g], N = p.n[g], K = p.k[g];
    const int tilesN = (N + GB_BN - 1) / GB_BN;
    const int local = t - p.tileStart[g];
    const int m0 = (local / tilesN) * GB_BM;
    const int n0 = (local % tilesN) * GB_BN;
    const __nv_bfloat16* __restrict__ A = reinterpret_cast<const __nv_bfloat16*>(p.a[g]);
    const __nv_bfloat16* __restrict__ B = reinterpret_cast<const __nv_bfloat16*>(p.b[g]);
    const int lda = p.lda, ldb = p.ldb;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = warp / GB_WARPS_N;  // rows wm * 64 .. +63 of the tile
    const int wn = warp % GB_WARPS_N;  // columns wn * GB_WN .. +GB_WN-1

    float acc[4][GB_NJ][4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < GB_NJ; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;
        }
    }

    const int numK = (K + GB_BK - 1) / GB_BK;
    if (numK > 0) {
        constexpr int LDA_S = TA ? GB_BM + GB_PAD : GB_BK + GB_PAD;
        constexpr int LDB_S = TB ? GB_BK + GB_PAD : GB_BN + GB_PAD;
        const unsigned smem = gg_shared_addr(gb_smem);
        const int r8 = lane & 7, j0 = (lane >> 3) & 1, j1 = lane >> 4;
        const int aRow = wm * 64, bCol = wn * GB_WN;
        const unsigned aLane = 2 * (TA ? (j1 * 8 + r8) * LDA_S + aRow + j0 * 8
                                       : (aRow + j0 * 8 + r8) * LDA_S + j1 * 8);
        const unsigned bLane = 2 * (TB ? (bCol + j1 * 8 + r8) * LDB_S + j0 * 8
                                       : (j0 * 8 + r8) * LDB_S + bCol + j1 * 8);
        const __nv_bfloat16* aPtr = TA ? A + m0 : A + (long long)m0 * lda;
        const __nv_bfloat16* bPtr = TB ? B + (long long)n0 * ldb : B + n0;
        const long long aStep = TA ? (long long)GB_BK * lda : GB_BK;
        const long long bStep = TB ? GB_BK : (long long)GB_BK * ldb;
        auto issue = [&](int kt) {  // slice kt into stage kt % STAGES (an empty group past the end)
            if (kt < numK) {
                const int kLeft = K - kt * GB_BK;
                const unsigned as = smem + (kt % GB_STAGES) * (GB_STAGE * 2);
                const unsigned bs = as + GB_A_TILE * 2;
                const __nv_bfloat16* a = aPtr + kt * aStep;
                const __nv_bfloat16* b = bPtr + kt * bStep;
                if constexpr (!TA) gb_copy<GB_BM, GB_BK, LDA_S>(as, a, lda, M - m0, kLeft);
                else gb_copy<GB_BK, GB_BM, LDA_S>(as, a, lda, kLeft, M - m0);
                if constexpr (!TB) gb_copy<GB_BK, GB_BN, LDB_S>(bs, b, ldb, kLeft, N - n0);
                else gb_copy<GB_BN, GB_BK, LDB_S>(bs, b, ldb, N - n0, kLeft);
            }
            gg_cp_commit();
        };
#pragma unroll
        for (int s = 0; s < GB_STAGES - 1; s++) issue(s);
        // Step kt: committed groups before its wait: STAGES - 1 + kt; wait_group STAGES - 2 leaves slice kt
        // complete (this thread's copies); the barrier makes every thread's copies visible and ends step kt - 1,
        // the last reader of stage (kt - 1) % STAGES == (kt + STAGES - 1) % STAGES, which is refilled next.
        for (int kt = 0; kt < numK; kt++) {
            gg_cp_wait<GB_STAGES - 2>();
            __syncthreads();
            issue(kt + GB_STAGES - 1);
            const unsigned as = smem + (kt % GB_STAGES) * (GB_STAGE * 2);
            GbSteps<0>::template run<TA, TB>(acc, as + aLane, as + GB_A_TILE * 2 + bLane);
        }
        gg_cp_wait<0>();  // no copy (only empty groups remain) outlives the CTA
    }

    const int rowBase = m0 + wm * 64 + (lane >> 2);
    const int colBase = n0 + wn * GB_WN + 2 * (lane & 3);
    if (p.flags[g] & GB_FLAG_C_BF16) {
        gb_epilogue(acc, reinterpret_cast<__nv_bfloat16*>(p.c[g]), p.ldc, M, N, rowBase, colBase, p.alpha, p.beta);
    } else {
        gb_epilogue(acc, reinterpret_cast<float*>(p.c[g]), p.ldc, M, N, rowBase, colBase, p.alpha, p.beta);
    }
#else
    __trap();  // bf16 tensor cores need sm_80; CudaBackend never launches this kernel below it
#endif
}

extern "C" {

__global__ void __launch_bounds__(GB_THREADS, GB_MIN_BLOCKS) grouped_gemm_bf16_nn(const GBParams p) { gb_impl<false, false>(p); }
__global__ void __launch_bounds__(GB_THREADS, GB_MIN_BLOCKS) grouped_gemm_bf16_nt(const GBParams p) { gb_impl<false, true>(p); }
__global__ void __launch_bounds__(GB_THREADS, GB_MIN_BLOCKS) grouped_gemm_bf16_tn(const GBParams p) { gb_impl<true, false>(p); }
__global__ void __launch_bounds__(GB_THREADS, GB_MIN_BLOCKS) grouped_gemm_bf16_tt(const GBParams p) { gb_impl<true, true>(p); }

}  // extern "C"
