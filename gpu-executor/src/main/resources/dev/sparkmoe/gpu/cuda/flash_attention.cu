// Causal grouped-query flash attention on the tensor cores (FlashAttention-2 style), CudaBackend attention mode
// FLASH. Storage stays f32 in global memory; tiles are rounded to bf16 when staged into shared memory and multiplied
// with mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (f32 accumulation); the online softmax, lse, Di and
// every accumulator stay f32; P and dS are rounded to bf16 only as MMA operands.
//
// Layouts (as attention.cu): q, out, dOut, dq [B*T, Hq*D]; k, v, dk, dv [B*T, Hkv*D]; lse, di [B*Hq*T] with
// lse = natural log of sum_j exp(scale * q_i.k_j) over j <= i. Query head h reads kv head h / (Hq / Hkv).
//
// Fragment layouts of m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// gid = lane / 4 and tig = lane % 4; every .b32 operand register packs two bf16, the lower column/row index in the
// lower half:
//   A (16x16, row-major): a0 = A[gid][2tig, 2tig+1], a1 = A[gid+8][2tig, 2tig+1], a2 = A[gid][2tig+8, 2tig+9],
//                         a3 = A[gid+8][2tig+8, 2tig+9]
//   B (16x8, "col"):      b0 = B[2tig, 2tig+1][gid], b1 = B[2tig+8, 2tig+9][gid]
//   C (16x8, f32):        c0, c1 = C[gid][2tig, 2tig+1], c2, c3 = C[gid+8][2tig, 2tig+1]
// So a C tile pair (columns 16kk..16kk+15) of a warp's 16 x N product is exactly the A operand of the next product
// over those columns: a0 = pack(c[2kk][0], c[2kk][1]), a1 = pack(c[2kk][2], c[2kk][3]), a2 = pack(c[2kk+1][0],
// c[2kk+1][1]), a3 = pack(c[2kk+1][2], c[2kk+1][3]) (FA2's register reuse of S/P).
//
// Shared tiles are bf16 row-major [rows][D + 8] (the pad of 8 bf16 = 16 bytes makes the row stride 4 banks mod 32,
// so the 8 rows x 4 words that a warp reads for one fragment, and the 8 rows of 16 bytes of one ldmatrix phase, hit
// 32 different banks). A B operand whose k index runs along the tile's rows (P.V, dS.K, P^T.dO, dS^T.Q) is read with
// ldmatrix.x4.trans: lanes 0-15 address rows k0 + (lane & 15) at column n0, lanes 16-31 the same rows at n0 + 8;
// registers r0, r1 are b0, b1 of the n-tile at n0, r2, r3 those of the n-tile at n0 + 8.
//
// Every warp owns 16 rows (query rows in the forward and dq kernels, key rows in the dk/dv kernel); warps whose
// rows are all masked in a tile skip its arithmetic (but not the block barriers). dk and dv are owned by one CTA
// each and dq by one CTA per row block: no atomics, deterministic.
//
// Two kernel sets (CudaBackend.FlashKernels): the first ones (V1: fa_fwd_d*, fa_bwd_di, fa_bwd_dq_d*,
// fa_bwd_dkdv_d*), which read the f32 tensors and round while staging, and the "v2" ones after them (fa_bwd_prep,
// fa_fwd2_d*, fa_bwd_dq2w8_d*, fa_bwd_dkdv2w8_d*: V2_W8, the set that runs), which read bf16 copies through cp.async
// (see the v2 section). Both give the same bits; V1 is the tests' reference.
//
// NVRTC source: no headers, device code only; bf16 conversion, exp2, ldmatrix and mma through inline PTX (sm_80+).
// gpu-executor/scripts/flash_attention_emulator.py transliterates the V1 kernels lane by lane (with mma and ldmatrix
// emulated from the PTX definitions above) and checks them against an f64 reference on the host; keep it in step.
// It does not transliterate the v2 kernels (cp.async ring, ldmatrix B operands): they are covered through their
// bitwise equality with V1, which FlashAttentionTest checks on the GPU for every shape it runs.

typedef unsigned int fa_u32;
typedef unsigned short fa_bf16;  // bf16 bits

struct alignas(16) FaF4 { float x, y, z, w; };
struct alignas(8) FaF2 { float x, y; };
struct alignas(8) FaU2 { fa_u32 x, y; };

#define FA_FULL 0xffffffffu
#define FA_PAD 8
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f
#define FA_NEG_INF __int_as_float(0xff800000)

extern __shared__ FaF4 fa_smem[];

// Two f32 -> bf16x2 (round to nearest even), lo in the lower half (cvt puts its first source in the upper half).
__device__ __forceinline__ fa_u32 fa_pack(float lo, float hi) {
    fa_u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// 2^x (ex2.approx: about 2 ulp; ex2(-inf) = +0).
__device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// x rounded to bf16 (round to nearest even), as an f32.
__device__ __forceinline__ float fa_round(float x) {
    return __int_as_float((int)(fa_pack(x, 0.f) << 16));
}

__device__ __forceinline__ fa_u32 fa_ld32(const fa_bf16* p) {
    return *reinterpret_cast<const fa_u32*>(p);
}

__device__ __forceinline__ fa_u32 fa_smem_addr(const void* p) {
    fa_u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// ldmatrix.x4.trans at this lane's row address p (see the header): r[0], r[1] = b0, b1 of the n-tile at the
// addressed column, r[2], r[3] = those of the n-tile 8 columns on.
__device__ __forceinline__ void fa_ldsm_t(fa_u32 (&r)[4], const fa_bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fa_smem_addr(p)));
}

