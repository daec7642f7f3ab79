/* zero: ZeRO stages 0-3 over a comm (see zero.h).
 *
 * Invariants: chunk[g] * world >= groups[g].count; at[g] is group g's chunk offset in the
 * shard buffers (gshard, pshard, AdamW moments), whose padding stays zero. Buffers are
 * backend memory allocated once in zero_init; copies and fills go through the backend.
 *
 * Overlap. Collectives run on a communication stream after an event recorded on the compute
 * (default) stream, and return requests. Stage 2/3: two layer buckets alternate: layer l's
 * gradients go to bucket l & 1, whose reduce-scatter starts at after_backward(l) and runs
 * while the layers below compute; the bucket's previous reduce-scatter is waited for (and
 * its chunk added into gshard) just before the bucket is reused, two layers later, and every
 * pending one by zero_end_step. Outer groups have buckets of their own, settled at the next
 * before_backward(-1) or zero_end_step. So group g's chunks are added in micro-batch order,
 * the same sums as without overlap. Stage 3: slot[k] holds layer `layer` (-1: none) when
 * its gather is done or in flight (req); the layer after the current one (forward) or
 * before it (backward) is gathered into the other slot while the current one computes; a
 * slot is waited for before its layer is used or the slot is reused. outer_valid says
 * whether the outer groups are gathered. Both are reset when the parameters change
 * (zero_opt_step) or a buffer is borrowed (zero_gather_params). The order of collectives
 * depends only on the hook order, so it is the same on every rank.
 * SKEIN_ZERO_OVERLAP=0 waits for every collective as soon as it starts (measurements).
 *
 * Offload (stage 1-2): the shard's master and moments live in offload.c's pinned host buffers
 * at shard positions, z->opt keeps only the norm scalar and the step; after each host update
 * the new values reach the device through the offload's uploads (one rank, or f32 training)
 * or through zero_gather_group from the host masters (several ranks in mixed precision). */
#include "train/zero.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "model/tp_train.h"
#include "train/offload.h"

/* Stage 2/3 static: one layer's gradients on their way to the shard. */
typedef struct zero_bucket {
    float *grads;          /* (world * max_layer_chunk) */
    float *recv;           /* (max_layer_chunk) this rank's reduced chunk */
    int group;             /* the group whose reduce-scatter it holds (-1: none) */
} zero_bucket;

/* Stage 3: one gathered layer. */
typedef struct zero_slot {
    float *params;         /* (world * max_layer_chunk) */
    int layer;             /* gathered or being gathered (-1: none) */
    comm_req *req;         /* the gather in flight, or NULL */
} zero_slot;

struct zero {
    model *m;
    backend *be;
    comm *c;               /* NULL, or a world of one: collectives are copies */
    int rank, world, stage;
    bool dynamic;
    bool buckets;          /* stage 2/3 static: gradients reduced layer by layer in the hooks */
    bool overlap;          /* false: SKEIN_ZERO_OVERLAP=0 */
    size_t *chunk, *at;    /* (n_groups) */
    size_t *outer_at;      /* (n_groups) offset of an outer group in the outer buffers */
    size_t shard, max_chunk, max_layer_chunk, outer_total;
    float *gshard;         /* stage >= 2: reduced owned gradients (shard) */
    float *pshard;         /* stage 3: owned parameters (shard) */
    float *recv;           /* (max_chunk) stage 1-2: reduce-scatter receive / all-gather send */
    float *staging;        /* (world * max_chunk) stage 1, stage 2 dynamic */
    zero_bucket bucket[2];
    float *outer_bucket;   /* (outer_total) stage 2/3 static: outer groups' gradients */
    float *outer_recv;     /* (outer_total / world) their reduced chunks */
    comm_req **rs_req;     /* (n_groups) stage 2/3 static: group g's reduce-scatter in flight */
    float **rs_recv;       /* (n_groups) where its chunk arrives; NULL: nothing pending */
    zero_slot slot[2];
    float *outer_params;   /* (outer_total) stage 3: gathered outer groups */
    bool outer_valid;
    backend_stream *cs;    /* the communication stream */
    backend_event *ready;  /* recorded on the compute stream before each collective */
    double wait_s;         /* blocked in comm_wait since zero_begin_step */
    adamw opt;             /* stage 0: the whole model; else storage for the shard's moments (none
                            * with offload: only the norm scalar and the step count) */
    bool offloaded;        /* --offload optimizer */
    offload *off;          /* ZeRO-Offload: master and moments on the host (offload.h), or NULL */
    bool off_copies;       /* its copy lists are set (at the first step: stage 1's gradients are
                            * allocated by model_train_prepare) */
    offload_times off_times;   /* the last step's */
    double sq;             /* the last zero_end_step's global squared gradient norm */
    sk_status err;
    model_param_provider provider;
};

/* ---- memory through the backend ---- */

static void zero_copy(zero *z, void *dst, const void *src, size_t floats) {
    if (floats && dst != src) z->be->ops->copy(z->be, dst, src, floats * sizeof(float), COPY_DEVICE_TO_DEVICE, NULL);
}

static void zero_clear(zero *z, void *p, size_t floats) { backend_zero(z->be, p, floats * sizeof(float)); }

/* ---- collectives (NULL comm or world 1: copies) ---- */

static sk_status zc_fail(zero *z, sk_status st) {
    if (st != SK_OK && z->err == SK_OK) z->err = st;
    return st;
}

/* Waits for *req (NULL: nothing), counts the time blocked, clears *req. */
static sk_status zc_wait(zero *z, comm_req **req) {
    if (!*req) return z->err;
    double t0 = time_now();
    sk_status st = comm_wait(z->c, *req);
    z->wait_s += time_now() - t0;
    *req = NULL;
    return zc_fail(z, st);
}

typedef enum zc_kind { ZC_ALL_REDUCE, ZC_REDUCE_SCATTER, ZC_ALL_GATHER } zc_kind;

/* Starts an f32 collective on the communication stream after the compute issued so far:
 * all-reduce of recv(n) in place (send unused), reduce-scatter of send(world*n) into
 * recv(n), all-gather of send(n) into recv(world*n). *req gets the request to wait for
 * (NULL when done already: one process, an error, or overlap off). */
