/* backend/cuda: the op table of backend.h on one CUDA device: memory, copies, streams,
 * events, and every compute op's table entry, which checks its views (SK_ASSERT: a wrong
 * view is a caller's bug) and calls its launcher (cuda_ops.cu, cuda_attention.cu).
 *
 * Invariants: device memory comes from cudaMalloc (or, shared between processes, from the
 * driver's cuMemCreate: cuda_ipc.cu) and pinned host memory from cudaMallocHost (never managed
 * memory); cudaMalloc's and cudaMallocHost's are zeroed when handed out. A backend_stream
 * is its cudaStream_t; NULL means the backend's own default stream, created non-blocking
 * (never the legacy stream), so work on other streams overlaps it. Ops are asynchronous:
 * only stream_synchronize, event_synchronize, alloc and free wait for the device. Ops
 * allocate nothing; cuBLAS and cuBLASLt work in a workspace allocated at creation. f32
 * everywhere, and bf16 for the [lp] arguments of mixed precision (supports): the entries
 * check each [lp] view's dtype and pass it on as a cuda_lp. f32 products in plain f32
 * unless SKEIN_CUDA_TF32=1 (cuda.h); bf16 products on the tensor cores through cuBLASLt,
 * bf16 linear layers with their bias and GELU fused in as cuBLASLt epilogues, or, with
 * SKEIN_CUDA_LINEAR=staged at creation, always through f32 staging (the path taken where
 * cuBLASLt has no epilogue for a layer: so a test can run it, and a run compare). */
#include "backend/cuda/cuda_impl.cuh"

#include <math.h>
#include <string.h>

extern "C" {
#include "backend/cuda/cuda.h"
}

#define BLAS_WORKSPACE_BYTES ((size_t)32 << 20)   /* cuBLAS's recommendation for Hopper (and cuBLASLt's) */

static cuda_ctx *ctx(backend *be) { return (cuda_ctx *)be->impl; }
static cudaStream_t stream_of(backend *be, backend_stream *s) { return s ? (cudaStream_t)s : ctx(be)->stream; }

/* ---- memory ---- */

static void *cuda_alloc(backend *be, size_t bytes, tensor_mem where) {
    void *p = NULL;
    bytes = bytes ? bytes : 1;
    cudaError_t e = where == MEM_PINNED ? cudaMallocHost(&p, bytes) : cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();   /* an allocation failure is not sticky: clear it */
        sk_fail(SK_ENOMEM, "cuda: allocating %zu bytes of %s memory: %s", bytes,
                where == MEM_PINNED ? "pinned host" : "device", cudaGetErrorString(e));
        return NULL;
    }
    if (where == MEM_PINNED) {
        memset(p, 0, bytes);
    } else {
        CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx(be)->stream));
        CUDA_CHECK(cudaStreamSynchronize(ctx(be)->stream));   /* zeroed for every stream */
    }
    return p;
}

static void cuda_free(backend *be, void *p, tensor_mem where) {
    if (where == MEM_PINNED) CUDA_CHECK(cudaFreeHost(p));
    else CUDA_CHECK(cudaFree(p));
}

static void cuda_copy(backend *be, void *dst, const void *src, size_t bytes, backend_copy_dir dir,
                      backend_stream *s) {
    static const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice,
                                           cudaMemcpyHostToHost};
    if (dst == src || !bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kinds[dir], stream_of(be, s)));
}

static void cuda_fill(backend *be, void *p, int byte, size_t bytes, backend_stream *s) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, byte, bytes, stream_of(be, s)));
}

static backend_stream *cuda_stream_create(backend *be) {
    cudaStream_t s;
    cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        sk_fail(SK_ENOMEM, "cuda: creating a stream: %s", cudaGetErrorString(e));
        return NULL;
    }
    return (backend_stream *)s;
}
static void cuda_stream_free(backend *be, backend_stream *s) { CUDA_CHECK(cudaStreamDestroy((cudaStream_t)s)); }
static void cuda_stream_synchronize(backend *be, backend_stream *s) {
    CUDA_CHECK(cudaStreamSynchronize(stream_of(be, s)));
}

static backend_event *cuda_event_create(backend *be) {
    cudaEvent_t e;
    cudaError_t rc = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
    if (rc != cudaSuccess) {
        sk_fail(SK_ENOMEM, "cuda: creating an event: %s", cudaGetErrorString(rc));
        return NULL;
    }
    return (backend_event *)e;
}
static void cuda_event_free(backend *be, backend_event *e) { CUDA_CHECK(cudaEventDestroy((cudaEvent_t)e)); }
static void cuda_event_record(backend *be, backend_event *e, backend_stream *s) {
    CUDA_CHECK(cudaEventRecord((cudaEvent_t)e, stream_of(be, s)));
}
static void cuda_stream_wait_event(backend *be, backend_stream *s, backend_event *e) {
    CUDA_CHECK(cudaStreamWaitEvent(stream_of(be, s), (cudaEvent_t)e, 0));
}
static void cuda_event_synchronize(backend *be, backend_event *e) { CUDA_CHECK(cudaEventSynchronize((cudaEvent_t)e)); }
/* A new thread's current device is 0: its first call would make a context there. */
static void cuda_thread_bind(backend *be) { CUDA_CHECK(cudaSetDevice(ctx(be)->device)); }

static sk_status cuda_mem_info(backend *be, size_t *free_bytes, size_t *total_bytes) {
    size_t f = 0, t = 0;
    cudaError_t e = cudaMemGetInfo(&f, &t);
    if (e != cudaSuccess) return sk_fail(SK_EIO, "cuda: cudaMemGetInfo: %s", cudaGetErrorString(e));
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return SK_OK;
}

/* f32 everywhere; bf16 for the [lp] arguments of mixed precision, embedding tables (an
 * inference model's device copy) and the engine's paged ops. bf16/f16 weights as the B of
 * an f32 product (mapped inference: MATMUL) are not read here. */
static bool cuda_supports(backend *be, backend_op op, dtype dt) {
    return dt == DT_F32 ||
           (dt == DT_BF16 && (op == BACKEND_OP_MIXED || op == BACKEND_OP_EMBED || op == BACKEND_OP_PAGED));
}

