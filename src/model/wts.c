/* wts: immutable mapped weights (see wts.h for the contract and which tensors are copies).
 *
 * One wts holds the st_set (the mapped, validated files), one entry per tensor sorted by
 * its key (the name without "transformer."), and one block for all converted copies,
 * planned before it is allocated. Nothing changes after wts_open but the reference count. */
#include "model/wts.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"

#define GPT2_PREFIX "transformer."
/* Copies start on cache-line boundaries inside the copy block. */
#define COPY_ALIGN 64
/* Elements converted per step from misaligned data through an aligned stack buffer. */
#define BOUNCE_ELEMS 2048

typedef struct wts_entry {
    const char *key;           /* name without "transformer." (into the st_file's strings) */
    const st_tensor *src;      /* the file's tensor: name as spelled, dtype, data */
    const char *file;          /* path of the file holding it */
    tensor view;
    bool copy;
} wts_entry;

struct wts {
    atomic_int refs;
    st_set set;
    wts_entry *entries;        /* (n) sorted by key */
    int n;
    unsigned char *copies;     /* every converted copy, COPY_ALIGN apart */
    size_t copied, mapped;
};

static const char *strip_prefix(const char *name) {
    size_t k = strlen(GPT2_PREFIX);
    return strncmp(name, GPT2_PREFIX, k) ? name : name + k;
}

static bool is_float(dtype dt) { return dt == DT_F32 || dt == DT_BF16 || dt == DT_F16; }

/* Decides t's view: mapped (returns false) or a copy in *copy_dt (returns true). */
static bool needs_copy(const st_tensor *t, unsigned keep, dtype *copy_dt) {
    bool aligned = (uintptr_t)t->data % dtype_size(t->dtype) == 0;
    if (!is_float(t->dtype)) {
        *copy_dt = t->dtype;
        return !aligned;
    }
    *copy_dt = DT_F32;
    if (t->ndim >= 2) return !aligned || !(keep & WTS_DT(t->dtype));
    return !aligned || t->dtype != DT_F32;
}

/* Writes t's elements as copy_dt (t's own dtype, or f32 from a float dtype) at dst. */
static void copy_tensor(void *dst, dtype copy_dt, const st_tensor *t) {
    if (copy_dt == t->dtype) {
        memcpy(dst, t->data, t->nbytes);
        return;
    }
    size_t es = dtype_size(t->dtype);
    if ((uintptr_t)t->data % es == 0) {
        dtype_to_f32(dst, t->data, t->dtype, t->numel);
        return;
    }
    _Alignas(COPY_ALIGN) unsigned char bounce[BOUNCE_ELEMS * 4];
    for (size_t off = 0; off < t->numel; off += BOUNCE_ELEMS) {
        size_t n = t->numel - off < BOUNCE_ELEMS ? t->numel - off : BOUNCE_ELEMS;
        memcpy(bounce, (const unsigned char *)t->data + off * es, n * es);
        dtype_to_f32((float *)dst + off, bounce, t->dtype, n);
    }
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const wts_entry *)a)->key, ((const wts_entry *)b)->key);
}

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

