// Standalone check and timing of the grouped GEMM kernels (grouped_gemm_sm90.cu: wgmma, and grouped_gemm_bf16.cu:
// mma.sync) outside the JVM, for iterating on a GPU host. Build (on any machine with nvcc 12.4+; static cudart):
//     bash gpu-executor/src/bench/cuda/build.sh        (writes gpu-executor/target/grouped_gemm_check)
// Run on a compute capability 9.0 GPU:
//     grouped_gemm_check [--check] [--time] [--reps N]   (default: both)
// It launches the kernels as GroupedGemm does (active groups largest k first, at most GB_MAX_GROUPS a launch,
// GBParams by value with tileStart counted in each kernel's tile shape) on bf16 operands laid out as the operand
// contract says (16-byte aligned blocks, row strides multiples of 8, zeros up to the next multiple of 8 columns; NaN
// in every other byte that no group may read: stride padding and gaps between groups), and
//   (a) checks small ragged cases on all four transpositions (m, n, k off the tile grid, k == 0, empty groups, more
//       than 64 groups, k longer than the ring, beta 0 over NaN-filled C, beta 0.5 / 1, odd ldc and C offsets)
//       against a plain reference kernel (f32 sums of the same bf16 products): |got - ref| <= 1e-3 * |alpha| *
//       sum_k |a_ik b_kj| + 1e-6 * |beta c|, and every C element outside the groups left bit-identical; and the same
//       cases into a bf16 C (GBParams.flags GB_FLAG_C_BF16; the ragged, tile-edge, k = 0 and 150-group cases, beta 0
//       over NaN, 0.5 and 1, odd ldc and offsets): C0 rounded to bf16 values, the f32 C checked as above, then the
//       bf16 C of the same launch must equal that f32 C rounded to nearest even BIT FOR BIT (same accumulators, one
//       rounding), and every bf16 element outside the groups keep its bits ("bf16 C" lines);
//   (b) times the six expert GEMMs of one Qwen3-30B-A3B MoE layer (128 experts, 65,536 routed rows, ragged 34 to
//       1,139 per expert, H = 2048, I = 768; laid out as KernelBenchProblems.model: NT forward with B = weights
//       [E, n, k], NN data gradients with B = weights [E, k, n], TN weight gradients with beta 1) for both kernels:
//       median of 20 by CUDA events after 3 warm-ups, and checks each result against the reference; then the two
//       weight-gradient shapes as C2's Experts.backward runs them per projection (TN 768 x 2048 x rows: gate / up,
//       TN 2048 x 768 x rows: down; the same ragged rows) with beta 0 into an f32 C and into a bf16 C (half the bytes
//       the epilogue writes: FSDP's bf16 gradient), each timed the same way, the bf16 C checked against the f32 C
//       rounded, and the f32 / bf16 time ratio printed;
//   (c) B in two blocks (GBParams.b2 / bSplit, Backend.groupedGemmSplitB: the experts' gate and up weights as one
//       operand; sm90 only): checks NT and NN expert shapes whose split lies inside a tile's n rows or a K slice
//       (I = 200, 100; ragged rows with empty experts), beta 0 over NaN and beta 1, f32 and bf16 C, against the
//       reference on the stacked B; the second blocks are copied to a buffer of their own and NaN written over them
//       in the stacked B, so that a row read from the wrong block fails; and in --time, C2's fused shapes (NT rows x
//       1536 x 2048 and NN rows x 2048 x 1536, split at 768) against the same GEMM with B in one block and against
//       the two GEMMs they replace (NT rows x 768 x 2048 twice; NN rows x 2048 x 768, then again with beta 1).
// Prints PASS / FAIL per case with the worst error (as a multiple of its tolerance); exit status 1 on any FAIL.

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "grouped_gemm_bf16.cu"
#include "grouped_gemm_sm90.cu"

#define CK(call)                                                                                       \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess) {                                                                       \
            std::fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,             \
                         cudaGetErrorName(e_), cudaGetErrorString(e_));                                \
            std::exit(2);                                                                              \
        }                                                                                              \
    } while (0)

// ---------------------------------------------------------------- problems

struct Problem {
    std::string name;
    bool tA = false, tB = false;
    std::vector<int> m, n, k;
    std::vector<long long> aOff, bOff, cOff;  // elements
    int lda = 0, ldb = 0, ldc = 0;
    long long aLen = 0, bLen = 0, cLen = 0;
    int groups() const { return (int)m.size(); }
    double flops() const {
        double f = 0;
        for (int g = 0; g < groups(); g++) f += 2.0 * m[g] * n[g] * k[g];
        return f;
    }
    // rows x cols of the stored A_g / B_g
    int aRows(int g) const { return tA ? k[g] : m[g]; }
    int aCols(int g) const { return tA ? m[g] : k[g]; }
    int bRows(int g) const { return tB ? n[g] : k[g]; }
    int bCols(int g) const { return tB ? k[g] : n[g]; }
};

static int round8(int x) { return (x + 7) / 8 * 8; }

// Operand blocks packed with NaN gaps, strides a little wider than the widest group (a multiple of 8); C with an odd
// stride and odd offsets unless alignedC.
static Problem packed(const std::string& name, bool tA, bool tB, std::vector<int> m, std::vector<int> n,
                      std::vector<int> k, bool alignedC) {
    Problem p;
    p.name = name + (alignedC ? " (C aligned)" : " (C odd ldc, odd offsets)");
    p.tA = tA;
    p.tB = tB;
    p.m = m;
    p.n = n;
    p.k = k;
    int G = (int)m.size(), wa = 1, wb = 1, wc = 1;
    for (int g = 0; g < G; g++) {
        wa = std::max(wa, p.aCols(g));
        wb = std::max(wb, p.bCols(g));
        wc = std::max(wc, n[g]);
    }
    p.lda = round8(wa) + 8;
    p.ldb = round8(wb) + 8;
    p.ldc = alignedC ? (wc + 3) / 4 * 4 + 4 : (wc % 2 == 0 ? wc + 3 : wc + 2);
    long long at = 8;
    for (int g = 0; g < G; g++) {
        p.aOff.push_back(at);
        at += (long long)std::max(p.aRows(g), 1) * p.lda + 16;
    }
    p.aLen = at + 16;
    at = 8;
    for (int g = 0; g < G; g++) {
        p.bOff.push_back(at);
        at += (long long)std::max(p.bRows(g), 1) * p.ldb + 8;
    }
    p.bLen = at + 16;
    at = alignedC ? 4 : 1;
    for (int g = 0; g < G; g++) {
        if (alignedC) at = (at + 3) / 4 * 4;
        else if (at % 2 == 0) at++;
        p.cOff.push_back(at);
        at += (long long)std::max(m[g], 1) * p.ldc + 5;
    }
    p.cLen = at + 8;
    return p;
}