// c += A B (16x8x16, bf16 operands, f32 accumulators).
__device__ __forceinline__ void fa_mma(float (&c)[4], fa_u32 a0, fa_u32 a1, fa_u32 a2, fa_u32 a3, fa_u32 b0,
                                       fa_u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// acc (16 x 8*DT) += P B: P (16 x 8*NT) is a warp's f32 accumulator fragments p[NT][4] (a score or score-gradient
// tile), rounded to bf16 as the A operand; B [8*NT][8*DT] is a bf16 tile in shared memory (row stride ld), read by
// ldmatrix.trans. The one product shape of every P.V, dS.K, P^T.dO and dS^T.Q in this file.
template <int NT, int DT>
__device__ __forceinline__ void fa_mma_p_tile(float (&acc)[DT][4], const float (&p)[NT][4], const fa_bf16* tile,
                                              int ld, int lane) {
#pragma unroll
    for (int kk = 0; kk < NT / 2; kk++) {
        const fa_u32 a0 = fa_pack(p[2 * kk][0], p[2 * kk][1]), a1 = fa_pack(p[2 * kk][2], p[2 * kk][3]);
        const fa_u32 a2 = fa_pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        const fa_u32 a3 = fa_pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
        for (int d2 = 0; d2 < DT / 2; d2++) {
            fa_u32 bb[4];
            fa_ldsm_t(bb, tile + (kk * 16 + (lane & 15)) * ld + d2 * 16 + (lane >> 4) * 8);
            fa_mma(acc[2 * d2], a0, a1, a2, a3, bb[0], bb[1]);
            fa_mma(acc[2 * d2 + 1], a0, a1, a2, a3, bb[2], bb[3]);
        }
    }
}

__device__ __forceinline__ fa_u32 fa_dyn_smem() {
    fa_u32 r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}

// Launch-configuration guard: the host must launch THREADS threads and at least SMEM bytes of dynamic shared memory.
__device__ __forceinline__ void fa_check_launch(int threads, fa_u32 smem) {
    if (blockDim.x != (unsigned)threads || fa_dyn_smem() < smem) asm volatile("trap;");
}

// Stages rows [0, ROWS) of an f32 tile (row r at src + r * stride, columns [0, D)) into shared memory as bf16
// row-major dst[r * (D + FA_PAD) + c]; rows r >= valid are zeros (not read). Each thread moves 4 columns of one row
// at a time (16-byte loads; consecutive threads read consecutive columns of a row).
template <int ROWS, int D>
__device__ __forceinline__ void fa_stage(const float* __restrict__ src, long long stride, int valid, fa_bf16* dst) {
    constexpr int Q4 = D / 4, ITEMS = ROWS * Q4, LD = D + FA_PAD;
    for (int it = threadIdx.x; it < ITEMS; it += blockDim.x) {
        const int r = it / Q4, c = 4 * (it % Q4);
        FaF4 x = {0.f, 0.f, 0.f, 0.f};
        if (r < valid) x = *reinterpret_cast<const FaF4*>(src + (long long)r * stride + c);
        FaU2 u = {fa_pack(x.x, x.y), fa_pack(x.z, x.w)};
        *reinterpret_cast<FaU2*>(dst + r * LD + c) = u;
    }
}

// A fragments (KT k-steps of 16 columns) of the 16 rows rA = r0 + gid, rB = rA + 8 of an f32 matrix in global
// memory (row r at p + r * stride); rows >= T are zeros.
template <int KT>
__device__ __forceinline__ void fa_load_a(const float* __restrict__ p, long long stride, int rA, int rB, int T,
                                          int tig, fa_u32 (&f)[KT][4]) {
    const FaF2 z = {0.f, 0.f};
#pragma unroll
    for (int kt = 0; kt < KT; kt++) {
        const int c = kt * 16 + 2 * tig;
        const FaF2 xa = rA < T ? *reinterpret_cast<const FaF2*>(p + (long long)rA * stride + c) : z;
        const FaF2 xa8 = rA < T ? *reinterpret_cast<const FaF2*>(p + (long long)rA * stride + c + 8) : z;
        const FaF2 xb = rB < T ? *reinterpret_cast<const FaF2*>(p + (long long)rB * stride + c) : z;
        const FaF2 xb8 = rB < T ? *reinterpret_cast<const FaF2*>(p + (long long)rB * stride + c + 8) : z;
        f[kt][0] = fa_pack(xa.x, xa.y);
        f[kt][1] = fa_pack(xb.x, xb.y);
        f[kt][2] = fa_pack(xa8.x, xa8.y);
        f[kt][3] = fa_pack(xb8.x, xb8.y);
    }
}

__device__ __forceinline__ float fa_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FA_FULL, v, 1));
    return fmaxf(v, __shfl_xor_sync(FA_FULL, v, 2));
}

__device__ __forceinline__ float fa_quad_sum(float v) {
    v += __shfl_xor_sync(FA_FULL, v, 1);
    return v + __shfl_xor_sync(FA_FULL, v, 2);
}

// ------------------------------------------------------------------------------------------------------------ fwd
// grid (B*Hq, ceil(T / BM)), block 32*WARPS, BM = 16*WARPS query rows per CTA (the last row blocks, which have the
// most keys, are launched first). Shared: Ks, Vs [BN][D+8] bf16. Each warp keeps its 16 rows of Q as A fragments in
// registers, S (16 x BN) and O (16 x D) as C fragments; running max m and sum l per row in the log2 domain
// (x = scale * log2(e) * q.k), l summed per thread and reduced over the quad at the end.
template <int D, int WARPS, int BN>
__device__ __forceinline__ void fa_fwd_impl(const float* __restrict__ q, const float* __restrict__ k,
                                            const float* __restrict__ v, int T, int Hq, int Hkv, float scale,
                                            float* __restrict__ out, float* __restrict__ lse) {
    constexpr int BM = 16 * WARPS, LD = D + FA_PAD, KT = D / 16, NT = BN / 8, DT = D / 8;
    fa_check_launch(32 * WARPS, 2u * BN * LD * 2u);
    fa_bf16* Ks = reinterpret_cast<fa_bf16*>(fa_smem);
    fa_bf16* Vs = Ks + BN * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int bh = blockIdx.x, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
    const int m0 = (int)(gridDim.y - 1 - blockIdx.y) * BM;
    const int rw = m0 + 16 * warp, rA = rw + gid, rB = rA + 8;
    const long long qs = (long long)Hq * D, kvs = (long long)Hkv * D;
    const float* qp = q + (long long)b * T * qs + (long long)h * D;
    const float* kp = k + (long long)b * T * kvs + (long long)g * D;
    const float* vp = v + (long long)b * T * kvs + (long long)g * D;
    const float c = scale * FA_LOG2E;

    fa_u32 qf[KT][4];
    fa_load_a<KT>(qp, qs, rA, rB, T, tig, qf);
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
    float mA = FA_NEG_INF, mB = FA_NEG_INF, lA = 0.f, lB = 0.f;

    const int kEnd = min(T, m0 + BM);
    for (int n0 = 0; n0 < kEnd; n0 += BN) {
        __syncthreads();
        fa_stage<BN, D>(kp + (long long)n0 * kvs, kvs, T - n0, Ks);
        fa_stage<BN, D>(vp + (long long)n0 * kvs, kvs, T - n0, Vs);
        __syncthreads();
        if (rw >= T || n0 > rw + 15) continue;  // warp-uniform: every key of the tile is after every row

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kt = 0; kt < KT; kt++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const fa_bf16* kr = Ks + (nt * 8 + gid) * LD + kt * 16 + 2 * tig;
                fa_mma(s[nt], qf[kt][0], qf[kt][1], qf[kt][2], qf[kt][3], fa_ld32(kr), fa_ld32(kr + 8));
            }
        }
        // Scale to the log2 domain, mask keys after the row (only tiles that reach past the warp's first row),
        // online softmax.
        const bool mask = n0 + BN - 1 > rw;
        float mxA = mA, mxB = mB;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = n0 + nt * 8 + 2 * tig + e;
                float xa = s[nt][e] * c, xb = s[nt][2 + e] * c;
                if (mask) {
                    if (j > rA) xa = FA_NEG_INF;
                    if (j > rB) xb = FA_NEG_INF;
                }
                s[nt][e] = xa;
                s[nt][2 + e] = xb;
                mxA = fmaxf(mxA, xa);
                mxB = fmaxf(mxB, xb);
            }
        }
        mxA = fa_quad_max(mxA);
        mxB = fa_quad_max(mxB);
        // A row with no valid key yet keeps m = -inf: use 0 as the exponent base (every p is then exp2(-inf) = 0).
        const float baseA = mxA == FA_NEG_INF ? 0.f : mxA, baseB = mxB == FA_NEG_INF ? 0.f : mxB;
        const float corrA = fa_exp2(mA - baseA), corrB = fa_exp2(mB - baseB);
        mA = mxA;
        mB = mxB;
        float sumA = 0.f, sumB = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[nt][e] = fa_exp2(s[nt][e] - baseA);
                s[nt][2 + e] = fa_exp2(s[nt][2 + e] - baseB);
                sumA += s[nt][e];
                sumB += s[nt][2 + e];
            }
        }
        lA = lA * corrA + sumA;
        lB = lB * corrB + sumB;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            o[dt][0] *= corrA;
            o[dt][1] *= corrA;
            o[dt][2] *= corrB;
            o[dt][3] *= corrB;
        }
        // O += P V: P (16 x BN) from the S fragments, V^T fragments by ldmatrix.trans from Vs [key][d].
        fa_mma_p_tile(o, s, Vs, LD, lane);
    }

    lA = fa_quad_sum(lA);
    lB = fa_quad_sum(lB);
    const float invA = lA > 0.f ? 1.f / lA : 0.f, invB = lB > 0.f ? 1.f / lB : 0.f;
    float* op = out + (long long)b * T * qs + (long long)h * D;
    if (rA < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            FaF2 w = {o[dt][0] * invA, o[dt][1] * invA};
            *reinterpret_cast<FaF2*>(op + (long long)rA * qs + dt * 8 + 2 * tig) = w;
        }
        if (tig == 0) lse[(long long)bh * T + rA] = mA * FA_LN2 + logf(lA);
    }
    if (rB < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            FaF2 w = {o[dt][2] * invB, o[dt][3] * invB};
            *reinterpret_cast<FaF2*>(op + (long long)rB * qs + dt * 8 + 2 * tig) = w;
        }
        if (tig == 0) lse[(long long)bh * T + rB] = mB * FA_LN2 + logf(lB);
    }
}