/* ---- views ---- */

/* The data of a contiguous f32 view of n elements. */
static float *vec(tensor t, int64_t n) {
    SK_ASSERT(t.dt == DT_F32 && tensor_is_contiguous(t) && tensor_numel(t) == n);
    return (float *)t.data;
}
static float *vec_opt(tensor t, int64_t n) { return tensor_is_none(t) ? NULL : vec(t, n); }
/* The data of a contiguous f32 matrix view; its shape into *rows, *cols. */
static float *mat(tensor t, int *rows, int *cols) {
    SK_ASSERT(t.ndim == 2 && t.dt == DT_F32 && tensor_is_contiguous(t));
    *rows = (int)t.shape[0];
    *cols = (int)t.shape[1];
    return (float *)t.data;
}
static float *mat_of(tensor t, int rows, int cols) {
    int r, c;
    float *p = mat(t, &r, &c);
    SK_ASSERT(r == rows && c == cols);
    return p;
}
/* Any f32 contiguous view as n elements (elementwise ops: equal element counts). */
static float *flat(tensor t, int64_t n) { return vec(t, n); }
/* An [lp] view (backend.h's mixed precision): f32 or bf16. */
static cuda_lp lp(tensor t) {
    SK_ASSERT(t.dt == DT_F32 || t.dt == DT_BF16);
    cuda_lp a = {t.data, t.dt == DT_BF16};
    return a;
}
/* A contiguous [lp] view of n elements (elementwise ops: equal element counts). */
static cuda_lp lp_flat(tensor t, int64_t n) {
    SK_ASSERT(tensor_is_contiguous(t) && tensor_numel(t) == n);
    return lp(t);
}
/* A contiguous [lp] matrix view of rows x cols. */
static cuda_lp lp_mat(tensor t, int rows, int cols) {
    SK_ASSERT(t.ndim == 2 && t.shape[0] == rows && t.shape[1] == cols);
    return lp_flat(t, (int64_t)rows * cols);
}
/* Views an op allows to alias: the same memory is read and written in one dtype. */
static void alias_same_dtype(tensor a, tensor b) { SK_ASSERT(a.data != b.data || a.dt == b.dt); }

/* tokens(B,T), i32, contiguous. */
static const int *tokens_of(tensor t, int *B, int *T) {
    SK_ASSERT(t.ndim == 2 && t.dt == DT_I32 && tensor_is_contiguous(t));
    *B = (int)t.shape[0];
    *T = (int)t.shape[1];
    return (const int *)t.data;
}

/* ---- compute: table entries ---- */

/* f32 A, B and C through cuBLAS; bf16 A and B (C f32 or bf16) through cuBLASLt. Other
 * mixes (bf16 with f32 operands, f32 operands into bf16 C) are not products here. */
static void cuda_matmul_op(backend *be, backend_stream *s, tensor C, tensor A, bool ta, tensor B, bool tb,
                           float alpha, float beta) {
    SK_ASSERT(A.ndim == 2 && B.ndim == 2 && C.ndim == 2 && A.dt == B.dt);
    const int M = (int)C.shape[0], N = (int)C.shape[1], K = (int)(ta ? A.shape[0] : A.shape[1]);
    SK_ASSERT((ta ? A.shape[1] : A.shape[0]) == M && (tb ? B.shape[1] : B.shape[0]) == K &&
              (tb ? B.shape[0] : B.shape[1]) == N);
    if (M == 0 || N == 0) return;
    if (A.dt == DT_F32) {
        cuda_matmul(ctx(be), stream_of(be, s), tensor_f32(C), tensor_ld(C), tensor_f32(A), tensor_ld(A), ta,
                    tensor_f32(B), tensor_ld(B), tb, M, N, K, alpha, beta);
        return;
    }
    SK_ASSERT(A.dt == DT_BF16 && K > 0);   /* cuBLASLt has no empty sums */
    if (cuda_gemv(stream_of(be, s), lp(C), tensor_ld(C), A.data, tensor_ld(A), ta, B.data, tensor_ld(B), tb, NULL, M,
                  N, K, alpha, beta))
        return;
    cuda_matmul_lt(ctx(be), stream_of(be, s), lp(C), tensor_ld(C), A.data, tensor_ld(A), ta, B.data, tensor_ld(B),
                   tb, M, N, K, alpha, beta);
}

/* bf16 operands: few rows (decode) through cuda_gemv, the f32 bias added to the f32 sum before
 * its one rounding; else the product and the bias in one cuBLASLt product (BIAS epilogue) into the
 * layer's sum (pre, or out without an activation), a bf16 sum taking the bias rounded to
 * bf16 (cuBLASLt 13.0 had no algorithm for a bf16 out with an f32 bias; autocast rounds it
 * too), then the GELU as its own op (cuBLASLt's GELU epilogues did not match the tanh GELU:
 * test_mixed). Otherwise, and where cuBLASLt has no algorithm, the unfused ops. */
static void cuda_linear_forward_op(backend *be, backend_stream *s, tensor out, tensor pre, tensor inp, tensor w,
                                   bool tw, tensor bias, backend_act act) {
    SK_ASSERT(out.ndim == 2 && inp.ndim == 2 && w.ndim == 2 && inp.dt == w.dt);
    const int M = (int)out.shape[0], N = (int)out.shape[1], K = (int)inp.shape[1];
    SK_ASSERT(inp.shape[0] == M && (tw ? w.shape[1] : w.shape[0]) == K && (tw ? w.shape[0] : w.shape[1]) == N);
    const tensor y = tensor_is_none(pre) ? out : pre;   /* where the affine part lands */
    bool done = false;
    if (inp.dt == DT_BF16 && K > 0 && M > 0) {
        cuda_ctx *x = ctx(be);
        cudaStream_t st = stream_of(be, s);
        const float *b = vec_opt(bias, N);
        done = cuda_gemv(st, lp(y), tensor_ld(y), inp.data, tensor_ld(inp), false, w.data, tensor_ld(w), tw, b, M, N,
                         K, 1.0f, 0.0f);
        if (!done && b) {
            const cuda_lp bl = y.dt == DT_BF16 ? cuda_lp{cuda_bias_bf16(x, st, b, N), true} : cuda_lp{(void *)b, false};
            done = cuda_linear_lt(x, st, lp(y), tensor_ld(y), inp.data, tensor_ld(inp), w.data, tensor_ld(w), tw, bl,
                                  M, N, K);
        }
    }
    if (!done) {
        backend_linear_unfused(be->ops, be, s, out, pre, inp, w, tw, bias, act);
        return;
    }
    if (act == BACKEND_ACT_GELU) be->ops->gelu_forward(be, s, out, y);
}

