// Kernels of CudaBackend's f32 attention path (attention mode GEMM, the parity setting): the score products run as
// strided-batched cuBLAS GEMMs; these are the row kernels between them (the causal softmax with its lse, and the
// softmax gradient) and Di = rowsum(dO * O) of the backward pass. Layouts: q, out, dOut [B*T, Hq*D];
// lse, di [B*Hq*T]. Query head h reads kv head h / (Hq / Hkv).

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

extern "C" {

__global__ void attn_bwd_di(const float* dOut, const float* out, int B, int T, int Hq, int D, float* di) {
    attn_bwd_di_impl(dOut, out, B, T, Hq, D, di);
}

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

