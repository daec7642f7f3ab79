/* rproc: an engine in a child process, step by step over a socket pair (see rproc.h).
 *
 * Wire: a message is an rproc_hdr (magic, type, payload bytes) then the payload. SETUP's
 * payload is an rproc_setup and the caller's bytes; STEP's
 * payload is a sequence of rproc_op (ADD followed by its n prompt ids, or CANCEL); DONE's is
 * an rproc_state and n rproc_out; PONG's an rproc_state; READY's an rproc_ready_msg, its share's
 * descriptor passed with the header's bytes (SCM_RIGHTS); FAIL's the child's status (int32)
 * and its message. Both ends are one executable (the child execs /proc/self/exe), so
 * structures travel as they are in memory.
 * Ids: the parent numbers requests itself (rproc_add returns at once); the child maps them to
 * its engine's ids. */
#include "serve/rproc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define RPROC_MAGIC 0x736b7270u   /* "skrp" */
#define RPROC_VERSION 4
#define RPROC_MAX_PAYLOAD (256u << 20)   /* a larger header is a broken protocol */
#define RPROC_EXIT_WAIT_MS 1000

enum { RPROC_SETUP = 1, RPROC_READY, RPROC_STEP, RPROC_PING, RPROC_DONE, RPROC_PONG, RPROC_FAIL };
enum { RPROC_OP_ADD = 1, RPROC_OP_CANCEL };
enum { RPROC_RUNNING, RPROC_STOP, RPROC_LENGTH, RPROC_CANCELLED, RPROC_ERROR };
static const char *const rproc_finish_names[] = {NULL, "stop", "length", "cancelled", "error"};

typedef struct rproc_hdr {
    uint32_t magic, type, len;
} rproc_hdr;

typedef struct rproc_setup {
    int32_t version;              /* RPROC_VERSION */
    int32_t has_fd;               /* a share was given: the child's descriptor 4 */
    uint64_t bytes;               /* the share's */
} rproc_setup;

typedef struct rproc_ready_msg {
    int32_t has_fd;               /* a descriptor came with the header */
    uint64_t bytes;               /* the share's */
} rproc_ready_msg;

typedef struct rproc_op {
    int32_t kind, id, n;          /* n: prompt ids following an ADD */
    engine_params params;
} rproc_op;

typedef struct rproc_state {
    int32_t n_out;                /* rproc_out records following (DONE) */
    metrics_replica gauges;
} rproc_state;

typedef struct rproc_out {
    engine_output o;              /* o.finish is not sent: finish is */
    int32_t finish;               /* RPROC_RUNNING, RPROC_STOP, ... */
} rproc_out;

struct rproc {
    pid_t pid;
    int fd;
    int passed;                   /* a descriptor the child sent and nobody took yet, or -1 */
    bool reaped;
    int next_id, n_live;          /* ids given; requests the child holds (added, not finished) */
    char *ops;                    /* queued ops (n_ops bytes) */
    size_t n_ops, cap_ops;
    int n_queued;                 /* ops in it */
    void *in;                     /* the last message received */
    size_t cap_in;
    engine_output *out;           /* (cap_out) the last step's outputs */
    int cap_out;
    metrics_replica gauges;
};

/* ---- both ends ---- */

static bool rproc_write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

/* The descriptors msg brought (SCM_RIGHTS): the first to *passed where it is -1 (passed not
 * NULL), the others closed. */
static void rproc_take_fds(struct msghdr *msg, int *passed) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int f;
            memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
            if (passed && *passed < 0) *passed = f;
            else close(f);
        }
    }
}

/* Reads n bytes; 1 when done, 0 at the end of the stream before any byte, -1 on error. A
 * descriptor sent with them goes to *passed (rproc_take_fds). */
static int rproc_read_all(int fd, void *buf, size_t n, int *passed) {
    char *p = buf;
    size_t got = 0;
    while (got < n) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        struct iovec iov = {p + got, n - got};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
        ssize_t k = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (k < 0 && errno == EINTR) continue;
        if (k >= 0) rproc_take_fds(&msg, passed);
        if (k < 0) return -1;
        if (k == 0) return got == 0 ? 0 : -1;
        got += (size_t)k;
    }
    return 1;
}

