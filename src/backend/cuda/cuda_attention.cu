/* backend/cuda: causal grouped-query attention, forward and backward, computed in f32 over f32
 * or bf16 storage (T below: bf16 inputs convert exactly, outputs round once), with the
 * contract of backend.h and the CPU kernel's arithmetic (backend/cpu/cpu_attention.c): scores
 * sc q.k, an online softmax in the forward keeping each row's log-sum-exp, the backward
 * recomputing P = exp(score - lse), dropout from dropout_keep over the flat (B,NH,Tq,Tk)
 * index so both directions and both backends drop the same entries.
 *
 * Tiled in the FlashAttention-2 manner, on the f32 units (FFMA: TF32 tensor cores would miss
 * the tests' 1e-5 tolerance on out). Every kernel works on tiles of TILE queries by TILE keys
 * staged in shared memory; a block of THREADS = 128 threads, thread (ty, tx) = (id / 16,
 * id % 16), owns rows ty + 8i (i < 8) of a tile and columns tx + 16j, so a row's 16 owners
 * are 16 lanes of one warp (row reductions are shuffles) and one tile product (tile_mm)
 * reads per step 8 A values (two distinct addresses per warp) and 4 or HSP/16 B values
 * (consecutive banks) for 32 or more FMAs. Head sizes are padded to HSP (16, 32, 64 or 128,
 * a template parameter) with zeros in shared memory, so tests' tiny heads run the same code.
 *   - forward: a block per (query tile, b, h) sweeps the key tiles its queries see, with a
 *     per-row running maximum m and normalizer l (each thread sums its own columns; the 16
 *     partial l's meet at the end); out = acc / l, lse = m + log l;
 *   - dq: a block per (query tile, b, h) sweeps the same key tiles: dq += dS k with
 *     dS = sc P (M dP - D), P = exp(score - lse), M the dropout scale, dP = dout . v;
 *   - dk, dv: a block per (key tile, b, KV head) sweeps the heads of its group and the query
 *     tiles that see its keys: dv += (P M)^T dout, dk += dS^T q, in registers until the end.
 * D = dout . out is computed per query tile inside the backward blocks from dout and out
 * (two more row reads per tile, small against its four tile products) rather than by a
 * separate kernel into scratch: ops allocate nothing (cuda.cu).
 * Invariants: every sum runs in a fixed order and every output element has one owner, which
 * writes it (no atomics: results are deterministic; keys no query sees get 0); nothing allocates; HS <= CUDA_ATTN_MAX_HS; every query
 * sees its own position, so every normalizer is > 0; blocks are numbered longest work first
 * (causal tiles near the end of the queries / start of the keys see the most).
 *
 * Which kernels run (cuda_attention_forward, _backward): bf16 calls cuDNN covers go to its
 * fused attention (cuda_cudnn.cu) unless SKEIN_CUDA_ATTN says otherwise (cuda.h); other bf16
 * calls with HS 64 or 128 and 16-byte aligned rows to the tensor-core kernels
 * (cuda_attention_tc.cu); every other call, and every call under SKEIN_CUDA_ATTN=simple, to
 * these.
 *
 * Letters as in backend.h; Tq queries, Tk keys, G = NH/NKV heads per KV head, query t at
 * position Tk - Tq + t. */
#include "backend/cuda/cuda_attention.cuh"

#include <math.h>

#include <type_traits>

#define TILE 64                  /* queries and keys per tile */
#define THREADS 128              /* 8 row groups x 16 column lanes */
#define LDP (TILE + 16)          /* row stride of a score tile: a warp's two row groups land 16 banks apart */

/* ---- tiles in shared memory ---- */

/* acc[i][j] += sum over k < KN of A(ty + 8i, k) B(tx + 16j, k), with A(r, k) = A[r*ARS + k*AKS]
 * and B(c, k) = B[c*BCS + k*BKS] in shared memory: one thread's part of a tile product. */