// ------------------------------------------------------------------------------------------------------------- di
// di[(b*Hq + h)*T + i] = dot(bf16(dOut[b*T + i, h]), out[b*T + i, h]); one warp per (token, head), grid-stride (any
// grid). dO is rounded to bf16 as the dq and dk/dv kernels round it for dP = dO V^T, so that Di matches
// sum_j P_ij dP_ij (O already holds the bf16-rounded V): then dS = P (dP - Di) has no error from the rounding of dO
// along O (for a row with one key, dS is 0 as in exact arithmetic instead of the rounding error of dO.V).
__device__ __forceinline__ void fa_bwd_di_impl(const float* __restrict__ dOut, const float* __restrict__ out, int B,
                                               int T, int Hq, int D, float* __restrict__ di) {
    const int lane = threadIdx.x & 31;
    const long long rows = (long long)B * T * Hq, warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long wid = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; wid < rows; wid += warps) {
        const long long tok = wid / Hq;
        const int h = (int)(wid % Hq);
        const long long o = tok * Hq * D + (long long)h * D;
        float s = 0.f;
        for (int d = lane; d < D; d += 32) s += fa_round(dOut[o + d]) * out[o + d];
        for (int w = 16; w > 0; w >>= 1) s += __shfl_xor_sync(FA_FULL, s, w);
        const long long b = tok / T, i = tok % T;
        if (lane == 0) di[(b * Hq + h) * T + i] = s;
    }
}

// ------------------------------------------------------------------------------------------------------------- dq
// grid (B*Hq, ceil(T / BM)), block 32*WARPS, BM = 16*WARPS query rows per CTA. Shared: Ks, Vs [BN][D+8] bf16. Per
// key tile: S = Q K^T, dP = dO V^T (Q, dO as register A fragments), P = exp2(S*scale*log2e - lse*log2e) (0 after
// the row), dS = P (dP - Di), dQ += dS K (K^T fragments by ldmatrix.trans); dq = scale * dQ is written.
template <int D, int WARPS, int BN>
__device__ __forceinline__ void fa_bwd_dq_impl(const float* __restrict__ dOut, const float* __restrict__ q,
                                               const float* __restrict__ k, const float* __restrict__ v,
                                               const float* __restrict__ lse, const float* __restrict__ di, int T,
                                               int Hq, int Hkv, float scale, float* __restrict__ dq) {
    constexpr int BM = 16 * WARPS, LD = D + FA_PAD, KT = D / 16, NT = BN / 8, DT = D / 8;
    fa_check_launch(32 * WARPS, 2u * BN * LD * 2u);
    fa_bf16* Ks = reinterpret_cast<fa_bf16*>(fa_smem);
    fa_bf16* Vs = Ks + BN * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int bh = blockIdx.x, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
    const int m0 = (int)(gridDim.y - 1 - blockIdx.y) * BM;
    const int rw = m0 + 16 * warp, rA = rw + gid, rB = rA + 8;
    const long long qs = (long long)Hq * D, kvs = (long long)Hkv * D;
    const long long qOff = (long long)b * T * qs + (long long)h * D;
    const float* kp = k + (long long)b * T * kvs + (long long)g * D;
    const float* vp = v + (long long)b * T * kvs + (long long)g * D;
    const float c = scale * FA_LOG2E;

    fa_u32 qf[KT][4], df[KT][4];
    fa_load_a<KT>(q + qOff, qs, rA, rB, T, tig, qf);
    fa_load_a<KT>(dOut + qOff, qs, rA, rB, T, tig, df);
    const float l2A = rA < T ? lse[(long long)bh * T + rA] * FA_LOG2E : 0.f;
    const float l2B = rB < T ? lse[(long long)bh * T + rB] * FA_LOG2E : 0.f;
    const float diA = rA < T ? di[(long long)bh * T + rA] : 0.f;
    const float diB = rB < T ? di[(long long)bh * T + rB] : 0.f;
    float acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;

    const int kEnd = min(T, m0 + BM);
    for (int n0 = 0; n0 < kEnd; n0 += BN) {
        __syncthreads();
        fa_stage<BN, D>(kp + (long long)n0 * kvs, kvs, T - n0, Ks);
        fa_stage<BN, D>(vp + (long long)n0 * kvs, kvs, T - n0, Vs);
        __syncthreads();
        if (rw >= T || n0 > rw + 15) continue;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
        }
#pragma unroll
        for (int kt = 0; kt < KT; kt++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const int off = (nt * 8 + gid) * LD + kt * 16 + 2 * tig;
                fa_mma(s[nt], qf[kt][0], qf[kt][1], qf[kt][2], qf[kt][3], fa_ld32(Ks + off), fa_ld32(Ks + off + 8));
                fa_mma(dp[nt], df[kt][0], df[kt][1], df[kt][2], df[kt][3], fa_ld32(Vs + off), fa_ld32(Vs + off + 8));
            }
        }
        const bool mask = n0 + BN - 1 > rw;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = n0 + nt * 8 + 2 * tig + e;
                float pa = fa_exp2(s[nt][e] * c - l2A), pb = fa_exp2(s[nt][2 + e] * c - l2B);
                if (mask) {
                    if (j > rA) pa = 0.f;
                    if (j > rB) pb = 0.f;
                }
                s[nt][e] = pa * (dp[nt][e] - diA);
                s[nt][2 + e] = pb * (dp[nt][2 + e] - diB);
            }
        }
        // dQ += dS K: dS (16 x BN) from the fragments, K fragments (B[key][d]) by ldmatrix.trans from Ks [key][d].
        fa_mma_p_tile(acc, s, Ks, LD, lane);
    }

    float* op = dq + qOff;
    if (rA < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            FaF2 w = {acc[dt][0] * scale, acc[dt][1] * scale};
            *reinterpret_cast<FaF2*>(op + (long long)rA * qs + dt * 8 + 2 * tig) = w;
        }
    }
    if (rB < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            FaF2 w = {acc[dt][2] * scale, acc[dt][3] * scale};
            *reinterpret_cast<FaF2*>(op + (long long)rB * qs + dt * 8 + 2 * tig) = w;
        }
    }
}

