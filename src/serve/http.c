/* http: the libmicrohttpd glue behind http.h. Each connection's state (http_conn) lives from
 * the first call of the access handler to the library's completion notice; the body grows
 * by doubling up to max_body and no further. Every libmicrohttpd call that can fail is
 * checked where it is made; a failure to build a reply drops the connection, never the
 * server. */
#include "serve/http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct http_server {
    struct MHD_Daemon *d;
    http_opts o;
    http_handler h;
    void *ctx;
    int port;
};

typedef struct http_conn {
    char *body;
    size_t n, cap;
    bool too_large, answered;
} http_conn;

/* The stream behind a libmicrohttpd callback response. */
typedef struct http_stream {
    http_stream_fn fn;
    void *ctx;
    void (*free)(void *ctx);
} http_stream;

static ssize_t http_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    http_stream *s = cls;
    ssize_t n = s->fn(s->ctx, buf, max);
    if (n == HTTP_STREAM_END) return MHD_CONTENT_READER_END_OF_STREAM;
    if (n < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    return n;
}

static void http_stream_done(void *cls) {
    http_stream *s = cls;
    if (s->free) s->free(s->ctx);
    mem_free(s);
}

/* Appends upload data, or marks the body too large once it would pass the cap. */
static void http_conn_append(http_conn *c, size_t max_body, const char *data, size_t n) {
    if (c->too_large) return;
    if (c->n + n > max_body) {
        c->too_large = true;
        mem_free(c->body);
        c->body = NULL;
        c->n = c->cap = 0;
        return;
    }
    if (c->n + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->n + n + 1) cap *= 2;
        if (cap > max_body + 1) cap = max_body + 1;
        char *p = mem_realloc(c->body, cap);
        if (!p) { c->too_large = true; return; }   /* answered as too large: the server keeps going */
        c->body = p;
        c->cap = cap;
    }
    memcpy(c->body + c->n, data, n);
    c->n += n;
    c->body[c->n] = 0;
}

/* Runs the handler and queues its reply; MHD_NO drops the connection. */
static enum MHD_Result http_answer(http_server *s, struct MHD_Connection *mc, http_conn *c, const char *url,
                                   const char *method) {
    c->answered = true;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    http_req rq = {.method = method, .path = url, .body = c->body ? c->body : "", .body_len = c->n,
                   .body_too_large = c->too_large, .fd = ci ? ci->connect_fd : -1,
                   .authorization = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)};
    http_reply rp = {.status = 500, .content_type = "application/json"};
    s->h(s->ctx, &rq, &rp);
    struct MHD_Response *r;
    if (rp.stream) {
        http_stream *hs = mem_alloc(sizeof *hs);
        if (!hs) {
            if (rp.stream_free) rp.stream_free(rp.stream_ctx);
            return MHD_NO;
        }
        *hs = (http_stream){rp.stream, rp.stream_ctx, rp.stream_free};
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, http_stream_read, hs, http_stream_done);
        if (!r) { http_stream_done(hs); return MHD_NO; }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    } else {
        r = MHD_create_response_from_buffer(rp.body_len, rp.body ? rp.body : (char *)"", MHD_RESPMEM_MUST_COPY);
        mem_free(rp.body);
        if (!r) return MHD_NO;
    }
    if (rp.content_type) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rp.content_type);
    if (rp.retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, rp.retry_after);
    if (c->too_large) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(mc, (unsigned)rp.status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result http_access(void *cls, struct MHD_Connection *mc, const char *url, const char *method,
                                   const char *version, const char *upload_data, size_t *upload_data_size,
                                   void **con_cls) {
    (void)version;
    http_server *s = cls;
    http_conn *c = *con_cls;
    if (!c) {
        if (!(c = mem_calloc(sizeof *c))) return MHD_NO;
        *con_cls = c;
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->o.max_body) {
            /* refused before the body is read: the library closes the connection after */
            c->too_large = true;
            return http_answer(s, mc, c, url, method);
        }
        return MHD_YES;
    }
    if (c->answered) {          /* the rest of a refused body: dropped */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        http_conn_append(c, s->o.max_body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    return http_answer(s, mc, c, url, method);
}

static void http_completed(void *cls, struct MHD_Connection *mc, void **con_cls, enum MHD_RequestTerminationCode tc) {
    (void)cls; (void)mc; (void)tc;
    http_conn *c = *con_cls;
    if (!c) return;
    mem_free(c->body);
    mem_free(c);
    *con_cls = NULL;
}

sk_status http_server_start(const http_opts *o, http_handler h, void *ctx, http_server **out) {
    *out = NULL;
    if (o->port < 0 || o->port > 65535) return sk_fail(SK_EARG, "serve: --port %d is out of range", o->port);
    char port[16];
    snprintf(port, sizeof port, "%d", o->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(o->host, port, &hints, &ai);
    if (gai) return sk_fail(SK_EARG, "serve: --host %s: %s", o->host, gai_strerror(gai));
    http_server *s = mem_calloc(sizeof *s);
    if (!s) { freeaddrinfo(ai); return sk_fail(SK_ENOMEM, "serve: out of memory"); }
    *s = (http_server){.o = *o, .h = h, .ctx = ctx};
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, http_access, s,
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_conns,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)o->timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, http_completed, NULL,
                            MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->d) {
        mem_free(s);
        return sk_fail(SK_EARG, "serve: cannot listen on %s port %d (in use, or not an address of this host)", o->host, o->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    *out = s;
    return SK_OK;
}

int http_server_port(const http_server *s) { return s->port; }

void http_server_stop(http_server *s) {
    if (!s) return;
    MHD_stop_daemon(s->d);
    mem_free(s);
}

bool http_peer_alive(int fd) {
    if (fd < 0) return true;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return true;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)) return false;
    char b;
    return !(p.revents & POLLIN) || recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) != 0;
}
