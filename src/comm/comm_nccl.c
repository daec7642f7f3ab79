/* comm_nccl: comm.h over NCCL, for device buffers (one GPU per rank, the CUDA issue's
 * trainer). C against NCCL's and the CUDA runtime's C APIs; no CUDA in any header.
 *
 * Bootstrap: rank 0 makes NCCL's unique id and sends it to the others through MPI when an
 * MPI launcher started the job (mpirun, srun), else through the TCP store (store.h) at
 * MASTER_ADDR:MASTER_PORT (torchrun-style). That side channel stays open: it carries the
 * fetch-and-add counter (NCCL has no atomics) and the diagnosis after a timeout.
 *
 * Timeouts: the communicator is created nonblocking (config.blocking = 0), every NCCL call
 * is queued on this comm's stream, then polled with cudaStreamQuery and ncclCommGetAsyncError
 * until done, failed or out of time. On a timeout the rank aborts its NCCL communicator
 * (ncclCommAbort), then meets the others at a barrier on the side channel, which names the
 * ranks that never come (dead, hung, busy outside collectives).
 *
 * Buffers: float buffers must be device memory (cudaMalloc); the f64 sums (host, as comm.h
 * says) and broadcasts of host memory are staged through a device scratch buffer. Device:
 * local_rank modulo the visible GPUs. Invariants: after a failure the comm is broken (every
 * later call fails at once); comm_free of a broken comm ends the process (and under MPI the
 * job), as comm_mpi does. */
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
    cudaStream_t stream;
    int device;
    void *scratch;        /* device, SCRATCH_BYTES: staging for host buffers */
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
    if (m->host) return m->host->ops->barrier(m->host);
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

/* Waits for what was queued on the stream (and a nonblocking NCCL call still in progress). */
static sk_status nccl_wait(comm *c, const char *op) {
    nccl_impl *m = c->impl;
    double deadline = time_now() + c->timeout_s;
    for (long spins = 0;; spins++) {
        ncclResult_t async = ncclSuccess;
        ncclResult_t rc = ncclCommGetAsyncError(m->nc, &async);
        if (rc != ncclSuccess) return nccl_broken(c, op, ncclGetErrorString(rc));
        if (async != ncclSuccess && async != ncclInProgress) return nccl_broken(c, op, ncclGetErrorString(async));
        if (async == ncclSuccess) {
            cudaError_t q = cudaStreamQuery(m->stream);
            if (q == cudaSuccess) return SK_OK;
            if (q != cudaErrorNotReady) return nccl_broken(c, op, cudaGetErrorString(q));
        }
        if (time_now() > deadline) {
            char why[200];
            snprintf(why, sizeof why, "did not complete within %g s", c->timeout_s);
            return nccl_broken(c, op, why);
        }
        if (spins > 1000) nap_us(spins > 100000 ? 1000 : 20);
    }
}

/* Entry of every collective; a queued call's immediate error is handled by nccl_issued. */
static sk_status nccl_enter(comm *c, const char *op) {
    nccl_impl *m = c->impl;
    if (m->broken) return sk_fail(SK_ECOMM, "%s: the communicator is broken by an earlier failure", op);
    m->seq++;
    return SK_OK;
}

static sk_status nccl_issued(comm *c, const char *op, ncclResult_t rc) {
    if (rc != ncclSuccess && rc != ncclInProgress) return nccl_broken(c, op, ncclGetErrorString(rc));
    return nccl_wait(c, op);
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

static sk_status nccl_all_reduce(comm *c, float *buf, size_t n) {
    nccl_impl *m = c->impl;
    SK_TRY(need_device("all_reduce", buf));
    SK_TRY(nccl_enter(c, "all_reduce"));
    if (n == 0) return SK_OK;
    return nccl_issued(c, "all_reduce", ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, m->nc, m->stream));
}

