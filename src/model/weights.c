/* weights: model folders <-> models (model_load, model_load_weights, model_open_weights,
 * model_open_wts, model_save, model_save_as, model_init_folder; see model.h).
 *
 * Names. A parameter's file name is its spec name, except that GPT-2 files may carry the
 * "transformer." prefix (the Hub's gpt2 has none; GPT2LMHeadModel.save_pretrained writes it,
 * and so does skein). Llama-family names ("model.embed_tokens.weight",
 * "model.layers.{l}.self_attn.q_proj.weight", ..., "lm_head.weight") map 1:1, with no prefix
 * in either direction. Loading is driven by m->specs alone, so any architecture's plan loads.
 *
 * Load: config.json, then model.safetensors (or the index and its shards), mapped by wts_open
 * (wts.h). Both kinds of model go through one check, bind_weights: every planned parameter
 * must be present, with exactly the planned shape, in f32, bf16 or f16, and bound to its
 * view. Then:
 *   - a training model (model_load) converts each view in chunks of LOAD_CHUNK elements
 *     through one small host buffer, uploaded piece by piece: no file is read into a copy
 *     and no whole-tensor host buffer exists, so loading an 8B model needs the model's f32
 *     parameters plus a few MB. The f32 destination is the one copy: m->params is one flat
 *     buffer that training updates in place (and ZeRO shards by range);
 *   - an inference model (model_open_weights) keeps the views themselves: matrices in the
 *     file's dtype where the backend reads it, 1-D tensors as wts's f32 copies;
 *   - buffers of old checkpoints are skipped: GPT-2's causal masks ".attn.bias" and
 *     ".attn.masked_bias", Llama's rotary "rotary_emb.inv_freq";
 *   - with tied embeddings, "lm_head.weight" is accepted when it equals the embedding (a
 *     tied head saved twice); when it differs it is ignored with a warning, as transformers
 *     does for a tied config;
 *   - any other tensor is an error: a checkpoint with weights skein would not use describes
 *     a different model, and silently computing something else is worse than refusing;
 *   - a folder with only pickle checkpoints (pytorch_model.bin) is refused with a pointer to
 *     conversion.
 * Save: config.json and the weights in f32 (model_save) or another dtype (model_save_as),
 * in one model.safetensors, or in shards "model-00001-of-0000N.safetensors" plus
 * model.safetensors.index.json once the total exceeds the shard size (tensors are never
 * split; one larger than the shard size gets a shard of its own, as transformers does).
 * Every file is written atomically; files of an earlier save that the new one does not
 * name (a single file, other shards, an index) are removed after the new files are in
 * place. Data goes through a host buffer of SAVE_CHUNK elements, so a save never holds a
 * whole tensor, and model_init_folder writes a random model of any size this way without
 * ever creating it. */
#include "model/model.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/memstat.h"
#include "base/rng.h"
#include "comm/comm.h"
#include "model/arch.h"
#include "model/devw.h"
#include "model/safetensors.h"
#include "model/tp.h"

#define GPT2_PREFIX "transformer."
/* Elements converted or written per step (4 MB of f32): large enough for full-speed I/O. */
#define LOAD_CHUNK ((size_t)1 << 20)
#define SAVE_CHUNK ((size_t)1 << 20)
/* model_init_folder draws each tensor in blocks of this many elements, each block from its
 * own seeded stream, so the values do not depend on the thread count (see model.h). */
#define INIT_BLOCK ((size_t)1 << 16)

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static bool is_float_dtype(dtype t) { return t == DT_F32 || t == DT_BF16 || t == DT_F16; }

/* Name of the token embedding, which a tied lm_head must equal. */
static const char *embed_name(const model *m) {
    return m->cfg.arch == ARCH_GPT2 ? "wte.weight" : "model.embed_tokens.weight";
}

/* Whether the views a and b (contiguous, float dtypes) hold equal values, compared through
 * f32 in chunks (host buffers fa and fb of LOAD_CHUNK floats). */
