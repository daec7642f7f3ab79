/* Tests of a backend's ops, op by op, on SKEIN_TEST_DEVICE (test_device.h; the CPU backend,
 * backend/cpu/cpu.c, by default).
 *
 * Forward ops are compared with plain double-precision references; backward ops with
 * central finite differences of a scalar objective J = sum_i w_i out_i (w random, summed in
 * double), so dout = w. Inputs are O(1), the step is h = 1e-3 and the forward runs in f32:
 * its rounding (~1e-7 relative per output) becomes ~1e-4 in the difference quotient, so
 * each checked entry must satisfy |analytic - numeric| <= 1e-2 |analytic| + 2e-3
 * (FD_RTOL, FD_ATOL); observed errors are far smaller. Every entry of every input is
 * checked (the sizes are small).
 *
 * Every array lives on the host, where the references and the finite differences read and
 * perturb it, and has a device mirror the ops run on: RUN(...) uploads every mirror of the
 * case, runs the op calls it wraps and downloads every mirror back. Inside it, V, M and DEV
 * name the mirror of a host pointer (a pointer inside an array names the same place in its
 * mirror, so two host pointers that alias alias on the device too). The tests never
 * dereference backend memory, so they check any backend. */
#include "test.h"
#include "test_device.h"

#include <omp.h>

#include "backend/backend.h"
#include "base/rng.h"

#define FD_H 1e-3f
#define FD_RTOL 1e-2
#define FD_ATOL 2e-3

static backend *be;
static rng R;

/* ---- host arrays and their device mirrors ---- */

typedef struct mirror { char *host, *dev; size_t bytes; } mirror;
enum { MAX_MIRRORS = 64 };
static mirror mirrors[MAX_MIRRORS];
static int n_mirrors;

/* A zeroed host array of `bytes` with a device mirror, freed at the next case's setup. */
static void *mirrored(size_t bytes) {
    SK_ASSERT(n_mirrors < MAX_MIRRORS);
    mirror *r = &mirrors[n_mirrors++];
    r->host = calloc(1, bytes);
    r->dev = backend_alloc(be, bytes);
    r->bytes = bytes;
    SK_ASSERT(r->host && r->dev);
    return r->host;
}

/* The device address of host address p inside a mirrored array. */
static void *DEV(const void *p) {
    for (int i = 0; i < n_mirrors; i++) {
        const mirror *r = &mirrors[i];
        if ((const char *)p >= r->host && (const char *)p < r->host + r->bytes) return r->dev + ((const char *)p - r->host);
    }
    SK_ASSERT(!"not inside a mirrored array");
    return NULL;
}
/* f32 views of the mirror at host address p: (n) and (rows, cols). */
static tensor V(const float *p, int64_t n) { return tensor_1d(DEV(p), DT_F32, n); }
static tensor M(const float *p, int64_t rows, int64_t cols) { return tensor_2d(DEV(p), DT_F32, rows, cols); }

static void mirrors_sync(backend_copy_dir dir) {
    for (int i = 0; i < n_mirrors; i++) {
        mirror *r = &mirrors[i];
        if (dir == COPY_HOST_TO_DEVICE) backend_upload(be, r->dev, r->host, r->bytes);
        else backend_download(be, r->host, r->dev, r->bytes);
    }
}
#define RUN(...) do { mirrors_sync(COPY_HOST_TO_DEVICE); __VA_ARGS__; mirrors_sync(COPY_DEVICE_TO_HOST); } while (0)

static void setup(uint64_t seed) {
    be = test_device();
    for (int i = 0; i < n_mirrors; i++) {
        free(mirrors[i].host);
        backend_mem_free(be, mirrors[i].dev);
    }
    n_mirrors = 0;
    rng_seed(&R, seed);
}

static float *randn(size_t n, float sd) {
    float *x = mirrored(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = sd * rng_normal(&R);
    return x;
}

static float *zeros(size_t n) { return mirrored(n * sizeof(float)); }

/* A mirrored copy of the host ints src(n). */
static int *ints(const int *src, size_t n) {
    int *x = mirrored(n * sizeof(int));
    memcpy(x, src, n * sizeof(int));
    return x;
}

static double dot(const float *w, const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)w[i] * x[i];
    return s;
}

/* Checks analytic gradient g(n) of f() with respect to x(n) by central differences.
 * Returns the number of mismatches, printing the first few. */
static int fd_check(const char *what, float *x, const float *g, size_t n, double (*f)(void)) {
    int bad = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i];
        x[i] = x0 + FD_H;
        double fp = f();
        x[i] = x0 - FD_H;
        double fm = f();
        x[i] = x0;
        double num = (fp - fm) / (2.0 * FD_H), err = fabs(num - g[i]), tol = FD_RTOL * fabs(g[i]) + FD_ATOL;
        worst = err / tol > worst ? err / tol : worst;
        if (err > tol && bad++ < 5) printf("  %s[%zu]: analytic %.6g numeric %.6g\n", what, i, g[i], num);
    }
    printf("  %s: %zu entries, worst error/tolerance %.3f\n", what, n, worst);
    return bad;
}

/* ---- gemm and linear layers ---- */

/* Row strides wider than the data: the views are column blocks of (.., 12) matrices, as
 * GPT-2's inference cuts c_attn into q, k and v. */
TEST(matmul_matches_reference_all_transposes) {
    setup(1);
    const int M = 7, N = 9, K = 5, ld = 12;   /* leading dimensions wider than the data */
    float *A = randn(12 * 12, 1), *B = randn(12 * 12, 1), *C0 = randn(M * ld, 1), *C = zeros(M * ld);
    CHECK(backend_supports(be, BACKEND_OP_MATMUL, DT_F32));
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            memcpy(C, C0, sizeof(float) * M * ld);
            tensor a = tensor_cols(tensor_2d(DEV(A), DT_F32, 12, 12), 0, ta ? M : K);
            tensor b = tensor_cols(tensor_2d(DEV(B), DT_F32, 12, 12), 0, tb ? K : N);
            RUN(be->ops->matmul(be, NULL, tensor_2d_ld(DEV(C), DT_F32, M, N, ld), tensor_rows(a, 0, ta ? K : M), ta,
                                tensor_rows(b, 0, tb ? N : K), tb, 0.7f, 0.3f));
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? A[k * ld + i] : A[i * ld + k]) * (tb ? B[j * ld + k] : B[k * ld + j]);
                    double want = 0.7 * s + 0.3 * C0[i * ld + j];
                    CHECK_MSG(fabs(C[i * ld + j] - want) < 1e-5, "ta %d tb %d (%d,%d): %g vs %g", ta, tb, i, j, C[i * ld + j], want);
                }
            for (int i = 0; i < M; i++)
                for (int j = N; j < ld; j++) CHECK(C[i * ld + j] == C0[i * ld + j]);
        }
}

/* Decode-sized products (M = 1, a few, the most CPU_LOWP_SMALL_M = 8, just past it) over sizes
 * that cross the CPU's column strips and dot blocks, with wide row strides: C against the double reference, with
 * beta 0 never reading C (NaN there), and on the CPU row 0 the same bits whatever M is among
 * the few (cuBLAS promises no such thing). */
