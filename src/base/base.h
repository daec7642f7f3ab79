/* base: status codes, error messages, asserts, logging, memory, files, time.
 *
 * Two kinds of failure, two mechanisms:
 *   - a broken invariant (a bug) is SK_ASSERT: it prints file:line and aborts, in every build;
 *   - bad input (a file, a flag, a request) returns an sk_status and leaves a message naming
 *     the problem in a thread-local buffer: `return sk_fail(SK_EFORMAT, "%s: bad magic", p);`
 *     The caller that decides (usually a command) prints sk_errmsg() and exits non-zero.
 *
 * Memory: every large allocation goes through mem_alloc/mem_free (64-byte aligned), so the
 * out-of-memory policy is in one place and tests can make the n-th allocation fail. */
#ifndef SKEIN_BASE_H
#define SKEIN_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum sk_status {
    SK_OK = 0,
    SK_EARG,     /* bad flag or argument value */
    SK_EIO,      /* a file could not be opened, read or written */
    SK_EFORMAT,  /* a file exists but its contents are wrong */
    SK_ENOMEM,   /* an allocation failed */
    SK_ECONFIG,  /* a model configuration that cannot work */
    SK_ESTATE,   /* an operation that does not fit the current state */
    SK_ECOMM,    /* a collective failed or timed out (a rank died or hangs) */
} sk_status;

/* Records a message for the failure and returns `st`. The message replaces the previous one. */
sk_status sk_fail(sk_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with more context ("loading DIR: <old message>"); returns st. */
sk_status sk_fail_ctx(sk_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *sk_errmsg(void);
const char *sk_status_name(sk_status st);

void sk_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define SK_ASSERT(cond) ((cond) ? (void)0 : sk_assert_fail(#cond, __FILE__, __LINE__))
#define SK_TRY(expr) do { sk_status sk_try_st_ = (expr); if (sk_try_st_ != SK_OK) return sk_try_st_; } while (0)

/* Logging to stderr. log_quiet(true) silences info (tests); warnings always print. */
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_set_quiet(bool quiet);

/* Memory. mem_alloc returns 64-byte aligned, uninitialized memory, or NULL after recording
 * SK_ENOMEM; mem_calloc zeroes it (on Linux the whole pages of a block of 1 MiB or more are
 * the kernel's zero pages, resident only once touched). mem_fail_after(n) makes the n-th
 * next allocation fail (n = 0 turns it off): for tests of the out-of-memory paths. */
void *mem_alloc(size_t bytes);
void *mem_calloc(size_t bytes);
void *mem_realloc(void *p, size_t bytes);   /* plain alignment; for growing arrays */
void mem_free(void *p);
char *mem_strdup(const char *s);
void mem_fail_after(long n);
/* Bytes the host can still give this process without swapping or the OOM killer: Linux's
 * MemAvailable; SIZE_MAX where unknown. mem_alloc refuses (SK_ENOMEM, naming both sizes) any
 * allocation of MEM_CHECK_BYTES or more that exceeds it: with overcommit such a block would
 * be granted and the process killed while filling it. Plans that add many blocks compare
 * their total with it themselves (train, bench train). */
size_t mem_available(void);
#define MEM_CHECK_BYTES ((size_t)64 << 20)

/* Time in seconds from a monotonic clock. */
double time_now(void);

#endif