/* Few rows (decode) only: cuda_gemv_swiglu. */
static bool cuda_linear_swiglu_op(backend *be, backend_stream *s, tensor out, tensor inp, tensor w) {
    SK_ASSERT(out.ndim == 2 && inp.ndim == 2 && w.ndim == 2 && inp.dt == w.dt && out.stride[1] == 1);
    const int M = (int)out.shape[0], F = (int)out.shape[1], K = (int)inp.shape[1];
    SK_ASSERT(inp.shape[0] == M && w.shape[0] == 2 * (int64_t)F && w.shape[1] == K);
    return inp.dt == DT_BF16 && cuda_gemv_swiglu(stream_of(be, s), lp(out), tensor_ld(out), inp.data,
                                                 tensor_ld(inp), w.data, tensor_ld(w), M, F, K);
}

/* Few rows (decode) only: cuda_gemv_add. */
static bool cuda_linear_add_op(backend *be, backend_stream *s, tensor x, tensor inp, tensor w, tensor bias) {
    SK_ASSERT(x.ndim == 2 && inp.ndim == 2 && w.ndim == 2 && inp.dt == w.dt && x.dt == DT_F32 && x.stride[1] == 1);
    const int M = (int)x.shape[0], N = (int)x.shape[1], K = (int)inp.shape[1];
    SK_ASSERT(inp.shape[0] == M && w.shape[0] == N && w.shape[1] == K);
    return inp.dt == DT_BF16 && cuda_gemv_add(stream_of(be, s), tensor_f32(x), tensor_ld(x), inp.data,
                                              tensor_ld(inp), w.data, tensor_ld(w), vec_opt(bias, N), M, N, K);
}

/* Few rows (decode) only: cuda_gemv_rmsnorm, after the add of resid where given. */
static bool cuda_linear_rmsnorm_op(backend *be, backend_stream *s, tensor out, tensor x, tensor resid, tensor weight,
                                   float eps, tensor w, bool glu) {
    SK_ASSERT(out.ndim == 2 && x.ndim == 2 && w.ndim == 2 && x.dt == DT_F32 && out.stride[1] == 1);
    const int M = (int)out.shape[0], N = (int)out.shape[1], K = (int)x.shape[1];
    SK_ASSERT(x.shape[0] == M && w.shape[0] == (glu ? 2 : 1) * (int64_t)N && w.shape[1] == K);
    const float *nw = vec(weight, K);
    if (w.dt != DT_BF16 || out.dt != DT_BF16 ||
        !cuda_gemv_rmsnorm_fits(tensor_f32(x), tensor_ld(x), nw, w.data, tensor_ld(w), glu, M, N, K))
        return false;
    if (!tensor_is_none(resid)) be->ops->add(be, s, x, x, resid);
    SK_ASSERT(cuda_gemv_rmsnorm(stream_of(be, s), lp(out), tensor_ld(out), tensor_f32(x), tensor_ld(x), nw, eps, w.data,
                                tensor_ld(w), glu, M, N, K));
    return true;
}

static void cuda_bias_add_op(backend *be, backend_stream *s, tensor out, tensor bias) {
    SK_ASSERT(out.ndim == 2);
    const int N = (int)out.shape[0], OC = (int)out.shape[1];
    cuda_bias_add(ctx(be), stream_of(be, s), lp(out), tensor_ld(out), vec(bias, OC), N, OC);
}

static void cuda_bias_backward_op(backend *be, backend_stream *s, tensor dbias, tensor dout) {
    SK_ASSERT(dout.ndim == 2);
    const int N = (int)dout.shape[0], OC = (int)dout.shape[1];
    cuda_bias_backward(ctx(be), stream_of(be, s), vec(dbias, OC), lp_mat(dout, N, OC), N, OC);
}

/* Tables f32 or bf16 (backend.h: BACKEND_OP_EMBED). */
static void cuda_embed_forward_op(backend *be, backend_stream *s, tensor out, tensor tokens, tensor wte, tensor wpe) {
    int B, T;
    const int *tok = tokens_of(tokens, &B, &T);
    SK_ASSERT(wte.ndim == 2 && tensor_is_contiguous(wte));
    const int C = (int)wte.shape[1];
    cuda_lp pe = {NULL, false};
    if (!tensor_is_none(wpe)) {
        SK_ASSERT(wpe.ndim == 2 && tensor_is_contiguous(wpe) && wpe.shape[0] >= T && wpe.shape[1] == C);
        pe = lp(wpe);
    }
    cuda_embed_forward(ctx(be), stream_of(be, s), mat_of(out, B * T, C), tok, lp(wte), pe, B, T, C);
}

static void cuda_embed_backward_op(backend *be, backend_stream *s, tensor dwte, tensor dwpe, tensor dout,
                                   tensor tokens) {
    int B, T, V, C;
    const int *tok = tokens_of(tokens, &B, &T);
    float *dw = mat(dwte, &V, &C), *dp = NULL;
    if (!tensor_is_none(dwpe)) {
        SK_ASSERT(dwpe.ndim == 2 && dwpe.shape[0] >= T);
        dp = mat_of(dwpe, (int)dwpe.shape[0], C);
    }
    cuda_embed_backward(ctx(be), stream_of(be, s), dw, dp, mat_of(dout, B * T, C), tok, B, T, C, V);
}

