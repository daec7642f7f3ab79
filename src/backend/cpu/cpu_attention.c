/* backend/cpu: causal grouped-query attention, forward and backward, for every model
 * family (GPT-2 is the case NKV = NH over column slices of its packed qkv) and for training
 * and KV-cached inference alike (fewer queries than keys). Contracts in backend.h.
 *
 * The forward walks each query row's visible keys in blocks of ATTN_KB with an online
 * softmax: a running maximum m and normalizer l, the output accumulator rescaled when a block
 * raises the maximum. It keeps only the row's log-sum-exp m + log l. The backward recomputes
 * each probability as exp(score - lse), as flash attention does, so no (Tq,Tk) buffer exists:
 * the scratch is a few blocks of ATTN_KB floats on each thread's stack.
 *
 * Invariants: one thread computes a whole output row of the forward. In the backward one
 * thread owns a (batch, KV head) pair -- the dk, dv rows of that KV head and the dq rows of
 * its query heads -- and walks its heads and queries in order, so the sums are race-free and
 * independent of the thread count. Dropout keeps key s of query t in head h of sample b when
 * dropout_keep(seed, ((b*NH + h)*Tq + t)*Tk + s, p): the flat index of a (B,NH,Tq,Tk)
 * probability tensor, a pure function the backward evaluates again.
 *
 * Letters as in backend.h; Tq queries, Tk keys, G = NH/NKV query heads per KV head, and the
 * query t sits at position Tk - Tq + t. */
#include "backend/cpu/cpu_impl.h"

#include <math.h>

/* Keys per block: one block of scores lives on the stack. */
#define ATTN_KB 64

/* A (B,T,D) view as its base pointer and its batch and row strides. */
typedef struct attn_rows { float *p; int64_t sb, st; } attn_rows;

/* The view t, asserted to be f32 of shape (B,T,D) with contiguous rows. */
static attn_rows attn_rows_of(tensor t, int64_t B, int64_t T, int64_t D) {
    SK_ASSERT(t.dt == DT_F32 && t.ndim == 3 && t.shape[0] == B && t.shape[1] == T && t.shape[2] == D);
    SK_ASSERT(t.stride[2] == 1 || D == 1);
    attn_rows r = {tensor_f32(t), t.stride[0], t.stride[1]};
    return r;
}

/* Row t of sample b, at channel c. */
static inline float *attn_at(attn_rows r, int b, int t, int c) { return r.p + b * r.sb + t * r.st + c; }

/* The shapes of one call, checked once. */
typedef struct attn_geom {
    int B, Tq, Tk, NH, NKV, G, HS;
    float sc;   /* 1/sqrt(HS) */
} attn_geom;

static attn_geom attn_geom_of(tensor q, tensor k, int NH, int NKV) {
    SK_ASSERT(q.ndim == 3 && k.ndim == 3 && NH > 0 && NKV > 0 && NH % NKV == 0 && q.shape[2] % NH == 0);
    attn_geom g = {(int)q.shape[0], (int)q.shape[1], (int)k.shape[1], NH, NKV, NH / NKV, (int)(q.shape[2] / NH), 0};
    SK_ASSERT(g.Tq <= g.Tk && g.HS > 0);
    g.sc = 1.0f / sqrtf((float)g.HS);
    return g;
}

/* Keys [*s0, *s1] that query t sees: up to its position, and the W newest with a window. */
static inline void attn_span(const attn_geom *g, int W, int t, int *s0, int *s1) {
    *s1 = g->Tk - g->Tq + t;
    *s0 = W > 0 && *s1 - W + 1 > 0 ? *s1 - W + 1 : 0;
}

/* One query row of one head. Writes o(HS) = sum over keys s in [s0, s1] of
 * softmax(sc * q . k_s) (dropped: times the mask / (1-p)) v_s, key s at k + s*ldk and its
 * value at v + s*ldv, and returns the log-sum-exp of the scaled scores. drop0 is the dropout
 * index of key 0. */
