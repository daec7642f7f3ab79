/* backend/cuda: bf16 products with few rows (M <= GEMV_MAX_ROWS), the products of a decode
 * step: C(M,N) = alpha A(M,K) B(N,K)^T + beta C (+ bias(N)), A and B bf16, C f32 or bf16.
 *
 * Such a product is bound by reading B (the weights) once: 2 N K bytes against 2 M N K
 * flops, under 8 flops a byte where an H200 needs about 200 to be arithmetic-bound. Tensor
 * cores gain nothing at M <= 8, so this is a plain kernel built to stream B at the memory's
 * rate: each block owns GEMV_COLS consecutive output columns (rows of B), its GEMV_WARPS
 * warps share K, each thread reading 16-byte units (8 bf16) of GEMV_COLS rows of B,
 * GEMV_UNROLL units each, all issued before the first is used, so every byte of B is read
 * once with wide, coalesced loads and enough of them in flight. A's rows (a few KB) come
 * through L1 and are reused across the block's columns in registers; B's loads are
 * marked streaming (__ldcs: read once, evict first) so they do not push A out of the caches.
 * The count to hold it to: Llama-3-8B's gate product (14336x4096, 117 MB of B) at 4.2 TB/s
 * is 28 us, a one-stream decode step's products (15.0 GB with the LM head) 3.6 ms.
 *
 * The same kernel takes the ops around a decode step's products, so that a layer runs
 * without separate norm and activation kernels (each a launch and a few us of latency at one
 * row): GLU (silu(gate) * up of B's two halves: backend.h linear_swiglu), ADD (C, the f32
 * residual stream, += the product rounded to bf16: linear_add) and NORM (A is the f32 stream
 * x and the product's input is RMSNorm(x) * weight: linear_rmsnorm; each block sums the
 * squares of the x it reads anyway and scales its sums by the row's 1/rms at the end, so no
 * pass of its own over x).
 *
 * Across the boundary between kernels, where the memory would idle: a product's last blocks,
 * their loads done, ask L2 for the first few MB after B -- in a model's weights (devw's plan
 * order) the next product's first rows -- so the next launch starts on bytes fetched while this
 * tail left the memory half idle (+1.2% on a one-stream 8B step: GEMV_PF_BYTES). And a product
 * recorded in a graph (backend.h: a graph's work writes no product's weights) is launched early
 * (cuda_launch): its blocks issue their first loads of B, then wait for the kernel ahead
 * (pdl_wait) before reading A or C. Behind a product that is as the kernel ahead ends; behind
 * the decode attention (a few blocks that release their dependents at their start) while it
 * runs, so o_proj's first half of B streams during the attention (2026-12-03, 8B one stream:
 * 252.8 tokens/s against 249.2; releasing every product's dependents at its start as well lost
 * 0.6% on 2026-12-02).
 *
 * Each thread sums its units in order in f32, the warp adds its lanes by a fixed butterfly
 * and the block adds its warps in index order: no atomics, no workspace, the same bits run
 * to run, and a row's bits do not depend on M among the products that come here (at M > 1
 * only the small ones: GEMV_MAX_SMALL_B). Letters: M rows of A and C, N columns of C (rows of B), K the summed dimension. */
#include "backend/cuda/cuda_impl.cuh"

#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;

#define GEMV_MAX_ROWS 8    /* the most rows of A a product may have here */
/* Above one row, only products of B up to this many elements come here: measured on an H200
 * (2026-12-02, Llama-3-8B shapes), at M = 4 cuBLASLt streamed the 33-117 MB weights faster
 * (2.1-3.5 TB/s against 2.0-3.1) while this kernel took the 8 MB k/v products in 0.63 of
 * its time; at M = 1 this kernel was faster on every shape (1.03-1.78x). */
