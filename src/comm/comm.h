/* comm: collectives between the processes (ranks) of one training job, with an MPI
 * implementation (host buffers; mpirun, srun), a gloo one (host buffers; torchrun-style
 * variables), an NCCL one (device buffers; one GPU per rank) and world-size-1 "local" for a
 * single process.
 *
 *   comm *c;
 *   comm_init("auto", "cpu", 300.0, &c);         // MPI when launched by mpirun/srun, else local
 *   comm_req *r;
 *   comm_reduce_scatter_async(c, grads, shard, chunk, DT_F32, NULL, &r);   // returns at once
 *   ... compute the next layer ...
 *   if (comm_wait(c, r) != SK_OK) ...            // shard(chunk) holds this rank's sum
 *   comm_all_reduce(c, buf, n, DT_BF16, NULL);   // blocking: start + wait
 *   comm_free(c);
 *
 * Every call returns SK_OK or a status with a message naming the operation; SK_ECOMM names
 * the rank that failed or did not answer within the timeout: a dead or hung rank makes the
 * others stop with an error instead of hanging, whether they were blocked in a call or had a
 * request in flight.
 *
 * Asynchronous calls. comm_*_async starts the collective and returns a request; the buffers
 * belong to the collective until comm_wait returns (read nothing written, write nothing read).
 * Every request returned with SK_OK is waited exactly once; comm_wait(c, NULL) is a no-op, so
 * "nothing pending" can be a NULL request. At most COMM_MAX_REQS requests are in flight.
 * Collectives start in the order they are called, which must be the same on every rank;
 * MPI and gloo progress them on a communication thread while the caller computes (one at a
 * time, in order), NCCL on the GPU.
 * One thread calls into a comm.
 *
 * Element types: DT_F32 and DT_BF16 (n and chunk count elements). A bf16 sum adds in f32 and
 * rounds each addition to bf16 once: at two ranks the result is round(a + b); with more ranks
 * the partial sums are rounded as they travel (NCCL's ncclBfloat16 behaves the same).
 *
 * Streams. s is the backend stream that produced the buffers (NULL: the backend's default
 * stream). NCCL enqueues the collective on s (a stream of the CUDA backend is its
 * cudaStream_t), so it runs after the work already issued there and the request completes
 * when s has passed it. MPI and gloo move host memory: with no backend set (comm_set_backend)
 * or a host-memory one they ignore s (on the CPU backend every stream is always done); with a
 * device backend set they stage the buffers through pinned host memory in bounded pieces, the
 * copies ordered after the point of s where the collective started, and the request completes
 * when the last piece is back in device memory (comm_stage.h). Either way, once comm_wait has
 * returned, the results may be used on any stream.
 *
 * Shapes: reduce_scatter and all_gather work on equal chunks: rank r owns elements
 * [r*chunk, (r+1)*chunk) of the full buffer (callers pad the full length to a multiple of the
 * world size). all_gather accepts send == recv + rank*chunk (the rank's own chunk already in
 * place); reduce_scatter's recv must not overlap send. Counts above INT_MAX are split into
 * several library calls inside the implementations. */
#ifndef SKEIN_COMM_H
#define SKEIN_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "base/base.h"
#include "tensor/dtype.h"

typedef struct comm comm;
typedef struct comm_req comm_req;
typedef struct comm_ops comm_ops;   /* comm_impl.h */

enum { COMM_MAX_REQS = 16 };

struct comm {
    const comm_ops *ops;
    const char *name;      /* "local", "mpi", "gloo", "nccl" */
    int rank, world;       /* this process and how many there are */
    int local_rank;        /* rank among the processes of this host (the GPU to use) */
    int local_world;       /* processes on this host (0: unknown) */
    double timeout_s;      /* every collective gives up after this long */
    void *impl;
    comm_req *reqs;        /* (COMM_MAX_REQS) comm.c's pool of requests */
};