/* Sends a message; pass >= 0: that descriptor goes with the header's bytes (SCM_RIGHTS). */
static bool rproc_send_fd(int fd, int pass, uint32_t type, const void *a, size_t na, const void *b, size_t nb) {
    const rproc_hdr h = {RPROC_MAGIC, type, (uint32_t)(na + nb)};
    size_t sent = 0;
    if (pass >= 0) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        memset(&ctl, 0, sizeof ctl);
        struct iovec iov = {(void *)&h, sizeof h};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass, sizeof pass);
        ssize_t k;
        while ((k = sendmsg(fd, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR) {}
        if (k <= 0) return false;
        sent = (size_t)k;
    }
    return rproc_write_all(fd, (const char *)&h + sent, sizeof h - sent) && rproc_write_all(fd, a, na) &&
           rproc_write_all(fd, b, nb);
}

static bool rproc_send(int fd, uint32_t type, const void *a, size_t na, const void *b, size_t nb) {
    return rproc_send_fd(fd, -1, type, a, na, b, nb);
}

/* Receives one message into *buf (grown as needed): its type, or 0 at the end of the stream,
 * -1 on an error or a bad header. A descriptor sent with it goes to *passed (rproc_take_fds). */
static int rproc_recv(int fd, void **buf, size_t *cap, size_t *len, int *passed) {
    rproc_hdr h;
    int r = rproc_read_all(fd, &h, sizeof h, passed);
    if (r <= 0) return r;
    if (h.magic != RPROC_MAGIC || h.len > RPROC_MAX_PAYLOAD) return -1;
    if (h.len + 1 > *cap) {
        void *p = mem_realloc(*buf, h.len + 1);
        if (!p) return -1;
        *buf = p;
        *cap = h.len + 1;
    }
    if (h.len && rproc_read_all(fd, *buf, h.len, passed) != 1) return -1;
    ((char *)*buf)[h.len] = 0;
    *len = h.len;
    return (int)h.type;
}

/* ---- the child ---- */

/* A request the child runs: the parent's id and its engine's. */
typedef struct rproc_live {
    int id, eid;
} rproc_live;

typedef struct rproc_child {
    int fd;
    engine *e;
    rproc_live *live;
    int n_live, cap_live;
    rproc_out *out;
    int cap_out;
    int n_refused;                /* refused adds to report with the step (first in out) */
} rproc_child;

static int rproc_child_find(const rproc_child *c, bool by_eid, int v) {
    for (int i = 0; i < c->n_live; i++)
        if ((by_eid ? c->live[i].eid : c->live[i].id) == v) return i;
    return -1;
}

/* Room for n outputs; false when out of memory. */
static bool rproc_child_reserve(rproc_child *c, int n) {
    if (n <= c->cap_out) return true;
    rproc_out *p = mem_realloc(c->out, sizeof *p * (size_t)n);
    if (!p) return false;
    c->out = p;
    c->cap_out = n;
    return true;
}

/* Ends the processes the child forked itself (a split engine's other ranks: build's) and reaps
 * them, so that none outlives it, then exits with status code. */
static _Noreturn void rproc_child_exit(int code) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    FILE *f = fopen(path, "r");
    int pid;
    while (f && fscanf(f, "%d", &pid) == 1)
        if (kill(pid, SIGKILL) == 0) waitpid(pid, NULL, 0);
    if (f) fclose(f);
    _exit(code);
}

/* Tells the parent why the child fails (st and sk_errmsg), and exits with status code. */
static _Noreturn void rproc_child_fail(int fd, sk_status st, int code) {
    const char *msg = sk_errmsg();
    const int32_t status = st;
    rproc_send(fd, RPROC_FAIL, &status, sizeof status, msg, strlen(msg));
    rproc_child_exit(code);
}

