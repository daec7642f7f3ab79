/* http: the libmicrohttpd glue behind http.h. Each connection's state (http_conn) lives from
 * the first call of the access handler to the library's completion notice; the body grows
 * by doubling up to max_body and no further. Every libmicrohttpd call that can fail is
 * checked where it is made; a failure to build a reply drops the connection, never the
 * server.
 *
 * Timeouts are the server's own, not the library's (whose idle timer also runs while a
 * stream's producer waits for a queued request's first token, and so cut such streams):
 * every connection has an http_watch (its libmicrohttpd socket context) from the library's
 * start notice to its close notice, which the library gives before it closes the socket; so
 * under the server's mutex a watch's fd is its connection's own, and the watchdog thread may
 * shut it down (the connection's thread then sees the peer gone and closes it). A watch is
 * READING from its connection or its last completed answer until the handler runs (a request
 * must arrive, a keep-alive connection be used again, within the timeout), HANDLING while the
 * handler runs (it may wait for a whole generation; api.c notices a client that leaves), and
 * SENDING while the reply goes out: every reply, a whole body too, is produced through
 * http_stream_read, which the library calls when the socket takes more, so a client that
 * stops reading leaves the watch unrefreshed and is cut, while a producer waiting for text is
 * not. */
#include "serve/http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"

#define HTTP_WATCH_MS 250    /* how often the watchdog looks at the deadlines */
#define HTTP_DRAIN_MS 2000   /* at a stop, how long the replies in flight get to go out */
/* At --max-conns the library stops accepting (the next connections wait in the listen
 * backlog): a keep-alive connection idle this long after its answer is closed then, so the
 * waiting ones get in before --timeout */
#define HTTP_IDLE_AT_LIMIT_S 0.5

typedef enum http_phase { HTTP_READING, HTTP_HANDLING, HTTP_SENDING } http_phase;

typedef struct http_watch {
    int fd;
    http_phase phase;
    bool producing;          /* SENDING: inside the reply's producer (it may wait for text) */
    bool cut;                /* shut down already */
    bool kept;               /* READING after an answer: an idle keep-alive connection until bytes come */
    double since;            /* when the phase began, or (SENDING) the producer last returned */
    struct http_watch *prev, *next;
} http_watch;

struct http_server {
    struct MHD_Daemon *d;
    http_opts o;
    http_handler h;
    void *ctx;
    int port;
    char *cert, *key;        /* PEM text for HTTPS (owned), or NULL */
    pthread_mutex_t mu;      /* guards watches, stop and log */
    pthread_cond_t cv;       /* wakes the watchdog to stop */
    http_watch *watches;     /* every open connection's, newest first */
    int n_open;              /* connections open (watched or not) */
    bool stop, watchdog_up;
    pthread_t watchdog;
    char log[256];           /* the library's first message (names why a start failed) */
};

typedef struct http_conn {
    char *body;
    size_t n, cap;
    bool too_large, answered;
} http_conn;

/* The connection's watch, or NULL (its allocation failed: only the close is noticed). */
static http_watch *http_watch_of(struct MHD_Connection *mc) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* Moves w (NULL: nothing) to phase; its clock restarts. */
static void http_watch_phase(http_server *s, http_watch *w, http_phase phase) {
    if (!w) return;
    pthread_mutex_lock(&s->mu);
    w->kept = phase == HTTP_READING;   /* a connection's first READING is set in http_notify */
    w->phase = phase;
    w->producing = false;
    w->since = time_now();
    pthread_mutex_unlock(&s->mu);
}

/* A request's headers came on w's connection: no longer idle (its READING deadline stays). */
static void http_watch_request(http_server *s, http_watch *w) {
    if (!w) return;
    pthread_mutex_lock(&s->mu);
    w->kept = false;
    pthread_mutex_unlock(&s->mu);
}

/* A reply behind a libmicrohttpd callback response: a stream from the handler or a whole
 * body (http_body_read). */
typedef struct http_stream {
    http_stream_fn fn;
    void *ctx;
    void (*free)(void *ctx);
    http_server *s;
    http_watch *w;           /* the connection's (valid until after the response is freed), or NULL */
} http_stream;

/* The library calls this when the socket takes more; the watch is SENDING and "producing"
 * while the producer runs, and its clock restarts when the producer returns. */
static ssize_t http_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    http_stream *st = cls;
    if (st->w) {
        pthread_mutex_lock(&st->s->mu);
        st->w->producing = true;
        pthread_mutex_unlock(&st->s->mu);
    }
    ssize_t n = st->fn(st->ctx, buf, max);
    http_watch_phase(st->s, st->w, HTTP_SENDING);
    if (n == HTTP_STREAM_END) return MHD_CONTENT_READER_END_OF_STREAM;
    if (n < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    return n;
}

static void http_stream_done(void *cls) {
    http_stream *st = cls;
    if (st->free) st->free(st->ctx);
    mem_free(st);
}