/* dinp_lp's data: NULL for tensor_none(), else a contiguous bf16 (N,C). */
static __nv_bfloat16 *lp_copy_target(tensor t, int N, int C) {
    if (tensor_is_none(t)) return NULL;
    SK_ASSERT(t.dt == DT_BF16 && tensor_is_contiguous(t) && tensor_numel(t) == (int64_t)N * C);
    return (__nv_bfloat16 *)t.data;
}

/* The residual of a norm's forward: data NULL for tensor_none(), else an [lp] (N,C). */
static cuda_lp residual_of(tensor resid, int N, int C) {
    return tensor_is_none(resid) ? cuda_lp{NULL, false} : lp_mat(resid, N, C);
}

static void cuda_layernorm_forward_op(backend *be, backend_stream *s, tensor out, tensor mean, tensor rstd,
                                      tensor inp, tensor resid, tensor weight, tensor bias, float eps) {
    int N, C;
    float *x = mat(inp, &N, &C);
    if (N == 0) return;
    cuda_norm_forward(stream_of(be, s), true, lp_mat(out, N, C), vec_opt(mean, N), vec_opt(rstd, N), x,
                      residual_of(resid, N, C), vec(weight, C), vec(bias, C), N, C, eps);
}

static void cuda_layernorm_backward_op(backend *be, backend_stream *s, tensor dinp, tensor dinp_lp, tensor dweight,
                                       tensor dbias, tensor dout, tensor inp, tensor weight, tensor mean, tensor rstd) {
    int N, C;
    const float *x = mat(inp, &N, &C);
    if (N == 0) return;
    cuda_norm_backward(ctx(be), stream_of(be, s), true, mat_of(dinp, N, C), lp_copy_target(dinp_lp, N, C),
                       vec(dweight, C), vec(dbias, C), lp_mat(dout, N, C), x, vec(weight, C), vec(mean, N),
                       vec(rstd, N), N, C);
}

static void cuda_gelu_forward_op(backend *be, backend_stream *s, tensor out, tensor inp) {
    const int64_t n = tensor_numel(inp);
    SK_ASSERT(out.dt == inp.dt);
    cuda_gelu_forward(ctx(be), stream_of(be, s), lp_flat(out, n), lp_flat(inp, n), n);
}

static void cuda_gelu_backward_op(backend *be, backend_stream *s, tensor dinp, tensor inp, tensor dout) {
    const int64_t n = tensor_numel(inp);
    SK_ASSERT(dinp.dt == inp.dt && dout.dt == inp.dt);
    cuda_gelu_backward(ctx(be), stream_of(be, s), lp_flat(dinp, n), lp_flat(inp, n), lp_flat(dout, n), n);
}

static void cuda_add_op(backend *be, backend_stream *s, tensor out, tensor a, tensor b) {
    const int64_t n = tensor_numel(out);
    alias_same_dtype(out, a);
    alias_same_dtype(out, b);
    cuda_add(ctx(be), stream_of(be, s), lp_flat(out, n), lp_flat(a, n), lp_flat(b, n), n);
}

static void cuda_scale_op(backend *be, backend_stream *s, tensor x, float alpha) {
    const int64_t n = tensor_numel(x);
    cuda_scale(ctx(be), stream_of(be, s), lp_flat(x, n), alpha, n);
}

/* A (B,T,D) view of the call's dtype g->dt with contiguous channels as cuda_rows. */
static cuda_rows rows_of(tensor t, const cuda_attn_geom *g, int64_t T, int64_t D) {
    SK_ASSERT(t.dt == g->dt && t.ndim == 3 && t.shape[0] == g->B && t.shape[1] == T && t.shape[2] == D);
    SK_ASSERT(t.stride[2] == 1 || D == 1);
    cuda_rows r = {t.data, t.stride[0], t.stride[1]};
    return r;
}

/* The call's shapes; its dtype is q's, f32 or bf16 ([lp]: every other view but lse must match). */
static cuda_attn_geom geom_of(tensor q, tensor k, int NH, int NKV, int W, float p, uint64_t seed) {
    SK_ASSERT(q.ndim == 3 && k.ndim == 3 && NH > 0 && NKV > 0 && NH % NKV == 0 && q.shape[2] % NH == 0);
    SK_ASSERT(W >= 0 && p >= 0.0f && p < 1.0f && (q.dt == DT_F32 || q.dt == DT_BF16));
    cuda_attn_geom g = {(int)q.shape[0], (int)q.shape[1], (int)k.shape[1], NH, NKV, NH / NKV,
                        (int)(q.shape[2] / NH), W, 0.0f, p, seed, q.dt};
    SK_ASSERT(g.Tq <= g.Tk && g.HS > 0 && g.HS <= CUDA_ATTN_MAX_HS);
    g.sc = 1.0f / sqrtf((float)g.HS);
    return g;
}

/* lse(B,NH,Tq), f32, contiguous. */
static float *lse_of(tensor lse, const cuda_attn_geom *g) {
    SK_ASSERT(lse.ndim == 3 && lse.shape[0] == g->B && lse.shape[1] == g->NH && lse.shape[2] == g->Tq);
    return vec(lse, (int64_t)g->B * g->NH * g->Tq);
}

static void cuda_attention_forward_op(backend *be, backend_stream *s, tensor out, tensor lse, tensor q, tensor k,
                                      tensor v, int NH, int NKV, int W, float p, uint64_t seed) {
    const cuda_attn_geom g = geom_of(q, k, NH, NKV, W, p, seed);
    const int QD = NH * g.HS, KD = NKV * g.HS;
    cuda_attention_forward(ctx(be), stream_of(be, s), &g, rows_of(out, &g, g.Tq, QD),
                           tensor_is_none(lse) ? NULL : lse_of(lse, &g), rows_of(q, &g, g.Tq, QD),
                           rows_of(k, &g, g.Tk, KD), rows_of(v, &g, g.Tk, KD));
}

