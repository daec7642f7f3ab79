/* backend/cpu: the mixed-precision ops (backend.h's [lp] arguments in bf16) and cast.
 *
 * The CPU is the readable reference for bf16, not its fast path: every op with [lp]
 * arguments converts its bf16 views into f32 scratch (exactly: bf16 is the top half of an
 * f32), runs its f32 kernel (cpu_f32_ops: cpu.c, cpu_attention.c) on the scratch views, and
 * rounds each bf16 output back once, to nearest even (dtype.h's conversions). An output
 * that accumulates (matmul's C with beta != 0, bias_add's out, scale's and rope's x) is
 * converted in first, so the kernel adds in f32 and the sum is rounded once. With every
 * view f32 an op calls its kernel on the caller's views, untouched: the f32 paths are
 * exactly the kernels'.
 *
 * Scratch views are compact: a column block of a wider matrix (GPT-2's q, k, v in its packed
 * qkv) becomes a contiguous matrix, which the f32 kernels take as they take any row stride.
 * Logits alone keep their padded row stride Vp, because softmax_xent sizes dlogits by it.
 * An f32 view and a bf16 view never alias (backend.h: aliased views share a dtype), and two
 * aliased bf16 views get separate scratch, so an input is read whole before the output that
 * overwrites it is stored.
 *
 * Invariant: the scratch is one buffer per backend (cpu_impl.h), grown to the largest need of
 * one op and kept until backend_free. CPU ops run synchronously and one backend is driven
 * from one thread, so one op uses it at a time. Running out of memory for it is fatal
 * (an op has no error return): the message names the size. */
#include "backend/cpu/cpu_impl.h"

#include <string.h>

/* What the op does with an argument: reads it, writes it whole, or reads and writes it. */
typedef enum mix_role { MIX_IN, MIX_OUT, MIX_ACC } mix_role;

/* One [lp] argument: the op's view, replaced by its f32 scratch view (when bf16) between
 * mix_begin and mix_end. */
typedef struct mix_arg {
    tensor *t;
    mix_role role;
    bool keep_ld;   /* a 2-D scratch keeps the row stride (logits) */
    tensor orig;    /* the caller's view (mix_begin fills it) */
} mix_arg;

static mix_arg mix_in(tensor *t) { return (mix_arg){t, MIX_IN, false, tensor_none()}; }
static mix_arg mix_out(tensor *t) { return (mix_arg){t, MIX_OUT, false, tensor_none()}; }
static mix_arg mix_acc(tensor *t) { return (mix_arg){t, MIX_ACC, false, tensor_none()}; }

/* Runs the f32 kernel call `call` on the arguments `args` (an array of mix_arg). */
#define MIX_RUN(be, args, call)                                  \
    do {                                                         \
        const int mix_n_ = (int)(sizeof(args) / sizeof(args[0])); \
        mix_begin(be, args, mix_n_);                             \
        call;                                                    \
        mix_end(args, mix_n_);                                   \
    } while (0)

/* n contiguous elements from src (dtype st) into dst (dtype dt), f32 <-> bf16 or a copy:
 * bf16 to f32 exact, f32 to bf16 rounded to nearest even. */
static void mix_copy(void *dst, dtype dt, const void *src, dtype st, size_t n) {
    if (st == DT_F32) dtype_from_f32(dst, dt, src, n);
    else if (dt == DT_F32) dtype_to_f32(dst, src, st, n);
    else {
        SK_ASSERT(dt == st);
        memmove(dst, src, n * dtype_size(dt));
    }
}

/* The elements of src into dst, views of one shape with contiguous rows, row by row. */
static void mix_convert(tensor dst, tensor src) {
    SK_ASSERT(dst.ndim == src.ndim && src.ndim >= 1 && tensor_rows_contiguous(dst) && tensor_rows_contiguous(src));
    for (int d = 0; d < src.ndim; d++) SK_ASSERT(dst.shape[d] == src.shape[d]);
    const int64_t numel = tensor_numel(src);
    if (numel == 0) return;
    if (tensor_is_contiguous(dst) && tensor_is_contiguous(src)) {
        mix_copy(dst.data, dst.dt, src.data, src.dt, (size_t)numel);
        return;
    }
    const int last = src.ndim - 1;
    const int64_t cols = src.shape[last], rows = numel / cols;
    const size_t dsz = dtype_size(dst.dt), ssz = dtype_size(src.dt);
#pragma omp parallel for schedule(static) if (numel > CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t od = 0, os = 0, rest = r;   /* r's index along each outer dimension, as offsets */
        for (int d = last - 1; d >= 0; d--) {
            const int64_t i = rest % src.shape[d];
            rest /= src.shape[d];
            od += i * dst.stride[d];
            os += i * src.stride[d];
        }
        mix_copy((char *)dst.data + (size_t)od * dsz, dst.dt, (const char *)src.data + (size_t)os * ssz, src.dt,
                 (size_t)cols);
    }
}

