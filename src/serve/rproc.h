/* rproc: an engine in a child process (skein serve --replica-process), driven step by step
 * over a socket pair, so that a crash of one replica leaves the server and the others.
 *
 *   rproc *p;
 *   rproc_spawn(&setup, sizeof setup, give, &p); // fork + exec; the child: build(setup, ..., &e)
 *   rproc_ready(p, &got);                   // its engine is built
 *   rproc_add(p, prompt, n, &params, &id);  // queued here, sent with the next step
 *   rproc_step(p, &out, &n_out);            // one engine step in the child, its outputs here
 *   rproc_free(p);                          // the child exits (killed if it does not)
 *
 * The child is this executable again: forked from the replica's thread, it execs
 * /proc/self/exe as `skein serve --replica-child` at once (between the fork and the exec only
 * async-signal-safe calls: the server has threads, and a lock one of them held at the fork --
 * the allocator's above all -- would stay locked in a child that went on without exec). Its
 * main hands control to rproc_child_run, which reads the setup the parent sent (opaque bytes:
 * what `build` needs), builds its own engine through `build` and answers the parent's messages
 * until its socket closes. It maps the model's files itself: the page cache still holds one
 * copy for every process, and no weight is read or copied. It keeps only its socket
 * (descriptor 3) and the share given (4), dies with the thread that forked it
 * (PR_SET_PDEATHSIG), and when it exits it kills and reaps the processes it forked itself (a
 * split engine's other ranks, replica_tp.c). It has no CUDA context but its own.
 *
 * Shares: one file descriptor may travel each way with a byte count that goes with it (an
 * rproc_share: the device copy of the weights and its size, devw.h). The parent's (give) is
 * inherited by the child, kept open there as descriptor 4 while it builds; the child's comes
 * back with its READY message (SCM_RIGHTS), a new descriptor of the parent's (got).
 *
 * The protocol (rproc.c has the wire structures; both ends are this program): each message is
 * a header {type, length} and its payload. The parent's first is SETUP (the protocol version,
 * whether a share was given, the caller's setup bytes); the child's first is READY (its share)
 * or FAIL. The parent then sends STEP (the requests added and
 * cancelled since the last one, then "run one engine step") or PING (health, while idle: the
 * child's engine_heartbeat, so a split engine's other ranks know it lives); the
 * child answers each with DONE (the replica's gauges, the step's outputs) or PONG (the
 * gauges), or FAIL (a message) after which it exits. A request the child's engine refuses
 * comes back as an output with finish "error". The parent learns of a child's death from the
 * socket (end of file: "replica process PID was killed by signal 9"); a child that stops
 * answering is ended by rproc_kill (the router's watchdog).
 *
 * Not thread-safe: one thread (the replica's) calls everything but rproc_kill and rproc_pid
 * (which any thread may call while p lives, also while rproc_ready waits). */
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

/* The arguments a child runs with: `PROGRAM serve --replica-child`. */
#define RPROC_CHILD_FLAG "--replica-child"

/* In the child: builds the engine it will run (*e; its model and memory are the child's, never
 * freed: the child exits) from the parent's setup (len bytes, valid until build returns).
 * given: the parent's share (its fd open until build returns, then closed); *share: what to
 * hand the parent with READY (fd -1: nothing; the fd stays the child's). Returns SK_OK or a
 * status with sk_errmsg set. */
typedef sk_status (*rproc_build_fn)(const void *setup, size_t len, rproc_share given, engine **e, rproc_share *share);

/* Whether a program's arguments are a child's (argv[1] "serve", argv[2] RPROC_CHILD_FLAG,
 * nothing after): its main then calls rproc_child_run. */
bool rproc_is_child(int argc, char **argv);
/* The child's life after its exec: reads the setup on descriptor 3, calls build (see above),
 * reports, and answers the parent until the socket closes. A process not started by
 * rproc_spawn exits with status 2 and a message. Never returns. */
_Noreturn void rproc_child_run(rproc_build_fn build);
/* Starts the child (fork, then exec of /proc/self/exe with the child's arguments) and sends it
 * setup (len bytes) and give; returns at once, the child building. give.fd stays the caller's.
 * An error names what failed (socket pair, fork, the first message). */
sk_status rproc_spawn(const void *setup, size_t len, rproc_share give, rproc **out);
/* Waits until p's engine is built: SK_OK, *got the child's share (its fd a new descriptor,
 * the caller's to close; -1 when the child handed none). Else the child's status and message
 * (its build failed), or how it died (rproc_kill while it built: killed by signal 9); *got.fd
 * is -1 and p is only for rproc_free. */
sk_status rproc_ready(rproc *p, rproc_share *got);
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
