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
 * through L1 (__ldg) and are reused across the block's columns in registers; B's loads are
 * marked streaming (__ldcs: read once, evict first) so they do not push A out of the caches.
 * The count to hold it to: Llama-3-8B's gate product (14336x4096, 117 MB of B) at 4.2 TB/s
 * is 28 us, a one-stream decode step's products (15.0 GB with the LM head) 3.6 ms.
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

/* acc[m][c] += A row m's unit k (8 bf16 at element 8k) . w[c]: the 16-byte units of B's
 * columns at the same k. */
template <int M>
__device__ __forceinline__ void gemv_unit(float (&acc)[M][GEMV_COLS], const int4 (&w)[GEMV_COLS], const bf16 *A,
                                          int64_t lda, int k) {
#pragma unroll
    for (int m = 0; m < M; m++) {
        const int4 xv = __ldg(reinterpret_cast<const int4 *>(A + m * lda) + k);
        const __nv_bfloat162 *x2 = reinterpret_cast<const __nv_bfloat162 *>(&xv);
#pragma unroll
        for (int c = 0; c < GEMV_COLS; c++) {
            const __nv_bfloat162 *w2 = reinterpret_cast<const __nv_bfloat162 *>(&w[c]);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 a = __bfloat1622float2(x2[j]), b = __bfloat1622float2(w2[j]);
                acc[m][c] = fmaf(a.x, b.x, acc[m][c]);
                acc[m][c] = fmaf(a.y, b.y, acc[m][c]);
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
 * then swiglu_forward's (cuda_ops.cu op_swiglu): the same bits as the two ops. */
template <int M, class TC, bool GLU>
__global__ void __launch_bounds__(GEMV_THREADS) gemv_kernel(TC *C, int64_t ldc, const bf16 *A, int64_t lda,
                                                            const bf16 *B, int64_t ldb, const float *bias, int N,
                                                            int K8, float alpha, float beta) {
    constexpr int OUT = GLU ? GEMV_COLS / 2 : GEMV_COLS;   /* columns of C a block writes */
    __shared__ float part[GEMV_WARPS][M * GEMV_COLS];
    const int n0 = blockIdx.x * OUT, t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int4 *col[GEMV_COLS];
#pragma unroll
    for (int c = 0; c < GEMV_COLS; c++)
        col[c] = reinterpret_cast<const int4 *>(B + ((GLU && c >= OUT ? N : 0) + (int64_t)min(n0 + c % OUT, N - 1)) *
                                                        ldb);
    float acc[M][GEMV_COLS];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int c = 0; c < GEMV_COLS; c++) acc[m][c] = 0.0f;

    int k = t;
    for (; k + (GEMV_UNROLL - 1) * GEMV_THREADS < K8; k += GEMV_UNROLL * GEMV_THREADS) {
        int4 w[GEMV_UNROLL][GEMV_COLS];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++)
#pragma unroll
            for (int c = 0; c < GEMV_COLS; c++) w[u][c] = __ldcs(col[c] + k + u * GEMV_THREADS);
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) gemv_unit<M>(acc, w[u], A, lda, k + u * GEMV_THREADS);
    }
    for (; k < K8; k += GEMV_THREADS) {   /* the units left over, one at a time */
        int4 w[GEMV_COLS];
#pragma unroll
        for (int c = 0; c < GEMV_COLS; c++) w[c] = __ldcs(col[c] + k);
        gemv_unit<M>(acc, w, A, lda, k);
    }

#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int c = 0; c < GEMV_COLS; c++) {
            float v = acc[m][c];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(GEMV_FULL, v, o);
            if (lane == 0) part[warp][m * GEMV_COLS + c] = v;
        }
    __syncthreads();
    if (t >= M * OUT) return;
    const int m = t / OUT, j = t % OUT, n = n0 + j;
    if (n >= N) return;
    TC *out = C + m * ldc + n;
    if constexpr (GLU) {
        float g = 0.0f, u = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; w++) g += part[w][m * GEMV_COLS + j], u += part[w][m * GEMV_COLS + OUT + j];
        g = to_f32(from_f32<TC>(g)), u = to_f32(from_f32<TC>(u));
        *out = from_f32<TC>(g / (1.0f + expf(-g)) * u);
    } else {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; w++) s += part[w][t];
        float v = alpha * s;
        if (beta != 0.0f) v += beta * to_f32(*out);
        if (bias) v += bias[n];
        *out = from_f32<TC>(v);
    }
}