template <int NJ, int KN, int ARS, int AKS, int BCS, int BKS>
__device__ __forceinline__ void tile_mm(float (&acc)[8][NJ], const float *A, const float *B) {
    A += (threadIdx.x / 16) * ARS;
    B += (threadIdx.x % 16) * BCS;
#pragma unroll 4
    for (int k = 0; k < KN; k++) {
        float a[8], b[NJ];
#pragma unroll
        for (int i = 0; i < 8; i++) a[i] = A[8 * i * ARS + k * AKS];
#pragma unroll
        for (int j = 0; j < NJ; j++) b[j] = B[16 * j * BCS + k * BKS];
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}

/* dst[r*(HSP+1) + c] = X[b, t0 + r, col0 + c] in f32 for r < n and c < HS, 0 elsewhere in the
 * TILE x HSP tile (the stride HSP+1 puts a column's rows in different banks). */
template <class T, int HSP>
__device__ void tile_load(float *dst, cuda_rows X, int b, int t0, int n, int col0, int HS) {
    const T *src = attn_at<T>(X, b, t0, col0);
    for (int i = threadIdx.x; i < TILE * HSP; i += THREADS) {
        const int r = i / HSP, c = i % HSP;
        dst[r * (HSP + 1) + c] = r < n && c < HS ? (float)src[r * X.st + c] : 0.0f;
    }
}

/* The shared memory a kernel of head width HSP takes: `rows` tiles of (TILE, HSP+1) and
 * `scores` tiles of (TILE, LDP), in bytes. */
static constexpr size_t tile_bytes(int HSP, int rows, int scores) {
    return sizeof(float) * ((size_t)rows * TILE * (HSP + 1) + (size_t)scores * TILE * LDP);
}

/* ---- geometry ---- */

__device__ static inline float row_max(float v) {   /* over a row's 16 lanes */
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(ATTN_FULL_MASK, v, o));
    return v;
}
__device__ static inline float row_sum(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(ATTN_FULL_MASK, v, o);
    return v;
}

/* Ls[r], Ds[r] = lse and dout . out of query t0 + r of head h (0 past Tq), r < TILE: the
 * per-row terms of the backward, a warp per row. */
template <class T>
__device__ static void attn_row_terms(float *Ls, float *Ds, const cuda_attn_geom &g, cuda_rows DO, cuda_rows O,
                                      const float *lse, int b, int h, int t0) {
    const int lane = threadIdx.x % 32;
    for (int r = threadIdx.x / 32; r < TILE; r += THREADS / 32) {
        const int t = t0 + r;
        float d = 0;
        if (t < g.Tq) {
            const T *dout = attn_at<T>(DO, b, t, h * g.HS), *out = attn_at<T>(O, b, t, h * g.HS);
            for (int c = lane; c < g.HS; c += 32) d += (float)dout[c] * (float)out[c];
        }
        for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(ATTN_FULL_MASK, d, o);
        if (lane == 0) {
            Ds[r] = d;
            Ls[r] = t < g.Tq ? lse[((int64_t)b * g.NH + h) * g.Tq + t] : 0.0f;
        }
    }
}

/* ---- kernels ---- */

/* Forward of one query tile (grid: query tiles x B x NH), online softmax over its key tiles.
 * Shared memory: Q, K, V tiles and the probability tile P (queries x keys). */
template <class T, int HSP>
__global__ void __launch_bounds__(THREADS) attention_forward(cuda_attn_geom g, cuda_rows O, float *lse,
                                                                 cuda_rows Q, cuda_rows K, cuda_rows V) {
    constexpr int LD = HSP + 1, NJ = HSP / 16;
    extern __shared__ float smem[];
    float *Qs = smem, *Ks = Qs + TILE * LD, *Vs = Ks + TILE * LD, *Ps = Vs + TILE * LD;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int bh;
    const int t0 = TILE * attn_tile_index((g.Tq + TILE - 1) / TILE, g.B * g.NH, true, &bh);
    const int b = bh / g.NH, h = bh % g.NH, nq = min(TILE, g.Tq - t0), kc = h / g.G * g.HS;
    const int64_t row0 = ((int64_t)b * g.NH + h) * g.Tq + t0;
    int s_lo, s_hi, unused;
    attn_span(g, t0, &s_lo, &unused);
    attn_span(g, t0 + nq - 1, &unused, &s_hi);
    tile_load<T, HSP>(Qs, Q, b, t0, nq, h * g.HS, g.HS);
    float m[8], l[8], acc[8][NJ] = {};
#pragma unroll
    for (int i = 0; i < 8; i++) m[i] = -INFINITY, l[i] = 0.0f;
    for (int k0 = s_lo; k0 <= s_hi; k0 += TILE) {
        __syncthreads();   /* the last tile's readers are done with K, V, P */
        tile_load<T, HSP>(Ks, K, b, k0, min(TILE, s_hi - k0 + 1), kc, g.HS);
        tile_load<T, HSP>(Vs, V, b, k0, min(TILE, s_hi - k0 + 1), kc, g.HS);
        __syncthreads();
        float S[8][4] = {};
        tile_mm<4, HSP, LD, 1, LD, 1>(S, Qs, Ks);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int t = t0 + ty + 8 * i;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                S[i][j] = attn_visible(g, t, k0 + tx + 16 * j) ? g.sc * S[i][j] : -INFINITY;
                mx = fmaxf(mx, S[i][j]);
            }
            const float mnew = fmaxf(m[i], row_max(mx));
            const float ref = mnew == -INFINITY ? 0.0f : mnew;   /* no key seen yet: nothing to scale */
            const float corr = expf(m[i] - ref);                 /* 0 before the first key */
            m[i] = mnew;
            l[i] *= corr;
#pragma unroll
            for (int j = 0; j < NJ; j++) acc[i][j] *= corr;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float e = expf(S[i][j] - ref);   /* 0 where hidden */
                l[i] += e;
                Ps[(ty + 8 * i) * LDP + tx + 16 * j] =
                    e != 0.0f && g.p > 0.0f ? e * attn_keep(g, row0 + ty + 8 * i, k0 + tx + 16 * j) : e;
            }
        }
        __syncthreads();
        tile_mm<NJ, TILE, LDP, 1, 1, LD>(acc, Ps, Vs);
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int r = ty + 8 * i;
        const float li = row_sum(l[i]);
        if (r >= nq) continue;
        T *o = attn_at<T>(O, b, t0 + r, h * g.HS);
