/* launch: re-executes a command under mpirun for `--workers N` (see launch.h). The parent
 * only waits: it holds no MPI state, so its exit status is mpirun's, which is non-zero when
 * any rank failed (mpirun ends the other ranks then). */
#include "cli/launch.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "comm/comm.h"

/* Puts "name=value" into the environment unless the variable is already set. */
static void env_default(const char *name, const char *value) {
    if (!getenv(name)) setenv(name, value, 1);
}

int launch_workers(const char *command, int argc, char **argv, int n) {
    comm_env env;
    if (comm_env_read(&env) != SK_OK) {
        fprintf(stderr, "skein: %s\n", sk_errmsg());
        return 2;
    }
    if (env.launcher != COMM_LAUNCH_NONE) {
        fprintf(stderr, "skein: --workers starts mpirun itself; this process was already started by %s "
                "(leave --workers out there)\n", comm_launcher_name(env.launcher));
        return 2;
    }
    if (n < 1) {
        fprintf(stderr, "skein: --workers %d: need at least 1\n", n);
        return 2;
    }
    const char *mpirun = getenv("MPIRUN") ? getenv("MPIRUN") : "mpirun";
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        fprintf(stderr, "skein: --workers: cannot find this program (/proc/self/exe): %s\n", strerror(errno));
        return 2;
    }
    self[len] = 0;
    /* mpirun -n N --oversubscribe --bind-to none SELF COMMAND ARGS... NULL */
    char nbuf[16];
    snprintf(nbuf, sizeof nbuf, "%d", n);
    char **args = calloc((size_t)argc + 10, sizeof *args);
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
    args[k++] = self;
    args[k++] = (char *)command;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--workers")) {
            i++; /* and its value */
            continue;
        }
        if (!strncmp(argv[i], "--workers=", 10)) continue;
        args[k++] = argv[i];
    }
    args[k] = NULL;

    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "skein: --workers: fork: %s\n", strerror(errno));
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
        execvp(mpirun, args);
        fprintf(stderr, "skein: --workers needs mpirun (%s: %s); install OpenMPI (apt-get install openmpi-bin) "
                "or set MPIRUN=/path/to/mpirun\n", mpirun, strerror(errno));
        _exit(127);
    }
    free(args);
    /* Ctrl-C reaches mpirun through the process group; the parent just waits for it. */
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            fprintf(stderr, "skein: --workers: waitpid: %s\n", strerror(errno));
            return 2;
        }
    if (WIFEXITED(status)) return WEXITSTATUS(status) == 127 ? 2 : WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}
