/* Tests of the TCP store (store.h) that carries NCCL's unique id under torchrun-style
 * launchers: the test forks processes that each act as one rank on 127.0.0.1, as torchrun
 * would start them, and checks the broadcast, the barrier, the fetch-and-add counter (every
 * value handed out once), keys set and waited for (gloo's rendezvous), the ranks' reported
 * progress, and the failures: a rank that never comes, a rank that dies, no rank 0 at all, a
 * port in use, a key nobody sets; and rank 0 taking a listening socket it is handed
 * (SKEIN_STORE_FD). Failures must come within the timeout, naming the rank or
 * the key. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "comm/comm.h"
#include "comm/store.h"
#include "test.h"

/* A TCP port free right now on 127.0.0.1 (the kernel picks it). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        return 29500;
    close(fd);
    return ntohs(a.sin_port);
}

typedef int (*rank_fn)(int rank, int world, int port, int out_fd);

/* Forks ranks [0, started) of `world`, each running fn, and waits for them (killing any still
 * running after 30 s). Returns how many exited with status 0; out_fd is a pipe they may
 * write to, read back into buf(cap) (*got bytes). */
static int run_ranks(rank_fn fn, int world, int started, int port, void *buf, size_t cap, size_t *got) {
    int p[2];
    if (pipe(p) < 0) return -1;
    pid_t pids[8];
    for (int r = 0; r < started; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            close(p[0]);
            int rc = fn(r, world, port, p[1]);
            fflush(stdout);
            _exit(rc);
        }
    }
    close(p[1]);
    size_t n = 0;
    ssize_t k;
    while (n < cap && (k = read(p[0], (char *)buf + n, cap - n)) > 0) n += (size_t)k;
    close(p[0]);
    if (got) *got = n;
    int ok = 0;
    double end = time_now() + 30;
    for (int r = 0; r < started; r++) {
        int status;
        while (waitpid(pids[r], &status, WNOHANG) == 0) {
            if (time_now() > end) kill(pids[r], SIGKILL);
            usleep(10000);
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) ok++;
    }
    return ok;
}

enum { K = 100 };

static int rank_happy(int rank, int world, int port, int out_fd) {
    store *s;
    if (store_open("127.0.0.1", port, rank, world, 10, &s) != SK_OK) {
        printf("  rank %d: %s\n", rank, sk_errmsg());
        return 1;
    }
    unsigned char id[128];
    for (int i = 0; i < 128; i++) id[i] = rank == 0 ? (unsigned char)(i * 13 + 5) : 0;
    int bad = store_bcast(s, id, sizeof id) != SK_OK;
    for (int i = 0; i < 128; i++) bad |= id[i] != (unsigned char)(i * 13 + 5);
    bad |= store_barrier(s) != SK_OK;
    int64_t olds[K];
    for (int k = 0; k < K; k++) bad |= store_add(s, 1, &olds[k]) != SK_OK;
    if (write(out_fd, olds, sizeof olds) != (ssize_t)sizeof olds) bad = 1;
    bad |= store_barrier(s) != SK_OK;
    int64_t total = -1;
    bad |= store_add(s, 0, &total) != SK_OK || total != (int64_t)world * K;
    bad |= store_barrier(s) != SK_OK;
    if (rank == 0) bad |= store_counter_set(s, 7) != SK_OK;
    bad |= store_barrier(s) != SK_OK;
    bad |= store_add(s, 0, &total) != SK_OK || total != 7;
    bad |= store_barrier(s) != SK_OK;
    if (bad) printf("  rank %d: %s (total %lld)\n", rank, sk_errmsg(), (long long)total);
    store_free(s);
    return bad;
}

TEST(store_bcast_barrier_add) {
    int world = 3;
    int64_t olds[3 * K];
    size_t got = 0;
    int ok = run_ranks(rank_happy, world, world, free_port(), olds, sizeof olds, &got);
    CHECK_MSG(ok == world, "%d of %d ranks succeeded", ok, world);
    CHECK(got == sizeof olds);
    char seen[3 * K] = {0};
    for (int i = 0; i < world * K; i++) {
        CHECK_MSG(olds[i] >= 0 && olds[i] < world * K && !seen[olds[i]], "value %lld", (long long)olds[i]);
        seen[olds[i]] = 1;
    }
}

/* Keys: each rank sets its own and reads every other's, some before they are set (the GET
 * waits in the server); a key set twice reads as the second value. Then progress: rank r
 * reports collective #(10 + r) and everyone sees it; a key nobody sets fails naming it. */
