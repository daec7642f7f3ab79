/* Tests of the mixed-precision ops (backend.h's [lp] arguments in bf16, and cast) on
 * SKEIN_TEST_DEVICE (test_device.h; the CPU backend by default), against the CPU backend's
 * f32 ops on the same values.
 *
 * Every input holds bf16-representable values, so its bf16 and f32 views carry the same
 * numbers. Each case runs its op twice (BOTH): on the device, with bf16 views where the case
 * puts them, and on a CPU reference backend (backend_cpu_create()) with f32 views of host
 * arrays. By the contract (an op computes in f32 and rounds each bf16 output once, to nearest
 * even) an f32 output equals the reference up to summation order and a bf16 output equals the
 * reference rounded to bf16. With scale the largest |reference| of the output:
 *   - a bf16 output: |got - bf16(ref)| <= 2^-7 |bf16(ref)| + atol * scale, i.e. one bf16 ulp
 *     (another summation order can tip a value across a rounding boundary), and at least
 *     MIN_EXACT of its elements exactly bf16(ref) (a rounding that truncates misses half);
 *   - an f32 output: |got - ref| <= 1e-5 |ref| + atol * scale.
 * atol per check: ATOL_ELEM for elementwise ops (4e-6: a GPU's tanh and exp differ from the
 * CPU's in the last bits, which gelu' and silu' scale by dout), ATOL_SUM for norms, products
 * and the loss; ATOL_LINEAR (1%, half the elements exact) for linear_forward's bf16 outputs,
 * which a backend may round twice (backend.h). Attention may round its probabilities to bf16 before they weight v (backend.h; tensor-core
 * kernels do, as FlashAttention does): its bf16 outputs are held to ATOL_ATTN = 2% of the
 * output's scale (about 3 bf16 roundings of P summed; 0.3-0.7% seen on an H200) and no share
 * of exact matches. Every check prints its
 * largest errors. On the CPU the device and the reference run the same f32 kernels, so the
 * run checks the bf16 adapter (cpu_mixed.c): conversions, strides, accumulation, rounding;
 * SKEIN_TEST_DEVICE=cuda checks the CUDA kernels against the CPU.
 *
 * Attention runs its cases on the test device, and on CUDA also on the own kernels
 * (SKEIN_CUDA_ATTN=own) and on cuDNN's fused attention (SKEIN_CUDA_ATTN=cudnn, where built
 * with cuDNN) with one layer at GPT-2's and a Llama GQA's shapes: each case prints which
 * implementation ran, a case cuDNN covers must have run on it, and every backward run twice
 * must write the same bits.
 *
 * cast is checked bit for bit against dtype.h's conversions, ties to even included.
 * Output views that are column blocks of wider buffers are checked whole: the columns outside
 * the block must keep their values. Tests reach device memory only by upload and download.
 * A device without BACKEND_OP_MIXED for bf16 skips every case. */
#include "test.h"
#include "test_device.h"

#include "backend/backend.h"
#include "base/rng.h"

#define MIN_EXACT 0.75
#define ATOL_ELEM 4e-6
#define ATOL_SUM 1e-5
#define ATOL_ATTN 2e-2
#define ATOL_LINEAR 1e-2

static backend *be, *ref;   /* the device under test; the CPU reference */
static backend *dev_override;   /* when set, the device of the cases instead of test_device()'s */
static rng R;

/* Skips the case where the device has no bf16 [lp] arguments. */
#define NEED_MIXED()                                                                            \
    do {                                                                                        \
        setup(__LINE__);                                                                        \
        if (!backend_supports(be, BACKEND_OP_MIXED, DT_BF16))                                   \
            SKIP("the %s backend does not support mixed precision (BACKEND_OP_MIXED, bf16)", be->name); \
    } while (0)

/* ---- arrays: host values and a device copy ---- */

/* n values on the host (x: the inputs, then the reference's results) and a device array of
 * dtype dt holding them. */
typedef struct arr { float *x; void *dev; dtype dt; size_t n; } arr;
enum { MAX_ARRS = 32 };
static arr arrs[MAX_ARRS];
static int n_arrs;

static void setup(uint64_t seed) {
    be = dev_override ? dev_override : test_device();
    if (!ref) ref = backend_cpu_create();
    SK_ASSERT(ref);
    for (int i = 0; i < n_arrs; i++) {
        free(arrs[i].x);
        backend_mem_free(be, arrs[i].dev);
    }
    n_arrs = 0;
    rng_seed(&R, seed);
}

static float bf16_round(float x) { return bf16_to_f32(f32_to_bf16(x)); }

/* Uploads a's host values into its device array; a bf16 array's host values are rounded to
 * bf16 first, so both hold the same numbers (a reference's output becomes the next op's input). */
static void arr_put(arr *a) {
    const size_t bytes = a->n * dtype_size(a->dt);
    if (a->dt == DT_BF16)
        for (size_t i = 0; i < a->n; i++) a->x[i] = bf16_round(a->x[i]);
    void *h = malloc(bytes ? bytes : 1);
    SK_ASSERT(h);
    dtype_from_f32(h, a->dt, a->x, a->n);
    backend_upload(be, a->dev, h, bytes);
    free(h);
}

/* n bf16-exact values, normal with deviation sd (0: zeros), on the host and the device (dt). */
static arr *arr_new(size_t n, dtype dt, float sd) {
    SK_ASSERT(n_arrs < MAX_ARRS);
    arr *a = &arrs[n_arrs++];
    a->x = malloc(n * sizeof(float));
    a->dev = backend_alloc(be, n * dtype_size(dt));
    SK_ASSERT(a->x && a->dev);
    a->dt = dt;
    a->n = n;
    for (size_t i = 0; i < n; i++) a->x[i] = sd * rng_normal(&R);
    arr_put(a);
    return a;
}

/* a's device array as f32 host values (the caller frees them). */
static float *arr_get(const arr *a) {
    void *h = test_download(be, tensor_1d(a->dev, a->dt, (int64_t)a->n));
    float *f = malloc(a->n * sizeof(float) + 1);
    SK_ASSERT(f);
    dtype_to_f32(f, h, a->dt, a->n);
    free(h);
    return f;
}

/* Whether a's device array agrees with its host values (the reference's result) within the
 * tolerances at the top of the file; prints the errors and the first mismatches. */
static bool agree_to(const char *what, const arr *a, double atol, double min_exact) {
    float *got = arr_get(a);
    const bool bf = a->dt == DT_BF16;
    double scale = 0, max_abs = 0, max_rel = 0;
    for (size_t i = 0; i < a->n; i++) scale = fabs(a->x[i]) > scale ? fabs(a->x[i]) : scale;
    size_t bad = 0, exact = 0;
    for (size_t i = 0; i < a->n; i++) {
        const double want = bf ? bf16_round(a->x[i]) : a->x[i], err = fabs(got[i] - want);
        const double tol = (bf ? 1.0 / 128 : 1e-5) * fabs(want) + atol * scale;
        if (!(err <= tol) && bad++ < 5)
            printf("  %s[%zu]: got %.9g, want %.9g (tol %.3g)\n", what, i, got[i], want, tol);
        exact += got[i] == want;
        max_abs = err > max_abs ? err : max_abs;
        if (want != 0 && err / fabs(want) > max_rel) max_rel = err / fabs(want);
    }
    const double frac = a->n ? (double)exact / (double)a->n : 1.0;
    printf("  %-34s %s n=%-7zu max abs err %.3g (scale %.3g), max rel err %.3g, exact %.1f%%\n", what,
           bf ? "bf16" : "f32 ", a->n, max_abs, scale, max_rel, 100 * frac);
    if (bf && frac < min_exact) printf("  %s: only %.1f%% exactly the rounded reference\n", what, 100 * frac);
    free(got);
    return bad == 0 && (!bf || frac >= min_exact);
}
static bool agree(const char *what, const arr *a, double atol) { return agree_to(what, a, atol, MIN_EXACT); }
/* Attention's outputs: ATOL_ATTN, no exact share asked (see the top). */
static bool agree_attn(const char *what, const arr *a) { return agree_to(what, a, ATOL_ATTN, 0.0); }

