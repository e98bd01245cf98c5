// Causal grouped-query attention, f32, flash-attention style: no T x T matrix ever reaches global memory; the
// forward pass keeps a running max and sum per query row (online softmax) and saves lse = max + log(sum); the
// backward pass recomputes p = exp(scale * q.k - lse).
//
// This is a straightforward first version on the CUDA cores (no tensor cores): one warp per query row (forward,
// dq) or per key row (dk, dv); 32 keys (or queries) per shared-memory tile, one per lane for the dot products, and
// each lane owns head-dim elements d = lane + 32 c of the accumulators (kept in registers: DMAX is a compile-time
// bound, the real head dim D <= DMAX is a run-time value). Layouts: q, out [B*T, Hq*D]; k, v [B*T, Hkv*D];
// lse, di [B*Hq*T]. Query head h reads kv head h / (Hq / Hkv). dk and dv are owned by one warp each: no atomics,
// deterministic.

#define FULL 0xffffffffu
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)  // NVRTC has no math.h
#endif

__device__ __forceinline__ float aWarpSum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}
__device__ __forceinline__ float aWarpMax(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

extern __shared__ float attn_sh[];

// grid (ceil(T / W), B*Hq), block 32*W. Shared: Ks[32][DMAX+1], Vs[32][DMAX], Qs[W][DMAX].
template <int DMAX>
__device__ void attn_fwd_impl(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                              int B, int T, int Hq, int Hkv, int D, float scale, float* __restrict__ out,
                              float* __restrict__ lse) {
    const int W = blockDim.x >> 5;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
    const int i0 = blockIdx.x * W, i = i0 + warp;
    const bool active = i < T;
    const long long qStride = (long long)Hq * D, kvStride = (long long)Hkv * D;
    float* Ks = attn_sh;
    float* Vs = Ks + 32 * (DMAX + 1);
    float* Qs = Vs + 32 * DMAX + warp * DMAX;
    const long long qo = ((long long)b * T + i) * qStride + (long long)h * D;
    for (int d = lane; d < DMAX; d += 32) Qs[d] = (active && d < D) ? q[qo + d] : 0.f;
    constexpr int C = DMAX / 32;
    float o[C];
#pragma unroll
    for (int c = 0; c < C; c++) o[c] = 0.f;
    float m = -INFINITY, l = 0.f;
    const int iMax = min(T - 1, i0 + W - 1);
    for (int j0 = 0; j0 <= iMax; j0 += 32) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < 32 * D; idx += blockDim.x) {
            int r = idx / D, d = idx % D, j = j0 + r;
            float kv = 0.f, vv = 0.f;
            if (j < T) {
                long long ko = ((long long)b * T + j) * kvStride + (long long)g * D + d;
                kv = k[ko];
                vv = v[ko];
            }
            Ks[r * (DMAX + 1) + d] = kv;
            Vs[r * DMAX + d] = vv;
        }
        __syncthreads();
        if (active && j0 <= i) {
            const int j = j0 + lane;
            float s = 0.f;
            for (int d = 0; d < D; d++) s += Qs[d] * Ks[lane * (DMAX + 1) + d];
            s *= scale;
            const bool valid = j <= i;
            if (!valid) s = -INFINITY;
            float mNew = fmaxf(m, aWarpMax(s));
            float p = valid ? __expf(s - mNew) : 0.f;
            float corr = __expf(m - mNew);
            l = l * corr + aWarpSum(p);
#pragma unroll
            for (int c = 0; c < C; c++) o[c] *= corr;
#pragma unroll 8
            for (int r = 0; r < 32; r++) {
                float pr = __shfl_sync(FULL, p, r);
#pragma unroll
                for (int c = 0; c < C; c++) o[c] += pr * Vs[r * DMAX + lane + 32 * c];
            }
            m = mNew;
        }
    }
    if (active) {
        float inv = 1.f / l;
#pragma unroll
        for (int c = 0; c < C; c++) {
            int d = lane + 32 * c;
            if (d < D) out[qo + d] = o[c] * inv;
        }
        if (lane == 0) lse[(long long)bh * T + i] = m + logf(l);
    }
}

