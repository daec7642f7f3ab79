/* replica: one engine and the thread that runs it (see serve_impl.h for the structures and
 * the locking, router.h for what replicas are for).
 *
 * The thread builds the replica's model and engine without the router's lock (on the CPU an
 * inference model over the router's shared mapping: no weight is read or copied; on CUDA its
 * own backend on its device and a model over the same mapping, whose device copy every
 * replica on that device shares: devw.h), then loops under the lock: admit the
 * incoming requests, cancel the abandoned ones, run one engine step without the lock,
 * deliver the step's tokens. It leaves the loop when the supervisor stops it (drained, or the
 * server stops: what is still here then ends with an error), when a step fails (the router
 * hands its requests back), or when the supervisor gave it up while it stalled (orphaned:
 * its requests already went elsewhere, and it frees itself). It frees its engine and model
 * itself, on its own thread, before it is joined.
 *
 * A process replica (--replica-process, rproc.h) runs the same loop; only its engine is in a
 * child process forked by its thread, which builds it there as the thread would here: adding,
 * cancelling and stepping go to the child, a dead child fails the step like an engine error,
 * and while idle the thread pings the child every REPLICA_HEARTBEAT_MS, so that a child that
 * dies idle is replaced at once. On CUDA (one rank) the children on a device share one device
 * copy of the weights across processes (devw.h): the first child there makes it in exported
 * memory and hands its descriptor to its thread (rproc_share), the router keeps it
 * (router_copy) and every later child on the device inherits it and maps the copy. A child
 * that starts while another on its device makes the copy waits for it, so that there is one. */
#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "comm/comm.h"
#include "model/devw.h"
#include "serve/rproc.h"
#include "serve/serve_impl.h"

#define REPLICA_HANG_POLL_MS 5
#define REPLICA_HEARTBEAT_MS 500   /* an idle split-model or process replica wakes this often */

sk_status replica_weights(router *rt) {
    return rt->base ? SK_OK : model_open_weights(rt->dir, rt->cpu, &rt->base);
}

/* Builds rep's model and engine in this process (its thread without the lock, or its child). */
static sk_status replica_build_engine(replica *rep) {
    router *rt = rep->rt;
    omp_set_num_threads(rt->o.threads);   /* this thread's parallel regions: the engine's ops */
    comm *c = rt->o.tp;
    if (rt->o.tp_ranks > 1) SK_TRY(replica_tp_join(rep, &c));   /* a process replica's child: K ranks */
    SK_TRY(replica_weights(rt));
    if (rep->device >= 0) {
        const int n = backend_device_count("cuda");   /* backend_create_on would wrap the id around */
        const int dev = rt->o.tp_ranks > 1 ? c->local_rank : rep->device;   /* ranks: a GPU each */
        if (rt->o.tp_ranks <= 1 && dev >= n)
            return sk_fail(SK_EARG, "CUDA device %d cannot be used: this process sees %d (see --devices)", dev, n);
        /* on its device, made this thread's current one */
        if (!(rep->own_be = backend_create_on("cuda", dev))) return SK_EARG;
    } else if (!(rep->own_be = backend_create("cpu"))) {   /* a backend serves one thread (backend.h) */
        return SK_EARG;
    }
    /* over the router's mapping: read in place on the CPU; the replicas on a device share one
     * device copy (devw.h) */
    SK_TRY(model_open_wts_split(&rt->base->cfg, rt->base->weights, rep->own_be, c, &rep->m));
    return engine_create(rep->m, &rt->eo, &rep->e);
}

/* Whether rep's child shares its device's copy of the weights with the other children (a
 * process replica of one rank on CUDA). */
static bool replica_shares_copy(const replica *rep) {
    return rep->rt->o.process && rep->device >= 0 && rep->rt->o.tp_ranks <= 1;
}

/* What a process replica's child builds from (rproc's setup bytes): the router's options that
 * bear on its engine, its id and devices. Both ends are one executable. */
typedef struct replica_setup {
    char dir[4096], name[SERVE_NAME_BYTES];
    int id, device, slot;
    int threads, tp_ranks;
    double comm_timeout_s;
    int devices[ROUTER_MAX_DEVICES], n_devices;
    engine_opts eo;
    bool hang;               /* SKEIN_TEST_FAIL_REPLICA's ID:0:hang: the build never ends */
} replica_setup;

