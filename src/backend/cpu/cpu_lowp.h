/* cpu_lowp: CPU products and embedding gathers that read bf16/f16 weights where they lie (a
 * read-only file mapping, see model/wts.h), never converting a whole tensor.
 *
 *   // logits(1,V) = h(1,C) @ wte(V,C)^T, the tied head of a bf16 checkpoint
 *   cpu_lowp_matmul(logits, V, h, C, wte.data, DT_BF16, CPU_LOWP_NK, C, 1, V, C, 1.0f, 0.0f);
 *   // x(n,C) = wte[tokens]
 *   cpu_lowp_embed(x, tokens, n, wte.data, DT_BF16, V, C);
 *
 * Numbers: every weight is converted exactly (bf16 and f16 are subsets of f32) and every sum
 * is accumulated in f32 from f32 activations, so results equal cblas_sgemm on the converted
 * weights up to summation order (~1e-6 relative). OpenBLAS's cblas_sbgemm is not used: it
 * rounds the activations to bf16 too.
 *
 * Invariants: no call allocates (conversion panels live on each thread's stack, at most
 * CPU_LOWP_STACK_BYTES); every output element is computed by one thread in a fixed order,
 * so results do not depend on the thread count. Called from inside or outside an OpenMP
 * region (inside, OpenBLAS runs single-threaded). */
#ifndef SKEIN_CPU_LOWP_H
#define SKEIN_CPU_LOWP_H

#include <stdbool.h>

#include "tensor/dtype.h"

/* How a weight matrix is stored. Letters: M rows of A and C, N output columns, K the
 * reduced dimension. */
typedef enum cpu_lowp_layout {
    CPU_LOWP_KN,   /* W(K,N), C = A @ W: GPT-2 Conv1D (in, out) */
    CPU_LOWP_NK,   /* W(N,K), C = A @ W^T: nn.Linear (out, in), a tied LM head (V, C) */
} cpu_lowp_layout;

/* Rows of A up to which the direct kernels run (and f32 weights are accepted). */
#define CPU_LOWP_SMALL_M 8

/* Stack bytes one thread uses for conversion panels. */
#define CPU_LOWP_STACK_BYTES (64 * 1024)

/* C(M,N) = alpha * A(M,K) @ op(W) + beta * C, with W of dtype wdt (DT_BF16 or DT_F16; DT_F32
 * too when M <= CPU_LOWP_SMALL_M, read in place: the CPU backend's decode products) in
 * `layout` with row stride ldw (>= N for KN, >= K for NK), A f32 with row stride lda >= K,
 * C f32 with row stride ldc >= N. beta == 0 writes C without reading it (NaN there is fine);
 * columns past N and A's past K are never touched. C must not alias A or W. Small M (decode)
 * streams W once with vectorized dot/axpy kernels, threads over N; larger M converts panels
 * of W to f32 per thread and multiplies them with cblas_sgemm. */
void cpu_lowp_matmul(float *C, int ldc, const float *A, int lda, const void *W, dtype wdt, cpu_lowp_layout layout,
                     int ldw, int M, int N, int K, float alpha, float beta);

/* out(n,C) writes table[tokens[i]] converted to f32, table(V,C) of dtype dt (DT_BF16 or
 * DT_F16), rows contiguous. Every token must be in [0, V) (asserted). */
void cpu_lowp_embed(float *out, const int *tokens, int n, const void *table, dtype dt, int V, int C);

#endif
