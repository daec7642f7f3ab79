/* zero: ZeRO stages 0-3 over a comm (see zero.h).
 *
 * Invariants: chunk[g] * world >= groups[g].count; at[g] is group g's chunk offset in the
 * shard buffers (gshard, pshard, AdamW moments), whose padding stays zero. Buffers are
 * allocated once in zero_init. Stage 3: slot_layer[k] names the layer whose parameters slot k
 * holds (-1: none) and outer_valid says whether the outer groups are gathered; both are reset
 * when the parameters change (zero_opt_step) or a buffer is borrowed (zero_gather_params).
 * Collectives work on host buffers (the CPU backend and the MPI comm). */
#include "train/zero.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"

struct zero {
    model *m;
    backend *be;
    comm *c;
    int rank, world, stage;
    bool dynamic;
    bool buckets;          /* stage 2/3 static: gradients reduced layer by layer in the hooks */
    size_t *chunk, *at;    /* (n_groups) */
    size_t *outer_at;      /* (n_groups) offset of an outer group in the outer buffers */
    size_t shard, max_chunk, max_layer_chunk, outer_total;
    float *gshard;         /* stage >= 2: reduced owned gradients (shard) */
    float *pshard;         /* stage 3: owned parameters (shard) */
    float *recv;           /* (max_chunk) reduce-scatter receive / all-gather send */
    float *staging;        /* (world * max_chunk) stage 1, stage 2 dynamic */
    float *bucket;         /* (world * max_layer_chunk) stage 2/3 static: one layer's gradients */
    float *outer_bucket;   /* (outer_total) stage 2/3 static: outer groups' gradients */
    float *slot[2];        /* (world * max_layer_chunk) stage 3: gathered layers */
    float *outer_params;   /* (outer_total) stage 3: gathered outer groups */
    int slot_layer[2];
    bool outer_valid;
    adamw opt;             /* stage 0: the whole model; else storage for the shard's moments */
    sk_status err;
    model_hooks hooks;
};

/* ---- collectives (NULL comm: one process) ---- */

static sk_status zc_fail(zero *z, sk_status st) {
    if (st != SK_OK && z->err == SK_OK) z->err = st;
    return st;
}

static sk_status zc_reduce_scatter(zero *z, const float *send, float *recv, size_t chunk) {
    if (z->err) return z->err;
    if (!z->c) { memcpy(recv, send, chunk * sizeof(float)); return SK_OK; }
    return zc_fail(z, z->c->ops->reduce_scatter_sum(z->c, send, recv, chunk));
}

static sk_status zc_all_gather(zero *z, const float *send, float *recv, size_t chunk) {
    if (z->err) return z->err;
    if (!z->c) { memmove(recv, send, chunk * sizeof(float)); return SK_OK; }
    return zc_fail(z, z->c->ops->all_gather(z->c, send, recv, chunk));
}

static sk_status zc_sum_f64(zero *z, double *buf, size_t n) {
    if (z->err) return z->err;
    if (!z->c || z->world == 1) return SK_OK;
    return zc_fail(z, z->c->ops->all_reduce_sum_f64(z->c, buf, n));
}

/* ---- partition ---- */

/* The flat range this rank owns in group g: [*a, *a + *n). */
static void zero_owned(const zero *z, int g, size_t *a, size_t *n) {
    const model_group *gr = &z->m->groups[g];
    size_t lo = (size_t)z->rank * z->chunk[g];
    *a = gr->begin + lo;
    *n = lo >= gr->count ? 0 : (gr->count - lo < z->chunk[g] ? gr->count - lo : z->chunk[g]);
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
    o->params = P * (stage >= 3 ? S : psi);
    o->grads = P * (stage >= 2 ? S : psi) + (stage == 2 && dynamic ? P * psi : 0);
    o->optimizer = K * (stage >= 1 ? S : psi);
    if (buckets) o->buckets = P * (W * maxlc + outer) + 4 * maxc;
    if (stage == 1 || (stage == 2 && dynamic)) o->staging = 4 * (W * maxc + maxc);
    if (stage == 3) o->gathered = P * (2 * W * maxlc + outer);
    if (world > 1) o->comm_scratch = stage == 0 ? P * psi : P * W * maxc;
    o->activations = model_train_bytes(m, micro_batch, T) + 2 * sizeof(int) * (size_t)micro_batch * (size_t)T;
    o->total = o->params + o->grads + o->optimizer + o->buckets + o->gathered + o->staging + o->comm_scratch +
               o->activations;
    o->load_transient = stage == 3 ? P * psi : 0;
    o->peak = o->total > P * (psi + S) ? o->total : P * (psi + S);
}

/* ---- stage 3: gathering parameters ---- */

