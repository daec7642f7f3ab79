/* backend/cpu: 16 f32 lanes as GCC's generic vectors, for the files whose kernels keep their
 * accumulators in vector registers (cpu_lowp.c, cpu_gemv.c): one zmm register under AVX-512,
 * two ymm under AVX2. Those files are built with -ffp-contract=fast (acc += a * w is one FMA)
 * and -Wno-psabi: the vectors pass between their static functions only. */
#ifndef SKEIN_CPU_VEC_H
#define SKEIN_CPU_VEC_H

#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
#define VL 16

/* 16 floats from p (any alignment). */
static inline v16 v16_load(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void v16_store(float *p, v16 v) { memcpy(p, &v, sizeof v); }

static inline v16 v16_splat(float x) { return (v16){0} + x; }

/* The lanes' sum, halves added pairwise (a fixed order): four shuffles and adds. */
static inline float v16_sum(v16 v) {
    typedef float v8 __attribute__((vector_size(32)));
    typedef float v4 __attribute__((vector_size(16)));
    const v8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const v4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    return (q[0] + q[2]) + (q[1] + q[3]);
}

#endif
