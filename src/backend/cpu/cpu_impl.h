/* backend/cpu internals shared by the CPU backend's files (cpu.c holds the op table and the
 * f32 kernels, cpu_attention.c the attention ops, cpu_mixed.c the bf16 adapters in front of
 * the kernels): the backend's state, the vectorizable exponential, the parallel threshold,
 * and the ops defined outside cpu.c. Not for callers: they use backend.h. */
#ifndef SKEIN_CPU_IMPL_H
#define SKEIN_CPU_IMPL_H

#include <string.h>

#include "backend/backend.h"

/* be->impl of the CPU backend: f32 scratch for the bf16 views of one op (cpu_mixed.c) and for
 * paged decode's parts (cpu_attention.c), each grown on demand, freed with the backend. */
typedef struct cpu_impl {
    float *scratch;
    size_t scratch_floats;
    float *parts;
    size_t parts_floats;
} cpu_impl;

/* Below this many elements a loop runs on one thread: the fork costs more than it saves. */
#define CPU_PAR_MIN 16384

/* *c = alpha v + beta *c, BLAS's way: with beta 0, *c is written without being read (a NaN
 * there does not come through). */
static inline void cpu_store_scaled(float *c, float v, float alpha, float beta) {
    *c = beta == 0.0f ? alpha * v : alpha * v + beta * *c;
}

/* e^x to about 2 ulp for x in [-87, 88] (clamped outside), in a form gcc vectorizes:
 * x = n ln2 + r with |r| <= ln2/2, e^r from its degree-6 Taylor polynomial (truncation
 * < 1e-7 relative), 2^n assembled in the exponent bits. */
static inline float cpu_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float shifter = 12582912.0f;                 /* 1.5 * 2^23: rounds to an integer */
    float t = x * 1.44269504088896341f + shifter;
    float n = t - shifter;
    float r = x - n * 0.693145751953125f;              /* ln2 split in two for exactness */
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { float f; uint32_t i; } tb = {t}, sc;
    /* bits of shifter + n, minus shifter; unsigned, so a NaN input (whose t has any bits)
     * gives some finite scale and the NaN in p carries through, without undefined shifts */
    sc.i = (tb.i - 0x4B400000u + 127u) << 23;
    return p * sc.f;
}

/* An f16 value as f32, exactly, in integer steps and one exact product that GCC vectorizes
 * inside any loop (its _Float16 conversions stay scalar without AVX512-FP16; F16C's vcvtph2ps,
 * tried, was slower here on a KV cache, whose values include f16 subnormals): exponent and
 * mantissa move up 13 bits and the exponent is rebiased (by 112, again for inf/NaN); a
 * subnormal (or zero) is its mantissa times 2^-24, a normal f32. No step makes an f32 subnormal. */
static inline float cpu_f16_to_f32(uint16_t h) {
    const uint32_t em = h & 0x7fffu, sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t infnan = 0u - (uint32_t)(em >= 0x7c00u), sub = 0u - (uint32_t)(em < 0x400u);   /* masks */
    const uint32_t normal = (em << 13) + (112u << 23) + (infnan & (112u << 23));
    union { float f; uint32_t u; } s = {(float)(int32_t)em * 0x1p-24f}, r;
    r.u = sign | (s.u & sub) | (normal & ~sub);
    return r.f;
}

/* dst[0..n) = src[0..n) of dtype dt (bf16 or f16) as f32, exactly. Two plain loops so each
 * vectorizes. */
static inline void cpu_half_to_f32(float *restrict dst, const uint16_t *restrict src, dtype dt, int n) {
    if (dt == DT_BF16) {
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        for (int i = 0; i < n; i++) dst[i] = cpu_f16_to_f32(src[i]);
    }
}

/* The attention ops (cpu_attention.c); contracts in backend.h. */
void cpu_attention_forward(backend *be, backend_stream *s, tensor out, tensor lse, tensor q, tensor k,
                           tensor v, int NH, int NKV, int W, float p, uint64_t seed);
void cpu_attention_backward(backend *be, backend_stream *s, tensor dq, tensor dk, tensor dv, tensor dout,
                            tensor q, tensor k, tensor v, tensor out, tensor lse, int NH, int NKV, int W,
                            float p, uint64_t seed);
