/* backend/cuda: kernels and launchers of every op but attention (cuda_attention.cu).
 * Contracts are backend.h's; the CPU backend (backend/cpu/cpu.c) is the reference each
 * kernel follows formula for formula.
 *
 * Mixed precision (backend.h): an [lp] array is f32 or bf16 (cuda_lp). Kernels over [lp]
 * arrays are templates over the storage types (float, bf16); they compute in f32, convert
 * bf16 inputs exactly (to_f32) and round each bf16 output once, to nearest even
 * (from_f32). The f32 instantiations compute what the f32-only kernels computed. typed()
 * picks the instantiation from the arrays' dtypes.
 *
 * Four kernel families cover the ops:
 *   - elementwise over [lp] arrays: one functor per op whose apply<W>(i) handles elements
 *     i..i+W-1, run by each_packed over a grid-stride loop in packs of PACK elements (16-byte
 *     loads and stores: the ops are memory-bound) when every array is 16-byte aligned, and
 *     one element at a time otherwise and for the tail; each pack is read whole before it is
 *     written, so the aliasing the contracts allow (out = inp, dinp = dout) is safe;
 *   - elementwise gathers and the optimizer (f32): a functor per element run by each;
 *   - rows: one block per row (norms, softmax cross-entropy) with block_reduce;
 *   - column sums: colsum_kernel over a term functor (bias, LayerNorm and RMSNorm parameter
 *     gradients), one cluster of blocks per group of columns, each block a fixed slice of
 *     rows, partial sums added in a fixed order, so no atomics.
 * Invariants: nothing allocates but the embedding backward's sort workspace (grown on its
 * first call for a larger batch); every result is deterministic (no float atomics: the
 * token-embedding gradient sorts positions by token first); reductions into the f64 scalars
 * run in a fixed order (sum_f64 in one block, in exact index order as the CPU's loop;
 * sum_squares in one cluster of blocks, each a fixed slice).
 * f32 products go to cuBLAS in plain f32 (CUBLAS_DEFAULT_MATH: no TF32), so they track the
 * CPU's sgemm to rounding, unless SKEIN_CUDA_TF32=1 chose TF32 at creation (cuda.h); bf16
 * products of at most 8 rows with B transposed (decode steps) go to cuda_gemv.cu, the others
 * to cuBLASLt on the tensor cores, accumulating in f32, each shape's
 * descriptors and algorithm chosen once and cached in the context, split-K partial sums
 * reduced in f32 in the workspace. A linear layer into an f32 output (linear_forward: the
 * projections into the residual stream) is one such product whose BIAS epilogue adds the
 * f32 bias before D is stored (cuda_linear_lt); the other layers run unfused (cuda.cu). */
#include "backend/cuda/cuda_impl.cuh"

#include <cooperative_groups.h>
#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>
#include <math.h>
#include <string.h>
#include <type_traits>

namespace cg = cooperative_groups;

typedef __nv_bfloat16 bf16;

/* ---- shared device helpers ---- */

#define ROW_THREADS 256   /* threads of a row kernel: a multiple of 32, at most 1024 */
#define FULL_MASK 0xffffffffu

#define PACK 8   /* elements per vector step: one 16-byte access of bf16, two of f32 */

/* W consecutive elements in f32. */
template <int W> struct pk {
    float v[W];
};

/* 16 bytes of T: the unit of a vector access. */
template <class T> struct alignas(16) raw16 {
    T e[16 / sizeof(T)];
};

/* Elements p[0..W) in f32; W == PACK reads 16-byte units (p 16-byte aligned). */
template <int W, class T> __device__ __forceinline__ pk<W> load(const T *p) {
    pk<W> r;
    if constexpr (W == PACK) {
        constexpr int E = 16 / sizeof(T);
#pragma unroll
        for (int k = 0; k < W / E; k++) {
            const raw16<T> u = reinterpret_cast<const raw16<T> *>(p)[k];
#pragma unroll
            for (int j = 0; j < E; j++) r.v[k * E + j] = to_f32(u.e[j]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < W; j++) r.v[j] = to_f32(p[j]);
    }
    return r;
}

/* p[0..W) = x, each rounded once to T; W == PACK writes 16-byte units. */
template <int W, class T> __device__ __forceinline__ void store(T *p, const pk<W> &x) {
    if constexpr (W == PACK) {
        constexpr int E = 16 / sizeof(T);
#pragma unroll
        for (int k = 0; k < W / E; k++) {
            raw16<T> u;
#pragma unroll
            for (int j = 0; j < E; j++) u.e[j] = from_f32<T>(x.v[k * E + j]);
            reinterpret_cast<raw16<T> *>(p)[k] = u;
        }
    } else {
#pragma unroll
        for (int j = 0; j < W; j++) p[j] = from_f32<T>(x.v[j]);
    }
}

/* Whether every pointer is 16-byte aligned (the packed paths' condition). */
template <class... P> static bool aligned16(const P *...p) { return ((((uintptr_t)p) % 16 == 0) && ...); }

/* Calls f with each cuda_lp's data as a typed pointer (float * or bf16 *), in order: one
 * instantiation of f per combination of dtypes (ops whose [lp] arrays may mix). */
template <class F> static void typed(F &&f) { f(); }
template <class F, class... R> static void typed(F &&f, cuda_lp a, R... rest) {
    if (a.bf16) typed([&](auto *...p) { f((bf16 *)a.p, p...); }, rest...);
    else typed([&](auto *...p) { f((float *)a.p, p...); }, rest...);
}
/* Calls f with every cuda_lp's data as a pointer of a's type (ops whose [lp] arrays share
 * one dtype: the table entry has checked that they do). */
template <class F, class... R> static void typed_one(F &&f, cuda_lp a, R... rest) {
    if (a.bf16) f((bf16 *)a.p, (bf16 *)rest.p...);
    else f((float *)a.p, (float *)rest.p...);
}

template <class T> struct op_sum {
    __device__ T operator()(T a, T b) const { return a + b; }
};
struct op_max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <class T> __device__ T shfl_xor(T v, int o) { return __shfl_xor_sync(FULL_MASK, v, o); }
__device__ float2 shfl_xor(float2 v, int o) { return make_float2(shfl_xor(v.x, o), shfl_xor(v.y, o)); }

template <class T, class Op> __device__ T warp_reduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
    return v;
}

/* The reduction of v over the block (blockDim.x a multiple of 32), returned to every thread.
 * The order is fixed by the block size, so results are deterministic. Safe to call again
 * at once (it synchronizes before reusing its shared slots). */
template <class T, class Op> __device__ T block_reduce(T v, Op op) {
    __shared__ T part[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_reduce(v, op);
    __syncthreads();   /* an earlier call's readers are done with part[] */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = part[0];
    for (int w = 1; w < nwarps; w++) v = op(v, part[w]);
    return v;
}

__device__ float block_sum(float v) { return block_reduce(v, op_sum<float>()); }

/* Grid-stride loop over n elements calling f(i). */
template <class F> __global__ void each_f32(int64_t n, F f) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        f(i);
}

/* Blocks of 256 for `work` items of a grid-stride loop: at most 32 per multiprocessor. */
static unsigned grid_for(const cuda_ctx *x, int64_t work) {
    const int64_t blocks = (work + 255) / 256, cap = (int64_t)x->n_sm * 32;
    return (unsigned)(blocks < cap ? blocks : cap);
}

/* Launches each_f32 over n elements. */
template <class F> static void each(const cuda_ctx *x, cudaStream_t s, int64_t n, F f) {
    if (n <= 0) return;
    each_f32<<<grid_for(x, n), 256, 0, s>>>(n, f);
    CUDA_CHECK_LAUNCH();
}

/* Grid-stride loop over n elements: f.apply<PACK>(i) on whole packs when vec, then
 * f.apply<1>(i) on the elements left (all of them when not vec). */
template <class F> __global__ void each_packed_kernel(int64_t n, bool vec, F f) {
    const int64_t step = (int64_t)gridDim.x * blockDim.x, t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t done = 0;
    if (vec) {
        const int64_t packs = n / PACK;
        for (int64_t k = t; k < packs; k += step) f.template apply<PACK>(k * PACK);
        done = packs * PACK;
    }
    for (int64_t i = done + t; i < n; i += step) f.template apply<1>(i);
}

