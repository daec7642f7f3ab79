/* tp: cutting a model's weights over tensor-parallel ranks and the collectives of its
 * inference step (see tp.h, and model_tp in model.h for the cut itself).
 *
 * A cut piece is described by where it lies in the whole tensor: along the cut dimension the
 * tensor is `blocks` blocks of `block` elements, and the rank takes [start, start + count) of
 * each. Rows of a row-major matrix (dim 0, one block) are contiguous in the file: on a
 * host-memory backend they stay a view into the mapping. Anything else, 1-D pieces included, is
 * copied, in order, into one backend allocation (m->tp.slices): the destination of a piece is
 * always written front to back, so a device backend is filled through one staging buffer. On
 * a device every piece is a copy, in the dtype the whole model's device copy gives its tensor
 * (devw.h: bf16 matrices, f32 vectors; all f32 when the device runs inference in f32).
 * Then every page of the mapping outside the rank's views is released from the process
 * (tp_release_unused), so its resident weights are its share. */
#include "model/tp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "comm/comm.h"
#include "model/arch.h"
#include "model/devw.h"

/* Copies start on cache-line boundaries inside the slices. */
#define SLICE_ALIGN 64
/* Bytes staged per upload when filling a device backend. */
#define STAGE_BYTES ((size_t)4 << 20)
/* Collectives a device backend keeps in flight before the host waits for the oldest. */
#define TP_PENDING 8

struct model_tp_run {
    int max_tokens, max_seqs;
    int *rows;                 /* (max_tokens) host: tp_token_rows' answer */
    float *gather;             /* (K, max_seqs, vocab_chunk) backend: every rank's logits */
    int *iota;                 /* (max_seqs) backend: 0, 1, ...: set_rows' index for whole rows */
    backend_stream *cs;        /* where the collectives run */
    backend_event *ready, *done;   /* compute -> cs, cs -> compute */
    comm_req *pending[TP_PENDING]; /* device backends: started, not yet waited for */
    int n_pending;
};

void tp_init(model_tp *t, const model_config *c, int rank, int K) {
    const int V = c->vocab_size, chunk = (V + K - 1) / K;
    t->rank = rank;
    t->size = K;
    t->n_head = c->n_head / K;
    t->n_kv_head = c->n_kv_head >= K ? c->n_kv_head / K : 1;
    t->ffn_dim = c->ffn_dim / K;
    t->vocab_chunk = chunk;
    t->vocab0 = rank * chunk;
    t->n_vocab = V - t->vocab0 < chunk ? V - t->vocab0 : chunk;
    t->lp = DT_F32;
}

sk_status model_tp_check(const model_config *c, int K) {
    if (K < 1 || K > 4096) return sk_fail(SK_EARG, "--tp %d: the ranks must number 1 to 4096", K);
    if (K == 1) return SK_OK;
    if (!model_arch_get(c->arch)->split)
        return sk_fail(SK_ECONFIG, "--tp %d: the %s architecture cannot be split", K, model_arch_get(c->arch)->name);
    if (c->n_head % K)
        return sk_fail(SK_ECONFIG, "--tp %d: the model's %d attention heads do not divide over %d ranks", K, c->n_head, K);
    if (c->n_kv_head % K && K % c->n_kv_head)
        return sk_fail(SK_ECONFIG, "--tp %d: the model's %d key/value heads neither divide over %d ranks nor divide %d "
                       "(to be shared by %d/%d ranks each)", K, c->n_kv_head, K, K, K, c->n_kv_head);
    if (c->ffn_dim % K)
        return sk_fail(SK_ECONFIG, "--tp %d: the model's MLP width %d does not divide over %d ranks", K, c->ffn_dim, K);
    if ((int64_t)(K - 1) * ((c->vocab_size + K - 1) / K) >= c->vocab_size)
        return sk_fail(SK_ECONFIG, "--tp %d: a vocabulary of %d leaves a rank without rows", K, c->vocab_size);
    return SK_OK;
}

/* ---- cutting ---- */

/* Where rank t's piece of spec p (whole view g) lies; see the top of the file. */
typedef struct tp_piece {
    bool absent, copy, zero_row;
    int dim, blocks;           /* of the whole tensor viewed as (rows, cols) */
    int64_t rows, cols, block, start, count;
    int ndim;
    int64_t shape[2];          /* the piece's */
} tp_piece;