// ----------------------------------------------------------------------------------------------------------- dkdv
// grid (B*Hkv, ceil(T / BN)), block 32*WARPS, BN = 16*WARPS key rows of kv head g per CTA (the first key blocks,
// which have the most queries, are launched first). Shared: Ks, Vs [BN][D+8], Qs, dOs [BM][D+8] bf16, then
// lse*log2e and Di of the BM query rows (f32). Loops over the query heads of the group and the query blocks that
// reach the key block; each warp computes, for its 16 keys, S^T = K Q^T, P^T (0 where query < key or query >= T),
// dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - Di), dK += dS^T Q (K, V A fragments read from shared memory;
// dO and Q as B operands row-major for S^T/dP^T and by ldmatrix.trans for dV/dK). dk = scale * dK, dv written.
template <int D, int WARPS, int BM>
__device__ __forceinline__ void fa_bwd_dkdv_impl(const float* __restrict__ dOut, const float* __restrict__ q,
                                                 const float* __restrict__ k, const float* __restrict__ v,
                                                 const float* __restrict__ lse, const float* __restrict__ di, int T,
                                                 int Hq, int Hkv, float scale, float* __restrict__ dk,
                                                 float* __restrict__ dv) {
    constexpr int BN = 16 * WARPS, LD = D + FA_PAD, KT = D / 16, MT = BM / 8, DT = D / 8;
    fa_check_launch(32 * WARPS, (2u * BN + 2u * BM) * LD * 2u + 8u * BM);
    fa_bf16* Ks = reinterpret_cast<fa_bf16*>(fa_smem);
    fa_bf16* Vs = Ks + BN * LD;
    fa_bf16* Qs = Vs + BN * LD;
    fa_bf16* dOs = Qs + BM * LD;
    float* l2s = reinterpret_cast<float*>(dOs + BM * LD);
    float* dis = l2s + BM;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int bg = blockIdx.x, b = bg / Hkv, g = bg % Hkv, G = Hq / Hkv;
    const int n0 = (int)blockIdx.y * BN;
    const int kw = n0 + 16 * warp, kA = kw + gid, kB = kA + 8;
    const long long qs = (long long)Hq * D, kvs = (long long)Hkv * D;
    const long long kvOff = (long long)b * T * kvs + (long long)g * D;
    const float c = scale * FA_LOG2E;

    fa_stage<BN, D>(k + kvOff + (long long)n0 * kvs, kvs, T - n0, Ks);
    fa_stage<BN, D>(v + kvOff + (long long)n0 * kvs, kvs, T - n0, Vs);
    float accK[DT][4], accV[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
        accK[dt][0] = accK[dt][1] = accK[dt][2] = accK[dt][3] = 0.f;
        accV[dt][0] = accV[dt][1] = accV[dt][2] = accV[dt][3] = 0.f;
    }
    const fa_bf16* kRow = Ks + (16 * warp + gid) * LD + 2 * tig;  // A fragments of this warp's 16 keys
    const fa_bf16* vRow = Vs + (16 * warp + gid) * LD + 2 * tig;
    const int mStart = (n0 / BM) * BM;

    for (int hh = 0; hh < G; hh++) {
        const int h = g * G + hh;
        const long long bh = (long long)b * Hq + h;
        const long long qOff = (long long)b * T * qs + (long long)h * D;
        for (int m0 = mStart; m0 < T; m0 += BM) {
            __syncthreads();
            fa_stage<BM, D>(q + qOff + (long long)m0 * qs, qs, T - m0, Qs);
            fa_stage<BM, D>(dOut + qOff + (long long)m0 * qs, qs, T - m0, dOs);
            for (int r = threadIdx.x; r < BM; r += blockDim.x) {
                const int i = m0 + r;
                l2s[r] = i < T ? lse[bh * T + i] * FA_LOG2E : 0.f;
                dis[r] = i < T ? di[bh * T + i] : 0.f;
            }
            __syncthreads();
            if (kw >= T || kw > m0 + BM - 1) continue;  // warp-uniform: no key of the warp is <= any query

            // S^T (16 keys x BM queries) = K Q^T.
            float s[MT][4];
#pragma unroll
            for (int nt = 0; nt < MT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kt = 0; kt < KT; kt++) {
                const fa_bf16* ar = kRow + kt * 16;
                const fa_u32 a0 = fa_ld32(ar), a1 = fa_ld32(ar + 8 * LD), a2 = fa_ld32(ar + 8);
                const fa_u32 a3 = fa_ld32(ar + 8 * LD + 8);
#pragma unroll
                for (int nt = 0; nt < MT; nt++) {
                    const fa_bf16* br = Qs + (nt * 8 + gid) * LD + kt * 16 + 2 * tig;
                    fa_mma(s[nt], a0, a1, a2, a3, fa_ld32(br), fa_ld32(br + 8));
                }
            }
            // P^T: rows are keys kA, kB; columns are queries i = m0 + nt*8 + 2tig + e.
            const bool mask = m0 < kw + 15 || m0 + BM > T;
#pragma unroll
            for (int nt = 0; nt < MT; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int col = nt * 8 + 2 * tig + e, i = m0 + col;
                    const float l2 = l2s[col];
                    float pa = fa_exp2(s[nt][e] * c - l2), pb = fa_exp2(s[nt][2 + e] * c - l2);
                    if (mask) {
                        if (i < kA || i >= T) pa = 0.f;
                        if (i < kB || i >= T) pb = 0.f;
                    }
                    s[nt][e] = pa;
                    s[nt][2 + e] = pb;
                }
            }
            // dV += P^T dO (dO fragments B[query][d] by ldmatrix.trans from dOs [query][d]).
            fa_mma_p_tile(accV, s, dOs, LD, lane);
            // dP^T (16 keys x BM queries) = V dO^T.
            float dpt[MT][4];
#pragma unroll
            for (int nt = 0; nt < MT; nt++) dpt[nt][0] = dpt[nt][1] = dpt[nt][2] = dpt[nt][3] = 0.f;
#pragma unroll
            for (int kt = 0; kt < KT; kt++) {
                const fa_bf16* ar = vRow + kt * 16;
                const fa_u32 a0 = fa_ld32(ar), a1 = fa_ld32(ar + 8 * LD), a2 = fa_ld32(ar + 8);
                const fa_u32 a3 = fa_ld32(ar + 8 * LD + 8);
#pragma unroll
                for (int nt = 0; nt < MT; nt++) {
                    const fa_bf16* br = dOs + (nt * 8 + gid) * LD + kt * 16 + 2 * tig;
                    fa_mma(dpt[nt], a0, a1, a2, a3, fa_ld32(br), fa_ld32(br + 8));
                }
            }
            // dS^T = P^T (dP^T - Di[query]).
#pragma unroll
            for (int nt = 0; nt < MT; nt++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const float d = dis[nt * 8 + 2 * tig + e];
                    s[nt][e] *= dpt[nt][e] - d;
                    s[nt][2 + e] *= dpt[nt][2 + e] - d;
                }
            }
            // dK += dS^T Q (Q fragments B[query][d] by ldmatrix.trans from Qs [query][d]).
            fa_mma_p_tile(accK, s, Qs, LD, lane);
        }
    }

    float* dkp = dk + kvOff;
    float* dvp = dv + kvOff;
    if (kA < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            const long long o = (long long)kA * kvs + dt * 8 + 2 * tig;
            FaF2 wk = {accK[dt][0] * scale, accK[dt][1] * scale};
            FaF2 wv = {accV[dt][0], accV[dt][1]};
            *reinterpret_cast<FaF2*>(dkp + o) = wk;
            *reinterpret_cast<FaF2*>(dvp + o) = wv;
        }
    }
    if (kB < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            const long long o = (long long)kB * kvs + dt * 8 + 2 * tig;
            FaF2 wk = {accK[dt][2] * scale, accK[dt][3] * scale};
            FaF2 wv = {accV[dt][2], accV[dt][3]};
            *reinterpret_cast<FaF2*>(dkp + o) = wk;
            *reinterpret_cast<FaF2*>(dvp + o) = wv;
        }
    }
}