// The MoE layer's expert GEMMs over ragged rows, as KernelBenchProblems.model lays them out: kind NT (forward,
// A = tokens [rows, inner], B = weights [E, outer, inner]), NN (data gradient, B = weights [E, inner, outer]), TN
// (weight gradient: C_g [outer, inner] = tokens_g^T [outer, rows] x grads_g [rows, inner]).
static Problem model(const char* kind, const std::vector<int>& rows, int outer, int inner) {
    Problem p;
    std::string K = kind;
    int E = (int)rows.size();
    long long start = 0;
    for (int g = 0; g < E; g++) {
        if (K == "TN") {
            p.m.push_back(outer);
            p.n.push_back(inner);
            p.k.push_back(rows[g]);
            p.aOff.push_back(start * outer);
            p.bOff.push_back(start * inner);
            p.cOff.push_back((long long)g * outer * inner);
        } else {
            p.m.push_back(rows[g]);
            p.n.push_back(outer);
            p.k.push_back(inner);
            p.aOff.push_back(start * inner);
            p.bOff.push_back((long long)g * outer * inner);
            p.cOff.push_back(start * outer);
        }
        start += rows[g];
    }
    long long total = start;
    char buf[128];
    if (K == "TN") std::snprintf(buf, sizeof buf, "TN m=%d n=%d k=rows", outer, inner);
    else std::snprintf(buf, sizeof buf, "%s m=rows n=%d k=%d", kind, outer, inner);
    p.name = buf;
    if (K == "NT") {
        p.tA = false, p.tB = true;
        p.lda = inner, p.aLen = total * inner, p.ldb = inner, p.bLen = (long long)E * outer * inner;
        p.ldc = outer, p.cLen = total * outer;
    } else if (K == "NN") {
        p.tA = false, p.tB = false;
        p.lda = inner, p.aLen = total * inner, p.ldb = outer, p.bLen = (long long)E * outer * inner;
        p.ldc = outer, p.cLen = total * outer;
    } else {
        p.tA = true, p.tB = false;
        p.lda = outer, p.aLen = total * outer, p.ldb = inner, p.bLen = total * inner;
        p.ldc = inner, p.cLen = (long long)E * outer * inner;
    }
    return p;
}

// 128 ragged expert row counts summing to 65,536: weights 0.4 + 1.2 * uniform, expert 5 at 34 rows, expert 11 at 1,139.
static std::vector<int> c2Rows(unsigned seed) {
    const int E = 128, total = 65536, fixedA = 34, fixedB = 1139;
    std::mt19937 r(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> w(E);
    double sum = 0;
    for (int e = 0; e < E; e++) {
        w[e] = (e == 5 || e == 11) ? 0 : 0.4 + 1.2 * u(r);
        sum += w[e];
    }
    std::vector<int> rows(E);
    int rest = total - fixedA - fixedB, used = 0;
    for (int e = 0; e < E; e++) {
        rows[e] = (int)std::floor(w[e] / sum * rest);
        used += rows[e];
    }
    rows[0] += rest - used;
    rows[5] = fixedA;
    rows[11] = fixedB;
    return rows;
}

// ---------------------------------------------------------------- device helpers

__global__ void fill_bf16(__nv_bfloat16* x, long long n, unsigned long long seed, float nanFill) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        unsigned long long z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
        z ^= z >> 31;
        z *= 0xBF58476D1CE4E5B9ull;
        z ^= z >> 29;
        const float v = nanFill != 0.f ? __int_as_float(0x7fc00000) : (float)(z >> 40) * 0x1p-23f - 1.f;
        x[i] = __float2bfloat16_rn(v);
    }
}

__global__ void fill_f32(float* x, long long n, unsigned long long seed, int nanFill) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        unsigned long long z = (i + 7) * 0xD1B54A32D192ED03ull ^ seed;
        z ^= z >> 29;
        z *= 0x94D049BB133111EBull;
        z ^= z >> 32;
        x[i] = nanFill ? __int_as_float(0x7fc00000) : (float)(z >> 40) * 0x1p-23f - 1.f;
    }
}

// Writes random values into the block [rows, cols] at off (stride ld) and zeros into columns cols .. round8(cols) - 1.
__global__ void fill_block(__nv_bfloat16* x, long long off, int rows, int cols, int ld, unsigned long long seed) {
    const int c8 = (cols + 7) / 8 * 8;
    const long long n = (long long)rows * c8;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const int r = (int)(i / c8), c = (int)(i % c8);
        unsigned long long z = (off + (long long)r * ld + c + 1) * 0x9E3779B97F4A7C15ull ^ seed;
        z ^= z >> 31;
        z *= 0xBF58476D1CE4E5B9ull;
        z ^= z >> 29;
        const float v = c < cols ? (float)(z >> 40) * 0x1p-23f - 1.f : 0.f;
        x[off + (long long)r * ld + c] = __float2bfloat16_rn(v);
    }
}

// The reference: one thread an element of C_g, f32 sums of the bf16 products in k order; ref = alpha * sum
// (+ beta * c0 where beta != 0) and tol = 1e-3 * |alpha| * sum |a b| + 1e-6 * |beta c0|.
__global__ void reference_gemm(const __nv_bfloat16* A, const __nv_bfloat16* B, const float* C0, float* ref, float* tol,
                               int tA, int tB, int M, int N, int K, int lda, int ldb, int ldc, float alpha,
                               float beta) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row >= M || col >= N) return;
    float s = 0.f, sa = 0.f;
    for (int kk = 0; kk < K; kk++) {
        const float a = __bfloat162float(tA ? A[(long long)kk * lda + row] : A[(long long)row * lda + kk]);
        const float b = __bfloat162float(tB ? B[(long long)col * ldb + kk] : B[(long long)kk * ldb + col]);
        s = fmaf(a, b, s);
        sa += fabsf(a * b);
    }
    const long long i = (long long)row * ldc + col;
    float v = alpha * s, t = 1e-3f * fabsf(alpha) * sa;
    if (beta != 0.f) {
        v = fmaf(beta, C0[i], v);
        t += 1e-6f * fabsf(beta * C0[i]);
    }
    ref[i] = v;
    tol[i] = t;
}

