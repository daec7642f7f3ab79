/* backend/cuda: causal grouped-query attention, forward and backward, in f32, with the
 * contract of backend.h and the CPU kernel's arithmetic (backend/cpu/cpu_attention.c):
 * scores sc q.k, an online softmax in the forward keeping each row's log-sum-exp, the
 * backward recomputing P = exp(score - lse), dropout from dropout_keep over the flat
 * (B,NH,Tq,Tk) index so both directions and both backends drop the same entries.
 *
 * A plain, correct kernel (speed is the next phase's): one warp per row of work, four warps
 * a block, and a sweep over the other side in chunks of 32 with one lane per element:
 *   - forward and dq: a warp per query row (b, h, t); lane j scores key k0+j;
 *   - dk, dv: a warp per key row (b, kv head, s); lane j takes query t0+j of each head of
 *     the group, so each dk, dv row is summed by one warp in a fixed order (no atomics);
 *     D = dout . out is recomputed per (query, key) pair rather than kept in scratch.
 * In the sweep each lane computes its dot products alone (attn_dot); the warp then
 * broadcasts the lanes' coefficients (__shfl_sync) and accumulates coefficient * row into
 * the row it owns, lane l holding channels l, l+32, ... (attn_acc) in registers.
 * Invariants: every sum is in a fixed order (results are deterministic); nothing allocates;
 * HS <= CUDA_ATTN_MAX_HS; every query sees its own position, so every normalizer is > 0.
 *
 * Letters as in backend.h; Tq queries, Tk keys, G = NH/NKV heads per KV head, query t at
 * position Tk - Tq + t. */
#include "backend/cuda/cuda_impl.cuh"

#include <math.h>

#define WARPS 4                              /* rows per block */
#define CPL (CUDA_ATTN_MAX_HS / 32)          /* channels per lane */
#define FULL_MASK 0xffffffffu

__device__ static inline float *attn_at(cuda_rows r, int b, int t, int c) { return r.p + b * r.sb + t * r.st + c; }

/* Keys [*s0, *s1] that query t sees: up to its position, the W newest with a window. */
__device__ static inline void attn_span(const cuda_attn_geom &g, int t, int *s0, int *s1) {
    *s1 = g.Tk - g.Tq + t;
    *s0 = g.W > 0 && *s1 - g.W + 1 > 0 ? *s1 - g.W + 1 : 0;
}

/* The dropout scale (mask / (1-p), or 1 without dropout) of key s for query row `row`. */
__device__ static inline float attn_keep(const cuda_attn_geom &g, int64_t row, int s) {
    if (g.p <= 0.0f) return 1.0f;
    return dropout_keep(g.seed, (uint64_t)row * (uint64_t)g.Tk + (uint64_t)s, g.p) ? 1.0f / (1.0f - g.p) : 0.0f;
}

/* a . b over HS channels, by one thread. */
__device__ static inline float attn_dot(const float *a, const float *b, int HS) {
    float d = 0;
    for (int j = 0; j < HS; j++) d += a[j] * b[j];
    return d;
}

/* acc[i] += sum over j < n of coef_j * rows(j)[lane + 32 i], coef_j the coefficient of lane j
 * and rows(j) = base + j * st: the warp's accumulation into the row it owns. */
__device__ static inline void attn_acc(float acc[CPL], float coef, const float *base, int64_t st, int n, int HS) {
    const int lane = threadIdx.x % 32;
    for (int j = 0; j < n; j++) {
        const float c = __shfl_sync(FULL_MASK, coef, j);
        const float *r = base + j * st;
#pragma unroll
        for (int i = 0; i < CPL; i++)
            if (lane + 32 * i < HS) acc[i] += c * r[lane + 32 * i];
    }
}

/* dst[lane + 32 i] = acc[i] * scale (add: +=), the channels the lane owns. */
__device__ static inline void attn_store(float *dst, const float acc[CPL], float scale, bool add, int HS) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < CPL; i++) {
        const int c = lane + 32 * i;
        if (c < HS) dst[c] = add ? dst[c] + acc[i] * scale : acc[i] * scale;
    }
}

/* Copies n floats of a row into the warp's shared slot. */
__device__ static inline void attn_stage(float *dst, const float *src, int n) {
    for (int j = threadIdx.x % 32; j < n; j += 32) dst[j] = src[j];
    __syncwarp();
}

__device__ static inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ static inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