static int rank_keys(int rank, int world, int port, int out_fd) {
    store *s;
    if (store_open("127.0.0.1", port, rank, world, 10, &s) != SK_OK) return 1;
    int bad = 0;
    char key[32], val[64];
    void *got;
    size_t n;
    if (rank == 1) usleep(200000);   /* the others' GETs of key/1 wait for this */
    snprintf(key, sizeof key, "key/%d", rank);
    snprintf(val, sizeof val, "value of rank %d", rank);
    bad |= store_set(s, key, val, strlen(val) + 1) != SK_OK;
    for (int r = 0; r < world; r++) {
        snprintf(key, sizeof key, "key/%d", r);
        snprintf(val, sizeof val, "value of rank %d", r);
        bad |= store_get(s, key, &got, &n) != SK_OK || n != strlen(val) + 1 || memcmp(got, val, n);
        free(got);
    }
    bad |= store_barrier(s) != SK_OK;
    if (rank == 0) bad |= store_set(s, "key/0", "new", 3) != SK_OK;
    bad |= store_barrier(s) != SK_OK;
    bad |= store_get(s, "key/0", &got, &n) != SK_OK || n != 3 || memcmp(got, "new", 3);
    free(got);
    bad |= store_progress(s, 10 + rank) != SK_OK;
    bad |= store_barrier(s) != SK_OK;
    int64_t where[3];
    bool gone[3];
    bad |= store_status(s, where, gone) != SK_OK;
    for (int r = 0; r < world; r++) bad |= where[r] != 10 + r || gone[r];
    if (bad) printf("  rank %d: keys or progress wrong: %s\n", rank, sk_errmsg());
    bad |= store_barrier(s) != SK_OK;
    store_free(s);
    return bad;
}

TEST(store_keys_progress) {
    CHECK(run_ranks(rank_keys, 3, 3, free_port(), NULL, 0, NULL) == 3);
}

/* Rank 1 leaves after reporting progress: rank 0's status says so. Then, alone in a new
 * store, a GET of a key nobody sets fails within the timeout naming the key. */
static int rank_status(int rank, int world, int port, int out_fd) {
    store *s;
    if (store_open("127.0.0.1", port, rank, 2, 10, &s) != SK_OK) return 1;
    int bad = store_progress(s, 3) != SK_OK;
    bad |= store_barrier(s) != SK_OK;
    if (rank == 1) {
        store_free(s);
        return bad;
    }
    int64_t where[2] = {0, 0};
    bool gone[2] = {false, false};
    double t0 = time_now();
    while (time_now() - t0 < 5 && store_status(s, where, gone) == SK_OK && !gone[1]) usleep(10000);
    bad |= where[0] != 3 || where[1] != 3 || gone[0] || !gone[1];
    void *got = NULL;
    size_t n;
    store_free(s);
    if (store_open("127.0.0.1", port, 0, 1, 1.0, &s) != SK_OK) return 1;
    t0 = time_now();
    sk_status st = store_get(s, "nobody/sets/this", &got, &n);
    double dt = time_now() - t0;
    printf("  rank 0: %s after %.1f s: %s\n", sk_status_name(st), dt, st ? sk_errmsg() : "");
    bad |= st != SK_ECOMM || !strstr(sk_errmsg(), "key 'nobody/sets/this' was not set within 1 s") || dt > 4;
    store_free(s);
    if (bad) printf("  rank 0: status %lld %lld\n", (long long)where[0], (long long)where[1]);
    return bad;
}

TEST(store_status_and_missing_key) {
    CHECK(run_ranks(rank_status, 2, 2, free_port(), NULL, 0, NULL) == 2);
}

/* Opens with a 1 s timeout and expects SK_ECOMM whose message contains `want` (in the
 * environment variable of the same name, as fork keeps it), within 5 s. */
static int expect_open_fails(int rank, int world, int port, int out_fd) {
    const char *want = getenv("STORE_WANT");
    double t0 = time_now();
    store *s;
    sk_status st = store_open("127.0.0.1", port, rank, world, 1.0, &s);
    double dt = time_now() - t0;
    printf("  rank %d: %s after %.1f s: %s\n", rank, sk_status_name(st), dt, st ? sk_errmsg() : "");
    if (st == SK_OK) store_free(s);
    return !(st == SK_ECOMM && strstr(sk_errmsg(), want) && dt < 5);
}

TEST(store_rank_never_comes) {
    setenv("STORE_WANT", "rank(s) 2 never connected", 1);
    int ok = run_ranks(expect_open_fails, 3, 2, free_port(), NULL, 0, NULL);
    CHECK_MSG(ok == 2, "%d of 2 ranks reported the missing rank", ok);
}

TEST(store_no_rank0) {
    int port = free_port();
    /* Rank 1 alone: nobody listens; it retries for the timeout, then says so. */
    double t0 = time_now();
    store *s;
    sk_status st = store_open("127.0.0.1", port, 1, 2, 1.0, &s);
    CHECK(st == SK_ECOMM && time_now() - t0 < 5);
    CHECK_MSG(strstr(sk_errmsg(), "could not connect to rank 0 at 127.0.0.1:"), "%s", sk_errmsg());
}

