/* safetensors: reader (mmap + full validation), sharded folders, atomic writer (see
 * safetensors.h for the format and the guarantees st_open gives).
 *
 * Invariants of an open st_file: every st_tensor's data..data+nbytes lies inside the mapping,
 * nbytes == numel * dtype_size(dtype), the tensors are sorted by name with no duplicates,
 * and names/metadata strings live in f->strings (one allocation). */
#include "model/safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/json.h"

/* Largest integer a JSON number (a double in cJSON) holds exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

static uint64_t read_u64_le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void write_u64_le(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* A JSON number that is a non-negative integer small enough to be exact. */
static bool json_uint(const cJSON *it, uint64_t *out) {
    if (!cJSON_IsNumber(it)) return false;
    double v = it->valuedouble;
    if (!(v >= 0 && v <= ST_MAX_JSON_INT) || v != (double)(uint64_t)v) return false;
    *out = (uint64_t)v;
    return true;
}

/* One tensor while parsing: offsets are relative to the data section. */
typedef struct st_parsed {
    const cJSON *item;
    int idx;                   /* its slot in f->tensors */
    uint64_t begin, end;
} st_parsed;

static int cmp_by_offset(const void *a, const void *b) {
    const st_parsed *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* Reads one tensor entry `it` (name it->string) into t and p; returns SK_EFORMAT naming the
 * tensor and field on anything wrong. Does not set t->name or t->data. */
static sk_status parse_entry(const char *path, const cJSON *it, st_tensor *t, st_parsed *p) {
    const char *name = it->string;
    if (!cJSON_IsObject(it)) return sk_fail(SK_EFORMAT, "%s: tensor '%s' is not a JSON object", path, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(jd)) return sk_fail(SK_EFORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", path, name);
    int dt = dtype_from_name(jd->valuestring);
    if (dt < 0) return sk_fail(SK_EFORMAT, "%s: tensor '%s': unsupported dtype '%.32s'", path, name, jd->valuestring);
    t->dtype = (dtype)dt;
    if (!cJSON_IsArray(js)) return sk_fail(SK_EFORMAT, "%s: tensor '%s': missing or non-array \"shape\"", path, name);
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS) return sk_fail(SK_EFORMAT, "%s: tensor '%s': %d dimensions (at most %d)", path, name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    size_t numel = 1;
    int d = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, js) {
        uint64_t v;
        if (!json_uint(e, &v))
            return sk_fail(SK_EFORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, d);
        t->shape[d++] = (int64_t)v;
        if (__builtin_mul_overflow(numel, (size_t)v, &numel))
            return sk_fail(SK_EFORMAT, "%s: tensor '%s': shape overflows", path, name);
    }
    size_t nbytes;
    if (__builtin_mul_overflow(numel, dtype_size(t->dtype), &nbytes))
        return sk_fail(SK_EFORMAT, "%s: tensor '%s': size overflows", path, name);
    t->numel = numel;
    t->nbytes = nbytes;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || !json_uint(cJSON_GetArrayItem(jo, 0), &p->begin) ||
        !json_uint(cJSON_GetArrayItem(jo, 1), &p->end))
        return sk_fail(SK_EFORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end] non-negative integers", path, name);
    if (p->end < p->begin)
        return sk_fail(SK_EFORMAT, "%s: tensor '%s': data_offsets end %llu before begin %llu", path, name,
                       (unsigned long long)p->end, (unsigned long long)p->begin);
    if (p->end - p->begin != nbytes)
        return sk_fail(SK_EFORMAT, "%s: tensor '%s': data_offsets span %llu bytes but %s x %zu elements need %zu",
                       path, name, (unsigned long long)(p->end - p->begin), dtype_name(t->dtype), numel, nbytes);
    p->item = it;
    return SK_OK;
}

