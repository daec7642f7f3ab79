/* backend/cuda: bf16 products with few rows (M <= GEMV_MAX_ROWS), the products of a decode
 * step: C(M,N) = alpha A(M,K) B(N,K)^T + beta C (+ bias(N)), A and B bf16, C f32 or bf16.
 *
 * Such a product is bound by reading B (the weights) once: 2 N K bytes against 2 M N K
 * flops, under 8 flops a byte where an H200 needs about 200 to be arithmetic-bound. Tensor
 * cores gain nothing at M <= 8, so this is a plain kernel built to stream B at the memory's
 * rate. A decode step's products are small (Llama-3-8B's o product, 34 MB, is ~8 us at the
 * memory's rate), so what costs is each launch's ramp and tail: the grid is persistent
 * (GEMV_BLOCKS_PER_SM blocks per multiprocessor, their registers bounded so that all are
 * resident from the start, none launched later), each warp owns groups of COLS consecutive output columns (rows of B), taking the
 * groups warp, warp + warps, ... (their counts differ by at most one: a balanced tail), and
 * streams them as one run of steps: a step is UNROLL 16-byte units (8 bf16) of each of the
 * group's columns per lane, the warp's 32 lanes side by side (512 contiguous bytes per
 * column and unit), and the loads of step s + 1 are issued before step s is used, across group
 * boundaries, so each warp keeps up to two steps in flight without a gap. B's loads skip L1
 * (read once); A's rows (a few KB) come through L1 and serve the group's columns from
 * registers (plain loads: see gemv_step). The count to hold it to: a one-stream Llama-3-8B
 * decode step's products (15.0 GB with the LM head) at 4.2 TB/s are 3.6 ms.
 *
 * Programmatic dependent launch (pdl, Hopper): the kernel may start while the kernel before
 * it in the stream still runs. Its first step's loads and the L2 prefetch of the PRE steps
 * after it read only B (weights: nothing in a step writes them), then griddepcontrol.wait blocks until that kernel has completed and its
 * writes are visible; only after it does the kernel read A, C or the bias, or write C. The
 * kernels that precede products in a decode step let it start early
 * (griddepcontrol.launch_dependents: cuda_pdl_trigger in cuda_impl.cuh).
 *
 * Each lane sums its units in order of k (units lane, lane + 32, ... of the row) in f32,
 * whatever COLS and UNROLL are; the warp adds its lanes by a fixed butterfly: no atomics, no
 * workspace, the same bits run to run, and a row's bits do not depend on M among the products
 * that come here (at M > 1 only the small ones: GEMV_MAX_SMALL_B). Letters: M rows of A and
 * C, N columns of C (rows of B), K the summed dimension, K8 = K / 8 its 16-byte units. */
#include "backend/cuda/cuda_impl.cuh"

#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

#define GEMV_MAX_ROWS 8    /* the most rows of A a product may have here */
/* Above one row, only products of B up to this many elements come here: measured on an H200
 * (2026-12-02, Llama-3-8B shapes) with this kernel's previous form (a block of 4 warps per 4
 * columns, K split over the warps), at M = 4 cuBLASLt streamed the 33-117 MB weights faster
 * (2.1-3.5 TB/s against 2.0-3.1) while that kernel took the 8 MB k/v products in 0.63 of
 * cuBLASLt's time; at M = 1 it was faster on every shape (1.03-1.78x). Not yet measured again. */
#define GEMV_MAX_SMALL_B ((int64_t)1 << 23)
#define GEMV_WARPS 4          /* warps per block */
#define GEMV_THREADS (GEMV_WARPS * 32)
#define GEMV_BLOCKS_PER_SM 4  /* the persistent grid's blocks per multiprocessor: 16 warps, each
                               * up to two steps (8 KB at M = 1) in flight, ~128 KB per SM where
                               * Little's law asks ~26 KB (4.8 TB/s x ~700 ns over 132 SMs) */
#define GEMV_FULL 0xffffffffu

/* Columns per warp group and units per lane and column in a step, by M: at one row two
 * columns of four units (8 loads of 16 B in flight per lane and step); above, four columns
 * share each unit of A's M rows, one unit each (the registers of M x 4 sums). PRE: steps
 * after the first whose weights a warp asks into L2 (prefetch) before it waits for the
 * previous kernel, so that more of the product streams while that kernel runs (under pdl). */
template <int M> struct gemv_shape {
    static constexpr int COLS = M == 1 ? 2 : 4, UNROLL = M == 1 ? 4 : 1, PRE = 1;
};