void cpu_paged_attention(backend *be, backend_stream *s, tensor out, tensor q, tensor k_cache, tensor v_cache,
                         tensor seqs, tensor tables, int BS, int NH, int NKV, int W);

/* The f32 kernels of the ops with [lp] arguments (cpu.c, cpu_attention.c): f32 views only.
 * cpu_mixed.c calls them; the backend's table holds the cpu_mixed_ adapters below. */
extern const backend_ops cpu_f32_ops;

/* The ops with [lp] arguments (backend.h) and cast, taking bf16 views through f32 scratch
 * (cpu_mixed.c); with f32 views each is its f32 kernel. */
void cpu_mixed_matmul(backend *be, backend_stream *s, tensor C, tensor A, bool ta, tensor B, bool tb, float alpha,
                      float beta);
void cpu_mixed_linear_forward(backend *be, backend_stream *s, tensor out, tensor pre, tensor inp, tensor w, bool tw,
                              tensor bias, backend_act act);
void cpu_mixed_bias_add(backend *be, backend_stream *s, tensor out, tensor bias);
void cpu_mixed_bias_backward(backend *be, backend_stream *s, tensor dbias, tensor dout);
void cpu_mixed_layernorm_forward(backend *be, backend_stream *s, tensor out, tensor mean, tensor rstd, tensor inp,
                                 tensor resid, tensor weight, tensor bias, float eps);
void cpu_mixed_layernorm_backward(backend *be, backend_stream *s, tensor dinp, tensor dinp_lp, tensor dweight,
                                  tensor dbias, tensor dout, tensor inp, tensor weight, tensor mean, tensor rstd);
void cpu_mixed_gelu_forward(backend *be, backend_stream *s, tensor out, tensor inp);
void cpu_mixed_gelu_backward(backend *be, backend_stream *s, tensor dinp, tensor inp, tensor dout);
void cpu_mixed_add(backend *be, backend_stream *s, tensor out, tensor x, tensor y);
void cpu_mixed_scale(backend *be, backend_stream *s, tensor x, float alpha);
void cpu_mixed_attention_forward(backend *be, backend_stream *s, tensor out, tensor lse, tensor q, tensor k, tensor v,
                                 int NH, int NKV, int W, float p, uint64_t seed);
void cpu_mixed_attention_backward(backend *be, backend_stream *s, tensor dq, tensor dk, tensor dv, tensor dout,
                                  tensor q, tensor k, tensor v, tensor out, tensor lse, int NH, int NKV, int W,
                                  float p, uint64_t seed);
void cpu_mixed_rmsnorm_forward(backend *be, backend_stream *s, tensor out, tensor rstd, tensor inp, tensor resid,
                               tensor weight, float eps);
void cpu_mixed_rmsnorm_backward(backend *be, backend_stream *s, tensor dinp, tensor dinp_lp, tensor dweight,
                                tensor dout, tensor inp, tensor weight, tensor rstd);
void cpu_mixed_rope_forward(backend *be, backend_stream *s, tensor x, tensor cos, tensor sin, int pos0);
void cpu_mixed_rope_backward(backend *be, backend_stream *s, tensor dx, tensor cos, tensor sin, int pos0);
void cpu_mixed_swiglu_forward(backend *be, backend_stream *s, tensor out, tensor gate, tensor up);
void cpu_mixed_swiglu_backward(backend *be, backend_stream *s, tensor dgate, tensor dup, tensor dout, tensor gate,
                               tensor up);
void cpu_mixed_softmax_xent(backend *be, backend_stream *s, tensor losses, tensor dlogits, tensor logits,
                            tensor targets, float dloss);
void cpu_mixed_dropout_forward(backend *be, backend_stream *s, tensor out, tensor inp, float p, uint64_t seed);
void cpu_mixed_dropout_backward(backend *be, backend_stream *s, tensor dinp, tensor dout, float p, uint64_t seed);
void cpu_mixed_cast(backend *be, backend_stream *s, tensor out, tensor inp);

#endif
