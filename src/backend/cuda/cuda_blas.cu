/* cuda_blas: cuBLAS and cuBLASLt opened at run time (see cuda_blas.cuh). */
#include "backend/cuda/cuda_blas.cuh"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#define CUDA_BLAS_STR(x) CUDA_BLAS_STR2(x)
#define CUDA_BLAS_STR2(x) #x

cuda_blas_api cuda_blas;

static pthread_once_t cuda_blas_once = PTHREAD_ONCE_INIT;
static sk_status cuda_blas_status;
static char cuda_blas_why[512];

/* The library named soname: by the loader's search (the program's RUNPATH: the toolkit the
 * build linked cudart from), else in SKEIN_CUDA_LIBDIR. NULL with *why set. */
static void *cuda_blas_lib(const char *soname) {
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
#ifdef SKEIN_CUDA_LIBDIR
    if (!h) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", SKEIN_CUDA_LIBDIR, soname);
        h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    }
#endif
    if (!h) snprintf(cuda_blas_why, sizeof cuda_blas_why, "%s", dlerror());
    return h;
}

static void cuda_blas_load(void) {
    /* cuBLAS needs cuBLASLt: loaded first, so that libcublas finds it among the loaded */
    static const char *const sonames[2] = {"libcublasLt.so." CUDA_BLAS_STR(CUBLAS_VER_MAJOR),
                                           "libcublas.so." CUDA_BLAS_STR(CUBLAS_VER_MAJOR)};
    void *libs[2];
    for (int i = 0; i < 2; i++)
        if (!(libs[i] = cuda_blas_lib(sonames[i]))) {
            cuda_blas_status = SK_EARG;
            return;
        }
    const char *missing = NULL;
#define CUDA_BLAS_FIND(fn)                                                                   \
    {                                                                                        \
        const char *name = CUDA_BLAS_STR(fn);   /* after cublas_v2.h's macros: the symbol */ \
        void *p = dlsym(libs[0], name);                                                      \
        if (!p) p = dlsym(libs[1], name);                                                    \
        if (!p && !missing) missing = name;                                                  \
        cuda_blas.fn = reinterpret_cast<decltype(cuda_blas.fn)>(p);                          \
    }
    CUDA_BLAS_FNS(CUDA_BLAS_FIND)
#undef CUDA_BLAS_FIND
    if (missing) {
        snprintf(cuda_blas_why, sizeof cuda_blas_why, "neither %s nor %s has %s", sonames[0], sonames[1], missing);
        cuda_blas_status = SK_EARG;
    }
}

sk_status cuda_blas_open(void) {
    pthread_once(&cuda_blas_once, cuda_blas_load);
    if (cuda_blas_status != SK_OK)
        return sk_fail(cuda_blas_status, "--device cuda: cuBLAS cannot be loaded: %s", cuda_blas_why);
    return SK_OK;
}
