/* arch: what every architecture file (gpt2.c, llama.c) shares: planning its parameter
 * specs, planning and allocating its activation buffers in one piece, the fused loss head,
 * and token checks. Internal to src/model/ (model.h is the public interface). */
#ifndef SKEIN_ARCH_H
#define SKEIN_ARCH_H

#include "model/model.h"
#include "model/tp.h"

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
/* Floats a plan entry takes for n elements of dt (activations planned in bf16 take half). */
static inline size_t arch_floats_of(size_t n, dtype dt) { return (n * dtype_size(dt) + sizeof(float) - 1) / sizeof(float); }
/* A contiguous (rows, cols) view of dtype dt starting off elements into buffer p: a layer's
 * slot of a stacked activation whose dtype the model's precision decides. */
static inline tensor arch_mat_at(void *p, dtype dt, size_t off, int64_t rows, int64_t cols) {
    return tensor_2d((char *)p + off * dtype_size(dt), dt, rows, cols);
}
/* The row stride of training logits: V rounded up to 64, so the LM head's products run on
 * aligned rows (50257 is odd) and the padding columns are never read as vocabulary. */
static inline int64_t arch_vocab_padded(int64_t V) { return (V + 63) & ~(int64_t)63; }
/* The LM head weight the vocabulary products read. In mixed precision (lp not f32) a copy
 * (Vp,C) of w (V,C, the f32 parameter) in scratch, whose rows V..Vp-1 stay zero (the plan
 * zeroes them), cast from w when refresh (each forward; the backward reuses it): every
 * product over the vocabulary then runs on aligned rows (cuBLASLt falls back to slow
 * kernels on an odd V such as GPT-2's 50257) and the padding logits come out 0. In f32,
 * w_compute itself (V,C). */
tensor arch_lm_head(backend *be, tensor w, tensor w_compute, void *scratch, dtype lp, bool refresh);

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

/* The sizes an inference workspace is planned for (model_infer_prepare). */
typedef struct arch_infer_dims { int tokens, seqs, ctx; } arch_infer_dims;

/* Whether have (0s: nothing yet) covers want; when not, *grown is the larger of the two in
 * each dimension, what to plan next. */
bool arch_infer_fits(arch_infer_dims have, arch_infer_dims want, arch_infer_dims *grown);

/* A batch's arrays (model_batch) in backend memory: both architectures' steps read them. */
typedef struct arch_batch_ids {
    int *tokens, *pos, *slot;   /* (tokens) */
    int *seq;                   /* (seqs, 3) */
    int *tables;                /* (seqs * ctx): a table has at most ctx blocks */
    int *out_rows;              /* (seqs) */
} arch_batch_ids;
#define ARCH_BATCH_PLAN_ENTRIES 6
/* Appends the entries of ids for d at plan[*n] (ARCH_BATCH_PLAN_ENTRIES of them). */
void arch_batch_plan(arch_batch_ids *ids, arch_infer_dims d, arch_plan_entry *plan, int *n);
/* Uploads b's arrays into ids (within d, asserted); the tokens as rows of m's embedding
 * (tp_token_rows: the ids themselves unless m is split). */
void arch_batch_upload(model *m, const arch_batch_ids *ids, arch_infer_dims d, const model_batch *b);
/* Layer l's key (values = true: value) rows of kv, (n_blocks * block_size, KD). */
tensor arch_cache_rows(const model_kv_cache *kv, int l, bool values, int64_t KD);
/* Writes the step's new keys k(N,KD) and values v(N,KD) of layer l into their slots, then
 * runs paged attention of q(N,QD) over them into out(N,QD): the middle of every block. With
 * cos and sin (not tensor_none(): each row's rotary angles, (N,HS/2)), q and k rotate first,
 * in the same op as the writes (backend_kv_store); k is then left rotated or not. */
void arch_paged_attention(backend *be, const model_kv_cache *kv, const arch_batch_ids *ids, const model_batch *b,
                          int l, tensor out, tensor q, tensor k, tensor v, tensor cos, tensor sin, int NH, int NKV,
                          int W);
/* Gathers rows b->out_rows of x(N,C) into out(R,C): the rows whose logits are asked for. */
void arch_gather_out(backend *be, const arch_batch_ids *ids, const model_batch *b, tensor out, tensor x);

/* Parameter i (grad = false) or its gradient, through its group's base (model.h), so ZeRO's
 * hooks can move a layer to a gathered copy or a gradient bucket: norms, biases, embeddings. */
static inline tensor arch_param(const model *m, bool grad, int i) {
    return grad ? model_grad_view(m, i) : model_param_view(m, i);
}
/* A matrix parameter (the compute view the products read: bf16 in mixed precision) or its
 * gradient. */
static inline tensor arch_matrix(const model *m, bool grad, int i) {
    return grad ? model_grad_view(m, i) : model_compute_view(m, i);
}

/* Plans a model for cfg (specs, groups) without parameter memory: m->params NULL, every base
 * NULL. model_create allocates the f32 buffer on it; weights.c binds mapped views instead. */
sk_status model_plan(const model_config *cfg, backend *be, model **out);

/* A tensor-parallel cut by the end of a parameter's name (model_arch.split). */
typedef struct arch_split_rule { const char *suffix; model_split split; } arch_split_rule;
/* The split of the first of the n rules whose suffix ends name; SPLIT_WHOLE when none does. */
model_split arch_split_find(const char *name, const arch_split_rule *rules, int n);

/* Asserts every token id is inside the vocabulary, or, from -n_src on, a token the device
 * resolves (model_batch.token_src: -k-1 for entry k < n_src); callers validate input before this. */
void arch_check_tokens(const model *m, const int *tokens, size_t n, int n_src);
bool arch_ends_with(const char *s, const char *suffix);

#endif
