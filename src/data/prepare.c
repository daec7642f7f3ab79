/* prepare: text and JSONL files -> train/val token shards + dataset.json (see data.h).
 *
 * The inputs are mapped, not read: documents are (pointer, length) views into the maps.
 * Documents are gathered into batches of about BATCH_BYTES of text, encoded in parallel
 * (OpenMP, one document per iteration), then appended to their split strictly in document
 * order, so the output does not depend on the number of threads. A failing document (bad
 * JSON, no "text", an encoder error) is reported only after its batch, and the first one in
 * document order wins, so the message is deterministic too.
 *
 * Invariants: each split's buffer holds fewer than shard_tokens tokens between appends (a
 * full buffer is written out at once); the last document seen is held back ("pending") so
 * that, if the val rule selected no document, it can still go to val. dataset.json is
 * removed first and written last: a folder with one describes complete shards. */
#include "data/data.h"

#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/json.h"

#define BATCH_BYTES (16u << 20)
#define BATCH_DOCS 65536
#define PROGRESS_MIN_BYTES (64u << 20)   /* show progress off a terminal above this */

typedef struct doc_item {
    const char *raw;        /* the text, or the JSONL line */
    size_t len;
    int input;              /* index into inputs */
    long line;              /* 1-based JSONL line, 0 for a whole-file document */
    int32_t *ids;           /* result, owned (mem_free) */
    size_t n;
    sk_status st;
    char *err;              /* message when st != SK_OK, owned */
} doc_item;

typedef struct split_out {
    const char *name;       /* "train" or "val" */
    int32_t *buf;
    size_t n, cap;
    long docs;
    uint64_t tokens;
    int n_shards;
    cJSON *shard_names;     /* array of file names */
} split_out;

typedef struct prep {
    const data_prepare_cfg *cfg;
    const char *const *inputs;
    const char *out_dir;
    size_t shard_tokens;
    split_out split[2];     /* 0 train, 1 val */
    long n_docs;            /* documents assigned so far (pending included) */
    int32_t *pending;       /* the last document's tokens, EOT first */
    size_t pending_n;
    int pending_split;
    bool has_pending;
    /* progress */
    uint64_t total_bytes, done_bytes;
    double t0, last_print;
    bool show_progress;
} prep;

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Writes the split's buffer as its next shard and empties it. */
static sk_status flush_split(prep *p, split_out *s) {
    if (s->n == 0) return SK_OK;
    char name[64], path[4096];
    snprintf(name, sizeof name, "%s_%06d.bin", s->name, s->n_shards);
    file_join(path, sizeof path, p->out_dir, name);
    SK_TRY(data_shard_write(path, s->buf, s->n, p->cfg->vocab_size));
    cJSON_AddItemToArray(s->shard_names, cJSON_CreateString(name));
    s->n_shards++;
    s->n = 0;
    return SK_OK;
}

/* Appends ids to the split, writing shards whenever the buffer reaches shard_tokens. */
static sk_status append_tokens(prep *p, split_out *s, const int32_t *ids, size_t n) {
    while (n > 0) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? 2 * s->cap : 1 << 16;
            if (cap > p->shard_tokens) cap = p->shard_tokens;
            int32_t *grown = mem_realloc(s->buf, cap * sizeof *grown);
            if (!grown) return sk_fail_ctx(SK_ENOMEM, "buffering %s tokens", s->name);
            s->buf = grown;
            s->cap = cap;
        }
        size_t m = s->cap - s->n < n ? s->cap - s->n : n;
        memcpy(s->buf + s->n, ids, m * sizeof *ids);
        s->n += m;
        s->tokens += m;
        ids += m;
        n -= m;
        if (s->n == p->shard_tokens) SK_TRY(flush_split(p, s));
    }
    return SK_OK;
}

