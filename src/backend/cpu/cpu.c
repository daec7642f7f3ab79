/* backend/cpu: the reference backend. Products go to OpenBLAS (cblas_sgemm, row-major); the
 * products of decode steps, where sgemm would first copy all of the weight into its panels (a
 * pass as long as the product itself), read it once in place: one row through cpu_gemv, up
 * to CPU_LOWP_SMALL_M rows through cpu_lowp's direct kernels (which also serve bf16/f16);
 * everything else is plain C loops parallelized with OpenMP and written so the compiler
 * vectorizes them (no libm calls in hot loops: exp and tanh come from cpu_expf, cpu_impl.h).
 * Attention lives in cpu_attention.c.
 *
 * bf16 views of the mixed-precision ops ([lp] in backend.h) go through cpu_mixed.c, which
 * converts them to f32 scratch around the f32 kernels here: the op table holds its adapters,
 * cpu_f32_ops the kernels.
 *
 * Invariants: no f32 kernel allocates (bf16 views use cpu_mixed.c's scratch); every op is
 * deterministic for a given thread count, and the ones whose results feed gradients
 * (layernorm, rmsnorm, bias, embedding and attention backward) are also independent of it,
 * because each output element is summed by one thread in row order.
 * Memory is host memory from mem_calloc, so upload/download are memcpy.
 *
 * Letters as in backend.h: N rows, B batch, T time, C channels, OC output channels,
 * NH heads, NKV key/value heads, HS head size, V vocabulary (Vp its padded row stride). */
#include "backend/cpu/cpu_gemv.h"
#include "backend/cpu/cpu_impl.h"
#include "backend/cpu/cpu_lowp.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>
#include <unistd.h>

/* ---- elementwise math ---- */

/* tanh(u) = 1 - 2 / (e^{2u} + 1); saturates cleanly at +-1 through the clamp in cpu_expf. */
static inline float cpu_tanhf(float u) { return 1.0f - 2.0f / (cpu_expf(2.0f * u) + 1.0f); }

#define GELU_K 0.7978845608028654f   /* sqrt(2/pi) */

/* ---- memory ---- */

/* Every kind of memory is host memory here; streams and events are markers (ops run
 * synchronously when called, so every stream is always done). */
struct backend_stream { int unused; };
struct backend_event { int unused; };

static void *cpu_alloc(backend *be, size_t bytes, tensor_mem where) { return mem_calloc(bytes ? bytes : 1); }
static void cpu_free(backend *be, void *p, tensor_mem where) { mem_free(p); }

static void cpu_copy(backend *be, void *dst, const void *src, size_t bytes, backend_copy_dir dir,
                     backend_stream *s) {
    if (dst != src) memcpy(dst, src, bytes);
}

static backend_stream *cpu_stream_create(backend *be) { return mem_calloc(sizeof(backend_stream)); }
static void cpu_stream_free(backend *be, backend_stream *s) { mem_free(s); }
static void cpu_stream_synchronize(backend *be, backend_stream *s) {}
static backend_event *cpu_event_create(backend *be) { return mem_calloc(sizeof(backend_event)); }
static void cpu_event_free(backend *be, backend_event *e) { mem_free(e); }
static void cpu_event_record(backend *be, backend_event *e, backend_stream *s) {}
static void cpu_stream_wait_event(backend *be, backend_stream *s, backend_event *e) {}
static void cpu_event_synchronize(backend *be, backend_event *e) {}

/* Free: what mem_available says the host can still give (MemAvailable); total: physical memory. */
static sk_status cpu_mem_info(backend *be, size_t *free_bytes, size_t *total_bytes) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    size_t total = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : SIZE_MAX;
    size_t avail = mem_available();
    if (free_bytes) *free_bytes = avail < total ? avail : total;
    if (total_bytes) *total_bytes = total;
    return SK_OK;
}

