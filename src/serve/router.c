/* router: a model's replicas, the routing of its requests, the autoscaler and the
 * supervisor (see router.h; the structures and the locking are in serve_impl.h).
 *
 * The supervisor thread wakes every ROUTER_TICK_MS (or when a replica exits) and, under the
 * lock: joins the replicas that exited (drained, failed or stopped) and frees them; gives up
 * the replicas whose step has run past replica_timeout_s (their requests handed back, their
 * threads detached: orphans free themselves); applies the autoscaling policy (the target
 * count, drains); starts replicas until as many are starting or up as the target says.
 * Starting is not waiting: a replica's own thread builds its engine and calls
 * router_replica_ready, which routes the requests that waited for one.
 *
 * Invariants: a request in flight is in exactly one queue -- rt->pending (r->rep NULL) or
 * its replica's in or live (r->rep set) -- and counted in rt->n_inflight; rep->load is the
 * sum of its requests' cost, rep->n_reqs their number. Affinity entries name replica ids,
 * which are never reused, so an entry of a freed replica matches nothing. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"
#include "comm/comm.h"
#include "serve/rproc.h"
#include "serve/serve_impl.h"

#define ROUTER_TICK_MS 10
#define ROUTER_AFF_SLOTS 4096          /* prefix keys remembered (a power of 2) */
#define ROUTER_AFF_BLOCKS 64           /* leading blocks of a prompt that count for affinity */
#define ROUTER_RESTART_HOLD_S 1.0      /* after a replica failed to start, the next waits this long */
#define ROUTER_ORPHAN_WAIT_S 5.0       /* router_stop waits this long for stalled threads */

router_opts router_opts_default(void) {
    return (router_opts){.device = "cpu", .engine = engine_opts_default(), .max_queue = 64, .replicas = 1,
                         .min_replicas = 1, .max_replicas = 1, .target_ongoing = 2, .upscale_delay_s = 30,
                         .downscale_delay_s = 600, .replica_timeout_s = 300, .threads = 1};
}

const char *router_name(const router *rt) { return rt->name; }

/* ---- requests ---- */

void req_queue_push(req_queue *q, serve_req *r) {
    SK_ASSERT(!r->queue);
    r->next = NULL;
    if (q->tail) q->tail->next = r; else q->head = r;
    q->tail = r;
    q->n++;
    r->queue = q;
}

serve_req *req_queue_pop(req_queue *q) {
    serve_req *r = q->head;
    if (r) req_queue_remove(q, r);
    return r;
}

void req_queue_remove(req_queue *q, serve_req *r) {
    SK_ASSERT(r->queue == q);
    serve_req *prev = NULL;
    for (serve_req *p = q->head; p != r; p = p->next) prev = p;
    if (prev) prev->next = r->next; else q->head = r->next;
    if (q->tail == r) q->tail = prev;
    q->n--;
    r->next = NULL;
    r->queue = NULL;
}

void req_unref(serve_req *r) {
    if (--r->refs > 0) return;
    mem_free(r->prompt);
    mem_free(r->out);
    mem_free(r->lp);
    gen_text_free(&r->text);
    mem_free(r);
}

void serve_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ms * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    pthread_cond_timedwait(cv, mu, &ts);
}

/* ---- routing ---- */

static uint64_t router_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t router_rand(router *rt) { return router_mix(rt->rng += 0x9E3779B97F4A7C15ull); }

/* The chain keys of r's leading full prompt blocks (at most ROUTER_AFF_BLOCKS, and only the
 * blocks the KV cache could reuse: (n-1)/block_size, as kv_seq_match); key b names the
 * whole prefix of blocks 0..b. Never 0 (an empty slot). Returns how many. */
static int router_prefix_keys(const router *rt, const serve_req *r, uint64_t *keys) {
    const int bs = rt->eo.block_size;
    int nb = (r->n_prompt - 1) / bs;
    if (nb > ROUTER_AFF_BLOCKS) nb = ROUTER_AFF_BLOCKS;
    uint64_t h = 0x243F6A8885A308D3ull;
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < bs; i++) h = router_mix(h ^ (uint32_t)r->prompt[b * bs + i]);
        keys[b] = h | 1;
    }
    return nb;
}

static replica *router_find(const router *rt, int id) {
    for (int i = 0; i < rt->n_reps; i++)
        if (rt->reps[i]->id == id) return rt->reps[i];
    return NULL;
}

