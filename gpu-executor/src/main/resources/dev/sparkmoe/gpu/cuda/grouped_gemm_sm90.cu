// Grouped GEMM on Hopper's warpgroup tensor-core instructions (wgmma.mma_async, sm_90a): the same launches, semantics
// and parameter as grouped_gemm_bf16.cu's grouped_gemm_bf16_{nn,nt,tn,tt}, which GroupedGemm runs instead on sm_80,
// sm_86, sm_89 and other cards. KernelLibrary compiles this file (a name ending in _sm90.cu) for sm_90a, the
// architecture-specific target that wgmma needs, with -DSPARKMOE_SM90A (nvcc's and NVRTC's own macro for the target,
// __CUDA_ARCH_FEAT_SM90_ALL, enables the code as well); its cubin loads only on compute capability 9.0.
//
// Semantics (as grouped_gemm_bf16.cu; Backend.groupedGemm): for each group g, row-major C_g [m, n] (ldc elements), f32,
// or bf16 where the group's flags have GB_FLAG_C_BF16 (grouped_gemm_params.cuh)
//     C_g = alpha * op(A_g) * op(B_g) + beta * C_g,   op(A_g) [m, k], op(B_g) [k, n]
// A_g is stored [m, k] (lda) or, transposed, [k, m]; B_g [k, n] (ldb) or [n, k]. A and B are bf16 as
// grouped_cast_bf16 packs them or as images read in place: every group's block 16-byte aligned, row strides multiples
// of 8 elements, and a 16-byte chunk that starts inside a row holds only valid elements or zeros. Products accumulate
// in f32 (wgmma .f32.bf16.bf16); the epilogue applies alpha and beta in f32 (a bf16 C read widened) and a bf16 C is
// that f32 value rounded to nearest even once, as cuBLAS writes a bf16 C. beta == 0 never reads C (it may hold NaN);
// k == 0 gives C_g = beta * C_g. Ragged m and k, any n.
// B in two blocks (GBParams.bSplit > 0: Backend.groupedGemmSplitB, the experts' gate and up weights as one operand):
// B_g's stored rows at or past bSplit come from b2[g] (grouped_gemm_params.cuh); only the B fills see it, each stored
// row of a slice reading from the block it lies in, so a split anywhere (inside a tile's n rows, inside a K slice)
// costs one compare a row copied and nothing else changes: the tiles, the k walk and the sums are the whole GEMM's.
//
// Parameter and group mapping: GBParams by value (grouped_gemm_params.cuh, the same struct and byte layout as the
// mma.sync kernel). Tiles carry a flat index over the launch's groups: tileStart holds the prefix sum of each group's
// GS_BM x GS_BN tiles (the host counts them with this file's tile shape), the groups come largest k first so that the
// longest tiles start first; a tile's group is found by binary search (gb_group_of), the tile row-major inside the
// group (neighbouring indices share A's row block; B_g stays in L2). The CTAs are persistent: the host launches
// min(tiles, SMs x CTAs an SM holds) of them and CTA b runs tiles b, b + gridDim.x, b + 2 gridDim.x, ... (any grid
// of 1 or more is right: with one CTA a tile it is the plain mapping).
//
// Tiling: a CTA of two warpgroups (256 threads) computes a GS_BM x GS_BN = 128 x GS_BN tile of C_g (GS_BN 128 or
// 256); warpgroup w owns rows 64 w .. 64 w + 63 and issues wgmma.mma_async.m64nGS_BNk16 (bf16 in, f32 accumulators
// in registers: GS_BN / 2 a thread). K is walked in slices of GS_BK = 64 (128 bytes of bf16: one row of the
// 128-byte swizzle) through a ring of GS_STAGES shared-memory stages, each holding A's 128 x 64 and B's GS_BN x 64
// slice (16 KB + GS_BN x 128 bytes), laid out as wgmma's shared-memory matrix descriptors read them with 128-byte
// swizzling:
//   - K-major (A stored [m, k], B stored [n, k]): one 128-byte line per row of m (n), 64 k values; 8 lines form a
//     1024-byte swizzle atom; descriptor SBO = 1024 (8 rows to the next 8), LBO unused (1); the k16 step kk of a slice
//     starts kk * 32 bytes into the line.
//   - MN-major (A stored [k, m]: transpose bit a = 1; B stored [k, n]: transpose bit b = 1): atoms of 64 m (n)
//     values x 8 k rows, 128-byte lines of 64 contiguous m (n) per k row; the 64 k rows of one 64-wide m (n) block
//     are contiguous (8 KB), the blocks follow each other: LBO = 8192 (one 64-wide block to the next), SBO = 1024
//     (8 k rows to the next 8); the k16 step kk starts at kk * 2048 bytes.
//   In both, 16-byte chunk c of line l lies at l * 128 + ((c ^ (l % 8)) * 16) from a 1024-byte aligned tile: the
//   128-byte swizzle (address bits 4-6 XOR bits 7-9) that the descriptors' swizzle mode 1 undoes.
// The stages are filled by cp.async.cg (16 bytes; src-size 0 zero-fills chunks past a group's rows or k, so edge
// tiles need no other case), GS_STAGES - 2 slices ahead, through one ring for all of a CTA's tiles: a fill cursor
// walks the slices of the CTA's tiles in order (skipping k == 0 tiles, which have none), so the next tile's first
// slices load during the current tile's last steps and its epilogue. Step u (the u-th slice of the CTA): wait for
// this thread's copies of slice u (cp.async.wait_group GS_STAGES - 3), fence.proxy.async (make them visible to
// wgmma's async proxy), the step's ONE barrier (every copy of slice u landed; every warpgroup has retired its wgmma
// of step u - 2), issue the four k16 wgmmas of slice u and commit them, issue the copies of slice u + GS_STAGES - 2
// into the stage of slice u - 2, then wgmma.wait_group 1 (step u - 1's wgmmas retired: the tensor cores always hold
// one step's group queued); wgmma.wait_group 0 ends a tile before its epilogue.
// The epilogue writes straight from the accumulators (the m64nNk16 D fragment: warp q of the warpgroup holds rows
// 16 q .. 16 q + 15, lane (r = lane / 4, c = lane % 4) rows r and r + 8, columns 8 j + 2 c and + 1 of each 8-wide
// block j): float2 where C_g is 8-byte aligned and ldc even, scalar at the last odd column; a bf16 C_g the same way
// with bf16x2 (4 bytes) where C_g is 4-byte aligned and ldc even. Where beta != 0 it reads C: the tile's rows are
// prefetched into L2 (prefetch.global.L2, the 128-byte lines of the row's bytes in C's dtype) when the tile starts,
// and a thread loads GS_EPI pairs before storing them, so that its loads are in flight together. The dtype is one
// uniform branch a tile (gs_epilogue's two instantiations).
// gpu-executor/scripts/grouped_gemm_sm90_emulate.py emulates the fills, descriptors, ring and epilogue on the CPU.
// Tuning macros (-Dsparkmoe.cuda.defines=...; GroupedGemm mirrors GS_BN and GS_STAGES in its tile count and dynamic
// shared-memory size): GS_BN (256, or 128), GS_STAGES (3 or more within the 227 KB a block may have: stages x
// (16 KB + GS_BN x 128 bytes) + 1 KB of alignment slack; the defaults 256 and 4 take 193 KB, 128 and 6 take 197 KB),
// GS_MIN_BLOCKS (2 keeps the registers at 128 a thread so that two CTAs of 97 KB (GS_BN 128, GS_STAGES 3) share an SM,
// one's epilogue overlapping the other's K steps; the host asks the occupancy API how many CTAs an SM holds).
// The default tile is the wider one: per FLOP a 128 x 256 tile moves 3/4 of the operand bytes from L2 to shared memory
// that a 128 x 128 tile moves, and at 128 x 128 that traffic is of the order of L2's bandwidth on the experts' shapes.

