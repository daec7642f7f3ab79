/* comm_nccl: comm.h over NCCL, for device buffers (one GPU per rank, the CUDA backend's
 * trainer). C against NCCL's and the CUDA runtime's C APIs; no CUDA in any header.
 *
 * Bootstrap: rank 0 makes NCCL's unique id and sends it to the others through MPI when an
 * MPI launcher started the job (mpirun, srun), else through the TCP store (store.h) at
 * MASTER_ADDR:MASTER_PORT (torchrun-style). That side channel stays open: it carries the
 * fetch-and-add counter (NCCL has no atomics) and the diagnosis after a timeout.
 *
 * Asynchronous collectives: the typed all_reduce, reduce_scatter and all_gather are enqueued
 * on the caller's stream (a backend_stream of the CUDA backend is its cudaStream_t; NULL the
 * CUDA default stream) and an event per request slot is recorded after them; wait and test
 * poll that event and ncclCommGetAsyncError. The host calls (f64 sums, broadcasts, barrier,
 * counter) are staged through a device scratch buffer on this comm's own stream and complete
 * inside start.
 *
 * Timeouts: the communicator is created nonblocking (config.blocking = 0): a call that
 * returns ncclInProgress is polled to its end before the next. Every request gives up
 * timeout_s after it started: the rank aborts its NCCL communicator (ncclCommAbort), then
 * meets the others at a barrier on the side channel, which names the ranks that never come
 * (dead, hung, busy outside collectives).
 *
 * Split (comm_split: tensor x data parallel groups): ncclCommSplit, the MPI side channel split
 * alike; a store side channel has no split, so under torchrun-style variables it is refused.
 *
 * Buffers: typed collectives need device memory (cudaMalloc); host memory is refused.
 * Device: local_rank modulo the visible GPUs. Invariants: after a failure the comm is broken
 * (every later call fails at once); comm_free of a broken comm ends the process (and under
 * MPI the job), as comm_mpi does. */
#ifdef SKEIN_HAVE_NCCL

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_impl.h"
#include "comm/store.h"

enum { SCRATCH_BYTES = 1 << 20 };

typedef struct nccl_impl {
    ncclComm_t nc;
    cudaStream_t stream;  /* the host calls' staging */
    int device;
    void *scratch;        /* device, SCRATCH_BYTES: staging for host buffers */
    cudaEvent_t ev[COMM_MAX_REQS];   /* per request slot: recorded after its collective */
    double t0[COMM_MAX_REQS];        /* per request slot: when it started */
    comm *host;           /* MPI side channel, or NULL */
    store *st;            /* TCP side channel, or NULL */
    int broken;
    int64_t seq;          /* collectives entered */
} nccl_impl;

#define CUDA_CHECK(call)                                                                   \
    do {                                                                                   \
        cudaError_t cu_rc_ = (call);                                                       \
        if (cu_rc_ != cudaSuccess) {                                                       \
            sk_fail(SK_ECOMM, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__,        \
                    cudaGetErrorString(cu_rc_));                                           \
            goto err;                                                                      \
        }                                                                                  \
    } while (0)

#define NCCL_CHECK(call)                                                                   \
    do {                                                                                   \
        ncclResult_t nc_rc_ = (call);                                                      \
        if (nc_rc_ != ncclSuccess && nc_rc_ != ncclInProgress) {                           \
            sk_fail(SK_ECOMM, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__,        \
                    ncclGetErrorString(nc_rc_));                                           \
            goto err;                                                                      \
        }                                                                                  \
    } while (0)