TEST(matmul_few_rows_match_reference) {
    setup(1);
    enum { N = 300, K = 37, LD = 310, MMAX = 9 };
    float *A = randn(MMAX * LD, 1), *B = randn(LD * LD, 1), *C0 = randn(MMAX * LD, 1), *C = zeros(MMAX * LD);
    float row0[2][N];
    const int Ms[5] = {1, 2, 5, 8, 9};
    for (int tb = 0; tb < 2; tb++)
        for (int mi = 0; mi < 5; mi++)
            for (int with_beta = 0; with_beta < 2; with_beta++) {
                const int M = Ms[mi];
                const float beta = with_beta ? 0.3f : 0.0f;
                for (int i = 0; i < MMAX * LD; i++) C[i] = with_beta ? C0[i] : NAN;
                tensor a = tensor_2d_ld(DEV(A), DT_F32, M, K, LD);
                tensor b = tb ? tensor_2d_ld(DEV(B), DT_F32, N, K, LD) : tensor_2d_ld(DEV(B), DT_F32, K, N, LD);
                RUN(be->ops->matmul(be, NULL, tensor_2d_ld(DEV(C), DT_F32, M, N, LD), a, false, b, tb, 0.7f, beta));
                int bad = 0;
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        double sum = 0;
                        for (int k = 0; k < K; k++) sum += (double)A[i * LD + k] * (tb ? B[j * LD + k] : B[k * LD + j]);
                        const double want = 0.7 * sum + (with_beta ? 0.3 * C0[i * LD + j] : 0.0);
                        if (!(fabs(C[i * LD + j] - want) < 1e-4) && bad++ < 3)
                            printf("  tb %d M %d beta %g (%d,%d): %g vs %g\n", tb, M, beta, i, j, C[i * LD + j], want);
                    }
                CHECK_MSG(bad == 0, "tb %d M %d: %d mismatches", tb, M, bad);
                if (M == 2 && !with_beta) memcpy(row0[tb], C, sizeof row0[tb]);
                if (M > 2 && M <= 8 && !with_beta && !strcmp(be->name, "cpu"))
                    CHECK_MSG(!memcmp(row0[tb], C, sizeof row0[tb]), "tb %d: row 0 at M %d differs from M 2", tb, M);
            }
}

/* One-row products large enough to run on every thread (the CPU's cpu_gemv: KN by ranges of
 * rows with per-thread partials in column blocks of 4096, NK by ranges of rows, 4 at once), with
 * tails past every unrolled step (K = 771 rows, N = 4100 columns: two column blocks): C against
 * the double reference within 1e-5 of the sum of |products|, beta 0 never reading C (NaN there),
 * the floats past C's N untouched, and a second run the same bits. */
TEST(matmul_one_row_threaded_matches_reference) {
    setup(3);
    const struct { int N, K, LD; bool tb; } cases[] = {{4100, 771, 4110, false}, {1027, 781, 790, true}};
    for (int c = 0; c < 2; c++) {
        const int N = cases[c].N, K = cases[c].K, LD = cases[c].LD;
        const bool tb = cases[c].tb;
        const int brows = tb ? N : K;
        const int CL = N + 10;   /* C's row and ten floats past it */
        float *A = randn(K, 1), *B = randn((size_t)brows * LD, 1), *C0 = randn(CL, 1), *C = zeros(CL);
        float *first = malloc(sizeof(float) * N);
        for (int with_beta = 0; with_beta < 2; with_beta++)
            for (int run = 0; run < 2; run++) {
                const float beta = with_beta ? 0.3f : 0.0f;
                for (int j = 0; j < CL; j++) C[j] = with_beta || j >= N ? C0[j] : NAN;
                RUN(be->ops->matmul(be, NULL, tensor_2d(DEV(C), DT_F32, 1, N), tensor_2d(DEV(A), DT_F32, 1, K), false,
                                    tensor_2d_ld(DEV(B), DT_F32, brows, tb ? K : N, LD), tb, 0.7f, beta));
                int bad = 0;
                for (int j = 0; j < N; j++) {
                    double sum = 0, mag = 0;
                    for (int k = 0; k < K; k++) {
                        const double t = (double)A[k] * (tb ? B[(size_t)j * LD + k] : B[(size_t)k * LD + j]);
                        sum += t, mag += fabs(t);
                    }
                    const double want = 0.7 * sum + (with_beta ? 0.3 * C0[j] : 0.0);
                    if (!(fabs(C[j] - want) <= 1e-5 * (0.7 * mag + 1)) && bad++ < 3)
                        printf("  tb %d beta %g [%d]: %.9g vs %.9g\n", tb, beta, j, C[j], want);
                }
                for (int j = N; j < CL; j++) bad += C[j] != C0[j];
                CHECK_MSG(bad == 0, "tb %d N %d K %d beta %g: %d mismatches", tb, N, K, beta, bad);
                if (run == 0) memcpy(first, C, sizeof(float) * N);
                else CHECK_MSG(!memcmp(first, C, sizeof(float) * N), "tb %d beta %g: a second run differs", tb, beta);
            }
        free(first);
    }
}

/* out = x(N,IC) @ W(IC,OC) + b, backward as gpt2.c does it: dW += x^T dout,
 * db += colsum(dout), dx = dout W^T. */
enum { LN_ = 6, LIC = 5, LOC = 7 };
static float *lx, *lw, *lb, *lout, *lwt;
static double linear_obj(void) {
    RUN(be->ops->matmul(be, NULL, M(lout, LN_, LOC), M(lx, LN_, LIC), false, M(lw, LIC, LOC), false, 1.0f, 0.0f);
        be->ops->bias_add(be, NULL, M(lout, LN_, LOC), V(lb, LOC)));
    return dot(lwt, lout, LN_ * LOC);
}
TEST(linear_backward_matches_finite_differences) {
    setup(2);
    lx = randn(LN_ * LIC, 1); lw = randn(LIC * LOC, 1); lb = randn(LOC, 1); lout = zeros(LN_ * LOC);
    lwt = randn(LN_ * LOC, 1);
    float *dx = zeros(LN_ * LIC), *dw = randn(LIC * LOC, 1), *db = randn(LOC, 1);
    float *dw0 = zeros(LIC * LOC), *db0 = zeros(LOC);
    memcpy(dw0, dw, sizeof(float) * LIC * LOC);
    memcpy(db0, db, sizeof(float) * LOC);
    RUN(be->ops->bias_backward(be, NULL, V(db, LOC), M(lwt, LN_, LOC));
        be->ops->matmul(be, NULL, M(dw, LIC, LOC), M(lx, LN_, LIC), true, M(lwt, LN_, LOC), false, 1.0f, 1.0f);
        be->ops->matmul(be, NULL, M(dx, LN_, LIC), M(lwt, LN_, LOC), false, M(lw, LIC, LOC), true, 1.0f, 0.0f));
    for (int i = 0; i < LIC * LOC; i++) dw[i] -= dw0[i];   /* they accumulate: remove the start */
    for (int i = 0; i < LOC; i++) db[i] -= db0[i];
    CHECK(fd_check("dx", lx, dx, LN_ * LIC, linear_obj) == 0);
    CHECK(fd_check("dW", lw, dw, LIC * LOC, linear_obj) == 0);
    CHECK(fd_check("db", lb, db, LOC, linear_obj) == 0);
}

/* ---- LayerNorm ---- */

