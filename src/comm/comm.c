/* comm: picks and creates a communicator (comm.h), checks and dispatches every call through
 * the request pool (comm_impl.h), and reads the launch environment.
 *
 * The launcher is recognised by the variables it sets, most specific first: OpenMPI's
 * OMPI_COMM_WORLD_*, then PMIx/PMI (MPICH, srun --mpi=pmix), then a Slurm job step, then the
 * torchrun convention. A value that is present but wrong is an error naming the variable,
 * never a silent fallback to one process. */
#include "comm/comm.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"

size_t comm_chunk_limit(void) {
    const char *s = getenv("SKEIN_COMM_CHUNK");
    if (s && *s) {
        long long v = atoll(s);
        if (v > 0 && v < INT_MAX) return (size_t)v;
    }
    return (size_t)INT_MAX;
}

/* Parses the integer in variable `name` into *out (0 <= value <= INT_MAX). Returns 0 when the
 * variable is absent, 1 when read, -1 after recording SK_EARG. */
static int env_int(const char *name, int *out) {
    const char *s = getenv(name);
    if (!s) return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < 0 || v > INT_MAX) {
        sk_fail(SK_EARG, "environment variable %s=%s: not a non-negative integer", name, s);
        return -1;
    }
    *out = (int)v;
    return 1;
}

const char *comm_launcher_name(comm_launcher l) {
    switch (l) {
    case COMM_LAUNCH_NONE: return "none";
    case COMM_LAUNCH_MPIRUN: return "mpirun";
    case COMM_LAUNCH_PMI: return "pmi";
    case COMM_LAUNCH_SLURM: return "srun";
    case COMM_LAUNCH_TORCHRUN: return "torchrun-style";
    }
    return "?";
}

/* Reads rank/size/local-rank variable names for one launcher; local may be absent (0). */
static sk_status env_triple(comm_env *env, const char *rank, const char *size, const char *local) {
    int got;
    if ((got = env_int(rank, &env->rank)) < 0) return SK_EARG;
    if (!got) return sk_fail(SK_EARG, "%s is set but %s is not", size, rank);
    if ((got = env_int(size, &env->world)) < 0) return SK_EARG;
    if (!got) return sk_fail(SK_EARG, "%s is set but %s is not", rank, size);
    if (env->world < 1) return sk_fail(SK_EARG, "%s=%d: the world needs at least one process", size, env->world);
    if (env->rank >= env->world)
        return sk_fail(SK_EARG, "%s=%d is not below %s=%d", rank, env->rank, size, env->world);
    if (local && env_int(local, &env->local_rank) < 0) return SK_EARG;
    return SK_OK;
}

/* The most tasks on one node in Slurm's SLURM_STEP_TASKS_PER_NODE ("2(x3),1"): 0 when absent. */
static int slurm_tasks_per_node(void) {
    const char *s = getenv("SLURM_STEP_TASKS_PER_NODE");
    int most = 0;
    while (s && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (v > most && v <= INT_MAX) most = (int)v;
        s = strchr(end, ',');
        if (s) s++;
    }
    return most;
}

/* Fills env->local_world from the launcher's variable (0 when it sets none). */
static sk_status env_local_world(comm_env *env) {
    switch (env->launcher) {
    case COMM_LAUNCH_MPIRUN: return env_int("OMPI_COMM_WORLD_LOCAL_SIZE", &env->local_world) < 0 ? SK_EARG : SK_OK;
    case COMM_LAUNCH_PMI: return env_int("MPI_LOCALNRANKS", &env->local_world) < 0 ? SK_EARG : SK_OK;
    case COMM_LAUNCH_SLURM: env->local_world = slurm_tasks_per_node(); return SK_OK;
    case COMM_LAUNCH_TORCHRUN: return env_int("LOCAL_WORLD_SIZE", &env->local_world) < 0 ? SK_EARG : SK_OK;
    case COMM_LAUNCH_NONE: env->local_world = 1; return SK_OK;
    }
    return SK_OK;
}