#include <cuda_bf16.h>

#include "grouped_gemm_params.cuh"  // GBParams, GB_MAX_GROUPS, gb_group_of

#define GS_BM 128
#ifndef GS_BN
#define GS_BN 256
#endif
#define GS_BK 64
#ifndef GS_STAGES
#define GS_STAGES 4
#endif
#define GS_THREADS 256  // two warpgroups; GroupedGemm mirrors it in the launch
#ifndef GS_MIN_BLOCKS  // CTAs an SM must hold (registers): 2 with GS_BN 128 and GS_STAGES 3 (97 KB each)
#define GS_MIN_BLOCKS 1
#endif
#define GS_A_BYTES (GS_BM * GS_BK * 2)
#define GS_B_BYTES (GS_BN * GS_BK * 2)
#define GS_STAGE_BYTES (GS_A_BYTES + GS_B_BYTES)
#define GS_SMEM_BYTES (GS_STAGES * GS_STAGE_BYTES + 1024)  // + slack to align the ring to 1024 bytes
#define GS_ACC (GS_BN / 2)                                 // f32 accumulators a thread
#define GS_EPI (GS_BN == 256 ? 4 : 8)                      // C pairs a thread loads at once in the beta != 0 epilogue
#define GS_NO_SPLIT 0x7fffffff                             // a fill's split where every row comes from its first block
static_assert(GS_BN == 128 || GS_BN == 256, "GS_BN: 128 or 256");
static_assert(GS_STAGES >= 3, "GS_STAGES: 3 or more (copies run GS_STAGES - 2 slices ahead)");
static_assert(GS_SMEM_BYTES <= 227 * 1024, "GS_STAGES x (16 KB + GS_BN x 128 bytes) exceeds sm_90's 227 KB a block");