/* ---- views in the current run ---- */

static backend *b;     /* the backend of the current run */
static bool on_dev;    /* its arrays: device (dtype a->dt) or host (f32) */

/* Runs the op calls in its arguments on the device, then on the reference; views built by
 * the helpers below name the current run's arrays. */
#define BOTH(...)                         \
    do {                                  \
        b = be, on_dev = true;            \
        __VA_ARGS__;                      \
        b = ref, on_dev = false;          \
        __VA_ARGS__;                      \
    } while (0)

/* a as a contiguous view of the given shape in the current run. */
static tensor view(const arr *a, int ndim, const int64_t *shape) {
    tensor t = on_dev ? tensor_make(a->dev, a->dt, MEM_DEVICE, ndim, shape) : tensor_make(a->x, DT_F32, MEM_HOST, ndim, shape);
    SK_ASSERT((size_t)tensor_numel(t) <= a->n);
    return t;
}
static tensor T1(const arr *a) { return view(a, 1, (int64_t[]){(int64_t)a->n}); }
static tensor T2(const arr *a, int64_t r, int64_t c) { return view(a, 2, (int64_t[]){r, c}); }
static tensor T3(const arr *a, int64_t d0, int64_t d1, int64_t d2) { return view(a, 3, (int64_t[]){d0, d1, d2}); }
static tensor T4(const arr *a, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    return view(a, 4, (int64_t[]){d0, d1, d2, d3});
}
/* Columns [c0, c0+cols) of a seen as (rows, ld). */
static tensor cols2(const arr *a, int64_t rows, int64_t ld, int64_t c0, int64_t cols) {
    return tensor_cols(T2(a, rows, ld), c0, cols);
}

static const char *dtn(dtype dt) { return dt == DT_BF16 ? "bf16" : "f32"; }

/* ---- support and cast ---- */

TEST(cpu_supports_mixed_bf16) {
    setup(1);
    CHECK(backend_supports(ref, BACKEND_OP_MIXED, DT_BF16));
    CHECK(backend_supports(ref, BACKEND_OP_MIXED, DT_F32));
    CHECK(!backend_supports(ref, BACKEND_OP_MIXED, DT_F16));
    CHECK(ref->ops->cast != NULL);
    printf("  device %s: mixed bf16 %s\n", be->name, backend_supports(be, BACKEND_OP_MIXED, DT_BF16) ? "yes" : "no");
}

/* n elements of dtype `from` at host src cast on the device into dtype `to`, downloaded into dst. */
static void device_cast(void *dst, dtype to, const void *src, dtype from, size_t n) {
    void *in = backend_alloc(be, n * dtype_size(from)), *out = backend_alloc(be, n * dtype_size(to));
    SK_ASSERT(in && out);
    backend_upload(be, in, src, n * dtype_size(from));
    be->ops->cast(be, NULL, tensor_1d(out, to, (int64_t)n), tensor_1d(in, from, (int64_t)n));
    backend_download(be, dst, out, n * dtype_size(to));
    backend_mem_free(be, in);
    backend_mem_free(be, out);
}

/* f32 -> bf16 bit for bit against f32_to_bf16 (ties to even: 1 + 2^-8 -> 1, 1 + 3*2^-8 ->
 * 1 + 2^-6, 1 + 5*2^-8 -> 1 + 2^-6; overflow past the largest bf16 -> inf; NaN stays NaN);
 * bf16 -> f32 exact for every bit pattern; f32 -> f32 and bf16 -> bf16 copies. */
TEST(cast_rounds_to_nearest_even_and_converts_exactly) {
    NEED_MIXED();
    if (!be->ops->cast) SKIP("the %s backend has no cast op", be->name);
    const float ties[] = {1 + 0x1p-8f, 1 + 3 * 0x1p-8f, 1 + 5 * 0x1p-8f, -(1 + 0x1p-8f), -(1 + 3 * 0x1p-8f),
                          1 + 0x1p-8f + 0x1p-20f, 0.0f, -0.0f, 3.4e38f, INFINITY, -INFINITY, NAN, 65504.5f};
    const size_t nt = sizeof ties / sizeof ties[0], n = 70000 + nt;   /* above dtype.c's threaded size */
    float *x = malloc(n * sizeof(float)), *back = malloc(n * sizeof(float));
    uint16_t *h = malloc(n * 2), *h2 = malloc(n * 2);
    SK_ASSERT(x && back && h && h2);
    memcpy(x, ties, sizeof ties);
    for (size_t i = nt; i < n; i++) x[i] = rng_normal(&R) * (float)(1 << (i % 16));
    device_cast(h, DT_BF16, x, DT_F32, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        bool ok = isnan(x[i]) ? isnan(bf16_to_f32(h[i])) : h[i] == f32_to_bf16(x[i]);
        if (!ok && bad++ < 5) printf("  f32 %.9g -> bf16 %04x, want %04x\n", x[i], h[i], f32_to_bf16(x[i]));
    }
    CHECK_MSG(bad == 0, "%zu of %zu f32 -> bf16 wrong", bad, n);
    CHECK(h[0] == 0x3f80 && h[1] == 0x3f82 && h[2] == 0x3f82 && h[3] == 0xbf80 && h[6] == 0x0000 && h[7] == 0x8000 &&
          h[8] == 0x7f80);
    for (size_t i = 0; i < n; i++) h[i] = (uint16_t)rng_u64(&R);   /* every pattern, NaNs included */
    device_cast(back, DT_F32, h, DT_BF16, n);
    for (size_t i = 0; i < n; i++) {
        const float want = bf16_to_f32(h[i]);
        CHECK_MSG(isnan(want) ? isnan(back[i]) : memcmp(&back[i], &want, 4) == 0, "bf16 %04x -> f32 %.9g", h[i], back[i]);
    }
    device_cast(h2, DT_BF16, h, DT_BF16, n);
    CHECK(memcmp(h, h2, n * 2) == 0);
    for (size_t i = 0; i < n; i++) x[i] = rng_normal(&R);
    device_cast(back, DT_F32, x, DT_F32, n);
    CHECK(memcmp(x, back, n * sizeof(float)) == 0);
    printf("  %zu values each way, %zu ties and specials\n", n, nt);
    free(x), free(back), free(h), free(h2);
}

/* ---- products ---- */

/* C(M,N) = 0.75 op(A) op(B) + beta C with A, B of dtype ab and C of dtype cdt. With pad > 0
 * A and B are the column blocks [pad, pad+cols) of buffers pad columns wider (row stride
 * cols + pad), as q, k, v are blocks of GPT-2's packed qkv; C likewise with pad_c. */
static bool matmul_case(int M, int N, int K, bool ta, bool tb, dtype ab, dtype cdt, float beta, int pad, int pad_c) {
    setup((uint64_t)(M * 131 + N * 17 + K + ta * 2 + tb + (cdt == DT_BF16) * 5 + (ab == DT_BF16) * 9 + pad * 3));
    const int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    arr *A = arr_new((size_t)ar * (ac + pad), ab, 1), *B = arr_new((size_t)br * (bc + pad), ab, 1);
    arr *C = arr_new((size_t)M * (N + pad_c), cdt, 1);
    BOTH(b->ops->matmul(b, NULL, cols2(C, M, N + pad_c, pad_c, N), cols2(A, ar, ac + pad, pad, ac), ta,
                        cols2(B, br, bc + pad, pad, bc), tb, 0.75f, beta));
    char what[96];
    snprintf(what, sizeof what, "%dx%dx%d%s%s %s*%s beta %g", M, N, K, ta ? " A^T" : "", tb ? " B^T" : "", dtn(ab),
             dtn(ab), beta);
    return agree(what, C, ATOL_SUM);
}

/* Every transpose pair, both dtypes of C, writing and accumulating, on small shapes that are
 * not multiples of 8 (M = 1 and 7 take the CPU's decode paths) with row strides, and on a
 * GPT-2 qkv-sized product (K = 768, N = 2304). */
