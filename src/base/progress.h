/* progress: one live status line on stderr ("step 12/200 | loss 3.21 | ..."). On a terminal
 * it is rewritten in place with \r; otherwise (logs, CI) a full line is printed at most every
 * `interval` seconds, plus the final one, so logs stay short. */
#ifndef SKEIN_PROGRESS_H
#define SKEIN_PROGRESS_H

#include <stdbool.h>

typedef struct progress {
    bool tty;
    double interval;     /* seconds between lines when not a terminal */
    double last_print;
    int last_len;
} progress;

void progress_init(progress *p, double interval);
/* Shows the line (printf format); `force` prints even when the interval has not passed. */
void progress_show(progress *p, bool force, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Ends the live line (newline on a terminal). */
void progress_done(progress *p);
/* Formats seconds as "1h02m", "3m07s" or "12s" into buf. */
const char *progress_duration(char *buf, int n, double seconds);

#endif