/* Launches each_packed_kernel over n elements; vec when the functor's arrays allow 16-byte
 * accesses at every multiple of PACK (aligned16, and whatever the op's layout needs). */
template <class F> static void each_packed(const cuda_ctx *x, cudaStream_t s, int64_t n, bool vec, F f) {
    if (n <= 0) return;
    each_packed_kernel<<<grid_for(x, vec ? (n + PACK - 1) / PACK : n), 256, 0, s>>>(n, vec, f);
    CUDA_CHECK_LAUNCH();
}

/* ---- products ---- */

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the same buffers with the
 * operands swapped, each row stride a leading dimension. */
void cuda_matmul(cuda_ctx *x, cudaStream_t s, float *C, int64_t ldc, const float *A, int64_t lda, bool ta,
                 const float *B, int64_t ldb, bool tb, int M, int N, int K, float alpha, float beta) {
    if (x->blas_stream != s) {
        CUBLAS_CHECK(cuda_blas.cublasSetStream(x->blas, s));
        /* setting a stream returns the handle to cuBLAS's own pool: give it ours again */
        CUBLAS_CHECK(cuda_blas.cublasSetWorkspace(x->blas, x->blas_ws, x->blas_ws_bytes));
        x->blas_stream = s;
    }
    CUBLAS_CHECK(cuda_blas.cublasSgemm(x->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
                             B, (int)ldb, A, (int)lda, &beta, C, (int)ldc));
}

/* log2 of p's alignment in bytes, at most 256: cuBLASLt picks kernels by it. */
static int64_t align_log2(const void *p) {
    int64_t k = 0;
    while (k < 8 && !(((uintptr_t)p >> k) & 1)) k++;
    return k;
}

static void lt_plan_release(cuda_lt_plan *p) {
    CUBLAS_CHECK(cuda_blas.cublasLtMatrixLayoutDestroy(p->a));
    CUBLAS_CHECK(cuda_blas.cublasLtMatrixLayoutDestroy(p->b));
    CUBLAS_CHECK(cuda_blas.cublasLtMatrixLayoutDestroy(p->c));
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulDescDestroy(p->op));
}

void cuda_lt_plans_free(cuda_ctx *x) {
    for (int i = 0; i < x->n_lt_plans; i++) lt_plan_release(&x->lt_plans[i]);
    x->n_lt_plans = x->lt_next = 0;
}

/* Sets the epilogue's vectors on plan descriptor op: cuBLASLt reads them from it, so each
 * call sets its own before it multiplies (and the heuristic reads their alignment). */
static void lt_set_vectors(cublasLtMatmulDesc_t op, const void *bias) {
    if (bias) CUBLAS_CHECK(cuda_blas.cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
}

/* Makes p's descriptors for key k and asks the heuristic for the best algorithm that fits
 * the workspace and the operands' alignments. Row-major as in cuda_matmul: cuBLASLt's
 * column-major A is our B (stored (K,N), or (N,K) when tb) and its B our A, and its D is
 * our C seen as (N,M): a bias of our N columns is a vector over D's rows, which is what
 * CUBLASLT_EPILOGUE_BIAS broadcasts. An epilogue's bias has D's dtype (key flag bit 20: bf16;
 * cuBLASLt 13.0 had no algorithm for a bf16 D with an f32 bias); bias is the first call's
 * vector. No algorithm for a plain product is a broken invariant (an unsupported
 * view): the shapes go to stderr and we abort; for an epilogue, a note goes to stderr and
 * the plan is marked not ok. */
static void lt_plan_make(cuda_ctx *x, cuda_lt_plan *p, const cuda_lt_key *k, const void *bias) {
    const bool ta = k->flags & 1, tb = (k->flags >> 1) & 1, c_bf16 = (k->flags >> 2) & 1;
    const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    p->key = *k;
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (k->epi != CUBLASLT_EPILOGUE_DEFAULT) {
        const uint32_t epi = (uint32_t)k->epi;
        CUBLAS_CHECK(cuda_blas.cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        if (bias) {
            const int32_t bias_type = (k->flags >> 20) & 1 ? CUDA_R_16BF : CUDA_R_32F;
            CUBLAS_CHECK(cuda_blas.cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                        sizeof bias_type));
        }
        lt_set_vectors(p->op, bias);
    }
    CUBLAS_CHECK(cuda_blas.cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, tb ? k->K : k->N, tb ? k->N : k->K, k->ldb));
    CUBLAS_CHECK(cuda_blas.cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, ta ? k->M : k->K, ta ? k->K : k->M, k->lda));
    CUBLAS_CHECK(cuda_blas.cublasLtMatrixLayoutCreate(&p->c, c_bf16 ? CUDA_R_16BF : CUDA_R_32F, k->N, k->M, k->ldc));

    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = x->blas_ws_bytes;
    const uint32_t al_a = 1u << ((k->flags >> 4) & 15), al_b = 1u << ((k->flags >> 8) & 15),
                   al_c = 1u << ((k->flags >> 12) & 15);
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_b,
                                                      sizeof al_b));
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_a,
                                                      sizeof al_a));
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                                      sizeof al_c));
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c,
                                                      sizeof al_c));
    /* split-K partial sums only in f32 and in the workspace (never rounded to a bf16 output,
     * never added in place by atomics): the contract's one rounding, and the same bits from
     * run to run (exact resume) */
    const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction,
                                                      sizeof reduction));
    cublasLtMatmulHeuristicResult_t r;
    int found = 0;
    const cublasStatus_t st = cuda_blas.cublasLtMatmulAlgoGetHeuristic(x->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &r, &found);
    CUBLAS_CHECK(cuda_blas.cublasLtMatmulPreferenceDestroy(pref));
    p->ok = st == CUBLAS_STATUS_SUCCESS && found > 0;
    if (!p->ok) {
        fprintf(stderr,
                "cuBLASLt: no algorithm for the bf16 product M=%lld N=%lld K=%lld lda=%lld ldb=%lld ldc=%lld "
                "ta=%d tb=%d C %s epilogue %lld (bias %s) (%s)%s\n",
                (long long)k->M, (long long)k->N, (long long)k->K, (long long)k->lda, (long long)k->ldb,
                (long long)k->ldc, ta, tb, c_bf16 ? "bf16" : "f32", (long long)k->epi,
                !bias ? "none" : (k->flags >> 20) & 1 ? "bf16" : "f32",
                cuda_blas.cublasGetStatusString(st),
                k->epi == CUBLASLT_EPILOGUE_DEFAULT ? "" : ": the layer runs without the epilogue");
        if (k->epi == CUBLASLT_EPILOGUE_DEFAULT) abort();
        return;
    }
    p->algo = r.algo;
}

/* The plan for key k: cached, or made now (with the bias of this call) in a free slot or in
 * place of the oldest. */
static const cuda_lt_plan *lt_plan(cuda_ctx *x, const cuda_lt_key *k, const void *bias) {
    for (int i = 0; i < x->n_lt_plans; i++)
        if (!memcmp(&x->lt_plans[i].key, k, sizeof *k)) return &x->lt_plans[i];
    cuda_lt_plan *p;
    if (x->n_lt_plans < CUDA_LT_PLANS) {
        p = &x->lt_plans[x->n_lt_plans++];
    } else {
        p = &x->lt_plans[x->lt_next];
        x->lt_next = (x->lt_next + 1) % CUDA_LT_PLANS;
        lt_plan_release(p);
    }
    lt_plan_make(x, p, k, bias);
    return p;
}

/* The key of a product without epilogue. */
static cuda_lt_key lt_key(cuda_lp C, int64_t ldc, const void *A, int64_t lda, bool ta, const void *B, int64_t ldb,
                          bool tb, int M, int N, int K, float beta) {
    const int64_t flags = (int64_t)ta | (int64_t)tb << 1 | (int64_t)C.bf16 << 2 | (int64_t)(beta != 0.0f) << 3 |
                          align_log2(A) << 4 | align_log2(B) << 8 | align_log2(C.p) << 12;
    const cuda_lt_key k = {M, N, K, lda, ldb, ldc, flags, CUBLASLT_EPILOGUE_DEFAULT};
    return k;
}