// Over every element of C: tol < 0 (outside every group) must be bit-identical to ref (the untouched C0); inside,
// |got - ref| <= tol and finite. Counts failures, keeps the first, the worst |got - ref| / tol and the largest
// |got - ref| (both as float bits: non-negative floats order as their bits do).
__global__ void compare(const float* got, const float* ref, const float* tol, long long n, unsigned long long* fails,
                        unsigned long long* first, unsigned* worstBits, unsigned* maxErrBits) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float t = tol[i];
        bool bad;
        float ratio = 0.f;
        if (t < 0.f) {
            bad = __float_as_uint(got[i]) != __float_as_uint(ref[i]);
        } else {
            const float d = fabsf(got[i] - ref[i]);
            bad = !(d <= t) || !isfinite(got[i]);
            ratio = bad && !isfinite(d) ? INFINITY : d / fmaxf(t, 1e-30f);
        }
        if (bad) {
            atomicAdd(fails, 1ull);
            atomicMin(first, (unsigned long long)i);
        }
        if (t >= 0.f) {
            atomicMax(worstBits, __float_as_uint(fminf(ratio, 3.0e38f)));
            const float d = fabsf(got[i] - ref[i]);
            atomicMax(maxErrBits, __float_as_uint(d == d ? fminf(d, 3.0e38f) : 3.0e38f));
        }
    }
}

static int gridFor(long long n) { return (int)std::min<long long>((n + 255) / 256, 65535LL * 8); }

// ---------------------------------------------------------------- the kernels, launched as GroupedGemm does

using KernelFn = void (*)(GBParams);

struct KernelSet {
    const char* name;
    KernelFn fn[4];  // nn, nt, tn, tt
    int tileM, tileN, threads, smem;
    bool persistent;  // CTAs loop over tiles: the grid is min(tiles, SMs x CTAs an SM holds)
    int maxGrid;      // SMs x CTAs an SM holds (persistent kernels)
};

static KernelSet sm90Set() {
    return {"sm90 wgmma",
            {grouped_gemm_sm90_nn, grouped_gemm_sm90_nt, grouped_gemm_sm90_tn, grouped_gemm_sm90_tt},
            GS_BM, GS_BN, GS_THREADS, GS_SMEM_BYTES, true, 0};
}

static KernelSet mmaSet() {
    return {"mma.sync",
            {grouped_gemm_bf16_nn, grouped_gemm_bf16_nt, grouped_gemm_bf16_tn, grouped_gemm_bf16_tt},
            GB_BM, GB_BN, GB_THREADS, GB_SMEM_BYTES, false, 0};
}

struct Launch {
    GBParams p;
    int grid;
};

// GroupedGemm.kernel's plan: groups with m, n > 0, stably sorted largest k first, GB_MAX_GROUPS a launch.
// c: C's device address, f32 elements or, with c16, bf16 ones (GB_FLAG_C_BF16 on every group).
// With b2 (sm90 only): B's stored rows at or past split from b2 + b2Off[g] (GBParams.b2, bSplit).
static std::vector<Launch> plan(const Problem& P, const KernelSet& ks, const __nv_bfloat16* a, const __nv_bfloat16* b,
                                void* c, float alpha, float beta, bool c16 = false, const __nv_bfloat16* b2 = nullptr,
                                const std::vector<long long>* b2Off = nullptr, int split = 0) {
    std::vector<int> active;
    for (int g = 0; g < P.groups(); g++)
        if (P.m[g] > 0 && P.n[g] > 0) active.push_back(g);
    std::stable_sort(active.begin(), active.end(), [&](int x, int y) { return P.k[x] > P.k[y]; });
    std::vector<Launch> out;
    for (size_t s = 0; s < active.size(); s += GB_MAX_GROUPS) {
        Launch L;
        std::memset(&L.p, 0, sizeof L.p);
        int here = (int)std::min<size_t>(GB_MAX_GROUPS, active.size() - s);
        L.p.lda = P.lda;
        L.p.ldb = P.ldb;
        L.p.ldc = P.ldc;
        L.p.groups = here;
        L.p.alpha = alpha;
        L.p.beta = beta;
        long long tiles = 0;
        for (int q = 0; q < here; q++) {
            int g = active[s + q];
            bool reads = P.k[g] > 0;
            long long aa = reads ? (long long)(uintptr_t)(a + P.aOff[g]) : 0;
            long long bb = reads ? (long long)(uintptr_t)(b + P.bOff[g]) : 0;
            L.p.a[q] = aa;
            L.p.b[q] = bb;
            L.p.b2[q] = reads && b2 ? (long long)(uintptr_t)(b2 + (*b2Off)[g]) : 0;
            L.p.c[q] = (long long)(uintptr_t)c + P.cOff[g] * (c16 ? 2 : 4);
            L.p.m[q] = P.m[g];
            L.p.n[q] = P.n[g];
            L.p.k[q] = P.k[g];
            L.p.tileStart[q] = (int)tiles;
            L.p.flags[q] = (aa % 16 == 0 && P.lda % 4 == 0 ? 1 : 0) | (bb % 16 == 0 && P.ldb % 4 == 0 ? 2 : 0) |
                           (c16 ? GB_FLAG_C_BF16 : 0);
            tiles += (long long)((P.m[g] + ks.tileM - 1) / ks.tileM) * ((P.n[g] + ks.tileN - 1) / ks.tileN);
        }
        L.p.bSplit = b2 ? split : 0;
        L.grid = ks.persistent ? (int)std::min<long long>(tiles, ks.maxGrid) : (int)tiles;
        out.push_back(L);
    }
    return out;
}

static void run(const std::vector<Launch>& launches, const KernelSet& ks, bool tA, bool tB) {
    KernelFn f = ks.fn[(tA ? 2 : 0) + (tB ? 1 : 0)];
    for (const Launch& L : launches) {
        f<<<L.grid, ks.threads, ks.smem>>>(L.p);
        CK(cudaGetLastError());
    }
}

// ---------------------------------------------------------------- checking

