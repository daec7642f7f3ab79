/* comm_mpi: comm.h over MPI, for host buffers (CPU training under mpirun, srun or
 * `skein train --workers N`).
 *
 * Every collective is a nonblocking MPI call polled with MPI_Test until it completes or the
 * communicator's timeout passes: nothing here blocks without a deadline except MPI_Init and
 * the window's creation in comm_mpi_init (before any rank can be late in user code).
 *
 * Finding the missing rank. While a rank polls, it also answers "pings" on a second
 * communicator (`diag`) with the number of collectives it has entered (`seq`). When a
 * collective times out, the rank pings every other rank and waits a short grace period:
 * ranks that answer with the same seq are waiting too; ranks that do not answer are busy
 * outside any collective, hung or dead; those are the ones the error names. A rank killed by
 * a signal usually never gets that far: mpirun sees it die and ends the whole job, printing
 * which rank died.
 *
 * Invariants: after a collective fails the communicator is broken: every later call fails
 * at once, and comm_free ends the job with MPI_Abort (an unfinished collective cannot be
 * cancelled, so MPI_Finalize could wait forever). Counts above comm_chunk_limit() are split
 * into several calls. The fetch-and-add counter is an int64 in a window on rank 0, used in
 * one passive-target epoch (MPI_Win_lock_all) from init to free. */
#ifdef SKEIN_HAVE_MPI

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_impl.h"

enum { TAG_PING = 1, TAG_PONG = 2 };

