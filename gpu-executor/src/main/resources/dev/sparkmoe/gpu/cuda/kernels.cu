// spark-moe CUDA kernels (f32). Compiled at run time by NVRTC for the device's architecture (see KernelLibrary).
// Every kernel here has a plain-Java twin in dev.sparkmoe.core.backend.CpuBackend; CudaBackendTest compares them.
// Conventions: element counts are int (the SPI's tensors hold < 2^31 elements), products that can pass 2^31 are
// computed in long long. Index errors are recorded in the error word err[4] = {code, a, b, c} (first one wins) and
// thrown by the Java side at its next synchronisation point.

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)  // NVRTC has no math.h
#endif

#define ERR_EMBED_ID 1
#define ERR_CE_TARGET 2
#define ERR_EMBED_BWD_ID 3
#define ERR_GATHER_INDEX 4
#define ERR_SCATTER_INDEX 5
#define ERR_STATS_INDEX 6

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

extern "C" {

// ------------------------------------------------------------------ memory and BLAS-1

__global__ void fill_f32(float* x, long long n, float v) { GRID_STRIDE(i, n) x[i] = v; }
__global__ void fill_i32(int* x, long long n, int v) { GRID_STRIDE(i, n) x[i] = v; }
__global__ void fill_i64(long long* x, long long n, long long v) { GRID_STRIDE(i, n) x[i] = v; }

__global__ void axpy_f32(float alpha, const float* x, float* y, int n) { GRID_STRIDE(i, n) y[i] += alpha * x[i]; }

__global__ void scale_f32(float* x, long long n, float alpha) { GRID_STRIDE(i, n) x[i] *= alpha; }

// C[m, n] (row stride ldc) = beta == 0 ? 0 : beta * C: the k == 0 case of gemm.
__global__ void scale_rows_f32(float* c, int m, int n, int ldc, float beta) {
    GRID_STRIDE(i, (long long)m * n) {
        long long r = i / n, col = i % n;
        float* p = c + r * ldc + col;
        *p = beta == 0.f ? 0.f : *p * beta;
    }
}

// Pass 1 of sumSquares: partial[block] = sum of squares (in double) of a grid-stride share. Fixed grid: deterministic.
__global__ void sum_squares_partial(const float* x, long long n, double* partial) {
    double s = 0;
    GRID_STRIDE(i, n) { double v = x[i]; s += v * v; }
    s = blockSumD(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
// Pass 2: out[0] = sum of n partials, one block.
__global__ void sum_partials_f64(const double* partial, int n, double* out) {
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = blockSumD(s);
    if (threadIdx.x == 0) out[0] = s;
}

// ------------------------------------------------------------------ RMSNorm (block per row)

__global__ void rmsnorm_fwd(const float* x, const float* w, float eps, int rows, int dim, float* y, float* rstd) {
    int r = blockIdx.x;
    const float* xr = x + (long long)r * dim;
    float ss = 0.f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
    ss = blockSum(ss);
    float rs = (float)(1.0 / sqrt((double)(ss / dim + eps)));
    if (threadIdx.x == 0) rstd[r] = rs;
    float* yr = y + (long long)r * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) yr[j] = w[j] * (xr[j] * rs);
}

__global__ void rmsnorm_bwd_dx(const float* dy, const float* x, const float* w, const float* rstd, int rows, int dim,
                               float* dx) {
    int r = blockIdx.x;
    long long o = (long long)r * dim;
    float rs = rstd[r];
    float dot = 0.f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) dot += dy[o + j] * w[j] * x[o + j] * rs;
    dot = blockSum(dot);
    float mean = dot / dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float xhat = x[o + j] * rs;
        dx[o + j] = rs * (dy[o + j] * w[j] - xhat * mean);
    }
}

