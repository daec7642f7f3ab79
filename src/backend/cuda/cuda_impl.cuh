/* backend/cuda internals shared by its .cu files: error checks, the backend's context, and
 * the launchers of cuda_ops.cu and cuda_attention.cu. Not for callers: they use backend.h
 * (through backend_create("cuda") or cuda.h).
 *
 * Three tiers per op: a kernel (`<op>_f32`, or `<op>_kernel` templated over the storage
 * types of its [lp] arrays), a launcher (`cuda_<op>`) taking a cudaStream_t and plain
 * pointers and sizes, and the table entry in cuda.cu that checks the views and calls the
 * launcher. Launchers allocate nothing and never synchronize the host. An [lp] array
 * (backend.h's mixed precision) reaches a launcher as a cuda_lp: its data and whether it is
 * bf16; the launcher instantiates the kernel for the types it finds.
 *
 * Letters as in backend.h: N rows, C channels, B batch, T time, NH heads, NKV key/value
 * heads, HS head size, V vocabulary (Vp its padded row stride). */
#ifndef SKEIN_CUDA_IMPL_CUH
#define SKEIN_CUDA_IMPL_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend/cuda/cuda_blas.cuh"

extern "C" {
#include "backend/backend.h"
}

/* A failed CUDA or cuBLAS call is a broken invariant (a bad launch, a device fault): the
 * call, file, line and the library's message go to stderr and the process aborts. Calls
 * that can fail on input (cudaMalloc) are checked where they are made and return a status. */
#define CUDA_CHECK(call) cuda_check_rt((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cuda_check_blas((call), #call, __FILE__, __LINE__)
/* After every kernel launch: a bad configuration shows here, at its launcher. */
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

static inline void cuda_check_rt(cudaError_t e, const char *call, const char *file, int line) {
    if (e == cudaSuccess) return;
    fprintf(stderr, "CUDA error: %s at %s:%d: %s (%s)\n", call, file, line, cudaGetErrorString(e),
            cudaGetErrorName(e));
    abort();
}

static inline void cuda_check_blas(cublasStatus_t e, const char *call, const char *file, int line) {
    if (e == CUBLAS_STATUS_SUCCESS) return;
    fprintf(stderr, "cuBLAS error: %s at %s:%d: %s\n", call, file, line, cuda_blas.cublasGetStatusString(e));
    abort();
}

/* Cached cuBLASLt products (cuda_matmul_lt): one per shape, found by linear search, the
 * oldest replaced when the table is full. */
#define CUDA_LT_PLANS 64
#define CUDA_SQ_PARTS 528    /* sum_squares' first-pass blocks (4 per SM of an H200; at most 1024) */

/* What picks a cuBLASLt algorithm: sizes, row strides, transposes, dtypes, whether C is
 * read, the epilogue, and each operand's pointer alignment (all int64_t: compared with
 * memcmp). */
typedef struct cuda_lt_key {
    int64_t M, N, K, lda, ldb, ldc;
    int64_t flags;   /* ta | tb << 1 | c_bf16 << 2 | beta_nonzero << 3 | log2 alignments of A, B, C,
                      * bias at bits 4, 8, 12, 16 */
    int64_t epi;     /* cublasLtEpilogue_t: CUBLASLT_EPILOGUE_DEFAULT for a plain product */
} cuda_lt_key;

/* A product's descriptors and the algorithm the heuristic chose for them, made on first use.
 * ok false: the heuristic has no algorithm for this epilogue (a plain product always has
 * one), and the caller computes it another way. */
typedef struct cuda_lt_plan {
    cuda_lt_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;   /* cuBLASLt's column-major A, B, C (ours swapped) */
    cublasLtMatmulAlgo_t algo;
    bool ok;
} cuda_lt_plan;

/* Which attention kernels run (SKEIN_CUDA_ATTN, read at creation; cuda.h). */
typedef enum cuda_attn_mode {
    CUDA_ATTN_CUDNN,            /* cuDNN's fused attention where built and covered, its
                                 * deterministic backward; the own kernels elsewhere (default) */
    CUDA_ATTN_CUDNN_NONDET,     /* the same with cuDNN's non-deterministic backward */
    CUDA_ATTN_OWN,              /* the own kernels: tensor-core where they fit, else tiled */
    CUDA_ATTN_SIMPLE,           /* the tiled kernels only (debugging) */
} cuda_attn_mode;

