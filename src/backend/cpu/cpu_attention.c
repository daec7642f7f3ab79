/* backend/cpu: causal grouped-query attention, forward and backward, for every model
 * family (GPT-2 is the case NKV = NH over column slices of its packed qkv) and for training
 * and KV-cached inference alike (fewer queries than keys). Contracts in backend.h.
 *
 * Both directions work on tiles of ATTN_QB queries of one head against ATTN_KB keys; the
 * tile products are small GEMMs (attn_gemm: OpenBLAS, single-threaded inside our parallel
 * loops). The forward runs an online softmax over the key tiles: per query a running maximum
 * m and normalizer l, its output row rescaled when a tile raises the maximum; it keeps only
 * the row's log-sum-exp m + log l. The backward recomputes each probability as
 * exp(score - lse), as flash attention does, so no (Tq,Tk) buffer exists: the scratch is two
 * (ATTN_QB,ATTN_KB) tiles on each thread's stack.
 *
 * Invariants: one thread computes a whole tile of output rows in the forward. In the backward
 * one thread owns a (batch, KV head) pair -- the dk, dv rows of that KV head and the dq rows
 * of its query heads, which it clears first (the backward writes them) -- and walks its heads
 * and query tiles in order, so the sums are
 * race-free and independent of the thread count. Dropout keeps key s of query t in head h of
 * sample b when dropout_keep(seed, ((b*NH + h)*Tq + t)*Tk + s, p): the flat index of a
 * (B,NH,Tq,Tk) probability tensor, a pure function the backward evaluates again. Every query
 * sees at least its own position, so every normalizer is positive.
 *
 * The paged cache may hold bf16 or f16 keys and values (--kv-cache-dtype) under f32 queries
 * and outputs: decode converts them inside its vectorized dot and axpy loops (attn_dot,
 * attn_axpy), prefill as it gathers a key tile (attn_key_rows); every sum is then the f32
 * path's over the converted values, in the same order.
 *
 * Letters as in backend.h; Tq queries, Tk keys, G = NH/NKV query heads per KV head, and the
 * query t sits at position Tk - Tq + t. */
#include "backend/cpu/cpu_impl.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* Queries and keys per tile: two tiles of scores live on each thread's stack. */
#define ATTN_QB 64
#define ATTN_KB 64

/* Widest head a paged cache's key tiles are gathered for (attn_key_rows). */
#define ATTN_HS_MAX 256

/* Most query heads one decode work item covers (attn_rows_forward's scores on the stack). */
#define ATTN_HG_MAX 64

/* Tiles of fewer queries than this (decode: one) multiply in plain loops, not OpenBLAS. */
#define ATTN_BLAS_MIN_ROWS 4

/* A (B,T,D) view as its base pointer, dtype and batch and row strides (elements); or, for the
 * paged cache, rows through a block table: time t is row blk[t / bs] * bs + t % bs (blk NULL:
 * t itself). Only the paged cache may be other than f32 (bf16, f16). */
typedef struct attn_rows { void *p; int64_t sb, st; const int *blk; int bs; dtype dt; } attn_rows;

/* The view t, asserted to be f32 of shape (B,T,D) with contiguous rows. */
static attn_rows attn_rows_of(tensor t, int64_t B, int64_t T, int64_t D) {
    SK_ASSERT(t.dt == DT_F32 && t.ndim == 3 && t.shape[0] == B && t.shape[1] == T && t.shape[2] == D);
    SK_ASSERT(t.stride[2] == 1 || D == 1);
    attn_rows r = {tensor_f32(t), t.stride[0], t.stride[1], NULL, 0, DT_F32};
    return r;
}

/* The element offset of row t of sample b, at channel c. */
static inline int64_t attn_off(attn_rows r, int b, int t, int c) {
    if (r.blk) t = r.blk[t / r.bs] * r.bs + t % r.bs;
    return b * r.sb + (int64_t)t * r.st + c;
}

/* Row t of sample b, at channel c, of an f32 view. */
static inline float *attn_at(attn_rows r, int b, int t, int c) { return (float *)r.p + attn_off(r, b, t, c); }

/* q[0..n) . x[0..n) for n elements x of dtype dt (f32, bf16, f16), converted as they are read. */
static inline float attn_dot(const float *restrict q, const void *x, dtype dt, int n) {
    float d = 0;
    if (dt == DT_F32) {
        const float *restrict k = x;
#pragma omp simd reduction(+ : d)
        for (int c = 0; c < n; c++) d += q[c] * k[c];
    } else if (dt == DT_BF16) {
        const uint16_t *restrict k = x;
#pragma omp simd reduction(+ : d)
        for (int c = 0; c < n; c++) d += q[c] * bf16_to_f32(k[c]);
    } else {
        const uint16_t *restrict k = x;
#pragma omp simd reduction(+ : d)
        for (int c = 0; c < n; c++) d += q[c] * cpu_f16_to_f32(k[c]);
    }
    return d;
}