// dW partials: block (32 x 8) covers 32 columns and a chunk of rows; partial[chunk * dim + col].
__global__ void rmsnorm_bwd_dw_partial(const float* dy, const float* x, const float* rstd, int rows, int dim,
                                       int rowsPerChunk, float* partial) {
    __shared__ float sh[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * rowsPerChunk;
    int r1 = min(rows, r0 + rowsPerChunk);
    float acc = 0.f;
    if (col < dim) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            long long o = (long long)r * dim + col;
            acc += dy[o] * (x[o] * rstd[r]);
        }
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < dim) {
        float s = 0.f;
        for (int q = 0; q < 8; q++) s += sh[q][threadIdx.x];
        partial[(long long)blockIdx.y * dim + col] = s;
    }
}
// dw[col] += sum over chunks of partial[chunk * dim + col] (in chunk order).
__global__ void sum_chunks_accumulate(const float* partial, int chunks, int dim, float* dw) {
    GRID_STRIDE(col, dim) {
        float s = 0.f;
        for (int c = 0; c < chunks; c++) s += partial[(long long)c * dim + col];
        dw[col] += s;
    }
}

// ------------------------------------------------------------------ RoPE (rotate-half), in place

// One thread per (token, i < half); loops over heads. invFreq[half] computed on the host exactly as CpuBackend does.
__global__ void rope_f32(float* x, const float* invFreq, int tokens, int heads, int headDim, int seqLen, float sign) {
    int half = headDim / 2;
    GRID_STRIDE(t, (long long)tokens * half) {
        int n = (int)(t / half), i = (int)(t % half);
        int pos = n % seqLen;
        float angle = (float)pos * invFreq[i];
        float c = (float)cos((double)angle);
        float s = sign * (float)sin((double)angle);
        for (int h = 0; h < heads; h++) {
            long long o = ((long long)n * heads + h) * headDim;
            float a = x[o + i], b = x[o + i + half];
            x[o + i] = a * c - b * s;
            x[o + i + half] = b * c + a * s;
        }
    }
}

// ------------------------------------------------------------------ element-wise activations

__global__ void silu_mul_fwd(const float* gate, const float* up, float* out, int n) {
    GRID_STRIDE(i, n) {
        float g = gate[i];
        float s = (float)(1.0 / (1.0 + exp(-(double)g)));
        out[i] = g * s * up[i];
    }
}

__global__ void silu_mul_bwd(const float* dOut, const float* gate, const float* up, float* dGate, float* dUp, int n) {
    GRID_STRIDE(i, n) {
        float g = gate[i];
        float s = (float)(1.0 / (1.0 + exp(-(double)g)));
        float silu = g * s;
        float d = dOut[i];
        dUp[i] = d * silu;
        dGate[i] = d * up[i] * (s * (1.f + g * (1.f - s)));
    }
}

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

// dTable[ids[n]] += dOut[n]: atomicAdd, so the summation order of repeated ids is not fixed.
__global__ void embedding_bwd(const float* dOut, const int* ids, int tokens, int hidden, float* dTable, int tableRows,
                              int* err) {
    GRID_STRIDE(i, (long long)tokens * hidden) {
        int n = (int)(i / hidden), j = (int)(i % hidden);
        int id = ids[n];
        if (id < 0 || id >= tableRows) {
            if (j == 0) report(err, ERR_EMBED_BWD_ID, n, id, tableRows);
            continue;
        }
        atomicAdd(dTable + (long long)id * hidden + j, dOut[i]);
    }
}

// ------------------------------------------------------------------ cross-entropy (block per row)

__global__ void cross_entropy_fwd_bwd(const float* logits, const int* targets, int rows, int vocab, float gradScale,
                                      float* dLogits, double* rowLoss, int* err) {
    int r = blockIdx.x;
    long long o = (long long)r * vocab;
    int t = targets[r];
    if (t == -100) {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) dLogits[o + j] = 0.f;
        if (threadIdx.x == 0) rowLoss[r] = 0.0;
        return;
    }
    if (t < 0 || t >= vocab) {
        if (threadIdx.x == 0) { report(err, ERR_CE_TARGET, r, t, vocab); rowLoss[r] = 0.0; }
        return;
    }
    // dLogits may alias logits: the target's logit is read before the reductions' barriers, after which threads
    // start overwriting the row.
    float target = logits[o + t];
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, logits[o + j]);
    mx = blockMax(mx);
    double sum = 0.0;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) sum += exp((double)(logits[o + j] - mx));
    sum = blockSumD(sum);
    double logSum = log(sum);
    if (threadIdx.x == 0) rowLoss[r] = logSum - (double)(target - mx);
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        float d = (float)exp((double)(logits[o + j] - mx) - logSum) * gradScale;
        if (j == t) d -= gradScale;
        dLogits[o + j] = d;
    }
}