/* Filling large gradient buffers is memory-bound; two threads fill faster than one. */
static void cpu_fill(backend *be, void *p, int byte, size_t bytes, backend_stream *s) {
    const size_t chunk = (size_t)1 << 20;
    long nchunks = (long)((bytes + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (nchunks > 1)
    for (long c = 0; c < nchunks; c++) {
        size_t off = (size_t)c * chunk;
        memset((char *)p + off, byte, bytes - off < chunk ? bytes - off : chunk);
    }
}

/* ---- views ----
 * Each op checks its views once on entry (SK_ASSERT: a wrong view is a bug in the caller)
 * and then runs on plain pointers and int sizes, as the loops below were written. */

/* The data of a contiguous f32 view of n elements. */
static float *cpu_vec(tensor t, int64_t n) {
    SK_ASSERT(t.dt == DT_F32 && tensor_is_contiguous(t) && tensor_numel(t) == n);
    return t.data;
}
/* As cpu_vec, or NULL for tensor_none() (an optional output). */
static float *cpu_vec_opt(tensor t, int64_t n) { return tensor_is_none(t) ? NULL : cpu_vec(t, n); }
/* The data of a contiguous f32 matrix view (2-D); its shape into *rows, *cols. */
static float *cpu_mat(tensor t, int *rows, int *cols) {
    SK_ASSERT(t.ndim == 2 && t.dt == DT_F32 && tensor_is_contiguous(t));
    *rows = (int)t.shape[0];
    *cols = (int)t.shape[1];
    return t.data;
}
/* The data of a contiguous f32 (rows, cols) view with exactly that shape. */
static float *cpu_mat_of(tensor t, int rows, int cols) {
    int r, c;
    float *p = cpu_mat(t, &r, &c);
    SK_ASSERT(r == rows && c == cols);
    return p;
}

/* ---- products ---- */

/* Products and embedding gathers read bf16/f16 weights where they lie (cpu_lowp.h), and the
 * paged ops bf16/f16 key/value caches under f32 activations; [lp] arguments may be bf16
 * (cpu_mixed.c); every other op is f32 only. */
static bool cpu_supports(backend *be, backend_op op, dtype dt) {
    if (op == BACKEND_OP_MATMUL || op == BACKEND_OP_EMBED || op == BACKEND_OP_KV_CACHE)
        return dt == DT_F32 || dt == DT_BF16 || dt == DT_F16;
    if (op == BACKEND_OP_MIXED) return dt == DT_F32 || dt == DT_BF16;
    return dt == DT_F32;
}

/* OpenBLAS takes the row strides as leading dimensions, so column blocks need no copy. A
 * bf16/f16 weight B (mapped weights in inference) goes to cpu_lowp_matmul with its row
 * stride, so a column block of a wider matrix (GPT-2's q/k/v in c_attn) is read in place;
 * only A untransposed meets such a B (inference forwards, never a backward). */
static void cpu_matmul(backend *be, backend_stream *stream, tensor C, tensor A, bool ta, tensor B, bool tb,
                       float alpha, float beta) {
    SK_ASSERT(A.ndim == 2 && B.ndim == 2 && C.ndim == 2 && A.dt == DT_F32 && C.dt == DT_F32);
    SK_ASSERT(cpu_supports(be, BACKEND_OP_MATMUL, B.dt));
    const int M = (int)C.shape[0], N = (int)C.shape[1], K = (int)(ta ? A.shape[0] : A.shape[1]);
    SK_ASSERT((ta ? A.shape[1] : A.shape[0]) == M && (tb ? B.shape[1] : B.shape[0]) == K &&
              (tb ? B.shape[0] : B.shape[1]) == N);
    if (B.dt != DT_F32) {
        SK_ASSERT(!ta);
        cpu_lowp_matmul(tensor_f32(C), (int)tensor_ld(C), tensor_f32(A), (int)tensor_ld(A), B.data, B.dt,
                        tb ? CPU_LOWP_NK : CPU_LOWP_KN, (int)tensor_ld(B), M, N, K, alpha, beta);
        return;
    }
    if (M == 1 && !ta) {   /* a decode step of one sequence */
        if (tb) cpu_gemv_nk(tensor_f32(C), tensor_f32(A), tensor_f32(B), (int)tensor_ld(B), N, K, alpha, beta);
        else cpu_gemv_kn(tensor_f32(C), tensor_f32(A), tensor_f32(B), (int)tensor_ld(B), K, N, alpha, beta);
        return;
    }
    if (M <= CPU_LOWP_SMALL_M && !ta) {   /* a decode step of a few: cpu_lowp's direct kernels, f32 in place */
        cpu_lowp_matmul(tensor_f32(C), (int)tensor_ld(C), tensor_f32(A), (int)tensor_ld(A), B.data, DT_F32,
                        tb ? CPU_LOWP_NK : CPU_LOWP_KN, (int)tensor_ld(B), M, N, K, alpha, beta);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, tensor_f32(A), (int)tensor_ld(A), tensor_f32(B), (int)tensor_ld(B), beta,
                tensor_f32(C), (int)tensor_ld(C));
}

/* out's rows may be apart (ld), as a cache block or a column block is. */
static void cpu_bias_add(backend *be, backend_stream *stream, tensor out_t, tensor bias_t) {
    SK_ASSERT(out_t.ndim == 2 && out_t.dt == DT_F32);
    const int N = (int)out_t.shape[0], OC = (int)out_t.shape[1];
    const size_t ld = (size_t)tensor_ld(out_t);
    float *out = tensor_f32(out_t);
    const float *bias = cpu_vec(bias_t, OC);
#pragma omp parallel for schedule(static) if ((size_t)N * OC > CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *o = out + (size_t)i * ld;
#pragma omp simd
        for (int j = 0; j < OC; j++) o[j] += bias[j];
    }
}

/* Columns are split across threads (blocks of 64), rows summed in order inside a block. */
static void cpu_bias_backward(backend *be, backend_stream *stream, tensor dbias_t, tensor dout_t) {
    int N, OC;
    const float *dout = cpu_mat(dout_t, &N, &OC);
    float *dbias = cpu_vec(dbias_t, OC);
    int nblk = (OC + 63) / 64;
#pragma omp parallel for schedule(static) if ((size_t)N * OC > CPU_PAR_MIN)
    for (int blk = 0; blk < nblk; blk++) {
        int j0 = blk * 64, j1 = j0 + 64 < OC ? j0 + 64 : OC;
        float acc[64] = {0};
        for (int i = 0; i < N; i++) {
            const float *d = dout + (size_t)i * OC;
#pragma omp simd
            for (int j = j0; j < j1; j++) acc[j - j0] += d[j];
        }
        for (int j = j0; j < j1; j++) dbias[j] += acc[j - j0];
    }
}

/* ---- embeddings ---- */

/* tokens(B,T) (i32, contiguous) with wte(V,C) and wpe(P,C), P >= T (or none): out(B*T,C),
 * dout(B*T,C). */
static const int *cpu_tokens(tensor t, int *B, int *T) {
    SK_ASSERT(t.ndim == 2 && tensor_is_contiguous(t));
    *B = (int)t.shape[0];
    *T = (int)t.shape[1];
    return tensor_i32(t);
}

/* The rows of a table view (V,C) with contiguous rows in f32, bf16 or f16 (the CPU's EMBED
 * dtypes). */
static const void *cpu_table(tensor t, int *V, int *C) {
    SK_ASSERT(t.ndim == 2 && tensor_is_contiguous(t) && cpu_supports(NULL, BACKEND_OP_EMBED, t.dt));
    *V = (int)t.shape[0];
    *C = (int)t.shape[1];
    return t.data;
}

/* o(C) += row(C) of dtype dt (f32, bf16 or f16), each element converted exactly. */
static void cpu_row_add(float *o, const void *row, dtype dt, int C) {
    if (dt == DT_F32) {
        const float *r = row;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] += r[c];
    } else if (dt == DT_BF16) {
        const uint16_t *r = row;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] += bf16_to_f32(r[c]);
    } else {
        const uint16_t *r = row;
        for (int c = 0; c < C; c++) o[c] += f16_to_f32(r[c]);
    }
}