#pragma unroll
        for (int j = 0; j < NJ; j++)
            if (tx + 16 * j < g.HS) o[tx + 16 * j] = T(acc[i][j] / li);
        if (lse && tx == 0) lse[row0 + r] = m[i] + logf(li);
    }
}

/* dq of one query tile (grid as the forward's), over the key tiles its queries see.
 * Shared memory: Q, dout, K, V tiles and the dS tile (queries x keys). */
template <class T, int HSP>
__global__ void __launch_bounds__(THREADS) attention_backward_dq(cuda_attn_geom g, cuda_rows DQ, cuda_rows DO,
                                                                     cuda_rows Q, cuda_rows K, cuda_rows V,
                                                                     cuda_rows O, const float *lse) {
    constexpr int LD = HSP + 1, NJ = HSP / 16;
    extern __shared__ float smem[];
    __shared__ float Ls[TILE], Ds[TILE];
    float *Qs = smem, *dOs = Qs + TILE * LD, *Ks = dOs + TILE * LD, *Vs = Ks + TILE * LD, *dSs = Vs + TILE * LD;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int bh;
    const int t0 = TILE * attn_tile_index((g.Tq + TILE - 1) / TILE, g.B * g.NH, true, &bh);
    const int b = bh / g.NH, h = bh % g.NH, nq = min(TILE, g.Tq - t0), kc = h / g.G * g.HS;
    const int64_t row0 = ((int64_t)b * g.NH + h) * g.Tq + t0;
    int s_lo, s_hi, unused;
    attn_span(g, t0, &s_lo, &unused);
    attn_span(g, t0 + nq - 1, &unused, &s_hi);
    tile_load<T, HSP>(Qs, Q, b, t0, nq, h * g.HS, g.HS);
    tile_load<T, HSP>(dOs, DO, b, t0, nq, h * g.HS, g.HS);
    attn_row_terms<T>(Ls, Ds, g, DO, O, lse, b, h, t0);
    float acc[8][NJ] = {};
    for (int k0 = s_lo; k0 <= s_hi; k0 += TILE) {
        __syncthreads();
        tile_load<T, HSP>(Ks, K, b, k0, min(TILE, s_hi - k0 + 1), kc, g.HS);
        tile_load<T, HSP>(Vs, V, b, k0, min(TILE, s_hi - k0 + 1), kc, g.HS);
        __syncthreads();
        float S[8][4] = {}, dP[8][4] = {};
        tile_mm<4, HSP, LD, 1, LD, 1>(S, Qs, Ks);
        tile_mm<4, HSP, LD, 1, LD, 1>(dP, dOs, Vs);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int r = ty + 8 * i;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int s = k0 + tx + 16 * j;
                float dS = 0.0f;
                if (attn_visible(g, t0 + r, s)) {
                    const float P = expf(g.sc * S[i][j] - Ls[r]);
                    dS = g.sc * P * (attn_keep(g, row0 + r, s) * dP[i][j] - Ds[r]);
                }
                dSs[r * LDP + tx + 16 * j] = dS;
            }
        }
        __syncthreads();
        tile_mm<NJ, TILE, LDP, 1, 1, LD>(acc, dSs, Ks);
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int r = ty + 8 * i;
        if (r >= nq) continue;
        T *dq = attn_at<T>(DQ, b, t0 + r, h * g.HS);
