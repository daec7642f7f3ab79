/* cpu_lowp: products and gathers over bf16/f16 weights (see cpu_lowp.h for the contract).
 *
 * Three kernels, each computing whole output elements on one thread:
 *   - direct_nk (M <= SMALL_M, W(N,K)): groups of rows of W against every row of A, with M x
 *     rows vector accumulators in registers along K (bf16/f16 rows converted in blocks of
 *     DOT_KB into a stack buffer), the lanes summed at the end. Threads split N into
 *     contiguous ranges, so W is streamed from memory once, front to back;
 *   - direct_kn (M <= SMALL_M, W(K,N)): per strip of KN_STRIP columns, per k, a few vectors
 *     of W's row k (converted) times A[m][k] broadcast, added into M x vectors accumulators
 *     in registers; every element sums k = 0..K-1 in order. Threads split the strips;
 *   - panels (M > SMALL_M): per strip of PANEL_N columns, blocks of PANEL_K along K are
 *     converted to an f32 panel on the stack and multiplied by cblas_sgemm (single-threaded
 *     inside the OpenMP region), the first block with beta, the next ones adding.
 * f32 weights (M <= SMALL_M only) are read by the direct kernels in place, unconverted.
 * bf16 converts by a shift (bf16_to_f32), f16 by integer steps that vectorize (cpu_impl.h's
 * cpu_f16_to_f32); both exact, and tests/test_lowp.c checks every f16
 * value against dtype.c's f16_to_f32. */
#include "backend/cpu/cpu_lowp.h"
#include "backend/cpu/cpu_impl.h"
#include "backend/cpu/cpu_vec.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "base/base.h"

#define SMALL_M CPU_LOWP_SMALL_M
#define DOT_KB 512          /* direct_nk: elements of a W row converted per step */
#define KN_STRIP 128        /* direct_kn: columns per strip (a thread's unit of work) */
#define CPU_LOWP_LINE 64    /* bytes in a cache line */
#define KN_AHEAD 32         /* direct_kn: rows of f32 weights prefetched ahead (M > 4) */
#define KN_KB 512           /* direct_kn: rows of W per block (a strip's block: 256 KiB of f32) */
#define PANEL_N 64          /* panels: PANEL_N x PANEL_K f32 = CPU_LOWP_STACK_BYTES */
#define PANEL_K 256
#define PAR_MIN 65536       /* M*N*K below this runs on one thread */

_Static_assert(PANEL_N * PANEL_K * sizeof(float) <= CPU_LOWP_STACK_BYTES, "panel exceeds its stack budget");

/* n weights of W (dtype dt) from element off as f32: in place for f32, else converted into buf. */
static inline const float *weights_f32(float *restrict buf, const void *W, dtype dt, size_t off, int n) {
    if (dt == DT_F32) return (const float *)W + off;
    cpu_half_to_f32(buf, (const uint16_t *)W + off, dt, n);
    return buf;
}

#define NK_NR 8     /* direct_nk: rows of W in flight for one row of A */
#define NK_AHEAD 1536   /* direct_nk: f32 weights prefetched this many elements ahead of the rows read */
#define KN_NV 8     /* direct_kn: most vectors of columns in flight (M <= 2); M * vectors <= 16 */

/* C[m][n..n+NR) for m < MG from rows n..n+NR) of W(N,K), row stride ldw: MG x NR
 * vector accumulators over K in steps of VL (each W row converted in blocks of DOT_KB for
 * bf16/f16), the lanes summed at the end, then the K % VL tail added in order. Always
 * inlined with constant MG and NR, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void nk_rows(float *C, int ldc, const float *A, int lda,
                                                          const void *W, dtype dt, int ldw, const int MG, const int NR,
                                                          int n, int K, float alpha, float beta) {
    float buf[NK_NR][DOT_KB], tail[SMALL_M][NK_NR] = {{0}};
    v16 acc[SMALL_M][NK_NR];
    const float *w[NK_NR];
#pragma GCC unroll 8
    for (int m = 0; m < MG; m++)
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++) acc[m][r] = (v16){0};
    for (int k0 = 0; k0 < K; k0 += DOT_KB) {
        const int kb = K - k0 < DOT_KB ? K - k0 : DOT_KB;
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++) w[r] = weights_f32(buf[r], W, dt, (size_t)(n + r) * ldw + k0, kb);
        int k = 0;
        for (; k + VL <= kb; k += VL) {
            v16 wv[NK_NR];
#pragma GCC unroll 8
            for (int r = 0; r < NR; r++) {
                wv[r] = v16_load(w[r] + k);
                if (dt == DT_F32) __builtin_prefetch(w[r] + k + NK_AHEAD);   /* rows read in place */
            }