/* Gathers the token rows (a bf16/f16 table through cpu_lowp_embed), then adds the position
 * rows: e + pe rounds once, as a fused sum would. */
static void cpu_embed_forward(backend *be, backend_stream *stream, tensor out_t, tensor tokens_t, tensor wte_t,
                              tensor wpe_t) {
    int B, T, V, C, P = 0, CP = 0;
    const int *tokens = cpu_tokens(tokens_t, &B, &T);
    const void *wte = cpu_table(wte_t, &V, &C);
    float *out = cpu_mat_of(out_t, B * T, C);
    const void *wpe = tensor_is_none(wpe_t) ? NULL : cpu_table(wpe_t, &P, &CP);
    SK_ASSERT(!wpe || (P >= T && CP == C));
    const size_t pe_bytes = wpe ? dtype_size(wpe_t.dt) * (size_t)C : 0;
    if (wte_t.dt != DT_F32) cpu_lowp_embed(out, tokens, B * T, wte, wte_t.dt, V, C);
#pragma omp parallel for schedule(static) if ((size_t)B * T * C > CPU_PAR_MIN)
    for (int i = 0; i < B * T; i++) {
        float *o = out + (size_t)i * C;
        SK_ASSERT(tokens[i] >= 0 && tokens[i] < V);
        if (wte_t.dt == DT_F32) memcpy(o, (const float *)wte + (size_t)tokens[i] * C, sizeof(float) * (size_t)C);
        if (wpe) cpu_row_add(o, (const char *)wpe + (size_t)(i % T) * pe_bytes, wpe_t.dt, C);
    }
}

/* A token can repeat, so rows of dwte would race: threads split the channels instead. */
static void cpu_embed_backward(backend *be, backend_stream *stream, tensor dwte_t, tensor dwpe_t, tensor dout_t,
                               tensor tokens_t) {
    int B, T, V, C;
    const int *tokens = cpu_tokens(tokens_t, &B, &T);
    float *dwte = cpu_mat(dwte_t, &V, &C);
    const float *dout = cpu_mat_of(dout_t, B * T, C);
    float *dwpe = NULL;
    if (!tensor_is_none(dwpe_t)) {
        SK_ASSERT(dwpe_t.ndim == 2 && dwpe_t.shape[0] >= T);
        dwpe = cpu_mat_of(dwpe_t, (int)dwpe_t.shape[0], C);
    }
#pragma omp parallel if ((size_t)B * T * C > CPU_PAR_MIN)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int c0 = (int)((long)C * id / nt), c1 = (int)((long)C * (id + 1) / nt);
        for (int i = 0; i < B * T; i++) {
            const float *d = dout + (size_t)i * C;
            float *w = dwte + (size_t)tokens[i] * C;
            for (int c = c0; c < c1; c++) w[c] += d[c];
            if (dwpe) {
                float *pe = dwpe + (size_t)(i % T) * C;
                for (int c = c0; c < c1; c++) pe[c] += d[c];
            }
        }
    }
}

/* ---- LayerNorm ---- */

/* Adds row i of the residual (or nothing when resid is NULL) to row x in place. */
static void cpu_add_residual(float *restrict x, const float *resid, int i, int C) {
    if (!resid) return;
    const float *restrict r = resid + (size_t)i * C;
#pragma omp simd
    for (int c = 0; c < C; c++) x[c] += r[c];
}

/* bf16 copy of a row (or nothing when lp is NULL). */
static void cpu_copy_row_lp(uint16_t *lp, const float *x, int i, int C) {
    if (!lp) return;
    uint16_t *o = lp + (size_t)i * C;
    for (int c = 0; c < C; c++) o[c] = f32_to_bf16(x[c]);
}