template <int M, class TC, bool GLU>
static void gemv_launch(cudaStream_t s, TC *C, int64_t ldc, const bf16 *A, int64_t lda, const bf16 *B, int64_t ldb,
                        const float *bias, int N, int K, float alpha, float beta) {
    constexpr int OUT = GLU ? GEMV_COLS / 2 : GEMV_COLS;
    const unsigned blocks = (unsigned)((N + OUT - 1) / OUT);
    gemv_kernel<M, TC, GLU><<<blocks, GEMV_THREADS, 0, s>>>(C, ldc, A, lda, B, ldb, bias, N, K / 8, alpha, beta);
    CUDA_CHECK_LAUNCH();
}

/* The instantiation for M (1..GEMV_MAX_ROWS) rows, C's type and GLU (gemv_kernel). */
template <class TC, bool GLU>
static void gemv_rows(cudaStream_t s, TC *C, int64_t ldc, const bf16 *A, int64_t lda, const bf16 *B, int64_t ldb,
                      const float *bias, int M, int N, int K, float alpha, float beta) {
    switch (M) {
#define GEMV_CASE(R) \
    case R: gemv_launch<R, TC, GLU>(s, C, ldc, A, lda, B, ldb, bias, N, K, alpha, beta); break;
        GEMV_CASE(1) GEMV_CASE(2) GEMV_CASE(3) GEMV_CASE(4) GEMV_CASE(5) GEMV_CASE(6) GEMV_CASE(7) GEMV_CASE(8)
#undef GEMV_CASE
    default: SK_ASSERT(!"gemv_rows: M out of range");
    }
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* Whether the kernel takes a product of B (N,K) with M rows of A at these strides and addresses. */
static bool gemv_fits(const void *A, int64_t lda, const void *B, int64_t ldb, int M, int N, int K) {
    return M >= 1 && M <= GEMV_MAX_ROWS && (M == 1 || (int64_t)N * K <= GEMV_MAX_SMALL_B) && N >= 1 && K >= 8 &&
           K % 8 == 0 && lda % 8 == 0 && ldb % 8 == 0 && aligned16(A) && aligned16(B);
}

bool cuda_gemv(cudaStream_t s, cuda_lp C, int64_t ldc, const void *A, int64_t lda, bool ta, const void *B,
               int64_t ldb, bool tb, const float *bias, int M, int N, int K, float alpha, float beta) {
    if (ta || !tb || !gemv_fits(A, lda, B, ldb, M, N, K)) return false;
    const bf16 *a = (const bf16 *)A, *b = (const bf16 *)B;
    if (C.bf16) gemv_rows<bf16, false>(s, (bf16 *)C.p, ldc, a, lda, b, ldb, bias, M, N, K, alpha, beta);
    else gemv_rows<float, false>(s, (float *)C.p, ldc, a, lda, b, ldb, bias, M, N, K, alpha, beta);
    return true;
}

bool cuda_gemv_swiglu(cudaStream_t s, cuda_lp C, int64_t ldc, const void *A, int64_t lda, const void *B,
                      int64_t ldb, int M, int F, int K) {
    if (!gemv_fits(A, lda, B, ldb, M, 2 * F, K)) return false;
    const bf16 *a = (const bf16 *)A, *b = (const bf16 *)B;
    if (C.bf16) gemv_rows<bf16, true>(s, (bf16 *)C.p, ldc, a, lda, b, ldb, NULL, M, F, K, 1.0f, 0.0f);
    else gemv_rows<float, true>(s, (float *)C.p, ldc, a, lda, b, ldb, NULL, M, F, K, 1.0f, 0.0f);
    return true;
}
