/* arch: helpers shared by the architecture files (see arch.h). */
#include "model/arch.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void arch_plan_param(model_param *specs, int *n, size_t *off, int layer, bool decay, int ndim, int64_t d0,
                     int64_t d1, const char *fmt, ...) {
    if (specs) {
        model_param *p = &specs[*n];
        memset(p, 0, sizeof *p);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->name, sizeof p->name, fmt, ap);
        va_end(ap);
        p->ndim = ndim;
        p->shape[0] = d0;
        p->shape[1] = ndim > 1 ? d1 : 0;
        p->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
        p->offset = *off;
        p->decay = decay;
        p->layer = layer;
        *off += p->numel;
    }
    (*n)++;
}

size_t arch_plan_floats(const arch_plan_entry *e, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (e[i].floats + 15) & ~(size_t)15;
    return total;
}

float *arch_plan_alloc(backend *be, arch_plan_entry *e, int n) {
    float *mem = backend_alloc(be, arch_plan_floats(e, n) * sizeof(float));
    if (!mem) return NULL;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        *e[i].ptr = mem + off;
        off += (e[i].floats + 15) & ~(size_t)15;
    }
    return mem;
}

float arch_xent_loss(backend *be, tensor losses, tensor loss_sum, tensor logits, tensor targets_dev,
                     const int *targets) {
    const backend_ops *op = be->ops;
    const int64_t N = logits.shape[0], V = logits.shape[1];
    int counted = 0;
    for (int64_t i = 0; i < N; i++) {
        SK_ASSERT(targets[i] < V);
        counted += targets[i] >= 0;
    }
    backend_upload(be, targets_dev.data, targets, tensor_bytes(targets_dev));
    /* in place: logits become (softmax - onehot), backward scales them by dloss; dlogits
     * covers the padded row stride too (the padding columns get 0) */
    op->softmax_xent(be, NULL, losses, tensor_2d(logits.data, logits.dt, N, tensor_ld(logits)), logits, targets_dev,
                     1.0f);
    /* the sum in row order, in double, on the device: one scalar comes back */
    backend_zero(be, loss_sum.data, sizeof(double));
    op->sum_f64(be, NULL, loss_sum, losses);
    double sum;
    backend_download(be, &sum, loss_sum.data, sizeof sum);
    return counted ? (float)(sum / counted) : 0.0f;
}

tensor arch_lm_head(backend *be, tensor w, tensor w_compute, void *scratch, dtype lp, bool refresh) {
    if (lp == DT_F32) return w_compute;
    const int64_t V = w.shape[0], C = w.shape[1];
    if (refresh) be->ops->cast(be, NULL, tensor_2d(scratch, lp, V, C), w);
    return tensor_2d(scratch, lp, arch_vocab_padded(V), C);
}

void arch_check_tokens(const model *m, const int *tokens, size_t n, int n_src) {
    for (size_t i = 0; i < n; i++) SK_ASSERT(tokens[i] >= -n_src && tokens[i] < m->cfg.vocab_size);
}

bool arch_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

bool arch_infer_fits(arch_infer_dims have, arch_infer_dims want, arch_infer_dims *grown) {
    grown->tokens = have.tokens > want.tokens ? have.tokens : want.tokens;
    grown->seqs = have.seqs > want.seqs ? have.seqs : want.seqs;
    grown->ctx = have.ctx > want.ctx ? have.ctx : want.ctx;
    return have.tokens >= want.tokens && have.seqs >= want.seqs && have.ctx >= want.ctx;
}

void arch_batch_plan(arch_batch_ids *ids, arch_infer_dims d, arch_plan_entry *plan, int *n) {
    const size_t N = (size_t)d.tokens, S = (size_t)d.seqs;
    arch_plan_entry e[ARCH_BATCH_PLAN_ENTRIES] = {
        {(void **)&ids->tokens, N}, {(void **)&ids->pos, N}, {(void **)&ids->slot, N},
        {(void **)&ids->seq, 3 * S}, {(void **)&ids->tables, S * (size_t)d.ctx}, {(void **)&ids->out_rows, S},
    };
    for (int i = 0; i < ARCH_BATCH_PLAN_ENTRIES; i++) plan[(*n)++] = e[i];
}

/* One of b's arrays into the workspace: issued in stream order from pinned arrays, else
 * waited for (the host may reuse its array at once). */
static void arch_upload(backend *be, const model_batch *b, void *dst, const void *src, size_t bytes) {
    if (b->pinned && bytes) be->ops->copy(be, dst, src, bytes, COPY_HOST_TO_DEVICE, NULL);
    else backend_upload(be, dst, src, bytes);
}

void arch_batch_upload(model *m, const arch_batch_ids *ids, arch_infer_dims d, const model_batch *b) {
    backend *be = m->be;
    const size_t N = (size_t)b->n_tokens, S = (size_t)b->n_seqs, I = sizeof(int);
    SK_ASSERT(b->n_tokens <= d.tokens && b->n_seqs <= d.seqs && b->max_blocks <= d.ctx);
    SK_ASSERT(!b->pinned || m->tp.size == 1);   /* tp_token_rows' answer is not pinned */
    arch_upload(be, b, ids->tokens, tp_token_rows(m, b->tokens, b->n_tokens), N * I);
    if (b->token_src)   /* tokens still on the device: the previous step's ids */
        be->ops->resolve_ids(be, NULL, tensor_1d(ids->tokens, DT_I32, b->n_tokens),
                             tensor_1d((void *)b->token_src, DT_I32, b->n_token_src));
    arch_upload(be, b, ids->pos, b->pos, N * I);
    arch_upload(be, b, ids->slot, b->slot, N * I);
    arch_upload(be, b, ids->seq, b->seq, 3 * S * I);
    arch_upload(be, b, ids->tables, b->tables, S * (size_t)b->max_blocks * I);
    arch_upload(be, b, ids->out_rows, b->out_rows, (size_t)b->n_out * I);
}

tensor arch_cache_rows(const model_kv_cache *kv, int l, bool values, int64_t KD) {
    return arch_mat_at(values ? kv->v : kv->k, kv->dt, (size_t)l * kv->layer_stride,
                       (int64_t)kv->n_blocks * kv->block_size, KD);
}

void arch_paged_attention(backend *be, const model_kv_cache *kv, const arch_batch_ids *ids, const model_batch *b,
                          int l, tensor out, tensor q, tensor k, tensor v, tensor cos, tensor sin, int NH, int NKV,
                          int W) {
    const backend_ops *op = be->ops;
    const int64_t KD = k.shape[1];
    tensor kc = arch_cache_rows(kv, l, false, KD), vc = arch_cache_rows(kv, l, true, KD);
    backend_kv_store(be, NULL, q, k, v, cos, sin, kc, vc, tensor_1d(ids->slot, DT_I32, b->n_tokens));
    op->paged_attention(be, NULL, out, q, kc, vc, tensor_2d(ids->seq, DT_I32, b->n_seqs, 3),
                        tensor_2d(ids->tables, DT_I32, b->n_seqs, b->max_blocks), kv->block_size, NH, NKV, W);
}

void arch_gather_out(backend *be, const arch_batch_ids *ids, const model_batch *b, tensor out, tensor x) {
    be->ops->embed_forward(be, NULL, out, tensor_2d(ids->out_rows, DT_I32, 1, b->n_out), x, tensor_none());
}

model_split arch_split_find(const char *name, const arch_split_rule *rules, int n) {
    for (int i = 0; i < n; i++)
        if (arch_ends_with(name, rules[i].suffix)) return rules[i].split;
    return (model_split){SPLIT_WHOLE, 0, 1};
}