/* dinp_lp's data: NULL for tensor_none(), else a contiguous bf16 (N,C). */
static uint16_t *cpu_lp_copy_target(tensor t, int N, int C) {
    if (tensor_is_none(t)) return NULL;
    SK_ASSERT(t.dt == DT_BF16 && tensor_is_contiguous(t) && tensor_numel(t) == (int64_t)N * C);
    return t.data;
}

static void cpu_layernorm_forward(backend *be, backend_stream *stream, tensor out_t, tensor mean_t, tensor rstd_t,
                                  tensor inp_t, tensor resid_t, tensor weight_t, tensor bias_t, float eps) {
    int N, C;
    float *inp = cpu_mat(inp_t, &N, &C);
    const float *weight = cpu_vec(weight_t, C), *bias = cpu_vec(bias_t, C);
    const float *resid = tensor_is_none(resid_t) ? NULL : cpu_mat_of(resid_t, N, C);
    float *out = cpu_mat_of(out_t, N, C), *mean = cpu_vec_opt(mean_t, N), *rstd = cpu_vec_opt(rstd_t, N);
#pragma omp parallel for schedule(static) if ((size_t)N * C > CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *x = inp + (size_t)i * C;
        float *o = out + (size_t)i * C;
        cpu_add_residual(x, resid, i, C);
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += x[c];
        float m = s / C, v = 0;   /* two passes: the variance of centered values keeps precision */
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        float r = 1.0f / sqrtf(v / C + eps);
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * r * weight[c] + bias[c];
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = r;
    }
}

/* dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * weight;
 * dweight += sum over rows of dout * norm; dbias += sum of dout. The parameter sums run over
 * column blocks (one thread per column) so they are race-free and order-stable. */
static void cpu_layernorm_backward(backend *be, backend_stream *stream, tensor dinp_t, tensor dinp_lp_t,
                                   tensor dweight_t, tensor dbias_t, tensor dout_t, tensor inp_t, tensor weight_t,
                                   tensor mean_t, tensor rstd_t) {
    int N, C;
    const float *inp = cpu_mat(inp_t, &N, &C), *dout = cpu_mat_of(dout_t, N, C), *weight = cpu_vec(weight_t, C);
    const float *mean = cpu_vec(mean_t, N), *rstd = cpu_vec(rstd_t, N);
    float *dinp = cpu_mat_of(dinp_t, N, C), *dweight = cpu_vec(dweight_t, C), *dbias = cpu_vec(dbias_t, C);
    uint16_t *dinp_lp = cpu_lp_copy_target(dinp_lp_t, N, C);
    bool par = (size_t)N * C > CPU_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C, *d = dout + (size_t)i * C;
        float *dx = dinp + (size_t)i * C;
        float m = mean[i], r = rstd[i], a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
        for (int c = 0; c < C; c++) {
            float dn = d[c] * weight[c];
            a += dn;
            b += dn * (x[c] - m) * r;
        }
        a /= C;
        b /= C;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            float nrm = (x[c] - m) * r;
            dx[c] += r * (d[c] * weight[c] - a - nrm * b);
        }
        cpu_copy_row_lp(dinp_lp, dx, i, C);
    }
    int nblk = (C + 63) / 64;
#pragma omp parallel for schedule(static) if (par)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
        float aw[64] = {0}, ab[64] = {0};
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C, *d = dout + (size_t)i * C;
            float m = mean[i], r = rstd[i];
#pragma omp simd
            for (int c = c0; c < c1; c++) {
                aw[c - c0] += d[c] * (x[c] - m) * r;
                ab[c - c0] += d[c];
            }
        }
        for (int c = c0; c < c1; c++) {
            dweight[c] += aw[c - c0];
            dbias[c] += ab[c - c0];
        }
    }
}

/* ---- elementwise ---- */

static void cpu_gelu_forward(backend *be, backend_stream *stream, tensor out_t, tensor inp_t) {
    const size_t n = (size_t)tensor_numel(inp_t);
    const float *inp = cpu_vec(inp_t, (int64_t)n);
    float *out = cpu_vec(out_t, (int64_t)n);
#pragma omp parallel for simd schedule(static) if (n > CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + cpu_tanhf(GELU_K * (x + 0.044715f * x * x * x)));
    }
}

/* d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx. Writes. */
static void cpu_gelu_backward(backend *be, backend_stream *stream, tensor dinp_t, tensor inp_t, tensor dout_t) {
    const size_t n = (size_t)tensor_numel(inp_t);
    const float *inp = cpu_vec(inp_t, (int64_t)n), *dout = cpu_vec(dout_t, (int64_t)n);
    float *dinp = cpu_vec(dinp_t, (int64_t)n);
#pragma omp parallel for simd schedule(static) if (n > CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float th = cpu_tanhf(GELU_K * (x + 0.044715f * x * x * x));
        float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = dout[i] * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
    }
}

