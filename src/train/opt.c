/* opt: AdamW, the learning-rate schedule and the optimizer state file (see opt.h). */
#include "train/opt.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/file.h"

#define OPT_MAGIC "SKOPT\0\0\0"
#define OPT_VERSION 1u
#define OPT_VERSION_RANGES 2u

typedef struct opt_file_header {
    char magic[8];
    uint32_t version, reserved;
    uint64_t n_params, begin, count, step;
} opt_file_header;

void opt_hparams_default(opt_hparams *h) {
    memset(h, 0, sizeof *h);
    h->lr = 6e-4f;
    h->min_lr_frac = 0.1f;
    h->total_steps = 1;
    h->beta1 = 0.9f;
    h->beta2 = 0.95f;
    h->eps = 1e-8f;
    h->weight_decay = 0.1f;
    h->grad_clip = 1.0f;
}

float opt_lr_at(const opt_hparams *h, long step) {
    if (step < h->warmup && h->warmup_log)
        return (float)((double)h->lr * log((double)step + 1) / log(h->warmup > 2 ? (double)h->warmup : 2.0));
    if (step < h->warmup) return h->lr * (float)(step + 1) / (float)h->warmup;
    long decay_steps = h->total_steps - h->warmup;
    if (decay_steps <= 1) return h->lr;
    double progress = (double)(step - h->warmup) / (double)(decay_steps - 1);
    if (progress > 1) progress = 1;
    double min_lr = (double)h->lr * h->min_lr_frac;
    double shape = h->decay_linear ? 1.0 - progress : 0.5 * (1.0 + cos(M_PI * progress));
    return (float)(min_lr + ((double)h->lr - min_lr) * shape);
}

sk_status adamw_init(adamw *o, backend *be, size_t begin, size_t count) {
    memset(o, 0, sizeof *o);
    o->be = be;
    o->begin = begin;
    o->count = count;
    if (count) {
        o->m = backend_alloc(be, count * sizeof(float));
        o->v = backend_alloc(be, count * sizeof(float));
    }
    o->sq = backend_alloc(be, sizeof(double));
    if ((count && (!o->m || !o->v)) || !o->sq) {
        adamw_free(o);
        return sk_fail(SK_ENOMEM, "out of memory for AdamW state of %zu parameters", count);
    }
    return SK_OK;
}

void adamw_free(adamw *o) {
    if (o->m) backend_mem_free(o->be, o->m);
    if (o->v) backend_mem_free(o->be, o->v);
    if (o->sq) backend_mem_free(o->be, o->sq);
    if (o->spans) backend_mem_free(o->be, o->spans);
    o->m = o->v = NULL;
    o->sq = NULL;
    o->spans = NULL;
    o->n_spans = 0;
}

sk_status adamw_cut_spans(const backend_adamw_span *spans, size_t n, backend_adamw_span **out, size_t *pieces) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((size_t)spans[i].count + BACKEND_ADAMW_SPAN - 1) / BACKEND_ADAMW_SPAN;
    if (k > INT_MAX) return sk_fail(SK_EARG, "AdamW: %zu pieces of %d parameters are too many", k, BACKEND_ADAMW_SPAN);
    backend_adamw_span *cut = mem_calloc((k ? k : 1) * sizeof *cut);
    if (!cut) return sk_fail(SK_ENOMEM, "out of memory for %zu AdamW spans", k);
    *pieces = k;
    k = 0;
    for (size_t i = 0; i < n; i++)
        for (int64_t at = 0; at < spans[i].count; at += BACKEND_ADAMW_SPAN) {
            backend_adamw_span p = spans[i];
            p.param += at;
            p.grad += at;
            p.state += at;
            p.count = spans[i].count - at < BACKEND_ADAMW_SPAN ? spans[i].count - at : BACKEND_ADAMW_SPAN;
            cut[k++] = p;
        }
    *out = cut;
    return SK_OK;
}

backend_adamw_hp adamw_hparams(const opt_hparams *h, float lr, long t) {
    return (backend_adamw_hp){lr, h->beta1, h->beta2, h->eps, h->weight_decay, h->grad_clip, (int)t};
}