/* o[0..n) += p x[0..n), x as in attn_dot. */
static inline void attn_axpy(float *restrict o, float p, const void *x, dtype dt, int n) {
    if (dt == DT_F32) {
        const float *restrict v = x;
#pragma omp simd
        for (int c = 0; c < n; c++) o[c] += p * v[c];
    } else if (dt == DT_BF16) {
        const uint16_t *restrict v = x;
#pragma omp simd
        for (int c = 0; c < n; c++) o[c] += p * bf16_to_f32(v[c]);
    } else {
        const uint16_t *restrict v = x;
#pragma omp simd
        for (int c = 0; c < n; c++) o[c] += p * cpu_f16_to_f32(v[c]);
    }
}

/* Keys in a tile starting at k0: ATTN_KB, or the `left` there are. */
static inline int attn_key_tile(int left) { return left < ATTN_KB ? left : ATTN_KB; }

/* Rows [k0, k0+nk) of sample b from channel c, D wide, as a (nk, D) f32 matrix with row
 * stride *ld for OpenBLAS: in place for a plain view (evenly spaced rows); for the paged cache,
 * whose rows jump at each block, copied into tile (ATTN_KB x ATTN_HS_MAX), converted from
 * bf16/f16 on the way, so that a key tile spans blocks. */
static const float *attn_key_rows(attn_rows R, int b, int k0, int nk, int c, int D, float *tile, int *ld) {
    if (!R.blk) {
        *ld = (int)R.st;
        return attn_at(R, b, k0, c);
    }
    for (int j = 0; j < nk; j++) {
        const int64_t off = attn_off(R, b, k0 + j, c);
        if (R.dt == DT_F32) memcpy(tile + (size_t)j * D, (const float *)R.p + off, (size_t)D * sizeof(float));
        else cpu_half_to_f32(tile + (size_t)j * D, (const uint16_t *)R.p + off, R.dt, D);
    }
    *ld = D;
    return tile;
}

/* The lse view, asserted to be f32 (B,NH,Tq) and contiguous. */
static float *attn_lse_of(tensor lse, int B, int NH, int Tq) {
    SK_ASSERT(lse.dt == DT_F32 && lse.ndim == 3 && lse.shape[0] == B && lse.shape[1] == NH &&
              lse.shape[2] == Tq && tensor_is_contiguous(lse));
    return tensor_f32(lse);
}

/* The shapes of one call, checked once, and its window and dropout. */
typedef struct attn_geom {
    int B, Tq, Tk, NH, NKV, G, HS, W;
    float sc;      /* 1/sqrt(HS) */
    float p;       /* dropout probability */
    uint64_t seed;
} attn_geom;

static attn_geom attn_geom_of(tensor q, tensor k, int NH, int NKV, int W, float p, uint64_t seed) {
    SK_ASSERT(q.ndim == 3 && k.ndim == 3 && NH > 0 && NKV > 0 && NH % NKV == 0 && q.shape[2] % NH == 0);
    SK_ASSERT(W >= 0 && p >= 0.0f && p < 1.0f);
    attn_geom g = {(int)q.shape[0], (int)q.shape[1], (int)k.shape[1], NH, NKV, NH / NKV, (int)(q.shape[2] / NH),
                   W, 0.0f, p, seed};
    SK_ASSERT(g.Tq <= g.Tk && g.HS > 0);
    g.sc = 1.0f / sqrtf((float)g.HS);
    return g;
}

/* Keys [*s0, *s1] that query t sees: up to its position, and the W newest with a window. */
static inline void attn_span(const attn_geom *g, int t, int *s0, int *s1) {
    *s1 = g->Tk - g->Tq + t;
    *s0 = g->W > 0 && *s1 - g->W + 1 > 0 ? *s1 - g->W + 1 : 0;
}

/* A tile: queries [t0, t0+nq) of head h in sample b, and the keys [k_lo, k_hi] any of them sees. */
typedef struct attn_tile { int b, h, t0, nq, k_lo, k_hi; } attn_tile;

static attn_tile attn_tile_of(const attn_geom *g, int b, int h, int t0) {
    attn_tile x = {b, h, t0, g->Tq - t0 < ATTN_QB ? g->Tq - t0 : ATTN_QB, 0, 0};
    int unused;
    attn_span(g, t0, &x.k_lo, &unused);
    attn_span(g, t0 + x.nq - 1, &unused, &x.k_hi);
    return x;
}

/* Row i of a tile of scaled scores over keys [k0, k0+nk): the columns [*j0, *j1] its query
 * sees (*j1 < *j0: none). */