// di[(b*Hq + h)*T + i] = dot(dOut[i, h], out[i, h]); warp per (token, head).
__device__ void attn_bwd_di_impl(const float* dOut, const float* out, int B, int T, int Hq, int D, float* di) {
    long long wid = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (wid >= (long long)B * T * Hq) return;
    long long tok = wid / Hq;
    int h = (int)(wid % Hq);
    long long o = tok * Hq * D + (long long)h * D;
    float s = 0.f;
    for (int d = lane; d < D; d += 32) s += dOut[o + d] * out[o + d];
    s = aWarpSum(s);
    int b = (int)(tok / T), i = (int)(tok % T);
    if (lane == 0) di[((long long)b * Hq + h) * T + i] = s;
}

// dq: warp per query row. grid (ceil(T / W), B*Hq). Shared: Ks[32][DMAX+1], Vs[32][DMAX+1], Qs[W][DMAX], dOs[W][DMAX].
template <int DMAX>
__device__ void attn_bwd_dq_impl(const float* __restrict__ dOut, const float* __restrict__ q,
                                 const float* __restrict__ k, const float* __restrict__ v,
                                 const float* __restrict__ lse, const float* __restrict__ di, int B, int T, int Hq,
                                 int Hkv, int D, float scale, float* __restrict__ dq) {
    const int W = blockDim.x >> 5;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int bh = blockIdx.y, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
    const int i0 = blockIdx.x * W, i = i0 + warp;
    const bool active = i < T;
    const long long qStride = (long long)Hq * D, kvStride = (long long)Hkv * D;
    float* Ks = attn_sh;
    float* Vs = Ks + 32 * (DMAX + 1);
    float* Qs = Vs + 32 * (DMAX + 1) + warp * DMAX;
    float* dOs = Vs + 32 * (DMAX + 1) + W * DMAX + warp * DMAX;
    const long long qo = ((long long)b * T + i) * qStride + (long long)h * D;
    for (int d = lane; d < DMAX; d += 32) {
        Qs[d] = (active && d < D) ? q[qo + d] : 0.f;
        dOs[d] = (active && d < D) ? dOut[qo + d] : 0.f;
    }
    const float li = active ? lse[(long long)bh * T + i] : 0.f;
    const float dii = active ? di[(long long)bh * T + i] : 0.f;
    constexpr int C = DMAX / 32;
    float acc[C];
#pragma unroll
    for (int c = 0; c < C; c++) acc[c] = 0.f;
    const int iMax = min(T - 1, i0 + W - 1);
    for (int j0 = 0; j0 <= iMax; j0 += 32) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < 32 * D; idx += blockDim.x) {
            int r = idx / D, d = idx % D, j = j0 + r;
            float kv = 0.f, vv = 0.f;
            if (j < T) {
                long long ko = ((long long)b * T + j) * kvStride + (long long)g * D + d;
                kv = k[ko];
                vv = v[ko];
            }
            Ks[r * (DMAX + 1) + d] = kv;
            Vs[r * (DMAX + 1) + d] = vv;
        }
        __syncthreads();
        if (active && j0 <= i) {
            const int j = j0 + lane;
            float s = 0.f, dp = 0.f;
            for (int d = 0; d < D; d++) {
                s += Qs[d] * Ks[lane * (DMAX + 1) + d];
                dp += dOs[d] * Vs[lane * (DMAX + 1) + d];
            }
            float p = j <= i ? __expf(s * scale - li) : 0.f;
            float ds = p * (dp - dii) * scale;
#pragma unroll 8
            for (int r = 0; r < 32; r++) {
                float dsr = __shfl_sync(FULL, ds, r);
#pragma unroll
                for (int c = 0; c < C; c++) acc[c] += dsr * Ks[r * (DMAX + 1) + lane + 32 * c];
            }
        }
    }
    if (active) {
#pragma unroll
        for (int c = 0; c < C; c++) {
            int d = lane + 32 * c;
            if (d < D) dq[qo + d] = acc[c];
        }
    }
}

