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
 * MPIRUN=path overrides the mpirun found on PATH. */
#ifndef SKEIN_LAUNCH_H
#define SKEIN_LAUNCH_H

/* Runs the ranks and waits for them. Returns mpirun's exit status (128 + signal when it was
 * killed); 2 after printing a message when --workers cannot work here (already under a
 * launcher, n < 1, no mpirun). */
int launch_workers(const char *command, int argc, char **argv, int n);

#endif
