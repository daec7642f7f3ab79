/* Tests of rproc's shares (rproc.h: a descriptor each way between the server and a replica
 * process, as the device copy of the weights travels: devw.h), on the CPU with the tiny GPT-2
 * fixture as the child's engine:
 *   - the parent's share reaches the child as descriptor 4 with its bytes, and the child reads
 *     what the parent wrote there; no other descriptor of the parent but the socket is open in
 *     the child (a pipe the parent holds is not), also when the share is descriptor 3 itself,
 *     where the child puts its socket;
 *   - the child's share comes back with READY as a new descriptor of the parent's with its
 *     bytes, and the parent reads what the child wrote there; the protocol goes on after it: a
 *     ping, and a greedy request stepped to its end gives the tokens of the same engine built
 *     in this process;
 *   - a child that refuses the share given (its bytes are not the ones it expects, as devw
 *     refuses another plan's copy) fails rproc_ready with its status and its message.
 * The children are this program again (rproc_spawn execs it): child_entry. */
#include "test.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>

#include "serve/rproc.h"

#define GEN_TOKENS 6
static const int prompt[] = {17, 4, 58, 91};

/* What the child expects from its parent and writes back: the setup the parent sends. */
typedef struct child_want {
    char text[64];           /* in the given descriptor */
    uint64_t bytes;          /* given with it */
} child_want;