static void replica_setup_of(const replica *rep, replica_setup *s) {
    const router *rt = rep->rt;
    memset(s, 0, sizeof *s);
    memcpy(s->dir, rt->dir, sizeof s->dir);
    memcpy(s->name, rt->name, sizeof s->name);
    s->id = rep->id;
    s->device = rep->device;
    s->slot = rep->slot;
    s->threads = rt->o.threads;
    s->tp_ranks = rt->o.tp_ranks;
    s->comm_timeout_s = rt->o.comm_timeout_s;
    memcpy(s->devices, rt->o.devices, sizeof s->devices);
    s->n_devices = rt->o.n_devices;
    s->eo = rt->eo;
    s->hang = router_fault_at(rt, rep->id, 0) != NULL;
}

/* rproc_build_fn: a process replica's engine, built in its child from the replica_setup; on
 * CUDA its device copy of the weights mapped from the one given, or made and handed back
 * (devw_ipc_use). The child's router holds what the build reads; it lives as long as the child. */
static sk_status replica_build_child(const void *setup, size_t len, rproc_share given, engine **e, rproc_share *share) {
    static router rt;
    static replica rep;
    replica_setup s;
    if (len != sizeof s) return sk_fail(SK_ESTATE, "a setup of %zu bytes, not %zu", len, sizeof s);
    memcpy(&s, setup, sizeof s);
    rt.o = router_opts_default();
    rt.o.process = true;
    rt.o.device = s.device >= 0 ? "cuda" : "cpu";
    rt.o.threads = s.threads;
    rt.o.tp_ranks = s.tp_ranks;
    rt.o.comm_timeout_s = s.comm_timeout_s;
    memcpy(rt.o.devices, s.devices, sizeof rt.o.devices);
    rt.o.n_devices = s.n_devices;
    memcpy(rt.dir, s.dir, sizeof rt.dir);
    memcpy(rt.name, s.name, sizeof rt.name);
    rt.o.dir = rt.dir;
    rt.o.name = rt.name;
    rt.eo = s.eo;
    if (!(rt.cpu = backend_create("cpu"))) return SK_EARG;
    rep = (replica){.rt = &rt, .id = s.id, .device = s.device, .slot = s.slot};
    while (s.hang) pause();   /* until killed */
    if (replica_shares_copy(&rep)) devw_ipc_use((devw_ipc){.fd = given.fd, .bytes = (size_t)given.bytes});
    SK_TRY(replica_build_engine(&rep));
    if (replica_shares_copy(&rep) && rep.m->dev) {
        const devw_ipc x = devw_ipc_of(rep.m->dev);
        *share = (rproc_share){.fd = x.fd, .bytes = x.bytes};
    }
    *e = rep.e;
    return SK_OK;
}

_Noreturn void router_replica_child(void) {
    rproc_child_run(replica_build_child);
}

/* The router's entry for the copy on rep's device, made when missing (mu held). */
static router_copy *replica_copy(replica *rep) {
    router *rt = rep->rt;
    for (int i = 0; i < rt->n_copies; i++)
        if (rt->copies[i].device == rep->device) return &rt->copies[i];
    SK_ASSERT(rt->n_copies < ROUTER_MAX_DEVICES);   /* a device of --devices, or device 0 */
    router_copy *c = &rt->copies[rt->n_copies++];
    *c = (router_copy){.device = rep->device, .share = {.fd = -1}};
    return c;
}

/* What rep's child is given: the device's copy, or none (fd -1) when its child is to make it
 * -- then the others on the device wait until replica_copy_settle. Its thread, without mu. */
static rproc_share replica_copy_claim(replica *rep) {
    router *rt = rep->rt;
    if (!replica_shares_copy(rep)) return (rproc_share){.fd = -1};
    pthread_mutex_lock(&rt->mu);
    router_copy *c = replica_copy(rep);
    while (c->making && !rt->stopping) pthread_cond_wait(&rt->changed, &rt->mu);
    const rproc_share s = c->share;
    if (s.fd < 0) c->making = true;
    pthread_mutex_unlock(&rt->mu);
    return s;
}

/* After rep's child started (or failed to): the copy it made (got) is kept when it was to make
 * one, else closed, and the replicas waiting for it go on. Its thread, without mu. */