/* The same swap as cuda_matmul, through cuBLASLt: C = D in place, alpha and beta on the host. */
void cuda_matmul_lt(cuda_ctx *x, cudaStream_t s, cuda_lp C, int64_t ldc, const void *A, int64_t lda, bool ta,
                    const void *B, int64_t ldb, bool tb, int M, int N, int K, float alpha, float beta) {
    const cuda_lt_key k = lt_key(C, ldc, A, lda, ta, B, ldb, tb, M, N, K, beta);
    const cuda_lt_plan *p = lt_plan(x, &k, NULL);
    CUBLAS_CHECK(cuda_blas.cublasLtMatmul(x->lt, p->op, &alpha, B, p->a, A, p->b, &beta, C.p, p->c, C.p, p->c, &p->algo,
                                x->blas_ws, x->blas_ws_bytes, s));
}

/* The BIAS epilogue adds the bias to the f32 sum before D is stored (rounded once). */
bool cuda_linear_lt(cuda_ctx *x, cudaStream_t s, cuda_lp out, int64_t ldo, const void *A, int64_t lda, const void *B,
                    int64_t ldb, bool tb, cuda_lp bias, int M, int N, int K) {
    cuda_lt_key k = lt_key(out, ldo, A, lda, false, B, ldb, tb, M, N, K, 0.0f);
    k.flags |= align_log2(bias.p) << 16 | (int64_t)bias.bf16 << 20;
    k.epi = CUBLASLT_EPILOGUE_BIAS;
    const cuda_lt_plan *p = lt_plan(x, &k, bias.p);
    if (!p->ok) return false;
    lt_set_vectors(p->op, bias.p);
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cuda_blas.cublasLtMatmul(x->lt, p->op, &alpha, B, p->a, A, p->b, &beta, out.p, p->c, out.p, p->c, &p->algo,
                                x->blas_ws, x->blas_ws_bytes, s));
    return true;
}

__nv_bfloat16 *cuda_bias_bf16(cuda_ctx *x, cudaStream_t s, const float *bias, int n) {
    if ((size_t)n > x->bias_lp_n) {
        if (x->bias_lp) CUDA_CHECK(cudaFreeAsync(x->bias_lp, s));
        CUDA_CHECK(cudaMallocAsync((void **)&x->bias_lp, (size_t)n * sizeof(bf16), s));
        x->bias_lp_n = (size_t)n;
    }
    cuda_cast(x, s, cuda_lp{x->bias_lp, true}, cuda_lp{(void *)bias, false}, n);
    return x->bias_lp;
}

/* ---- column sums: dst0[c] (+ dst1[c]) += sum over rows of a term of (row, column) ---- */

#define COLSUM_X 32      /* columns per block */
#define COLSUM_Y 16      /* row lanes per column */
#define COLSUM_SPLIT 8   /* blocks per cluster, each a contiguous slice of rows (the portable size) */

/* The block's sums over rows [lo, hi) of term at this thread's column c (COLSUM_X columns
 * per block): its COLSUM_Y lanes take rows y, y + COLSUM_Y, ... and their sums are added in
 * lane order. Returned to the threads of lane 0 (threadIdx.y == 0), which also leave them in
 * s0[0], s1[0]. term(i, c) returns two summands. */
template <class Term>
__device__ float2 colsum_block(float (*s0)[COLSUM_X + 1], float (*s1)[COLSUM_X + 1], int lo, int hi, int c, int C,
                               Term term) {
    float a0 = 0, a1 = 0;
    if (c < C) {
#pragma unroll 4
        for (int i = lo + threadIdx.y; i < hi; i += COLSUM_Y) {
            float2 t = term(i, c);
            a0 += t.x;
            a1 += t.y;
        }
    }
    s0[threadIdx.y][threadIdx.x] = a0;
    s1[threadIdx.y][threadIdx.x] = a1;
    __syncthreads();
    if (threadIdx.y == 0) {
        for (int y = 1; y < COLSUM_Y; y++) {
            a0 += s0[y][threadIdx.x];
            a1 += s1[y][threadIdx.x];
        }
        s0[0][threadIdx.x] = a0;
        s1[0][threadIdx.x] = a1;
    }
    return make_float2(a0, a1);
}

/* A cluster of COLSUM_SPLIT blocks per COLSUM_X columns; block r sums rows of slice r
 * (colsum_block), then block 0 of the cluster adds the blocks' sums in rank order, read from
 * their shared memory. A fixed order, no atomics. The second summand is ignored when dst1 is
 * NULL. */
template <class Term>
__global__ void __cluster_dims__(1, COLSUM_SPLIT, 1) colsum_kernel(float *dst0, float *dst1, int N, int C, Term term) {
    __shared__ float s0[COLSUM_Y][COLSUM_X + 1], s1[COLSUM_Y][COLSUM_X + 1];
    cg::cluster_group cluster = cg::this_cluster();
    const int c = blockIdx.x * COLSUM_X + threadIdx.x;
    const int per = (N + COLSUM_SPLIT - 1) / COLSUM_SPLIT, lo = (int)cluster.block_rank() * per;
    colsum_block(s0, s1, lo, lo + per < N ? lo + per : N, c, C, term);
    cluster.sync();   /* every block's partials are in its shared memory */
    if (cluster.block_rank() == 0 && threadIdx.y == 0 && c < C) {
        float t0 = 0, t1 = 0;
        for (unsigned r = 0; r < COLSUM_SPLIT; r++) {
            t0 += *cluster.map_shared_rank(&s0[0][threadIdx.x], r);
            t1 += *cluster.map_shared_rank(&s1[0][threadIdx.x], r);
        }
        dst0[c] += t0;
        if (dst1) dst1[c] += t1;
    }
    cluster.sync();   /* block 0 has read them: the blocks may leave */
}

/* Partial rows of a column sum: dst0[c] (, dst1[c]) of row i of a (rows, C) buffer. */
struct term_parts {
    const float *p0, *p1;
    int C;
    __device__ float2 operator()(int i, int c) const {
        const size_t k = (size_t)i * C + c;
        return make_float2(p0[k], p1 ? p1[k] : 0.0f);
    }
};

#define COLSUM_SLICE 512    /* rows per slice of a long column sum's first stage */
#define COLSUM_SLICES 128   /* at most this many slices */

/* First stage of a long column sum: block (x, s) sums slice s (rows [s per, (s+1) per)) of
 * COLSUM_X columns, its lanes in order as colsum_kernel does, into row s of part0 (, part1). */
template <class Term>
__global__ void colsum_part_kernel(float *part0, float *part1, int N, int C, int per, Term term) {
    __shared__ float s0[COLSUM_Y][COLSUM_X + 1], s1[COLSUM_Y][COLSUM_X + 1];
    const int c = blockIdx.x * COLSUM_X + threadIdx.x, lo = blockIdx.y * per;
    const float2 a = colsum_block(s0, s1, lo, lo + per < N ? lo + per : N, c, C, term);
    if (threadIdx.y == 0 && c < C) {
        part0[(size_t)blockIdx.y * C + c] = a.x;
        if (part1) part1[(size_t)blockIdx.y * C + c] = a.y;
    }
}

/* dst0[c] (+ dst1[c]) += the column sums of term over N rows, in a fixed order: one cluster
 * pass for short columns; long ones (GPT-2's 32768 rows gave the clusters too few blocks)
 * first in slices into x's column-sum workspace (grown on first use), then over the slices. */
