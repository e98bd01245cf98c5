// Kernels of MoeRouting: the router (softmax, top-k, its statistics and backward), grouping the token slots by
// expert on the device, and the MoE data movement (row gathers and scatters, f32 or bf16 out; the weighted combine
// of the k slots of a token and its backward; slot sums). Compiled at run time by NVRTC (see KernelLibrary); every
// kernel has a plain-Java twin in dev.sparkmoe.core.backend.CpuBackend, CudaBackendTest compares them.

#include "kernels_common.cuh"  // error word, reductions, grid-stride loop, float4 and bf16 helpers

// Warp-stride loop: warp-uniform, so the whole warp stays together for shuffles.
#define WARP_STRIDE(j, n) for (long long j = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; j < (n); \
                               j += ((long long)gridDim.x * blockDim.x) >> 5)
// Warp per row, four elements a load (width % 4 == 0; source rows 16-byte aligned for f32, 8-byte for bf16), four
// loads in flight per lane; f32 or bf16 in, f32 or bf16 out (a bf16 source's values, widened exactly, are stored
// unchanged into either).
template <typename I, typename O>
__device__ __forceinline__ void copy_row_warp(const I* __restrict__ from, O* __restrict__ to, int w4, int lane) {
    int c = lane;
    for (; c + 96 < w4; c += 128) {
        float4 a = ld4(from, c), b = ld4(from, c + 32), d = ld4(from, c + 64), e = ld4(from, c + 96);
        st4o(to, c, a); st4o(to, c + 32, b); st4o(to, c + 64, d); st4o(to, c + 96, e);
    }
    for (; c < w4; c += 32) st4o(to, c, ld4(from, c));
}

template <typename I, typename O>
__device__ __forceinline__ void gather_rows_warp_body(const I* src, int srcRows, const int* index, int n,
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

// The combine and its backward read slot s of token t at row rowOfSlot[s] of the experts' outputs (Backend.moeCombine:
// the experts' rows in place, no copy in slot order), or at row s where rowOfSlot is null.
__device__ __forceinline__ long long slot_row(const int* rowOfSlot, long long s) {
    return rowOfSlot ? (long long)rowOfSlot[s] : s;
}

// Block per slot s at row r: dRows[r] = w[s] * dy[t] (f32, or bf16 into a BF16 grouped GEMM operand),
// dWeights[s] = dot(dy[t], rows[r]).
template <class OUT>
__device__ __forceinline__ void moe_combine_bwd_body(const float* dy, const float* rows, const int* rowOfSlot,
                                                     const float* weights, int k, int width, OUT* dRows,
                                                     float* dWeights) {
    long long s = blockIdx.x;
    long long t = s / k;
    long long r = slot_row(rowOfSlot, s);
    float ws = weights[s];
    float dot = 0.f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float d = dy[t * width + c];
        st1o(dRows, r * width + c, ws * d);
        dot += d * rows[r * width + c];
    }
    dot = blockSum(dot);
    if (threadIdx.x == 0) dWeights[s] = dot;
}

// Warp per slot, float4 loads (width % 4 == 0; dy and rows 16-byte aligned, dRows 16 (f32) or 8 (bf16)).
template <class OUT>
__device__ __forceinline__ void moe_combine_bwd_warp_body(const float* __restrict__ dy,
                                                          const float* __restrict__ rows,
                                                          const int* __restrict__ rowOfSlot,
                                                          const float* __restrict__ weights, int tokens, int k,
                                                          int width, OUT* __restrict__ dRows,
                                                          float* __restrict__ dWeights) {
    int lane = threadIdx.x & 31;
    int w4 = width >> 2;
    WARP_STRIDE(s, (long long)tokens * k) {
        long long t = s / k;
        long long r = slot_row(rowOfSlot, s);
        float ws = weights[s];
        const float* dyr = dy + t * width;
        const float* sr = rows + r * width;
        OUT* dsr = dRows + r * width;
        float dot = 0.f;
#pragma unroll 4
        for (int c = lane; c < w4; c += 32) {
            float4 d = ld4(dyr, c), v = ld4(sr, c), o;
            o.x = ws * d.x; o.y = ws * d.y; o.z = ws * d.z; o.w = ws * d.w;
            st4o(dsr, c, o);
            dot += d.x * v.x; dot += d.y * v.y; dot += d.z * v.z; dot += d.w * v.w;
        }
        dot = warpSum(dot);
        if (lane == 0) dWeights[s] = dot;
    }
}