TEST(matmul_bf16_all_transposes_and_strides) {
    NEED_MIXED();
    const int shapes[][4] = {{7, 9, 5, 3}, {37, 45, 29, 5}, {1, 33, 17, 2}, {40, 2304, 768, 0}};
    for (int s = 0; s < 4; s++)
        for (int t = 0; t < 4; t++)
            for (int ab = 0; ab < 2; ab++)
                for (int c = 0; c < 2; c++)
                    for (int beta = 0; beta < 2; beta++) {
                        const dtype abt = ab ? DT_BF16 : DT_F32, cdt = c ? DT_BF16 : DT_F32;
                        if (abt == DT_F32) continue;   /* f32 products: test_backend; no bf16 C of them */
                        if (cdt == DT_BF16 && beta) continue;   /* a bf16 C is only written */
                        CHECK(matmul_case(shapes[s][0], shapes[s][1], shapes[s][2], t & 1, t >> 1, abt, cdt,
                                          (float)beta, shapes[s][3], shapes[s][3]));
                    }
}

/* Products of few rows with B transposed, as decode steps run them (CUDA: cuda_gemv where A,
 * B and their row strides are 16-byte aligned and M is 1, or up to 8 over a B of at most 2^23
 * elements; cuBLASLt otherwise): M = 1, 2, 3, 8
 * and 9 (past the few-rows kernel), K from 64 to Llama's 14336 (f32 sums of 14336 terms: the
 * f32 tolerance of the top holds), N from 1 to GPT-2's odd vocabulary, C f32 accumulating
 * (beta 0.5) or bf16, every C a column block (row stride N + 3), A and B column blocks at a
 * 16-byte offset (pad 8) or not (pad 1: misaligned, the fallback). Then the same product twice
 * must give the same bits (no atomics), and on CUDA row 0 the same bits at M = 1 as at M = 3
 * over a B that both take cuda_gemv for (Llama's k and v products). */
TEST(matmul_bf16_few_rows) {
    NEED_MIXED();
    const int shapes[][3] = {/* N, K, pad */ {1, 64, 8},     {7, 64, 8},     {50257, 64, 8}, {2304, 768, 8},
                             {50257, 768, 8}, {7, 4096, 8},  {2304, 4096, 1}, {7, 14336, 8}, {2304, 14336, 8}};
    const int rows[] = {1, 2, 3, 8, 9};
    for (int s = 0; s < 9; s++)
        for (int r = 0; r < 5; r++) {
            const bool cf = (r + s) % 2 == 0;
            CHECK(matmul_case(rows[r], shapes[s][0], shapes[s][1], false, true, DT_BF16, cf ? DT_F32 : DT_BF16,
                              cf ? 0.5f : 0.0f, shapes[s][2], 3));
        }
    const int M = 3, N = 1024, K = 4096;
    arr *A = arr_new((size_t)M * K, DT_BF16, 1), *B = arr_new((size_t)N * K, DT_BF16, 1);
    arr *C = arr_new((size_t)M * N, DT_F32, 0);
    b = be, on_dev = true;
    float *got[2];
    for (int i = 0; i < 2; i++) {
        be->ops->matmul(be, NULL, T2(C, M, N), T2(A, M, K), false, T2(B, N, K), true, 1.0f, 0.0f);
        got[i] = arr_get(C);
    }
    CHECK_MSG(memcmp(got[0], got[1], (size_t)M * N * sizeof(float)) == 0, "%dx%dx%d: two runs differ", M, N, K);
    if (!strcmp(be->name, "cuda")) {   /* cuda_gemv sums a row the same way at every M <= 8 */
        be->ops->matmul(be, NULL, T2(C, 1, N), T2(A, 1, K), false, T2(B, N, K), true, 1.0f, 0.0f);
        float *one = arr_get(C);
        CHECK_MSG(memcmp(one, got[0], (size_t)N * sizeof(float)) == 0, "row 0 at M 1 differs from M %d", M);
        free(one);
    }
    free(got[0]), free(got[1]);
}

/* linear_swiglu where the device has it (CUDA: the few-rows kernel's GLU form) against
 * linear_forward into (M,2F) then swiglu_forward in place on the same device, bit for bit,
 * into bf16 and f32, at Llama-3-8B's MLP (F 14336, K 4096) and two small ones, M 1, 2, 3, 8, 9;
 * where it declines (M 9; M > 1 over a B past 2^23 elements) it must say so and write nothing. */
TEST(linear_swiglu_matches_the_two_ops) {
    NEED_MIXED();
    if (!be->ops->linear_swiglu) SKIP("the %s backend has no linear_swiglu (llama runs the two ops)", be->name);
    const int shapes[][2] = {/* F, K */ {14336, 4096}, {100, 64}, {7, 768}}, rows[] = {1, 2, 3, 8, 9};
    b = be, on_dev = true;
    for (int s = 0; s < 3; s++) {
        const int F = shapes[s][0], K = shapes[s][1];
        arr *A = arr_new((size_t)9 * K, DT_BF16, 1), *W = arr_new((size_t)2 * F * K, DT_BF16, 0.05f);
        for (int d = 0; d < 2; d++) {
            const dtype dt = d ? DT_F32 : DT_BF16;
            arr *out = arr_new((size_t)9 * F, dt, 0), *gu = arr_new((size_t)9 * 2 * F, dt, 0);
            for (int r = 0; r < 5; r++) {
                const int M = rows[r];
                const bool fits = M <= 8 && (M == 1 || 2 * (int64_t)F * K <= (int64_t)1 << 23);
                arr_put(out);
                const bool took = be->ops->linear_swiglu(be, NULL, T2(out, M, F), T2(A, M, K), T2(W, 2 * F, K));
                float *got = arr_get(out);
                CHECK_MSG(took == fits, "F %d K %d M %d: took %d", F, K, M, took);
                if (!took) {
                    for (size_t i = 0; i < out->n; i++) CHECK_MSG(got[i] == 0.0f, "declined, yet wrote [%zu]", i);
                } else {
                    backend_linear_forward(be, NULL, T2(gu, M, 2 * F), tensor_none(), T2(A, M, K), T2(W, 2 * F, K),
                                           true, tensor_none(), BACKEND_ACT_NONE);
                    be->ops->swiglu_forward(be, NULL, cols2(gu, M, 2 * F, 0, F), cols2(gu, M, 2 * F, 0, F),
                                            cols2(gu, M, 2 * F, F, F));
                    float *two = arr_get(gu);
                    for (int m = 0; m < M; m++)
                        CHECK_MSG(memcmp(got + (size_t)m * F, two + (size_t)m * 2 * F, sizeof(float) * F) == 0,
                                  "%s F %d K %d M %d: row %d differs from the two ops", dtn(dt), F, K, M, m);
                    free(two);
                }
                free(got);
            }
        }
    }
}

/* linear_add: x(M,N) f32 += the product (+ bias) rounded to bf16 must be linear_forward into a
 * bf16 (M,N) then add on the same device, bit for bit, at Llama-3-8B's o_proj (4096 x 4096) and
 * two small shapes (one with a bias), M 1, 2, 8, 9; where it declines it writes nothing. */
