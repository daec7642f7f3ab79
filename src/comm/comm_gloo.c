/* comm_gloo: comm.h over gloo (the collective library PyTorch and Ray Train use on CPUs),
 * for host buffers (device buffers staged through pinned host memory, comm_stage.h) under
 * torchrun-style launches: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
 * set by torchrun, Ray, Kubernetes or by hand, with no mpirun to connect the processes.
 *
 * Bootstrap: every rank connects to the TCP store of store.h at MASTER_ADDR:MASTER_PORT
 * (rank 0 serves it), and gloo's rendezvous exchanges the ranks' listening addresses through
 * its keys (gloo_shim.h). A rank listens on the address it reaches MASTER_ADDR from (the
 * kernel's route toward it), or on the interface GLOO_SOCKET_IFNAME names (PyTorch's
 * variable, for hosts with several networks).
 *
 * The communication thread (comm_worker.h) makes every gloo and store call. gloo's calls
 * block, so a request runs to its end in one turn of the thread while the caller computes;
 * requests run one at a time in the order they were started. The fetch-and-add counter is
 * the store's (gloo has no atomics), as for NCCL.
 *
 * Finding the missing rank: before each collective the thread tells the store which one it
 * enters (store_progress, no reply awaited). When gloo fails (its timeout passed, or a
 * connection broke because a peer exited), the thread asks the store where every rank is: a
 * rank that left the store exited or died; one that has not entered this collective is alive
 * but busy or hung outside collectives; one in it is waiting too. After a broken connection
 * it asks again for up to 2 s, until the store has seen the peer leave and the live ranks
 * enter the collective (a peer killed just before it breaks the others' connections before
 * they all got there). Then it tells the store that it failed here (the negated number), so
 * the others do not take its exit for the cause.
 *
 * Invariants: after a failure the comm is broken (every later call fails at once); comm_free
 * then returns (the caller exits non-zero), rank 0 having served the store for up to 5 s more
 * so that the others can still ask it who is missing. Reduce-scatter counts are split so
 * that one gloo call's world*piece elements fit an int and comm_chunk_limit(). */
#ifdef SKEIN_HAVE_GLOO

#include <arpa/inet.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "comm/comm_worker.h"
#include "comm/gloo_shim.h"

enum { LINGER_S = 5 };

typedef struct gloo_impl {
    comm_worker w;         /* first: the thread and the request queue */
    comm_env env;          /* the launcher's variables */
    store *st;             /* thread: the side channel */
    gloo_shim *g;          /* thread */
    char *scratch;         /* thread: reduce-scatter's in-place buffer, grown to the largest piece */
    size_t scratch_bytes;
    int64_t *where;        /* (world) thread: the store's answer, where each rank is */
    bool *gone;            /* (world) thread: and whether it left */
    size_t chunk;          /* largest element count one gloo call gets */
} gloo_impl;

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The IPv4 address this host reaches host:port from, into addr(cap): a UDP socket
 * "connected" there sends nothing, but the kernel picks the route and the source address. */
static sk_status route_addr(const char *host, int port, char *addr, size_t cap) {
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *ai = NULL;
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0) return sk_fail(SK_EARG, "gloo: cannot resolve MASTER_ADDR=%s: %s", host, gai_strerror(rc));
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    bool ok = fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
              getsockname(fd, (struct sockaddr *)&me, &len) == 0 && inet_ntop(AF_INET, &me.sin_addr, addr, (socklen_t)cap);
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    if (!ok) return sk_fail(SK_ECOMM, "gloo: no route from this host to MASTER_ADDR=%s", host);
    return SK_OK;
}

/* Thread, first: the store, then gloo's full mesh. */
static sk_status gloo_setup(comm *c) {
    gloo_impl *m = c->impl;
    const comm_env *e = &m->env;
    SK_TRY(store_open(e->master_addr, e->master_port, e->rank, e->world, c->timeout_s, &m->st));
    const char *iface = getenv("GLOO_SOCKET_IFNAME");
    char addr[INET_ADDRSTRLEN] = "";
    if (!(iface && *iface)) {
        iface = NULL;
        SK_TRY(route_addr(e->master_addr, e->master_port, addr, sizeof addr));
    }
    if (gloo_shim_open(m->st, c->rank, c->world, addr, iface, c->timeout_s, &m->g) != GLOO_SHIM_OK)
        return sk_fail_ctx(SK_ECOMM, "rank %d, listening on %s", c->rank, iface ? iface : addr);
    /* every rank connected before any collective starts */
    return store_barrier(m->st);
}

/* Appends rank r to a comma-separated list in buf(cap). */
static void list_add(char *buf, size_t cap, int r) {
    size_t len = strlen(buf);
    snprintf(buf + len, cap - len, "%s%d", len ? ", " : "", r);
}

/* Collective #seq (r) failed in gloo (rc): asks the store where every rank is, records the
 * message naming the missing ranks, and tells the store this rank failed here. */
