/* backend/cuda: what the attention kernels share (cuda_attention.cu, the tiled f32 kernels
 * over f32 or bf16 storage; cuda_attention_tc.cu, the tensor-core kernels for bf16): the
 * geometry of backend.h's contract (which keys a query sees, the dropout scale, the order of
 * the blocks), element access, the launcher, and the tensor-core path's entry points.
 *
 * Letters as in backend.h; Tq queries, Tk keys, G = NH/NKV heads per KV head, query t at
 * position Tk - Tq + t. */
#ifndef SKEIN_CUDA_ATTENTION_CUH
#define SKEIN_CUDA_ATTENTION_CUH

#include "backend/cuda/cuda_impl.cuh"

#include <cuda_bf16.h>

#define ATTN_FULL_MASK 0xffffffffu

/* Whether query t sees key s: t is a query, s at most its position, inside the window. */
__device__ static inline bool attn_visible(const cuda_attn_geom &g, int t, int s) {
    const int pos = g.Tk - g.Tq + t;
    return t < g.Tq && s <= pos && (g.W == 0 || s > pos - g.W);
}

/* The dropout scale (mask / (1-p), or 1 without dropout) of key s for query row `row` (its
 * flat (B,NH,Tq) index). */
__device__ static inline float attn_keep(const cuda_attn_geom &g, int64_t row, int s) {
    if (g.p <= 0.0f) return 1.0f;
    return dropout_keep(g.seed, (uint64_t)row * (uint64_t)g.Tk + (uint64_t)s, g.p) ? 1.0f / (1.0f - g.p) : 0.0f;
}

/* Keys [*s0, *s1] that query t sees: up to its position, the W newest with a window. */
__device__ static inline void attn_span(const cuda_attn_geom &g, int t, int *s0, int *s1) {
    *s1 = g.Tk - g.Tq + t;
    *s0 = g.W > 0 && *s1 - g.W + 1 > 0 ? *s1 - g.W + 1 : 0;
}

/* The tile of block blockIdx.x among ntiles tiles of `per_tile` blocks each, longest work
 * first (reverse: query tiles, whose work grows with t; else key tiles, whose work shrinks
 * with s); *rest gets the block's index among the blocks of its tile. */
__device__ static inline int attn_tile_index(int ntiles, int per_tile, bool reverse, int *rest) {
    const int n = (int)(blockIdx.x / per_tile);
    *rest = (int)(blockIdx.x % per_tile);
    return reverse ? ntiles - 1 - n : n;
}

/* Element (b, t, c) of a (B,T,D) operand of element type T. */
template <class T> __device__ __forceinline__ T *attn_at(cuda_rows X, int b, int t, int c) {
    return (T *)X.p + b * X.sb + (int64_t)t * X.st + c;
}

/* Launches kernel k over `blocks` blocks of `threads` threads with `bytes` of dynamic shared
 * memory on stream s (raising the kernel's limit past the default 48 KB, per device: a cheap
 * host call). Nothing to do for no blocks. */
template <class... P, class... A>
static void attn_launch(void (*k)(P...), int64_t blocks, int threads, size_t bytes, cudaStream_t s, A... args) {
    if (blocks == 0) return;
    SK_ASSERT(blocks <= 0x7fffffff);
    CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3((unsigned)threads);
    cfg.dynamicSmemBytes = bytes;
    cfg.stream = s;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, k, args...));
}

/* ---- the tensor-core path (cuda_attention_tc.cu) ---- */

/* Whether the tensor-core kernels take a call of geometry g over the n operands ops: bf16,
 * HS 64 or 128, every operand's rows 16-byte aligned (the tiles arrive by 16-byte copies). */
bool cuda_attention_tc_fits(const cuda_attn_geom *g, const cuda_rows *ops, int n);
/* cuda_attention_forward and cuda_attention_backward (cuda_impl.cuh) for calls that fit. */
void cuda_attention_tc_forward(cudaStream_t s, const cuda_attn_geom *g, cuda_rows out, float *lse, cuda_rows q,
                               cuda_rows k, cuda_rows v);
void cuda_attention_tc_backward(cudaStream_t s, const cuda_attn_geom *g, cuda_rows dq, cuda_rows dk, cuda_rows dv,
                                cuda_rows dout, cuda_rows q, cuda_rows k, cuda_rows v, cuda_rows out,
                                const float *lse);

#endif
