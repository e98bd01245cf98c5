// Kernels of EmbeddingAndLoss: the embedding lookup and its deterministic backward (the block of each id's first
// token adds its tokens' rows in token order, no atomics), and the fused cross-entropy forward and backward (block per row; a one-pass float4 form; f32 or bf16
// gradient; f32 or bf16 logits). The per-row losses are summed by elementwise.cu's sum_partials_f64. Compiled at run time by NVRTC (see
// KernelLibrary); every kernel has a plain-Java twin in dev.sparkmoe.core.backend.CpuBackend, CudaBackendTest
// compares them.

#include "kernels_common.cuh"  // error word, reductions, grid-stride loop, float4 and bf16 helpers

// Streaming (evict-first) forms, for data read or written for the last time by the kernel: the load may move
// like any load (no volatile), the store is kept (volatile) but claims no other memory, so that loads of later
// iterations can be issued before it; neither may touch memory the kernel accesses otherwise.
__device__ __forceinline__ float4 ld4cs(const float* p, int c) {
    float4 v;
    asm("ld.global.cs.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
        : "l"(p + 4LL * c));
    return v;
}
__device__ __forceinline__ void st4cs(float* p, int c, float4 v) {
    asm volatile("st.global.cs.v4.f32 [%0], {%1, %2, %3, %4};" :: "l"(p + 4LL * c), "f"(v.x), "f"(v.y), "f"(v.z),
                 "f"(v.w));
}

// Streaming stores of four results at float4 c: f32 (16-byte aligned) or bf16 (8-byte aligned).
// Loads of the logits, f32 or bf16 (the LM head's chunk in the GEMMs' dtype, Backend.gemmDType), as f32.
__device__ __forceinline__ float ldin(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ldin(const unsigned short* p, long long i) {
    return __uint_as_float((unsigned int)p[i] << 16);
}
__device__ __forceinline__ float4 bf16x4_f32(unsigned int lo, unsigned int hi) {
    return make_float4(__uint_as_float(lo << 16), __uint_as_float(lo & 0xffff0000u), __uint_as_float(hi << 16),
                       __uint_as_float(hi & 0xffff0000u));
}
__device__ __forceinline__ float4 ld4in(const float* p, int c) { return ld4(p, c); }
__device__ __forceinline__ float4 ld4in(const unsigned short* p, int c) {
    uint2 u = reinterpret_cast<const uint2*>(p)[c];
    return bf16x4_f32(u.x, u.y);
}
__device__ __forceinline__ float4 ld4csin(const float* p, int c) { return ld4cs(p, c); }
__device__ __forceinline__ float4 ld4csin(const unsigned short* p, int c) {
    unsigned int lo, hi;
    asm("ld.global.cs.v2.u32 {%0, %1}, [%2];" : "=r"(lo), "=r"(hi) : "l"(p + 4LL * c));
    return bf16x4_f32(lo, hi);
}

__device__ __forceinline__ void st4cso(float* p, int c, float4 v) { st4cs(p, c, v); }
__device__ __forceinline__ void st4cso(unsigned short* p, int c, float4 v) { st4_bf16(p, c, v); }

// Cross-entropy bodies, templated over the gradient's type O (float or bf16 bits); kernels in the extern "C" block.
template <typename IN, typename O>
__device__ __forceinline__ void cross_entropy_body(const IN* logits, const int* targets, int rows, int vocab,
                                                   float gradScale, O* dLogits, double* rowLoss, int* err) {
    int r = blockIdx.x;
    long long o = (long long)r * vocab;
    int t = targets[r];
    if (t == -100) {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) st1o(dLogits, o + j, 0.f);
        if (threadIdx.x == 0) rowLoss[r] = 0.0;
        return;
    }
    if (t < 0 || t >= vocab) {
        if (threadIdx.x == 0) { report(err, ERR_CE_TARGET, r, t, vocab); rowLoss[r] = 0.0; }
        return;
    }
    // dLogits may alias logits: the target's logit is read before the reductions' barriers, after which threads
    // start overwriting the row.
    float target = ldin(logits, o + t);
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, ldin(logits, o + j));
    mx = blockMax(mx);
    double sum = 0.0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) sum += exp((double)(ldin(logits, o + j) - mx));
    sum = blockSumD(sum);
    double logSum = log(sum);
    if (threadIdx.x == 0) rowLoss[r] = logSum - (double)(target - mx);
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        float d = (float)exp((double)(ldin(logits, o + j) - mx) - logSum) * gradScale;
        if (j == t) d -= gradScale;
        st1o(dLogits, o + j, d);
    }
}

