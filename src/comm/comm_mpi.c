/* comm_mpi: comm.h over MPI, for host buffers (CPU training under mpirun, srun or
 * `skein train --workers N`), and device buffers staged through pinned host memory
 * (comm_stage.h: ranks that share a GPU, where NCCL refuses).
 *
 * The communication thread (comm_worker.h) makes every MPI call, MPI_Init_thread and
 * MPI_Finalize included, so MPI's "main thread" is this thread and MPI_THREAD_FUNNELED is
 * the level it needs (checked; where MPI was initialized by someone else, SERIALIZED is
 * needed and checked). A comm from comm_split has a thread of its own calling MPI too, so
 * after comm_want_split MPI_THREAD_MULTIPLE is asked for at start-up, and a split checks it
 * was granted. It issues each request as nonblocking MPI calls (pieces in order when
 * split) and polls them with MPI_Test until they complete or the communicator's timeout
 * passes. Nothing here blocks without a deadline except MPI_Init_thread and the window's
 * creation at start-up.
 *
 * Finding the missing rank. The thread answers "pings" on a second communicator (`diag`),
 * idle or not, with two numbers: how many collectives its caller has posted, and which one it
 * is working on. When a collective times out, the thread pings every other rank and waits a
 * short grace period: a rank that does not answer is dead or unreachable; one that has not
 * posted this collective yet is alive but busy or hung outside collectives; one working on
 * it is waiting too; one in another collective made mismatched calls. A rank killed by a
 * signal usually never gets that far: mpirun sees it die and ends the whole job.
 *
 * bf16 sums: a user-defined MPI_Op (commutative) over a 2-byte datatype, comm_bf16_sum.
 *
 * Invariants: after a collective fails the communicator is broken: every later call fails at
 * once, and comm_free ends the job with MPI_Abort (an unfinished collective cannot be
 * cancelled, so MPI_Finalize could wait forever). Counts above comm_chunk_limit() are split
 * into several calls. The fetch-and-add counter is an int64 in a window on rank 0, used in
 * one passive-target epoch (MPI_Win_lock_all) from start-up to free; fetch_add is queued with
 * the collectives but counts as none. Everything in mpi_impl past the worker is the thread's. */
#ifdef SKEIN_HAVE_MPI

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_worker.h"

enum { TAG_PING = 1, TAG_PONG = 2 };

typedef struct mpi_impl {
    comm_worker w;         /* first: the thread and the request queue */
    MPI_Request mr[COMM_MAX_REQS];   /* thread: per slot, the MPI call in flight (slot.step) */
    MPI_Comm world;        /* thread: collectives */
    MPI_Comm parent;       /* comm_split: the comm split into this one (MPI_COMM_NULL: the world) */
    int color, key;        /* comm_split's arguments */
    MPI_Comm diag;         /* thread: pings during timeouts, never in the collectives' order */
    MPI_Win win;           /* thread: the fetch-and-add counter, on rank 0 */
    int64_t *counter;      /* thread: rank 0's window memory; NULL elsewhere */
    MPI_Datatype bf16;     /* thread: 2-byte elements */
    MPI_Op bf16_sum;       /* thread: their sum (f32 inside) */
    MPI_Request ping_req;  /* thread: outstanding receive of a ping from any rank */
    int64_t ping_in;
    int64_t *pong_out;     /* thread: (world, 2) replies in flight, one per asking rank */
    MPI_Request *pong_req; /* thread: (world) */
    size_t chunk;          /* largest count per MPI call */
    bool initialized_mpi;  /* the thread called MPI_Init_thread: it finalizes */
} mpi_impl;

/* The library's message for an MPI error code. */
static const char *mpi_errstr(int rc, char *buf) {
    int len = 0;
    if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) snprintf(buf, MPI_MAX_ERROR_STRING, "MPI error %d", rc);
    return buf;
}

/* Setup calls: on failure record the call, file, line and MPI's message, then go to err. */
#define MPI_CHECK(call)                                                                    \
    do {                                                                                   \
        int mpi_rc_ = (call);                                                              \
        if (mpi_rc_ != MPI_SUCCESS) {                                                      \
            char mpi_msg_[MPI_MAX_ERROR_STRING];                                           \
            sk_fail(SK_ECOMM, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__,        \
                    mpi_errstr(mpi_rc_, mpi_msg_));                                        \
            goto err;                                                                      \
        }                                                                                  \
    } while (0)