// ============================================================================================================ v2
// The "v2" kernels (CudaBackend FlashKernels V2_W8): the same products, rounding
// points, tile orders and accumulation orders as the kernels above, but their inputs are bf16 copies made once per call
// (q, k, v by f32_to_bf16_rows in kernels.cu; dO by fa_bwd_prep, which also writes Di exactly as fa_bwd_di does),
// staged into shared memory with 16-byte cp.async copies (no conversion in the loops), in a ring of STAGES tiles
// (2 or 3: the next STAGES - 1 tiles are in flight while the current one is multiplied; one block barrier per
// tile: at the top of step t, after waiting for tile t's copies, every warp is done with step t - 1, whose slot
// (t + STAGES - 1) % STAGES then receives tile t + STAGES - 1), and every non-transposed B operand
// (K in S = Q K^T, V in dP = dO V^T, Q and dO in S^T = K Q^T and dP^T = V dO^T) and the dk/dv kernel's K, V A
// operands read by ldmatrix.x4 instead of 32-bit shared loads. With the same tile sizes the outputs equal those of
// the kernels above bit for bit (the emulator, which transliterates the kernels above, covers these by that
// equality; the GPU test checks it). Timings: gpu-executor/GPU-RESULTS.md.
//
// ldmatrix.x4 (non-transposed) as a B operand pair: lanes address rows n0 + (lane & 7) + 8 * (lane >> 4) at column
// k0 + 8 * ((lane >> 3) & 1) of a row-major [n][k] tile; r0, r1 = b0, b1 of the n-tile at n0, r2, r3 = those of the
// n-tile at n0 + 8. As an A operand (16 rows): lanes address rows r0 + (lane & 15) at column k0 + 8 * (lane >> 4);
// r0..r3 = a0..a3.

__device__ __forceinline__ void fa_ldsm(fa_u32 (&r)[4], const fa_bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fa_smem_addr(p)));
}

// 16 (or 4) bytes global -> shared, asynchronous; with valid false the destination is zero-filled and nothing read.
__device__ __forceinline__ void fa_cp16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(fa_smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void fa_cp4(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(fa_smem_addr(dst)), "l"(src),
                 "r"(valid ? 4 : 0)
                 : "memory");
}

__device__ __forceinline__ void fa_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

__device__ __forceinline__ void fa_cp_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

// Waits until at most N of this thread's committed copy groups are pending.
template <int N>
__device__ __forceinline__ void fa_cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Issues the copies of rows [0, ROWS) of a bf16 tile (row r at src + r * stride, columns [0, D)) into dst
// [ROWS][D + FA_PAD]; rows r >= valid are zero-filled. 16 bytes (8 columns) per copy.
template <int ROWS, int D>
__device__ __forceinline__ void fa_stage16(const fa_bf16* __restrict__ src, long long stride, int valid,
                                           fa_bf16* dst) {
    constexpr int C8 = D / 8, ITEMS = ROWS * C8, LD = D + FA_PAD;
    for (int it = threadIdx.x; it < ITEMS; it += blockDim.x) {
        const int r = it / C8, c = 8 * (it % C8);
        const bool ok = r < valid;
        fa_cp16(dst + r * LD + c, ok ? src + (long long)r * stride + c : src, ok);
    }
}

// A fragments (KT k-steps) of rows rA, rB = rA + 8 of a bf16 matrix in global memory; rows >= T are zeros.
template <int KT>
__device__ __forceinline__ void fa_load_a16(const fa_bf16* __restrict__ p, long long stride, int rA, int rB, int T,
                                            int tig, fa_u32 (&f)[KT][4]) {
#pragma unroll
    for (int kt = 0; kt < KT; kt++) {
        const int c = kt * 16 + 2 * tig;
        f[kt][0] = rA < T ? fa_ld32(p + (long long)rA * stride + c) : 0u;
        f[kt][1] = rB < T ? fa_ld32(p + (long long)rB * stride + c) : 0u;
        f[kt][2] = rA < T ? fa_ld32(p + (long long)rA * stride + c + 8) : 0u;
        f[kt][3] = rB < T ? fa_ld32(p + (long long)rB * stride + c + 8) : 0u;
    }
}

// s[NT] += A B^T for a warp's A (16 x 16*KT, register fragments) and a row-major bf16 tile B [8*NT][16*KT] in
// shared memory (row stride ld): S = Q K^T and dP = dO V^T. Same kt-outer order as the kernels above.
template <int KT, int NT>
__device__ __forceinline__ void fa_mma_abt(float (&s)[NT][4], const fa_u32 (&a)[KT][4], const fa_bf16* tile, int ld,
                                           int lane) {
    const fa_bf16* base = tile + ((lane & 7) + ((lane >> 4) << 3)) * ld + (((lane >> 3) & 1) << 3);
#pragma unroll
    for (int kt = 0; kt < KT; kt++) {
#pragma unroll
        for (int n2 = 0; n2 < NT / 2; n2++) {
            fa_u32 bb[4];
            fa_ldsm(bb, base + n2 * 16 * ld + kt * 16);
            fa_mma(s[2 * n2], a[kt][0], a[kt][1], a[kt][2], a[kt][3], bb[0], bb[1]);
            fa_mma(s[2 * n2 + 1], a[kt][0], a[kt][1], a[kt][2], a[kt][3], bb[2], bb[3]);
        }
    }
}

// As fa_mma_abt with A the 16 rows of a row-major bf16 tile in shared memory (aRows points at the first of them),
// read by ldmatrix per k-step: S^T = K Q^T and dP^T = V dO^T.
template <int KT, int NT>
__device__ __forceinline__ void fa_mma_sbt(float (&s)[NT][4], const fa_bf16* aRows, const fa_bf16* tile, int ld,
                                           int lane) {
    const fa_bf16* aBase = aRows + (lane & 15) * ld + ((lane >> 4) << 3);
    const fa_bf16* base = tile + ((lane & 7) + ((lane >> 4) << 3)) * ld + (((lane >> 3) & 1) << 3);
#pragma unroll
    for (int kt = 0; kt < KT; kt++) {
        fa_u32 a[4];
        fa_ldsm(a, aBase + kt * 16);
#pragma unroll
        for (int n2 = 0; n2 < NT / 2; n2++) {
            fa_u32 bb[4];
            fa_ldsm(bb, base + n2 * 16 * ld + kt * 16);
            fa_mma(s[2 * n2], a[0], a[1], a[2], a[3], bb[0], bb[1]);
            fa_mma(s[2 * n2 + 1], a[0], a[1], a[2], a[3], bb[2], bb[3]);
        }
    }
}

// ------------------------------------------------------------------------------------------------------- prep
// dO16 = bf16(dOut) (same layout) and di as fa_bwd_di (same summation order, so the same bits). One warp per
// (token, head), grid-stride.
__device__ __forceinline__ void fa_bwd_prep_impl(const float* __restrict__ dOut, const float* __restrict__ out, int B,
                                                 int T, int Hq, int D, float* __restrict__ di,
                                                 fa_bf16* __restrict__ dO16) {
    const int lane = threadIdx.x & 31;
    const long long rows = (long long)B * T * Hq, warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long wid = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; wid < rows; wid += warps) {
        const long long tok = wid / Hq;
        const int h = (int)(wid % Hq);
        const long long o = tok * Hq * D + (long long)h * D;
        float s = 0.f;
        for (int d = lane; d < D; d += 32) {
            const float r = fa_round(dOut[o + d]);
            dO16[o + d] = (fa_bf16)(__float_as_uint(r) >> 16);
            s += r * out[o + d];
        }
        for (int w = 16; w > 0; w >>= 1) s += __shfl_xor_sync(FA_FULL, s, w);
        const long long b = tok / T, i = tok % T;
        if (lane == 0) di[(b * Hq + h) * T + i] = s;
    }
}