/* Gathers group g into dst and points the model's base there. */
static void zero_gather_group(zero *z, int g, float *dst) {
    zc_all_gather(z, z->pshard + z->at[g], dst, z->chunk[g]);
    z->m->param_base[g] = dst;
}

static void zero_ensure_outer(zero *z) {
    if (z->outer_valid) return;
    for (int g = 0; g < z->m->n_groups; g++)
        if (z->m->groups[g].layer < 0) zero_gather_group(z, g, z->outer_params + z->outer_at[g]);
    z->outer_valid = true;
}

/* Group index of layer l (groups of layers are consecutive after the leading outer group). */
static int zero_layer_group(const zero *z, int l) {
    for (int g = 0; g < z->m->n_groups; g++)
        if (z->m->groups[g].layer == l) return g;
    SK_ASSERT(!"layer without a group");
    return -1;
}

static void zero_ensure_layer(zero *z, int l) {
    if (l < 0 || l >= z->m->cfg.n_layer) return;
    int k = l & 1;
    if (z->slot_layer[k] == l) {
        z->m->param_base[zero_layer_group(z, l)] = z->slot[k];
        return;
    }
    zero_gather_group(z, zero_layer_group(z, l), z->slot[k]);
    z->slot_layer[k] = l;
}

static void zero_invalidate(zero *z) {
    z->slot_layer[0] = z->slot_layer[1] = -1;
    z->outer_valid = false;
}

/* ---- stage 2/3: gradient buckets ---- */

/* Points group g's gradients at dst (world * chunk floats) and zeroes it. */
static void zero_open_bucket(zero *z, int g, float *dst) {
    memset(dst, 0, sizeof(float) * z->chunk[g] * (size_t)z->world);
    z->m->grad_base[g] = dst;
}

/* Reduce-scatters the bucket of group g and adds this rank's chunk into the gradient shard. */
static void zero_close_bucket(zero *z, int g, const float *src) {
    if (zc_reduce_scatter(z, src, z->recv, z->chunk[g]) != SK_OK) return;
    float *dst = z->gshard + z->at[g];
    for (size_t i = 0; i < z->chunk[g]; i++) dst[i] += z->recv[i];
}

static void hook_before_forward(void *ctx, model *m, int l) {
    zero *z = ctx;
    if (z->stage < 3) return;
    if (l < 0) { zero_ensure_outer(z); return; }
    zero_ensure_layer(z, l);
    zero_ensure_layer(z, l + 1);   /* prefetch */
}

static void hook_before_backward(void *ctx, model *m, int l) {
    zero *z = ctx;
    if (z->stage >= 3) {
        if (l < 0) zero_ensure_outer(z);
        else {
            zero_ensure_layer(z, l);
            zero_ensure_layer(z, l - 1);   /* prefetch */
        }
    }
    if (!z->buckets) return;
    if (l < 0) {
        for (int g = 0; g < m->n_groups; g++)
            if (m->groups[g].layer < 0) zero_open_bucket(z, g, z->outer_bucket + z->outer_at[g]);
    } else {
        zero_open_bucket(z, zero_layer_group(z, l), z->bucket);
    }
}

static void hook_after_backward(void *ctx, model *m, int l) {
    zero *z = ctx;
    if (!z->buckets) return;
    if (l < 0) {
        for (int g = 0; g < m->n_groups; g++)
            if (m->groups[g].layer < 0) zero_close_bucket(z, g, z->outer_bucket + z->outer_at[g]);
    } else {
        zero_close_bucket(z, zero_layer_group(z, l), z->bucket);
    }
}

/* ---- life cycle ---- */