static void replica_copy_settle(replica *rep, rproc_share gave, rproc_share got) {
    router *rt = rep->rt;
    if (!replica_shares_copy(rep)) return;
    pthread_mutex_lock(&rt->mu);
    router_copy *c = replica_copy(rep);
    if (gave.fd < 0) {
        c->making = false;
        if (got.fd >= 0 && c->share.fd < 0) {
            c->share = got;
            got.fd = -1;
            fprintf(stderr, "skein serve: model %s: replica %d (process %d) made the device copy of the weights on cuda "
                    "device %d (%.2f GB): the replica processes that start there later map it\n", rt->name, rep->id,
                    (int)rproc_pid(rep->proc), rep->device, (double)c->share.bytes / 1e9);
        }
        pthread_cond_broadcast(&rt->changed);
    }
    pthread_mutex_unlock(&rt->mu);
    if (got.fd >= 0) close(got.fd);
}

/* Starts rep's child and waits until its engine is built; rep->proc is set under the lock
 * while it builds, so that router_stop can kill it (its thread, without the lock). */
static sk_status replica_build_process(replica *rep) {
    router *rt = rep->rt;
    const rproc_share give = replica_copy_claim(rep);
    replica_setup s;
    replica_setup_of(rep, &s);
    rproc *p = NULL;
    rproc_share got = {.fd = -1};
    sk_status st = rproc_spawn(&s, sizeof s, give, &p);
    if (st == SK_OK) {
        pthread_mutex_lock(&rt->mu);
        rep->proc = p;
        if (rt->stopping) rproc_kill(p);
        pthread_mutex_unlock(&rt->mu);
        st = rproc_ready(p, &got);
    }
    replica_copy_settle(rep, give, got);
    if (st != SK_OK && p) {
        pthread_mutex_lock(&rt->mu);
        rep->proc = NULL;
        pthread_mutex_unlock(&rt->mu);
        rproc_free(p);
    }
    return st;
}

/* Builds rep's engine, here or in its child process (its thread, without the lock). */
static sk_status replica_build(replica *rep) {
    router *rt = rep->rt;
    SK_TRY(rt->o.process ? replica_build_process(rep) : replica_build_engine(rep));
    rep->piece_cap = tok_stream_cap(rt->t);
    if (!(rep->piece = mem_alloc(rep->piece_cap))) return sk_fail(SK_ENOMEM, "serve: out of memory");
    return SK_OK;
}

/* Frees what replica_build made (its thread, without the lock). */
static void replica_unbuild(replica *rep) {
    rproc_free(rep->proc);
    engine_free(rep->e);
    model_free(rep->m);
    backend_free(rep->own_be);
    mem_free(rep->piece);
}

/* The engine's calls, on this thread's engine or the child's (its thread). */
static sk_status replica_engine_add(replica *rep, serve_req *r) {
    if (rep->proc) return rproc_add(rep->proc, r->prompt, r->n_prompt, &r->p, &r->eid);
    return engine_add_request(rep->e, r->prompt, r->n_prompt, &r->p, &r->eid);
}

static void replica_engine_cancel(replica *rep, int eid) {
    if (rep->proc) rproc_cancel(rep->proc, eid);
    else engine_cancel(rep->e, eid);
}

static bool replica_has_work(const replica *rep) {
    return rep->proc ? rproc_has_work(rep->proc) : engine_has_work(rep->e);
}

/* Moves the incoming requests into the engine (mu held). */
static void replica_admit(replica *rep) {
    router *rt = rep->rt;
    serve_req *r;
    while ((r = req_queue_pop(&rep->in))) {
        if (r->abandoned) {
            router_finish(rt, r, "cancelled", NULL);
            continue;
        }
        req_queue_push(&rep->live, r);
        tok_stream_init(&r->ts, rt->t);
        if (replica_engine_add(rep, r) != SK_OK)
            router_finish(rt, r, "error", sk_errmsg());
    }
}

static void replica_cancel_abandoned(replica *rep) {
    for (serve_req *r = rep->live.head, *next; r && rep->n_abandoned; r = next) {
        next = r->next;
        if (!r->abandoned) continue;
        replica_engine_cancel(rep, r->eid);   /* its blocks are free now (a child's: at its next step) */
        router_finish(rep->rt, r, "cancelled", NULL);
    }
}

/* gen_emit_fn: appends text to the request's output (mu held). */
static void replica_emit(void *ctx, const char *text, size_t n) {
    serve_req *r = ctx;
    if (r->n_out + n + 1 > r->cap_out) {
        size_t cap = (r->n_out + n + 1) * 2;
        char *p = mem_realloc(r->out, cap);
        if (!p) { r->oom = true; return; }
        r->out = p;
        r->cap_out = cap;
    }
    memcpy(r->out + r->n_out, text, n);
    r->n_out += n;
    r->out[r->n_out] = 0;
}