static void gloo_diagnose(comm *c, const comm_req *r, int64_t seq, gloo_shim_rc rc) {
    gloo_impl *m = c->impl;
    const int W = c->world;
    char said[600];
    snprintf(said, sizeof said, "%s", sk_errmsg());
    int64_t *where = m->where;
    bool *gone = m->gone;
    sk_status st;
    double end = time_now() + (rc == GLOO_SHIM_TIMEOUT ? 0.0 : 2.0);
    while ((st = store_status(m->st, where, gone)) == SK_OK && time_now() < end) {
        /* done once the store has seen a peer leave and every other rank reach this one */
        bool left = false, late = false;
        for (int k = 0; k < W; k++) {
            if (k == c->rank || where[k] < 0) continue;
            if (gone[k]) left = true;
            else if (where[k] < seq) late = true;
        }
        if (left && !late) break;
        nap_ms(20);
    }
    char dead[256] = "", absent[256] = "", waiting[256] = "", failed[256] = "";
    for (int k = 0; st == SK_OK && k < W; k++) {
        if (k == c->rank) continue;
        if (where[k] < 0) list_add(failed, sizeof failed, k);
        else if (gone[k]) list_add(dead, sizeof dead, k);
        else if (where[k] < seq) list_add(absent, sizeof absent, k);
        else list_add(waiting, sizeof waiting, k);
    }
    char head[200];
    snprintf(head, sizeof head, "%s (collective #%lld, %zu elements)", r->op, (long long)seq, r->n);
    if (st != SK_OK) {
        /* rank 0 serves the store: losing it names rank 0 */
        sk_fail(SK_ECOMM, "%s: no answer from rank(s) 0 (its store at %s:%d is gone: rank 0 exited or died); gloo: %s",
                head, m->env.master_addr, m->env.master_port, said);
        return;
    }
    char extra[900] = "";
    size_t len;
    if (dead[0] && absent[0])
        snprintf(extra, sizeof extra, " (%s: exited or died; %s: alive but not at this collective: busy or hung "
                 "outside collectives)", dead, absent);
    else if (dead[0]) snprintf(extra, sizeof extra, " (exited or died)");
    else if (absent[0]) snprintf(extra, sizeof extra, " within %g s (alive but not at this collective: busy or hung "
                                 "outside collectives)", c->timeout_s);
    len = strlen(extra);
    if (waiting[0]) snprintf(extra + len, sizeof extra - len, "; rank(s) %s waiting in it too", waiting);
    len = strlen(extra);
    if (failed[0]) snprintf(extra + len, sizeof extra - len, "; rank(s) %s failed in a collective too", failed);
    if (dead[0] || absent[0])
        sk_fail(SK_ECOMM, "%s: no answer from rank(s) %s%s%s%s", head, dead, dead[0] && absent[0] ? ", " : "", absent,
                extra);
    else
        sk_fail(SK_ECOMM, "%s failed on rank %d, though every rank reached it%s; gloo: %s", head, c->rank, extra, said);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", sk_errmsg());
    store_progress(m->st, -seq);   /* best effort; the message above stays */
    sk_fail(SK_ECOMM, "%s", msg);
}

/* The gloo element type of e (the sums; bytes are moved by count). */
static gloo_shim_elem shim_elem(comm_elem e) {
    return e == COMM_BF16 ? GLOO_SHIM_BF16 : e == COMM_F64 ? GLOO_SHIM_F64 : GLOO_SHIM_F32;
}

/* Reduce-scatter in pieces: for each piece of the chunk, every owner's part of it is copied
 * side by side into the scratch buffer, reduce-scattered there in place, and this rank's
 * part copied out. */
static gloo_shim_rc gloo_reduce_scatter(comm *c, const comm_req *r, uint32_t tag) {
    gloo_impl *m = c->impl;
    const size_t W = (size_t)c->world, es = comm_elem_size(r->elem), n = r->n;
    size_t piece = m->chunk < (size_t)INT_MAX / es ? m->chunk : (size_t)INT_MAX / es;
    piece = piece / W ? piece / W : 1;
    if (piece > n) piece = n;
    if (W * piece * es > m->scratch_bytes) {
        char *grown = realloc(m->scratch, W * piece * es);
        if (!grown) {
            sk_fail(SK_ENOMEM, "%s: out of memory for %zu bytes of scratch", r->op, W * piece * es);
            return GLOO_SHIM_FAILED;
        }
        m->scratch = grown;
        m->scratch_bytes = W * piece * es;
    }
    const char *send = r->send;
    char *recv = r->recv;
    for (size_t off = 0; off < n; off += piece) {
        size_t len = n - off < piece ? n - off : piece;
        for (size_t o = 0; o < W; o++) memcpy(m->scratch + o * len * es, send + (o * n + off) * es, len * es);
        gloo_shim_rc rc = gloo_shim_reduce_scatter(m->g, m->scratch, len, shim_elem(r->elem), tag);
        if (rc != GLOO_SHIM_OK) return rc;
        memcpy(recv + off * es, m->scratch, len * es);
    }
    return GLOO_SHIM_OK;
}