/* cuDNN's handle, plan cache and workspace (cuda_cudnn.cu), made on the first call it takes. */
typedef struct cuda_cudnn cuda_cudnn;

/* The backend's state (be->impl). */
typedef struct cuda_ctx {
    int device;
    int n_sm;                   /* multiprocessors: sizes grid-stride launches */
    cudaStream_t stream;        /* the default stream (NULL in the table), non-blocking */
    cublasHandle_t blas;
    cudaStream_t blas_stream;   /* the stream the handle was last set to */
    void *blas_ws;              /* cuBLAS and cuBLASLt workspace, allocated once (no
                                 * allocation in ops); products on one stream run in
                                 * order, so the two libraries share it */
    size_t blas_ws_bytes;
    bool tf32;                  /* SKEIN_CUDA_TF32=1: cuBLAS products in TF32 (cuda.h) */
    void *embed_ws;             /* embedding backward's sort buffers, grown on first use */
    size_t embed_ws_bytes;
    double *sq_part;            /* (CUDA_SQ_PARTS) sum_squares' block sums, allocated with the context */
    __nv_bfloat16 *bias_lp;     /* a bf16 layer's bias rounded for its epilogue, grown on first use */
    size_t bias_lp_n;
    void *norm_ws;              /* norm backwards' partial weight gradients, grown on first use */
    size_t norm_ws_bytes;
    void *colsum_ws;            /* long column sums' slice partials, grown on first use */
    size_t colsum_ws_bytes;
    cublasLtHandle_t lt;        /* bf16 products */
    cuda_lt_plan lt_plans[CUDA_LT_PLANS];
    int n_lt_plans, lt_next;    /* plans in use; the next one replaced when all are */
    cuda_attn_mode attn;
    const char *attn_ran[2];    /* what ran the last attention forward [0] and backward [1]:
                                 * "cudnn", "tensor-core" or "tiled" (NULL before any) */
    cuda_cudnn *cudnn;          /* NULL until cuDNN takes a call (and without SKEIN_HAVE_CUDNN) */
    float *paged_ws;            /* (cuda_paged_ws_floats) paged decode's per-split partials */
    unsigned *paged_done;       /* (cuda_paged_done_count) splits finished per (sequence, key/value
                                 * head) of a decode launch; zero between launches */
} cuda_ctx;

/* Storage to f32 (exact) and f32 to storage (bf16: rounded to nearest even): every kernel
 * over [lp] arrays converts through these. */
static __device__ __forceinline__ float to_f32(float v) { return v; }
static __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> static __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/* Programmatic dependent launch. A kernel launched early (cuda_launch) may start while the
 * kernel ahead of it on the stream still runs: once every block of that one has called
 * pdl_release or ended. Before pdl_wait it may read only what no kernel ahead of it writes;
 * after, it sees all their writes (plain loads: not __ldg, whose data must stay unchanged for
 * the whole life of the kernel). Both are no-ops in a kernel launched the plain way. */
static __device__ __forceinline__ void pdl_wait(void) { asm volatile("griddepcontrol.wait;" ::: "memory"); }
static __device__ __forceinline__ void pdl_release(void) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

/* Whether work issued to s now is being recorded into a graph (backend.h graph_begin). */
static inline bool cuda_recording(cudaStream_t s) {
    cudaStreamCaptureStatus rec;
    CUDA_CHECK(cudaStreamIsCapturing(s, &rec));
    return rec == cudaStreamCaptureStatusActive;
}

/* Launches kernel k on s with these arguments, early (a programmatic dependent launch: the
 * kernel must keep pdl_wait's rule) or the plain way. */
template <class... P, class... A>
static void cuda_launch(void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool early, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = s;
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &at, cfg.numAttrs = early ? 1 : 0;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, k, (P)args...));
}