static void replica_record_lp(serve_req *r, const engine_output *o) {
    if (r->n_lp == r->cap_lp) {
        int cap = r->cap_lp ? 2 * r->cap_lp : 16;
        serve_lp *p = mem_realloc(r->lp, sizeof *p * (size_t)cap);
        if (p) { r->lp = p; r->cap_lp = cap; } else r->oom = true;
    }
    if (r->n_lp < r->cap_lp) {
        serve_lp *l = &r->lp[r->n_lp++];
        *l = (serve_lp){.token = o->token, .n_top = o->n_top, .logprob = o->logprob};
        memcpy(l->top_ids, o->top_ids, sizeof l->top_ids);
        memcpy(l->top_logprobs, o->top_logprobs, sizeof l->top_logprobs);
    }
}

/* A new token of r (mu held): timing, load, the replica's first-token log line. */
static void replica_count_token(replica *rep, serve_req *r) {
    const double now = time_now();
    const long used = r->n_gen == 0 ? r->n_prompt + 1 : 1;   /* the prompt stops counting at its first token */
    r->n_gen++;
    if (r->n_gen == 1) r->t_first = now;
    r->t_last = now;
    r->cost -= used;
    rep->load -= used;
    rep->rt->gen_tokens++;
    if (!rep->first_logged) {
        rep->first_logged = true;
        fprintf(stderr, "skein serve: model %s: replica %d produced its first token %.2f ms after it started\n",
                rep->rt->name, rep->id, 1e3 * (now - rep->t_start));
    }
}

/* One engine output for its request (mu held): the token decoded, stop strings applied, the end. */
static void replica_deliver(replica *rep, const engine_output *o) {
    router *rt = rep->rt;
    serve_req *r = rep->live.head;
    while (r && r->eid != o->id) r = r->next;
    if (!r) return;   /* already finished here (a stop string, a cancel) */
    bool stopped = false;
    if (o->token >= 0 && r->p.logprobs) replica_record_lp(r, o);
    if (o->token >= 0) {
        replica_count_token(rep, r);
        /* special tokens leave the text unless asked for (as HF's decode with skip_special_tokens) */
        size_t k = r->keep_special || !tok_is_special(rt->t, o->token) ? tok_stream_put(&r->ts, o->token, rep->piece, rep->piece_cap) : 0;
        if (gen_text_put(&r->text, rep->piece, k, false, replica_emit, r, &stopped) != SK_OK) r->oom = true;
        if (stopped) {
            replica_engine_cancel(rep, r->eid);
            router_finish(rt, r, "stop", NULL);
            return;
        }
        if (r->stream && r->n_out && r->wake) pthread_cond_signal(r->wake);   /* its handler sends the text now */
    }
    if (!o->finish) return;
    if (!strcmp(o->finish, "error")) {   /* a replica process's engine refused it */
        router_finish(rt, r, "error", "the replica's engine refused the request (the server's log says why)");
        return;
    }
    size_t k = tok_stream_flush(&r->ts, rep->piece, rep->piece_cap);
    if (gen_text_put(&r->text, rep->piece, k, true, replica_emit, r, &stopped) != SK_OK) r->oom = true;
    router_finish(rt, r, !strcmp(o->finish, "length") && !stopped ? "length" : "stop", NULL);
}

/* Refreshes rep's gauges from its engine (mu held). */
static void replica_gauges(replica *rep) {
    if (rep->proc) rproc_gauges(rep->proc, &rep->stats);
    else rproc_engine_gauges(rep->e, &rep->stats);
}

/* One engine step, or the test hook's failure at this step (its thread, without the lock).
 * A hanging step returns only once the watchdog has given the replica up (or the server
 * stops), as a stuck device call would be abandoned. */
static sk_status replica_step(replica *rep, const engine_output **out, int *n_out) {
    router *rt = rep->rt;
    const router_fault *f = router_fault_at(rt, rep->id, ++rep->steps);
    if (!f) return rep->proc ? rproc_step(rep->proc, out, n_out) : engine_step(rep->e, out, n_out);
    if (f->hang) {
        pthread_mutex_lock(&rt->mu);
        while (!rep->orphaned && !rt->stopping) serve_wait_ms(&rep->wake, &rt->mu, REPLICA_HANG_POLL_MS);
        pthread_mutex_unlock(&rt->mu);
    }
    return sk_fail(SK_ESTATE, "SKEIN_TEST_FAIL_REPLICA: step %llu %s (a test hook)", (unsigned long long)rep->steps,
                   f->hang ? "hung" : "failed");
}