/* A collective's MPI call failed: records the message naming the call; returns -1. */
static int mpi_call_failed(comm *c, const comm_req *r, const char *call, int rc) {
    char msg[MPI_MAX_ERROR_STRING];
    sk_fail(SK_ECOMM, "%s: %s failed on rank %d: %s", r->op, call, c->rank, mpi_errstr(rc, msg));
    return -1;
}

/* Issue one MPI call of a request: -1 with the message recorded when it fails. */
#define MPI_ISSUE(call)                                                                    \
    do {                                                                                   \
        int mpi_rc_ = (call);                                                              \
        if (mpi_rc_ != MPI_SUCCESS) return mpi_call_failed(c, r, #call, mpi_rc_);          \
    } while (0)

static void nap(long ns) {
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

/* in(len) added into inout(len), bf16 elements (MPI_User_function). */
static void mpi_bf16_sum(void *in, void *inout, int *len, MPI_Datatype *type) {
    comm_bf16_sum(inout, in, (size_t)*len);
}

/* ---- the thread's side: pings, diagnosis, issuing and polling ---- */

/* Answers pings that arrived (see the file comment). Best effort: errors are ignored, since
 * this only feeds another rank's diagnosis. */
static void mpi_answer_pings(comm *c) {
    mpi_impl *m = c->impl;
    for (int k = 0; k < 64; k++) {
        int flag = 0;
        MPI_Status st;
        if (MPI_Test(&m->ping_req, &flag, &st) != MPI_SUCCESS || !flag) return;
        int r = st.MPI_SOURCE;
        if (r >= 0 && r < c->world) {
            int done = 1;
            if (m->pong_req[r] != MPI_REQUEST_NULL) MPI_Test(&m->pong_req[r], &done, MPI_STATUS_IGNORE);
            if (done) {
                m->pong_out[2 * r] = atomic_load(&m->w.posted);
                m->pong_out[2 * r + 1] = atomic_load(&m->w.running);
                MPI_Isend(&m->pong_out[2 * r], 2, MPI_INT64_T, r, TAG_PONG, m->diag, &m->pong_req[r]);
            }
        }
        if (MPI_Irecv(&m->ping_in, 1, MPI_INT64_T, MPI_ANY_SOURCE, TAG_PING, m->diag, &m->ping_req) != MPI_SUCCESS)
            return;
    }
}

/* Appends rank r to a comma-separated list in buf(cap). */
static void list_add(char *buf, size_t cap, int r) {
    size_t len = strlen(buf);
    snprintf(buf + len, cap - len, "%s%d", len ? ", " : "", r);
}

/* Collective #seq (r) timed out: asks every other rank where it is and records the message. */
static void mpi_timeout(comm *c, const comm_req *r, int64_t seq) {
    mpi_impl *m = c->impl;
    int W = c->world;
    int64_t ping = seq;
    int64_t *pong = calloc(2 * (size_t)W, sizeof *pong);
    MPI_Request *req = malloc(2 * (size_t)W * sizeof *req);
    int *answered = calloc((size_t)W, sizeof *answered);
    char dead[256] = "", absent[256] = "", silent[sizeof dead + sizeof absent + 2] = "", waiting[256] = "", other[256] = "";
    if (pong && req && answered) {
        for (int k = 0; k < 2 * W; k++) req[k] = MPI_REQUEST_NULL;
        for (int k = 0; k < W; k++) {
            if (k == c->rank) continue;
            MPI_Irecv(&pong[2 * k], 2, MPI_INT64_T, k, TAG_PONG, m->diag, &req[k]);
            MPI_Isend(&ping, 1, MPI_INT64_T, k, TAG_PING, m->diag, &req[W + k]);
        }
        double grace = c->timeout_s < 2.0 ? c->timeout_s : 2.0;
        double end = time_now() + grace;
        int left = W - 1;
        while (left > 0 && time_now() < end) {
            for (int k = 0; k < W; k++) {
                int flag = 0;
                if (k == c->rank || answered[k] || req[k] == MPI_REQUEST_NULL) continue;
                if (MPI_Test(&req[k], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag) {
                    answered[k] = 1;
                    left--;
                }
            }
            mpi_answer_pings(c);
            nap(200000);
        }
        for (int k = 0; k < W; k++) {
            if (k == c->rank) continue;
            if (!answered[k]) list_add(dead, sizeof dead, k);
            else if (pong[2 * k] < seq) list_add(absent, sizeof absent, k);
            else if (pong[2 * k + 1] == seq) list_add(waiting, sizeof waiting, k);
            else list_add(other, sizeof other, k);
        }
        /* Requests still in flight are left to MPI_Abort: the world is over. */
    }
    free(pong);
    free(req);
    free(answered);
    char extra[800] = "";
    if (dead[0] && absent[0]) snprintf(extra, sizeof extra, " (%s: dead or unreachable; %s: alive but not at this "
                                       "collective: busy or hung outside collectives)", dead, absent);
    else if (dead[0]) snprintf(extra, sizeof extra, " (dead or unreachable)");
    else if (absent[0]) snprintf(extra, sizeof extra, " (alive but not at this collective: busy or hung outside collectives)");
    size_t len = strlen(extra);
    if (waiting[0]) snprintf(extra + len, sizeof extra - len, "; rank(s) %s waiting in it too", waiting);
    len = strlen(extra);
    if (other[0]) snprintf(extra + len, sizeof extra - len, "; rank(s) %s in another collective (mismatched calls?)", other);
    snprintf(silent, sizeof silent, "%s%s%s", dead, dead[0] && absent[0] ? ", " : "", absent);
    if (silent[0])
        sk_fail(SK_ECOMM, "%s (collective #%lld, %zu elements): no answer from rank(s) %s within %g s%s", r->op,
                (long long)seq, r->n, silent, c->timeout_s, extra);
    else
        sk_fail(SK_ECOMM, "%s (collective #%lld, %zu elements): did not complete within %g s on rank %d, though every "
                "rank answers%s", r->op, (long long)seq, r->n, c->timeout_s, c->rank, extra);
}

/* MPI datatype and sum of an element type. */
static MPI_Datatype mpi_type(const mpi_impl *m, comm_elem e) {
    switch (e) {
    case COMM_F32: return MPI_FLOAT;
    case COMM_BF16: return m->bf16;
    case COMM_F64: return MPI_DOUBLE;
    case COMM_BYTE: return MPI_BYTE;
    }
    return MPI_DATATYPE_NULL;
}

static MPI_Op mpi_sum(const mpi_impl *m, comm_elem e) { return e == COMM_BF16 ? m->bf16_sum : MPI_SUM; }

/* Issues MPI call number k of request r into *mr. Returns 1 when issued (*mr stays
 * MPI_REQUEST_NULL when the call completed at once), 0 when r has no call k (it is
 * complete), -1 with the message recorded on failure. Splitting (counts over m->chunk):
 * all_reduce and broadcast piece by piece; reduce_scatter as one MPI_Ireduce per piece and
 * owner; all_gather as one MPI_Ibcast per owner and piece. */
static int mpi_issue(comm *c, const comm_req *r, size_t k, MPI_Request *mr) {
    mpi_impl *m = c->impl;
    const size_t L = m->chunk, es = comm_elem_size(r->elem), W = (size_t)c->world, n = r->n;
    const size_t pieces = (n + L - 1) / L;
    const MPI_Datatype t = mpi_type(m, r->elem);
    const char *send = r->send;
    char *recv = r->recv;
    *mr = MPI_REQUEST_NULL;
    switch (r->kind) {
    case COMM_ALL_REDUCE:
    case COMM_BROADCAST: {
        if (k >= pieces) return 0;
        size_t off = k * L, len = n - off < L ? n - off : L;
        if (r->kind == COMM_BROADCAST)
            MPI_ISSUE(MPI_Ibcast(recv + off, (int)len, MPI_BYTE, r->root, m->world, mr));
        else
            MPI_ISSUE(MPI_Iallreduce(MPI_IN_PLACE, recv + off * es, (int)len, t, mpi_sum(m, r->elem), m->world, mr));
        return 1;
    }
    case COMM_REDUCE_SCATTER: {
        if (n == 0) return 0;
        if (n <= L) {
            if (k > 0) return 0;
            MPI_ISSUE(MPI_Ireduce_scatter_block(send, recv, (int)n, t, mpi_sum(m, r->elem), m->world, mr));
            return 1;
        }
        size_t piece = k / W, owner = k % W;
        if (piece >= pieces) return 0;
        size_t off = piece * L, len = n - off < L ? n - off : L;
        MPI_ISSUE(MPI_Ireduce(send + (owner * n + off) * es, owner == (size_t)c->rank ? recv + off * es : NULL,
                              (int)len, t, mpi_sum(m, r->elem), (int)owner, m->world, mr));
        return 1;
    }
    case COMM_ALL_GATHER: {
        char *mine = recv + (size_t)c->rank * n * es;
        if (n == 0) return 0;
        if (n <= L) {
            if (k > 0) return 0;
            MPI_ISSUE(MPI_Iallgather(send == mine ? MPI_IN_PLACE : send, (int)n, t, recv, (int)n, t, m->world, mr));
            return 1;
        }
        size_t owner = k / pieces, piece = k % pieces;
        if (owner >= W) return 0;
        if (k == 0 && send != mine) memmove(mine, send, n * es);
        size_t off = piece * L, len = n - off < L ? n - off : L;
        MPI_ISSUE(MPI_Ibcast(recv + (owner * n + off) * es, (int)len, t, (int)owner, m->world, mr));
        return 1;
    }
    case COMM_BARRIER:
        if (k > 0) return 0;
        MPI_ISSUE(MPI_Ibarrier(m->world, mr));
        return 1;
    case COMM_FETCH_ADD:
        /* Request-based, so a rank 0 that does not progress RMA costs a timeout, not a hang. */
        if (k > 0) return 0;
        MPI_ISSUE(MPI_Rget_accumulate(&r->value, 1, MPI_INT64_T, r->old, 1, MPI_INT64_T, 0, 0, 1, MPI_INT64_T,
                                      MPI_SUM, m->win, mr));
        return 1;
    case COMM_COUNTER_SET:
        /* barrier (every earlier fetch_add has completed), the store on rank 0, barrier */
        if (k == 0 || k == 2) MPI_ISSUE(MPI_Ibarrier(m->world, mr));
        else if (k == 1 && c->rank == 0) {
            MPI_ISSUE(MPI_Accumulate(&r->value, 1, MPI_INT64_T, 0, 0, 1, MPI_INT64_T, MPI_REPLACE, m->win));
            MPI_ISSUE(MPI_Win_flush(0, m->win));
        }
        return k <= 2;
    }
    return 0;
}

/* Advances request r in slot s as far as it goes without waiting (comm_worker_ops.progress):
 * s->step is the MPI call in progress, s->t0 when the first was issued. */
static int mpi_progress(comm *c, comm_req *r, comm_slot *s) {
    MPI_Request *mr = &((mpi_impl *)c->impl)->mr[r->slot];
    for (;;) {
        if (*mr == MPI_REQUEST_NULL) {
            if (s->step == 0) s->t0 = time_now();
            int rc = mpi_issue(c, r, s->step, mr);
            if (rc <= 0) return rc == 0 ? 1 : -1;
            if (*mr == MPI_REQUEST_NULL) {
                s->step++;
                continue;
            }
        }
        int flag = 0;
        MPI_ISSUE(MPI_Test(mr, &flag, MPI_STATUS_IGNORE));
        if (!flag) break;
        s->step++;
    }
    if (time_now() <= s->t0 + c->timeout_s) return 0;
    if (r->kind == COMM_FETCH_ADD)
        sk_fail(SK_ECOMM, "%s: rank 0, which holds the counter, did not answer within %g s", r->op, c->timeout_s);
    else
        mpi_timeout(c, r, s->seq);
    return -1;
}

/* Ends the job from the thread (MPI's main thread). */
static void mpi_thread_abort(comm *c) {
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    _Exit(1);
}

/* Start-up on the thread: MPI, the communicators, the counter's window, the bf16 sum. On
 * failure with other ranks possibly waiting in a setup call, ends the job. */
static sk_status mpi_setup(comm *c) {
    mpi_impl *m = c->impl;
    MPI_Comm node = MPI_COMM_NULL;
    int inited = 0, finalized = 0, provided = 0;
    MPI_CHECK(MPI_Finalized(&finalized));
    if (finalized) return sk_fail(SK_ESTATE, "comm: MPI was finalized by an earlier communicator; one per process");
    MPI_CHECK(MPI_Initialized(&inited));
    if (!inited) {
        /* MULTIPLE only for comm_split's comms, which have threads of their own */
        MPI_CHECK(MPI_Init_thread(NULL, NULL, comm_split_wanted() ? MPI_THREAD_MULTIPLE : MPI_THREAD_FUNNELED,
                                  &provided));
        m->initialized_mpi = true;
        if (provided < MPI_THREAD_FUNNELED) {
            sk_fail(SK_ECOMM, "comm: MPI granted thread level %d, below MPI_THREAD_FUNNELED (%d), which skein's "
                    "communication thread needs (an MPI built without thread support?)", provided, MPI_THREAD_FUNNELED);
            goto err;
        }
    } else {
        MPI_CHECK(MPI_Query_thread(&provided));
        if (provided < MPI_THREAD_SERIALIZED) {
            sk_fail(SK_ECOMM, "comm: MPI was initialized elsewhere with thread level %d; skein's communication thread "
                    "needs MPI_THREAD_SERIALIZED (%d) there", provided, MPI_THREAD_SERIALIZED);
            goto err;
        }
    }
    if (m->parent != MPI_COMM_NULL && provided < MPI_THREAD_MULTIPLE) {
        sk_fail(SK_ECOMM, "comm_split: MPI granted thread level %d, below MPI_THREAD_MULTIPLE (%d), which a second "
                "communicator's thread needs (call comm_want_split before comm_init)", provided, MPI_THREAD_MULTIPLE);
        goto err;
    }
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    if (m->parent != MPI_COMM_NULL) MPI_CHECK(MPI_Comm_split(m->parent, m->color, m->key, &m->world));
    else MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &m->world));
    MPI_CHECK(MPI_Comm_dup(m->world, &m->diag));
    MPI_CHECK(MPI_Comm_rank(m->world, &c->rank));
    MPI_CHECK(MPI_Comm_size(m->world, &c->world));
    MPI_CHECK(MPI_Comm_split_type(m->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &c->local_rank));
    MPI_CHECK(MPI_Comm_size(node, &c->local_world));
    MPI_CHECK(MPI_Comm_free(&node));
    MPI_CHECK(MPI_Type_contiguous(1, MPI_UINT16_T, &m->bf16));
    MPI_CHECK(MPI_Type_commit(&m->bf16));
    MPI_CHECK(MPI_Op_create(mpi_bf16_sum, 1, &m->bf16_sum));
    m->pong_out = calloc(2 * (size_t)c->world, sizeof *m->pong_out);
    m->pong_req = malloc((size_t)c->world * sizeof *m->pong_req);
    if (!m->pong_out || !m->pong_req) {
        sk_fail(SK_ENOMEM, "comm: out of memory");
        goto err;
    }
    for (int r = 0; r < c->world; r++) m->pong_req[r] = MPI_REQUEST_NULL;
    MPI_CHECK(MPI_Win_allocate(c->rank == 0 ? (MPI_Aint)sizeof(int64_t) : 0, sizeof(int64_t), MPI_INFO_NULL,
                               m->world, &m->counter, &m->win));
    MPI_CHECK(MPI_Win_set_errhandler(m->win, MPI_ERRORS_RETURN));
    if (c->rank == 0) *m->counter = 0;
    MPI_CHECK(MPI_Win_lock_all(0, m->win));
    MPI_CHECK(MPI_Irecv(&m->ping_in, 1, MPI_INT64_T, MPI_ANY_SOURCE, TAG_PING, m->diag, &m->ping_req));
    return SK_OK;
err:
    if (m->world != MPI_COMM_NULL && c->world > 1) {
        /* Other ranks may be waiting for this one in a collective setup call. */
        fprintf(stderr, "skein: rank %d: %s\n", c->rank, sk_errmsg());
        mpi_thread_abort(c);
    }
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    return SK_ECOMM;
}

/* Shutdown on the thread, after the last request. */
static void mpi_teardown(comm *c) {
    mpi_impl *m = c->impl;
    if (m->ping_req != MPI_REQUEST_NULL) {
        MPI_Cancel(&m->ping_req);
        MPI_Wait(&m->ping_req, MPI_STATUS_IGNORE);
    }
    for (int r = 0; r < c->world; r++)
        if (m->pong_req[r] != MPI_REQUEST_NULL) MPI_Wait(&m->pong_req[r], MPI_STATUS_IGNORE);
    MPI_Win_unlock_all(m->win);
    MPI_Win_free(&m->win);
    MPI_Op_free(&m->bf16_sum);
    MPI_Type_free(&m->bf16);
    MPI_Comm_free(&m->diag);
    MPI_Comm_free(&m->world);
    if (m->initialized_mpi) MPI_Finalize();
}

static const comm_worker_ops mpi_worker_ops = {mpi_setup, mpi_progress, mpi_answer_pings, mpi_teardown,
                                               mpi_thread_abort};

/* ---- the caller's side ---- */

void comm_mpi_abort(comm *c) {
    fflush(stdout);
    fflush(stderr);
    /* The thread calls MPI_Abort at its next turn; should it not within 10 s, leave alone. */
    bool up = comm_worker_abort(c);
    for (int k = 0; up && k < 100; k++) nap(100000000);
    _Exit(1);
}

/* Joins the thread and releases what the caller's side holds. */
static void mpi_release(comm *c) {
    mpi_impl *m = c->impl;
    comm_worker_stop(c);
    free(m->pong_out);
    free(m->pong_req);
    free(m);
    free(c);
}

static void mpi_free(comm *c) {
    if (comm_worker_broken(c)) comm_mpi_abort(c);
    mpi_release(c);
}

static sk_status mpi_split(comm *c, int color, int key, comm **out);
static const comm_ops mpi_ops = {comm_worker_start, comm_worker_wait, comm_worker_test, mpi_free,
                                 comm_worker_set_backend, mpi_split};

/* A comm over MPI_COMM_WORLD (parent MPI_COMM_NULL) or over the ranks of parent passing color,
 * ranked by key; its thread sets it up. */
static sk_status mpi_create(double timeout_s, MPI_Comm parent, int color, int key, comm **out) {
    comm *c = calloc(1, sizeof *c);
    mpi_impl *m = calloc(1, sizeof *m);
    if (!c || !m) {
        free(c);
        free(m);
        return sk_fail(SK_ENOMEM, "comm: out of memory");
    }
    m->world = m->diag = MPI_COMM_NULL;
    m->parent = parent;
    m->color = color;
    m->key = key;
    m->win = MPI_WIN_NULL;
    m->ping_req = MPI_REQUEST_NULL;
    for (int k = 0; k < COMM_MAX_REQS; k++) m->mr[k] = MPI_REQUEST_NULL;   /* MPI_Test leaves them so */
    m->chunk = comm_chunk_limit();
    *c = (comm){.ops = &mpi_ops, .name = "mpi", .timeout_s = timeout_s, .impl = m};
    sk_status st = comm_worker_init(c, &mpi_worker_ops);
    if (st != SK_OK) {
        mpi_release(c);
        return st;
    }
    /* The counter is zero before anyone adds to it. A rank missing here ends the job (the
     * message is printed by the thread). */
    comm_req first = {.slot = 0, .kind = COMM_BARRIER, .op = "barrier (start-up)"};
    if (comm_worker_start(c, &first) != SK_OK || comm_worker_wait(c, &first) != SK_OK) comm_mpi_abort(c);
    *out = c;
    return SK_OK;
}

sk_status comm_mpi_init(double timeout_s, comm **out) { return mpi_create(timeout_s, MPI_COMM_NULL, 0, 0, out); }

/* comm_split: MPI_Comm_split of c's communicator, made by the new comm's thread while c's is
 * idle (no request in flight: comm_split's contract), so MPI sees two threads. */
static sk_status mpi_split(comm *c, int color, int key, comm **out) {
    return mpi_create(c->timeout_s, ((mpi_impl *)c->impl)->world, color, key, out);
}

#endif /* SKEIN_HAVE_MPI */
