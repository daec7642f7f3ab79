/* comm_stage: device buffers through pinned host memory (comm_stage.h).
 *
 * Invariants: every copy runs on st->ss, in issue order: piece k+1's down is issued after
 * piece k-1's up, which used the same buffer, so the stream orders the reuse; the host waits
 * for a piece's down (its event) before the wire touches the buffer, and for the last up
 * before the request completes. `active` is set while a request is staged on the thread;
 * its piece size and count are fixed when it starts. */
#include "comm/comm_stage.h"

#include <stdlib.h>
#include <string.h>

#include "comm/comm_worker.h"

enum { STAGE_BYTES_DEFAULT = 32 << 20 };

struct comm_stage {
    backend *be;
    int world;
    backend_stream *ss;                      /* the copies */
    backend_event *ready[COMM_MAX_REQS];     /* per slot: the caller's stream at start */
    backend_event *down[2], *up[2];          /* per buffer: its last copy in, out */
    char *pin[2];                            /* pinned, cap bytes each */
    size_t cap;
    bool bound;                              /* the thread issues to be's device */
    /* thread: the request being staged */
    bool active, inner_running;
    size_t L, pieces, piece;                 /* elements per piece, how many, the one on the wire */
    comm_req inner;                          /* the piece on the wire, over pin[piece & 1] */
    comm_slot inner_slot;
};

/* The environment's integer `name` if positive, else def. */
static size_t env_size(const char *name, size_t def) {
    const char *v = getenv(name);
    long long x = v && *v ? atoll(v) : 0;
    return x > 0 ? (size_t)x : def;
}

sk_status comm_stage_init(comm *c, backend *be, comm_stage **out) {
    *out = NULL;
    const char *force = getenv("SKEIN_COMM_STAGE");
    if (be->host_memory && !(force && !strcmp(force, "1"))) return SK_OK;
    comm_stage *st = calloc(1, sizeof *st);
    if (!st) return sk_fail(SK_ENOMEM, "comm: out of memory");
    st->be = be;
    st->world = c->world;
    /* at least one element of the widest element type per rank and the received part */
    const size_t least = 4 * ((size_t)c->world + 1);
    st->cap = env_size("SKEIN_COMM_STAGE_BYTES", STAGE_BYTES_DEFAULT);
    if (st->cap < least) st->cap = least;
    bool ok = (st->ss = be->ops->stream_create(be)) != NULL;
    for (int k = 0; ok && k < COMM_MAX_REQS; k++) ok = (st->ready[k] = be->ops->event_create(be)) != NULL;
    for (int b = 0; ok && b < 2; b++)
        ok = (st->down[b] = be->ops->event_create(be)) && (st->up[b] = be->ops->event_create(be)) &&
             (st->pin[b] = be->ops->alloc(be, st->cap, MEM_PINNED));
    if (!ok) {
        sk_fail_ctx(SK_ENOMEM, "%s: staging device buffers through %zu bytes of pinned host memory", c->name,
                    2 * st->cap);
        comm_stage_free(st);
        return SK_ENOMEM;
    }
    *out = st;
    return SK_OK;
}

void comm_stage_free(comm_stage *st) {
    if (!st) return;
    backend *be = st->be;
    if (st->ss) be->ops->stream_synchronize(be, st->ss);
    for (int b = 0; b < 2; b++) {
        if (st->pin[b]) be->ops->free(be, st->pin[b], MEM_PINNED);
        if (st->down[b]) be->ops->event_free(be, st->down[b]);
        if (st->up[b]) be->ops->event_free(be, st->up[b]);
    }
    for (int k = 0; k < COMM_MAX_REQS; k++)
        if (st->ready[k]) be->ops->event_free(be, st->ready[k]);
    if (st->ss) be->ops->stream_free(be, st->ss);
    free(st);
}

bool comm_stage_begin(comm_stage *st, const comm_req *r) {
    if (!st || (r->elem != COMM_F32 && r->elem != COMM_BF16)) return false;
    if (r->kind != COMM_ALL_REDUCE && r->kind != COMM_REDUCE_SCATTER && r->kind != COMM_ALL_GATHER) return false;
    st->be->ops->event_record(st->be, st->ready[r->slot], r->stream);
    return true;
}

/* Piece k of r: its first element within a rank's part (*off) and its length (*len). */
static void stage_piece(const comm_stage *st, const comm_req *r, size_t k, size_t *off, size_t *len) {
    *off = k * st->L;
    *len = r->n - *off < st->L ? r->n - *off : st->L;
}