/* Host doubles, staged through the scratch buffer piece by piece. */
static sk_status nccl_all_reduce_f64(comm *c, double *buf, size_t n) {
    nccl_impl *m = c->impl;
    const char *op = "all_reduce_f64";
    SK_TRY(nccl_enter(c, op));
    size_t step = SCRATCH_BYTES / sizeof(double);
    for (size_t off = 0; off < n; off += step) {
        size_t len = n - off < step ? n - off : step;
        cudaError_t e = cudaMemcpyAsync(m->scratch, buf + off, len * sizeof(double), cudaMemcpyHostToDevice, m->stream);
        if (e != cudaSuccess) return nccl_broken(c, op, cudaGetErrorString(e));
        SK_TRY(nccl_issued(c, op, ncclAllReduce(m->scratch, m->scratch, len, ncclFloat64, ncclSum, m->nc, m->stream)));
        e = cudaMemcpy(buf + off, m->scratch, len * sizeof(double), cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) return nccl_broken(c, op, cudaGetErrorString(e));
    }
    return SK_OK;
}

static sk_status nccl_reduce_scatter(comm *c, const float *send, float *recv, size_t chunk) {
    nccl_impl *m = c->impl;
    SK_TRY(need_device("reduce_scatter", send));
    SK_TRY(need_device("reduce_scatter", recv));
    SK_TRY(nccl_enter(c, "reduce_scatter"));
    if (chunk == 0) return SK_OK;
    return nccl_issued(c, "reduce_scatter",
                       ncclReduceScatter(send, recv, chunk, ncclFloat32, ncclSum, m->nc, m->stream));
}

static sk_status nccl_all_gather(comm *c, const float *send, float *recv, size_t chunk) {
    nccl_impl *m = c->impl;
    SK_TRY(need_device("all_gather", send));
    SK_TRY(need_device("all_gather", recv));
    SK_TRY(nccl_enter(c, "all_gather"));
    if (chunk == 0) return SK_OK;
    /* In place (send == recv + rank*chunk) is NCCL's own convention too. */
    return nccl_issued(c, "all_gather", ncclAllGather(send, recv, chunk, ncclFloat32, m->nc, m->stream));
}

static sk_status nccl_broadcast(comm *c, void *buf, size_t bytes, int root) {
    nccl_impl *m = c->impl;
    const char *op = "broadcast";
    if (root < 0 || root >= c->world)
        return sk_fail(SK_EARG, "broadcast: root %d is not a rank of a world of %d", root, c->world);
    SK_TRY(nccl_enter(c, op));
    if (bytes == 0) return SK_OK;
    if (on_device(buf))
        return nccl_issued(c, op, ncclBroadcast(buf, buf, bytes, ncclUint8, root, m->nc, m->stream));
    for (size_t off = 0; off < bytes; off += SCRATCH_BYTES) {
        size_t len = bytes - off < SCRATCH_BYTES ? bytes - off : SCRATCH_BYTES;
        cudaError_t e = cudaSuccess;
        if (c->rank == root)
            e = cudaMemcpyAsync(m->scratch, (char *)buf + off, len, cudaMemcpyHostToDevice, m->stream);
        if (e != cudaSuccess) return nccl_broken(c, op, cudaGetErrorString(e));
        SK_TRY(nccl_issued(c, op, ncclBroadcast(m->scratch, m->scratch, len, ncclUint8, root, m->nc, m->stream)));
        e = cudaMemcpy((char *)buf + off, m->scratch, len, cudaMemcpyDeviceToHost);
        if (e != cudaSuccess) return nccl_broken(c, op, cudaGetErrorString(e));
    }
    return SK_OK;
}

/* NCCL has no barrier: a one-element all-reduce in the scratch buffer is one. */
static sk_status nccl_barrier(comm *c) {
    nccl_impl *m = c->impl;
    SK_TRY(nccl_enter(c, "barrier"));
    return nccl_issued(c, "barrier", ncclAllReduce(m->scratch, m->scratch, 1, ncclFloat32, ncclSum, m->nc, m->stream));
}

