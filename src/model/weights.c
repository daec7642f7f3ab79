/* weights: model folders <-> models (model_load, model_save; see model.h).
 *
 * Load: config.json, then model.safetensors (or the index and its shards). Every planned
 * parameter must be present under its HF name, with or without the "transformer." prefix
 * (the Hub's gpt2 has none; GPT2LMHeadModel.save_pretrained writes it), with exactly the
 * planned shape, in f32, bf16 or f16 (converted to f32 and uploaded). Decisions:
 *   - the causal-mask buffers ".attn.bias" and ".attn.masked_bias" of old checkpoints are
 *     skipped;
 *   - "lm_head.weight" is accepted when it equals wte (a tied head saved twice); when it
 *     differs it is ignored with a warning, as transformers does for a tied config (an untied
 *     GPT-2 config is refused by config.c);
 *   - any other tensor is an error: a checkpoint with weights skein would not use describes a
 *     different model, and silently computing something else is worse than refusing;
 *   - a folder with only pickle checkpoints (pytorch_model.bin) is refused with a pointer to
 *     conversion.
 * Save: config.json and model.safetensors (f32, "transformer." names, metadata format=pt, no
 * lm_head since the head is tied), each written atomically; parameters are downloaded one
 * tensor at a time through a host buffer of the largest tensor's size. */
#include "model/model.h"

#include <stdio.h>
#include <string.h>

#include "base/file.h"
#include "model/safetensors.h"

#define GPT2_PREFIX "transformer."

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Converts t to f32 at dst (t->numel floats). The mapping gives no alignment guarantee, so
 * a misaligned 16-bit source is first copied to `bounce` (at least t->nbytes, aligned). */
static void tensor_to_f32(float *dst, const st_tensor *t, void *bounce) {
    const void *src = t->data;
    if ((uintptr_t)src % dtype_size(t->dtype)) {
        memcpy(bounce, src, t->nbytes);
        src = bounce;
    }
    dtype_to_f32(dst, src, t->dtype, t->numel);
}

static bool is_float_dtype(dtype t) { return t == DT_F32 || t == DT_BF16 || t == DT_F16; }

/* Position of t (a tensor of s) in st_set_at's numbering. */
static int set_index(const st_set *s, const st_tensor *t) {
    int base = 0;
    for (int j = 0; j < s->n_files; j++) {
        const st_file *f = &s->files[j];
        if (t >= f->tensors && t < f->tensors + f->n_tensors) return base + (int)(t - f->tensors);
        base += f->n_tensors;
    }
    SK_ASSERT(!"set_index: tensor not in the set");
    return -1;
}

/* Finds parameter `name` (no prefix) in s, under either spelling; SK_EFORMAT when missing or
 * present twice. */
static sk_status find_param(const st_set *s, const char *name, const st_tensor **out) {
    char full[128];
    snprintf(full, sizeof full, GPT2_PREFIX "%s", name);
    const st_tensor *a = st_set_find(s, full), *b = st_set_find(s, name);
    if (a && b) return sk_fail(SK_EFORMAT, "%s: tensor '%s' present both with and without the prefix", s->weights_path, name);
    if (!a && !b) return sk_fail(SK_EFORMAT, "%s: missing tensor '%s'", s->weights_path, full);
    *out = a ? a : b;
    return SK_OK;
}

/* Classifies a tensor of the file that is not a planned parameter: SK_OK when it can be
 * skipped (buffers, a tied lm_head), else SK_EFORMAT naming it. `wte` is the loaded
 * embedding (host f32) for comparing a stored lm_head. */