/* Issues the copies of piece k from r's send (all_reduce: recv) into pin[k & 1]. */
static void stage_down(comm_stage *st, const comm_req *r, size_t k) {
    backend *be = st->be;
    const size_t es = comm_elem_size(r->elem), W = (size_t)st->world;
    char *pin = st->pin[k & 1];
    size_t off, len;
    stage_piece(st, r, k, &off, &len);
    if (r->kind == COMM_ALL_REDUCE) {
        be->ops->copy(be, pin, (const char *)r->recv + off * es, len * es, COPY_DEVICE_TO_HOST, st->ss);
    } else if (r->kind == COMM_REDUCE_SCATTER) {
        for (size_t o = 0; o < W; o++)
            be->ops->copy(be, pin + o * len * es, (const char *)r->send + (o * r->n + off) * es, len * es,
                          COPY_DEVICE_TO_HOST, st->ss);
    } else {
        be->ops->copy(be, pin, (const char *)r->send + off * es, len * es, COPY_DEVICE_TO_HOST, st->ss);
    }
    be->ops->event_record(be, st->down[k & 1], st->ss);
}

/* Issues the copies of piece k's result from pin[k & 1] into r's recv. */
static void stage_up(comm_stage *st, const comm_req *r, size_t k) {
    backend *be = st->be;
    const size_t es = comm_elem_size(r->elem), W = (size_t)st->world;
    const char *pin = st->pin[k & 1];
    size_t off, len;
    stage_piece(st, r, k, &off, &len);
    char *recv = r->recv;
    if (r->kind == COMM_ALL_REDUCE) {
        be->ops->copy(be, recv + off * es, pin, len * es, COPY_HOST_TO_DEVICE, st->ss);
    } else if (r->kind == COMM_REDUCE_SCATTER) {
        be->ops->copy(be, recv + off * es, pin + W * len * es, len * es, COPY_HOST_TO_DEVICE, st->ss);
    } else {
        for (size_t o = 0; o < W; o++)
            be->ops->copy(be, recv + (o * r->n + off) * es, pin + (1 + o) * len * es, len * es, COPY_HOST_TO_DEVICE,
                          st->ss);
    }
    be->ops->event_record(be, st->up[k & 1], st->ss);
}

/* The host request of piece k of r (slot s), over pin[k & 1] in the layout of comm_stage.h. */
static void stage_inner(comm_stage *st, const comm_req *r, const comm_slot *s, size_t k) {
    const size_t es = comm_elem_size(r->elem), W = (size_t)st->world;
    char *pin = st->pin[k & 1];
    size_t off, len;
    stage_piece(st, r, k, &off, &len);
    st->inner = *r;
    st->inner.n = len;
    st->inner.send = pin;
    st->inner.recv = r->kind == COMM_REDUCE_SCATTER ? pin + W * len * es
                   : r->kind == COMM_ALL_GATHER     ? pin + len * es
                                                    : pin;
    st->inner.stream = NULL;
    memset(&st->inner_slot, 0, sizeof st->inner_slot);
    st->inner_slot.seq = s->seq;
}

int comm_stage_progress(comm_stage *st, comm *c, comm_req *r, comm_slot *s,
                        int (*progress)(comm *c, comm_req *r, comm_slot *s)) {
    backend *be = st->be;
    if (!st->active) {
        const size_t es = comm_elem_size(r->elem), W = (size_t)st->world;
        st->L = r->kind == COMM_ALL_REDUCE ? st->cap / es : st->cap / (es * (W + 1));
        st->pieces = (r->n + st->L - 1) / st->L;
        if (st->pieces == 0) return 1;   /* the same on every rank: nothing on the wire */
        if (!st->bound && be->ops->thread_bind) be->ops->thread_bind(be);
        st->bound = true;
        st->active = true;
        st->inner_running = false;
        st->piece = 0;
        be->ops->stream_wait_event(be, st->ss, st->ready[r->slot]);
        stage_down(st, r, 0);
    }
    for (;;) {
        const size_t k = st->piece;
        if (!st->inner_running) {
            be->ops->event_synchronize(be, st->down[k & 1]);   /* piece k is in its buffer */
            if (k + 1 < st->pieces) stage_down(st, r, k + 1);  /* after piece k-1's up: the stream orders them */
            stage_inner(st, r, s, k);
            st->inner_running = true;
        }
        int rc = progress(c, &st->inner, &st->inner_slot);
        if (rc == 0) return 0;
        st->inner_running = false;
        if (rc < 0) {
            st->active = false;
            return -1;
        }
        stage_up(st, r, k);
        st->piece++;
        s->step++;
        if (st->piece == st->pieces) {
            be->ops->event_synchronize(be, st->up[k & 1]);   /* the last up, and so every one before */
            st->active = false;
            return 1;
        }
    }
}