static inline void attn_cols(const attn_geom *g, const attn_tile *x, int i, int k0, int nk, int *j0, int *j1) {
    int s0, s1;
    attn_span(g, x->t0 + i, &s0, &s1);
    *j0 = s0 - k0 > 0 ? s0 - k0 : 0;
    *j1 = s1 - k0 < nk - 1 ? s1 - k0 : nk - 1;
}

/* s[j] = exp(s[j] - ref) for the visible columns j0..j1 and 0 for the others (of nk);
 * returns their sum. */
static inline float attn_exp_row(float *s, int nk, int j0, int j1, float ref) {
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < nk; j++) {
        s[j] = j >= j0 && j <= j1 ? cpu_expf(s[j] - ref) : 0.0f;
        sum += s[j];
    }
    return sum;
}

/* Dropout scale of columns j0..j1 of query row `row` (its flat (B,NH,Tq) index) over keys
 * from k0: mask / (1-p). */
static inline void attn_drop_row(const attn_geom *g, float *scale, size_t row, int k0, int j0, int j1) {
    const float keep = 1.0f / (1.0f - g->p);
    const uint64_t base = (uint64_t)row * (uint64_t)g->Tk + (uint64_t)k0;
    for (int j = j0; j <= j1; j++) scale[j] = dropout_keep(g->seed, base + (uint64_t)j, g->p) ? keep : 0.0f;
}

/* C(M,N) = alpha op(A) op(B) + beta C, row-major, as cblas_sgemm (beta 0: C is not read).
 * Fewer than ATTN_BLAS_MIN_ROWS rows go through plain loops: OpenBLAS packs its operands
 * first, which costs more than a product of one row. */
static void attn_gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    if (M >= ATTN_BLAS_MIN_ROWS) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha,
                    A, lda, B, ldb, beta, C, ldc);
        return;
    }
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (tb) {   /* B is (N,K): a dot product per column */
            for (int j = 0; j < N; j++) {
                const float *b = B + (size_t)j * ldb;
                float d = 0;
#pragma omp simd reduction(+ : d)
                for (int k = 0; k < K; k++) d += (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) * b[k];
                cpu_store_scaled(&c[j], d, alpha, beta);
            }
        } else {    /* B is (K,N): a sum of its rows */
            for (int j = 0; j < N; j++) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
            for (int k = 0; k < K; k++) {
                const float a = alpha * (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
                const float *b = B + (size_t)k * ldb;
#pragma omp simd
                for (int j = 0; j < N; j++) c[j] += a * b[j];
            }
        }
    }
}

/* The forward of one tile, with the online softmax over its key tiles:
 * S = sc q k^T; per row a new maximum rescales the row's l and output; P = exp(S - m)
 * (times the dropout scale) accumulates into out += P v. Ends with out /= l and, when L is
 * not NULL, L[row] = m + log l. */
static void attn_tile_forward(const attn_geom *g, const attn_tile *x, attn_rows Q, attn_rows K, attn_rows V,
                              attn_rows O, float *L) {
    const int HS = g->HS, c = x->h / g->G * HS;
    float S[ATTN_QB * ATTN_KB], m[ATTN_QB], l[ATTN_QB], scale[ATTN_KB];
    const float *q = attn_at(Q, x->b, x->t0, x->h * HS);
    float *o = attn_at(O, x->b, x->t0, x->h * HS);
    for (int i = 0; i < x->nq; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
        for (int j = 0; j < HS; j++) o[i * O.st + j] = 0.0f;
    }
    float Kt[ATTN_KB * ATTN_HS_MAX], Vt[ATTN_KB * ATTN_HS_MAX];   /* a paged key tile, gathered */
    SK_ASSERT(!K.blk || HS <= ATTN_HS_MAX);
    for (int k0 = x->k_lo, nk; k0 <= x->k_hi; k0 += nk) {
        nk = attn_key_tile(x->k_hi - k0 + 1);
        int ldk, ldv;
        const float *kt = attn_key_rows(K, x->b, k0, nk, c, HS, Kt, &ldk);
        attn_gemm(false, true, x->nq, nk, HS, g->sc, q, (int)Q.st, kt, ldk, 0.0f, S, ATTN_KB);
        for (int i = 0; i < x->nq; i++) {
            float *si = S + i * ATTN_KB, *oi = o + i * O.st, bm = -INFINITY;
            int j0, j1;
            attn_cols(g, x, i, k0, nk, &j0, &j1);
            for (int j = j0; j <= j1; j++) bm = si[j] > bm ? si[j] : bm;
            if (bm > m[i]) {   /* rescale what earlier key tiles summed (nothing before the first) */
                const float corr = l[i] > 0 ? cpu_expf(m[i] - bm) : 0.0f;
                l[i] *= corr;
#pragma omp simd
                for (int j = 0; j < HS; j++) oi[j] *= corr;
                m[i] = bm;
            }
            l[i] += attn_exp_row(si, nk, j0, j1, m[i]);
            if (g->p > 0 && j0 <= j1) {
                attn_drop_row(g, scale, ((size_t)x->b * g->NH + x->h) * g->Tq + x->t0 + i, k0, j0, j1);
                for (int j = j0; j <= j1; j++) si[j] *= scale[j];
            }
        }
        const float *vt = attn_key_rows(V, x->b, k0, nk, c, HS, Vt, &ldv);
        attn_gemm(false, false, x->nq, HS, nk, 1.0f, S, ATTN_KB, vt, ldv, 1.0f, o, (int)O.st);
    }
    for (int i = 0; i < x->nq; i++) {
        const float inv = 1.0f / l[i];
        float *oi = o + i * O.st;
#pragma omp simd
        for (int j = 0; j < HS; j++) oi[j] *= inv;
        if (L) L[((size_t)x->b * g->NH + x->h) * g->Tq + x->t0 + i] = m[i] + logf(l[i]);
    }
}

