/* offload: the host side of ZeRO-Offload (see offload.h).
 *
 * Invariants: chunk k covers shard positions [k*chunk, min((k+1)*chunk, S)) and uses staging
 * slot k & 1; its spans are cut_spans[first[k] .. first[k+1]), positions relative to the
 * chunk. A slot's gradient staging is free once the CPU has updated its chunk (the update is
 * synchronous); its parameter staging is free once up_done[slot], recorded after the chunk's
 * uploads, has passed. Every pinned buffer is allocated once in offload_init. */
#include "train/offload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/opt.h"

struct offload {
    backend *be;           /* the device backend (the copies, the pinned memory) */
    backend *host;         /* the CPU backend: the AdamW kernel over host memory */
    size_t S, chunk;
    int n_chunks;
    float *master, *m, *v; /* (S) pinned */
    float *gstage[2];      /* (chunk) pinned: gradients of a chunk */
    uint16_t *pstage[2];   /* (chunk) pinned: bf16 new parameters of a chunk */
    backend_adamw_span *spans;   /* pieces per chunk, positions relative to the chunk */
    size_t *first;         /* (n_chunks + 1) */
    offload_copy *downs, *ups;
    size_t n_down, n_up;
    backend_stream *down, *up;
    backend_event *ready, *down_done[2], *up_done[2];
};

size_t offload_chunk(size_t S) {
    size_t c = (S / 16 + BACKEND_ADAMW_SPAN - 1) / BACKEND_ADAMW_SPAN * BACKEND_ADAMW_SPAN;
    if (c < BACKEND_ADAMW_SPAN) c = BACKEND_ADAMW_SPAN;
    return c > OFFLOAD_CHUNK ? OFFLOAD_CHUNK : c;
}

size_t offload_pinned_bytes(size_t S) {
    const size_t c = offload_chunk(S) < S ? offload_chunk(S) : (S ? S : 1);
    return 3 * S * sizeof(float) + 2 * c * (sizeof(float) + sizeof(uint16_t));
}

/* A byte count from the first line of path; 0 when absent, unreadable or "max". */
static size_t read_limit(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[64] = "";
    size_t v = 0;
    if (fgets(line, sizeof line, f) && strncmp(line, "max", 3) != 0) v = strtoull(line, NULL, 10);
    fclose(f);
    return v >= ((size_t)1 << 60) ? 0 : v;   /* v1 writes "no limit" as a huge number */
}

size_t offload_host_budget(const char **what) {
    const char *test = getenv("SKEIN_TEST_HOST_LIMIT");
    size_t v;
    if (test && *test) {
        *what = "SKEIN_TEST_HOST_LIMIT";
        return strtoull(test, NULL, 10);
    }
    if ((v = read_limit("/sys/fs/cgroup/memory.max"))) {
        *what = "the cgroup limit (/sys/fs/cgroup/memory.max)";
        return v;
    }
    if ((v = read_limit("/sys/fs/cgroup/memory/memory.limit_in_bytes"))) {
        *what = "the cgroup limit (memory.limit_in_bytes)";
        return v;
    }
    *what = "MemAvailable";
    return mem_available();
}

/* Cuts the spans (shard positions) at chunk boundaries and into backend pieces, positions
 * relative to their chunk. */
static sk_status offload_cut(offload *o, const backend_adamw_span *spans, size_t n) {
    size_t cap = n + 1, k = 0;   /* a chunk holds at most one piece of each span */
    backend_adamw_span *per = mem_calloc(cap * sizeof *per);
    size_t *first = mem_calloc(sizeof(size_t) * ((size_t)o->n_chunks + 1));
    if (!per || !first) {
        mem_free(per);
        mem_free(first);
        return sk_fail(SK_ENOMEM, "out of memory for the offloaded AdamW spans");
    }
    /* the pieces of chunk c, in the order of the spans (sorted by position) */
    size_t total = 0;
    backend_adamw_span *all = NULL;
    sk_status st = SK_OK;
    for (int c = 0; c < o->n_chunks && st == SK_OK; c++) {
        const int64_t c0 = (int64_t)((size_t)c * o->chunk), c1 = c0 + (int64_t)o->chunk;
        k = 0;
        for (size_t i = 0; i < n; i++) {
            int64_t lo = spans[i].param > c0 ? spans[i].param : c0;
            int64_t hi = spans[i].param + spans[i].count < c1 ? spans[i].param + spans[i].count : c1;
            if (lo < hi) per[k++] = (backend_adamw_span){lo - c0, lo - c0, lo - c0, hi - lo, spans[i].decay};
        }
        backend_adamw_span *cut;
        size_t pieces;
        if ((st = adamw_cut_spans(per, k, &cut, &pieces))) break;
        backend_adamw_span *grown = mem_realloc(all, (total + pieces + 1) * sizeof *all);
        if (!grown) {
            mem_free(cut);
            st = sk_fail(SK_ENOMEM, "out of memory for the offloaded AdamW spans");
            break;
        }
        all = grown;
        memcpy(all + total, cut, pieces * sizeof *cut);
        mem_free(cut);
        first[c] = total;
        total += pieces;
    }
    first[o->n_chunks] = total;
    mem_free(per);
    if (st) {
        mem_free(all);
        mem_free(first);
        return st;
    }
    o->spans = all;
    o->first = first;
    return SK_OK;
}