template <class Term> static void colsum(cuda_ctx *x, cudaStream_t s, float *dst0, float *dst1, int N, int C, Term term) {
    if (N == 0 || C == 0) return;
    if (N <= 4 * COLSUM_SLICE) {
        colsum_kernel<<<dim3((C + COLSUM_X - 1) / COLSUM_X, COLSUM_SPLIT), dim3(COLSUM_X, COLSUM_Y), 0, s>>>(dst0, dst1,
                                                                                                            N, C, term);
        CUDA_CHECK_LAUNCH();
        return;
    }
    int slices = (N + COLSUM_SLICE - 1) / COLSUM_SLICE;
    slices = slices < COLSUM_SLICES ? slices : COLSUM_SLICES;
    const int per = (N + slices - 1) / slices;
    const size_t need = (size_t)slices * C * 2 * sizeof(float);
    if (need > x->colsum_ws_bytes) {
        if (x->colsum_ws) CUDA_CHECK(cudaFreeAsync(x->colsum_ws, s));
        CUDA_CHECK(cudaMallocAsync(&x->colsum_ws, need, s));
        x->colsum_ws_bytes = need;
    }
    float *p0 = (float *)x->colsum_ws, *p1 = dst1 ? p0 + (size_t)slices * C : NULL;
    colsum_part_kernel<<<dim3((C + COLSUM_X - 1) / COLSUM_X, slices), dim3(COLSUM_X, COLSUM_Y), 0, s>>>(p0, p1, N, C,
                                                                                                       per, term);
    CUDA_CHECK_LAUNCH();
    colsum(x, s, dst0, dst1, slices, C, term_parts{p0, p1, C});
}

/* dout(N,C) itself: the bias gradient. */
template <class T> struct term_bias {
    const T *dout;
    int C;
    __device__ float2 operator()(int i, int c) const { return make_float2(to_f32(dout[(size_t)i * C + c]), 0.0f); }
};

/* ---- bias ---- */

/* out(N,OC) (row stride ld) += bias(OC); a pack never crosses a row (vec needs OC and ld
 * multiples of PACK). */
template <class T> struct op_bias_add {
    T *out;
    const float *bias;
    int64_t ld;
    int OC;
    template <int W> __device__ void apply(int64_t i) const {
        T *o = out + i / OC * ld + i % OC;
        pk<W> x = load<W>(o);
        const pk<W> b = load<W>(bias + i % OC);
#pragma unroll
        for (int j = 0; j < W; j++) x.v[j] += b.v[j];
        store<W>(o, x);
    }
};

void cuda_bias_add(const cuda_ctx *x, cudaStream_t s, cuda_lp out, int64_t ld, const float *bias, int N, int OC) {
    typed_one(
        [&](auto *o) {
            const bool vec = aligned16(o, bias) && OC % PACK == 0 && ld % PACK == 0;
            each_packed(x, s, (int64_t)N * OC, vec, op_bias_add{o, bias, ld, OC});
        },
        out);
}

void cuda_bias_backward(cuda_ctx *x, cudaStream_t s, float *dbias, cuda_lp dout, int N, int OC) {
    typed_one([&](auto *d) { colsum(x, s, dbias, (float *)NULL, N, OC, term_bias{d, OC}); }, dout);
}

/* ---- embeddings ---- */

/* out = wte[token] + wpe[t]: the sum rounds once, as the CPU's copy-then-add does. The
 * tables are f32, or bf16 (an inference model's device copy), read exactly. */
template <class E, class P> struct op_embed {
    float *out;
    const int *tokens;
    const E *wte;
    const P *wpe;
    int T, C;
    __device__ void operator()(int64_t i) const {
        const int64_t r = i / C, c = i % C;
        float e = to_f32(wte[(int64_t)tokens[r] * C + c]);
        out[i] = wpe ? e + to_f32(wpe[(r % T) * C + c]) : e;
    }
};

void cuda_embed_forward(const cuda_ctx *x, cudaStream_t s, float *out, const int *tokens, cuda_lp wte, cuda_lp wpe,
                        int B, int T, int C) {
    typed([&](auto *e, auto *p) { each(x, s, (int64_t)B * T * C, op_embed<std::remove_pointer_t<decltype(e)>,
                                       std::remove_pointer_t<decltype(p)>>{out, tokens, e, p, T, C}); },
          wte, wpe);
}

/* dwte without atomics, so a step's gradient is the same bits on every run (exact resume):
 * the positions sorted by token with a stable radix sort (CUB), then one block per run of
 * equal tokens adds that token's dout rows in position order, the CPU's order. */
__global__ void embed_iota_kernel(int *v, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v[i] = i;
}

__global__ void embed_dwte_runs_kernel(float *dwte, const float *dout, const int *tok, const int *pos, int n, int C) {
    const int j = blockIdx.x;
    if (j > 0 && tok[j - 1] == tok[j]) return;   /* not the first of its run */
    int end = j + 1;
    while (end < n && tok[end] == tok[j]) end++;
    float *row = dwte + (int64_t)tok[j] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = row[c];
        for (int k = j; k < end; k++) acc += dout[(int64_t)pos[k] * C + c];
        row[c] = acc;
    }
}

/* The sort's buffers in the context's embedding workspace, grown (the only allocation, on the
 * first backward of a larger batch) to fit n positions of tokens below V. */
static void embed_sort(cuda_ctx *x, cudaStream_t s, const int *tokens, int n, int V, int **sorted_tok, int **sorted_pos) {
    int end_bit = 1;
    while ((1 << end_bit) < V && end_bit < 31) end_bit++;
    size_t cub_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, cub_bytes, tokens, (int *)NULL, (const int *)NULL, (int *)NULL, n,
                                               0, end_bit, s));
    const size_t ints = 3 * ((size_t)n + 64), need = ints * sizeof(int) + cub_bytes;
    if (need > x->embed_ws_bytes) {
        if (x->embed_ws) CUDA_CHECK(cudaFreeAsync(x->embed_ws, s));
        CUDA_CHECK(cudaMallocAsync(&x->embed_ws, need, s));
        x->embed_ws_bytes = need;
    }
    int *iota = (int *)x->embed_ws, *st = iota + n + 64, *sp = st + n + 64;
    embed_iota_kernel<<<(n + 255) / 256, 256, 0, s>>>(iota, n);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sp + n + 64, cub_bytes, tokens, st, iota, sp, n, 0, end_bit, s));
    *sorted_tok = st;
    *sorted_pos = sp;
}

/* dwpe(t, c) adds the rows of every sample at time t in sample order, one after the other:
 * the CPU's additions exactly. */
struct op_embed_dwpe {
    float *dwpe;
    const float *dout;
    int B, T, C;
    __device__ void operator()(int64_t i) const {
        float acc = dwpe[i];
        for (int b = 0; b < B; b++) acc += dout[(int64_t)b * T * C + i];
        dwpe[i] = acc;
    }
};

void cuda_embed_backward(cuda_ctx *x, cudaStream_t s, float *dwte, float *dwpe, const float *dout, const int *tokens,
                         int B, int T, int C, int V) {
    int *st, *sp;
    const int n = B * T;
    if (n > 0) {
        embed_sort(x, s, tokens, n, V, &st, &sp);
        embed_dwte_runs_kernel<<<n, C < 256 ? 32 * ((C + 31) / 32) : 256, 0, s>>>(dwte, dout, st, sp, n, C);
        CUDA_CHECK_LAUNCH();
    }
    if (dwpe) each(x, s, (int64_t)T * C, op_embed_dwpe{dwpe, dout, B, T, C});
}

/* ---- LayerNorm and RMSNorm: one warp per row, NORM_WARPS rows per block; inp and the
 * statistics f32, the forward's residual and out or dout [lp]. W elements per lane step: PACK
 * where C and the pointers allow 16-byte accesses, else 1. A forward of at most
 * NORM_ROW_BLOCKS rows (a decode step of a few sequences) takes a block per row instead: one
 * warp walking a row of 4096 serially took 16 us a norm, 1 ms of a one-stream Llama-3-8B
 * token (ncu, 2026-12-02). ---- */

#define NORM_WARPS 8      /* rows per block */
#define NORM_ROW_BLOCKS 8 /* forwards of up to this many rows: a block of up to NORM_WARPS warps per row */
#define NORM_BLOCKS 1024  /* blocks of a backward that sums the weight gradients itself */
#define NORM_KMAX 4       /* ... when each lane's columns fit in NORM_KMAX steps (C <= 1024) */