/* The replica that is up and last took a request with the longest of keys(n) as a prefix. */
static replica *router_affine(const router *rt, const uint64_t *keys, int n) {
    for (int b = n - 1; b >= 0; b--) {
        const size_t s = keys[b] & (ROUTER_AFF_SLOTS - 1);
        if (rt->aff_key[s] != keys[b]) continue;
        replica *rep = router_find(rt, rt->aff_rep[s]);
        if (rep && rep->state == REPLICA_UP) return rep;
    }
    return NULL;
}

/* The k-th replica that is up (k < their number). */
static replica *router_nth_up(const router *rt, int k) {
    for (int i = 0; i < rt->n_reps; i++)
        if (rt->reps[i]->state == REPLICA_UP && k-- == 0) return rt->reps[i];
    return NULL;
}

/* Puts r on a replica (power of two choices, prefix affinity) or, when none is up, on the
 * pending queue (mu held). */
static void router_route(router *rt, serve_req *r) {
    int n_up = 0;
    for (int i = 0; i < rt->n_reps; i++) n_up += rt->reps[i]->state == REPLICA_UP;
    if (n_up == 0) {
        r->rep = NULL;
        req_queue_push(&rt->pending, r);
        return;
    }
    replica *pick = router_nth_up(rt, 0);
    if (n_up > 1) {
        const int i = (int)(router_rand(rt) % (uint64_t)n_up);
        int j = (int)(router_rand(rt) % (uint64_t)(n_up - 1));
        j += j >= i;
        replica *a = router_nth_up(rt, i), *b = router_nth_up(rt, j);
        pick = a->load < b->load || (a->load == b->load && a->routed < b->routed) ? a : b;
    }
    uint64_t keys[ROUTER_AFF_BLOCKS];
    const int nk = router_prefix_keys(rt, r, keys);
    replica *aff = router_affine(rt, keys, nk);
    if (aff && aff != pick && aff->load + r->cost <= 2 * (pick->load + r->cost)) pick = aff;
    for (int b = 0; b < nk; b++) {
        const size_t s = keys[b] & (ROUTER_AFF_SLOTS - 1);
        rt->aff_key[s] = keys[b];
        rt->aff_rep[s] = pick->id;
    }
    pick->routed = ++rt->n_routed;
    replica_enqueue(pick, r);
}

bool router_submit(router *rt, serve_req *r, char *why, size_t cap) {
    const int limit = rt->target * rt->eo.max_seqs + rt->o.max_queue;
    if (rt->stopping || rt->finished) {
        snprintf(why, cap, rt->finished ? "the model %s failed: %s" : "the server is shutting down", rt->name, rt->failure);
        return false;
    }
    if (rt->n_inflight >= limit) {
        snprintf(why, cap, "the model %s has %d requests in flight, its limit; retry later", rt->name, limit);
        return false;
    }
    r->refs = 2;
    r->cost = (long)r->n_prompt + r->p.max_tokens;
    r->t_arrival = time_now();
    rt->n_inflight++;
    rt->prompt_tokens += (uint64_t)r->n_prompt;
    router_route(rt, r);
    return true;
}

void router_abandon(router *rt, serve_req *r) {
    if (r->done || r->abandoned) return;
    r->abandoned = true;
    if (!r->rep) {   /* waiting for a replica: nothing runs it */
        router_finish(rt, r, "cancelled", NULL);
        return;
    }
    r->rep->n_abandoned++;
    pthread_cond_signal(&r->rep->wake);
}

void router_finish(router *rt, serve_req *r, const char *finish, const char *err) {
    replica *rep = r->rep;
    if (r->queue) req_queue_remove(r->queue, r);
    if (err) snprintf(r->error, sizeof r->error, "%s", err);
    else if (r->oom) snprintf(r->error, sizeof r->error, "out of memory holding the generated text");
    const bool ok = !r->error[0] && (!strcmp(finish, "stop") || !strcmp(finish, "length"));
    if (rep) {
        rep->load -= r->cost;
        rep->n_reqs--;
        if (r->abandoned) rep->n_abandoned--;
        if (ok) rep->stats.requests++;
    }
    r->rep = NULL;
    r->cost = 0;
    r->done = true;
    r->finish = finish;
    rt->n_inflight--;
    if (ok) {
        metrics_hist_observe(&rt->e2e, time_now() - r->t_arrival);
        if (r->n_gen >= 1) metrics_hist_observe(&rt->ttft, r->t_first - r->t_arrival);
        if (r->n_gen >= 2) metrics_hist_observe(&rt->tpot, (r->t_last - r->t_first) / (r->n_gen - 1));
    }
    if (r->wake) pthread_cond_broadcast(r->wake);
    req_unref(r);
}