struct Buffers {
    __nv_bfloat16 *a = nullptr, *b = nullptr;
    float *c0 = nullptr, *c = nullptr, *ref = nullptr, *tol = nullptr;
    void free() {
        for (void* x : {(void*)a, (void*)b, (void*)c0, (void*)c, (void*)ref, (void*)tol})
            if (x) CK(cudaFree(x));
        *this = Buffers();
    }
};

// Operands: NaN everywhere, then each group's block random with its zero padding to 8 columns. C0: NaN or random.
static Buffers makeBuffers(const Problem& P, bool nanC, unsigned long long seed) {
    Buffers B;
    CK(cudaMalloc(&B.a, P.aLen * 2));
    CK(cudaMalloc(&B.b, P.bLen * 2));
    CK(cudaMalloc(&B.c0, P.cLen * 4));
    CK(cudaMalloc(&B.c, P.cLen * 4));
    CK(cudaMalloc(&B.ref, P.cLen * 4));
    CK(cudaMalloc(&B.tol, P.cLen * 4));
    fill_bf16<<<gridFor(P.aLen), 256>>>(B.a, P.aLen, seed, 1.f);
    fill_bf16<<<gridFor(P.bLen), 256>>>(B.b, P.bLen, seed, 1.f);
    for (int g = 0; g < P.groups(); g++) {
        if (P.k[g] == 0 || P.m[g] == 0 || P.n[g] == 0) continue;
        long long na = (long long)P.aRows(g) * round8(P.aCols(g)), nb = (long long)P.bRows(g) * round8(P.bCols(g));
        fill_block<<<gridFor(na), 256>>>(B.a, P.aOff[g], P.aRows(g), P.aCols(g), P.lda, seed * 3 + 1);
        fill_block<<<gridFor(nb), 256>>>(B.b, P.bOff[g], P.bRows(g), P.bCols(g), P.ldb, seed * 5 + 2);
    }
    fill_f32<<<gridFor(P.cLen), 256>>>(B.c0, P.cLen, seed * 7 + 3, nanC ? 1 : 0);
    CK(cudaGetLastError());
    return B;
}

__global__ void set_f32(float* x, long long n, float v) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] = v;
}

// ref / tol over the whole of C (outside the groups: ref = C0, tol = -1).
static void makeReference(const Problem& P, Buffers& B, float alpha, float beta) {
    CK(cudaMemcpy(B.ref, B.c0, P.cLen * 4, cudaMemcpyDeviceToDevice));
    set_f32<<<gridFor(P.cLen), 256>>>(B.tol, P.cLen, -1.f);
    for (int g = 0; g < P.groups(); g++) {
        if (P.m[g] == 0 || P.n[g] == 0) continue;
        dim3 blk(16, 16), grd((P.n[g] + 15) / 16, (P.m[g] + 15) / 16);
        reference_gemm<<<grd, blk>>>(B.a + P.aOff[g], B.b + P.bOff[g], B.c0 + P.cOff[g], B.ref + P.cOff[g],
                                     B.tol + P.cOff[g], P.tA, P.tB, P.m[g], P.n[g], P.k[g], P.lda, P.ldb, P.ldc,
                                     alpha, beta);
    }
    CK(cudaGetLastError());
}

struct Verdict {
    unsigned long long fails, first;
    float worst, maxErr;
};

static Verdict verify(const Problem& P, Buffers& B) {
    unsigned long long* d;
    CK(cudaMalloc(&d, 32));
    unsigned long long init[4] = {0, ~0ull, 0, 0};
    CK(cudaMemcpy(d, init, 32, cudaMemcpyHostToDevice));
    compare<<<gridFor(P.cLen), 256>>>(B.c, B.ref, B.tol, P.cLen, d, d + 1, (unsigned*)(d + 2), (unsigned*)(d + 3));
    CK(cudaGetLastError());
    unsigned long long h[4];
    CK(cudaMemcpy(h, d, 32, cudaMemcpyDeviceToHost));
    CK(cudaFree(d));
    Verdict v;
    v.fails = h[0];
    v.first = h[1];
    unsigned wb = (unsigned)h[2], eb = (unsigned)h[3];
    std::memcpy(&v.worst, &wb, 4);
    std::memcpy(&v.maxErr, &eb, 4);
    return v;
}

static bool report(const char* kernel, const Problem& P, float alpha, float beta, bool nanC, Buffers& B) {
    Verdict v = verify(P, B);
    char tag[64];
    std::snprintf(tag, sizeof tag, "%s%s", P.tA ? "T" : "N", P.tB ? "T" : "N");
    if (v.fails == 0) {
        std::printf("PASS %-10s %s %-44s alpha=%.2f beta=%.2f%s  max |err| %.3g, worst |err| / tol %.3g\n", kernel,
                    tag, P.name.c_str(), alpha, beta, nanC ? " (C NaN)" : "", v.maxErr, v.worst);
        return true;
    }
    float got, ref, tol;
    CK(cudaMemcpy(&got, B.c + v.first, 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(&ref, B.ref + v.first, 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(&tol, B.tol + v.first, 4, cudaMemcpyDeviceToHost));
    // locate the first failure: group, row, column (or outside every group)
    std::string where = "outside every group";
    for (int g = 0; g < P.groups(); g++) {
        long long rel = (long long)v.first - P.cOff[g];
        if (rel >= 0 && rel < (long long)P.m[g] * P.ldc && rel % P.ldc < P.n[g]) {
            char w[96];
            std::snprintf(w, sizeof w, "group %d (m %d n %d k %d) row %lld col %lld", g, P.m[g], P.n[g], P.k[g],
                          rel / P.ldc, rel % P.ldc);
            where = w;
            break;
        }
    }
    std::printf("FAIL %-10s %s %-44s alpha=%.2f beta=%.2f%s  %llu bad elements; first at %llu, %s: got %g, want %g "
                "(tol %g); max |err| %.3g, worst |err| / tol %.3g\n",
                kernel, tag, P.name.c_str(), alpha, beta, nanC ? " (C NaN)" : "", v.fails, v.first, where.c_str(), got,
                ref, tol, v.maxErr, v.worst);
    return false;
}

static bool checkCase(const KernelSet& ks, const Problem& P, float alpha, float beta, bool nanC, unsigned long long seed) {
    Buffers B = makeBuffers(P, nanC, seed);
    makeReference(P, B, alpha, beta);
    CK(cudaMemcpy(B.c, B.c0, P.cLen * 4, cudaMemcpyDeviceToDevice));
    run(plan(P, ks, B.a, B.b, B.c, alpha, beta), ks, P.tA, P.tB);
    CK(cudaDeviceSynchronize());
    bool ok = report(ks.name, P, alpha, beta, nanC, B);
    B.free();
    return ok;
}

// ---------------------------------------------------------------- bf16 C

// x[i] = x rounded to bf16 and widened (NaN stays NaN): C0 as a bf16 C holds it, so that the f32 and the bf16 launch
// start from the same values.
__global__ void round_f32_values(float* x, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
}

__global__ void f32_to_bf16(const float* x, long long n, __nv_bfloat16* y) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i]);
}

