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
#define ERR_GATHER_INDEX 4
#define ERR_SCATTER_INDEX 5
#define ERR_STATS_INDEX 6
#define ERR_SORT_INDEX 7

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
// Warp-stride loop: warp-uniform, so the whole warp stays together for shuffles.
#define WARP_STRIDE(j, n) for (long long j = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; j < (n); \
                               j += ((long long)gridDim.x * blockDim.x) >> 5)

// Sum over aligned groups of L lanes (L a power of two <= 32); every lane of a group gets its group's sum. All 32
// lanes of the warp must call it.
template <int L> __device__ __forceinline__ float groupSum(float v) {
    for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

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

// ------------------------------------------------------------------ RMSNorm, vectorised (dim % 4 == 0, 16-byte
// aligned rows): a group of L lanes per row, each lane holding V float4 of the row in registers (column float4
// c = lane + q * L), so dim <= 4 * L * V. A block of 256 threads holds 256 / L row groups.
template <int L, int V> __device__ __forceinline__ void rmsnorm_fwd_vec(const float* __restrict__ x,
        const float* __restrict__ w, float eps, int rows, int dim, float* __restrict__ y, float* __restrict__ rstd) {
    int lane = threadIdx.x % L;
    int r = blockIdx.x * (blockDim.x / L) + threadIdx.x / L;
    bool ok = r < rows;
    int d4 = dim >> 2;
    const float* xr = x + (long long)(ok ? r : 0) * dim;
    float4 xv[V];
    float ss = 0.f;
#pragma unroll
    for (int q = 0; q < V; q++) {
        int c = lane + q * L;
        xv[q] = ok && c < d4 ? ld4(xr, c) : make_float4(0.f, 0.f, 0.f, 0.f);
        ss += xv[q].x * xv[q].x;
        ss += xv[q].y * xv[q].y;
        ss += xv[q].z * xv[q].z;
        ss += xv[q].w * xv[q].w;
    }
    ss = groupSum<L>(ss);
    if (!ok) return;
    float rs = (float)(1.0 / sqrt((double)(ss / dim + eps)));
    if (lane == 0) rstd[r] = rs;
    float* yr = y + (long long)r * dim;
#pragma unroll
    for (int q = 0; q < V; q++) {
        int c = lane + q * L;
        if (c < d4) {
            float4 wv = ld4(w, c), o;
            o.x = wv.x * (xv[q].x * rs);
            o.y = wv.y * (xv[q].y * rs);
            o.z = wv.z * (xv[q].z * rs);
            o.w = wv.w * (xv[q].w * rs);
            st4(yr, c, o);
        }
    }
}

// Backward, same layout: dx per row with x and dy kept in registers between the dot and the write, and the dW
// contribution of the rows of this block (a contiguous chunk of rowsPerBlock rows) reduced in a fixed order into
// partial[blockIdx.x * dim + col]: per lane over its rows, then over the block's row groups through shared memory.
template <int L, int V> __device__ __forceinline__ void rmsnorm_bwd_vec(const float* __restrict__ dy,
        const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ rstd, int rows, int dim,
        int rowsPerBlock, float* __restrict__ dx, float* __restrict__ partial) {
    extern __shared__ float4 shDw[];  // [groups][d4]
    constexpr int MAXG = 256 / L;
    int groups = blockDim.x / L;
    int g = threadIdx.x / L, lane = threadIdx.x % L;
    int d4 = dim >> 2;
    int r0 = blockIdx.x * rowsPerBlock;
    int r1 = min(rows, r0 + rowsPerBlock);
    float4 acc[V];
#pragma unroll
    for (int q = 0; q < V; q++) acc[q] = make_float4(0.f, 0.f, 0.f, 0.f);
    // every group runs the same number of iterations (shuffles need the whole warp)
    for (int rb = r0; rb < r1; rb += groups) {
        int r = rb + g;
        bool ok = r < r1;
        long long o = (long long)(ok ? r : r0) * dim;
        float rs = ok ? rstd[r] : 0.f;
        float4 xv[V], dv[V];
        float dot = 0.f;
#pragma unroll
        for (int q = 0; q < V; q++) {
            int c = lane + q * L;
            bool in = ok && c < d4;
            xv[q] = in ? ld4(x + o, c) : make_float4(0.f, 0.f, 0.f, 0.f);
            dv[q] = in ? ld4(dy + o, c) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int q = 0; q < V; q++) {
            int c = lane + q * L;
            float4 wv = c < d4 ? ld4(w, c) : make_float4(0.f, 0.f, 0.f, 0.f);
            dot += dv[q].x * wv.x * xv[q].x * rs;
            dot += dv[q].y * wv.y * xv[q].y * rs;
            dot += dv[q].z * wv.z * xv[q].z * rs;
            dot += dv[q].w * wv.w * xv[q].w * rs;
        }
        dot = groupSum<L>(dot);
        if (ok) {
            float mean = dot / dim;
#pragma unroll
            for (int q = 0; q < V; q++) {
                int c = lane + q * L;
                if (c < d4) {
                    float4 wv = ld4(w, c), xh, out;
                    xh.x = xv[q].x * rs; xh.y = xv[q].y * rs; xh.z = xv[q].z * rs; xh.w = xv[q].w * rs;
                    out.x = rs * (dv[q].x * wv.x - xh.x * mean);
                    out.y = rs * (dv[q].y * wv.y - xh.y * mean);
                    out.z = rs * (dv[q].z * wv.z - xh.z * mean);
                    out.w = rs * (dv[q].w * wv.w - xh.w * mean);
                    st4(dx + o, c, out);
                    acc[q].x += dv[q].x * xh.x;
                    acc[q].y += dv[q].y * xh.y;
                    acc[q].z += dv[q].z * xh.z;
                    acc[q].w += dv[q].w * xh.w;
                }
            }
        }
    }
#pragma unroll
    for (int q = 0; q < V; q++) {
        int c = lane + q * L;
        if (c < d4) shDw[g * d4 + c] = acc[q];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d4; c += blockDim.x) {
        float4 s = shDw[c];
        for (int q = 1; q < groups && q < MAXG; q++) {
            float4 t = shDw[q * d4 + c];
            s.x += t.x; s.y += t.y; s.z += t.z; s.w += t.w;
        }
        st4(partial + (long long)blockIdx.x * dim, c, s);
    }
}

extern "C" {

// ------------------------------------------------------------------ memory and BLAS-1

__global__ void fill_f32(float* x, long long n, float v) { GRID_STRIDE(i, n) x[i] = v; }
__global__ void fill_i32(int* x, long long n, int v) { GRID_STRIDE(i, n) x[i] = v; }
__global__ void fill_i64(long long* x, long long n, long long v) { GRID_STRIDE(i, n) x[i] = v; }

__global__ void axpy_f32(float alpha, const float* x, float* y, int n) { GRID_STRIDE(i, n) y[i] += alpha * x[i]; }

// axpy with float4 moves (x and y 16-byte aligned); the n % 4 tail by the first threads of the grid.
__global__ void axpy_f32x4(float alpha, const float* __restrict__ x, float* __restrict__ y, int n) {
    int n4 = n >> 2;
    GRID_STRIDE(i, n4) {
        float4 a = ld4(x, (int)i), b = ld4(y, (int)i);
        b.x += alpha * a.x; b.y += alpha * a.y; b.z += alpha * a.z; b.w += alpha * a.w;
        st4(y, (int)i, b);
    }
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n - 4 * n4) y[4 * n4 + t] += alpha * x[4 * n4 + t];
}

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

// Both passes for many tensors in one launch each. desc[4 * i ..] = {x, n, blocks, partial} of tensor i (grid y);
// every tensor's arithmetic is sum_squares_partial's with its own grid of `blocks` and sum_partials_f64's, so the
// results equal those of the two kernels launched per tensor, whatever else is in the list.
__global__ void sum_squares_partial_multi(const long long* desc) {
    const long long* d = desc + 4LL * blockIdx.y;
    const float* x = reinterpret_cast<const float*>(d[0]);
    long long n = d[1];
    int blocks = (int)d[2];
    if ((int)blockIdx.x >= blocks) return;  // the whole block
    double* partial = reinterpret_cast<double*>(d[3]);
    double s = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)blocks * blockDim.x) {
        double v = x[i];
        s += v * v;
    }
    s = blockSumD(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
// grid (count), 1024 threads: out[i] = sum of tensor i's partials.
__global__ void sum_partials_f64_multi(const long long* desc, double* out) {
    const long long* d = desc + 4LL * blockIdx.x;
    int n = (int)d[2];
    const double* partial = reinterpret_cast<const double*>(d[3]);
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = blockSumD(s);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
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

// The same sum with more parallelism: block (32, 32) per 32 columns; thread y sums chunks y, y + 32, ... and the 32
// sums are added in order of y.
__global__ void sum_chunks_accumulate_2d(const float* partial, int chunks, int dim, float* dw) {
    __shared__ float sh[32][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    float s = 0.f;
    if (col < dim) {
        for (int c = threadIdx.y; c < chunks; c += 32) s += partial[(long long)c * dim + col];
    }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < dim) {
        float t = 0.f;
        for (int q = 0; q < 32; q++) t += sh[q][threadIdx.x];
        dw[col] += t;
    }
}

// Vectorised RMSNorm (see rmsnorm_fwd_vec / rmsnorm_bwd_vec): L lanes per row, V float4 per lane, 256 threads.
#define RMSNORM_VEC(L, V)                                                                                             \
    __global__ void __launch_bounds__(256) rmsnorm_fwd_l##L##v##V(const float* x, const float* w, float eps,      \
            int rows, int dim, float* y, float* rstd) { rmsnorm_fwd_vec<L, V>(x, w, eps, rows, dim, y, rstd); }    \
    __global__ void __launch_bounds__(256) rmsnorm_bwd_l##L##v##V(const float* dy, const float* x, const float* w, \
            const float* rstd, int rows, int dim, int rowsPerBlock, float* dx, float* partial) {                   \
        rmsnorm_bwd_vec<L, V>(dy, x, w, rstd, rows, dim, rowsPerBlock, dx, partial);                               \
    }