static void cpu_add(backend *be, backend_stream *stream, tensor out_t, tensor a_t, tensor b_t) {
    const size_t n = (size_t)tensor_numel(out_t);
    const float *a = cpu_vec(a_t, (int64_t)n), *b = cpu_vec(b_t, (int64_t)n);
    float *out = cpu_vec(out_t, (int64_t)n);
#pragma omp parallel for simd schedule(static) if (n > CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void cpu_scale(backend *be, backend_stream *stream, tensor x_t, float alpha) {
    const size_t n = (size_t)tensor_numel(x_t);
    float *x = cpu_vec(x_t, (int64_t)n);
#pragma omp parallel for simd schedule(static) if (n > CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) x[i] *= alpha;
}

static void cpu_dropout_forward(backend *be, backend_stream *stream, tensor out_t, tensor inp_t, float p,
                                uint64_t seed) {
    SK_ASSERT(p >= 0.0f && p < 1.0f);
    const size_t n = (size_t)tensor_numel(inp_t);
    const float *inp = cpu_vec(inp_t, (int64_t)n);
    float *out = cpu_vec(out_t, (int64_t)n);
    float sc = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = dropout_keep(seed, i, p) ? inp[i] * sc : 0.0f;
}

static void cpu_dropout_backward(backend *be, backend_stream *stream, tensor dinp, tensor dout, float p,
                                 uint64_t seed) {
    cpu_dropout_forward(be, stream, dinp, dout, p, seed);   /* the same masked scaling */
}

/* ---- Llama family: RMSNorm, rotary embeddings, SwiGLU ---- */

static void cpu_rmsnorm_forward(backend *be, backend_stream *stream, tensor out_t, tensor rstd_t, tensor inp_t,
                                tensor resid_t, tensor weight_t, float eps) {
    int N, C;
    float *inp = cpu_mat(inp_t, &N, &C);
    const float *weight = cpu_vec(weight_t, C);
    const float *resid = tensor_is_none(resid_t) ? NULL : cpu_mat_of(resid_t, N, C);
    float *out = cpu_mat_of(out_t, N, C), *rstd = cpu_vec_opt(rstd_t, N);
#pragma omp parallel for schedule(static) if ((size_t)N * C > CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *x = inp + (size_t)i * C;
        float *o = out + (size_t)i * C;
        cpu_add_residual(x, resid, i, C);
        float ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / C + eps);
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = x[c] * r * weight[c];
        if (rstd) rstd[i] = r;
    }
}

/* y = x r w with r = (mean(x^2) + eps)^-1/2, so dr/dx_c = -r^3 x_c / C and
 *   dx_c += r w_c d_c - x_c r^3 / C * sum_j d_j w_j x_j;   dw_c += sum over rows of d_c x_c r.
 * The weight sums run over column blocks, one thread per column, as in LayerNorm. */
static void cpu_rmsnorm_backward(backend *be, backend_stream *stream, tensor dinp_t, tensor dinp_lp_t,
                                 tensor dweight_t, tensor dout_t, tensor inp_t, tensor weight_t, tensor rstd_t) {
    int N, C;
    const float *inp = cpu_mat(inp_t, &N, &C), *dout = cpu_mat_of(dout_t, N, C), *weight = cpu_vec(weight_t, C);
    const float *rstd = cpu_vec(rstd_t, N);
    float *dinp = cpu_mat_of(dinp_t, N, C), *dweight = cpu_vec(dweight_t, C);
    uint16_t *dinp_lp = cpu_lp_copy_target(dinp_lp_t, N, C);
    bool par = (size_t)N * C > CPU_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C, *d = dout + (size_t)i * C;
        float *dx = dinp + (size_t)i * C;
        float r = rstd[i], s = 0;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += d[c] * weight[c] * x[c];
        float k = s * r * r * r / C;
#pragma omp simd
        for (int c = 0; c < C; c++) dx[c] += r * weight[c] * d[c] - k * x[c];
        cpu_copy_row_lp(dinp_lp, dx, i, C);
    }
    int nblk = (C + 63) / 64;
#pragma omp parallel for schedule(static) if (par)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
        float aw[64] = {0};
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C, *d = dout + (size_t)i * C;
            float r = rstd[i];
#pragma omp simd
            for (int c = c0; c < c1; c++) aw[c - c0] += d[c] * x[c] * r;
        }
        for (int c = c0; c < c1; c++) dweight[c] += aw[c - c0];
    }
}

/* Rotates each (i, i + HS/2) pair of every head of x(B,T,nh,HS) by +angle (dir = 1) or
 * -angle (dir = -1); x's rows of nh*HS channels may be apart (a column block of q/k/v). */
static void cpu_rope(tensor x_t, tensor cos_t, tensor sin_t, int pos0, float dir) {
    SK_ASSERT(x_t.ndim == 4);
    const int T = (int)x_t.shape[1], N = (int)x_t.shape[0] * T, nh = (int)x_t.shape[2], HS = (int)x_t.shape[3];
    const int H2 = HS / 2;
    SK_ASSERT(HS % 2 == 0 && cos_t.ndim == 2 && cos_t.shape[1] == H2 && cos_t.shape[0] >= pos0 + T);
    const size_t ld = (size_t)tensor_row_stride(x_t, 2);
    float *x = tensor_f32(x_t);
    const float *cos = cpu_vec(cos_t, tensor_numel(cos_t)), *sin = cpu_vec(sin_t, tensor_numel(cos_t));
#pragma omp parallel for schedule(static) if ((size_t)N * nh * HS > CPU_PAR_MIN)
    for (int r = 0; r < N; r++) {
        const int p = pos0 + r % T;
        const float *cs = cos + (size_t)p * H2, *sn = sin + (size_t)p * H2;
        for (int h = 0; h < nh; h++) {
            float *x1 = x + (size_t)r * ld + (size_t)h * HS, *x2 = x1 + H2;
#pragma omp simd
            for (int i = 0; i < H2; i++) {
                float a = x1[i], b = x2[i], c = cs[i], s = dir * sn[i];
                x1[i] = a * c - b * s;
                x2[i] = b * c + a * s;
            }
        }
    }
}