/* Applies a STEP's ops; false when the payload is malformed or memory ran out. */
static bool rproc_child_apply(rproc_child *c, const char *p, size_t len) {
    const char *end = p + len;
    c->n_refused = 0;
    while (p < end) {
        rproc_op op;
        if ((size_t)(end - p) < sizeof op) return false;
        memcpy(&op, p, sizeof op);
        p += sizeof op;
        if (op.kind == RPROC_OP_CANCEL) {
            const int i = rproc_child_find(c, false, op.id);
            if (i >= 0) engine_cancel(c->e, c->live[i].eid);
            continue;
        }
        if (op.kind != RPROC_OP_ADD || op.n < 0 || (size_t)(end - p) < sizeof(int) * (size_t)op.n) return false;
        if (c->n_live == c->cap_live) {
            const int cap = c->cap_live ? 2 * c->cap_live : 64;
            rproc_live *q = mem_realloc(c->live, sizeof *q * (size_t)cap);
            if (!q) return false;
            c->live = q;
            c->cap_live = cap;
        }
        int *prompt = mem_alloc(sizeof(int) * (size_t)(op.n ? op.n : 1));   /* aligned, for the engine */
        if (!prompt) return false;
        memcpy(prompt, p, sizeof(int) * (size_t)op.n);
        p += sizeof(int) * (size_t)op.n;
        int eid = -1;
        const sk_status st = engine_add_request(c->e, prompt, op.n, &op.params, &eid);
        mem_free(prompt);
        if (st == SK_OK) {
            c->live[c->n_live++] = (rproc_live){op.id, eid};
            continue;
        }
        fprintf(stderr, "skein serve: replica process %d: request refused: %s\n", (int)getpid(), sk_errmsg());
        if (!rproc_child_reserve(c, c->n_refused + 1)) return false;
        c->out[c->n_refused++] = (rproc_out){.o = {.id = op.id, .token = -1}, .finish = RPROC_ERROR};
    }
    return true;
}

static void rproc_child_state(const rproc_child *c, int n_out, rproc_state *s) {
    memset(s, 0, sizeof *s);
    s->n_out = n_out;
    rproc_engine_gauges(c->e, &s->gauges);
}

/* Runs one step and answers DONE (false when that fails); a failed step ends the child. */
static bool rproc_child_step(rproc_child *c) {
    const engine_output *eo = NULL;
    int n = 0;
    if (engine_has_work(c->e)) {
        const sk_status st = engine_step(c->e, &eo, &n);
        if (st != SK_OK) rproc_child_fail(c->fd, st, 2);
    }
    if (!rproc_child_reserve(c, c->n_refused + n)) return false;
    int k = c->n_refused;
    for (int i = 0; i < n; i++) {
        const int j = rproc_child_find(c, true, eo[i].id);
        if (j < 0) continue;
        rproc_out *w = &c->out[k++];
        w->o = eo[i];
        w->o.id = c->live[j].id;
        w->o.finish = NULL;
        w->finish = !eo[i].finish ? RPROC_RUNNING
                    : !strcmp(eo[i].finish, "length") ? RPROC_LENGTH
                    : !strcmp(eo[i].finish, "cancelled") ? RPROC_CANCELLED : RPROC_STOP;
        if (eo[i].finish) c->live[j] = c->live[--c->n_live];
    }
    rproc_state s;
    rproc_child_state(c, k, &s);
    return rproc_send(c->fd, RPROC_DONE, &s, sizeof s, c->out, sizeof *c->out * (size_t)k);
}

/* In the child, before its exec (async-signal-safe calls only): the socket becomes descriptor 3
 * and *given (when >= 0) 4, every other one is closed (the server's listening socket and
 * connections, the other children's sockets). */
static void rproc_child_fds(int sock, int *given) {
    const int s = fcntl(sock, F_DUPFD, 5), g = *given >= 0 ? fcntl(*given, F_DUPFD, 5) : -1;
    if (s < 0 || (*given >= 0 && g < 0) || dup2(s, 3) < 0 || (g >= 0 && dup2(g, 4) < 0)) _exit(3);
    const unsigned first = g >= 0 ? 5 : 4;
    if (close_range(first, ~0u, 0) != 0)
        for (unsigned i = first; i < 65536; i++) close((int)i);
    *given = g >= 0 ? 4 : -1;
}

bool rproc_is_child(int argc, char **argv) {
    return argc == 3 && !strcmp(argv[1], "serve") && !strcmp(argv[2], RPROC_CHILD_FLAG);
}