static sk_status commit_pending(prep *p) {
    if (!p->has_pending) return SK_OK;
    split_out *s = &p->split[p->pending_split];
    sk_status st = append_tokens(p, s, p->pending, p->pending_n);
    s->docs++;
    mem_free(p->pending);
    p->pending = NULL;
    p->has_pending = false;
    return st;
}

/* Takes ownership of a finished document (EOT + ids): the previous pending document goes to
 * its split and this one becomes pending, with its split decided by the val rule. */
static sk_status add_document(prep *p, doc_item *d) {
    SK_TRY(commit_pending(p));
    int32_t *toks = mem_alloc((d->n + 1) * sizeof *toks);
    if (!toks) return sk_fail_ctx(SK_ENOMEM, "document of %zu tokens", d->n);
    toks[0] = p->cfg->eot_id;
    if (d->n) memcpy(toks + 1, d->ids, d->n * sizeof *toks);
    double f = p->cfg->val_fraction;
    long i = p->n_docs++;
    p->pending = toks;
    p->pending_n = d->n + 1;
    p->pending_split = (long)((double)(i + 1) * f) > (long)((double)i * f) ? 1 : 0;
    p->has_pending = true;
    return SK_OK;
}

/* Encodes one document (parsing its JSONL line first); records failures in the item with
 * the message, since sk_errmsg is per thread. */
static void encode_item(const data_prepare_cfg *cfg, const char *const *inputs, doc_item *d) {
    const char *text = d->raw;
    size_t len = d->len;
    cJSON *root = NULL;
    sk_status st = SK_OK;
    if (d->line > 0) {
        root = cJSON_ParseWithLength(d->raw, d->len);
        const cJSON *t = root ? cJSON_GetObjectItemCaseSensitive(root, "text") : NULL;
        if (!root) {
            st = sk_fail(SK_EFORMAT, "%s:%ld: not valid JSON", inputs[d->input], d->line);
        } else if (!cJSON_IsObject(root) || !t) {
            st = sk_fail(SK_EFORMAT, "%s:%ld: no \"text\" field", inputs[d->input], d->line);
        } else if (!cJSON_IsString(t)) {
            st = sk_fail(SK_EFORMAT, "%s:%ld: \"text\" is not a string", inputs[d->input], d->line);
        } else {
            text = t->valuestring;
            len = strlen(text);   /* an escaped \u0000 would end it early: acceptable */
        }
    }
    if (st == SK_OK) {
        st = cfg->encode(cfg->ctx, text, len, &d->ids, &d->n);
        if (st != SK_OK) {
            d->ids = NULL;
            if (d->line > 0) sk_fail_ctx(st, "%s:%ld", inputs[d->input], d->line);
            else sk_fail_ctx(st, "%s", inputs[d->input]);
        }
    }
    for (size_t k = 0; st == SK_OK && k < d->n; k++)
        if (d->ids[k] < 0 || d->ids[k] >= cfg->vocab_size)
            st = sk_fail(SK_EFORMAT, "%s: the encoder returned id %d, outside the vocabulary of %d",
                         inputs[d->input], (int)d->ids[k], cfg->vocab_size);
    if (st != SK_OK) d->err = mem_strdup(sk_errmsg());
    d->st = st;
    cJSON_Delete(root);
}

static void show_progress(prep *p, bool final) {
    if (!p->show_progress) return;
    double now = time_now();
    if (!final && now - p->last_print < 0.2) return;
    p->last_print = now;
    double mb = (double)p->done_bytes / 1e6, total = (double)p->total_bytes / 1e6;
    double dt = now - p->t0 > 1e-6 ? now - p->t0 : 1e-6;
    fprintf(stderr, "\rdata prepare: %.1f / %.1f MB (%.0f%%), %.1f MB/s, %ld documents   ", mb, total,
            total > 0 ? 100.0 * mb / total : 100.0, mb / dt, p->n_docs);
    if (final) fprintf(stderr, "\n");
    fflush(stderr);
}