TEST(linear_add_matches_the_product_then_add) {
    NEED_MIXED();
    if (!be->ops->linear_add) SKIP("the %s backend has no linear_add (llama runs the two ops)", be->name);
    const int shapes[][2] = {/* N, K */ {4096, 4096}, {100, 64}, {7, 768}}, rows[] = {1, 2, 8, 9};
    b = be, on_dev = true;
    for (int s = 0; s < 3; s++) {
        const int N = shapes[s][0], K = shapes[s][1];
        arr *A = arr_new((size_t)9 * K, DT_BF16, 1), *W = arr_new((size_t)N * K, DT_BF16, 0.05f);
        arr *bias = arr_new(N, DT_F32, s == 1 ? 1.0f : 0.0f), *x = arr_new((size_t)9 * N, DT_F32, 1);
        arr *x2 = arr_new((size_t)9 * N, DT_F32, 0), *br = arr_new((size_t)9 * N, DT_BF16, 0);
        const tensor bt = s == 1 ? T1(bias) : tensor_none();
        for (int r = 0; r < 4; r++) {
            const int M = rows[r];
            const bool fits = M <= 8 && (M == 1 || (int64_t)N * K <= (int64_t)1 << 23);
            memcpy(x2->x, x->x, sizeof(float) * x->n);
            arr_put(x), arr_put(x2);
            const bool took = be->ops->linear_add(be, NULL, T2(x, M, N), T2(A, M, K), T2(W, N, K), bt);
            float *got = arr_get(x);
            CHECK_MSG(took == fits, "N %d K %d M %d: took %d", N, K, M, took);
            if (took) {
                backend_linear_forward(be, NULL, T2(br, M, N), tensor_none(), T2(A, M, K), T2(W, N, K), true, bt,
                                       BACKEND_ACT_NONE);
                be->ops->add(be, NULL, T2(x2, M, N), T2(x2, M, N), T2(br, M, N));
            }
            float *two = arr_get(x2);
            CHECK_MSG(memcmp(got, two, sizeof(float) * x->n) == 0, "N %d K %d M %d (took %d): x differs from %s", N,
                      K, M, took, took ? "the two ops" : "before");
            free(two);
            free(got);
        }
    }
}

/* linear_rmsnorm: the product of RMSNorm(x) * weight, plain and with the GLU, against
 * rmsnorm_forward into bf16 then linear_forward (and swiglu_forward) on the same device, within
 * the bf16 rounding of the normed rows the fused op skips (backend.h): |got - two| <= 2^-7 |two|
 * + 4e-3 of the output's largest value, at Llama-3-8B's q/k/v (6144 x 4096) and gate/up
 * (2 x 14336 x 4096) and two small shapes, M 1, 2, 8, 9. Two of the shapes add a bf16 residual
 * to x first: x must then be rmsnorm_forward's x + resid bit for bit, and where the op declines,
 * x and out untouched. */
TEST(linear_rmsnorm_matches_the_norm_then_the_product) {
    NEED_MIXED();
    if (!be->ops->linear_rmsnorm) SKIP("the %s backend has no linear_rmsnorm (llama runs the two ops)", be->name);
    const int shapes[][3] = {/* N, K, glu */ {6144, 4096, 0}, {14336, 4096, 1}, {100, 64, 1}, {7, 768, 0}};
    const int rows[] = {1, 2, 8, 9};
    const float eps = 1e-5f;
    b = be, on_dev = true;
    for (int s = 0; s < 4; s++) {
        const int N = shapes[s][0], K = shapes[s][1];
        const bool glu = shapes[s][2];
        const int64_t WN = glu ? 2 * (int64_t)N : N;
        arr *X = arr_new((size_t)9 * K, DT_F32, 2), *nw = arr_new(K, DT_F32, 1);
        arr *W = arr_new((size_t)WN * K, DT_BF16, 0.05f);
        arr *out = arr_new((size_t)9 * N, DT_BF16, 0), *ln = arr_new((size_t)9 * K, DT_BF16, 0);
        arr *two = arr_new((size_t)9 * WN, DT_BF16, 0), *X2 = arr_new((size_t)9 * K, DT_F32, 0);
        arr *res = arr_new((size_t)9 * K, DT_BF16, 1);
        const tensor rt = s % 2 ? T2(res, 9, K) : tensor_none();
        for (int r = 0; r < 4; r++) {
            const int M = rows[r];
            const bool fits = M <= 8 && (M == 1 || WN * K <= (int64_t)1 << 23);
            memcpy(X2->x, X->x, sizeof(float) * X->n);
            arr_put(out), arr_put(X), arr_put(X2);
            const tensor rm = s % 2 ? tensor_rows(rt, 0, M) : rt;
            const bool took = be->ops->linear_rmsnorm(be, NULL, T2(out, M, N), T2(X, M, K), rm, T1(nw), eps,
                                                      T2(W, WN, K), glu);
            float *got = arr_get(out), *x1 = arr_get(X);
            CHECK_MSG(took == fits, "N %d K %d glu %d M %d: took %d", N, K, glu, M, took);
            if (!took) {
                for (size_t i = 0; i < out->n; i++) CHECK_MSG(got[i] == 0.0f, "declined, yet wrote [%zu]", i);
                CHECK_MSG(memcmp(x1, X->x, sizeof(float) * X->n) == 0, "declined, yet changed x");
                free(got);
                free(x1);
                continue;
            }
            be->ops->rmsnorm_forward(be, NULL, T2(ln, M, K), tensor_none(), T2(X2, M, K), rm, T1(nw), eps);
            float *x2 = arr_get(X2);
            CHECK_MSG(memcmp(x1, x2, sizeof(float) * X->n) == 0, "N %d K %d M %d: x + resid differs from the norm's",
                      N, K, M);
            free(x1);
            free(x2);
            backend_linear_forward(be, NULL, T2(two, M, WN), tensor_none(), T2(ln, M, K), T2(W, WN, K), true,
                                   tensor_none(), BACKEND_ACT_NONE);
            if (glu)
                be->ops->swiglu_forward(be, NULL, cols2(two, M, WN, 0, N), cols2(two, M, WN, 0, N),
                                        cols2(two, M, WN, N, N));
            float *want = arr_get(two);
            double scale = 0, worst = 0;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) scale = fmax(scale, fabs(want[(size_t)m * WN + n]));
            int bad = 0;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    const double g = got[(size_t)m * N + n], e = want[(size_t)m * WN + n], d = fabs(g - e);
                    worst = fmax(worst, d / scale);
                    bad += d > 0x1p-7 * fabs(e) + 4e-3 * scale;
                }
            printf("    N %d K %d glu %d M %d: largest error %.2e of the scale %.3g\n", N, K, glu, M, worst, scale);
            CHECK_MSG(bad == 0 && scale > 0, "N %d K %d glu %d M %d: %d outputs off the norm then the product", N, K,
                      glu, M, bad);
            free(want);
            free(got);
        }
    }
}

/* bias_add into a bf16 column block (row stride OC + 4); bias_backward from a bf16 dout into
 * an f32 dbias that accumulates, over a few rows and over many (a GPU's long column sums run
 * in two stages). */
TEST(bias_add_and_backward_bf16) {
    NEED_MIXED();
    const int N = 37, OC = 45, pad = 4;
    arr *out = arr_new((size_t)N * (OC + pad), DT_BF16, 1), *bias = arr_new(OC, DT_F32, 1);
    BOTH(b->ops->bias_add(b, NULL, cols2(out, N, OC + pad, pad, OC), T1(bias)));
    CHECK(agree("bias_add out (row stride OC+4)", out, ATOL_ELEM));
    const int rows[] = {300, 70001};
    for (int r = 0; r < 2; r++) {
        const int NB = rows[r];
        arr *dout = arr_new((size_t)NB * OC, DT_BF16, 1), *dbias = arr_new(OC, DT_F32, 1);
        BOTH(b->ops->bias_backward(b, NULL, T1(dbias), T2(dout, NB, OC)));
        CHECK(agree("bias_backward dbias", dbias, ATOL_SUM));
    }
}

/* ---- fused linear layers ---- */

/* One linear_forward case: out(N,OC) = act(inp(N,IC) @ op(w) + bias) with inp and w of dtype
 * ab, out (and pre) of dtype odt, each a column block of a buffer pad columns wider (pad 0
 * with GELU: the contract wants them contiguous). */
typedef struct lin_case { int N, IC, OC; bool tw; dtype ab, odt; bool bias, gelu, pre; int pad; } lin_case;

/* The case through backend_linear_forward on the device against the CPU reference's unfused
 * f32 ops (matmul, bias_add, gelu_forward) on contiguous host arrays, whose results are then
 * placed in the host values of out and pre (their padding columns untouched on both sides). */