/* An [lp] array: device data, f32 or bf16 (the table entry has checked the view). */
typedef struct cuda_lp {
    void *p;
    bool bf16;
} cuda_lp;

/* ---- launchers (cuda_ops.cu); contracts as the backend.h op of the same name; every
 * pointer is device memory, every matrix contiguous unless a row stride is given; n counts
 * elements ---- */

/* f32 products through cuBLAS (TF32 when x->tf32). */
void cuda_matmul(cuda_ctx *x, cudaStream_t s, float *C, int64_t ldc, const float *A, int64_t lda, bool ta,
                 const float *B, int64_t ldb, bool tb, int M, int N, int K, float alpha, float beta);
/* bf16 A and B, C f32 or bf16, f32 accumulation, through cuBLASLt on the tensor cores. */
void cuda_matmul_lt(cuda_ctx *x, cudaStream_t s, cuda_lp C, int64_t ldc, const void *A, int64_t lda, bool ta,
                    const void *B, int64_t ldb, bool tb, int M, int N, int K, float alpha, float beta);
/* A linear layer out(M,N) = A(M,K) @ op(B) + bias(N) with bf16 A and B, out of row stride
 * ldo and the bias of out's dtype, as one cuBLASLt product with the BIAS epilogue; false,
 * doing nothing, where cuBLASLt has no algorithm for it (a bf16 out with an f32 bias had
 * none). */
bool cuda_linear_lt(cuda_ctx *x, cudaStream_t s, cuda_lp out, int64_t ldo, const void *A, int64_t lda, const void *B,
                    int64_t ldb, bool tb, cuda_lp bias, int M, int N, int K);
/* C(M,N) = alpha A(M,K) B(N,K)^T + beta C, plus bias(N) (f32, NULL: none) when given, with
 * bf16 A and B and C f32 or bf16, by the few-rows kernel (cuda_gemv.cu: bandwidth-bound,
 * deterministic, no workspace); false, doing nothing, unless ta is false, tb true, M is 1 (or
 * up to 8 with B of at most 2^23 elements), K a positive multiple of 8 and A, B and their row
 * strides 16-byte aligned: then the caller takes cuBLASLt. The one place that decides which products run there. */
bool cuda_gemv(cudaStream_t s, cuda_lp C, int64_t ldc, const void *A, int64_t lda, bool ta, const void *B,
               int64_t ldb, bool tb, const float *bias, int M, int N, int K, float alpha, float beta);
/* C(M,F) = silu(G) * U where [G | U] = A(M,K) B(2F,K)^T (B: a gate's F rows, then an up's),
 * G and U rounded to C's type first, by the same kernel (one launch: backend.h linear_swiglu);
 * false, doing nothing, where cuda_gemv would refuse the product of B. */
bool cuda_gemv_swiglu(cudaStream_t s, cuda_lp C, int64_t ldc, const void *A, int64_t lda, const void *B,
                      int64_t ldb, int M, int F, int K);
/* C(M,N) f32 += bf16(A(M,K) B(N,K)^T + bias(N)) (bias NULL: none), by the same kernel (backend.h
 * linear_add); false, doing nothing, where cuda_gemv would refuse the product. */
bool cuda_gemv_add(cudaStream_t s, float *C, int64_t ldc, const void *A, int64_t lda, const void *B, int64_t ldb,
                   const float *bias, int M, int N, int K);
/* C(M,N) [bf16] = Y(M,K) B(N,K)^T with Y = RMSNorm(X) * norm (X f32 of row stride ldx, norm(K)
 * f32), or with glu silu(G) * U of [G | U] = Y B(2N,K)^T, by the same kernel, Y unrounded
 * (backend.h linear_rmsnorm); false, doing nothing, where cuda_gemv would refuse the product or
 * C is f32. */
bool cuda_gemv_rmsnorm(cudaStream_t s, cuda_lp C, int64_t ldc, const float *X, int64_t ldx, const float *norm,
                       float eps, const void *B, int64_t ldb, bool glu, int M, int N, int K);