/* ---- replicas coming and going ---- */

void router_replica_ready(router *rt, replica *rep) {
    rep->t_ready = time_now();
    rep->stats.start_s = rep->t_ready - rep->t_start;
    if (rep->state == REPLICA_STARTING) rep->state = REPLICA_UP;
    char where[64], proc[32] = "";
    if (rep->device >= 0) snprintf(where, sizeof where, "cuda device %d", rep->device);
    else snprintf(where, sizeof where, "cpu, %d threads", rt->o.threads);
    if (rep->proc) snprintf(proc, sizeof proc, ", process %d", (int)rproc_pid(rep->proc));
    /* the cache dtype as resolved where the engine is in this process, else as asked */
    const dtype kv = rep->e ? kv_pool_dtype(engine_pool(rep->e)) : rt->eo.kv_dtype;
    fprintf(stderr, "skein serve: model %s: replica %d up in %.2f ms (%s, kv cache %s%s)\n", rt->name, rep->id,
            1e3 * rep->stats.start_s, where, kv_dtype_name(kv), proc);
    serve_req *r;
    while (rep->state == REPLICA_UP && (r = req_queue_pop(&rt->pending))) router_route(rt, r);
    pthread_cond_broadcast(&rt->changed);
}

/* A split model's replica failed (mu held): it cannot be replaced, so what it and the router
 * hold ends with an error and the router is finished (router.h). */
static void router_finish_all(router *rt, replica *rep, const char *why) {
    rt->finished = true;
    snprintf(rt->failure, sizeof rt->failure, "its %d ranks failed (%s)", rt->o.tp->world, why);
    char err[SERVE_NAME_BYTES + sizeof rt->failure + 16];
    snprintf(err, sizeof err, "model %s: %s", rt->name, rt->failure);
    req_queue *qs[3] = {&rep->in, &rep->live, &rt->pending};
    for (int q = 0; q < 3; q++) {
        serve_req *r;
        while ((r = qs[q]->head)) router_finish(rt, r, r->abandoned ? "cancelled" : "error", r->abandoned ? NULL : err);
    }
    if (rt->o.on_failure) rt->o.on_failure(rt->o.failure_ctx);
}

void router_replica_down(router *rt, replica *rep, const char *why) {
    const bool built = rep->t_ready > 0;
    rep->state = REPLICA_DOWN;
    snprintf(rep->why, sizeof rep->why, "%s", why);
    rt->failures++;
    fprintf(stderr, "skein serve: model %s: replica %d down: %s\n", rt->name, rep->id, why);
    if (rt->o.tp) {
        router_finish_all(rt, rep, why);
        pthread_cond_broadcast(&rt->changed);
        return;
    }
    char err[512];
    snprintf(err, sizeof err, "replica %d of model %s failed after the request had produced tokens (%s)", rep->id,
             rt->name, why);
    req_queue *qs[2] = {&rep->in, &rep->live};
    for (int q = 0; q < 2; q++) {
        serve_req *r;
        while ((r = qs[q]->head)) {
            if (r->abandoned) {
                router_finish(rt, r, "cancelled", NULL);
            } else if (rt->stopping) {
                router_finish(rt, r, "error", "the server is shutting down");
            } else if (r->n_gen > 0) {
                router_finish(rt, r, "error", err);
            } else if (r->routings >= ROUTER_MAX_RETRIES) {
                router_finish(rt, r, "error", "the request's replicas failed before its first token, too many times");
            } else {   /* no token yet: it goes elsewhere, as if just submitted */
                req_queue_remove(qs[q], r);
                rep->load -= r->cost;
                rep->n_reqs--;
                r->rep = NULL;
                r->routings++;
                router_route(rt, r);
            }
        }
    }
    if (!built) {   /* it could not start: the next start waits, and nobody waits on it */
        rt->hold_until = time_now() + ROUTER_RESTART_HOLD_S;
        snprintf(err, sizeof err, "no replica of model %s could start (%s)", rt->name, why);
        serve_req *r;
        while ((r = rt->pending.head)) router_finish(rt, r, "error", err);
    }
    pthread_cond_broadcast(&rt->changed);
    pthread_cond_signal(&rt->tick);
}

