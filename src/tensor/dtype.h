/* dtype: element types of stored and computed tensors, their sizes and safetensors names,
 * and conversions to and from f32 (bf16 and f16 round to nearest even). */
#ifndef SKEIN_DTYPE_H
#define SKEIN_DTYPE_H

#include <stddef.h>
#include <stdint.h>

/* DT_F64 holds reductions kept in double (a loss sum, a squared gradient norm). */
typedef enum dtype { DT_F32, DT_BF16, DT_F16, DT_I32, DT_I64, DT_U16, DT_U8, DT_F64, DT_COUNT } dtype;

size_t dtype_size(dtype t);
const char *dtype_name(dtype t);          /* safetensors spelling: "F32", "BF16", ... */
int dtype_from_name(const char *name);    /* -1 when unknown */

/* Exact (bf16 is the top half of an f32); inline so hot loops over bf16 data vectorize. */
static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
/* Round to nearest even, NaN kept quiet; branch-free and inline, so loops that write bf16
 * (the optimizer's compute copy) vectorize. */
static inline uint16_t f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {f};
    const uint32_t nan = (v.u >> 16) | 0x40, r = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16;
    return (uint16_t)((v.u & 0x7fffffffu) > 0x7f800000u ? nan : r);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
/* Converts n elements of type `src_t` at src into f32 at dst (f32, bf16, f16 only). */
void dtype_to_f32(float *dst, const void *src, dtype src_t, size_t n);
/* Converts n f32 values into type `dst_t` (f32, bf16, f16 only). */
void dtype_from_f32(void *dst, dtype dst_t, const float *src, size_t n);

#endif
