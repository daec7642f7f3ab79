/* dtype: sizes, names and f32 conversions (see dtype.h). */
#include "tensor/dtype.h"

#include <string.h>

#ifdef __F16C__
#include <immintrin.h>
#endif

#include "base/base.h"

static const struct { const char *name; size_t size; } dtype_info[DT_COUNT] = {
    [DT_F32] = {"F32", 4}, [DT_BF16] = {"BF16", 2}, [DT_F16] = {"F16", 2},
    [DT_I32] = {"I32", 4}, [DT_I64] = {"I64", 8},   [DT_U16] = {"U16", 2},
    [DT_U8] = {"U8", 1},     [DT_F64] = {"F64", 8},
};

size_t dtype_size(dtype t) { return dtype_info[t].size; }
const char *dtype_name(dtype t) { return dtype_info[t].name; }

int dtype_from_name(const char *name) {
    for (int i = 0; i < DT_COUNT; i++)
        if (!strcmp(dtype_info[i].name, name)) return i;
    return -1;
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        float v = (float)man * (1.0f / 16777216.0f); /* man * 2^-24 */
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t f32_to_f16(float f) {
    uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000;
    uint32_t au = u & 0x7fffffffu;
    if (au > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
    if (au >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow to inf */
    if (au < 0x38800000u) {                                  /* subnormal or zero */
        float v = bits_f32(au) * 16777216.0f;                  /* value / 2^-24 */
        uint32_t m = (uint32_t)v;
        float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t r = au + 0xfffu + ((au >> 13) & 1u) - (112u << 23);
    return (uint16_t)(sign | (r >> 13));
}

void dtype_to_f32(float *dst, const void *src, dtype src_t, size_t n) {
    const uint16_t *h = src;
    switch (src_t) {
    case DT_F32: memcpy(dst, src, n * 4); break;
    case DT_BF16:
        #pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(h[i]);
        break;
    case DT_F16:
        #pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(h[i]);
        break;
    default: SK_ASSERT(!"dtype_to_f32: not a float type");
    }
}

/* f32_to_f16 over src(n) into h(n): 8 at a time by F16C's conversion where the compiler
 * targets it (IEEE round to nearest even, as f32_to_f16; a NaN keeps its payload's top bits
 * there, where f32_to_f16 gives 0x7e00: only the canonical NaN converts alike). */
static void f32_to_f16_n(uint16_t *h, const float *src, size_t n) {
    size_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) h[i] = f32_to_f16(src[i]);
}

void dtype_from_f32(void *dst, dtype dst_t, const float *src, size_t n) {
    uint16_t *h = dst;
    switch (dst_t) {
    case DT_F32: memcpy(dst, src, n * 4); break;
    case DT_BF16:
        #pragma omp parallel for if (n > 65536)
        for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(src[i]);
        break;
    case DT_F16:
        if (n <= 65536) {
            f32_to_f16_n(h, src, n);
            break;
        }
        #pragma omp parallel for
        for (size_t i = 0; i < n; i += 65536) f32_to_f16_n(h + i, src + i, n - i < 65536 ? n - i : 65536);
        break;
    default: SK_ASSERT(!"dtype_from_f32: not a float type");
    }
}
