/* store: the TCP store of store.h.
 *
 * Wire format (both ends are this program on one architecture, so host byte order):
 *   request  { u32 op, u32 len, i64 arg } + len payload bytes
 *   reply    { i32 status, u32 len, i64 value } + len payload bytes (status != 0: the
 *            payload is an error message)
 * SET's payload is the key, a NUL, then the value; GET's is the key. PROGRESS has no reply.
 * The server (a thread of rank 0) keeps the keys (at most KEYS_MAX, each value at most
 * BLOB_MAX bytes), one counter, one barrier and each rank's last reported collective. A
 * request that cannot be answered yet (GET before SET, BARRIER before everyone arrived)
 * waits in the server; after the timeout the server answers it with an error naming the key
 * or the ranks it waited for, so clients learn what is missing instead of only that time
 * ran out.
 *
 * Invariants: the server owns every accepted socket and is the only thread touching its
 * state; the caller's thread only touches its own client socket. A rank connects exactly
 * once (HELLO names it; a second HELLO for the same rank is refused). */
#include "comm/store.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { OP_HELLO = 1, OP_SET, OP_GET, OP_BARRIER, OP_ADD, OP_SETCTR, OP_PROGRESS, OP_STATUS };
enum { BLOB_MAX = 1 << 20, KEY_MAX = 255, KEYS_MAX = 4096 };

typedef struct req_hdr { uint32_t op, len; int64_t arg; } req_hdr;
typedef struct rep_hdr { int32_t status; uint32_t len; int64_t value; } rep_hdr;

typedef struct srv_client {
    int fd;
    int rank;         /* -1 until HELLO */
    char *want;       /* the key a GET waits for (malloc'd), or NULL */
    double want_t0;   /* when that GET came */
    int in_barrier;   /* a BARRIER waits for the others */
} srv_client;

typedef struct srv_entry {
    char *key;
    unsigned char *val;
    uint32_t len;
} srv_entry;

struct store {
    int rank, world;
    double timeout_s;
    int fd;                /* this rank's connection to the server */
    char where[300];       /* "addr:port" for messages */
    /* Server (rank 0 only). */
    int listen_fd;
    int wake[2];           /* store_free wakes the server through this pipe */
    pthread_t thread;
    int thread_started;
    srv_client *cl;        /* (world) slots; fd < 0 when free */
    int *seen;             /* (world) a HELLO came from rank r */
    int *gone;             /* (world) rank r connected and then left */
    int64_t *progress;     /* (world) the last collective rank r reported (0: none) */
    srv_entry *keys;       /* (n_keys) */
    int n_keys;
    int64_t counter;
    int barrier_count;
    double barrier_t0;
    _Atomic int stop;      /* set by store_close, read by the server */
    double linger_s;       /* set before stop: how long the server still serves */
    /* Client side. */
    int64_t n_bcast;       /* store_bcast calls so far: the next one's key */
};

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Sends all of buf(n); 0 or -1 (peer gone). */
static int send_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Receives all of buf(n) before `deadline` (time_now() clock): 0, -1 when the peer closed or
 * failed, -2 on timeout. */
