/* Tests of cpu_lowp (products and gathers over bf16/f16 weights, and f32 weights at decode's
 * few rows) against the f32 reference: cblas_sgemm on the weights converted by dtype.c.
 * Every shape runs both layouts (KN, NK) and every dtype, with M on both sides of the direct/panel switch, N and K not multiples of
 * any vector or panel width, leading dimensions wider than the rows (their padding holds NaN
 * that must never be read or written), alpha != 1, beta 0 over a NaN-filled C and beta != 0.
 * Also: the same bits at 1 and 2 threads, every f16 value through the gather (as a column and as
 * a row: scalar and vectorized), and a timing
 * of the decode GEMV (M = 1, 2048 x 5632 bf16) next to the machine's read bandwidth. */
#include "test.h"

#include <cblas.h>
#include <omp.h>

#include "backend/cpu/cpu_lowp.h"
#include "base/base.h"
#include "base/rng.h"
#include "tensor/dtype.h"

static float *floats(size_t n) { return mem_alloc(n * sizeof(float) + 64); }

/* A test product: C(M,N) = alpha A(M,K) op(W) + beta C, buffers padded past each row. */
typedef struct product {
    int M, N, K, lda, ldw, ldc;
    dtype dt;
    cpu_lowp_layout layout;
    float alpha, beta;
    float *A, *C, *ref, *wf;   /* wf: W converted by dtype.c, packed (rows x cols of W) */
    void *W;                   /* rows of ldw elements of dt, NaN past cols */
} product;

static void product_init(product *p, int M, int N, int K, dtype dt, cpu_lowp_layout layout, float alpha, float beta,
                         uint64_t seed) {
    *p = (product){.M = M, .N = N, .K = K, .lda = K + 5, .ldc = N + 3, .dt = dt, .layout = layout,
                   .alpha = alpha, .beta = beta};
    int rows = layout == CPU_LOWP_KN ? K : N, cols = layout == CPU_LOWP_KN ? N : K;
    p->ldw = cols + 7;
    rng r;
    rng_seed(&r, seed);
    p->A = floats((size_t)M * p->lda);
    p->C = floats((size_t)M * p->ldc);
    p->ref = floats((size_t)M * p->ldc);
    p->wf = floats((size_t)rows * cols);
    p->W = mem_alloc((size_t)rows * p->ldw * dtype_size(dt) + 64);
    for (size_t i = 0; i < (size_t)M * p->lda; i++) p->A[i] = i % p->lda < (size_t)K ? rng_normal(&r) : NAN;
    for (size_t i = 0; i < (size_t)M * p->ldc; i++)
        p->C[i] = i % p->ldc >= (size_t)N ? -777.0f : beta == 0 ? NAN : rng_normal(&r);
    memcpy(p->ref, p->C, sizeof(float) * (size_t)M * p->ldc);
    uint16_t nan16 = dt == DT_BF16 ? 0x7fc0 : 0x7e00;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < p->ldw; j++) {
            float v = rng_normal(&r) * 0.05f;
            size_t at = (size_t)i * p->ldw + j;
            if (dt == DT_F32)
                ((float *)p->W)[at] = j >= cols ? NAN : v;
            else
                ((uint16_t *)p->W)[at] = j >= cols ? nan16 : dt == DT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
        }
    for (int i = 0; i < rows; i++)
        dtype_to_f32(p->wf + (size_t)i * cols, (const char *)p->W + (size_t)i * p->ldw * dtype_size(dt), dt,
                     (size_t)cols);
    if (M && N)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, layout == CPU_LOWP_KN ? CblasNoTrans : CblasTrans, M, N, K, alpha,
                    p->A, p->lda, p->wf, cols, beta, p->ref, p->ldc);
}

static void product_free(product *p) {
    mem_free(p->A);
    mem_free(p->C);
    mem_free(p->ref);
    mem_free(p->wf);
    mem_free(p->W);
}

static void product_run(product *p) {
    cpu_lowp_matmul(p->C, p->ldc, p->A, p->lda, p->W, p->dt, p->layout, p->ldw, p->M, p->N, p->K, p->alpha, p->beta);
}

/* Worst |C - ref| over alpha * sum |a w| + |beta c0| (1 where that is 0); padding exact. */
static double product_error(const product *p, int *bad_pad) {
    int cols = p->layout == CPU_LOWP_KN ? p->N : p->K;
    double worst = 0;
    *bad_pad = 0;
    for (int m = 0; m < p->M; m++)
        for (int n = 0; n < p->ldc; n++) {
            float c = p->C[(size_t)m * p->ldc + n], want = p->ref[(size_t)m * p->ldc + n];
            if (n >= p->N) {
                *bad_pad += c != -777.0f;
                continue;
            }
            double mag = 0;
            for (int k = 0; k < p->K; k++) {
                float w = p->layout == CPU_LOWP_KN ? p->wf[(size_t)k * cols + n] : p->wf[(size_t)n * cols + k];
                mag += fabs((double)p->A[(size_t)m * p->lda + k] * w);
            }
            mag = fabs(p->alpha) * mag + (p->beta != 0 ? fabs(p->beta * (double)want) : 0);
            double e = fabs((double)c - want) / (mag > 0 ? mag : 1);
            if (!(e <= worst)) worst = e;   /* NaN counts as worst */
        }
    return worst;
}