_Noreturn void rproc_child_run(rproc_build_fn build) {
    rproc_child c = {.fd = 3};
    void *buf = NULL;
    size_t cap = 0, len = 0;
    rproc_setup setup;
    if (rproc_recv(c.fd, &buf, &cap, &len, NULL) != RPROC_SETUP || len < sizeof setup) {
        fprintf(stderr, "skein serve %s: no replica setup on descriptor 3 (skein serve --replica-process starts this "
                "process; it is not run by hand)\n", RPROC_CHILD_FLAG);
        _exit(2);
    }
    memcpy(&setup, buf, sizeof setup);
    if (setup.version != RPROC_VERSION)
        rproc_child_fail(c.fd, sk_fail(SK_ESTATE, "speaks protocol version %d, the server %d", RPROC_VERSION, (int)setup.version), 1);
    const rproc_share given = {.fd = setup.has_fd ? 4 : -1, .bytes = setup.bytes};
    rproc_share share = {.fd = -1};
    const sk_status built = build((const char *)buf + sizeof setup, len - sizeof setup, given, &c.e, &share);
    if (given.fd >= 0) close(given.fd);
    if (built != SK_OK) rproc_child_fail(c.fd, built, 1);
    const rproc_ready_msg ready = {.has_fd = share.fd >= 0, .bytes = share.bytes};
    if (!rproc_send_fd(c.fd, share.fd, RPROC_READY, &ready, sizeof ready, NULL, 0)) _exit(1);
    for (;;) {
        const int type = rproc_recv(c.fd, &buf, &cap, &len, NULL);
        if (type == 0) rproc_child_exit(0);   /* the parent closed the socket: done */
        rproc_state s;
        bool ok = false;
        if (type == RPROC_STEP) {
            ok = rproc_child_apply(&c, buf, len) && rproc_child_step(&c);
        } else if (type == RPROC_PING) {
            const sk_status st = engine_heartbeat(c.e);   /* a split engine's ranks wait for it */
            if (st != SK_OK) rproc_child_fail(c.fd, st, 2);
            rproc_child_state(&c, 0, &s);
            ok = rproc_send(c.fd, RPROC_PONG, &s, sizeof s, NULL, 0);
        }
        if (!ok) rproc_child_exit(2);
    }
}

/* ---- the parent ---- */

/* The child's end, for a message: how it exited, or that it broke the protocol. It is waited
 * for without being reaped (WNOWAIT): only rproc_free reaps, so its pid is not reused while
 * rproc_kill may still name it. */
static sk_status rproc_died(rproc *p, const char *doing) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r;
    while ((r = waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOWAIT)) < 0 && errno == EINTR) {}
    if (r == 0 && (si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED))
        return sk_fail(SK_ESTATE, "replica process %d was killed by signal %d (%s)", (int)p->pid, si.si_status, doing);
    if (r == 0) return sk_fail(SK_ESTATE, "replica process %d exited with status %d (%s)", (int)p->pid, si.si_status, doing);
    return sk_fail(SK_ESTATE, "replica process %d is gone (%s)", (int)p->pid, doing);
}

/* Receives the answer to what was sent: its type, or a failure (FAIL's message, death). */
static sk_status rproc_answer(rproc *p, int want, const char *doing, size_t *len) {
    const int type = rproc_recv(p->fd, &p->in, &p->cap_in, len, &p->passed);
    if (type == want) return SK_OK;
    if (type == RPROC_FAIL && *len >= sizeof(int32_t)) {   /* the child's status, so a bad flag stays one */
        int32_t status;
        memcpy(&status, p->in, sizeof status);
        sk_status st = sk_fail(status > SK_OK && status <= SK_ECOMM ? (sk_status)status : SK_ESTATE, "replica process %d: %s", (int)p->pid,
                               (const char *)p->in + sizeof status);
        rproc_kill(p);
        return st;
    }
    if (type > 0) return sk_fail(SK_ESTATE, "replica process %d broke the protocol (message %d while %s)", (int)p->pid, type, doing);
    rproc_kill(p);   /* a broken stream: make sure it is gone */
    return rproc_died(p, doing);
}

