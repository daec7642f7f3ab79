/* comm_mpi: comm.h over MPI, for host buffers (CPU training under mpirun, srun or
 * `skein train --workers N`).
 *
 * The communication thread. One thread per comm makes every MPI call, MPI_Init_thread and
 * MPI_Finalize included, so MPI's "main thread" is this thread and MPI_THREAD_FUNNELED is
 * the level it needs (checked; where MPI was initialized by someone else, SERIALIZED is
 * needed and checked). Callers queue requests (start) and sleep on a condition variable
 * (wait); the thread takes the requests in queue order, one at a time, issues each as
 * nonblocking MPI calls (pieces in order when split) and polls them with MPI_Test until they
 * complete or the communicator's timeout passes. So a reduce-scatter progresses while the
 * caller computes, and every rank issues the same MPI calls in the same order whatever the
 * timing. Nothing here blocks without a deadline except MPI_Init_thread and the window's
 * creation at start-up; a caller that waits on a thread which stopped answering for
 * timeout + 30 s gets SK_ECOMM too.
 *
 * Finding the missing rank. The thread answers "pings" on a second communicator (`diag`),
 * idle or not, with two numbers: how many collectives its caller has posted, and which one it
 * is working on. When a collective times out, the thread pings every other rank and waits a
 * short grace period: a rank that does not answer is dead or unreachable; one that has not
 * posted this collective yet is alive but busy or hung outside collectives; one working on
 * it is waiting too; one in another collective made mismatched calls. A rank killed by a
 * signal usually never gets that far: mpirun sees it die and ends the whole job.
 *
 * bf16 sums: a user-defined MPI_Op (commutative) over a 2-byte datatype adds in f32 and
 * rounds each addition once.
 *
 * Invariants: after a collective fails the communicator is broken: every later call fails at
 * once, and comm_free ends the job with MPI_Abort (an unfinished collective cannot be
 * cancelled, so MPI_Finalize could wait forever). Counts above comm_chunk_limit() are split
 * into several calls. The fetch-and-add counter is an int64 in a window on rank 0, used in
 * one passive-target epoch (MPI_Win_lock_all) from start-up to free; fetch_add is queued with
 * the collectives but counts as none. Fields marked "thread" are touched by the thread only;
 * the rest under mu. */
#ifdef SKEIN_HAVE_MPI

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_impl.h"

enum { TAG_PING = 1, TAG_PONG = 2 };
enum { REQ_IDLE, REQ_QUEUED, REQ_RUNNING, REQ_DONE };

/* One request slot (comm_req.slot). */
typedef struct mpi_slot {
    int state;             /* REQ_*; under mu */
    int64_t seq;           /* collective number, 1-based (0: fetch_add) */
    sk_status st;          /* result, with msg, once REQ_DONE */
    char msg[1024];
    size_t step;           /* thread: the MPI call in progress */
    MPI_Request mr;        /* thread: its request (MPI_REQUEST_NULL: none issued yet) */
    double t0;             /* thread: when the first call was issued */
} mpi_slot;