RMSNORM_VEC(4, 1)
RMSNORM_VEC(8, 1)
RMSNORM_VEC(16, 1)
RMSNORM_VEC(32, 1)
RMSNORM_VEC(32, 2)
RMSNORM_VEC(32, 4)
RMSNORM_VEC(32, 8)

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

// The rotation table of rope_tab_v4: cosT/sinT[pos * half + i] for pos < seqLen, with rope_f32's arithmetic.
__global__ void rope_table(const float* invFreq, int seqLen, int half, float* cosT, float* sinT) {
    GRID_STRIDE(t, (long long)seqLen * half) {
        int pos = (int)(t / half), i = (int)(t % half);
        float angle = (float)pos * invFreq[i];
        cosT[t] = (float)cos((double)angle);
        sinT[t] = (float)sin((double)angle);
    }
}

// rope_f32 from the table: thread per (token, head, 4 consecutive i < half); half % 4 == 0, x 16-byte aligned.
__global__ void rope_tab_v4(float* __restrict__ x, const float* __restrict__ cosT, const float* __restrict__ sinT,
                            int tokens, int heads, int headDim, int seqLen, float sign) {
    int half = headDim / 2, h4 = half >> 2;
    GRID_STRIDE(t, (long long)tokens * heads * h4) {
        int ti = (int)t;
        int i4 = ti % h4, nh = ti / h4;
        int pos = (nh / heads) % seqLen;
        float4 c = ld4(cosT + (long long)pos * half, i4), sn = ld4(sinT + (long long)pos * half, i4);
        sn.x *= sign; sn.y *= sign; sn.z *= sign; sn.w *= sign;
        float* xr = x + (long long)nh * headDim;
        float4 a = ld4(xr, i4), b = ld4(xr + half, i4), p, q;
        p.x = a.x * c.x - b.x * sn.x; q.x = b.x * c.x + a.x * sn.x;
        p.y = a.y * c.y - b.y * sn.y; q.y = b.y * c.y + a.y * sn.y;
        p.z = a.z * c.z - b.z * sn.z; q.z = b.z * c.z + a.z * sn.z;
        p.w = a.w * c.w - b.w * sn.w; q.w = b.w * c.w + a.w * sn.w;
        st4(xr, i4, p);
        st4(xr + half, i4, q);
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

__device__ __forceinline__ float silu_sig(float g) { return (float)(1.0 / (1.0 + exp(-(double)g))); }

__device__ __forceinline__ void silu_bwd_one(float d, float g, float u, float& dg, float& du) {
    float s = silu_sig(g);
    float silu = g * s;
    du = d * silu;
    dg = d * u * (s * (1.f + g * (1.f - s)));
}

}  // extern "C" (the templates below cannot have C linkage)

// Stores of an f32 result into f32 (st4o: 16-byte aligned) or bf16 outputs (8-byte aligned: a grouped GEMM operand
// held as a bf16 image, CudaBackend.emptyGemmOperand), one kernel body for both.
__device__ __forceinline__ void st4o(float* p, long long c, float4 v) { reinterpret_cast<float4*>(p)[c] = v; }
__device__ __forceinline__ void st4o(unsigned short* p, long long c, float4 v) { st4_bf16(p, c, v); }
__device__ __forceinline__ void st1o(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st1o(unsigned short* p, long long i, float v) { p[i] = bf16_rn(v); }

// float4 forms of silu_mul_fwd/bwd (inputs 16-byte aligned); the n % 4 tail by the first threads of the grid.
template <typename O>
__device__ __forceinline__ void silu_mul_fwd_x4_body(const float* __restrict__ gate, const float* __restrict__ up,
                                                     O* __restrict__ out, int n) {
    int n4 = n >> 2;
    GRID_STRIDE(i, n4) {
        float4 g = ld4(gate, (int)i), u = ld4(up, (int)i), o;
        o.x = g.x * silu_sig(g.x) * u.x;
        o.y = g.y * silu_sig(g.y) * u.y;
        o.z = g.z * silu_sig(g.z) * u.z;
        o.w = g.w * silu_sig(g.w) * u.w;
        st4o(out, i, o);
    }
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n - 4 * n4) {
        int i = 4 * n4 + (int)t;
        float g = gate[i];
        st1o(out, i, g * silu_sig(g) * up[i]);
    }
}

template <typename O>
__device__ __forceinline__ void silu_mul_bwd_x4_body(const float* __restrict__ dOut, const float* __restrict__ gate,
                                                     const float* __restrict__ up, O* __restrict__ dGate,
                                                     O* __restrict__ dUp, int n) {
    int n4 = n >> 2;
    GRID_STRIDE(i, n4) {
        float4 d = ld4(dOut, (int)i), g = ld4(gate, (int)i), u = ld4(up, (int)i), dg, du;
        silu_bwd_one(d.x, g.x, u.x, dg.x, du.x);
        silu_bwd_one(d.y, g.y, u.y, dg.y, du.y);
        silu_bwd_one(d.z, g.z, u.z, dg.z, du.z);
        silu_bwd_one(d.w, g.w, u.w, dg.w, du.w);
        st4o(dUp, i, du);
        st4o(dGate, i, dg);
    }
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n - 4 * n4) {
        int i = 4 * n4 + (int)t;
        float dg, du;
        silu_bwd_one(dOut[i], gate[i], up[i], dg, du);
        st1o(dGate, i, dg);
        st1o(dUp, i, du);
    }
}