/* Rank 1 exits after joining; rank 0's next barrier must fail at once naming it. */
static int rank_dies(int rank, int world, int port, int out_fd) {
    store *s;
    if (store_open("127.0.0.1", port, rank, world, 10, &s) != SK_OK) return 1;
    if (rank == 1) _exit(0);
    double t0 = time_now();
    sk_status st = store_barrier(s);
    double dt = time_now() - t0;
    printf("  rank 0: %s after %.1f s: %s\n", sk_status_name(st), dt, st ? sk_errmsg() : "");
    store_free(s);
    return !(st == SK_ECOMM && strstr(sk_errmsg(), "rank 1 disconnected") && dt < 5);
}

TEST(store_rank_dies) {
    CHECK(run_ranks(rank_dies, 2, 2, free_port(), NULL, 0, NULL) == 2);
}

/* A socket listening on a free port of addr (host order), its port in *port; -1 on failure. */
static int listening_socket(uint32_t addr, int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(addr)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

TEST(store_port_in_use) {
    int port = 0, fd = listening_socket(INADDR_ANY, &port);
    CHECK(fd >= 0);
    store *s;
    sk_status st = store_open("127.0.0.1", port, 0, 2, 1.0, &s);
    close(fd);
    CHECK(st == SK_EIO);
    CHECK_MSG(strstr(sk_errmsg(), "cannot listen on port"), "%s", sk_errmsg());
    CHECK(store_open("127.0.0.1", 0, 0, 2, 1.0, &s) == SK_EARG);
    CHECK(store_open("127.0.0.1", 100, 2, 2, 1.0, &s) == SK_EARG);
    /* One rank: no peers, the store still works. */
    CHECK(store_open("127.0.0.1", free_port(), 0, 1, 1.0, &s) == SK_OK);
    int64_t old;
    CHECK(store_add(s, 5, &old) == SK_OK && old == 0 && store_add(s, 0, &old) == SK_OK && old == 5);
    store_free(s);
}

/* SKEIN_STORE_FD: rank 0 takes the listening socket it names (the port is in use by that very
 * socket, so a bind of its own would fail), once; a descriptor that is not a socket listening on
 * the port is ignored and rank 0 binds as usual. */
TEST(store_takes_inherited_socket) {
    int port = 0, fd = listening_socket(INADDR_LOOPBACK, &port);
    CHECK(fd >= 3);
    char v[16];
    snprintf(v, sizeof v, "%d", fd);
    setenv("SKEIN_STORE_FD", v, 1);
    store *s;
    CHECK_MSG(store_open("127.0.0.1", port, 0, 1, 1.0, &s) == SK_OK, "%s", sk_errmsg());
    CHECK(getenv("SKEIN_STORE_FD") == NULL);
    int64_t old;
    CHECK(store_add(s, 3, &old) == SK_OK && old == 0);
    store_free(s);
    /* an unbound socket: not taken (closed here), rank 0 listens on a port of its own */
    int other = socket(AF_INET, SOCK_STREAM, 0);
    snprintf(v, sizeof v, "%d", other);
    setenv("SKEIN_STORE_FD", v, 1);
    CHECK(store_open("127.0.0.1", free_port(), 0, 1, 1.0, &s) == SK_OK);
    CHECK(getenv("SKEIN_STORE_FD") == NULL);
    store_free(s);
    close(other);
}

#ifdef SKEIN_HAVE_NCCL
/* torchrun-style through comm_init("nccl"): the store carries NCCL's unique id from rank 0
 * to rank 1. Without a GPU (CI) each rank must then stop with a message about the GPU, which
 * comes after the exchange; with GPUs the communicator must come up. */
static int rank_nccl(int rank, int world, int port, int out_fd) {
    char v[16];
    snprintf(v, sizeof v, "%d", rank);
    setenv("RANK", v, 1);
    setenv("LOCAL_RANK", v, 1);
    snprintf(v, sizeof v, "%d", world);
    setenv("WORLD_SIZE", v, 1);
    snprintf(v, sizeof v, "%d", port);
    setenv("MASTER_PORT", v, 1);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    comm *c = NULL;
    sk_status st = comm_init("nccl", "cuda", 20, &c);
    printf("  rank %d: %s%s%s\n", rank, sk_status_name(st), st ? ": " : "", st ? sk_errmsg() : "");
    if (st == SK_OK) {
        int ok = c->rank == rank && c->world == world;
        comm_free(c);
        return !ok;
    }
    return !(st == SK_ECOMM && strstr(sk_errmsg(), "has the communicator's id but no usable GPU"));
}
#endif

TEST(nccl_bootstrap_torchrun) {
#ifdef SKEIN_HAVE_NCCL
    CHECK(run_ranks(rank_nccl, 2, 2, free_port(), NULL, 0, NULL) == 2);
#else
    SKIP("NCCL is not built in");
#endif
}

TEST_MAIN()