/* Creates the communicator: kind "auto" (what comm_auto_kind(device) says), "local", "mpi",
 * "gloo" or "nccl"; device ("cpu" or "cuda") matters only to "auto". SK_EARG when the kind
 * is not built in or the environment is bad. */
sk_status comm_init(const char *kind, const char *device, double timeout_s, comm **out);
/* Tells c whose memory the typed collectives' buffers are: be's (a device backend's: NCCL
 * needs one; MPI and gloo stage it through 2 x 32 MiB of pinned host memory), or host memory
 * (be NULL, the default, or a host-memory backend). Nothing may be in flight. Set NULL again
 * before be is freed. SK_EARG when c cannot move be's memory (NCCL and host memory), SK_ENOMEM
 * when the staging cannot be allocated. */
sk_status comm_set_backend(comm *c, backend *be);
/* Whether c's typed collectives are ordered on their stream s (NCCL): work issued to s after
 * the call reads the result without comm_wait. False for MPI, gloo and local: a device
 * buffer's result is there once comm_wait has returned (staged: comm_stage.h), not before. */
bool comm_stream_ordered(const comm *c);
/* Releases the communicator (requests in flight are completed first). After a collective
 * failed (SK_ECOMM) the world is broken: the MPI implementation then ends the whole job
 * (MPI_Abort, exit status 1 on every rank) rather than wait in MPI_Finalize for ranks that
 * will never come; print the error before. gloo returns (the caller exits non-zero); NCCL
 * ends the process (exit status 1). */
void comm_free(comm *c);

/* ---- Typed collectives, asynchronous (see the file comment) ----
 * all_reduce: buf(n) becomes the elementwise sum over ranks, in place.
 * reduce_scatter: send(world*chunk) summed over ranks; this rank's chunk written to recv(chunk).
 * all_gather: send(chunk) from every rank concatenated in rank order into recv(world*chunk).
 * On SK_OK *req is the request to wait on; on failure *req is NULL and nothing started. */
sk_status comm_all_reduce_async(comm *c, void *buf, size_t n, dtype dt, backend_stream *s, comm_req **req);
sk_status comm_reduce_scatter_async(comm *c, const void *send, void *recv, size_t chunk, dtype dt,
                                    backend_stream *s, comm_req **req);
sk_status comm_all_gather_async(comm *c, const void *send, void *recv, size_t chunk, dtype dt,
                                backend_stream *s, comm_req **req);
/* Blocks until req completed (SK_OK), failed or timed out (SK_ECOMM naming the operation and
 * the ranks); releases req either way. NULL: SK_OK at once. */
sk_status comm_wait(comm *c, comm_req *req);
/* Whether req has completed, without blocking and without releasing it (comm_wait still
 * follows). SK_ECOMM when it failed. */
sk_status comm_test(comm *c, comm_req *req, bool *done);

/* ---- Blocking convenience: start, then wait ---- */
sk_status comm_all_reduce(comm *c, void *buf, size_t n, dtype dt, backend_stream *s);
sk_status comm_reduce_scatter(comm *c, const void *send, void *recv, size_t chunk, dtype dt, backend_stream *s);
sk_status comm_all_gather(comm *c, const void *send, void *recv, size_t chunk, dtype dt, backend_stream *s);
/* Sum of doubles over ranks, in place (losses, norms, token counts): small host buffers. */
sk_status comm_all_reduce_f64(comm *c, double *buf, size_t n);
/* bytes of host memory at root copied to every rank. */
sk_status comm_broadcast(comm *c, void *buf, size_t bytes, int root);
sk_status comm_barrier(comm *c);
/* Atomic fetch-and-add on one 64-bit counter held by rank 0 (MPI's window; the TCP store's
 * under gloo and torchrun-style NCCL): *old gets
 * the value before the addition. The counter starts at 0; comm_counter_set (collective)
 * resets it on every rank's behalf. */
sk_status comm_fetch_add(comm *c, int64_t add, int64_t *old);
sk_status comm_counter_set(comm *c, int64_t value);