enum { NN = 5, NC = 24 };
static float *nx, *nwt, *nb, *nout, *nmean, *nrstd, *nw;
static double ln_obj(void) {
    RUN(be->ops->layernorm_forward(be, NULL, M(nout, NN, NC), V(nmean, NN), V(nrstd, NN), M(nx, NN, NC), tensor_none(),
                                   V(nwt, NC), V(nb, NC), 1e-5f));
    return dot(nw, nout, NN * NC);
}
TEST(layernorm_forward_and_backward) {
    setup(3);
    nx = randn(NN * NC, 1.5f); nwt = randn(NC, 1); nb = randn(NC, 1); nout = zeros(NN * NC);
    nmean = zeros(NN); nrstd = zeros(NN); nw = randn(NN * NC, 1);
    for (int i = 0; i < NN * NC; i++) nx[i] += 3.0f;   /* an offset the two-pass variance must handle */
    ln_obj();
    for (int i = 0; i < NN; i++) {
        double m = 0, v = 0;
        for (int c = 0; c < NC; c++) m += nx[i * NC + c];
        m /= NC;
        for (int c = 0; c < NC; c++) v += (nx[i * NC + c] - m) * (nx[i * NC + c] - m);
        double r = 1.0 / sqrt(v / NC + 1e-5);
        for (int c = 0; c < NC; c++)
            CHECK_NEAR(nout[i * NC + c], (nx[i * NC + c] - m) * r * nwt[c] + nb[c], 1e-5);
    }
    float *dx = zeros(NN * NC), *dwt = zeros(NC), *db = zeros(NC);
    RUN(be->ops->layernorm_backward(be, NULL, M(dx, NN, NC), tensor_none(), V(dwt, NC), V(db, NC), M(nw, NN, NC),
                                    M(nx, NN, NC), V(nwt, NC), V(nmean, NN), V(nrstd, NN)));
    CHECK(fd_check("dinp", nx, dx, NN * NC, ln_obj) == 0);
    CHECK(fd_check("dweight", nwt, dwt, NC, ln_obj) == 0);
    CHECK(fd_check("dbias", nb, db, NC, ln_obj) == 0);
    /* accumulation: a second call adds the same amounts */
    float first = dx[7], firstw = dwt[3];
    uint16_t *lp = mirrored(NN * NC * sizeof(uint16_t));
    RUN(be->ops->layernorm_backward(be, NULL, M(dx, NN, NC), tensor_2d(DEV(lp), DT_BF16, NN, NC), V(dwt, NC), V(db, NC),
                                    M(nw, NN, NC), M(nx, NN, NC), V(nwt, NC), V(nmean, NN), V(nrstd, NN)));
    CHECK_NEAR(dx[7], 2 * first, 1e-6);
    CHECK_NEAR(dwt[3], 2 * firstw, 1e-6);
    for (int i = 0; i < NN * NC; i++) CHECK(lp[i] == f32_to_bf16(dx[i]));   /* the copy of the sum */
    /* the residual: forward(inp, resid) is inp += resid, then forward(inp) */
    float *res = randn(NN * NC, 1), *sum = zeros(NN * NC), *out2 = zeros(NN * NC);
    for (int i = 0; i < NN * NC; i++) sum[i] = nx[i] + res[i];
    RUN(be->ops->layernorm_forward(be, NULL, M(out2, NN, NC), tensor_none(), tensor_none(), M(sum, NN, NC),
                                   tensor_none(), V(nwt, NC), V(nb, NC), 1e-5f);
        be->ops->layernorm_forward(be, NULL, M(nout, NN, NC), tensor_none(), tensor_none(), M(nx, NN, NC),
                                   M(res, NN, NC), V(nwt, NC), V(nb, NC), 1e-5f));
    CHECK(!memcmp(nx, sum, sizeof(float) * NN * NC) && !memcmp(nout, out2, sizeof(float) * NN * NC));
}

/* ---- GELU ---- */

enum { GN = 241 };
static float *gx, *gout, *gw;
static double gelu_obj(void) {
    RUN(be->ops->gelu_forward(be, NULL, V(gout, GN), V(gx, GN)));
    return dot(gw, gout, GN);
}
TEST(gelu_forward_and_backward) {
    setup(4);
    gx = zeros(GN); gout = zeros(GN); gw = randn(GN, 1);
    for (int i = 0; i < GN; i++) gx[i] = -12.0f + 0.1f * i;   /* through both saturations */
    gelu_obj();
    for (int i = 0; i < GN; i++) {
        double x = gx[i], want = 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        CHECK_MSG(fabs(gout[i] - want) <= 1e-6 * (1 + fabs(want)), "gelu(%g) = %.9g, want %.9g", x, gout[i], want);
    }
    float *dx = zeros(GN);
    RUN(be->ops->gelu_backward(be, NULL, V(dx, GN), V(gx, GN), V(gw, GN)));
    CHECK(fd_check("dinp", gx, dx, GN, gelu_obj) == 0);
    float *inplace = zeros(GN);   /* dinp may alias dout */
    memcpy(inplace, gw, sizeof(float) * GN);
    RUN(be->ops->gelu_backward(be, NULL, V(inplace, GN), V(gx, GN), V(inplace, GN)));
    CHECK(!memcmp(inplace, dx, sizeof(float) * GN));
}

/* ---- attention ---- */

/* A (d0,d1,d2) view of the host array at p (for the references), and D(t): the same view of
 * its device mirror (for the ops). */
static tensor view3(float *p, int64_t d0, int64_t d1, int64_t d2) {
    int64_t shape[3] = {d0, d1, d2};
    return tensor_make(p, DT_F32, MEM_HOST, 3, shape);
}
static tensor D(tensor t) {
    if (tensor_is_none(t)) return t;
    t.data = DEV(t.data);
    t.mem = MEM_DEVICE;
    return t;
}
/* One attention case: q(B,Tq,NH*HS) against k, v (B,Tk,NKV*HS), window W, dropout p. Packed:
 * q, k, v are column slices of one qkv(B,T,3C) as GPT-2 lays it out (Tq = Tk, NKV = NH), rows
 * 3C apart, and dq, dk, dv slices of one dqkv. Otherwise three contiguous buffers. */
typedef struct attn_case { int B, Tq, Tk, NH, NKV, HS, W; float p; bool packed; } attn_case;
static attn_case ac;
static tensor aq, ak, av, aout, alse;
static float *aw;   /* objective weights over out */
static double attn_obj(void) {
    RUN(be->ops->attention_forward(be, NULL, D(aout), D(alse), D(aq), D(ak), D(av), ac.NH, ac.NKV, ac.W, ac.p, 77));
    return dot(aw, tensor_f32(aout), (size_t)tensor_numel(aout));
}

static double at3(tensor t, int i, int j, int c) {
    return tensor_f32(t)[i * t.stride[0] + j * t.stride[1] + c];
}
/* Views q, k, v over buf: three contiguous blocks, or column slices of packed (B,T,3C). */
static void attn_views(float *buf, tensor *q, tensor *k, tensor *v) {
    const int QD = ac.NH * ac.HS, KD = ac.NKV * ac.HS;
    if (ac.packed) {
        tensor all = view3(buf, ac.B, ac.Tq, QD + 2 * KD);
        *q = tensor_cols(all, 0, QD);
        *k = tensor_cols(all, QD, KD);
        *v = tensor_cols(all, QD + KD, KD);
    } else {
        *q = view3(buf, ac.B, ac.Tq, QD);
        *k = view3(buf + (size_t)ac.B * ac.Tq * QD, ac.B, ac.Tk, KD);
        *v = view3(buf + (size_t)ac.B * (ac.Tq * QD + ac.Tk * KD), ac.B, ac.Tk, KD);
    }
}
static size_t attn_buf_floats(void) {
    return (size_t)ac.B * (ac.Tq * ac.NH + 2 * ac.Tk * ac.NKV) * ac.HS;
}

/* The forward against an explicit softmax in double: scores q.k/sqrt(HS) of the keys query t
 * sees (s <= Tk-Tq+t, and s > Tk-Tq+t-W with a window), their log-sum-exp, probabilities
 * times the dropout mask over the flat (B,NH,Tq,Tk) index, times v. */