static float attn_row_forward(float *restrict o, const float *restrict q, const float *k, int64_t ldk,
                              const float *v, int64_t ldv, int s0, int s1, int HS, float sc, float p,
                              uint64_t seed, uint64_t drop0) {
    float m = -INFINITY, l = 0.0f, sbuf[ATTN_KB];
    const float keep = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    for (int j = 0; j < HS; j++) o[j] = 0.0f;
    for (int b0 = s0; b0 <= s1; b0 += ATTN_KB) {
        const int n = s1 - b0 + 1 < ATTN_KB ? s1 - b0 + 1 : ATTN_KB;
        float bm = -INFINITY;
        for (int i = 0; i < n; i++) {
            const float *ks = k + (int64_t)(b0 + i) * ldk;
            float d = 0;
#pragma omp simd reduction(+ : d)
            for (int j = 0; j < HS; j++) d += q[j] * ks[j];
            sbuf[i] = d * sc;
            bm = sbuf[i] > bm ? sbuf[i] : bm;
        }
        if (bm > m) {   /* rescale what the earlier blocks summed (nothing on the first) */
            const float corr = l > 0 ? cpu_expf(m - bm) : 0.0f;
            l *= corr;
#pragma omp simd
            for (int j = 0; j < HS; j++) o[j] *= corr;
            m = bm;
        }
        float bl = 0;
#pragma omp simd reduction(+ : bl)
        for (int i = 0; i < n; i++) {
            sbuf[i] = cpu_expf(sbuf[i] - m);
            bl += sbuf[i];
        }
        l += bl;
        for (int i = 0; i < n; i++) {
            float w = sbuf[i];
            if (p > 0) w = dropout_keep(seed, drop0 + (uint64_t)(b0 + i), p) ? w * keep : 0.0f;
            const float *vs = v + (int64_t)(b0 + i) * ldv;
#pragma omp simd
            for (int j = 0; j < HS; j++) o[j] += w * vs[j];
        }
    }
    const float inv = 1.0f / l;
#pragma omp simd
    for (int j = 0; j < HS; j++) o[j] *= inv;
    return m + logf(l);
}

void cpu_attention_forward(backend *be, backend_stream *s, tensor out, tensor lse, tensor q, tensor k,
                           tensor v, int NH, int NKV, int W, float p, uint64_t seed) {
    const attn_geom g = attn_geom_of(q, k, NH, NKV);
    const int HS = g.HS, KD = NKV * HS;
    SK_ASSERT(p >= 0.0f && p < 1.0f && W >= 0);
    const attn_rows Q = attn_rows_of(q, g.B, g.Tq, NH * HS), K = attn_rows_of(k, g.B, g.Tk, KD),
                    V = attn_rows_of(v, g.B, g.Tk, KD), O = attn_rows_of(out, g.B, g.Tq, NH * HS);
    float *L = NULL;
    if (!tensor_is_none(lse)) {
        SK_ASSERT(lse.dt == DT_F32 && lse.ndim == 3 && lse.shape[0] == g.B && lse.shape[1] == NH &&
                  lse.shape[2] == g.Tq && tensor_is_contiguous(lse));
        L = tensor_f32(lse);
    }
#pragma omp parallel for collapse(3) schedule(dynamic, 16) \
    if ((size_t)g.B * NH * g.Tq * g.Tk * HS > CPU_PAR_MIN)
    for (int b = 0; b < g.B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < g.Tq; t++) {
                int s0, s1;
                attn_span(&g, W, t, &s0, &s1);
                const int c = (h / g.G) * HS;
                const size_t row = ((size_t)b * NH + h) * g.Tq + t;
                float x = attn_row_forward(attn_at(O, b, t, h * HS), attn_at(Q, b, t, h * HS), attn_at(K, b, 0, c),
                                           K.st, attn_at(V, b, 0, c), V.st, s0, s1, HS, g.sc, p, seed,
                                           (uint64_t)row * (uint64_t)g.Tk);
                if (L) L[row] = x;
            }
}

/* Backward of attn_row_forward for one query row, with P_s = exp(sc q.k_s - lse) its
 * probabilities, M_s its dropout scale (mask / (1-p), or 1) and D = dout . out:
 *   dv_s += P_s M_s dout;  dS_s = P_s (M_s dout . v_s - D);
 *   dq += sc sum dS_s k_s;  dk_s += sc dS_s q.
 * (D = sum_s P_s M_s dout . v_s, the softmax's row term, because out = sum_s P_s M_s v_s.)
 * dk, dv rows are lddk, lddv apart; k, v rows ldk, ldv. */
