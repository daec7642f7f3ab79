/* comm: collectives between the processes (ranks) of one training job, behind one table,
 * with an MPI implementation (host buffers; mpirun, srun) and an NCCL one (device buffers;
 * the CUDA issue runs it), plus world-size-1 "local" for a single process.
 *
 *   comm *c;
 *   comm_init("auto", 300.0, &c);               // MPI when launched by mpirun/srun, else local
 *   c->ops->all_reduce_sum(c, grads, n);         // every rank ends with the sum
 *   comm_free(c);
 *
 * Every call returns SK_OK or SK_ECOMM with a message naming the operation and the rank that
 * failed or did not answer within the timeout (nonblocking calls polled, then abort): a dead
 * or hung rank makes the others stop with an error instead of hanging.
 *
 * Buffers: f32 elements unless stated; `n` counts elements. reduce_scatter and all_gather
 * work on equal chunks: rank r owns elements [r*chunk, (r+1)*chunk) of the full buffer
 * (callers pad the full length to a multiple of the world size). */
#ifndef SKEIN_COMM_H
#define SKEIN_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

typedef struct comm comm;

typedef struct comm_ops {
    /* buf(n) becomes the elementwise sum over ranks, in place. */
    sk_status (*all_reduce_sum)(comm *c, float *buf, size_t n);
    /* The same for doubles (losses, norms, token counts): small host buffers. */
    sk_status (*all_reduce_sum_f64)(comm *c, double *buf, size_t n);
    /* send(world*chunk) summed over ranks; this rank's chunk written to recv(chunk). */
    sk_status (*reduce_scatter_sum)(comm *c, const float *send, float *recv, size_t chunk);
    /* send(chunk) from every rank concatenated in rank order into recv(world*chunk). */
    sk_status (*all_gather)(comm *c, const float *send, float *recv, size_t chunk);
    /* bytes at root copied to every rank. */
    sk_status (*broadcast)(comm *c, void *buf, size_t bytes, int root);
    sk_status (*barrier)(comm *c);
    /* Atomic fetch-and-add on one 64-bit counter held by rank 0 (MPI_Fetch_and_op): *old gets
     * the value before the addition. The counter starts at 0; counter_set (collective)
     * resets it on every rank's behalf. */
    sk_status (*fetch_add)(comm *c, int64_t add, int64_t *old);
    sk_status (*counter_set)(comm *c, int64_t value);
    void (*free)(comm *c);
} comm_ops;

struct comm {
    const comm_ops *ops;
    const char *name;      /* "local", "mpi", "nccl" */
    int rank, world;       /* this process and how many there are */
    int local_rank;        /* rank among the processes of this host (the GPU to use) */
    double timeout_s;      /* every collective gives up after this long */
    void *impl;
};

/* Creates the communicator: kind "auto" (MPI when the environment shows a launcher, else
 * local), "local", "mpi" or "nccl". SK_EARG when the kind is not built in. */
sk_status comm_init(const char *kind, double timeout_s, comm **out);
/* Releases the communicator. After a collective failed (SK_ECOMM) the world is broken: the
 * MPI implementation then ends the whole job (MPI_Abort, exit status 1 on every rank) rather
 * than wait in MPI_Finalize for ranks that will never come; print the error before. */
void comm_free(comm *c);

/* In-place use: all_gather accepts send == recv + rank*chunk (the rank's own chunk already
 * in place); reduce_scatter's recv must not overlap send. Counts above INT_MAX are split
 * into several calls inside the implementations. */

/* ---- Launch environment (bootstrap) ----------------------------------------------------
 * Who started this process, read from the variables each launcher sets:
 *   OpenMPI mpirun   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
 *   PMIx / MPICH     PMIX_RANK, PMI_RANK + PMI_SIZE (MPI_Init reads them itself)
 *   Slurm srun       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (only inside a job step:
 *                    SLURM_STEP_ID set; an sbatch script's own shell is not a launch)
 *   torchrun-style   RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (torchrun, Ray
 *                    Train, Kubernetes operators): NCCL with its id sent through store.h */
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
    char master_addr[256];  /* torchrun-style only */
    int master_port;        /* torchrun-style only; 0 elsewhere */
} comm_env;

/* Reads the environment into *env. SK_EARG with a message naming the variable when a value
 * is not a number, RANK >= WORLD_SIZE, or MASTER_ADDR/MASTER_PORT are missing or bad while
 * WORLD_SIZE > 1. With no launcher: rank 0 of world 1. */
sk_status comm_env_read(comm_env *env);
const char *comm_launcher_name(comm_launcher l);

/* The kind comm_init("auto") would pick for `device` ("cpu" or "cuda"): on cpu "mpi" under
 * mpirun/PMI/srun; on cuda "nccl" under any launcher (its unique id travels through MPI
 * under mpirun/srun, through the TCP store of store.h under torchrun-style variables);
 * "local" for one process. Returns NULL with SK_EARG set when the environment is bad or asks
 * for what cannot work (torchrun-style WORLD_SIZE > 1 on cpu: use mpirun there). */
const char *comm_auto_kind(const char *device);

#endif