// ------------------------------------------------------------------------------------------------------- fwd v2
// As fa_fwd_impl; shared: STAGES slots of {Ks, Vs [BN][D+8] bf16}.
template <int D, int WARPS, int BN, int STAGES>
__device__ __forceinline__ void fa_fwd2_impl(const fa_bf16* __restrict__ q, const fa_bf16* __restrict__ k,
                                             const fa_bf16* __restrict__ v, int T, int Hq, int Hkv, float scale,
                                             float* __restrict__ out, float* __restrict__ lse) {
    constexpr int BM = 16 * WARPS, LD = D + FA_PAD, KT = D / 16, NT = BN / 8, DT = D / 8, TILE = BN * LD;
    fa_check_launch(32 * WARPS, 4u * STAGES * TILE);
    fa_bf16* sm = reinterpret_cast<fa_bf16*>(fa_smem);  // slot st: Ks = sm + 2 st TILE, Vs = Ks + TILE
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int bh = blockIdx.x, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
    const int m0 = (int)(gridDim.y - 1 - blockIdx.y) * BM;
    const int rw = m0 + 16 * warp, rA = rw + gid, rB = rA + 8;
    const long long qs = (long long)Hq * D, kvs = (long long)Hkv * D;
    const fa_bf16* kp = k + (long long)b * T * kvs + (long long)g * D;
    const fa_bf16* vp = v + (long long)b * T * kvs + (long long)g * D;
    const float c = scale * FA_LOG2E;

    const int kEnd = min(T, m0 + BM), nTiles = (kEnd + BN - 1) / BN;
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < nTiles) {
            fa_stage16<BN, D>(kp + (long long)st * BN * kvs, kvs, T - st * BN, sm + 2 * st * TILE);
            fa_stage16<BN, D>(vp + (long long)st * BN * kvs, kvs, T - st * BN, sm + (2 * st + 1) * TILE);
        }
        fa_cp_commit();
    }

    fa_u32 qf[KT][4];
    fa_load_a16<KT>(q + (long long)b * T * qs + (long long)h * D, qs, rA, rB, T, tig, qf);
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
    float mA = FA_NEG_INF, mB = FA_NEG_INF, lA = 0.f, lB = 0.f;

    for (int t = 0; t < nTiles; t++) {
        const int n0 = t * BN;
        fa_cp_wait<STAGES - 2>();
        __syncthreads();  // tile t landed for every thread; every warp is done with tile t - 1
        if (t + STAGES - 1 < nTiles) {
            const int nn = n0 + (STAGES - 1) * BN;
            fa_bf16* nx = sm + ((t + STAGES - 1) % STAGES) * 2 * TILE;
            fa_stage16<BN, D>(kp + (long long)nn * kvs, kvs, T - nn, nx);
            fa_stage16<BN, D>(vp + (long long)nn * kvs, kvs, T - nn, nx + TILE);
        }
        fa_cp_commit();
        if (rw >= T || n0 > rw + 15) continue;  // warp-uniform: every key of the tile is after every row
        const fa_bf16* Ks = sm + (t % STAGES) * 2 * TILE;
        const fa_bf16* Vs = Ks + TILE;

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
        fa_mma_abt<KT, NT>(s, qf, Ks, LD, lane);
        const bool mask = n0 + BN - 1 > rw;
        float mxA = mA, mxB = mB;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = n0 + nt * 8 + 2 * tig + e;
                float xa = s[nt][e] * c, xb = s[nt][2 + e] * c;
                if (mask) {
                    if (j > rA) xa = FA_NEG_INF;
                    if (j > rB) xb = FA_NEG_INF;
                }
                s[nt][e] = xa;
                s[nt][2 + e] = xb;
                mxA = fmaxf(mxA, xa);
                mxB = fmaxf(mxB, xb);
            }
        }
        mxA = fa_quad_max(mxA);
        mxB = fa_quad_max(mxB);
        const float baseA = mxA == FA_NEG_INF ? 0.f : mxA, baseB = mxB == FA_NEG_INF ? 0.f : mxB;
        const float corrA = fa_exp2(mA - baseA), corrB = fa_exp2(mB - baseB);
        mA = mxA;
        mB = mxB;
        float sumA = 0.f, sumB = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[nt][e] = fa_exp2(s[nt][e] - baseA);
                s[nt][2 + e] = fa_exp2(s[nt][2 + e] - baseB);
                sumA += s[nt][e];
                sumB += s[nt][2 + e];
            }
        }
        lA = lA * corrA + sumA;
        lB = lB * corrB + sumB;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            o[dt][0] *= corrA;
            o[dt][1] *= corrA;
            o[dt][2] *= corrB;
            o[dt][3] *= corrB;
        }
        fa_mma_p_tile(o, s, Vs, LD, lane);
    }
    fa_cp_wait_all();

    lA = fa_quad_sum(lA);
    lB = fa_quad_sum(lB);
    const float invA = lA > 0.f ? 1.f / lA : 0.f, invB = lB > 0.f ? 1.f / lB : 0.f;
    float* op = out + (long long)b * T * qs + (long long)h * D;
    if (rA < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            FaF2 w = {o[dt][0] * invA, o[dt][1] * invA};
            *reinterpret_cast<FaF2*>(op + (long long)rA * qs + dt * 8 + 2 * tig) = w;
        }
        if (tig == 0) lse[(long long)bh * T + rA] = mA * FA_LN2 + logf(lA);
    }
    if (rB < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            FaF2 w = {o[dt][2] * invB, o[dt][3] * invB};
            *reinterpret_cast<FaF2*>(op + (long long)rB * qs + dt * 8 + 2 * tig) = w;
        }
        if (tig == 0) lse[(long long)bh * T + rB] = mB * FA_LN2 + logf(lB);
    }
}

