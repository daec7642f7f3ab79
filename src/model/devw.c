/* devw: the shared device copy of an inference model's weights (see devw.h).
 *
 * Layout: spec i lies at offset[i] bytes of one device allocation, in plan order, each
 * DEVW_ALIGN-aligned (cuBLASLt and the vector kernels read 16-byte units); a spec whose bytes
 * are a multiple of DEVW_ALIGN is followed directly by the next, so a Llama layer's q/k/v and
 * gate/up matrices form one matrix each (llama.c's merged products). The upload walks
 * the specs in that order, cutting each into chunks of at most DEVW_CHUNK_ELEMS elements (a
 * staging buffer holds one in f32, the widest destination dtype). The allocation is
 * backend_alloc's, or ipc_map's when the process shares its copy with others (devw.h). */
#include "model/devw.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#define DEVW_ALIGN 256
#define DEVW_STAGES 3
#define DEVW_STAGE_BYTES (DEVW_CHUNK_ELEMS * sizeof(float))
/* Elements one thread converts at a time (through a stack buffer when the dtypes differ). */
#define DEVW_PIECE ((size_t)1 << 15)
#define DEVW_BOUNCE 2048

struct devw {
    atomic_int refs;
    wts *w;                    /* shared: the key's weights (one reference), else NULL */
    bool shared;               /* in the list (devw_get), else devw_make's own */
    backend *be;               /* its own, on the key's device (devw.h: Lifetime) */
    int n_specs;
    size_t bytes;
    unsigned char *mem;        /* device */
    bool ipc;                  /* mem is ipc_map's (exported or imported), else backend_alloc's */
    int fd;                    /* the exported memory's descriptor, or -1 */
    tensor *views;             /* (n_specs) */
    devw *next;                /* in the shared list */
};

static pthread_mutex_t devw_lock = PTHREAD_MUTEX_INITIALIZER;
static devw *devw_list;
static bool devw_ipc_next;      /* devw_ipc_use's, for the next new copy of devw_get (devw_lock) */
static devw_ipc devw_ipc_want;

/* The device dtype of a spec: bf16 matrices, f32 vectors. */
static dtype devw_dtype(const model_param *p) { return p->ndim >= 2 ? DT_BF16 : DT_F32; }

void devw_convert(void *dst, dtype dt, const void *src, dtype st, size_t n) {
    const size_t ds = dtype_size(dt), ss = dtype_size(st);
    const long pieces = (long)((n + DEVW_PIECE - 1) / DEVW_PIECE);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (long k = 0; k < pieces; k++) {
        const size_t lo = (size_t)k * DEVW_PIECE, m = n - lo < DEVW_PIECE ? n - lo : DEVW_PIECE;
        unsigned char *d = (unsigned char *)dst + lo * ds;
        const unsigned char *s = (const unsigned char *)src + lo * ss;
        if (dt == st) {
            memcpy(d, s, m * ds);
        } else if (st == DT_F32) {
            dtype_from_f32(d, dt, (const float *)s, m);
        } else {
            float buf[DEVW_BOUNCE];
            for (size_t j = 0; j < m; j += DEVW_BOUNCE) {
                const size_t c = m - j < DEVW_BOUNCE ? m - j : DEVW_BOUNCE;
                dtype_to_f32(buf, s + j * ss, st, c);
                dtype_from_f32(d + j * ds, dt, buf, c);
            }
        }
    }
}

/* devw_source over views(n_specs) of a wts: the file's elements converted. */
static void devw_from_views(void *ctx, int i, size_t start, size_t n, dtype dt, void *dst) {
    const tensor *v = (const tensor *)ctx + i;
    devw_convert(dst, dt, (const unsigned char *)v->data + start * dtype_size(v->dt), v->dt, n);
}