static int recv_all(int fd, void *buf, size_t n, double deadline) {
    char *p = buf;
    while (n) {
        double left = deadline - time_now();
        if (left <= 0) return -2;
        struct pollfd pf = {fd, POLLIN, 0};
        int r = poll(&pf, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) continue;
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* ---- server ----------------------------------------------------------------------------- */

static void srv_reply(srv_client *c, int32_t status, int64_t value, const void *data, size_t len) {
    rep_hdr h = {status, (uint32_t)len, value};
    if (send_all(c->fd, &h, sizeof h) < 0 || (len && send_all(c->fd, data, len) < 0)) {
        /* The client is gone; its socket is closed when poll reports it. */
    }
}

static void srv_error(srv_client *c, const char *msg) { srv_reply(c, 1, 0, msg, strlen(msg) + 1); }

static void srv_close(store *s, srv_client *c) {
    close(c->fd);
    if (c->rank >= 0) s->gone[c->rank] = 1;
    if (c->in_barrier) s->barrier_count--;
    free(c->want);
    *c = (srv_client){.fd = -1, .rank = -1};
}

/* The entry of key(len), or NULL. */
static srv_entry *srv_find(store *s, const char *key, size_t len) {
    for (int i = 0; i < s->n_keys; i++)
        if (strlen(s->keys[i].key) == len && !memcmp(s->keys[i].key, key, len)) return &s->keys[i];
    return NULL;
}

/* SET: payload(len) is the key, a NUL, the value; the server takes the payload over (the
 * entry points into it). Answers the GETs waiting for the key. */
static void srv_set(store *s, srv_client *c, unsigned char *payload, uint32_t len) {
    const unsigned char *nul = memchr(payload, 0, len);
    if (!nul || nul == payload || nul - payload > KEY_MAX) {
        srv_error(c, "store: a key of 1 to 255 bytes, then a NUL, was expected");
        free(payload);
        return;
    }
    char *key = (char *)payload;
    srv_entry *e = srv_find(s, key, strlen(key));
    if (!e && s->n_keys == KEYS_MAX) {
        char msg[700];
        snprintf(msg, sizeof msg, "store at %s: key '%.255s' refused: the store holds %d keys, its most", s->where, key,
                 KEYS_MAX);
        srv_error(c, msg);
        free(payload);
        return;
    }
    if (e) free(e->key);
    else e = &s->keys[s->n_keys++];
    *e = (srv_entry){.key = key, .val = (unsigned char *)nul + 1, .len = (uint32_t)(len - (uint32_t)(nul + 1 - payload))};
    srv_reply(c, 0, 0, NULL, 0);
    for (int i = 0; i < s->world; i++)
        if (s->cl[i].fd >= 0 && s->cl[i].want && !strcmp(s->cl[i].want, key)) {
            free(s->cl[i].want);
            s->cl[i].want = NULL;
            srv_reply(&s->cl[i], 0, 0, e->val, e->len);
        }
}

/* Answers every waiting barrier with an error naming the ranks that did not arrive. */
static void srv_fail_barrier(store *s, const char *why) {
    char missing[512] = "", never[512] = "";
    for (int r = 0; r < s->world; r++) {
        int here = 0;
        for (int i = 0; i < s->world; i++)
            if (s->cl[i].fd >= 0 && s->cl[i].rank == r && s->cl[i].in_barrier) here = 1;
        if (here || s->gone[r]) continue;
        char *list = s->seen[r] ? missing : never;
        size_t len = strlen(list);
        snprintf(list + len, 512 - len, "%s%d", len ? ", " : "", r);
    }
    char msg[1400];
    snprintf(msg, sizeof msg, "barrier through the store at %s: %s", s->where, why);
    if (missing[0]) {
        size_t len = strlen(msg);
        snprintf(msg + len, sizeof msg - len, "; rank(s) %s did not arrive", missing);
    }
    if (never[0]) {
        size_t len = strlen(msg);
        snprintf(msg + len, sizeof msg - len, "; rank(s) %s never connected", never);
    }
    for (int i = 0; i < s->world; i++)
        if (s->cl[i].fd >= 0 && s->cl[i].in_barrier) {
            srv_error(&s->cl[i], msg);
            s->cl[i].in_barrier = 0;
        }
    s->barrier_count = 0;
}

/* Handles one request from client c; returns -1 when the client must be dropped. */
static int srv_handle(store *s, srv_client *c) {
    req_hdr h;
    if (recv_all(c->fd, &h, sizeof h, time_now() + s->timeout_s) < 0) return -1;
    if (h.len > BLOB_MAX) return -1;
    unsigned char *payload = NULL;
    if (h.len) {
        payload = malloc(h.len);
        if (!payload || recv_all(c->fd, payload, h.len, time_now() + s->timeout_s) < 0) {
            free(payload);
            return -1;
        }
    }
    switch (h.op) {
    case OP_HELLO: {
        int rank = (int)(h.arg & 0xffffffff), world = (int)(h.arg >> 32);
        char msg[512];
        if (world != s->world || rank < 0 || rank >= s->world || s->seen[rank]) {
            snprintf(msg, sizeof msg, "store at %s: rank %d of %d refused (world is %d%s)", s->where, rank, world,
                     s->world, rank >= 0 && rank < s->world && s->seen[rank] ? ", and that rank is already connected" : "");
            srv_error(c, msg);
            free(payload);
            return -1;
        }
        c->rank = rank;
        s->seen[rank] = 1;
        srv_reply(c, 0, 0, NULL, 0);
        break;
    }
    case OP_SET:
        srv_set(s, c, payload, h.len);
        payload = NULL;
        break;
    case OP_GET: {
        srv_entry *e = h.len && h.len <= KEY_MAX ? srv_find(s, (char *)payload, h.len) : NULL;
        if (e) srv_reply(c, 0, 0, e->val, e->len);
        else if (!h.len || h.len > KEY_MAX || c->want) srv_error(c, "store: a GET of a bad key, or a second GET at once");
        else if (!(c->want = malloc(h.len + 1))) srv_error(c, "store: out of memory");
        else {
            memcpy(c->want, payload, h.len);
            c->want[h.len] = 0;
            c->want_t0 = time_now();
        }
        break;
    }
    case OP_PROGRESS:
        if (c->rank < 0) {
            free(payload);
            return -1;
        }
        s->progress[c->rank] = h.arg;
        break;
    case OP_STATUS: {
        int64_t *where = malloc(2 * (size_t)s->world * sizeof *where);
        if (!where) {
            srv_error(c, "store: out of memory");
            break;
        }
        for (int r = 0; r < s->world; r++) where[r] = s->progress[r], where[s->world + r] = s->gone[r];
        srv_reply(c, 0, 0, where, 2 * (size_t)s->world * sizeof *where);
        free(where);
        break;
    }
    case OP_BARRIER:
        if (c->in_barrier) break;
        if (s->barrier_count++ == 0) s->barrier_t0 = time_now();
        c->in_barrier = 1;
        for (int r = 0; r < s->world; r++)
            if (s->gone[r]) {
                char why[100];
                snprintf(why, sizeof why, "rank %d disconnected (exited or died)", r);
                srv_fail_barrier(s, why);
                break;
            }
        if (s->barrier_count == s->world) {
            for (int i = 0; i < s->world; i++)
                if (s->cl[i].fd >= 0 && s->cl[i].in_barrier) {
                    s->cl[i].in_barrier = 0;
                    srv_reply(&s->cl[i], 0, 0, NULL, 0);
                }
            s->barrier_count = 0;
        }
        break;
    case OP_ADD:
        srv_reply(c, 0, s->counter, NULL, 0);
        s->counter += h.arg;
        break;
    case OP_SETCTR:
        s->counter = h.arg;
        srv_reply(c, 0, 0, NULL, 0);
        break;
    default:
        free(payload);
        return -1;
    }
    free(payload);
    return 0;
}

/* The server loop: accepts up to `world` clients, answers requests, fails waits that pass
 * the timeout, and ends after store_close once every client has left (or the linger time). */
static void *srv_main(void *arg) {
    store *s = arg;
    struct pollfd *pf = calloc((size_t)s->world + 2, sizeof *pf);
    int *idx = calloc((size_t)s->world + 2, sizeof *idx);
    double stop_deadline = 0;
    if (!pf || !idx) {
        free(pf);
        free(idx);
        return NULL;
    }
    for (;;) {
        int n = 0, clients = 0;
        pf[n++] = (struct pollfd){s->wake[0], POLLIN, 0};
        pf[n++] = (struct pollfd){s->listen_fd, POLLIN, 0};
        for (int i = 0; i < s->world; i++)
            if (s->cl[i].fd >= 0) {
                idx[n] = i;
                pf[n++] = (struct pollfd){s->cl[i].fd, POLLIN, 0};
                clients++;
            }
        if (s->stop) {
            if (!stop_deadline) stop_deadline = time_now() + s->linger_s;
            if (clients == 0 || time_now() > stop_deadline) break;
        }
        int r = poll(pf, (nfds_t)n, 100);
        if (r < 0 && errno != EINTR) break;
        if (r > 0) {
            if (pf[0].revents) {
                char b[16];
                if (read(s->wake[0], b, sizeof b) < 0) { /* nothing to do: only a wake-up */ }
            }
            if (pf[1].revents & POLLIN) {
                int fd = accept(s->listen_fd, NULL, NULL);
                if (fd >= 0) {
                    int slot = -1;
                    for (int i = 0; i < s->world && slot < 0; i++)
                        if (s->cl[i].fd < 0) slot = i;
                    if (slot < 0) close(fd); /* more connections than ranks */
                    else {
                        int one = 1;
                        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                        s->cl[slot] = (srv_client){.fd = fd, .rank = -1};
                    }
                }
            }
            for (int k = 2; k < n; k++)
                if (pf[k].revents && s->cl[idx[k]].fd >= 0 && srv_handle(s, &s->cl[idx[k]]) < 0) {
                    int gone = s->cl[idx[k]].rank;
                    srv_close(s, &s->cl[idx[k]]);
                    if (s->barrier_count > 0 && gone >= 0) {
                        char why[100];
                        snprintf(why, sizeof why, "rank %d disconnected (exited or died)", gone);
                        srv_fail_barrier(s, why);
                    }
                }
        }
        double now = time_now();
        if (s->barrier_count > 0 && now - s->barrier_t0 > s->timeout_s) {
            char why[100];
            snprintf(why, sizeof why, "not every rank arrived within %g s", s->timeout_s);
            srv_fail_barrier(s, why);
        }
        for (int i = 0; i < s->world; i++)
            if (s->cl[i].fd >= 0 && s->cl[i].want && now - s->cl[i].want_t0 > s->timeout_s) {
                char msg[700];
                snprintf(msg, sizeof msg, "store at %s: key '%.255s' was not set within %g s", s->where, s->cl[i].want,
                         s->timeout_s);
                srv_error(&s->cl[i], msg);
                free(s->cl[i].want);
                s->cl[i].want = NULL;
            }
    }
    for (int i = 0; i < s->world; i++)
        if (s->cl[i].fd >= 0) srv_close(s, &s->cl[i]);
    free(pf);
    free(idx);
    return NULL;
}

/* The listening socket for `port` that the process which chose the port made and left open
 * (SKEIN_STORE_FD, as skein serve's tensor-parallel replicas do: nothing can take the port
 * between its choice and the listen), taken once; -1 when there is none or it is not one. */
static int srv_inherited(int port) {
    const char *v = getenv("SKEIN_STORE_FD");
    if (!v) return -1;
    const int fd = atoi(v);
    unsetenv("SKEIN_STORE_FD");
    struct sockaddr_in a;
    socklen_t n = sizeof a, an = sizeof(int);
    int listening = 0;
    if (fd < 3 || getsockname(fd, (struct sockaddr *)&a, &n) != 0 || a.sin_family != AF_INET ||
        ntohs(a.sin_port) != port || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &an) != 0 || !listening)
        return -1;
    return fd;
}

/* Rank 0: listens on `port` on every interface (or takes the socket srv_inherited finds) and
 * starts the server thread. */
static sk_status srv_start(store *s, int port) {
    s->cl = malloc((size_t)s->world * sizeof *s->cl);
    s->seen = calloc((size_t)s->world, sizeof *s->seen);
    s->gone = calloc((size_t)s->world, sizeof *s->gone);
    s->progress = calloc((size_t)s->world, sizeof *s->progress);
    s->keys = calloc(KEYS_MAX, sizeof *s->keys);
    if (!s->cl || !s->seen || !s->gone || !s->progress || !s->keys) return sk_fail(SK_ENOMEM, "store: out of memory");
    for (int i = 0; i < s->world; i++) s->cl[i] = (srv_client){.fd = -1, .rank = -1};
    if (pipe(s->wake) < 0) return sk_fail(SK_EIO, "store: pipe: %s", strerror(errno));
    if ((s->listen_fd = srv_inherited(port)) < 0) {
        s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
        if (s->listen_fd < 0) return sk_fail(SK_EIO, "store: socket: %s", strerror(errno));
        int one = 1;
        setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
        if (bind(s->listen_fd, (struct sockaddr *)&a, sizeof a) < 0)
            return sk_fail(SK_EIO, "store: rank 0 cannot listen on port %d (MASTER_PORT): %s", port, strerror(errno));
        if (listen(s->listen_fd, s->world + 8) < 0)
            return sk_fail(SK_EIO, "store: listen on port %d: %s", port, strerror(errno));
    }
    if (pthread_create(&s->thread, NULL, srv_main, s) != 0)
        return sk_fail(SK_EIO, "store: cannot start the server thread");
    s->thread_started = 1;
    return SK_OK;
}

/* ---- client ----------------------------------------------------------------------------- */

/* Connects to addr:port, retrying refused connections until `deadline`. */
static sk_status cli_connect(store *s, const char *addr, int port, double deadline) {
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(addr, portstr, &hints, &ai);
    if (rc != 0) return sk_fail(SK_EARG, "store: cannot resolve MASTER_ADDR=%s: %s", addr, gai_strerror(rc));
    const char *last = "no attempt";
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            freeaddrinfo(ai);
            return sk_fail(SK_EIO, "store: socket: %s", strerror(errno));
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            s->fd = fd;
            freeaddrinfo(ai);
            return SK_OK;
        }
        last = strerror(errno);
        close(fd);
        if (time_now() > deadline) break;
        nap_ms(100);
    }
    freeaddrinfo(ai);
    return sk_fail(SK_ECOMM, "store: could not connect to rank 0 at %s within %g s (%s): is rank 0 running, "
                   "and MASTER_ADDR/MASTER_PORT the same on every rank?", s->where, s->timeout_s, last);
}

