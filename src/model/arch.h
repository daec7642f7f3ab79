/* arch: what every architecture file (gpt2.c, llama.c) shares: planning its parameter
 * specs, planning and allocating its activation buffers in one piece, the fused loss head,
 * and token checks. Internal to src/model/ (model.h is the public interface). */
#ifndef SKEIN_ARCH_H
#define SKEIN_ARCH_H

#include "model/model.h"

/* Appends spec number *n (when specs is not NULL) named by the printf format, of shape (d0)
 * for ndim 1 or (d0, d1) for ndim 2, at flat offset *off, and advances *n and *off. */
void arch_plan_param(model_param *specs, int *n, size_t *off, int layer, bool decay, int ndim, int64_t d0,
                     int64_t d1, const char *fmt, ...) __attribute__((format(printf, 9, 10)));

/* One buffer of a plan: where to store its pointer, and its size in floats. */
typedef struct arch_plan_entry { void **ptr; size_t floats; } arch_plan_entry;

/* Floats the entries take back to back, each rounded up to 16 (64 bytes). */
size_t arch_plan_floats(const arch_plan_entry *e, int n);
/* Allocates the entries in one backend buffer and points each at its place; returns the
 * buffer (the caller frees it with backend_mem_free), or NULL when out of memory. */
float *arch_plan_alloc(backend *be, arch_plan_entry *e, int n);

/* f32 views of planned backend buffers (activations, scratch, caches): (n), (rows, cols) and
 * (d0,d1,d2), contiguous. The architecture files build every activation view through these. */
static inline tensor arch_vec(float *p, int64_t n) { return tensor_1d(p, DT_F32, n); }
static inline tensor arch_mat(float *p, int64_t rows, int64_t cols) { return tensor_2d(p, DT_F32, rows, cols); }
/* A contiguous (d0,d1,d2) f32 view: attention's (B,T,D) rows and its lse (B,NH,T). */
static inline tensor arch_view3(float *p, int64_t d0, int64_t d1, int64_t d2) {
    const int64_t shape[3] = {d0, d1, d2};
    return tensor_make(p, DT_F32, MEM_DEVICE, 3, shape);
}
/* Rows (N,D) of a contiguous activation as sequences (B,T,D), N = B*T: what attention takes. */
static inline tensor arch_seq(tensor x, int64_t B, int64_t T) {
    const int64_t shape[3] = {B, T, x.shape[1]};
    return tensor_reshape(x, 3, shape);
}

/* The loss head of a training forward: uploads targets(N) (host; < 0 ignored) into
 * targets_dev (i32, N), replaces logits(N,V) in place by (softmax - onehot) for backward,
 * writes the per-row losses(N), sums them on the device into loss_sum (one f64) and
 * downloads that one scalar. Returns the mean loss over the counted targets (0 when none). */
float arch_xent_loss(backend *be, tensor losses, tensor loss_sum, tensor logits, tensor targets_dev,
                     const int *targets);

/* A sequence's keys and values (model.h): mem holds the keys (L, max_T, KD), then the values
 * (L, max_T, KD), KD = n_kv_head * head_dim (C for GPT-2); positions 0..pos-1 are filled.
 * Architecture code writes a step's new rows and reads rows 0..pos+n-1 through arch_kv. */
struct model_kv {
    backend *be;
    int n_layer, kd, max_T;
    int pos;                 /* next position; model_infer_step advances it */
    float *mem;              /* backend memory */
};

/* Layer l's keys (values = true: values) of kv, as a (max_T, KD) view. */
static inline tensor arch_kv(const model_kv *kv, int l, bool values) {
    SK_ASSERT(l >= 0 && l < kv->n_layer);
    const size_t per_layer = (size_t)kv->max_T * kv->kd;
    return arch_mat(kv->mem + ((values ? (size_t)kv->n_layer : 0) + (size_t)l) * per_layer, kv->max_T, kv->kd);
}

/* Plans a model for cfg (specs, groups) without parameter memory: m->params NULL, every base
 * NULL. model_create allocates the f32 buffer on it; weights.c binds mapped views instead. */
sk_status model_plan(const model_config *cfg, backend *be, model **out);

/* Asserts every token id is inside the vocabulary (callers validate input before this). */
void arch_check_tokens(const model *m, const int *tokens, size_t n);
bool arch_ends_with(const char *s, const char *suffix);

#endif