/* ---- Sub-communicators ----
 * comm_split: collective over every rank of c, with no request of c in flight: the ranks that
 * pass the same color form a new comm *out, ranked by key (ties by their rank in c), whose
 * collectives are independent of c's (tensor x data parallel training: a group per color).
 * It starts on host memory whatever c's backend is (comm_set_backend is per comm). Free it
 * with comm_free before c. local: a world of one again; MPI: MPI_Comm_split, which
 * needs MPI_THREAD_MULTIPLE (each comm has its own communication thread): call
 * comm_want_split() before comm_init, which then asks MPI for it (only then: with it, Open MPI
 * was seen to hang a server's rank 0 after another rank died, where the usual level fails
 * cleanly); NCCL: ncclCommSplit, with its MPI side channel split alike (under mpirun or srun,
 * after comm_want_split; its torchrun-style store has no split: SK_EARG); gloo: SK_EARG, not
 * supported yet. */
sk_status comm_split(comm *c, int color, int key, comm **out);
void comm_want_split(void);

/* ---- Launch environment (bootstrap) ----------------------------------------------------
 * Who started this process, read from the variables each launcher sets:
 *   OpenMPI mpirun   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
 *   PMIx / MPICH     PMIX_RANK, PMI_RANK + PMI_SIZE (MPI_Init reads them itself)
 *   Slurm srun       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (only inside a job step:
 *                    SLURM_STEP_ID set; an sbatch script's own shell is not a launch)
 *   torchrun-style   RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (torchrun, Ray
 *                    Train, Kubernetes operators): gloo on CPUs, NCCL on GPUs, both
 *                    bootstrapped through the TCP store of store.h at MASTER_ADDR */
typedef enum comm_launcher {
    COMM_LAUNCH_NONE = 0,   /* started by hand: one process */
    COMM_LAUNCH_MPIRUN,
    COMM_LAUNCH_PMI,
    COMM_LAUNCH_SLURM,
    COMM_LAUNCH_TORCHRUN,
} comm_launcher;

typedef struct comm_env {
    comm_launcher launcher;
    int rank, world, local_rank;
    int local_world;        /* processes on this host: OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS,
                             * the most of SLURM_STEP_TASKS_PER_NODE, LOCAL_WORLD_SIZE; 0 unknown */
    char master_addr[256];  /* torchrun-style only */
    int master_port;        /* torchrun-style only; 0 elsewhere */
} comm_env;

/* Reads the environment into *env. SK_EARG with a message naming the variable when a value
 * is not a number, RANK >= WORLD_SIZE, or MASTER_ADDR/MASTER_PORT are missing or bad while
 * WORLD_SIZE > 1. With no launcher: rank 0 of world 1. */
sk_status comm_env_read(comm_env *env);
const char *comm_launcher_name(comm_launcher l);

/* The kind comm_init("auto") picks for `device` ("cpu" or "cuda"): "local" for one process;
 * else the host kind, "mpi" under mpirun/PMI/srun and "gloo" under torchrun-style variables;
 * on cuda "nccl" instead when every rank of a host has a GPU of its own (local_world at most
 * the visible GPUs, or local_world unknown: the launcher did not say) and NCCL is built in (its unique id travels
 * through MPI under mpirun/srun, through the TCP store of store.h under torchrun-style
 * variables). With more ranks than GPUs (NCCL refuses two ranks on one GPU) it keeps the host
 * kind, staging device buffers (comm_set_backend), and rank 0 says so on stderr. Returns NULL
 * with SK_EARG set when the environment is bad or asks for what is not built in
 * (torchrun-style WORLD_SIZE > 1 without gloo where gloo is needed). */
const char *comm_auto_kind(const char *device);
/* How many ranks of this host use the device this rank uses when the host's ranks take
 * local_rank modulo n_devices (backend_create_on): 1 when unknown. */
int comm_device_sharers(const comm *c, int n_devices);

#endif