/* f32 weights go through the direct kernels only (M <= CPU_LOWP_SMALL_M). N = 300 and 200
 * cover a whole strip and every narrower kernel width plus a tail; K = 1029 several
 * conversion blocks and a tail shorter than a vector. */
TEST(matmul_matches_f32_reference) {
    static const int Ms[] = {1, 2, 3, 4, 5, 8, 64};
    static const int NKs[][2] = {{37, 300}, {300, 37}, {131, 1029}, {200, 96}, {1, 1}};
    static const dtype dts[] = {DT_BF16, DT_F16, DT_F32};
    int cases = 0;
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
        for (size_t s = 0; s < sizeof NKs / sizeof NKs[0]; s++)
            for (int d = 0; d < 3; d++)
                for (int lay = 0; lay < 2; lay++)
                    for (int b = 0; b < 2; b++) {
                        if (dts[d] == DT_F32 && Ms[mi] > CPU_LOWP_SMALL_M) continue;
                        product p;
                        product_init(&p, Ms[mi], NKs[s][0], NKs[s][1], dts[d], lay ? CPU_LOWP_NK : CPU_LOWP_KN,
                                     b ? 0.75f : 1.0f, b ? -0.5f : 0.0f, 100 + (uint64_t)cases);
                        product_run(&p);
                        int bad_pad;
                        double err = product_error(&p, &bad_pad);
                        product_free(&p);
                        CHECK_MSG(err <= 1e-5 && bad_pad == 0,
                                  "M %d N %d K %d %s %s beta %g: error %.3g, %d padding columns written", Ms[mi],
                                  NKs[s][0], NKs[s][1], dtype_name(dts[d]), lay ? "NK" : "KN", b ? -0.5 : 0.0, err,
                                  bad_pad);
                        cases++;
                    }
    printf("  %d products within 1e-5\n", cases);
}

TEST(matmul_empty_k_scales_c) {
    product p;
    product_init(&p, 3, 5, 0, DT_BF16, CPU_LOWP_NK, 1.0f, 0.5f, 9);
    product_run(&p);
    int bad_pad;
    CHECK(product_error(&p, &bad_pad) == 0 && bad_pad == 0);
    product_free(&p);
}

/* Each kernel (direct NK, direct KN, panels) gives the same bits at 1 and 2 threads. */
TEST(matmul_independent_of_thread_count) {
    static const int Ms[] = {1, 4, 8, 64};
    for (int mi = 0; mi < 4; mi++)
        for (int lay = 0; lay < 2; lay++) {
            product p;
            product_init(&p, Ms[mi], 700, 333, DT_BF16, lay ? CPU_LOWP_NK : CPU_LOWP_KN, 1.0f, 0.0f, 5);
            int threads = omp_get_max_threads();
            omp_set_num_threads(1);
            product_run(&p);
            float *one = floats((size_t)p.M * p.ldc);
            memcpy(one, p.C, sizeof(float) * (size_t)p.M * p.ldc);
            omp_set_num_threads(threads > 1 ? threads : 2);
            product_run(&p);
            bool same = !memcmp(one, p.C, sizeof(float) * (size_t)p.M * p.ldc);
            omp_set_num_threads(threads);
            mem_free(one);
            product_free(&p);
            CHECK_MSG(same, "M %d %s", Ms[mi], lay ? "NK" : "KN");
        }
}

TEST(embed_gathers_rows_exactly) {
    /* every f16 bit pattern as a one-column table, gathered in reverse */
    int V = 65536;
    uint16_t *table = mem_alloc(sizeof(uint16_t) * (size_t)V);
    int *tok = mem_alloc(sizeof(int) * (size_t)V);
    float *out = floats((size_t)V);
    for (int i = 0; i < V; i++) table[i] = (uint16_t)i, tok[i] = V - 1 - i;
    cpu_lowp_embed(out, tok, V, table, DT_F16, V, 1);
    int bad = 0;
    for (int i = 0; i < V; i++) {
        float want = f16_to_f32((uint16_t)tok[i]);
        bad += isnan(want) ? !isnan(out[i]) : memcmp(&want, &out[i], 4) != 0;
    }
    CHECK_MSG(bad == 0, "%d f16 values differ from f16_to_f32", bad);
    /* and as one row of V columns: the vectorized conversion of every value */
    int zero = 0;
    cpu_lowp_embed(out, &zero, 1, table, DT_F16, 1, V);
    for (int i = 0; i < V; i++) {
        float want = f16_to_f32((uint16_t)i);
        bad += isnan(want) ? !isnan(out[i]) : memcmp(&want, &out[i], 4) != 0;
    }
    CHECK_MSG(bad == 0, "%d f16 values differ from f16_to_f32 in a row", bad);
    cpu_lowp_embed(out, tok, V, table, DT_BF16, V, 1);
    for (int i = 0; i < V; i++) {
        float want = bf16_to_f32((uint16_t)tok[i]);
        bad += memcmp(&want, &out[i], 4) != 0;
    }
    CHECK_MSG(bad == 0, "%d bf16 values differ", bad);
    /* rows of a (V=50, C=77) table */
    int toks[6] = {0, 49, 3, 3, 17, 49};
    for (int i = 0; i < 50 * 77; i++) table[i] = f32_to_bf16((float)i * 0.25f - 300.0f);
    cpu_lowp_embed(out, toks, 6, table, DT_BF16, 50, 77);
    for (int i = 0; i < 6; i++)
        for (int c = 0; c < 77; c++) bad += out[i * 77 + c] != bf16_to_f32(table[toks[i] * 77 + c]);
    CHECK(bad == 0);
    mem_free(out);
    mem_free(tok);
    mem_free(table);
}