/* Whether cuda_gemv_rmsnorm takes these operands (into a bf16 C). */
bool cuda_gemv_rmsnorm_fits(const float *X, int64_t ldx, const float *norm, const void *B, int64_t ldb, bool glu, int M,
                            int N, int K);
/* bias(n) f32 rounded to bf16 in x's bias scratch (grown on first use), for a bf16 layer's
 * epilogue. */
__nv_bfloat16 *cuda_bias_bf16(cuda_ctx *x, cudaStream_t s, const float *bias, int n);
/* Releases the cached cuBLASLt descriptors (the handle is the caller's). */
void cuda_lt_plans_free(cuda_ctx *x);
void cuda_bias_add(const cuda_ctx *x, cudaStream_t s, cuda_lp out, int64_t ld, const float *bias, int N, int OC);
/* Deterministic; long columns use x's column-sum workspace (grown on first use). */
void cuda_bias_backward(cuda_ctx *x, cudaStream_t s, float *dbias, cuda_lp dout, int N, int OC);
/* wte and wpe f32 or bf16 each; wpe.p NULL: none. */
void cuda_embed_forward(const cuda_ctx *x, cudaStream_t s, float *out, const int *tokens, cuda_lp wte, cuda_lp wpe,
                        int B, int T, int C);
/* Deterministic (no float atomics); grows x's embedding workspace on first use. */
void cuda_embed_backward(cuda_ctx *x, cudaStream_t s, float *dwte, float *dwpe, const float *dout,
                         const int *tokens, int B, int T, int C, int V);
/* LayerNorm (ln: mean and bias) or RMSNorm (mean, bias NULL), with the residual add when
 * resid.p is not NULL (inp += resid first; resid f32 or bf16, whatever out's dtype). */
void cuda_norm_forward(cudaStream_t s, bool ln, cuda_lp out, float *mean, float *rstd, float *inp, cuda_lp resid,
                       const float *weight, const float *bias, int N, int C, float eps);
/* dinp_lp: NULL or the bf16 copy of the new dinp. Deterministic; grows x's norm workspace on
 * first use (the blocks' partial weight gradients). */
void cuda_norm_backward(cuda_ctx *x, cudaStream_t s, bool ln, float *dinp, __nv_bfloat16 *dinp_lp, float *dweight,
                        float *dbias, cuda_lp dout, const float *inp, const float *weight, const float *mean,
                        const float *rstd, int N, int C);
/* gelu, swiglu: all arrays of one dtype (the table entry checks). */
void cuda_gelu_forward(const cuda_ctx *x, cudaStream_t s, cuda_lp out, cuda_lp inp, int64_t n);
void cuda_gelu_backward(const cuda_ctx *x, cudaStream_t s, cuda_lp dinp, cuda_lp inp, cuda_lp dout, int64_t n);
void cuda_add(const cuda_ctx *x, cudaStream_t s, cuda_lp out, cuda_lp a, cuda_lp b, int64_t n);
void cuda_scale(const cuda_ctx *x, cudaStream_t s, cuda_lp v, float alpha, int64_t n);
/* Rotates x(N,nh,HS) (N = B*T rows ld elements apart, row r at position pos0 + r % T) by
 * dir * angle. */
void cuda_rope(const cuda_ctx *x, cudaStream_t s, cuda_lp v, int64_t ld, const float *cos, const float *sin, int N,
               int T, int nh, int HS, int pos0, float dir);
/* out, gate, up (rows, cols), each with its own row stride. */
void cuda_swiglu_forward(const cuda_ctx *x, cudaStream_t s, cuda_lp out, int64_t ldo, cuda_lp gate, int64_t ldg,
                         cuda_lp up, int64_t ldu, int64_t rows, int64_t cols);
void cuda_swiglu_backward(const cuda_ctx *x, cudaStream_t s, cuda_lp dgate, cuda_lp dup, cuda_lp dout,
                          cuda_lp gate, cuda_lp up, int64_t n);
/* logits and dlogits (when dlogits.p is not NULL) of one dtype. */
void cuda_softmax_xent(cudaStream_t s, float *losses, cuda_lp dlogits, cuda_lp logits, const int *targets, int N,
                       int V, int64_t Vp, float dloss);
