// Grouped GEMM on the tensor cores: ONE launch computes every group of CudaBackend.groupedGemm
// (GroupedMode.KERNEL) straight from the f32 operands: the GroupedOperands.F32 path (-Dsparkmoe.cuda.groupedOperands=
// f32). The default, GroupedOperands.BF16, is grouped_gemm_bf16.cu (bf16 copies cast first, then a bf16-operand
// kernel; same products, GGParams and epilogue; measured there against this one: 1.411 ms against 1.577 ms for the
// six model shapes on an H200, casts included). Compiled at run time by NVRTC (see KernelLibrary); needs sm_80 or
// newer (bf16 mma.sync).
//
// Semantics (row-major f32 storage, as Backend.groupedGemm): for each group g
//     C_g = alpha * op(A_g) * op(B_g) + beta * C_g,   op(A_g) [m, k], op(B_g) [k, n], C_g [m, n]
// A_g is stored [m, k] (row stride lda) or, transposed, [k, m]; B_g is stored [k, n] (ldb) or [n, k]; C_g [m, n]
// (ldc). The f32 operands are rounded to bf16 (round-to-nearest-even, __floats2bfloat162_rn) on their way into the
// bf16 shared tiles; products accumulate in f32 (mma.sync m16n8k16 bf16); the epilogue applies alpha and beta in
// f32. With beta == 0, C is never read (it may hold NaN). k == 0 gives C_g = beta * C_g (0 where beta == 0).
//
// Tiling (defaults; the tuning macros below choose others): a CTA of 256 threads (8 warps, 2 x 4) computes a
// GG_BM x GG_BN = 128 x 128 tile of one group's C, two CTAs per SM; each warp a 64 x GG_WN = 64 x 32 sub-tile (4 x 4
// mma accumulators of 16 x 8). K is walked in steps of GG_BK = 32, one __syncthreads each, through two bf16 tile
// buffers in shared memory: the MMAs of step kt read buffer kt & 1 while slice kt + 1 of A (128 x 32) and B
// (GG_BN x 32) is rounded to bf16 into buffer (kt+1) & 1. The bf16 tiles keep the operand's stored layout
// (contiguous dimension contiguous) with rows padded by 8 bf16 (16 bytes), so that the 8 rows of an ldmatrix fall in
// distinct bank groups. Thread t handles the 16-byte chunks v = t + 256 i of a slice (row v / (COLS/4), columns
// 4 (v % (COLS/4)) .. +3 of the stored layout): 16-byte accesses where the group's base is 16-byte aligned and its
// stride a multiple of 4 (flags), 4-byte ones otherwise and at ragged edges; out-of-range elements are zero and never
// read. Two ways to fetch the f32 slices (GG_RING):
//   1 (default): an f32 ring of GG_STAGES = 2 slots in shared memory filled by cp.async, GG_STAGES - 1 steps ahead
//      (cp.async.cg of 16 bytes, cp.async.ca of 4 at edges, zero fill by src-size 0). Each thread copies into its
//      OWN chunks of a slot and is the only one to read them back, so the ring needs no barrier (cp.async.wait_group
//      makes a thread's own copies visible to it); between the two 16-wide MMA halves of step kt it rounds slice
//      kt + 1 from the ring into buffer (kt+1) & 1.
//   0: register staging: the float4 loads of slice kt + 1 are issued at the top of step kt, the MMAs of step kt
//      hide their latency, and after them the thread rounds the registers into buffer (kt+1) & 1. Half the shared
//      memory traffic, one step of prefetch. With GG_BN 256 (60 KB of shared memory) the choice for devices that
//      grant a block less than the default's 104 KB (sm_86 / sm_89: 99 KB).
// Measured on an H200 (GroupedGemmKernelTest.timings, the model's six shapes, two runs): the default 98-134
// TFLOP/s, 1.67-1.73 ms for the six; GG_BN 256 (8 warps of 64 x 64, one CTA per SM, 204 KB) with GG_STAGES 3
// 102-134 TFLOP/s, 1.78-1.79 ms; GG_BN 256 with GG_RING 0 100-117 TFLOP/s, 1.94 ms; GG_BN 128 with GG_STAGES 3 and
// one CTA per SM 89-108 TFLOP/s. Per K step, not the L2 or shared-memory bandwidth, the limit seems to be latency
// that one or two CTAs of 8 warps in lock step (one barrier per step) cannot hide.
// MMAs: per 16-wide k slice a warp loads its GG_NJ / 2 B fragment pairs (16 x 16) and, one at a time, its 4 A
// fragments (16 x 16) with ldmatrix.x4, .trans where the stored layout is the transpose of the fragment's (A stored
// [k, m]; B stored [k, n]), and issues 4 x GG_NJ mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32.
// The epilogue writes straight from the accumulators: lane (g = lane / 4, q = lane % 4) holds rows g and g + 8,
// columns 2q and 2q + 1 of each 16 x 8 block; float2 loads / stores where C_g is 8-byte aligned and ldc even,
// scalar ones otherwise and at the last odd column. Tuning macros (-Dsparkmoe.cuda.defines=...; the host mirrors
// GG_BN, GG_RING and GG_STAGES in its tile count and dynamic shared-memory size): GG_BN (128 or 256), GG_RING (0 or
// 1), GG_STAGES (2 or 3), GG_MIN_BLOCKS (CTAs per SM the registers must allow).
//
// Group mapping: blockIdx.x is a flat tile index over all groups of the launch. GGParams (passed BY VALUE as the
// only kernel parameter, 2840 bytes, under the classic 4 KB parameter limit) holds per group the device addresses of
// A_g, B_g, C_g, m, n, k, the prefix sum of tiles before the group (tileStart, strictly increasing: the host passes
// only groups with m, n > 0, largest k first so that the longest tiles start first) and flags (bit 0: A_g
// 16-byte-loadable, bit 1: B_g). A CTA finds its group by binary search over tileStart, then its tile row and column
// inside the group (row-major over the group's tiles, so that consecutive CTAs share A's row block and B_g stays in
// L2). The host launches once per 64 groups.