// ---------------------------------------------------------------- PTX wrappers

// (gg_shared_addr, gg_cp16, gg_cp_commit, gg_cp_wait: grouped_gemm_params.cuh)

// This thread's generic-proxy writes to shared memory (its landed cp.async copies) made visible to the async proxy,
// through which wgmma reads its operands.
__device__ __forceinline__ void gs_fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ void gs_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void gs_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void gs_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void gs_prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

// Keeps the compiler from moving accesses of the accumulators across the asynchronous wgmma (it does not know that
// the registers are written after the instruction issues).
__device__ __forceinline__ void gs_fence_acc(float (&d)[GS_ACC]) {
#pragma unroll
    for (int i = 0; i < GS_ACC; i++) asm volatile("" : "+f"(d[i])::"memory");
}

// A wgmma shared-memory matrix descriptor with 128-byte swizzling: start address, leading and stride dimension byte
// offsets (each encoded >> 4 in 14 bits), base offset 0 (the tiles start on 1024-byte boundaries).
__device__ __forceinline__ unsigned long long gs_desc(unsigned start, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((start & 0x3FFFF) >> 4) | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// D[64 x 128] (+)= A[64 x 16] * B[16 x 128] of one warpgroup; TRANS_A / TRANS_B: 1 = M- / N-major tile.
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void gs_wgmma_n128(float (&d)[64], unsigned long long descA, unsigned long long descB) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, %67, %68;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(descA), "l"(descB), "r"(1), "n"(TRANS_A), "n"(TRANS_B));
}

// D[64 x 256] (+)= A[64 x 16] * B[16 x 256] of one warpgroup; TRANS_A / TRANS_B: 1 = M- / N-major tile.
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void gs_wgmma_n256(float (&d)[128], unsigned long long descA, unsigned long long descB) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, %131, %132;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(descA), "l"(descB), "r"(1), "n"(TRANS_A), "n"(TRANS_B));
}

// One k16 step of a warpgroup: its 64 x GS_BN accumulators += A[64 x 16] B[16 x GS_BN].
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void gs_wgmma(float (&d)[GS_ACC], unsigned long long descA, unsigned long long descB) {
#if GS_BN == 256
    gs_wgmma_n256<TRANS_A, TRANS_B>(d, descA, descB);
#else
    gs_wgmma_n128<TRANS_A, TRANS_B>(d, descA, descB);
#endif
}

// ---------------------------------------------------------------- the epilogue's C pairs

// C[row, col] and C[row, col + 1] (crow = C_g + row * ldc, CT float or __nv_bfloat16: widened) where beta != 0
// (else 0, C never read): one pair load where vecC (C_g aligned to the pair: 8 bytes of f32, 4 of bf16; ldc even) and
// both columns are inside N, else scalar loads of the columns below N.
template <typename CT>
__device__ __forceinline__ float2 gs_load_pair(const CT* crow, int col, int N, float beta, bool vecC) {
    float2 o = make_float2(0.f, 0.f);
    if (beta != 0.f) {
        if (vecC && col + 1 < N) {
            o = gg_ld2(crow + col);
        } else {
            if (col < N) o.x = gg_ld1(crow + col);
            if (col + 1 < N) o.y = gg_ld1(crow + col + 1);
        }
    }
    return o;
}