/* Encodes the batch in parallel, then adds its documents in order. Frees the results. */
static sk_status run_batch(prep *p, doc_item *items, int n) {
    const data_prepare_cfg *cfg = p->cfg;
    int threads = cfg->threads > 0 ? cfg->threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int i = 0; i < n; i++) encode_item(cfg, p->inputs, &items[i]);
    sk_status st = SK_OK;
    for (int i = 0; i < n; i++) {
        if (st == SK_OK && items[i].st != SK_OK)
            st = sk_fail(items[i].st, "%s", items[i].err ? items[i].err : "encoding failed");
        if (st == SK_OK) st = add_document(p, &items[i]);
        if (st == SK_OK) p->done_bytes += items[i].len;
        mem_free(items[i].ids);
        mem_free(items[i].err);
    }
    show_progress(p, false);
    return st;
}

/* Records the split's summary in the dataset object. */
static void add_split_json(cJSON *root, const split_out *s) {
    cJSON *o = cJSON_AddObjectToObject(root, s->name);
    cJSON_AddNumberToObject(o, "documents", (double)s->docs);
    cJSON_AddNumberToObject(o, "tokens", (double)s->tokens);
    cJSON_AddItemToObject(o, "shards", cJSON_Duplicate(s->shard_names, true));
}

