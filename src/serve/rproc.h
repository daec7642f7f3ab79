/* rproc: an engine in a child process (skein serve --replica-process), driven step by step
 * over a socket pair, so that a crash of one replica leaves the server and the others.
 *
 *   rproc *p;
 *   rproc_start(build, ctx, &p);            // fork; the child builds its engine: build(ctx, &e)
 *   rproc_add(p, prompt, n, &params, &id);  // queued here, sent with the next step
 *   rproc_step(p, &out, &n_out);            // one engine step in the child, its outputs here
 *   rproc_free(p);                          // the child exits (killed if it does not)
 *
 * The child is a fork of the server taken from the replica's own thread, without exec: it
 * shares every page of the parent (the model's read-only mapping above all: one copy in the
 * page cache, no weight read or copied), builds its own engine through `build` and answers
 * the parent's messages until its socket closes. It closes every other descriptor at once (the
 * server's listening socket and connections, the other children's sockets) and dies with the
 * thread that forked it (PR_SET_PDEATHSIG); when it exits it kills and reaps the processes it
 * forked itself (a split engine's other ranks, replica_tp.c). A CUDA engine runs there only
 * because the parent never initialised CUDA: a forked child cannot use its parent's context,
 * so it makes its own.
 *
 * Shares: one file descriptor may travel each way with a byte count that goes with it (an
 * rproc_share: the device copy of the weights and its size, devw.h). The parent's (give) is
 * inherited by the child, kept open there as descriptor 4 while it builds; the child's comes
 * back with its READY message (SCM_RIGHTS), a new descriptor of the parent's (got).
 *
 * The protocol (rproc.c has the wire structures; both ends are this program): each message is
 * a header {type, length} and its payload. The child's first is READY (the protocol version
 * and its share) or FAIL. The parent sends STEP (the requests added and
 * cancelled since the last one, then "run one engine step") or PING (health, while idle: the
 * child's engine_heartbeat, so a split engine's other ranks know it lives); the
 * child answers each with DONE (the replica's gauges, the step's outputs) or PONG (the
 * gauges), or FAIL (a message) after which it exits. A request the child's engine refuses
 * comes back as an output with finish "error". The parent learns of a child's death from the
 * socket (end of file: "replica process PID was killed by signal 9"); a child that stops
 * answering is ended by rproc_kill (the router's watchdog).
 *
 * Not thread-safe: one thread (the replica's) calls everything but rproc_kill and rproc_pid. */
#ifndef SKEIN_RPROC_H
#define SKEIN_RPROC_H

#include <sys/types.h>

#include "infer/engine.h"
#include "serve/metrics.h"

typedef struct rproc rproc;

/* A file descriptor handed between the parent and a child, and the bytes it stands for. */
typedef struct rproc_share {
    int fd;            /* -1: none */
    uint64_t bytes;
} rproc_share;

/* In the child: builds the engine it will run (*e; its model and memory are the child's, never
 * freed: the child exits). given: the parent's share (its fd open until build returns, then
 * closed); *share: what to hand the parent with READY (fd -1: nothing; the fd stays the
 * child's). Returns SK_OK or a status with sk_errmsg set. */
typedef sk_status (*rproc_build_fn)(void *ctx, rproc_share given, engine **e, rproc_share *share);

/* Forks the child, which calls build(ctx, give) and reports; returns once its engine is ready.
 * give.fd stays the caller's; *got is the child's share (its fd a new descriptor, the caller's
 * to close; fd -1 when the child handed none or start failed). An error names what failed (the
 * fork, or the child's build with its message). */
sk_status rproc_start(rproc_build_fn build, void *ctx, rproc_share give, rproc **out, rproc_share *got);
/* The child's process id (for logs and tests). */
pid_t rproc_pid(const rproc *p);
/* Queues request prompt(n) with params p for the next step; *id is its id in outputs. */
sk_status rproc_add(rproc *p, const int *prompt, int n, const engine_params *params, int *id);
/* Queues the cancellation of request id; its "cancelled" output comes with a later step. */
void rproc_cancel(rproc *p, int id);
/* Whether the child holds requests (or has some queued to send). */
bool rproc_has_work(const rproc *p);
/* Sends what is queued, runs one step in the child and receives its outputs (*out valid until
 * the next call); SK_ESTATE naming the process when it failed, died or broke the protocol. */
sk_status rproc_step(rproc *p, const engine_output **out, int *n_out);
/* Health while idle: a round trip; the same failures as rproc_step. */
sk_status rproc_ping(rproc *p);
/* The gauges (running, queued, kv_used, kv_total, prefix hits and misses) the child last sent
 * into s; its other fields are left alone. */
void rproc_gauges(const rproc *p, metrics_replica *s);
/* An engine's gauges now, as a replica shows them, into s: running, queued (waiting in the
 * engine), kv_used, kv_total, prefix_hits, prefix_misses; its other fields are left alone. The
 * child sends its engine's with every answer; a thread replica reads its own the same way. */
void rproc_engine_gauges(const engine *e, metrics_replica *s);
/* SIGKILL to the child (any thread): its pending step or ping then fails. */
void rproc_kill(rproc *p);
/* Closes the socket, waits up to a second for the child to exit, then kills it; reaps it. */
void rproc_free(rproc *p);

#endif