static void cuda_attention_backward_op(backend *be, backend_stream *s, tensor dq, tensor dk, tensor dv,
                                       tensor dout, tensor q, tensor k, tensor v, tensor out, tensor lse, int NH,
                                       int NKV, int W, float p, uint64_t seed) {
    const cuda_attn_geom g = geom_of(q, k, NH, NKV, W, p, seed);
    const int QD = NH * g.HS, KD = NKV * g.HS;
    cuda_attention_backward(ctx(be), stream_of(be, s), &g, rows_of(dq, &g, g.Tq, QD), rows_of(dk, &g, g.Tk, KD),
                            rows_of(dv, &g, g.Tk, KD), rows_of(dout, &g, g.Tq, QD), rows_of(q, &g, g.Tq, QD),
                            rows_of(k, &g, g.Tk, KD), rows_of(v, &g, g.Tk, KD), rows_of(out, &g, g.Tq, QD),
                            lse_of(lse, &g));
}

static void cuda_rmsnorm_forward_op(backend *be, backend_stream *s, tensor out, tensor rstd, tensor inp,
                                    tensor resid, tensor weight, float eps) {
    int N, C;
    float *x = mat(inp, &N, &C);
    if (N == 0) return;
    alias_same_dtype(out, inp);
    cuda_norm_forward(stream_of(be, s), false, lp_mat(out, N, C), NULL, vec_opt(rstd, N), x,
                      residual_of(resid, N, C), vec(weight, C), NULL, N, C, eps);
}

static void cuda_rmsnorm_backward_op(backend *be, backend_stream *s, tensor dinp, tensor dinp_lp, tensor dweight,
                                     tensor dout, tensor inp, tensor weight, tensor rstd) {
    int N, C;
    const float *x = mat(inp, &N, &C);
    if (N == 0) return;
    cuda_norm_backward(ctx(be), stream_of(be, s), false, mat_of(dinp, N, C), lp_copy_target(dinp_lp, N, C),
                       vec(dweight, C), NULL, lp_mat(dout, N, C), x, vec(weight, C), NULL, vec(rstd, N), N, C);
}

/* x(B,T,nh,HS) rotated by dir * angle at positions pos0 + t; its rows of nh*HS channels may be
 * apart (tensor_row_stride). */
static void rope(backend *be, backend_stream *s, tensor x, tensor cos, tensor sin, int pos0, float dir) {
    SK_ASSERT(x.ndim == 4);
    const int T = (int)x.shape[1], N = (int)x.shape[0] * T, nh = (int)x.shape[2], HS = (int)x.shape[3];
    SK_ASSERT(HS % 2 == 0 && cos.ndim == 2 && cos.shape[1] == HS / 2 && cos.shape[0] >= pos0 + T);
    cuda_rope(ctx(be), stream_of(be, s), lp(x), tensor_row_stride(x, 2), vec(cos, tensor_numel(cos)),
              vec(sin, tensor_numel(cos)), N, T, nh, HS, pos0, dir);
}
static void cuda_rope_forward_op(backend *be, backend_stream *s, tensor x, tensor cos, tensor sin, int pos0) {
    rope(be, s, x, cos, sin, pos0, 1.0f);
}
/* The rotation is orthogonal: its transpose rotates by the opposite angle. */
static void cuda_rope_backward_op(backend *be, backend_stream *s, tensor dx, tensor cos, tensor sin, int pos0) {
    rope(be, s, dx, cos, sin, pos0, -1.0f);
}

/* Views of one shape whose rows (the last dimension) may be apart (tensor_row_stride). */
static void cuda_swiglu_forward_op(backend *be, backend_stream *s, tensor out, tensor gate, tensor up) {
    SK_ASSERT(tensor_same_shape(out, gate) && tensor_same_shape(up, gate));
    const int64_t n = tensor_numel(gate), cols = gate.shape[gate.ndim - 1];
    if (n == 0) return;
    cuda_swiglu_forward(ctx(be), stream_of(be, s), lp(out), tensor_row_stride(out, 1), lp(gate),
                        tensor_row_stride(gate, 1), lp(up), tensor_row_stride(up, 1), n / cols, cols);
}

static void cuda_swiglu_backward_op(backend *be, backend_stream *s, tensor dgate, tensor dup, tensor dout,
                                    tensor gate, tensor up) {
    const int64_t n = tensor_numel(gate);
    SK_ASSERT(dgate.dt == gate.dt && dup.dt == gate.dt && dout.dt == gate.dt && up.dt == gate.dt);
    cuda_swiglu_backward(ctx(be), stream_of(be, s), lp_flat(dgate, n), lp_flat(dup, n), lp_flat(dout, n),
                         lp_flat(gate, n), lp_flat(up, n), n);
}

static void cuda_softmax_xent_op(backend *be, backend_stream *s, tensor losses, tensor dlogits, tensor logits,
                                 tensor targets, float dloss) {
    SK_ASSERT(logits.ndim == 2);
    const int N = (int)logits.shape[0], V = (int)logits.shape[1];
    const int64_t Vp = tensor_ld(logits);
    cuda_lp d = {NULL, logits.dt == DT_BF16};
    if (!tensor_is_none(dlogits)) {
        SK_ASSERT(dlogits.dt == logits.dt);
        d = lp_mat(dlogits, N, (int)Vp);
    }
    SK_ASSERT(targets.dt == DT_I32 && tensor_numel(targets) == N && tensor_is_contiguous(targets));
    if (N == 0) return;
    cuda_softmax_xent(stream_of(be, s), vec(losses, N), d, lp(logits), (const int *)targets.data, N, V, Vp, dloss);
}

static void cuda_dropout_forward_op(backend *be, backend_stream *s, tensor out, tensor inp, float p, uint64_t seed) {
    SK_ASSERT(p >= 0.0f && p < 1.0f);
    const int64_t n = tensor_numel(inp);
    alias_same_dtype(out, inp);
    cuda_dropout(ctx(be), stream_of(be, s), lp_flat(out, n), lp_flat(inp, n), n, p, seed);
}
/* The same masked scaling. */
static void cuda_dropout_backward_op(backend *be, backend_stream *s, tensor dinp, tensor dout, float p,
                                     uint64_t seed) {
    cuda_dropout_forward_op(be, s, dinp, dout, p, seed);
}