static sk_status zc_start(zero *z, zc_kind kind, const float *send, float *recv, size_t n, comm_req **req) {
    *req = NULL;
    if (z->err) return z->err;
    if (!z->c || z->world == 1) {
        if (kind != ZC_ALL_REDUCE) zero_copy(z, recv, send, n);
        return SK_OK;
    }
    z->be->ops->event_record(z->be, z->ready, NULL);
    z->be->ops->stream_wait_event(z->be, z->cs, z->ready);
    sk_status st = kind == ZC_ALL_REDUCE    ? comm_all_reduce_async(z->c, recv, n, DT_F32, z->cs, req)
                 : kind == ZC_REDUCE_SCATTER ? comm_reduce_scatter_async(z->c, send, recv, n, DT_F32, z->cs, req)
                                             : comm_all_gather_async(z->c, send, recv, n, DT_F32, z->cs, req);
    if (zc_fail(z, st) != SK_OK) return st;
    return z->overlap ? SK_OK : zc_wait(z, req);
}

/* The same, waited for. */
static sk_status zc_run(zero *z, zc_kind kind, const float *send, float *recv, size_t n) {
    comm_req *req;
    SK_TRY(zc_start(z, kind, send, recv, n, &req));
    return zc_wait(z, &req);
}

static sk_status zc_sum_f64(zero *z, double *buf, size_t n) {
    if (z->err) return z->err;
    if (!z->c || z->world == 1) return SK_OK;
    return zc_fail(z, comm_all_reduce_f64(z->c, buf, n));
}

/* ---- partition ---- */

/* The flat range this rank owns in group g: [*a, *a + *n). */
static void zero_owned(const zero *z, int g, size_t *a, size_t *n) {
    const model_group *gr = &z->m->groups[g];
    size_t lo = (size_t)z->rank * z->chunk[g];
    *a = gr->begin + lo;
    *n = lo >= gr->count ? 0 : (gr->count - lo < z->chunk[g] ? gr->count - lo : z->chunk[g]);
}

/* AdamW's spans for stages 1-3: each tensor's part inside the rank's owned range of its
 * group. The moments sit at the part's place in the shard; the parameter there too at stage
 * 3 (pshard), else in the flat buffer; the gradient in the flat buffer at stage 1, else in
 * the gradient shard. */
static sk_status zero_spans(const zero *z, backend_adamw_span **out, size_t *count) {
    const model *m = z->m;
    backend_adamw_span *sp = mem_calloc((size_t)(m->n_specs ? m->n_specs : 1) * sizeof *sp);
    if (!sp) return sk_fail(SK_ENOMEM, "out of memory for AdamW spans");
    size_t n_sp = 0;
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        size_t a, n;
        zero_owned(z, p->group, &a, &n);
        size_t lo = p->offset > a ? p->offset : a;
        size_t hi = p->offset + p->numel < a + n ? p->offset + p->numel : a + n;
        if (lo >= hi) continue;
        const int64_t s = (int64_t)(z->at[p->group] + (lo - a));   /* position in the shard */
        /* offload: the host holds everything at shard positions */
        const bool sh = z->stage == 3 || z->offloaded;
        sp[n_sp++] = (backend_adamw_span){sh ? s : (int64_t)lo, z->stage == 1 && !z->offloaded ? (int64_t)lo : s, s,
                                          (int64_t)(hi - lo), p->decay ? 1 : 0};
    }
    *out = sp;
    *count = n_sp;
    return SK_OK;
}

/* Sets AdamW's device spans (stages 1-3 without offload). */
static sk_status zero_set_spans(zero *z) {
    backend_adamw_span *sp;
    size_t n;
    SK_TRY(zero_spans(z, &sp, &n));
    sk_status st = adamw_set_spans(&z->opt, sp, n);
    mem_free(sp);
    return st;
}

/* Sizes of the partition of m over world ranks (no allocation). */
static void zero_sizes(const model *m, int world, size_t *shard, size_t *max_chunk, size_t *max_layer_chunk,
                       size_t *outer_total) {
    *shard = *max_chunk = *max_layer_chunk = *outer_total = 0;
    for (int g = 0; g < m->n_groups; g++) {
        size_t c = (m->groups[g].count + (size_t)world - 1) / (size_t)world;
        *shard += c;
        if (c > *max_chunk) *max_chunk = c;
        if (m->groups[g].layer >= 0 && c > *max_layer_chunk) *max_layer_chunk = c;
        if (m->groups[g].layer < 0) *outer_total += c * (size_t)world;
    }
}

void zero_formula(int stage, int world, int param_bytes, double psi, double out[3]) {
    const double N = world, p = param_bytes, k = param_bytes == 4 ? 8 : 12;   /* K: moments (+ master) */
    out[0] = stage >= 3 ? p * psi / N : p * psi;
    out[1] = stage >= 2 ? p * psi / N : p * psi;
    out[2] = stage >= 1 ? k * psi / N : k * psi;
}

void zero_plan(const model *m, int world, int stage, bool dynamic, int param_bytes, int micro_batch, int T,
               zero_mem *o) {
    size_t S, maxc, maxlc, outer;
    zero_sizes(m, world, &S, &maxc, &maxlc, &outer);
    const size_t P = (size_t)param_bytes, K = param_bytes == 4 ? 8 : 12, W = (size_t)world, psi = m->n_params;
    const bool buckets = stage >= 2 && !dynamic;
    memset(o, 0, sizeof *o);
    /* mixed precision (model_set_precision) adds the bf16 copy the products read */
    o->params = P * (stage >= 3 ? S : psi) + (m->act_dt != DT_F32 ? dtype_size(m->act_dt) * psi : 0);
    o->grads = P * (stage >= 2 ? S : psi) + (stage == 2 && dynamic ? P * psi : 0);
    o->optimizer = K * (stage >= 1 ? S : psi);
    if (buckets) o->buckets = P * (2 * W * maxlc + outer) + 4 * (2 * maxlc + outer / W) + (stage == 2 ? 4 * maxc : 0);
    if (stage == 1 || (stage == 2 && dynamic)) o->staging = 4 * (W * maxc + maxc);
    if (stage == 3) o->gathered = P * (2 * W * maxlc + outer);
    if (world > 1) o->comm_scratch = stage == 0 ? P * psi : P * W * maxc;
    o->activations = model_train_bytes(m, micro_batch, T) + 2 * sizeof(int) * (size_t)micro_batch * (size_t)T;
    o->total = o->params + o->grads + o->optimizer + o->buckets + o->gathered + o->staging + o->comm_scratch +
               o->activations;
    o->load_transient = stage == 3 ? P * psi : 0;
    o->peak = o->total > P * (psi + S) ? o->total : P * (psi + S);
}