// ------------------------------------------------------------------ softmax / router (warp per row)

__global__ void softmax_rows(const float* x, int rows, int cols, float* out) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= rows) return;
    long long o = (long long)warp * cols;
    float mx = -INFINITY;
    for (int j = lane; j < cols; j += 32) mx = fmaxf(mx, x[o + j]);
    mx = warpMax(mx);
    float sum = 0.f;
    for (int j = lane; j < cols; j += 32) {
        float e = (float)exp((double)(x[o + j] - mx));
        out[o + j] = e;
        sum += e;
    }
    sum = warpSum(sum);
    float inv = 1.f / sum;
    for (int j = lane; j < cols; j += 32) out[o + j] *= inv;
}

// Thread per row: the same selection loop as the CPU (first untaken expert, then strictly greater replaces).
__global__ void router_topk(const float* probs, int rows, int experts, int k, int normalize, int* topIdx,
                            float* topVal, float* weights) {
    GRID_STRIDE(r, rows) {
        const float* p = probs + r * (long long)experts;
        int* idx = topIdx + r * (long long)k;
        float* val = topVal + r * (long long)k;
        for (int j = 0; j < k; j++) {
            int best = -1;
            float bv = -INFINITY;
            for (int e = 0; e < experts; e++) {
                bool taken = false;
                for (int q = 0; q < j; q++) if (idx[q] == e) { taken = true; break; }
                if (!taken && (best < 0 || p[e] > bv)) { best = e; bv = p[e]; }
            }
            idx[j] = best;
            val[j] = bv;
        }
        float sum = 0.f;
        for (int j = 0; j < k; j++) sum += val[j];
        float* w = weights + r * (long long)k;
        for (int j = 0; j < k; j++) w[j] = normalize ? val[j] / sum : val[j];
    }
}

// out[e] = times chosen, out[E + e] = column sums of probs, as doubles (counts are exact integers).
__global__ void router_stats_counts(const int* topIdx, int n, int experts, double* out, int* err) {
    GRID_STRIDE(i, n) {
        int e = topIdx[i];
        if (e < 0 || e >= experts) { report(err, ERR_STATS_INDEX, (int)i, e, experts); continue; }
        atomicAdd(out + e, 1.0);
    }
}
__global__ void router_stats_colsum(const float* probs, int rows, int experts, double* out) {
    // block per expert column; deterministic tree sum in double
    int e = blockIdx.x;
    double s = 0.0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) s += probs[(long long)r * experts + e];
    s = blockSumD(s);
    if (threadIdx.x == 0) out[experts + e] = s;
}

// Warp per row; dp lives in dynamic shared memory (experts floats per warp).
__global__ void router_bwd(const float* dw, const int* topIdx, const float* topVal, const float* probs,
                           const float* aux, int rows, int experts, int k, int normalize, float* dLogits) {
    extern __shared__ float shDp[];
    int wInBlock = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * (blockDim.x >> 5) + wInBlock;
    if (n >= rows) return;
    float* dp = shDp + wInBlock * experts;
    for (int e = lane; e < experts; e += 32) dp[e] = aux[e];
    __syncwarp();
    if (lane == 0) {
        long long b = (long long)n * k;
        if (normalize) {
            float sum = 0.f, dotWv = 0.f;
            for (int j = 0; j < k; j++) { sum += topVal[b + j]; dotWv += dw[b + j] * topVal[b + j]; }
            for (int j = 0; j < k; j++) dp[topIdx[b + j]] += dw[b + j] / sum - dotWv / (sum * sum);
        } else {
            for (int j = 0; j < k; j++) dp[topIdx[b + j]] += dw[b + j];
        }
    }
    __syncwarp();
    long long o = (long long)n * experts;
    float dotP = 0.f;
    for (int e = lane; e < experts; e += 32) dotP += dp[e] * probs[o + e];
    dotP = warpSum(dotP);
    for (int e = lane; e < experts; e += 32) dLogits[o + e] = probs[o + e] * (dp[e] - dotP);
}