const router_fault *router_fault_at(const router *rt, int id, uint64_t step) {
    for (int i = 0; i < rt->n_faults; i++)
        if (rt->faults[i].id == id && rt->faults[i].step == step) return &rt->faults[i];
    return NULL;
}

/* Reads SKEIN_TEST_FAIL_REPLICA: "ID:STEP[:hang]" entries separated by commas. */
static sk_status router_parse_faults(router *rt, const char *spec) {
    const char *p = spec;
    while (p && *p) {
        if (rt->n_faults == ROUTER_MAX_FAULTS) break;
        char *end = NULL;
        router_fault f = {0};
        long id = strtol(p, &end, 10);
        long long step = end && *end == ':' ? strtoll(end + 1, &end, 10) : -1;
        if (id < 0 || step < 0) goto bad;
        if (!strncmp(end, ":hang", 5)) { f.hang = true; end += 5; }
        if (*end && *end != ',') goto bad;
        if (step == 0 && (!f.hang || !rt->o.process))
            return sk_fail(SK_EARG, "SKEIN_TEST_FAIL_REPLICA=%s: step 0 (the start) can only hang, in process replicas", spec);
        f.id = (int)id;
        f.step = (uint64_t)step;
        rt->faults[rt->n_faults++] = f;
        p = *end ? end + 1 : NULL;
    }
    return SK_OK;
bad:
    return sk_fail(SK_EARG, "SKEIN_TEST_FAIL_REPLICA=%s: expected ID:STEP[:hang] entries separated by commas (ID:0:hang: "
                   "a process replica's start hangs)", spec);
}

/* ---- the supervisor ---- */

static int router_count(const router *rt, replica_state a, replica_state b) {
    int n = 0;
    for (int i = 0; i < rt->n_reps; i++) n += rt->reps[i]->state == a || rt->reps[i]->state == b;
    return n;
}

static void router_remove(router *rt, int i) {
    memmove(rt->reps + i, rt->reps + i + 1, sizeof *rt->reps * (size_t)(rt->n_reps - i - 1));
    rt->n_reps--;
}

/* Joins and frees the replicas that exited; tells the drained ones with nothing left to stop. */
static void router_reap(router *rt) {
    for (int i = 0; i < rt->n_reps;) {
        replica *rep = rt->reps[i];
        if (rep->state == REPLICA_DRAINING && rep->n_reqs == 0 && !rep->stop) {
            rep->stop = true;
            pthread_cond_signal(&rep->wake);
        }
        if (!rep->exited) { i++; continue; }
        pthread_join(rep->thread, NULL);   /* it only unlocks after setting exited */
        if (rep->state == REPLICA_DRAINING)
            fprintf(stderr, "skein serve: model %s: replica %d drained and freed\n", rt->name, rep->id);
        router_remove(rt, i);
        replica_free(rep);
    }
}

/* Gives up the replicas whose step has run past the timeout; kills the children of process
 * replicas still building past it (their start then fails as any failed start does). */
static void router_watch(router *rt, double now) {
    for (int i = 0; i < rt->n_reps;) {
        replica *rep = rt->reps[i];
        if (rep->state == REPLICA_STARTING && rep->proc && !rep->start_killed && now - rep->t_start > rt->o.replica_timeout_s) {
            fprintf(stderr, "skein serve: model %s: replica %d has not started in %.1f s (--replica-timeout): its process %d is killed\n",
                    rt->name, rep->id, now - rep->t_start, (int)rproc_pid(rep->proc));
            rproc_kill(rep->proc);
            rep->start_killed = true;
        }
        if (rep->state == REPLICA_DOWN || rep->step_started <= 0 || now - rep->step_started <= rt->o.replica_timeout_s) {
            i++;
            continue;
        }
        char why[128];
        snprintf(why, sizeof why, "stopped answering (a step has run %.1f s)", now - rep->step_started);
        router_replica_down(rt, rep, why);
        rproc_kill(rep->proc);   /* a process replica's step then returns */
        rep->orphaned = true;
        pthread_detach(rep->thread);
        pthread_cond_signal(&rep->wake);
        rt->n_orphans++;
        router_remove(rt, i);
    }
}

/* Marks replicas draining until no more than the target are starting or up: those with the
 * fewest requests first (starting ones have none), the newest among equals. */