/* 16 bytes of B, not kept in L1 (read once; non-coherent: nothing writes B while a product runs). */
static __device__ __forceinline__ int4 gemv_ld_b(const int4 *p) {
    int4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* Step `chunk` of the group at column n0: w[u][c] = unit chunk * 32 * U + u * 32 + lane of
 * column min(n0 + c, N - 1) (columns past N re-read N - 1 and store nothing), zero past K8;
 * PF: the same units asked into L2 instead (w untouched). */
template <bool PF, int COLS, int U>
static __device__ __forceinline__ void gemv_load(int4 (&w)[U][COLS], const bf16 *B, int64_t ldb, int N, int K8, int n0,
                                                 int chunk, int lane) {
#pragma unroll
    for (int c = 0; c < COLS; c++) {
        const int4 *col = reinterpret_cast<const int4 *>(B + (int64_t)min(n0 + c, N - 1) * ldb);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int k = (chunk * U + u) * 32 + lane;
            if constexpr (PF) {
                if (k < K8) asm volatile("prefetch.global.L2 [%0];" ::"l"(col + k));
            } else {
                w[u][c] = k < K8 ? gemv_ld_b(col + k) : make_int4(0, 0, 0, 0);
            }
        }
    }
}

/* acc[m][c] += A row m's units k0 + 32 u . w[u][c], in order of u, units past K8 skipped;
 * A's units are all loaded before the first is used, by coherent loads (cached in L1 all
 * the same): under programmatic dependent launch the kernel before this one writes A while
 * this grid runs, so the read-only path (ld.global.nc), whose data must not change during the
 * grid's lifetime, is only for B. */
template <int M, int COLS, int U>
static __device__ __forceinline__ void gemv_step(float (&acc)[M][COLS], const int4 (&w)[U][COLS], const bf16 *A,
                                                 int64_t lda, int K8, int k0) {
    int4 xv[U][M];
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int m = 0; m < M; m++)
            xv[u][m] = k0 + u * 32 < K8 ? reinterpret_cast<const int4 *>(A + m * lda)[k0 + u * 32]
                                        : make_int4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (k0 + u * 32 >= K8) break;
#pragma unroll
        for (int m = 0; m < M; m++) {
            const __nv_bfloat162 *x2 = reinterpret_cast<const __nv_bfloat162 *>(&xv[u][m]);
#pragma unroll
            for (int c = 0; c < COLS; c++) {
                const __nv_bfloat162 *w2 = reinterpret_cast<const __nv_bfloat162 *>(&w[u][c]);
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const float2 a = __bfloat1622float2(x2[j]), b = __bfloat1622float2(w2[j]);
                    acc[m][c] = fmaf(a.x, b.x, acc[m][c]);
                    acc[m][c] = fmaf(a.y, b.y, acc[m][c]);
                }
            }
        }
    }
}

/* The group at column n0 done: the lanes' sums added by butterfly (every lane gets them),
 * lane m * COLS + c writes C[m][n0 + c] = alpha sum (+ beta C) (+ bias) when n0 + c < N;
 * acc is zeroed for the next group. */
template <int M, int COLS, class TC>
static __device__ __forceinline__ void gemv_store(float (&acc)[M][COLS], TC *C, int64_t ldc, const float *bias, int N,
                                                  int n0, int lane, float alpha, float beta) {
    float mine = 0.0f;
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int c = 0; c < COLS; c++) {
            float v = acc[m][c];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(GEMV_FULL, v, o);
            if (lane == m * COLS + c) mine = v;
            acc[m][c] = 0.0f;
        }
    const int m = lane / COLS, n = n0 + lane % COLS;
    if (m >= M || n >= N) return;
    float v = alpha * mine;
    TC *out = C + m * ldc + n;
    if (beta != 0.0f) v += beta * to_f32(*out);
    if (bias) v += bias[n];
    *out = from_f32<TC>(v);
}

/* The persistent grid's kernel (the top comment): K8 = K / 8 units per row; A, B and their
 * row strides 16-byte aligned (cuda_gemv checks). bias: NULL or (N) f32, added after alpha
 * and beta. Every thread passes griddepcontrol.wait before it reads A, C or bias (a no-op
 * unless launched with programmatic serialization), also warps without a group, so the grid
 * never completes before the kernel it waits for. */
