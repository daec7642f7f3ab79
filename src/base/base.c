/* base: error messages, asserts, logging, allocation and the clock (see base.h). */
#include "base/base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

static _Thread_local char err_buf[1024];
static bool log_quiet;
static long mem_countdown;

#define MEM_LAZY_ZERO_BYTES (1u << 20)   /* mem_calloc gives the pages of blocks this large back to the kernel */

sk_status sk_fail(sk_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return st;
}

sk_status sk_fail_ctx(sk_status st, const char *fmt, ...) {
    char prefix[512], old[sizeof err_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err_buf, sizeof old);
    snprintf(err_buf, sizeof err_buf, "%.400s: %.600s", prefix, old);
    return st;
}

const char *sk_errmsg(void) { return err_buf[0] ? err_buf : "unknown error"; }

const char *sk_status_name(sk_status st) {
    switch (st) {
    case SK_OK: return "ok";
    case SK_EARG: return "bad argument";
    case SK_EIO: return "i/o error";
    case SK_EFORMAT: return "bad format";
    case SK_ENOMEM: return "out of memory";
    case SK_ECONFIG: return "bad configuration";
    case SK_ESTATE: return "bad state";
    case SK_ECOMM: return "communication failure";
    }
    return "unknown status";
}

void sk_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "skein: assertion failed at %s:%d: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}

static void log_line(const char *level, const char *fmt, va_list ap) {
    fprintf(stderr, "%s", level);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void log_info(const char *fmt, ...) {
    if (log_quiet) return;
    va_list ap;
    va_start(ap, fmt);
    log_line("", fmt, ap);
    va_end(ap);
}

void log_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_line("warning: ", fmt, ap);
    va_end(ap);
}

void log_set_quiet(bool quiet) { log_quiet = quiet; }

static bool mem_should_fail(void) {
    if (mem_countdown <= 0) return false;
    return --mem_countdown == 0;
}

size_t mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return SIZE_MAX;
    size_t avail = SIZE_MAX;
    char line[256];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "MemAvailable:", 13)) {
            unsigned long long kb = strtoull(line + 13, NULL, 10);
            avail = kb > SIZE_MAX / 1024 ? SIZE_MAX : (size_t)kb * 1024;
            break;
        }
    fclose(f);
    return avail;
}

/* A block too large for the host fails here with both sizes named, rather than being granted
 * by overcommit and killing the process when touched (or aborting a sanitizer build). */
static bool mem_too_large(size_t bytes) {
    if (bytes < MEM_CHECK_BYTES) return false;
    size_t avail = mem_available();
    if (bytes <= avail) return false;
    sk_fail(SK_ENOMEM, "out of memory: allocating %zu bytes (%.1f GiB), only %zu bytes (%.1f GiB) available", bytes,
            (double)bytes / 1073741824.0, avail, (double)avail / 1073741824.0);
    return true;
}

void *mem_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 1;
    if (mem_too_large(bytes)) return NULL;
    if (mem_should_fail() || bytes > SIZE_MAX - 63 || posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63) != 0) {
        sk_fail(SK_ENOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    return p;
}

/* Zeroes p(bytes). On Linux the whole pages inside a large block are handed back to the
 * kernel instead (MADV_DONTNEED on private anonymous memory, which malloc's heap and mmap'd
 * chunks are): they read as zero and are only backed, and counted resident, once touched. So
 * a replica's KV pool and step workspace cost no time at start and no memory until used;
 * writing every byte of a 1 GB pool took a second (docs/benchmarks.md). */
static void mem_zero(void *p, size_t bytes) {
#ifdef __linux__
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)p, e = a + bytes;
    const uintptr_t lo = (a + page - 1) & ~(page - 1), hi = e & ~(page - 1);
    if (bytes >= MEM_LAZY_ZERO_BYTES && hi > lo && madvise((void *)lo, hi - lo, MADV_DONTNEED) == 0) {
        memset(p, 0, lo - a);
        memset((void *)hi, 0, e - hi);
        return;
    }
#endif
    memset(p, 0, bytes);
}

void *mem_calloc(size_t bytes) {
    void *p = mem_alloc(bytes);
    if (p) mem_zero(p, bytes);
    return p;
}

void *mem_realloc(void *p, size_t bytes) {
    if (mem_too_large(bytes)) return NULL;
    void *q = mem_should_fail() ? NULL : realloc(p, bytes ? bytes : 1);
    if (!q) sk_fail(SK_ENOMEM, "out of memory growing a buffer to %zu bytes", bytes);
    return q;
}

void mem_free(void *p) { free(p); }

char *mem_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = mem_realloc(NULL, n);
    if (d) memcpy(d, s, n);
    return d;
}

void mem_fail_after(long n) { mem_countdown = n; }

double time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