/* Fills d->mem from src through pinned staging (see the top of devw.h). */
static sk_status devw_upload(devw *d, const model *m, devw_source src, void *ctx) {
    backend *be = d->be;
    const backend_ops *op = be->ops;
    void *stage[DEVW_STAGES] = {0};
    backend_event *done[DEVW_STAGES] = {0};
    bool used[DEVW_STAGES] = {false};
    backend_stream *s = op->stream_create(be);
    sk_status st = s ? SK_OK : SK_ENOMEM;
    for (int k = 0; k < DEVW_STAGES && st == SK_OK; k++)
        if (!(stage[k] = backend_alloc_pinned(be, DEVW_STAGE_BYTES)) || !(done[k] = op->event_create(be)))
            st = SK_ENOMEM;
    const double t0 = time_now();
    int next = 0;
    for (int i = 0; i < m->n_specs && st == SK_OK; i++) {
        const model_param *p = &m->specs[i];
        const dtype dt = d->views[i].dt;
        for (size_t off = 0; off < p->numel; off += DEVW_CHUNK_ELEMS) {
            const size_t n = p->numel - off < DEVW_CHUNK_ELEMS ? p->numel - off : DEVW_CHUNK_ELEMS;
            if (used[next]) op->event_synchronize(be, done[next]);   /* its last copy is done */
            src(ctx, i, off, n, dt, stage[next]);
            op->copy(be, (unsigned char *)d->views[i].data + off * dtype_size(dt), stage[next], n * dtype_size(dt),
                     COPY_HOST_TO_DEVICE, s);
            op->event_record(be, done[next], s);
            used[next] = true;
            next = (next + 1) % DEVW_STAGES;
        }
    }
    if (s) op->stream_synchronize(be, s);
    if (st == SK_OK) {
        const double dt = time_now() - t0;
        log_info("weights: %.2f GB in bf16 on %s device %d in %.2f s (%.1f GB/s)", (double)d->bytes / 1e9, be->name,
                 be->device, dt, dt > 0 ? (double)d->bytes / 1e9 / dt : 0.0);
    }
    for (int k = 0; k < DEVW_STAGES; k++) {
        if (done[k]) op->event_free(be, done[k]);
        if (stage[k]) backend_pinned_free(be, stage[k]);
    }
    if (s) op->stream_free(be, s);
    return st == SK_OK ? SK_OK : sk_fail(st, "uploading the weights: out of pinned memory or streams");
}

static void devw_destroy(devw *d) {
    if (d->mem && d->ipc) d->be->ops->ipc_unmap(d->be, d->mem, d->bytes);
    else if (d->mem) backend_mem_free(d->be, d->mem);
    if (d->fd >= 0) close(d->fd);
    backend_free(d->be);
    mem_free(d->views);
    wts_free(d->w);
    mem_free(d);
}

/* d->mem of d->bytes: backend_alloc's, or as ipc says (NULL: not shared with other processes;
 * devw_ipc_use); *imported tells whether it holds another process's copy already. */
static sk_status devw_alloc(devw *d, const devw_ipc *ipc, bool *imported) {
    backend *be = d->be;
    *imported = ipc && ipc->fd >= 0;
    if (*imported && ipc->bytes != d->bytes)
        return sk_fail(SK_ECONFIG, "weights: the device copy another process made on %s device %d holds %zu bytes, this "
                       "process's plan %zu: not the same weights, not mapped", be->name, be->device, ipc->bytes, d->bytes);
    if (ipc) {
        int fd = *imported ? ipc->fd : -1;
        if (!be->ops->ipc_map) {
            sk_fail(SK_EARG, "the %s backend cannot share device memory between processes", be->name);
        } else if ((d->mem = be->ops->ipc_map(be, d->bytes, &fd))) {
            d->ipc = true;
            d->fd = *imported ? -1 : fd;
            return SK_OK;
        }
        if (*imported) return sk_fail_ctx(SK_EIO, "weights: mapping the device copy another process made");
        log_info("weights: the device copy on %s device %d cannot be shared with other processes (%s); this process "
                 "uploads its own", be->name, be->device, sk_errmsg());
    }
    if (!(d->mem = backend_alloc(be, d->bytes)))
        return sk_fail_ctx(SK_ENOMEM, "a device copy of %.2f GB of weights", (double)d->bytes / 1e9);
    return SK_OK;
}

/* A copy of m's specs on m->be's device filled from src, or mapped from another process's
 * (ipc: devw_alloc). */
