/* Minimal test harness shared by tests/test_*.c.
 *
 * Each test file is one program: it registers cases with TEST(name) { ... } and ends with
 * TEST_MAIN(). A case fails on its first CHECK that does not hold; a case that cannot run here
 * (a tool, a library or a GPU is missing) ends with SKIP("why"). The program prints
 * "PASS <case>", "FAIL <case>" (after the failed check's file:line and message) or
 * "SKIP <case>: <why>" per case and exits non-zero when any case failed. tests/run.sh sums the
 * lines into "N passed, N failed, N skipped": a skip is never counted as a pass.
 *
 * Tests reach fixtures through test_path("fixtures/..."), relative to the tests/ folder, and
 * write scratch files under test_tmpdir(), a fresh folder removed at the end of the run. */
#ifndef SKEIN_TEST_H
#define SKEIN_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void (*test_fn)(void);
struct test_case { const char *name; test_fn fn; };

static struct test_case test_cases[256];
static int test_count;
static int test_failed_now;
static int test_skipped_now;
static char test_skip_why[256];
static char test_tmp[256];

#define TEST(tname)                                                             \
    static void test_##tname(void);                                             \
    __attribute__((constructor)) static void test_register_##tname(void) {      \
        test_cases[test_count].name = #tname;                                   \
        test_cases[test_count++].fn = test_##tname;                             \
    }                                                                           \
    static void test_##tname(void)

/* Fails the current case with a printf-style message and returns from it. */
#define CHECK_MSG(cond, ...)                                                    \
    do {                                                                        \
        if (!(cond)) {                                                          \
            printf("  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);   \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
            test_failed_now = 1;                                                \
            return;                                                             \
        }                                                                       \
    } while (0)
#define CHECK(cond) CHECK_MSG(cond, "%s", "")
/* Ends the current case as skipped, with a printf-style reason; call it before any CHECK. */
#define SKIP(...)                                                               \
    do {                                                                        \
        snprintf(test_skip_why, sizeof test_skip_why, __VA_ARGS__);             \
        test_skipped_now = 1;                                                   \
        return;                                                                 \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                   \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)", \
              (double)(a), (double)(b), (double)(tol))

static inline const char *test_path(const char *rel) {
    static char buf[4][1024];
    static int k;
    const char *root = getenv("SKEIN_TEST_DIR");
    char *out = buf[k++ & 3];
    snprintf(out, 1024, "%s/%s", root ? root : "tests", rel);
    return out;
}

static inline const char *test_tmpdir(void) {
    if (!test_tmp[0]) {
        snprintf(test_tmp, sizeof test_tmp, "/tmp/skein-test-XXXXXX");
        if (!mkdtemp(test_tmp)) { perror("mkdtemp"); exit(2); }
    }
    return test_tmp;
}

/* Runs every registered case (or those named on the command line). */
#define TEST_MAIN()                                                             \
    int main(int argc, char **argv) {                                           \
        int failed = 0;                                                         \
        for (int i = 0; i < test_count; i++) {                                  \
            int want = argc < 2;                                                \
            for (int a = 1; a < argc; a++)                                      \
                if (!strcmp(argv[a], test_cases[i].name)) want = 1;             \
            if (!want) continue;                                                \
            test_failed_now = 0;                                                \
            test_skipped_now = 0;                                               \
            test_cases[i].fn();                                                 \
            if (!test_failed_now && test_skipped_now)                           \
                printf("SKIP %s: %s\n", test_cases[i].name, test_skip_why);     \
            else                                                                \
                printf("%s %s\n", test_failed_now ? "FAIL" : "PASS", test_cases[i].name); \
            fflush(stdout);                                                     \
            failed += test_failed_now;                                          \
        }                                                                       \
        if (test_tmp[0]) {                                                      \
            char cmd[300];                                                      \
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", test_tmp);                 \
            if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", test_tmp); \
        }                                                                       \
        return failed ? 1 : 0;                                                  \
    }

#endif