// ------------------------------------------------------------------ MoE data movement

// Row copies, one block per row: float4 moves when vec (width % 4 == 0, 16-byte aligned rows), else floats.
__device__ __forceinline__ void copy_row(const float* __restrict__ from, float* __restrict__ to, int width, int vec) {
    if (vec) {
        const float4* f = reinterpret_cast<const float4*>(from);
        float4* t = reinterpret_cast<float4*>(to);
        for (int c = threadIdx.x; c < (width >> 2); c += blockDim.x) t[c] = f[c];
    } else {
        for (int c = threadIdx.x; c < width; c += blockDim.x) to[c] = from[c];
    }
}

// grid (n): dst[j] = src[index[j] / divisor]
__global__ void gather_rows(const float* src, int srcRows, const int* index, int n, int width, int divisor,
                            float* dst, int* err, int vec) {
    int j = blockIdx.x;
    int raw = index[j];
    int s = raw / divisor;
    if (raw < 0 || s >= srcRows) {
        if (threadIdx.x == 0) report(err, ERR_GATHER_INDEX, j, raw, srcRows);
        return;
    }
    copy_row(src + (long long)s * width, dst + (long long)j * width, width, vec);
}

// grid (n): dst[index[j]] = src[j]
__global__ void scatter_rows(const float* src, const int* index, int n, int width, float* dst, int dstRows, int* err,
                             int vec) {
    int j = blockIdx.x;
    int d = index[j];
    if (d < 0 || d >= dstRows) {
        if (threadIdx.x == 0) report(err, ERR_SCATTER_INDEX, j, d, dstRows);
        return;
    }
    copy_row(src + (long long)j * width, dst + (long long)d * width, width, vec);
}

__global__ void moe_combine(const float* slots, const float* weights, int tokens, int k, int width, float* y) {
    GRID_STRIDE(i, (long long)tokens * width) {
        long long t = i / width, c = i % width;
        float acc = 0.f;
        for (int q = 0; q < k; q++) acc += weights[t * k + q] * slots[(t * k + q) * width + c];
        y[i] = acc;
    }
}

// Block per slot s: dSlots[s] = w[s] * dy[t], dWeights[s] = dot(dy[t], slots[s]).
__global__ void moe_combine_bwd(const float* dy, const float* slots, const float* weights, int tokens, int k,
                                int width, float* dSlots, float* dWeights) {
    long long s = blockIdx.x;
    long long t = s / k;
    float ws = weights[s];
    float dot = 0.f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float d = dy[t * width + c];
        dSlots[s * width + c] = ws * d;
        dot += d * slots[s * width + c];
    }
    dot = blockSum(dot);
    if (threadIdx.x == 0) dWeights[s] = dot;
}

__global__ void sum_slots(const float* src, int tokens, int k, int width, float* dst) {
    GRID_STRIDE(i, (long long)tokens * width) {
        long long t = i / width, c = i % width;
        float acc = dst[i];
        for (int q = 0; q < k; q++) acc += src[(t * k + q) * width + c];
        dst[i] = acc;
    }
}

// ------------------------------------------------------------------ AdamW (scalars prepared on the host as CpuBackend)

__global__ void adamw_f32(float* param, const float* grad, float* m, float* v, int n, float decay, int doDecay,
                          float w1, float beta2, float w2, float stepSize, float bc2Sqrt, float eps) {
    GRID_STRIDE(i, n) {
        float p = doDecay ? param[i] * decay : param[i];
        float g = grad[i];
        float mi = m[i];
        mi = w1 < 0.5f ? mi + w1 * (g - mi) : g - (g - mi) * (1.f - w1);
        float vi = v[i] * beta2 + w2 * g * g;
        m[i] = mi;
        v[i] = vi;
        float denom = (float)sqrt((double)vi) / bc2Sqrt + eps;
        param[i] = p + (-stepSize) * (mi / denom);
    }
}

} // extern "C"