/* A cast to the same dtype is a copy (bit for bit: NaN payloads too). */
static void cuda_cast_op(backend *be, backend_stream *s, tensor out, tensor inp) {
    const int64_t n = tensor_numel(inp);
    alias_same_dtype(out, inp);
    if (out.dt == inp.dt) {
        SK_ASSERT(tensor_is_contiguous(out) && tensor_is_contiguous(inp) && tensor_numel(out) == n);
        CUDA_CHECK(cudaMemcpyAsync(out.data, inp.data, tensor_bytes(inp), cudaMemcpyDeviceToDevice, stream_of(be, s)));
        return;
    }
    cuda_cast(ctx(be), stream_of(be, s), lp_flat(out, n), lp_flat(inp, n), n);
}

static double *scalar_f64(tensor t) {
    SK_ASSERT(t.dt == DT_F64 && tensor_numel(t) == 1);
    return (double *)t.data;
}

static void cuda_sum_f64_op(backend *be, backend_stream *s, tensor out, tensor x) {
    const int64_t n = tensor_numel(x);
    cuda_sum_f64(stream_of(be, s), scalar_f64(out), flat(x, n), n);
}

static void cuda_sum_squares_op(backend *be, backend_stream *s, tensor out, tensor x) {
    const int64_t n = tensor_numel(x);
    cuda_sum_squares(ctx(be), stream_of(be, s), scalar_f64(out), flat(x, n), n);
}

/* The bias corrections are computed on the host as the CPU computes them (powf). */
static void cuda_adamw_op(backend *be, backend_stream *s, tensor param, tensor lp, tensor grad, tensor m, tensor v,
                          const backend_adamw_span *spans, int n, const double *norm_sq, const backend_adamw_hp *hp) {
    SK_ASSERT(hp->t >= 1 && (tensor_is_none(lp) || (lp.dt == DT_BF16 && tensor_numel(lp) == tensor_numel(param))));
    const float c1 = 1.0f / (1.0f - powf(hp->beta1, (float)hp->t)), c2 = 1.0f / (1.0f - powf(hp->beta2, (float)hp->t));
    cuda_adamw(stream_of(be, s), flat(param, tensor_numel(param)),
               tensor_is_none(lp) ? NULL : (__nv_bfloat16 *)lp.data, flat(grad, tensor_numel(grad)),
               flat(m, tensor_numel(m)), flat(v, tensor_numel(v)), spans, n, norm_sq, hp, c1, c2);
}

/* ---- the engine's ops ---- */

/* A 2-D [lp] view with contiguous rows: its data and row stride. */
static cuda_lp rows2(tensor t, int64_t *ld) {
    SK_ASSERT(t.ndim == 2 && t.stride[1] == 1);
    *ld = t.stride[0];
    return lp(t);
}

static void cuda_set_rows_op(backend *be, backend_stream *s, tensor dst, tensor src, tensor idx) {
    int64_t ldd, lds;
    SK_ASSERT(dst.dt == src.dt && dst.shape[1] == src.shape[1] && idx.ndim == 1 && idx.dt == DT_I32 &&
              idx.shape[0] == src.shape[0] && tensor_is_contiguous(idx));
    const cuda_lp d = rows2(dst, &ldd), x = rows2(src, &lds);
    cuda_set_rows(ctx(be), stream_of(be, s), d, ldd, x, lds, (const int *)idx.data, (int)src.shape[0],
                  (int)src.shape[1]);
}

static void cuda_kv_store_op(backend *be, backend_stream *s, tensor q, tensor k, tensor v, tensor cos, tensor sin,
                             tensor k_cache, tensor v_cache, tensor idx) {
    int64_t ldq, ldk, ldv, ldkc, ldvc;
    const int N = (int)q.shape[0], KD = (int)k.shape[1];
    const bool rot = !tensor_is_none(cos);
    SK_ASSERT(k.shape[0] == N && tensor_same_shape(k, v) && k_cache.shape[1] == KD && tensor_same_shape(k_cache, v_cache) &&
              idx.ndim == 1 && idx.dt == DT_I32 && idx.shape[0] == N && tensor_is_contiguous(idx));
    const int HS = rot ? 2 * (int)cos.shape[1] : 0;
    SK_ASSERT(!rot || (cos.ndim == 2 && cos.shape[0] == N && tensor_same_shape(cos, sin) && q.shape[1] % HS == 0 &&
                       KD % HS == 0));
    const cuda_lp qp = rows2(q, &ldq), kp = rows2(k, &ldk), vp = rows2(v, &ldv), kcp = rows2(k_cache, &ldkc),
                  vcp = rows2(v_cache, &ldvc);
    cuda_kv_store(ctx(be), stream_of(be, s), qp, ldq, kp, ldk, vp, ldv, kcp, ldkc, vcp, ldvc, (const int *)idx.data,
                  rot ? vec(cos, tensor_numel(cos)) : NULL, rot ? vec(sin, tensor_numel(sin)) : NULL, N,
                  (int)q.shape[1], KD, HS);
}

static void cuda_paged_attention_op(backend *be, backend_stream *s, tensor out, tensor q, tensor k_cache,
                                    tensor v_cache, tensor seqs, tensor tables, int BS, int NH, int NKV, int W) {
    int64_t ldo, ldq, ldk, ldv;
    SK_ASSERT(out.dt == q.dt && q.dt == k_cache.dt && k_cache.dt == v_cache.dt);
    SK_ASSERT(seqs.ndim == 2 && seqs.shape[1] == 3 && seqs.dt == DT_I32 && tensor_is_contiguous(seqs));
    SK_ASSERT(tables.ndim == 2 && tables.dt == DT_I32 && tensor_is_contiguous(tables) &&
              tables.shape[0] == seqs.shape[0]);
    SK_ASSERT(tensor_same_shape(q, out) && NH > 0 && q.shape[1] % NH == 0);
    const int HS = (int)(q.shape[1] / NH);
    SK_ASSERT(k_cache.shape[1] == (int64_t)NKV * HS && tensor_same_shape(k_cache, v_cache));
    const cuda_lp o = rows2(out, &ldo), qp = rows2(q, &ldq), kp = rows2(k_cache, &ldk), vp = rows2(v_cache, &ldv);
    cuda_paged_attention(ctx(be), stream_of(be, s), o, ldo, qp, ldq, kp, ldk, vp, ldv, (const int *)seqs.data,
                         (const int *)tables.data, (int)q.shape[0], (int)seqs.shape[0], (int)tables.shape[1], BS, NH,
                         NKV, HS, W);
}