extern "C" {

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

// gather_rows_warp from bf16 rows (a norm's output in the GEMMs' dtype; source rows 8-byte aligned) into bf16 rows
// (a grouped GEMM operand) or f32 rows (an all-to-all's send buffer): the same values, exactly
__global__ void gather_rows_warp_b16_bf16(const unsigned short* src, int srcRows, const int* index, int n, int width,
                                          int divisor, unsigned short* dst, int* err) {
    gather_rows_warp_body(src, srcRows, index, n, width, divisor, dst, err);
}

__global__ void gather_rows_warp_b16_f32(const unsigned short* src, int srcRows, const int* index, int n, int width,
                                         int divisor, float* dst, int* err) {
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

// inverse[index[j]] = j (a permutation of [0, n); an entry out of range is reported, not written).
__global__ void invert_index(const int* index, int n, int* inverse, int* err) {
    GRID_STRIDE(j, n) {
        int s = index[j];
        if (s < 0 || s >= n) {
            report(err, ERR_INVERT_INDEX, (int)j, s, n);
            continue;
        }
        inverse[s] = (int)j;
    }
}

__global__ void moe_combine(const float* rows, const int* rowOfSlot, const float* weights, int tokens, int k,
                            int width, float* y) {
    GRID_STRIDE(i, (long long)tokens * width) {
        long long t = i / width, c = i % width;
        float acc = 0.f;
        for (int q = 0; q < k; q++) {
            long long s = t * k + q;
            acc += weights[s] * rows[slot_row(rowOfSlot, s) * width + c];
        }
        y[i] = acc;
    }
}

// float4 form (width % 4 == 0, 16-byte aligned): thread per (token, 4 columns), the same order over q.
__global__ void moe_combine_v4(const float* __restrict__ rows, const int* __restrict__ rowOfSlot,
                               const float* __restrict__ weights, int tokens, int k, int width, float* __restrict__ y) {
    int w4 = width >> 2;
    GRID_STRIDE(i, (long long)tokens * w4) {
        int t = (int)(i / w4), c = (int)(i - (long long)t * w4);
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int q = 0; q < k; q++) {
            long long s = (long long)t * k + q;
            float wq = weights[s];
            float4 v = ld4(rows + slot_row(rowOfSlot, s) * width, c);
            acc.x += wq * v.x; acc.y += wq * v.y; acc.z += wq * v.z; acc.w += wq * v.w;
        }
        st4(y + (long long)t * width, c, acc);
    }
}

__global__ void moe_combine_bwd(const float* dy, const float* rows, const int* rowOfSlot, const float* weights,
                                int tokens, int k, int width, float* dRows, float* dWeights) {
    moe_combine_bwd_body(dy, rows, rowOfSlot, weights, k, width, dRows, dWeights);
}

__global__ void moe_combine_bwd_bf16(const float* dy, const float* rows, const int* rowOfSlot, const float* weights,
                                     int tokens, int k, int width, unsigned short* dRows, float* dWeights) {
    moe_combine_bwd_body(dy, rows, rowOfSlot, weights, k, width, dRows, dWeights);
}

__global__ void moe_combine_bwd_warp(const float* __restrict__ dy, const float* __restrict__ rows,
                                     const int* __restrict__ rowOfSlot, const float* __restrict__ weights, int tokens,
                                     int k, int width, float* __restrict__ dRows, float* __restrict__ dWeights) {
    moe_combine_bwd_warp_body(dy, rows, rowOfSlot, weights, tokens, k, width, dRows, dWeights);
}

__global__ void moe_combine_bwd_warp_bf16(const float* __restrict__ dy, const float* __restrict__ rows,
                                          const int* __restrict__ rowOfSlot, const float* __restrict__ weights,
                                          int tokens, int k, int width, unsigned short* __restrict__ dRows,
                                          float* __restrict__ dWeights) {
    moe_combine_bwd_warp_body(dy, rows, rowOfSlot, weights, tokens, k, width, dRows, dWeights);
}

__global__ void sum_slots(const float* src, const int* rowOfSlot, int tokens, int k, int width, float* dst) {
    GRID_STRIDE(i, (long long)tokens * width) {
        long long t = i / width, c = i % width;
        float acc = dst[i];
        for (int q = 0; q < k; q++) acc += src[slot_row(rowOfSlot, t * k + q) * width + c];
        dst[i] = acc;
    }
}

__global__ void sum_slots_v4(const float* __restrict__ src, const int* __restrict__ rowOfSlot, int tokens, int k,
                             int width, float* __restrict__ dst) {
    int w4 = width >> 2;
    GRID_STRIDE(i, (long long)tokens * w4) {
        int t = (int)(i / w4), c = (int)(i - (long long)t * w4);
        float* dr = dst + (long long)t * width;
        float4 acc = ld4(dr, c);
        for (int q = 0; q < k; q++) {
            float4 v = ld4(src + slot_row(rowOfSlot, (long long)t * k + q) * width, c);
            acc.x += v.x; acc.y += v.y; acc.z += v.z; acc.w += v.w;
        }
        st4(dr, c, acc);
    }
}

}  // extern "C"