/* comm_env_read without the host's rank count. */
static sk_status env_read_launch(comm_env *env) {
    memset(env, 0, sizeof *env);
    env->world = 1;
    if (getenv("OMPI_COMM_WORLD_SIZE")) {
        env->launcher = COMM_LAUNCH_MPIRUN;
        return env_triple(env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK");
    }
    if (getenv("PMI_SIZE") || getenv("PMIX_RANK")) {
        env->launcher = COMM_LAUNCH_PMI;
        if (getenv("PMI_SIZE")) return env_triple(env, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID");
        /* PMIx publishes the size only through its API: MPI_Init learns it. */
        env->world = 0;
        return env_int("PMIX_RANK", &env->rank) < 0 ? SK_EARG : SK_OK;
    }
    if (getenv("SLURM_PROCID") && (getenv("SLURM_STEP_ID") || getenv("SLURM_STEPID"))) {
        env->launcher = COMM_LAUNCH_SLURM;
        return env_triple(env, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID");
    }
    if (getenv("WORLD_SIZE") || getenv("RANK")) {
        env->launcher = COMM_LAUNCH_TORCHRUN;
        SK_TRY(env_triple(env, "RANK", "WORLD_SIZE", "LOCAL_RANK"));
        if (env->world == 1) return SK_OK;
        const char *addr = getenv("MASTER_ADDR");
        if (!addr || !*addr)
            return sk_fail(SK_EARG, "WORLD_SIZE=%d but MASTER_ADDR is not set (the host of rank 0)", env->world);
        if (strlen(addr) >= sizeof env->master_addr)
            return sk_fail(SK_EARG, "MASTER_ADDR is longer than %zu characters", sizeof env->master_addr - 1);
        snprintf(env->master_addr, sizeof env->master_addr, "%s", addr);
        int got = env_int("MASTER_PORT", &env->master_port);
        if (got < 0) return SK_EARG;
        if (!got) return sk_fail(SK_EARG, "WORLD_SIZE=%d but MASTER_PORT is not set (a free TCP port on MASTER_ADDR)", env->world);
        if (env->master_port < 1 || env->master_port > 65535)
            return sk_fail(SK_EARG, "MASTER_PORT=%d: not a TCP port (1..65535)", env->master_port);
        return SK_OK;
    }
    return SK_OK;
}

sk_status comm_env_read(comm_env *env) {
    SK_TRY(env_read_launch(env));
    return env_local_world(env);
}

const char *comm_auto_kind(const char *device) {
    comm_env env;
    if (comm_env_read(&env) != SK_OK) return NULL;
    bool cuda = device && !strcmp(device, "cuda");
    if (env.launcher == COMM_LAUNCH_NONE || env.world == 1) return "local";
    if (cuda) {
        const int host_ranks = env.local_world, gpus = backend_device_count("cuda");
#ifdef SKEIN_HAVE_NCCL
        if (host_ranks <= gpus || host_ranks < 1) return "nccl";   /* unknown: a pod per GPU, as before */
#endif
        if (env.rank == 0)
            fprintf(stderr, "skein: %d rank%s on this host, %d GPU%s visible: %s, so the collectives go through %s, "
                    "device buffers staged through pinned host memory\n", host_ranks, host_ranks == 1 ? "" : "s",
                    gpus, gpus == 1 ? "" : "s",
#ifdef SKEIN_HAVE_NCCL
                    "NCCL needs a GPU per rank",
#else
                    "this skein is built without NCCL",
#endif
                    env.launcher == COMM_LAUNCH_TORCHRUN ? "gloo" : "MPI");
    }
    if (env.launcher == COMM_LAUNCH_TORCHRUN) {
#ifdef SKEIN_HAVE_GLOO
        return "gloo";
#else
        sk_fail(SK_EARG, "RANK/WORLD_SIZE=%d are set (torchrun-style launch), which needs gloo here: this skein "
                "is built without it (install libgloo-dev and rebuild), or launch with mpirun -n N, srun or --workers N",
                env.world);
        return NULL;
#endif
    }
    return "mpi";
}

sk_status comm_init(const char *kind, const char *device, double timeout_s, comm **out) {
    *out = NULL;
    if (!(timeout_s > 0)) return sk_fail(SK_EARG, "comm timeout %g s: must be positive", timeout_s);
    if (!strcmp(kind, "auto")) {
        kind = comm_auto_kind(device);
        if (!kind) return SK_EARG;
    }
    sk_status st;
    comm *c = NULL;
    if (!strcmp(kind, "local")) {
        st = comm_local_init(timeout_s, &c);
    } else if (!strcmp(kind, "mpi")) {
#ifdef SKEIN_HAVE_MPI
        st = comm_mpi_init(timeout_s, &c);
#else
        return sk_fail(SK_EARG, "this skein is built without MPI (install libopenmpi-dev, or give MPICC=, and rebuild)");
#endif
    } else if (!strcmp(kind, "gloo")) {
#ifdef SKEIN_HAVE_GLOO
        comm_env env;
        SK_TRY(comm_env_read(&env));
        st = comm_gloo_init(&env, timeout_s, &c);
#else
        return sk_fail(SK_EARG, "this skein is built without gloo (install libgloo-dev, or give GLOO_HOME=, and rebuild)");
#endif
    } else if (!strcmp(kind, "nccl")) {
#ifdef SKEIN_HAVE_NCCL
        comm_env env;
        SK_TRY(comm_env_read(&env));
        st = comm_nccl_init(&env, timeout_s, &c);
#else
        return sk_fail(SK_EARG, "this skein is built without NCCL (needs nvcc and nccl.h; give NCCL_HOME= and rebuild)");
#endif
    } else {
        return sk_fail(SK_EARG, "communicator '%s': expected auto, local, mpi, gloo or nccl", kind);
    }
    if (st != SK_OK) return st;
    SK_TRY(comm_add_pool(c));
    *out = c;
    return SK_OK;
}

sk_status comm_add_pool(comm *c) {
    c->reqs = calloc(COMM_MAX_REQS, sizeof *c->reqs);
    if (!c->reqs) {
        c->ops->free(c);
        return sk_fail(SK_ENOMEM, "comm: out of memory");
    }
    for (int k = 0; k < COMM_MAX_REQS; k++) c->reqs[k].slot = k;
    return SK_OK;
}

static bool g_split_wanted;
void comm_want_split(void) { g_split_wanted = true; }
bool comm_split_wanted(void) { return g_split_wanted; }

sk_status comm_split(comm *c, int color, int key, comm **out) {
    *out = NULL;
    if (color < 0) return sk_fail(SK_EARG, "comm_split: color %d must not be negative", color);
    for (int k = 0; k < COMM_MAX_REQS; k++)
        SK_ASSERT(!c->reqs[k].busy);   /* the contract: nothing of c in flight */
    if (!c->ops->split)
        return sk_fail(SK_EARG, "comm_split: the %s communicator cannot be split (supported: mpi, local, nccl under mpirun)", c->name);
    comm *s = NULL;
    SK_TRY(c->ops->split(c, color, key, &s));
    SK_TRY(comm_add_pool(s));
    *out = s;
    return SK_OK;
}

sk_status comm_set_backend(comm *c, backend *be) {
    for (int k = 0; c->reqs && k < COMM_MAX_REQS; k++) SK_ASSERT(!c->reqs[k].busy);
    return c->ops->set_backend ? c->ops->set_backend(c, be) : SK_OK;
}

bool comm_stream_ordered(const comm *c) { return !strcmp(c->name, "nccl"); }

int comm_device_sharers(const comm *c, int n_devices) {
    if (!c || c->local_world < 1 || n_devices < 1) return 1;
    const int dev = c->local_rank % n_devices;
    return dev < c->local_world ? (c->local_world - 1 - dev) / n_devices + 1 : 1;
}

void comm_free(comm *c) {
    if (!c) return;
    comm_req *reqs = c->reqs;
    for (int k = 0; reqs && k < COMM_MAX_REQS; k++)
        if (reqs[k].busy) comm_wait(c, &reqs[k]);
    c->ops->free(c);
    free(reqs);
}

size_t comm_elem_size(comm_elem e) {
    switch (e) {
    case COMM_F32: return 4;
    case COMM_BF16: return 2;
    case COMM_F64: return 8;
    case COMM_BYTE: return 1;
    }
    SK_ASSERT(!"comm_elem_size: unknown element type");
    return 0;
}

void comm_bf16_sum(uint16_t *acc, const uint16_t *in, size_t n) {
    for (size_t i = 0; i < n; i++) acc[i] = f32_to_bf16(bf16_to_f32(acc[i]) + bf16_to_f32(in[i]));
}

/* ---- dispatch ---- */

/* The wire type of dtype dt for operation op; SK_EARG for what comm.h does not carry. */
static sk_status comm_elem_of(dtype dt, const char *op, comm_elem *e) {
    if (dt == DT_F32) *e = COMM_F32;
    else if (dt == DT_BF16) *e = COMM_BF16;
    else return sk_fail(SK_EARG, "%s: element type %s is not supported (F32 or BF16)", op, dtype_name(dt));
    return SK_OK;
}

/* Takes a free request, fills it with the call `call` and starts it; *out (when not NULL)
 * gets it. On failure the request goes back to the pool. */
static sk_status comm_start(comm *c, const comm_req *call, comm_req **out) {
    if (out) *out = NULL;
    comm_req *r = NULL;
    for (int k = 0; k < COMM_MAX_REQS && !r; k++)
        if (!c->reqs[k].busy) r = &c->reqs[k];
    if (!r)
        return sk_fail(SK_ESTATE, "%s: %d requests are in flight already, the most a comm holds: wait for some first",
                       call->op, COMM_MAX_REQS);
    int slot = r->slot;
    *r = *call;
    r->slot = slot;
    r->busy = true;
    sk_status st = c->ops->start(c, r);
    if (st != SK_OK) {
        r->busy = false;
        return st;
    }
    if (out) *out = r;
    return SK_OK;
}

/* Starts the call and waits for it. */
static sk_status comm_run(comm *c, const comm_req *call) {
    comm_req *r;
    SK_TRY(comm_start(c, call, &r));
    return comm_wait(c, r);
}

sk_status comm_wait(comm *c, comm_req *r) {
    if (!r) return SK_OK;
    SK_ASSERT(r >= c->reqs && r < c->reqs + COMM_MAX_REQS && r->busy);
    sk_status st = c->ops->wait(c, r);
    r->busy = false;
    return st;
}

sk_status comm_test(comm *c, comm_req *r, bool *done) {
    *done = true;
    if (!r) return SK_OK;
    SK_ASSERT(r >= c->reqs && r < c->reqs + COMM_MAX_REQS && r->busy);
    return c->ops->test(c, r, done);
}

sk_status comm_all_reduce_async(comm *c, void *buf, size_t n, dtype dt, backend_stream *s, comm_req **req) {
    comm_req call = {.kind = COMM_ALL_REDUCE, .op = "all_reduce", .send = buf, .recv = buf, .n = n, .stream = s};
    *req = NULL;
    SK_TRY(comm_elem_of(dt, call.op, &call.elem));
    return comm_start(c, &call, req);
}

sk_status comm_reduce_scatter_async(comm *c, const void *send, void *recv, size_t chunk, dtype dt,
                                    backend_stream *s, comm_req **req) {
    comm_req call = {.kind = COMM_REDUCE_SCATTER, .op = "reduce_scatter", .send = send, .recv = recv, .n = chunk,
                     .stream = s};
    *req = NULL;
    SK_TRY(comm_elem_of(dt, call.op, &call.elem));
    size_t bytes = chunk * comm_elem_size(call.elem);
    const char *a = send, *b = recv;
    SK_ASSERT(chunk == 0 || b + bytes <= a || b >= a + (size_t)c->world * bytes);   /* no overlap */
    return comm_start(c, &call, req);
}

sk_status comm_all_gather_async(comm *c, const void *send, void *recv, size_t chunk, dtype dt,
                                backend_stream *s, comm_req **req) {
    comm_req call = {.kind = COMM_ALL_GATHER, .op = "all_gather", .send = send, .recv = recv, .n = chunk,
                     .stream = s};
    *req = NULL;
    SK_TRY(comm_elem_of(dt, call.op, &call.elem));
    return comm_start(c, &call, req);
}

sk_status comm_all_reduce(comm *c, void *buf, size_t n, dtype dt, backend_stream *s) {
    comm_req *r;
    SK_TRY(comm_all_reduce_async(c, buf, n, dt, s, &r));
    return comm_wait(c, r);
}

sk_status comm_reduce_scatter(comm *c, const void *send, void *recv, size_t chunk, dtype dt, backend_stream *s) {
    comm_req *r;
    SK_TRY(comm_reduce_scatter_async(c, send, recv, chunk, dt, s, &r));
    return comm_wait(c, r);
}

sk_status comm_all_gather(comm *c, const void *send, void *recv, size_t chunk, dtype dt, backend_stream *s) {
    comm_req *r;
    SK_TRY(comm_all_gather_async(c, send, recv, chunk, dt, s, &r));
    return comm_wait(c, r);
}

sk_status comm_all_reduce_f64(comm *c, double *buf, size_t n) {
    return comm_run(c, &(comm_req){.kind = COMM_ALL_REDUCE, .op = "all_reduce_f64", .elem = COMM_F64, .send = buf,
                                   .recv = buf, .n = n});
}

sk_status comm_broadcast(comm *c, void *buf, size_t bytes, int root) {
    if (root < 0 || root >= c->world)
        return sk_fail(SK_EARG, "broadcast: root %d is not a rank of a world of %d", root, c->world);
    return comm_run(c, &(comm_req){.kind = COMM_BROADCAST, .op = "broadcast", .elem = COMM_BYTE, .send = buf,
                                   .recv = buf, .n = bytes, .root = root});
}

sk_status comm_barrier(comm *c) { return comm_run(c, &(comm_req){.kind = COMM_BARRIER, .op = "barrier"}); }

sk_status comm_fetch_add(comm *c, int64_t add, int64_t *old) {
    return comm_run(c, &(comm_req){.kind = COMM_FETCH_ADD, .op = "fetch_add", .value = add, .old = old});
}

sk_status comm_counter_set(comm *c, int64_t value) {
    return comm_run(c, &(comm_req){.kind = COMM_COUNTER_SET, .op = "counter_set", .value = value});
}