sk_status st_open(const char *path, st_file *f) {
    memset(f, 0, sizeof *f);
    char *hdr = NULL;
    cJSON *root = NULL;
    st_parsed *parsed = NULL;
    sk_status st = SK_OK;

    f->path = mem_strdup(path);
    if (!f->path) return SK_ENOMEM;
    if ((st = file_map_open(path, &f->map)) != SK_OK) goto err;
    const unsigned char *base = f->map.data;
    size_t size = f->map.size;
    if (size < 8) {
        st = sk_fail(SK_EFORMAT, "%s: %zu bytes, too short for a safetensors header", path, size);
        goto err;
    }
    uint64_t n = read_u64_le(base);
    if (n > ST_MAX_HEADER) {
        st = sk_fail(SK_EFORMAT, "%s: header length %llu exceeds the %llu-byte limit", path,
                     (unsigned long long)n, (unsigned long long)ST_MAX_HEADER);
        goto err;
    }
    if (n > size - 8) {
        st = sk_fail(SK_EFORMAT, "%s: header length %llu larger than the file (%zu bytes): truncated?", path,
                     (unsigned long long)n, size);
        goto err;
    }
    /* cJSON wants a NUL-terminated string; the header is small next to the data. */
    hdr = mem_alloc(n + 1);
    if (!hdr) { st = SK_ENOMEM; goto err; }
    memcpy(hdr, base + 8, n);
    hdr[n] = 0;
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(hdr, n, &end, 0);
    if (!root || !cJSON_IsObject(root)) {
        size_t at = end ? (size_t)(end - hdr) : 0;
        st = sk_fail(SK_EFORMAT, "%s: header is not a JSON object (error near byte %zu of %llu)", path, at,
                     (unsigned long long)n);
        goto err;
    }
    for (const char *q = end; q < hdr + n; q++)
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            st = sk_fail(SK_EFORMAT, "%s: unexpected bytes after the JSON header at byte %zu", path, (size_t)(q - hdr));
            goto err;
        }

    /* Count entries and the string storage they need. */
    size_t strbytes = 0;
    int nt = 0, nm = 0;
    const cJSON *meta = NULL, *it;
    cJSON_ArrayForEach(it, root) {
        if (!strcmp(it->string, "__metadata__")) {
            if (meta) { st = sk_fail(SK_EFORMAT, "%s: two \"__metadata__\" entries", path); goto err; }
            if (!cJSON_IsObject(it)) { st = sk_fail(SK_EFORMAT, "%s: \"__metadata__\" is not an object", path); goto err; }
            meta = it;
            const cJSON *kv;
            cJSON_ArrayForEach(kv, it) {
                if (!cJSON_IsString(kv)) {
                    st = sk_fail(SK_EFORMAT, "%s: \"__metadata__\" value of '%s' is not a string", path, kv->string);
                    goto err;
                }
                strbytes += strlen(kv->string) + strlen(kv->valuestring) + 2;
                nm++;
            }
        } else {
            strbytes += strlen(it->string) + 1;
            nt++;
        }
    }
    f->tensors = mem_calloc(sizeof(st_tensor) * (size_t)(nt ? nt : 1));
    f->meta = mem_calloc(sizeof(st_meta) * (size_t)(nm ? nm : 1));
    f->strings = mem_alloc(strbytes ? strbytes : 1);
    parsed = mem_calloc(sizeof(st_parsed) * (size_t)(nt ? nt : 1));
    if (!f->tensors || !f->meta || !f->strings || !parsed) { st = SK_ENOMEM; goto err; }

    char *s = f->strings;
    if (meta) {
        const cJSON *kv;
        cJSON_ArrayForEach(kv, meta) {
            st_meta *m = &f->meta[f->n_meta++];
            size_t kl = strlen(kv->string) + 1, vl = strlen(kv->valuestring) + 1;
            m->key = memcpy(s, kv->string, kl); s += kl;
            m->value = memcpy(s, kv->valuestring, vl); s += vl;
        }
    }
    cJSON_ArrayForEach(it, root) {
        if (it == meta) continue;
        st_tensor *t = &f->tensors[f->n_tensors];
        if ((st = parse_entry(path, it, t, &parsed[f->n_tensors])) != SK_OK) goto err;
        size_t l = strlen(it->string) + 1;
        t->name = memcpy(s, it->string, l);
        s += l;
        parsed[f->n_tensors].idx = f->n_tensors;
        f->n_tensors++;
    }

    /* Tensors must tile the data section: sorted by offset, each starts where the last ended. */
    const uint64_t data_size = size - 8 - n;
    const unsigned char *data = base + 8 + n;
    qsort(parsed, (size_t)nt, sizeof *parsed, cmp_by_offset);
    uint64_t pos = 0;
    const char *prev = NULL;
    for (int i = 0; i < nt; i++) {
        const st_parsed *p = &parsed[i];
        if (p->end > data_size) {
            st = sk_fail(SK_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] beyond the %llu-byte data section (truncated?)",
                         path, p->item->string, (unsigned long long)p->begin, (unsigned long long)p->end,
                         (unsigned long long)data_size);
            goto err;
        }
        if (p->begin != pos) {
            st = sk_fail(SK_EFORMAT, "%s: tensor '%s' starts at byte %llu but %s%s%s ends at %llu (%s)", path,
                         p->item->string, (unsigned long long)p->begin, prev ? "the previous tensor '" : "nothing",
                         prev ? prev : "", prev ? "'" : "", (unsigned long long)pos,
                         p->begin < pos ? "overlap" : "gap");
            goto err;
        }
        pos = p->end;
        prev = p->item->string;
    }
    if (pos != data_size) {
        st = sk_fail(SK_EFORMAT, "%s: tensors cover %llu bytes of a %llu-byte data section", path,
                     (unsigned long long)pos, (unsigned long long)data_size);
        goto err;
    }
    for (int i = 0; i < nt; i++) f->tensors[parsed[i].idx].data = data + parsed[i].begin;
    qsort(f->tensors, (size_t)nt, sizeof *f->tensors, cmp_by_name);
    for (int i = 1; i < nt; i++)
        if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name)) {
            st = sk_fail(SK_EFORMAT, "%s: tensor '%s' appears twice", path, f->tensors[i].name);
            goto err;
        }
    mem_free(parsed);
    cJSON_Delete(root);
    mem_free(hdr);
    return SK_OK;
