/* cpu_gemv: one-row f32 products (see cpu_gemv.h for the contract).
 *
 * A decode step of one sequence reads every weight once and does two flops a weight: the
 * memory's rate bounds it. cblas_sgemv streamed GPT-2's 49 products at 35-45 GB/s on 2 cores
 * of an EPYC whose plain two-thread sum read 45-80 GB/s; these kernels make every thread read
 * one contiguous run of W, front to back, with the rows of the next pass prefetched:
 *   - KN (W(K,N), y = x W): thread t takes rows [K t / T, K (t+1) / T) and adds
 *     x[k] W[k][...] into a partial of y of its own (thread-local, so it outlives the region
 *     and no barrier waits for its readers), KN_ROWS rows a pass (one load and one store of the
 *     partial per KN_ROWS rows of W); then each thread sums a range of columns over the
 *     partials in thread order. Columns go in blocks of KN_COLS (the partial's size). Splitting
 *     columns instead (no partials) read W slower in a harness of GPT-2's products (best tokens
 *     11.2-11.4 ms against 11.0-11.1 ms, 2026-12-03).
 *   - NK (W(N,K), y = W x): thread t takes rows [N t / T, N (t+1) / T), NK_ROWS dot products
 *     at once, each a vector accumulator along K summed at the end, then the K % VL tail.
 * Below PAR_MIN multiply-adds a product runs on one thread. */
#include "backend/cpu/cpu_gemv.h"
#include "backend/cpu/cpu_impl.h"
#include "backend/cpu/cpu_vec.h"

#include <omp.h>

#define KN_COLS 4096         /* KN: columns of a thread's partial (16 KiB a thread) */
#define KN_ROWS 4            /* KN: rows of W a pass adds into the partial */
#define NK_ROWS 4            /* NK: rows of W whose dot products run at once */
#define MAX_THREADS 256      /* KN: threads whose partials are summed (more are not used) */
#define PAR_MIN 65536        /* K * N below this runs on one thread */

/* part[0..n) += sum over rows k0..k1-1 of x[k] W[k][0..n), W's rows ldw apart; the rows of
 * the next pass prefetched at the columns being read. */
static void kn_rows(float *restrict part, const float *x, const float *W, size_t ldw, int k0, int k1, int n) {
    int k = k0;
    for (; k + KN_ROWS <= k1; k += KN_ROWS) {
        const float *w0 = W + (size_t)k * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        const size_t ahead = KN_ROWS * ldw;
        const v16 a0 = v16_splat(x[k]), a1 = v16_splat(x[k + 1]), a2 = v16_splat(x[k + 2]), a3 = v16_splat(x[k + 3]);
        int j = 0;
        for (; j + VL <= n; j += VL) {
            __builtin_prefetch(w0 + j + ahead);
            __builtin_prefetch(w1 + j + ahead);
            __builtin_prefetch(w2 + j + ahead);
            __builtin_prefetch(w3 + j + ahead);
            v16 s = v16_load(part + j);
            s += a0 * v16_load(w0 + j);
            s += a1 * v16_load(w1 + j);
            s += a2 * v16_load(w2 + j);
            s += a3 * v16_load(w3 + j);
            v16_store(part + j, s);
        }
        for (; j < n; j++) part[j] = part[j] + x[k] * w0[j] + x[k + 1] * w1[j] + x[k + 2] * w2[j] + x[k + 3] * w3[j];
    }
    for (; k < k1; k++) {
        const float *w = W + (size_t)k * ldw;
        const v16 a = v16_splat(x[k]);
        int j = 0;
        for (; j + VL <= n; j += VL) v16_store(part + j, v16_load(part + j) + a * v16_load(w + j));
        for (; j < n; j++) part[j] += x[k] * w[j];
    }
}

void cpu_gemv_kn(float *y, const float *x, const float *W, int ldw, int K, int N, float alpha, float beta) {
    float *parts[MAX_THREADS];
    const int threads = (size_t)K * N < PAR_MIN ? 1 : omp_get_max_threads() < MAX_THREADS ? omp_get_max_threads()
                                                                                        : MAX_THREADS;
    for (int c0 = 0; c0 < N; c0 += KN_COLS) {
        const int n = N - c0 < KN_COLS ? N - c0 : KN_COLS;
#pragma omp parallel num_threads(threads)
        {
            static _Thread_local float part[KN_COLS];   /* read by the other threads after the barrier */
            const int nt = omp_get_num_threads(), id = omp_get_thread_num();
            memset(part, 0, sizeof(float) * (size_t)n);
            kn_rows(part, x, W + c0, (size_t)ldw, (int)((long)K * id / nt), (int)((long)K * (id + 1) / nt), n);
            parts[id] = part;
#pragma omp barrier
            for (int j = n * id / nt; j < n * (id + 1) / nt; j++) {
                float s = parts[0][j];
                for (int t = 1; t < nt; t++) s += parts[t][j];
                cpu_store_scaled(&y[c0 + j], s, alpha, beta);
            }
        }
    }
}

/* y[n0..n1) from rows n0..n1-1 of W: NK_ROWS dot products at once, the next group's rows
 * prefetched at the columns being read. */
static void nk_rows(float *y, const float *x, const float *W, size_t ldw, int n0, int n1, int K, float alpha,
                    float beta) {
    const int KV = K / VL * VL;
    int i = n0;
    for (; i + NK_ROWS <= n1; i += NK_ROWS) {
        const float *w0 = W + (size_t)i * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        const size_t ahead = NK_ROWS * ldw;
        v16 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        for (int k = 0; k < KV; k += VL) {
            __builtin_prefetch(w0 + k + ahead);
            __builtin_prefetch(w1 + k + ahead);
            __builtin_prefetch(w2 + k + ahead);
            __builtin_prefetch(w3 + k + ahead);
            const v16 a = v16_load(x + k);
            s0 += a * v16_load(w0 + k);
            s1 += a * v16_load(w1 + k);
            s2 += a * v16_load(w2 + k);
            s3 += a * v16_load(w3 + k);
        }
        float d[NK_ROWS] = {v16_sum(s0), v16_sum(s1), v16_sum(s2), v16_sum(s3)};
        for (int k = KV; k < K; k++) d[0] += x[k] * w0[k], d[1] += x[k] * w1[k], d[2] += x[k] * w2[k], d[3] += x[k] * w3[k];
        for (int r = 0; r < NK_ROWS; r++) cpu_store_scaled(&y[i + r], d[r], alpha, beta);
    }
    for (; i < n1; i++) {
        const float *w = W + (size_t)i * ldw;
        v16 s = {0};
        for (int k = 0; k < KV; k += VL) s += v16_load(x + k) * v16_load(w + k);
        float d = v16_sum(s);
        for (int k = KV; k < K; k++) d += x[k] * w[k];
        cpu_store_scaled(&y[i], d, alpha, beta);
    }
}

void cpu_gemv_nk(float *y, const float *x, const float *W, int ldw, int N, int K, float alpha, float beta) {
#pragma omp parallel if ((size_t)N * K >= PAR_MIN)
    {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        nk_rows(y, x, W, (size_t)ldw, (int)((long)N * id / nt), (int)((long)N * (id + 1) / nt), K, alpha, beta);
    }
}