void zero_plan_offload(const model *m, int world, zero_mem *o) {
    size_t S, maxc, maxlc, outer;
    zero_sizes(m, world, &S, &maxc, &maxlc, &outer);
    o->total -= o->optimizer;
    o->optimizer = 0;
    o->host_pinned = offload_pinned_bytes(S);
    if (m->act_dt != DT_F32) {   /* the f32 parameters leave the device but for the resident ones */
        const size_t f32 = sizeof(float) * m->n_params, kept = sizeof(float) * model_resident_numel(m);
        o->params = o->params - f32 + kept;
        o->total = o->total - f32 + kept;
        o->load_transient = f32 - kept;   /* at start, until the compute copy is cast */
    }
    const size_t start = o->total - o->activations + o->load_transient;   /* before the activations exist */
    o->peak = o->total > start ? o->total : start;
}

/* ---- stage 3: gathering parameters ---- */

static void zero_ensure_outer(zero *z) {
    if (z->outer_valid) return;
    for (int g = 0; g < z->m->n_groups; g++) {
        if (z->m->groups[g].layer >= 0) continue;
        float *dst = z->outer_params + z->outer_at[g];
        zc_run(z, ZC_ALL_GATHER, z->pshard + z->at[g], dst, z->chunk[g]);
        model_set_param_base(z->m, g, dst);
        model_write_compute(z->m, g, dst);   /* mixed precision: the products' bf16 copy */
    }
    z->outer_valid = true;
}

/* Group index of layer l (groups of layers are consecutive after the leading outer group). */
static int zero_layer_group(const zero *z, int l) {
    for (int g = 0; g < z->m->n_groups; g++)
        if (z->m->groups[g].layer == l) return g;
    SK_ASSERT(!"layer without a group");
    return -1;
}

/* Layer l's parameters into slot l & 1: gathered unless there (or on the way) already. use:
 * wait for them and point the model at them; else (prefetch) leave the gather in flight. */
static void zero_ensure_layer(zero *z, int l, bool use) {
    if (l < 0 || l >= z->m->cfg.n_layer) return;
    zero_slot *s = &z->slot[l & 1];
    int g = zero_layer_group(z, l);
    if (s->layer != l) {
        zc_wait(z, &s->req);   /* a gather of another layer still in flight */
        s->layer = zc_start(z, ZC_ALL_GATHER, z->pshard + z->at[g], s->params, z->chunk[g], &s->req) == SK_OK ? l : -1;
    }
    if (!use) return;
    zc_wait(z, &s->req);
    model_set_param_base(z->m, g, s->params);
    model_write_compute(z->m, g, s->params);
}

/* Waits for every gather in flight and forgets what the slots hold. */
static void zero_invalidate(zero *z) {
    for (int k = 0; k < 2; k++) {
        zc_wait(z, &z->slot[k].req);
        z->slot[k].layer = -1;
    }
    z->outer_valid = false;
}

/* ---- stage 2/3: gradient buckets ---- */

/* Waits for group g's reduce-scatter, if one is pending, and adds its chunk into the shard. */
static void zero_settle(zero *z, int g) {
    if (!z->rs_recv[g]) return;
    tensor dst = tensor_1d(z->gshard + z->at[g], DT_F32, (int64_t)z->chunk[g]);
    if (zc_wait(z, &z->rs_req[g]) == SK_OK)
        z->be->ops->add(z->be, NULL, dst, dst, tensor_1d(z->rs_recv[g], DT_F32, (int64_t)z->chunk[g]));
    z->rs_recv[g] = NULL;
}

static void zero_settle_all(zero *z) {
    for (int g = 0; z->rs_recv && g < z->m->n_groups; g++) zero_settle(z, g);
}

/* Points group g's gradients at dst (world * chunk floats), zeroed. */
static void zero_open_bucket(zero *z, int g, float *dst) {
    zero_clear(z, dst, z->chunk[g] * (size_t)z->world);
    model_set_grad_base(z->m, g, dst);
}

/* Starts the reduce-scatter of group g's gradients in src into recv (settled later). */
static void zero_close_bucket(zero *z, int g, const float *src, float *recv) {
    if (zc_start(z, ZC_REDUCE_SCATTER, src, recv, z->chunk[g], &z->rs_req[g]) != SK_OK) return;
    z->rs_recv[g] = recv;
}

static void hook_before_forward(void *ctx, model *m, int l) {
    zero *z = ctx;
    if (z->stage < 3) return;
    if (l < 0) {
        zero_ensure_outer(z);
        return;
    }
    zero_ensure_layer(z, l, true);
    zero_ensure_layer(z, l + 1, false);   /* gathered while layer l computes */
}

static void hook_before_backward(void *ctx, model *m, int l) {
    zero *z = ctx;
    if (z->stage >= 3) {
        if (l < 0) zero_ensure_outer(z);
        else {
            zero_ensure_layer(z, l, true);
            zero_ensure_layer(z, l - 1, false);   /* gathered while layer l computes */
        }
    }
    if (!z->buckets) return;
    if (l < 0) {
        for (int g = 0; g < m->n_groups; g++) {
            if (m->groups[g].layer >= 0) continue;
            zero_settle(z, g);   /* the previous micro-batch's */
            zero_open_bucket(z, g, z->outer_bucket + z->outer_at[g]);
        }
        return;
    }
    zero_bucket *b = &z->bucket[l & 1];
    if (b->group >= 0) zero_settle(z, b->group);   /* two layers ago, or the previous micro-batch */
    b->group = zero_layer_group(z, l);
    zero_open_bucket(z, b->group, b->grads);
}