static void attn_check_forward(const char *name) {
    const int G = ac.NH / ac.NKV;
    for (int b = 0; b < ac.B; b++)
        for (int h = 0; h < ac.NH; h++)
            for (int t = 0; t < ac.Tq; t++) {
                const int pos = ac.Tk - ac.Tq + t, kh = h / G;
                double s[512], mx = -1e30, sum = 0;
                bool vis[512];
                for (int u = 0; u < ac.Tk; u++) {
                    vis[u] = u <= pos && (ac.W == 0 || u > pos - ac.W);
                    if (!vis[u]) continue;
                    s[u] = 0;
                    for (int i = 0; i < ac.HS; i++) s[u] += at3(aq, b, t, h * ac.HS + i) * at3(ak, b, u, kh * ac.HS + i);
                    s[u] /= sqrt(ac.HS);
                    mx = s[u] > mx ? s[u] : mx;
                }
                for (int u = 0; u < ac.Tk; u++) if (vis[u]) sum += exp(s[u] - mx);
                const size_t row = ((size_t)b * ac.NH + h) * ac.Tq + t;
                if (!tensor_is_none(alse))
                    CHECK_MSG(fabs(tensor_f32(alse)[row] - (mx + log(sum))) <= 1e-5 * (1 + fabs(mx)),
                              "%s: lse[%d,%d,%d] %.7g, want %.7g", name, b, h, t, tensor_f32(alse)[row], mx + log(sum));
                for (int i = 0; i < ac.HS; i++) {
                    double o = 0;
                    for (int u = 0; u < ac.Tk; u++) {
                        if (!vis[u]) continue;
                        double keep = ac.p > 0 ? (dropout_keep(77, row * ac.Tk + u, ac.p) ? 1.0 / (1.0 - ac.p) : 0.0) : 1.0;
                        o += exp(s[u] - mx) / sum * keep * at3(av, b, u, kh * ac.HS + i);
                    }
                    CHECK_MSG(fabs(at3(aout, b, t, h * ac.HS + i) - o) <= 1e-5, "%s: out[%d,%d,%d] %.7g, want %.7g", name,
                              b, t, h * ac.HS + i, at3(aout, b, t, h * ac.HS + i), o);
                }
            }
}

/* n NaNs: the gradient buffers start as NaN, so an element the backward does not write (or
 * adds to) shows. */
static void fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

/* Runs case c: forward against the reference, lse included; backward by finite differences
 * of every entry of q, k and v (one buffer: dq, dk, dv are its gradient), both times into
 * gradient buffers of NaNs, and that a second backward writes the same bits (the gradients
 * are written, every element, in a fixed order). */
static void attention_case(const char *name, attn_case c) {
    setup(20 + c.NKV + 3 * c.W + 7 * c.Tq + (c.p > 0));
    ac = c;
    const size_t n = attn_buf_floats(), no = (size_t)c.B * c.Tq * c.NH * c.HS;
    float *buf = randn(n, 1), *dbuf = zeros(n);
    fill_nan(dbuf, n);
    attn_views(buf, &aq, &ak, &av);
    aout = view3(zeros(no), c.B, c.Tq, c.NH * c.HS);
    alse = view3(zeros((size_t)c.B * c.NH * c.Tq), c.B, c.NH, c.Tq);
    aw = randn(no, 1);
    attn_obj();
    attn_check_forward(name);
    if (test_failed_now) return;
    tensor dq, dk, dv;
    attn_views(dbuf, &dq, &dk, &dv);
    RUN(be->ops->attention_backward(be, NULL, D(dq), D(dk), D(dv), D(view3(aw, c.B, c.Tq, c.NH * c.HS)), D(aq), D(ak),
                                    D(av), D(aout), D(alse), c.NH, c.NKV, c.W, c.p, 77));
    size_t unwritten = 0;
    for (size_t i = 0; i < n; i++) unwritten += !isfinite(dbuf[i]);
    CHECK_MSG(unwritten == 0, "%s: %zu gradient elements left unwritten (NaN)", name, unwritten);
    CHECK(fd_check(name, buf, dbuf, n, attn_obj) == 0);
    attn_obj();   /* fd_check left out and lse from a perturbed input */
    float *first = zeros(n);
    memcpy(first, dbuf, n * sizeof(float));
    fill_nan(dbuf, n);
    RUN(be->ops->attention_backward(be, NULL, D(dq), D(dk), D(dv), D(view3(aw, c.B, c.Tq, c.NH * c.HS)), D(aq), D(ak),
                                    D(av), D(aout), D(alse), c.NH, c.NKV, c.W, c.p, 77));
    CHECK_MSG(!memcmp(dbuf, first, n * sizeof(float)), "%s: a second backward wrote other bits", name);
}

/* {B, Tq, Tk, NH, NKV, HS, W, p, packed} */
TEST(attention_multi_head_and_grouped_query) {
    attention_case("MHA", (attn_case){2, 5, 5, 3, 3, 4, 0, 0.0f, false});
    if (!test_failed_now) attention_case("GQA 4:2", (attn_case){2, 6, 6, 4, 2, 4, 0, 0.0f, false});
    if (!test_failed_now) attention_case("MQA 4:1", (attn_case){2, 6, 6, 4, 1, 4, 0, 0.0f, false});
}
TEST(attention_sliding_window) {
    attention_case("GQA W=2", (attn_case){2, 6, 6, 4, 2, 4, 2, 0.0f, false});
    if (!test_failed_now) attention_case("GQA W=3", (attn_case){2, 6, 6, 4, 2, 4, 3, 0.0f, false});
    if (!test_failed_now) attention_case("MHA W=T", (attn_case){2, 6, 6, 4, 4, 4, 6, 0.0f, false});
}
/* Fewer queries than keys, as KV-cached decode and prefill run it: query t at Tk-Tq+t. */
TEST(attention_fewer_queries_than_keys) {
    attention_case("Tq<Tk", (attn_case){2, 3, 8, 4, 2, 4, 0, 0.0f, false});
    if (!test_failed_now) attention_case("Tq<Tk W=3", (attn_case){1, 3, 8, 4, 2, 4, 3, 0.0f, false});
    if (!test_failed_now) attention_case("Tq=1", (attn_case){1, 1, 7, 4, 2, 4, 0, 0.0f, false});
}
TEST(attention_packed_qkv_strides) {
    attention_case("packed qkv", (attn_case){2, 5, 5, 3, 3, 4, 0, 0.0f, true});
}
/* Dropout on the probabilities: the recomputing backward reproduces the forward's mask. */
TEST(attention_dropout) {
    attention_case("packed qkv, dropout 0.3", (attn_case){2, 5, 5, 3, 3, 4, 0, 0.3f, true});
    if (!test_failed_now) attention_case("GQA W=3, dropout 0.3", (attn_case){2, 6, 6, 4, 2, 4, 3, 0.3f, false});
    if (!test_failed_now) attention_case("Tq<Tk, dropout 0.3", (attn_case){2, 3, 8, 4, 2, 4, 0, 0.3f, false});
}
/* Rows longer than one block of keys (the online softmax rescales across blocks), with a
 * window that starts inside a block. */
TEST(attention_rows_longer_than_a_block) {
    attention_case("T=150", (attn_case){1, 150, 150, 2, 1, 4, 0, 0.0f, false});
    if (!test_failed_now) attention_case("T=150 W=100", (attn_case){1, 150, 150, 2, 1, 4, 100, 0.0f, false});
}

/* Inference: the forward without lse over a growing prefix of the keys (a KV cache) in
 * chunks from position 0 gives the rows of the one full forward, with and without a window. */