// -------------------------------------------------------------------------------------------------------- dq v2
// As fa_bwd_dq_impl; shared: STAGES slots of {Ks, Vs [BN][D+8] bf16}.
template <int D, int WARPS, int BN, int STAGES>
__device__ __forceinline__ void fa_bwd_dq2_impl(const fa_bf16* __restrict__ dO, const fa_bf16* __restrict__ q,
                                                const fa_bf16* __restrict__ k, const fa_bf16* __restrict__ v,
                                                const float* __restrict__ lse, const float* __restrict__ di, int T,
                                                int Hq, int Hkv, float scale, float* __restrict__ dq) {
    constexpr int BM = 16 * WARPS, LD = D + FA_PAD, KT = D / 16, NT = BN / 8, DT = D / 8, TILE = BN * LD;
    fa_check_launch(32 * WARPS, 4u * STAGES * TILE);
    fa_bf16* sm = reinterpret_cast<fa_bf16*>(fa_smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int bh = blockIdx.x, b = bh / Hq, h = bh % Hq, g = h / (Hq / Hkv);
    const int m0 = (int)(gridDim.y - 1 - blockIdx.y) * BM;
    const int rw = m0 + 16 * warp, rA = rw + gid, rB = rA + 8;
    const long long qs = (long long)Hq * D, kvs = (long long)Hkv * D;
    const long long qOff = (long long)b * T * qs + (long long)h * D;
    const fa_bf16* kp = k + (long long)b * T * kvs + (long long)g * D;
    const fa_bf16* vp = v + (long long)b * T * kvs + (long long)g * D;
    const float c = scale * FA_LOG2E;

    const int kEnd = min(T, m0 + BM), nTiles = (kEnd + BN - 1) / BN;
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < nTiles) {
            fa_stage16<BN, D>(kp + (long long)st * BN * kvs, kvs, T - st * BN, sm + 2 * st * TILE);
            fa_stage16<BN, D>(vp + (long long)st * BN * kvs, kvs, T - st * BN, sm + (2 * st + 1) * TILE);
        }
        fa_cp_commit();
    }

    fa_u32 qf[KT][4], df[KT][4];
    fa_load_a16<KT>(q + qOff, qs, rA, rB, T, tig, qf);
    fa_load_a16<KT>(dO + qOff, qs, rA, rB, T, tig, df);
    const float l2A = rA < T ? lse[(long long)bh * T + rA] * FA_LOG2E : 0.f;
    const float l2B = rB < T ? lse[(long long)bh * T + rB] * FA_LOG2E : 0.f;
    const float diA = rA < T ? di[(long long)bh * T + rA] : 0.f;
    const float diB = rB < T ? di[(long long)bh * T + rB] : 0.f;
    float acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;

    for (int t = 0; t < nTiles; t++) {
        const int n0 = t * BN;
        fa_cp_wait<STAGES - 2>();
        __syncthreads();
        if (t + STAGES - 1 < nTiles) {
            const int nn = n0 + (STAGES - 1) * BN;
            fa_bf16* nx = sm + ((t + STAGES - 1) % STAGES) * 2 * TILE;
            fa_stage16<BN, D>(kp + (long long)nn * kvs, kvs, T - nn, nx);
            fa_stage16<BN, D>(vp + (long long)nn * kvs, kvs, T - nn, nx + TILE);
        }
        fa_cp_commit();
        if (rw >= T || n0 > rw + 15) continue;
        const fa_bf16* Ks = sm + (t % STAGES) * 2 * TILE;
        const fa_bf16* Vs = Ks + TILE;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
        }
        fa_mma_abt<KT, NT>(s, qf, Ks, LD, lane);
        fa_mma_abt<KT, NT>(dp, df, Vs, LD, lane);
        const bool mask = n0 + BN - 1 > rw;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = n0 + nt * 8 + 2 * tig + e;
                float pa = fa_exp2(s[nt][e] * c - l2A), pb = fa_exp2(s[nt][2 + e] * c - l2B);
                if (mask) {
                    if (j > rA) pa = 0.f;
                    if (j > rB) pb = 0.f;
                }
                s[nt][e] = pa * (dp[nt][e] - diA);
                s[nt][2 + e] = pb * (dp[nt][2 + e] - diB);
            }
        }
        fa_mma_p_tile(acc, s, Ks, LD, lane);
    }
    fa_cp_wait_all();

    float* op = dq + qOff;
    if (rA < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            FaF2 w = {acc[dt][0] * scale, acc[dt][1] * scale};
            *reinterpret_cast<FaF2*>(op + (long long)rA * qs + dt * 8 + 2 * tig) = w;
        }
    }
    if (rB < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            FaF2 w = {acc[dt][2] * scale, acc[dt][3] * scale};
            *reinterpret_cast<FaF2*>(op + (long long)rB * qs + dt * 8 + 2 * tig) = w;
        }
    }
}

// ------------------------------------------------------------------------------------------------------ dkdv v2
// As fa_bwd_dkdv_impl; shared: Ks, Vs [BN][D+8], then STAGES slots of {Qs, dOs [BM][D+8] bf16}, then STAGES slots
// of {lse, Di [BM] f32} (lse scaled by log2e where used). The (query head, query block) pairs are one flat sequence
// of steps.
template <int D, int WARPS, int BM, int STAGES>
__device__ __forceinline__ void fa_bwd_dkdv2_impl(const fa_bf16* __restrict__ dO, const fa_bf16* __restrict__ q,
                                                  const fa_bf16* __restrict__ k, const fa_bf16* __restrict__ v,
                                                  const float* __restrict__ lse, const float* __restrict__ di, int T,
                                                  int Hq, int Hkv, float scale, float* __restrict__ dk,
                                                  float* __restrict__ dv) {
    constexpr int BN = 16 * WARPS, LD = D + FA_PAD, KT = D / 16, MT = BM / 8, DT = D / 8, QT = BM * LD;
    fa_check_launch(32 * WARPS, (2u * BN + 2u * STAGES * BM) * LD * 2u + 8u * STAGES * BM);
    fa_bf16* Ks = reinterpret_cast<fa_bf16*>(fa_smem);
    fa_bf16* Vs = Ks + BN * LD;
    fa_bf16* qStage = Vs + BN * LD;  // slot st: Qs = qStage + 2 st QT, dOs = Qs + QT
    float* rowStage = reinterpret_cast<float*>(qStage + 2 * STAGES * QT);  // slot st: lse = rowStage + 2 st BM, Di + BM
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
    const int bg = blockIdx.x, b = bg / Hkv, g = bg % Hkv, G = Hq / Hkv;
    const int n0 = (int)blockIdx.y * BN;
    const int kw = n0 + 16 * warp, kA = kw + gid, kB = kA + 8;
    const long long qs = (long long)Hq * D, kvs = (long long)Hkv * D;
    const long long kvOff = (long long)b * T * kvs + (long long)g * D;
    const float c = scale * FA_LOG2E;
    const int mStart = (n0 / BM) * BM, nM = (T - mStart + BM - 1) / BM, total = G * nM;

    fa_stage16<BN, D>(k + kvOff + (long long)n0 * kvs, kvs, T - n0, Ks);
    fa_stage16<BN, D>(v + kvOff + (long long)n0 * kvs, kvs, T - n0, Vs);
    // Copies of step it (query head g*G + it / nM, query block mStart + (it % nM) * BM) into slot it % STAGES.
    auto issue = [&](int it) {
        const int h = g * G + it / nM, m0 = mStart + (it % nM) * BM;
        const long long qOff = (long long)b * T * qs + (long long)h * D + (long long)m0 * qs;
        fa_bf16* Qs = qStage + (it % STAGES) * 2 * QT;
        fa_stage16<BM, D>(q + qOff, qs, T - m0, Qs);
        fa_stage16<BM, D>(dO + qOff, qs, T - m0, Qs + QT);
        float* rs = rowStage + (it % STAGES) * 2 * BM;
        const long long lo = ((long long)b * Hq + h) * T + m0;
        for (int r = threadIdx.x; r < 2 * BM; r += blockDim.x) {
            const int rr = r < BM ? r : r - BM;
            const bool ok = m0 + rr < T;
            const float* src = r < BM ? lse : di;
            fa_cp4(rs + r, ok ? src + lo + rr : src, ok);
        }
    };
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < total) issue(st);
        fa_cp_commit();
    }

    float accK[DT][4], accV[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
        accK[dt][0] = accK[dt][1] = accK[dt][2] = accK[dt][3] = 0.f;
        accV[dt][0] = accV[dt][1] = accV[dt][2] = accV[dt][3] = 0.f;
    }
    const fa_bf16* kRows = Ks + 16 * warp * LD;
    const fa_bf16* vRows = Vs + 16 * warp * LD;

    for (int it = 0; it < total; it++) {
        const int m0 = mStart + (it % nM) * BM;
        fa_cp_wait<STAGES - 2>();
        __syncthreads();
        if (it + STAGES - 1 < total) issue(it + STAGES - 1);
        fa_cp_commit();
        if (kw >= T || kw > m0 + BM - 1) continue;  // warp-uniform: no key of the warp is <= any query
        const fa_bf16* Qs = qStage + (it % STAGES) * 2 * QT;
        const fa_bf16* dOs = Qs + QT;
        const float* l2s = rowStage + (it % STAGES) * 2 * BM;
        const float* dis = l2s + BM;

        float s[MT][4];
#pragma unroll
        for (int nt = 0; nt < MT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
        fa_mma_sbt<KT, MT>(s, kRows, Qs, LD, lane);
        const bool mask = m0 < kw + 15 || m0 + BM > T;
#pragma unroll
        for (int nt = 0; nt < MT; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int col = nt * 8 + 2 * tig + e, i = m0 + col;
                const float l2 = l2s[col] * FA_LOG2E;
                float pa = fa_exp2(s[nt][e] * c - l2), pb = fa_exp2(s[nt][2 + e] * c - l2);
                if (mask) {
                    if (i < kA || i >= T) pa = 0.f;
                    if (i < kB || i >= T) pb = 0.f;
                }
                s[nt][e] = pa;
                s[nt][2 + e] = pb;
            }
        }
        fa_mma_p_tile(accV, s, dOs, LD, lane);
        float dpt[MT][4];
#pragma unroll
        for (int nt = 0; nt < MT; nt++) dpt[nt][0] = dpt[nt][1] = dpt[nt][2] = dpt[nt][3] = 0.f;
        fa_mma_sbt<KT, MT>(dpt, vRows, dOs, LD, lane);
#pragma unroll
        for (int nt = 0; nt < MT; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float d = dis[nt * 8 + 2 * tig + e];
                s[nt][e] *= dpt[nt][e] - d;
                s[nt][2 + e] *= dpt[nt][2 + e] - d;
            }
        }
        fa_mma_p_tile(accK, s, Qs, LD, lane);
    }
    fa_cp_wait_all();

    float* dkp = dk + kvOff;
    float* dvp = dv + kvOff;
    if (kA < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            const long long o = (long long)kA * kvs + dt * 8 + 2 * tig;
            FaF2 wk = {accK[dt][0] * scale, accK[dt][1] * scale};
            FaF2 wv = {accV[dt][0], accV[dt][1]};
            *reinterpret_cast<FaF2*>(dkp + o) = wk;
            *reinterpret_cast<FaF2*>(dvp + o) = wv;
        }
    }
    if (kB < T) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            const long long o = (long long)kB * kvs + dt * 8 + 2 * tig;
            FaF2 wk = {accK[dt][2] * scale, accK[dt][3] * scale};
            FaF2 wv = {accV[dt][2], accV[dt][3]};
            *reinterpret_cast<FaF2*>(dkp + o) = wk;
            *reinterpret_cast<FaF2*>(dvp + o) = wv;
        }
    }
}