static sk_status devw_new(const model *m, devw_source src, void *ctx, const devw_ipc *ipc, devw **out) {
    *out = NULL;
    devw *d = mem_calloc(sizeof *d);
    if (!d || !(d->views = mem_calloc(sizeof(tensor) * (size_t)m->n_specs))) {
        mem_free(d);
        return SK_ENOMEM;
    }
    atomic_init(&d->refs, 1);
    d->n_specs = m->n_specs;
    d->fd = -1;
    if (!(d->be = backend_create_on(m->be->name, m->be->device))) {
        devw_destroy(d);
        return SK_EARG;
    }
    bool imported = false;
    sk_status st = SK_OK;
    for (int pass = 0; pass < 2; pass++) {   /* sizes, then views into the allocation */
        size_t off = 0;
        for (int i = 0; i < m->n_specs; i++) {
            const model_param *p = &m->specs[i];
            if (pass) d->views[i] = tensor_make(d->mem + off, devw_dtype(p), MEM_DEVICE, p->ndim, p->shape);
            off += (p->numel * dtype_size(devw_dtype(p)) + DEVW_ALIGN - 1) / DEVW_ALIGN * DEVW_ALIGN;
        }
        d->bytes = off;
        if (!pass && (st = devw_alloc(d, ipc, &imported)) != SK_OK) {
            devw_destroy(d);
            return st;
        }
    }
    if (imported)
        log_info("weights: sharing the %.2f GB device copy on %s device %d with replica processes (imported)",
                 (double)d->bytes / 1e9, d->be->name, d->be->device);
    else st = devw_upload(d, m, src, ctx);
    if (st != SK_OK) {
        devw_destroy(d);
        return st;
    }
    *out = d;
    return SK_OK;
}

sk_status devw_make(const model *m, devw_source src, void *ctx, devw **out) {
    return devw_new(m, src, ctx, NULL, out);
}

sk_status devw_get(wts *w, const model *m, const tensor *views, devw **out) {
    *out = NULL;
    pthread_mutex_lock(&devw_lock);
    for (devw *d = devw_list; d; d = d->next)
        if (d->w == w && !strcmp(d->be->name, m->be->name) && d->be->device == m->be->device &&
            d->n_specs == m->n_specs) {
            const int refs = atomic_fetch_add(&d->refs, 1) + 1;
            log_info("weights: sharing the %.2f GB device copy on %s device %d (%d models)", (double)d->bytes / 1e9,
                     d->be->name, d->be->device, refs);
            *out = d;
            break;
        }
    sk_status st = SK_OK;
    const devw_ipc ipc = devw_ipc_want;
    const bool use_ipc = !*out && devw_ipc_next;
    if (use_ipc) devw_ipc_next = false;   /* for one new copy */
    if (!*out && (st = devw_new(m, devw_from_views, (void *)views, use_ipc ? &ipc : NULL, out)) == SK_OK) {
        (*out)->w = wts_ref(w);
        (*out)->shared = true;
        (*out)->next = devw_list;
        devw_list = *out;
    }
    pthread_mutex_unlock(&devw_lock);
    return st;
}

tensor devw_view(const devw *d, int i) {
    SK_ASSERT(i >= 0 && i < d->n_specs);
    return d->views[i];
}

size_t devw_bytes(const devw *d) { return d->bytes; }

void devw_free(devw *d) {
    if (!d) return;
    pthread_mutex_lock(&devw_lock);
    const bool last = atomic_fetch_sub(&d->refs, 1) == 1;
    if (last && d->shared)
        for (devw **p = &devw_list; *p; p = &(*p)->next)
            if (*p == d) {
                *p = d->next;
                break;
            }
    pthread_mutex_unlock(&devw_lock);
    if (last) devw_destroy(d);
}

void devw_ipc_use(devw_ipc ipc) {
    pthread_mutex_lock(&devw_lock);
    devw_ipc_want = ipc;
    devw_ipc_next = true;
    pthread_mutex_unlock(&devw_lock);
}

devw_ipc devw_ipc_of(const devw *d) { return (devw_ipc){.fd = d->fd, .bytes = d->bytes}; }
