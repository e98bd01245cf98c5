// AdamWKernel's fused torch.optim.AdamW step: adamw_<gradient dtype>[x4][_bf16], the gradient f32 (adamw_f32...) or
// bf16 (adamw_gbf16...: FSDP2's gradient in the param dtype, widened to f32 as it is read, which is exact: the step of
// the f32 gradient holding the same values), scalar or float4 form, and with _bf16 the updated parameter also written
// rounded to bf16 into its compute copy (FSDP's param dtype). Every form reads the gradient times gradScale (gradient
// clipping's coefficient: the product scale_f32 would have stored) and, given partial, writes each block's sum of
// squares of the gradient as read (widened, before gradScale, in f64) for SquareSums: the gradient norm of a step that
// clips nothing, in the optimizer's pass. Compiled at run time by NVRTC (see KernelLibrary); CudaBackendTest compares
// it with CpuBackend's adamw, scale, convert and sumSquares, Bf16GradientStepTest its bf16-gradient forms with the
// f32 ones.

#include "kernels_common.cuh"  // error word, reductions, grid-stride loop, float4 and bf16 helpers


// ------------------------------------------------------------------ AdamW (scalars prepared on the host as CpuBackend)

// One element of torch.optim.AdamW as CpuBackend.adamw computes it, operation for operation: every product, sum and
// quotient rounded on its own (the _rn intrinsics, which the compiler never contracts into an fma, as Java never
// does), so that every form of the step (f32 or bf16 gradient, with or without the compute copy, scalar or float4)
// gives the CPU's bits whatever the compiler fuses elsewhere; sqrt.rn is correctly rounded, as (float) Math.sqrt.
__device__ __forceinline__ float adamw_one(float p, float g, float& mi, float& vi, float decay, int doDecay, float w1,
                                           float beta2, float w2, float stepSize, float bc2Sqrt, float eps) {
    p = doDecay ? __fmul_rn(p, decay) : p;
    mi = w1 < 0.5f ? __fadd_rn(mi, __fmul_rn(w1, __fsub_rn(g, mi)))
                   : __fsub_rn(g, __fmul_rn(__fsub_rn(g, mi), __fsub_rn(1.f, w1)));
    vi = __fadd_rn(__fmul_rn(vi, beta2), __fmul_rn(__fmul_rn(w2, g), g));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2Sqrt), eps);
    return __fadd_rn(p, __fmul_rn(-stepSize, __fdiv_rn(mi, denom)));
}

// The f32 body, with the compute copy (OUT = unsigned short: bf16) or without it (OUT = void: nothing more written).
__device__ __forceinline__ void adamw_out(void*, long long, float) {}
__device__ __forceinline__ void adamw_out(unsigned short* out, long long i, float p) { out[i] = bf16_rn(p); }
__device__ __forceinline__ void adamw_out4(void*, long long, float4) {}
__device__ __forceinline__ void adamw_out4(unsigned short* out, long long c, float4 p) { st4_bf16(out, c, p); }

// The block's sum of squares into partial[blockIdx.x] (every thread of the block calls it; partial null: nothing).
__device__ __forceinline__ void adamw_squares(double sq, double* partial) {
    if (partial) {
        sq = blockSumD(sq);
        if (threadIdx.x == 0) partial[blockIdx.x] = sq;
    }
}