#include <cuda_bf16.h>

#define GG_MAX_GROUPS 64
#define GG_BM 128  // CTA tile rows (m); CudaBackend.GG_TILE_M
#ifndef GG_BN      // CTA tile columns (n): 128 (warp tiles 64 x 32) or 256 (64 x 64); CudaBackend.ggTileN mirrors it
#define GG_BN 128
#endif
#define GG_WN (GG_BN / 4)  // warp tile columns
#define GG_NJ (GG_WN / 8)  // 16 x 8 mma blocks per warp row block
#define GG_BK 32
#define GG_PAD 8   // bf16 elements of padding per shared tile row
#define GG_THREADS 256
#ifndef GG_RING    // 1: f32 operands staged through the cp.async ring in shared memory; 0: through registers
#define GG_RING 1
#endif
#ifndef GG_STAGES  // f32 ring slots (2 or 3); CudaBackend.ggSharedBytes mirrors it
#define GG_STAGES 2
#endif
#ifndef GG_MIN_BLOCKS      // CTAs per SM the registers must allow (2 caps them at 128: fits GG_BN 128 with GG_RING 1)
#define GG_MIN_BLOCKS (GG_BN == 128 && GG_RING ? 2 : 1)
#endif

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

// f32 ring: per slot, the A chunks then the B chunks of every thread (float4 units).
#define GG_A_CHUNKS (GG_BM * GG_BK / 4 / GG_THREADS)  // 4 per thread
#define GG_B_CHUNKS (GG_BN * GG_BK / 4 / GG_THREADS)  // 8 per thread
#define GG_RING_SLOT ((GG_A_CHUNKS + GG_B_CHUNKS) * GG_THREADS)
// bf16 tiles (elements): A [BM][BK+PAD] or, stored transposed, [BK][BM+PAD]; B [BK][BN+PAD] or [BN][BK+PAD].
#define GG_MAX(x, y) ((x) > (y) ? (x) : (y))
#define GG_A_TILE GG_MAX(GG_BM * (GG_BK + GG_PAD), GG_BK * (GG_BM + GG_PAD))
#define GG_B_TILE GG_MAX(GG_BN * (GG_BK + GG_PAD), GG_BK * (GG_BN + GG_PAD))
#define GG_RING_BYTES (GG_RING ? GG_STAGES * GG_RING_SLOT * 16 : 0)
// GG_RING 0: 61440 (GG_BN 256), 40960 (128). GG_RING 1: 208896 (3 stages), 159744 (2); GG_BN 128: 139264 (3),
// 106496 (2: two CTAs per SM)
#define GG_SMEM_BYTES (GG_RING_BYTES + 2 * (GG_A_TILE + GG_B_TILE) * 2)
static_assert(GG_A_CHUNKS * 4 * GG_THREADS == GG_BM * GG_BK && GG_B_CHUNKS * 4 * GG_THREADS == GG_BN * GG_BK,
              "tiles do not split evenly into 16-byte chunks");