/* A copy of n offload_copy entries (NULL for none); false when out of memory. */
static bool copy_list(offload_copy **dst, const offload_copy *src, size_t n) {
    mem_free(*dst);
    *dst = NULL;
    if (!n) return true;
    if (!(*dst = mem_alloc(n * sizeof *src))) return false;
    memcpy(*dst, src, n * sizeof *src);
    return true;
}

sk_status offload_init(backend *be, size_t S, const backend_adamw_span *spans, size_t n_spans, offload **out) {
    *out = NULL;
    offload *o = mem_calloc(sizeof *o);
    if (!o) return SK_ENOMEM;
    o->be = be;
    o->S = S;
    o->chunk = offload_chunk(S);
    o->n_chunks = (int)((S + o->chunk - 1) / o->chunk);
    sk_status st;
    if (!(o->host = backend_cpu_create())) {
        st = sk_fail_ctx(SK_ENOMEM, "offload: creating the CPU backend");
        goto err;
    }
    const size_t cs = o->chunk < S ? o->chunk : (S ? S : 1);
    if (!(o->master = backend_alloc_pinned(be, S * sizeof(float))) || !(o->m = backend_alloc_pinned(be, S * sizeof(float))) ||
        !(o->v = backend_alloc_pinned(be, S * sizeof(float))))
        goto oom;
    for (int k = 0; k < 2; k++)
        if (!(o->gstage[k] = backend_alloc_pinned(be, cs * sizeof(float))) ||
            !(o->pstage[k] = backend_alloc_pinned(be, cs * sizeof(uint16_t))))
            goto oom;
    if ((st = offload_cut(o, spans, n_spans))) goto err;
    if (!(o->down = be->ops->stream_create(be)) || !(o->up = be->ops->stream_create(be)) ||
        !(o->ready = be->ops->event_create(be)))
        goto oom;
    for (int k = 0; k < 2; k++)
        if (!(o->down_done[k] = be->ops->event_create(be)) || !(o->up_done[k] = be->ops->event_create(be))) goto oom;
    *out = o;
    return SK_OK;
oom:
    st = sk_fail(SK_ENOMEM, "offload: out of pinned host memory for a shard of %zu parameters (%.1f MiB)", S,
                 (double)offload_pinned_bytes(S) / 1048576.0);
err:
    offload_free(o);
    return st;
}

void offload_free(offload *o) {
    if (!o) return;
    backend *be = o->be;
    if (o->up) be->ops->stream_synchronize(be, o->up);
    if (o->down) be->ops->stream_synchronize(be, o->down);
    backend_pinned_free(be, o->master);
    backend_pinned_free(be, o->m);
    backend_pinned_free(be, o->v);
    for (int k = 0; k < 2; k++) {
        backend_pinned_free(be, o->gstage[k]);
        backend_pinned_free(be, o->pstage[k]);
        if (o->down_done[k]) be->ops->event_free(be, o->down_done[k]);
        if (o->up_done[k]) be->ops->event_free(be, o->up_done[k]);
    }
    if (o->ready) be->ops->event_free(be, o->ready);
    if (o->down) be->ops->stream_free(be, o->down);
    if (o->up) be->ops->stream_free(be, o->up);
    mem_free(o->spans);
    mem_free(o->first);
    mem_free(o->downs);
    mem_free(o->ups);
    if (o->host) backend_free(o->host);
    mem_free(o);
}

sk_status offload_set_copies(offload *o, const offload_copy *downs, size_t n_down, const offload_copy *ups,
                             size_t n_up) {
    o->n_down = o->n_up = 0;
    if (!copy_list(&o->downs, downs, n_down) || !copy_list(&o->ups, ups, n_up))
        return sk_fail(SK_ENOMEM, "out of memory for the offload's copy lists");
    o->n_down = n_down;
    o->n_up = n_up;
    return SK_OK;
}

