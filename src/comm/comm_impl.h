/* comm_impl: what the implementations of comm.h share; not for callers.
 *
 * comm.c checks the arguments of every call, fills a request from its pool (c->reqs) with the
 * call, and hands it to the implementation's table: start begins it, wait and test follow it.
 * Blocking calls are start + wait. Each implementation keeps what it needs per request in
 * its own arrays indexed by the request's slot.
 *
 * Each implementation file defines one constructor; the ones not built in (no MPI, gloo, NCCL)
 * are absent and comm.c says so. A constructor fills a comm whose ops, name, rank, world,
 * local_rank, local_world and timeout_s are set, or returns a status with a message and leaves nothing
 * allocated; comm.c adds the request pool. */
#ifndef SKEIN_COMM_IMPL_H
#define SKEIN_COMM_IMPL_H

#include "comm/comm.h"

typedef enum comm_kind {
    COMM_ALL_REDUCE,       /* recv(n) summed in place (send == recv) */
    COMM_REDUCE_SCATTER,   /* send(world*n) -> recv(n) */
    COMM_ALL_GATHER,       /* send(n) -> recv(world*n) */
    COMM_BROADCAST,        /* recv(n bytes) from root */
    COMM_BARRIER,
    COMM_FETCH_ADD,        /* value added to rank 0's counter, the old value into *old */
    COMM_COUNTER_SET,      /* collective: rank 0's counter = value */
} comm_kind;

/* Element types on the wire: comm.h's dtypes, plus doubles and bytes for the host calls. */
typedef enum comm_elem { COMM_F32, COMM_BF16, COMM_F64, COMM_BYTE } comm_elem;

struct comm_req {
    int slot;              /* index in c->reqs and in the implementation's arrays */
    bool busy;             /* handed out, not yet waited */
    comm_kind kind;
    const char *op;        /* the operation's name for messages: "all_reduce", ... */
    comm_elem elem;
    const void *send;
    void *recv;
    size_t n;              /* elements (broadcast: bytes) */
    int root;
    int64_t value;
    int64_t *old;
    backend_stream *stream;
};

struct comm_ops {
    /* Begins r. SK_OK: under way (or done); else nothing started and the message is set. */
    sk_status (*start)(comm *c, comm_req *r);
    /* Blocks until r is complete; SK_ECOMM with a message when it failed or timed out. */
    sk_status (*wait)(comm *c, comm_req *r);
    /* *done = whether r is complete, without blocking. */
    sk_status (*test)(comm *c, comm_req *r, bool *done);
    void (*free)(comm *c);
    /* Optional (comm_set_backend): the typed collectives' buffers are be's memory from now on
     * (NULL: host memory). NULL entry: nothing to do (local). */
    sk_status (*set_backend)(comm *c, backend *be);
    /* comm_split's implementation (the caller adds the request pool); NULL: not supported. */
    sk_status (*split)(comm *c, int color, int key, comm **out);
};

/* Bytes of one element. */
size_t comm_elem_size(comm_elem e);
/* acc(n) += in(n) in bf16: each sum computed in f32 and rounded once (comm.h's rule). */
void comm_bf16_sum(uint16_t *acc, const uint16_t *in, size_t n);

sk_status comm_local_init(double timeout_s, comm **out);
/* Whether comm_want_split() was called (this process's comms will be split). */
bool comm_split_wanted(void);
/* Gives a new comm c its request pool (comm_init, comm_split); on failure frees c. */
sk_status comm_add_pool(comm *c);
#ifdef SKEIN_HAVE_MPI
sk_status comm_mpi_init(double timeout_s, comm **out);
/* Ends every rank of c's job now (MPI_Abort, exit status 1); for a failure elsewhere (NCCL). */
void comm_mpi_abort(comm *c) __attribute__((noreturn));
#endif
#ifdef SKEIN_HAVE_GLOO
sk_status comm_gloo_init(const comm_env *env, double timeout_s, comm **out);
#endif
#ifdef SKEIN_HAVE_NCCL
sk_status comm_nccl_init(const comm_env *env, double timeout_s, comm **out);
#endif

/* Largest element count one library call gets (INT_MAX; the test hook SKEIN_COMM_CHUNK
 * lowers it so the splitting is exercised on small buffers). */
size_t comm_chunk_limit(void);

#endif