/* The f32 scratch view of argument a at p (NULL: to size it). */
static tensor mix_view(const mix_arg *a, float *p) {
    if (a->keep_ld) return tensor_2d_ld(p, DT_F32, a->orig.shape[0], a->orig.shape[1], tensor_ld(a->orig));
    return tensor_make(p, DT_F32, a->orig.mem, a->orig.ndim, a->orig.shape);
}

/* Floats of scratch argument a takes, rounded up to 64 bytes so every view stays aligned. */
static size_t mix_floats(const mix_arg *a) { return (tensor_bytes(mix_view(a, NULL)) / sizeof(float) + 15) & ~(size_t)15; }

/* At least n floats of the backend's scratch, its contents undefined. */
static float *mix_scratch(backend *be, size_t n) {
    cpu_impl *impl = be->impl;
    if (impl->scratch_floats < n) {
        mem_free(impl->scratch);
        impl->scratch_floats = 0;
        impl->scratch = mem_alloc(n * sizeof(float));
        if (!impl->scratch) {
            log_warn("cpu: %zu bytes of scratch for a bf16 op: %s", n * sizeof(float), sk_errmsg());
            SK_ASSERT(!"cpu: out of memory for mixed-precision scratch");
        }
        impl->scratch_floats = n;
    }
    return impl->scratch;
}

/* Points each bf16 argument at its f32 scratch: the value of an input or accumulated output
 * converted, zeros for a written output. f32 arguments stay as they are. */
static void mix_begin(backend *be, mix_arg *a, int n) {
    size_t need = 0;
    for (int i = 0; i < n; i++) {
        a[i].orig = *a[i].t;
        SK_ASSERT(a[i].orig.dt == DT_F32 || a[i].orig.dt == DT_BF16);
        SK_ASSERT(!a[i].keep_ld || a[i].orig.ndim == 2);
        if (a[i].orig.dt == DT_BF16) need += mix_floats(&a[i]);
    }
    if (!need) return;
    float *p = mix_scratch(be, need);
    for (int i = 0; i < n; i++) {
        if (a[i].orig.dt != DT_BF16) continue;
        *a[i].t = mix_view(&a[i], p);
        if (a[i].role == MIX_OUT) memset(p, 0, tensor_bytes(*a[i].t));
        else mix_convert(*a[i].t, a[i].orig);
        p += mix_floats(&a[i]);
    }
}

/* Rounds each bf16 output's scratch into the caller's view. */
static void mix_end(mix_arg *a, int n) {
    for (int i = 0; i < n; i++)
        if (a[i].orig.dt == DT_BF16 && a[i].role != MIX_IN) mix_convert(a[i].orig, *a[i].t);
}

/* ---- the ops (contracts in backend.h) ---- */

/* The f32 products and the mapped-weights kind (A, C f32, B a bf16/f16 weight read in place
 * by cpu_lowp) go to the kernel as they are; the training kind with bf16 A and B converts
 * both (their products are exact in f32) and C. */
void cpu_mixed_matmul(backend *be, backend_stream *s, tensor C, tensor A, bool ta, tensor B, bool tb, float alpha,
                      float beta) {
    if (A.dt == DT_F32 && C.dt == DT_F32) {
        cpu_f32_ops.matmul(be, s, C, A, ta, B, tb, alpha, beta);
        return;
    }
    SK_ASSERT(A.dt == B.dt);
    mix_arg a[] = {beta == 0.0f ? mix_out(&C) : mix_acc(&C), mix_in(&A), mix_in(&B)};
    MIX_RUN(be, a, cpu_f32_ops.matmul(be, s, C, A, ta, B, tb, alpha, beta));
}

/* One rounding per bf16 output: the f32 kernels run the unfused layer on f32 scratch, so
 * pre and out are both rounded from f32 values (out from act of the unrounded sum). With
 * f32 inp and out (f32 products, mapped weights) the layer is the unfused f32 ops, on the
 * caller's views. */