static void attn_row_backward(float *restrict dq, float *dk, int64_t lddk, float *dv, int64_t lddv,
                              const float *restrict dout, const float *restrict q, const float *k,
                              int64_t ldk, const float *v, int64_t ldv, int s0, int s1, int HS, float sc,
                              float lse, float D, float p, uint64_t seed, uint64_t drop0) {
    float pw[ATTN_KB], gs[ATTN_KB];
    const float keep = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    for (int b0 = s0; b0 <= s1; b0 += ATTN_KB) {
        const int n = s1 - b0 + 1 < ATTN_KB ? s1 - b0 + 1 : ATTN_KB;
        for (int i = 0; i < n; i++) {
            const float *ks = k + (int64_t)(b0 + i) * ldk, *vs = v + (int64_t)(b0 + i) * ldv;
            float sq = 0, dp = 0;
#pragma omp simd reduction(+ : sq, dp)
            for (int j = 0; j < HS; j++) {
                sq += q[j] * ks[j];
                dp += dout[j] * vs[j];
            }
            pw[i] = sq * sc;
            gs[i] = dp;
        }
#pragma omp simd
        for (int i = 0; i < n; i++) pw[i] = cpu_expf(pw[i] - lse);
        for (int i = 0; i < n; i++) {
            const float ms = p > 0 ? (dropout_keep(seed, drop0 + (uint64_t)(b0 + i), p) ? keep : 0.0f) : 1.0f;
            gs[i] = sc * pw[i] * (ms * gs[i] - D);
            pw[i] *= ms;
        }
        for (int i = 0; i < n; i++) {
            const float *ks = k + (int64_t)(b0 + i) * ldk;
            float *dks = dk + (int64_t)(b0 + i) * lddk, *dvs = dv + (int64_t)(b0 + i) * lddv;
            const float a = pw[i], gr = gs[i];
#pragma omp simd
            for (int j = 0; j < HS; j++) {
                dvs[j] += a * dout[j];
                dks[j] += gr * q[j];
                dq[j] += gr * ks[j];
            }
        }
    }
}

void cpu_attention_backward(backend *be, backend_stream *s, tensor dq, tensor dk, tensor dv, tensor dout,
                            tensor q, tensor k, tensor v, tensor out, tensor lse, int NH, int NKV, int W,
                            float p, uint64_t seed) {
    const attn_geom g = attn_geom_of(q, k, NH, NKV);
    const int HS = g.HS, QD = NH * HS, KD = NKV * HS;
    SK_ASSERT(p >= 0.0f && p < 1.0f && W >= 0);
    const attn_rows Q = attn_rows_of(q, g.B, g.Tq, QD), K = attn_rows_of(k, g.B, g.Tk, KD),
                    V = attn_rows_of(v, g.B, g.Tk, KD), O = attn_rows_of(out, g.B, g.Tq, QD),
                    DO = attn_rows_of(dout, g.B, g.Tq, QD), DQ = attn_rows_of(dq, g.B, g.Tq, QD),
                    DK = attn_rows_of(dk, g.B, g.Tk, KD), DV = attn_rows_of(dv, g.B, g.Tk, KD);
    SK_ASSERT(lse.dt == DT_F32 && lse.ndim == 3 && lse.shape[0] == g.B && lse.shape[1] == NH &&
              lse.shape[2] == g.Tq && tensor_is_contiguous(lse));
    const float *L = tensor_f32(lse);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) \
    if ((size_t)g.B * NH * g.Tq * g.Tk * HS > CPU_PAR_MIN)
    for (int b = 0; b < g.B; b++)
        for (int kh = 0; kh < NKV; kh++)
            for (int h = kh * g.G; h < (kh + 1) * g.G; h++)
                for (int t = 0; t < g.Tq; t++) {
                    int s0, s1;
                    attn_span(&g, W, t, &s0, &s1);
                    const int c = kh * HS;
                    const size_t row = ((size_t)b * NH + h) * g.Tq + t;
                    const float *d = attn_at(DO, b, t, h * HS), *o = attn_at(O, b, t, h * HS);
                    float D = 0;
#pragma omp simd reduction(+ : D)
                    for (int j = 0; j < HS; j++) D += d[j] * o[j];
                    attn_row_backward(attn_at(DQ, b, t, h * HS), attn_at(DK, b, 0, c), DK.st, attn_at(DV, b, 0, c),
                                      DV.st, d, attn_at(Q, b, t, h * HS), attn_at(K, b, 0, c), K.st,
                                      attn_at(V, b, 0, c), V.st, s0, s1, HS, g.sc, L[row], D, p, seed,
                                      (uint64_t)row * (uint64_t)g.Tk);
                }
}