// One read of the row from DRAM: (vocab % 4 == 0, 16-byte aligned rows) each thread keeps a running max m and an
// f32 sum of expf(x - m) over its float4s (rescaled when m grows: a thread's few hundred terms, each at most 1); the
// block combines them in double as sum * exp(m - M). A double exp an element made this pass bound by the FP64 units
// rather than by the read (152k-wide rows). The loss is the double log of that sum, as above; the gradient pass
// re-reads the row and takes expf(x - M) * (1 / sum) in f32 (a few ulp from the double exp of cross_entropy_fwd_bwd).
__device__ __forceinline__ void ce_acc(float v, float m, float& s) { s += expf(v - m); }
#define CE_U 4

// dLogits may alias logits (no __restrict__ on either): each element is read by the thread that later writes it, and
// the target's logit is read before the first barrier.
template <typename IN, typename O>
__device__ __forceinline__ void cross_entropy_v4_body(const IN* logits, const int* __restrict__ targets, int rows,
                                                      int vocab, float gradScale, O* dLogits, double* rowLoss,
                                                      int* err) {
    int r = blockIdx.x;
    long long o = (long long)r * vocab;
    const IN* lr = logits + o;
    O* dr = dLogits + o;
    int v4 = vocab >> 2;
    int t = targets[r];
    if (t == -100) {
        for (int c = threadIdx.x; c < v4; c += blockDim.x) st4cso(dr, c, make_float4(0.f, 0.f, 0.f, 0.f));
        if (threadIdx.x == 0) rowLoss[r] = 0.0;
        return;
    }
    if (t < 0 || t >= vocab) {
        if (threadIdx.x == 0) { report(err, ERR_CE_TARGET, r, t, vocab); rowLoss[r] = 0.0; }
        return;
    }
    float target = ldin(lr, t);
    float m = -INFINITY;
    float s = 0.f;
    // CE_U float4 loads in flight per thread, then their values in order
    for (int c0 = threadIdx.x; c0 < v4; c0 += CE_U * blockDim.x) {
        float4 b[CE_U];
#pragma unroll
        for (int u = 0; u < CE_U; u++) {
            int c = c0 + u * blockDim.x;
            b[u] = c < v4 ? ld4in(lr, c) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
        }
#pragma unroll
        for (int u = 0; u < CE_U; u++) {
            if (c0 + u * blockDim.x >= v4) break;
            float4 a = b[u];
            float m4 = fmaxf(fmaxf(a.x, a.y), fmaxf(a.z, a.w));
            if (m4 > m) {
                if (s != 0.f) s *= expf(m - m4);
                m = m4;
            }
            if (m != -INFINITY) {  // else all values so far are -inf: they add exp(-inf) = 0 once the max is finite
                ce_acc(a.x, m, s); ce_acc(a.y, m, s); ce_acc(a.z, m, s); ce_acc(a.w, m, s);
            }
        }
    }
    float mx = blockMax(m);
    double part = s == 0.f ? 0.0 : (double)s * exp((double)m - (double)mx);
    double sum = blockSumD(part);
    if (mx == -INFINITY || mx != mx) sum = __longlong_as_double(0x7ff8000000000000LL);  // as exp(-inf - -inf): NaN
    double logSum = log(sum);
    if (threadIdx.x == 0) rowLoss[r] = logSum - (double)(target - mx);
    float inv = (float)(1.0 / sum);
    for (int c0 = threadIdx.x; c0 < v4; c0 += CE_U * blockDim.x) {
        float4 b[CE_U];
#pragma unroll
        for (int u = 0; u < CE_U; u++) {
            int c = c0 + u * blockDim.x;
            if (c < v4) b[u] = ld4csin(lr, c);
        }
#pragma unroll
        for (int u = 0; u < CE_U; u++) {
            int c = c0 + u * blockDim.x;
            if (c >= v4) break;
            float4 a = b[u], d;
            d.x = expf(a.x - mx) * inv * gradScale;
            d.y = expf(a.y - mx) * inv * gradScale;
            d.z = expf(a.z - mx) * inv * gradScale;
            d.w = expf(a.w - mx) * inv * gradScale;
            int j = 4 * c;
            if (t >= j && t < j + 4) {
                if (t == j) d.x -= gradScale; else if (t == j + 1) d.y -= gradScale;
                else if (t == j + 2) d.z -= gradScale; else d.w -= gradScale;
            }
            st4cso(dr, c, d);
        }
    }
}