/* Forward: inp += resid (when given; its f32 value, one f32 addition as op_add's), then LN
 * (mean subtracted, bias added) or RMSNorm of the row; out may alias inp for RMSNorm (each
 * thread rereads only what it writes). A row is a warp's (ROW false) or the whole block's
 * (ROW true: blockIdx.x, blockDim.x threads, sums in block_reduce's fixed order). */
template <int W, bool LN, bool ROW, class TO, class TR>
__global__ void __launch_bounds__(NORM_WARPS * 32)
    norm_forward_kernel(TO *out, float *mean, float *rstd, float *inp, const TR *resid, const float *weight,
                        const float *bias, int N, int C, float eps) {
    const int row = ROW ? blockIdx.x : blockIdx.x * NORM_WARPS + threadIdx.x / 32;
    const int lane = ROW ? threadIdx.x : threadIdx.x % 32, step = (ROW ? blockDim.x : 32) * W;
    if (row >= N) return;   /* ROW: the whole block */
    auto row_sum = [](float v) { return ROW ? block_reduce(v, op_sum<float>()) : warp_reduce(v, op_sum<float>()); };
    const size_t o = (size_t)row * C;
    float *x = inp + o;
    float s = 0;
    for (int c = lane * W; c < C; c += step) {
        pk<W> v = load<W>(x + c);
        if (resid) {
            const pk<W> r = load<W>(resid + o + c);
#pragma unroll
            for (int j = 0; j < W; j++) v.v[j] += r.v[j];
            store<W>(x + c, v);
        }
#pragma unroll
        for (int j = 0; j < W; j++) s += LN ? v.v[j] : v.v[j] * v.v[j];
    }
    s = row_sum(s);
    float m = 0, r;
    if constexpr (LN) {
        m = s / C;
        float var = 0;   /* two passes: the variance of centered values keeps precision */
        for (int c = lane * W; c < C; c += step) {
            const pk<W> v = load<W>(x + c);
#pragma unroll
            for (int j = 0; j < W; j++) var += (v.v[j] - m) * (v.v[j] - m);
        }
        r = 1.0f / sqrtf(row_sum(var) / C + eps);
    } else {
        r = 1.0f / sqrtf(s / C + eps);
    }
    for (int c = lane * W; c < C; c += step) {
        pk<W> v = load<W>(x + c);
        const pk<W> w = load<W>(weight + c);
        if constexpr (LN) {
            const pk<W> b = load<W>(bias + c);
#pragma unroll
            for (int j = 0; j < W; j++) v.v[j] = (v.v[j] - m) * r * w.v[j] + b.v[j];
        } else {
#pragma unroll
            for (int j = 0; j < W; j++) v.v[j] = v.v[j] * r * w.v[j];
        }
        store<W>(out + o + c, v);
    }
    if (lane == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
}

/* The forward's launch for W elements a step: N <= NORM_ROW_BLOCKS rows a block each, of as
 * many warps as one step over the row needs (at most NORM_WARPS), else NORM_WARPS rows a block. */
template <int W, bool LN, class TO, class TR>
static void norm_forward_launch(cudaStream_t s, TO *out, float *mean, float *rstd, float *inp, const TR *resid,
                                const float *weight, const float *bias, int N, int C, float eps) {
    if (N <= NORM_ROW_BLOCKS) {
        const int warps = min(NORM_WARPS, max(1, (C / W + 31) / 32));
        norm_forward_kernel<W, LN, true><<<N, warps * 32, 0, s>>>(out, mean, rstd, inp, resid, weight, bias, N, C, eps);
    } else {
        norm_forward_kernel<W, LN, false><<<(N + NORM_WARPS - 1) / NORM_WARPS, NORM_WARPS * 32, 0, s>>>(
            out, mean, rstd, inp, resid, weight, bias, N, C, eps);
    }
}

void cuda_norm_forward(cudaStream_t s, bool ln, cuda_lp out, float *mean, float *rstd, float *inp, cuda_lp resid,
                       const float *weight, const float *bias, int N, int C, float eps) {
    typed(
        [&](auto *o, auto *r) {
            const bool vec = C % PACK == 0 && aligned16(o, inp, weight) && (!r || aligned16(r)) &&
                             (!bias || aligned16(bias));
            if (ln && vec) norm_forward_launch<PACK, true>(s, o, mean, rstd, inp, r, weight, bias, N, C, eps);
            else if (ln) norm_forward_launch<1, true>(s, o, mean, rstd, inp, r, weight, bias, N, C, eps);
            else if (vec) norm_forward_launch<PACK, false>(s, o, mean, rstd, inp, r, weight, bias, N, C, eps);
            else norm_forward_launch<1, false>(s, o, mean, rstd, inp, r, weight, bias, N, C, eps);
        },
        out, resid);
    CUDA_CHECK_LAUNCH();
}

/* Backward of a row: LN  dinp += r (d w - mean(d w) - xhat mean(d w xhat)), xhat = (x - m) r;
 * RMSNorm dinp += r w d - x r^3 / C sum(d w x). dinp_lp (or NULL) gets the new dinp in bf16.
 * With K > 0 (W == PACK, C <= K * 32 * PACK) the block also sums its rows' weight gradients
 * (LN: d xhat and d; RMSNorm: d x r), each lane in registers for its columns, the warps in
 * order through shared memory, into part0/part1 row blockIdx.x (the caller adds the blocks'
 * rows in order: colsum). The rows of a warp and the orders are fixed by N: deterministic. */
template <int W, bool LN, int K, class TD>
__global__ void __launch_bounds__(NORM_WARPS * 32)
    norm_backward_kernel(float *dinp, bf16 *dinp_lp, const TD *dout, const float *inp, const float *weight,
                         const float *mean, const float *rstd, float *part0, float *part1, int N, int C) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float g0[K > 0 ? K : 1][W], g1[K > 0 && LN ? K : 1][W];
#pragma unroll
    for (int k = 0; k < (K > 0 ? K : 1); k++)
#pragma unroll
        for (int j = 0; j < W; j++) g0[k][j] = g1[LN ? k : 0][j] = 0.0f;
    for (int row = blockIdx.x * NORM_WARPS + warp; row < N; row += gridDim.x * NORM_WARPS) {
        const size_t o = (size_t)row * C;
        const float m = LN ? mean[row] : 0.0f, r = rstd[row];
        float a = 0, b = 0;
        for (int c = lane * W; c < C; c += 32 * W) {
            const pk<W> d = load<W>(dout + o + c), x = load<W>(inp + o + c), w = load<W>(weight + c);
#pragma unroll
            for (int j = 0; j < W; j++) {
                const float dn = d.v[j] * w.v[j];
                if constexpr (LN) {
                    a += dn;
                    b += dn * (x.v[j] - m) * r;
                } else {
                    a += dn * x.v[j];
                }
            }
        }
        a = warp_reduce(a, op_sum<float>());
        if constexpr (LN) {
            a /= C;
            b = warp_reduce(b, op_sum<float>()) / C;
        } else {
            a = a * r * r * r / C;
        }
        auto step = [&](int c, float *acc0, float *acc1) {
            const pk<W> d = load<W>(dout + o + c), x = load<W>(inp + o + c), w = load<W>(weight + c);
            pk<W> dx = load<W>(dinp + o + c);
#pragma unroll
            for (int j = 0; j < W; j++) {
                if constexpr (LN) {
                    const float xh = (x.v[j] - m) * r;
                    dx.v[j] += r * (d.v[j] * w.v[j] - a - xh * b);
                    if (acc0) {
                        acc0[j] += d.v[j] * xh;
                        acc1[j] += d.v[j];
                    }
                } else {
                    dx.v[j] += r * w.v[j] * d.v[j] - a * x.v[j];
                    if (acc0) acc0[j] += d.v[j] * x.v[j] * r;
                }
            }
            store<W>(dinp + o + c, dx);
            if (dinp_lp) store<W>(dinp_lp + o + c, dx);
        };
        if constexpr (K > 0) {
#pragma unroll
            for (int k = 0; k < K; k++) {
                const int c = (k * 32 + lane) * W;
                if (c < C) step(c, g0[k], g1[LN ? k : 0]);
            }
        } else {
            for (int c = lane * W; c < C; c += 32 * W) step(c, (float *)NULL, (float *)NULL);
        }
    }
    if constexpr (K > 0) {
        extern __shared__ float acc[];   /* (LN ? 2 : 1) * C: the block's sums, warp after warp */
        for (int w = 0; w < NORM_WARPS; w++) {
            if (warp == w)
#pragma unroll
                for (int k = 0; k < K; k++) {
                    const int c = (k * 32 + lane) * W;
                    if (c < C)
#pragma unroll
                        for (int j = 0; j < W; j++) {
                            acc[c + j] = (w ? acc[c + j] : 0.0f) + g0[k][j];
                            if constexpr (LN) acc[C + c + j] = (w ? acc[C + c + j] : 0.0f) + g1[k][j];
                        }
                }
            __syncthreads();
        }
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            part0[(size_t)blockIdx.x * C + c] = acc[c];
            if (LN) part1[(size_t)blockIdx.x * C + c] = acc[C + c];
        }
    }
}