template <int M, class TC, int COLS, int U, int PRE>
__global__ void __launch_bounds__(GEMV_THREADS, GEMV_BLOCKS_PER_SM)
    gemv_kernel(TC *C, int64_t ldc, const bf16 *A, int64_t lda, const bf16 *B, int64_t ldb, const float *bias, int N,
                int K8, float alpha, float beta) {
    static_assert(M * COLS <= 32, "a lane stores each sum of a group");
    const int lane = threadIdx.x & 31, warps = gridDim.x * GEMV_WARPS;
    const int warp = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    const int groups = (N + COLS - 1) / COLS, chunks = (K8 + 32 * U - 1) / (32 * U);
    const int steps = warp < groups ? ((groups - 1 - warp) / warps + 1) * chunks : 0;
    int4 w[U][COLS];
    if (steps > 0) gemv_load<false>(w, B, ldb, N, K8, warp * COLS, 0, lane);
#pragma unroll
    for (int p = 1; p <= PRE; p++)
        if (p < steps) gemv_load<true>(w, B, ldb, N, K8, (warp + p / chunks * warps) * COLS, p % chunks, lane);
    cuda_pdl_wait();
    float acc[M][COLS];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int c = 0; c < COLS; c++) acc[m][c] = 0.0f;
    int g = warp, chunk = 0;
    for (int s = 0; s < steps; s++) {
        int4 cur[U][COLS];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int c = 0; c < COLS; c++) cur[u][c] = w[u][c];
        const int next_g = chunk + 1 < chunks ? g : g + warps, next_chunk = chunk + 1 < chunks ? chunk + 1 : 0;
        if (s + 1 < steps) gemv_load<false>(w, B, ldb, N, K8, next_g * COLS, next_chunk, lane);
        gemv_step<M, COLS, U>(acc, cur, A, lda, K8, chunk * 32 * U + lane);
        if (chunk == chunks - 1) gemv_store<M, COLS, TC>(acc, C, ldc, bias, N, g * COLS, lane, alpha, beta);
        g = next_g, chunk = next_chunk;
    }
}

/* Launches gemv_kernel<M, TC, COLS, U, PRE> on a persistent grid of at most n_sm * bps blocks
 * (fewer when N has fewer groups; bps above GEMV_BLOCKS_PER_SM may not all be resident); pdl:
 * with programmatic stream serialization (the kernel waits itself). */
template <int M, class TC, int COLS, int U, int PRE>
static void gemv_launch(cudaStream_t s, int n_sm, int bps, bool pdl, TC *C, int64_t ldc, const bf16 *A, int64_t lda,
                        const bf16 *B, int64_t ldb, const float *bias, int N, int K, float alpha, float beta) {
    const int64_t groups = (N + COLS - 1) / COLS, need = (groups + GEMV_WARPS - 1) / GEMV_WARPS,
                  cap = (int64_t)n_sm * bps;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)(need < cap ? need : cap));
    cfg.blockDim = dim3(GEMV_THREADS);
    cfg.stream = s;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, gemv_kernel<M, TC, COLS, U, PRE>, C, ldc, A, lda, B, ldb, bias, N, K / 8, alpha,
                                  beta));
}

/* The instantiation for M (1..GEMV_MAX_ROWS) rows and C's type. */
template <class TC>
static void gemv_rows(const cuda_ctx *x, cudaStream_t s, TC *C, int64_t ldc, const bf16 *A, int64_t lda, const bf16 *B,
                      int64_t ldb, const float *bias, int M, int N, int K, float alpha, float beta) {
    switch (M) {
#define GEMV_CASE(R)                                                                                    \
    case R:                                                                                             \
        gemv_launch<R, TC, gemv_shape<R>::COLS, gemv_shape<R>::UNROLL, gemv_shape<R>::PRE>(               \
            s, x->n_sm, GEMV_BLOCKS_PER_SM, x->pdl, C, ldc, A, lda, B, ldb, bias, N, K, alpha, beta);     \
        break;
        GEMV_CASE(1) GEMV_CASE(2) GEMV_CASE(3) GEMV_CASE(4) GEMV_CASE(5) GEMV_CASE(6) GEMV_CASE(7) GEMV_CASE(8)
#undef GEMV_CASE
    default: SK_ASSERT(!"gemv_rows: M out of range");
    }
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

bool cuda_gemv(const cuda_ctx *x, cudaStream_t s, cuda_lp C, int64_t ldc, const void *A, int64_t lda, bool ta,
               const void *B, int64_t ldb, bool tb, const float *bias, int M, int N, int K, float alpha, float beta) {
    if (ta || !tb || M < 1 || M > GEMV_MAX_ROWS || (M > 1 && (int64_t)N * K > GEMV_MAX_SMALL_B) || N < 1 || K < 8 ||
        K % 8 || lda % 8 || ldb % 8 || !aligned16(A) || !aligned16(B))
        return false;
    const bf16 *a = (const bf16 *)A, *b = (const bf16 *)B;
    if (C.bf16) gemv_rows(x, s, (bf16 *)C.p, ldc, a, lda, b, ldb, bias, M, N, K, alpha, beta);
    else gemv_rows(x, s, (float *)C.p, ldc, a, lda, b, ldb, bias, M, N, K, alpha, beta);
    return true;
}