#define GEMV_MAX_SMALL_B ((int64_t)1 << 23)
#define GEMV_COLS 4        /* output columns per block */
#define GEMV_WARPS 4       /* warps per block, splitting K */
#define GEMV_THREADS (GEMV_WARPS * 32)
#define GEMV_UNROLL 2      /* 16-byte units of each column a thread loads before using them */
#define GEMV_FULL 0xffffffffu
/* The L2 prefetch of the bytes after B by a product's last blocks (gemv_prefetch_next): swept
 * on an H200, Llama-3-8B shapes, one stream (2026-12-03, decode tokens/s, none 248.2): 1, 2, 3,
 * 4, 6 MiB over the last 128 blocks 249.8, 250.7, 251.3, 251.2, 249.8; 8 MiB 246.9 and 16 MiB
 * 237.0 over 512 (the prefetch then competing with the product's own loads); 3 MiB over 256,
 * 512, 1024 blocks 251.2, 251.0, 250.3. */
#define GEMV_PF_BYTES ((int64_t)3 << 20)
#define GEMV_PF_BLOCKS 128

/* What a block does with its sums: store alpha s (+ beta C) (+ bias), the GLU of a gate and
 * an up column, or add s (+ bias) rounded to bf16 into the f32 C. */
enum gemv_epilogue { GEMV_STORE, GEMV_GLU, GEMV_ADD };

/* A launch's operands; A is bf16, or, with NORM, the f32 stream x with norm the weight (K). */
struct gemv_args {
    void *C;
    int64_t ldc;
    const void *A;
    int64_t lda;
    const bf16 *B;
    int64_t ldb;
    const float *bias, *norm;
    int N, K8;
    float alpha, beta, eps;
    const char *pf;          /* the bytes after B (the next product's weights), or NULL */
    unsigned pf_chunk;       /* bytes of pf each of the last pf_blocks blocks prefetches into L2 */
    int pf_blocks;
};

/* The last g.pf_blocks blocks of the grid, their loads of B done, ask L2 for their chunk of
 * the bytes that follow B: in a model's weights (devw's plan order) the next product's first
 * rows, fetched while this product's tail and the next launch leave the memory idle. */
__device__ __forceinline__ void gemv_prefetch_next(const gemv_args &g) {
    const int first = (int)gridDim.x - g.pf_blocks;
    if (!g.pf || threadIdx.x != 0 || (int)blockIdx.x < first) return;
    const char *p = g.pf + (size_t)(blockIdx.x - first) * g.pf_chunk;
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(g.pf_chunk) : "memory");
}

/* a = row m's unit k (elements 8k..8k+7) of the product's input: A's bf16, or with NORM
 * x * norm, x's squares added to ss. */
template <bool NORM>
__device__ __forceinline__ void gemv_input(float (&a)[8], float &ss, const gemv_args &g, int m, int k) {
    if constexpr (NORM) {
        const float4 *x = reinterpret_cast<const float4 *>((const float *)g.A + m * g.lda) + 2 * k;
        const float4 *w = reinterpret_cast<const float4 *>(g.norm) + 2 * k;
        const float4 x0 = x[0], x1 = x[1], w0 = __ldg(w), w1 = __ldg(w + 1);
        const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
        const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
        for (int j = 0; j < 8; j++) ss = fmaf(xv[j], xv[j], ss), a[j] = xv[j] * wv[j];
    } else {
        const int4 xv = reinterpret_cast<const int4 *>((const bf16 *)g.A + m * g.lda)[k];
        const __nv_bfloat162 *x2 = reinterpret_cast<const __nv_bfloat162 *>(&xv);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 f = __bfloat1622float2(x2[j]);
            a[2 * j] = f.x, a[2 * j + 1] = f.y;
        }
    }
}

