/* http: a small HTTP/1.1 server on libmicrohttpd for the API layer (api.h): one thread per
 * connection, the whole request body collected (up to a cap) before the handler runs, and a
 * reply that is either a whole body or a stream produced by a callback that may block.
 *
 *   http_server *s;
 *   http_server_start(&(http_opts){.host = "127.0.0.1", .port = 0, .max_body = 1 << 20,
 *                                  .max_conns = 256}, handler, ctx, &s);
 *   printf("port %d\n", http_server_port(s));
 *   ...
 *   http_server_stop(s);   // waits for every connection thread
 *
 * Invariants: a handler is called exactly once per request, on that connection's thread;
 * a body over max_bytes is never held (its Content-Length refuses it before it is read, or
 * it is dropped as it arrives) and the handler sees body_too_large instead; the server's
 * watchdog shuts down a connection that takes longer than timeout_s to send a whole request
 * (headers and body, counted from its connection or its last answer: an idle keep-alive
 * connection too, and a client that trickles a byte a second) or that reads nothing of its
 * reply for timeout_s while the reply has more to send; a handler or stream producer waiting
 * for text is never cut for it. With cert_file and key_file (PEM) the server speaks HTTPS only (GnuTLS through
 * libmicrohttpd); a plain HTTP client gets its connection closed. */
#ifndef SKEIN_HTTP_H
#define SKEIN_HTTP_H

#include <stddef.h>
#include <sys/types.h>

#include "base/base.h"

typedef struct http_server http_server;

typedef struct http_opts {
    const char *host;        /* address to bind (numeric or a name getaddrinfo resolves) */
    int port;                /* 0: any free port (http_server_port tells which) */
    size_t max_body;         /* bytes of request body held at most */
    int max_conns;           /* concurrent connections at most */
    int timeout_s;           /* the longest a request may take to arrive, or a reply wait for its reader */
    const char *cert_file;   /* PEM certificate (chain) for HTTPS, or NULL: plain HTTP */
    const char *key_file;    /* PEM private key of cert_file */
} http_opts;

/* One request as the handler sees it (valid during the handler call). */
typedef struct http_req {
    const char *method, *path;
    const char *authorization;   /* the Authorization header, or NULL */
    const char *body;            /* NUL-terminated; "" when none */
    size_t body_len;
    bool body_too_large;         /* the body passed max_body: it was not kept */
    int fd;                      /* the connection's socket, for http_peer_alive */
} http_req;

/* A stream producer: writes at most max bytes to buf and returns how many (> 0), or
 * HTTP_STREAM_END when the body is complete, or HTTP_STREAM_ABORT to close the connection.
 * It may block until it has data. */
#define HTTP_STREAM_END ((ssize_t)-1)
#define HTTP_STREAM_ABORT ((ssize_t)-2)
typedef ssize_t (*http_stream_fn)(void *ctx, char *buf, size_t max);

/* The handler's answer: status and either body (body_len bytes, owned by the reply: it is
 * mem_free'd after sending) or stream with stream_ctx (stream_free(stream_ctx) is called once
 * when the connection is done with it, whether the stream finished or the client left). */
typedef struct http_reply {
    int status;
    const char *content_type;
    const char *retry_after;     /* a Retry-After value, or NULL */
    char *body;
    size_t body_len;
    http_stream_fn stream;
    void *stream_ctx;
    void (*stream_free)(void *ctx);
} http_reply;

typedef void (*http_handler)(void *ctx, const http_req *rq, http_reply *rp);

/* Binds and starts serving. SK_EARG naming the host or port when it cannot bind, or saying
 * that this libmicrohttpd was built without TLS; SK_EIO naming cert_file or key_file when it
 * cannot be read, SK_EFORMAT naming it when it holds no PEM certificate or private key, and
 * naming both with the library's reason when it refuses the pair (a key that does not match). */
sk_status http_server_start(const http_opts *o, http_handler h, void *ctx, http_server **out);
int http_server_port(const http_server *s);
/* Stops accepting, gives the requests being answered up to 2 s to finish sending (stop the API
 * first, so that its handlers answer), closes every connection and frees s. */
void http_server_stop(http_server *s);

/* Whether the peer of socket fd is still connected (it has not closed or reset it). */
bool http_peer_alive(int fd);

#endif