TEST(attention_chunks_match_full) {
    setup(16);
    enum { T = 9, NH = 4, NKV = 2, HS = 4, QD = NH * HS, KD = NKV * HS };
    float *q = randn(T * QD, 1), *k = randn(T * KD, 1), *v = randn(T * KD, 1);
    float *out = zeros(T * QD), *got = zeros(T * QD), *lse = zeros(NH * T);
    for (int win = 0; win <= 3; win += 3) {
        RUN(be->ops->attention_forward(be, NULL, D(view3(out, 1, T, QD)), D(view3(lse, 1, NH, T)), D(view3(q, 1, T, QD)),
                                       D(view3(k, 1, T, KD)), D(view3(v, 1, T, KD)), NH, NKV, win, 0.0f, 0));
        int chunks[][2] = {{0, 4}, {4, 1}, {5, 3}, {8, 1}};   /* (pos, n) */
        for (int c = 0; c < 4; c++) {
            int pos = chunks[c][0], n = chunks[c][1];
            RUN(be->ops->attention_forward(be, NULL, D(view3(got + pos * QD, 1, n, QD)), tensor_none(),
                                           D(view3(q + pos * QD, 1, n, QD)), D(view3(k, 1, pos + n, KD)),
                                           D(view3(v, 1, pos + n, KD)), NH, NKV, win, 0.0f, 0));
        }
        for (int i = 0; i < T * QD; i++) CHECK_MSG(fabs(got[i] - out[i]) <= 1e-6, "W %d [%d]: %g vs %g", win, i, got[i], out[i]);
    }
}

/* The backward's sums do not depend on the thread count (on the CPU one thread owns each KV
 * head). On CUDA the OpenMP thread count plays no part, and the case checks that two
 * backwards give the same bits (its sums run in a fixed order, no atomics). */
TEST(attention_backward_independent_of_threads) {
    setup(17);
    enum { B = 2, T = 40, NH = 4, NKV = 2, HS = 8, QD = NH * HS, KD = NKV * HS };
    float *q = randn(B * T * QD, 1), *k = randn(B * T * KD, 1), *v = randn(B * T * KD, 1), *d = randn(B * T * QD, 1);
    float *out = zeros(B * T * QD), *lse = zeros(B * NH * T), *g[2];
    RUN(be->ops->attention_forward(be, NULL, D(view3(out, B, T, QD)), D(view3(lse, B, NH, T)), D(view3(q, B, T, QD)),
                                   D(view3(k, B, T, KD)), D(view3(v, B, T, KD)), NH, NKV, 5, 0.1f, 3));
    const int threads = omp_get_max_threads();
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(r ? (threads > 1 ? threads : 2) : 1);
        g[r] = zeros(B * T * (QD + 2 * KD));
        RUN(be->ops->attention_backward(be, NULL, D(view3(g[r], B, T, QD)), D(view3(g[r] + B * T * QD, B, T, KD)),
                                        D(view3(g[r] + B * T * (QD + KD), B, T, KD)), D(view3(d, B, T, QD)),
                                        D(view3(q, B, T, QD)), D(view3(k, B, T, KD)), D(view3(v, B, T, KD)),
                                        D(view3(out, B, T, QD)), D(view3(lse, B, NH, T)), NH, NKV, 5, 0.1f, 3));
    }
    omp_set_num_threads(threads);
    CHECK(!memcmp(g[0], g[1], sizeof(float) * B * T * (QD + 2 * KD)));
}

/* ---- Llama family ops ---- */

/* RMSNorm against a double reference, backward by finite differences. */
enum { RN = 5, RC = 24 };
static float *rx, *rwt, *rout, *rrstd, *rw;
static double rms_obj(void) {
    RUN(be->ops->rmsnorm_forward(be, NULL, M(rout, RN, RC), V(rrstd, RN), M(rx, RN, RC), tensor_none(), V(rwt, RC),
                                 1e-5f));
    return dot(rw, rout, RN * RC);
}
TEST(rmsnorm_forward_and_backward) {
    setup(12);
    rx = randn(RN * RC, 1.5f); rwt = randn(RC, 1); rout = zeros(RN * RC); rrstd = zeros(RN); rw = randn(RN * RC, 1);
    for (int i = 0; i < RC; i++) rx[i] += 2.0f;   /* a row with an offset: RMSNorm does not center */
    rms_obj();
    for (int i = 0; i < RN; i++) {
        double ss = 0;
        for (int c = 0; c < RC; c++) ss += (double)rx[i * RC + c] * rx[i * RC + c];
        double r = 1.0 / sqrt(ss / RC + 1e-5);
        CHECK_NEAR(rrstd[i], r, 1e-6 * r);
        for (int c = 0; c < RC; c++) CHECK_NEAR(rout[i * RC + c], rx[i * RC + c] * r * rwt[c], 1e-5);
    }
    float *dx = zeros(RN * RC), *dwt = zeros(RC);
    RUN(be->ops->rmsnorm_backward(be, NULL, M(dx, RN, RC), tensor_none(), V(dwt, RC), M(rw, RN, RC), M(rx, RN, RC),
                                  V(rwt, RC), V(rrstd, RN)));
    CHECK(fd_check("dinp", rx, dx, RN * RC, rms_obj) == 0);
    CHECK(fd_check("dweight", rwt, dwt, RC, rms_obj) == 0);
    float first = dx[7], firstw = dwt[3];   /* accumulation */
    uint16_t *lp = mirrored(RN * RC * sizeof(uint16_t));
    RUN(be->ops->rmsnorm_backward(be, NULL, M(dx, RN, RC), tensor_2d(DEV(lp), DT_BF16, RN, RC), V(dwt, RC),
                                  M(rw, RN, RC), M(rx, RN, RC), V(rwt, RC), V(rrstd, RN)));
    for (int i = 0; i < RN * RC; i++) CHECK(lp[i] == f32_to_bf16(dx[i]));
    CHECK_NEAR(dx[7], 2 * first, 1e-6);
    CHECK_NEAR(dwt[3], 2 * firstw, 1e-6);
}

/* ---- a norm with its residual add fused in ----
 * forward(out, inp, resid) against add(inp, inp, resid) then forward(out, inp, none) (the
 * inference forwards' old order), for LayerNorm and RMSNorm, an f32 or bf16 residual (a
 * branch output in [lp]) and an f32 or bf16 out, at N and C odd and even (C = 64 and 128:
 * a device's 16-byte kernels; 37 and 38: their one-element path). The sum in inp is one f32
 * addition either way: it must equal the host's inp + resid exactly on every backend. out
 * and the statistics: the same bits on the CPU (the reference); on a device within 1e-6
 * (f32) or one bf16 step, 2^-7 (bf16), relative to max(|ref|, 1). */

