// Kernels of NormAndRope: RMSNorm forward and backward (block per row; the vectorised forms, L lanes per row holding
// V float4 each; the dW partials and their fixed-order sums) and rotate-half RoPE in place (from the frequencies or
// from a cos/sin table). Compiled at run time by NVRTC (see KernelLibrary); every kernel has a plain-Java twin in
// dev.sparkmoe.core.backend.CpuBackend, CudaBackendTest compares them.

#include "kernels_common.cuh"  // error word, reductions, grid-stride loop, float4 and bf16 helpers

// Sum over aligned groups of L lanes (L a power of two <= 32); every lane of a group gets its group's sum. All 32
// lanes of the warp must call it.
template <int L> __device__ __forceinline__ float groupSum(float v) {
    for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ------------------------------------------------------------------ RoPE arithmetic (rotate-half)

// One rotation of the pair (a, b) = (x[i], x[i + half]) by (c, s): the new x[i] and x[i + half], each product and sum
// rounded on its own (no fma), as CpuBackend.rope computes them; every rope kernel below goes through these two, so
// the table kernel, the direct one and the norms with rope give the same bits.
__device__ __forceinline__ float rope_lo(float a, float b, float c, float s) {
    return __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
}
__device__ __forceinline__ float rope_hi(float a, float b, float c, float s) {
    return __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// The rope of a norm's row (Backend.rmsNormRopeForward / rmsNormRopeBackward): rows are (token, head) pairs of heads
// each, token n at position n % seqLen; cos and sin from rope_table; sign -1 rotates back (the backward).
struct RopeArgs {
    const float* cosT;
    const float* sinT;
    int heads, seqLen;
    float sign;
};

// A row of dim = 4 L held one float4 a lane (lane l: elements 4l .. 4l + 3; half = 2 L, so the partner of element
// i < half, i + half, sits L / 2 lanes on in the same aligned group): the row rotated. Every lane of the warp calls it.
template <int L>
__device__ __forceinline__ float4 rope_row(float4 v, int lane, int pos, const RopeArgs& ra) {
    float4 p;
    p.x = __shfl_xor_sync(0xffffffffu, v.x, L / 2);
    p.y = __shfl_xor_sync(0xffffffffu, v.y, L / 2);
    p.z = __shfl_xor_sync(0xffffffffu, v.z, L / 2);
    p.w = __shfl_xor_sync(0xffffffffu, v.w, L / 2);
    const int half = 2 * L;
    const bool lo = lane < L / 2;
    const int i4 = lo ? lane : lane - L / 2;
    float4 c = ld4(ra.cosT + (long long)pos * half, i4), sn = ld4(ra.sinT + (long long)pos * half, i4);
    sn.x *= ra.sign; sn.y *= ra.sign; sn.z *= ra.sign; sn.w *= ra.sign;
    float4 o;
    if (lo) {  // v = x[i], p = x[i + half]
        o.x = rope_lo(v.x, p.x, c.x, sn.x); o.y = rope_lo(v.y, p.y, c.y, sn.y);
        o.z = rope_lo(v.z, p.z, c.z, sn.z); o.w = rope_lo(v.w, p.w, c.w, sn.w);
    } else {   // v = x[i + half], p = x[i]
        o.x = rope_hi(p.x, v.x, c.x, sn.x); o.y = rope_hi(p.y, v.y, c.y, sn.y);
        o.z = rope_hi(p.z, v.z, c.z, sn.z); o.w = rope_hi(p.w, v.w, c.w, sn.w);
    }
    return o;
}

// ------------------------------------------------------------------ RMSNorm, vectorised (dim % 4 == 0, 16-byte
// aligned rows): a group of L lanes per row, each lane holding V float4 of the row in registers (column float4
// c = lane + q * L), so dim <= 4 * L * V. A block of 256 threads holds 256 / L row groups. The forward writes y in
// f32 or, O = unsigned short, rounded once to bf16 (a norm output that only GEMMs read: Backend.rmsNormForward).
// With res (else null) the row is first x + res, written back into x (Backend.residualRmsNormForward: the residual
// add in the same pass, each sum rounded once as axpy rounds it). With ROPE (V = 1, dim = 4 L) the output row is
// rotated (rope_row) before it is stored.
template <int L, int V, typename O, bool ROPE = false> __device__ __forceinline__ void rmsnorm_fwd_vec(
        float* __restrict__ x, const float* __restrict__ res, const float* __restrict__ w, float eps, int rows,
        int dim, O* __restrict__ y, float* __restrict__ rstd, RopeArgs ra = RopeArgs{}) {
    static_assert(!ROPE || V == 1, "the rope form holds a row one float4 a lane");
    int lane = threadIdx.x % L;
    int r = blockIdx.x * (blockDim.x / L) + threadIdx.x / L;
    bool ok = r < rows;
    int d4 = dim >> 2;
    float* xr = x + (long long)(ok ? r : 0) * dim;
    float4 xv[V];
    float ss = 0.f;
#pragma unroll
    for (int q = 0; q < V; q++) {
        int c = lane + q * L;
        xv[q] = ok && c < d4 ? ld4(xr, c) : make_float4(0.f, 0.f, 0.f, 0.f);
        if (res && ok && c < d4) {
            float4 rv = ld4(res + (long long)r * dim, c);
            xv[q].x = __fadd_rn(xv[q].x, rv.x);
            xv[q].y = __fadd_rn(xv[q].y, rv.y);
            xv[q].z = __fadd_rn(xv[q].z, rv.z);
            xv[q].w = __fadd_rn(xv[q].w, rv.w);
            st4(xr, c, xv[q]);
        }
        ss += xv[q].x * xv[q].x;
        ss += xv[q].y * xv[q].y;
        ss += xv[q].z * xv[q].z;
        ss += xv[q].w * xv[q].w;
    }
    ss = groupSum<L>(ss);
    if (!ROPE && !ok) return;  // the rope form keeps every lane for its shuffles
    float rs = (float)(1.0 / sqrt((double)(ss / dim + eps)));
    if (ok && lane == 0) rstd[r] = rs;
    O* yr = y + (long long)(ok ? r : 0) * dim;
#pragma unroll
    for (int q = 0; q < V; q++) {
        int c = lane + q * L;
        if (ROPE || c < d4) {
            float4 wv = ld4(w, c), o;
            o.x = wv.x * (xv[q].x * rs);
            o.y = wv.y * (xv[q].y * rs);
            o.z = wv.z * (xv[q].z * rs);
            o.w = wv.w * (xv[q].w * rs);
            if constexpr (ROPE) o = rope_row<L>(o, lane, ((ok ? r : 0) / ra.heads) % ra.seqLen, ra);
            if (ok) st4o(yr, c, o);
        }
    }
}

// Backward, same layout: dx per row with x and dy kept in registers between the dot and the write, and the dW
// contribution of the rows of this block (a contiguous chunk of rowsPerBlock rows) reduced in a fixed order into
// partial[blockIdx.x * dim + col]: per lane over its rows, then over the block's row groups through shared memory.
// The per-lane sums live in registers up to V = 8 and in the group's row of shared memory from V = 16 on (x and dy
// of a row already take 8 V registers a lane); a lane alone owns its columns there, so the order is the same.
// With dres (else null) dx is the norm's input gradient plus dres (Backend.rmsNormBackwardResidual: the residual
// stream's gradient added in the same pass, rounded once as axpy rounds it). With ROPE (V = 1, dim = 4 L, ra.sign
// -1) dy is the gradient of the rotated output, rotated back as it is read; dx is f32 or, O = unsigned short, rounded
// once to bf16 (an input gradient that only GEMMs read).
template <int L, int V, typename O = float, bool ROPE = false> __device__ __forceinline__ void rmsnorm_bwd_vec(
        const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ w,
        const float* __restrict__ rstd, int rows, int dim, int rowsPerBlock, const float* __restrict__ dres,
        O* __restrict__ dx, float* __restrict__ partial, RopeArgs ra = RopeArgs{}) {
    static_assert(!ROPE || V == 1, "the rope form holds a row one float4 a lane");
    extern __shared__ float4 shDw[];  // [groups][d4]
    constexpr int MAXG = 256 / L;
    constexpr bool SH = V >= 16;  // the per-lane sums in shared memory
    constexpr int VA = SH ? 1 : V;
    int groups = blockDim.x / L;
    int g = threadIdx.x / L, lane = threadIdx.x % L;
    int d4 = dim >> 2;
    int r0 = blockIdx.x * rowsPerBlock;
    int r1 = min(rows, r0 + rowsPerBlock);
    float4 acc[VA];
#pragma unroll
    for (int q = 0; q < VA; q++) acc[q] = make_float4(0.f, 0.f, 0.f, 0.f);
    if constexpr (SH) {
#pragma unroll
        for (int q = 0; q < V; q++) {
            int c = lane + q * L;
            if (c < d4) shDw[g * d4 + c] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
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
            if constexpr (ROPE) dv[q] = rope_row<L>(dv[q], lane, ((ok ? r : r0) / ra.heads) % ra.seqLen, ra);
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
                    if (dres) {
                        float4 d = ld4(dres + o, c);
                        out.x = __fadd_rn(out.x, d.x);
                        out.y = __fadd_rn(out.y, d.y);
                        out.z = __fadd_rn(out.z, d.z);
                        out.w = __fadd_rn(out.w, d.w);
                    }
                    st4o(dx + o, c, out);
                    float4 a;
                    if constexpr (SH) a = shDw[g * d4 + c]; else a = acc[q];
                    a.x += dv[q].x * xh.x;
                    a.y += dv[q].y * xh.y;
                    a.z += dv[q].z * xh.z;
                    a.w += dv[q].w * xh.w;
                    if constexpr (SH) shDw[g * d4 + c] = a; else acc[q] = a;
                }
            }
        }
    }
    if constexpr (!SH) {
#pragma unroll
        for (int q = 0; q < VA; q++) {
            int c = lane + q * L;
            if (c < d4) shDw[g * d4 + c] = acc[q];
        }
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
// res / dres: the residual add (null: none).
#define RMSNORM_VEC(L, V)                                                                                             \
    __global__ void __launch_bounds__(256) rmsnorm_fwd_l##L##v##V(float* x, const float* res, const float* w,     \
            float eps, int rows, int dim, float* y, float* rstd) {                                                 \
        rmsnorm_fwd_vec<L, V>(x, res, w, eps, rows, dim, y, rstd);                                                 \
    }                                                                                                              \
    __global__ void __launch_bounds__(256) rmsnorm_fwd_bf16_l##L##v##V(float* x, const float* res, const float* w, \
            float eps, int rows, int dim, unsigned short* y, float* rstd) {                                        \
        rmsnorm_fwd_vec<L, V>(x, res, w, eps, rows, dim, y, rstd);                                                 \
    }                                                                                                              \
    __global__ void __launch_bounds__(256) rmsnorm_bwd_l##L##v##V(const float* dy, const float* x, const float* w, \
            const float* rstd, int rows, int dim, int rowsPerBlock, const float* dres, float* dx, float* partial) { \
        rmsnorm_bwd_vec<L, V>(dy, x, w, rstd, rows, dim, rowsPerBlock, dres, dx, partial);                         \
    }
