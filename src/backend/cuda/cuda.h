/* backend/cuda: the CUDA backend, reached from C. Its sources are C++ (.cu, built by nvcc
 * when the Makefile finds it); this header is all C code sees of them.
 *
 *   backend *be = backend_cuda_create();   // or backend_create("cuda")
 *   if (!be) fprintf(stderr, "%s\n", sk_errmsg());   // no device, no driver, ...
 *
 * Every op of backend.h in f32, with the CPU backend's contracts (writes vs accumulates,
 * aliasing, strides) and within tight tolerances of its results (products in plain f32:
 * TF32 is off). Mixed precision (backend_supports(be, BACKEND_OP_MIXED, DT_BF16)): every
 * [lp] argument may be bf16; kernels compute in f32 and round each bf16 output once; bf16
 * products (bf16 A and B, C f32 or bf16) run on the tensor cores through cuBLASLt with f32
 * accumulation; bf16 attention with head size 64 or 128 and 16-byte aligned rows runs on
 * tensor-core flash kernels (cuda_attention_tc.cu; probabilities rounded to bf16 before
 * they weight v, as FlashAttention does), other shapes on the tiled kernels, which also take
 * bf16 storage. Memory is cudaMalloc'd device memory and cudaMallocHost'd pinned memory,
 * never managed memory.
 *
 * SKEIN_CUDA_ATTN=simple sends every attention call to the tiled kernels (debugging).
 * linear_forward fuses the f32 bias into bf16 products with an f32 output (the projections
 * into the residual stream) as a cuBLASLt BIAS epilogue; other layers run unfused.
 *
 * SKEIN_CUDA_TF32=1 in the environment when the backend is created puts cuBLAS's f32
 * products (matmul: the linear layers and the LM head, forward and backward) on the tensor
 * cores in TF32 (inputs rounded to 10 mantissa bits, sums in f32): several times faster,
 * and results then differ from the CPU's at about 1e-3 relative, so the CPU-comparison tests
 * (make test-gpu) run without it. f32 attention always runs in f32 (cuda_attention.cu). */
#ifndef SKEIN_BACKEND_CUDA_H
#define SKEIN_BACKEND_CUDA_H

#include "backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A backend on CUDA device 0 (its own default stream, cuBLAS handle and workspace). NULL +
 * sk_fail(SK_EARG, ...) naming the reason when no device can be used. */
backend *backend_cuda_create(void);

#ifdef __cplusplus
}
#endif

#endif