// Warp per row, float4 loads (width % 4 == 0, 16-byte aligned source rows), four in flight per lane; f32 or bf16 out.
template <typename O>
__device__ __forceinline__ void copy_row_warp(const float* __restrict__ from, O* __restrict__ to, int w4, int lane) {
    const float4* f = reinterpret_cast<const float4*>(from);
    int c = lane;
    for (; c + 96 < w4; c += 128) {
        float4 a = f[c], b = f[c + 32], d = f[c + 64], e = f[c + 96];
        st4o(to, c, a); st4o(to, c + 32, b); st4o(to, c + 64, d); st4o(to, c + 96, e);
    }
    for (; c < w4; c += 32) st4o(to, c, f[c]);
}

template <typename O>
__device__ __forceinline__ void gather_rows_warp_body(const float* src, int srcRows, const int* index, int n,
                                                      int width, int divisor, O* dst, int* err) {
    int lane = threadIdx.x & 31;
    WARP_STRIDE(j, n) {
        int raw = index[j];
        int s = raw / divisor;
        if (raw < 0 || s >= srcRows) {
            if (lane == 0) report(err, ERR_GATHER_INDEX, (int)j, raw, srcRows);
            continue;
        }
        copy_row_warp(src + (long long)s * width, dst + j * width, width >> 2, lane);
    }
}