/* Seconds per call of fn over `copies` distinct weights (together larger than the caches):
 * the fastest of reps calls, since this machine may be shared with other jobs. */
typedef void (*bench_fn)(void *ctx, int copy);
static double bench(bench_fn fn, void *ctx, int copies, int reps) {
    fn(ctx, 0);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = time_now();
        fn(ctx, r % copies);
        double t = time_now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

typedef struct gemv_ctx {
    uint16_t *W;             /* copies x (N*K) */
    float *Wf;               /* the same converted to f32 (the sgemm reference) */
    const float *x;
    float *y;
    int M, N, K;
    cpu_lowp_layout layout;
    double sink;
} gemv_ctx;

static void run_gemv(void *vctx, int copy) {
    gemv_ctx *c = vctx;
    const uint16_t *w = c->W + (size_t)copy * c->N * c->K;
    cpu_lowp_matmul(c->y, c->N, c->x, c->K, w, DT_BF16, c->layout, c->layout == CPU_LOWP_KN ? c->N : c->K, c->M,
                    c->N, c->K, 1.0f, 0.0f);
}

static void run_sgemm(void *vctx, int copy) {
    gemv_ctx *c = vctx;
    const float *w = c->Wf + (size_t)copy * c->N * c->K;
    bool kn = c->layout == CPU_LOWP_KN;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, kn ? CblasNoTrans : CblasTrans, c->M, c->N, c->K, 1.0f, c->x, c->K, w,
                kn ? c->N : c->K, 0.0f, c->y, c->N);
}

/* Reads every byte of one copy (the bandwidth a GEMV could reach). */
static void run_read(void *vctx, int copy) {
    gemv_ctx *c = vctx;
    const uint64_t *p = (const uint64_t *)(c->W + (size_t)copy * c->N * c->K);
    size_t n = (size_t)c->N * c->K / 4;
    uint64_t acc = 0;
#pragma omp parallel for reduction(^ : acc) schedule(static)
    for (size_t i = 0; i < n; i++) acc ^= p[i];
    c->sink += (double)acc;
}

TEST(gemv_bf16_2048x5632_timing) {
    const int N = 5632, K = 2048, copies = getenv("SKEIN_QUICK") ? 1 : 4, reps = getenv("SKEIN_QUICK") ? 2 : 40;
    size_t per = (size_t)N * K;
    gemv_ctx c = {.N = N, .K = K, .M = 1};
    c.W = mem_alloc(per * copies * 2);
    float *x = floats((size_t)64 * K);
    c.y = floats((size_t)64 * N);
    CHECK(c.W && x && c.y);
    for (size_t i = 0; i < per * copies; i++) c.W[i] = f32_to_bf16((float)((i * 2654435761u) % 1000) * 1e-4f - 0.05f);
    for (int i = 0; i < 64 * K; i++) x[i] = (float)(i % 17) * 0.1f - 0.8f;
    c.x = x;
    c.Wf = floats(per * copies);
    CHECK(c.Wf);
    dtype_to_f32(c.Wf, c.W, DT_BF16, per * copies);
    double mb = per * 2 / 1e6;
    double t_read = bench(run_read, &c, copies, reps);
    printf("  %d threads, %d weight copies of %.1f MB; read bandwidth %.1f GB/s (%.2f ms per copy; best of several calls)\n",
           omp_get_max_threads(), copies, mb, mb / 1e3 / t_read, t_read * 1e3);
    for (int lay = 0; lay < 2; lay++) {
        c.layout = lay ? CPU_LOWP_NK : CPU_LOWP_KN;
        static const int Ms[] = {1, 4, 8, 9, 16, 64};
        for (int mi = 0; mi < 6; mi++) {
            c.M = Ms[mi];
            int r = Ms[mi] > 4 ? reps / 4 + 1 : reps;
            double t = bench(run_gemv, &c, copies, r), tf = bench(run_sgemm, &c, copies, r);
            printf("  %s M=%-2d: %.2f ms, %.1f GB/s of weights, %.1f GFLOP/s (f32 sgemm on f32 weights: %.2f ms)\n",
                   lay ? "NK" : "KN", c.M, t * 1e3, mb / 1e3 / t, 2.0 * c.M * N * K / t / 1e9, tf * 1e3);
        }
    }
    mem_free(c.Wf);
    mem_free(c.y);
    mem_free(x);
    mem_free(c.W);
}

TEST_MAIN()