static void router_drain(router *rt) {
    while (router_count(rt, REPLICA_STARTING, REPLICA_UP) > rt->target) {
        replica *v = NULL;
        for (int i = 0; i < rt->n_reps; i++) {
            replica *rep = rt->reps[i];
            if (rep->state != REPLICA_STARTING && rep->state != REPLICA_UP) continue;
            if (!v || rep->n_reqs < v->n_reqs || (rep->n_reqs == v->n_reqs && rep->id > v->id)) v = rep;
        }
        v->state = REPLICA_DRAINING;
        fprintf(stderr, "skein serve: model %s: replica %d draining (%d requests left)\n", rt->name, v->id, v->n_reqs);
    }
}

/* Whether a wish that holds now (cond) has held for delay seconds, since *since (0: it did
 * not hold before); a wish granted starts over. */
static bool router_lasted(bool cond, double *since, double now, double delay) {
    if (!cond) {
        *since = 0;
        return false;
    }
    if (*since <= 0) *since = now;
    if (now - *since < delay) return false;
    *since = 0;
    return true;
}

/* Ray Serve's policy: the target follows ceil(in flight / target_ongoing) within [min, max]
 * once the wish has lasted the upscale (downscale) delay. */
static void router_autoscale(router *rt, double now) {
    if (rt->o.min_replicas == rt->o.max_replicas) return;
    int want = (int)ceil(rt->n_inflight / rt->o.target_ongoing);
    want = want < rt->o.min_replicas ? rt->o.min_replicas : want > rt->o.max_replicas ? rt->o.max_replicas : want;
    const bool up = router_lasted(want > rt->target, &rt->up_since, now, rt->o.upscale_delay_s);
    const bool down = router_lasted(want < rt->target, &rt->down_since, now, rt->o.downscale_delay_s);
    if (!up && !down) return;
    fprintf(stderr, "skein serve: model %s: scaling %s from %d to %d replicas (%d requests in flight)\n", rt->name,
            up ? "up" : "down", rt->target, want, rt->n_inflight);
    rt->target = want;
    if (down) router_drain(rt);
}

/* Ranks of one replica: tp_ranks for replicas split over forked ranks, else 1. */
static int router_group_ranks(const router_opts *o) { return o->tp_ranks > 1 ? o->tp_ranks : 1; }

int router_slot_device(const router_opts *o, int slot, int rank) {
    return o->n_devices ? o->devices[slot * router_group_ranks(o) + rank] : rank;
}

/* The slot for a new replica: -1 on the CPU, else the one with the fewest replicas starting
 * or up (the first among equals). */
static int router_pick_slot(const router *rt) {
    if (strcmp(rt->o.device, "cuda")) return -1;
    const int slots = rt->o.n_devices ? rt->o.n_devices / router_group_ranks(&rt->o) : 1;
    int best = 0, best_n = 1 << 30;
    for (int s = 0; s < slots; s++) {
        int n = 0;
        for (int i = 0; i < rt->n_reps; i++) {
            const replica *rep = rt->reps[i];
            n += rep->slot == s && (rep->state == REPLICA_STARTING || rep->state == REPLICA_UP);
        }
        if (n < best_n) { best = s; best_n = n; }
    }
    return best;
}

/* Starts replicas until the target are starting or up. */
static void router_fill(router *rt, double now) {
    if (rt->stopping || rt->finished || now < rt->hold_until) return;
    while (router_count(rt, REPLICA_STARTING, REPLICA_UP) < rt->target) {
        if (rt->n_reps == rt->cap_reps) {
            const int cap = rt->cap_reps ? 2 * rt->cap_reps : 8;
            replica **p = mem_realloc(rt->reps, sizeof *p * (size_t)cap);
            if (!p) break;
            rt->reps = p;
            rt->cap_reps = cap;
        }
        const int slot = router_pick_slot(rt);
        /* split over mpirun's ranks: rank 0's own device (comm_init chose it) */
        const int device = slot < 0 ? -1 : rt->o.tp ? rt->o.tp->local_rank : router_slot_device(&rt->o, slot, 0);
        replica *rep = replica_start(rt, rt->next_id, device, slot);
        if (!rep) {
            fprintf(stderr, "skein serve: model %s: %s\n", rt->name, sk_errmsg());
            rt->hold_until = now + ROUTER_RESTART_HOLD_S;
            break;
        }
        rt->next_id++;
        rt->reps[rt->n_reps++] = rep;
    }
}