static bool linear_case(lin_case c) {
    setup((uint64_t)(c.N * 31 + c.IC * 7 + c.OC + c.tw * 3 + c.gelu * 5 + c.pre * 11 + c.pad));
    const int ld = c.OC + c.pad, wr = c.tw ? c.OC : c.IC, wc = c.tw ? c.IC : c.OC;
    arr *inp = arr_new((size_t)c.N * c.IC, c.ab, 1), *w = arr_new((size_t)c.IC * c.OC, c.ab, 0.5f);
    arr *bias = c.bias ? arr_new(c.OC, DT_F32, 1) : NULL;
    arr *out = arr_new((size_t)c.N * ld, c.odt, 1), *pre = c.pre ? arr_new((size_t)c.N * ld, c.odt, 1) : NULL;
    const backend_act act = c.gelu ? BACKEND_ACT_GELU : BACKEND_ACT_NONE;

    b = be, on_dev = true;
    backend_linear_forward(be, NULL, cols2(out, c.N, ld, c.pad, c.OC), pre ? cols2(pre, c.N, ld, c.pad, c.OC) : tensor_none(),
                           T2(inp, c.N, c.IC), T2(w, wr, wc), c.tw, bias ? T1(bias) : tensor_none(), act);

    b = ref, on_dev = false;
    const size_t n = (size_t)c.N * c.OC;
    float *y = malloc(n * sizeof(float)), *z = malloc(n * sizeof(float));
    SK_ASSERT(y && z);
    const tensor ty = tensor_2d(y, DT_F32, c.N, c.OC), tz = tensor_2d(z, DT_F32, c.N, c.OC);
    ref->ops->matmul(ref, NULL, ty, T2(inp, c.N, c.IC), false, T2(w, wr, wc), c.tw, 1.0f, 0.0f);
    if (bias) ref->ops->bias_add(ref, NULL, ty, T1(bias));
    if (c.gelu) ref->ops->gelu_forward(ref, NULL, tz, ty);
    for (int i = 0; i < c.N; i++)
        for (int j = 0; j < c.OC; j++) {
            const size_t at = (size_t)i * ld + c.pad + j, k = (size_t)i * c.OC + j;
            out->x[at] = c.gelu ? z[k] : y[k];
            if (pre) pre->x[at] = y[k];
        }
    free(y), free(z);

    char what[128];
    snprintf(what, sizeof what, "%dx%dx%d%s %s->%s%s%s%s ld %d", c.N, c.OC, c.IC, c.tw ? " w^T" : "", dtn(c.ab),
             dtn(c.odt), c.bias ? " +bias" : "", c.gelu ? " gelu" : "", c.pre ? " +pre" : "", ld);
    printf("  %s:\n", what);
    /* a bf16 out may be rounded after the product and again after the bias, or take the bias
     * rounded, and a GELU out be rounded again (backend.h): one more rounding of a value up
     * to the product's size, cancellation included; with three roundings (bias, sum, GELU)
     * 45-50% of the outputs come out exactly bf16(ref) on an H200 */
    bool ok = agree_to("linear out", out, ATOL_LINEAR, 0.4);
    if (pre) ok &= agree_to("linear pre", pre, ATOL_LINEAR, 0.4);
    return ok;
}

/* linear_forward (the device's fused op, or backend.c's fallback) against the unfused f32
 * ops: bf16 out with f32 bias, with and without GELU and pre, both layouts of w, row strides
 * wider than OC, pre's row stride a multiple of 8 and not (cuBLASLt's auxiliary output needs
 * one), f32 out from
 * bf16 operands (GPT-2's projections into the residual), all-f32 layers; GPT-2-sized c_fc
 * and c_attn; a 1100x2047 output (several blocks of rows where the CUDA backend stages);
 * decode's few rows (1 to 9) at GPT-2's and Llama's widths. */