// alpha * v + beta * old into the pair's columns below N (gb_store_pair's arithmetic, with C loaded beforehand), in
// f32, stored in C's dtype (a bf16 C rounded to nearest even once).
template <typename CT>
__device__ __forceinline__ void gs_store_pair(CT* crow, int col, int N, float v0, float v1, float alpha, float beta,
                                              float2 old, bool vecC) {
    v0 *= alpha;
    v1 *= alpha;
    if (beta != 0.f) {
        v0 = fmaf(beta, old.x, v0);
        v1 = fmaf(beta, old.y, v1);
    }
    if (vecC && col + 1 < N) {
        gg_st2(crow + col, v0, v1);
    } else {
        if (col < N) gg_st1(crow + col, v0);
        if (col + 1 < N) gg_st1(crow + col + 1, v1);
    }
}

// A tile's epilogue into C_g of element type CT (float or __nv_bfloat16): this thread's rows rowBase and rowBase + 8,
// the column pairs colBase + 8 j; vector pairs where C_g's address and ldc allow them (8 bytes of f32, 4 of bf16).
template <typename CT>
__device__ __forceinline__ void gs_epilogue(const float (&acc)[GS_ACC], CT* __restrict__ C, int ldc, int M, int N,
                                            int rowBase, int colBase, float alpha, float beta) {
    const bool vecC = (reinterpret_cast<unsigned long long>(C) & (2 * sizeof(CT) - 1)) == 0 && (ldc & 1) == 0;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int row = rowBase + h * 8;
        if (row < M) {
            CT* crow = C + (long long)row * ldc;
            // GS_EPI pairs at a time: their C loads (beta != 0) in flight together, then the stores
#pragma unroll
            for (int j0 = 0; j0 < GS_BN / 8; j0 += GS_EPI) {
                float2 old[GS_EPI];
#pragma unroll
                for (int j = 0; j < GS_EPI; j++) old[j] = gs_load_pair(crow, colBase + (j0 + j) * 8, N, beta, vecC);
#pragma unroll
                for (int j = 0; j < GS_EPI; j++) {
                    const int i = 4 * (j0 + j) + 2 * h;
                    gs_store_pair(crow, colBase + (j0 + j) * 8, N, acc[i], acc[i + 1], alpha, beta, old[j], vecC);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- stage fills

// A K-major slice: ROWS rows (of m or n) x 64 k of an operand stored [rows, k] (row stride ld elements), from base
// (element (row 0, k 0) of the slice); rows at or past rowsLeft and chunks at or past kLeft are zero-filled. Rows at
// or past split (counted from the slice's first row; may be <= 0, GS_NO_SPLIT for none) come from the second block:
// row r at base2 + (r - split) * ld (base2: that block's row 0 at the slice's k). Zero-filled chunks name base, or
// base2 where the slice lies wholly in the second block (base may lie past the first). Thread x copies chunk x % 8 of
// rows x / 8 + 32 i (8 threads read one row's 128 bytes).
template <int ROWS>
__device__ __forceinline__ void gs_fill_kmajor(unsigned tile, const __nv_bfloat16* base, const __nv_bfloat16* base2,
                                               int split, int ld, int rowsLeft, int kLeft) {
    constexpr int N = ROWS * 8 / GS_THREADS;
    const int c = threadIdx.x & 7;
    const int r0 = threadIdx.x >> 3;
    const bool kIn = c * 8 < kLeft;
    const unsigned dst = tile + r0 * 128 + ((c ^ (r0 & 7)) << 4);
    const __nv_bfloat16* none = split > 0 ? base : base2;
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int row = r0 + 32 * i;
        const bool in = kIn && row < rowsLeft;
        const __nv_bfloat16* src = row < split ? base + (row * ld + c * 8) : base2 + ((row - split) * ld + c * 8);
        gg_cp16(dst + i * 32 * 128, in ? src : none, in ? 16 : 0);
    }
}

// An MN-major slice: 64 k rows x COLS (m or n) of an operand stored [k, cols] (row stride ld), from base (element
// (k 0, col 0) of the slice), as COLS / 64 blocks of 64 k rows x 64 columns; k rows at or past kLeft and chunks at or
// past colsLeft are zero-filled. k rows at or past split (counted from the slice's first k row; may be <= 0,
// GS_NO_SPLIT for none) come from the second block: k row r at base2 + (r - split) * ld (base2: that block's k row 0
// at the slice's first column); zero-filled chunks name base, or base2 where the slice lies wholly in the second
// block. Consecutive threads copy consecutive chunks of one k row.
template <int COLS>
__device__ __forceinline__ void gs_fill_mnmajor(unsigned tile, const __nv_bfloat16* base, const __nv_bfloat16* base2,
                                                int split, int ld, int kLeft, int colsLeft) {
    constexpr int CPR = COLS / 8;            // chunks a k row: 16 or 32
    constexpr int RPP = GS_THREADS / CPR;    // k rows a pass: 16 or 8
    constexpr int N = GS_BK / RPP;
    static_assert(RPP % 8 == 0, "a pass must cover whole swizzle atoms");
    const int cc = threadIdx.x % CPR;
    const int k0 = threadIdx.x / CPR;
    const int c = cc & 7;
    const bool colIn = cc * 8 < colsLeft;
    const unsigned dst = tile + (cc >> 3) * (GS_BK * 128) + k0 * 128 + ((c ^ (k0 & 7)) << 4);
    const __nv_bfloat16* none = split > 0 ? base : base2;
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int kr = k0 + RPP * i;
        const bool in = colIn && kr < kLeft;
        const __nv_bfloat16* src = kr < split ? base + (kr * ld + cc * 8) : base2 + ((kr - split) * ld + cc * 8);
        gg_cp16(dst + i * RPP * 128, in ? src : none, in ? 16 : 0);
    }
}

// ---------------------------------------------------------------- the GEMM

extern __shared__ __align__(1024) unsigned char gs_smem[];

// The fill cursor: the next K slice that this CTA's copies fetch (tile t, slice kt) and that tile's operands.
struct GsCursor {
    int t;                   // flat tile index (blockIdx.x + i * gridDim.x); >= the launch's tiles when exhausted
    int kt, numK, K;
    int aRows, bRows;        // the tile's rows of A and columns of B inside its group: M - m0, N - n0
    const __nv_bfloat16* a;  // the tile's A and B at k = 0
    const __nv_bfloat16* b;
    // B's second block (GBParams.bSplit > 0) and where it starts: K-major (TB), b2 = B2_g at k = 0 and bSplit =
    // split - n0 (tile rows); MN-major, b2 = B2_g + n0 and bSplit = split (k rows, the fill subtracts the slice's
    // start). Without a split b2 = b and bSplit = GS_NO_SPLIT.
    const __nv_bfloat16* b2;
    int bSplit;
};

// The first tile at or after c.t (stepping by gridDim.x) that has a K slice (k > 0), or c.t >= total.
template <bool TA, bool TB>
__device__ __forceinline__ void gs_seek(GsCursor& c, const GBParams& p, int total) {
    for (; c.t < total; c.t += gridDim.x) {
        const int g = gb_group_of(p, c.t);
        const int K = p.k[g];
        if (K > 0) {
            const int N = p.n[g];
            const int tilesN = (N + GS_BN - 1) / GS_BN;
            const int local = c.t - p.tileStart[g];
            const int m0 = (local / tilesN) * GS_BM, n0 = (local % tilesN) * GS_BN;
            const __nv_bfloat16* A = reinterpret_cast<const __nv_bfloat16*>(p.a[g]);
            const __nv_bfloat16* B = reinterpret_cast<const __nv_bfloat16*>(p.b[g]);
            c.a = TA ? A + m0 : A + (long long)m0 * p.lda;
            c.b = TB ? B + (long long)n0 * p.ldb : B + n0;
            if (p.bSplit > 0) {
                const __nv_bfloat16* B2 = reinterpret_cast<const __nv_bfloat16*>(p.b2[g]);
                c.b2 = TB ? B2 : B2 + n0;
                c.bSplit = TB ? p.bSplit - n0 : p.bSplit;
            } else {
                c.b2 = c.b;
                c.bSplit = GS_NO_SPLIT;
            }
            c.aRows = p.m[g] - m0;
            c.bRows = N - n0;
            c.K = K;
            c.numK = (K + GS_BK - 1) / GS_BK;
            c.kt = 0;
            return;
        }
    }
}

template <bool TA, bool TB>
__device__ __forceinline__ void gs_impl(const GBParams& p) {
#if defined(__CUDA_ARCH__) && (defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(SPARKMOE_SM90A))
    const int last = p.groups - 1;
    const int total = p.tileStart[last] + ((p.m[last] + GS_BM - 1) / GS_BM) * ((p.n[last] + GS_BN - 1) / GS_BN);
    const int lda = p.lda, ldb = p.ldb;
    const long long aStep = TA ? (long long)GS_BK * lda : GS_BK;  // elements from one K slice to the next
    const long long bStep = TB ? GS_BK : (long long)GS_BK * ldb;
    const int wg = threadIdx.x >> 7;  // rows 64 wg .. 64 wg + 63 of every tile
    const unsigned smem = (gg_shared_addr(gs_smem) + 1023u) & ~1023u;

    // The copies: slice after slice of this CTA's tiles in order, the v-th into stage v % GS_STAGES, one commit group
    // a call (empty once every slice is issued).
    GsCursor cur;
    cur.t = blockIdx.x;
    gs_seek<TA, TB>(cur, p, total);
    int fillStage = 0;
    auto issue = [&]() {
        if (cur.t < total) {
            const int kLeft = cur.K - cur.kt * GS_BK;
            const unsigned as = smem + fillStage * GS_STAGE_BYTES;
            const unsigned bs = as + GS_A_BYTES;
            const __nv_bfloat16* a = cur.a + cur.kt * aStep;
            if constexpr (!TA) gs_fill_kmajor<GS_BM>(as, a, a, GS_NO_SPLIT, lda, cur.aRows, kLeft);
            else gs_fill_mnmajor<GS_BM>(as, a, a, GS_NO_SPLIT, lda, kLeft, cur.aRows);
            if constexpr (TB) {
                gs_fill_kmajor<GS_BN>(bs, cur.b + cur.kt * bStep, cur.b2 + cur.kt * bStep, cur.bSplit, ldb, cur.bRows,
                                      kLeft);
            } else {
                gs_fill_mnmajor<GS_BN>(bs, cur.b + cur.kt * bStep, cur.b2, cur.bSplit - cur.kt * GS_BK, ldb, kLeft,
                                       cur.bRows);
            }
            fillStage = fillStage + 1 == GS_STAGES ? 0 : fillStage + 1;
            if (++cur.kt == cur.numK) {
                cur.t += gridDim.x;
                gs_seek<TA, TB>(cur, p, total);
            }
        }
        gg_cp_commit();
    };
#pragma unroll 1
    for (int s = 0; s < GS_STAGES - 2; s++) issue();

    // Descriptors of stage 0 at k16 step 0; a stage and a k16 step add their byte offsets >> 4 to the start field
    // (which cannot carry: shared addresses stay below 2^18).
    const unsigned long long descA0 =
        TA ? gs_desc(smem + wg * (GS_BK * 128), GS_BK * 128, 1024) : gs_desc(smem + wg * 64 * 128, 16, 1024);
    const unsigned long long descB0 =
        TB ? gs_desc(smem + GS_A_BYTES, 16, 1024) : gs_desc(smem + GS_A_BYTES, GS_BK * 128, 1024);
    constexpr unsigned A_KSTEP = TA ? 2048 : 32;  // bytes from one k16 step to the next
    constexpr unsigned B_KSTEP = TB ? 32 : 2048;
    const float alpha = p.alpha, beta = p.beta;
    const int ldc = p.ldc;
    const int lane = threadIdx.x & 31;
    int mmaStage = 0;

    // Steps run over the slices of all of this CTA's tiles: the u-th step waits for the u-th slice (committed copy
    // groups before its wait: GS_STAGES - 2 + u; wait_group GS_STAGES - 3 leaves slice u complete, this thread's
    // copies), and after its barrier every warpgroup has passed step u - 1's wgmma wait (or a tile's final wait), so
    // step u - 2's wgmmas, the last readers of stage (u - 2) % GS_STAGES, have retired and that stage takes slice
    // u + GS_STAGES - 2, whichever tile it belongs to: the next tile's first slices load during this tile's last steps
    // and its epilogue.
#pragma unroll 1
    for (int t = blockIdx.x; t < total; t += gridDim.x) {
        const int g = gb_group_of(p, t);
        const int M = p.m[g], N = p.n[g], K = p.k[g];
        const int tilesN = (N + GS_BN - 1) / GS_BN;
        const int local = t - p.tileStart[g];
        const int m0 = (local / tilesN) * GS_BM;
        const int n0 = (local % tilesN) * GS_BN;

        const bool c16 = (p.flags[g] & GB_FLAG_C_BF16) != 0;
        const int rowBase = m0 + wg * 64 + ((threadIdx.x >> 5) & 3) * 16 + (lane >> 2);
        const int colBase = n0 + 2 * (lane & 3);
        if (beta != 0.f) {
            // the epilogue reads this tile of C: fetch it into L2 while the tile's K steps run (the 4 lanes of a row
            // take one 128-byte line in 4 each: 32 f32 or 64 bf16 columns a line)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = rowBase + h * 8;
                if (row < M) {
                    if (!c16) {
                        const float* C = reinterpret_cast<const float*>(p.c[g]);
#pragma unroll
                        for (int l = 0; l < GS_BN / 128; l++) {
                            const int col = n0 + l * 128 + (lane & 3) * 32;
                            if (col < N) gs_prefetch_l2(C + (long long)row * ldc + col);
                        }
                    } else {
                        const __nv_bfloat16* C = reinterpret_cast<const __nv_bfloat16*>(p.c[g]);
#pragma unroll
                        for (int l = 0; l < (GS_BN / 64 + 3) / 4; l++) {
                            const int line = 4 * l + (lane & 3);
                            const int col = n0 + line * 64;
                            if (line < GS_BN / 64 && col < N) gs_prefetch_l2(C + (long long)row * ldc + col);
                        }
                    }
                }
            }
        }

        float acc[GS_ACC];
#pragma unroll
        for (int i = 0; i < GS_ACC; i++) acc[i] = 0.f;
        const int numK = (K + GS_BK - 1) / GS_BK;
#pragma unroll 1
        for (int kt = 0; kt < numK; kt++) {
            gg_cp_wait<GS_STAGES - 3>();
            gs_fence_proxy_async();
            __syncthreads();
            const unsigned long long stage = (unsigned long long)(mmaStage * GS_STAGE_BYTES) >> 4;
            gs_fence_acc(acc);
            gs_wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < GS_BK / 16; kk++) {
                gs_wgmma<TA ? 1 : 0, TB ? 0 : 1>(acc, descA0 + stage + (kk * A_KSTEP >> 4),
                                                 descB0 + stage + (kk * B_KSTEP >> 4));
            }
            gs_wgmma_commit();
            gs_fence_acc(acc);
            issue();
            gs_wgmma_wait<1>();
            gs_fence_acc(acc);
            mmaStage = mmaStage + 1 == GS_STAGES ? 0 : mmaStage + 1;
        }
        gs_wgmma_wait<0>();
        gs_fence_acc(acc);

        if (c16) {
            gs_epilogue(acc, reinterpret_cast<__nv_bfloat16*>(p.c[g]), ldc, M, N, rowBase, colBase, alpha, beta);
        } else {
            gs_epilogue(acc, reinterpret_cast<float*>(p.c[g]), ldc, M, N, rowBase, colBase, alpha, beta);
        }
    }
    gg_cp_wait<0>();  // no copy (only empty groups remain) outlives the CTA
#else
    // Not sm_90a (nvcc also runs a plain compute_90 pass over this file): no wgmma here. GroupedGemm launches these
    // kernels only on compute capability 9.0, where KernelLibrary compiles the file for sm_90a.
    __trap();
#endif
}

extern "C" {

__global__ void __launch_bounds__(GS_THREADS, GS_MIN_BLOCKS) grouped_gemm_sm90_nn(const GBParams p) { gs_impl<false, false>(p); }
__global__ void __launch_bounds__(GS_THREADS, GS_MIN_BLOCKS) grouped_gemm_sm90_nt(const GBParams p) { gs_impl<false, true>(p); }
__global__ void __launch_bounds__(GS_THREADS, GS_MIN_BLOCKS) grouped_gemm_sm90_tn(const GBParams p) { gs_impl<true, false>(p); }
__global__ void __launch_bounds__(GS_THREADS, GS_MIN_BLOCKS) grouped_gemm_sm90_tt(const GBParams p) { gs_impl<true, true>(p); }

}  // extern "C"
