/* dashboard: the page skein serve answers GET / with (src/serve/dashboard.html), compiled into
 * the binary by a Makefile rule that writes its bytes as a C array ($(BUILD)/gen/serve_dashboard.c).
 * The page needs nothing from outside the server: it polls /metrics and streams the /v1 routes. */
#ifndef SKEIN_DASHBOARD_H
#define SKEIN_DASHBOARD_H

#include <stddef.h>

extern const unsigned char dashboard_html[];   /* (dashboard_html_len) UTF-8 HTML, not NUL-terminated */
extern const size_t dashboard_html_len;

#endif
