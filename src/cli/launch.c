/* launch: re-executes a command under mpirun for `--workers N` (see launch.h). The parent
 * only waits (passing SIGTERM on to mpirun): it holds no MPI state, so its exit status is
 * mpirun's, which is non-zero when any rank failed (mpirun ends the other ranks then), or with
 * --enable-recovery rank 0's own (launch_tp). */
#include "cli/launch.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "comm/comm.h"
#include "infer/engine.h"

/* mpirun's pid while the parent waits for it (0: none). */
static volatile sig_atomic_t launch_child;

/* SIGTERM to the parent (a supervisor or a test stopping the command) goes on to mpirun, which
 * passes it to the ranks; Ctrl-C's SIGINT reaches mpirun through the process group already. */
static void launch_forward(int sig) {
    if (launch_child > 0) kill((pid_t)launch_child, sig);
}

/* Puts "name=value" into the environment unless the variable is already set. */
static void env_default(const char *name, const char *value) {
    if (!getenv(name)) setenv(name, value, 1);
}

/* Re-executes command as n ranks under mpirun for `flag` and waits: argv without flag and its
 * value when strip; with survive, mpirun --enable-recovery and the exit status rank 0 leaves
 * in the file SKEIN_LAUNCH_STATUS names (launch_tp). */
static int launch_ranks(const char *command, int argc, char **argv, int n, const char *flag, bool strip, bool survive) {
    comm_env env;
    if (comm_env_read(&env) != SK_OK) {
        fprintf(stderr, "skein: %s\n", sk_errmsg());
        return 2;
    }
    if (env.launcher != COMM_LAUNCH_NONE) {
        fprintf(stderr, "skein: %s starts mpirun itself; this process was already started by %s (leave %s out "
                "there)\n", flag, comm_launcher_name(env.launcher), flag);
        return 2;
    }
    if (n < 1) {
        fprintf(stderr, "skein: %s %d: need at least 1\n", flag, n);
        return 2;
    }
    const char *mpirun = getenv("MPIRUN") ? getenv("MPIRUN") : "mpirun";
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        fprintf(stderr, "skein: %s: cannot find this program (/proc/self/exe): %s\n", flag, strerror(errno));
        return 2;
    }
    self[len] = 0;
    char status_path[64] = "";
    if (survive) {
        snprintf(status_path, sizeof status_path, "/tmp/skein-status-XXXXXX");
        int fd = mkstemp(status_path);
        if (fd < 0) {
            fprintf(stderr, "skein: %s: a status file in /tmp: %s\n", flag, strerror(errno));
            return 2;
        }
        close(fd);
    }
    /* mpirun -n N --oversubscribe --bind-to none [--enable-recovery] SELF COMMAND ARGS... NULL */
    char nbuf[16];
    snprintf(nbuf, sizeof nbuf, "%d", n);
    char **args = calloc((size_t)argc + 11, sizeof *args);
    if (!args) {
        fprintf(stderr, "skein: out of memory\n");
        return 2;
    }
    int k = 0;
    args[k++] = (char *)mpirun;
    args[k++] = "-n";
    args[k++] = nbuf;
    args[k++] = "--oversubscribe";
    args[k++] = "--bind-to";
    args[k++] = "none";
    if (survive) args[k++] = "--enable-recovery";
    args[k++] = self;
    args[k++] = (char *)command;
    const size_t fl = strlen(flag);
    for (int i = 0; i < argc; i++) {
        if (strip && !strcmp(argv[i], flag)) {
            i++; /* and its value */
            continue;
        }
        if (strip && !strncmp(argv[i], flag, fl) && argv[i][fl] == '=') continue;
        args[k++] = argv[i];
    }
    args[k] = NULL;

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "skein: %s: fork: %s\n", flag, strerror(errno));
        free(args);
        return 2;
    }
    if (pid == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        char threads[24];
        snprintf(threads, sizeof threads, "%ld", cores / n > 0 ? cores / n : 1);
        env_default("OMP_NUM_THREADS", threads);
        if (geteuid() == 0) {
            env_default("OMPI_ALLOW_RUN_AS_ROOT", "1");
            env_default("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        }
        if (survive) setenv("SKEIN_LAUNCH_STATUS", status_path, 1);
        execvp(mpirun, args);
        fprintf(stderr, "skein: %s needs mpirun (%s: %s); install OpenMPI (apt-get install openmpi-bin) or set "
                "MPIRUN=/path/to/mpirun\n", flag, mpirun, strerror(errno));
        _exit(127);
    }
    free(args);
    launch_child = pid;
    signal(SIGTERM, launch_forward);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            fprintf(stderr, "skein: %s: waitpid: %s\n", flag, strerror(errno));
            return 2;
        }
    signal(SIGTERM, SIG_DFL);
    launch_child = 0;
    int rc = WIFEXITED(status) ? (WEXITSTATUS(status) == 127 ? 2 : WEXITSTATUS(status)) : 128 + WTERMSIG(status);
    if (survive) {   /* mpirun --enable-recovery exits 0 after a rank died: rank 0's own status counts */
        FILE *f = fopen(status_path, "r");
        int r0;
        if (f && fscanf(f, "%d", &r0) == 1) rc = r0;
        if (f) fclose(f);
        unlink(status_path);
    }
    return rc;
}