/* One request and its reply. The wait is a little longer than the server's own timeout, so
 * the server's message (naming ranks) arrives first when it can. reply(*reply_len) receives
 * the payload (malloc'd, caller frees) when wanted. */
static sk_status cli_call(store *s, const char *what, uint32_t op, int64_t arg, const void *data, uint32_t len,
                          int64_t *value, void **reply, uint32_t *reply_len) {
    req_hdr h = {op, len, arg};
    if (s->fd < 0) return sk_fail(SK_ECOMM, "store %s: %s: the connection is closed by an earlier failure", s->where, what);
    if (send_all(s->fd, &h, sizeof h) < 0 || (len && send_all(s->fd, data, len) < 0))
        goto lost;
    rep_hdr r;
    double deadline = time_now() + s->timeout_s + 2.0;
    int rc = recv_all(s->fd, &r, sizeof r, deadline);
    if (rc == -2)
        return sk_fail(SK_ECOMM, "store at %s: %s: no reply from rank 0 within %g s (rank 0 dead or hung?)", s->where,
                       what, s->timeout_s);
    if (rc < 0 || r.len > BLOB_MAX) goto lost;
    char *payload = NULL;
    if (r.len) {
        payload = malloc(r.len + 1);
        if (!payload) return sk_fail(SK_ENOMEM, "store: out of memory");
        if (recv_all(s->fd, payload, r.len, deadline) < 0) {
            free(payload);
            goto lost;
        }
        payload[r.len] = 0;
    }
    if (r.status != 0) {
        sk_fail(SK_ECOMM, "rank %d: %s", s->rank, payload ? payload : "store error");
        free(payload);
        return SK_ECOMM;
    }
    if (value) *value = r.value;
    if (reply) {
        *reply = payload;
        *reply_len = r.len;
    } else free(payload);
    return SK_OK;
lost:
    close(s->fd);
    s->fd = -1;
    return sk_fail(SK_ECOMM, "store at %s: %s: rank 0 closed the connection (rank 0 exited or died)", s->where, what);
}