// The bf16 C against the f32 C of the same launch: inside the groups (tol >= 0) bits == the f32 C rounded to nearest
// even; outside, bits == C0's (NaN: any NaN). Counts failures and keeps the first.
__global__ void compare_bf16(const __nv_bfloat16* got, const float* c32, const float* c0, const float* tol,
                             long long n, unsigned long long* fails, unsigned long long* first) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float want = __bfloat162float(__float2bfloat16_rn(tol[i] < 0.f ? c0[i] : c32[i]));
        const float g = __bfloat162float(got[i]);
        const bool bad = (want != want) ? (g == g) : __float_as_uint(g) != __float_as_uint(want);
        if (bad) {
            atomicAdd(fails, 1ull);
            atomicMin(first, (unsigned long long)i);
        }
    }
}

// 0 when the bf16 C equals the f32 C (in B.c) rounded everywhere as compare_bf16 says, else the failures (the first
// one printed).
static unsigned long long verifyBf16(const Problem& P, Buffers& B, const __nv_bfloat16* c16, const char* kernel,
                                     float alpha, float beta) {
    unsigned long long* d;
    CK(cudaMalloc(&d, 16));
    unsigned long long init[2] = {0, ~0ull};
    CK(cudaMemcpy(d, init, 16, cudaMemcpyHostToDevice));
    compare_bf16<<<gridFor(P.cLen), 256>>>(c16, B.c, B.c0, B.tol, P.cLen, d, d + 1);
    CK(cudaGetLastError());
    unsigned long long h[2];
    CK(cudaMemcpy(h, d, 16, cudaMemcpyDeviceToHost));
    CK(cudaFree(d));
    if (h[0] != 0) {
        float c32;
        __nv_bfloat16 g;
        CK(cudaMemcpy(&c32, B.c + h[1], 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(&g, c16 + h[1], 2, cudaMemcpyDeviceToHost));
        std::printf("FAIL %-10s %s%s %-44s alpha=%.2f beta=%.2f bf16 C: %llu elements differ from the f32 C rounded; "
                    "first at %llu: bf16 %g, f32 %g\n",
                    kernel, P.tA ? "T" : "N", P.tB ? "T" : "N", P.name.c_str(), alpha, beta, h[0], h[1],
                    __bfloat162float(g), c32);
    }
    return h[0];
}

// The f32 case (checked against the reference as checkCase does) on C0 rounded to bf16 values, then the same launch
// into a bf16 copy of C0, checked against the f32 C rounded.
static bool checkCaseBf16(const KernelSet& ks, const Problem& P, float alpha, float beta, bool nanC,
                          unsigned long long seed) {
    Buffers B = makeBuffers(P, nanC, seed);
    round_f32_values<<<gridFor(P.cLen), 256>>>(B.c0, P.cLen);
    makeReference(P, B, alpha, beta);
    CK(cudaMemcpy(B.c, B.c0, P.cLen * 4, cudaMemcpyDeviceToDevice));
    run(plan(P, ks, B.a, B.b, B.c, alpha, beta), ks, P.tA, P.tB);
    CK(cudaDeviceSynchronize());
    bool ok = report(ks.name, P, alpha, beta, nanC, B);
    __nv_bfloat16* c16;
    CK(cudaMalloc(&c16, P.cLen * 2));
    f32_to_bf16<<<gridFor(P.cLen), 256>>>(B.c0, P.cLen, c16);
    run(plan(P, ks, B.a, B.b, c16, alpha, beta, true), ks, P.tA, P.tB);
    CK(cudaDeviceSynchronize());
    if (verifyBf16(P, B, c16, ks.name, alpha, beta) == 0) {
        std::printf("PASS %-10s %s%s %-44s alpha=%.2f beta=%.2f%s  bf16 C == the f32 C rounded, bit for bit\n",
                    ks.name, P.tA ? "T" : "N", P.tB ? "T" : "N", P.name.c_str(), alpha, beta, nanC ? " (C NaN)" : "");
    } else {
        ok = false;
    }
    CK(cudaFree(c16));
    B.free();
    return ok;
}

// ---------------------------------------------------------------- B in two blocks

// Moves B's stored rows [split, bRows) of every group into a buffer of their own (group after group, 64 NaN elements
// between) and writes NaN over them in P's B, so that only a launch that reads them from the second block is right.
// Returns the buffer and the offsets of the groups' second blocks. B's rows are contiguous (ldb = the stored width).
static __nv_bfloat16* splitOff(const Problem& P, Buffers& B, int split, std::vector<long long>& b2Off) {
    long long at = 0;
    b2Off.clear();
    for (int g = 0; g < P.groups(); g++) {
        b2Off.push_back(at);
        at += (long long)std::max(P.bRows(g) - split, 0) * P.ldb + 64;
    }
    __nv_bfloat16* b2;
    CK(cudaMalloc(&b2, at * 2));
    CK(cudaMemset(b2, 0xff, at * 2));  // NaN in the gaps
    for (int g = 0; g < P.groups(); g++) {
        long long n = (long long)std::max(P.bRows(g) - split, 0) * P.ldb;
        if (n == 0) continue;
        const __nv_bfloat16* from = B.b + P.bOff[g] + (long long)split * P.ldb;
        CK(cudaMemcpy(b2 + b2Off[g], from, n * 2, cudaMemcpyDeviceToDevice));
        CK(cudaMemset((void*)from, 0xff, n * 2));
    }
    return b2;
}

// The split launch (f32 C, checked against the reference on the stacked B), then the same into a bf16 C, checked
// against that f32 C rounded (C0 rounded to bf16 values first).
static bool checkSplit(const KernelSet& ks, const Problem& P, int split, float alpha, float beta, bool nanC,
                       unsigned long long seed) {
    Buffers B = makeBuffers(P, nanC, seed);
    round_f32_values<<<gridFor(P.cLen), 256>>>(B.c0, P.cLen);
    makeReference(P, B, alpha, beta);
    std::vector<long long> b2Off;
    __nv_bfloat16* b2 = splitOff(P, B, split, b2Off);
    CK(cudaMemcpy(B.c, B.c0, P.cLen * 4, cudaMemcpyDeviceToDevice));
    run(plan(P, ks, B.a, B.b, B.c, alpha, beta, false, b2, &b2Off, split), ks, P.tA, P.tB);
    CK(cudaDeviceSynchronize());
    std::string name = ks.name;
    name += " split";
    bool ok = report(name.c_str(), P, alpha, beta, nanC, B);
    __nv_bfloat16* c16;
    CK(cudaMalloc(&c16, P.cLen * 2));
    f32_to_bf16<<<gridFor(P.cLen), 256>>>(B.c0, P.cLen, c16);
    run(plan(P, ks, B.a, B.b, c16, alpha, beta, true, b2, &b2Off, split), ks, P.tA, P.tB);
    CK(cudaDeviceSynchronize());
    if (verifyBf16(P, B, c16, name.c_str(), alpha, beta) == 0) {
        std::printf("PASS %-10s %s%s %-44s alpha=%.2f beta=%.2f%s  split at %d, bf16 C == the f32 C rounded\n",
                    name.c_str(), P.tA ? "T" : "N", P.tB ? "T" : "N", P.name.c_str(), alpha, beta,
                    nanC ? " (C NaN)" : "", split);
    } else {
        ok = false;
    }
    CK(cudaFree(c16));
    CK(cudaFree(b2));
    B.free();
    return ok;
}

static bool correctnessSplit(const KernelSet& ks) {
    bool ok = true;
    unsigned long long seed = 500;
    const std::vector<int> rows = {37, 0, 130, 5, 300, 0, 64, 1};
    for (int I : {200, 100}) {
        const int H = 136;
        // NT: C [rows, 2I] = X [rows, H] x [Wg; Wu]^T (split inside a 256-wide tile); NN: dX [rows, H] = dH [rows, 2I]
        // x [Wg; Wu] (split inside a 64-deep K slice)
        for (const char* kind : {"NT", "NN"}) {
            Problem P = std::string(kind) == "NT" ? model("NT", rows, 2 * I, H) : model("NN", rows, H, 2 * I);
            ok &= checkSplit(ks, P, I, 1.f, 0.f, true, seed++);
            ok &= checkSplit(ks, P, I, 0.7f, 1.f, false, seed++);
        }
    }
    return ok;
}

static bool correctness(const std::vector<KernelSet>& sets) {
    bool ok = true;
    const bool T[4][2] = {{false, false}, {false, true}, {true, false}, {true, true}};
    std::mt19937 r(7);
    std::vector<int> m150(150), n150(150), k150(150);
    for (int g = 0; g < 150; g++) {
        m150[g] = g % 9 == 4 ? 0 : 1 + (int)(r() % 150);
        n150[g] = 1 + (int)(r() % 300);
        k150[g] = g % 13 == 6 ? 0 : 1 + (int)(r() % 700);
    }
    unsigned long long seed = 1;
    for (const KernelSet& ks : sets) {
        for (auto& t : T) {
            bool a = t[0], b = t[1];
            // empty (m = 0), k = 0, tiny, m / n / k off the tile grid, several tiles
            ok &= checkCase(ks, packed("ragged", a, b, {37, 0, 1, 3, 17, 130, 256, 5, 64},
                                       {40, 72, 40, 129, 16, 72, 40, 200, 8}, {72, 50, 0, 33, 40, 300, 31, 1, 129}, true),
                            1.3f, 0.5f, false, seed++);
            ok &= checkCase(ks, packed("ragged", a, b, {37, 0, 1, 3, 17, 130, 256, 5, 64},
                                       {40, 72, 40, 129, 16, 72, 40, 200, 8}, {72, 50, 0, 33, 40, 300, 31, 1, 129}, false),
                            1.3f, 0.f, true, seed++);
            // m and n just below, at and above 64 / 128 / 256, odd n, k = 1 .. 97
            ok &= checkCase(ks, packed("tile edges", a, b, {1, 15, 127, 129, 255, 257, 64, 65, 9},
                                       {257, 255, 7, 264, 520, 1, 256, 63, 130}, {31, 33, 64, 17, 96, 97, 16, 1, 48}, true),
                            0.9f, 0.25f, false, seed++);
            ok &= checkCase(ks, packed("tile edges", a, b, {1, 15, 127, 129, 255, 257, 64, 65, 9},
                                       {257, 255, 7, 264, 520, 1, 256, 63, 130}, {31, 33, 64, 17, 96, 97, 16, 1, 48}, false),
                            1.1f, 0.f, true, seed++);
            // k = 0 groups scale C by beta (and never read it at beta 0)
            ok &= checkCase(ks, packed("k = 0", a, b, {20, 33, 130}, {40, 129, 7}, {0, 64, 0}, false), 1.3f, 1.f, false,
                            seed++);
            ok &= checkCase(ks, packed("k = 0", a, b, {20, 33, 130}, {40, 129, 7}, {0, 64, 0}, true), 1.3f, 0.f, true,
                            seed++);
            // beta 1, long k (the ring wraps many times), k one past a slice
            ok &= checkCase(ks, packed("beta 1, long k", a, b, {130, 7, 64, 200, 300}, {64, 72, 40, 128, 520},
                                       {96, 500, 33, 128, 1000}, true),
                            -0.7f, 1.f, false, seed++);
            ok &= checkCase(ks, packed("long k", a, b, {256, 129}, {256, 384}, {2049, 1537}, false), 1.f, 0.f, true,
                            seed++);
            // more groups than one launch holds
            ok &= checkCase(ks, packed("150 groups", a, b, m150, n150, k150, (seed & 1) == 0), 1.f, 0.5f, false, seed++);
            // bf16 C: beta 0 over NaN, 1 and 0.5 (read widened), k = 0 groups, tile edges, odd ldc and offsets (the
            // scalar path) and aligned ones (bf16x2), more groups than a launch holds
            ok &= checkCaseBf16(ks, packed("ragged", a, b, {37, 0, 1, 3, 17, 130, 256, 5, 64},
                                           {40, 72, 40, 129, 16, 72, 40, 200, 8}, {72, 50, 0, 33, 40, 300, 31, 1, 129},
                                           true),
                                1.3f, 1.f, false, seed++);
            ok &= checkCaseBf16(ks, packed("ragged", a, b, {37, 0, 1, 3, 17, 130, 256, 5, 64},
                                           {40, 72, 40, 129, 16, 72, 40, 200, 8}, {72, 50, 0, 33, 40, 300, 31, 1, 129},
                                           false),
                                0.9f, 0.f, true, seed++);
            ok &= checkCaseBf16(ks, packed("tile edges", a, b, {1, 15, 127, 129, 255, 257, 64, 65, 9},
                                           {257, 255, 7, 264, 520, 1, 256, 63, 130}, {31, 0, 64, 17, 96, 97, 16, 1, 48},
                                           false),
                                -0.7f, 0.5f, false, seed++);
            ok &= checkCaseBf16(ks, packed("tile edges", a, b, {1, 15, 127, 129, 255, 257, 64, 65, 9},
                                           {257, 255, 7, 264, 520, 1, 256, 63, 130}, {31, 0, 64, 17, 96, 97, 16, 1, 48},
                                           true),
                                1.1f, 0.f, true, seed++);
            ok &= checkCaseBf16(ks, packed("k = 0", a, b, {20, 33, 130}, {40, 129, 7}, {0, 64, 0}, false), 1.3f, 0.5f,
                                false, seed++);
            ok &= checkCaseBf16(ks, packed("150 groups", a, b, m150, n150, k150, (seed & 1) == 0), 1.f, 1.f, false,
                                seed++);
        }
    }
    return ok;
}

// ---------------------------------------------------------------- timing

static float medianMs(const std::vector<Launch>& L, const KernelSet& ks, const Problem& P, int warm, int reps) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < warm; i++) run(L, ks, P.tA, P.tB);
    std::vector<float> t(reps);
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(e0));
        run(L, ks, P.tA, P.tB);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&t[i], e0, e1));
    }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    std::sort(t.begin(), t.end());
    return reps % 2 ? t[reps / 2] : 0.5f * (t[reps / 2 - 1] + t[reps / 2]);
}

