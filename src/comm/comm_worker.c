/* comm_worker: the communication thread of comm_worker.h. */
#include "comm/comm_worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { WORK_IDLE, WORK_QUEUED, WORK_RUNNING, WORK_DONE };

static comm_worker *worker_of(comm *c) { return c->impl; }

static void nap(long ns) {
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

/* Under mu: request r finished with st (message from this thread's sk_errmsg when failed).
 * A failure breaks the comm and fails every queued request. */
static void worker_finish(comm *c, comm_req *r, sk_status st) {
    comm_worker *w = worker_of(c);
    comm_slot *s = &w->slot[r->slot];
    s->state = WORK_DONE;
    s->st = st;
    if (st != SK_OK) {
        snprintf(s->msg, sizeof s->msg, "%s", sk_errmsg());
        fprintf(stderr, "skein: rank %d: %s\n", c->rank, s->msg);
        w->broken = true;
        for (; w->q_len > 0; w->q_len--, w->q_head = (w->q_head + 1) % COMM_MAX_REQS) {
            comm_req *q = w->queue[w->q_head];
            comm_slot *qs = &w->slot[q->slot];
            qs->state = WORK_DONE;
            qs->st = SK_ECOMM;
            snprintf(qs->msg, sizeof qs->msg, "%s: not started, the communicator broke in %s before it", q->op, r->op);
        }
    }
    pthread_cond_broadcast(&w->done);
}

/* The thread: setup, then requests in queue order until stopped. While a request runs it
 * polls; idle, it sleeps 1 ms at a time (calling ops->idle in between). */
static void *worker_main(void *arg) {
    comm *c = arg;
    comm_worker *w = worker_of(c);
    const comm_worker_ops *ops = w->ops;
    sk_status st = ops->setup(c);
    pthread_mutex_lock(&w->mu);
    w->setup = st == SK_OK ? 1 : -1;
    if (st != SK_OK) snprintf(w->setup_msg, sizeof w->setup_msg, "%s", sk_errmsg());
    pthread_cond_broadcast(&w->done);
    pthread_mutex_unlock(&w->mu);
    if (st != SK_OK) return NULL;
    comm_req *r = NULL;
    for (long spins = 0;;) {
        pthread_mutex_lock(&w->mu);
        w->heartbeat++;
        if (w->abort_now && ops->abort) ops->abort(c);
        if (!r && w->q_len > 0) {
            r = w->queue[w->q_head];
            w->q_head = (w->q_head + 1) % COMM_MAX_REQS;
            w->q_len--;
            w->slot[r->slot].state = WORK_RUNNING;
            atomic_store(&w->running, w->slot[r->slot].seq);
            spins = 0;
        }
        if (!r) {
            if (w->stop) {
                pthread_mutex_unlock(&w->mu);
                break;
            }
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 1000000;
            if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&w->wake, &w->mu, &until);
            pthread_mutex_unlock(&w->mu);
            if (ops->idle) ops->idle(c);
            continue;
        }
        pthread_mutex_unlock(&w->mu);
        comm_slot *s = &w->slot[r->slot];
        size_t step = s->step;
        int rc = s->staged ? comm_stage_progress(w->stage, c, r, s, ops->progress) : ops->progress(c, r, s);
        if (s->step != step) spins = 0;   /* a piece completed: keep going fast */
        if (ops->idle) ops->idle(c);
        if (rc != 0) {
            pthread_mutex_lock(&w->mu);
            atomic_store(&w->running, 0);
            worker_finish(c, r, rc > 0 ? SK_OK : SK_ECOMM);
            pthread_mutex_unlock(&w->mu);
            r = NULL;
            continue;
        }
        /* Spin briefly for latency, then yield the core to the computing threads. */
        if (++spins > 200) nap(spins > 20000 ? 200000 : 20000);
    }
    ops->teardown(c);
    return NULL;
}