err:
    mem_free(parsed);
    cJSON_Delete(root);
    mem_free(hdr);
    st_close(f);
    return st;
}

void st_close(st_file *f) {
    file_map_close(&f->map);
    mem_free(f->tensors);
    mem_free(f->meta);
    mem_free(f->strings);
    mem_free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    int lo = 0, hi = f->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[mid].name, name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

const char *st_meta_get(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, key)) return f->meta[i].value;
    return NULL;
}

/* ---- sharded folders ---- */

static bool shard_name_ok(const char *s) {
    return s[0] && strcmp(s, ".") && strcmp(s, "..") && !strchr(s, '/');
}

sk_status st_set_open_dir(const char *dir, st_set *s) {
    memset(s, 0, sizeof *s);
    char path[4096];
    cJSON *idx = NULL;
    sk_status st = SK_OK;
    const char **names = NULL;

    file_join(path, sizeof path, dir, "model.safetensors");
    if (file_exists(path)) {
        s->files = mem_calloc(sizeof(st_file));
        s->weights_path = mem_strdup(path);
        if (!s->files || !s->weights_path) { st = SK_ENOMEM; goto err; }
        if ((st = st_open(path, &s->files[0])) != SK_OK) goto err;
        s->n_files = 1;
        return SK_OK;
    }
    file_join(path, sizeof path, dir, "model.safetensors.index.json");
    if (!file_exists(path))
        return sk_fail(SK_EIO, "%s: no model.safetensors or model.safetensors.index.json", dir);
    s->weights_path = mem_strdup(path);
    if (!s->weights_path) { st = SK_ENOMEM; goto err; }
    if ((st = json_load_file(path, &idx)) != SK_OK) goto err;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    if (!cJSON_IsObject(wm)) { st = sk_fail(SK_EFORMAT, "%s: missing or non-object \"weight_map\"", path); goto err; }

    /* Distinct shard names, in order of first appearance. */
    int nmap = cJSON_GetArraySize(wm), nf = 0;
    names = mem_calloc(sizeof(char *) * (size_t)(nmap ? nmap : 1));
    if (!names) { st = SK_ENOMEM; goto err; }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring)) {
            st = sk_fail(SK_EFORMAT, "%s: weight_map entry '%s' is not a file name in the folder", path, e->string);
            goto err;
        }
        int j = 0;
        while (j < nf && strcmp(names[j], e->valuestring)) j++;
        if (j == nf) names[nf++] = e->valuestring;
    }
    if (nf == 0) { st = sk_fail(SK_EFORMAT, "%s: empty weight_map", path); goto err; }
    s->files = mem_calloc(sizeof(st_file) * (size_t)nf);
    if (!s->files) { st = SK_ENOMEM; goto err; }
    for (int j = 0; j < nf; j++) {
        char shard[4096];
        file_join(shard, sizeof shard, dir, names[j]);
        if ((st = st_open(shard, &s->files[j])) != SK_OK) {
            st = sk_fail_ctx(st, "shard named by %s", path);
            goto err;
        }
        s->n_files++;
    }
    cJSON_ArrayForEach(e, wm) {
        int j = 0;
        while (strcmp(names[j], e->valuestring)) j++;
        if (!st_find(&s->files[j], e->string)) {
            st = sk_fail(SK_EFORMAT, "%s: weight_map puts '%s' in %s, which does not hold it", path, e->string,
                         e->valuestring);
            goto err;
        }
    }
    for (int j = 0; j < s->n_files; j++)
        for (int i = 0; i < s->files[j].n_tensors; i++)
            for (int k = j + 1; k < s->n_files; k++)
                if (st_find(&s->files[k], s->files[j].tensors[i].name)) {
                    st = sk_fail(SK_EFORMAT, "%s: tensor '%s' is in both %s and %s", path,
                                 s->files[j].tensors[i].name, s->files[j].path, s->files[k].path);
                    goto err;
                }
    mem_free(names);
    cJSON_Delete(idx);
    return SK_OK;
