/* opt: AdamW, the cosine schedule and the optimizer state file (see opt.h). */
#include "train/opt.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/file.h"

#define OPT_MAGIC "SKOPT\0\0\0"
#define OPT_VERSION 1u

typedef struct opt_file_header {
    char magic[8];
    uint32_t version, reserved;
    uint64_t n_params, begin, count, step;
} opt_file_header;

void opt_hparams_default(opt_hparams *h) {
    h->lr = 6e-4f;
    h->min_lr_frac = 0.1f;
    h->warmup = 0;
    h->total_steps = 1;
    h->beta1 = 0.9f;
    h->beta2 = 0.95f;
    h->eps = 1e-8f;
    h->weight_decay = 0.1f;
    h->grad_clip = 1.0f;
}

float opt_lr_at(const opt_hparams *h, long step) {
    if (step < h->warmup) return h->lr * (float)(step + 1) / (float)h->warmup;
    long decay_steps = h->total_steps - h->warmup;
    if (decay_steps <= 1) return h->lr;
    double progress = (double)(step - h->warmup) / (double)(decay_steps - 1);
    if (progress > 1) progress = 1;
    double min_lr = (double)h->lr * h->min_lr_frac;
    return (float)(min_lr + 0.5 * ((double)h->lr - min_lr) * (1.0 + cos(M_PI * progress)));
}

sk_status adamw_init(adamw *o, backend *be, size_t begin, size_t count) {
    memset(o, 0, sizeof *o);
    o->be = be;
    o->begin = begin;
    o->count = count;
    o->m = be->ops->alloc(be, count * sizeof(float));
    o->v = be->ops->alloc(be, count * sizeof(float));
    if (!o->m || !o->v) {
        adamw_free(o);
        return sk_fail(SK_ENOMEM, "out of memory for AdamW state of %zu parameters", count);
    }
    return SK_OK;
}

void adamw_free(adamw *o) {
    if (o->m) o->be->ops->free(o->be, o->m);
    if (o->v) o->be->ops->free(o->be, o->v);
    o->m = o->v = NULL;
}

void adamw_step(adamw *o, model *m, const float *grads, const opt_hparams *h, float lr, float grad_scale) {
    o->step++;
    const size_t lo = o->begin, hi = o->begin + o->count;
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        size_t a = p->offset > lo ? p->offset : lo;
        size_t b = p->offset + p->numel < hi ? p->offset + p->numel : hi;
        if (a >= b) continue;
        m->be->ops->adamw(m->be, m->params + a, grads + a, o->m + (a - lo), o->v + (a - lo), b - a, lr,
                          h->beta1, h->beta2, h->eps, p->decay ? h->weight_decay : 0.0f, grad_scale,
                          (int)o->step);
    }
}

sk_status adamw_save(const adamw *o, size_t n_params, const char *path) {
    size_t bytes = sizeof(opt_file_header) + 2 * o->count * sizeof(float);
    char *buf = mem_alloc(bytes);
    if (!buf) return sk_fail_ctx(SK_ENOMEM, "saving %s", path);
    opt_file_header hdr = {.version = OPT_VERSION, .n_params = n_params, .begin = o->begin,
                           .count = o->count, .step = (uint64_t)o->step};
    memcpy(hdr.magic, OPT_MAGIC, 8);
    memcpy(buf, &hdr, sizeof hdr);
    float *mv = (float *)(buf + sizeof hdr);
    o->be->ops->download(o->be, mv, o->m, o->count * sizeof(float));
    o->be->ops->download(o->be, mv + o->count, o->v, o->count * sizeof(float));
    sk_status st = file_write_atomic(path, buf, bytes);
    mem_free(buf);
    return st;
}

sk_status adamw_load(adamw *o, size_t n_params, const char *path) {
    file_map map;
    SK_TRY(file_map_open(path, &map));
    sk_status st = SK_OK;
    opt_file_header hdr;
    if (map.size < sizeof hdr) {
        st = sk_fail(SK_EFORMAT, "%s: truncated optimizer state (%zu bytes)", path, map.size);
        goto done;
    }
    memcpy(&hdr, map.data, sizeof hdr);
    if (memcmp(hdr.magic, OPT_MAGIC, 8) != 0) {
        st = sk_fail(SK_EFORMAT, "%s: wrong magic number (not a skein optimizer state)", path);
    } else if (hdr.version != OPT_VERSION) {
        st = sk_fail(SK_EFORMAT, "%s: unsupported version %u (expected %u)", path, hdr.version, OPT_VERSION);
    } else if (hdr.n_params != n_params || hdr.begin != o->begin || hdr.count != o->count) {
        st = sk_fail(SK_EFORMAT, "%s: state for %llu parameters [%llu, +%llu), model needs %zu [%zu, +%zu)",
                     path, (unsigned long long)hdr.n_params, (unsigned long long)hdr.begin,
                     (unsigned long long)hdr.count, n_params, o->begin, o->count);
    } else if (map.size != sizeof hdr + 2 * o->count * sizeof(float)) {
        st = sk_fail(SK_EFORMAT, "%s: truncated optimizer state (%zu bytes, expected %zu)", path, map.size,
                     sizeof hdr + 2 * o->count * sizeof(float));
    } else {
        const float *mv = (const float *)((const char *)map.data + sizeof hdr);
        o->be->ops->upload(o->be, o->m, mv, o->count * sizeof(float));
        o->be->ops->upload(o->be, o->v, mv + o->count, o->count * sizeof(float));
        o->step = (long)hdr.step;
    }
done:
    file_map_close(&map);
    return st;
}