static void *router_supervise(void *arg) {
    router *rt = arg;
    pthread_mutex_lock(&rt->mu);
    while (!rt->stopping) {
        serve_wait_ms(&rt->tick, &rt->mu, ROUTER_TICK_MS);
        if (rt->stopping) break;
        const double now = time_now();
        router_reap(rt);
        if (!rt->o.tp) router_watch(rt, now);   /* a split model's steps end at the comm's timeout */
        router_autoscale(rt, now);
        router_fill(rt, now);
    }
    pthread_mutex_unlock(&rt->mu);
    return NULL;
}

/* ---- lifetime ---- */

/* The folder's last path component, as the model's id (trailing slashes ignored). */
static void router_folder_name(const char *dir, char *out, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    snprintf(out, cap, "%.*s", (int)(n - b), dir + b);
}

static sk_status router_check_opts(const router_opts *o) {
    if (o->min_replicas < 1 || o->max_replicas < o->min_replicas || o->max_replicas > 1024)
        return sk_fail(SK_EARG, "serve: --min-replicas %d and --max-replicas %d: need 1 <= min <= max <= 1024",
                       o->min_replicas, o->max_replicas);
    if (o->replicas < o->min_replicas || o->replicas > o->max_replicas)
        return sk_fail(SK_EARG, "serve: --replicas %d must be within --min-replicas %d and --max-replicas %d", o->replicas,
                       o->min_replicas, o->max_replicas);
    if (!(o->target_ongoing > 0) || !(o->upscale_delay_s >= 0) || !(o->downscale_delay_s >= 0) || !(o->replica_timeout_s > 0))
        return sk_fail(SK_EARG, "serve: --target-ongoing and --replica-timeout must be positive, the delays not negative");
    if (o->threads < 1 || o->threads > 4096) return sk_fail(SK_EARG, "serve: --threads %d must be in [1, 4096]", o->threads);
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda"))
        return sk_fail(SK_EARG, "serve: --device %s: expected cpu or cuda", o->device);
    if (o->n_devices < 0 || o->n_devices > ROUTER_MAX_DEVICES)
        return sk_fail(SK_EARG, "serve: --devices lists at most %d devices", ROUTER_MAX_DEVICES);
    if (o->tp && (o->max_replicas > 1 || o->n_devices > 0))
        return sk_fail(SK_EARG, "serve: --tp %d serves one replica over its ranks (leave out --replicas, "
                       "--max-replicas and --devices)", o->tp->world);
    if (o->process && o->tp)
        return sk_fail(SK_EARG, "serve: --replica-process cannot serve a model split over mpirun's ranks (--tp under "
                       "mpirun): its ranks are not the server's children; --replicas R --tp K forks its own");
    if (o->tp_ranks > 1 && !strcmp(o->device, "cuda") && o->n_devices % o->tp_ranks)
        return sk_fail(SK_EARG, "serve: --devices lists %d devices: replicas split over %d ranks take them in groups of "
                       "%d", o->n_devices, o->tp_ranks, o->tp_ranks);
    for (int g = 0; o->tp_ranks > 1 && g + o->tp_ranks <= o->n_devices; g += o->tp_ranks)
        for (int i = g; i < g + o->tp_ranks; i++)
            for (int j = g; j < i; j++)
                if (o->devices[i] == o->devices[j])
                    return sk_fail(SK_EARG, "serve: --devices: device %d twice in the group of a replica split over "
                                   "%d ranks (each rank needs a GPU of its own)", o->devices[i], o->tp_ranks);
    if (o->tp_ranks > 1 && (!o->process || !(o->comm_timeout_s > 0)))
        return sk_fail(SK_EARG, "serve: replicas split over %d ranks each run as processes with a positive comm timeout",
                       o->tp_ranks);
    for (int i = 0; i < o->n_devices; i++)
        if (o->devices[i] < 0) return sk_fail(SK_EARG, "serve: --devices: %d is not a device id", o->devices[i]);
    return SK_OK;
}

/* The tokenizer, its config and the chat template (o->chat_template, else the folder's when
 * it has tokenizer_config.json: without a template there, chat is refused, with a note). */
static sk_status router_load_tokenizer(router *rt, const char *chat_name) {
    char path[4200];
    SK_TRY(tok_load(file_join(path, sizeof path, rt->dir, "tokenizer.json"), &rt->t));
    SK_TRY(tok_load_config(rt->t, file_join(path, sizeof path, rt->dir, "tokenizer_config.json")));
    if (!chat_name && access(path, F_OK) != 0) return SK_OK;
    if (chat_template_load(path, chat_name, &rt->ct) == SK_OK) {
        rt->chat = &rt->ct;
        return SK_OK;
    }
    if (chat_name) return SK_EARG;
    fprintf(stderr, "skein serve: model %s: no chat template (%s); /v1/chat/completions answers 400\n", rt->name,
            sk_errmsg());
    return SK_OK;
}

