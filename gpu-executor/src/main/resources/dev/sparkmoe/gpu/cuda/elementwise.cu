// Element-wise and reduction kernels of Elementwise: fill, axpy, scale, the two-pass sum of squares (one tensor or
// many per launch, of f32 or bf16 tensors: a bf16 gradient is widened as it is read, exactly; sum_partials_f64 is also
// EmbeddingAndLoss's sum of the per-row losses) and the experts' silu(gate) * up with its gradient on row blocks of a
// row stride (f32 and bf16 outputs, scalar and float4 forms). Compiled at run time by NVRTC for the device's
// architecture (see KernelLibrary); every kernel has a plain-Java twin in dev.sparkmoe.core.backend.CpuBackend,
// CudaBackendTest compares them.

#include "kernels_common.cuh"  // error word, reductions, grid-stride loop, float4 and bf16 helpers

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

}  // extern "C" (the templates below cannot have C linkage)

// Pass 1 of sumSquares: partial[block] = sum of squares (in double) of a grid-stride share of x (T: float, or bf16
// bits read widened). Fixed grid: deterministic.
template <class T> __device__ __forceinline__ void sum_squares_partial_body(const T* x, long long n, double* partial) {
    double s = 0;
    GRID_STRIDE(i, n) { double v = ld1(x, i); s += v * v; }
    s = blockSumD(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 1 for tensor d = {x, n, blocks, partial} of SquareSums' table: sum_squares_partial_body's arithmetic with the
// tensor's own grid of `blocks`, so its partials equal those of sum_squares_partial launched for it alone.
template <class T> __device__ __forceinline__ void sum_squares_multi_body(const long long* d) {
    const T* x = reinterpret_cast<const T*>(d[0]);
    long long n = d[1];
    int blocks = (int)d[2];
    if ((int)blockIdx.x >= blocks) return;  // the whole block
    double* partial = reinterpret_cast<double*>(d[3]);
    double s = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)blocks * blockDim.x) {
        double v = ld1(x, i);
        s += v * v;
    }
    s = blockSumD(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" {

__global__ void sum_squares_partial(const float* x, long long n, double* partial) {
    sum_squares_partial_body(x, n, partial);
}

__global__ void sum_squares_partial_bf16(const unsigned short* x, long long n, double* partial) {
    sum_squares_partial_body(x, n, partial);
}

// out[0] = sum of n partials, one block (the cross-entropy's row losses).
__global__ void sum_partials_f64(const double* partial, int n, double* out) {
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = blockSumD(s);
    if (threadIdx.x == 0) out[0] = s;
}

// Pass 1 for many tensors in one launch (SquareSums' table). desc[4 * i ..] = {x, n, blocks, partial} of tensor i
// (grid y); every tensor's arithmetic is sum_squares_partial's with its own grid of `blocks`, so the partials equal
// those of sum_squares_partial launched per tensor, whatever else is in the list. _multi: f32 tensors only;
// _multi_mixed: f32 and bf16 tensors, the high half of a tensor's blocks cell saying which (1: bf16).
__global__ void sum_squares_partial_multi(const long long* desc) {
    sum_squares_multi_body<float>(desc + 4LL * blockIdx.y);
}

__global__ void sum_squares_partial_multi_mixed(const long long* desc) {
    const long long* d = desc + 4LL * blockIdx.y;
    if (d[2] >> 32) {
        sum_squares_multi_body<unsigned short>(d);
    } else {
        sum_squares_multi_body<float>(d);
    }
}
// Pass 2 (SquareSums.finish), grid (count), 1024 threads: out[i] = sum of tensor i's partials, in a fixed order.
__global__ void sum_partials_f64_multi(const long long* desc, double* out) {
    const long long* d = desc + 4LL * blockIdx.x;
    int n = (int)d[2];
    const double* partial = reinterpret_cast<const double*>(d[3]);
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = blockSumD(s);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// ------------------------------------------------------------------ element-wise activations

// silu(gate) * up and its gradient on [rows, cols] blocks (Backend.siluMulForward/siluMulBackward): element (r, c) of
// gate, up, dGate and dUp is at r * ld + c from its pointer (the block's first element: gate and up may be the column
// blocks of one [rows, 2I] tensor, dGate and dUp those of one GEMM operand), of out and dOut at r * cols + c
// (contiguous). Elementwise.java passes contiguous blocks as one row (rows 1, cols = ld = n). rows * cols fits an int
// (SiluMulBlocks checks it). O is the output type: float, or bf16 bits (a BF16 grouped GEMM operand)
// rounded to nearest even from the same f32 value.

__device__ __forceinline__ float silu_sig(float g) { return (float)(1.0 / (1.0 + exp(-(double)g))); }

__device__ __forceinline__ void silu_bwd_one(float d, float g, float u, float& dg, float& du) {
    float s = silu_sig(g);
    float silu = g * s;
    du = d * silu;
    dg = d * u * (s * (1.f + g * (1.f - s)));
}

}  // extern "C" (the templates below cannot have C linkage)

// One thread an element.
template <typename O>
__device__ __forceinline__ void silu_mul_fwd_body(const float* __restrict__ gate, const float* __restrict__ up,
                                                  O* __restrict__ out, int rows, int cols, int ld) {
    GRID_STRIDE(i, (long long)rows * cols) {
        int r = (int)i / cols;
        long long at = (long long)r * ld + ((int)i - r * cols);
        float g = gate[at];
        st1o(out, i, g * silu_sig(g) * up[at]);
    }
}

template <typename O>
__device__ __forceinline__ void silu_mul_bwd_body(const float* __restrict__ dOut, const float* __restrict__ gate,
                                                  const float* __restrict__ up, O* __restrict__ dGate,
                                                  O* __restrict__ dUp, int rows, int cols, int ld) {
    GRID_STRIDE(i, (long long)rows * cols) {
        int r = (int)i / cols;
        long long at = (long long)r * ld + ((int)i - r * cols);
        float dg, du;
        silu_bwd_one(dOut[i], gate[at], up[at], dg, du);
        st1o(dUp, at, du);
        st1o(dGate, at, dg);
    }
}

// float4 forms: every row of every block starts 16-byte aligned (8-byte for bf16 outputs: the pointers aligned, ld
// and cols multiples of 4, or one row). Each row's cols / 4 vectors, then the cols % 4 tail of each row (one row in
// practice) by the first threads of the grid.
template <typename O>
__device__ __forceinline__ void silu_mul_fwd_x4_body(const float* __restrict__ gate, const float* __restrict__ up,
                                                     O* __restrict__ out, int rows, int cols, int ld) {
    int c4 = cols >> 2;
    GRID_STRIDE(v, (long long)rows * c4) {
        int r = (int)v / c4, c = (int)v - r * c4;
        long long at = (long long)r * ld;
        float4 g = ld4(gate + at, c), u = ld4(up + at, c), o;
        o.x = g.x * silu_sig(g.x) * u.x;
        o.y = g.y * silu_sig(g.y) * u.y;
        o.z = g.z * silu_sig(g.z) * u.z;
        o.w = g.w * silu_sig(g.w) * u.w;
        st4o(out + (long long)r * cols, c, o);
    }
    int tail = cols & 3;
    GRID_STRIDE(t, (long long)rows * tail) {
        int r = (int)t / tail, c = 4 * c4 + ((int)t - r * tail);
        long long at = (long long)r * ld + c;
        float g = gate[at];
        st1o(out, (long long)r * cols + c, g * silu_sig(g) * up[at]);
    }
}

template <typename O>
__device__ __forceinline__ void silu_mul_bwd_x4_body(const float* __restrict__ dOut, const float* __restrict__ gate,
                                                     const float* __restrict__ up, O* __restrict__ dGate,
                                                     O* __restrict__ dUp, int rows, int cols, int ld) {
    int c4 = cols >> 2;
    GRID_STRIDE(v, (long long)rows * c4) {
        int r = (int)v / c4, c = (int)v - r * c4;
        long long at = (long long)r * ld;
        float4 d = ld4(dOut + (long long)r * cols, c), g = ld4(gate + at, c), u = ld4(up + at, c), dg, du;
        silu_bwd_one(d.x, g.x, u.x, dg.x, du.x);
        silu_bwd_one(d.y, g.y, u.y, dg.y, du.y);
        silu_bwd_one(d.z, g.z, u.z, dg.z, du.z);
        silu_bwd_one(d.w, g.w, u.w, dg.w, du.w);
        st4o(dUp + at, c, du);
        st4o(dGate + at, c, dg);
    }
    int tail = cols & 3;
    GRID_STRIDE(t, (long long)rows * tail) {
        int r = (int)t / tail, c = 4 * c4 + ((int)t - r * tail);
        long long at = (long long)r * ld + c;
        float dg, du;
        silu_bwd_one(dOut[(long long)r * cols + c], gate[at], up[at], dg, du);
        st1o(dGate, at, dg);
        st1o(dUp, at, du);
    }
}

extern "C" {

__global__ void silu_mul_fwd(const float* __restrict__ gate, const float* __restrict__ up, float* __restrict__ out,
                             int rows, int cols, int ld) {
    silu_mul_fwd_body(gate, up, out, rows, cols, ld);
}

__global__ void silu_mul_fwd_bf16(const float* __restrict__ gate, const float* __restrict__ up,
                                  unsigned short* __restrict__ out, int rows, int cols, int ld) {
    silu_mul_fwd_body(gate, up, out, rows, cols, ld);
}

__global__ void silu_mul_fwd_x4(const float* __restrict__ gate, const float* __restrict__ up, float* __restrict__ out,
                                int rows, int cols, int ld) {
    silu_mul_fwd_x4_body(gate, up, out, rows, cols, ld);
}

__global__ void silu_mul_fwd_x4_bf16(const float* __restrict__ gate, const float* __restrict__ up,
                                     unsigned short* __restrict__ out, int rows, int cols, int ld) {
    silu_mul_fwd_x4_body(gate, up, out, rows, cols, ld);
}

__global__ void silu_mul_bwd(const float* __restrict__ dOut, const float* __restrict__ gate,
                             const float* __restrict__ up, float* __restrict__ dGate, float* __restrict__ dUp,
                             int rows, int cols, int ld) {
    silu_mul_bwd_body(dOut, gate, up, dGate, dUp, rows, cols, ld);
}

__global__ void silu_mul_bwd_bf16(const float* __restrict__ dOut, const float* __restrict__ gate,
                                  const float* __restrict__ up, unsigned short* __restrict__ dGate,
                                  unsigned short* __restrict__ dUp, int rows, int cols, int ld) {
    silu_mul_bwd_body(dOut, gate, up, dGate, dUp, rows, cols, ld);
}

__global__ void silu_mul_bwd_x4(const float* __restrict__ dOut, const float* __restrict__ gate,
                                const float* __restrict__ up, float* __restrict__ dGate, float* __restrict__ dUp,
                                int rows, int cols, int ld) {
    silu_mul_bwd_x4_body(dOut, gate, up, dGate, dUp, rows, cols, ld);
}

__global__ void silu_mul_bwd_x4_bf16(const float* __restrict__ dOut, const float* __restrict__ gate,
                                     const float* __restrict__ up, unsigned short* __restrict__ dGate,
                                     unsigned short* __restrict__ dUp, int rows, int cols, int ld) {
    silu_mul_bwd_x4_body(dOut, gate, up, dGate, dUp, rows, cols, ld);
}

}  // extern "C"