int launch_workers(const char *command, int argc, char **argv, int n) {
    return launch_ranks(command, argc, argv, n, "--workers", true, false);
}

/* ---- --tp K ---- */

bool launch_by_hand(void) {
    comm_env env;
    return comm_env_read(&env) == SK_OK && env.launcher == COMM_LAUNCH_NONE;
}

int launch_tp(const char *command, int argc, char **argv, int K, const char *dir, bool survive) {
    model_config cfg;
    sk_status st = dir ? model_config_load(dir, &cfg) : SK_OK;
    if (st == SK_OK && dir) st = model_tp_check(&cfg, K);
    if (st != SK_OK) return cli_fail(st);   /* refused here, before any rank starts */
    return launch_ranks(command, argc, argv, K, "--tp", false, survive);
}

sk_status launch_tp_join(int K, const char *device, double timeout_s, comm **c) {
    *c = NULL;
    if (K < 1 || K > 4096) return sk_fail(SK_EARG, "--tp %d: the ranks must number 1 to 4096", K);
    if (!(timeout_s > 0)) return sk_fail(SK_EARG, "--comm-timeout must be positive");
    if (K == 1) return SK_OK;
    SK_TRY(comm_init("auto", device, timeout_s, c));
    if ((*c)->world != K) {
        int world = (*c)->world;
        comm_free(*c);
        *c = NULL;
        return sk_fail(SK_EARG, "--tp %d: this launch has %d ranks; start %d (mpirun -n %d), or leave mpirun out and "
                       "--tp starts them", K, world, K, K);
    }
    if ((*c)->rank > 0) log_set_quiet(true);
    return SK_OK;
}

int launch_tp_follow(const char *dir, const char *device, comm *c) {
    signal(SIGINT, SIG_IGN);   /* rank 0 stops the job (launch.h) */
    signal(SIGTERM, SIG_IGN);
    backend *be = backend_create_on(device, c->local_rank);
    model *m = NULL;
    sk_status st = be ? model_open_split(dir, be, c, &m) : SK_EARG;
    if (st == SK_OK) st = engine_follow(m);
    model_free(m);
    backend_free(be);
    if (st != SK_OK) sk_fail_ctx(st, "rank %d of %d", c->rank, c->world);
    int rc = cli_fail(st);
    comm_free(c);
    return rc;
}

void launch_tp_exit(const comm *c, int status) {
    const char *path = getenv("SKEIN_LAUNCH_STATUS");
    if (!c || c->rank != 0 || !path) return;
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "%d\n", status);
    fclose(f);
}
