/* Tests of `--workers N` (cli/launch.h): the test re-executes itself under mpirun through
 * launch_workers, with case name `launch_child` as the "command" and a command line that
 * holds --workers; each rank checks what it got (world, rank, no --workers left) and leaves a
 * file in $SKEIN_LAUNCH_OUT. Where MPI is not built in or mpirun is missing, the cases that
 * launch are skipped. */
#include <sys/stat.h>

#include "cli/launch.h"
#include "comm/comm.h"
#include "test.h"

static int g_argc;
static char **g_argv;

__attribute__((constructor)) static void keep_args(int argc, char **argv) {
    g_argc = argc;
    g_argv = argv;
}

/* A rank started by launch_workers (or, run directly, a world of one). */
TEST(launch_child) {
    comm_env e;
    CHECK(comm_env_read(&e) == SK_OK);
    const char *out = getenv("SKEIN_LAUNCH_OUT");
    if (e.launcher == COMM_LAUNCH_NONE) {
        CHECK(e.world == 1 && e.rank == 0);
        return;
    }
    CHECK(e.launcher == COMM_LAUNCH_MPIRUN && out);
    for (int i = 0; i < g_argc; i++) CHECK_MSG(strncmp(g_argv[i], "--workers", 9), "argv[%d] = %s", i, g_argv[i]);
    char path[512];
    snprintf(path, sizeof path, "%s/rank-%d", out, e.rank);
    FILE *f = fopen(path, "w");
    CHECK(f);
    fprintf(f, "%d %d %s %s\n", e.world, g_argc, g_argv[g_argc - 1], getenv("OMP_NUM_THREADS"));
    fclose(f);
}

static int have_mpirun(void) {
#ifdef SKEIN_HAVE_MPI
    return system("command -v mpirun >/dev/null 2>&1") == 0;
#else
    return 0;
#endif
}

/* launch_workers with the ranks' stdout and stderr in a file (their PASS/FAIL lines are
 * theirs, not this test's: the files they leave are checked instead). */
static int launch_quiet(int argc, char **argv, int n) {
    char log[512];
    snprintf(log, sizeof log, "%s/launch.log", test_tmpdir());
    fflush(stdout);
    fflush(stderr);
    int o = dup(1), e = dup(2);
    FILE *f = fopen(log, "a");
    if (!f) return -1;
    dup2(fileno(f), 1);
    dup2(fileno(f), 2);
    int rc = launch_workers("launch_child", argc, argv, n);
    fflush(stdout);
    fflush(stderr);
    dup2(o, 1);
    dup2(e, 2);
    close(o);
    close(e);
    fclose(f);
    return rc;
}

TEST(launch_workers_runs_ranks) {
    if (!have_mpirun()) SKIP("MPI is not built in or mpirun is missing");
    comm_env e;
    CHECK(comm_env_read(&e) == SK_OK);
    if (e.launcher != COMM_LAUNCH_NONE) SKIP("a rank of the launch below");
    const char *dir = test_tmpdir();
    setenv("SKEIN_LAUNCH_OUT", dir, 1);
    char *args[] = {"--workers", "3", "--workers=3", "last-arg", NULL};
    int rc = launch_quiet(4, args, 3);
    CHECK_MSG(rc == 0, "exit status %d", rc);
    for (int r = 0; r < 3; r++) {
        char path[512], tail[64] = "", threads[16] = "";
        int world = 0, argc = 0;
        snprintf(path, sizeof path, "%s/rank-%d", dir, r);
        FILE *f = fopen(path, "r");
        CHECK_MSG(f, "rank %d left no %s", r, path);
        int got = fscanf(f, "%d %d %63s %15s", &world, &argc, tail, threads);
        fclose(f);
        CHECK(got == 4 && world == 3 && !strcmp(tail, "last-arg") && atoi(threads) >= 1);
    }
}

TEST(launch_workers_refusals) {
    if (!have_mpirun()) SKIP("MPI is not built in or mpirun is missing");
    /* A failing rank makes the launch fail. */
    char *args[] = {"--workers", "2", NULL};
    setenv("SKEIN_LAUNCH_OUT", "/nonexistent/dir", 1);
    int rc = launch_quiet(2, args, 2);
    CHECK_MSG(rc != 0, "exit status %d", rc);
    /* No mpirun: a message and status 2, not a crash. */
    setenv("MPIRUN", "/nonexistent/mpirun", 1);
    rc = launch_quiet(2, args, 2);
    unsetenv("MPIRUN");
    CHECK_MSG(rc == 2, "exit status %d", rc);
    /* Already under a launcher. */
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    setenv("OMPI_COMM_WORLD_RANK", "0", 1);
    rc = launch_quiet(2, args, 2);
    unsetenv("OMPI_COMM_WORLD_SIZE");
    unsetenv("OMPI_COMM_WORLD_RANK");
    CHECK(rc == 2);
}

TEST_MAIN()