static sk_status check_extra(const st_set *s, const st_tensor *t, const model *m, const float *wte, float *scratch,
                             void *bounce) {
    const char *name = t->name;
    if (!strncmp(name, GPT2_PREFIX, strlen(GPT2_PREFIX))) name += strlen(GPT2_PREFIX);
    if (!strncmp(name, "h.", 2) && (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias")))
        return SK_OK;
    if (!strcmp(t->name, "lm_head.weight")) {
        const model_param *p = model_find_param(m, "wte.weight");
        bool same = is_float_dtype(t->dtype) && t->ndim == 2 && t->shape[0] == p->shape[0] && t->shape[1] == p->shape[1];
        if (same) {
            tensor_to_f32(scratch, t, bounce);
            same = !memcmp(scratch, wte, p->numel * sizeof(float));
        }
        if (!same)
            log_warn("%s: lm_head.weight differs from wte.weight; GPT-2 ties them, so it is ignored (as transformers "
                     "does)", s->weights_path);
        return SK_OK;
    }
    return sk_fail(SK_EFORMAT, "%s: unexpected tensor '%s' (not a GPT-2 parameter)", s->weights_path, t->name);
}

/* Refuses a folder whose weights are pickle checkpoints only. */
static sk_status check_not_pickle(const char *dir) {
    static const char *const safe[] = {"model.safetensors", "model.safetensors.index.json"};
    static const char *const pickle[] = {"pytorch_model.bin", "pytorch_model.bin.index.json"};
    char path[4096];
    for (int i = 0; i < 2; i++)
        if (file_exists(file_join(path, sizeof path, dir, safe[i]))) return SK_OK;
    for (int i = 0; i < 2; i++)
        if (file_exists(file_join(path, sizeof path, dir, pickle[i])))
            return sk_fail(SK_EFORMAT, "%s: pickle checkpoints are not supported; convert to safetensors (e.g. "
                           "transformers: from_pretrained then save_pretrained(safe_serialization=True))", path);
    return sk_fail(SK_EIO, "%s: no model.safetensors or model.safetensors.index.json", dir);
}

sk_status model_load(const char *dir, backend *be, model **out) {
    if (!file_is_dir(dir)) return sk_fail(SK_EIO, "%s: not a folder", dir);
    SK_TRY(check_not_pickle(dir));
    model_config cfg;
    SK_TRY(model_config_load(dir, &cfg));

    st_set s;
    model *m = NULL;
    float *host = NULL, *wte = NULL;
    void *bounce = NULL;
    bool *used = NULL;
    sk_status st;
    if ((st = st_set_open_dir(dir, &s)) != SK_OK) return st;
    if ((st = model_create(&cfg, be, &m)) != SK_OK) goto err;

    size_t max_numel = 0;
    for (int i = 0; i < m->n_specs; i++)
        if (m->specs[i].numel > max_numel) max_numel = m->specs[i].numel;
    const model_param *pwte = model_find_param(m, "wte.weight");
    SK_ASSERT(pwte);
    int n_all = st_set_count(&s);
    host = mem_alloc(max_numel * sizeof(float));
    bounce = mem_alloc(max_numel * sizeof(float));
    wte = mem_alloc(pwte->numel * sizeof(float));
    used = mem_calloc((size_t)(n_all ? n_all : 1));
    if (!host || !bounce || !wte || !used) { st = SK_ENOMEM; goto err; }

    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        const st_tensor *t = NULL;
        if ((st = find_param(&s, p->name, &t)) != SK_OK) goto err;
        bool ok = t->ndim == p->ndim;
        for (int d = 0; ok && d < p->ndim; d++) ok = t->shape[d] == p->shape[d];
        if (!ok) {
            char want[96], got[160];
            shape_str(want, sizeof want, p->ndim, p->shape);
            shape_str(got, sizeof got, t->ndim, t->shape);
            st = sk_fail(SK_EFORMAT, "%s: tensor '%s': expected shape %s, found %s", s.weights_path, t->name, want, got);
            goto err;
        }
        if (!is_float_dtype(t->dtype)) {
            st = sk_fail(SK_EFORMAT, "%s: tensor '%s': dtype %s (expected F32, BF16 or F16)", s.weights_path, t->name,
                         dtype_name(t->dtype));
            goto err;
        }
        tensor_to_f32(host, t, bounce);
        if (p == pwte) memcpy(wte, host, p->numel * sizeof(float));
        be->ops->upload(be, m->params + p->offset, host, p->numel * sizeof(float));
        used[set_index(&s, t)] = true;
    }
    for (int k = 0; k < n_all; k++)
        if (!used[k] && (st = check_extra(&s, st_set_at(&s, k), m, wte, host, bounce)) != SK_OK) goto err;

    mem_free(used);
    mem_free(wte);
    mem_free(bounce);
    mem_free(host);
    st_set_close(&s);
    *out = m;
    return SK_OK;
err:
    mem_free(used);
    mem_free(wte);
    mem_free(bounce);
    mem_free(host);
    model_free(m);
    st_set_close(&s);
    return st;
}

sk_status model_save(const model *m, const char *dir) {
    SK_ASSERT(m->cfg.arch == ARCH_GPT2);   /* Llama naming ("model." + untied lm_head) comes with llama.c */
    SK_TRY(file_mkdirs(dir));
    char path[4096];
    file_join(path, sizeof path, dir, "model.safetensors");

    st_entry *entries = mem_calloc(sizeof(st_entry) * (size_t)m->n_specs);
    char (*names)[128] = mem_alloc(sizeof *names * (size_t)m->n_specs);
    float *host = NULL;
    st_writer *w = NULL;
    sk_status st = SK_OK;
    if (!entries || !names) { st = SK_ENOMEM; goto out; }
    size_t max_numel = 0;
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        snprintf(names[i], sizeof names[i], GPT2_PREFIX "%s", p->name);
        entries[i].name = names[i];
        entries[i].dtype = DT_F32;
        entries[i].ndim = p->ndim;
        memcpy(entries[i].shape, p->shape, sizeof(int64_t) * (size_t)p->ndim);
        if (p->numel > max_numel) max_numel = p->numel;
    }
    host = mem_alloc(max_numel * sizeof(float));
    if (!host) { st = SK_ENOMEM; goto out; }
    const st_meta meta = {"format", "pt"};
    if ((st = st_writer_open(path, entries, m->n_specs, &meta, 1, &w)) != SK_OK) goto out;
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        m->be->ops->download(m->be, host, m->params + p->offset, p->numel * sizeof(float));
        if ((st = st_writer_put(w, host, p->numel * sizeof(float))) != SK_OK) { st_writer_abort(w); goto out; }
    }
    if ((st = st_writer_finish(w)) != SK_OK) goto out;

    model_config cfg = m->cfg;
    cfg.torch_dtype = DT_F32;     /* what the file now holds */
    st = model_config_save(&cfg, dir);
out:
    mem_free(host);
    mem_free(names);
    mem_free(entries);
    return st;
}