/* Element i of a host array of dtype dt (f32 or bf16) in f32. */
static float elem_f32(const void *p, dtype dt, size_t i) {
    return dt == DT_BF16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* Whether got(n) matches want(n), both of dtype dt, as the comment above says (exact: the
 * same bits on any backend); prints the first mismatch. */
static bool fused_match(const char *what, const void *got, const void *want, dtype dt, size_t n, bool exact) {
    const size_t sz = dtype_size(dt);
    const bool bits = exact || !strcmp(be->name, "cpu");
    const double rel = dt == DT_BF16 ? 1.0 / 128 : 1e-6;
    for (size_t i = 0; i < n; i++) {
        const double a = elem_f32(got, dt, i), b = elem_f32(want, dt, i);
        const bool ok = bits ? !memcmp((const char *)got + i * sz, (const char *)want + i * sz, sz)
                             : fabs(a - b) <= rel * fmax(fabs(b), 1.0);
        if (!ok) {
            printf("  %s[%zu]: %.9g vs %.9g\n", what, i, a, b);
            return false;
        }
    }
    return true;
}

/* The norm (ln: LayerNorm with mean, else RMSNorm) of inp into out, resid fused in. */
static void fused_norm(bool ln, tensor out, float *mean, float *rstd, tensor inp, tensor resid, const float *wt,
                       const float *b, int N, int C) {
    if (ln) be->ops->layernorm_forward(be, NULL, out, V(mean, N), V(rstd, N), inp, resid, V(wt, C), V(b, C), 1e-5f);
    else be->ops->rmsnorm_forward(be, NULL, out, V(rstd, N), inp, resid, V(wt, C), 1e-5f);
}

/* One case: fused into (x, o1, m1, r1), separate into (x2, o2, m2, r2). */
static void fused_norm_case(bool ln, int N, int C, dtype rdt, dtype odt) {
    setup((uint64_t)(ln * 1000 + N * 100 + C) * 4 + (rdt == DT_BF16) * 2 + (odt == DT_BF16));
    const size_t n = (size_t)N * C, osz = dtype_size(odt);
    float *x = randn(n, 1.5f), *x2 = zeros(n), *want = zeros(n), *rf = randn(n, 1), *wt = randn(C, 1);
    float *b = randn(C, 1), *m1 = zeros(N), *r1 = zeros(N), *m2 = zeros(N), *r2 = zeros(N);
    void *res = mirrored(n * dtype_size(rdt)), *o1 = mirrored(n * osz), *o2 = mirrored(n * osz);
    if (rdt == DT_BF16) dtype_from_f32(res, DT_BF16, rf, n);
    else memcpy(res, rf, n * sizeof(float));
    for (size_t i = 0; i < n; i++) want[i] = x[i] + elem_f32(res, rdt, i);
    memcpy(x2, x, n * sizeof(float));
    const tensor r = tensor_2d(DEV(res), rdt, N, C);
    RUN(fused_norm(ln, tensor_2d(DEV(o1), odt, N, C), m1, r1, M(x, N, C), r, wt, b, N, C);
        be->ops->add(be, NULL, M(x2, N, C), M(x2, N, C), r);
        fused_norm(ln, tensor_2d(DEV(o2), odt, N, C), m2, r2, M(x2, N, C), tensor_none(), wt, b, N, C));
    char what[80];
    snprintf(what, sizeof what, "%s N %d C %d resid %s out %s", ln ? "layernorm" : "rmsnorm", N, C,
             dtype_name(rdt), dtype_name(odt));
    CHECK_MSG(fused_match("inp += resid", x, want, DT_F32, n, true), "%s", what);
    CHECK_MSG(fused_match("add", x2, want, DT_F32, n, true), "%s", what);
    CHECK_MSG(fused_match("out", o1, o2, odt, n, false), "%s", what);
    CHECK_MSG(fused_match("rstd", r1, r2, DT_F32, N, false), "%s", what);
    CHECK_MSG(fused_match("mean", m1, m2, DT_F32, N, false), "%s", what);
}

TEST(norm_residual_fused_matches_add_then_norm) {
    static const int shapes[][2] = {{3, 37}, {4, 38}, {5, 64}, {8, 128}, {1, 4096}, {9, 4096}};
    for (int ln = 0; ln < 2; ln++)
        for (int k = 0; k < 6; k++)
            for (int rb = 0; rb < 2; rb++)
                for (int ob = 0; ob < 2; ob++)
                    fused_norm_case(ln, shapes[k][0], shapes[k][1], rb ? DT_BF16 : DT_F32, ob ? DT_BF16 : DT_F32);
}

/* RoPE: forward against the rotate_half formula evaluated in double, the rows' positions
 * (pos0 + r % T) honored, backward by finite differences (rope is linear, so the
 * objective's gradient is exactly rope_backward(w)), and backward undoing forward. */
enum { PB = 2, PT = 5, PNH = 3, PHS = 8, PP = 16, PPOS = 4 };
static float *px, *ptmp, *pcos, *psin, *pw;
/* x(PB,PT,PNH,PHS) at host address p, and the (PP, PHS/2) tables, as device views. */
static tensor rope_x(const float *p) {
    const int64_t shape[4] = {PB, PT, PNH, PHS};
    return tensor_make(DEV(p), DT_F32, MEM_DEVICE, 4, shape);
}
static double rope_obj(void) {
    memcpy(ptmp, px, sizeof(float) * PB * PT * PNH * PHS);
    RUN(be->ops->rope_forward(be, NULL, rope_x(ptmp), M(pcos, PP, PHS / 2), M(psin, PP, PHS / 2), PPOS));
    return dot(pw, ptmp, PB * PT * PNH * PHS);
}
TEST(rope_forward_and_backward) {
    setup(13);
    const int n = PB * PT * PNH * PHS, H2 = PHS / 2;
    px = randn(n, 1); ptmp = zeros(n); pw = randn(n, 1); pcos = zeros(PP * H2); psin = zeros(PP * H2);
    for (int p = 0; p < PP; p++)
        for (int i = 0; i < H2; i++) {
            double ang = p * pow(10000.0, -2.0 * i / PHS);
            pcos[p * H2 + i] = (float)cos(ang);
            psin[p * H2 + i] = (float)sin(ang);
        }
    rope_obj();
    for (int r = 0; r < PB * PT; r++)
        for (int h = 0; h < PNH; h++)
            for (int i = 0; i < PHS; i++) {
                int p = PPOS + r % PT, j = i % H2;
                double ang = p * pow(10000.0, -2.0 * j / PHS);
                const float *x = px + (r * PNH + h) * PHS;
                double want = i < H2 ? x[i] * cos(ang) - x[i + H2] * sin(ang) : x[i] * cos(ang) + x[i - H2] * sin(ang);
                CHECK_NEAR(ptmp[(r * PNH + h) * PHS + i], want, 1e-5);
            }
    float *dx = zeros(n);
    memcpy(dx, pw, sizeof(float) * n);
    RUN(be->ops->rope_backward(be, NULL, rope_x(dx), M(pcos, PP, PHS / 2), M(psin, PP, PHS / 2), PPOS));
    CHECK(fd_check("dx", px, dx, n, rope_obj) == 0);
    rope_obj();   /* fd_check left ptmp from a perturbed input */
    RUN(be->ops->rope_backward(be, NULL, rope_x(ptmp), M(pcos, PP, PHS / 2), M(psin, PP, PHS / 2), PPOS));   /* undoes the forward */
    for (int i = 0; i < n; i++) CHECK_NEAR(ptmp[i], px[i], 1e-6);

    /* x as columns [PHS, PHS + PNH*PHS) of a (PB*PT, (PNH+2)*PHS) buffer (a packed q/k/v's
     * block, rows PW apart): the contiguous forward's values, the other columns untouched */
    enum { PW = (PNH + 2) * PHS };
    float *wide = randn((size_t)PB * PT * PW, 1), *before = malloc(sizeof(float) * PB * PT * PW);
    SK_ASSERT(before);
    for (int r = 0; r < PB * PT; r++) memcpy(wide + r * PW + PHS, px + r * PNH * PHS, sizeof(float) * PNH * PHS);
    memcpy(before, wide, sizeof(float) * PB * PT * PW);
    rope_obj();
    const tensor blk = tensor_split_2d(tensor_cols(M(wide, PB * PT, PW), PHS, PNH * PHS), PT, PHS);
    RUN(be->ops->rope_forward(be, NULL, blk, M(pcos, PP, PHS / 2), M(psin, PP, PHS / 2), PPOS));
    for (int r = 0; r < PB * PT; r++)
        for (int c = 0; c < PW; c++) {
            const bool in = c >= PHS && c < PHS + PNH * PHS;
            const float want = in ? ptmp[r * PNH * PHS + c - PHS] : before[r * PW + c];
            CHECK_MSG(in ? fabs(wide[r * PW + c] - want) <= 1e-6 : wide[r * PW + c] == want,
                      "rope over a column block: [%d][%d] %.9g, want %.9g", r, c, wide[r * PW + c], want);
        }
    free(before);
}

/* SwiGLU against silu(g) * u in double, backward by finite differences for both inputs. */
enum { SGN = 241 };
static float *sgg, *sgu, *sgout, *sgw;
static double swiglu_obj(void) {
    RUN(be->ops->swiglu_forward(be, NULL, V(sgout, SGN), V(sgg, SGN), V(sgu, SGN)));
    return dot(sgw, sgout, SGN);
}
TEST(swiglu_forward_and_backward) {
    setup(14);
    sgg = zeros(SGN); sgu = randn(SGN, 1); sgout = zeros(SGN); sgw = randn(SGN, 1);
    for (int i = 0; i < SGN; i++) sgg[i] = -12.0f + 0.1f * i;   /* through both tails */
    swiglu_obj();
    for (int i = 0; i < SGN; i++) {
        double g = sgg[i], want = g / (1.0 + exp(-g)) * sgu[i];
        CHECK_MSG(fabs(sgout[i] - want) <= 1e-6 * (1 + fabs(want)), "swiglu(%g, %g) = %.9g, want %.9g", g, sgu[i], sgout[i], want);
    }
    float *dg = zeros(SGN), *du = zeros(SGN);
    RUN(be->ops->swiglu_backward(be, NULL, V(dg, SGN), V(du, SGN), V(sgw, SGN), V(sgg, SGN), V(sgu, SGN)));
    CHECK(fd_check("dgate", sgg, dg, SGN, swiglu_obj) == 0);
    CHECK(fd_check("dup", sgu, du, SGN, swiglu_obj) == 0);
    float *inplace = zeros(SGN), *du2 = zeros(SGN);   /* dgate may alias dout */
    memcpy(inplace, sgw, sizeof(float) * SGN);
    RUN(be->ops->swiglu_backward(be, NULL, V(inplace, SGN), V(du2, SGN), V(inplace, SGN), V(sgg, SGN), V(sgu, SGN)));
    CHECK(!memcmp(inplace, dg, sizeof(float) * SGN) && !memcmp(du2, du, sizeof(float) * SGN));

    /* gate and up as the column halves of one (R, 2F) product, out in place into gate: rows
     * 2F apart (F a multiple of 8, the CUDA kernel's packs) and, with odd F, not */
    for (int F = 8; F <= 13; F += 5) {
        enum { SR = 5 };
        float *gu = randn((size_t)SR * 2 * F, 3), *want = malloc(sizeof(float) * SR * 2 * F);
        SK_ASSERT(want);
        for (int r = 0; r < SR; r++)
            for (int c = 0; c < 2 * F; c++) {
                const double g = gu[r * 2 * F + c % F], u = gu[r * 2 * F + F + c % F];
                want[r * 2 * F + c] = c < F ? (float)(g / (1.0 + exp(-g)) * u) : gu[r * 2 * F + c];
            }
        const tensor whole = M(gu, SR, 2 * F), gate = tensor_cols(whole, 0, F), up = tensor_cols(whole, F, F);
        RUN(be->ops->swiglu_forward(be, NULL, gate, gate, up));
        for (int i = 0; i < SR * 2 * F; i++)
            CHECK_MSG(fabs(gu[i] - want[i]) <= 1e-6 * (1 + fabs(want[i])), "swiglu over column blocks (F %d): [%d] "
                      "%.9g, want %.9g", F, i, gu[i], want[i]);
        free(want);
    }
}

/* ---- softmax cross-entropy ---- */

enum { SN = 4, SV = 11, SVP = 13 };
static float *sl, *sloss;
static int *stg;
static const int stg_host[SN] = {3, -1, 10, 0};
/* logits (SN,SV) with row stride SVP at host address p */
static tensor xent_logits(const float *p) { return tensor_2d_ld(DEV(p), DT_F32, SN, SV, SVP); }
static tensor xent_targets(void) { return tensor_1d(DEV(stg), DT_I32, SN); }
static double xent_obj(void) {
    RUN(be->ops->softmax_xent(be, NULL, V(sloss, SN), tensor_none(), xent_logits(sl), xent_targets(), 0.0f));
    double s = 0;
    for (int i = 0; i < SN; i++) s += 0.7 * sloss[i];
    return s;
}
TEST(softmax_xent_losses_and_gradient) {
    setup(7);
    sl = randn(SN * SVP, 2); sloss = zeros(SN); stg = ints(stg_host, SN);
    for (int i = 0; i < SN; i++) {   /* padded columns hold garbage the op must ignore */
        sl[i * SVP + 11] = 1e3f;
        sl[i * SVP + 12] = -1e3f;
    }
    xent_obj();
    for (int i = 0; i < SN; i++) {
        double mx = -1e30, s = 0;
        for (int j = 0; j < SV; j++) mx = sl[i * SVP + j] > mx ? sl[i * SVP + j] : mx;
        for (int j = 0; j < SV; j++) s += exp(sl[i * SVP + j] - mx);
        double want = stg[i] < 0 ? 0 : mx + log(s) - sl[i * SVP + stg[i]];
        CHECK_NEAR(sloss[i], want, 1e-5);
    }
    float *d = zeros(SN * SVP), *losses2 = zeros(SN);
    RUN(be->ops->softmax_xent(be, NULL, V(losses2, SN), M(d, SN, SVP), xent_logits(sl), xent_targets(), 0.7f));
    for (int i = 0; i < SN; i++) CHECK(losses2[i] == sloss[i]);
    for (int i = 0; i < SN; i++)
        for (int j = SV; j < SVP; j++) CHECK(d[i * SVP + j] == 0.0f);
    for (int j = 0; j < SVP; j++) CHECK(d[1 * SVP + j] == 0.0f);   /* the ignored row */
    CHECK(fd_check("dlogits", sl, d, SN * SVP, xent_obj) == 0);
    /* in place (dlogits aliasing logits) gives the same gradient */
    float *inplace = zeros(SN * SVP);
    memcpy(inplace, sl, sizeof(float) * SN * SVP);
    RUN(be->ops->softmax_xent(be, NULL, V(losses2, SN), M(inplace, SN, SVP), xent_logits(inplace), xent_targets(), 0.7f));
    CHECK(!memcmp(inplace, d, sizeof(float) * SN * SVP));
}

/* ---- embeddings ---- */

enum { EB = 2, ET = 4, EC = 6, EV = 5 };
static float *ewte, *ewpe, *eout, *ew;
static int *etok;
static const int etok_host[EB * ET] = {1, 3, 1, 4, 0, 1, 3, 3};   /* repeats: dwte rows sum */
static tensor embed_tokens(void) { return tensor_2d(DEV(etok), DT_I32, EB, ET); }
static double embed_obj(void) {
    RUN(be->ops->embed_forward(be, NULL, M(eout, EB * ET, EC), embed_tokens(), M(ewte, EV, EC), M(ewpe, ET, EC)));
    return dot(ew, eout, EB * ET * EC);
}
TEST(embed_forward_and_backward) {
    setup(8);
    ewte = randn(EV * EC, 1); ewpe = randn(ET * EC, 1); eout = zeros(EB * ET * EC); ew = randn(EB * ET * EC, 1);
    etok = ints(etok_host, EB * ET);
    embed_obj();
    for (int i = 0; i < EB * ET; i++)
        for (int c = 0; c < EC; c++) CHECK(eout[i * EC + c] == ewte[etok[i] * EC + c] + ewpe[(i % ET) * EC + c]);
    float *dwte = zeros(EV * EC), *dwpe = zeros(ET * EC);
    RUN(be->ops->embed_backward(be, NULL, M(dwte, EV, EC), M(dwpe, ET, EC), M(ew, EB * ET, EC), embed_tokens()));
    CHECK(fd_check("dwte", ewte, dwte, EV * EC, embed_obj) == 0);
    CHECK(fd_check("dwpe", ewpe, dwpe, ET * EC, embed_obj) == 0);
}

/* ---- dropout ---- */

enum { DN = 4000 };
static float *dx_, *dout_, *dw_;
static double dropout_obj(void) {
    RUN(be->ops->dropout_forward(be, NULL, V(dout_, DN), V(dx_, DN), 0.25f, 1234));
    return dot(dw_, dout_, DN);
}
TEST(dropout_mask_and_backward) {
    setup(9);
    dx_ = randn(DN, 1); dout_ = zeros(DN); dw_ = randn(DN, 1);
    dropout_obj();
    int kept = 0;
    for (int i = 0; i < DN; i++) {
        bool keep = dropout_keep(1234, (uint64_t)i, 0.25f);
        kept += keep;
        CHECK(dout_[i] == (keep ? dx_[i] * (1.0f / 0.75f) : 0.0f));
    }
    CHECK_NEAR((double)kept / DN, 0.75, 0.03);
    float *d = zeros(DN);
    RUN(be->ops->dropout_backward(be, NULL, V(d, DN), V(dw_, DN), 0.25f, 1234));
    CHECK(fd_check("dinp", dx_, d, 200, dropout_obj) == 0);   /* linear: 200 entries suffice */
    float *same = zeros(DN);   /* in place, and a second call with the seed is identical */
    memcpy(same, dx_, sizeof(float) * DN);
    RUN(be->ops->dropout_forward(be, NULL, V(same, DN), V(same, DN), 0.25f, 1234));
    CHECK(!memcmp(same, dout_, sizeof(float) * DN));
}

/* ---- optimizer and reductions ---- */

/* AdamW over spans against a double reference: two spans whose parameter, gradient and
 * state offsets differ (a ZeRO shard's layout), one decaying, one cut by the span size on
 * the host; the gradients clipped by the device's squared norm; the bf16 copy equal to the
 * new parameters rounded once; elements outside the spans untouched. */
TEST(adamw_matches_reference) {
    setup(10);
    enum { N = 1000, P0 = 10, N0 = 300, P1 = 500, N1 = 400 };
    float *p = randn(N, 1), *m = zeros(N), *v = zeros(N), *g = randn(N, 1);
    uint16_t *lp = mirrored(N * sizeof(uint16_t));
    double *sq = mirrored(sizeof(double));
    backend_adamw_span *sp = mirrored(2 * sizeof *sp);
    /* span 0: params [10,310) from grads [600,900), state [0,300); span 1: params [500,900)
     * from grads [100,500), state [300,700), decaying */
    sp[0] = (backend_adamw_span){P0, 600, 0, N0, 0};
    sp[1] = (backend_adamw_span){P1, 100, N0, N1, 1};
    double pr[N], mr[N], vr[N];
    const float untouched = p[400];
    for (int i = 0; i < N; i++) { pr[i] = p[i]; mr[i] = vr[i] = 0; }
    const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, clip = 2.0;
    for (int t = 1; t <= 3; t++) {
        for (int i = 0; i < N; i++) g[i] = (float)(0.3 * rng_normal(&R) + 0.1 * pr[i % 997]);
        *sq = 0;
        for (int i = 0; i < N; i++) *sq += (double)g[i] * g[i];   /* the norm is about 10: clipped */
        const double norm = sqrt(*sq), gs = norm > clip ? (float)(clip / (norm + 1e-6)) : 1.0;
        const backend_adamw_hp hp = {(float)lr, (float)b1, (float)b2, (float)eps, (float)wd, (float)clip, t};
        RUN(be->ops->adamw(be, NULL, V(p, N), tensor_1d(DEV(lp), DT_BF16, N), V(g, N), V(m, N), V(v, N), DEV(sp), 2,
                           DEV(sq), &hp));
        CHECK(gs < 1.0);
        for (int s = 0; s < 2; s++)
            for (int j = 0; j < sp[s].count; j++) {
                const int64_t i = sp[s].param + j, k = sp[s].state + j;
                double gi = g[sp[s].grad + j] * gs;
                mr[k] = b1 * mr[k] + (1 - b1) * gi;
                vr[k] = b2 * vr[k] + (1 - b2) * gi * gi;
                double mh = mr[k] / (1 - pow(b1, t)), vh = vr[k] / (1 - pow(b2, t));
                pr[i] -= lr * (mh / (sqrt(vh) + eps) + (s ? wd : 0.0) * pr[i]);
            }
    }
    for (int i = 0; i < N; i++) CHECK_MSG(fabs(p[i] - pr[i]) < 1e-5, "p[%d] %.9g vs %.9g", i, p[i], pr[i]);
    for (int i = 0; i < N0 + N1; i++) CHECK_MSG(fabs(m[i] - mr[i]) < 1e-6, "m[%d] %.9g vs %.9g", i, m[i], mr[i]);
    CHECK(p[400] == untouched);
    for (int s = 0; s < 2; s++)
        for (int j = 0; j < sp[s].count; j++) {
            const int64_t i = sp[s].param + j;
            CHECK_MSG(lp[i] == f32_to_bf16(p[i]), "lp[%lld] %#x vs %#x", (long long)i, lp[i], f32_to_bf16(p[i]));
        }
}

/* The reductions accumulate into a device f64 scalar: sum_squares within 1e-6 relative of a
 * double reference; sum_f64 exactly the host loop's bits (the loss depends on it). */
TEST(reductions_and_elementwise) {
    setup(11);
    enum { N = 100003 };
    float *x = randn(N, 1), *y = randn(N, 1), *z = zeros(N);
    double *acc = mirrored(sizeof(double)), *sum = mirrored(sizeof(double));
    double want = 0, want_sum = 0;
    for (int i = 0; i < N; i++) want += (double)x[i] * x[i];
    for (int i = 0; i < N; i++) want_sum += x[i];
    RUN(be->ops->sum_squares(be, NULL, tensor_1d(DEV(acc), DT_F64, 1), V(x, N));
        be->ops->sum_f64(be, NULL, tensor_1d(DEV(sum), DT_F64, 1), V(x, N)));
    CHECK_NEAR(*acc, want, 1e-6 * want);
    CHECK_MSG(*sum == want_sum, "%.17g vs %.17g", *sum, want_sum);
    double first = *acc;   /* a second call adds to the scalar */
    RUN(be->ops->sum_squares(be, NULL, tensor_1d(DEV(acc), DT_F64, 1), V(x, N)));
    CHECK(*acc == first + first);
    RUN(be->ops->add(be, NULL, V(z, N), V(x, N), V(y, N)));
    for (int i = 0; i < N; i++) CHECK(z[i] == x[i] + y[i]);
    RUN(be->ops->scale(be, NULL, V(z, N), 0.5f));
    for (int i = 0; i < N; i++) CHECK(z[i] == (x[i] + y[i]) * 0.5f);
    RUN(backend_zero(be, DEV(z), sizeof(float) * N));
    for (int i = 0; i < N; i++) CHECK(z[i] == 0.0f);
}

TEST_MAIN()