static sk_status nccl_fetch_add(comm *c, int64_t add, int64_t *old) {
    nccl_impl *m = c->impl;
    if (m->host) return m->host->ops->fetch_add(m->host, add, old);
    if (m->st) return store_add(m->st, add, old);
    return sk_fail(SK_ESTATE, "fetch_add: no side channel (world of one without a launcher?)");
}

static sk_status nccl_counter_set(comm *c, int64_t value) {
    nccl_impl *m = c->impl;
    if (m->host) return m->host->ops->counter_set(m->host, value);
    SK_TRY(store_barrier(m->st));
    if (c->rank == 0) SK_TRY(store_counter_set(m->st, value));
    return store_barrier(m->st);
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
    if (m->scratch) cudaFree(m->scratch);
    if (m->stream) cudaStreamDestroy(m->stream);
    comm_free(m->host);
    store_free(m->st);
    free(m);
    free(c);
}

static const comm_ops nccl_ops = {
    nccl_all_reduce, nccl_all_reduce_f64, nccl_reduce_scatter, nccl_all_gather,
    nccl_broadcast, nccl_barrier, nccl_fetch_add, nccl_counter_set, nccl_free,
};

sk_status comm_nccl_init(const comm_env *env, double timeout_s, comm **out) {
    comm *c = calloc(1, sizeof *c);
    nccl_impl *m = calloc(1, sizeof *m);
    *out = NULL;
    if (!c || !m) {
        free(c);
        free(m);
        return sk_fail(SK_ENOMEM, "comm: out of memory");
    }
    c->ops = &nccl_ops;
    c->name = "nccl";
    c->timeout_s = timeout_s;
    c->impl = m;
    c->rank = env->rank;
    c->world = env->world;
    c->local_rank = env->local_rank;
    sk_status st = SK_OK;
    /* The side channel first: it fixes rank and world. */
    if (env->launcher == COMM_LAUNCH_MPIRUN || env->launcher == COMM_LAUNCH_PMI || env->launcher == COMM_LAUNCH_SLURM) {
#ifdef SKEIN_HAVE_MPI
        if ((st = comm_init("mpi", timeout_s, &m->host)) != SK_OK) goto fail;
        c->rank = m->host->rank;
        c->world = m->host->world;
        c->local_rank = m->host->local_rank;
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
    if (m->host && (st = m->host->ops->broadcast(m->host, &id, sizeof id, 0)) != SK_OK) goto fail;
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
    m->device = c->local_rank % ndev;
    CUDA_CHECK(cudaSetDevice(m->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaMalloc(&m->scratch, SCRATCH_BYTES));

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    NCCL_CHECK(ncclCommInitRankConfig(&m->nc, c->world, id, c->rank, &config));
    /* Nonblocking init: poll until every rank has joined, or time out. */
    double deadline = time_now() + timeout_s;
    for (;;) {
        ncclResult_t async = ncclInProgress;
        NCCL_CHECK(ncclCommGetAsyncError(m->nc, &async));
        if (async == ncclSuccess) break;
        if (async != ncclInProgress) {
            sk_fail(SK_ECOMM, "nccl: creating the communicator on rank %d failed: %s", c->rank, ncclGetErrorString(async));
            goto err;
        }
        if (time_now() > deadline) {
            sk_fail(SK_ECOMM, "nccl: the communicator was not complete within %g s on rank %d (another rank missing?)",
                    timeout_s, c->rank);
            goto err;
        }
        nap_us(1000);
    }
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
    if (m->scratch) cudaFree(m->scratch);
    if (m->stream) cudaStreamDestroy(m->stream);
    comm_free(m->host);
    store_free(m->st);
    free(m);
    free(c);
    return st;
}

#endif /* SKEIN_HAVE_NCCL */
