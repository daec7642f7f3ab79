/* cpu_lowp: products and gathers over bf16/f16 weights (see cpu_lowp.h for the contract).
 *
 * Three kernels, each computing whole output elements on one thread:
 *   - direct_nk (M <= SMALL_M, W(N,K)): per output column n, W's row n is converted in
 *     blocks of DOT_KB into a stack buffer and dotted with every row of A (a vectorized
 *     reduction per block, the blocks' sums added in order). Threads split N into contiguous ranges, so W is
 *     streamed from memory once, front to back;
 *   - direct_kn (M <= SMALL_M, W(K,N)): per strip of columns, each row of the strip is
 *     converted and added, scaled by A[m][k], into accumulators held on the stack (axpy);
 *     every element sums k = 0..K-1 in order. Threads split the strips;
 *   - panels (M > SMALL_M): per strip of PANEL_N columns, blocks of PANEL_K along K are
 *     converted to an f32 panel on the stack and multiplied by cblas_sgemm (single-threaded
 *     inside the OpenMP region), the first block with beta, the next ones adding.
 * f32 weights (M <= SMALL_M only) are read by the direct kernels in place, unconverted.
 * bf16 converts by a shift (bf16_to_f32), f16 through the compiler's _Float16 (F16C's
 * vcvtph2ps where the target has it); both exact, and tests/test_lowp.c checks every f16
 * value against dtype.c's f16_to_f32. */
#include "backend/cpu/cpu_lowp.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "base/base.h"

#define SMALL_M CPU_LOWP_SMALL_M
#define DOT_KB 512          /* direct_nk: elements of a W row converted per step */
#define AXPY_NB 256         /* direct_kn: widest column strip */
#define PANEL_N 64          /* panels: PANEL_N x PANEL_K f32 = CPU_LOWP_STACK_BYTES */
#define PANEL_K 256
#define PAR_MIN 65536       /* M*N*K below this runs on one thread */

_Static_assert(PANEL_N * PANEL_K * sizeof(float) <= CPU_LOWP_STACK_BYTES, "panel exceeds its stack budget");

/* dst[0..n) = src[0..n) of dtype dt (bf16 or f16) as f32. Two plain loops so each vectorizes. */
static inline void row_to_f32(float *restrict dst, const uint16_t *restrict src, dtype dt, int n) {
    if (dt == DT_BF16) {
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        for (int i = 0; i < n; i++) {
            _Float16 h;
            memcpy(&h, &src[i], sizeof h);
            dst[i] = (float)h;
        }
    }
}

/* n weights of W (dtype dt) from element off as f32: in place for f32, else converted into buf. */
static inline const float *weights_f32(float *restrict buf, const void *W, dtype dt, size_t off, int n) {
    if (dt == DT_F32) return (const float *)W + off;
    row_to_f32(buf, (const uint16_t *)W + off, dt, n);
    return buf;
}

static inline void store(float *c, float v, float alpha, float beta) {
    *c = beta == 0.0f ? alpha * v : alpha * v + beta * *c;
}

/* C[m][n] for m < M, n in [n0, n1), W(N,K) row stride ldw. Always inlined into
 * direct_nk's cases, so M is a constant there and the accumulators stay in registers. */
static inline __attribute__((always_inline)) void direct_nk_m(float *C, int ldc, const float *A, int lda,
                                                              const void *W, dtype dt, int ldw, const int M,
                                                              int n0, int n1, int K, float alpha, float beta) {
    float buf[DOT_KB];
    for (int n = n0; n < n1; n++) {
        float acc[SMALL_M] = {0};
        for (int k0 = 0; k0 < K; k0 += DOT_KB) {
            int kb = K - k0 < DOT_KB ? K - k0 : DOT_KB;
            const float *w = weights_f32(buf, W, dt, (size_t)n * ldw + k0, kb);
            for (int m = 0; m < M; m++) {
                const float *a = A + (size_t)m * lda + k0;
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int k = 0; k < kb; k++) s += a[k] * w[k];
                acc[m] += s;
            }
        }
        for (int m = 0; m < M; m++) store(&C[(size_t)m * ldc + n], acc[m], alpha, beta);
    }
}

/* C[m][n0..n0+nb) for m < M (nb <= AXPY_NB), W(K,N) row stride ldw; inlined as direct_nk_m. */
static inline __attribute__((always_inline)) void direct_kn_m(float *C, int ldc, const float *A, int lda,
                                                              const void *W, dtype dt, int ldw, const int M,
                                                              int n0, int nb, int K, float alpha, float beta) {
    float acc[SMALL_M][AXPY_NB], buf[AXPY_NB];
    for (int m = 0; m < M; m++) memset(acc[m], 0, sizeof(float) * (size_t)nb);
    for (int k = 0; k < K; k++) {
        const float *w = weights_f32(buf, W, dt, (size_t)k * ldw + n0, nb);
        for (int m = 0; m < M; m++) {
            float a = A[(size_t)m * lda + k];
            for (int j = 0; j < nb; j++) acc[m][j] = fmaf(a, w[j], acc[m][j]);
        }
    }
    for (int m = 0; m < M; m++)
        for (int j = 0; j < nb; j++) store(&C[(size_t)m * ldc + n0 + j], acc[m][j], alpha, beta);
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
            for (int k = 0; k < kb; k++) row_to_f32(panel + (size_t)k * nb, W + (size_t)(k0 + k) * ldw + n0, dt, nb);
        } else {
            for (int j = 0; j < nb; j++) row_to_f32(panel + (size_t)j * kb, W + (size_t)(n0 + j) * ldw + k0, dt, kb);
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
            for (int n = 0; n < N; n++) store(&C[(size_t)m * ldc + n], 0.0f, alpha, beta);
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
        int strips = (N + AXPY_NB - 1) / AXPY_NB;
#pragma omp parallel for schedule(dynamic, 1) if (par)
        for (int s = 0; s < strips; s++) {
            int n0 = s * AXPY_NB;
            direct_kn(C, ldc, A, lda, W, wdt, ldw, M, n0, N - n0 < AXPY_NB ? N - n0 : AXPY_NB, K, alpha, beta);
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
        row_to_f32(out + (size_t)i * C, t + (size_t)tokens[i] * C, dt, C);
    }
}