static void hook_after_backward(void *ctx, model *m, int l) {
    zero *z = ctx;
    if (!z->buckets) return;
    if (l < 0) {
        for (int g = 0; g < m->n_groups; g++)
            if (m->groups[g].layer < 0)
                zero_close_bucket(z, g, z->outer_bucket + z->outer_at[g], z->outer_recv + z->outer_at[g] / (size_t)z->world);
        return;
    }
    zero_bucket *b = &z->bucket[l & 1];
    zero_close_bucket(z, b->group, b->grads, b->recv);   /* runs while layer l-1 computes */
}

/* ---- stages 1-2: sharing the updated parameters ---- */

/* All-gathers group g's parameters into a device buffer (*buf: the group's count elements
 * first, then padding): this rank's chunk comes from host_src (the offloaded master, host
 * memory) or, when NULL, from m->params. */
static sk_status zero_gather_group(zero *z, int g, const float *host_src, float **buf) {
    const model_group *gr = &z->m->groups[g];
    size_t a, n;
    zero_owned(z, g, &a, &n);
    *buf = z->staging ? z->staging : (gr->layer < 0 ? z->outer_bucket + z->outer_at[g] : z->bucket[0].grads);
    if (host_src) backend_upload(z->be, z->recv, host_src, n * sizeof(float));
    else zero_copy(z, z->recv, z->m->params + a, n);
    zero_clear(z, z->recv + n, z->chunk[g] - n);
    return zc_run(z, ZC_ALL_GATHER, z->recv, *buf, z->chunk[g]);
}

/* Stages 1-2: every rank gets every group of m->params back from its owner. */
static sk_status zero_share_params(zero *z) {
    const model *m = z->m;
    for (int g = 0; g < m->n_groups; g++) {
        float *buf;
        SK_TRY(zero_gather_group(z, g, NULL, &buf));
        zero_copy(z, m->params + m->groups[g].begin, buf, m->groups[g].count);
    }
    return SK_OK;
}

/* ---- ZeRO-Offload (offload.h) ---- */

/* Moves the shard's master weights to the host (the moments start there at zero); in mixed
 * precision the device keeps only the bf16 compute copy and the resident f32 tensors. */
static sk_status zero_offload_init(zero *z) {
    model *m = z->m;
    backend_adamw_span *sp;
    size_t n_sp;
    SK_TRY(zero_spans(z, &sp, &n_sp));
    sk_status st = offload_init(z->be, z->shard, sp, n_sp, &z->off);
    mem_free(sp);
    SK_TRY(st);
    float *master = offload_master(z->off);
    for (int g = 0; g < m->n_groups; g++) {
        size_t a, n;
        zero_owned(z, g, &a, &n);
        backend_download(z->be, master + z->at[g], m->params + a, n * sizeof(float));
    }
    return m->act_dt != DT_F32 ? model_release_master(m) : SK_OK;
}

/* The offload's copy lists, once the gradients are allocated: the reduced gradients come
 * down from the gradient shard (stage 2) or the owned ranges of m->grads (stage 1); the new
 * values go up into m->params' owned ranges (f32 training) or, with one rank in mixed
 * precision, into the compute copy (bf16) and the resident f32 views. Several ranks in mixed
 * precision gather from the host masters instead (zero_offload_publish). */
static sk_status zero_offload_copies(zero *z) {
    const model *m = z->m;
    offload_copy *downs = mem_calloc(sizeof *downs * ((size_t)m->n_groups + 1));
    offload_copy *ups = mem_calloc(sizeof *ups * ((size_t)m->n_groups + (size_t)m->n_specs + 1));
    if (!downs || !ups) {
        mem_free(downs);
        mem_free(ups);
        return sk_fail(SK_ENOMEM, "out of memory for the offload's copy lists");
    }
    size_t nd = 0, nu = 0;
    if (z->stage == 2) downs[nd++] = (offload_copy){0, z->shard, z->gshard, DT_F32};
    for (int g = 0; g < m->n_groups; g++) {
        size_t a, n;
        zero_owned(z, g, &a, &n);
        if (!n) continue;
        if (z->stage == 1) downs[nd++] = (offload_copy){z->at[g], n, m->grads + a, DT_F32};
        if (m->params) ups[nu++] = (offload_copy){z->at[g], n, m->params + a, DT_F32};
        else if (z->world == 1)
            ups[nu++] = (offload_copy){z->at[g], n, (char *)m->compute + a * dtype_size(m->act_dt), m->act_dt};
    }
    for (int i = 0; !m->params && z->world == 1 && i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        if (!model_spec_resident(m, i)) continue;
        /* with one rank the shard is the model: spec i sits at its offset */
        ups[nu++] = (offload_copy){p->offset, p->numel, model_param_view(m, i).data, DT_F32};
    }
    sk_status st = offload_set_copies(z->off, downs, nd, ups, nu);
    mem_free(downs);
    mem_free(ups);
    return st;
}

/* Several ranks in mixed precision: every group's new f32 values gathered from the ranks'
 * host masters, cast into the compute copy and copied into the resident views. */
static sk_status zero_offload_publish(zero *z) {
    model *m = z->m;
    backend *be = z->be;
    for (int g = 0; g < m->n_groups; g++) {
        const model_group *gr = &m->groups[g];
        float *buf;
        SK_TRY(zero_gather_group(z, g, offload_master(z->off) + z->at[g], &buf));
        be->ops->cast(be, NULL, tensor_1d((char *)m->compute + gr->begin * dtype_size(m->act_dt), m->act_dt,
                                          (int64_t)gr->count), tensor_1d(buf, DT_F32, (int64_t)gr->count));
        for (int i = 0; i < m->n_specs; i++)
            if (m->specs[i].group == g && model_spec_resident(m, i))
                zero_copy(z, model_param_view(m, i).data, buf + (m->specs[i].offset - gr->begin), m->specs[i].numel);
    }
    return SK_OK;
}