err:
    mem_free(names);
    cJSON_Delete(idx);
    st_set_close(s);
    return st;
}

void st_set_close(st_set *s) {
    for (int j = 0; j < s->n_files; j++) st_close(&s->files[j]);
    mem_free(s->files);
    mem_free(s->weights_path);
    memset(s, 0, sizeof *s);
}

const st_tensor *st_set_find(const st_set *s, const char *name) {
    for (int j = 0; j < s->n_files; j++) {
        const st_tensor *t = st_find(&s->files[j], name);
        if (t) return t;
    }
    return NULL;
}

int st_set_count(const st_set *s) {
    int n = 0;
    for (int j = 0; j < s->n_files; j++) n += s->files[j].n_tensors;
    return n;
}

const st_tensor *st_set_at(const st_set *s, int i) {
    SK_ASSERT(i >= 0);
    for (int j = 0; j < s->n_files; j++) {
        if (i < s->files[j].n_tensors) return &s->files[j].tensors[i];
        i -= s->files[j].n_tensors;
    }
    SK_ASSERT(!"st_set_at: index out of range");
    return NULL;
}

/* ---- writing ---- */

struct st_writer {
    FILE *fp;
    char *path, *tmp;
    uint64_t remaining;        /* data bytes still expected */
};

size_t st_entry_bytes(const st_entry *e) {
    SK_ASSERT(e->ndim >= 0 && e->ndim <= ST_MAX_DIMS);
    size_t n = dtype_size(e->dtype);
    for (int d = 0; d < e->ndim; d++) {
        SK_ASSERT(e->shape[d] >= 0);
        SK_ASSERT(!__builtin_mul_overflow(n, (size_t)e->shape[d], &n));
    }
    return n;
}

/* Builds the padded header (u64 length + JSON + spaces to an 8-byte boundary) in *out
 * (mem_free) and the total data size in *data_bytes. */
static sk_status st_build_header(const char *path, const st_entry *entries, int n, const st_meta *meta, int n_meta,
                                 unsigned char **out, size_t *out_len, uint64_t *data_bytes) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(entries[i].name, entries[j].name))
                return sk_fail(SK_EARG, "%s: tensor '%s' given twice", path, entries[i].name);
    cJSON *root = cJSON_CreateObject();
    if (!root) return sk_fail(SK_ENOMEM, "%s: out of memory building the header", path);
    bool ok = true;
    if (n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        ok = m != NULL;
        for (int i = 0; ok && i < n_meta; i++) ok = cJSON_AddStringToObject(m, meta[i].key, meta[i].value) != NULL;
    }
    uint64_t off = 0;
    for (int i = 0; ok && i < n; i++) {
        const st_entry *e = &entries[i];
        SK_ASSERT(strcmp(e->name, "__metadata__") != 0);
        size_t nb = st_entry_bytes(e);
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        cJSON *shape = t ? cJSON_AddArrayToObject(t, "shape") : NULL;
        cJSON *offs = shape ? cJSON_AddArrayToObject(t, "data_offsets") : NULL;
        ok = offs && cJSON_AddStringToObject(t, "dtype", dtype_name(e->dtype));
        for (int d = 0; ok && d < e->ndim; d++) ok = cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
        ok = ok && cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += nb;
        ok = ok && cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        SK_ASSERT(off <= ST_MAX_JSON_INT);
    }
    char *json = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!json) return sk_fail(SK_ENOMEM, "%s: out of memory building the header", path);
    size_t jl = strlen(json), padded = (jl + 7) / 8 * 8;
    unsigned char *buf = mem_alloc(8 + padded);
    if (!buf) { cJSON_free(json); return sk_fail_ctx(SK_ENOMEM, "%s: header", path); }
    write_u64_le(buf, padded);
    memcpy(buf + 8, json, jl);
    memset(buf + 8 + jl, ' ', padded - jl);
    cJSON_free(json);
    *out = buf;
    *out_len = 8 + padded;
    *data_bytes = off;
    return SK_OK;
}