void cpu_mixed_linear_forward(backend *be, backend_stream *s, tensor out, tensor pre, tensor inp, tensor w, bool tw,
                              tensor bias, backend_act act) {
    SK_ASSERT(tensor_is_none(pre) || pre.dt == out.dt);
    if (inp.dt == DT_F32 && out.dt == DT_F32) {
        backend_linear_unfused(&cpu_f32_ops, be, s, out, pre, inp, w, tw, bias, act);
        return;
    }
    SK_ASSERT(inp.dt == w.dt);
    mix_arg a[] = {mix_out(&out), mix_out(&pre), mix_in(&inp), mix_in(&w)};   /* a none pre stays none */
    MIX_RUN(be, a, backend_linear_unfused(&cpu_f32_ops, be, s, out, pre, inp, w, tw, bias, act));
}

void cpu_mixed_bias_add(backend *be, backend_stream *s, tensor out, tensor bias) {
    mix_arg a[] = {mix_acc(&out)};
    MIX_RUN(be, a, cpu_f32_ops.bias_add(be, s, out, bias));
}

void cpu_mixed_bias_backward(backend *be, backend_stream *s, tensor dbias, tensor dout) {
    mix_arg a[] = {mix_in(&dout)};
    MIX_RUN(be, a, cpu_f32_ops.bias_backward(be, s, dbias, dout));
}

void cpu_mixed_layernorm_forward(backend *be, backend_stream *s, tensor out, tensor mean, tensor rstd, tensor inp,
                                 tensor resid, tensor weight, tensor bias, float eps) {
    mix_arg a[] = {mix_out(&out), mix_in(&resid)};
    MIX_RUN(be, a, cpu_f32_ops.layernorm_forward(be, s, out, mean, rstd, inp, resid, weight, bias, eps));
}

/* dinp_lp is bf16 in every backend table: the f32 op writes it itself. */
void cpu_mixed_layernorm_backward(backend *be, backend_stream *s, tensor dinp, tensor dinp_lp, tensor dweight,
                                  tensor dbias, tensor dout, tensor inp, tensor weight, tensor mean, tensor rstd) {
    mix_arg a[] = {mix_in(&dout)};
    MIX_RUN(be, a,
            cpu_f32_ops.layernorm_backward(be, s, dinp, dinp_lp, dweight, dbias, dout, inp, weight, mean, rstd));
}

void cpu_mixed_gelu_forward(backend *be, backend_stream *s, tensor out, tensor inp) {
    SK_ASSERT(out.dt == inp.dt);
    mix_arg a[] = {mix_out(&out), mix_in(&inp)};
    MIX_RUN(be, a, cpu_f32_ops.gelu_forward(be, s, out, inp));
}

void cpu_mixed_gelu_backward(backend *be, backend_stream *s, tensor dinp, tensor inp, tensor dout) {
    SK_ASSERT(dinp.dt == inp.dt && dout.dt == inp.dt);
    mix_arg a[] = {mix_out(&dinp), mix_in(&inp), mix_in(&dout)};
    MIX_RUN(be, a, cpu_f32_ops.gelu_backward(be, s, dinp, inp, dout));
}

void cpu_mixed_add(backend *be, backend_stream *s, tensor out, tensor x, tensor y) {
    mix_arg a[] = {mix_out(&out), mix_in(&x), mix_in(&y)};
    MIX_RUN(be, a, cpu_f32_ops.add(be, s, out, x, y));
}

void cpu_mixed_scale(backend *be, backend_stream *s, tensor x, float alpha) {
    mix_arg a[] = {mix_acc(&x)};
    MIX_RUN(be, a, cpu_f32_ops.scale(be, s, x, alpha));
}

void cpu_mixed_attention_forward(backend *be, backend_stream *s, tensor out, tensor lse, tensor q, tensor k, tensor v,
                                 int NH, int NKV, int W, float p, uint64_t seed) {
    SK_ASSERT(k.dt == q.dt && v.dt == q.dt && out.dt == q.dt);
    mix_arg a[] = {mix_out(&out), mix_in(&q), mix_in(&k), mix_in(&v)};
    MIX_RUN(be, a, cpu_f32_ops.attention_forward(be, s, out, lse, q, k, v, NH, NKV, W, p, seed));
}

void cpu_mixed_attention_backward(backend *be, backend_stream *s, tensor dq, tensor dk, tensor dv, tensor dout,
                                  tensor q, tensor k, tensor v, tensor out, tensor lse, int NH, int NKV, int W,
                                  float p, uint64_t seed) {
    const dtype dt = q.dt;
    SK_ASSERT(dq.dt == dt && dk.dt == dt && dv.dt == dt && dout.dt == dt && k.dt == dt && v.dt == dt && out.dt == dt);
    mix_arg a[] = {mix_out(&dq), mix_out(&dk), mix_out(&dv), mix_in(&dout),
                   mix_in(&q),   mix_in(&k),   mix_in(&v),   mix_in(&out)};
    MIX_RUN(be, a, cpu_f32_ops.attention_backward(be, s, dq, dk, dv, dout, q, k, v, out, lse, NH, NKV, W, p, seed));
}