sk_status zero_init(model *m, comm *c, int stage, bool dynamic, zero **out) {
    if (stage < 0 || stage > 3) return sk_fail(SK_EARG, "--zero must be 0, 1, 2 or 3, got %d", stage);
    if (stage == 3 && dynamic)
        return sk_fail(SK_EARG, "--zero 3 with --data-dist dynamic is not supported: ZeRO-3 gathers every layer "
                                "with all ranks at every micro-batch, and dynamic distribution gives ranks different "
                                "numbers of micro-batches; use --zero 2 or --data-dist static");
    SK_ASSERT(m->params && !m->grads);
    if (strcmp(m->be->name, "cpu") != 0)
        return sk_fail(SK_EARG, "--zero: distributed training runs on the cpu backend in this build");
    zero *z = mem_calloc(sizeof *z);
    if (!z) return SK_ENOMEM;
    z->m = m;
    z->be = m->be;
    z->c = c;
    z->rank = c ? c->rank : 0;
    z->world = c ? c->world : 1;
    z->stage = stage;
    z->dynamic = dynamic;
    z->buckets = stage >= 2 && !dynamic;
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
    zero_invalidate(z);
    sk_status st = adamw_init(&z->opt, z->be, 0, stage == 0 ? m->n_params : z->shard);
    if (st) goto fail;
    if (stage >= 1 && !(z->recv = mem_calloc(sizeof(float) * z->max_chunk))) goto oom;
    if (stage >= 2 && !(z->gshard = mem_calloc(sizeof(float) * z->shard))) goto oom;
    if ((stage == 1 || (stage == 2 && dynamic)) && !(z->staging = mem_calloc(sizeof(float) * W * z->max_chunk)))
        goto oom;
    if (stage == 3) {
        /* shard the parameters, then drop the full copy */
        if (!(z->pshard = mem_calloc(sizeof(float) * z->shard))) goto oom;
        for (int g = 0; g < m->n_groups; g++) {
            size_t a, n;
            zero_owned(z, g, &a, &n);
            memcpy(z->pshard + z->at[g], m->params + a, n * sizeof(float));
        }
        backend_mem_free(z->be, m->params);
        m->params = NULL;
        for (int g = 0; g < m->n_groups; g++) m->param_base[g] = NULL;
        if (!(z->slot[0] = mem_calloc(sizeof(float) * W * z->max_layer_chunk)) ||
            !(z->slot[1] = mem_calloc(sizeof(float) * W * z->max_layer_chunk)) ||
            !(z->outer_params = mem_calloc(sizeof(float) * z->outer_total)))
            goto oom;
    }
    if (z->buckets) {
        if (!(z->bucket = mem_calloc(sizeof(float) * W * z->max_layer_chunk)) ||
            !(z->outer_bucket = mem_calloc(sizeof(float) * z->outer_total)))
            goto oom;
        m->grads_external = true;
    }
    z->hooks.ctx = z;
    z->hooks.before_forward = hook_before_forward;
    z->hooks.before_backward = hook_before_backward;
    z->hooks.after_backward = hook_after_backward;
    m->hooks = &z->hooks;
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
    if (z->m && z->m->hooks == &z->hooks) z->m->hooks = NULL;
    adamw_free(&z->opt);
    mem_free(z->chunk);
    mem_free(z->at);
    mem_free(z->outer_at);
    mem_free(z->gshard);
    mem_free(z->pshard);
    mem_free(z->recv);
    mem_free(z->staging);
    mem_free(z->bucket);
    mem_free(z->outer_bucket);
    mem_free(z->slot[0]);
    mem_free(z->slot[1]);
    mem_free(z->outer_params);
    mem_free(z);
}

int zero_stage(const zero *z) { return z->stage; }
sk_status zero_status(const zero *z) { return z->err; }
long zero_opt_steps(const zero *z) { return z->opt.step; }

/* ---- the step ---- */