void cpu_attention_forward(backend *be, backend_stream *s, tensor out, tensor lse, tensor q, tensor k,
                           tensor v, int NH, int NKV, int W, float p, uint64_t seed) {
    const attn_geom g = attn_geom_of(q, k, NH, NKV, W, p, seed);
    const int QD = NH * g.HS, KD = NKV * g.HS, ntiles = (g.Tq + ATTN_QB - 1) / ATTN_QB;
    const attn_rows Q = attn_rows_of(q, g.B, g.Tq, QD), K = attn_rows_of(k, g.B, g.Tk, KD),
                    V = attn_rows_of(v, g.B, g.Tk, KD), O = attn_rows_of(out, g.B, g.Tq, QD);
    float *L = tensor_is_none(lse) ? NULL : attn_lse_of(lse, g.B, NH, g.Tq);
#pragma omp parallel for collapse(3) schedule(dynamic, 1) \
    if ((size_t)g.B * NH * g.Tq * g.Tk * g.HS > CPU_PAR_MIN)
    for (int b = 0; b < g.B; b++)
        for (int h = 0; h < NH; h++)
            for (int n = 0; n < ntiles; n++) {
                const attn_tile x = attn_tile_of(&g, b, h, n * ATTN_QB);
                attn_tile_forward(&g, &x, Q, K, V, O, L);
            }
}

/* Decode: the nq (< ATTN_BLAS_MIN_ROWS) query rows of one sequence (geometry g, B = 1), heads
 * [h0, h1) at once, over the keys [k_from, k_to] of each query's span, walking its key and value
 * rows front to back in tiles of ATTN_KB: each row is read once for all those heads (whole
 * rows of the cache, not one head's slice at a time), with the online softmax of
 * attn_tile_forward per head. ml NULL: O gets the output rows. Else O gets them unnormalized
 * and ml[(t NH + h) 2] the head's maximum m and normalizer l (-inf and 0 where the query sees
 * none of those keys), for attn_merge_parts. A head's result depends only on its own query,
 * keys and values and the tile boundaries (from max(k_from, its first visible key)), so not on
 * h0, h1. */
static void attn_rows_forward(const attn_geom *g, int h0, int h1, int k_from, int k_to, attn_rows Q, attn_rows K,
                              attn_rows V, attn_rows O, float *ml) {
    const int HS = g->HS, nh = h1 - h0;
    float S[ATTN_HG_MAX * ATTN_KB], m[ATTN_HG_MAX], l[ATTN_HG_MAX];
    const size_t ek = dtype_size(K.dt);
    SK_ASSERT(nh > 0 && nh <= ATTN_HG_MAX && K.dt == V.dt);
    for (int t = 0; t < g->Tq; t++) {
        const float *q = attn_at(Q, 0, t, 0);
        float *o = attn_at(O, 0, t, 0);
        int s0, s1;
        attn_span(g, t, &s0, &s1);
        s0 = s0 > k_from ? s0 : k_from;
        s1 = s1 < k_to ? s1 : k_to;
        for (int i = 0; i < nh; i++) {
            m[i] = -INFINITY;
            l[i] = 0.0f;
        }
        memset(o + (size_t)h0 * HS, 0, (size_t)nh * HS * sizeof(float));
        for (int k0 = s0, nk; k0 <= s1; k0 += nk) {
            nk = attn_key_tile(s1 - k0 + 1);
            for (int j = 0; j < nk; j++) {
                const char *kr = (const char *)K.p + attn_off(K, 0, k0 + j, 0) * ek;
                for (int h = h0; h < h1; h++)
                    S[(h - h0) * ATTN_KB + j] = g->sc * attn_dot(q + (size_t)h * HS, kr + (size_t)(h / g->G) * HS * ek, K.dt, HS);
            }
            for (int i = 0; i < nh; i++) {
                float *si = S + i * ATTN_KB, *oi = o + (size_t)(h0 + i) * HS, bm = -INFINITY;
                for (int j = 0; j < nk; j++) bm = si[j] > bm ? si[j] : bm;
                if (bm > m[i]) {
                    const float corr = l[i] > 0 ? cpu_expf(m[i] - bm) : 0.0f;
                    l[i] *= corr;
#pragma omp simd
                    for (int c = 0; c < HS; c++) oi[c] *= corr;
                    m[i] = bm;
                }
                l[i] += attn_exp_row(si, nk, 0, nk - 1, m[i]);
            }
            for (int j = 0; j < nk; j++) {
                const char *vr = (const char *)V.p + attn_off(V, 0, k0 + j, 0) * ek;
                for (int h = h0; h < h1; h++)
                    attn_axpy(o + (size_t)h * HS, S[(h - h0) * ATTN_KB + j], vr + (size_t)(h / g->G) * HS * ek, V.dt, HS);
            }
        }
        for (int i = 0; i < nh; i++) {
            if (ml) {
                ml[((size_t)t * g->NH + h0 + i) * 2] = m[i];
                ml[((size_t)t * g->NH + h0 + i) * 2 + 1] = l[i];
                continue;
            }
            const float inv = 1.0f / l[i];
            float *oi = o + (size_t)(h0 + i) * HS;
#pragma omp simd
            for (int c = 0; c < HS; c++) oi[c] *= inv;
        }
    }
}