TEST(linear_forward_matches_unfused_f32) {
    NEED_MIXED();
    const dtype B = DT_BF16, F = DT_F32;
    static const lin_case cases[] = {
        /* N   IC   OC    tw     ab odt bias   gelu   pre    pad */
        {37,   29,  45,   false, B, B, true,  false, false, 3},
        {37,   29,  45,   true,  B, B, true,  false, false, 0},
        {37,   29,  48,   false, B, B, true,  true,  true,  0},
        {37,   29,  45,   true,  B, B, true,  true,  true,  0},
        {37,   29,  40,   true,  B, B, true,  true,  false, 0},
        {37,   29,  40,   false, B, B, false, true,  true,  0},
        {7,    9,   5,    true,  B, B, false, false, false, 0},
        {37,   29,  45,   false, B, F, true,  false, false, 3},
        {37,   29,  40,   true,  B, F, true,  true,  true,  0},
        {37,   29,  45,   false, F, F, true,  true,  true,  0},
        {37,   29,  45,   true,  F, F, true,  false, false, 0},
        {64,   768, 3072, false, B, B, true,  true,  true,  0},
        {64,   768, 2304, false, B, B, true,  false, false, 0},
        {64,   768, 768,  false, B, F, true,  false, false, 0},
        {1100, 32,  2047, false, B, B, true,  true,  true,  0},
        /* few rows, w^T (CUDA: cuda_gemv, its f32 bias added before the one rounding; 9: cuBLASLt) */
        {1,    768, 2304, true,  B, B, true,  false, false, 3},
        {3,    4096, 1024, true, B, F, true,  false, false, 0},
        {8,    768, 3072, true,  B, B, true,  true,  true,  0},
        {2,    64,  50257, true, B, B, true,  false, false, 5},
        {1,    4096, 7,   true,  B, F, false, false, false, 2},
        {9,    768, 2304, true,  B, B, true,  false, false, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) CHECK_MSG(linear_case(cases[i]), "case %zu", i);
}

/* ---- norms ---- */

/* The shapes the norms run at: C not a multiple of 8 (the scalar path), more rows than the
 * CUDA backward's grid holds (its rows per warp > 1), GPT-2's width (weight gradients summed
 * in the kernel), and a width past that (summed by columns). */
static const int norm_shapes[][2] = {{19, 100}, {9000, 64}, {300, 768}, {37, 2048}};

/* Whether lp (the device's dinp_lp) is the device's dinp rounded to bf16, bit for bit. */
static bool lp_copy_exact(const char *what, const arr *lp, const arr *dinp) {
    float *got = arr_get(lp), *want = arr_get(dinp);
    size_t bad = 0;
    for (size_t i = 0; i < lp->n; i++)
        if (got[i] != bf16_round(want[i]) && bad++ < 5) printf("  %s[%zu]: %g, want %g\n", what, i, got[i], bf16_round(want[i]));
    free(got);
    free(want);
    return bad == 0;
}

/* LayerNorm (ln) or RMSNorm at (N,C): the forward adds an f32 residual into f32 inp in place
 * and writes a bf16 out, f32 mean and rstd; the backward from a bf16 dout accumulates into
 * f32 dinp, dweight (, dbias) holding earlier values, with the reference's statistics, and
 * on the device also writes dinp's bf16 copy. */
static bool norm_case(bool ln, int N, int C) {
    const char *name = ln ? "layernorm" : "rmsnorm";
    printf("  %s N=%d C=%d\n", name, N, C);
    arr *inp = arr_new((size_t)N * C, DT_F32, 2), *res = arr_new((size_t)N * C, DT_F32, 1), *w = arr_new(C, DT_F32, 1);
    arr *bias = arr_new(C, DT_F32, 1), *out = arr_new((size_t)N * C, DT_BF16, 1);
    arr *mean = arr_new(N, DT_F32, 0), *rstd = arr_new(N, DT_F32, 0);
    for (size_t i = 0; i < inp->n; i++) inp->x[i] += 0.5f;   /* an offset the two-pass variance must handle */
    arr_put(inp);
    const float eps = ln ? 1e-5f : 1e-6f;
    if (ln) BOTH(b->ops->layernorm_forward(b, NULL, T2(out, N, C), T1(mean), T1(rstd), T2(inp, N, C), T2(res, N, C), T1(w), T1(bias), eps));
    else BOTH(b->ops->rmsnorm_forward(b, NULL, T2(out, N, C), T1(rstd), T2(inp, N, C), T2(res, N, C), T1(w), eps));
    bool ok = agree("inp + residual", inp, 0.0);
    ok &= agree("out", out, ATOL_SUM);
    if (ln) ok &= agree("mean", mean, ATOL_SUM);
    ok &= agree("rstd", rstd, ATOL_SUM);
    arr_put(mean), arr_put(rstd);
    arr *dout = arr_new((size_t)N * C, DT_BF16, 1), *dinp = arr_new((size_t)N * C, DT_F32, 1);
    arr *dw = arr_new(C, DT_F32, 1), *db = arr_new(C, DT_F32, 1), *lp = arr_new((size_t)N * C, DT_BF16, 0);
    if (ln) BOTH(b->ops->layernorm_backward(b, NULL, T2(dinp, N, C), on_dev ? T2(lp, N, C) : tensor_none(), T1(dw), T1(db), T2(dout, N, C), T2(inp, N, C), T1(w), T1(mean), T1(rstd)));
    else BOTH(b->ops->rmsnorm_backward(b, NULL, T2(dinp, N, C), on_dev ? T2(lp, N, C) : tensor_none(), T1(dw), T2(dout, N, C), T2(inp, N, C), T1(w), T1(rstd)));
    ok &= agree("dinp", dinp, ATOL_SUM);
    ok &= agree("dweight", dw, ATOL_SUM);
    if (ln) ok &= agree("dbias", db, ATOL_SUM);
    ok &= lp_copy_exact("dinp_lp", lp, dinp);
    setup(20);   /* frees the arrays */
    return ok;
}

TEST(layernorm_bf16_out_and_dout) {
    NEED_MIXED();
    for (size_t i = 0; i < sizeof norm_shapes / sizeof norm_shapes[0]; i++)
        CHECK(norm_case(true, norm_shapes[i][0], norm_shapes[i][1]));
}

TEST(rmsnorm_bf16_out_and_dout) {
    NEED_MIXED();
    for (size_t i = 0; i < sizeof norm_shapes / sizeof norm_shapes[0]; i++)
        CHECK(norm_case(false, norm_shapes[i][0], norm_shapes[i][1]));
}

/* ---- elementwise ---- */

/* GELU in bf16, out of place and in place; the backward too (dinp aliasing dout). */
TEST(gelu_bf16_forward_and_backward) {
    NEED_MIXED();
    const size_t n = 3001;
    arr *inp = arr_new(n, DT_BF16, 2), *out = arr_new(n, DT_BF16, 1), *self = arr_new(n, DT_BF16, 2);
    BOTH(b->ops->gelu_forward(b, NULL, T1(out), T1(inp)));
    CHECK(agree("gelu out", out, ATOL_ELEM));
    BOTH(b->ops->gelu_forward(b, NULL, T1(self), T1(self)));
    CHECK(agree("gelu in place", self, ATOL_ELEM));
    arr *dout = arr_new(n, DT_BF16, 1), *dinp = arr_new(n, DT_BF16, 1);
    BOTH(b->ops->gelu_backward(b, NULL, T1(dinp), T1(inp), T1(dout)));
    CHECK(agree("gelu dinp", dinp, ATOL_ELEM));
    BOTH(b->ops->gelu_backward(b, NULL, T1(dout), T1(inp), T1(dout)));
    CHECK(agree("gelu dinp in place", dout, ATOL_ELEM));
}

/* SwiGLU in bf16, out of place and in place (out aliasing gate); the backward with dgate
 * aliasing dout. */
TEST(swiglu_bf16_forward_and_backward) {
    NEED_MIXED();
    const size_t n = 2049;
    arr *gate = arr_new(n, DT_BF16, 2), *up = arr_new(n, DT_BF16, 1), *out = arr_new(n, DT_BF16, 1);
    BOTH(b->ops->swiglu_forward(b, NULL, T1(out), T1(gate), T1(up)));
    CHECK(agree("swiglu out", out, ATOL_ELEM));
    arr *dout = arr_new(n, DT_BF16, 1), *dup = arr_new(n, DT_BF16, 1);
    BOTH(b->ops->swiglu_backward(b, NULL, T1(dout), T1(dup), T1(dout), T1(gate), T1(up)));
    CHECK(agree("swiglu dgate (in dout)", dout, ATOL_ELEM));
    CHECK(agree("swiglu dup", dup, ATOL_ELEM));
    BOTH(b->ops->swiglu_forward(b, NULL, T1(gate), T1(gate), T1(up)));
    CHECK(agree("swiglu in place", gate, ATOL_ELEM));
}

/* Rotary tables (P, HS/2) of real angles, f32: cos into *cs, sin into *sn. */
static void rope_tables(int P, int HS, arr **cs, arr **sn) {
    const int H2 = HS / 2;
    *cs = arr_new((size_t)P * H2, DT_F32, 0), *sn = arr_new((size_t)P * H2, DT_F32, 0);
    for (int p = 0; p < P; p++)
        for (int i = 0; i < H2; i++) {
            const double ang = p * pow(10000.0, -2.0 * i / HS);
            (*cs)->x[p * H2 + i] = (float)cos(ang);
            (*sn)->x[p * H2 + i] = (float)sin(ang);
        }
    arr_put(*cs), arr_put(*sn);
}

/* Rotary embeddings on a bf16 x(B,T,nh,HS) from position 3, forward and backward, with
 * tables of real angles. */
TEST(rope_bf16_forward_and_backward) {
    NEED_MIXED();
    const int B = 2, T = 5, nh = 3, HS = 16, H2 = HS / 2, P = 12, pos0 = 3;
    arr *cs, *sn;
    rope_tables(P, HS, &cs, &sn);
    arr *x = arr_new((size_t)B * T * nh * HS, DT_BF16, 1), *dx = arr_new((size_t)B * T * nh * HS, DT_BF16, 1);
    BOTH(b->ops->rope_forward(b, NULL, T4(x, B, T, nh, HS), T2(cs, P, H2), T2(sn, P, H2), pos0));
    CHECK(agree("rope forward", x, ATOL_ELEM));
    BOTH(b->ops->rope_backward(b, NULL, T4(dx, B, T, nh, HS), T2(cs, P, H2), T2(sn, P, H2), pos0));
    CHECK(agree("rope backward", dx, ATOL_ELEM));
}

/* The inference forward's views (llama_project): SwiGLU in place over the gate and up halves
 * of one (N, 2F) product and rope over the q and k blocks of a packed (N, QD+2KD) q/k/v, in
 * f32 and bf16; the buffers are checked whole (v's columns untouched). F 24 and HS 16 let the
 * CUDA kernels take 16-byte packs; F 12 does not. */
TEST(swiglu_and_rope_over_column_blocks) {
    NEED_MIXED();
    const int N = 6, T = 3, NH = 4, NKV = 2, HS = 16, H2 = HS / 2, QD = NH * HS, KD = NKV * HS, W = QD + 2 * KD;
    const int P = 8, pos0 = 2;
    arr *cs, *sn;
    rope_tables(P, HS, &cs, &sn);
    for (int k = 0; k < 4; k++) {
        const dtype dt = k % 2 ? DT_BF16 : DT_F32;
        const int F = k < 2 ? 24 : 12;
        char what[64];
        arr *gu = arr_new((size_t)N * 2 * F, dt, 2);
        BOTH(b->ops->swiglu_forward(b, NULL, cols2(gu, N, 2 * F, 0, F), cols2(gu, N, 2 * F, 0, F),
                                    cols2(gu, N, 2 * F, F, F)));
        snprintf(what, sizeof what, "swiglu gate|up blocks %s F %d", dtn(dt), F);
        CHECK(agree(what, gu, ATOL_ELEM));
        arr *qkv = arr_new((size_t)N * W, dt, 1);
        BOTH(b->ops->rope_forward(b, NULL, tensor_split_2d(cols2(qkv, N, W, 0, QD), T, HS), T2(cs, P, H2), T2(sn, P, H2), pos0);
             b->ops->rope_forward(b, NULL, tensor_split_2d(cols2(qkv, N, W, QD, KD), T, HS), T2(cs, P, H2), T2(sn, P, H2), pos0));
        snprintf(what, sizeof what, "rope q, k blocks %s", dtn(dt));
        CHECK(agree(what, qkv, ATOL_ELEM));
    }
}

/* add over every mix of f32 and bf16 among out, a, b, and in place in bf16; scale in bf16. */
TEST(add_mixes_and_scale_bf16) {
    NEED_MIXED();
    const size_t n = 777;
    for (int m = 0; m < 8; m++) {
        const dtype to = m & 1 ? DT_BF16 : DT_F32, ta = m & 2 ? DT_BF16 : DT_F32, tb = m & 4 ? DT_BF16 : DT_F32;
        arr *x = arr_new(n, ta, 1), *y = arr_new(n, tb, 1), *out = arr_new(n, to, 1);
        BOTH(b->ops->add(b, NULL, T1(out), T1(x), T1(y)));
        char what[64];
        snprintf(what, sizeof what, "add %s = %s + %s", dtn(to), dtn(ta), dtn(tb));
        CHECK(agree(what, out, ATOL_ELEM));
    }
    arr *x = arr_new(n, DT_BF16, 1), *y = arr_new(n, DT_BF16, 1);
    BOTH(b->ops->add(b, NULL, T1(x), T1(x), T1(y)));
    CHECK(agree("add in place", x, ATOL_ELEM));
    BOTH(b->ops->scale(b, NULL, T2(y, 21, 37), 0.37f));
    CHECK(agree("scale", y, ATOL_ELEM));
}

/* Dropout forward and backward for each pair of dtypes (in, out), and in place in bf16. */
TEST(dropout_mixed_dtypes) {
    NEED_MIXED();
    const size_t n = 20000;
    const float p = 0.1f;
    for (int m = 1; m < 4; m++) {
        const dtype ti = m & 1 ? DT_BF16 : DT_F32, to = m & 2 ? DT_BF16 : DT_F32;
        arr *in = arr_new(n, ti, 1), *out = arr_new(n, to, 1), *din = arr_new(n, to, 1);
        BOTH(b->ops->dropout_forward(b, NULL, T1(out), T1(in), p, 1234));
        BOTH(b->ops->dropout_backward(b, NULL, T1(din), T1(in), p, 99));
        char what[64];
        snprintf(what, sizeof what, "dropout %s -> %s", dtn(ti), dtn(to));
        CHECK(agree(what, out, ATOL_ELEM));
        snprintf(what, sizeof what, "dropout backward %s -> %s", dtn(ti), dtn(to));
        CHECK(agree(what, din, ATOL_ELEM));
    }
    arr *x = arr_new(n, DT_BF16, 1);
    BOTH(b->ops->dropout_forward(b, NULL, T1(x), T1(x), p, 5));
    CHECK(agree("dropout in place", x, ATOL_ELEM));
}

/* ---- loss ---- */

/* Fused softmax + cross-entropy over bf16 logits (N,V) with padded row stride Vp, two rows
 * ignored: f32 losses and a bf16 dlogits (N,Vp) whose padding and ignored rows become 0;
 * then in place (dlogits over logits). */
TEST(softmax_xent_bf16_padded_logits) {
    NEED_MIXED();
    const int N = 7, V = 1000, Vp = 1024;
    arr *logits = arr_new((size_t)N * Vp, DT_BF16, 2), *dlogits = arr_new((size_t)N * Vp, DT_BF16, 1);
    arr *losses = arr_new(N, DT_F32, 0);
    int targets[7] = {3, -1, 999, 0, 512, -1, 77};
    int *dtg = backend_alloc(be, sizeof targets), *htg = targets;
    SK_ASSERT(dtg);
    backend_upload(be, dtg, targets, sizeof targets);
#define TARGETS tensor_1d(on_dev ? (void *)dtg : (void *)htg, DT_I32, N)
    BOTH(b->ops->softmax_xent(b, NULL, T1(losses), T2(dlogits, N, Vp), cols2(logits, N, Vp, 0, V), TARGETS, 0.125f));
    CHECK(agree("softmax_xent losses", losses, ATOL_SUM));
    CHECK(agree("softmax_xent dlogits", dlogits, ATOL_ELEM));
    BOTH(b->ops->softmax_xent(b, NULL, T1(losses), T2(logits, N, Vp), cols2(logits, N, Vp, 0, V), TARGETS, 0.125f));
#undef TARGETS
    CHECK(agree("softmax_xent losses (in place)", losses, ATOL_SUM));
    CHECK(agree("softmax_xent dlogits in place", logits, ATOL_ELEM));
    float *got = arr_get(logits);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < Vp; j++)
            if (j >= V || targets[i] < 0) CHECK_MSG(got[(size_t)i * Vp + j] == 0.0f, "dlogits[%d][%d] = %g", i, j, got[(size_t)i * Vp + j]);
    free(got);
    backend_mem_free(be, dtg);
}