static_assert((GG_A_TILE * 2) % 128 == 0 && (GG_B_TILE * 2) % 128 == 0, "tile alignment");
static_assert(GG_BM == 2 * 64 && (GG_BN == 256 || GG_BN == 128) && GG_THREADS == 8 * 32, "8 warps in 2 x 4");
static_assert(GG_STAGES >= 2 && GG_BK == 32, "ring of 2+ slots; two 16-wide MMA halves per K step");

// ---------------------------------------------------------------- PTX wrappers

__device__ __forceinline__ unsigned gg_shared_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; src_bytes 0 fills the 16 bytes with zeros (src must still be a valid, aligned address).
__device__ __forceinline__ void gg_cp16(unsigned dst, const float* src, int srcBytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(srcBytes) : "memory");
}

// 4 bytes global -> shared; src_bytes 0 writes a zero.
__device__ __forceinline__ void gg_cp4(unsigned dst, const float* src, int srcBytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(srcBytes) : "memory");
}

__device__ __forceinline__ void gg_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed cp.async groups are still in flight.
template <int N>
__device__ __forceinline__ void gg_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Four 8x8 b16 matrices; lanes 8j .. 8j+7 give the row addresses of matrix j, which lands in r[j]. Volatile (kept
// in order with the barriers and cp.async waits) without a memory clobber, so that ptxas may interleave the
// conversion's shared loads and stores with the fragment loads and MMAs.
template <bool TRANS>
__device__ __forceinline__ void gg_ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
    }
}

// d += a (16x16, row) * b (16x8, col), bf16 in, f32 accumulate.
__device__ __forceinline__ void gg_mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------- pipeline pieces

// Issues the cp.async copies of a ROWS x COLS f32 slice (COLS contiguous in memory, row stride ld) starting at base
// into this thread's chunks of a ring slot (shared byte address ring): chunk i covers row v / (COLS/4), columns
// 4 * (v % (COLS/4)) .. +3 with v = threadIdx.x + i * 256. Elements at or past rows (valid rows from base) or cols
// (valid columns) are zero-filled and never read. vec: base 16-byte aligned and ld a multiple of 4.
template <int ROWS, int COLS>
__device__ __forceinline__ void gg_copy(unsigned ring, const float* base, int ld, int rows, int cols, bool vec) {
    constexpr int VPR = COLS / 4;
    constexpr int N = ROWS * COLS / 4 / GG_THREADS;
    if (vec && rows >= ROWS && cols >= COLS) {  // the whole slice in range (every slice but a group's last ones)
#pragma unroll
        for (int i = 0; i < N; i++) {
            const int v = threadIdx.x + i * GG_THREADS;
            gg_cp16(ring + (i * GG_THREADS + threadIdx.x) * 16, base + ((v / VPR) * ld + (v % VPR) * 4), 16);
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int v = threadIdx.x + i * GG_THREADS;
        const int row = v / VPR;
        const int col = (v % VPR) * 4;
        const unsigned dst = ring + (i * GG_THREADS + threadIdx.x) * 16;
        const float* q = base + (row * ld + col);  // < 2^31: the host keeps 256 * ld below it
        const bool rowIn = row < rows;
        if (vec && rowIn && col + 3 < cols) {
            gg_cp16(dst, q, 16);
        } else if (vec && (!rowIn || col >= cols)) {
            gg_cp16(dst, base, 0);  // all four out of range
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const bool in = rowIn && col + e < cols;
                gg_cp4(dst + 4 * e, in ? q + e : base, in ? 4 : 0);
            }
        }
    }
}