/* A decode sequence's parts: its keys from its first query's first visible key to its last
 * query's position, cut every ATTN_PART keys. A part is a work item reading whole cache rows
 * front to back (a block's rows lie together, which the hardware prefetchers follow), so one
 * stream's attention spreads over the threads without cutting the rows into head slices (at
 * ctx 1000, 12 GPT-2 heads in 4 slices on 2 threads read 10.5 GB/s; whole rows on one thread
 * 12.6). The parts merge in order: the result depends on neither the threads nor the other
 * sequences. */
#define ATTN_PART ATTN_KB

/* Floats of one part's partial state: up to ATTN_BLAS_MIN_ROWS - 1 queries of NH heads, HS
 * unnormalized outputs each, then (m, l) each. */
static size_t attn_part_floats(int NH, int HS) { return (size_t)(ATTN_BLAS_MIN_ROWS - 1) * NH * (HS + 2); }

/* Where a part's (m, l) pairs start within its state: after its output rows. */
static size_t attn_part_ml(int NH, int HS) { return (size_t)(ATTN_BLAS_MIN_ROWS - 1) * NH * HS; }

/* The nq output rows (ldo apart, NH heads of HS) of a sequence from its np parts' states,
 * attn_part_floats apart from part: per query and head each part weighs e^(m_p - M) (M the
 * largest m, 0 for a part that saw no key), summed in part order. */
static void attn_merge_parts(float *out, int64_t ldo, int nq, int NH, int HS, const float *part, int np) {
    const size_t pf = attn_part_floats(NH, HS), mlo = attn_part_ml(NH, HS);
    for (int t = 0; t < nq; t++)
        for (int h = 0; h < NH; h++) {
            const size_t ml = mlo + ((size_t)t * NH + h) * 2, oo = ((size_t)t * NH + h) * HS;
            float M = -INFINITY, L = 0.0f;
            for (int p = 0; p < np; p++) M = part[p * pf + ml] > M ? part[p * pf + ml] : M;
            for (int p = 0; p < np; p++)
                if (part[p * pf + ml + 1] > 0) L += part[p * pf + ml + 1] * cpu_expf(part[p * pf + ml] - M);
            float *o = out + (int64_t)t * ldo + (int64_t)h * HS;
            memset(o, 0, sizeof(float) * (size_t)HS);
            for (int p = 0; p < np; p++) {
                if (!(part[p * pf + ml + 1] > 0)) continue;
                const float w = cpu_expf(part[p * pf + ml] - M) / L, *op = part + p * pf + oo;
#pragma omp simd
                for (int c = 0; c < HS; c++) o[c] += w * op[c];
            }
        }
}

/* At least n floats of the backend's part scratch (contents undefined), or NULL + sk_fail. */
static float *attn_parts_scratch(backend *be, size_t n) {
    cpu_impl *impl = be->impl;
    if (impl->parts_floats < n) {
        mem_free(impl->parts);
        impl->parts_floats = 0;
        if (!(impl->parts = mem_alloc(n * sizeof(float)))) return NULL;
        impl->parts_floats = n;
    }
    return impl->parts;
}

/* The views of sequence i (its rows from r0 in q and out, its cache rows through its block
 * table blk) for the kernels above, whose geometry has B = 1. */