/* AdamW on the host (offload_step), then the new parameters shared as without offload. */
static sk_status zero_offload_step(zero *z, const opt_hparams *h, float lr) {
    model *m = z->m;
    if (!z->off_copies) {
        SK_TRY(zero_offload_copies(z));
        z->off_copies = true;
    }
    const backend_adamw_hp hp = adamw_hparams(h, lr, ++z->opt.step);
    offload_step(z->off, &hp, &z->sq, &z->off_times);
    if (m->params) return zero_share_params(z);   /* f32: the owned ranges went up into m->params */
    if (z->world > 1) SK_TRY(zero_offload_publish(z));
    model_compute_written(m);
    return z->err;
}

/* ---- life cycle ---- */

/* Allocates *p of `floats` zeroed floats of backend memory; false when out of memory. */
static bool zero_alloc(zero *z, float **p, size_t floats) { return (*p = backend_alloc(z->be, floats * sizeof(float))) != NULL; }

sk_status zero_init(model *m, comm *c, int stage, bool dynamic, bool offload_opt, zero **out) {
    if (stage < 0 || stage > 3) return sk_fail(SK_EARG, "--zero must be 0, 1, 2 or 3, got %d", stage);
    if (offload_opt && stage == 0)
        return sk_fail(SK_EARG, "--offload optimizer needs --zero 1 or 2: it moves the optimizer state of a rank's "
                                "shard to the host, and ZeRO-0 does not shard it (with one rank, --zero 1 shards "
                                "nothing and runs the same steps)");
    if (offload_opt && stage == 3)
        return sk_fail(SK_EARG, "--offload optimizer with --zero 3 is not supported yet (ZeRO-3 keeps its parameter "
                                "shard on the device and gathers f32 layers); use --zero 2");
    if (stage == 3 && dynamic)
        return sk_fail(SK_EARG, "--zero 3 with --data-dist dynamic is not supported: ZeRO-3 gathers every layer "
                                "with all ranks at every micro-batch, and dynamic distribution gives ranks different "
                                "numbers of micro-batches; use --zero 2 or --data-dist static");
    SK_ASSERT(m->params && !m->grads);
    /* the buffers are the backend's memory (MPI and gloo stage a device's, comm.h) */
    sk_status st = c && c->world > 1 ? comm_set_backend(c, m->be) : SK_OK;
    if (st) return sk_fail_ctx(st, "--zero over %d ranks on the %s backend", c->world, m->be->name);
    zero *z = mem_calloc(sizeof *z);
    if (!z) {
        if (c && c->world > 1) comm_set_backend(c, NULL);
        return SK_ENOMEM;
    }
    z->m = m;
    z->be = m->be;
    z->c = c;
    z->rank = c ? c->rank : 0;
    z->world = c ? c->world : 1;
    z->stage = stage;
    z->dynamic = dynamic;
    z->offloaded = offload_opt;
    z->buckets = stage >= 2 && !dynamic;
    const char *ov = getenv("SKEIN_ZERO_OVERLAP");
    z->overlap = !(ov && !strcmp(ov, "0"));
    for (int k = 0; k < 2; k++) {
        z->bucket[k].group = -1;
        z->slot[k].layer = -1;
    }
    const size_t W = (size_t)z->world;
    zero_sizes(m, z->world, &z->shard, &z->max_chunk, &z->max_layer_chunk, &z->outer_total);
    z->chunk = mem_calloc(sizeof(size_t) * (size_t)m->n_groups);
    z->at = mem_calloc(sizeof(size_t) * (size_t)m->n_groups);
    z->outer_at = mem_calloc(sizeof(size_t) * (size_t)m->n_groups);
    if (!z->chunk || !z->at || !z->outer_at) goto oom;
    size_t at = 0, oat = 0;   /* shard offsets pass 2^31 on models of billions of parameters */
    for (int g = 0; g < m->n_groups; g++) {
        z->chunk[g] = (m->groups[g].count + W - 1) / W;
        z->at[g] = at;
        at += z->chunk[g];
        if (m->groups[g].layer < 0) {
            z->outer_at[g] = oat;
            oat += z->chunk[g] * W;
        }
    }
    if (offload_opt) {   /* refused before anything is allocated */
        const char *what;
        /* shared by every rank of the host: the data-parallel peers and, under tensor
         * parallelism, the other shares' ranks */
        const size_t budget = offload_host_budget(&what) / ((size_t)W * (size_t)m->tp.size),
                     need = offload_pinned_bytes(z->shard);
        if (need > budget) {
            st = sk_fail(SK_ENOMEM, "--offload optimizer: a rank's master weights and AdamW moments (12 bytes for each "
                         "of its %zu parameters, plus staging) need %zu bytes (%.1f MiB) of pinned host memory, beyond "
                         "the %zu bytes (%.1f MiB) per rank that %s allows", z->shard, need, (double)need / 1048576.0,
                         budget, (double)budget / 1048576.0, what);
            goto fail;
        }
    }
    if (!(z->cs = z->be->ops->stream_create(z->be)) || !(z->ready = z->be->ops->event_create(z->be))) {
        st = sk_fail_ctx(SK_ENOMEM, "ZeRO-%d: creating the communication stream", stage);
        goto fail;
    }
    if ((st = adamw_init(&z->opt, z->be, 0, stage == 0 ? m->n_params : offload_opt ? 0 : z->shard))) goto fail;
    if ((st = stage == 0 ? adamw_set_model_spans(&z->opt, m) : offload_opt ? zero_offload_init(z) : zero_set_spans(z)))
        goto fail;
    if ((stage == 1 || stage == 2) && !zero_alloc(z, &z->recv, z->max_chunk)) goto oom;
    if (stage >= 2 && !zero_alloc(z, &z->gshard, z->shard)) goto oom;
    if ((stage == 1 || (stage == 2 && dynamic)) && !zero_alloc(z, &z->staging, W * z->max_chunk)) goto oom;
    if (stage == 3) {
        /* shard the parameters, then drop the full copy */
        if (!zero_alloc(z, &z->pshard, z->shard)) goto oom;
        for (int g = 0; g < m->n_groups; g++) {
            size_t a, n;
            zero_owned(z, g, &a, &n);
            zero_copy(z, z->pshard + z->at[g], m->params + a, n);
        }
        backend_synchronize(z->be);
        model_release_params(m);
        for (int k = 0; k < 2; k++)
            if (!zero_alloc(z, &z->slot[k].params, W * z->max_layer_chunk)) goto oom;
        if (!zero_alloc(z, &z->outer_params, z->outer_total)) goto oom;
    }
    if (z->buckets) {
        for (int k = 0; k < 2; k++)
            if (!zero_alloc(z, &z->bucket[k].grads, W * z->max_layer_chunk) ||
                !zero_alloc(z, &z->bucket[k].recv, z->max_layer_chunk))
                goto oom;
        if (!zero_alloc(z, &z->outer_bucket, z->outer_total) || !zero_alloc(z, &z->outer_recv, z->outer_total / W))
            goto oom;
        z->rs_req = mem_calloc(sizeof(comm_req *) * (size_t)m->n_groups);
        z->rs_recv = mem_calloc(sizeof(float *) * (size_t)m->n_groups);
        if (!z->rs_req || !z->rs_recv) goto oom;
    }
    z->provider = (model_param_provider){.before_forward = hook_before_forward,
                                         .before_backward = hook_before_backward,
                                         .after_backward = hook_after_backward,
                                         .external_grads = z->buckets};
    model_set_param_provider(m, &z->provider, z);
    *out = z;
    return SK_OK;
oom:
    st = sk_fail(SK_ENOMEM, "out of memory for the ZeRO-%d buffers of %zu parameters", stage, m->n_params);
fail:
    zero_free(z);
    return st;
}