/* The query row of this warp as (b, h, t) from its flat (B,NH,Tq) index; false past the end. */
__device__ static inline bool attn_query_row(const cuda_attn_geom &g, int64_t *row, int *b, int *h, int *t) {
    *row = (int64_t)blockIdx.x * WARPS + threadIdx.x / 32;
    if (*row >= (int64_t)g.B * g.NH * g.Tq) return false;
    *t = (int)(*row % g.Tq);
    *h = (int)(*row / g.Tq % g.NH);
    *b = (int)(*row / ((int64_t)g.Tq * g.NH));
    return true;
}

/* Forward, a warp per query row: per chunk of 32 keys the chunk's maximum rescales the
 * running sum l and output; P = exp(score - m) adds to l undropped and, times the dropout
 * scale, weights v. Ends with out = acc / l and lse = m + log l. */
__global__ void attention_forward_f32(cuda_attn_geom g, cuda_rows O, float *lse, cuda_rows Q, cuda_rows K,
                                      cuda_rows V) {
    __shared__ float qs[WARPS][CUDA_ATTN_MAX_HS];
    int64_t row;
    int b, h, t;
    if (!attn_query_row(g, &row, &b, &h, &t)) return;   /* whole warps leave together */
    const int lane = threadIdx.x % 32, HS = g.HS, kc = h / g.G * HS;
    float *q = qs[threadIdx.x / 32];
    attn_stage(q, attn_at(Q, b, t, h * HS), HS);
    int s0, s1;
    attn_span(g, t, &s0, &s1);
    float m = -INFINITY, l = 0, acc[CPL] = {0};
    for (int k0 = s0; k0 <= s1; k0 += 32) {
        const int s = k0 + lane, n = s1 - k0 + 1 < 32 ? s1 - k0 + 1 : 32;
        const float score = s <= s1 ? g.sc * attn_dot(q, attn_at(K, b, s, kc), HS) : -INFINITY;
        const float mnew = fmaxf(m, warp_max(score));   /* finite: lane 0 always scores */
        const float corr = expf(m - mnew);              /* 0 on the first chunk */
        const float e = s <= s1 ? expf(score - mnew) : 0.0f;
        l = l * corr + warp_sum(e);
#pragma unroll
        for (int i = 0; i < CPL; i++) acc[i] *= corr;
        attn_acc(acc, s <= s1 ? e * attn_keep(g, row, s) : 0.0f, attn_at(V, b, k0, kc), V.st, n, HS);
        m = mnew;
    }
    attn_store(attn_at(O, b, t, h * HS), acc, 1.0f / l, false, HS);
    if (lse && lane == 0) lse[row] = m + logf(l);
}

void cuda_attention_forward(cudaStream_t s, const cuda_attn_geom *g, cuda_rows out, float *lse, cuda_rows q,
                            cuda_rows k, cuda_rows v) {
    const int64_t rows = (int64_t)g->B * g->NH * g->Tq;
    if (rows == 0) return;
    attention_forward_f32<<<(unsigned)((rows + WARPS - 1) / WARPS), WARPS * 32, 0, s>>>(*g, out, lse, q, k, v);
    CUDA_CHECK_LAUNCH();
}

/* dq, a warp per query row: dS = sc P (M dP - D) with P = exp(score - lse), M the dropout
 * scale, dP = dout . v and D = dout . out; dq += sum over keys of dS k. */
__global__ void attention_backward_dq_f32(cuda_attn_geom g, cuda_rows DQ, cuda_rows DO, cuda_rows Q, cuda_rows K,
                                          cuda_rows V, cuda_rows O, const float *lse) {
    __shared__ float qs[WARPS][CUDA_ATTN_MAX_HS], ds[WARPS][CUDA_ATTN_MAX_HS];
    int64_t row;
    int b, h, t;
    if (!attn_query_row(g, &row, &b, &h, &t)) return;
    const int lane = threadIdx.x % 32, HS = g.HS, kc = h / g.G * HS;
    float *q = qs[threadIdx.x / 32], *dout = ds[threadIdx.x / 32];
    attn_stage(q, attn_at(Q, b, t, h * HS), HS);
    attn_stage(dout, attn_at(DO, b, t, h * HS), HS);
    const float *o = attn_at(O, b, t, h * HS);
    float D = 0;
    for (int j = lane; j < HS; j += 32) D += dout[j] * o[j];
    D = warp_sum(D);
    const float L = lse[row];
    int s0, s1;
    attn_span(g, t, &s0, &s1);
    float acc[CPL] = {0};
    for (int k0 = s0; k0 <= s1; k0 += 32) {
        const int s = k0 + lane, n = s1 - k0 + 1 < 32 ? s1 - k0 + 1 : 32;
        float dS = 0;
        if (s <= s1) {
            const float P = expf(g.sc * attn_dot(q, attn_at(K, b, s, kc), HS) - L);
            const float dP = attn_dot(dout, attn_at(V, b, s, kc), HS);
            dS = g.sc * P * (attn_keep(g, row, s) * dP - D);
        }
        attn_acc(acc, dS, attn_at(K, b, k0, kc), K.st, n, HS);
    }
    attn_store(attn_at(DQ, b, t, h * HS), acc, 1.0f, true, HS);
}