void cuda_dropout(const cuda_ctx *x, cudaStream_t s, cuda_lp out, cuda_lp inp, int64_t n, float p, uint64_t seed);
void cuda_cast(const cuda_ctx *x, cudaStream_t s, cuda_lp out, cuda_lp inp, int64_t n);
void cuda_sum_f64(cudaStream_t s, double *out, const float *v, int64_t n);
void cuda_sum_squares(const cuda_ctx *x, cudaStream_t s, double *out, const float *v, int64_t n);
/* AdamW over n spans (backend.h's adamw); lp: NULL or the bf16 copy of param; c1, c2 the
 * bias corrections; norm_sq: NULL or the device f64 squared gradient norm. */
void cuda_adamw(cudaStream_t s, float *param, __nv_bfloat16 *lp, const float *grad, float *m, float *v,
                const backend_adamw_span *spans, int n, const double *norm_sq, const backend_adamw_hp *hp, float c1,
                float c2);

/* ---- attention (cuda_attention.cu) ---- */

/* A (B,T,D) operand: base pointer, batch and row strides in elements (channels contiguous);
 * its element type is the call's (cuda_attn_geom.dt). */
typedef struct cuda_rows {
    void *p;
    int64_t sb, st;
} cuda_rows;

/* The shapes of one attention call (backend.h's contract), its window and dropout. */
typedef struct cuda_attn_geom {
    int B, Tq, Tk, NH, NKV, G, HS, W;
    float sc;   /* 1/sqrt(HS) */
    float p;    /* dropout probability */
    uint64_t seed;
    dtype dt;   /* of every operand but lse: DT_F32 or DT_BF16 */
} cuda_attn_geom;

/* Head sizes up to this run (the tiles keep a tile's rows of HS channels in shared memory
 * and each thread HS/16 channels of 8 rows per accumulator in registers). */
#define CUDA_ATTN_MAX_HS 128

/* The op's work by x->attn: cuDNN's fused attention where it takes the call, else the
 * tensor-core kernels where they fit, else the tiled ones; x->attn_ran names which ran. */
void cuda_attention_forward(cuda_ctx *x, cudaStream_t s, const cuda_attn_geom *g, cuda_rows out, float *lse,
                            cuda_rows q, cuda_rows k, cuda_rows v);
void cuda_attention_backward(cuda_ctx *x, cudaStream_t s, const cuda_attn_geom *g, cuda_rows dq, cuda_rows dk,
                             cuda_rows dv, cuda_rows dout, cuda_rows q, cuda_rows k, cuda_rows v, cuda_rows out,
                             const float *lse);

/* ---- cuDNN's fused attention (cuda_cudnn.cu, built with SKEIN_HAVE_CUDNN) ----
 * Each runs the call through a cuDNN plan made for its shape on first use and returns true,
 * or returns false having done nothing: a call cuDNN does not cover (cuda_cudnn.cu says
 * which), or no plan for it (one warning per shape names the cuDNN status and step). Both
 * honour backend.h's contract (the backward writes dq, dk, dv); deterministic: the backward
 * uses cuDNN's deterministic algorithm (the same bits every run). */
bool cuda_cudnn_attention_forward(cuda_ctx *x, cudaStream_t s, const cuda_attn_geom *g, cuda_rows out, float *lse,
                                  cuda_rows q, cuda_rows k, cuda_rows v);
bool cuda_cudnn_attention_backward(cuda_ctx *x, cudaStream_t s, const cuda_attn_geom *g, bool deterministic,
                                   cuda_rows dq, cuda_rows dk, cuda_rows dv, cuda_rows dout, cuda_rows q, cuda_rows k,
                                   cuda_rows v, cuda_rows out, const float *lse);
/* Releases x->cudnn (plans, workspace, handle); nothing without it. */
void cuda_cudnn_free(cuda_ctx *x);

/* ---- the engine's ops (cuda_paged.cu): set_rows writes src's n rows of D floats (row
 * stride lds) to rows idx[i] of dst (row stride ldd); paged_attention as backend.h's, with
 * seqs(S,3) and tables(S,MB) in device memory and row strides for q, out and the caches ---- */