sk_status store_open(const char *addr, int port, int rank, int world, double timeout_s, store **out) {
    *out = NULL;
    if (world < 1 || rank < 0 || rank >= world) return sk_fail(SK_EARG, "store: rank %d of world %d", rank, world);
    if (port < 1 || port > 65535) return sk_fail(SK_EARG, "store: port %d is not a TCP port", port);
    store *s = calloc(1, sizeof *s);
    if (!s) return sk_fail(SK_ENOMEM, "store: out of memory");
    s->rank = rank;
    s->world = world;
    s->timeout_s = timeout_s;
    s->fd = s->listen_fd = s->wake[0] = s->wake[1] = -1;
    snprintf(s->where, sizeof s->where, "%s:%d", addr, port);
    double deadline = time_now() + timeout_s;
    sk_status st;
    if (rank == 0 && (st = srv_start(s, port)) != SK_OK) goto err;
    /* Rank 0 reaches its own server through the loopback: MASTER_ADDR may name an interface
     * that is not reachable from inside this host (NAT, a Kubernetes service name). */
    if ((st = cli_connect(s, rank == 0 ? "127.0.0.1" : addr, port, deadline)) != SK_OK) goto err;
    if ((st = cli_call(s, "hello", OP_HELLO, ((int64_t)world << 32) | rank, NULL, 0, NULL, NULL, NULL)) != SK_OK) goto err;
    if ((st = store_barrier(s)) != SK_OK) goto err;
    *out = s;
    return SK_OK;
err:
    store_free(s);
    return st;
}