void zero_free(zero *z) {
    if (!z) return;
    backend *be = z->be;
    if (z->c) {   /* nothing may stay in flight on buffers about to go */
        zero_settle_all(z);
        zero_invalidate(z);
        if (z->world > 1) comm_set_backend(z->c, NULL);
    }
    if (z->m->provider == &z->provider) model_set_param_provider(z->m, NULL, NULL);
    adamw_free(&z->opt);
    offload_free(z->off);
    mem_free(z->chunk);
    mem_free(z->at);
    mem_free(z->outer_at);
    mem_free(z->rs_req);
    mem_free(z->rs_recv);
    backend_mem_free(be, z->gshard);
    backend_mem_free(be, z->pshard);
    backend_mem_free(be, z->recv);
    backend_mem_free(be, z->staging);
    for (int k = 0; k < 2; k++) {
        backend_mem_free(be, z->bucket[k].grads);
        backend_mem_free(be, z->bucket[k].recv);
        backend_mem_free(be, z->slot[k].params);
    }
    backend_mem_free(be, z->outer_bucket);
    backend_mem_free(be, z->outer_recv);
    backend_mem_free(be, z->outer_params);
    if (z->ready) be->ops->event_free(be, z->ready);
    if (z->cs) be->ops->stream_free(be, z->cs);
    mem_free(z);
}

int zero_stage(const zero *z) { return z->stage; }
bool zero_full_params(const zero *z) { return z->m->params != NULL; }
const offload_times *zero_offload_times(const zero *z) { return z->off ? &z->off_times : NULL; }
size_t zero_pinned_bytes(const zero *z) { return z->off ? offload_pinned_bytes(z->shard) : 0; }
sk_status zero_status(const zero *z) { return z->err; }
long zero_opt_steps(const zero *z) { return z->opt.step; }
double zero_comm_wait_s(const zero *z) { return z->wait_s; }
bool zero_overlaps(const zero *z) { return z->overlap; }

/* ---- the step ---- */

void zero_begin_step(zero *z) {
    if (z->m->grads) model_zero_grad(z->m);
    if (z->gshard) zero_clear(z, z->gshard, z->shard);
    z->wait_s = 0;
}

sk_status zero_idle_pass(zero *z) {
    if (z->stage < 2 || z->dynamic) return z->err;
    model *m = z->m;
    const int L = m->cfg.n_layer;
    /* the hook order of model.h: forward, then backward */
    model_hook_before_forward(m, -1);
    for (int l = 0; l < L; l++) model_hook_before_forward(m, l);
    model_hook_before_backward(m, -1);
    for (int l = L - 1; l >= 0; l--) {
        model_hook_before_backward(m, l);
        model_hook_after_backward(m, l);
    }
    model_hook_after_backward(m, -1);
    return z->err;
}

/* A tensor-parallel share (tp_train.h): adds to sq (one f64, backend memory) the squares of
 * this rank's reduced gradients of the replicated tensors: all of them at stage 0, the owned
 * parts above. */
static void zero_tp_replicated_squares(zero *z, tensor sq) {
    model *m = z->m;
    for (int i = 0; i < m->n_specs; i++) {
        if (!tp_train_replicated(m, i)) continue;
        const model_param *p = &m->specs[i];
        size_t lo = p->offset, hi = lo + p->numel, a = lo, n = p->numel;
        if (z->stage > 0) zero_owned(z, p->group, &a, &n);
        if (a > lo) lo = a;
        if (a + n < hi) hi = a + n;
        if (lo >= hi) continue;
        const float *g = z->stage <= 1 ? m->grads + lo : z->gshard + z->at[p->group] + (lo - a);
        z->be->ops->sum_squares(z->be, NULL, sq, tensor_1d((float *)g, DT_F32, (int64_t)(hi - lo)));
    }
}

/* The global gradient norm from sq, this rank's squared sum (its shard's at stages 1-3, summed
 * here over the data-parallel ranks): a tensor-parallel share adds the other shares' cut
 * tensors, counting the replicated ones, the same on every share, once. Leaves the squared
 * norm in z->opt.sq for the device's clipping and in z->sq for the host's (offload). */
