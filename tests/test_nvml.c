/* nvml (src/serve/nvml.c) and the GPU series of /metrics (metrics.c), without a GPU:
 *   - an absent library: no device, and the page has no GPU series;
 *   - a stand-in library with NVML's ABI (tests/fixtures/nvml_standin.c, built here with cc):
 *     the device that answers is reported with its figures (37% -> 0.37, 5 of 80 GiB), the one
 *     that fails is left out, and the page shows the three gauges labelled gpu="0".
 * nvml_sample opens its library once per process, so each case runs in a child process. */
#include "test.h"

#include <sys/wait.h>

#include "base/base.h"
#include "serve/metrics.h"
#include "serve/nvml.h"

/* Runs fn in a child with SKEIN_NVML_LIB=lib; its exit status (0: its checks held). */
static int test_in_child(const char *lib, int (*fn)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("SKEIN_NVML_LIB", lib, 1);
        const int rc = fn();
        fflush(stdout);
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* The page for gpus(n): none of the models' parts, only the statuses and the GPUs. */
static char *test_page(const nvml_gpu *gpus, int n) {
    static const int statuses[1] = {200};
    static const uint64_t counts[1] = {3};
    const metrics_page p = {.statuses = statuses, .by_status = counts, .n_status = 1, .gpus = gpus, .n_gpus = n};
    size_t len = 0;
    return metrics_render(&p, &len);
}

static int test_absent(void) {
    nvml_gpu g[4];
    const int n = nvml_sample(g, 4);
    char *page = test_page(g, n);
    const int bad = n != 0 || !page || strstr(page, "skein_gpu_") != NULL;
    if (bad) printf("  absent library: %d devices, page:\n%s\n", n, page ? page : "(null)");
    mem_free(page);
    return bad;
}

static int test_standin(void) {
    nvml_gpu g[4];
    const int n = nvml_sample(g, 4);
    if (n != 1 || g[0].index != 0 || fabs(g[0].util - 0.37) > 1e-12 || g[0].mem_used != 5ull << 30 ||
        g[0].mem_total != 80ull << 30) {
        printf("  stand-in: %d devices, first: index %d util %g used %llu total %llu\n", n, g[0].index, g[0].util,
               g[0].mem_used, g[0].mem_total);
        return 1;
    }
    char *page = test_page(g, n);
    const char *want[] = {"# TYPE skein_gpu_utilization_ratio gauge\n", "skein_gpu_utilization_ratio{gpu=\"0\"} 0.37\n",
                          "skein_gpu_memory_used_bytes{gpu=\"0\"} 5368709120\n",
                          "skein_gpu_memory_total_bytes{gpu=\"0\"} 85899345920\n"};
    int bad = !page || strstr(page, "gpu=\"1\"") != NULL;
    for (int i = 0; i < 4 && !bad; i++)
        if (!strstr(page, want[i])) {
            printf("  missing %s", want[i]);
            bad = 1;
        }
    if (bad) printf("  page:\n%s\n", page ? page : "(null)");
    mem_free(page);
    return bad;
}

TEST(nvml_absent_library_no_series) {
    char lib[512];
    snprintf(lib, sizeof lib, "%s/no-such-libnvidia-ml.so.1", test_tmpdir());
    CHECK(test_in_child(lib, test_absent) == 0);
}

TEST(nvml_standin_library_series) {
    char lib[512], cmd[1400];
    snprintf(lib, sizeof lib, "%s/libnvml-standin.so", test_tmpdir());
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -o %s %s 2>&1", lib, test_path("fixtures/nvml_standin.c"));
    if (system(cmd) != 0) SKIP("cannot build the stand-in library with cc");
    CHECK(test_in_child(lib, test_standin) == 0);
}

TEST_MAIN()