/* Runs collective r (tag: its number) to its end. */
static gloo_shim_rc gloo_run(comm *c, const comm_req *r, uint32_t tag) {
    gloo_impl *m = c->impl;
    const size_t es = comm_elem_size(r->elem);
    if (r->n == 0 && r->kind != COMM_BARRIER) return GLOO_SHIM_OK;   /* the same on every rank */
    switch (r->kind) {
    case COMM_ALL_REDUCE:
        return gloo_shim_all_reduce(m->g, r->recv, r->n, shim_elem(r->elem), tag);
    case COMM_REDUCE_SCATTER:
        return gloo_reduce_scatter(c, r, tag);
    case COMM_ALL_GATHER: {
        const char *mine = (const char *)r->recv + (size_t)c->rank * r->n * es;
        return gloo_shim_all_gather(m->g, r->send == mine ? NULL : r->send, r->recv, r->n * es, tag);
    }
    case COMM_BROADCAST:
        return gloo_shim_broadcast(m->g, r->recv, r->n, r->root, tag);
    case COMM_BARRIER:
        return gloo_shim_barrier(m->g, tag);
    case COMM_FETCH_ADD:
    case COMM_COUNTER_SET:
        break;
    }
    SK_ASSERT(!"gloo_run: not a gloo collective");
    return GLOO_SHIM_FAILED;
}

/* Thread: runs request r to its end (comm_worker_ops.progress). */
static int gloo_progress(comm *c, comm_req *r, comm_slot *s) {
    gloo_impl *m = c->impl;
    if (r->kind == COMM_FETCH_ADD) return store_add(m->st, r->value, r->old) == SK_OK ? 1 : -1;
    if (store_progress(m->st, s->seq) != SK_OK) return -1;   /* the message names rank 0 */
    if (r->kind == COMM_COUNTER_SET) {
        /* barrier (every earlier fetch_add has completed), the store's counter, barrier */
        if (store_barrier(m->st) != SK_OK) return -1;
        if (c->rank == 0 && store_counter_set(m->st, r->value) != SK_OK) return -1;
        return store_barrier(m->st) == SK_OK ? 1 : -1;
    }
    gloo_shim_rc rc = gloo_run(c, r, (uint32_t)s->seq);
    if (rc == GLOO_SHIM_OK) return 1;
    gloo_diagnose(c, r, s->seq, rc);
    return -1;
}

/* Thread, last: gloo, then the store (rank 0 of a broken world serves it LINGER_S more). */
static void gloo_teardown(comm *c) {
    gloo_impl *m = c->impl;
    gloo_shim_free(m->g);
    m->g = NULL;
    store_close(m->st, comm_worker_broken(c) ? LINGER_S : c->timeout_s);
    m->st = NULL;
}

static const comm_worker_ops gloo_worker_ops = {gloo_setup, gloo_progress, NULL, gloo_teardown, NULL};

static void gloo_free(comm *c) {
    gloo_impl *m = c->impl;
    comm_worker_stop(c);
    /* After a failed setup these are left to the caller's side; the others learn at once
     * that rank 0 is gone. */
    gloo_shim_free(m->g);
    store_close(m->st, 0);
    free(m->scratch);
    free(m->where);
    free(m->gone);
    free(m);
    free(c);
}

static const comm_ops gloo_ops = {comm_worker_start, comm_worker_wait, comm_worker_test, gloo_free,
                                  comm_worker_set_backend, NULL};

sk_status comm_gloo_init(const comm_env *env, double timeout_s, comm **out) {
    *out = NULL;
    if (env->launcher != COMM_LAUNCH_TORCHRUN || env->world < 2)
        return sk_fail(SK_EARG, "gloo: needs a torchrun-style launch of two or more ranks (RANK, WORLD_SIZE, "
                       "MASTER_ADDR, MASTER_PORT)");
    comm *c = calloc(1, sizeof *c);
    gloo_impl *m = calloc(1, sizeof *m);
    int64_t *where = calloc((size_t)env->world, sizeof *where);
    bool *gone = calloc((size_t)env->world, sizeof *gone);
    if (!c || !m || !where || !gone) {
        free(c), free(m), free(where), free(gone);
        return sk_fail(SK_ENOMEM, "comm: out of memory");
    }
    *m = (gloo_impl){.env = *env, .chunk = comm_chunk_limit(), .where = where, .gone = gone};
    *c = (comm){.ops = &gloo_ops, .name = "gloo", .rank = env->rank, .world = env->world,
                .local_rank = env->local_rank, .local_world = env->local_world, .timeout_s = timeout_s, .impl = m};
    sk_status st = comm_worker_init(c, &gloo_worker_ops);
    if (st != SK_OK) {
        gloo_free(c);
        return st;
    }
    *out = c;
    return SK_OK;
}

#endif /* SKEIN_HAVE_GLOO */