#pragma unroll
        for (int j = 0; j < NJ; j++)
            if (tx + 16 * j < g.HS) dq[tx + 16 * j] = T(acc[i][j]);
    }
}

/* dk, dv of one key tile (grid: key tiles x B x NKV), over the heads of its group and the
 * query tiles that see its keys, in that order. Shared memory: K, V, Q, dout tiles and the
 * P M and dS tiles (keys x queries). */
template <class T, int HSP>
__global__ void __launch_bounds__(THREADS) attention_backward_dkdv(cuda_attn_geom g, cuda_rows DK, cuda_rows DV,
                                                                       cuda_rows DO, cuda_rows Q, cuda_rows K,
                                                                       cuda_rows V, cuda_rows O, const float *lse) {
    constexpr int LD = HSP + 1, NJ = HSP / 16;
    extern __shared__ float smem[];
    __shared__ float Ls[TILE], Ds[TILE];
    float *Ks = smem, *Vs = Ks + TILE * LD, *Qs = Vs + TILE * LD, *dOs = Qs + TILE * LD, *Ps = dOs + TILE * LD,
          *dSs = Ps + TILE * LDP;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int bk;
    const int k0 = TILE * attn_tile_index((g.Tk + TILE - 1) / TILE, g.B * g.NKV, false, &bk);
    const int b = bk / g.NKV, kh = bk % g.NKV, nk = min(TILE, g.Tk - k0), kc = kh * g.HS, off = g.Tk - g.Tq;
    /* queries that see a key of the tile: positions from k0 on, and with a window up to the
     * last key's + W - 1 */
    const int t_lo = max(0, k0 - off), t_hi = g.W > 0 ? min(g.Tq - 1, k0 + nk - 1 + g.W - 1 - off) : g.Tq - 1;
    tile_load<T, HSP>(Ks, K, b, k0, nk, kc, g.HS);
    tile_load<T, HSP>(Vs, V, b, k0, nk, kc, g.HS);
    float dk[8][NJ] = {}, dv[8][NJ] = {};
    for (int h = kh * g.G; h < (kh + 1) * g.G; h++)
        for (int t0 = t_lo; t0 <= t_hi; t0 += TILE) {
            const int64_t row0 = ((int64_t)b * g.NH + h) * g.Tq + t0;
            __syncthreads();   /* the last tile's readers are done with Q, dout, P, dS, Ls, Ds */
            tile_load<T, HSP>(Qs, Q, b, t0, min(TILE, t_hi - t0 + 1), h * g.HS, g.HS);
            tile_load<T, HSP>(dOs, DO, b, t0, min(TILE, t_hi - t0 + 1), h * g.HS, g.HS);
            attn_row_terms<T>(Ls, Ds, g, DO, O, lse, b, h, t0);
            __syncthreads();
            float S[8][4] = {}, dP[8][4] = {};   /* transposed: keys x queries */
            tile_mm<4, HSP, LD, 1, LD, 1>(S, Ks, Qs);
            tile_mm<4, HSP, LD, 1, LD, 1>(dP, Vs, dOs);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int s = k0 + ty + 8 * i;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int c = tx + 16 * j;
                    float pm = 0.0f, dS = 0.0f;
                    if (attn_visible(g, t0 + c, s)) {
                        const float P = expf(g.sc * S[i][j] - Ls[c]), M = attn_keep(g, row0 + c, s);
                        pm = P * M;
                        dS = g.sc * P * (M * dP[i][j] - Ds[c]);
                    }
                    Ps[(ty + 8 * i) * LDP + c] = pm;
                    dSs[(ty + 8 * i) * LDP + c] = dS;
                }
            }
            __syncthreads();
            tile_mm<NJ, TILE, LDP, 1, 1, LD>(dv, Ps, dOs);
            tile_mm<NJ, TILE, LDP, 1, 1, LD>(dk, dSs, Qs);
        }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int r = ty + 8 * i;
        if (r >= nk) continue;
        T *dkr = attn_at<T>(DK, b, k0 + r, kc), *dvr = attn_at<T>(DV, b, k0 + r, kc);