// ---------------------------------------------------------------------------------------------------- instances
// Tile configurations (FlashAttention mirrors them: threads = 32*WARPS, grid rows and dynamic shared bytes):
//   fwd  D=64: WARPS 8, BN 64 (BM 128);  D=128: WARPS 8, BN 64 (BM 128)     shared 4*BN*(D+8)
//   dq   D=64: WARPS 4, BN 64 (BM 64);   D=128: WARPS 4, BN 32 (BM 64)      shared 4*BN*(D+8)
//   dkdv D=64: WARPS 4, BM 64 (BN 64);   D=128: WARPS 4, BM 32 (BN 64)      shared 4*(BN+BM)*(D+8) + 8*BM
extern "C" {

__global__ void __launch_bounds__(256) fa_bwd_di(const float* dOut, const float* out, int B, int T, int Hq, int D,
                                                 float* di) {
    fa_bwd_di_impl(dOut, out, B, T, Hq, D, di);
}

#define FA_INSTANCES(DD, FW, FBN, QW, QBN, KW, KBM)                                                                  \
    __global__ void __launch_bounds__(32 * FW) fa_fwd_d##DD(const float* q, const float* k, const float* v, int T,   \
                                                            int Hq, int Hkv, float scale, float* out, float* lse) {  \
        fa_fwd_impl<DD, FW, FBN>(q, k, v, T, Hq, Hkv, scale, out, lse);                                              \
    }                                                                                                                \
    __global__ void __launch_bounds__(32 * QW) fa_bwd_dq_d##DD(const float* dOut, const float* q, const float* k,   \
                                                               const float* v, const float* lse, const float* di,   \
                                                               int T, int Hq, int Hkv, float scale, float* dq) {    \
        fa_bwd_dq_impl<DD, QW, QBN>(dOut, q, k, v, lse, di, T, Hq, Hkv, scale, dq);                                  \
    }                                                                                                                \
    __global__ void __launch_bounds__(32 * KW) fa_bwd_dkdv_d##DD(const float* dOut, const float* q, const float* k, \
                                                                 const float* v, const float* lse,                  \
                                                                 const float* di, int T, int Hq, int Hkv,           \
                                                                 float scale, float* dk, float* dv) {               \
        fa_bwd_dkdv_impl<DD, KW, KBM>(dOut, q, k, v, lse, di, T, Hq, Hkv, scale, dk, dv);                            \
    }

FA_INSTANCES(64, 8, 64, 4, 64, 4, 64)
FA_INSTANCES(128, 8, 64, 4, 32, 4, 32)

// v2 (V2_W8): the forward (no suffix) and the backward with 8-warp CTAs (suffix "w8"), all with a ring of 3 stages.
// Shared bytes (FlashAttention mirrors them): fwd2, dq2 4*STAGES*BN*(D+8); dkdv2 2*(2*BN + 2*STAGES*BM)*(D+8) +
// 8*STAGES*BM.
//   fwd2   D=64, 128: WARPS 8, BN 64
//   dq2    D=64: WARPS 8, BN 64;  D=128: WARPS 8, BN 32
//   dkdv2  D=64: WARPS 8, BM 64;  D=128: WARPS 8, BM 32
// The second number of a __launch_bounds__ (minimum CTAs per SM) caps the registers: fwd2 D=64 at 128 (2 CTAs of
// 8 warps).
__global__ void __launch_bounds__(256) fa_bwd_prep(const float* dOut, const float* out, int B, int T, int Hq, int D,
                                                   float* di, fa_bf16* dO16) {
    fa_bwd_prep_impl(dOut, out, B, T, Hq, D, di, dO16);
}

#define FA2_FWD(SUF, DD, FW, FBN, ST, MINB)                                                                        \
    __global__ void __launch_bounds__(32 * FW, MINB) fa_fwd2##SUF##_d##DD(                                          \
        const fa_bf16* q, const fa_bf16* k, const fa_bf16* v, int T, int Hq, int Hkv, float scale, float* out,       \
        float* lse) {                                                                                               \
        fa_fwd2_impl<DD, FW, FBN, ST>(q, k, v, T, Hq, Hkv, scale, out, lse);                                         \
    }

#define FA2_BWD(SUF, DD, QW, QBN, QMINB, KW, KBM, KMINB, ST)                                                        \
    __global__ void __launch_bounds__(32 * QW, QMINB) fa_bwd_dq2##SUF##_d##DD(                                       \
        const fa_bf16* dO, const fa_bf16* q, const fa_bf16* k, const fa_bf16* v, const float* lse, const float* di, \
        int T, int Hq, int Hkv, float scale, float* dq) {                                                           \
        fa_bwd_dq2_impl<DD, QW, QBN, ST>(dO, q, k, v, lse, di, T, Hq, Hkv, scale, dq);                               \
    }                                                                                                               \
    __global__ void __launch_bounds__(32 * KW, KMINB) fa_bwd_dkdv2##SUF##_d##DD(                                     \
        const fa_bf16* dO, const fa_bf16* q, const fa_bf16* k, const fa_bf16* v, const float* lse, const float* di, \
        int T, int Hq, int Hkv, float scale, float* dk, float* dv) {                                                \
        fa_bwd_dkdv2_impl<DD, KW, KBM, ST>(dO, q, k, v, lse, di, T, Hq, Hkv, scale, dk, dv);                         \
    }

FA2_FWD(, 64, 8, 64, 3, 2)
FA2_FWD(, 128, 8, 64, 3, 1)
FA2_BWD(w8, 64, 8, 64, 1, 8, 64, 1, 3)
FA2_BWD(w8, 128, 8, 32, 1, 8, 32, 1, 3)

} // extern "C"