static void cuda_resolve_ids_op(backend *be, backend_stream *s, tensor ids, tensor src) {
    SK_ASSERT(ids.ndim == 1 && src.ndim == 1 && ids.dt == DT_I32 && src.dt == DT_I32);
    cuda_resolve_ids(stream_of(be, s), (int *)ids.data, (int)ids.shape[0], (const int *)src.data);
}

static void cuda_argmax_rows_op(backend *be, backend_stream *s, tensor ids, tensor x) {
    int64_t ld;
    SK_ASSERT(x.dt == DT_F32 && ids.dt == DT_I32 && ids.ndim == 1 && ids.shape[0] == x.shape[0] &&
              tensor_is_contiguous(ids));
    const cuda_lp xp = rows2(x, &ld);
    cuda_argmax_rows(stream_of(be, s), (int *)ids.data, (const float *)xp.p, ld, (int)x.shape[0], (int)x.shape[1]);
}

static void cuda_sample_rows_op(backend *be, backend_stream *s, tensor ids, tensor x, const backend_sample_row *opts) {
    int64_t ld;
    SK_ASSERT(x.dt == DT_F32 && ids.dt == DT_I32 && ids.ndim == 1 && ids.shape[0] == x.shape[0] &&
              tensor_is_contiguous(ids));
    const cuda_lp xp = rows2(x, &ld);
    cuda_sample_rows(stream_of(be, s), (int *)ids.data, (const float *)xp.p, ld, (int)x.shape[0], (int)x.shape[1], opts);
}

/* ---- graphs: stream capture (thread-local, so other threads' calls go on), instantiated
 * once; a backend_graph is its cudaGraphExec_t ---- */

static void cuda_graph_begin(backend *be, backend_stream *s) {
    CUDA_CHECK(cudaStreamBeginCapture(stream_of(be, s), cudaStreamCaptureModeThreadLocal));
}

static backend_graph *cuda_graph_end(backend *be, backend_stream *s) {
    cudaGraph_t g = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaStreamEndCapture(stream_of(be, s), &g);
    if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();   /* a failed capture leaves nothing behind */
        sk_fail(SK_ESTATE, "cuda: recording a graph: %s", cudaGetErrorString(e));
        return NULL;
    }
    return (backend_graph *)exec;
}

static void cuda_graph_launch(backend *be, backend_graph *g, backend_stream *s) {
    CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)g, stream_of(be, s)));
}

static void cuda_graph_free(backend *be, backend_graph *g) { CUDA_CHECK(cudaGraphExecDestroy((cudaGraphExec_t)g)); }

/* ---- creation ---- */

static void cuda_destroy(backend *be) {
    cuda_ctx *x = ctx(be);
    if (!x) return;
    if (x->stream) cudaStreamSynchronize(x->stream);
#ifdef SKEIN_HAVE_CUDNN
    cuda_cudnn_free(x);
#endif
    if (x->blas) cuda_blas.cublasDestroy(x->blas);
    if (x->lt) {
        cuda_lt_plans_free(x);
        cuda_blas.cublasLtDestroy(x->lt);
    }
    if (x->blas_ws) cudaFree(x->blas_ws);
    if (x->sq_part) cudaFree(x->sq_part);
    if (x->paged_ws) cudaFree(x->paged_ws);
    if (x->paged_done) cudaFree(x->paged_done);
    if (x->bias_lp) cudaFree(x->bias_lp);
    if (x->embed_ws) cudaFree(x->embed_ws);
    if (x->norm_ws) cudaFree(x->norm_ws);
    if (x->colsum_ws) cudaFree(x->colsum_ws);
    if (x->stream) cudaStreamDestroy(x->stream);
    mem_free(x);
}

static const backend_ops cuda_ops = {
    .alloc = cuda_alloc,
    .free = cuda_free,
    .copy = cuda_copy,
    .fill = cuda_fill,
    .stream_create = cuda_stream_create,
    .stream_free = cuda_stream_free,
    .stream_synchronize = cuda_stream_synchronize,
    .event_create = cuda_event_create,
    .event_free = cuda_event_free,
    .event_record = cuda_event_record,
    .stream_wait_event = cuda_stream_wait_event,
    .event_synchronize = cuda_event_synchronize,
    .thread_bind = cuda_thread_bind,
    .mem_info = cuda_mem_info,
    .supports = cuda_supports,
    .destroy = cuda_destroy,
    .ipc_map = cuda_ipc_map,
    .ipc_unmap = cuda_ipc_unmap,
    .matmul = cuda_matmul_op,
    .bias_add = cuda_bias_add_op,
    .bias_backward = cuda_bias_backward_op,
    .linear_forward = cuda_linear_forward_op,
    .linear_swiglu = cuda_linear_swiglu_op,
    .linear_add = cuda_linear_add_op,
    .linear_rmsnorm = cuda_linear_rmsnorm_op,
    .embed_forward = cuda_embed_forward_op,
    .embed_backward = cuda_embed_backward_op,
    .layernorm_forward = cuda_layernorm_forward_op,
    .layernorm_backward = cuda_layernorm_backward_op,
    .gelu_forward = cuda_gelu_forward_op,
    .gelu_backward = cuda_gelu_backward_op,
    .add = cuda_add_op,
    .scale = cuda_scale_op,
    .attention_forward = cuda_attention_forward_op,
    .attention_backward = cuda_attention_backward_op,
    .rmsnorm_forward = cuda_rmsnorm_forward_op,
    .rmsnorm_backward = cuda_rmsnorm_backward_op,
    .rope_forward = cuda_rope_forward_op,
    .rope_backward = cuda_rope_backward_op,
    .swiglu_forward = cuda_swiglu_forward_op,
    .swiglu_backward = cuda_swiglu_backward_op,
    .softmax_xent = cuda_softmax_xent_op,
    .dropout_forward = cuda_dropout_forward_op,
    .dropout_backward = cuda_dropout_backward_op,
    .cast = cuda_cast_op,
    .sum_f64 = cuda_sum_f64_op,
    .sum_squares = cuda_sum_squares_op,
    .adamw = cuda_adamw_op,
    .set_rows = cuda_set_rows_op,
    .kv_store = cuda_kv_store_op,
    .paged_attention = cuda_paged_attention_op,
    .argmax_rows = cuda_argmax_rows_op,
    .sample_rows = cuda_sample_rows_op,
    .resolve_ids = cuda_resolve_ids_op,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free,
};