// Rounds chunk v of a slice with COLS columns (row v / (COLS/4), columns 4 * (v % (COLS/4)) .. +3) to bf16 and
// stores it into a shared tile with row stride LD (elements), same row / column as in memory.
template <int COLS, int LD>
__device__ __forceinline__ void gg_put(__nv_bfloat16* tile, int v, float4 x) {
    static_assert(LD % 8 == 0, "shared rows must stay 16-byte aligned");
    const int row = v / (COLS / 4);
    const int col = (v % (COLS / 4)) * 4;
    __nv_bfloat162 lo = __floats2bfloat162_rn(x.x, x.y);  // .x = first (lower address)
    __nv_bfloat162 hi = __floats2bfloat162_rn(x.z, x.w);
    uint2 u;
    u.x = *reinterpret_cast<unsigned*>(&lo);
    u.y = *reinterpret_cast<unsigned*>(&hi);
    *reinterpret_cast<uint2*>(tile + row * LD + col) = u;  // 8-byte aligned: LD * 2 % 16 == 0, col % 4 == 0
}

// GG_RING: rounds this thread's chunks of a ROWS x COLS slice (as gg_copy placed them) into a bf16 tile.
template <int ROWS, int COLS, int LD>
__device__ __forceinline__ void gg_convert(__nv_bfloat16* tile, const float4* ring) {
    constexpr int N = ROWS * COLS / 4 / GG_THREADS;
#pragma unroll
    for (int i = 0; i < N; i++) {
        gg_put<COLS, LD>(tile, threadIdx.x + i * GG_THREADS, ring[i * GG_THREADS + threadIdx.x]);
    }
}