static tp_piece tp_piece_of(const model *m, const model_param *p, tensor g, bool device) {
    const model_config *c = &m->cfg;
    const model_tp *t = &m->tp;
    const model_split s = m->arch->split(c, p);
    const int64_t HS = c->head_dim;
    tp_piece q = {.ndim = g.ndim, .dim = g.ndim == 1 ? 1 : s.dim, .blocks = s.blocks ? s.blocks : 1,
                  .rows = g.ndim == 1 ? 1 : g.shape[0], .cols = g.shape[g.ndim - 1]};
    SK_ASSERT(g.ndim == 1 || g.ndim == 2);
    q.shape[0] = g.shape[0];
    q.shape[1] = g.ndim > 1 ? g.shape[1] : 0;
    q.block = (q.dim == 0 ? q.rows : q.cols) / q.blocks;
    q.start = 0;
    q.count = q.block;
    switch (s.unit) {
    case SPLIT_WHOLE: break;
    case SPLIT_FIRST_RANK: q.absent = t->rank != 0; break;
    case SPLIT_HEADS: q.start = (int64_t)t->rank * t->n_head * HS; q.count = (int64_t)t->n_head * HS; break;
    case SPLIT_KV_HEADS:
        q.start = (int64_t)t->rank * c->n_kv_head / t->size * HS;
        q.count = (int64_t)t->n_kv_head * HS;
        break;
    case SPLIT_FFN: q.start = (int64_t)t->rank * t->ffn_dim; q.count = t->ffn_dim; break;
    case SPLIT_EMBED: q.zero_row = true; /* fall through */
    case SPLIT_VOCAB: q.start = t->vocab0; q.count = t->n_vocab; break;
    }
    SK_ASSERT(q.start + q.count <= q.block && q.block * q.blocks == (q.dim == 0 ? q.rows : q.cols));
    q.shape[g.ndim == 1 ? 0 : s.dim] = q.blocks * q.count + (q.zero_row ? 1 : 0);
    /* 1-D pieces too (a few KB): the mapping is then read only through the large row views */
    q.copy = !q.absent && (device || g.ndim == 1 || q.zero_row || q.blocks > 1 || (q.dim == 1 && q.count < q.cols));
    return q;
}

/* Writes a piece front to back: straight into host memory, or through a staging buffer
 * uploaded to a device. */
typedef struct tp_writer {
    backend *be;
    dtype dt;                  /* of the destination */
    unsigned char *dst;        /* next byte of the destination (backend memory) */
    unsigned char *stage;      /* device: STAGE_BYTES, NULL on a host-memory backend */
    size_t staged;             /* bytes */
} tp_writer;

static void tp_flush(tp_writer *w) {
    if (!w->staged) return;
    backend_upload(w->be, w->dst, w->stage, w->staged);
    w->dst += w->staged;
    w->staged = 0;
}

/* Appends n elements of dtype dt at src, converted to the destination's dtype. */
static void tp_put(tp_writer *w, const void *src, dtype dt, size_t n) {
    const size_t es = dtype_size(dt), ds = dtype_size(w->dt);
    if (!w->stage) {
        devw_convert(w->dst, w->dt, src, dt, n);
        w->dst += n * ds;
        return;
    }
    for (size_t off = 0; off < n;) {
        const size_t room = (STAGE_BYTES - w->staged) / ds, k = room < n - off ? room : n - off;
        devw_convert(w->stage + w->staged, w->dt, (const unsigned char *)src + off * es, dt, k);
        w->staged += k * ds;
        off += k;
        if (STAGE_BYTES - w->staged < ds) tp_flush(w);
    }
}

/* Copies piece q of g through w (the zero row: the destination was zeroed at allocation). */
static void tp_copy_piece(tp_writer *w, const tp_piece *q, tensor g) {
    const size_t es = dtype_size(g.dt);
    const unsigned char *src = g.data;
    if (q->dim == 0) {
        for (int b = 0; b < q->blocks; b++)
            tp_put(w, src + (size_t)(b * q->block + q->start) * q->cols * es, g.dt, (size_t)(q->count * q->cols));
    } else {
        for (int64_t r = 0; r < q->rows; r++)
            for (int b = 0; b < q->blocks; b++)
                tp_put(w, src + (size_t)(r * q->cols + b * q->block + q->start) * es, g.dt, (size_t)q->count);
    }
    tp_flush(w);
    if (q->zero_row) w->dst += (size_t)q->cols * dtype_size(w->dt);
}