#pragma GCC unroll 8
            for (int m = 0; m < MG; m++) {
                const v16 a = v16_load(A + (size_t)m * lda + k0 + k);
#pragma GCC unroll 8
                for (int r = 0; r < NR; r++) acc[m][r] += a * wv[r];
            }
        }
        for (; k < kb; k++)
            for (int m = 0; m < MG; m++)
                for (int r = 0; r < NR; r++) tail[m][r] += A[(size_t)m * lda + k0 + k] * w[r][k];
    }
    for (int m = 0; m < MG; m++)
        for (int r = 0; r < NR; r++) cpu_store_scaled(&C[(size_t)m * ldc + n + r], v16_sum(acc[m][r]) + tail[m][r], alpha, beta);
}

/* C[m][n] for m < M, n in [n0, n1), W(N,K): groups of NR rows of W against all M rows of A
 * (M x NR <= 16 accumulators: 8 rows of W for one row of A, 4 for up to 4, 2 beyond), then
 * single rows. */
static inline __attribute__((always_inline)) void direct_nk_m(float *C, int ldc, const float *A, int lda,
                                                              const void *W, dtype dt, int ldw, const int M,
                                                              int n0, int n1, int K, float alpha, float beta) {
    const int NR = M == 1 ? NK_NR : M <= 4 ? 4 : 2;
    int n = n0;
    for (; n + NR <= n1; n += NR) nk_rows(C, ldc, A, lda, W, dt, ldw, M, NR, n, K, alpha, beta);
    for (; n < n1; n++) nk_rows(C, ldc, A, lda, W, dt, ldw, M, 1, n, K, alpha, beta);
}

/* sums[m][j..j+NV*VL) for m < M from rows [k0, k1) of W(K,N) (row stride ldw) at columns
 * n0..n0+(NV-1)*VL+nl (nl < VL: a last vector of nl columns, its other lanes zero): per k,
 * NV vectors of W's row (converted for bf16/f16) times A[m][k] broadcast, added into M x NV
 * accumulators in registers that start from sums (from zero at k0 = 0) and go back there,
 * so every element sums k = 0..K-1 in order across the blocks. Inlined as nk_rows. */
static inline __attribute__((always_inline)) void kn_cols(float *sums, const float *A, int lda, const void *W,
                                                          dtype dt, int ldw, const int M, const int NV, int nl,
                                                          int n0, int j, int k0, int k1) {
    float buf[KN_NV * VL] = {0};
    const int nw = (NV - 1) * VL + nl;
    v16 acc[SMALL_M][KN_NV];
#pragma GCC unroll 8
    for (int m = 0; m < M; m++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) acc[m][v] = k0 ? v16_load(sums + (size_t)m * KN_STRIP + j + v * VL) : (v16){0};
    for (int k = k0; k < k1; k++) {
        const size_t off = (size_t)k * ldw + n0;
        const float *w;
        if (nl < VL && dt == DT_F32) {   /* a copy: the row may end before the vector does */
            for (int i = 0; i < nw; i++) buf[i] = ((const float *)W)[off + i];
            w = buf;
        } else {
            w = weights_f32(buf, W, dt, off, nw);
        }
        if (dt == DT_F32 && M > 4)   /* few vectors per row: fetch the rows ahead, a page apart each */
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) __builtin_prefetch((const float *)W + (size_t)(k + KN_AHEAD) * ldw + n0 + v * VL);
        v16 wv[KN_NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) wv[v] = v16_load(w + v * VL);
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            const v16 a = v16_splat(A[(size_t)m * lda + k]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[m][v] += a * wv[v];
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; m++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) memcpy(sums + (size_t)m * KN_STRIP + j + v * VL, &acc[m][v], sizeof(v16));
}

