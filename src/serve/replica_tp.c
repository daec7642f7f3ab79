/* replica_tp: the ranks of a process replica split over K ranks (skein serve --replicas R
 * --tp K): R engines of K processes each, the router seeing each as one replica.
 *
 * A replica's child process (rproc.h) is its rank 0. Before it builds its engine it forks the
 * K-1 other ranks itself, while it is still single-threaded, and all K join one communicator
 * over 127.0.0.1 (torchrun-style variables: MASTER_ADDR, MASTER_PORT: the port of a socket
 * rank 0 already listens on, which its store takes: SKEIN_STORE_FD; RANK, LOCAL_RANK,
 * WORLD_SIZE set in each process before comm_init): gloo on the CPU;
 * on CUDA comm_init's choice for the device (NCCL: a GPU per rank), every rank seeing only the
 * replica's slot of GPUs (CUDA_VISIBLE_DEVICES, set before the fork and before any CUDA call:
 * neither the server nor the child has a CUDA context to pass on), rank r on the r-th. Every rank
 * maps the model's files itself once the group is formed (replica_weights: read-only and
 * shared, so the page cache holds one copy for all) and cuts its share from them
 * (model_open_wts_split). Rank 0 runs
 * the engine the server drives; the others follow it (engine_follow) and die with it
 * (PR_SET_PDEATHSIG); a dead or hung follower fails rank 0's next step or heartbeat with
 * SK_ECOMM naming it (within the comm timeout), which fails the replica: its requests go
 * elsewhere or end with an error, and a fresh group of K ranks replaces it. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "comm/comm.h"
#include "serve/serve_impl.h"

/* A listening socket on a free port of 127.0.0.1 for the group's store, its port in *port;
 * left open and named by SKEIN_STORE_FD, so rank 0's store listens on it (store.c) and no other
 * program can take the port meanwhile (a port chosen and closed could be taken by any
 * connection's source port before the store bound it). */
static sk_status replica_tp_listen(int K, int *port, int *fd) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool ok = *fd >= 0 && bind(*fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(*fd, K + 8) == 0 &&
                    getsockname(*fd, (struct sockaddr *)&a, &n) == 0;
    if (!ok) {
        if (*fd >= 0) close(*fd);
        return sk_fail(SK_EIO, "serve: no free port on 127.0.0.1 for a tensor-parallel replica's ranks");
    }
    *port = ntohs(a.sin_port);
    char v[16];
    snprintf(v, sizeof v, "%d", *fd);
    setenv("SKEIN_STORE_FD", v, 1);
    return SK_OK;
}

/* This process's rank in the group's variables. */
static void replica_tp_env(int rank) {
    char v[16];
    snprintf(v, sizeof v, "%d", rank);
    setenv("RANK", v, 1);
    setenv("LOCAL_RANK", v, 1);
}

/* This replica's communicator (replica_tp_env set): gloo on the CPU, comm_init's choice on
 * CUDA. */
static sk_status replica_tp_comm(const replica *rep, comm **out) {
    const bool cuda = rep->device >= 0;
    return comm_init(cuda ? "auto" : "gloo", cuda ? "cuda" : "cpu", rep->rt->o.comm_timeout_s, out);
}

/* CUDA_VISIBLE_DEVICES for rep's slot: its K device ids, each taken from the variable's own
 * list where the server was given one (the ids index what the server sees). */
static sk_status replica_tp_visible(const replica *rep) {
    const router_opts *o = &rep->rt->o;
    const char *outer = getenv("CUDA_VISIBLE_DEVICES");
    char list[512] = "";
    for (int r = 0; r < o->tp_ranks; r++) {
        const int d = router_slot_device(o, rep->slot, r);
        char id[64];
        snprintf(id, sizeof id, "%d", d);
        if (outer) {   /* its d-th entry */
            const char *p = outer;
            for (int k = 0; k < d && p; k++) p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL;
            const size_t n = p ? strcspn(p, ",") : 0;
            if (!n || n >= sizeof id)
                return sk_fail(SK_EARG, "serve: CUDA device %d: CUDA_VISIBLE_DEVICES=%s has no entry %d", d, outer, d);
            snprintf(id, sizeof id, "%.*s", (int)n, p);
        }
        const size_t len = strlen(list);
        if (len + strlen(id) + 2 > sizeof list) return sk_fail(SK_EARG, "serve: the device list of replica %d is too long", rep->id);
        snprintf(list + len, sizeof list - len, "%s%s", r ? "," : "", id);
    }
    setenv("CUDA_VISIBLE_DEVICES", list, 1);
    return SK_OK;
}

/* A follower rank, from its fork to its _exit: never returns. */
static void replica_tp_follow(replica *rep, int rank) {
    router *rt = rep->rt;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (close_range(3, ~0u, 0) != 0)   /* rank 0's socket to the server is rank 0's alone */
        for (int i = 3; i < 65536; i++) close(i);
    replica_tp_env(rank);
    comm *c = NULL;
    model *m = NULL;
    backend *be = rt->cpu;
    sk_status st = replica_tp_comm(rep, &c);
    if (st == SK_OK && rep->device >= 0 && !(be = backend_create_on("cuda", c->local_rank))) st = SK_EARG;
    if (st == SK_OK) st = replica_weights(rt);
    if (st == SK_OK) st = model_open_wts_split(&rt->base->cfg, rt->base->weights, be, c, &m);
    if (st == SK_OK) st = engine_follow(m);
    if (st != SK_OK)
        fprintf(stderr, "skein serve: model %s: replica %d, rank %d of %d: %s\n", rt->name, rep->id, rank,
                rt->o.tp_ranks, sk_errmsg());
    _exit(st == SK_OK ? 0 : 1);
}

sk_status replica_tp_join(replica *rep, comm **out) {
    router *rt = rep->rt;
    const int K = rt->o.tp_ranks;
    if (rep->device >= 0) SK_TRY(replica_tp_visible(rep));
    int port = 0, listen_fd = -1;
    SK_TRY(replica_tp_listen(K, &port, &listen_fd));
    char v[16];
    snprintf(v, sizeof v, "%d", port);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("MASTER_PORT", v, 1);
    snprintf(v, sizeof v, "%d", K);
    setenv("WORLD_SIZE", v, 1);
    for (int r = 1; r < K; r++) {
        const pid_t pid = fork();
        if (pid == 0) replica_tp_follow(rep, r);
        if (pid < 0) return sk_fail(SK_ESTATE, "serve: cannot fork rank %d of replica %d", r, rep->id);   /* the forked ones die with this process */
    }
    replica_tp_env(0);
    const sk_status st = replica_tp_comm(rep, out);
    if (getenv("SKEIN_STORE_FD")) {   /* the store did not take the socket (it failed before) */
        unsetenv("SKEIN_STORE_FD");
        close(listen_fd);
    }
    return st;
}