static void cpu_rope_forward(backend *be, backend_stream *stream, tensor x, tensor cos, tensor sin, int pos0) {
    cpu_rope(x, cos, sin, pos0, 1.0f);
}

/* The rotation is orthogonal: its transpose is the rotation by the opposite angle. */
static void cpu_rope_backward(backend *be, backend_stream *stream, tensor dx, tensor cos, tensor sin, int pos0) {
    cpu_rope(dx, cos, sin, pos0, -1.0f);
}

/* Row by row over views of one shape, each row (the last dimension) contiguous, the rows of
 * each view their own stride apart (gate and up: column blocks of one product's output). */
static void cpu_swiglu_forward(backend *be, backend_stream *stream, tensor out_t, tensor gate_t, tensor up_t) {
    SK_ASSERT(tensor_same_shape(out_t, gate_t) && tensor_same_shape(up_t, gate_t) && gate_t.dt == DT_F32);
    const int64_t n = tensor_numel(gate_t), cols = gate_t.shape[gate_t.ndim - 1], rows = cols ? n / cols : 0;
    const size_t ldg = (size_t)tensor_row_stride(gate_t, 1), ldu = (size_t)tensor_row_stride(up_t, 1),
                 ldo = (size_t)tensor_row_stride(out_t, 1);
    const float *gate = gate_t.data, *up = up_t.data;
    float *out = out_t.data;
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate + (size_t)r * ldg, *u = up + (size_t)r * ldu;
        float *o = out + (size_t)r * ldo;
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) o[c] = g[c] / (1.0f + cpu_expf(-g[c])) * u[c];
    }
}

/* silu'(g) = sig(g) (1 + g (1 - sig(g))). Each element's inputs are read before its outputs
 * are written, so dgate may alias dout. */
static void cpu_swiglu_backward(backend *be, backend_stream *stream, tensor dgate_t, tensor dup_t, tensor dout_t,
                                tensor gate_t, tensor up_t) {
    const size_t n = (size_t)tensor_numel(gate_t);
    const float *gate = cpu_vec(gate_t, (int64_t)n), *up = cpu_vec(up_t, (int64_t)n);
    const float *dout = cpu_vec(dout_t, (int64_t)n);
    float *dgate = cpu_vec(dgate_t, (int64_t)n), *dup = cpu_vec(dup_t, (int64_t)n);
#pragma omp parallel for simd schedule(static) if (n > CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], u = up[i], d = dout[i];
        float sg = 1.0f / (1.0f + cpu_expf(-g));
        dup[i] = d * g * sg;
        dgate[i] = d * u * sg * (1.0f + g * (1.0f - sg));
    }
}

/* ---- loss ---- */

/* Per row: lse = max + log sum e^(x - max); loss = lse - x[target]. The exponentials are
 * stored in dlogits on the way (it may alias logits; x[target] is read first) and scaled
 * into the gradient in a last pass, so each logit is read twice and written twice. */