/* C[m][n0..n0+nb) for m < M (nb <= KN_STRIP), W(K,N): per block of KN_KB rows of W (the
 * strip's part of them stays in L2 while the passes reread it), passes of NV * VL columns
 * with NV vectors per row of A (16 / M of them, at most KN_NV), then single vectors, then a
 * last narrower one; the sums in a stack buffer between blocks. */
static inline __attribute__((always_inline)) void direct_kn_m(float *C, int ldc, const float *A, int lda,
                                                              const void *W, dtype dt, int ldw, const int M,
                                                              int n0, int nb, int K, float alpha, float beta) {
    const int NV = 16 / M > KN_NV ? KN_NV : 16 / M < 2 ? 2 : 16 / M;
    const int nv = nb / VL * VL;
    float sums[SMALL_M * KN_STRIP];
    const int kb = M > 4 ? KN_KB : K;   /* 16 / M vectors per pass: one pass for M <= 2, no rereading */
    for (int k0 = 0; k0 < K; k0 += kb) {
        const int k1 = K - k0 < kb ? K : k0 + kb;
        int j = 0;
        for (; j + NV * VL <= nv; j += NV * VL) kn_cols(sums, A, lda, W, dt, ldw, M, NV, VL, n0 + j, j, k0, k1);
        for (; j < nv; j += VL) kn_cols(sums, A, lda, W, dt, ldw, M, 1, VL, n0 + j, j, k0, k1);
        if (nv < nb) kn_cols(sums, A, lda, W, dt, ldw, M, 1, nb - nv, n0 + nv, nv, k0, k1);
    }
    for (int m = 0; m < M; m++)
        for (int j = 0; j < nb; j++) cpu_store_scaled(&C[(size_t)m * ldc + n0 + j], sums[(size_t)m * KN_STRIP + j], alpha, beta);
}

/* One copy of each direct kernel per M in 1..SMALL_M. */
#define DIRECT_CASES(kernel, ...) \
    switch (M) { \
    case 1: kernel(__VA_ARGS__, 1, n0, n1, K, alpha, beta); break; \
    case 2: kernel(__VA_ARGS__, 2, n0, n1, K, alpha, beta); break; \
    case 3: kernel(__VA_ARGS__, 3, n0, n1, K, alpha, beta); break; \
    case 4: kernel(__VA_ARGS__, 4, n0, n1, K, alpha, beta); break; \
    case 5: kernel(__VA_ARGS__, 5, n0, n1, K, alpha, beta); break; \
    case 6: kernel(__VA_ARGS__, 6, n0, n1, K, alpha, beta); break; \
    case 7: kernel(__VA_ARGS__, 7, n0, n1, K, alpha, beta); break; \
    case 8: kernel(__VA_ARGS__, 8, n0, n1, K, alpha, beta); break; \
    default: SK_ASSERT(!"direct kernel: M out of range"); \
    }
_Static_assert(SMALL_M == 8, "DIRECT_CASES lists M = 1..SMALL_M");

static void direct_nk(float *C, int ldc, const float *A, int lda, const void *W, dtype dt, int ldw, int M,
                      int n0, int n1, int K, float alpha, float beta) {
    DIRECT_CASES(direct_nk_m, C, ldc, A, lda, W, dt, ldw)
}

/* n1 here is the strip width nb. */
static void direct_kn(float *C, int ldc, const float *A, int lda, const void *W, dtype dt, int ldw, int M,
                      int n0, int n1, int K, float alpha, float beta) {
    DIRECT_CASES(direct_kn_m, C, ldc, A, lda, W, dt, ldw)
}

/* C[..][n0..n0+nb) for all M rows (nb <= PANEL_N) through f32 panels and cblas_sgemm. */
static void panels(float *C, int ldc, const float *A, int lda, const uint16_t *W, dtype dt, cpu_lowp_layout layout,
                   int ldw, int M, int n0, int nb, int K, float alpha, float beta) {
    float panel[PANEL_N * PANEL_K];
    for (int k0 = 0; k0 < K; k0 += PANEL_K) {
        int kb = K - k0 < PANEL_K ? K - k0 : PANEL_K;
        if (layout == CPU_LOWP_KN) {
            for (int k = 0; k < kb; k++) cpu_half_to_f32(panel + (size_t)k * nb, W + (size_t)(k0 + k) * ldw + n0, dt, nb);
        } else {
            for (int j = 0; j < nb; j++) cpu_half_to_f32(panel + (size_t)j * kb, W + (size_t)(n0 + j) * ldw + k0, dt, kb);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, layout == CPU_LOWP_KN ? CblasNoTrans : CblasTrans, M, nb, kb, alpha,
                    A + k0, lda, panel, layout == CPU_LOWP_KN ? nb : kb, k0 == 0 ? beta : 1.0f, C + n0, ldc);
    }
}