// Element i: the step on the gradient (G: float or bf16 bits) read times gradScale, its square (as read) added to
// sq, the compute copy.
template <class G, class OUT>
__device__ __forceinline__ void adamw_element(float* param, const G* grad, float* m, float* v, OUT* out,
                                              long long i, float decay, int doDecay, float w1, float beta2, float w2,
                                              float stepSize, float bc2Sqrt, float eps, float gradScale, double& sq) {
    float g = ld1(grad, i);
    sq += (double)g * g;
    float mi = m[i], vi = v[i];
    float p = adamw_one(param[i], __fmul_rn(g, gradScale), mi, vi, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
    adamw_out(out, i, p);
}

template <class G, class OUT>
__device__ __forceinline__ void adamw_body(float* param, const G* grad, float* m, float* v, OUT* out, int n,
                                           float decay, int doDecay, float w1, float beta2, float w2, float stepSize,
                                           float bc2Sqrt, float eps, float gradScale, double* partial) {
    double sq = 0;
    GRID_STRIDE(i, n) {
        adamw_element(param, grad, m, v, out, i, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps, gradScale, sq);
    }
    adamw_squares(sq, partial);
}

// float4 form (param, m, v 16-byte aligned, grad 16-byte (f32) or 8-byte (bf16), out 8-byte aligned); the n % 4 tail
// by the first threads of the grid.
template <class G, class OUT>
__device__ __forceinline__ void adamw_body4(float* __restrict__ param, const G* __restrict__ grad,
                                            float* __restrict__ m, float* __restrict__ v, OUT* __restrict__ out, int n,
                                            float decay, int doDecay, float w1, float beta2, float w2, float stepSize,
                                            float bc2Sqrt, float eps, float gradScale, double* partial) {
    int n4 = n >> 2;
    double sq = 0;
    GRID_STRIDE(i, n4) {
        int c = (int)i;
        float4 p = ld4(param, c), g = ld4(grad, c), mi = ld4(m, c), vi = ld4(v, c);
        sq += (double)g.x * g.x;
        sq += (double)g.y * g.y;
        sq += (double)g.z * g.z;
        sq += (double)g.w * g.w;
        g.x = __fmul_rn(g.x, gradScale);
        g.y = __fmul_rn(g.y, gradScale);
        g.z = __fmul_rn(g.z, gradScale);
        g.w = __fmul_rn(g.w, gradScale);
        p.x = adamw_one(p.x, g.x, mi.x, vi.x, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        p.y = adamw_one(p.y, g.y, mi.y, vi.y, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        p.z = adamw_one(p.z, g.z, mi.z, vi.z, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        p.w = adamw_one(p.w, g.w, mi.w, vi.w, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps);
        st4(param, c, p);
        st4(m, c, mi);
        st4(v, c, vi);
        adamw_out4(out, c, p);
    }
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n - 4 * n4) {
        adamw_element(param, grad, m, v, out, 4 * n4 + (int)t, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps,
                      gradScale, sq);
    }
    adamw_squares(sq, partial);
}

extern "C" {

__global__ void adamw_f32(float* param, const float* grad, float* m, float* v, int n, float decay, int doDecay,
                          float w1, float beta2, float w2, float stepSize, float bc2Sqrt, float eps, float gradScale,
                          double* partial) {
    adamw_body<float, void>(param, grad, m, v, nullptr, n, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps,
                            gradScale, partial);
}

__global__ void adamw_f32x4(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                            float* __restrict__ v, int n, float decay, int doDecay, float w1, float beta2, float w2,
                            float stepSize, float bc2Sqrt, float eps, float gradScale, double* partial) {
    adamw_body4<float, void>(param, grad, m, v, nullptr, n, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt, eps,
                             gradScale, partial);
}

__global__ void adamw_f32_bf16(float* param, const float* grad, float* m, float* v, unsigned short* out, int n,
                               float decay, int doDecay, float w1, float beta2, float w2, float stepSize,
                               float bc2Sqrt, float eps, float gradScale, double* partial) {
    adamw_body<float, unsigned short>(param, grad, m, v, out, n, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt,
                                      eps, gradScale, partial);
}

__global__ void adamw_f32x4_bf16(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                                 float* __restrict__ v, unsigned short* __restrict__ out, int n, float decay,
                                 int doDecay, float w1, float beta2, float w2, float stepSize, float bc2Sqrt,
                                 float eps, float gradScale, double* partial) {
    adamw_body4<float, unsigned short>(param, grad, m, v, out, n, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt,
                                       eps, gradScale, partial);
}

// The same four forms for a bf16 gradient (grad: bf16 bits; its float4 form needs it 8-byte aligned).
__global__ void adamw_gbf16(float* param, const unsigned short* grad, float* m, float* v, int n, float decay,
                            int doDecay, float w1, float beta2, float w2, float stepSize, float bc2Sqrt, float eps,
                            float gradScale, double* partial) {
    adamw_body<unsigned short, void>(param, grad, m, v, nullptr, n, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt,
                                     eps, gradScale, partial);
}

__global__ void adamw_gbf16x4(float* __restrict__ param, const unsigned short* __restrict__ grad,
                              float* __restrict__ m, float* __restrict__ v, int n, float decay, int doDecay, float w1,
                              float beta2, float w2, float stepSize, float bc2Sqrt, float eps, float gradScale,
                              double* partial) {
    adamw_body4<unsigned short, void>(param, grad, m, v, nullptr, n, decay, doDecay, w1, beta2, w2, stepSize, bc2Sqrt,
                                      eps, gradScale, partial);
}

__global__ void adamw_gbf16_bf16(float* param, const unsigned short* grad, float* m, float* v, unsigned short* out,
                                 int n, float decay, int doDecay, float w1, float beta2, float w2, float stepSize,
                                 float bc2Sqrt, float eps, float gradScale, double* partial) {
    adamw_body<unsigned short, unsigned short>(param, grad, m, v, out, n, decay, doDecay, w1, beta2, w2, stepSize,
                                               bc2Sqrt, eps, gradScale, partial);
}

__global__ void adamw_gbf16x4_bf16(float* __restrict__ param, const unsigned short* __restrict__ grad,
                                   float* __restrict__ m, float* __restrict__ v, unsigned short* __restrict__ out,
                                   int n, float decay, int doDecay, float w1, float beta2, float w2, float stepSize,
                                   float bc2Sqrt, float eps, float gradScale, double* partial) {
    adamw_body4<unsigned short, unsigned short>(param, grad, m, v, out, n, decay, doDecay, w1, beta2, w2, stepSize,
                                                bc2Sqrt, eps, gradScale, partial);
}

}  // extern "C"