// Streaming stores of four results at float4 c: f32 (16-byte aligned) or bf16 (8-byte aligned).
__device__ __forceinline__ void st4cso(float* p, int c, float4 v) { st4cs(p, c, v); }
__device__ __forceinline__ void st4cso(unsigned short* p, int c, float4 v) { st4_bf16(p, c, v); }

// Cross-entropy bodies, templated over the gradient's type O (float or bf16 bits); kernels in the extern "C" block.
template <typename O>
__device__ __forceinline__ void cross_entropy_body(const float* logits, const int* targets, int rows, int vocab,
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
        st1o(dLogits, o + j, d);
    }
}

// One read of the row from DRAM: (vocab % 4 == 0, 16-byte aligned rows) each thread keeps a running max m and a
// double sum of exp(x - m) over its float4s (rescaled when m grows); the block combines them as sum * exp(m - M).
// The loss is the double log-sum-exp as above; the gradient pass re-reads the row (from L2) and takes
// expf(x - M) * (1 / sum) in f32 (a few ulp from the double exp of cross_entropy_fwd_bwd).
__device__ __forceinline__ void ce_acc(float v, float m, double& s) { s += exp((double)(v - m)); }
#define CE_U 4

// dLogits may alias logits (no __restrict__ on either): each element is read by the thread that later writes it, and
// the target's logit is read before the first barrier.
template <typename O>
__device__ __forceinline__ void cross_entropy_v4_body(const float* logits, const int* __restrict__ targets, int rows,
                                                      int vocab, float gradScale, O* dLogits, double* rowLoss,
                                                      int* err) {
    int r = blockIdx.x;
    long long o = (long long)r * vocab;
    const float* lr = logits + o;
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
    float target = lr[t];
    float m = -INFINITY;
    double s = 0.0;
    // CE_U float4 loads in flight per thread, then their values in order
    for (int c0 = threadIdx.x; c0 < v4; c0 += CE_U * blockDim.x) {
        float4 b[CE_U];
#pragma unroll
        for (int u = 0; u < CE_U; u++) {
            int c = c0 + u * blockDim.x;
            b[u] = c < v4 ? ld4(lr, c) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
        }
#pragma unroll
        for (int u = 0; u < CE_U; u++) {
            if (c0 + u * blockDim.x >= v4) break;
            float4 a = b[u];
            float m4 = fmaxf(fmaxf(a.x, a.y), fmaxf(a.z, a.w));
            if (m4 > m) {
                if (s != 0.0) s *= exp((double)m - (double)m4);
                m = m4;
            }
            if (m != -INFINITY) {  // else all values so far are -inf: they add exp(-inf) = 0 once the max is finite
                ce_acc(a.x, m, s); ce_acc(a.y, m, s); ce_acc(a.z, m, s); ce_acc(a.w, m, s);
            }
        }
    }
    float mx = blockMax(m);
    double part = s == 0.0 ? 0.0 : s * exp((double)m - (double)mx);
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
            if (c < v4) b[u] = ld4cs(lr, c);
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

__global__ void silu_mul_fwd_x4(const float* __restrict__ gate, const float* __restrict__ up, float* __restrict__ out,
                                int n) {
    silu_mul_fwd_x4_body(gate, up, out, n);
}

__global__ void silu_mul_fwd_x4_bf16(const float* __restrict__ gate, const float* __restrict__ up,
                                     unsigned short* __restrict__ out, int n) {
    silu_mul_fwd_x4_body(gate, up, out, n);
}

__global__ void silu_mul_bwd_x4(const float* __restrict__ dOut, const float* __restrict__ gate,
                                const float* __restrict__ up, float* __restrict__ dGate, float* __restrict__ dUp,
                                int n) {
    silu_mul_bwd_x4_body(dOut, gate, up, dGate, dUp, n);
}

__global__ void silu_mul_bwd_x4_bf16(const float* __restrict__ dOut, const float* __restrict__ gate,
                                     const float* __restrict__ up, unsigned short* __restrict__ dGate,
                                     unsigned short* __restrict__ dUp, int n) {
    silu_mul_bwd_x4_body(dOut, gate, up, dGate, dUp, n);
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

// dTable[ids[n]] += dOut[n], deterministically: block r owns the table row runId[r] and adds to it, column by column,
// the rows order[runStart[r]] .. order[runStart[r + 1] - 1] of dOut (the tokens holding that id, in token order, as
// the host's stable sort lists them): no atomics, and the CPU reference's order of additions, so its sums bit for bit.
__global__ void embedding_bwd_runs(const float* dOut, const int* order, const int* runStart, const int* runId,
                                   int hidden, float* dTable) {
    int r = blockIdx.x;
    int p0 = runStart[r], p1 = runStart[r + 1];
    float* t = dTable + (long long)runId[r] * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        float acc = t[j];
        for (int p = p0; p < p1; p++) acc += dOut[(long long)order[p] * hidden + j];
        t[j] = acc;
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

// Warp per row (experts <= 32 * TOPK_EPL, lane l holding experts l, l + 32, ...): each of the k rounds takes the
// warp's largest untaken value, the lowest index among equals, which is what router_topk's scan picks when the row
// holds no NaN; a row with a NaN runs router_topk's scan on lane 0.
#define TOPK_EPL 8
__global__ void router_topk_warp(const float* probs, int rows, int experts, int k, int normalize, int* topIdx,
                                 float* topVal, float* weights) {
    int lane = threadIdx.x & 31;
    WARP_STRIDE(r, rows) {
        const float* p = probs + r * (long long)experts;
        int* idx = topIdx + r * (long long)k;
        float* val = topVal + r * (long long)k;
        float pv[TOPK_EPL];
        unsigned taken = 0;
        bool nan = false;
#pragma unroll
        for (int q = 0; q < TOPK_EPL; q++) {
            int e = lane + 32 * q;
            pv[q] = e < experts ? p[e] : -INFINITY;
            if (e >= experts) taken |= 1u << q;
            else nan |= pv[q] != pv[q];
        }
        if (__any_sync(0xffffffffu, nan)) {
            if (lane == 0) {
                for (int j = 0; j < k; j++) {
                    int best = -1;
                    float bv = -INFINITY;
                    for (int e = 0; e < experts; e++) {
                        bool t = false;
                        for (int q = 0; q < j; q++) if (idx[q] == e) { t = true; break; }
                        if (!t && (best < 0 || p[e] > bv)) { best = e; bv = p[e]; }
                    }
                    idx[j] = best;
                    val[j] = bv;
                }
            }
        } else {
            for (int j = 0; j < k; j++) {
                float bv = -INFINITY;
                int be = 0x7fffffff;
#pragma unroll
                for (int q = 0; q < TOPK_EPL; q++) {
                    if (!((taken >> q) & 1u) && (be == 0x7fffffff || pv[q] > bv)) { bv = pv[q]; be = lane + 32 * q; }
                }
                for (int o = 16; o > 0; o >>= 1) {
                    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                    int oe = __shfl_xor_sync(0xffffffffu, be, o);
                    if (ov > bv || (ov == bv && oe < be)) { bv = ov; be = oe; }
                }
                if (lane == 0) { idx[j] = be; val[j] = bv; }
                if ((be & 31) == lane) taken |= 1u << (be >> 5);
            }
        }
        if (lane == 0) {
            float sum = 0.f;
            for (int j = 0; j < k; j++) sum += val[j];
            float* w = weights + r * (long long)k;
            for (int j = 0; j < k; j++) w[j] = normalize ? val[j] / sum : val[j];
        }
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

// Grouping the token slots by expert (Backend.groupByExpert), on the device: the host then reads E counts instead
// of copying every slot's expert out and a permutation back. counts[e] = slots choosing expert e (counts zeroed by the
// caller; per-block tallies in shared memory, E ints of dynamic shared memory); an id outside [0, E) is reported.
__global__ void expert_counts(const int* ids, long long n, int experts, int* counts, int* err) {
    extern __shared__ int tally[];
    for (int e = threadIdx.x; e < experts; e += blockDim.x) tally[e] = 0;
    __syncthreads();
    GRID_STRIDE(i, n) {
        int e = ids[i];
        if (e < 0 || e >= experts) { report(err, ERR_SORT_INDEX, (int)i, e, experts); continue; }
        atomicAdd(tally + e, 1);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        if (tally[e] != 0) atomicAdd(counts + e, tally[e]);
    }
}

// Block e writes the slots that chose expert e, in slot order (a stable counting sort), from row
// counts[0] + ... + counts[e - 1] on: chunks of blockDim.x slots (a multiple of 32, at most 1024), each placed by a
// block-wide exclusive scan (ballot within warps, a warp over the warps' totals).
__global__ void expert_rows(const int* ids, long long n, int experts, const int* counts, int* slotOfRow) {
    __shared__ int warpBase[32];
    __shared__ int chunkTotal;
    __shared__ long long base;
    int e = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (threadIdx.x == 0) {
        long long b = 0;
        for (int q = 0; q < e; q++) b += counts[q];
        base = b;
    }
    __syncthreads();
    for (long long chunk = 0; chunk < n; chunk += blockDim.x) {
        long long i = chunk + threadIdx.x;
        int mine = i < n && ids[i] == e;
        unsigned int ballot = __ballot_sync(0xffffffffu, mine);
        if (lane == 0) warpBase[warp] = __popc(ballot);
        __syncthreads();
        if (warp == 0) {
            int v = lane < warps ? warpBase[lane] : 0, incl = v;
            for (int d = 1; d < 32; d <<= 1) {
                int up = __shfl_up_sync(0xffffffffu, incl, d);
                if (lane >= d) incl += up;
            }
            if (lane < warps) warpBase[lane] = incl - v; // exclusive: rows before this warp's in the chunk
            if (lane == 31) chunkTotal = incl;
        }
        __syncthreads();
        if (mine) slotOfRow[base + warpBase[warp] + __popc(ballot & ((1u << lane) - 1u))] = (int)i;
        __syncthreads();
        if (threadIdx.x == 0) base += chunkTotal;
        __syncthreads();
    }
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

__global__ void gather_rows_warp(const float* src, int srcRows, const int* index, int n, int width, int divisor,
                                 float* dst, int* err) {
    gather_rows_warp_body(src, srcRows, index, n, width, divisor, dst, err);
}

// gather_rows_warp writing bf16 rows (dst rows 8-byte aligned)
__global__ void gather_rows_warp_bf16(const float* src, int srcRows, const int* index, int n, int width, int divisor,
                                      unsigned short* dst, int* err) {
    gather_rows_warp_body(src, srcRows, index, n, width, divisor, dst, err);
}

__global__ void scatter_rows_warp(const float* src, const int* index, int n, int width, float* dst, int dstRows,
                                  int* err) {
    int lane = threadIdx.x & 31;
    WARP_STRIDE(j, n) {
        int d = index[j];
        if (d < 0 || d >= dstRows) {
            if (lane == 0) report(err, ERR_SCATTER_INDEX, (int)j, d, dstRows);
            continue;
        }
        copy_row_warp(src + j * width, dst + (long long)d * width, width >> 2, lane);
    }
}

__global__ void moe_combine(const float* slots, const float* weights, int tokens, int k, int width, float* y) {
    GRID_STRIDE(i, (long long)tokens * width) {
        long long t = i / width, c = i % width;
        float acc = 0.f;
        for (int q = 0; q < k; q++) acc += weights[t * k + q] * slots[(t * k + q) * width + c];
        y[i] = acc;
    }
}

// float4 form (width % 4 == 0, 16-byte aligned): thread per (token, 4 columns), the same order over q.
__global__ void moe_combine_v4(const float* __restrict__ slots, const float* __restrict__ weights, int tokens, int k,
                               int width, float* __restrict__ y) {
    int w4 = width >> 2;
    GRID_STRIDE(i, (long long)tokens * w4) {
        int t = (int)(i / w4), c = (int)(i - (long long)t * w4);
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int q = 0; q < k; q++) {
            long long s = (long long)t * k + q;
            float wq = weights[s];
            float4 v = ld4(slots + s * width, c);
            acc.x += wq * v.x; acc.y += wq * v.y; acc.z += wq * v.z; acc.w += wq * v.w;
        }
        st4(y + (long long)t * width, c, acc);
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

// Warp per slot, float4 moves (width % 4 == 0, 16-byte aligned).
__global__ void moe_combine_bwd_warp(const float* __restrict__ dy, const float* __restrict__ slots,
                                     const float* __restrict__ weights, int tokens, int k, int width,
                                     float* __restrict__ dSlots, float* __restrict__ dWeights) {
    int lane = threadIdx.x & 31;
    int w4 = width >> 2;
    WARP_STRIDE(s, (long long)tokens * k) {
        long long t = s / k;
        float ws = weights[s];
        const float* dyr = dy + t * width;
        const float* sr = slots + s * width;
        float* dsr = dSlots + s * width;
        float dot = 0.f;
#pragma unroll 4
        for (int c = lane; c < w4; c += 32) {
            float4 d = ld4(dyr, c), v = ld4(sr, c), o;
            o.x = ws * d.x; o.y = ws * d.y; o.z = ws * d.z; o.w = ws * d.w;
            st4(dsr, c, o);
            dot += d.x * v.x; dot += d.y * v.y; dot += d.z * v.z; dot += d.w * v.w;
        }
        dot = warpSum(dot);
        if (lane == 0) dWeights[s] = dot;
    }
}

__global__ void sum_slots(const float* src, int tokens, int k, int width, float* dst) {
    GRID_STRIDE(i, (long long)tokens * width) {
        long long t = i / width, c = i % width;
        float acc = dst[i];
        for (int q = 0; q < k; q++) acc += src[(t * k + q) * width + c];
        dst[i] = acc;
    }
}

__global__ void sum_slots_v4(const float* __restrict__ src, int tokens, int k, int width, float* __restrict__ dst) {
    int w4 = width >> 2;
    GRID_STRIDE(i, (long long)tokens * w4) {
        int t = (int)(i / w4), c = (int)(i - (long long)t * w4);
        float* dr = dst + (long long)t * width;
        float4 acc = ld4(dr, c);
        for (int q = 0; q < k; q++) {
            float4 v = ld4(src + ((long long)t * k + q) * width, c);
            acc.x += v.x; acc.y += v.y; acc.z += v.z; acc.w += v.w;
        }
        st4(dr, c, acc);
    }
}

// ------------------------------------------------------------------ AdamW (scalars prepared on the host as CpuBackend)

// One element of torch.optim.AdamW as CpuBackend.adamw; sqrtf is correctly rounded, as (float) Math.sqrt(float).
__device__ __forceinline__ float adamw_one(float p, float g, float& mi, float& vi, float decay, int doDecay, float w1,
                                           float beta2, float w2, float stepSize, float bc2Sqrt, float eps) {
    p = doDecay ? p * decay : p;
    mi = w1 < 0.5f ? mi + w1 * (g - mi) : g - (g - mi) * (1.f - w1);
    vi = vi * beta2 + w2 * g * g;
    float denom = sqrtf(vi) / bc2Sqrt + eps;
    return p + (-stepSize) * (mi / denom);
}

__global__ void adamw_f32(float* param, const float* grad, float* m, float* v, int n, float decay, int doDecay,
                          float w1, float beta2, float w2, float stepSize, float bc2Sqrt, float eps) {
    GRID_STRIDE(i, n) {
        float mi = m[i], vi = v[i];
        param[i] = adamw_one(param[i], grad[i], mi, vi, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        m[i] = mi;
        v[i] = vi;
    }
}

// float4 form (all four 16-byte aligned); the n % 4 tail by the first threads of the grid.
__global__ void adamw_f32x4(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                            float* __restrict__ v, int n, float decay, int doDecay, float w1, float beta2, float w2,
                            float stepSize, float bc2Sqrt, float eps) {
    int n4 = n >> 2;
    GRID_STRIDE(i, n4) {
        int c = (int)i;
        float4 p = ld4(param, c), g = ld4(grad, c), mi = ld4(m, c), vi = ld4(v, c);
        p.x = adamw_one(p.x, g.x, mi.x, vi.x, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        p.y = adamw_one(p.y, g.y, mi.y, vi.y, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        p.z = adamw_one(p.z, g.z, mi.z, vi.z, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        p.w = adamw_one(p.w, g.w, mi.w, vi.w, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        st4(param, c, p);
        st4(m, c, mi);
        st4(v, c, vi);
    }
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n - 4 * n4) {
        int i = 4 * n4 + (int)t;
        float mi = m[i], vi = v[i];
        param[i] = adamw_one(param[i], grad[i], mi, vi, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        m[i] = mi;
        v[i] = vi;
    }
}

// ------------------------------------------------------------------ bf16 operand copies (GemmPrecision.BF16)

// src [rows][cols] f32 with row stride ld -> dst [rows][cols] bf16 bits, dense (row stride cols), rounded to nearest
// even as cuBLAS's FAST_16BF compute rounds its f32 inputs: the operand copies of a bf16-storage cublasGemmEx. Two
// neighbours per thread; one bf16x2 store where the pair is 4-byte aligned in dst (cols even), two halves otherwise.
__global__ void f32_to_bf16_rows(const float* src, long long ld, int rows, int cols, unsigned short* dst) {
    long long pairsPerRow = (cols + 1) >> 1;
    GRID_STRIDE(p, (long long)rows * pairsPerRow) {
        long long r = p / pairsPerRow;
        int c = (int)(p - r * pairsPerRow) * 2;
        const float* s = src + r * ld + c;
        bool two = c + 1 < cols;
        float lo = s[0];
        float hi = two ? s[1] : 0.f;
        unsigned int packed = bf16x2_rn(lo, hi);
        long long o = r * cols + c;
        if (two && (o & 1) == 0) {
            *reinterpret_cast<unsigned int*>(dst + o) = packed;
        } else {
            dst[o] = (unsigned short)(packed & 0xffffu);
            if (two) dst[o + 1] = (unsigned short)(packed >> 16);
        }
    }
}

// Backend.convert: n values f32 -> bf16 (rounded to nearest even, as f32_to_bf16_rows) or bf16 -> f32 (exact).
// With vec != 0 (the host checked n % 4 == 0, the f32 side 16-byte and the bf16 side 8-byte aligned) four values a
// thread in one load and one store, else one.
__global__ void convert_f32_bf16(const float* src, long long n, unsigned short* dst, int vec) {
    if (vec) {
        GRID_STRIDE(c, n >> 2) st4_bf16(dst, c, reinterpret_cast<const float4*>(src)[c]);
    } else {
        GRID_STRIDE(i, n) dst[i] = bf16_rn(src[i]);
    }
}

__global__ void convert_bf16_f32(const unsigned short* src, long long n, float* dst, int vec) {
    if (vec) {
        GRID_STRIDE(c, n >> 2) {
            uint2 p = reinterpret_cast<const uint2*>(src)[c];
            reinterpret_cast<float4*>(dst)[c] = make_float4(__uint_as_float(p.x << 16), __uint_as_float(p.x & 0xffff0000u),
                                                            __uint_as_float(p.y << 16), __uint_as_float(p.y & 0xffff0000u));
        }
    } else {
        GRID_STRIDE(i, n) dst[i] = __uint_as_float((unsigned int)src[i] << 16);
    }
}

// Conversions for a communicator's bf16 wire (NcclCommunicator's all-gather with a BF16 wire dtype), many parts in
// one launch (a unit's parameters: some of millions of values, some of a few hundred): part i converts n[i] values
// from src[i] to dst[i], rounded to nearest even on the way to bf16 (as f32_to_bf16_rows), widened exactly on the way
// back. A part with vec[i] != 0 (the host checked the f32 side 16-byte and the bf16 side 8-byte aligned) moves its
// first n / 4 * 4 values four at a time, the rest one at a time. The parts' work units (quads, then single values)
// are numbered one after the other (unitStart: prefix sums, unitStart[count] the total); a thread finds its part by
// binary search. The descriptor travels by value (2,320 bytes, under the 4 KB parameter limit).
#define BFP_MAX 64
struct BfParts {
    int count;
    int pad;
    long long unitStart[BFP_MAX + 1];
    long long src[BFP_MAX];
    long long dst[BFP_MAX];
    long long n[BFP_MAX];
    int vec[BFP_MAX];
};
static_assert(sizeof(BfParts) == 2320, "BfParts layout changed: update CudaBackend.convertParts");

// The part of unit u and the unit's index inside it.
__device__ __forceinline__ int bfp_part(const BfParts& p, long long u) {
    int lo = 0, hi = p.count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (p.unitStart[mid] <= u) lo = mid; else hi = mid - 1;
    }
    return lo;
}

__global__ void f32_to_bf16_parts(const BfParts p) {
    GRID_STRIDE(u, p.unitStart[p.count]) {
        int i = bfp_part(p, u);
        long long local = u - p.unitStart[i];
        const float* src = reinterpret_cast<const float*>(p.src[i]);
        unsigned short* dst = reinterpret_cast<unsigned short*>(p.dst[i]);
        long long quads = p.vec[i] ? p.n[i] >> 2 : 0;
        if (local < quads) {
            st4_bf16(dst, local, reinterpret_cast<const float4*>(src)[local]);
        } else {
            long long e = 4 * quads + (local - quads);
            dst[e] = bf16_rn(src[e]);
        }
    }
}

__global__ void bf16_to_f32_parts(const BfParts p) {
    GRID_STRIDE(u, p.unitStart[p.count]) {
        int i = bfp_part(p, u);
        long long local = u - p.unitStart[i];
        const unsigned short* src = reinterpret_cast<const unsigned short*>(p.src[i]);
        float* dst = reinterpret_cast<float*>(p.dst[i]);
        long long quads = p.vec[i] ? p.n[i] >> 2 : 0;
        if (local < quads) {
            uint2 b = reinterpret_cast<const uint2*>(src)[local];
            reinterpret_cast<float4*>(dst)[local] = make_float4(__uint_as_float(b.x << 16),
                    __uint_as_float(b.x & 0xffff0000u), __uint_as_float(b.y << 16), __uint_as_float(b.y & 0xffff0000u));
        } else {
            long long e = 4 * quads + (local - quads);
            dst[e] = __uint_as_float((unsigned int)src[e] << 16);
        }
    }
}

} // extern "C"