static bool timing(const std::vector<KernelSet>& sets, int reps) {
    std::vector<int> rows = c2Rows(1);
    const int H = 2048, I = 768;
    std::printf("C2 expert GEMMs: 128 experts, %d rows (min %d, max %d), H = %d, I = %d; median of %d after 3 "
                "warm-ups\n",
                std::accumulate(rows.begin(), rows.end(), 0), *std::min_element(rows.begin(), rows.end()),
                *std::max_element(rows.begin(), rows.end()), H, I, reps);
    Problem shapes[6] = {model("NT", rows, 2 * I, H), model("NT", rows, H, I),     model("NN", rows, I, H),
                         model("NN", rows, H, 2 * I), model("TN", rows, 2 * I, H), model("TN", rows, H, I)};
    std::vector<double> total(sets.size(), 0.0);
    bool ok = true;
    unsigned long long seed = 100;
    for (const Problem& P : shapes) {
        float beta = P.tA ? 1.f : 0.f;  // weight gradients accumulate, as KernelBench times them
        Buffers B = makeBuffers(P, false, seed++);
        makeReference(P, B, 1.f, beta);
        for (size_t s = 0; s < sets.size(); s++) {
            const KernelSet& ks = sets[s];
            CK(cudaMemcpy(B.c, B.c0, P.cLen * 4, cudaMemcpyDeviceToDevice));
            std::vector<Launch> L = plan(P, ks, B.a, B.b, B.c, 1.f, beta);
            run(L, ks, P.tA, P.tB);
            CK(cudaDeviceSynchronize());
            ok &= report(ks.name, P, 1.f, beta, false, B);
            float ms = medianMs(L, ks, P, 3, reps);
            total[s] += ms;
            std::printf("  %-10s %-24s beta=%.0f: %8.3f ms  %7.1f TFLOP/s  (%zu launches, grid %d)\n", ks.name,
                        P.name.c_str(), beta, ms, P.flops() / ms / 1e9, L.size(), L.empty() ? 0 : L[0].grid);
        }
        B.free();
    }
    for (size_t s = 0; s < sets.size(); s++)
        std::printf("six shapes, %-10s %8.3f ms\n", sets[s].name, total[s]);

    // The weight gradients as Experts.backward runs them per projection, beta 0, into an f32 and into a bf16 C.
    std::printf("C2 weight gradients, beta 0: f32 C vs bf16 C (same launches, GB_FLAG_C_BF16)\n");
    Problem grads[2] = {model("TN", rows, I, H), model("TN", rows, H, I)};
    for (const Problem& P : grads) {
        Buffers B = makeBuffers(P, true, seed++);
        makeReference(P, B, 1.f, 0.f);
        __nv_bfloat16* c16;
        CK(cudaMalloc(&c16, P.cLen * 2));
        for (const KernelSet& ks : sets) {
            CK(cudaMemcpy(B.c, B.c0, P.cLen * 4, cudaMemcpyDeviceToDevice));
            std::vector<Launch> L32 = plan(P, ks, B.a, B.b, B.c, 1.f, 0.f);
            std::vector<Launch> L16 = plan(P, ks, B.a, B.b, c16, 1.f, 0.f, true);
            run(L32, ks, P.tA, P.tB);
            CK(cudaMemset(c16, 0xff, P.cLen * 2));  // NaN bits: beta 0 must never read them
            run(L16, ks, P.tA, P.tB);
            CK(cudaDeviceSynchronize());
            ok &= report(ks.name, P, 1.f, 0.f, true, B);
            ok &= verifyBf16(P, B, c16, ks.name, 1.f, 0.f) == 0;
            float ms32 = medianMs(L32, ks, P, 3, reps);
            float ms16 = medianMs(L16, ks, P, 3, reps);
            std::printf("  %-10s %-24s f32 C: %8.3f ms %7.1f TFLOP/s   bf16 C: %8.3f ms %7.1f TFLOP/s   "
                        "f32 / bf16 %.3f  (C %.0f MB f32, %.0f MB bf16)\n",
                        ks.name, P.name.c_str(), ms32, P.flops() / ms32 / 1e9, ms16, P.flops() / ms16 / 1e9,
                        ms32 / ms16, P.cLen * 4 / 1e6, P.cLen * 2 / 1e6);
        }
        CK(cudaFree(c16));
        B.free();
    }
    return ok;
}

