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
void comm_free(comm *c);

#endif