sk_status rproc_spawn(const void *setup, size_t len, rproc_share give, rproc **out) {
    static char *const child_argv[] = {"skein", "serve", RPROC_CHILD_FLAG, NULL};
    *out = NULL;
    rproc *p = mem_calloc(sizeof *p);
    if (!p) return sk_fail(SK_ENOMEM, "serve: out of memory");
    p->fd = -1;
    p->passed = -1;
    p->reaped = true;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        mem_free(p);
        return sk_fail(SK_EIO, "serve: socketpair for a replica process: %s", strerror(errno));
    }
    p->pid = fork();
    if (p->pid == 0) {   /* async-signal-safe calls only until the exec */
        static const char failed[] = "skein serve: a replica process could not exec /proc/self/exe\n";
        int given = give.fd;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        rproc_child_fds(sv[1], &given);
        execv("/proc/self/exe", child_argv);
        (void)!write(2, failed, sizeof failed - 1);   /* nothing more to do when even this fails */
        _exit(127);
    }
    close(sv[1]);
    if (p->pid < 0) {
        close(sv[0]);
        mem_free(p);
        return sk_fail(SK_ESTATE, "serve: fork for a replica process: %s", strerror(errno));
    }
    p->fd = sv[0];
    p->reaped = false;
    const rproc_setup s = {.version = RPROC_VERSION, .has_fd = give.fd >= 0, .bytes = give.bytes};
    if (!rproc_send(p->fd, RPROC_SETUP, &s, sizeof s, setup, len)) {
        rproc_kill(p);
        const sk_status st = rproc_died(p, "sending its setup");
        rproc_free(p);
        return st;
    }
    *out = p;
    return SK_OK;
}

sk_status rproc_ready(rproc *p, rproc_share *got) {
    *got = (rproc_share){.fd = -1};
    size_t len = 0;
    sk_status st = rproc_answer(p, RPROC_READY, "building its engine", &len);
    rproc_ready_msg ready = {0};
    if (st == SK_OK && len == sizeof ready) memcpy(&ready, p->in, sizeof ready);
    if (st == SK_OK && len != sizeof ready)
        st = sk_fail(SK_ESTATE, "replica process %d broke the protocol (a READY of %zu bytes)", (int)p->pid, len);
    else if (st == SK_OK && (ready.has_fd != 0) != (p->passed >= 0))
        st = sk_fail(SK_ESTATE, "replica process %d broke the protocol (a descriptor %s)", (int)p->pid,
                     ready.has_fd ? "announced but not passed" : "passed unannounced");
    if (st != SK_OK) {
        rproc_kill(p);
        return st;
    }
    *got = (rproc_share){.fd = p->passed, .bytes = ready.bytes};
    p->passed = -1;
    return SK_OK;
}

pid_t rproc_pid(const rproc *p) { return p->pid; }

/* Appends a to the queued ops. */
static sk_status rproc_queue(rproc *p, const void *a, size_t na, const void *b, size_t nb) {
    if (p->n_ops + na + nb > p->cap_ops) {
        const size_t cap = 2 * (p->n_ops + na + nb);
        char *q = mem_realloc(p->ops, cap);
        if (!q) return sk_fail(SK_ENOMEM, "serve: out of memory queueing a request for a replica process");
        p->ops = q;
        p->cap_ops = cap;
    }
    memcpy(p->ops + p->n_ops, a, na);
    if (nb) memcpy(p->ops + p->n_ops + na, b, nb);
    p->n_ops += na + nb;
    p->n_queued++;
    return SK_OK;
}

sk_status rproc_add(rproc *p, const int *prompt, int n, const engine_params *params, int *id) {
    const rproc_op op = {.kind = RPROC_OP_ADD, .id = p->next_id, .n = n, .params = *params};
    SK_TRY(rproc_queue(p, &op, sizeof op, prompt, sizeof(int) * (size_t)n));
    *id = p->next_id++;
    p->n_live++;
    return SK_OK;
}

void rproc_cancel(rproc *p, int id) {
    const rproc_op op = {.kind = RPROC_OP_CANCEL, .id = id};
    if (rproc_queue(p, &op, sizeof op, NULL, 0) != SK_OK) rproc_kill(p);   /* its step then fails: nothing is lost */
}