/* A whole body as a stream. */
typedef struct http_body {
    char *p;                 /* (n) owned */
    size_t n, off;
} http_body;

static ssize_t http_body_read(void *ctx, char *buf, size_t max) {
    http_body *b = ctx;
    if (b->off == b->n) return HTTP_STREAM_END;
    size_t k = b->n - b->off < max ? b->n - b->off : max;
    memcpy(buf, b->p + b->off, k);
    b->off += k;
    return (ssize_t)k;
}

static void http_body_free(void *ctx) {
    http_body *b = ctx;
    mem_free(b->p);
    mem_free(b);
}

/* The library's connection notices: a watch is linked at the start and unlinked at the close
 * (before the socket closes). A connection whose watch cannot be allocated (out of memory) is
 * not timed: only its client's close or the server's stop ends it. */
static void http_notify(void *cls, struct MHD_Connection *mc, void **socket_context,
                        enum MHD_ConnectionNotificationCode code) {
    http_server *s = cls;
    pthread_mutex_lock(&s->mu);
    http_watch *w = *socket_context;
    s->n_open += code == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci && (w = mem_calloc(sizeof *w))) {
            *w = (http_watch){.fd = ci->connect_fd, .phase = HTTP_READING, .since = time_now(), .next = s->watches};
            if (s->watches) s->watches->prev = w;
            s->watches = w;
        }
        *socket_context = w;
    } else if (w) {
        if (w->prev) w->prev->next = w->next; else s->watches = w->next;
        if (w->next) w->next->prev = w->prev;
        mem_free(w);
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&s->mu);
}

/* The watchdog thread: shuts down each connection that has been READING, or SENDING outside
 * its producer, for longer than the timeout, and at the connection limit each one idle after
 * its answer for HTTP_IDLE_AT_LIMIT_S, until http_server_stop. */
static void *http_watchdog(void *arg) {
    http_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        const double now = time_now();
        const bool full = s->n_open >= s->o.max_conns;
        for (http_watch *w = s->watches; w; w = w->next)
            if (!w->cut && (w->phase == HTTP_READING || (w->phase == HTTP_SENDING && !w->producing)) &&
                (now - w->since > s->o.timeout_s || (full && w->kept && now - w->since > HTTP_IDLE_AT_LIMIT_S))) {
                shutdown(w->fd, SHUT_RDWR);
                w->cut = true;
            }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += HTTP_WATCH_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* The library's messages: to stderr, and the first one kept (a failed start's reason). */
static void http_log(void *cls, const char *fmt, va_list ap) {
    http_server *s = cls;
    char line[sizeof s->log];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = 0;
    fprintf(stderr, "skein serve: libmicrohttpd: %s\n", line);
    pthread_mutex_lock(&s->mu);
    if (!s->log[0]) memcpy(s->log, line, sizeof line);
    pthread_mutex_unlock(&s->mu);
}

/* Reads the PEM file of flag (--ssl-certfile or --ssl-keyfile) into *out (mem_free it); it must
 * hold a block whose BEGIN line ends with kind ("CERTIFICATE", "PRIVATE KEY"). */