/* acc[m][c] += the input's unit k of row m . w[c] (the 16-byte units of B's columns at k). */
template <int M, bool NORM>
__device__ __forceinline__ void gemv_unit(float (&acc)[M][GEMV_COLS], float (&ss)[M], const int4 (&w)[GEMV_COLS],
                                          const gemv_args &g, int k) {
#pragma unroll
    for (int m = 0; m < M; m++) {
        float a[8];
        gemv_input<NORM>(a, ss[m], g, m, k);
#pragma unroll
        for (int c = 0; c < GEMV_COLS; c++) {
            const __nv_bfloat162 *w2 = reinterpret_cast<const __nv_bfloat162 *>(&w[c]);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 b = __bfloat1622float2(w2[j]);
                acc[m][c] = fmaf(a[2 * j], b.x, acc[m][c]);
                acc[m][c] = fmaf(a[2 * j + 1], b.y, acc[m][c]);
            }
        }
    }
}

/* One block per GEMV_COLS columns [n0, n0 + GEMV_COLS) of C (the last block's columns past
 * N re-read column N - 1 and store nothing). K8 = K / 8 units per row; A, B and their row
 * strides 16-byte aligned (cuda_gemv checks). bias: NULL or (N) f32, added after alpha and
 * beta. GLU: B is a gate's N rows then an up's N rows, and the block owns GEMV_COLS / 2
 * columns n of C = silu(g) * u of the products' columns g = n and u = N + n, each rounded to
 * TC first as the product alone would leave them (alpha 1, beta 0, no bias), the activation
 * then swiglu_forward's (cuda_ops.cu op_swiglu): the same bits as the two ops. ADD: C f32,
 * C += bf16(alpha s + bias), an lp product then add's f32 sum (the same bits). NORM: every
 * sum times 1 / sqrt(mean(x^2) + eps) of its row (norm_forward_kernel's rstd). */
template <int M, class TC, gemv_epilogue EP, bool NORM>
__global__ void __launch_bounds__(GEMV_THREADS) gemv_kernel(const gemv_args g) {
    constexpr int OUT = EP == GEMV_GLU ? GEMV_COLS / 2 : GEMV_COLS;   /* columns of C a block writes */
    constexpr int SUMS = M * GEMV_COLS + (NORM ? M : 0);               /* a warp's sums: products, squares */
    __shared__ float part[GEMV_WARPS][SUMS];
    const int N = g.N, K8 = g.K8;
    const int n0 = blockIdx.x * OUT, t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int4 *col[GEMV_COLS];
#pragma unroll
    for (int c = 0; c < GEMV_COLS; c++)
        col[c] = reinterpret_cast<const int4 *>(
            g.B + ((EP == GEMV_GLU && c >= OUT ? N : 0) + (int64_t)min(n0 + c % OUT, N - 1)) * g.ldb);
    float acc[M][GEMV_COLS], ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) {
        ss[m] = 0.0f;
#pragma unroll
        for (int c = 0; c < GEMV_COLS; c++) acc[m][c] = 0.0f;
    }

    int k = t;
    for (; k + (GEMV_UNROLL - 1) * GEMV_THREADS < K8; k += GEMV_UNROLL * GEMV_THREADS) {
        int4 w[GEMV_UNROLL][GEMV_COLS];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++)
#pragma unroll
            for (int c = 0; c < GEMV_COLS; c++) w[u][c] = __ldcs(col[c] + k + u * GEMV_THREADS);
        if (k == t) pdl_wait();   /* launched early: B's first units in flight before the kernel ahead ends */
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) gemv_unit<M, NORM>(acc, ss, w[u], g, k + u * GEMV_THREADS);
    }
    if (k == t) pdl_wait();   /* no round above */
    for (; k < K8; k += GEMV_THREADS) {   /* the units left over, one at a time */
        int4 w[GEMV_COLS];
#pragma unroll
        for (int c = 0; c < GEMV_COLS; c++) w[c] = __ldcs(col[c] + k);
        gemv_unit<M, NORM>(acc, ss, w, g, k);
    }
    gemv_prefetch_next(g);