RMSNORM_VEC(4, 1)
RMSNORM_VEC(8, 1)
RMSNORM_VEC(16, 1)
RMSNORM_VEC(32, 1)
RMSNORM_VEC(32, 2)
RMSNORM_VEC(32, 4)
RMSNORM_VEC(32, 8)
RMSNORM_VEC(32, 16)

// RMSNorm with rope (Backend.rmsNormRopeForward / rmsNormRopeBackward): rows of dim = 4 L (head dims 64 and 128),
// forward output and backward input gradient in f32 or bf16; cosT, sinT from rope_table.
#define RMSNORM_ROPE(L, SUF, O)                                                                                       \
    __global__ void __launch_bounds__(256) rmsnorm_rope_fwd##SUF##_l##L(const float* x, const float* w, float eps, \
            int rows, int dim, O* y, float* rstd, const float* cosT, const float* sinT, int heads, int seqLen) {    \
        rmsnorm_fwd_vec<L, 1, O, true>(const_cast<float*>(x), nullptr, w, eps, rows, dim, y, rstd,                \
                                       RopeArgs{cosT, sinT, heads, seqLen, 1.f});                                  \
    }                                                                                                              \
    __global__ void __launch_bounds__(256) rmsnorm_rope_bwd##SUF##_l##L(const float* dy, const float* x,           \
            const float* w, const float* rstd, int rows, int dim, int rowsPerBlock, O* dx, float* partial,          \
            const float* cosT, const float* sinT, int heads, int seqLen) {                                         \
        rmsnorm_bwd_vec<L, 1, O, true>(dy, x, w, rstd, rows, dim, rowsPerBlock, nullptr, dx, partial,              \
                                       RopeArgs{cosT, sinT, heads, seqLen, -1.f});                                 \
    }
RMSNORM_ROPE(16, , float)
RMSNORM_ROPE(32, , float)
RMSNORM_ROPE(16, _bf16, unsigned short)
RMSNORM_ROPE(32, _bf16, unsigned short)

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
            x[o + i] = rope_lo(a, b, c, s);
            x[o + i + half] = rope_hi(a, b, c, s);
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
        p.x = rope_lo(a.x, b.x, c.x, sn.x); q.x = rope_hi(a.x, b.x, c.x, sn.x);
        p.y = rope_lo(a.y, b.y, c.y, sn.y); q.y = rope_hi(a.y, b.y, c.y, sn.y);
        p.z = rope_lo(a.z, b.z, c.z, sn.z); q.z = rope_hi(a.z, b.z, c.z, sn.z);
        p.w = rope_lo(a.w, b.w, c.w, sn.w); q.w = rope_hi(a.w, b.w, c.w, sn.w);
        st4(xr, i4, p);
        st4(xr + half, i4, q);
    }
}

}  // extern "C"