static sk_status http_read_pem(const char *flag, const char *path, const char *kind, char **out) {
    size_t n = 0;
    if (file_read_all(path, out, &n) != SK_OK) return sk_fail_ctx(SK_EIO, "serve: %s", flag);
    char marker[64];
    snprintf(marker, sizeof marker, "%s-----", kind);
    const char *begin = strstr(*out, "-----BEGIN ");
    if (!begin || !strstr(begin, marker)) {
        mem_free(*out);
        *out = NULL;
        return sk_fail(SK_EFORMAT, "serve: %s %s: not a PEM file with a %s", flag, path,
                       strcmp(kind, "CERTIFICATE") ? "private key" : "certificate");
    }
    return SK_OK;
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
    http_watch *w = http_watch_of(mc);
    http_watch_phase(s, w, HTTP_HANDLING);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    http_req rq = {.method = method, .path = url, .body = c->body ? c->body : "", .body_len = c->n,
                   .body_too_large = c->too_large, .fd = ci ? ci->connect_fd : -1,
                   .authorization = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)};
    http_reply rp = {.status = 500, .content_type = "application/json"};
    s->h(s->ctx, &rq, &rp);
    const bool whole = !rp.stream;
    http_body *b = whole ? mem_calloc(sizeof *b) : NULL;
    if (whole) {
        if (!b) { mem_free(rp.body); return MHD_NO; }
        *b = (http_body){.p = rp.body, .n = rp.body_len};
        rp.stream = http_body_read;
        rp.stream_ctx = b;
        rp.stream_free = http_body_free;
    }
    http_stream *hs = mem_alloc(sizeof *hs);
    if (!hs) {
        if (rp.stream_free) rp.stream_free(rp.stream_ctx);
        return MHD_NO;
    }
    *hs = (http_stream){rp.stream, rp.stream_ctx, rp.stream_free, s, w};
    struct MHD_Response *r = MHD_create_response_from_callback(whole ? b->n : MHD_SIZE_UNKNOWN, 16 * 1024,
                                                               http_stream_read, hs, http_stream_done);
    if (!r) { http_stream_done(hs); return MHD_NO; }
    if (!whole) MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    http_watch_phase(s, w, HTTP_SENDING);
    if (rp.content_type) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rp.content_type);
    if (rp.retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, rp.retry_after);
    /* a refused body, and a request shed for load (503 with Retry-After): the connection closes,
     * so a server at --max-conns takes the next connection waiting in the listen backlog rather
     * than hold a slot for a client told to come back later */
    if (c->too_large || rp.retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
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
        http_watch_request(s, http_watch_of(mc));
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

/* The library's completion notice: the request's state is freed and the next request's
 * deadline starts. */
static void http_completed(void *cls, struct MHD_Connection *mc, void **con_cls, enum MHD_RequestTerminationCode tc) {
    (void)tc;
    http_watch_phase(cls, http_watch_of(mc), HTTP_READING);
    http_conn *c = *con_cls;
    if (!c) return;
    mem_free(c->body);
    mem_free(c);
    *con_cls = NULL;
}

/* Loads the PEM pair of o into s (TLS asked for); SK_EARG when the library lacks TLS. */
static sk_status http_tls_load(http_server *s, const http_opts *o) {
    if (!o->cert_file != !o->key_file)
        return sk_fail(SK_EARG, "serve: --ssl-certfile and --ssl-keyfile go together (HTTPS needs both)");
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
        return sk_fail(SK_EARG, "serve: --ssl-certfile: this libmicrohttpd was built without TLS (GnuTLS); use one "
                                "built with it (Debian's libmicrohttpd12 is) or a TLS proxy in front");
    SK_TRY(http_read_pem("--ssl-certfile", o->cert_file, "CERTIFICATE", &s->cert));
    return http_read_pem("--ssl-keyfile", o->key_file, "PRIVATE KEY", &s->key);
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
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    const bool tls = o->cert_file || o->key_file;
    sk_status st = tls ? http_tls_load(s, o) : SK_OK;
    if (st != SK_OK) { freeaddrinfo(ai); goto err; }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    if (tls) flags |= MHD_USE_TLS;
    /* the HTTPS options last: without TLS they end the list early (plain HTTP takes none) */
    s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, http_access, s,
                            MHD_OPTION_EXTERNAL_LOGGER, http_log, s,   /* first: it logs the others */
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_conns,
                            MHD_OPTION_NOTIFY_COMPLETED, http_completed, s,
                            MHD_OPTION_NOTIFY_CONNECTION, http_notify, s,
                            tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, s->cert,
                            MHD_OPTION_HTTPS_MEM_KEY, s->key,
                            MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->d && tls) {
        st = sk_fail(SK_EARG, "serve: cannot serve HTTPS on %s port %d with --ssl-certfile %s and --ssl-keyfile %s: %s",
                     o->host, o->port, o->cert_file, o->key_file,
                     s->log[0] ? s->log : "the port is in use or the key does not match the certificate");
        goto err;
    }
    if (!s->d) {
        st = sk_fail(SK_EARG, "serve: cannot listen on %s port %d (in use, or not an address of this host)", o->host, o->port);
        goto err;
    }
    if (pthread_create(&s->watchdog, NULL, http_watchdog, s)) {
        st = sk_fail(SK_ENOMEM, "serve: cannot start the request watchdog thread");
        goto err;
    }
    s->watchdog_up = true;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    *out = s;
    return SK_OK;
err:
    http_server_stop(s);
    return st;
}

int http_server_port(const http_server *s) { return s->port; }

/* Whether a request is being handled or its reply sent. */
static bool http_busy(http_server *s) {
    pthread_mutex_lock(&s->mu);
    bool busy = false;
    for (http_watch *w = s->watches; w && !busy; w = w->next) busy = w->phase != HTTP_READING && !w->cut;
    pthread_mutex_unlock(&s->mu);
    return busy;
}

void http_server_stop(http_server *s) {
    if (!s) return;
    if (s->d) {
        /* no new connection; the answers in flight (an error after api_server_stop) go out */
        MHD_socket listen_fd = MHD_quiesce_daemon(s->d);
        const struct timespec beat = {0, 10 * 1000000L};
        for (int i = 0; i < HTTP_DRAIN_MS / 10 && http_busy(s); i++) nanosleep(&beat, NULL);
        MHD_stop_daemon(s->d);   /* every connection closed: no watch is left */
        if (listen_fd != MHD_INVALID_SOCKET) close(listen_fd);
    }
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->watchdog_up) pthread_join(s->watchdog, NULL);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    mem_free(s->cert);
    mem_free(s->key);
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
