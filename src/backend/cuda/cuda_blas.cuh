/* cuda_blas: cuBLAS and cuBLASLt, opened by the first CUDA backend made (dlopen), never
 * linked. Linking them costs every start of every skein command, a GPU or not: the loader
 * relocates libcublasLt's kernel tables before main, 0.1 s and 85 MB of private dirty memory
 * (measured: `skein --help` 0.16 s and 232 MB resident with them linked), and each replica
 * process of skein serve would pay it again.
 *
 *   if (cuda_blas_open() != SK_OK) { puts(sk_errmsg()); ... }   // once, any thread
 *   CUBLAS_CHECK(cuda_blas.cublasLtMatmul(...));                // the library's own function
 *
 * cuda_blas holds a pointer of each function's own type (decltype of the header's
 * declaration) under its header name, so calls read as the library's and the compiler checks
 * them. CUDA_BLAS_FNS lists every function skein calls; one used without being listed does
 * not compile (it is not linked). Valid after cuda_blas_open returned SK_OK. */
#ifndef SKEIN_CUDA_BLAS_CUH
#define SKEIN_CUDA_BLAS_CUH

#include <cublasLt.h>
#include <cublas_v2.h>

extern "C" {
#include "base/base.h"
}

/* The functions used (cublas_v2.h's macros name the _v2 symbols of some). */
#define CUDA_BLAS_FNS(X)                                                                                           \
    X(cublasCreate) X(cublasDestroy) X(cublasSetMathMode) X(cublasSetStream) X(cublasSetWorkspace) X(cublasSgemm) \
    X(cublasGetStatusString) X(cublasLtCreate) X(cublasLtDestroy) X(cublasLtMatmul) X(cublasLtMatmulDescCreate)   \
    X(cublasLtMatmulDescDestroy) X(cublasLtMatmulDescSetAttribute) X(cublasLtMatrixLayoutCreate)                    \
    X(cublasLtMatrixLayoutDestroy) X(cublasLtMatmulPreferenceCreate) X(cublasLtMatmulPreferenceDestroy)             \
    X(cublasLtMatmulPreferenceSetAttribute) X(cublasLtMatmulAlgoGetHeuristic)

#define CUDA_BLAS_MEMBER(fn) decltype(&::fn) fn;
typedef struct cuda_blas_api {
    CUDA_BLAS_FNS(CUDA_BLAS_MEMBER)
} cuda_blas_api;
#undef CUDA_BLAS_MEMBER

extern cuda_blas_api cuda_blas;

/* Opens libcublasLt and libcublas of the toolkit's major version (by soname, then in the
 * toolkit's library folder the build saw) and fills cuda_blas; the first call does it, every
 * later one returns its status (thread-safe). SK_EARG naming the library or the function that
 * could not be found. */
sk_status cuda_blas_open(void);

#endif