/* dst and src of one dtype (f32 or bf16). */
void cuda_set_rows(const cuda_ctx *x, cudaStream_t s, cuda_lp dst, int64_t ldd, cuda_lp src, int64_t lds,
                   const int *idx, int n, int D);
/* backend.h kv_store over N rows: q(N,QD), k and v (N,KD), caches of rows KD wide, all of one
 * dtype (f32 or bf16); cos and sin (N,HS/2) f32, or NULL: no rotation (HS unused). */
void cuda_kv_store(const cuda_ctx *x, cudaStream_t s, cuda_lp q, int64_t ldq, cuda_lp k, int64_t ldk, cuda_lp v,
                   int64_t ldv, cuda_lp kc, int64_t ldkc, cuda_lp vc, int64_t ldvc, const int *idx, const float *cos,
                   const float *sin, int N, int QD, int KD, int HS);
/* out, q and the caches of one dtype (f32 or bf16); q and out have N rows. Decode sequences
 * (one query) whose shapes fit run the split decode kernel (partials in x->paged_ws), prefill
 * sequences that fit the tensor-core kernel (cuda_paged_tc.cu) run it, the others the general one. */
void cuda_paged_attention(const cuda_ctx *x, cudaStream_t s, cuda_lp out, int64_t ldo, cuda_lp q, int64_t ldq,
                          cuda_lp kc, int64_t ldk, cuda_lp vc, int64_t ldv, const int *seqs, const int *tables, int N,
                          int S, int MB, int BS, int NH, int NKV, int HS, int W);
/* Whether the tensor-core prefill kernel takes bf16 arrays at these addresses and row strides
 * (elements) for head size HS: HS 64 or 128, every row 16-byte aligned. */
bool cuda_paged_prefill_tc_fits(const void *out, int64_t ldo, const void *q, int64_t ldq, const void *kc, int64_t ldk,
                                const void *vc, int64_t ldv, int HS);
/* paged_attention's sequences with nq > 1 (arguments as cuda_paged_attention's, all bf16, a
 * call cuda_paged_prefill_tc_fits takes); the rows of the other sequences are untouched. */
void cuda_paged_prefill_tc(cudaStream_t s, __nv_bfloat16 *out, int64_t ldo, const __nv_bfloat16 *q, int64_t ldq,
                           const __nv_bfloat16 *kc, int64_t ldk, const __nv_bfloat16 *vc, int64_t ldv, const int *seqs,
                           const int *tables, int N, int S, int MB, int BS, int NH, int NKV, int HS, int W);
/* Floats of the decode kernel's partial results for a device of n_sm multiprocessors (the
 * context allocates x->paged_ws of this size at creation). */
size_t cuda_paged_ws_floats(int n_sm);
/* Counters of the decode kernel's finished splits (the context allocates x->paged_done of this
 * many, zeroed, at creation). */
size_t cuda_paged_done_count(int n_sm);
/* ids[r] = the first column of the largest value of row r of x(R,V) (row stride ld). */
void cuda_argmax_rows(cudaStream_t s, int *ids, const float *x, int64_t ld, int R, int V);
/* Each negative ids[i] (i < n) = -k-1 becomes src[k] (backend.h resolve_ids). */
void cuda_resolve_ids(cudaStream_t s, int *ids, int n, const int *src);
/* ids[r] = backend_sample_row's draw from row r of x(R,V) under opts[r] (device memory). */
void cuda_sample_rows(cudaStream_t s, int *ids, const float *x, int64_t ld, int R, int V,
                      const backend_sample_row *opts);

/* ---- memory processes share (cuda_ipc.cu): backend.h's ipc_map and ipc_unmap ---- */
void *cuda_ipc_map(backend *be, size_t bytes, int *fd);
void cuda_ipc_unmap(backend *be, void *p, size_t bytes);
/* The end of the device allocation holding p (a query of the driver's own table, no
 * synchronisation), or NULL when the driver cannot say. */
const char *cuda_alloc_end(const void *p);

#endif
