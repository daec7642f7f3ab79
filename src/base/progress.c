/* progress: a live status line on stderr (see progress.h). */
#include "base/progress.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "base/base.h"

void progress_init(progress *p, double interval) {
    p->tty = isatty(2);
    p->interval = interval;
    p->last_print = -1e30;
    p->last_len = 0;
}

void progress_show(progress *p, bool force, const char *fmt, ...) {
    double now = time_now();
    if (!force && !p->tty && now - p->last_print < p->interval) return;
    if (!force && p->tty && now - p->last_print < 0.1) return;
    p->last_print = now;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (p->tty) {
        fprintf(stderr, "\r%s", line);
        for (int i = n; i < p->last_len; i++) fputc(' ', stderr);
        p->last_len = n;
    } else {
        fprintf(stderr, "%s\n", line);
    }
    fflush(stderr);
}

void progress_done(progress *p) {
    if (p->tty && p->last_len) fputc('\n', stderr);
    p->last_len = 0;
}

const char *progress_duration(char *buf, int n, double s) {
    if (s < 0 || s > 1e7) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, (size_t)n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(buf, (size_t)n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, (size_t)n, "%lds", t);
    return buf;
}