typedef struct mpi_impl {
    pthread_t thread;
    bool thread_up;        /* the thread was created and not joined */
    pthread_mutex_t mu;
    pthread_cond_t wake;   /* to the thread: work queued, stop, abort */
    pthread_cond_t done;   /* to callers: a request is done, or the start-up ended */
    comm_req *queue[COMM_MAX_REQS];   /* FIFO of started requests */
    int q_head, q_len;
    mpi_slot slot[COMM_MAX_REQS];
    _Atomic int64_t posted;    /* collectives the caller has started */
    _Atomic int64_t running;   /* the collective the thread works on (0: none) */
    uint64_t heartbeat;    /* thread loop turns: the caller's proof of life */
    bool broken;           /* a collective failed: the world is unusable */
    bool stop, abort_now;  /* requests to the thread */
    int setup;             /* 0 starting, 1 up, -1 failed (setup_msg) */
    char setup_msg[1024];

    MPI_Comm world;        /* thread: collectives */
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

/* in(len) added into inout(len), bf16 elements: each sum computed in f32, rounded once. */
static void mpi_bf16_sum(void *in, void *inout, int *len, MPI_Datatype *type) {
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (int i = 0; i < *len; i++) b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
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
                m->pong_out[2 * r] = atomic_load(&m->posted);
                m->pong_out[2 * r + 1] = atomic_load(&m->running);
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

/* Advances request r in slot s as far as it goes without waiting. Returns 0 while it runs,
 * 1 when complete, -1 on failure or timeout (message recorded). */
static int mpi_progress(comm *c, const comm_req *r, mpi_slot *s) {
    for (;;) {
        if (s->mr == MPI_REQUEST_NULL) {
            if (s->step == 0) s->t0 = time_now();
            int rc = mpi_issue(c, r, s->step, &s->mr);
            if (rc <= 0) return rc == 0 ? 1 : -1;
            if (s->mr == MPI_REQUEST_NULL) {
                s->step++;
                continue;
            }
        }
        int flag = 0;
        MPI_ISSUE(MPI_Test(&s->mr, &flag, MPI_STATUS_IGNORE));
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

/* Under mu: request r finished with st (message from this thread's sk_errmsg when failed).
 * A failure breaks the comm and fails every queued request. */
static void mpi_finish(comm *c, comm_req *r, sk_status st) {
    mpi_impl *m = c->impl;
    mpi_slot *s = &m->slot[r->slot];
    s->state = REQ_DONE;
    s->st = st;
    if (st != SK_OK) {
        snprintf(s->msg, sizeof s->msg, "%s", sk_errmsg());
        fprintf(stderr, "skein: rank %d: %s\n", c->rank, s->msg);
        m->broken = true;
        for (; m->q_len > 0; m->q_len--, m->q_head = (m->q_head + 1) % COMM_MAX_REQS) {
            comm_req *q = m->queue[m->q_head];
            mpi_slot *qs = &m->slot[q->slot];
            qs->state = REQ_DONE;
            qs->st = SK_ECOMM;
            snprintf(qs->msg, sizeof qs->msg, "%s: not started, the communicator broke in %s before it", q->op, r->op);
        }
    }
    pthread_cond_broadcast(&m->done);
}

/* Ends the job from the thread (MPI's main thread). */
static void mpi_thread_abort(void) {
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
        MPI_CHECK(MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided));
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
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &m->world));
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &m->diag));
    MPI_CHECK(MPI_Comm_rank(m->world, &c->rank));
    MPI_CHECK(MPI_Comm_size(m->world, &c->world));
    MPI_CHECK(MPI_Comm_split_type(m->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &c->local_rank));
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
        mpi_thread_abort();
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

/* The communication thread: start-up, then requests in queue order until stopped. While a
 * request runs it polls; idle, it sleeps 1 ms at a time (answering pings in between). */
static void *mpi_thread(void *arg) {
    comm *c = arg;
    mpi_impl *m = c->impl;
    sk_status st = mpi_setup(c);
    pthread_mutex_lock(&m->mu);
    m->setup = st == SK_OK ? 1 : -1;
    if (st != SK_OK) snprintf(m->setup_msg, sizeof m->setup_msg, "%s", sk_errmsg());
    pthread_cond_broadcast(&m->done);
    pthread_mutex_unlock(&m->mu);
    if (st != SK_OK) return NULL;
    comm_req *r = NULL;
    for (long spins = 0;;) {
        pthread_mutex_lock(&m->mu);
        m->heartbeat++;
        if (m->abort_now) mpi_thread_abort();
        if (!r && m->q_len > 0) {
            r = m->queue[m->q_head];
            m->q_head = (m->q_head + 1) % COMM_MAX_REQS;
            m->q_len--;
            m->slot[r->slot].state = REQ_RUNNING;
            atomic_store(&m->running, m->slot[r->slot].seq);
            spins = 0;
        }
        if (!r) {
            if (m->stop) {
                pthread_mutex_unlock(&m->mu);
                break;
            }
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 1000000;
            if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&m->wake, &m->mu, &until);
            pthread_mutex_unlock(&m->mu);
            mpi_answer_pings(c);
            continue;
        }
        pthread_mutex_unlock(&m->mu);
        size_t step = m->slot[r->slot].step;
        int rc = mpi_progress(c, r, &m->slot[r->slot]);
        if (m->slot[r->slot].step != step) spins = 0;   /* a piece completed: keep going fast */
        mpi_answer_pings(c);
        if (rc != 0) {
            pthread_mutex_lock(&m->mu);
            atomic_store(&m->running, 0);
            mpi_finish(c, r, rc > 0 ? SK_OK : SK_ECOMM);
            pthread_mutex_unlock(&m->mu);
            r = NULL;
            continue;
        }
        /* Spin briefly for latency, then yield the core to the computing threads. */
        if (++spins > 200) nap(spins > 20000 ? 200000 : 20000);
    }
    mpi_teardown(c);
    return NULL;
}

/* ---- the caller's side ---- */

static sk_status mpi_start(comm *c, comm_req *r) {
    mpi_impl *m = c->impl;
    pthread_mutex_lock(&m->mu);
    if (m->broken) {
        pthread_mutex_unlock(&m->mu);
        return sk_fail(SK_ECOMM, "%s: the communicator is broken by an earlier failure", r->op);
    }
    mpi_slot *s = &m->slot[r->slot];
    s->state = REQ_QUEUED;
    s->seq = r->kind == COMM_FETCH_ADD ? 0 : atomic_fetch_add(&m->posted, 1) + 1;
    s->st = SK_OK;
    s->msg[0] = 0;
    s->step = 0;
    s->mr = MPI_REQUEST_NULL;
    m->queue[(m->q_head + m->q_len) % COMM_MAX_REQS] = r;
    m->q_len++;
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->mu);
    return SK_OK;
}