void cpu_lowp_matmul(float *C, int ldc, const float *A, int lda, const void *W, dtype wdt, cpu_lowp_layout layout,
                     int ldw, int M, int N, int K, float alpha, float beta) {
    SK_ASSERT(wdt == DT_BF16 || wdt == DT_F16 || (wdt == DT_F32 && M <= CPU_LOWP_SMALL_M));
    SK_ASSERT(M >= 0 && N >= 0 && K >= 0 && lda >= K && ldc >= N && ldw >= (layout == CPU_LOWP_KN ? N : K));
    if (M == 0 || N == 0) return;
    if (K == 0) {   /* the empty product: C = beta * C */
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) cpu_store_scaled(&C[(size_t)m * ldc + n], 0.0f, alpha, beta);
        return;
    }
    bool par = (double)M * N * K > PAR_MIN;
    if (M <= SMALL_M && layout == CPU_LOWP_NK) {
#pragma omp parallel if (par)
        {
            /* contiguous ranges of rows of W: each thread streams its part once */
            int nt = omp_get_num_threads(), id = omp_get_thread_num();
            int n0 = (int)((long)N * id / nt), n1 = (int)((long)N * (id + 1) / nt);
            direct_nk(C, ldc, A, lda, W, wdt, ldw, M, n0, n1, K, alpha, beta);
        }
    } else if (M <= SMALL_M) {
        /* Strips begin on a cache line of W's rows when the rows share one alignment (a
         * Hugging Face file's tensors often sit 16 or 48 bytes off a line): a strip that
         * straddled lines would fetch a line more per row than it uses. The columns before the
         * first line boundary join the first strip, [0, first), which is narrower by a line. */
        const size_t es = dtype_size(wdt);
        const int le = CPU_LOWP_LINE / (int)es;
        const int head = (size_t)ldw * es % CPU_LOWP_LINE ? 0 : (int)((CPU_LOWP_LINE - (uintptr_t)W % CPU_LOWP_LINE) % CPU_LOWP_LINE / es);
        const int first = head == 0 ? 0 : head + KN_STRIP - le < N ? head + KN_STRIP - le : N;
        const int strips = (first > 0) + (N - first + KN_STRIP - 1) / KN_STRIP;
#pragma omp parallel for schedule(dynamic, 1) if (par)
        for (int s = 0; s < strips; s++) {
            const int n0 = s == 0 && first > 0 ? 0 : first + (s - (first > 0)) * KN_STRIP;
            const int n1 = s == 0 && first > 0 ? first : N - n0 < KN_STRIP ? N : n0 + KN_STRIP;
            direct_kn(C, ldc, A, lda, W, wdt, ldw, M, n0, n1 - n0, K, alpha, beta);
        }
    } else {
        int strips = (N + PANEL_N - 1) / PANEL_N;
#pragma omp parallel for schedule(dynamic, 1) if (par)
        for (int s = 0; s < strips; s++) {
            int n0 = s * PANEL_N;
            panels(C, ldc, A, lda, (const uint16_t *)W, wdt, layout, ldw, M, n0, N - n0 < PANEL_N ? N - n0 : PANEL_N, K, alpha, beta);
        }
    }
}

void cpu_lowp_embed(float *out, const int *tokens, int n, const void *table, dtype dt, int V, int C) {
    SK_ASSERT(dt == DT_BF16 || dt == DT_F16);
    const uint16_t *t = table;
#pragma omp parallel for schedule(static) if ((size_t)n * C > PAR_MIN)
    for (int i = 0; i < n; i++) {
        SK_ASSERT(tokens[i] >= 0 && tokens[i] < V);
        cpu_half_to_f32(out + (size_t)i * C, t + (size_t)tokens[i] * C, dt, C);
    }
}