/* (dout * xhat, dout): the LayerNorm weight and bias gradients read from the data. */
template <class TD> struct term_layernorm {
    const TD *dout;
    const float *inp, *mean, *rstd;
    int C;
    __device__ float2 operator()(int i, int c) const {
        size_t k = (size_t)i * C + c;
        const float d = to_f32(dout[k]);
        return make_float2(d * (inp[k] - mean[i]) * rstd[i], d);
    }
};

template <class TD> struct term_rmsnorm {
    const TD *dout;
    const float *inp, *rstd;
    int C;
    __device__ float2 operator()(int i, int c) const {
        size_t k = (size_t)i * C + c;
        return make_float2(to_f32(dout[k]) * inp[k] * rstd[i], 0.0f);
    }
};

/* The fused weight-gradient path for one family and dout type: grows the workspace for the
 * blocks' partial rows, runs the kernel, adds the rows in order. */
template <bool LN, class TD>
static void norm_backward_fused(cuda_ctx *x, cudaStream_t s, float *dinp, bf16 *dinp_lp, float *dweight,
                                float *dbias, const TD *d, const float *inp, const float *weight, const float *mean,
                                const float *rstd, int N, int C) {
    const int blocks = (N + NORM_WARPS - 1) / NORM_WARPS < NORM_BLOCKS ? (N + NORM_WARPS - 1) / NORM_WARPS : NORM_BLOCKS;
    const size_t need = (size_t)blocks * C * (LN ? 2 : 1) * sizeof(float);
    if (need > x->norm_ws_bytes) {
        if (x->norm_ws) CUDA_CHECK(cudaFreeAsync(x->norm_ws, s));
        CUDA_CHECK(cudaMallocAsync(&x->norm_ws, need, s));
        x->norm_ws_bytes = need;
    }
    float *p0 = (float *)x->norm_ws, *p1 = LN ? p0 + (size_t)blocks * C : NULL;
    norm_backward_kernel<PACK, LN, NORM_KMAX, TD><<<blocks, NORM_WARPS * 32, (LN ? 2 : 1) * C * sizeof(float), s>>>(
        dinp, dinp_lp, d, inp, weight, mean, rstd, p0, p1, N, C);
    CUDA_CHECK_LAUNCH();
    colsum(x, s, dweight, dbias, blocks, C, term_parts{p0, p1, C});
}

void cuda_norm_backward(cuda_ctx *x, cudaStream_t s, bool ln, float *dinp, bf16 *dinp_lp, float *dweight,
                        float *dbias, cuda_lp dout, const float *inp, const float *weight, const float *mean,
                        const float *rstd, int N, int C) {
    if (N == 0) return;
    typed_one(
        [&](auto *d) {
            const bool vec = C % PACK == 0 && aligned16(d, dinp, inp, weight) && (!dinp_lp || aligned16(dinp_lp));
            if (vec && C <= NORM_KMAX * 32 * PACK) {
                if (ln) norm_backward_fused<true>(x, s, dinp, dinp_lp, dweight, dbias, d, inp, weight, mean, rstd, N, C);
                else norm_backward_fused<false>(x, s, dinp, dinp_lp, dweight, dbias, d, inp, weight, mean, rstd, N, C);
                return;
            }
            const dim3 grid((N + NORM_WARPS - 1) / NORM_WARPS), block(NORM_WARPS * 32);
            float *none = NULL;
            if (ln && vec) norm_backward_kernel<PACK, true, 0><<<grid, block, 0, s>>>(dinp, dinp_lp, d, inp, weight, mean, rstd, none, none, N, C);
            else if (ln) norm_backward_kernel<1, true, 0><<<grid, block, 0, s>>>(dinp, dinp_lp, d, inp, weight, mean, rstd, none, none, N, C);
            else if (vec) norm_backward_kernel<PACK, false, 0><<<grid, block, 0, s>>>(dinp, dinp_lp, d, inp, weight, mean, rstd, none, none, N, C);
            else norm_backward_kernel<1, false, 0><<<grid, block, 0, s>>>(dinp, dinp_lp, d, inp, weight, mean, rstd, none, none, N, C);
            CUDA_CHECK_LAUNCH();
            if (ln) colsum(x, s, dweight, dbias, N, C, term_layernorm{d, inp, mean, rstd, C});
            else colsum(x, s, dweight, (float *)NULL, N, C, term_rmsnorm{d, inp, rstd, C});
        },
        dout);
}

/* ---- elementwise over [lp] arrays ---- */

#define GELU_K 0.7978845608028654f   /* sqrt(2/pi) */

__device__ __forceinline__ float gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_K * (x + 0.044715f * x * x * x)));
}