static void cpu_softmax_xent(backend *be, backend_stream *stream, tensor losses_t, tensor dlogits_t, tensor logits_t,
                             tensor targets_t, float dloss) {
    SK_ASSERT(logits_t.ndim == 2 && logits_t.dt == DT_F32);
    const int N = (int)logits_t.shape[0], V = (int)logits_t.shape[1], Vp = (int)tensor_ld(logits_t);
    const float *logits = tensor_f32(logits_t);
    float *dlogits = tensor_is_none(dlogits_t) ? NULL : cpu_mat_of(dlogits_t, N, Vp);
    float *losses = cpu_vec(losses_t, N);
    SK_ASSERT(tensor_numel(targets_t) == N && tensor_is_contiguous(targets_t));
    const int *targets = tensor_i32(targets_t);
#pragma omp parallel for schedule(static) if ((size_t)N * V > CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *x = logits + (size_t)i * Vp;
        float *d = dlogits ? dlogits + (size_t)i * Vp : NULL;
        int tgt = targets[i];
        SK_ASSERT(tgt < V);
        float xt = tgt >= 0 ? x[tgt] : 0.0f;
        float mx = -INFINITY;
        for (int j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        float sum = 0;
        if (d) {
#pragma omp simd reduction(+ : sum)
            for (int j = 0; j < V; j++) {
                float e = cpu_expf(x[j] - mx);
                d[j] = e;
                sum += e;
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (int j = 0; j < V; j++) sum += cpu_expf(x[j] - mx);
        }
        losses[i] = tgt >= 0 ? mx + logf(sum) - xt : 0.0f;
        if (!d) continue;
        float s = tgt >= 0 ? dloss / sum : 0.0f;
#pragma omp simd
        for (int j = 0; j < V; j++) d[j] *= s;
        if (tgt >= 0) d[tgt] -= dloss;
        for (int j = V; j < Vp; j++) d[j] = 0.0f;
    }
}

/* ---- reductions and optimizer ---- */

/* The device scalar of a reduction: one f64 element. */
static double *cpu_scalar_f64(tensor t) {
    SK_ASSERT(t.dt == DT_F64 && tensor_numel(t) == 1);
    return t.data;
}

/* One thread, in index order: the loss must not depend on the thread count. */
static void cpu_sum_f64(backend *be, backend_stream *stream, tensor out, tensor x_t) {
    double *acc = cpu_scalar_f64(out);
    const size_t n = (size_t)tensor_numel(x_t);
    const float *x = cpu_vec(x_t, (int64_t)n);
    double sum = *acc;
    for (size_t i = 0; i < n; i++) sum += x[i];
    *acc = sum;
}

static void cpu_sum_squares(backend *be, backend_stream *stream, tensor out, tensor x_t) {
    const size_t n = (size_t)tensor_numel(x_t);
    const float *x = cpu_vec(x_t, (int64_t)n);
    double total = 0;
    const size_t chunk = 4096;
    long nchunks = (long)((n + chunk - 1) / chunk);
    /* float lanes inside a chunk (vectorized), double across chunks */
#pragma omp parallel for reduction(+ : total) schedule(static) if (n > CPU_PAR_MIN)
    for (long c = 0; c < nchunks; c++) {
        size_t i0 = (size_t)c * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t i = i0; i < i1; i++) s += x[i] * x[i];
        total += s;
    }
    *cpu_scalar_f64(out) += total;
}

/* One span's pass over (param, grad, m, v): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * param -= lr (mhat / (sqrt(vhat) + eps) + wd param), as torch.optim.AdamW; lp (or NULL)
 * receives the new parameters in bf16. sqrtf vectorizes because the build passes
 * -fno-math-errno (Makefile). */
static void cpu_adamw_range(float *restrict param, uint16_t *restrict lp, const float *restrict grad,
                            float *restrict m, float *restrict v, size_t n, const backend_adamw_hp *hp, float wd,
                            float grad_scale, float c1, float c2) {
    const float beta1 = hp->beta1, beta2 = hp->beta2, lr = hp->lr, eps = hp->eps;
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float p = param[i];
        param[i] = p - lr * (mi * c1 / (sqrtf(vi * c2) + eps) + wd * p);
    }
    if (lp)
        for (size_t i = 0; i < n; i++) lp[i] = f32_to_bf16(param[i]);
}

static void cpu_adamw(backend *be, backend_stream *stream, tensor param_t, tensor lp_t, tensor grad_t, tensor m_t,
                      tensor v_t, const backend_adamw_span *spans, int n, const double *norm_sq,
                      const backend_adamw_hp *hp) {
    SK_ASSERT(hp->t >= 1 && (tensor_is_none(lp_t) || (lp_t.dt == DT_BF16 && tensor_numel(lp_t) == tensor_numel(param_t))));
    float *param = cpu_vec(param_t, tensor_numel(param_t)), *m = cpu_vec(m_t, tensor_numel(m_t));
    float *v = cpu_vec(v_t, tensor_numel(v_t));
    const float *grad = cpu_vec(grad_t, tensor_numel(grad_t));
    uint16_t *lp = tensor_is_none(lp_t) ? NULL : lp_t.data;
    const float c1 = 1.0f / (1.0f - powf(hp->beta1, (float)hp->t)), c2 = 1.0f / (1.0f - powf(hp->beta2, (float)hp->t));
    float scale = 1.0f;
    if (norm_sq && hp->grad_clip > 0) {
        const double norm = sqrt(*norm_sq);
        if (norm > hp->grad_clip) scale = (float)(hp->grad_clip / (norm + 1e-6));
    }
#pragma omp parallel for schedule(dynamic) if (n > 1)
    for (int i = 0; i < n; i++) {
        const backend_adamw_span *sp = &spans[i];
        cpu_adamw_range(param + sp->param, lp ? lp + sp->param : NULL, grad + sp->grad, m + sp->state,
                        v + sp->state, (size_t)sp->count, hp, sp->decay ? hp->weight_decay : 0.0f, scale, c1, c2);
    }
}

/* ---- the engine's cache writes ---- */

/* f32 rows into an f32 cache are copied; into a bf16/f16 cache each is rounded once
 * (dtype_from_f32). */
static void cpu_set_rows(backend *be, backend_stream *stream, tensor dst, tensor src, tensor idx_t) {
    SK_ASSERT(dst.ndim == 2 && src.ndim == 2 && dst.shape[1] == src.shape[1] && dst.stride[1] == 1 && src.stride[1] == 1);
    SK_ASSERT(idx_t.ndim == 1 && idx_t.shape[0] == src.shape[0] && cpu_supports(be, BACKEND_OP_KV_CACHE, dst.dt));
    const int N = (int)src.shape[0], D = (int)src.shape[1], R = (int)dst.shape[0];
    const int *idx = tensor_i32(idx_t);
    const size_t es = dtype_size(dst.dt);
    unsigned char *d = dst.data;
    const float *x = tensor_f32(src);
#pragma omp parallel for schedule(static) if ((size_t)N * D > CPU_PAR_MIN)
    for (int i = 0; i < N; i++) {
        SK_ASSERT(idx[i] < R);
        if (idx[i] < 0) continue;   /* a padding row */
        dtype_from_f32(d + (size_t)idx[i] * (size_t)dst.stride[0] * es, dst.dt, x + (int64_t)i * src.stride[0], (size_t)D);
    }
}