float *offload_master(offload *o) { return o->master; }
float *offload_m(offload *o) { return o->m; }
float *offload_v(offload *o) { return o->v; }
backend *offload_host(offload *o) { return o->host; }

/* The part of list entry e inside [c0, c1): *lo, *n; false when none. */
static bool overlap(const offload_copy *e, size_t c0, size_t c1, size_t *lo, size_t *n) {
    size_t a = e->pos > c0 ? e->pos : c0, b = e->pos + e->count < c1 ? e->pos + e->count : c1;
    *lo = a;
    *n = b > a ? b - a : 0;
    return b > a;
}

/* Issues the downloads of chunk k's gradients into its slot on the down stream. */
static size_t offload_issue_down(offload *o, int k) {
    const size_t c0 = (size_t)k * o->chunk, c1 = c0 + o->chunk < o->S ? c0 + o->chunk : o->S;
    size_t lo, n, bytes = 0;
    for (size_t i = 0; i < o->n_down; i++)
        if (overlap(&o->downs[i], c0, c1, &lo, &n)) {
            o->be->ops->copy(o->be, o->gstage[k & 1] + (lo - c0), (float *)o->downs[i].dev + (lo - o->downs[i].pos),
                             n * sizeof(float), COPY_DEVICE_TO_HOST, o->down);
            bytes += n * sizeof(float);
        }
    o->be->ops->event_record(o->be, o->down_done[k & 1], o->down);
    return bytes;
}

/* Issues chunk k's uploads on the up stream: bf16 from its slot, f32 from the master. */
static size_t offload_issue_up(offload *o, int k) {
    const size_t c0 = (size_t)k * o->chunk, c1 = c0 + o->chunk < o->S ? c0 + o->chunk : o->S;
    size_t lo, n, bytes = 0;
    for (size_t i = 0; i < o->n_up; i++) {
        const offload_copy *e = &o->ups[i];
        if (!overlap(e, c0, c1, &lo, &n)) continue;
        const size_t es = dtype_size(e->dt);
        const void *src = e->dt == DT_BF16 ? (const void *)(o->pstage[k & 1] + (lo - c0)) : (const void *)(o->master + lo);
        o->be->ops->copy(o->be, (char *)e->dev + (lo - e->pos) * es, src, n * es, COPY_HOST_TO_DEVICE, o->up);
        bytes += n * es;
    }
    o->be->ops->event_record(o->be, o->up_done[k & 1], o->up);
    return bytes;
}

void offload_step(offload *o, const backend_adamw_hp *hp, const double *norm_sq, offload_times *times) {
    backend *be = o->be;
    offload_times t = {0};
    double t0;
    if (o->n_chunks == 0) goto out;
    /* the gradients are complete once the compute issued so far is */
    be->ops->event_record(be, o->ready, NULL);
    be->ops->stream_wait_event(be, o->down, o->ready);
    t.down_bytes += (double)offload_issue_down(o, 0);
    for (int k = 0; k < o->n_chunks; k++) {
        const int slot = k & 1;
        const size_t c0 = (size_t)k * o->chunk, len = (c0 + o->chunk < o->S ? c0 + o->chunk : o->S) - c0;
        /* the other slot's gradients were consumed by chunk k-1's update: refill it */
        if (k + 1 < o->n_chunks) t.down_bytes += (double)offload_issue_down(o, k + 1);
        t0 = time_now();
        be->ops->event_synchronize(be, o->down_done[slot]);
        t.down_wait_ms += 1e3 * (time_now() - t0);
        t0 = time_now();
        if (k >= 2) be->ops->event_synchronize(be, o->up_done[slot]);   /* chunk k-2's uploads */
        t.up_wait_ms += 1e3 * (time_now() - t0);
        t0 = time_now();
        const int64_t n = (int64_t)len;
        o->host->ops->adamw(o->host, NULL, tensor_1d(o->master + c0, DT_F32, n), tensor_1d(o->pstage[slot], DT_BF16, n),
                            tensor_1d(o->gstage[slot], DT_F32, n), tensor_1d(o->m + c0, DT_F32, n),
                            tensor_1d(o->v + c0, DT_F32, n), o->spans + o->first[k],
                            (int)(o->first[k + 1] - o->first[k]), norm_sq, hp);
        t.adamw_ms += 1e3 * (time_now() - t0);
        t.up_bytes += (double)offload_issue_up(o, k);
    }
    t0 = time_now();
    be->ops->stream_synchronize(be, o->up);
    t.tail_ms = 1e3 * (time_now() - t0);
out:
    if (times) *times = t;
}