static void nap_us(long us) {
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

/* The side channel's barrier, used after a timeout: its error names the missing ranks. */
static sk_status side_barrier(nccl_impl *m) {
    if (m->host) return comm_barrier(m->host);
    if (m->st) return store_barrier(m->st);
    return SK_OK;
}

/* A collective failed or timed out (`why`): aborts NCCL, asks the side channel who is
 * missing, records the message, marks the comm broken. */
static sk_status nccl_broken(comm *c, const char *op, const char *why) {
    nccl_impl *m = c->impl;
    char first[700];
    snprintf(first, sizeof first, "%s (collective #%lld) on rank %d: %s", op, (long long)m->seq, c->rank, why);
    m->broken = 1;
    ncclCommAbort(m->nc);
    m->nc = NULL;
    sk_status st = side_barrier(m);
    if (st != SK_OK) sk_fail_ctx(SK_ECOMM, "%s", first);
    else sk_fail(SK_ECOMM, "%s; every rank reached the check after it (NCCL itself stalled?)", first);
    fprintf(stderr, "skein: rank %d: %s\n", c->rank, sk_errmsg());
    return SK_ECOMM;
}

/* Looks at the request of `slot` (op): *done once its event has passed. An NCCL or CUDA
 * error, or t0 + timeout passed, breaks the comm (SK_ECOMM). block: look until done. */
static sk_status nccl_poll(comm *c, const char *op, int slot, bool block, bool *done) {
    nccl_impl *m = c->impl;
    double deadline = m->t0[slot] + c->timeout_s;
    *done = false;
    if (!m->nc) return sk_fail(SK_ECOMM, "%s: the communicator is broken by an earlier failure", op);
    for (long spins = 0;; spins++) {
        ncclResult_t async = ncclSuccess;
        ncclResult_t rc = ncclCommGetAsyncError(m->nc, &async);
        if (rc != ncclSuccess) return nccl_broken(c, op, ncclGetErrorString(rc));
        if (async != ncclSuccess && async != ncclInProgress) return nccl_broken(c, op, ncclGetErrorString(async));
        if (async == ncclSuccess) {
            cudaError_t q = cudaEventQuery(m->ev[slot]);
            if (q == cudaSuccess) {
                *done = true;
                return SK_OK;
            }
            if (q != cudaErrorNotReady) return nccl_broken(c, op, cudaGetErrorString(q));
        }
        if (time_now() > deadline) {
            char why[200];
            snprintf(why, sizeof why, "did not complete within %g s", c->timeout_s);
            return nccl_broken(c, op, why);
        }
        if (!block) return SK_OK;
        if (spins > 1000) nap_us(spins > 100000 ? 1000 : 20);
    }
}

/* An NCCL call was just made for the request of `slot` (rc): lets a nonblocking enqueue
 * finish, then records the slot's event on stream s. */
static sk_status nccl_issued(comm *c, const char *op, int slot, ncclResult_t rc, cudaStream_t s) {
    nccl_impl *m = c->impl;
    if (rc != ncclSuccess && rc != ncclInProgress) return nccl_broken(c, op, ncclGetErrorString(rc));
    ncclResult_t async = rc;
    while (async == ncclInProgress) {
        if (ncclCommGetAsyncError(m->nc, &async) != ncclSuccess) async = ncclInternalError;
        if (async == ncclInProgress && time_now() > m->t0[slot] + c->timeout_s)
            return nccl_broken(c, op, "the call was not enqueued within the timeout");
    }
    if (async != ncclSuccess) return nccl_broken(c, op, ncclGetErrorString(async));
    cudaError_t e = cudaEventRecord(m->ev[slot], s);
    return e == cudaSuccess ? SK_OK : nccl_broken(c, op, cudaGetErrorString(e));
}

/* The same, then waits for it: the host calls, which complete inside start. */
static sk_status nccl_done(comm *c, const char *op, int slot, ncclResult_t rc, cudaStream_t s) {
    bool done;
    SK_TRY(nccl_issued(c, op, slot, rc, s));
    return nccl_poll(c, op, slot, true, &done);
}

/* 1 when p is device (or managed) memory. */
static int on_device(const void *p) {
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError(); /* older runtimes fail on plain host pointers: clear it */
        return 0;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

static sk_status need_device(const char *op, const void *p) {
    if (p && !on_device(p))
        return sk_fail(SK_EARG, "%s: NCCL needs device buffers (cudaMalloc), got host memory", op);
    return SK_OK;
}

/* A host call's copy on the staging stream failed: the comm is broken. */
#define STAGE_COPY(dst, src, bytes, dir)                                                   \
    do {                                                                                   \
        cudaError_t e_ = cudaMemcpyAsync(dst, src, bytes, dir, m->stream);                 \
        if (e_ != cudaSuccess) return nccl_broken(c, r->op, cudaGetErrorString(e_));       \
    } while (0)

/* Sum of host doubles, staged through the scratch buffer piece by piece. */
static sk_status nccl_host_sum_f64(comm *c, comm_req *r) {
    nccl_impl *m = c->impl;
    double *buf = r->recv;
    size_t step = SCRATCH_BYTES / sizeof(double);
    for (size_t off = 0; off < r->n; off += step) {
        size_t len = r->n - off < step ? r->n - off : step;
        STAGE_COPY(m->scratch, buf + off, len * sizeof(double), cudaMemcpyHostToDevice);
        ncclResult_t rc = ncclAllReduce(m->scratch, m->scratch, len, ncclFloat64, ncclSum, m->nc, m->stream);
        SK_TRY(nccl_issued(c, r->op, r->slot, rc, m->stream));
        STAGE_COPY(buf + off, m->scratch, len * sizeof(double), cudaMemcpyDeviceToHost);
        SK_TRY(nccl_done(c, r->op, r->slot, ncclSuccess, m->stream));
    }
    return SK_OK;
}

/* Broadcast of device memory in one call, of host memory through the scratch buffer. */
static sk_status nccl_host_broadcast(comm *c, comm_req *r) {
    nccl_impl *m = c->impl;
    char *buf = r->recv;
    if (on_device(buf))
        return nccl_done(c, r->op, r->slot, ncclBroadcast(buf, buf, r->n, ncclUint8, r->root, m->nc, m->stream),
                         m->stream);
    for (size_t off = 0; off < r->n; off += SCRATCH_BYTES) {
        size_t len = r->n - off < SCRATCH_BYTES ? r->n - off : SCRATCH_BYTES;
        if (c->rank == r->root) STAGE_COPY(m->scratch, buf + off, len, cudaMemcpyHostToDevice);
        ncclResult_t rc = ncclBroadcast(m->scratch, m->scratch, len, ncclUint8, r->root, m->nc, m->stream);
        SK_TRY(nccl_issued(c, r->op, r->slot, rc, m->stream));
        STAGE_COPY(buf + off, m->scratch, len, cudaMemcpyDeviceToHost);
        SK_TRY(nccl_done(c, r->op, r->slot, ncclSuccess, m->stream));
    }
    return SK_OK;
}

static sk_status nccl_start(comm *c, comm_req *r) {
    nccl_impl *m = c->impl;
    const int k = r->slot;
    if (r->kind == COMM_FETCH_ADD) {
        if (m->host) return comm_fetch_add(m->host, r->value, r->old);
        if (m->st) return store_add(m->st, r->value, r->old);
        return sk_fail(SK_ESTATE, "fetch_add: no side channel (world of one without a launcher?)");
    }
    if (r->kind == COMM_COUNTER_SET) {
        if (m->host) return comm_counter_set(m->host, r->value);
        SK_TRY(store_barrier(m->st));
        if (c->rank == 0) SK_TRY(store_counter_set(m->st, r->value));
        return store_barrier(m->st);
    }
    bool typed = r->elem == COMM_F32 || r->elem == COMM_BF16;
    if (typed) {
        SK_TRY(need_device(r->op, r->send));
        SK_TRY(need_device(r->op, r->recv));
    }
    if (m->broken) return sk_fail(SK_ECOMM, "%s: the communicator is broken by an earlier failure", r->op);
    m->seq++;
    m->t0[k] = time_now();
    const ncclDataType_t t = r->elem == COMM_BF16 ? ncclBfloat16 : ncclFloat32;
    cudaStream_t s = (cudaStream_t)r->stream;
    switch (r->kind) {
    case COMM_ALL_REDUCE:
        if (!typed) return nccl_host_sum_f64(c, r);
        return nccl_issued(c, r->op, k, ncclAllReduce(r->recv, r->recv, r->n, t, ncclSum, m->nc, s), s);
    case COMM_REDUCE_SCATTER:
        return nccl_issued(c, r->op, k, ncclReduceScatter(r->send, r->recv, r->n, t, ncclSum, m->nc, s), s);
    case COMM_ALL_GATHER:
        /* In place (send == recv + rank*chunk) is NCCL's own convention too. */
        return nccl_issued(c, r->op, k, ncclAllGather(r->send, r->recv, r->n, t, m->nc, s), s);
    case COMM_BROADCAST:
        return nccl_host_broadcast(c, r);
    case COMM_BARRIER:
        /* NCCL has no barrier: a one-element all-reduce in the scratch buffer is one. */
        return nccl_done(c, r->op, k, ncclAllReduce(m->scratch, m->scratch, 1, ncclFloat32, ncclSum, m->nc, m->stream),
                         m->stream);
    case COMM_FETCH_ADD:
    case COMM_COUNTER_SET:
        break;
    }
    return SK_OK;
}

static sk_status nccl_test(comm *c, comm_req *r, bool *done) {
    if (r->elem != COMM_F32 && r->elem != COMM_BF16) {
        *done = true;   /* host calls completed inside start */
        return SK_OK;
    }
    return nccl_poll(c, r->op, r->slot, false, done);
}

static sk_status nccl_wait(comm *c, comm_req *r) {
    bool done;
    if (r->elem != COMM_F32 && r->elem != COMM_BF16) return SK_OK;
    return nccl_poll(c, r->op, r->slot, true, &done);
}

/* Releases what init acquired (any part of it). */
static void nccl_release(comm *c) {
    nccl_impl *m = c->impl;
    for (int k = 0; k < COMM_MAX_REQS; k++)
        if (m->ev[k]) cudaEventDestroy(m->ev[k]);
    if (m->scratch) cudaFree(m->scratch);
    if (m->stream) cudaStreamDestroy(m->stream);
    comm_free(m->host);
    store_free(m->st);
    free(m);
    free(c);
}

static void nccl_free(comm *c) {
    nccl_impl *m = c->impl;
    if (m->broken) {
        fflush(stdout);
        fflush(stderr);
#ifdef SKEIN_HAVE_MPI
        if (m->host) comm_mpi_abort(m->host);
#endif
        _Exit(1);
    }
    if (m->nc) {
        ncclCommFinalize(m->nc);
        /* Finalize is nonblocking here: let it finish before destroying. */
        ncclResult_t async = ncclInProgress;
        double end = time_now() + c->timeout_s;
        while (ncclCommGetAsyncError(m->nc, &async) == ncclSuccess && async == ncclInProgress && time_now() < end)
            nap_us(100);
        if (async == ncclSuccess) ncclCommDestroy(m->nc);
        else ncclCommAbort(m->nc);
    }
    nccl_release(c);
}

/* NCCL moves device memory only: a host-memory backend is refused (MPI or gloo carry it). */
static sk_status nccl_set_backend(comm *c, backend *be) {
    if (be && be->host_memory)
        return sk_fail(SK_EARG, "the nccl communicator moves device memory, but the %s backend's buffers are host "
                       "memory: use --comm mpi (or gloo) with --device %s", be->name, be->name);
    return SK_OK;
}

/* Polls the nonblocking creation of nc (an init or a split) until every rank has joined;
 * SK_ECOMM on its failure or after c's timeout (what: the call, for the message). */
static sk_status nccl_ready(const comm *c, ncclComm_t nc, const char *what) {
    const double deadline = time_now() + c->timeout_s;
    for (;;) {
        ncclResult_t async = ncclInProgress;
        if (ncclCommGetAsyncError(nc, &async) != ncclSuccess) async = ncclInternalError;
        if (async == ncclSuccess) return SK_OK;
        if (async != ncclInProgress)
            return sk_fail(SK_ECOMM, "nccl: %s on rank %d failed: %s", what, c->rank, ncclGetErrorString(async));
        if (time_now() > deadline)
            return sk_fail(SK_ECOMM, "nccl: %s was not complete within %g s on rank %d (another rank missing?)", what,
                           c->timeout_s, c->rank);
        nap_us(1000);
    }
}

/* This rank's streams, scratch and events on m->device (cudaSetDevice'd). */
static sk_status nccl_resources(nccl_impl *m) {
    CUDA_CHECK(cudaSetDevice(m->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaMalloc(&m->scratch, SCRATCH_BYTES));
    for (int k = 0; k < COMM_MAX_REQS; k++) CUDA_CHECK(cudaEventCreateWithFlags(&m->ev[k], cudaEventDisableTiming));
    return SK_OK;
err:
    return SK_ECOMM;
}

static sk_status nccl_split(comm *c, int color, int key, comm **out);
static const comm_ops nccl_ops = {nccl_start, nccl_wait, nccl_test, nccl_free, nccl_set_backend, nccl_split};

/* A new nccl comm with a zeroed nccl_impl and timeout_s; NULL when memory runs out. */
static comm *nccl_new(double timeout_s) {
    comm *c = calloc(1, sizeof *c);
    nccl_impl *m = calloc(1, sizeof *m);
    if (!c || !m) {
        free(c);
        free(m);
        return NULL;
    }
    *c = (comm){.ops = &nccl_ops, .name = "nccl", .timeout_s = timeout_s, .impl = m};
    return c;
}

/* comm_split: ncclCommSplit of c's communicator, its side channel split alike (MPI's, which
 * comm_want_split prepared; a torchrun-style store has no split: refused). Collective over c's
 * ranks, none of c's requests in flight (comm_split's contract); the new comm shares c's
 * device. */
static sk_status nccl_split(comm *c, int color, int key, comm **out) {
    nccl_impl *m = c->impl;
    *out = NULL;
    if (!m->host)
        return sk_fail(SK_EARG, "comm_split: an nccl communicator splits where MPI carries its side channel (mpirun, "
                       "srun); under torchrun-style variables use --comm gloo");
    if (!m->nc) return sk_fail(SK_ECOMM, "comm_split: the nccl communicator is broken by an earlier failure");
    comm *s = nccl_new(c->timeout_s);
    if (!s) return sk_fail(SK_ENOMEM, "comm: out of memory");
    nccl_impl *n = s->impl;
    n->device = m->device;
    sk_status st = comm_split(m->host, color, key, &n->host);
    if (st == SK_OK) {
        s->rank = n->host->rank;
        s->world = n->host->world;
        s->local_rank = n->host->local_rank;
        s->local_world = n->host->local_world;
        st = nccl_resources(n);
    }
    if (st == SK_OK) {
        ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
        config.blocking = 0;
        const ncclResult_t rc = ncclCommSplit(m->nc, color, key, &n->nc, &config);
        st = rc != ncclSuccess && rc != ncclInProgress
                 ? sk_fail(SK_ECOMM, "nccl: ncclCommSplit on rank %d: %s", c->rank, ncclGetErrorString(rc))
                 : nccl_ready(s, n->nc, "splitting the communicator");
    }
    if (st != SK_OK) {
        if (n->nc) ncclCommAbort(n->nc);
        nccl_release(s);
        return st;
    }
    *out = s;
    return SK_OK;
}

sk_status comm_nccl_init(const comm_env *env, double timeout_s, comm **out) {
    comm *c = nccl_new(timeout_s);
    *out = NULL;
    if (!c) return sk_fail(SK_ENOMEM, "comm: out of memory");
    nccl_impl *m = c->impl;
    c->rank = env->rank;
    c->world = env->world;
    c->local_rank = env->local_rank;
    c->local_world = env->local_world;
    sk_status st = SK_OK;
    /* The side channel first: it fixes rank and world. */
    if (env->launcher == COMM_LAUNCH_MPIRUN || env->launcher == COMM_LAUNCH_PMI || env->launcher == COMM_LAUNCH_SLURM) {
#ifdef SKEIN_HAVE_MPI
        if ((st = comm_init("mpi", "cpu", timeout_s, &m->host)) != SK_OK) goto fail;
        c->rank = m->host->rank;
        c->world = m->host->world;
        c->local_rank = m->host->local_rank;
        c->local_world = m->host->local_world;
#else
        st = sk_fail(SK_EARG, "launched by %s, but this skein is built without MPI, which carries NCCL's id there; "
                     "use torchrun-style variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)",
                     comm_launcher_name(env->launcher));
        goto fail;
#endif
    } else if (env->world > 1) {
        if ((st = store_open(env->master_addr, env->master_port, env->rank, env->world, timeout_s, &m->st)) != SK_OK)
            goto fail;
    }
    /* The id first: it needs no GPU, so a CPU machine tests the launch up to here. */
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (c->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    if (m->host && (st = comm_broadcast(m->host, &id, sizeof id, 0)) != SK_OK) goto fail;
    if (m->st && (st = store_bcast(m->st, &id, sizeof id)) != SK_OK) goto fail;

    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess) {
        sk_fail(SK_ECOMM, "nccl: rank %d has the communicator's id but no usable GPU: cudaGetDeviceCount: %s",
                c->rank, cudaGetErrorString(e));
        goto err;
    }
    if (ndev < 1) {
        sk_fail(SK_ECOMM, "nccl: no CUDA device is visible on rank %d", c->rank);
        goto err;
    }
    m->device = c->local_rank % ndev;   /* backend_create_on's choice for the same local_rank */
    if (nccl_resources(m) != SK_OK) goto err;

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    NCCL_CHECK(ncclCommInitRankConfig(&m->nc, c->world, id, c->rank, &config));
    /* Nonblocking init: poll until every rank has joined, or time out. */
    if (nccl_ready(c, m->nc, "creating the communicator") != SK_OK) goto err;
    *out = c;
    return SK_OK;
err:
    st = SK_ECOMM;
fail:
    if (m->nc) ncclCommAbort(m->nc);
    m->nc = NULL;
#ifdef SKEIN_HAVE_MPI
    if (m->host && c->world > 1) {
        /* The others may wait for this rank in the side channel: end the job. */
        fprintf(stderr, "skein: rank %d: %s\n", c->rank, sk_errmsg());
        comm_mpi_abort(m->host);
    }
#endif
    nccl_release(c);
    return st;
}

#endif /* SKEIN_HAVE_NCCL */