#pragma unroll
    for (int m = 0; m < M; m++) {
#pragma unroll
        for (int c = 0; c < GEMV_COLS; c++) {
            float v = acc[m][c];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(GEMV_FULL, v, o);
            if (lane == 0) part[warp][m * GEMV_COLS + c] = v;
        }
        if constexpr (NORM) {
            float v = ss[m];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(GEMV_FULL, v, o);
            if (lane == 0) part[warp][M * GEMV_COLS + m] = v;
        }
    }
    __syncthreads();
    if (t >= M * OUT) return;
    const int m = t / OUT, j = t % OUT, n = n0 + j;
    if (n >= N) return;
    float r = 1.0f;   /* the row's 1 / rms under NORM */
    if constexpr (NORM) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; w++) s += part[w][M * GEMV_COLS + m];
        r = 1.0f / sqrtf(s / (8 * K8) + g.eps);
    }
    TC *out = (TC *)g.C + m * g.ldc + n;
    if constexpr (EP == GEMV_GLU) {
        float gs = 0.0f, us = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; w++) gs += part[w][m * GEMV_COLS + j], us += part[w][m * GEMV_COLS + OUT + j];
        gs = to_f32(from_f32<TC>(r * gs)), us = to_f32(from_f32<TC>(r * us));
        *out = from_f32<TC>(gs / (1.0f + expf(-gs)) * us);
    } else {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; w++) s += part[w][t];
        float v = g.alpha * (r * s);
        if (g.beta != 0.0f) v += g.beta * to_f32(*out);
        if (g.bias) v += g.bias[n];
        if constexpr (EP == GEMV_ADD) *out += to_f32(from_f32<bf16>(v));
        else *out = from_f32<TC>(v);
    }
}

/* Sets g's prefetch: GEMV_PF_BYTES after B (rows rows of K elements, ldb apart), within B's
 * allocation, over the last GEMV_PF_BLOCKS blocks of a grid of grid blocks. */
static void gemv_set_prefetch(gemv_args &g, int rows, int K, unsigned grid) {
    const char *end = (const char *)(g.B + (int64_t)(rows - 1) * g.ldb + K);
    end = (const char *)(((uintptr_t)end + 15) & ~(uintptr_t)15);
    const char *stop = cuda_alloc_end(g.B);
    if (!stop || stop <= end) return;
    const int nb = (int)grid < GEMV_PF_BLOCKS ? (int)grid : GEMV_PF_BLOCKS;
    const int64_t bytes = stop - end < GEMV_PF_BYTES ? stop - end : GEMV_PF_BYTES;
    const unsigned chunk = (unsigned)(bytes / nb) & ~15u;
    if (chunk == 0) return;
    g.pf = end, g.pf_chunk = chunk, g.pf_blocks = nb;
}