static sk_status zero_norm_finish(zero *z, double sq, double *grad_norm) {
    backend *be = z->be;
    const bool tp = z->m->tp.size > 1;
    double v[2] = {sq, 0};   /* everything, the replicated part */
    if (tp) {
        backend_zero(be, z->opt.sq, sizeof(double));
        zero_tp_replicated_squares(z, tensor_1d(z->opt.sq, DT_F64, 1));
        backend_download(be, &v[1], z->opt.sq, sizeof(double));
    }
    if (z->stage > 0) SK_TRY(zc_sum_f64(z, v, 2));
    if (tp) {
        double cut = v[0] - v[1];
        SK_TRY(zc_fail(z, comm_all_reduce_f64(z->m->tp.comm, &cut, 1)));
        v[0] = cut + v[1];
    }
    /* the device's clipping reads the global norm there, the host's (offload) in z->sq */
    if (tp || (z->stage > 0 && z->world > 1)) backend_upload(be, z->opt.sq, &v[0], sizeof(double));
    z->sq = v[0];
    *grad_norm = sqrt(v[0]);
    return SK_OK;
}

sk_status zero_end_step(zero *z, double *grad_norm) {
    model *m = z->m;
    backend *be = z->be;
    if (z->buckets) zero_settle_all(z);   /* the reduce-scatters still in flight */
    if (z->err) return z->err;
    if (z->stage == 0) {
        SK_TRY(zc_run(z, ZC_ALL_REDUCE, NULL, m->grads, m->n_params));
        double sq0;
        backend_zero(be, z->opt.sq, sizeof(double));
        be->ops->sum_squares(be, NULL, tensor_1d(z->opt.sq, DT_F64, 1),
                             tensor_1d(m->grads, DT_F32, (int64_t)m->n_params));
        backend_download(be, &sq0, z->opt.sq, sizeof sq0);
        return zero_norm_finish(z, sq0, grad_norm);
    }
    double sq;
    tensor sq_dev = tensor_1d(z->opt.sq, DT_F64, 1);   /* the squared norm, summed on the device */
    backend_zero(be, z->opt.sq, sizeof(double));
    if (!z->buckets) {
        /* stage 1 (2 with dynamic data): reduce-scatter the full local gradient group by group */
        for (int g = 0; g < m->n_groups; g++) {
            const model_group *gr = &m->groups[g];
            size_t padded = z->chunk[g] * (size_t)z->world, a, n;
            zero_copy(z, z->staging, m->grads + gr->begin, gr->count);
            zero_clear(z, z->staging + gr->count, padded - gr->count);
            SK_TRY(zc_run(z, ZC_REDUCE_SCATTER, z->staging, z->recv, z->chunk[g]));
            zero_owned(z, g, &a, &n);
            if (z->stage == 1) zero_copy(z, m->grads + a, z->recv, n);
            else zero_copy(z, z->gshard + z->at[g], z->recv, z->chunk[g]);
            if (z->stage == 1) be->ops->sum_squares(be, NULL, sq_dev, tensor_1d(m->grads + a, DT_F32, (int64_t)n));
        }
    }
    if (z->stage >= 2) be->ops->sum_squares(be, NULL, sq_dev, tensor_1d(z->gshard, DT_F32, (int64_t)z->shard));
    backend_download(be, &sq, z->opt.sq, sizeof sq);
    return zero_norm_finish(z, sq, grad_norm);
}

sk_status zero_opt_step(zero *z, const opt_hparams *h, float lr) {
    model *m = z->m;
    if (z->err) return z->err;
    model_params_changed(m);
    const int64_t np = (int64_t)m->n_params;
    if (z->stage == 0) {
        /* every rank updates every parameter: the bf16 compute copy is refreshed in the pass */
        const bool lp = m->compute && m->act_dt == DT_BF16;
        adamw_step(&z->opt, tensor_1d(m->params, DT_F32, np), lp ? tensor_1d(m->compute, DT_BF16, np) : tensor_none(),
                   tensor_1d(m->grads, DT_F32, np), h, lr);
        if (lp) model_compute_written(m);
        return SK_OK;
    }
    if (z->off) return zero_offload_step(z, h, lr);
    if (z->stage == 3) zero_invalidate(z);   /* the gathered copies are about to be stale */
    const int64_t ns = (int64_t)z->shard;
    adamw_step(&z->opt, z->stage == 3 ? tensor_1d(z->pshard, DT_F32, ns) : tensor_1d(m->params, DT_F32, np),
               tensor_none(), z->stage == 1 ? tensor_1d(m->grads, DT_F32, np) : tensor_1d(z->gshard, DT_F32, ns), h, lr);
    if (z->stage == 3) return z->err;
    return zero_share_params(z);
}

/* ---- checkpoints ---- */

sk_status zero_gather_params(zero *z, float *full) {
    model *m = z->m;
    if (z->stage < 3 && m->params) {
        if (full) backend_download(z->be, full, m->params, m->n_params * sizeof(float));
        return z->err;
    }
    if (z->off) {   /* mixed precision: the master is on the hosts */
        for (int g = 0; g < m->n_groups; g++) {
            float *buf;
            SK_TRY(zero_gather_group(z, g, offload_master(z->off) + z->at[g], &buf));
            if (full) backend_download(z->be, full + m->groups[g].begin, buf, m->groups[g].count * sizeof(float));
        }
        return SK_OK;
    }
    zero_invalidate(z);   /* the slots are borrowed */
    for (int g = 0; g < m->n_groups; g++) {
        const model_group *gr = &m->groups[g];
        float *buf = gr->layer < 0 ? z->outer_params + z->outer_at[g] : z->slot[0].params;
        SK_TRY(zc_run(z, ZC_ALL_GATHER, z->pshard + z->at[g], buf, z->chunk[g]));
        if (full) backend_download(z->be, full + gr->begin, buf, gr->count * sizeof(float));
    }
    zero_invalidate(z);
    return SK_OK;
}

/* The ranges this rank's optimizer state covers; returns how many (at most n_groups). */
static int zero_ranges(const zero *z, opt_range *r) {
    if (z->stage == 0) {
        r[0] = (opt_range){0, z->m->n_params, 0};
        return 1;
    }
    int k = 0;
    for (int g = 0; g < z->m->n_groups; g++) {
        size_t a, n;
        zero_owned(z, g, &a, &n);
        if (n) r[k++] = (opt_range){a, n, z->at[g]};
    }
    return k;
}