sk_status comm_worker_init(comm *c, const comm_worker_ops *ops) {
    comm_worker *w = worker_of(c);
    w->ops = ops;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->wake, NULL);
    pthread_cond_init(&w->done, NULL);
    if (pthread_create(&w->thread, NULL, worker_main, c) != 0)
        return sk_fail(SK_ECOMM, "comm: cannot start the %s communication thread", c->name);
    w->thread_up = true;
    pthread_mutex_lock(&w->mu);
    while (w->setup == 0) pthread_cond_wait(&w->done, &w->mu);
    pthread_mutex_unlock(&w->mu);
    if (w->setup > 0) return SK_OK;
    pthread_join(w->thread, NULL);
    w->thread_up = false;
    return sk_fail(SK_ECOMM, "%s", w->setup_msg);
}

sk_status comm_worker_start(comm *c, comm_req *r) {
    comm_worker *w = worker_of(c);
    pthread_mutex_lock(&w->mu);
    if (w->broken) {
        pthread_mutex_unlock(&w->mu);
        return sk_fail(SK_ECOMM, "%s: the communicator is broken by an earlier failure", r->op);
    }
    comm_slot *s = &w->slot[r->slot];
    s->state = WORK_QUEUED;
    s->seq = r->kind == COMM_FETCH_ADD ? 0 : atomic_fetch_add(&w->posted, 1) + 1;
    s->st = SK_OK;
    s->msg[0] = 0;
    s->step = 0;
    s->t0 = 0;
    s->staged = comm_stage_begin(w->stage, r);
    w->queue[(w->q_head + w->q_len) % COMM_MAX_REQS] = r;
    w->q_len++;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->mu);
    return SK_OK;
}

/* Under mu: the result of a done slot, its message re-recorded on this thread. */
static sk_status worker_result(comm_slot *s) {
    return s->st == SK_OK ? SK_OK : sk_fail(s->st, "%s", s->msg);
}

sk_status comm_worker_wait(comm *c, comm_req *r) {
    comm_worker *w = worker_of(c);
    comm_slot *s = &w->slot[r->slot];
    pthread_mutex_lock(&w->mu);
    uint64_t beat = w->heartbeat;
    double seen = time_now();
    while (s->state != WORK_DONE) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&w->done, &w->mu, &until);
        if (w->heartbeat != beat) {
            beat = w->heartbeat;
            seen = time_now();
        } else if (s->state != WORK_DONE && time_now() - seen > c->timeout_s + 30) {
            w->broken = true;
            pthread_mutex_unlock(&w->mu);
            return sk_fail(SK_ECOMM, "%s: the communication thread of rank %d has not answered for %.0f s (stuck "
                           "inside %s)", r->op, c->rank, c->timeout_s + 30, c->name);
        }
    }
    s->state = WORK_IDLE;
    sk_status st = worker_result(s);
    pthread_mutex_unlock(&w->mu);
    return st;
}

sk_status comm_worker_test(comm *c, comm_req *r, bool *done) {
    comm_worker *w = worker_of(c);
    comm_slot *s = &w->slot[r->slot];
    pthread_mutex_lock(&w->mu);
    *done = s->state == WORK_DONE;
    sk_status st = *done ? worker_result(s) : SK_OK;
    pthread_mutex_unlock(&w->mu);
    return st;
}

sk_status comm_worker_set_backend(comm *c, backend *be) {
    comm_worker *w = worker_of(c);
    comm_stage *st = NULL;
    if (be) SK_TRY(comm_stage_init(c, be, &st));
    pthread_mutex_lock(&w->mu);
    comm_stage *old = w->stage;
    w->stage = st;
    bool keep = w->broken;
    pthread_mutex_unlock(&w->mu);
    if (!keep) comm_stage_free(old);
    return SK_OK;
}

bool comm_worker_broken(comm *c) {
    comm_worker *w = worker_of(c);
    pthread_mutex_lock(&w->mu);
    bool broken = w->broken;
    pthread_mutex_unlock(&w->mu);
    return broken;
}

bool comm_worker_abort(comm *c) {
    comm_worker *w = worker_of(c);
    pthread_mutex_lock(&w->mu);
    bool up = w->thread_up && w->setup == 1 && !w->stop;
    w->abort_now = true;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->mu);
    return up;
}

void comm_worker_stop(comm *c) {
    comm_worker *w = worker_of(c);
    if (w->thread_up) {
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
        w->thread_up = false;
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->wake);
    pthread_cond_destroy(&w->done);
}