/* The instantiation for g's M rows (1..GEMV_MAX_ROWS), C's type, the epilogue and NORM. */
template <class TC, gemv_epilogue EP, bool NORM>
static void gemv_run(cudaStream_t s, const gemv_args &g, int M) {
    constexpr int OUT = EP == GEMV_GLU ? GEMV_COLS / 2 : GEMV_COLS;
    void (*kernel)(gemv_args) = NULL;
    switch (M) {
#define GEMV_CASE(R) \
    case R: kernel = gemv_kernel<R, TC, EP, NORM>; break;
        GEMV_CASE(1) GEMV_CASE(2) GEMV_CASE(3) GEMV_CASE(4) GEMV_CASE(5) GEMV_CASE(6) GEMV_CASE(7) GEMV_CASE(8)
#undef GEMV_CASE
    default: SK_ASSERT(!"gemv_run: M out of range");
    }
    const unsigned grid = (unsigned)((g.N + OUT - 1) / OUT);
    gemv_args a = g;
    gemv_set_prefetch(a, EP == GEMV_GLU ? 2 * g.N : g.N, 8 * g.K8, grid);
    cuda_launch(kernel, dim3(grid), dim3(GEMV_THREADS), 0, s, cuda_recording(s), a);
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* Whether the kernel takes a product of B (N,K) with M rows of A at these strides and
 * addresses (A's strides counted in bf16 elements, or f32 ones with NORM). */
static bool gemv_fits(const void *A, int64_t lda, const void *B, int64_t ldb, int M, int N, int K) {
    return M >= 1 && M <= GEMV_MAX_ROWS && (M == 1 || (int64_t)N * K <= GEMV_MAX_SMALL_B) && N >= 1 && K >= 8 &&
           K % 8 == 0 && lda % 8 == 0 && ldb % 8 == 0 && aligned16(A) && aligned16(B);
}

static gemv_args gemv_make(void *C, int64_t ldc, const void *A, int64_t lda, const void *B, int64_t ldb,
                           const float *bias, int N, int K, float alpha, float beta) {
    gemv_args g = {};
    g.C = C, g.ldc = ldc, g.A = A, g.lda = lda, g.B = (const bf16 *)B, g.ldb = ldb, g.bias = bias;
    g.N = N, g.K8 = K / 8, g.alpha = alpha, g.beta = beta;
    return g;
}

bool cuda_gemv(cudaStream_t s, cuda_lp C, int64_t ldc, const void *A, int64_t lda, bool ta, const void *B,
               int64_t ldb, bool tb, const float *bias, int M, int N, int K, float alpha, float beta) {
    if (ta || !tb || !gemv_fits(A, lda, B, ldb, M, N, K)) return false;
    const gemv_args g = gemv_make(C.p, ldc, A, lda, B, ldb, bias, N, K, alpha, beta);
    if (C.bf16) gemv_run<bf16, GEMV_STORE, false>(s, g, M);
    else gemv_run<float, GEMV_STORE, false>(s, g, M);
    return true;
}

bool cuda_gemv_swiglu(cudaStream_t s, cuda_lp C, int64_t ldc, const void *A, int64_t lda, const void *B,
                      int64_t ldb, int M, int F, int K) {
    if (!gemv_fits(A, lda, B, ldb, M, 2 * F, K)) return false;
    const gemv_args g = gemv_make(C.p, ldc, A, lda, B, ldb, NULL, F, K, 1.0f, 0.0f);
    if (C.bf16) gemv_run<bf16, GEMV_GLU, false>(s, g, M);
    else gemv_run<float, GEMV_GLU, false>(s, g, M);
    return true;
}

bool cuda_gemv_add(cudaStream_t s, float *C, int64_t ldc, const void *A, int64_t lda, const void *B, int64_t ldb,
                   const float *bias, int M, int N, int K) {
    if (!gemv_fits(A, lda, B, ldb, M, N, K)) return false;
    gemv_run<float, GEMV_ADD, false>(s, gemv_make(C, ldc, A, lda, B, ldb, bias, N, K, 1.0f, 0.0f), M);
    return true;
}

bool cuda_gemv_rmsnorm_fits(const float *X, int64_t ldx, const float *norm, const void *B, int64_t ldb, bool glu, int M,
                            int N, int K) {
    return aligned16(norm) && gemv_fits(X, ldx, B, ldb, M, glu ? 2 * N : N, K);
}

bool cuda_gemv_rmsnorm(cudaStream_t s, cuda_lp C, int64_t ldc, const float *X, int64_t ldx, const float *norm,
                       float eps, const void *B, int64_t ldb, bool glu, int M, int N, int K) {
    if (!C.bf16 || !cuda_gemv_rmsnorm_fits(X, ldx, norm, B, ldb, glu, M, N, K)) return false;
    gemv_args g = gemv_make(C.p, ldc, X, ldx, B, ldb, NULL, N, K, 1.0f, 0.0f);
    g.norm = norm, g.eps = eps;
    if (glu) gemv_run<bf16, GEMV_GLU, true>(s, g, M);
    else gemv_run<bf16, GEMV_STORE, true>(s, g, M);
    return true;
}
