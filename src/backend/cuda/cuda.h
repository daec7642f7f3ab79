/* backend/cuda: the CUDA backend, reached from C. Its sources are C++ (.cu, built by nvcc
 * when the Makefile finds it); this header is all C code sees of them.
 *
 *   backend *be = backend_cuda_create();   // or backend_create("cuda")
 *   if (!be) fprintf(stderr, "%s\n", sk_errmsg());   // no device, no driver, ...
 *
 * Phase 1 of the CUDA issue: every op of backend.h in f32 (supports() says f32 only), with
 * the CPU backend's contracts (writes vs accumulates, aliasing, strides) and within tight
 * tolerances of its results (products in plain f32: TF32 is off). Memory is cudaMalloc'd
 * device memory and cudaMallocHost'd pinned memory, never managed memory. */
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