sk_status data_prepare_encoded(const data_prepare_cfg *cfg, const char *const *inputs, int n_inputs,
                               const char *out_dir) {
    SK_ASSERT(cfg->encode);
    if (n_inputs <= 0) return sk_fail(SK_EARG, "data prepare: no input files");
    if (!(cfg->val_fraction >= 0 && cfg->val_fraction < 1))
        return sk_fail(SK_EARG, "data prepare: val fraction %g is not in [0, 1)", cfg->val_fraction);
    if (cfg->vocab_size <= 0 || cfg->eot_id < 0 || cfg->eot_id >= cfg->vocab_size)
        return sk_fail(SK_EARG, "data prepare: end-of-text id %d outside the vocabulary of %d", cfg->eot_id,
                       cfg->vocab_size);

    prep p = {.cfg = cfg, .inputs = inputs, .out_dir = out_dir};
    p.shard_tokens = cfg->shard_tokens ? cfg->shard_tokens : DATA_SHARD_TOKENS;
    p.split[0].name = "train";
    p.split[1].name = "val";
    /* Every input must exist before any work: a typo fails in a second, not after an hour. */
    for (int i = 0; i < n_inputs; i++) {
        struct stat stt;
        if (stat(inputs[i], &stt) != 0 || !S_ISREG(stt.st_mode))
            return sk_fail(SK_EIO, "data prepare: input %s is not a readable file", inputs[i]);
        p.total_bytes += (uint64_t)stt.st_size;
    }
    SK_TRY(file_mkdirs(out_dir));
    char json_path[4096];
    file_join(json_path, sizeof json_path, out_dir, "dataset.json");
    if (file_exists(json_path) && unlink(json_path) != 0)
        return sk_fail(SK_EIO, "cannot remove the old %s", json_path);
    p.show_progress = !cfg->quiet && (isatty(2) || p.total_bytes > PROGRESS_MIN_BYTES);
    p.t0 = p.last_print = time_now();

    sk_status st = SK_OK;
    file_map *maps = mem_calloc((size_t)n_inputs * sizeof *maps);
    doc_item *items = mem_calloc(BATCH_DOCS * sizeof *items);
    p.split[0].shard_names = cJSON_CreateArray();
    p.split[1].shard_names = cJSON_CreateArray();
    if (!maps || !items || !p.split[0].shard_names || !p.split[1].shard_names) {
        st = sk_fail(SK_ENOMEM, "data prepare: out of memory");
        goto done;
    }
    int n_items = 0, first_open = 0;    /* maps [first_open, i] may back items of the batch */
    size_t batch_bytes = 0;
    for (int i = 0; i < n_inputs && st == SK_OK; i++) {
        if ((st = file_map_open(inputs[i], &maps[i])) != SK_OK) break;
        const char *data = maps[i].data;
        size_t size = maps[i].size;
        bool jsonl = ends_with(inputs[i], ".jsonl");
        long line = 0;
        for (size_t pos = 0; st == SK_OK && (jsonl ? pos < size : pos == 0);) {
            doc_item d = {.raw = data ? data : "", .len = size, .input = i, .line = 0};
            if (jsonl) {
                const char *nl = memchr(data + pos, '\n', size - pos);
                size_t end = nl ? (size_t)(nl - data) : size;
                d.raw = data + pos;
                d.len = end - pos;
                d.line = ++line;
                pos = end + 1;
                bool blank = true;
                for (size_t k = 0; k < d.len && blank; k++)
                    blank = d.raw[k] == ' ' || d.raw[k] == '\t' || d.raw[k] == '\r';
                if (blank) continue;
            } else {
                pos = 1;
            }
            items[n_items++] = d;
            batch_bytes += d.len;
            if (n_items == BATCH_DOCS || batch_bytes >= BATCH_BYTES) {
                st = run_batch(&p, items, n_items);
                n_items = 0;
                batch_bytes = 0;
                for (; first_open < i; first_open++) file_map_close(&maps[first_open]);
            }
        }
    }
    if (st == SK_OK && n_items > 0) st = run_batch(&p, items, n_items);
    n_items = 0;
    if (st == SK_OK && p.n_docs == 0) st = sk_fail(SK_EFORMAT, "data prepare: the inputs hold no documents");
    if (st == SK_OK && cfg->val_fraction > 0 && p.n_docs >= 2 && p.split[1].docs == 0 && p.pending_split == 0)
        p.pending_split = 1;
    if (st == SK_OK) st = commit_pending(&p);
    if (st == SK_OK) st = flush_split(&p, &p.split[0]);
    if (st == SK_OK) st = flush_split(&p, &p.split[1]);
    if (st == SK_OK) p.done_bytes = p.total_bytes;   /* newlines and blank lines included */
    show_progress(&p, true);
    if (st == SK_OK) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "format", "skein-tokens");
        cJSON_AddNumberToObject(root, "version", DATA_VERSION);
        cJSON_AddNumberToObject(root, "vocab_size", cfg->vocab_size);
        cJSON_AddNumberToObject(root, "eot_id", cfg->eot_id);
        cJSON_AddNumberToObject(root, "token_width", cfg->vocab_size <= 65536 ? 2 : 4);
        cJSON_AddNumberToObject(root, "documents", (double)p.n_docs);
        cJSON_AddNumberToObject(root, "val_fraction", cfg->val_fraction);
        cJSON *ins = cJSON_AddArrayToObject(root, "inputs");
        for (int i = 0; i < n_inputs; i++) cJSON_AddItemToArray(ins, cJSON_CreateString(inputs[i]));
        add_split_json(root, &p.split[0]);
        add_split_json(root, &p.split[1]);
        st = json_save_file(json_path, root);
        cJSON_Delete(root);
    }
    if (st == SK_OK)
        log_info("data prepare: %ld documents -> %s: train %llu tokens in %d shards, val %llu tokens in %d shards",
                 p.n_docs, out_dir, (unsigned long long)p.split[0].tokens, p.split[0].n_shards,
                 (unsigned long long)p.split[1].tokens, p.split[1].n_shards);
done:
    if (maps)
        for (int i = 0; i < n_inputs; i++) file_map_close(&maps[i]);
    mem_free(maps);
    mem_free(items);
    mem_free(p.pending);
    for (int k = 0; k < 2; k++) {
        mem_free(p.split[k].buf);
        cJSON_Delete(p.split[k].shard_names);
    }
    return st;
}