static void attn_seq_views(tensor q, tensor out, tensor k_cache, tensor v_cache, const int *blk, int BS, int r0,
                           attn_rows *Q, attn_rows *O, attn_rows *K, attn_rows *V) {
    *Q = (attn_rows){tensor_f32(q) + (int64_t)r0 * q.stride[0], 0, q.stride[0], NULL, 0, DT_F32};
    *O = (attn_rows){tensor_f32(out) + (int64_t)r0 * out.stride[0], 0, out.stride[0], NULL, 0, DT_F32};
    *K = (attn_rows){k_cache.data, 0, k_cache.stride[0], blk, BS, k_cache.dt};
    *V = (attn_rows){v_cache.data, 0, v_cache.stride[0], blk, BS, v_cache.dt};
}

/* Work items: each decode sequence's (head group of at most ATTN_HG_MAX query heads, part)
 * pairs, then each prefill sequence's (head group) of NG groups, as few as keep every thread
 * busy and at most ATTN_HG_MAX query heads each: its heads' query tiles run through the tile
 * kernel above, its K and V rows through its block table (a sequence's geometry is
 * attention_forward's with B = 1, Tq = nq, Tk = ctx). A decode sequence of one part writes its
 * rows at once; of more, its parts' states go to the backend's part scratch and merge after. */