/* ---- attention ---- */

/* q(B,Tq,NH*HS), k, v (B,Tk,NKV*HS) in bf16, window W, dropout p. Packed: q, k, v are column
 * slices of one qkv(B,T,QD+2KD) (row stride QD+2KD) and dq, dk, dv of one dqkv, as GPT-2 lays
 * them out. stale: dq, dk, dv hold earlier values (instead of zeros), which the backward
 * overwrites. */
typedef struct attn_case { const char *name; int B, Tq, Tk, NH, NKV, HS, W; float p; bool packed, stale; } attn_case;

/* Whether cuDNN's graphs take the case (cuda_cudnn.cu's dnn_covers; the test's arrays are
 * 16-byte aligned with row strides of whole 16-byte units). */
static bool attn_cudnn_covers(const attn_case *c) {
    return c->Tq == c->Tk && c->Tq > 1 && c->p == 0.0f && c->HS % 8 == 0;
}

/* The forward (bf16 out, f32 lse); then the backward on the same inputs for both runs (out
 * and lse: the reference's, out rounded to bf16), dq, dk, dv written; then the device's
 * backward again over other values in dq, dk, dv: the same bits. Prints what ran. */
static bool attention_case(attn_case c) {
    setup((uint64_t)(c.Tq * 7 + c.Tk + c.HS + c.W * 3 + c.NKV));
    const int QD = c.NH * c.HS, KD = c.NKV * c.HS, W3 = QD + 2 * KD;
    arr *q, *k, *v, *dq, *dk, *dv;
    if (c.packed) {
        q = k = v = arr_new((size_t)c.B * c.Tq * W3, DT_BF16, 1);
        dq = dk = dv = arr_new((size_t)c.B * c.Tq * W3, DT_BF16, c.stale);
    } else {
        q = arr_new((size_t)c.B * c.Tq * QD, DT_BF16, 1), dq = arr_new((size_t)c.B * c.Tq * QD, DT_BF16, c.stale);
        k = arr_new((size_t)c.B * c.Tk * KD, DT_BF16, 1), dk = arr_new((size_t)c.B * c.Tk * KD, DT_BF16, c.stale);
        v = arr_new((size_t)c.B * c.Tk * KD, DT_BF16, 1), dv = arr_new((size_t)c.B * c.Tk * KD, DT_BF16, c.stale);
    }
    arr *out = arr_new((size_t)c.B * c.Tq * QD, DT_BF16, 1), *dout = arr_new((size_t)c.B * c.Tq * QD, DT_BF16, 1);
    arr *lse = arr_new((size_t)c.B * c.NH * c.Tq, DT_F32, 0);
#define VQ(a) (c.packed ? tensor_cols(T3(a, c.B, c.Tq, W3), 0, QD) : T3(a, c.B, c.Tq, QD))
#define VK(a) (c.packed ? tensor_cols(T3(a, c.B, c.Tk, W3), QD, KD) : T3(a, c.B, c.Tk, KD))
#define VV(a) (c.packed ? tensor_cols(T3(a, c.B, c.Tk, W3), QD + KD, KD) : T3(a, c.B, c.Tk, KD))
#define BACKWARD                                                                                                    \
    b->ops->attention_backward(b, NULL, VQ(dq), VK(dk), VV(dv), T3(dout, c.B, c.Tq, QD), VQ(q), VK(k), VV(v),      \
                               T3(out, c.B, c.Tq, QD), T3(lse, c.B, c.NH, c.Tq), c.NH, c.NKV, c.W, c.p, 4242)
    BOTH(b->ops->attention_forward(b, NULL, T3(out, c.B, c.Tq, QD), T3(lse, c.B, c.NH, c.Tq), VQ(q), VK(k), VV(v), c.NH,
                                   c.NKV, c.W, c.p, 4242));
    printf("  %s: forward by %s\n", c.name, backend_attention_impl(be, false));
    bool ok = agree_attn("attention out", out) & agree("attention lse", lse, ATOL_SUM);
    arr_put(out), arr_put(lse);
    BOTH(BACKWARD);
    printf("  %s: backward by %s\n", c.name, backend_attention_impl(be, true));
    arr *grads[3] = {dq, dk, dv};
    const int ng = c.packed ? 1 : 3;
    if (c.packed) ok &= agree_attn("attention dqkv", dq);
    else ok &= agree_attn("attention dq", dq) & agree_attn("attention dk", dk) & agree_attn("attention dv", dv);
    void *first[3];
    for (int i = 0; i < ng; i++) {
        first[i] = test_download(be, tensor_1d(grads[i]->dev, DT_BF16, (int64_t)grads[i]->n));
        arr_put(grads[i]);   /* the reference's values: other bits */
    }
    b = be, on_dev = true;
    BACKWARD;
    for (int i = 0; i < ng; i++) {
        void *again = test_download(be, tensor_1d(grads[i]->dev, DT_BF16, (int64_t)grads[i]->n));
        const bool same = !memcmp(first[i], again, grads[i]->n * sizeof(uint16_t));
        if (!same) printf("  %s: a second backward wrote other bits\n", c.name);
        ok &= same;
        free(first[i]);
        free(again);
    }
#undef BACKWARD
#undef VQ
#undef VK
#undef VV
    return ok;
}