static int tp_cmp_views(const void *a, const void *b) {
    const char *x = ((const tensor *)a)->data, *y = ((const tensor *)b)->data;
    return (x > y) - (x < y);
}

/* Releases every page of m's file mappings but those of its own mapped views (file_map_release):
 * what the copies read is read once, and the page cache maps a file in large folios, so one
 * byte read can map megabytes around it. */
static sk_status tp_release_unused(model *m) {
    tensor *kept = mem_alloc(sizeof(tensor) * (size_t)m->n_specs);
    if (!kept) return SK_ENOMEM;
    for (int j = 0; j < wts_files(m->weights); j++) {
        const file_map f = wts_mapping(m->weights, j);
        const char *lo = f.data, *hi = lo + f.size, *from = lo;
        int n = 0;
        for (int i = 0; i < m->n_specs; i++)
            if (m->views[i].mem == MEM_MAPPED && (const char *)m->views[i].data >= lo && (const char *)m->views[i].data < hi)
                kept[n++] = m->views[i];
        qsort(kept, (size_t)n, sizeof *kept, tp_cmp_views);
        for (int k = 0; k <= n; k++) {
            const char *to = k < n ? (const char *)kept[k].data : hi;
            if (to > from) file_map_release(from, (size_t)(to - from));
            if (k < n && (const char *)kept[k].data + tensor_bytes(kept[k]) > from)
                from = (const char *)kept[k].data + tensor_bytes(kept[k]);
        }
    }
    mem_free(kept);
    return SK_OK;
}

static size_t tp_round(size_t n) { return (n + SLICE_ALIGN - 1) / SLICE_ALIGN * SLICE_ALIGN; }

/* The dtype piece q of whole view g is copied in: the file's on a host-memory backend, else
 * mat_dt for a matrix and f32 for a vector. */
static dtype tp_piece_dtype(const tp_piece *q, tensor g, bool device, dtype mat_dt) {
    return !device ? g.dt : q->ndim > 1 ? mat_dt : DT_F32;
}

sk_status tp_cut(model *m, comm *c, const tensor *full, dtype mat_dt) {
    SK_ASSERT(!m->views && m->arch->split && c && (mat_dt == DT_F32 || mat_dt == DT_BF16));
    backend *be = m->be;
    const bool device = !be->host_memory;
    tp_init(&m->tp, &m->cfg, c->rank, c->world);
    /* the layers' sums move be's memory: NCCL on the device, MPI or gloo staged (comm_stage.h) */
    SK_TRY(comm_set_backend(c, be));
    m->tp.comm = c;
    m->tp.lp = device ? mat_dt : DT_F32;
    m->views = mem_calloc(sizeof(tensor) * (size_t)m->n_specs);
    if (!m->views) return SK_ENOMEM;
    size_t bytes = 0;
    for (int i = 0; i < m->n_specs; i++) {
        tp_piece q = tp_piece_of(m, &m->specs[i], full[i], device);
        if (q.copy)
            bytes += tp_round((size_t)(q.shape[0] * (q.ndim > 1 ? q.shape[1] : 1)) *
                              dtype_size(tp_piece_dtype(&q, full[i], device, mat_dt)));
    }
    if (bytes && !(m->tp.slices = backend_alloc(be, bytes)))
        return sk_fail_ctx(SK_ENOMEM, "rank %d of %d: %zu bytes for its slices of the weights", c->rank, c->world, bytes);
    m->tp.slice_bytes = bytes;
    tp_writer w = {.be = be, .stage = device ? mem_alloc(STAGE_BYTES) : NULL};
    if (device && !w.stage) return SK_ENOMEM;
    unsigned char *next = m->tp.slices;
    for (int i = 0; i < m->n_specs; i++) {
        const tensor g = full[i];
        tp_piece q = tp_piece_of(m, &m->specs[i], g, device);
        if (q.absent) {
            m->views[i] = tensor_none();
        } else if (!q.copy) {
            m->views[i] = q.count == q.block ? g : tensor_rows(g, q.start, q.count);
        } else {
            w.dt = tp_piece_dtype(&q, g, device, mat_dt);
            w.dst = next;
            m->views[i] = tensor_make(next, w.dt, MEM_DEVICE, q.ndim, q.shape);
            tp_copy_piece(&w, &q, g);
            next += tp_round((size_t)tensor_numel(m->views[i]) * dtype_size(w.dt));
        }
    }
    mem_free(w.stage);
    if (device)   /* rank 0's line (the others are quiet): its share of the device memory */
        log_info("weights: rank %d of %d holds %.2f GB of slices on the %s device (%s matrices)", c->rank, c->world,
                 (double)bytes / 1e9, be->name, dtype_name(mat_dt));
    return tp_release_unused(m);
}

