/* launch: `skein <command> --workers N` starts N ranks of the same command under mpirun, so
 * one machine trains with several processes without typing mpirun.
 *
 *   // in cmd_train, before anything else, when --workers N was given:
 *   if (workers > 1) return launch_workers("train", argc, argv, workers);
 *
 * The ranks run this very executable (/proc/self/exe) with `command` and argv minus the
 * --workers flag ("--workers N" or "--workers=N"), under
 *   mpirun -n N --oversubscribe --bind-to none
 * (--bind-to none: mpirun would otherwise pin each rank, and its OpenMP threads, to one
 * core). The ranks inherit the environment, plus: OMP_NUM_THREADS = cores / N (at least 1)
 * unless set; OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1 when running as root (CI, containers).
 * MPIRUN=path overrides the mpirun found on PATH. --tp K (below) starts its ranks the same way. */
#ifndef SKEIN_LAUNCH_H
#define SKEIN_LAUNCH_H

#include <stdbool.h>

#include "comm/comm.h"

/* Runs the ranks and waits for them. Returns mpirun's exit status (128 + signal when it was
 * killed); 2 after printing a message when --workers cannot work here (already under a
 * launcher, n < 1, no mpirun). */
int launch_workers(const char *command, int argc, char **argv, int n);

/* ---- --tp K: one model split over K ranks (model_tp, model.h) ----
 * The commands that run a model (generate, bench throughput|latency, serve) take --tp K. Started
 * by hand, such a command re-executes itself as K ranks under mpirun as --workers does, argv
 * kept whole (launch_tp); each rank, or each of K ranks that mpirun or srun started directly,
 * joins the others (launch_tp_join). Rank 0 runs the command over its share of the model
 * (model_open_split) and releases the others when done (engine_tp_release); every other rank
 * runs launch_tp_follow.
 *
 *   if (tp > 1 && launch_by_hand()) return launch_tp("generate", argc, argv, tp, dir, false);
 *   comm *c;
 *   if ((st = launch_tp_join(tp, device, timeout, &c))) return cli_fail(st);
 *   if (c && c->rank > 0) return launch_tp_follow(dir, device, c);
 *   ... model_open_split(dir, be, c, &m) ... engine_tp_release(m); model_free(m); comm_free(c);
 *
 * A dead rank: without survive, mpirun ends every rank and names it ("process rank 1 ...
 * exited on signal 9"). With survive (the server), mpirun --enable-recovery leaves the others
 * running, so rank 0's engine step fails naming the rank and the server answers its requests
 * before it exits; mpirun then exits 0 whatever happened, so rank 0 leaves its exit status in
 * a file (launch_tp_exit) that launch_tp returns. */

/* Whether this process was started by hand (no launcher's variables): --tp K must start its
 * ranks itself. */
bool launch_by_hand(void);
/* Runs command's K ranks under mpirun (--enable-recovery with survive) and waits; returns the
 * exit status (rank 0's with survive), 2 after a message when mpirun cannot be run. The model
 * folder dir (NULL: none given) is checked first (model_tp_check): shapes that do not divide
 * over K are refused with a message before any rank starts. */
int launch_tp(const char *command, int argc, char **argv, int K, const char *dir, bool survive);
/* Joins this launch's K ranks: *c their communicator (comm_init "auto" on device, collectives
 * failing after timeout_s), NULL for K = 1. SK_EARG when the launch does not have K ranks.
 * Ranks other than 0 are made quiet (log_set_quiet). */
sk_status launch_tp_join(int K, const char *device, double timeout_s, comm **c);
/* A rank other than 0, for the whole command: opens its share of the model folder dir on
 * device (on a GPU, that of its local rank: backend_create_on) and follows rank 0's engines
 * (engine_follow) until rank 0 releases it; frees c and returns the exit status (a failure
 * printed, naming this rank). It ignores SIGINT and SIGTERM: mpirun passes a stop to every
 * rank, and a follower that died of it would leave rank 0's orderly stop (its last
 * collectives, its exit status for launch_tp) to race mpirun's kill; it ends when rank 0
 * releases it or dies (its next collective fails). */
int launch_tp_follow(const char *dir, const char *device, comm *c);
/* Rank 0 of a launch_tp with survive, before it frees c: records the command's exit status
 * for launch_tp (no-op elsewhere). */
void launch_tp_exit(const comm *c, int status);

#endif