/* Cases of every kind attention takes; the GPU's implementations differ by kind. */
static const attn_case attn_cases[] = {
    /* name                       B  Tq  Tk  NH NKV HS   W   p     packed stale */
    {"MHA packed qkv",            2, 80, 80, 4, 4,  64,  0,  0.0f, true,  false},
    {"GQA 8:2",                   2, 72, 72, 8, 2,  32,  0,  0.0f, false, false},
    {"GQA 4:2 window 24",         1, 96, 96, 4, 2,  32,  24, 0.0f, false, false},
    {"Tq 24 < Tk 88",             2, 24, 88, 4, 2,  32,  0,  0.0f, false, false},
    {"packed qkv, dropout 0.1",   2, 70, 70, 4, 4,  64,  0,  0.1f, true,  false},
    {"HS 128",                    1, 66, 66, 2, 2,  128, 0,  0.0f, false, false},
    {"GQA 4:2 over stale grads",  1, 40, 40, 4, 2,  32,  0,  0.0f, false, true},
};
#define N_ATTN_CASES (int)(sizeof attn_cases / sizeof attn_cases[0])

/* One layer of the models' attention at their shapes (the batch cut for the CPU reference):
 * GPT-2 124M (packed qkv, 12 heads of 64, 1024 tokens), a Llama-3-style GQA 32:8 with heads
 * of 128, and the same with a sliding window. */
static const attn_case attn_model_cases[] = {
    {"GPT-2 layer, B 2 of 32",    2, 1024, 1024, 12, 12, 64,  0,   0.0f, true,  false},
    {"Llama GQA 32:8 HS 128",     1, 1024, 1024, 32, 8,  128, 0,   0.0f, false, false},
    {"Llama GQA 32:8 window 256", 1, 512,  512,  32, 8,  128, 256, 0.0f, false, false},
};
#define N_ATTN_MODEL_CASES (int)(sizeof attn_model_cases / sizeof attn_model_cases[0])

TEST(attention_bf16_forward_and_backward) {
    NEED_MIXED();
    for (int i = 0; i < N_ATTN_CASES; i++) CHECK_MSG(attention_case(attn_cases[i]), "%s", attn_cases[i].name);
}

/* A CUDA backend made with SKEIN_CUDA_ATTN=mode (the variable restored after), or NULL where
 * the test device is not CUDA. */
static backend *cuda_with_attn(const char *mode) {
    if (strcmp(test_device()->name, "cuda")) return NULL;
    const char *old = getenv("SKEIN_CUDA_ATTN");
    char *saved = old ? strdup(old) : NULL;
    setenv("SKEIN_CUDA_ATTN", mode, 1);
    backend *cu = backend_create("cuda");
    if (saved) setenv("SKEIN_CUDA_ATTN", saved, 1);
    else unsetenv("SKEIN_CUDA_ATTN");
    free(saved);
    SK_ASSERT(cu);
    return cu;
}

/* Runs the n cases on dev (the device of every case meanwhile); with `cudnn`, a case cuDNN
 * covers must have run on it both ways (a warning above says why not). The number of cases
 * that failed. */
static int attention_cases_on(backend *dev, const attn_case *cases, int n, bool cudnn) {
    int failed = 0;
    dev_override = dev;
    for (int i = 0; i < n; i++) {
        bool ok = attention_case(cases[i]);
        const char *fwd = backend_attention_impl(be, false), *bwd = backend_attention_impl(be, true);
        if (cudnn && attn_cudnn_covers(&cases[i]) && (strcmp(fwd, "cudnn") || strcmp(bwd, "cudnn"))) {
            printf("  %s: cuDNN covers the case but did not run it (forward %s, backward %s)\n", cases[i].name, fwd, bwd);
            ok = false;
        }
        if (!cudnn && (!strcmp(fwd, "cudnn") || !strcmp(bwd, "cudnn"))) {
            printf("  %s: cuDNN ran under SKEIN_CUDA_ATTN=own\n", cases[i].name);
            ok = false;
        }
        if (!ok) printf("  %s: FAILED\n", cases[i].name);
        failed += !ok;
    }
    dev_override = NULL;
    return failed;
}

/* The own CUDA kernels (SKEIN_CUDA_ATTN=own: tensor-core where they fit, else tiled). */
TEST(attention_bf16_own_cuda_kernels) {
    NEED_MIXED();
    backend *cu = cuda_with_attn("own");
    if (!cu) SKIP("the test device is %s, not cuda", be->name);
    const int failed = attention_cases_on(cu, attn_cases, N_ATTN_CASES, false);
    backend_free(cu);
    CHECK_MSG(failed == 0, "%d case(s) failed", failed);
}

/* cuDNN's fused attention (SKEIN_CUDA_ATTN=cudnn) on the cases and at the models' shapes: the
 * CPU reference's tolerances, every covered case run by cuDNN, its backward the same bits
 * twice (the deterministic algorithm). */
TEST(attention_bf16_cudnn) {
    NEED_MIXED();
#ifndef SKEIN_HAVE_CUDNN
    SKIP("skein is built without cuDNN (the Makefile found no cudnn_graph.h and libcudnn in CUDNN_HOME)");
#else
    backend *cu = cuda_with_attn("cudnn");
    if (!cu) SKIP("the test device is %s, not cuda", be->name);
    const int failed = attention_cases_on(cu, attn_cases, N_ATTN_CASES, true) +
                       attention_cases_on(cu, attn_model_cases, N_ATTN_MODEL_CASES, true);
    backend_free(cu);
    CHECK_MSG(failed == 0, "%d case(s) failed", failed);
#endif
}

TEST_MAIN()