static void cpu_resolve_ids(backend *be, backend_stream *stream, tensor ids_t, tensor src_t) {
    SK_ASSERT(ids_t.ndim == 1 && src_t.ndim == 1 && ids_t.dt == DT_I32 && src_t.dt == DT_I32);
    int *ids = tensor_i32(ids_t);
    const int *src = tensor_i32(src_t);
    for (int64_t i = 0; i < ids_t.shape[0]; i++)
        if (ids[i] < 0) {
            SK_ASSERT(-ids[i] - 1 < src_t.shape[0]);
            ids[i] = src[-ids[i] - 1];
        }
}

/* The first maximum of each row, as sample.c's greedy loop finds it. */
static void cpu_argmax_rows(backend *be, backend_stream *stream, tensor ids_t, tensor x_t) {
    SK_ASSERT(x_t.ndim == 2 && x_t.stride[1] == 1 && ids_t.ndim == 1 && ids_t.shape[0] == x_t.shape[0]);
    const int R = (int)x_t.shape[0], V = (int)x_t.shape[1];
    int *ids = tensor_i32(ids_t);
    const float *x = tensor_f32(x_t);
    for (int r = 0; r < R; r++) {
        const float *row = x + (int64_t)r * x_t.stride[0];
        int best = 0;
        for (int i = 1; i < V; i++)
            if (row[i] > row[best]) best = i;
        ids[r] = best;
    }
}

/* Frees be->impl and the scratch it holds. */
static void cpu_destroy(backend *be) {
    cpu_impl *impl = be->impl;
    mem_free(impl->scratch);
    mem_free(impl->parts);
    mem_free(impl);
}

/* The f32 kernels of the ops with [lp] arguments, for cpu_mixed.c's adapters. */
const backend_ops cpu_f32_ops = {
    .matmul = cpu_matmul,
    .bias_add = cpu_bias_add,
    .bias_backward = cpu_bias_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .add = cpu_add,
    .scale = cpu_scale,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .softmax_xent = cpu_softmax_xent,
    .dropout_forward = cpu_dropout_forward,
    .dropout_backward = cpu_dropout_backward,
};

static const backend_ops cpu_ops = {
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .stream_create = cpu_stream_create,
    .stream_free = cpu_stream_free,
    .stream_synchronize = cpu_stream_synchronize,
    .event_create = cpu_event_create,
    .event_free = cpu_event_free,
    .event_record = cpu_event_record,
    .stream_wait_event = cpu_stream_wait_event,
    .event_synchronize = cpu_event_synchronize,
    .mem_info = cpu_mem_info,
    .supports = cpu_supports,
    .destroy = cpu_destroy,
    .matmul = cpu_mixed_matmul,
    .bias_add = cpu_mixed_bias_add,
    .bias_backward = cpu_mixed_bias_backward,
    .linear_forward = cpu_mixed_linear_forward,
    .embed_forward = cpu_embed_forward,
    .embed_backward = cpu_embed_backward,
    .layernorm_forward = cpu_mixed_layernorm_forward,
    .layernorm_backward = cpu_mixed_layernorm_backward,
    .gelu_forward = cpu_mixed_gelu_forward,
    .gelu_backward = cpu_mixed_gelu_backward,
    .add = cpu_mixed_add,
    .scale = cpu_mixed_scale,
    .attention_forward = cpu_mixed_attention_forward,
    .attention_backward = cpu_mixed_attention_backward,
    .rmsnorm_forward = cpu_mixed_rmsnorm_forward,
    .rmsnorm_backward = cpu_mixed_rmsnorm_backward,
    .rope_forward = cpu_mixed_rope_forward,
    .rope_backward = cpu_mixed_rope_backward,
    .swiglu_forward = cpu_mixed_swiglu_forward,
    .swiglu_backward = cpu_mixed_swiglu_backward,
    .softmax_xent = cpu_mixed_softmax_xent,
    .dropout_forward = cpu_mixed_dropout_forward,
    .dropout_backward = cpu_mixed_dropout_backward,
    .cast = cpu_mixed_cast,
    .sum_f64 = cpu_sum_f64,
    .sum_squares = cpu_sum_squares,
    .adamw = cpu_adamw,
    .set_rows = cpu_set_rows,
    .paged_attention = cpu_paged_attention,
    .argmax_rows = cpu_argmax_rows,
    .resolve_ids = cpu_resolve_ids,
};

backend *backend_cpu_create(void) {
    backend *be = mem_calloc(sizeof *be);
    if (!be) return NULL;
    if (!(be->impl = mem_calloc(sizeof(cpu_impl)))) {
        mem_free(be);
        return NULL;
    }
    be->ops = &cpu_ops;
    be->name = "cpu";
    be->host_memory = true;
    return be;
}