sk_status adamw_set_spans(adamw *o, const backend_adamw_span *spans, size_t n) {
    backend_adamw_span *cut;
    size_t pieces;
    SK_TRY(adamw_cut_spans(spans, n, &cut, &pieces));
    if (o->spans) backend_mem_free(o->be, o->spans);
    o->n_spans = 0;
    o->spans = pieces ? backend_alloc(o->be, pieces * sizeof *cut) : NULL;
    if (pieces && !o->spans) {
        mem_free(cut);
        return sk_fail(SK_ENOMEM, "out of memory for %zu AdamW spans", pieces);
    }
    if (pieces) backend_upload(o->be, o->spans, cut, pieces * sizeof *cut);
    o->n_spans = (int)pieces;
    mem_free(cut);
    return SK_OK;
}

sk_status adamw_set_model_spans(adamw *o, const model *m) {
    SK_ASSERT(o->begin == 0 && o->count == m->n_params);
    backend_adamw_span *sp = mem_calloc((size_t)(m->n_specs ? m->n_specs : 1) * sizeof *sp);
    if (!sp) return sk_fail(SK_ENOMEM, "out of memory for AdamW spans");
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        sp[i] = (backend_adamw_span){(int64_t)p->offset, (int64_t)p->offset, (int64_t)p->offset, (int64_t)p->numel,
                                     p->decay ? 1 : 0};
    }
    sk_status st = adamw_set_spans(o, sp, (size_t)m->n_specs);
    mem_free(sp);
    return st;
}

void adamw_step(adamw *o, tensor params, tensor lp, tensor grads, const opt_hparams *h, float lr) {
    o->step++;
    const backend_adamw_hp hp = adamw_hparams(h, lr, o->step);
    o->be->ops->adamw(o->be, NULL, params, lp, grads, tensor_1d(o->m, DT_F32, (int64_t)o->count),
                      tensor_1d(o->v, DT_F32, (int64_t)o->count), o->spans, o->n_spans, o->sq, &hp);
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
    backend_download(o->be, mv, o->m, o->count * sizeof(float));
    backend_download(o->be, mv + o->count, o->v, o->count * sizeof(float));
    sk_status st = file_write_atomic(path, buf, bytes);
    mem_free(buf);
    return st;
}

/* Refuses moments no AdamW run can produce: a non-finite m or v, or a negative v (a sum of
 * squares), and a step the kernels cannot count (they take an int). A flipped bit in the file
 * would otherwise turn the parameters into NaN at the first step after resuming. */
static sk_status check_state(const char *path, const float *m, const float *v, size_t n, uint64_t step) {
    if (step > (uint64_t)INT_MAX)
        return sk_fail(SK_EFORMAT, "%s: optimizer step %llu is out of range: the file is corrupt", path,
                       (unsigned long long)step);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(m[i]) || !isfinite(v[i]) || v[i] < 0)
            return sk_fail(SK_EFORMAT, "%s: optimizer value %zu is invalid (m = %g, v = %g): the file is corrupt",
                           path, i, (double)m[i], (double)v[i]);
    return SK_OK;
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
    } else if ((st = check_state(path, (const float *)((const char *)map.data + sizeof hdr),
                                 (const float *)((const char *)map.data + sizeof hdr) + o->count, o->count,
                                 hdr.step)) == SK_OK) {
        const float *mv = (const float *)((const char *)map.data + sizeof hdr);
        backend_upload(o->be, o->m, mv, o->count * sizeof(float));
        backend_upload(o->be, o->v, mv + o->count, o->count * sizeof(float));
        o->step = (long)hdr.step;
    }
done:
    file_map_close(&map);
    return st;
}

sk_status opt_state_save(backend *be, const char *path, size_t n_params, long step, const opt_range *r, int n,
                         const float *m, const float *v) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += r[i].count;
    size_t head = sizeof(opt_file_header) + sizeof(uint64_t) * (1 + 2 * (size_t)n);
    size_t bytes = head + 2 * total * sizeof(float);
    char *buf = mem_alloc(bytes);
    if (!buf) return sk_fail_ctx(SK_ENOMEM, "saving %s", path);
    opt_file_header hdr = {.version = OPT_VERSION_RANGES, .n_params = n_params, .begin = 0, .count = total,
                           .step = (uint64_t)step};
    memcpy(hdr.magic, OPT_MAGIC, 8);
    memcpy(buf, &hdr, sizeof hdr);
    uint64_t *list = (uint64_t *)(buf + sizeof hdr);
    list[0] = (uint64_t)n;
    float *fm = (float *)(buf + head), *fv = fm + total;
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        list[1 + 2 * i] = r[i].begin;
        list[2 + 2 * i] = r[i].count;
        backend_download(be, fm + k, m + r[i].at, r[i].count * sizeof(float));
        backend_download(be, fv + k, v + r[i].at, r[i].count * sizeof(float));
        k += r[i].count;
    }
    sk_status st = file_write_atomic(path, buf, bytes);
    mem_free(buf);
    return st;
}