typedef struct mpi_impl {
    MPI_Comm world;          /* collectives */
    MPI_Comm diag;           /* pings during timeouts: never blocks the collectives' order */
    MPI_Win win;             /* the fetch-and-add counter, on rank 0 */
    int64_t *counter;        /* rank 0: the window's memory; NULL elsewhere */
    MPI_Request ping_req;    /* outstanding receive of a ping from any rank */
    int64_t ping_in;         /* the pinging rank's seq */
    int64_t *pong_out;       /* (world) replies in flight, one slot per asking rank */
    MPI_Request *pong_req;   /* (world) */
    int64_t seq;             /* collectives entered by this rank */
    size_t chunk;            /* largest count per MPI call */
    int broken;              /* a collective failed: the world is unusable */
    int initialized_mpi;     /* comm_mpi_init called MPI_Init: comm_free finalizes */
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

/* A collective's MPI call failed: the communicator is broken; the message names the call. */
static sk_status mpi_fail(comm *c, const char *op, const char *call, int rc) {
    mpi_impl *m = c->impl;
    char msg[MPI_MAX_ERROR_STRING];
    m->broken = 1;
    sk_fail(SK_ECOMM, "%s: %s failed on rank %d: %s", op, call, c->rank, mpi_errstr(rc, msg));
    fprintf(stderr, "skein: rank %d: %s\n", c->rank, sk_errmsg());
    return SK_ECOMM;
}

#define MPI_COLL(c, op, call)                                                              \
    do {                                                                                   \
        int mpi_rc_ = (call);                                                              \
        if (mpi_rc_ != MPI_SUCCESS) return mpi_fail(c, op, #call, mpi_rc_);                \
    } while (0)

static void nap(long ns) {
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

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
                m->pong_out[r] = m->seq;
                MPI_Isend(&m->pong_out[r], 1, MPI_INT64_T, r, TAG_PONG, m->diag, &m->pong_req[r]);
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

/* The collective `op` timed out: asks every other rank where it is and records the message.
 * Marks the communicator broken. */
static sk_status mpi_timeout(comm *c, const char *op, size_t n) {
    mpi_impl *m = c->impl;
    m->broken = 1;
    int W = c->world;
    int64_t ping = m->seq;
    int64_t *pong = calloc((size_t)W, sizeof *pong);
    MPI_Request *req = malloc(2 * (size_t)W * sizeof *req);
    int *answered = calloc((size_t)W, sizeof *answered);
    char missing[512] = "", waiting[512] = "", behind[512] = "";
    if (pong && req && answered) {
        for (int r = 0; r < 2 * W; r++) req[r] = MPI_REQUEST_NULL;
        for (int r = 0; r < W; r++) {
            if (r == c->rank) continue;
            MPI_Irecv(&pong[r], 1, MPI_INT64_T, r, TAG_PONG, m->diag, &req[r]);
            MPI_Isend(&ping, 1, MPI_INT64_T, r, TAG_PING, m->diag, &req[W + r]);
        }
        double grace = c->timeout_s < 2.0 ? c->timeout_s : 2.0;
        double end = time_now() + grace;
        int left = W - 1;
        while (left > 0 && time_now() < end) {
            for (int r = 0; r < W; r++) {
                int flag = 0;
                if (r == c->rank || answered[r] || req[r] == MPI_REQUEST_NULL) continue;
                if (MPI_Test(&req[r], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag) {
                    answered[r] = 1;
                    left--;
                }
            }
            mpi_answer_pings(c);
            nap(200000);
        }
        for (int r = 0; r < W; r++) {
            if (r == c->rank) continue;
            if (!answered[r]) list_add(missing, sizeof missing, r);
            else if (pong[r] == m->seq) list_add(waiting, sizeof waiting, r);
            else list_add(behind, sizeof behind, r);
        }
        /* Requests still in flight are left to MPI_Abort: the world is over. */
    }
    free(pong);
    free(req);
    free(answered);
    char extra[1200] = "";
    if (waiting[0]) snprintf(extra, sizeof extra, "; rank(s) %s waiting in it too", waiting);
    if (behind[0]) {
        size_t len = strlen(extra);
        snprintf(extra + len, sizeof extra - len, "; rank(s) %s in another collective (mismatched calls?)", behind);
    }
    if (missing[0])
        sk_fail(SK_ECOMM, "%s (collective #%lld, %zu elements): no answer from rank(s) %s within %g s "
                "(dead, hung, or busy outside collectives)%s", op, (long long)m->seq, n, missing, c->timeout_s, extra);
    else
        sk_fail(SK_ECOMM, "%s (collective #%lld, %zu elements): did not complete within %g s on rank %d, "
                "though every rank answers%s", op, (long long)m->seq, n, c->timeout_s, c->rank, extra);
    fprintf(stderr, "skein: rank %d: %s\n", c->rank, sk_errmsg());
    return SK_ECOMM;
}

/* Polls *req until it completes (SK_OK) or the timeout that started at t0 passes. */
static sk_status mpi_wait(comm *c, MPI_Request *req, const char *op, size_t n, double t0) {
    double deadline = t0 + c->timeout_s;
    for (long spins = 0;; spins++) {
        int done = 0;
        MPI_COLL(c, op, MPI_Test(req, &done, MPI_STATUS_IGNORE));
        if (done) return SK_OK;
        mpi_answer_pings(c);
        if (time_now() > deadline) return mpi_timeout(c, op, n);
        /* Spin briefly for latency, then yield the core: ranks may share cores. */
        if (spins > 2000) nap(spins > 20000 ? 200000 : 20000);
    }
}

/* Entry of every collective: refuses a broken communicator, counts the collective. */
static sk_status mpi_enter(comm *c, const char *op) {
    mpi_impl *m = c->impl;
    if (m->broken)
        return sk_fail(SK_ECOMM, "%s: the communicator is broken by an earlier failure", op);
    m->seq++;
    return SK_OK;
}

static sk_status mpi_all_reduce_typed(comm *c, void *buf, size_t n, MPI_Datatype t, size_t esize,
                                      const char *op) {
    mpi_impl *m = c->impl;
    SK_TRY(mpi_enter(c, op));
    double t0 = time_now();
    for (size_t off = 0; off < n || (n == 0 && off == 0); off += m->chunk) {
        if (n == 0) break;
        size_t len = n - off < m->chunk ? n - off : m->chunk;
        MPI_Request req;
        MPI_COLL(c, op, MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * esize, (int)len, t, MPI_SUM, m->world, &req));
        SK_TRY(mpi_wait(c, &req, op, n, t0));
    }
    return SK_OK;
}

static sk_status mpi_all_reduce(comm *c, float *buf, size_t n) {
    return mpi_all_reduce_typed(c, buf, n, MPI_FLOAT, sizeof(float), "all_reduce");
}

static sk_status mpi_all_reduce_f64(comm *c, double *buf, size_t n) {
    return mpi_all_reduce_typed(c, buf, n, MPI_DOUBLE, sizeof(double), "all_reduce_f64");
}

static sk_status mpi_reduce_scatter(comm *c, const float *send, float *recv, size_t chunk) {
    mpi_impl *m = c->impl;
    const char *op = "reduce_scatter";
    SK_ASSERT(recv + chunk <= send || recv >= send + (size_t)c->world * chunk || chunk == 0);
    SK_TRY(mpi_enter(c, op));
    double t0 = time_now();
    MPI_Request req;
    if (chunk <= m->chunk) {
        MPI_COLL(c, op, MPI_Ireduce_scatter_block(send, recv, (int)chunk, MPI_FLOAT, MPI_SUM, m->world, &req));
        return mpi_wait(c, &req, op, chunk, t0);
    }
    /* Split: each piece of every rank's chunk is reduced to its owner. */
    for (size_t off = 0; off < chunk; off += m->chunk) {
        size_t len = chunk - off < m->chunk ? chunk - off : m->chunk;
        for (int r = 0; r < c->world; r++) {
            const float *src = send + (size_t)r * chunk + off;
            MPI_COLL(c, op, MPI_Ireduce(src, r == c->rank ? recv + off : NULL, (int)len, MPI_FLOAT, MPI_SUM, r,
                                        m->world, &req));
            SK_TRY(mpi_wait(c, &req, op, chunk, t0));
        }
    }
    return SK_OK;
}

static sk_status mpi_all_gather(comm *c, const float *send, float *recv, size_t chunk) {
    mpi_impl *m = c->impl;
    const char *op = "all_gather";
    float *mine = recv + (size_t)c->rank * chunk;
    SK_TRY(mpi_enter(c, op));
    double t0 = time_now();
    MPI_Request req;
    if (chunk <= m->chunk) {
        MPI_COLL(c, op, MPI_Iallgather(send == mine ? MPI_IN_PLACE : send, (int)chunk, MPI_FLOAT, recv, (int)chunk,
                                       MPI_FLOAT, m->world, &req));
        return mpi_wait(c, &req, op, chunk, t0);
    }
    /* Split: every rank broadcasts its chunk piece by piece. */
    if (send != mine) memmove(mine, send, chunk * sizeof *recv);
    for (int r = 0; r < c->world; r++)
        for (size_t off = 0; off < chunk; off += m->chunk) {
            size_t len = chunk - off < m->chunk ? chunk - off : m->chunk;
            MPI_COLL(c, op, MPI_Ibcast(recv + (size_t)r * chunk + off, (int)len, MPI_FLOAT, r, m->world, &req));
            SK_TRY(mpi_wait(c, &req, op, chunk, t0));
        }
    return SK_OK;
}

static sk_status mpi_broadcast(comm *c, void *buf, size_t bytes, int root) {
    mpi_impl *m = c->impl;
    const char *op = "broadcast";
    if (root < 0 || root >= c->world)
        return sk_fail(SK_EARG, "broadcast: root %d is not a rank of a world of %d", root, c->world);
    SK_TRY(mpi_enter(c, op));
    double t0 = time_now();
    for (size_t off = 0; off < bytes; off += m->chunk) {
        size_t len = bytes - off < m->chunk ? bytes - off : m->chunk;
        MPI_Request req;
        MPI_COLL(c, op, MPI_Ibcast((char *)buf + off, (int)len, MPI_BYTE, root, m->world, &req));
        SK_TRY(mpi_wait(c, &req, op, bytes, t0));
    }
    return SK_OK;
}

static sk_status mpi_barrier(comm *c) {
    mpi_impl *m = c->impl;
    SK_TRY(mpi_enter(c, "barrier"));
    MPI_Request req;
    MPI_COLL(c, "barrier", MPI_Ibarrier(m->world, &req));
    return mpi_wait(c, &req, "barrier", 0, time_now());
}

/* Request-based, so a rank 0 that does not progress RMA (no hardware atomics, busy in user
 * code) costs a timeout rather than a hang. */
static sk_status mpi_fetch_add(comm *c, int64_t add, int64_t *old) {
    mpi_impl *m = c->impl;
    const char *op = "fetch_add";
    if (m->broken) return sk_fail(SK_ECOMM, "%s: the communicator is broken by an earlier failure", op);
    MPI_Request req;
    MPI_COLL(c, op, MPI_Rget_accumulate(&add, 1, MPI_INT64_T, old, 1, MPI_INT64_T, 0, 0, 1, MPI_INT64_T, MPI_SUM,
                                        m->win, &req));
    double t0 = time_now(), deadline = t0 + c->timeout_s;
    for (long spins = 0;; spins++) {
        int done = 0;
        MPI_COLL(c, op, MPI_Test(&req, &done, MPI_STATUS_IGNORE));
        if (done) return SK_OK;
        mpi_answer_pings(c);
        if (time_now() > deadline) {
            m->broken = 1;
            sk_fail(SK_ECOMM, "%s: rank 0, which holds the counter, did not answer within %g s", op, c->timeout_s);
            fprintf(stderr, "skein: rank %d: %s\n", c->rank, sk_errmsg());
            return SK_ECOMM;
        }
        if (spins > 2000) nap(20000);
    }
}

static sk_status mpi_counter_set(comm *c, int64_t value) {
    mpi_impl *m = c->impl;
    SK_TRY(mpi_barrier(c)); /* every earlier fetch_add has completed */
    if (c->rank == 0) {
        MPI_COLL(c, "counter_set", MPI_Accumulate(&value, 1, MPI_INT64_T, 0, 0, 1, MPI_INT64_T, MPI_REPLACE, m->win));
        MPI_COLL(c, "counter_set", MPI_Win_flush(0, m->win));
    }
    return mpi_barrier(c);
}

void comm_mpi_abort(comm *c) {
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    _Exit(1);
}

static void mpi_free(comm *c) {
    mpi_impl *m = c->impl;
    if (m->broken) comm_mpi_abort(c);
    if (m->ping_req != MPI_REQUEST_NULL) {
        MPI_Cancel(&m->ping_req);
        MPI_Wait(&m->ping_req, MPI_STATUS_IGNORE);
    }
    for (int r = 0; r < c->world; r++)
        if (m->pong_req[r] != MPI_REQUEST_NULL) MPI_Wait(&m->pong_req[r], MPI_STATUS_IGNORE);
    MPI_Win_unlock_all(m->win);
    MPI_Win_free(&m->win);
    MPI_Comm_free(&m->diag);
    MPI_Comm_free(&m->world);
    if (m->initialized_mpi) MPI_Finalize();
    free(m->pong_out);
    free(m->pong_req);
    free(m);
    free(c);
}

static const comm_ops mpi_ops = {
    mpi_all_reduce, mpi_all_reduce_f64, mpi_reduce_scatter, mpi_all_gather,
    mpi_broadcast, mpi_barrier, mpi_fetch_add, mpi_counter_set, mpi_free,
};

sk_status comm_mpi_init(double timeout_s, comm **out) {
    comm *c = calloc(1, sizeof *c);
    mpi_impl *m = calloc(1, sizeof *m);
    MPI_Comm node = MPI_COMM_NULL;
    int inited = 0, finalized = 0, provided = 0;
    if (!c || !m) {
        sk_fail(SK_ENOMEM, "comm: out of memory");
        goto err;
    }
    m->world = m->diag = MPI_COMM_NULL;
    m->win = MPI_WIN_NULL;
    m->ping_req = MPI_REQUEST_NULL;
    MPI_CHECK(MPI_Finalized(&finalized));
    if (finalized) {
        sk_fail(SK_ESTATE, "comm: MPI was finalized by an earlier communicator; one per process");
        goto err;
    }
    MPI_CHECK(MPI_Initialized(&inited));
    if (!inited) {
        MPI_CHECK(MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided));
        m->initialized_mpi = 1;
    }
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &m->world));
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &m->diag));
    MPI_CHECK(MPI_Comm_rank(m->world, &c->rank));
    MPI_CHECK(MPI_Comm_size(m->world, &c->world));
    MPI_CHECK(MPI_Comm_split_type(m->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &c->local_rank));
    MPI_CHECK(MPI_Comm_free(&node));
    m->pong_out = calloc((size_t)c->world, sizeof *m->pong_out);
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
    m->chunk = comm_chunk_limit();
    c->ops = &mpi_ops;
    c->name = "mpi";
    c->timeout_s = timeout_s;
    c->impl = m;
    /* The counter is zero before anyone adds to it. A rank missing here ends the job (the
     * message is printed by the barrier). */
    if (mpi_barrier(c) != SK_OK) comm_mpi_abort(c);
    *out = c;
    return SK_OK;
err:
    if (c && m && m->world != MPI_COMM_NULL && c->world > 1) {
        /* Other ranks may be waiting for this one in a collective setup call. */
        fprintf(stderr, "skein: rank %d: %s\n", c->rank, sk_errmsg());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    if (m) {
        free(m->pong_out);
        free(m->pong_req);
    }
    free(m);
    free(c);
    return SK_ECOMM;
}

#endif /* SKEIN_HAVE_MPI */
