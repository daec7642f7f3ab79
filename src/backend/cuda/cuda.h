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
 * accumulation. bf16 attention runs, where skein is built with cuDNN (the Makefile's
 * SKEIN_HAVE_CUDNN) and the call has as many queries as keys, no dropout, lse wanted, a head
 * size that is a multiple of 8 and 16-byte aligned rows, on cuDNN's fused flash attention
 * (cuda_cudnn.cu; its backward deterministic); otherwise with head size 64 or 128 and 16-byte
 * aligned rows on the own tensor-core flash kernels (cuda_attention_tc.cu), other shapes on
 * the tiled kernels, which also take bf16 storage (both round the probabilities to bf16
 * before they weight v, as FlashAttention does). Memory is cudaMalloc'd device memory and
 * cudaMallocHost'd pinned memory, never managed memory; device memory that processes share
 * (ipc_map) is the driver's cuMemCreate'd memory, exported as a file descriptor (cuda_ipc.cu).
 *
 * SKEIN_CUDA_ATTN, read when the backend is created, picks the attention kernels: cudnn (the
 * default, as above), cudnn-nondeterministic (cuDNN's faster backward whose sums may differ in
 * the last bits run to run), own (never cuDNN), simple (the tiled kernels only: debugging).
 * The first call of each shape cuDNN runs makes its plan and says so on stderr (log_info);
 * a shape cuDNN cannot plan prints one warning naming cuDNN's status and the step that
 * failed, and runs on the own kernels.
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
 * sk_fail(SK_EARG, ...) naming the reason when no device can be used or SKEIN_CUDA_ATTN has a
 * value it does not know. */
backend *backend_cuda_create(void);
/* The same on device index % backend_cuda_device_count() (made the calling thread's current
 * device first); backend_create_on's. */
backend *backend_cuda_create_on(int index);
/* The CUDA devices this process sees; 0 when none or no usable driver. */
int backend_cuda_device_count(void);

/* What ran the last attention_forward (backward false) or attention_backward (true) on the
 * CUDA backend be: "cudnn", "tensor-core" or "tiled"; NULL before the first. (Callers use
 * backend_attention_impl, which takes any backend.) */
const char *backend_cuda_attention_impl(backend *be, bool backward);

/* The check of cuDNN's attention graphs a machine without a GPU can make (tests; built with
 * SKEIN_HAVE_CUDNN): builds the forward or backward graph of the shape (window W, 0 for none)
 * and has cuDNN finalize every tensor, operation and the operation graph, which checks their
 * attributes, types and dimensions (not the engines: they need the device). SK_OK, or a
 * failure naming the step and cuDNN's status and message. */
sk_status backend_cuda_cudnn_check_graph(int B, int T, int NH, int NKV, int HS, int W, bool backward,
                                         bool deterministic);

#ifdef __cplusplus
}
#endif

#endif