/* Collects the runs of a tensor-parallel share's ranges in the whole model's layout. */
typedef struct zero_tp_map {
    const model *m;
    opt_range *out;
    int n, cap;
    bool save;             /* skip the replicated tensors on TP ranks other than 0 */
    size_t begin, at;      /* the range being mapped: its first element and shard offset */
} zero_tp_map;

static void zero_tp_run(void *ctx, int spec, size_t at, size_t whole_at, size_t n) {
    zero_tp_map *k = ctx;
    if (k->save && k->m->tp.rank != 0 && tp_train_replicated(k->m, spec)) return;
    SK_ASSERT(k->n < k->cap);   /* sized by a counting pass (zero_tp_count) */
    k->out[k->n++] = (opt_range){whole_at, n, k->at + (at - k->begin)};
}

static void zero_tp_count(void *ctx, int spec, size_t at, size_t whole_at, size_t n) { ((zero_tp_map *)ctx)->cap++; }

/* The optimizer ranges of this rank in the files' layout, into a new array *out (mem_free):
 * the share's r(n) as they are, or for a tensor-parallel share mapped into the whole model's
 * layout (saving: the replicated tensors from TP rank 0 alone, the others hold the same
 * moments). Returns the count (-1: out of memory) and the files' parameter count in *total. */
static int zero_file_ranges(zero *z, bool save, opt_range **out, size_t *total) {
    const model *m = z->m;
    opt_range *r = mem_alloc(sizeof(opt_range) * (size_t)m->n_groups);
    if (!r) return -1;
    int n = zero_ranges(z, r);
    *total = m->n_params;
    *out = r;
    if (m->tp.size == 1) return n;
    zero_tp_map k = {.m = m, .save = save};
    for (int i = 0; i < n; i++) tp_train_runs(m, m->tp.rank, r[i].begin, r[i].count, zero_tp_count, &k);
    if (!(k.out = mem_alloc(sizeof(opt_range) * (size_t)(k.cap ? k.cap : 1)))) {
        mem_free(r);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        k.begin = r[i].begin;
        k.at = r[i].at;
        *total = tp_train_runs(m, m->tp.rank, r[i].begin, r[i].count, zero_tp_run, &k);
    }
    mem_free(r);
    *out = k.out;
    return k.n;
}

/* Where the shard's moments are: the backend that reaches them and the buffers (the host's
 * with offload). */
static void zero_moments(zero *z, backend **be, float **m, float **v) {
    *be = z->off ? offload_host(z->off) : z->be;
    *m = z->off ? offload_m(z->off) : z->opt.m;
    *v = z->off ? offload_v(z->off) : z->opt.v;
}

sk_status zero_save_opt(zero *z, const char *dir) {
    char path[4096], name[96];
    const int K = z->m->tp.size;
    if (z->stage == 0 && K == 1) {
        if (z->rank != 0) return SK_OK;
        return adamw_save(&z->opt, z->m->n_params, file_join(path, sizeof path, dir, "optimizer.bin"));
    }
    if (z->stage == 0 && z->rank != 0) return SK_OK;   /* tensor parallel: data-parallel rank 0's shares */
    opt_range *r;
    size_t total;
    int n = zero_file_ranges(z, true, &r, &total);
    if (n < 0) return SK_ENOMEM;
    /* named by the rank in the world of TP x DP ranks (TP groups of consecutive ranks) */
    snprintf(name, sizeof name, "optimizer-rank%d-of-%d.bin", z->rank * K + z->m->tp.rank, z->world * K);
    backend *be;
    float *om, *ov;
    zero_moments(z, &be, &om, &ov);
    sk_status st = opt_state_save(be, file_join(path, sizeof path, dir, name), total, z->opt.step, r, n, om, ov);
    mem_free(r);
    return st;
}

static bool is_opt_file(const char *name) {
    if (!strcmp(name, "optimizer.bin")) return true;
    int r, n, end = 0;
    return sscanf(name, "optimizer-rank%d-of-%d.bin%n", &r, &n, &end) == 2 && name[end] == 0;
}

sk_status zero_load_opt(zero *z, const char *dir) {
    opt_range *r;
    size_t total;
    int n = zero_file_ranges(z, false, &r, &total);
    if (n < 0) return SK_ENOMEM;
    size_t want = 0, copied = 0;
    for (int i = 0; i < n; i++) want += r[i].count;
    sk_status st = SK_OK;
    long step = -1;
    backend *be;
    float *om, *ov;
    zero_moments(z, &be, &om, &ov);
    DIR *d = opendir(dir);
    if (!d) {
        mem_free(r);
        return sk_fail(SK_EIO, "cannot list %s", dir);
    }
    struct dirent *e;
    while (st == SK_OK && (e = readdir(d)) != NULL) {
        if (!is_opt_file(e->d_name)) continue;
        char path[4096];
        long s = 0;
        st = opt_state_read(be, file_join(path, sizeof path, dir, e->d_name), total, r, n, om, ov, &s, &copied);
        if (st == SK_OK && step >= 0 && s != step)
            st = sk_fail(SK_EFORMAT, "%s: optimizer step %ld differs from the other shards' %ld", path, s, step);
        step = s;
    }
    closedir(d);
    mem_free(r);
    if (st) return st;
    if (copied != want)
        return sk_fail(SK_EFORMAT, "%s: the optimizer files cover %zu of the %zu values this rank needs%s", dir,
                       copied, want, copied > want ? " (overlapping shards)" : " (a shard is missing)");
    z->opt.step = step;
    return SK_OK;
}

size_t zero_proc_bytes(bool peak) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    const char *key = peak ? "VmHWM:" : "VmRSS:";
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) kb = strtoull(line + strlen(key), NULL, 10);
    fclose(f);
    return kb * 1024;
}

size_t zero_held_bytes(backend *be, size_t dev_free0) {
    size_t free_now = 0;
    if (!dev_free0) return zero_proc_bytes(true);
    if (backend_mem_info(be, &free_now, NULL) != SK_OK || free_now > dev_free0) return 0;
    return dev_free0 - free_now;
}