// C2's gate and up projections fused (B in two blocks, split at I) against the same GEMM on B in one block and against
// the two GEMMs they replace, as Experts runs them unfused: NT, gate and up each rows x I x H into their own C; NN,
// dX = dH_gate Wg (beta 0) then += dH_up Wu (beta 1: the second reads and writes C again).
static bool timingSplit(const KernelSet& ks, int reps) {
    std::vector<int> rows = c2Rows(1);
    const int H = 2048, I = 768;
    std::printf("C2 gate + up fused (B in two blocks, split at %d) vs one block vs two GEMMs, %s; median of %d\n", I,
                ks.name, reps);
    bool ok = true;
    unsigned long long seed = 900;
    for (const char* kind : {"NT", "NN"}) {
        bool nt = std::string(kind) == "NT";
        Problem F = nt ? model("NT", rows, 2 * I, H) : model("NN", rows, H, 2 * I);
        Buffers B = makeBuffers(F, false, seed++);
        makeReference(F, B, 1.f, 0.f);
        // one block: the stacked B as it is
        CK(cudaMemcpy(B.c, B.c0, F.cLen * 4, cudaMemcpyDeviceToDevice));
        std::vector<Launch> one = plan(F, ks, B.a, B.b, B.c, 1.f, 0.f);
        float msOne = medianMs(one, ks, F, 3, reps);
        // fused: the second halves in a buffer of their own (NaN left behind in the stacked B)
        std::vector<long long> b2Off;
        __nv_bfloat16* b2 = splitOff(F, B, I, b2Off);
        CK(cudaMemcpy(B.c, B.c0, F.cLen * 4, cudaMemcpyDeviceToDevice));
        std::vector<Launch> fused = plan(F, ks, B.a, B.b, B.c, 1.f, 0.f, false, b2, &b2Off, I);
        run(fused, ks, F.tA, F.tB);
        CK(cudaDeviceSynchronize());
        std::string name = std::string(ks.name) + " split";
        ok &= report(name.c_str(), F, 1.f, 0.f, false, B);
        float msFused = medianMs(fused, ks, F, 3, reps);
        CK(cudaFree(b2));
        B.free();
        // the two GEMMs: their own operands (gate and up weights, and for NN dH_gate and dH_up)
        Problem P = nt ? model("NT", rows, I, H) : model("NN", rows, H, I);
        Buffers G = makeBuffers(P, false, seed++), U = makeBuffers(P, false, seed++);
        std::vector<Launch> two = plan(P, ks, G.a, G.b, G.c, 1.f, 0.f);
        std::vector<Launch> second = nt ? plan(P, ks, U.a, U.b, U.c, 1.f, 0.f) : plan(P, ks, U.a, U.b, G.c, 1.f, 1.f);
        two.insert(two.end(), second.begin(), second.end());
        float msTwo = medianMs(two, ks, P, 3, reps);
        G.free();
        U.free();
        std::printf("  %s %-24s fused %8.3f ms %7.1f TFLOP/s   one block %8.3f ms   two GEMMs (%s) %8.3f ms   "
                    "two / fused %.3f   fused / one block %.3f\n",
                    kind, F.name.c_str(), msFused, F.flops() / msFused / 1e9, msOne, P.name.c_str(), msTwo,
                    msTwo / msFused, msFused / msOne);
    }
    return ok;
}