void cpu_paged_attention(backend *be, backend_stream *s, tensor out, tensor q, tensor k_cache, tensor v_cache,
                         tensor seqs, tensor tables, int BS, int NH, int NKV, int W) {
    SK_ASSERT(q.ndim == 2 && out.ndim == 2 && k_cache.ndim == 2 && v_cache.ndim == 2 && BS > 0);
    SK_ASSERT(seqs.ndim == 2 && seqs.shape[1] == 3 && tensor_is_contiguous(seqs) && tables.ndim == 2 &&
              tensor_is_contiguous(tables) && tables.shape[0] == seqs.shape[0]);
    const int S = (int)seqs.shape[0], MB = (int)tables.shape[1], N = (int)q.shape[0];
    const int QD = (int)q.shape[1], HS = QD / NH, KD = NKV * HS, R = (int)k_cache.shape[0];
    SK_ASSERT(NH > 0 && NKV > 0 && NH % NKV == 0 && QD % NH == 0 && HS > 0 && W >= 0 && NH / NKV <= ATTN_HG_MAX);
    SK_ASSERT(tensor_same_shape(q, out) && k_cache.shape[1] == KD && tensor_same_shape(k_cache, v_cache));
    SK_ASSERT(q.stride[1] == 1 && out.stride[1] == 1 && k_cache.stride[1] == 1 && v_cache.stride[1] == 1);
    SK_ASSERT(k_cache.dt == v_cache.dt && (k_cache.dt == DT_F32 || k_cache.dt == DT_BF16 || k_cache.dt == DT_F16));
    const int *sq = tensor_i32(seqs), *bt = tensor_i32(tables), G = NH / NKV;
    const float sc = 1.0f / sqrtf((float)HS);
    int *first = mem_alloc(sizeof(int) * ((size_t)S + 1));   /* decode parts before sequence i */
    SK_ASSERT(first);
    size_t work = 0;
    bool multi = false;   /* some sequence has more than one part */
    int n_prefill = 0;
    first[0] = 0;
    for (int i = 0; i < S; i++) {
        const int r0 = sq[3 * i], nq = sq[3 * i + 1], ctx = sq[3 * i + 2];
        SK_ASSERT(r0 >= 0 && nq > 0 && r0 + nq <= N && nq <= ctx && (ctx + BS - 1) / BS <= MB);
        for (int b = 0; b < (ctx + BS - 1) / BS; b++) SK_ASSERT(bt[(size_t)i * MB + b] >= 0 && (bt[(size_t)i * MB + b] + 1) * BS <= R);
        work += (size_t)nq * ctx;
        int np = 0;
        if (nq < ATTN_BLAS_MIN_ROWS) {
            const attn_geom g = {1, nq, ctx, NH, NKV, G, HS, W, sc, 0.0f, 0};
            int s0, s1, unused;
            attn_span(&g, 0, &s0, &unused);
            attn_span(&g, nq - 1, &unused, &s1);
            np = (s1 - s0 + ATTN_PART) / ATTN_PART;
            multi = multi || np > 1;
        } else n_prefill++;
        first[i + 1] = first[i] + np;
    }
    float *parts = multi ? attn_parts_scratch(be, (size_t)first[S] * attn_part_floats(NH, HS)) : NULL;
    SK_ASSERT(!multi || parts);   /* a few KB a part, held by the backend */
    const bool par = work * NH * HS > CPU_PAR_MIN;
    const int fit = (NH + ATTN_HG_MAX - 1) / ATTN_HG_MAX, NGd = fit < NKV ? fit : NKV;
    const int want = par && n_prefill ? (2 * omp_get_max_threads() + n_prefill - 1) / n_prefill : 1;
    const int NG = want > fit ? (want < NKV ? want : NKV) : NGd;
    const int n_decode = first[S] * NGd;
#pragma omp parallel if (par)
    {
#pragma omp for schedule(dynamic, 1) nowait
        for (int it = 0; it < n_decode; it++) {
            const int fp = it / NGd, gi = it % NGd;
            int i = 0;   /* the sequence of flat part fp: the first i with fp < first[i + 1] */
            for (int hi = S; i < hi;) {
                const int mid = (i + hi) / 2;
                if (first[mid + 1] <= fp) i = mid + 1;
                else hi = mid;
            }
            const int r0 = sq[3 * i], nq = sq[3 * i + 1], ctx = sq[3 * i + 2], np = first[i + 1] - first[i];
            const int p = fp - first[i], h0 = (int)((long)NKV * gi / NGd) * G, h1 = (int)((long)NKV * (gi + 1) / NGd) * G;
            const attn_geom g = {1, nq, ctx, NH, NKV, G, HS, W, sc, 0.0f, 0};
            int s0, unused;
            attn_span(&g, 0, &s0, &unused);
            attn_rows Q, O, K, V;
            attn_seq_views(q, out, k_cache, v_cache, bt + (size_t)i * MB, BS, r0, &Q, &O, &K, &V);
            if (np == 1) {
                attn_rows_forward(&g, h0, h1, s0, INT_MAX, Q, K, V, O, NULL);
            } else {   /* into the part's state: QD-wide rows, then (m, l) */
                float *st = parts + (size_t)fp * attn_part_floats(NH, HS);
                const attn_rows P = {st, 0, QD, NULL, 0, DT_F32};
                attn_rows_forward(&g, h0, h1, s0 + p * ATTN_PART, s0 + (p + 1) * ATTN_PART - 1, Q, K, V, P,
                                  st + attn_part_ml(NH, HS));
            }
        }
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int i = 0; i < S; i++)
            for (int gi = 0; gi < NG; gi++) {
                const int r0 = sq[3 * i], nq = sq[3 * i + 1], ctx = sq[3 * i + 2];
                if (nq < ATTN_BLAS_MIN_ROWS) continue;
                const int h0 = (int)((long)NKV * gi / NG) * G, h1 = (int)((long)NKV * (gi + 1) / NG) * G;
                const attn_geom g = {1, nq, ctx, NH, NKV, G, HS, W, sc, 0.0f, 0};
                attn_rows Q, O, K, V;
                attn_seq_views(q, out, k_cache, v_cache, bt + (size_t)i * MB, BS, r0, &Q, &O, &K, &V);
                for (int h = h0; h < h1; h++)
                    for (int t0 = 0; t0 < nq; t0 += ATTN_QB) {
                        const attn_tile x = attn_tile_of(&g, 0, h, t0);
                        attn_tile_forward(&g, &x, Q, K, V, O, NULL);
                    }
            }
#pragma omp for schedule(static)
        for (int i = 0; i < S; i++)
            if (first[i + 1] - first[i] > 1)
                attn_merge_parts(tensor_f32(out) + (int64_t)sq[3 * i] * out.stride[0], out.stride[0], sq[3 * i + 1], NH,
                                 HS, parts + (size_t)first[i] * attn_part_floats(NH, HS), first[i + 1] - first[i]);
    }
    mem_free(first);
}

/* The backward of one tile, per key tile, with P = exp(S - lse) recomputed, M the dropout
 * scale (mask / (1-p), or 1) and D = rowsum(dout * out):
 *   dP = dout v^T;  dS = sc P (M dP - D);  dv += (P M)^T dout;  dk += dS^T q;  dq += dS k
 * into rows attn_rows_zero cleared first. (D = sum over keys of P M dP, the softmax's row
 * term, because out = (P M) v.) */
