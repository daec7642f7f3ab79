/* comm_impl: what the implementations of comm.h share; not for callers.
 *
 * Each implementation file defines one constructor; the ones not built in (no MPI, no NCCL)
 * are absent and comm.c says so. A constructor fills a comm whose ops, name, rank, world,
 * local_rank and timeout_s are set, or returns a status with a message and leaves nothing
 * allocated. */
#ifndef SKEIN_COMM_IMPL_H
#define SKEIN_COMM_IMPL_H

#include "comm/comm.h"

sk_status comm_local_init(double timeout_s, comm **out);
#ifdef SKEIN_HAVE_MPI
sk_status comm_mpi_init(double timeout_s, comm **out);
/* Ends every rank of c's job now (MPI_Abort, exit status 1); for a failure elsewhere (NCCL). */
void comm_mpi_abort(comm *c) __attribute__((noreturn));
#endif
#ifdef SKEIN_HAVE_NCCL
sk_status comm_nccl_init(const comm_env *env, double timeout_s, comm **out);
#endif

/* Largest element count one library call gets (INT_MAX; the test hook SKEIN_COMM_CHUNK
 * lowers it so the splitting is exercised on small buffers). */
size_t comm_chunk_limit(void);

#endif