extern "C" {

// ------------------------------------------------------------------ embedding

__global__ void embedding_fwd(const float* table, int tableRows, const int* ids, int tokens, int hidden, float* out,
                              int* err) {
    GRID_STRIDE(i, (long long)tokens * hidden) {
        int n = (int)(i / hidden), j = (int)(i % hidden);
        int id = ids[n];
        if (id < 0 || id >= tableRows) {
            if (j == 0) report(err, ERR_EMBED_ID, n, id, tableRows);
            continue;
        }
        out[i] = table[(long long)id * hidden + j];
    }
}

// dTable[ids[n]] += dOut[n], deterministically and without the host: block n returns unless token n is the first
// that holds its id; that block owns the table row and adds to it, column by column, the dOut rows of the tokens
// holding the id in token order (no atomics: the CPU reference's order of additions, so its sums bit for bit). It
// walks the ids from n in chunks of blockDim (a multiple of 32, at most EMBED_BWD_THREADS), lists each chunk's
// matches in order in shared memory (a ballot per warp, then the warps' counts before it), and adds them; a row is
// read and written once per chunk that holds its id (storing and reloading an f32 keeps its bits).
#define EMBED_BWD_THREADS 256
__global__ void __launch_bounds__(EMBED_BWD_THREADS) embedding_bwd_tokens(const float* dOut, const int* ids,
        int tokens, int hidden, int tableRows, float* dTable, int* err) {
    __shared__ int list[EMBED_BWD_THREADS];
    __shared__ int warpHits[EMBED_BWD_THREADS / 32];
    int n = blockIdx.x;
    int id = ids[n];
    if (id < 0 || id >= tableRows) {
        if (threadIdx.x == 0) report(err, ERR_EMBED_BWD_ID, n, id, tableRows);
        return;
    }
    int earlier = 0;
    for (int m = threadIdx.x; m < n && !earlier; m += blockDim.x) earlier = ids[m] == id;
    if (__syncthreads_or(earlier)) return;  // an earlier token's block owns the row
    float* t = dTable + (long long)id * hidden;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int m0 = n; m0 < tokens; m0 += blockDim.x) {
        int m = m0 + threadIdx.x;
        bool hit = m < tokens && ids[m] == id;
        unsigned mask = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) warpHits[warp] = __popc(mask);
        __syncthreads();
        int before = 0, hits = 0;
        for (int w = 0; w < warps; w++) {
            int c = warpHits[w];
            before += w < warp ? c : 0;
            hits += c;
        }
        if (hit) list[before + __popc(mask & ((1u << lane) - 1u))] = m;
        __syncthreads();
        if (hits > 0) {  // the same for every thread of the block
            for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
                float acc = t[j];
                for (int k = 0; k < hits; k++) acc += dOut[(long long)list[k] * hidden + j];
                t[j] = acc;
            }
        }
        __syncthreads();  // list and warpHits are rewritten by the next chunk
    }
}

// ------------------------------------------------------------------ cross-entropy (block per row)

// The bodies are above (templates over the gradient's type); dLogits f32 (may alias the logits) or bf16 (the
// gradient in the GEMMs' dtype, Backend.gemmDType: a buffer of its own).
__global__ void cross_entropy_fwd_bwd(const float* logits, const int* targets, int rows, int vocab, float gradScale,
                                      float* dLogits, double* rowLoss, int* err) {
    cross_entropy_body(logits, targets, rows, vocab, gradScale, dLogits, rowLoss, err);
}

__global__ void cross_entropy_fwd_bwd_bf16(const float* logits, const int* targets, int rows, int vocab,
                                           float gradScale, unsigned short* dLogits, double* rowLoss, int* err) {
    cross_entropy_body(logits, targets, rows, vocab, gradScale, dLogits, rowLoss, err);
}

__global__ void __launch_bounds__(512, 2) cross_entropy_fwd_bwd_v4(const float* logits,
        const int* __restrict__ targets, int rows, int vocab, float gradScale, float* dLogits,
        double* rowLoss, int* err) {
    cross_entropy_v4_body(logits, targets, rows, vocab, gradScale, dLogits, rowLoss, err);
}

__global__ void __launch_bounds__(512, 2) cross_entropy_fwd_bwd_v4_bf16(const float* logits,
        const int* __restrict__ targets, int rows, int vocab, float gradScale, unsigned short* dLogits,
        double* rowLoss, int* err) {
    cross_entropy_v4_body(logits, targets, rows, vocab, gradScale, dLogits, rowLoss, err);
}

// bf16 logits (the chunk written by the LM head's GEMM in the GEMMs' dtype) and their bf16 gradient, which may alias
// them (each element is read before the same thread writes it).
__global__ void cross_entropy_fwd_bwd_bf16in(const unsigned short* logits, const int* targets, int rows, int vocab,
                                             float gradScale, unsigned short* dLogits, double* rowLoss, int* err) {
    cross_entropy_body(logits, targets, rows, vocab, gradScale, dLogits, rowLoss, err);
}

__global__ void __launch_bounds__(512, 2) cross_entropy_fwd_bwd_v4_bf16in(const unsigned short* logits,
        const int* __restrict__ targets, int rows, int vocab, float gradScale, unsigned short* dLogits,
        double* rowLoss, int* err) {
    cross_entropy_v4_body(logits, targets, rows, vocab, gradScale, dLogits, rowLoss, err);
}

}  // extern "C"
