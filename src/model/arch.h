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

/* A (d0,d1,d2) view of contiguous floats in backend memory: an activation handed to an op
 * that takes views (attention's (B,T,D) rows, its lse (B,NH,T)). */
tensor arch_view3(float *p, int64_t d0, int64_t d1, int64_t d2);

/* The loss head of a training forward: uploads targets(N) (host; < 0 ignored) into
 * targets_dev, replaces logits(N,V) in place by (softmax - onehot) for backward, and returns
 * the mean loss over the counted targets (0 when none). */
float arch_xent_loss(backend *be, float *losses, float *logits, int *targets_dev, const int *targets, int N, int V);

/* Asserts every token id is inside the vocabulary (callers validate input before this). */
void arch_check_tokens(const model *m, const int *tokens, size_t n);
bool arch_ends_with(const char *s, const char *suffix);

#endif