sk_status st_writer_open(const char *path, const st_entry *entries, int n, const st_meta *meta, int n_meta,
                         st_writer **out) {
    unsigned char *hdr = NULL;
    size_t hl = 0;
    uint64_t data_bytes = 0;
    SK_TRY(st_build_header(path, entries, n, meta, n_meta, &hdr, &hl, &data_bytes));
    sk_status st = SK_OK;
    st_writer *w = mem_calloc(sizeof *w);
    if (!w) { st = SK_ENOMEM; goto err; }
    size_t pl = strlen(path);
    w->path = mem_strdup(path);
    w->tmp = mem_alloc(pl + 5);
    if (!w->path || !w->tmp) { st = SK_ENOMEM; goto err; }
    memcpy(w->tmp, path, pl);
    memcpy(w->tmp + pl, ".tmp", 5);
    w->fp = fopen(w->tmp, "wb");
    if (!w->fp) { st = sk_fail(SK_EIO, "cannot create %s: %s", w->tmp, strerror(errno)); goto err; }
    if (fwrite(hdr, 1, hl, w->fp) != hl) { st = sk_fail(SK_EIO, "cannot write %s: %s", w->tmp, strerror(errno)); goto err; }
    w->remaining = data_bytes;
    mem_free(hdr);
    *out = w;
    return SK_OK;
err:
    mem_free(hdr);
    if (w) st_writer_abort(w);
    return st;
}

sk_status st_writer_put(st_writer *w, const void *data, size_t bytes) {
    SK_ASSERT(bytes <= w->remaining);   /* more data than the header announced is a bug */
    if (bytes && fwrite(data, 1, bytes, w->fp) != bytes)
        return sk_fail(SK_EIO, "cannot write %s: %s", w->tmp, strerror(errno));
    w->remaining -= bytes;
    return SK_OK;
}

/* fsync the folder holding path, so the rename itself is durable. Best effort. */
static void fsync_parent(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) { (void)fsync(fd); close(fd); }
}

sk_status st_writer_finish(st_writer *w) {
    SK_ASSERT(w->remaining == 0);       /* fewer bytes than announced is a bug */
    sk_status st = SK_OK;
    int bad = fflush(w->fp) != 0 || fsync(fileno(w->fp)) != 0;
    bad |= fclose(w->fp) != 0;
    w->fp = NULL;
    if (bad) st = sk_fail(SK_EIO, "cannot write %s: %s", w->tmp, strerror(errno));
    else if (rename(w->tmp, w->path) != 0)
        st = sk_fail(SK_EIO, "cannot rename %s to %s: %s", w->tmp, w->path, strerror(errno));
    else fsync_parent(w->path);
    if (st != SK_OK) { st_writer_abort(w); return st; }
    mem_free(w->path);
    mem_free(w->tmp);
    mem_free(w);
    return SK_OK;
}

void st_writer_abort(st_writer *w) {
    if (w->fp) fclose(w->fp);
    if (w->tmp) unlink(w->tmp);
    mem_free(w->path);
    mem_free(w->tmp);
    mem_free(w);
}

sk_status st_write(const char *path, const st_entry *entries, int n, const st_meta *meta, int n_meta) {
    st_writer *w;
    SK_TRY(st_writer_open(path, entries, n, meta, n_meta, &w));
    for (int i = 0; i < n; i++) {
        sk_status st = st_writer_put(w, entries[i].data, st_entry_bytes(&entries[i]));
        if (st != SK_OK) { st_writer_abort(w); return st; }
    }
    return st_writer_finish(w);
}

sk_status st_index_save(const char *path, const char *const *names, const char *const *files, int n,
                        uint64_t total_size, uint64_t total_params) {
    cJSON *j = cJSON_CreateObject(), *meta = NULL, *wm = NULL;
    if (j) meta = cJSON_AddObjectToObject(j, "metadata");
    if (meta) {
        cJSON_AddNumberToObject(meta, "total_parameters", (double)total_params);
        cJSON_AddNumberToObject(meta, "total_size", (double)total_size);
        wm = cJSON_AddObjectToObject(j, "weight_map");
    }
    bool ok = wm != NULL;
    for (int i = 0; ok && i < n; i++) ok = cJSON_AddStringToObject(wm, names[i], files[i]) != NULL;
    sk_status st = ok ? json_save_file(path, j) : sk_fail(SK_ENOMEM, "%s: out of memory", path);
    cJSON_Delete(j);
    return st;
}