/* ---- the step ---- */

sk_status tp_prepare(model *m, int max_tokens, int max_seqs) {
    model_tp *t = &m->tp;
    if (t->size == 1) return SK_OK;
    backend *be = m->be;
    model_tp_run *r = t->run;
    if (r && r->max_tokens >= max_tokens && r->max_seqs >= max_seqs) return SK_OK;
    if (!r) {
        if (!(r = t->run = mem_calloc(sizeof *r))) return SK_ENOMEM;
        if (!(r->cs = be->ops->stream_create(be)) || !(r->ready = be->ops->event_create(be)) ||
            !(r->done = be->ops->event_create(be)))
            return sk_fail_ctx(SK_ENOMEM, "tensor parallelism: the collectives' stream");
    }
    if (r->max_tokens > max_tokens) max_tokens = r->max_tokens;
    if (r->max_seqs > max_seqs) max_seqs = r->max_seqs;
    mem_free(r->rows);
    if (r->gather) backend_mem_free(be, r->gather);
    if (r->iota) backend_mem_free(be, r->iota);
    const size_t S = (size_t)max_seqs, gathered = (size_t)t->size * S * (size_t)t->vocab_chunk;
    r->rows = mem_alloc(sizeof(int) * (size_t)max_tokens);
    r->gather = backend_alloc(be, sizeof(float) * gathered);
    r->iota = backend_alloc(be, sizeof(int) * S);
    int *iota = mem_alloc(sizeof(int) * S);
    if (!r->rows || !r->gather || !r->iota || !iota) {
        mem_free(iota);
        r->max_tokens = r->max_seqs = 0;
        return sk_fail_ctx(SK_ENOMEM, "tensor parallelism: gathering the logits of %d sequences", max_seqs);
    }
    for (int i = 0; i < max_seqs; i++) iota[i] = i;
    backend_upload(be, r->iota, iota, sizeof(int) * S);
    mem_free(iota);
    r->max_tokens = max_tokens;
    r->max_seqs = max_seqs;
    return SK_OK;
}

/* Records the first failure (its message) and waits for nothing more. */
static void tp_failed(model *m, sk_status st) {
    if (m->tp.status) return;
    m->tp.status = st;
    snprintf(m->tp.error, sizeof m->tp.error, "%s", sk_errmsg());
}

/* Waits for the oldest request in flight. */
static void tp_wait_oldest(model *m) {
    model_tp_run *r = m->tp.run;
    const double t0 = time_now();
    sk_status st = comm_wait(m->tp.comm, r->pending[0]);
    m->tp.comm_s += time_now() - t0;
    memmove(r->pending, r->pending + 1, sizeof(comm_req *) * (size_t)--r->n_pending);
    if (st) tp_failed(m, st);
}

/* Starts tp_collective's all-reduce or all-gather on stream s. */
static sk_status tp_start(model *m, bool gather, void *buf, size_t n, dtype dt, backend_stream *s, comm_req **req) {
    const model_tp *t = &m->tp;
    return gather ? comm_all_gather_async(t->comm, (char *)buf + (size_t)t->rank * n * dtype_size(dt), buf, n, dt, s, req)
                  : comm_all_reduce_async(t->comm, buf, n, dt, s, req);
}

/* An all-reduce of buf(n) of dtype dt, or with gather an all-gather of chunks of n (this
 * rank's already at buf + rank*n), ordered after the compute issued so far and before what
 * follows. */