#pragma unroll
        for (int j = 0; j < NJ; j++)
            if (tx + 16 * j < g.HS) {
                dkr[tx + 16 * j] = T(dk[i][j]);
                dvr[tx + 16 * j] = T(dv[i][j]);
            }
    }
}

/* ---- launchers ---- */

/* Calls f(T(), std::integral_constant<int, HSP>()) with the call's element type T and the
 * kernels' head width for HS. */
template <class F> static void attn_dispatch(const cuda_attn_geom *g, F f) {
    auto width = [&](auto t) {
        if (g->HS <= 16) f(t, std::integral_constant<int, 16>());
        else if (g->HS <= 32) f(t, std::integral_constant<int, 32>());
        else if (g->HS <= 64) f(t, std::integral_constant<int, 64>());
        else f(t, std::integral_constant<int, CUDA_ATTN_MAX_HS>());
    };
    if (g->dt == DT_BF16) width(__nv_bfloat16());
    else width(0.0f);
}

#ifdef SKEIN_HAVE_CUDNN
/* Whether x->attn lets cuDNN take calls. */
static bool attn_cudnn_allowed(const cuda_ctx *x) {
    return x->attn == CUDA_ATTN_CUDNN || x->attn == CUDA_ATTN_CUDNN_NONDET;
}
#endif

void cuda_attention_forward(cuda_ctx *x, cudaStream_t s, const cuda_attn_geom *g, cuda_rows out, float *lse,
                            cuda_rows q, cuda_rows k, cuda_rows v) {
    const cuda_rows ops[] = {out, q, k, v};
#ifdef SKEIN_HAVE_CUDNN
    if (attn_cudnn_allowed(x) && cuda_cudnn_attention_forward(x, s, g, out, lse, q, k, v)) {
        x->attn_ran[0] = "cudnn";
        return;
    }
#endif
    if (x->attn != CUDA_ATTN_SIMPLE && cuda_attention_tc_fits(g, ops, 4)) {
        cuda_attention_tc_forward(s, g, out, lse, q, k, v);
        x->attn_ran[0] = "tensor-core";
        return;
    }
    x->attn_ran[0] = "tiled";
    const int64_t blocks = (int64_t)(g->Tq + TILE - 1) / TILE * g->B * g->NH;
    attn_dispatch(g, [&](auto t, auto hsp) {
        using T = decltype(t);
        constexpr int HSP = decltype(hsp)::value;
        attn_launch(attention_forward<T, HSP>, blocks, THREADS, tile_bytes(HSP, 3, 1), s, *g, out, lse, q, k, v);
    });
}

void cuda_attention_backward(cuda_ctx *x, cudaStream_t s, const cuda_attn_geom *g, cuda_rows dq, cuda_rows dk,
                             cuda_rows dv, cuda_rows dout, cuda_rows q, cuda_rows k, cuda_rows v, cuda_rows out,
                             const float *lse) {
    if ((int64_t)g->B * g->NH * g->Tq == 0) return;
    const cuda_rows ops[] = {dq, dk, dv, dout, q, k, v, out};
#ifdef SKEIN_HAVE_CUDNN
    if (attn_cudnn_allowed(x) && cuda_cudnn_attention_backward(x, s, g, x->attn == CUDA_ATTN_CUDNN, dq, dk, dv, dout,
                                                               q, k, v, out, lse)) {
        x->attn_ran[1] = "cudnn";
        return;
    }
#endif
    if (x->attn != CUDA_ATTN_SIMPLE && cuda_attention_tc_fits(g, ops, 8)) {
        cuda_attention_tc_backward(s, g, dq, dk, dv, dout, q, k, v, out, lse);
        x->attn_ran[1] = "tensor-core";
        return;
    }
    x->attn_ran[1] = "tiled";
    const int64_t qblocks = (int64_t)(g->Tq + TILE - 1) / TILE * g->B * g->NH,
                  kblocks = (int64_t)(g->Tk + TILE - 1) / TILE * g->B * g->NKV;
    attn_dispatch(g, [&](auto t, auto hsp) {
        using T = decltype(t);
        constexpr int HSP = decltype(hsp)::value;
        attn_launch(attention_backward_dq<T, HSP>, qblocks, THREADS, tile_bytes(HSP, 4, 1), s, *g, dq, dout, q, k, v, out,
                    lse);
        attn_launch(attention_backward_dkdv<T, HSP>, kblocks, THREADS, tile_bytes(HSP, 4, 2), s, *g, dk, dv, dout, q, k, v,
                    out, lse);
    });
}
