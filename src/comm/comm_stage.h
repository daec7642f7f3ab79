/* comm_stage: device buffers carried by a host-memory communicator (MPI, gloo) through pinned
 * host memory; part of comm_worker, not for callers.
 *
 * A typed collective (all_reduce, reduce_scatter, all_gather of f32 or bf16) whose buffers are
 * a device backend's memory runs in pieces of at most `cap` bytes of host memory each:
 *   down   copy the piece's part of send from the device into a pinned buffer (the stage's
 *          stream, after the point of the caller's stream where the collective was started);
 *   host   the implementation's own progress function runs the collective on the pinned
 *          buffer, as it runs any host request (an "inner" request: the same kind, op name,
 *          number and slot, the piece's count);
 *   up     copy the piece's result from the pinned buffer into recv (the stage's stream).
 * Two pinned buffers alternate, so piece k+1 comes down while piece k is on the wire and
 * piece k goes up while piece k+1 is; the request completes when its last piece is up, so a
 * caller whose comm_wait returned may use recv on any stream. Memory: 2 * cap bytes of pinned
 * host memory per comm, whatever the collective's size.
 *
 * Piece layout in a pinned buffer for a piece of len elements (W ranks): all_reduce len in
 * place; reduce_scatter W*len (owner o's part at o*len) then the len received; all_gather the
 * len sent then the W*len gathered.
 *
 * Threads: comm_stage_init, comm_stage_begin and comm_stage_free run on the caller's thread,
 * comm_stage_progress on the communication thread (which it binds to the backend's device the
 * first time); streams and events are all made on the caller's thread. One request is staged
 * at a time (the thread runs requests in order), so one set of buffers serves them all.
 *
 * Test hooks: SKEIN_COMM_STAGE=1 stages host-memory backends too (the CPU backend: the same
 * path with memcpy for copies, so CI runs it); SKEIN_COMM_STAGE_BYTES=N sets cap (default
 * 32 MiB), so small buffers are cut into many pieces. */
#ifndef SKEIN_COMM_STAGE_H
#define SKEIN_COMM_STAGE_H

#include "comm/comm_impl.h"

typedef struct comm_stage comm_stage;
struct comm_slot;

/* The staging of c's typed collectives through be (be is not host memory, or the test hook
 * asks): *out gets it, or NULL when be's memory is host memory and nothing is staged. SK_ENOMEM
 * (message set) when the pinned buffers, stream or events cannot be had. */
sk_status comm_stage_init(comm *c, backend *be, comm_stage **out);
/* Releases what init acquired (nothing may be in flight). NULL: no-op. */
void comm_stage_free(comm_stage *st);
/* Caller's thread, as r (slot r->slot) starts: whether r is staged; if so records the point
 * of r->stream that the piece copies wait for. */
bool comm_stage_begin(comm_stage *st, const comm_req *r);
/* Thread: advances staged request r (slot s) as comm_worker_ops.progress does (0 running, 1
 * complete, -1 failed with the message recorded); `progress` runs the host pieces. s->step
 * counts the pieces that are up. */
int comm_stage_progress(comm_stage *st, comm *c, comm_req *r, struct comm_slot *s,
                        int (*progress)(comm *c, comm_req *r, struct comm_slot *s));

#endif