/* Under mu: the result of a done slot, its message re-recorded on this thread. */
static sk_status mpi_result(mpi_slot *s) {
    return s->st == SK_OK ? SK_OK : sk_fail(s->st, "%s", s->msg);
}

static sk_status mpi_wait(comm *c, comm_req *r) {
    mpi_impl *m = c->impl;
    mpi_slot *s = &m->slot[r->slot];
    pthread_mutex_lock(&m->mu);
    uint64_t beat = m->heartbeat;
    double seen = time_now();
    while (s->state != REQ_DONE) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&m->done, &m->mu, &until);
        if (m->heartbeat != beat) {
            beat = m->heartbeat;
            seen = time_now();
        } else if (s->state != REQ_DONE && time_now() - seen > c->timeout_s + 30) {
            m->broken = true;
            pthread_mutex_unlock(&m->mu);
            return sk_fail(SK_ECOMM, "%s: the communication thread of rank %d has not answered for %.0f s (stuck "
                           "inside MPI)", r->op, c->rank, c->timeout_s + 30);
        }
    }
    s->state = REQ_IDLE;
    sk_status st = mpi_result(s);
    pthread_mutex_unlock(&m->mu);
    return st;
}

static sk_status mpi_test(comm *c, comm_req *r, bool *done) {
    mpi_impl *m = c->impl;
    mpi_slot *s = &m->slot[r->slot];
    pthread_mutex_lock(&m->mu);
    *done = s->state == REQ_DONE;
    sk_status st = *done ? mpi_result(s) : SK_OK;
    pthread_mutex_unlock(&m->mu);
    return st;
}

void comm_mpi_abort(comm *c) {
    mpi_impl *m = c->impl;
    fflush(stdout);
    fflush(stderr);
    pthread_mutex_lock(&m->mu);
    bool up = m->thread_up && m->setup == 1 && !m->stop;
    m->abort_now = true;
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->mu);
    /* The thread calls MPI_Abort at its next turn; should it not within 10 s, leave alone. */
    for (int k = 0; up && k < 100; k++) nap(100000000);
    _Exit(1);
}

/* Joins the thread and releases what the caller's side holds. */
static void mpi_release(comm *c) {
    mpi_impl *m = c->impl;
    if (m->thread_up) pthread_join(m->thread, NULL);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->wake);
    pthread_cond_destroy(&m->done);
    free(m->pong_out);
    free(m->pong_req);
    free(m);
    free(c);
}

static void mpi_free(comm *c) {
    mpi_impl *m = c->impl;
    if (m->broken) comm_mpi_abort(c);
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->mu);
    mpi_release(c);
}

static const comm_ops mpi_ops = {mpi_start, mpi_wait, mpi_test, mpi_free};

sk_status comm_mpi_init(double timeout_s, comm **out) {
    comm *c = calloc(1, sizeof *c);
    mpi_impl *m = calloc(1, sizeof *m);
    if (!c || !m) {
        free(c);
        free(m);
        return sk_fail(SK_ENOMEM, "comm: out of memory");
    }
    m->world = m->diag = MPI_COMM_NULL;
    m->win = MPI_WIN_NULL;
    m->ping_req = MPI_REQUEST_NULL;
    m->chunk = comm_chunk_limit();
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->wake, NULL);
    pthread_cond_init(&m->done, NULL);
    *c = (comm){.ops = &mpi_ops, .name = "mpi", .timeout_s = timeout_s, .impl = m};
    if (pthread_create(&m->thread, NULL, mpi_thread, c) != 0) {
        mpi_release(c);
        return sk_fail(SK_ECOMM, "comm: cannot start the MPI communication thread");
    }
    m->thread_up = true;
    pthread_mutex_lock(&m->mu);
    while (m->setup == 0) pthread_cond_wait(&m->done, &m->mu);
    pthread_mutex_unlock(&m->mu);
    if (m->setup < 0) {
        sk_status st = sk_fail(SK_ECOMM, "%s", m->setup_msg);
        mpi_release(c);
        return st;
    }
    /* The counter is zero before anyone adds to it. A rank missing here ends the job (the
     * message is printed by the thread). */
    comm_req first = {.slot = 0, .kind = COMM_BARRIER, .op = "barrier (start-up)"};
    if (mpi_start(c, &first) != SK_OK || mpi_wait(c, &first) != SK_OK) comm_mpi_abort(c);
    *out = c;
    return SK_OK;
}

#endif /* SKEIN_HAVE_MPI */