sk_status store_set(store *s, const char *key, const void *bytes, size_t n) {
    size_t k = strlen(key);
    if (k < 1 || k > KEY_MAX) return sk_fail(SK_EARG, "store_set: key '%s' is not 1 to %d bytes", key, KEY_MAX);
    if (n > BLOB_MAX) return sk_fail(SK_EARG, "store_set '%s': %zu bytes is more than the store carries", key, n);
    unsigned char *msg = malloc(k + 1 + n);
    if (!msg) return sk_fail(SK_ENOMEM, "store: out of memory");
    memcpy(msg, key, k + 1);
    if (n) memcpy(msg + k + 1, bytes, n);
    sk_status st = cli_call(s, "set", OP_SET, 0, msg, (uint32_t)(k + 1 + n), NULL, NULL, NULL);
    free(msg);
    return st;
}

sk_status store_get(store *s, const char *key, void **bytes, size_t *n) {
    size_t k = strlen(key);
    *bytes = NULL;
    *n = 0;
    if (k < 1 || k > KEY_MAX) return sk_fail(SK_EARG, "store_get: key '%s' is not 1 to %d bytes", key, KEY_MAX);
    uint32_t len = 0;
    SK_TRY(cli_call(s, "get", OP_GET, 0, key, (uint32_t)k, NULL, bytes, &len));
    *n = len;
    return SK_OK;
}