static bool views_equal(tensor a, tensor b, float *fa, float *fb) {
    if (a.ndim != b.ndim) return false;
    for (int d = 0; d < a.ndim; d++)
        if (a.shape[d] != b.shape[d]) return false;
    const size_t numel = (size_t)tensor_numel(a), ea = dtype_size(a.dt), eb = dtype_size(b.dt);
    for (size_t off = 0; off < numel; off += LOAD_CHUNK) {
        size_t n = numel - off < LOAD_CHUNK ? numel - off : LOAD_CHUNK;
        dtype_to_f32(fa, (const unsigned char *)a.data + off * ea, a.dt, n);
        dtype_to_f32(fb, (const unsigned char *)b.data + off * eb, b.dt, n);
        if (memcmp(fa, fb, n * sizeof(float))) return false;
    }
    return true;
}

/* Finds spec p of m in w: GPT-2 under either spelling (wts_open refuses a folder holding
 * both), other architectures under exactly its name. Writes its view and its index in w;
 * SK_EFORMAT naming the tensor when it is missing, has another shape or is not f32, bf16 or
 * f16. */
static sk_status bind_spec(const wts *w, const model *m, const model_param *p, tensor *view, int *index) {
    const bool gpt2 = m->cfg.arch == ARCH_GPT2;
    int k = wts_find(w, p->name);
    if (k >= 0 && !gpt2 && strcmp(wts_name(w, k), p->name)) k = -1;   /* the prefix is GPT-2's alone */
    if (k < 0) return sk_fail(SK_EFORMAT, "%s: missing tensor '%s%s'", wts_path(w), gpt2 ? GPT2_PREFIX : "", p->name);
    SK_TRY(wts_expect(w, wts_name(w, k), p->ndim, p->shape, view));
    if (!is_float_dtype(view->dt))
        return sk_fail(SK_EFORMAT, "%s: tensor '%s': dtype %s (expected F32, BF16 or F16)", wts_file(w, k),
                       wts_name(w, k), dtype_name(view->dt));
    *index = k;
    return SK_OK;
}

/* Classifies tensor k of w that is no planned parameter: SK_OK when it can be skipped
 * (buffers, a tied lm_head), else SK_EFORMAT naming it. views: the bound specs; fa, fb:
 * LOAD_CHUNK floats each. */
static sk_status check_extra(const wts *w, int k, const model *m, const tensor *views, float *fa, float *fb) {
    const char *name = wts_name(w, k), *bare = name;
    if (m->cfg.arch == ARCH_GPT2) {
        if (!strncmp(bare, GPT2_PREFIX, strlen(GPT2_PREFIX))) bare += strlen(GPT2_PREFIX);
        if (!strncmp(bare, "h.", 2) && (ends_with(bare, ".attn.bias") || ends_with(bare, ".attn.masked_bias")))
            return SK_OK;
    } else if (ends_with(name, "rotary_emb.inv_freq")) {
        return SK_OK;
    }
    if (!strcmp(name, "lm_head.weight") && m->cfg.tie_word_embeddings) {
        const model_param *emb = model_find_param(m, embed_name(m));
        SK_ASSERT(emb);
        tensor head = wts_at(w, k);
        if (!is_float_dtype(head.dt) || !views_equal(head, views[emb - m->specs], fa, fb))
            log_warn("%s: lm_head.weight differs from %s; the config ties them, so it is ignored (as transformers "
                     "does)", wts_path(w), emb->name);
        return SK_OK;
    }
    if (m->cfg.arch == ARCH_GPT2)
        return sk_fail(SK_EFORMAT, "%s: unexpected tensor '%s' (not a GPT-2 parameter)", wts_path(w), name);
    return sk_fail(SK_EFORMAT, "%s: unexpected tensor '%s' (not a parameter of this %s model)", wts_path(w), name,
                   m->cfg.model_type);
}

/* The one check of a folder's tensors against m's plan, for both kinds of model: every spec
 * bound to its view in w (views[i], n_specs of them), and every other tensor of w one that
 * may be skipped (see the top). */