void zero_begin_step(zero *z) {
    if (z->m->grads) model_zero_grad(z->m);
    if (z->gshard) memset(z->gshard, 0, sizeof(float) * z->shard);
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

sk_status zero_end_step(zero *z, double *grad_norm) {
    model *m = z->m;
    backend *be = z->be;
    if (z->err) return z->err;
    if (z->stage == 0) {
        if (z->c && z->world > 1) SK_TRY(zc_fail(z, z->c->ops->all_reduce_sum(z->c, m->grads, m->n_params)));
        double sq0;
        backend_zero(be, z->opt.sq, sizeof(double));
        be->ops->sum_squares(be, NULL, tensor_1d(z->opt.sq, DT_F64, 1),
                             tensor_1d(m->grads, DT_F32, (int64_t)m->n_params));
        backend_download(be, &sq0, z->opt.sq, sizeof sq0);
        *grad_norm = sqrt(sq0);
        return SK_OK;
    }
    double sq;
    tensor sq_dev = tensor_1d(z->opt.sq, DT_F64, 1);   /* the squared norm, summed on the device */
    backend_zero(be, z->opt.sq, sizeof(double));
    if (!z->buckets) {
        /* stage 1 (2 with dynamic data): reduce-scatter the full local gradient group by group */
        for (int g = 0; g < m->n_groups; g++) {
            const model_group *gr = &m->groups[g];
            size_t padded = z->chunk[g] * (size_t)z->world, a, n;
            memcpy(z->staging, m->grads + gr->begin, gr->count * sizeof(float));
            memset(z->staging + gr->count, 0, (padded - gr->count) * sizeof(float));
            SK_TRY(zc_reduce_scatter(z, z->staging, z->recv, z->chunk[g]));
            zero_owned(z, g, &a, &n);
            if (z->stage == 1) memcpy(m->grads + a, z->recv, n * sizeof(float));
            else memcpy(z->gshard + z->at[g], z->recv, z->chunk[g] * sizeof(float));
            if (z->stage == 1) be->ops->sum_squares(be, NULL, sq_dev, tensor_1d(m->grads + a, DT_F32, (int64_t)n));
        }
    }
    if (z->stage >= 2) be->ops->sum_squares(be, NULL, sq_dev, tensor_1d(z->gshard, DT_F32, (int64_t)z->shard));
    backend_download(be, &sq, z->opt.sq, sizeof sq);
    SK_TRY(zc_sum_f64(z, &sq, 1));
    *grad_norm = sqrt(sq);
    return SK_OK;
}

sk_status zero_opt_step(zero *z, const opt_hparams *h, float lr, float grad_scale) {
    model *m = z->m;
    backend *be = z->be;
    if (z->err) return z->err;
    if (z->stage == 0) {
        adamw_step(&z->opt, m, m->grads, h, lr, grad_scale);
        return SK_OK;
    }
    z->opt.step++;
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        int g = p->group;
        size_t a, n;
        zero_owned(z, g, &a, &n);
        size_t lo = p->offset > a ? p->offset : a;
        size_t hi = p->offset + p->numel < a + n ? p->offset + p->numel : a + n;
        if (lo >= hi) continue;
        size_t s = z->at[g] + (lo - a);   /* position in the shard */
        float *param = z->stage == 3 ? z->pshard + s : m->params + lo;
        const float *grad = z->stage == 1 ? m->grads + lo : z->gshard + s;
        const int64_t k = (int64_t)(hi - lo);
        be->ops->adamw(be, NULL, tensor_1d(param, DT_F32, k), tensor_1d((float *)grad, DT_F32, k),
                       tensor_1d(z->opt.m + s, DT_F32, k), tensor_1d(z->opt.v + s, DT_F32, k), lr, h->beta1, h->beta2,
                       h->eps, p->decay ? h->weight_decay : 0.0f, grad_scale, (int)z->opt.step);
    }
    if (z->stage == 3) {
        zero_invalidate(z);
        return SK_OK;
    }
    /* stages 1-2: every rank gets every group back */
    for (int g = 0; g < m->n_groups; g++) {
        const model_group *gr = &m->groups[g];
        size_t a, n;
        zero_owned(z, g, &a, &n);
        float *buf = z->staging ? z->staging : (gr->layer < 0 ? z->outer_bucket + z->outer_at[g] : z->bucket);
        memcpy(z->recv, m->params + a, n * sizeof(float));
        memset(z->recv + n, 0, (z->chunk[g] - n) * sizeof(float));
        SK_TRY(zc_all_gather(z, z->recv, buf, z->chunk[g]));
        memcpy(m->params + gr->begin, buf, gr->count * sizeof(float));
    }
    return SK_OK;
}

/* ---- checkpoints ---- */

sk_status zero_gather_params(zero *z, float *full) {
    model *m = z->m;
    if (z->stage < 3) {
        if (full) memcpy(full, m->params, m->n_params * sizeof(float));
        return SK_OK;
    }
    for (int g = 0; g < m->n_groups; g++) {
        const model_group *gr = &m->groups[g];
        float *buf = gr->layer < 0 ? z->outer_params + z->outer_at[g] : z->slot[0];
        SK_TRY(zc_all_gather(z, z->pshard + z->at[g], buf, z->chunk[g]));
        if (full) memcpy(full + gr->begin, buf, gr->count * sizeof(float));
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

sk_status zero_save_opt(zero *z, const char *dir) {
    char path[4096], name[96];
    if (z->stage == 0) {
        if (z->rank != 0) return SK_OK;
        return adamw_save(&z->opt, z->m->n_params, file_join(path, sizeof path, dir, "optimizer.bin"));
    }
    opt_range *r = mem_alloc(sizeof(opt_range) * (size_t)z->m->n_groups);
    if (!r) return SK_ENOMEM;
    int n = zero_ranges(z, r);
    snprintf(name, sizeof name, "optimizer-rank%d-of-%d.bin", z->rank, z->world);
    sk_status st = opt_state_save(z->be, file_join(path, sizeof path, dir, name), z->m->n_params, z->opt.step, r,
                                  n, z->opt.m, z->opt.v);
    mem_free(r);
    return st;
}

static bool is_opt_file(const char *name) {
    if (!strcmp(name, "optimizer.bin")) return true;
    int r, n, end = 0;
    return sscanf(name, "optimizer-rank%d-of-%d.bin%n", &r, &n, &end) == 2 && name[end] == 0;
}

sk_status zero_load_opt(zero *z, const char *dir) {
    opt_range *r = mem_alloc(sizeof(opt_range) * (size_t)z->m->n_groups);
    if (!r) return SK_ENOMEM;
    int n = zero_ranges(z, r);
    size_t want = 0, copied = 0;
    for (int i = 0; i < n; i++) want += r[i].count;
    sk_status st = SK_OK;
    long step = -1;
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
        st = opt_state_read(z->be, file_join(path, sizeof path, dir, e->d_name), z->m->n_params, r, n, z->opt.m,
                            z->opt.v, &s, &copied);
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