/* x->attn from SKEIN_CUDA_ATTN (cuda.h); false with a message for a value it does not know. */
static bool attn_mode_of_env(cuda_ctx *x) {
    static const struct { const char *name; cuda_attn_mode mode; } modes[] = {
        {"cudnn", CUDA_ATTN_CUDNN}, {"cudnn-nondeterministic", CUDA_ATTN_CUDNN_NONDET},
        {"own", CUDA_ATTN_OWN}, {"simple", CUDA_ATTN_SIMPLE},
    };
    const char *e = getenv("SKEIN_CUDA_ATTN");
    x->attn = CUDA_ATTN_CUDNN;
    if (!e || !*e) return true;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (!strcmp(e, modes[i].name)) {
            x->attn = modes[i].mode;
#ifndef SKEIN_HAVE_CUDNN
            if (x->attn == CUDA_ATTN_CUDNN || x->attn == CUDA_ATTN_CUDNN_NONDET)
                log_warn("cuda: SKEIN_CUDA_ATTN=%s, but skein was built without cuDNN: attention runs on the own kernels", e);
#endif
            return true;
        }
    sk_fail(SK_EARG, "--device cuda: SKEIN_CUDA_ATTN=%s: expected cudnn, cudnn-nondeterministic, own or simple", e);
    return false;
}

extern "C" const char *backend_cuda_attention_impl(backend *be, bool backward) {
    SK_ASSERT(be->ops == &cuda_ops);
    return ctx(be)->attn_ran[backward];
}

extern "C" int backend_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" backend *backend_cuda_create_on(int index) {
    int n = backend_cuda_device_count();
    if (n > 0 && index >= 0) {
        cudaError_t e = cudaSetDevice(index % n);
        if (e != cudaSuccess) {
            sk_fail(SK_EARG, "--device cuda: cudaSetDevice(%d): %s", index % n, cudaGetErrorString(e));
            return NULL;
        }
    }
    return backend_cuda_create();
}

/* A failed setup call: the message names it; the caller unwinds at its err: label. */
static bool setup_ok(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return true;
    sk_fail(SK_EARG, "--device cuda: %s: %s", what, cudaGetErrorString(e));
    return false;
}

extern "C" backend *backend_cuda_create(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        sk_fail(SK_EARG, "--device cuda: no usable CUDA device (%s)",
                e != cudaSuccess ? cudaGetErrorString(e) : "the driver lists none");
        return NULL;
    }
    backend *be = (backend *)mem_calloc(sizeof *be);
    cuda_ctx *x = (cuda_ctx *)mem_calloc(sizeof *x);
    if (!be || !x) goto err;
    be->ops = &cuda_ops;
    be->name = "cuda";
    be->impl = x;
    be->host_memory = false;
    if (!attn_mode_of_env(x)) goto err;
    /* the current device: 0, or the one a communicator chose for this rank */
    if (!setup_ok(cudaGetDevice(&x->device), "cudaGetDevice")) goto err;
    be->device = x->device;
    if (!setup_ok(cudaDeviceGetAttribute(&x->n_sm, cudaDevAttrMultiProcessorCount, x->device), "reading the SM count"))
        goto err;
    if (!setup_ok(cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking), "creating the default stream")) goto err;
    x->blas_ws_bytes = BLAS_WORKSPACE_BYTES;
    if (!setup_ok(cudaMalloc(&x->blas_ws, x->blas_ws_bytes), "allocating the cuBLAS workspace")) goto err;
    if (!setup_ok(cudaMalloc(&x->sq_part, CUDA_SQ_PARTS * sizeof(double)), "allocating the norm's block sums")) goto err;
    if (!setup_ok(cudaMalloc(&x->paged_ws, cuda_paged_ws_floats(x->n_sm) * sizeof(float)),
                  "allocating paged attention's partials") ||
        !setup_ok(cudaMalloc(&x->paged_done, cuda_paged_done_count(x->n_sm) * sizeof(unsigned)),
                  "allocating paged attention's split counters") ||
        !setup_ok(cudaMemsetAsync(x->paged_done, 0, cuda_paged_done_count(x->n_sm) * sizeof(unsigned), x->stream),
                  "zeroing paged attention's split counters"))
        goto err;
    if (cuda_blas_open() != SK_OK) goto err;
    if (cuda_blas.cublasCreate(&x->blas) != CUBLAS_STATUS_SUCCESS) {
        x->blas = NULL;
        sk_fail(SK_EARG, "--device cuda: cublasCreate failed");
        goto err;
    }
    /* plain f32 products by default, so results track the CPU's sgemm; TF32 on request */
    x->tf32 = getenv("SKEIN_CUDA_TF32") && !strcmp(getenv("SKEIN_CUDA_TF32"), "1");
    CUBLAS_CHECK(cuda_blas.cublasSetMathMode(x->blas, x->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    if (x->tf32) fprintf(stderr, "cuda: products in TF32 (SKEIN_CUDA_TF32=1)\n");
    CUBLAS_CHECK(cuda_blas.cublasSetStream(x->blas, x->stream));
    CUBLAS_CHECK(cuda_blas.cublasSetWorkspace(x->blas, x->blas_ws, x->blas_ws_bytes));
    x->blas_stream = x->stream;
    if (cuda_blas.cublasLtCreate(&x->lt) != CUBLAS_STATUS_SUCCESS) {
        x->lt = NULL;
        sk_fail(SK_EARG, "--device cuda: cublasLtCreate failed");
        goto err;
    }
    return be;
err:
    if (be && be->impl) cuda_destroy(be);
    else mem_free(x);
    mem_free(be);
    return NULL;
}