// dk, dv: warp per key row j of kv head g; loops over the query heads of the group and the query rows i >= j.
// grid (ceil(T / W), B*Hkv). Shared: Qs[32][DMAX+1], dOs[32][DMAX+1], Kw[W][DMAX], Vw[W][DMAX], lse[32], di[32].
template <int DMAX>
__device__ void attn_bwd_dkdv_impl(const float* __restrict__ dOut, const float* __restrict__ q,
                                   const float* __restrict__ k, const float* __restrict__ v,
                                   const float* __restrict__ lse, const float* __restrict__ di, int B, int T, int Hq,
                                   int Hkv, int D, float scale, float* __restrict__ dk, float* __restrict__ dv) {
    const int W = blockDim.x >> 5;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int bg = blockIdx.y, b = bg / Hkv, g = bg % Hkv, group = Hq / Hkv;
    const int jb = blockIdx.x * W, j = jb + warp;
    const bool active = j < T;
    const long long qStride = (long long)Hq * D, kvStride = (long long)Hkv * D;
    float* Qs = attn_sh;
    float* dOs = Qs + 32 * (DMAX + 1);
    float* Kw = dOs + 32 * (DMAX + 1) + warp * DMAX;
    float* Vw = dOs + 32 * (DMAX + 1) + W * DMAX + warp * DMAX;
    float* lseS = dOs + 32 * (DMAX + 1) + 2 * W * DMAX;
    float* diS = lseS + 32;
    const long long ko = ((long long)b * T + j) * kvStride + (long long)g * D;
    for (int d = lane; d < DMAX; d += 32) {
        Kw[d] = (active && d < D) ? k[ko + d] : 0.f;
        Vw[d] = (active && d < D) ? v[ko + d] : 0.f;
    }
    constexpr int C = DMAX / 32;
    float accK[C], accV[C];
#pragma unroll
    for (int c = 0; c < C; c++) { accK[c] = 0.f; accV[c] = 0.f; }
    const int iStart = (jb / 32) * 32;
    for (int h = g * group; h < (g + 1) * group; h++) {
        const long long bh = (long long)b * Hq + h;
        for (int i0 = iStart; i0 < T; i0 += 32) {
            __syncthreads();
            for (int idx = threadIdx.x; idx < 32 * D; idx += blockDim.x) {
                int r = idx / D, d = idx % D, i = i0 + r;
                float qv = 0.f, dov = 0.f;
                if (i < T) {
                    long long qo = ((long long)b * T + i) * qStride + (long long)h * D + d;
                    qv = q[qo];
                    dov = dOut[qo];
                }
                Qs[r * (DMAX + 1) + d] = qv;
                dOs[r * (DMAX + 1) + d] = dov;
            }
            if (threadIdx.x < 32) {
                int i = i0 + threadIdx.x;
                lseS[threadIdx.x] = i < T ? lse[bh * T + i] : 0.f;
                diS[threadIdx.x] = i < T ? di[bh * T + i] : 0.f;
            }
            __syncthreads();
            if (active && i0 + 31 >= j) {
                const int i = i0 + lane;
                float s = 0.f, dp = 0.f;
                for (int d = 0; d < D; d++) {
                    s += Qs[lane * (DMAX + 1) + d] * Kw[d];
                    dp += dOs[lane * (DMAX + 1) + d] * Vw[d];
                }
                const bool valid = i >= j && i < T;
                float p = valid ? __expf(s * scale - lseS[lane]) : 0.f;
                float ds = p * (dp - diS[lane]) * scale;
#pragma unroll 8
                for (int r = 0; r < 32; r++) {
                    float pr = __shfl_sync(FULL, p, r);
                    float dsr = __shfl_sync(FULL, ds, r);
#pragma unroll
                    for (int c = 0; c < C; c++) {
                        accV[c] += pr * dOs[r * (DMAX + 1) + lane + 32 * c];
                        accK[c] += dsr * Qs[r * (DMAX + 1) + lane + 32 * c];
                    }
                }
            }
        }
    }
    if (active) {
#pragma unroll
        for (int c = 0; c < C; c++) {
            int d = lane + 32 * c;
            if (d < D) { dk[ko + d] = accK[c]; dv[ko + d] = accV[c]; }
        }
    }
}