/* A memfd holding text; -1 when it cannot be made. */
static int text_fd(const char *name, const char *text) {
    const int fd = memfd_create(name, MFD_CLOEXEC);
    const ssize_t n = (ssize_t)strlen(text);
    if (fd >= 0 && write(fd, text, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The first n bytes of fd (from offset 0) into buf, terminated. */
static void read_text(int fd, char *buf, size_t n) {
    const ssize_t k = pread(fd, buf, n, 0);
    buf[k > 0 ? (size_t)k : 0] = 0;
}

/* A descriptor above 4 open in this process, or -1. */
static int open_above_4(void) {
    DIR *d = opendir("/proc/self/fd");
    int found = -1;
    for (struct dirent *e; d && (e = readdir(d));) {
        const int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd > 4 && fd != dirfd(d)) found = fd;
    }
    if (d) closedir(d);
    return found;
}

/* The engine the child runs and the reference: the tiny GPT-2 on the CPU. */
static sk_status fixture_engine(engine **e) {
    backend *cpu = backend_create("cpu");
    model *m = NULL;
    if (!cpu) return SK_EARG;
    SK_TRY(model_open_weights(test_path("fixtures/gpt2-tiny"), cpu, &m));
    const engine_opts o = engine_opts_default();
    return engine_create(m, &o, e);
}

/* rproc_build_fn: checks the share given against the setup's child_want (descriptor 4, its
 * bytes, its text, nothing else open), hands back a memfd of "child read: TEXT". */
static sk_status child_build(const void *setup, size_t len, rproc_share given, engine **e, rproc_share *share) {
    const child_want *w = setup;
    char got[128];
    if (len != sizeof *w) return sk_fail(SK_ESTATE, "a setup of %zu bytes", len);
    if (given.fd != 4) return sk_fail(SK_ESTATE, "the share is descriptor %d, not 4", given.fd);
    if (given.bytes != w->bytes)
        return sk_fail(SK_ECONFIG, "the share stands for %llu bytes, this child expects %llu",
                       (unsigned long long)given.bytes, (unsigned long long)w->bytes);
    read_text(given.fd, got, sizeof got - 1);
    if (strcmp(got, w->text)) return sk_fail(SK_EFORMAT, "the share holds '%s'", got);
    const int extra = open_above_4();
    if (extra >= 0) return sk_fail(SK_ESTATE, "descriptor %d of the parent is open in the child", extra);
    char back[160];
    snprintf(back, sizeof back, "child read: %s", got);
    if ((share->fd = text_fd("child", back)) < 0) return sk_fail(SK_EIO, "memfd_create in the child");
    share->bytes = strlen(back);
    return fixture_engine(e);
}

/* Steps request id to its end in p; its tokens into toks, their count returned (-1: a failure). */
static int run_child(rproc *p, int id, int *toks) {
    int n = 0;
    for (int step = 0; step < 4 * GEN_TOKENS; step++) {
        const engine_output *out = NULL;
        int n_out = 0;
        if (rproc_step(p, &out, &n_out) != SK_OK) return -1;
        for (int i = 0; i < n_out; i++) {
            if (out[i].id != id) return -1;
            if (out[i].token >= 0 && n < GEN_TOKENS) toks[n++] = out[i].token;
            if (out[i].finish) return n;
        }
    }
    return -1;
}

/* The same request on the engine built here: its tokens into toks, their count (-1: failure). */
static int run_here(int *toks) {
    engine *e = NULL;
    if (fixture_engine(&e) != SK_OK) return -1;
    engine_params params = engine_params_default();
    params.max_tokens = GEN_TOKENS;
    int id, n = 0;
    if (engine_add_request(e, prompt, 4, &params, &id) != SK_OK) return -1;
    while (engine_has_work(e)) {
        const engine_output *out = NULL;
        int n_out = 0;
        if (engine_step(e, &out, &n_out) != SK_OK) return -1;
        for (int i = 0; i < n_out; i++)
            if (out[i].token >= 0 && n < GEN_TOKENS) toks[n++] = out[i].token;
    }
    return n;
}

/* This program run as rproc_spawn's child (before main: TEST_MAIN would read the arguments as
 * test names); glibc passes the arguments to constructors. */
__attribute__((constructor)) static void child_entry(int argc, char **argv) {
    if (rproc_is_child(argc, argv)) rproc_child_run(child_build);
}

/* Starts a child with setup want and the share (fd, bytes): *p and *got as rproc_ready leaves
 * them; on a failed start *p is freed and NULL. */
static sk_status start_child(const child_want *want, int fd, uint64_t bytes, rproc **p, rproc_share *got) {
    *got = (rproc_share){.fd = -1};
    sk_status st = rproc_spawn(want, sizeof *want, (rproc_share){.fd = fd, .bytes = bytes}, p);
    if (st == SK_OK) st = rproc_ready(*p, got);
    if (st != SK_OK && *p) {
        rproc_free(*p);
        *p = NULL;
    }
    return st;
}

/* Starts a child given a share of text at descriptor give_fd; checks both shares and the
 * protocol after them. A failed CHECK returns early: the caller closes what it opened. */
static void shares_both_ways(int give_fd, const char *text, int *child_toks, int *n_child) {
    child_want want = {.bytes = strlen(text)};
    snprintf(want.text, sizeof want.text, "%s", text);
    rproc *p = NULL;
    rproc_share got;
    const sk_status st = start_child(&want, give_fd, want.bytes, &p, &got);
    CHECK_MSG(st == SK_OK, "%s", sk_errmsg());
    char back[160], expect[160];
    snprintf(expect, sizeof expect, "child read: %s", text);
    read_text(got.fd, back, sizeof back - 1);
    const bool fd_ok = got.fd >= 0 && got.fd != give_fd && got.bytes == strlen(expect) && !strcmp(back, expect);
    if (got.fd >= 0) close(got.fd);
    CHECK_MSG(fd_ok, "descriptor %d of %llu bytes holding '%s'", got.fd, (unsigned long long)got.bytes, back);
    CHECK_MSG(rproc_ping(p) == SK_OK, "%s", sk_errmsg());
    engine_params params = engine_params_default();
    params.max_tokens = GEN_TOKENS;
    int id = -1;
    CHECK(rproc_add(p, prompt, 4, &params, &id) == SK_OK);
    *n_child = run_child(p, id, child_toks);
    CHECK_MSG(*n_child == GEN_TOKENS, "the child produced %d tokens: %s", *n_child, sk_errmsg());
    rproc_free(p);
}

TEST(shares_cross_both_ways_and_the_protocol_goes_on) {
    int pipe_fds[2];
    CHECK(pipe(pipe_fds) == 0);   /* the parent's: must not reach the child */
    const int fd = text_fd("parent", "hello, child");
    int child_toks[GEN_TOKENS], here_toks[GEN_TOKENS], n_child = 0;
    if (fd >= 0) shares_both_ways(fd, "hello, child", child_toks, &n_child);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    if (fd >= 0) close(fd);
    CHECK_MSG(fd >= 0, "memfd_create");
    CHECK(n_child == GEN_TOKENS);
    CHECK(run_here(here_toks) == GEN_TOKENS);
    for (int i = 0; i < GEN_TOKENS; i++)
        CHECK_MSG(child_toks[i] == here_toks[i], "token %d: %d in the child, %d here", i, child_toks[i], here_toks[i]);
}

TEST(a_share_at_descriptor_3_reaches_the_child) {
    const int saved = fcntl(3, F_DUPFD_CLOEXEC, 10);   /* descriptor 3 as it was, when open */
    const int fd = text_fd("parent3", "at three");
    CHECK(fd >= 0);
    if (fd != 3) {
        CHECK(dup2(fd, 3) == 3);
        close(fd);
    }
    int toks[GEN_TOKENS], n = 0;
    shares_both_ways(3, "at three", toks, &n);
    if (saved >= 0) {
        dup2(saved, 3);
        close(saved);
    } else {
        close(3);
    }
    CHECK(n == GEN_TOKENS);
}

TEST(a_child_refusing_the_share_fails_the_start_with_its_message) {
    const int fd = text_fd("parent", "hello, child");
    CHECK(fd >= 0);
    const child_want want = {.text = "hello, child", .bytes = 12};
    rproc *p = NULL;
    rproc_share got;
    const sk_status st = start_child(&want, fd, 13, &p, &got);
    close(fd);
    CHECK_MSG(st == SK_ECONFIG && !p && got.fd == -1, "status %d, child %p, descriptor %d", st, (void *)p, got.fd);
    CHECK_MSG(strstr(sk_errmsg(), "replica process") && strstr(sk_errmsg(), "stands for 13 bytes, this child expects 12"),
              "%s", sk_errmsg());
}

TEST_MAIN()