sk_status router_create(const router_opts *o, router **out) {
    *out = NULL;
    SK_TRY(router_check_opts(o));
    if (strlen(o->dir) >= sizeof((router *)0)->dir) return sk_fail(SK_EARG, "serve: --model %s: the path is too long", o->dir);
    router *rt = mem_calloc(sizeof *rt);
    if (!rt) return sk_fail(SK_ENOMEM, "serve: out of memory");
    pthread_mutex_init(&rt->mu, NULL);
    pthread_cond_init(&rt->tick, NULL);
    pthread_cond_init(&rt->changed, NULL);
    rt->o = *o;
    rt->o.device = strcmp(o->device, "cuda") ? "cpu" : "cuda";
    snprintf(rt->dir, sizeof rt->dir, "%s", o->dir);
    rt->o.dir = rt->dir;
    if (o->name) snprintf(rt->name, sizeof rt->name, "%s", o->name);
    else router_folder_name(o->dir, rt->name, sizeof rt->name);
    rt->o.name = rt->name;
    rt->o.chat_template = NULL;
    sk_status st = SK_OK;
    if (!rt->name[0] || strlen(rt->name) >= SERVE_NAME_BYTES - 1 || strpbrk(rt->name, "\"\\\n")) {
        st = sk_fail(SK_EARG, "serve: the model name '%s' must be 1 to %d bytes without quotes, backslashes or newlines",
                     rt->name, SERVE_NAME_BYTES - 2);
        goto err;
    }
    metrics_hist_init(&rt->ttft, metrics_ttft_le, METRICS_TTFT_N);
    metrics_hist_init(&rt->tpot, metrics_tpot_le, METRICS_TPOT_N);
    metrics_hist_init(&rt->e2e, metrics_e2e_le, METRICS_E2E_N);
    rt->rng = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 32;
    if ((st = router_parse_faults(rt, getenv("SKEIN_TEST_FAIL_REPLICA")))) goto err;
    if (!(rt->cpu = backend_create("cpu"))) { st = SK_EARG; goto err; }
    if ((st = router_load_tokenizer(rt, o->chat_template))) goto err;
    if ((st = model_open_weights(rt->dir, rt->cpu, &rt->base))) goto err;
    rt->eo = o->engine;
    if (rt->eo.max_ctx <= 0 || rt->eo.max_ctx > rt->base->cfg.n_positions) rt->eo.max_ctx = rt->base->cfg.n_positions;
    if (rt->eo.block_size <= 0) rt->eo.block_size = KV_BLOCK_SIZE;
    rt->n_eos = gen_eos_ids(rt->base, rt->t, NULL, rt->eos_ids);
    rt->n_chat_eos = gen_eos_ids(rt->base, rt->t, rt->chat, rt->chat_eos_ids);
    rt->aff_key = mem_calloc(sizeof *rt->aff_key * ROUTER_AFF_SLOTS);
    rt->aff_rep = mem_calloc(sizeof *rt->aff_rep * ROUTER_AFF_SLOTS);
    if (!rt->aff_key || !rt->aff_rep) { st = sk_fail(SK_ENOMEM, "serve: out of memory"); goto err; }

    /* the first replicas, waited for: a model that cannot run is refused at start */
    pthread_mutex_lock(&rt->mu);
    rt->target = o->replicas;
    router_fill(rt, time_now());
    const replica *bad = NULL;
    for (;;) {
        for (int i = 0; i < rt->n_reps && !bad; i++)
            if (rt->reps[i]->state == REPLICA_DOWN) bad = rt->reps[i];
        if (bad || rt->n_reps < rt->target || router_count(rt, REPLICA_UP, REPLICA_UP) == rt->target) break;
        pthread_cond_wait(&rt->changed, &rt->mu);
    }
    if (bad) st = sk_fail(bad->fail_status ? bad->fail_status : SK_ESTATE, "serve: model %s: replica %d: %s", rt->name,
                          bad->id, bad->why);
    else if (rt->n_reps < rt->target) st = sk_fail(SK_ESTATE, "serve: model %s: cannot start its replicas", rt->name);
    pthread_mutex_unlock(&rt->mu);
    if (st != SK_OK) goto err;
    if (pthread_create(&rt->supervisor, NULL, router_supervise, rt)) {
        st = sk_fail(SK_ESTATE, "serve: cannot start the supervisor thread");
        goto err;
    }
    rt->supervised = true;
    *out = rt;
    return SK_OK;
err:
    router_stop(rt);
    router_free(rt);
    return st;
}