/* dk, dv, a warp per key row (b, kv head, s): over the heads of the group and the queries
 * that see s (positions s .. s+W-1 with a window), dv += (P M) dout and dk += dS q. */
__global__ void attention_backward_dkdv_f32(cuda_attn_geom g, cuda_rows DK, cuda_rows DV, cuda_rows DO,
                                            cuda_rows Q, cuda_rows K, cuda_rows V, cuda_rows O, const float *lse) {
    __shared__ float ks[WARPS][CUDA_ATTN_MAX_HS], vs[WARPS][CUDA_ATTN_MAX_HS];
    const int64_t krow = (int64_t)blockIdx.x * WARPS + threadIdx.x / 32;
    if (krow >= (int64_t)g.B * g.NKV * g.Tk) return;
    const int s = (int)(krow % g.Tk), kh = (int)(krow / g.Tk % g.NKV), b = (int)(krow / ((int64_t)g.Tk * g.NKV));
    const int lane = threadIdx.x % 32, HS = g.HS, kc = kh * HS, off = g.Tk - g.Tq;
    float *k = ks[threadIdx.x / 32], *v = vs[threadIdx.x / 32];
    attn_stage(k, attn_at(K, b, s, kc), HS);
    attn_stage(v, attn_at(V, b, s, kc), HS);
    int t_lo = s - off > 0 ? s - off : 0, t_hi = g.Tq - 1;
    if (g.W > 0 && s + g.W - 1 - off < t_hi) t_hi = s + g.W - 1 - off;
    float dk[CPL] = {0}, dv[CPL] = {0};
    for (int h = kh * g.G; h < (kh + 1) * g.G; h++)
        for (int t0 = t_lo; t0 <= t_hi; t0 += 32) {
            const int t = t0 + lane, n = t_hi - t0 + 1 < 32 ? t_hi - t0 + 1 : 32;
            float pm = 0, dS = 0;
            if (t <= t_hi) {
                const int64_t row = ((int64_t)b * g.NH + h) * g.Tq + t;
                const float *dout = attn_at(DO, b, t, h * HS);
                const float P = expf(g.sc * attn_dot(attn_at(Q, b, t, h * HS), k, HS) - lse[row]);
                const float M = attn_keep(g, row, s);
                const float D = attn_dot(dout, attn_at(O, b, t, h * HS), HS);
                pm = P * M;
                dS = g.sc * P * (M * attn_dot(dout, v, HS) - D);
            }
            attn_acc(dv, pm, attn_at(DO, b, t0, h * HS), DO.st, n, HS);
            attn_acc(dk, dS, attn_at(Q, b, t0, h * HS), Q.st, n, HS);
        }
    attn_store(attn_at(DK, b, s, kc), dk, 1.0f, true, HS);
    attn_store(attn_at(DV, b, s, kc), dv, 1.0f, true, HS);
}

void cuda_attention_backward(cudaStream_t s, const cuda_attn_geom *g, cuda_rows dq, cuda_rows dk, cuda_rows dv,
                             cuda_rows dout, cuda_rows q, cuda_rows k, cuda_rows v, cuda_rows out,
                             const float *lse) {
    const int64_t qrows = (int64_t)g->B * g->NH * g->Tq, krows = (int64_t)g->B * g->NKV * g->Tk;
    if (qrows == 0) return;
    attention_backward_dq_f32<<<(unsigned)((qrows + WARPS - 1) / WARPS), WARPS * 32, 0, s>>>(*g, dq, dout, q, k, v,
                                                                                              out, lse);
    CUDA_CHECK_LAUNCH();
    attention_backward_dkdv_f32<<<(unsigned)((krows + WARPS - 1) / WARPS), WARPS * 32, 0, s>>>(*g, dk, dv, dout, q,
                                                                                                k, v, out, lse);
    CUDA_CHECK_LAUNCH();
}