bool rproc_has_work(const rproc *p) { return p->n_live > 0 || p->n_queued > 0; }

sk_status rproc_step(rproc *p, const engine_output **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    const bool sent = rproc_send(p->fd, RPROC_STEP, p->ops, p->n_ops, NULL, 0);
    p->n_ops = 0;
    p->n_queued = 0;
    size_t len = 0;
    if (!sent) {
        rproc_kill(p);
        return rproc_died(p, "sending a step");
    }
    SK_TRY(rproc_answer(p, RPROC_DONE, "running a step", &len));
    rproc_state s;
    if (len < sizeof s) return sk_fail(SK_ESTATE, "replica process %d sent a short step", (int)p->pid);
    memcpy(&s, p->in, sizeof s);
    if (s.n_out < 0 || len != sizeof s + sizeof(rproc_out) * (size_t)s.n_out)
        return sk_fail(SK_ESTATE, "replica process %d sent a malformed step", (int)p->pid);
    if (s.n_out > p->cap_out) {
        engine_output *q = mem_realloc(p->out, sizeof *q * (size_t)s.n_out);
        if (!q) return sk_fail(SK_ENOMEM, "serve: out of memory receiving a step");
        p->out = q;
        p->cap_out = s.n_out;
    }
    const rproc_out *w = (const rproc_out *)((const char *)p->in + sizeof s);
    for (int i = 0; i < s.n_out; i++) {
        p->out[i] = w[i].o;
        const int f = w[i].finish >= RPROC_RUNNING && w[i].finish <= RPROC_ERROR ? w[i].finish : RPROC_ERROR;
        p->out[i].finish = rproc_finish_names[f];
        p->n_live -= f != RPROC_RUNNING;
    }
    p->gauges = s.gauges;
    *out = p->out;
    *n_out = s.n_out;
    return SK_OK;
}

sk_status rproc_ping(rproc *p) {
    size_t len = 0;
    if (!rproc_send(p->fd, RPROC_PING, NULL, 0, NULL, 0)) {
        rproc_kill(p);
        return rproc_died(p, "idle");
    }
    SK_TRY(rproc_answer(p, RPROC_PONG, "idle", &len));
    rproc_state s;
    if (len != sizeof s) return sk_fail(SK_ESTATE, "replica process %d sent a malformed answer", (int)p->pid);
    memcpy(&s, p->in, sizeof s);
    p->gauges = s.gauges;
    return SK_OK;
}

void rproc_gauges(const rproc *p, metrics_replica *s) {
    const metrics_replica *g = &p->gauges;
    s->running = g->running;
    s->queued = g->queued;
    s->kv_used = g->kv_used;
    s->kv_total = g->kv_total;
    s->prefix_hits = g->prefix_hits;
    s->prefix_misses = g->prefix_misses;
}

void rproc_engine_gauges(const engine *e, metrics_replica *s) {
    int waiting = 0, running = 0;
    engine_counts(e, &waiting, &running);
    const kv_pool *p = engine_pool(e);
    const kv_stats k = kv_pool_stats(p);
    s->queued = waiting;
    s->running = running;
    s->kv_total = kv_pool_blocks(p);
    s->kv_used = s->kv_total - kv_pool_available(p);
    s->prefix_hits = k.hits;
    s->prefix_misses = k.misses;
}

void rproc_kill(rproc *p) {
    if (p && p->pid > 0) kill(p->pid, SIGKILL);   /* not reaped before rproc_free: the pid is still the child's */
}

void rproc_free(rproc *p) {
    if (!p) return;
    if (p->fd >= 0) close(p->fd);
    if (p->passed >= 0) close(p->passed);
    for (int ms = 0; !p->reaped; ms++) {
        int status;
        const pid_t r = waitpid(p->pid, &status, ms < RPROC_EXIT_WAIT_MS ? WNOHANG : 0);
        if (r == p->pid || (r < 0 && errno != EINTR)) p->reaped = true;
        else if (ms == RPROC_EXIT_WAIT_MS - 1) kill(p->pid, SIGKILL);
        else if (r == 0) usleep(1000);
    }
    mem_free(p->ops);
    mem_free(p->in);
    mem_free(p->out);
    mem_free(p);
}
