/* comm_worker: the communication thread that comm_mpi and comm_gloo share; not for callers.
 *
 * One thread per comm makes every call into the library. Callers queue requests (start)
 * and sleep on a condition variable (wait); the thread takes the requests in queue order,
 * one at a time, and hands each to the implementation's progress function until it reports
 * the request complete or failed. So a reduce-scatter progresses while the caller computes,
 * and every rank issues the same library calls in the same order whatever the timing.
 *
 * Collectives are numbered from 1 in the order the caller starts them (fetch_add counts as
 * none: seq 0); `posted` is how many the caller has started, `running` the one the thread
 * works on, for the implementation's diagnosis of a timeout.
 *
 * Device buffers: with a device backend set (comm_worker_set_backend) the typed collectives
 * are staged through pinned host memory piece by piece on the thread (comm_stage.h); the
 * implementation's progress sees host requests only.
 *
 * Invariants: a failed request breaks the comm: every queued request fails with it and every
 * later start fails at once. A caller that waits on a thread which stopped turning for
 * timeout + 30 s gets SK_ECOMM. The implementation's struct (c->impl) begins with its
 * comm_worker, so the caller-side functions below are comm_ops entries as they are. Fields
 * marked "thread" are touched by the thread only; the rest under mu. */
#ifndef SKEIN_COMM_WORKER_H
#define SKEIN_COMM_WORKER_H

#include <pthread.h>
#include <stdatomic.h>

#include "comm/comm_impl.h"
#include "comm/comm_stage.h"

/* One request slot (comm_req.slot). */
typedef struct comm_slot {
    int state;             /* WORK_*; under mu */
    int64_t seq;           /* collective number, 1-based (0: fetch_add) */
    sk_status st;          /* result, with msg, once done */
    char msg[1024];
    size_t step;           /* thread: the implementation's progress within the request (0 at start) */
    double t0;             /* thread: for the implementation (0 at start) */
    bool staged;           /* device buffers through pinned host memory (comm_stage.h) */
} comm_slot;

typedef struct comm_worker_ops {
    /* Thread, first: brings the library up (may set c->rank, world, local_rank). */
    sk_status (*setup)(comm *c);
    /* Thread: advances request r (slot s) as far as it goes. 0 while it runs, 1 when
     * complete, -1 on failure with the message recorded (sk_fail). */
    int (*progress)(comm *c, comm_req *r, comm_slot *s);
    /* Thread: called between turns, idle or busy (MPI answers pings there); may be NULL. */
    void (*idle)(comm *c);
    /* Thread: after the last request, when stopped. */
    void (*teardown)(comm *c);
    /* Thread: ends the whole job now (after comm_worker_abort); NULL: the caller ends it. */
    void (*abort)(comm *c);
} comm_worker_ops;

typedef struct comm_worker {
    const comm_worker_ops *ops;
    pthread_t thread;
    bool thread_up;        /* the thread was created and not joined */
    pthread_mutex_t mu;
    pthread_cond_t wake;   /* to the thread: work queued, stop, abort */
    pthread_cond_t done;   /* to callers: a request is done, or the start-up ended */
    comm_req *queue[COMM_MAX_REQS];   /* FIFO of started requests */
    int q_head, q_len;
    comm_slot slot[COMM_MAX_REQS];
    _Atomic int64_t posted;    /* collectives the caller has started */
    _Atomic int64_t running;   /* the collective the thread works on (0: none) */
    uint64_t heartbeat;    /* thread loop turns: the caller's proof of life */
    bool broken;           /* a request failed: the world is unusable */
    bool stop, abort_now;  /* requests to the thread */
    comm_stage *stage;     /* the backend's buffers staged (comm_worker_set_backend), or NULL */
    int setup;             /* 0 starting, 1 up, -1 failed (setup_msg) */
    char setup_msg[1024];
} comm_worker;

/* Starts the thread of c (whose impl begins with a zeroed comm_worker) and waits for its
 * setup. On failure the thread is joined and the message recorded; the caller frees. */
sk_status comm_worker_init(comm *c, const comm_worker_ops *ops);
/* comm_ops entries: queue r; wait for r; whether r is done. */
sk_status comm_worker_start(comm *c, comm_req *r);
sk_status comm_worker_wait(comm *c, comm_req *r);
sk_status comm_worker_test(comm *c, comm_req *r, bool *done);
/* comm_ops.set_backend: the typed collectives' buffers are be's memory from now on (NULL:
 * host memory again); device memory is staged (comm_stage.h). Nothing may be in flight. After
 * a failure the staging is left allocated: the thread may still hold it, and the job ends. */
sk_status comm_worker_set_backend(comm *c, backend *be);
/* Whether a request failed (the comm is broken). */
bool comm_worker_broken(comm *c);
/* Stops the thread after the queued requests and joins it; releases the worker's own
 * resources (not c or c->impl). Safe on a worker whose init failed. */
void comm_worker_stop(comm *c);
/* Asks the thread to run ops->abort at its next turn; returns whether it is up to do so. */
bool comm_worker_abort(comm *c);

#endif