static void *replica_main(void *arg) {
    replica *rep = arg;
    router *rt = rep->rt;
    char why[256] = "";
    sk_status st = replica_build(rep);
    if (st != SK_OK) snprintf(why, sizeof why, "%s", sk_errmsg());
    pthread_mutex_lock(&rt->mu);
    if (st != SK_OK) {
        rep->fail_status = st;
        router_replica_down(rt, rep, why);
    } else {
        replica_gauges(rep);
        router_replica_ready(rt, rep);
    }
    while (rep->state != REPLICA_DOWN && !rep->stop) {
        if (!rep->in.n && !rep->n_abandoned && !replica_has_work(rep)) {
            if (!rt->o.tp && !rep->proc) {
                pthread_cond_wait(&rep->wake, &rt->mu);
                continue;
            }
            /* a split model: the other ranks wait for the next step within their timeout; a
             * process: its health */
            serve_wait_ms(&rep->wake, &rt->mu, REPLICA_HEARTBEAT_MS);
            if (rep->in.n || rep->n_abandoned || rep->stop) continue;
            pthread_mutex_unlock(&rt->mu);
            st = rep->proc ? rproc_ping(rep->proc) : engine_heartbeat(rep->e);
            if (st != SK_OK) snprintf(why, sizeof why, "%s", sk_errmsg());
            pthread_mutex_lock(&rt->mu);
            if (st != SK_OK) {
                router_replica_down(rt, rep, why);
                break;
            }
            continue;
        }
        replica_admit(rep);
        replica_cancel_abandoned(rep);
        if (!replica_has_work(rep)) continue;
        const engine_output *out = NULL;
        int n_out = 0;
        rep->step_started = time_now();
        pthread_mutex_unlock(&rt->mu);
        st = replica_step(rep, &out, &n_out);
        if (st != SK_OK) snprintf(why, sizeof why, "its engine step failed: %s", sk_errmsg());
        pthread_mutex_lock(&rt->mu);
        rep->step_started = 0;
        if (rep->orphaned) break;
        if (st != SK_OK) {
            router_replica_down(rt, rep, why);
            break;
        }
        for (int i = 0; i < n_out; i++) replica_deliver(rep, &out[i]);
        replica_gauges(rep);
    }
    if (!rep->orphaned) {   /* stopped: end what is still here (a drained replica has nothing) */
        serve_req *r;
        while ((r = rep->in.head ? rep->in.head : rep->live.head))
            router_finish(rt, r, "error", "the server is shutting down");
    }
    pthread_mutex_unlock(&rt->mu);
    replica_unbuild(rep);
    pthread_mutex_lock(&rt->mu);
    if (rep->orphaned) {
        rt->n_orphans--;
        pthread_cond_broadcast(&rt->changed);
        pthread_mutex_unlock(&rt->mu);
        replica_free(rep);   /* detached: nobody joins it */
        return NULL;
    }
    rep->exited = true;   /* from here on only the unlock: the supervisor may join at once */
    pthread_cond_signal(&rt->tick);
    pthread_mutex_unlock(&rt->mu);
    return NULL;
}

replica *replica_start(router *rt, int id, int device, int slot) {
    replica *rep = mem_calloc(sizeof *rep);
    if (!rep) return NULL;
    rep->rt = rt;
    rep->id = id;
    rep->device = device;
    rep->slot = slot;
    rep->state = REPLICA_STARTING;
    rep->t_start = time_now();
    rep->stats.id = id;
    pthread_cond_init(&rep->wake, NULL);
    if (pthread_create(&rep->thread, NULL, replica_main, rep)) {
        sk_fail(SK_ESTATE, "serve: cannot start the thread of replica %d", id);
        replica_free(rep);
        return NULL;
    }
    return rep;
}

void replica_enqueue(replica *rep, serve_req *r) {
    r->rep = rep;
    rep->load += r->cost;
    rep->n_reqs++;
    req_queue_push(&rep->in, r);
    pthread_cond_signal(&rep->wake);
}

void replica_free(replica *rep) {
    if (!rep) return;
    pthread_cond_destroy(&rep->wake);
    mem_free(rep);
}