static void attn_tile_backward(const attn_geom *g, const attn_tile *x, attn_rows Q, attn_rows K, attn_rows V,
                               attn_rows O, attn_rows DO, attn_rows DQ, attn_rows DK, attn_rows DV,
                               const float *L) {
    const int HS = g->HS, c = x->h / g->G * HS;
    const size_t row0 = ((size_t)x->b * g->NH + x->h) * g->Tq + x->t0;
    float P[ATTN_QB * ATTN_KB], dS[ATTN_QB * ATTN_KB], D[ATTN_QB], scale[ATTN_KB];
    const float *q = attn_at(Q, x->b, x->t0, x->h * HS), *dout = attn_at(DO, x->b, x->t0, x->h * HS);
    float *dq = attn_at(DQ, x->b, x->t0, x->h * HS);
    for (int i = 0; i < x->nq; i++) {
        const float *d = dout + i * DO.st, *o = attn_at(O, x->b, x->t0 + i, x->h * HS);
        float sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < HS; j++) sum += d[j] * o[j];
        D[i] = sum;
    }
    for (int k0 = x->k_lo; k0 <= x->k_hi; k0 += ATTN_KB) {
        const int nk = x->k_hi - k0 + 1 < ATTN_KB ? x->k_hi - k0 + 1 : ATTN_KB;
        const float *kt = attn_at(K, x->b, k0, c);
        attn_gemm(false, true, x->nq, nk, HS, g->sc, q, (int)Q.st, kt, (int)K.st, 0.0f, P, ATTN_KB);
        attn_gemm(false, true, x->nq, nk, HS, 1.0f, dout, (int)DO.st,
                  attn_at(V, x->b, k0, c), (int)V.st, 0.0f, dS, ATTN_KB);
        for (int i = 0; i < x->nq; i++) {
            float *pi = P + i * ATTN_KB, *di = dS + i * ATTN_KB;
            int j0, j1;
            attn_cols(g, x, i, k0, nk, &j0, &j1);
            attn_exp_row(pi, nk, j0, j1, L[row0 + i]);
            if (g->p > 0 && j0 <= j1) {
                attn_drop_row(g, scale, row0 + i, k0, j0, j1);
                for (int j = j0; j <= j1; j++) di[j] *= scale[j];
            }
#pragma omp simd
            for (int j = 0; j < nk; j++) di[j] = g->sc * pi[j] * (di[j] - D[i]);   /* 0 where P is */
            if (g->p > 0)
                for (int j = j0; j <= j1; j++) pi[j] *= scale[j];
        }
        attn_gemm(true, false, nk, HS, x->nq, 1.0f, P, ATTN_KB, dout, (int)DO.st,
                  1.0f, attn_at(DV, x->b, k0, c), (int)DV.st);
        attn_gemm(true, false, nk, HS, x->nq, 1.0f, dS, ATTN_KB, q, (int)Q.st,
                  1.0f, attn_at(DK, x->b, k0, c), (int)DK.st);
        attn_gemm(false, false, x->nq, HS, nk, 1.0f, dS, ATTN_KB, kt, (int)K.st, 1.0f, dq, (int)DQ.st);
    }
}

/* Zeroes the HS columns from col of rows 0..T-1 of sample b of X. */
static void attn_rows_zero(attn_rows X, int b, int T, int col, int HS) {
    for (int t = 0; t < T; t++) memset(attn_at(X, b, t, col), 0, sizeof(float) * (size_t)HS);
}

/* dq, dk, dv are written: the work item of (b, kh) clears the rows it owns (its KV head's dk,
 * dv columns and its query heads' dq columns) and then sums into them. */
void cpu_attention_backward(backend *be, backend_stream *s, tensor dq, tensor dk, tensor dv, tensor dout,
                            tensor q, tensor k, tensor v, tensor out, tensor lse, int NH, int NKV, int W,
                            float p, uint64_t seed) {
    const attn_geom g = attn_geom_of(q, k, NH, NKV, W, p, seed);
    const int QD = NH * g.HS, KD = NKV * g.HS, ntiles = (g.Tq + ATTN_QB - 1) / ATTN_QB;
    const attn_rows Q = attn_rows_of(q, g.B, g.Tq, QD), K = attn_rows_of(k, g.B, g.Tk, KD),
                    V = attn_rows_of(v, g.B, g.Tk, KD), O = attn_rows_of(out, g.B, g.Tq, QD),
                    DO = attn_rows_of(dout, g.B, g.Tq, QD), DQ = attn_rows_of(dq, g.B, g.Tq, QD),
                    DK = attn_rows_of(dk, g.B, g.Tk, KD), DV = attn_rows_of(dv, g.B, g.Tk, KD);
    const float *L = attn_lse_of(lse, g.B, NH, g.Tq);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) \
    if ((size_t)g.B * NH * g.Tq * g.Tk * g.HS > CPU_PAR_MIN)
    for (int b = 0; b < g.B; b++)
        for (int kh = 0; kh < NKV; kh++) {
            attn_rows_zero(DK, b, g.Tk, kh * g.HS, g.HS);
            attn_rows_zero(DV, b, g.Tk, kh * g.HS, g.HS);
            for (int h = kh * g.G; h < (kh + 1) * g.G; h++) {
                attn_rows_zero(DQ, b, g.Tq, h * g.HS, g.HS);
                for (int n = 0; n < ntiles; n++) {
                    const attn_tile x = attn_tile_of(&g, b, h, n * ATTN_QB);
                    attn_tile_backward(&g, &x, Q, K, V, O, DO, DQ, DK, DV, L);
                }
            }
        }
}