void cpu_mixed_rmsnorm_forward(backend *be, backend_stream *s, tensor out, tensor rstd, tensor inp, tensor resid,
                               tensor weight, float eps) {
    mix_arg a[] = {mix_out(&out), mix_in(&resid)};
    MIX_RUN(be, a, cpu_f32_ops.rmsnorm_forward(be, s, out, rstd, inp, resid, weight, eps));
}

void cpu_mixed_rmsnorm_backward(backend *be, backend_stream *s, tensor dinp, tensor dinp_lp, tensor dweight,
                                tensor dout, tensor inp, tensor weight, tensor rstd) {
    mix_arg a[] = {mix_in(&dout)};
    MIX_RUN(be, a, cpu_f32_ops.rmsnorm_backward(be, s, dinp, dinp_lp, dweight, dout, inp, weight, rstd));
}

void cpu_mixed_rope_forward(backend *be, backend_stream *s, tensor x, tensor cos, tensor sin, int pos0) {
    mix_arg a[] = {mix_acc(&x)};
    MIX_RUN(be, a, cpu_f32_ops.rope_forward(be, s, x, cos, sin, pos0));
}

void cpu_mixed_rope_backward(backend *be, backend_stream *s, tensor dx, tensor cos, tensor sin, int pos0) {
    mix_arg a[] = {mix_acc(&dx)};
    MIX_RUN(be, a, cpu_f32_ops.rope_backward(be, s, dx, cos, sin, pos0));
}

void cpu_mixed_swiglu_forward(backend *be, backend_stream *s, tensor out, tensor gate, tensor up) {
    SK_ASSERT(out.dt == gate.dt && up.dt == gate.dt);
    mix_arg a[] = {mix_out(&out), mix_in(&gate), mix_in(&up)};
    MIX_RUN(be, a, cpu_f32_ops.swiglu_forward(be, s, out, gate, up));
}

void cpu_mixed_swiglu_backward(backend *be, backend_stream *s, tensor dgate, tensor dup, tensor dout, tensor gate,
                               tensor up) {
    SK_ASSERT(dgate.dt == gate.dt && dup.dt == gate.dt && dout.dt == gate.dt && up.dt == gate.dt);
    mix_arg a[] = {mix_out(&dgate), mix_out(&dup), mix_in(&dout), mix_in(&gate), mix_in(&up)};
    MIX_RUN(be, a, cpu_f32_ops.swiglu_backward(be, s, dgate, dup, dout, gate, up));
}

/* logits keep their row stride Vp in scratch: the kernel writes dlogits (N,Vp), padding
 * columns included. */
void cpu_mixed_softmax_xent(backend *be, backend_stream *s, tensor losses, tensor dlogits, tensor logits,
                            tensor targets, float dloss) {
    SK_ASSERT(tensor_is_none(dlogits) || dlogits.dt == logits.dt);
    mix_arg lg = mix_in(&logits);
    lg.keep_ld = true;
    mix_arg a[] = {mix_out(&dlogits), lg};
    MIX_RUN(be, a, cpu_f32_ops.softmax_xent(be, s, losses, dlogits, logits, targets, dloss));
}

void cpu_mixed_dropout_forward(backend *be, backend_stream *s, tensor out, tensor inp, float p, uint64_t seed) {
    mix_arg a[] = {mix_out(&out), mix_in(&inp)};
    MIX_RUN(be, a, cpu_f32_ops.dropout_forward(be, s, out, inp, p, seed));
}

void cpu_mixed_dropout_backward(backend *be, backend_stream *s, tensor dinp, tensor dout, float p, uint64_t seed) {
    mix_arg a[] = {mix_out(&dinp), mix_in(&dout)};
    MIX_RUN(be, a, cpu_f32_ops.dropout_backward(be, s, dinp, dout, p, seed));
}

void cpu_mixed_cast(backend *be, backend_stream *s, tensor out, tensor inp) {
    SK_ASSERT(tensor_is_contiguous(out) && tensor_is_contiguous(inp) && tensor_numel(out) == tensor_numel(inp));
    SK_ASSERT((out.dt == DT_F32 || out.dt == DT_BF16) && (inp.dt == DT_F32 || inp.dt == DT_BF16));
    mix_copy(out.data, out.dt, inp.data, inp.dt, (size_t)tensor_numel(out));
}
