/* tp_train: a training model's tensor-parallel share (see tp_train.h).
 *
 * A share is planned by the architecture from its cut config, so its specs are the whole
 * model's in the same order, with the same names, each cut tensor narrower. The cut of each
 * tensor is the architecture's inference rule (model_arch.split): along dimension `dim` the
 * whole tensor is `blocks` blocks (GPT-2's packed q, k, v: 3), and rank r holds the same part
 * [start, start + count) of each; the embeddings, the LM head and the row-cut biases, which
 * inference cuts by vocabulary or gives to rank 0, stay whole here. Everything is host-side
 * bookkeeping over flat offsets; only tp_train_split and tp_train_gather move data. */
#include "model/tp_train.h"

#include <string.h>

#include "comm/comm.h"
#include "model/arch.h"

sk_status tp_train_check(const model_config *c, int K, bool dropout, dtype precision) {
    if (K == 1) return SK_OK;
    SK_TRY(model_tp_check(c, K));
    if (c->n_kv_head % K)
        return sk_fail(SK_ECONFIG, "--tp %d: training needs the model's %d key/value heads to divide over the ranks "
                       "(inference shares them; training would have to sum their gradients)", K, c->n_kv_head);
    if (dropout)
        return sk_fail(SK_EARG, "--tp %d with --dropout is not supported: the attention's dropout masks are keyed by "
                       "the whole model's heads", K);
    if (precision != DT_F32 && precision != DT_BF16)
        return sk_fail(SK_EARG, "--tp %d trains in f32 or bf16 mixed precision, not %s", K, dtype_name(precision));
    return SK_OK;
}

model_config tp_train_whole_config(const model *share) {
    model_config c = share->cfg;
    c.n_head *= share->tp.size;
    c.n_kv_head *= share->tp.size;
    c.ffn_dim *= share->tp.size;
    return c;
}

/* Whether a split unit cuts a tensor in training (heads and MLP width) or leaves it whole. */
static bool tp_train_cuts(model_split_unit u) { return u == SPLIT_HEADS || u == SPLIT_KV_HEADS || u == SPLIT_FFN; }

bool tp_train_replicated(const model *share, int i) {
    const model_config wc = tp_train_whole_config(share);
    return !tp_train_cuts(share->arch->split(&wc, &share->specs[i]).unit);
}

/* Calls fn for the part of the run (share elements [at, at+n) at whole_at) inside [lo, hi). */
static void tp_train_clip(int spec, size_t at, size_t whole_at, size_t n, size_t lo, size_t hi, tp_train_run_fn fn,
                          void *ctx) {
    const size_t a = at > lo ? at : lo, b = at + n < hi ? at + n : hi;
    if (a < b) fn(ctx, spec, a, whole_at + (a - at), b - a);
}

size_t tp_train_runs(const model *share, int rank, size_t begin, size_t count, tp_train_run_fn fn, void *ctx) {
    const model_config wc = tp_train_whole_config(share), *c = &share->cfg;
    const int n = share->arch->plan_params(&wc, NULL);
    SK_ASSERT(n == share->n_specs && rank >= 0 && rank < share->tp.size);
    model_param *whole = mem_alloc(sizeof(model_param) * (size_t)n);
    SK_ASSERT(whole);
    share->arch->plan_params(&wc, whole);
    const size_t end = begin + count, HS = (size_t)c->head_dim;
    for (int i = 0; i < n; i++) {
        const model_param *p = &share->specs[i], *w = &whole[i];
        if (p->offset >= end || p->offset + p->numel <= begin) continue;
        const model_split s = share->arch->split(&wc, w);
        if (!tp_train_cuts(s.unit)) {
            SK_ASSERT(p->numel == w->numel);
            tp_train_clip(i, p->offset, w->offset, p->numel, begin, end, fn, ctx);
            continue;
        }
        /* the whole tensor as (rows, cols), cut along dim (a 1-D tensor: one row, cut along it) */
        const int dim = w->ndim == 1 ? 1 : s.dim, blocks = s.blocks ? s.blocks : 1;
        const size_t rows = w->ndim == 1 ? 1 : (size_t)w->shape[0], cols = (size_t)w->shape[w->ndim - 1];
        const size_t block = (dim == 0 ? rows : cols) / (size_t)blocks;
        const size_t cnt = s.unit == SPLIT_FFN ? (size_t)c->ffn_dim
                         : (size_t)(s.unit == SPLIT_HEADS ? c->n_head : c->n_kv_head) * HS;
        const size_t start = (size_t)rank * cnt;
        SK_ASSERT(start + cnt <= block && p->numel * (size_t)share->tp.size == w->numel);
        if (dim == 0) {
            for (size_t b = 0; b < (size_t)blocks; b++)
                tp_train_clip(i, p->offset + b * cnt * cols, w->offset + (b * block + start) * cols, cnt * cols, begin, end,
                              fn, ctx);
        } else {
            for (size_t r = 0; r < rows; r++)
                for (size_t b = 0; b < (size_t)blocks; b++)
                    tp_train_clip(i, p->offset + (r * (size_t)blocks + b) * cnt, w->offset + r * cols + b * block + start,
                                  cnt, begin, end, fn, ctx);
        }
    }
    const size_t total = whole[n - 1].offset + whole[n - 1].numel;
    mem_free(whole);
    return total;
}