sk_status wts_open(const char *dir, unsigned keep, wts **out) {
    *out = NULL;
    wts *w = mem_calloc(sizeof *w);
    if (!w) return SK_ENOMEM;
    atomic_init(&w->refs, 1);
    sk_status st = st_set_open_dir(dir, &w->set);
    if (st != SK_OK) goto err;
    int n = st_set_count(&w->set);
    w->entries = mem_calloc(sizeof(wts_entry) * (size_t)(n ? n : 1));
    if (!w->entries) { st = SK_ENOMEM; goto err; }

    /* Plan: one entry per tensor, the copy block's size. */
    size_t copy_bytes = 0;
    for (int j = 0; j < w->set.n_files; j++) {
        const st_file *f = &w->set.files[j];
        w->mapped += f->map.size;
        for (int i = 0; i < f->n_tensors; i++) {
            const st_tensor *t = &f->tensors[i];
            if (t->ndim > TENSOR_MAX_DIMS) {
                st = sk_fail(SK_EFORMAT, "%s: tensor '%s': %d dimensions (at most %d)", f->path, t->name, t->ndim,
                             TENSOR_MAX_DIMS);
                goto err;
            }
            wts_entry *e = &w->entries[w->n++];
            e->key = strip_prefix(t->name);
            e->src = t;
            e->file = f->path;
            dtype copy_dt;
            if ((e->copy = needs_copy(t, keep, &copy_dt))) copy_bytes += round_up(t->numel * dtype_size(copy_dt), COPY_ALIGN);
        }
    }
    qsort(w->entries, (size_t)w->n, sizeof *w->entries, cmp_entry);
    for (int i = 1; i < w->n; i++)
        if (!strcmp(w->entries[i - 1].key, w->entries[i].key)) {
            st = sk_fail(SK_EFORMAT, "%s: tensor '%s' present both with and without the prefix '" GPT2_PREFIX "'",
                         w->set.weights_path, w->entries[i].key);
            goto err;
        }

    /* Allocate once, then hand out views. */
    if (copy_bytes && !(w->copies = mem_alloc(copy_bytes))) {
        st = sk_fail_ctx(SK_ENOMEM, "%s: converted copies of %zu bytes", w->set.weights_path, copy_bytes);
        goto err;
    }
    unsigned char *next = w->copies;
    for (int i = 0; i < w->n; i++) {
        wts_entry *e = &w->entries[i];
        const st_tensor *t = e->src;
        int64_t one = 1;
        int ndim = t->ndim ? t->ndim : 1;
        const int64_t *shape = t->ndim ? t->shape : &one;
        dtype copy_dt;
        if (e->copy) {
            needs_copy(t, keep, &copy_dt);
            copy_tensor(next, copy_dt, t);
            e->view = tensor_make(next, copy_dt, MEM_HOST, ndim, shape);
            next += round_up(t->numel * dtype_size(copy_dt), COPY_ALIGN);
        } else {
            e->view = tensor_make((void *)t->data, t->dtype, MEM_MAPPED, ndim, shape);
        }
    }
    w->copied = copy_bytes;
    *out = w;
    return SK_OK;
err:
    st_set_close(&w->set);
    mem_free(w->entries);
    mem_free(w);
    return st;
}

wts *wts_ref(wts *w) {
    atomic_fetch_add(&w->refs, 1);
    return w;
}

void wts_free(wts *w) {
    if (!w || atomic_fetch_sub(&w->refs, 1) != 1) return;
    mem_free(w->copies);
    mem_free(w->entries);
    st_set_close(&w->set);
    mem_free(w);
}

/* The entry for name (either spelling), or NULL. */
static const wts_entry *find(const wts *w, const char *name) {
    wts_entry key = {.key = strip_prefix(name)};
    return bsearch(&key, w->entries, (size_t)w->n, sizeof *w->entries, cmp_entry);
}

int wts_find(const wts *w, const char *name) {
    const wts_entry *e = find(w, name);
    return e ? (int)(e - w->entries) : -1;
}

tensor wts_get(const wts *w, const char *name) {
    const wts_entry *e = find(w, name);
    return e ? e->view : tensor_none();
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

sk_status wts_expect(const wts *w, const char *name, int ndim, const int64_t *shape, tensor *out) {
    const wts_entry *e = find(w, name);
    if (!e) return sk_fail(SK_EFORMAT, "%s: missing tensor '%s'", w->set.weights_path, name);
    const st_tensor *t = e->src;
    bool ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    if (!ok) {
        char want[128], got[160];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        return sk_fail(SK_EFORMAT, "%s: tensor '%s': expected shape %s, found %s", e->file, t->name, want, got);
    }
    *out = e->view;
    return SK_OK;
}

int wts_count(const wts *w) { return w->n; }

static const wts_entry *at(const wts *w, int i) {
    SK_ASSERT(i >= 0 && i < w->n);
    return &w->entries[i];
}

const char *wts_name(const wts *w, int i) { return at(w, i)->src->name; }
tensor wts_at(const wts *w, int i) { return at(w, i)->view; }
const char *wts_file(const wts *w, int i) { return at(w, i)->file; }
bool wts_is_copy(const wts *w, int i) { return at(w, i)->copy; }
const char *wts_path(const wts *w) { return w->set.weights_path; }
int wts_files(const wts *w) { return w->set.n_files; }
file_map wts_mapping(const wts *w, int j) {
    SK_ASSERT(j >= 0 && j < w->set.n_files);
    return w->set.files[j].map;
}
size_t wts_mapped_bytes(const wts *w) { return w->mapped; }
size_t wts_copied_bytes(const wts *w) { return w->copied; }