sk_status store_bcast(store *s, void *bytes, size_t n) {
    char key[32];
    snprintf(key, sizeof key, "store/bcast/%lld", (long long)s->n_bcast++);
    if (s->rank == 0) return store_set(s, key, bytes, n);
    void *got;
    size_t len;
    SK_TRY(store_get(s, key, &got, &len));
    if (len != n) {
        free(got);
        return sk_fail(SK_ECOMM, "store_bcast: rank 0 sent %zu bytes, rank %d expected %zu", len, s->rank, n);
    }
    memcpy(bytes, got, n);
    free(got);
    return SK_OK;
}

sk_status store_barrier(store *s) { return cli_call(s, "barrier", OP_BARRIER, 0, NULL, 0, NULL, NULL, NULL); }

sk_status store_add(store *s, int64_t add, int64_t *old) {
    return cli_call(s, "fetch_add", OP_ADD, add, NULL, 0, old, NULL, NULL);
}

sk_status store_counter_set(store *s, int64_t value) {
    return cli_call(s, "counter_set", OP_SETCTR, value, NULL, 0, NULL, NULL, NULL);
}

sk_status store_progress(store *s, int64_t value) {
    req_hdr h = {OP_PROGRESS, 0, value};
    if (s->fd < 0) return sk_fail(SK_ECOMM, "store %s: progress: the connection is closed by an earlier failure", s->where);
    if (send_all(s->fd, &h, sizeof h) < 0) {
        close(s->fd);
        s->fd = -1;
        return sk_fail(SK_ECOMM, "store at %s: progress: rank 0 closed the connection (rank 0 exited or died)", s->where);
    }
    return SK_OK;
}

sk_status store_status(store *s, int64_t *value, bool *gone) {
    int64_t *got = NULL;
    uint32_t len = 0;
    SK_TRY(cli_call(s, "status", OP_STATUS, 0, NULL, 0, NULL, (void **)&got, &len));
    if (len != 2 * (size_t)s->world * sizeof *got) {
        free(got);
        return sk_fail(SK_ECOMM, "store at %s: status: %u bytes for a world of %d", s->where, len, s->world);
    }
    for (int r = 0; r < s->world; r++) value[r] = got[r], gone[r] = got[s->world + r] != 0;
    free(got);
    return SK_OK;
}

void store_free(store *s) {
    if (s) store_close(s, s->timeout_s);
}

void store_close(store *s, double linger_s) {
    if (!s) return;
    if (s->fd >= 0) close(s->fd);
    if (s->thread_started) {
        s->linger_s = linger_s;
        s->stop = 1;
        if (write(s->wake[1], "x", 1) < 0) { /* the server also polls every 100 ms */ }
        pthread_join(s->thread, NULL);
    }
    if (s->listen_fd >= 0) close(s->listen_fd);
    if (s->wake[0] >= 0) close(s->wake[0]);
    if (s->wake[1] >= 0) close(s->wake[1]);
    free(s->cl);
    free(s->seen);
    free(s->gone);
    free(s->progress);
    for (int i = 0; i < s->n_keys; i++) free(s->keys[i].key);
    free(s->keys);
    free(s);
}