/* Copies between a share's and the whole model's host buffers, one direction per use. */
typedef struct tp_train_copy { float *share; const float *share_src; float *whole; const float *whole_src; } tp_train_copy;

static void tp_train_cut_run(void *ctx, int spec, size_t at, size_t whole_at, size_t n) {
    tp_train_copy *k = ctx;
    memcpy(k->share + at, k->whole_src + whole_at, n * sizeof(float));
}

static void tp_train_put_run(void *ctx, int spec, size_t at, size_t whole_at, size_t n) {
    tp_train_copy *k = ctx;
    memcpy(k->whole + whole_at, k->share_src + at, n * sizeof(float));
}

/* Hands m to *out on success; frees it (NULL: nothing) and passes st on otherwise. */
static sk_status tp_train_hand_over(sk_status st, model *m, model **out) {
    if (st) {
        model_free(m);
        return st;
    }
    *out = m;
    return SK_OK;
}

sk_status tp_train_split(const model *whole, comm *tp, model **out) {
    const int K = tp->world;
    *out = NULL;
    SK_ASSERT(whole->params && !whole->tp.comm);
    SK_TRY(tp_train_check(&whole->cfg, K, false, DT_F32));
    model_config c = whole->cfg;
    c.n_head /= K;
    c.n_kv_head /= K;
    c.ffn_dim /= K;
    model *m;
    SK_TRY(model_create(&c, whole->be, &m));
    model_tp *t = &m->tp;   /* model_create left rank 0 of 1 with the share's counts */
    t->rank = tp->rank;
    t->size = K;
    /* the layers' sums move the backend's memory (staged through pinned memory by MPI on a
     * GPU); tp_free sets it back to host memory */
    sk_status st = comm_set_backend(tp, m->be);
    if (st) return tp_train_hand_over(st, m, out);
    t->comm = tp;
    float *w = mem_alloc(whole->n_params * sizeof(float)), *s = mem_alloc(m->n_params * sizeof(float));
    st = w && s ? SK_OK : sk_fail(SK_ENOMEM, "tensor parallel training: %zu floats to cut the model",
                                            whole->n_params + m->n_params);
    if (st == SK_OK) {
        backend_download(whole->be, w, whole->params, whole->n_params * sizeof(float));
        tp_train_copy k = {.share = s, .whole_src = w};
        tp_train_runs(m, t->rank, 0, m->n_params, tp_train_cut_run, &k);
        backend_upload(m->be, m->params, s, m->n_params * sizeof(float));
        model_params_changed(m);
        st = tp_prepare(m, 1, 1);   /* the collectives' stream and events */
    }
    mem_free(w);
    mem_free(s);
    return tp_train_hand_over(st, m, out);
}

/* Floats of one share that tp_train_gather moves per collective. */
#define TP_GATHER_CHUNK ((size_t)1 << 24)

/* all(K, n) on the host: every rank's params(n), gathered over share's group in chunks through
 * the backend's memory, where the group's comm moves it (a device comm such as NCCL moves no
 * host memory; a host one stages it: comm_set_backend). */
static sk_status tp_train_all_gather(const model *share, const float *params, float *all) {
    const int K = share->tp.size, rank = share->tp.rank;
    const size_t n = share->n_params, c = n < TP_GATHER_CHUNK ? n : TP_GATHER_CHUNK;
    backend *be = share->be;
    float *buf = backend_alloc(be, (size_t)K * c * sizeof(float));
    if (!buf) return sk_fail_ctx(SK_ENOMEM, "tensor parallel training: %zu floats to gather the model", (size_t)K * c);
    sk_status st = SK_OK;
    for (size_t at = 0; at < n && st == SK_OK; at += c) {
        const size_t len = n - at < c ? n - at : c;
        backend_upload(be, buf + (size_t)rank * len, params + at, len * sizeof(float));
        st = comm_all_gather(share->tp.comm, buf + (size_t)rank * len, buf, len, DT_F32, NULL);
        for (int r = 0; r < K && st == SK_OK; r++)
            backend_download(be, all + (size_t)r * n + at, buf + (size_t)r * len, len * sizeof(float));
    }
    backend_mem_free(be, buf);
    return st;
}

sk_status tp_train_gather(const model *share, const float *params, model **whole) {
    const int K = share->tp.size, rank = share->tp.rank;
    const size_t n = share->n_params;
    *whole = NULL;
    float *all = mem_alloc((size_t)K * n * sizeof(float));
    if (!all) return sk_fail(SK_ENOMEM, "tensor parallel training: %zu floats to gather the model", (size_t)K * n);
    sk_status st = tp_train_all_gather(share, params, all);
    model *w = NULL;
    float *host = NULL;
    if (st == SK_OK && rank == 0) {
        const model_config wc = tp_train_whole_config(share);
        st = model_create(&wc, share->be, &w);
        if (st == SK_OK && !(host = mem_alloc(w->n_params * sizeof(float))))
            st = sk_fail(SK_ENOMEM, "tensor parallel training: %zu floats for the whole model", w->n_params);
        if (st == SK_OK) {
            for (int r = 0; r < K; r++) {
                tp_train_copy k = {.whole = host, .share_src = all + (size_t)r * n};
                tp_train_runs(share, r, 0, n, tp_train_put_run, &k);
            }
            backend_upload(w->be, w->params, host, w->n_params * sizeof(float));
            model_params_changed(w);
        }
    }
    mem_free(host);
    mem_free(all);
    return tp_train_hand_over(st, w, whole);
}