void router_stop(router *rt) {
    if (!rt) return;
    pthread_mutex_lock(&rt->mu);
    rt->stopping = true;
    pthread_cond_signal(&rt->tick);
    for (int i = 0; i < rt->n_reps; i++) {
        rt->reps[i]->stop = true;
        if (rt->reps[i]->state == REPLICA_STARTING) rproc_kill(rt->reps[i]->proc);   /* its build ends at once */
        pthread_cond_signal(&rt->reps[i]->wake);
    }
    serve_req *r;
    while ((r = rt->pending.head)) router_finish(rt, r, "error", "the server is shutting down");
    pthread_mutex_unlock(&rt->mu);
    if (rt->supervised) pthread_join(rt->supervisor, NULL);
    rt->supervised = false;
    /* only this thread changes reps now: the supervisor is gone and nothing starts */
    for (int i = 0; i < rt->n_reps; i++) pthread_join(rt->reps[i]->thread, NULL);
    pthread_mutex_lock(&rt->mu);
    for (int i = 0; i < rt->n_reps; i++) replica_free(rt->reps[i]);
    rt->n_reps = 0;
    const double deadline = time_now() + ROUTER_ORPHAN_WAIT_S;
    while (rt->n_orphans > 0 && time_now() < deadline) serve_wait_ms(&rt->changed, &rt->mu, ROUTER_TICK_MS);
    pthread_mutex_unlock(&rt->mu);
}

void router_free(router *rt) {
    if (!rt) return;
    router_stop(rt);
    if (rt->n_orphans > 0) {   /* a thread still inside a step uses the model: leave it all be */
        fprintf(stderr, "skein serve: model %s: %d stalled replica threads still run; their memory is not freed\n",
                rt->name, rt->n_orphans);
        return;
    }
    for (int i = 0; i < rt->n_copies; i++)
        if (rt->copies[i].share.fd >= 0) close(rt->copies[i].share.fd);
    mem_free(rt->reps);
    mem_free(rt->aff_key);
    mem_free(rt->aff_rep);
    model_free(rt->base);
    if (rt->chat) chat_template_free(&rt->ct);
    tok_free(rt->t);
    backend_free(rt->cpu);
    pthread_cond_destroy(&rt->changed);
    pthread_cond_destroy(&rt->tick);
    pthread_mutex_destroy(&rt->mu);
    mem_free(rt);
}

/* ---- what the API reads ---- */

bool router_up(router *rt) {
    pthread_mutex_lock(&rt->mu);
    const bool up = router_count(rt, REPLICA_UP, REPLICA_UP) > 0;
    pthread_mutex_unlock(&rt->mu);
    return up;
}

const char *router_failure(router *rt, char *buf, size_t cap) {
    pthread_mutex_lock(&rt->mu);
    const bool failed = rt->finished;
    snprintf(buf, cap, "%s", rt->failure);
    pthread_mutex_unlock(&rt->mu);
    return failed ? buf : NULL;
}

sk_status router_snapshot(router *rt, metrics_model *m, metrics_replica **reps) {
    pthread_mutex_lock(&rt->mu);
    metrics_replica *rs = mem_alloc(sizeof *rs * (size_t)(rt->n_reps ? rt->n_reps : 1));
    if (!rs) {
        pthread_mutex_unlock(&rt->mu);
        return sk_fail(SK_ENOMEM, "serve: out of memory");
    }
    for (int i = 0; i < rt->n_reps; i++) {
        rs[i] = rt->reps[i]->stats;
        rs[i].queued += rt->reps[i]->in.n;
    }
    *m = (metrics_model){.name = rt->name, .replicas_up = router_count(rt, REPLICA_UP, REPLICA_UP),
                         .replicas_target = rt->target, .pending = rt->pending.n, .prompt_tokens = rt->prompt_tokens,
                         .generation_tokens = rt->gen_tokens, .failures = rt->failures, .ttft = rt->ttft,
                         .tpot = rt->tpot, .e2e = rt->e2e, .reps = rs, .n_reps = rt->n_reps};
    pthread_mutex_unlock(&rt->mu);
    *reps = rs;
    return SK_OK;
}