static void tp_collective(model *m, bool gather, void *buf, size_t n, dtype dt) {
    model_tp *t = &m->tp;
    model_tp_run *r = t->run;
    backend *be = m->be;
    if (t->status) return;
    /* host memory, or a device staged through the host: the result is there once waited for */
    const bool now = be->host_memory || !comm_stream_ordered(t->comm);
    /* staged copies wait for the compute anyway: drained first, the time is the collective's */
    if (now && !be->host_memory) be->ops->stream_synchronize(be, NULL);
    const double t0 = time_now();
    comm_req *req = NULL;
    sk_status st;
    if (now) {
        if ((st = tp_start(m, gather, buf, n, dt, NULL, &req)) == SK_OK) st = comm_wait(t->comm, req);
        if (st) tp_failed(m, st);
        t->comm_s += time_now() - t0;
        return;
    }
    be->ops->event_record(be, r->ready, NULL);
    be->ops->stream_wait_event(be, r->cs, r->ready);
    if ((st = tp_start(m, gather, buf, n, dt, r->cs, &req))) {
        tp_failed(m, st);
        return;
    }
    be->ops->event_record(be, r->done, r->cs);
    be->ops->stream_wait_event(be, NULL, r->done);
    t->comm_s += time_now() - t0;
    if (r->n_pending == TP_PENDING) tp_wait_oldest(m);
    r->pending[r->n_pending++] = req;
}

const int *tp_token_rows(model *m, const int *tokens, int n) {
    const model_tp *t = &m->tp;
    if (t->size == 1) return tokens;
    int *rows = t->run->rows;
    SK_ASSERT(n <= t->run->max_tokens);
    for (int i = 0; i < n; i++) {
        const int k = tokens[i] - t->vocab0;
        rows[i] = k >= 0 && k < t->n_vocab ? k : t->n_vocab;
    }
    return rows;
}

void tp_sum(model *m, tensor x) {
    if (m->tp.size == 1) return;
    SK_ASSERT((x.dt == DT_F32 || x.dt == DT_BF16) && tensor_is_contiguous(x));
    tp_collective(m, false, x.data, (size_t)tensor_numel(x), x.dt);
}

tensor tp_row_bias(const model *m, tensor b) { return m->tp.rank == 0 ? b : tensor_none(); }

tensor tp_logits(model *m, tensor last, tensor head, float *out, int R) {
    const backend_ops *op = m->be->ops;
    const model_tp *t = &m->tp;
    const int V = m->cfg.vocab_size, Vc = t->vocab_chunk;
    tensor logits = tensor_2d_ld(out, DT_F32, R, V, arch_vocab_padded(V)), h = tensor_rows(head, 0, t->n_vocab);
    if (t->size == 1) {
        op->matmul(m->be, NULL, logits, last, false, h, true, 1.0f, 0.0f);
        return logits;
    }
    model_tp_run *r = t->run;
    SK_ASSERT(R <= r->max_seqs);
    const size_t chunk = (size_t)R * Vc;
    op->matmul(m->be, NULL, tensor_2d_ld(r->gather + t->rank * chunk, DT_F32, R, t->n_vocab, Vc), last, false, h, true,
               1.0f, 0.0f);
    tp_collective(m, true, r->gather, chunk, DT_F32);
    for (int k = 0; k < t->size; k++) {
        const int nk = V - k * Vc < Vc ? V - k * Vc : Vc;
        op->set_rows(m->be, NULL, tensor_cols(logits, (int64_t)k * Vc, nk),
                     tensor_2d_ld(r->gather + k * chunk, DT_F32, R, nk, Vc), tensor_1d(r->iota, DT_I32, R));
    }
    while (r->n_pending) tp_wait_oldest(m);
    return logits;
}

sk_status model_step_status(const model *m) {
    return m->tp.status ? sk_fail(m->tp.status, "%s", m->tp.error) : SK_OK;
}

void tp_free(model *m) {
    model_tp *t = &m->tp;
    backend *be = m->be;
    model_tp_run *r = t->run;
    if (r) {
        while (r->n_pending) tp_wait_oldest(m);
        mem_free(r->rows);
        if (r->gather) backend_mem_free(be, r->gather);
        if (r->iota) backend_mem_free(be, r->iota);
        if (r->cs) be->ops->stream_free(be, r->cs);
        if (r->ready) be->ops->event_free(be, r->ready);
        if (r->done) be->ops->event_free(be, r->done);
        mem_free(r);
    }
    if (t->slices) backend_mem_free(be, t->slices);
    if (t->comm && t->size > 1) comm_set_backend(t->comm, NULL);   /* before be is freed (comm.h) */
    t->run = NULL;
    t->slices = NULL;
}