extern "C" {

__global__ void attn_bwd_di(const float* dOut, const float* out, int B, int T, int Hq, int D, float* di) {
    attn_bwd_di_impl(dOut, out, B, T, Hq, D, di);
}

#define ATTN_INSTANCES(DM)                                                                                            \
    __global__ void attn_fwd_##DM(const float* q, const float* k, const float* v, int B, int T, int Hq, int Hkv,      \
                                  int D, float scale, float* out, float* lse) {                                       \
        attn_fwd_impl<DM>(q, k, v, B, T, Hq, Hkv, D, scale, out, lse);                                                \
    }                                                                                                                 \
    __global__ void attn_bwd_dq_##DM(const float* dOut, const float* q, const float* k, const float* v,              \
                                     const float* lse, const float* di, int B, int T, int Hq, int Hkv, int D,         \
                                     float scale, float* dq) {                                                        \
        attn_bwd_dq_impl<DM>(dOut, q, k, v, lse, di, B, T, Hq, Hkv, D, scale, dq);                                    \
    }                                                                                                                 \
    __global__ void attn_bwd_dkdv_##DM(const float* dOut, const float* q, const float* k, const float* v,            \
                                       const float* lse, const float* di, int B, int T, int Hq, int Hkv, int D,       \
                                       float scale, float* dk, float* dv) {                                           \
        attn_bwd_dkdv_impl<DM>(dOut, q, k, v, lse, di, B, T, Hq, Hkv, D, scale, dk, dv);                              \
    }

ATTN_INSTANCES(32)
ATTN_INSTANCES(64)
ATTN_INSTANCES(128)
ATTN_INSTANCES(256)

// ---------------------------------------------------------------------------------------------------------------
// Row kernels of the batched-GEMM path (CudaBackend, attention mode GEMM). A chunk holds the score matrices of
// nHH x nG heads of batch b, laid out [hhl][gl][T][T]: head h = (g0 + gl) * G + hh0 + hhl (G = Hq / Hkv). One block
// per score row r = ((hhl * nG + gl) * T + i); columns j > i are masked (written 0). lse/di index (b*Hq + h)*T + i.

__device__ __forceinline__ long long attn_row_stat_index(long long r, int T, int b, int hh0, int g0, int nG, int G,
                                                         int Hq, int* iOut) {
    const int i = (int)(r % T);
    const long long sl = r / T;
    const int hhl = (int)(sl / nG), gl = (int)(sl % nG);
    const int h = (g0 + gl) * G + hh0 + hhl;
    *iOut = i;
    return ((long long)b * Hq + h) * T + i;
}

// Block-wide reduction over blockDim.x (a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float attn_block_reduce(float v, bool isMax, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = isMax ? aWarpMax(v) : aWarpSum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float x = lane < nw ? red[lane] : (isMax ? -INFINITY : 0.f);
    x = isMax ? aWarpMax(x) : aWarpSum(x);
    return x;
}

// S holds scale * q.k (the GEMM applied the scale). Writes P = softmax over j <= i in place (0 for j > i) and lse.
__global__ void attn_gemm_softmax(float* __restrict__ S, int T, int b, int hh0, int g0, int nG, int G, int Hq,
                                  float* __restrict__ lse) {
    __shared__ float red[32];
    const long long r = blockIdx.x;
    int i;
    const long long li = attn_row_stat_index(r, T, b, hh0, g0, nG, G, Hq, &i);
    float* row = S + r * (long long)T;
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, row[j]);
    m = attn_block_reduce(m, true, red);
    float s = 0.f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) s += expf(row[j] - m);
    s = attn_block_reduce(s, false, red);
    const float inv = 1.f / s;
    for (int j = threadIdx.x; j < T; j += blockDim.x) row[j] = j <= i ? expf(row[j] - m) * inv : 0.f;
    if (threadIdx.x == 0) lse[li] = m + logf(s);
}

// S holds scale * q.k, dP holds dO.v. Writes P = exp(S - lse) into S and dS = P * (dP - di) * scale into dP
// (both 0 for j > i).
__global__ void attn_gemm_ds(float* __restrict__ S, float* __restrict__ dP, int T, int b, int hh0, int g0, int nG,
                             int G, int Hq, const float* __restrict__ lse, const float* __restrict__ di,
                             float scale) {
    const long long r = blockIdx.x;
    int i;
    const long long li = attn_row_stat_index(r, T, b, hh0, g0, nG, G, Hq, &i);
    const float l = lse[li], d = di[li];
    float* srow = S + r * (long long)T;
    float* drow = dP + r * (long long)T;
    for (int j = threadIdx.x; j < T; j += blockDim.x) {
        float p = 0.f, ds = 0.f;
        if (j <= i) {
            p = expf(srow[j] - l);
            ds = p * (drow[j] - d) * scale;
        }
        srow[j] = p;
        drow[j] = ds;
    }
}

} // extern "C"