sk_status opt_state_read(backend *be, const char *path, size_t n_params, const opt_range *want, int n_want,
                         float *m, float *v, long *step, size_t *copied) {
    file_map map;
    SK_TRY(file_map_open(path, &map));
    sk_status st = SK_OK;
    opt_file_header hdr;
    const char *data = map.data;
    uint64_t n_ranges = 1, one[2];
    const uint64_t *list = one;
    size_t head = sizeof hdr;
    if (map.size < sizeof hdr) {
        st = sk_fail(SK_EFORMAT, "%s: truncated optimizer state (%zu bytes)", path, map.size);
        goto done;
    }
    memcpy(&hdr, data, sizeof hdr);
    if (memcmp(hdr.magic, OPT_MAGIC, 8) != 0) {
        st = sk_fail(SK_EFORMAT, "%s: wrong magic number (not a skein optimizer state)", path);
        goto done;
    }
    if (hdr.version != OPT_VERSION && hdr.version != OPT_VERSION_RANGES) {
        st = sk_fail(SK_EFORMAT, "%s: unsupported version %u", path, hdr.version);
        goto done;
    }
    if (hdr.n_params != n_params) {
        st = sk_fail(SK_EFORMAT, "%s: state for %llu parameters, the model has %zu", path,
                     (unsigned long long)hdr.n_params, n_params);
        goto done;
    }
    if (hdr.version == OPT_VERSION) {
        one[0] = hdr.begin;
        one[1] = hdr.count;
    } else {
        if (map.size < head + 8) { st = sk_fail(SK_EFORMAT, "%s: truncated range list", path); goto done; }
        memcpy(&n_ranges, data + head, 8);
        if (n_ranges > (map.size - head) / 16) { st = sk_fail(SK_EFORMAT, "%s: truncated range list", path); goto done; }
        list = (const uint64_t *)(data + head + 8);   /* 8-aligned: the header is 48 bytes */
        head += 8 + 16 * (size_t)n_ranges;
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < n_ranges; i++) {
        if (list[2 * i] > n_params || list[2 * i + 1] > n_params - list[2 * i]) {
            st = sk_fail(SK_EFORMAT, "%s: range [%llu, +%llu) beyond the model's %zu parameters", path,
                         (unsigned long long)list[2 * i], (unsigned long long)list[2 * i + 1], n_params);
            goto done;
        }
        total += list[2 * i + 1];
    }
    if (total != hdr.count || map.size != head + 2 * total * sizeof(float)) {
        st = sk_fail(SK_EFORMAT, "%s: truncated optimizer state (%zu bytes, expected %zu)", path, map.size,
                     head + 2 * (size_t)total * sizeof(float));
        goto done;
    }
    const float *fm = (const float *)(data + head), *fv = fm + total;
    if ((st = check_state(path, fm, fv, total, hdr.step))) goto done;
    size_t k = 0;
    for (uint64_t i = 0; i < n_ranges; k += list[2 * i + 1], i++) {
        size_t fb = list[2 * i], fe = fb + list[2 * i + 1];
        for (int j = 0; j < n_want; j++) {
            size_t a = fb > want[j].begin ? fb : want[j].begin;
            size_t b = fe < want[j].begin + want[j].count ? fe : want[j].begin + want[j].count;
            if (a >= b) continue;
            backend_upload(be, m + want[j].at + (a - want[j].begin), fm + k + (a - fb), (b - a) * sizeof(float));
            backend_upload(be, v + want[j].at + (a - want[j].begin), fv + k + (a - fb), (b - a) * sizeof(float));
            *copied += b - a;
        }
    }
    *step = (long)hdr.step;
done:
    file_map_close(&map);
    return st;
}