/* d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx. */
__device__ __forceinline__ float gelu_grad(float x) {
    float th = tanhf(GELU_K * (x + 0.044715f * x * x * x));
    float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

template <class T> struct op_gelu {
    T *out;
    const T *inp;
    template <int W> __device__ void apply(int64_t i) const {
        pk<W> x = load<W>(inp + i);
#pragma unroll
        for (int j = 0; j < W; j++) x.v[j] = gelu(x.v[j]);
        store<W>(out + i, x);
    }
};

/* Writes dinp = dout gelu'(inp). */
template <class T> struct op_gelu_backward {
    T *dinp;
    const T *inp, *dout;
    template <int W> __device__ void apply(int64_t i) const {
        const pk<W> x = load<W>(inp + i);
        pk<W> d = load<W>(dout + i);
#pragma unroll
        for (int j = 0; j < W; j++) d.v[j] = d.v[j] * gelu_grad(x.v[j]);
        store<W>(dinp + i, d);
    }
};

void cuda_gelu_forward(const cuda_ctx *x, cudaStream_t s, cuda_lp out, cuda_lp inp, int64_t n) {
    typed_one([&](auto *o, auto *in) { each_packed(x, s, n, aligned16(o, in), op_gelu{o, in}); }, out, inp);
}

void cuda_gelu_backward(const cuda_ctx *x, cudaStream_t s, cuda_lp dinp, cuda_lp inp, cuda_lp dout, int64_t n) {
    typed_one([&](auto *di, auto *in, auto *d) { each_packed(x, s, n, aligned16(di, in, d), op_gelu_backward{di, in, d}); },
              dinp, inp, dout);
}

template <class TO, class TA, class TB> struct op_add {
    TO *out;
    const TA *a;
    const TB *b;
    template <int W> __device__ void apply(int64_t i) const {
        pk<W> x = load<W>(a + i);
        const pk<W> y = load<W>(b + i);
#pragma unroll
        for (int j = 0; j < W; j++) x.v[j] += y.v[j];
        store<W>(out + i, x);
    }
};

void cuda_add(const cuda_ctx *x, cudaStream_t s, cuda_lp out, cuda_lp a, cuda_lp b, int64_t n) {
    typed([&](auto *o, auto *pa, auto *pb) { each_packed(x, s, n, aligned16(o, pa, pb), op_add{o, pa, pb}); }, out,
          a, b);
}

template <class T> struct op_scale {
    T *v;
    float alpha;
    template <int W> __device__ void apply(int64_t i) const {
        pk<W> x = load<W>(v + i);
#pragma unroll
        for (int j = 0; j < W; j++) x.v[j] *= alpha;
        store<W>(v + i, x);
    }
};

void cuda_scale(const cuda_ctx *x, cudaStream_t s, cuda_lp v, float alpha, int64_t n) {
    typed_one([&](auto *p) { each_packed(x, s, n, aligned16(p), op_scale{p, alpha}); }, v);
}

/* Element e = (row, head, pair i): x[i] = x[i] cos - x[i+H2] sin, x[i+H2] = x[i+H2] cos +
 * x[i] sin, with sin's sign flipped by dir = -1 (the backward). Rows are ld elements apart. A
 * pack never crosses a head (vec needs H2 and ld multiples of PACK). */
template <class TX> struct op_rope {
    TX *v;
    int64_t ld;
    const float *cos, *sin;
    int T, nh, H2, pos0;
    float dir;
    template <int W> __device__ void apply(int64_t e) const {
        const int64_t i = e % H2, rh = e / H2, r = rh / nh;
        const int64_t p = pos0 + r % T;
        TX *x1 = v + r * ld + (rh - r * nh) * 2 * H2 + i, *x2 = x1 + H2;
        const pk<W> a = load<W>(x1), b = load<W>(x2), c = load<W>(cos + p * H2 + i), sn = load<W>(sin + p * H2 + i);
        pk<W> y1, y2;
#pragma unroll
        for (int j = 0; j < W; j++) {
            const float sj = dir * sn.v[j];
            y1.v[j] = a.v[j] * c.v[j] - b.v[j] * sj;
            y2.v[j] = b.v[j] * c.v[j] + a.v[j] * sj;
        }
        store<W>(x1, y1);
        store<W>(x2, y2);
    }
};

void cuda_rope(const cuda_ctx *x, cudaStream_t s, cuda_lp v, int64_t ld, const float *cos, const float *sin, int N,
               int T, int nh, int HS, int pos0, float dir) {
    const int H2 = HS / 2;
    typed_one(
        [&](auto *p) {
            each_packed(x, s, (int64_t)N * nh * H2, aligned16(p, cos, sin) && H2 % PACK == 0 && ld % PACK == 0,
                        op_rope{p, ld, cos, sin, T, nh, H2, pos0, dir});
        },
        v);
}

/* Element i of (rows, cols) arrays with row strides ldo, ldg, ldu; cols 0: flat arrays (every
 * stride the width), indexed by i itself. A pack never crosses a row (vec needs cols and the
 * strides multiples of PACK where cols is not 0). */
template <class T> struct op_swiglu {
    T *out;
    const T *gate, *up;
    int64_t cols, ldo, ldg, ldu;
    template <int W> __device__ void apply(int64_t i) const {
        const int64_t r = cols ? i / cols : 0, c = i - r * cols;
        pk<W> g = load<W>(gate + r * ldg + c);
        const pk<W> u = load<W>(up + r * ldu + c);
#pragma unroll
        for (int j = 0; j < W; j++) g.v[j] = g.v[j] / (1.0f + expf(-g.v[j])) * u.v[j];
        store<W>(out + r * ldo + c, g);
    }
};

/* silu'(g) = sig(g) (1 + g (1 - sig(g))); every input read before an output is written. */
template <class T> struct op_swiglu_backward {
    T *dgate, *dup;
    const T *dout, *gate, *up;
    template <int W> __device__ void apply(int64_t i) const {
        const pk<W> g = load<W>(gate + i), u = load<W>(up + i), d = load<W>(dout + i);
        pk<W> dg, du;
#pragma unroll
        for (int j = 0; j < W; j++) {
            float sg = 1.0f / (1.0f + expf(-g.v[j]));
            du.v[j] = d.v[j] * g.v[j] * sg;
            dg.v[j] = d.v[j] * u.v[j] * sg * (1.0f + g.v[j] * (1.0f - sg));
        }
        store<W>(dup + i, du);
        store<W>(dgate + i, dg);
    }
};

void cuda_swiglu_forward(const cuda_ctx *x, cudaStream_t s, cuda_lp out, int64_t ldo, cuda_lp gate, int64_t ldg,
                         cuda_lp up, int64_t ldu, int64_t rows, int64_t cols) {
    const bool flat = rows == 1 || (ldo == cols && ldg == cols && ldu == cols);
    const int64_t c = flat ? 0 : cols;
    const bool packs = flat || (cols % PACK == 0 && ldo % PACK == 0 && ldg % PACK == 0 && ldu % PACK == 0);
    typed_one(
        [&](auto *o, auto *g, auto *u) {
            each_packed(x, s, rows * cols, aligned16(o, g, u) && packs, op_swiglu{o, g, u, c, ldo, ldg, ldu});
        },
        out, gate, up);
}

void cuda_swiglu_backward(const cuda_ctx *x, cudaStream_t s, cuda_lp dgate, cuda_lp dup, cuda_lp dout,
                          cuda_lp gate, cuda_lp up, int64_t n) {
    typed_one(
        [&](auto *dg, auto *du, auto *d, auto *g, auto *u) {
            each_packed(x, s, n, aligned16(dg, du, d, g, u), op_swiglu_backward{dg, du, d, g, u});
        },
        dgate, dup, dout, gate, up);
}

/* out = inp mask / (1-p), the mask dropout_keep's (backend.h): the CPU's exactly. */
template <class TO, class TI> struct op_dropout {
    TO *out;
    const TI *inp;
    float p, sc;
    uint64_t seed;
    template <int W> __device__ void apply(int64_t i) const {
        pk<W> x = load<W>(inp + i);
#pragma unroll
        for (int j = 0; j < W; j++) x.v[j] = dropout_keep(seed, (uint64_t)(i + j), p) ? x.v[j] * sc : 0.0f;
        store<W>(out + i, x);
    }
};

void cuda_dropout(const cuda_ctx *x, cudaStream_t s, cuda_lp out, cuda_lp inp, int64_t n, float p, uint64_t seed) {
    typed(
        [&](auto *o, auto *in) {
            each_packed(x, s, n, aligned16(o, in), op_dropout{o, in, p, 1.0f / (1.0f - p), seed});
        },
        out, inp);
}

/* out = inp in out's dtype (a copy when the dtypes match). */
template <class TO, class TI> struct op_cast {
    TO *out;
    const TI *inp;
    template <int W> __device__ void apply(int64_t i) const { store<W>(out + i, load<W>(inp + i)); }
};

void cuda_cast(const cuda_ctx *x, cudaStream_t s, cuda_lp out, cuda_lp inp, int64_t n) {
    typed([&](auto *o, auto *in) { each_packed(x, s, n, aligned16(o, in), op_cast{o, in}); }, out, inp);
}

/* ---- loss ---- */

/* A running (max m, sum of e^(x - m)) pair: the online softmax's state. */
__device__ __forceinline__ void lse_add(float2 &a, float x) {
    if (x > a.x) {
        a.y = a.y * expf(a.x - x) + 1.0f;
        a.x = x;
    } else {
        a.y += expf(x - a.x);
    }
}

/* Two states merged (an empty state, max -inf, adds nothing). */
struct op_lse {
    __device__ float2 operator()(float2 a, float2 b) const {
        const float m = fmaxf(a.x, b.x);
        if (m == -INFINITY) return a;
        return make_float2(m, a.y * expf(a.x - m) + b.y * expf(b.x - m));
    }
};

/* Per row, one pass for the (max, sum) state (online softmax), then one for the gradient:
 * lse = max + log sum e^(x - max); loss = lse - x[target]; dlogits = e^(x - max) dloss /
 * sum, minus dloss at the target (the CPU's d[j] * s - dloss), 0 in the padded columns.
 * Every element is read in the first pass, before the reduction's barrier, and x[target]
 * before it too, so dlogits may alias logits (each thread's second pass rewrites only what
 * it rereads). vec: 16-byte accesses (both rows aligned, Vp a multiple of PACK). */
template <class T>
__global__ void softmax_xent_kernel(float *losses, T *dlogits, const T *logits, const int *targets, int V, int64_t Vp,
                                    bool vec, float dloss) {
    const size_t row = blockIdx.x;
    const T *xr = logits + row * Vp;
    T *d = dlogits ? dlogits + row * Vp : NULL;
    const int tgt = targets[row];
    const float xt = tgt >= 0 ? to_f32(xr[tgt]) : 0.0f;
    float2 st = make_float2(-INFINITY, 0.0f);
    int j0 = 0;
    if (vec) {
        for (int k = threadIdx.x; k < V / PACK; k += blockDim.x) {
            const pk<PACK> x = load<PACK>(xr + (int64_t)k * PACK);
#pragma unroll
            for (int u = 0; u < PACK; u++) lse_add(st, x.v[u]);
        }
        j0 = V / PACK * PACK;
    }
    for (int j = j0 + threadIdx.x; j < V; j += blockDim.x) lse_add(st, to_f32(xr[j]));
    st = block_reduce(st, op_lse());
    if (threadIdx.x == 0) losses[row] = tgt >= 0 ? st.x + logf(st.y) - xt : 0.0f;
    if (!d) return;
    const float mx = st.x, sc = tgt >= 0 ? dloss / st.y : 0.0f;
    const int W = vec ? PACK : 1;
    for (int64_t j = (int64_t)threadIdx.x * W; j < Vp; j += (int64_t)blockDim.x * W) {
        if (vec && j + PACK <= V) {
            const pk<PACK> x = load<PACK>(xr + j);
            pk<PACK> g;
#pragma unroll
            for (int u = 0; u < PACK; u++) g.v[u] = expf(x.v[u] - mx) * sc - (j + u == tgt ? dloss : 0.0f);
            store<PACK>(d + j, g);
        } else {
            for (int64_t u = j; u < j + W; u++)
                d[u] = from_f32<T>(u < V ? expf(to_f32(xr[u]) - mx) * sc - (u == tgt ? dloss : 0.0f) : 0.0f);
        }
    }
}

void cuda_softmax_xent(cudaStream_t s, float *losses, cuda_lp dlogits, cuda_lp logits, const int *targets, int N,
                       int V, int64_t Vp, float dloss) {
    typed_one(
        [&](auto *l, auto *d) {
            const bool vec = aligned16(l, d) && Vp % PACK == 0;
            softmax_xent_kernel<<<N, ROW_THREADS * 2, 0, s>>>(losses, d, l, targets, V, Vp, vec, dloss);
        },
        logits, dlogits);
    CUDA_CHECK_LAUNCH();
}

/* ---- reductions into one f64 ---- */

#define SUM_CHUNK 2048   /* elements staged in shared memory per round of sum_f64 */

/* *out += x[0] + x[1] + ... in index order, in double: the block stages a chunk in shared
 * memory (coalesced) and one thread adds it in order, so the bits are the host loop's. */
__global__ void sum_f64_f32(double *out, const float *v, int64_t n) {
    __shared__ float chunk[SUM_CHUNK];
    double acc = *out;
    for (int64_t i0 = 0; i0 < n; i0 += SUM_CHUNK) {
        const int k = n - i0 < SUM_CHUNK ? (int)(n - i0) : SUM_CHUNK;
        for (int j = threadIdx.x; j < k; j += blockDim.x) chunk[j] = v[i0 + j];
        __syncthreads();
        if (threadIdx.x == 0)
            for (int j = 0; j < k; j++) acc += chunk[j];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = acc;
}

void cuda_sum_f64(cudaStream_t s, double *out, const float *v, int64_t n) {
    sum_f64_f32<<<1, ROW_THREADS, 0, s>>>(out, v, n);
    CUDA_CHECK_LAUNCH();
}

#define SQ_UNROLL 8   /* independent loads in flight per thread */

/* Pass 1 of *out += sum of x^2 in double: block r sums the r-th contiguous slice (each thread
 * SQ_UNROLL elements a round at stride blockDim.x, then the block's tree) into part[r]. A
 * fixed grid and fixed trees: the same bits on every run. Enough blocks to fill the GPU:
 * one block took 46 ms over GPT-2's 124M gradients on an H200, one cluster of 8 still 1 ms. */
__global__ void sum_squares_part(double *part, const float *v, int64_t n) {
    const int64_t per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per, hi = lo + per < n ? lo + per : n;
    const int64_t bd = blockDim.x;
    double acc = 0;
    int64_t i = lo + threadIdx.x;
    for (; i + (SQ_UNROLL - 1) * bd < hi; i += SQ_UNROLL * bd) {
        float x[SQ_UNROLL];
#pragma unroll
        for (int u = 0; u < SQ_UNROLL; u++) x[u] = v[i + u * bd];
#pragma unroll
        for (int u = 0; u < SQ_UNROLL; u++) acc += (double)x[u] * x[u];
    }
    for (; i < hi; i += bd) acc += (double)v[i] * v[i];
    acc = block_reduce(acc, op_sum<double>());
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

/* Pass 2: *out += the parts, one per thread (blockDim.x a multiple of 32, at least n), added
 * by the block's tree. */
__global__ void sum_parts(double *out, const double *part, int n) {
    const double total = block_reduce(threadIdx.x < n ? part[threadIdx.x] : 0.0, op_sum<double>());
    if (threadIdx.x == 0) *out += total;
}

void cuda_sum_squares(const cuda_ctx *x, cudaStream_t s, double *out, const float *v, int64_t n) {
    sum_squares_part<<<CUDA_SQ_PARTS, 512, 0, s>>>(x->sq_part, v, n);
    CUDA_CHECK_LAUNCH();
    sum_parts<<<1, (CUDA_SQ_PARTS + 31) / 32 * 32, 0, s>>>(out, x->sq_part, CUDA_SQ_PARTS);
    CUDA_CHECK_LAUNCH();
}

/* ---- optimizer ---- */

/* torch.optim.AdamW, as cpu_adamw_range: one block per span (the whole model in one launch);
 * the clipping scale from the device's squared norm, with the host's formula in double. */
__global__ void adamw_spans_kernel(float *param, __nv_bfloat16 *lp, const float *grad, float *m, float *v,
                                   const backend_adamw_span *spans, const double *norm_sq, backend_adamw_hp hp,
                                   float c1, float c2) {
    const backend_adamw_span sp = spans[blockIdx.x];
    float scale = 1.0f;
    if (norm_sq && hp.grad_clip > 0) {
        const double norm = sqrt(*norm_sq);
        if (norm > hp.grad_clip) scale = (float)(hp.grad_clip / (norm + 1e-6));
    }
    const float wd = sp.decay ? hp.weight_decay : 0.0f;
    float *p = param + sp.param, *ms = m + sp.state, *vs = v + sp.state;
    const float *g = grad + sp.grad;
    __nv_bfloat16 *l = lp ? lp + sp.param : NULL;
    for (int64_t i = threadIdx.x; i < sp.count; i += blockDim.x) {
        const float gi = g[i] * scale;
        const float mi = hp.beta1 * ms[i] + (1.0f - hp.beta1) * gi;
        const float vi = hp.beta2 * vs[i] + (1.0f - hp.beta2) * gi * gi;
        ms[i] = mi;
        vs[i] = vi;
        const float pi = p[i];
        const float np = pi - hp.lr * (mi * c1 / (sqrtf(vi * c2) + hp.eps) + wd * pi);
        p[i] = np;
        if (l) l[i] = __float2bfloat16_rn(np);
    }
}

void cuda_adamw(cudaStream_t s, float *param, __nv_bfloat16 *lp, const float *grad, float *m, float *v,
                const backend_adamw_span *spans, int n, const double *norm_sq, const backend_adamw_hp *hp, float c1,
                float c2) {
    if (n == 0) return;
    adamw_spans_kernel<<<n, 512, 0, s>>>(param, lp, grad, m, v, spans, norm_sq, *hp, c1, c2);
    CUDA_CHECK_LAUNCH();
}