int main(int argc, char** argv) {
    bool check = false, time = false;
    int reps = 20;
    for (int i = 1; i < argc; i++) {
        if (!std::strcmp(argv[i], "--check")) check = true;
        else if (!std::strcmp(argv[i], "--time")) time = true;
        else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
        else {
            std::fprintf(stderr, "usage: %s [--check] [--time] [--reps N] (unknown argument '%s')\n", argv[0], argv[i]);
            return 2;
        }
    }
    if (!check && !time) check = time = true;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    int drv = 0, rt = 0;
    CK(cudaDriverGetVersion(&drv));
    CK(cudaRuntimeGetVersion(&rt));
    std::printf("device: %s, sm_%d%d, %d SMs, driver %d, runtime %d; sm90 tile %dx%d, %d stages, %d B shared; "
                "mma.sync tile %dx%d, %d B shared\n",
                prop.name, prop.major, prop.minor, prop.multiProcessorCount, drv, rt, GS_BM, GS_BN, GS_STAGES,
                GS_SMEM_BYTES, GB_BM, GB_BN, GB_SMEM_BYTES);
    if (prop.major != 9 || prop.minor != 0) {
        std::fprintf(stderr, "this binary is built for sm_90a: it needs a compute capability 9.0 GPU (H100 / H200), "
                             "not sm_%d%d\n", prop.major, prop.minor);
        return 2;
    }
    std::vector<KernelSet> sets = {sm90Set(), mmaSet()};
    for (KernelSet& ks : sets) {
        for (KernelFn f : ks.fn)
            CK(cudaFuncSetAttribute((const void*)f, cudaFuncAttributeMaxDynamicSharedMemorySize, ks.smem));
        int perSm = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, (const void*)ks.fn[0], ks.threads, ks.smem));
        ks.maxGrid = perSm * prop.multiProcessorCount;
        std::printf("%s: %d CTAs of %d threads an SM (%d B shared)%s\n", ks.name, perSm, ks.threads, ks.smem,
                    ks.persistent ? ", persistent" : "");
        if (perSm < 1) {
            std::fprintf(stderr, "%s fits no CTA on an SM\n", ks.name);
            return 2;
        }
    }
    bool ok = true;
    if (check) {
        // the persistent kernel once more with 3 CTAs a launch: every CTA runs many tiles through one ring
        std::vector<KernelSet> checked = sets;
        KernelSet few = sets[0];
        few.name = "sm90 grid3";
        few.maxGrid = 3;
        checked.push_back(few);
        ok &= correctness(checked);
        ok &= correctnessSplit(sets[0]);
        ok &= correctnessSplit(few);
    }
    if (time) {
        ok &= timing(sets, reps);
        ok &= timingSplit(sets[0], reps);
    }
    std::printf("%s\n", ok ? "ALL PASS" : "SOME FAILED");
    return ok ? 0 : 1;
}