// Register staging (GG_RING 0): loads the same chunks as gg_copy into registers, r[i] = chunk i (zeros out of
// range, never read; a slice wholly past the end reads nothing).
template <int ROWS, int COLS>
__device__ __forceinline__ void gg_load(const float* __restrict__ base, int ld, int rows, int cols, bool vec,
                                        float4 (&r)[ROWS * COLS / 4 / GG_THREADS]) {
    constexpr int VPR = COLS / 4;
    constexpr int N = ROWS * COLS / 4 / GG_THREADS;
    if (vec && rows >= ROWS && cols >= COLS) {  // the whole slice in range (every slice but a group's last ones)
#pragma unroll
        for (int i = 0; i < N; i++) {
            const int v = threadIdx.x + i * GG_THREADS;
            r[i] = __ldg(reinterpret_cast<const float4*>(base + ((v / VPR) * ld + (v % VPR) * 4)));
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int v = threadIdx.x + i * GG_THREADS;
        const int row = v / VPR;
        const int col = (v % VPR) * 4;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row < rows) {
            const float* q = base + (row * ld + col);  // < 2^31: the host keeps 256 * ld below it
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

// Register staging: rounds the registers of gg_load into a bf16 tile.
template <int ROWS, int COLS, int LD>
__device__ __forceinline__ void gg_store(__nv_bfloat16* tile, const float4 (&r)[ROWS * COLS / 4 / GG_THREADS]) {
    constexpr int N = ROWS * COLS / 4 / GG_THREADS;
#pragma unroll
    for (int i = 0; i < N; i++) gg_put<COLS, LD>(tile, threadIdx.x + i * GG_THREADS, r[i]);
}

// One warp's MMAs over k = KS .. KS+15 of a bf16 tile buffer into its 64 x GG_WN accumulators. aLane / bLane: the
// shared byte address of this lane's ldmatrix row for fragment (0, 0) at k = 0 (see gg_impl).
template <bool TA, bool TB, int KS>
__device__ __forceinline__ void gg_warp_mma(float (&acc)[4][GG_NJ][4], unsigned aLane, unsigned bLane) {
    constexpr int LDA_S = TA ? GG_BM + GG_PAD : GG_BK + GG_PAD;
    constexpr int LDB_S = TB ? GG_BK + GG_PAD : GG_BN + GG_PAD;
    constexpr int ks = KS;
    unsigned b[GG_NJ / 2][4];
#pragma unroll
    for (int j = 0; j < GG_NJ / 2; j++) {  // columns j*16 .. +15: b[j][0..1] the first 8, b[j][2..3] the next 8;
        // element (kk, col) of op(B) is at [col][kk] (B stored [n, k]) or [kk][col] (stored [k, n], transposed)
        gg_ldmatrix_x4<!TB>(b[j], bLane + 2 * (TB ? j * 16 * LDB_S + ks : ks * LDB_S + j * 16));
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {  // rows i*16 .. +15 of the warp tile; element (row, kk) of op(A) is at
        // [row][kk] (A stored [m, k]) or [kk][row] (stored [k, m], loaded transposed). One A fragment live at a
        // time keeps the registers for the staged loads.
        unsigned a[4];
        gg_ldmatrix_x4<TA>(a, aLane + 2 * (TA ? ks * LDA_S + i * 16 : i * 16 * LDA_S + ks));
#pragma unroll
        for (int j = 0; j < GG_NJ; j++) gg_mma(acc[i][j], a, b[j >> 1][(j & 1) * 2], b[j >> 1][(j & 1) * 2 + 1]);
    }
}

// Writes one accumulator pair (row, col), (row, col + 1) of C: alpha * acc + beta * C (C not read when beta == 0).
__device__ __forceinline__ void gg_store_pair(float* crow, int col, int N, float v0, float v1, float alpha,
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

extern __shared__ __align__(128) unsigned char gg_smem[];

template <bool TA, bool TB>
__device__ __forceinline__ void gg_impl(const GGParams& p) {
#if __CUDA_ARCH__ >= 800
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

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = warp >> 2;  // 0..1: rows wm*64 .. +63 of the tile
    const int wn = warp & 3;   // 0..3: columns wn*WN .. +WN-1

    float acc[4][GG_NJ][4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < GG_NJ; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;
        }
    }

    const int numK = (K + GG_BK - 1) / GG_BK;
    if (numK > 0) {
        constexpr int LDA_S = TA ? GG_BM + GG_PAD : GG_BK + GG_PAD;
        constexpr int LDB_S = TB ? GG_BK + GG_PAD : GG_BN + GG_PAD;
        const unsigned ringAddr = gg_shared_addr(gg_smem);
        const float4* ring = reinterpret_cast<const float4*>(gg_smem);
        __nv_bfloat16* tiles = reinterpret_cast<__nv_bfloat16*>(gg_smem + GG_RING_BYTES);
        const unsigned tilesAddr = ringAddr + GG_RING_BYTES;
        // This lane's ldmatrix row for fragment (0, 0), k = 0. Matrix j = lane / 8 of an A fragment (16 x 16) holds
        // rows (j & 1) * 8 .. +7, k (j >> 1) * 8 .. +7 (the a0..a3 order of mma.m16n8k16); of a B pair (16 x 16,
        // two 16 x 8 fragments) columns (j >> 1) * 8 .. +7, k (j & 1) * 8 .. +7.
        const int r8 = lane & 7, j0 = (lane >> 3) & 1, j1 = lane >> 4;
        const int aRow = wm * 64, bCol = wn * GG_WN;
        const unsigned aLane = 2 * (TA ? (j1 * 8 + r8) * LDA_S + aRow + j0 * 8    // [k][m]: row k, 8 m
                                       : (aRow + j0 * 8 + r8) * LDA_S + j1 * 8);  // [m][k]: row m, 8 k
        const unsigned bLane = 2 * (TB ? (bCol + j1 * 8 + r8) * LDB_S + j0 * 8    // [n][k]: row n, 8 k
                                       : (j0 * 8 + r8) * LDB_S + bCol + j1 * 8);  // [k][n]: row k, 8 n

        // Slice kt of A starts at aPtr + kt * aStep, of B at bPtr + kt * bStep (k0 = kt * BK).
        const float* aPtr = TA ? A + m0 : A + (long long)m0 * lda;
        const float* bPtr = TB ? B + (long long)n0 * ldb : B + n0;
        const long long aStep = TA ? (long long)GG_BK * lda : GG_BK;
        const long long bStep = TB ? GG_BK : (long long)GG_BK * ldb;
        auto issue = [&](int kt) {  // cp.async of slice kt into ring slot kt % STAGES (an empty group past the end)
            if (kt < numK) {
                const int kLeft = K - kt * GG_BK;
                const float* a = aPtr + kt * aStep;
                const float* b = bPtr + kt * bStep;
                const unsigned slot = ringAddr + (kt % GG_STAGES) * (GG_RING_SLOT * 16);
                const unsigned slotB = slot + GG_A_CHUNKS * GG_THREADS * 16;
                if constexpr (!TA) gg_copy<GG_BM, GG_BK>(slot, a, lda, M - m0, kLeft, vecA);
                else gg_copy<GG_BK, GG_BM>(slot, a, lda, kLeft, M - m0, vecA);
                if constexpr (!TB) gg_copy<GG_BK, GG_BN>(slotB, b, ldb, kLeft, N - n0, vecB);
                else gg_copy<GG_BN, GG_BK>(slotB, b, ldb, N - n0, kLeft, vecB);
            }
            gg_cp_commit();
        };
        auto convert = [&](int kt) {  // ring slot kt % STAGES -> bf16 buffer kt & 1 (this thread's chunks)
            const float4* slot = ring + (kt % GG_STAGES) * GG_RING_SLOT;
            __nv_bfloat16* as = tiles + (kt & 1) * (GG_A_TILE + GG_B_TILE);
            __nv_bfloat16* bs = as + GG_A_TILE;
            if constexpr (!TA) gg_convert<GG_BM, GG_BK, LDA_S>(as, slot);
            else gg_convert<GG_BK, GG_BM, LDA_S>(as, slot);
            if constexpr (!TB) gg_convert<GG_BK, GG_BN, LDB_S>(bs, slot + GG_A_CHUNKS * GG_THREADS);
            else gg_convert<GG_BN, GG_BK, LDB_S>(bs, slot + GG_A_CHUNKS * GG_THREADS);
        };

#if !GG_RING
        // Register staging: the loads of slice kt + 1 are in flight during the MMAs of step kt, then rounded into
        // buffer (kt+1) & 1 (last read in step kt-1, before the barrier that ended it). In the last step, slice numK
        // lies wholly past the end: its loads read nothing and its buffer is never read (no branch in the step).
        (void)ring;
        (void)convert;
        (void)issue;
        float4 ra[GG_A_CHUNKS], rb[GG_B_CHUNKS];
        auto load = [&](int kt) {
            const int kLeft = K - kt * GG_BK;
            const float* a = aPtr + kt * aStep;
            const float* b = bPtr + kt * bStep;
            if constexpr (!TA) gg_load<GG_BM, GG_BK>(a, lda, M - m0, kLeft, vecA, ra);
            else gg_load<GG_BK, GG_BM>(a, lda, kLeft, M - m0, vecA, ra);
            if constexpr (!TB) gg_load<GG_BK, GG_BN>(b, ldb, kLeft, N - n0, vecB, rb);
            else gg_load<GG_BN, GG_BK>(b, ldb, N - n0, kLeft, vecB, rb);
        };
        auto store = [&](int kt) {
            __nv_bfloat16* as = tiles + (kt & 1) * (GG_A_TILE + GG_B_TILE);
            __nv_bfloat16* bs = as + GG_A_TILE;
            if constexpr (!TA) gg_store<GG_BM, GG_BK, LDA_S>(as, ra);
            else gg_store<GG_BK, GG_BM, LDA_S>(as, ra);
            if constexpr (!TB) gg_store<GG_BK, GG_BN, LDB_S>(bs, rb);
            else gg_store<GG_BN, GG_BK, LDB_S>(bs, rb);
        };
        load(0);
        store(0);
        __syncthreads();
        for (int kt = 0; kt < numK; kt++) {
            const unsigned buf = tilesAddr + (kt & 1) * ((GG_A_TILE + GG_B_TILE) * 2);
            load(kt + 1);
            gg_warp_mma<TA, TB, 0>(acc, buf + aLane, buf + GG_A_TILE * 2 + bLane);
            gg_warp_mma<TA, TB, 16>(acc, buf + aLane, buf + GG_A_TILE * 2 + bLane);
            store(kt + 1);
            __syncthreads();
        }
#else
        // Prologue: slices 0 .. STAGES-1 in flight, slice 0 converted.
#pragma unroll
        for (int s = 0; s < GG_STAGES; s++) issue(s);
        gg_cp_wait<GG_STAGES - 1>();
        convert(0);
        __syncthreads();
        // Step kt: committed groups after its issue: STAGES + kt + 1, the last one slice kt + STAGES; wait_group
        // STAGES - 1 leaves slice kt + 1 complete. The conversion of slice kt + 1 into buffer (kt+1) & 1 (last read
        // in step kt-1, before the barrier that ended it) sits between the two 16-wide halves of the MMAs, so that
        // the tensor cores have queued work while it runs; in the last step it converts a stale slot into a buffer
        // nobody reads again (harmless, and it keeps the step one basic block).
        for (int kt = 0; kt < numK; kt++) {
            const unsigned buf = tilesAddr + (kt & 1) * ((GG_A_TILE + GG_B_TILE) * 2);
            issue(kt + GG_STAGES);  // into slot kt % STAGES, which only this thread read (convert(kt), earlier)
            gg_cp_wait<GG_STAGES - 1>();
            gg_warp_mma<TA, TB, 0>(acc, buf + aLane, buf + GG_A_TILE * 2 + bLane);
            convert(kt + 1);
            gg_warp_mma<TA, TB, 16>(acc, buf + aLane, buf + GG_A_TILE * 2 + bLane);
            __syncthreads();
        }
#endif
    }

    // ---- epilogue straight from the accumulators
    const float alpha = p.alpha, beta = p.beta;
    const int ldc = p.ldc;
    const bool vecC = (reinterpret_cast<unsigned long long>(C) & 7) == 0 && (ldc & 1) == 0;
    const int colBase = n0 + wn * GG_WN + 2 * (lane & 3);
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int row = m0 + wm * 64 + i * 16 + h * 8 + (lane >> 2);
            if (row < M) {
                float* crow = C + (long long)row * ldc;
#pragma unroll
                for (int j = 0; j < GG_NJ; j++) {
                    gg_store_pair(crow, colBase + j * 8, N, acc[i][j][2 * h], acc[i][j][2 * h + 1], alpha, beta,
                                  vecC);
                }
            }
        }
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