static sk_status bind_weights(const model *m, const wts *w, tensor *views) {
    int n_all = wts_count(w);
    bool *used = mem_calloc((size_t)(n_all ? n_all : 1));
    float *fa = mem_alloc(LOAD_CHUNK * sizeof(float)), *fb = mem_alloc(LOAD_CHUNK * sizeof(float));
    sk_status st = SK_OK;
    if (!used || !fa || !fb) st = sk_fail(SK_ENOMEM, "%s: checking %d tensors", wts_path(w), n_all);
    for (int i = 0; i < m->n_specs && st == SK_OK; i++) {
        int k = -1;
        if ((st = bind_spec(w, m, &m->specs[i], &views[i], &k)) == SK_OK) used[k] = true;
    }
    for (int k = 0; k < n_all && st == SK_OK; k++)
        if (!used[k]) st = check_extra(w, k, m, views, fa, fb);
    mem_free(fb);
    mem_free(fa);
    mem_free(used);
    return st;
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

/* The config of model folder dir, after checking it is a folder of safetensors weights. */
static sk_status folder_config(const char *dir, model_config *cfg) {
    if (!file_is_dir(dir)) return sk_fail(SK_EIO, "%s: not a folder", dir);
    SK_TRY(check_not_pickle(dir));
    return model_config_load(dir, cfg);
}

/* Whether be reads matrices of dtype dt in place: products and embedding gathers. */
static bool reads_in_place(backend *be, dtype dt) {
    return backend_supports(be, BACKEND_OP_MATMUL, dt) && backend_supports(be, BACKEND_OP_EMBED, dt);
}

/* The weights of folder dir, mapped with the matrix dtypes in keep (wts_open). */
static sk_status open_folder_weights(const char *dir, unsigned keep, wts **out) {
    SK_TRY(check_not_pickle(dir));
    return wts_open(dir, keep, out);
}

/* Fills training model m's parameters from w (checked by bind_weights): each view converted
 * to f32 in chunks and uploaded. The caller keeps w. */
static sk_status load_from_wts(model *m, const wts *w) {
    SK_ASSERT(m->params && !m->weights);
    tensor *views = mem_calloc(sizeof(tensor) * (size_t)m->n_specs);
    float *chunk = mem_alloc(LOAD_CHUNK * sizeof(float));
    sk_status st = views && chunk ? bind_weights(m, w, views) : SK_ENOMEM;
    /* Each view is contiguous and aligned (wts copies misaligned data). */
    for (int i = 0; i < m->n_specs && st == SK_OK; i++) {
        const model_param *p = &m->specs[i];
        const size_t es = dtype_size(views[i].dt);
        for (size_t off = 0; off < p->numel; off += LOAD_CHUNK) {
            size_t n = p->numel - off < LOAD_CHUNK ? p->numel - off : LOAD_CHUNK;
            dtype_to_f32(chunk, (const unsigned char *)views[i].data + off * es, views[i].dt, n);
            backend_upload(m->be, m->params + p->offset + off, chunk, n * sizeof(float));
        }
    }
    mem_free(chunk);
    mem_free(views);
    return st;
}

sk_status model_load_weights(model *m, const char *dir) {
    wts *w = NULL;
    SK_TRY(open_folder_weights(dir, WTS_KEEP_FLOAT, &w));
    sk_status st = load_from_wts(m, w);
    wts_free(w);
    return st;
}

sk_status model_load(const char *dir, backend *be, model **out) {
    model_config cfg;
    SK_TRY(folder_config(dir, &cfg));
    model *m = NULL;
    SK_TRY(model_create(&cfg, be, &m));
    sk_status st = model_load_weights(m, dir);
    if (st != SK_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return SK_OK;
}

/* Whether be runs inference over a bf16 device copy of the weights (model.h; not with
 * SKEIN_INFER_DTYPE=f32). */
static bool device_bf16(backend *be) {
    const char *want = getenv("SKEIN_INFER_DTYPE");
    if (want && !strcmp(want, "f32")) return false;
    return !be->host_memory && backend_supports(be, BACKEND_OP_MIXED, DT_BF16) &&
           backend_supports(be, BACKEND_OP_EMBED, DT_BF16) && backend_supports(be, BACKEND_OP_PAGED, DT_BF16);
}

/* An inference model of cfg over w: the specs bound to their views into w (split over the
 * ranks of c when c has several: tp_cut). A host-memory backend must read every matrix's
 * dtype in place; a device backend gets copies: its slices (split models, in the dtypes of
 * the shared copy, or all f32 without it) or the shared bf16 copy (devw.h). */
static sk_status open_wts(const model_config *cfg, wts *w, backend *be, comm *c, model **out) {
    *out = NULL;
    model *m = NULL;
    SK_TRY(model_plan(cfg, be, &m));
    tensor *views = mem_calloc(sizeof(tensor) * (size_t)m->n_specs);
    sk_status st = views ? bind_weights(m, w, views) : SK_ENOMEM;
    for (int i = 0; i < m->n_specs && st == SK_OK && be->host_memory; i++) {
        dtype dt = views[i].dt;
        if (dt != DT_F32 && !reads_in_place(be, dt))
            st = sk_fail(SK_ECONFIG, "%s: tensor '%s' is %s, which the %s backend cannot read in place (weights "
                         "opened for another backend)", wts_path(w), m->specs[i].name, dtype_name(dt), be->name);
    }
    m->weights = wts_ref(w);
    if (st == SK_OK && c) {
        st = tp_cut(m, c, views, device_bf16(be) ? DT_BF16 : DT_F32);
        mem_free(views);
    } else {
        if (st == SK_OK && !be->host_memory && (st = devw_get(w, m, views, &m->dev)) == SK_OK)
            for (int i = 0; i < m->n_specs; i++) views[i] = devw_view(m->dev, i);
        m->views = views;
    }
    if (st != SK_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return SK_OK;
}

sk_status model_open_wts(const model_config *cfg, wts *w, backend *be, model **out) {
    *out = NULL;
    if (be->host_memory || device_bf16(be)) return open_wts(cfg, w, be, NULL, out);
    model *m = NULL;   /* a device without bf16 inference: an f32 copy, as model_load makes */
    SK_TRY(model_create(cfg, be, &m));
    sk_status st = load_from_wts(m, w);
    if (st != SK_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return SK_OK;
}

sk_status model_open_wts_split(const model_config *cfg, wts *w, backend *be, comm *c, model **out) {
    *out = NULL;
    if (!c || c->world == 1) return model_open_wts(cfg, w, be, out);
    SK_TRY(model_tp_check(cfg, c->world));
    return open_wts(cfg, w, be, c, out);
}

/* The matrix dtypes a folder is opened with for be: those it reads in place on a host-memory
 * backend; every float dtype on a device (the split copies convert their slices). */
static unsigned keep_for(backend *be) {
    if (!be->host_memory) return WTS_KEEP_FLOAT;
    unsigned keep = 0;
    static const dtype kinds[] = {DT_F32, DT_BF16, DT_F16};
    for (int i = 0; i < 3; i++)
        if (reads_in_place(be, kinds[i])) keep |= WTS_DT(kinds[i]);
    return keep;
}

sk_status model_open_split(const char *dir, backend *be, comm *c, model **out) {
    *out = NULL;
    const bool split = c && c->world > 1;
    model_config cfg;
    SK_TRY(folder_config(dir, &cfg));
    if (split) SK_TRY(model_tp_check(&cfg, c->world));
    wts *w = NULL;
    SK_TRY(open_folder_weights(dir, keep_for(be), &w));
    sk_status st = split ? model_open_wts_split(&cfg, w, be, c, out) : model_open_wts(&cfg, w, be, out);
    wts_free(w);   /* the model holds its own reference */
    return st;
}

sk_status model_open_weights(const char *dir, backend *be, model **out) { return model_open_split(dir, be, NULL, out); }

sk_status model_resident_bytes(const model *m, size_t *out) {
    *out = (m->params ? m->n_params * sizeof(float) : 0) + (m->dev ? devw_bytes(m->dev) : 0);
    if (!m->weights) return SK_OK;
    *out += m->tp.slice_bytes + wts_copied_bytes(m->weights);
    /* this wts's own mappings (by address: the process may map a file twice) */
    for (int j = 0; j < wts_files(m->weights); j++) {
        const file_map f = wts_mapping(m->weights, j);
        memstat map;
        if (!f.data) continue;
        SK_TRY(memstat_read_range(f.data, f.size, &map));
        *out += map.rss;
    }
    return SK_OK;
}

/* ---- writing: one file or shards ---- */

/* Produces elements [start, start + n) of tensor i as f32 at out (n <= SAVE_CHUNK; start is
 * a multiple of SAVE_CHUNK). */
typedef void (*tensor_source)(void *ctx, int i, size_t start, size_t n, float *out);

/* Removes what an earlier save left that the new one does not name: model.safetensors when
 * the new save is sharded, the index when it is not, and shards "model-*-of-*.safetensors"
 * of any other count. Best effort: a leftover file is harmless once the new files exist
 * (a single file wins over an index when both are present, here and in transformers). */
static void remove_stale(const char *dir, int n_shards) {
    char path[4096];
    if (n_shards > 1) remove(file_join(path, sizeof path, dir, "model.safetensors"));
    else remove(file_join(path, sizeof path, dir, "model.safetensors.index.json"));
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        int k, of, used = 0;
        if (sscanf(e->d_name, "model-%5d-of-%5d.safetensors%n", &k, &of, &used) == 2 && used == (int)strlen(e->d_name) &&
            (n_shards == 1 || of != n_shards))
            remove(file_join(path, sizeof path, dir, e->d_name));
    }
    closedir(d);
}

/* dtype_from_f32 over threads, in pieces of 64K elements: with the generator of
 * model_init_folder running on every core, a serial conversion would be the bottleneck. */
static void convert_parallel(void *dst, dtype dt, const float *src, size_t n) {
    const size_t piece = (size_t)1 << 16, es = dtype_size(dt);
    long pieces = (long)((n + piece - 1) / piece);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (long k = 0; k < pieces; k++) {
        size_t lo = (size_t)k * piece, m = n - lo < piece ? n - lo : piece;
        dtype_from_f32((unsigned char *)dst + lo * es, dt, src + lo, m);
    }
}

/* Writes the tensors `entries` (their dtype is what the file gets; data unused) into dir:
 * model.safetensors when their bytes fit max_shard_bytes, else shards and the index.
 * Values come from src, SAVE_CHUNK elements at a time, and are converted to each entry's
 * dtype. Files are atomic; on failure the shard being written is removed and the earlier
 * ones of this save may remain (harmless: no index names them yet). */
static sk_status write_weights(const char *dir, const st_entry *entries, int n, size_t max_shard_bytes,
                               tensor_source src, void *ctx) {
    SK_ASSERT(n > 0 && max_shard_bytes > 0);
    int *shard_of = mem_alloc(sizeof(int) * (size_t)n);
    const char **files = mem_calloc(sizeof(char *) * (size_t)n);
    const char **names = mem_calloc(sizeof(char *) * (size_t)n);
    char (*shard_names)[40] = NULL;
    float *f32 = mem_alloc(SAVE_CHUNK * sizeof(float));
    void *conv = mem_alloc(SAVE_CHUNK * sizeof(float));
    sk_status st = SK_OK;
    if (!shard_of || !files || !names || !f32 || !conv) { st = SK_ENOMEM; goto out; }

    /* Greedy packing in order, as transformers' split does. */
    int n_shards = 1;
    uint64_t in_shard = 0, total = 0, total_params = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes = st_entry_bytes(&entries[i]);
        if (in_shard > 0 && in_shard + bytes > max_shard_bytes) {
            n_shards++;
            in_shard = 0;
        }
        in_shard += bytes;
        shard_of[i] = n_shards - 1;
        total += bytes;
        total_params += bytes / dtype_size(entries[i].dtype);
    }
    SK_ASSERT(n_shards <= 99999);
    shard_names = mem_alloc(sizeof *shard_names * (size_t)n_shards);
    if (!shard_names) { st = SK_ENOMEM; goto out; }
    for (int k = 0; k < n_shards; k++) {
        if (n_shards == 1) snprintf(shard_names[k], sizeof shard_names[k], "model.safetensors");
        else snprintf(shard_names[k], sizeof shard_names[k], "model-%05d-of-%05d.safetensors", k + 1, n_shards);
    }

    const st_meta meta = {"format", "pt"};
    for (int k = 0, first = 0; k < n_shards; k++) {
        int last = first;
        while (last < n && shard_of[last] == k) last++;
        char path[4096];
        st_writer *w = NULL;
        file_join(path, sizeof path, dir, shard_names[k]);
        if ((st = st_writer_open(path, entries + first, last - first, &meta, 1, &w)) != SK_OK) goto out;
        for (int i = first; i < last && st == SK_OK; i++) {
            size_t numel = st_entry_bytes(&entries[i]) / dtype_size(entries[i].dtype);
            for (size_t off = 0; off < numel && st == SK_OK; off += SAVE_CHUNK) {
                size_t c = numel - off < SAVE_CHUNK ? numel - off : SAVE_CHUNK;
                src(ctx, i, off, c, f32);
                convert_parallel(conv, entries[i].dtype, f32, c);
                st = st_writer_put(w, conv, c * dtype_size(entries[i].dtype));
            }
            names[i] = entries[i].name;
            files[i] = shard_names[k];
        }
        if (st != SK_OK) { st_writer_abort(w); goto out; }
        if ((st = st_writer_finish(w)) != SK_OK) goto out;
        first = last;
    }
    if (n_shards > 1) {
        char path[4096];
        file_join(path, sizeof path, dir, "model.safetensors.index.json");
        if ((st = st_index_save(path, names, files, n, total, total_params)) != SK_OK) goto out;
    }
    remove_stale(dir, n_shards);
out:
    mem_free(conv);
    mem_free(f32);
    mem_free(shard_names);
    mem_free(names);
    mem_free(files);
    mem_free(shard_of);
    return st;
}

/* tensor_source over a model's parameters (downloaded from the backend). */
static void model_source(void *ctx, int i, size_t start, size_t n, float *out) {
    const model *m = ctx;
    backend_download(m->be, out, m->params + m->specs[i].offset + start, n * sizeof(float));
}

/* Fills an st_entry per spec: the file name (GPT-2 "transformer."-prefixed), dtype dt. */
static sk_status specs_to_entries(const model_config *cfg, const model_param *specs, int n, dtype dt,
                                  st_entry **entries_out, char (**names_out)[128]) {
    st_entry *entries = mem_calloc(sizeof(st_entry) * (size_t)n);
    char (*names)[128] = mem_alloc(sizeof *names * (size_t)n);
    if (!entries || !names) {
        mem_free(entries);
        mem_free(names);
        return SK_ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        const model_param *p = &specs[i];
        snprintf(names[i], sizeof names[i], "%s%s", cfg->arch == ARCH_GPT2 ? GPT2_PREFIX : "", p->name);
        entries[i].name = names[i];
        entries[i].dtype = dt;
        entries[i].ndim = p->ndim;
        memcpy(entries[i].shape, p->shape, sizeof(int64_t) * (size_t)p->ndim);
    }
    *entries_out = entries;
    *names_out = names;
    return SK_OK;
}

/* tensor_source over host copies of a model's parameters. */
typedef struct host_params {
    const model *m;
    const float *params;
} host_params;

static void host_source(void *ctx, int i, size_t start, size_t n, float *out) {
    const host_params *h = ctx;
    memcpy(out, h->params + h->m->specs[i].offset + start, n * sizeof(float));
}

/* Writes m's specs from src(ctx) into dir in dtype dt, then the config saying dt. */
static sk_status save_from(const model *m, const char *dir, dtype dt, size_t max_shard_bytes, tensor_source src,
                           void *ctx) {
    SK_ASSERT(is_float_dtype(dt) && max_shard_bytes > 0);
    SK_TRY(file_mkdirs(dir));
    st_entry *entries = NULL;
    char (*names)[128] = NULL;
    SK_TRY(specs_to_entries(&m->cfg, m->specs, m->n_specs, dt, &entries, &names));
    sk_status st = write_weights(dir, entries, m->n_specs, max_shard_bytes, src, ctx);
    if (st == SK_OK) {
        model_config cfg = m->cfg;
        cfg.torch_dtype = dt;     /* what the files now hold */
        st = model_config_save(&cfg, dir);
    }
    mem_free(names);
    mem_free(entries);
    return st;
}

sk_status model_save_as(const model *m, const char *dir, dtype dt, size_t max_shard_bytes) {
    if (!m->params)
        return sk_fail(SK_ESTATE, "%s: saving needs a training model's parameters (model_load), not mapped weights",
                       dir);
    return save_from(m, dir, dt, max_shard_bytes, model_source, (void *)m);
}

sk_status model_save_host(const model *m, const float *params, const char *dir) {
    host_params h = {m, params};
    return save_from(m, dir, DT_F32, MODEL_SHARD_BYTES, host_source, &h);
}

sk_status model_save(const model *m, const char *dir) {
    return model_save_as(m, dir, DT_F32, MODEL_SHARD_BYTES);
}

/* ---- streaming random initialization ---- */

typedef struct init_ctx {
    const st_entry *entries;
    uint64_t seed;
} init_ctx;

/* tensor_source of model_init_folder: the values model.h specifies. */
static void init_source(void *vctx, int i, size_t start, size_t n, float *out) {
    const init_ctx *c = vctx;
    const st_entry *e = &c->entries[i];
    if (e->ndim < 2) {
        float v = ends_with(e->name, ".bias") ? 0.0f : 1.0f;
        for (size_t k = 0; k < n; k++) out[k] = v;
        return;
    }
    SK_ASSERT(start % INIT_BLOCK == 0);
    long n_blocks = (long)((n + INIT_BLOCK - 1) / INIT_BLOCK);
#pragma omp parallel for schedule(static)
    for (long b = 0; b < n_blocks; b++) {
        uint64_t block = start / INIT_BLOCK + (uint64_t)b;
        rng r;
        rng_seed(&r, model_init_stream_seed(c->seed, i, block));
        size_t lo = (size_t)b * INIT_BLOCK, hi = lo + INIT_BLOCK < n ? lo + INIT_BLOCK : n;
        /* Box-Muller keeping both numbers of each pair: half the logarithms of rng_normal */
        for (size_t k = lo; k < hi; k += 2) {
            double u1 = ((double)(rng_u64(&r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
            double u2 = (double)(rng_u64(&r) >> 11) * (1.0 / 9007199254740992.0);
            double rad = sqrt(-2.0 * log(u1)), sn, cs;
            sincos(6.283185307179586 * u2, &sn, &cs);
            out[k] = MODEL_INIT_STD * (float)(rad * cs);
            if (k + 1 < hi) out[k + 1] = MODEL_INIT_STD * (float)(rad * sn);
        }
    }
}

sk_status model_init_streamed(model *m, uint64_t seed) {
    SK_ASSERT(m->params && !m->weights);
    st_entry *entries = NULL;
    char (*names)[128] = NULL;
    SK_TRY(specs_to_entries(&m->cfg, m->specs, m->n_specs, DT_F32, &entries, &names));
    const size_t chunk = 64 * INIT_BLOCK;   /* a multiple of the block: init_source's pieces */
    float *buf = mem_alloc(chunk * sizeof(float));
    sk_status st = buf ? SK_OK : sk_fail(SK_ENOMEM, "initializing %zu parameters", m->n_params);
    init_ctx ctx = {entries, seed};
    for (int i = 0; i < m->n_specs && st == SK_OK; i++)
        for (size_t at = 0; at < m->specs[i].numel; at += chunk) {
            const size_t n = m->specs[i].numel - at < chunk ? m->specs[i].numel - at : chunk;
            init_source(&ctx, i, at, n, buf);
            backend_upload(m->be, m->params + m->specs[i].offset + at, buf, n * sizeof(float));
        }
    model_params_changed(m);
    mem_free(buf);
    mem_free(names);
    mem_free(entries);
    return st;
}

/* devw_source of model_open_random: init_source's values in the device dtype. */
typedef struct random_ctx {
    init_ctx init;
    float *buf;              /* (DEVW_CHUNK_ELEMS) f32 before conversion */
} random_ctx;

static void random_source(void *vctx, int i, size_t start, size_t n, dtype dt, void *dst) {
    random_ctx *c = vctx;
    init_source(&c->init, i, start, n, dt == DT_F32 ? dst : c->buf);
    if (dt != DT_F32) convert_parallel(dst, dt, c->buf, n);
}

sk_status model_open_random(const model_config *cfg, backend *be, uint64_t seed, model **out) {
    *out = NULL;
    model *m = NULL;
    if (!device_bf16(be)) {
        SK_TRY(model_create(cfg, be, &m));
    } else {
        SK_TRY(model_plan(cfg, be, &m));
        st_entry *entries = NULL;
        char (*names)[128] = NULL;
        random_ctx ctx = {{NULL, seed}, mem_alloc(DEVW_CHUNK_ELEMS * sizeof(float))};
        m->views = mem_calloc(sizeof(tensor) * (size_t)m->n_specs);
        sk_status st = ctx.buf && m->views ? specs_to_entries(cfg, m->specs, m->n_specs, DT_F32, &entries, &names)
                                           : SK_ENOMEM;
        ctx.init.entries = entries;
        if (st == SK_OK && (st = devw_make(m, random_source, &ctx, &m->dev)) == SK_OK)
            for (int i = 0; i < m->n_specs; i++) m->views[i] = devw_view(m->dev, i);
        mem_free(names);
        mem_free(entries);
        mem_free(ctx.buf);
        if (st != SK_OK) {
            model_free(m);
            return st;
        }
        *out = m;
        return SK_OK;
    }
    sk_status st = model_init_streamed(m, seed);
    if (st != SK_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return SK_OK;
}

uint64_t model_init_stream_seed(uint64_t seed, int tensor_index, uint64_t block) {
    return seed ^ ((uint64_t)(tensor_index + 1) << 40) ^ block;
}

int model_folder_layout(const model_config *cfg, model_param *specs) {
    return model_arch_get(cfg->arch)->plan_params(cfg, specs);
}

sk_status model_init_folder(const model_config *cfg_in, const char *dir, uint64_t seed, dtype dt,
                            size_t max_shard_bytes) {
    SK_ASSERT(is_float_dtype(dt) && max_shard_bytes > 0);
    model_config cfg = *cfg_in;
    SK_TRY(model_config_validate(&cfg, dir));
    SK_TRY(file_mkdirs(dir));
    int n = model_folder_layout(&cfg, NULL);
    model_param *specs = mem_alloc(sizeof(model_param) * (size_t)n);
    if (!specs) return SK_ENOMEM;
    model_folder_layout(&cfg, specs);
    st_entry *entries = NULL;
    char (*names)[128] = NULL;
    sk_status st = specs_to_entries(&cfg, specs, n, dt, &entries, &names);
    if (st == SK_OK) {
        init_ctx ctx = {entries, seed};
        st = write_weights(dir, entries, n, max_shard_bytes, init_source, &ctx);
    }
    if (st == SK_OK) {
        cfg.torch_dtype = dt;
        st = model_config_save(&cfg, dir);
    }
    mem_free(names);
    mem_free(entries);
    mem_free(specs);
    return st;
}
