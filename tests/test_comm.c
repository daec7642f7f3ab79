/* Tests of comm.h: every collective against the arithmetic truth, for whatever world this
 * program runs in. Run directly (tests/run.sh) it is a world of one ("local"); tests/cli_dist.sh
 * runs it under `mpirun -n 2` and `-n 3`, with SKEIN_COMM_CHUNK=7 to split every call into
 * small pieces, and with SKEIN_COMM_FAULT to check what a sleeping or killed rank does to the
 * others, blocked in a call (case fault) or with a request in flight (fault_async). Values
 * are small integers, so float sums are exact and compared with ==; bf16 sums are compared
 * with round(a + b) at two ranks, where rounding happens, and exactly elsewhere (integers).
 * Asynchronous cases keep several requests in flight, wait in another order than started,
 * and compute on the main thread while the communication thread progresses a request.
 *
 * SKEIN_COMM_FAULT=sleep:R:S  rank R sleeps S seconds before an all_reduce; the others must
 *                             get SK_ECOMM naming rank R within the timeout (+ grace).
 * SKEIN_COMM_FAULT=kill:R     rank R kills itself with SIGKILL before an all_reduce.
 * SKEIN_COMM_TIMEOUT=S        the communicator's timeout (default 60). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "tensor/dtype.h"
#include "test.h"
#include "test_device.h"

static comm *g_comm;
static sk_status g_init_st = SK_OK;

static void world_free(void) { comm_free(g_comm); }

/* The communicator shared by the cases, created on first use (MPI can be initialized once). */
static comm *world(void) {
    if (!g_comm && g_init_st == SK_OK) {
        const char *t = getenv("SKEIN_COMM_TIMEOUT");
        comm_want_split();   /* the split case */
        g_init_st = comm_init("auto", "cpu", t ? atof(t) : 60.0, &g_comm);
        if (g_init_st == SK_OK) {
            atexit(world_free);
            if (g_comm->rank == 0) printf("  comm %s, world %d\n", g_comm->name, g_comm->world);
        }
        else printf("  comm_init: %s\n", sk_errmsg());
    }
    return g_comm;
}

TEST(all_reduce) {
    comm *c = world();
    CHECK(c);
    size_t n = 1037;
    float *buf = malloc(n * sizeof *buf);
    for (size_t i = 0; i < n; i++) buf[i] = (float)(c->rank * 1000 + (int)i);
    sk_status st = comm_all_reduce(c, buf, n, DT_F32, NULL);
    CHECK_MSG(st == SK_OK, "%s", sk_errmsg());
    int W = c->world, bad = 0;
    for (size_t i = 0; i < n; i++) {
        float want = (float)(1000 * W * (W - 1) / 2 + W * (int)i);
        if (buf[i] != want && bad++ < 5) printf("  [%zu] %g, want %g\n", i, buf[i], want);
    }
    free(buf);
    CHECK(bad == 0);
    CHECK(comm_all_reduce(c, NULL, 0, DT_F32, NULL) == SK_OK);
}

TEST(all_reduce_f64) {
    comm *c = world();
    CHECK(c);
    double v[3] = {c->rank + 0.5, -1.25 * c->rank, 1e15};
    CHECK_MSG(comm_all_reduce_f64(c, v, 3) == SK_OK, "%s", sk_errmsg());
    int W = c->world;
    CHECK_NEAR(v[0], W * (W - 1) / 2.0 + 0.5 * W, 0);
    CHECK_NEAR(v[1], -1.25 * W * (W - 1) / 2.0, 0);
    CHECK_NEAR(v[2], 1e15 * W, 0);
}

TEST(reduce_scatter) {
    comm *c = world();
    CHECK(c);
    size_t chunk = 33, W = (size_t)c->world;
    float *send = malloc(W * chunk * sizeof *send), *recv = malloc(chunk * sizeof *recv);
    for (size_t j = 0; j < W * chunk; j++) send[j] = (float)(c->rank + (int)j);
    CHECK_MSG(comm_reduce_scatter(c, send, recv, chunk, DT_F32, NULL) == SK_OK, "%s", sk_errmsg());
    int bad = 0;
    for (size_t i = 0; i < chunk; i++) {
        size_t j = (size_t)c->rank * chunk + i;
        float want = (float)(W * (W - 1) / 2 + W * j);
        if (recv[i] != want && bad++ < 5) printf("  [%zu] %g, want %g\n", i, recv[i], want);
    }
    free(send);
    free(recv);
    CHECK(bad == 0);
}

TEST(all_gather) {
    comm *c = world();
    CHECK(c);
    size_t chunk = 29, W = (size_t)c->world;
    float *send = malloc(chunk * sizeof *send), *recv = malloc(W * chunk * sizeof *recv);
    for (size_t i = 0; i < chunk; i++) send[i] = (float)(c->rank * 100 + (int)i);
    for (int inplace = 0; inplace < 2; inplace++) {
        for (size_t j = 0; j < W * chunk; j++) recv[j] = -1;
        const float *src = send;
        if (inplace) {
            memcpy(recv + (size_t)c->rank * chunk, send, chunk * sizeof *send);
            src = recv + (size_t)c->rank * chunk;
        }
        CHECK_MSG(comm_all_gather(c, src, recv, chunk, DT_F32, NULL) == SK_OK, "%s", sk_errmsg());
        int bad = 0;
        for (size_t r = 0; r < W; r++)
            for (size_t i = 0; i < chunk; i++) {
                float want = (float)(r * 100 + i);
                if (recv[r * chunk + i] != want && bad++ < 5)
                    printf("  in-place %d: [%zu] %g, want %g\n", inplace, r * chunk + i, recv[r * chunk + i], want);
            }
        CHECK(bad == 0);
    }
    free(send);
    free(recv);
}

TEST(broadcast) {
    comm *c = world();
    CHECK(c);
    unsigned char buf[301];
    for (int root = 0; root < c->world; root++) {
        for (size_t i = 0; i < sizeof buf; i++) buf[i] = c->rank == root ? (unsigned char)(i * 7 + root) : 0xEE;
        CHECK_MSG(comm_broadcast(c, buf, sizeof buf, root) == SK_OK, "%s", sk_errmsg());
        for (size_t i = 0; i < sizeof buf; i++)
            CHECK_MSG(buf[i] == (unsigned char)(i * 7 + root), "root %d byte %zu", root, i);
    }
    CHECK(comm_broadcast(c, buf, 1, c->world) == SK_EARG);
    CHECK(comm_barrier(c) == SK_OK);
}

TEST(fetch_add) {
    comm *c = world();
    CHECK(c);
    enum { K = 100 };
    int W = c->world;
    CHECK_MSG(comm_counter_set(c, 0) == SK_OK, "%s", sk_errmsg());
    float mine[K];
    for (int k = 0; k < K; k++) {
        int64_t old = -1;
        CHECK_MSG(comm_fetch_add(c, 1, &old) == SK_OK, "%s", sk_errmsg());
        mine[k] = (float)old;
    }
    /* Every value 0..W*K-1 handed out exactly once. */
    float *all = malloc((size_t)W * K * sizeof *all);
    CHECK(comm_all_gather(c, mine, all, K, DT_F32, NULL) == SK_OK);
    char *seen = calloc((size_t)W * K, 1);
    int bad = 0;
    for (int j = 0; j < W * K; j++) {
        long v = (long)all[j];
        if (v < 0 || v >= W * K || seen[v]++) bad++;
    }
    free(all);
    free(seen);
    CHECK_MSG(bad == 0, "%d values out of range or repeated", bad);
    int64_t total = -1;
    CHECK(comm_fetch_add(c, 0, &total) == SK_OK);
    CHECK_MSG(total == (int64_t)W * K, "counter %lld", (long long)total);
    CHECK(comm_counter_set(c, 42) == SK_OK);
    CHECK(comm_fetch_add(c, 0, &total) == SK_OK);
    CHECK_MSG(total == 42, "after counter_set(42): %lld", (long long)total);
    CHECK(comm_barrier(c) == SK_OK);
}

/* bf16 element i of rank r's contribution: at two ranks values whose sum needs rounding
 * (1 + i/64 plus r * 3/512), elsewhere small integers (exact at any order of the sums). */
static float bf16_value(int W, int r, size_t i) {
    return W == 2 ? bf16_to_f32(f32_to_bf16(1.0f + (float)(i % 64) / 64.0f + (float)r * 3.0f / 512.0f))
                  : (float)((int)(i % 13) + 2 * r);
}

/* The sum comm.h promises for element i: at two ranks round(a + b) in f32, else exact. */
static float bf16_want(int W, size_t i) {
    if (W == 2) return bf16_to_f32(f32_to_bf16(bf16_value(2, 0, i) + bf16_value(2, 1, i)));
    float s = 0;
    for (int r = 0; r < W; r++) s += bf16_value(W, r, i);
    return s;
}

/* all_reduce, reduce_scatter and all_gather in bf16, all three in flight at once, waited
 * for in reverse order. */
TEST(bf16_async) {
    comm *c = world();
    CHECK(c);
    const int W = c->world;
    const size_t n = 301, chunk = 37;
    uint16_t *ar = malloc(n * 2), *rs = malloc((size_t)W * chunk * 2), *rr = malloc(chunk * 2);
    uint16_t *ag = malloc(chunk * 2), *all = malloc((size_t)W * chunk * 2);
    for (size_t i = 0; i < n; i++) ar[i] = f32_to_bf16(bf16_value(W, c->rank, i));
    for (size_t j = 0; j < (size_t)W * chunk; j++) rs[j] = f32_to_bf16(bf16_value(W, c->rank, j));
    for (size_t i = 0; i < chunk; i++) ag[i] = f32_to_bf16((float)(c->rank * 64 + (int)i));
    comm_req *r1, *r2, *r3;
    CHECK_MSG(comm_all_reduce_async(c, ar, n, DT_BF16, NULL, &r1) == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(comm_reduce_scatter_async(c, rs, rr, chunk, DT_BF16, NULL, &r2) == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(comm_all_gather_async(c, ag, all, chunk, DT_BF16, NULL, &r3) == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(comm_wait(c, r3) == SK_OK && comm_wait(c, r2) == SK_OK && comm_wait(c, r1) == SK_OK, "%s", sk_errmsg());
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (bf16_to_f32(ar[i]) != bf16_want(W, i) && bad++ < 5)
            printf("  all_reduce [%zu] %g, want %g\n", i, bf16_to_f32(ar[i]), bf16_want(W, i));
    for (size_t i = 0; i < chunk; i++) {
        size_t j = (size_t)c->rank * chunk + i;
        if (bf16_to_f32(rr[i]) != bf16_want(W, j) && bad++ < 5)
            printf("  reduce_scatter [%zu] %g, want %g\n", i, bf16_to_f32(rr[i]), bf16_want(W, j));
    }
    for (size_t j = 0; j < (size_t)W * chunk; j++)
        if (bf16_to_f32(all[j]) != (float)((int)(j / chunk) * 64 + (int)(j % chunk)) && bad++ < 5)
            printf("  all_gather [%zu] %g\n", j, bf16_to_f32(all[j]));
    free(ar), free(rs), free(rr), free(ag), free(all);
    CHECK(bad == 0);
    /* other element types are refused by name; a NULL request waits for nothing */
    double d = 0;
    comm_req *none = NULL;
    CHECK(comm_all_reduce_async(c, &d, 1, DT_I64, NULL, &none) == SK_EARG && !none);
    CHECK_MSG(strstr(sk_errmsg(), "all_reduce") && strstr(sk_errmsg(), "I64"), "%s", sk_errmsg());
    CHECK(comm_wait(c, NULL) == SK_OK);
}

/* f32 reduce-scatter of a few MB left in flight while this thread computes: it completes
 * without a wait (comm_test), so the communication progresses on its own; the result is
 * the sum. Bounded by the timeout. */
TEST(async_progress_while_computing) {
    comm *c = world();
    CHECK(c);
    /* a few MB, or small where SKEIN_COMM_CHUNK splits it into pieces of a few elements */
    const size_t W = (size_t)c->world, chunk = getenv("SKEIN_COMM_CHUNK") ? 1000 : (size_t)1 << 19;
    float *send = malloc(W * chunk * sizeof *send), *recv = malloc(chunk * sizeof *recv);
    for (size_t j = 0; j < W * chunk; j++) send[j] = (float)(c->rank + (int)(j % 1000));
    comm_req *r;
    CHECK_MSG(comm_reduce_scatter_async(c, send, recv, chunk, DT_F32, NULL, &r) == SK_OK, "%s", sk_errmsg());
    bool done = false;
    double t0 = time_now(), acc = 0;
    long rounds = 0;
    while (!done && time_now() - t0 < c->timeout_s) {
        for (int k = 0; k < 100000; k++) acc += 1e-9 * k;   /* the "compute" */
        rounds++;
        CHECK_MSG(comm_test(c, r, &done) == SK_OK, "%s", sk_errmsg());
    }
    CHECK_MSG(done, "not complete after %.1f s of computing", time_now() - t0);
    CHECK(comm_wait(c, r) == SK_OK && acc > 0 && rounds > 0);
    int bad = 0;
    for (size_t i = 0; i < chunk; i++) {
        size_t j = (size_t)c->rank * chunk + i;
        float want = (float)(W * (W - 1) / 2 + W * (j % 1000));
        if (recv[i] != want && bad++ < 5) printf("  [%zu] %g, want %g\n", i, recv[i], want);
    }
    free(send);
    free(recv);
    CHECK(bad == 0);
}

/* comm_split: ranks of equal parity form a group, ranked by descending world rank; a sum in
 * each group is its members' world ranks, and the world still works alongside. gloo refuses
 * with a message naming itself. */
TEST(split) {
    comm *c = world();
    CHECK(c);
    comm *s = NULL;
    sk_status st = comm_split(c, c->rank % 2, -c->rank, &s);
    if (!strcmp(c->name, "gloo")) {
        CHECK(st == SK_EARG && strstr(sk_errmsg(), "gloo communicator cannot be split"));
        return;
    }
    CHECK_MSG(st == SK_OK, "%s", sk_errmsg());
    const int W = c->world, p = c->rank % 2;
    int size = 0, above = 0;
    double want = 0;
    for (int r = p; r < W; r += 2) {
        size++;
        want += r;
        above += r > c->rank;
    }
    CHECK(s->world == size && s->rank == above);
    double v[2] = {(double)c->rank, 1};
    CHECK_MSG(comm_all_reduce_f64(s, v, 2) == SK_OK, "%s", sk_errmsg());
    CHECK(v[0] == want && v[1] == size);
    float x = 1;
    CHECK_MSG(comm_all_reduce(c, &x, 1, DT_F32, NULL) == SK_OK, "%s", sk_errmsg());
    CHECK(x == (float)W);
    comm_free(s);
    CHECK(comm_split(c, -1, 0, &s) == SK_EARG && !s);
}

/* comm_set_backend(c, be) with staging forced (a host-memory backend too) through pinned
 * buffers of `bytes` (the test hooks of comm_stage.h, read there and cleared after). */
static sk_status staged_attach(comm *c, backend *be, const char *bytes) {
    setenv("SKEIN_COMM_STAGE", "1", 1);
    setenv("SKEIN_COMM_STAGE_BYTES", bytes, 1);
    sk_status st = comm_set_backend(c, be);
    unsetenv("SKEIN_COMM_STAGE");
    unsetenv("SKEIN_COMM_STAGE_BYTES");
    return st;
}

/* The collectives again with their buffers staged through pinned memory as for a GPU
 * (comm_stage.h): SKEIN_COMM_STAGE=1 takes that path on the CPU backend, whose copies are
 * memcpy, and SKEIN_COMM_STAGE_BYTES=64 cuts every call into pieces of a few elements, so
 * the bookkeeping (each owner's part of a reduce-scatter piece, the gathered parts, the last
 * short piece, the two alternating buffers, three requests in flight in bf16) meets the same
 * arithmetic truth. A world of one has nothing to stage (the cases run as they are). */
TEST(staged) {
    comm *c = world();
    CHECK(c);
    backend *be = backend_create("cpu");
    CHECK(be);
    CHECK_MSG(staged_attach(c, be, "64") == SK_OK, "%s", sk_errmsg());
    test_all_reduce();
    test_reduce_scatter();
    test_all_gather();
    test_bf16_async();
    CHECK(comm_set_backend(c, NULL) == SK_OK);
    backend_free(be);
}

/* Fills host buffer h(n) with rank r's values (small integers: sums exact), uploads it into
 * backend memory d, and doubles it there on stream s: the collective started next on s must
 * see the doubled values, so its staged copies wait for the stream. */
static void staged_fill(backend *be, backend_stream *s, float *h, float *d, size_t n, int r) {
    for (size_t i = 0; i < n; i++) h[i] = (float)(r * 1000 + (int)(i % 1000));
    backend_upload(be, d, h, n * sizeof *h);
    be->ops->scale(be, s, tensor_1d(d, DT_F32, (int64_t)n), 2.0f);
}

/* The staged collectives on buffers of the backend of SKEIN_TEST_DEVICE: cuda on a GPU machine
 * (tests/gpu_dp.sh runs this case under mpirun, two ranks on one GPU), the CPU backend with
 * staging forced elsewhere. all_reduce, reduce_scatter and all_gather of f32 buffers written
 * on a stream of the backend just before, started on that stream and in flight together, cut
 * into many pieces (4 KiB of pinned memory each); the results downloaded once comm_wait
 * returned are the doubled sums. A device backend at world 1 has nothing to stage (skipped). */
TEST(staged_device) {
    comm *c = world();
    CHECK(c);
    backend *be = test_device();
    if (c->world == 1 && !be->host_memory) SKIP("one rank: nothing to stage (run under mpirun)");
    backend_stream *s = be->ops->stream_create(be);
    CHECK(s);
    CHECK_MSG(staged_attach(c, be, "4096") == SK_OK, "%s", sk_errmsg());
    const size_t W = (size_t)c->world, n = 50021, chunk = 20011;
    float *h = malloc((n > W * chunk ? n : W * chunk) * sizeof *h);
    float *ar = backend_alloc(be, n * sizeof *ar), *rs = backend_alloc(be, W * chunk * sizeof *rs);
    float *rr = backend_alloc(be, chunk * sizeof *rr), *ag = backend_alloc(be, chunk * sizeof *ag);
    float *all = backend_alloc(be, W * chunk * sizeof *all);
    CHECK(h && ar && rs && rr && ag && all);
    comm_req *r1, *r2, *r3;
    staged_fill(be, s, h, ar, n, c->rank);
    CHECK_MSG(comm_all_reduce_async(c, ar, n, DT_F32, s, &r1) == SK_OK, "%s", sk_errmsg());
    staged_fill(be, s, h, rs, W * chunk, c->rank);
    CHECK_MSG(comm_reduce_scatter_async(c, rs, rr, chunk, DT_F32, s, &r2) == SK_OK, "%s", sk_errmsg());
    staged_fill(be, s, h, ag, chunk, c->rank);
    CHECK_MSG(comm_all_gather_async(c, ag, all, chunk, DT_F32, s, &r3) == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(comm_wait(c, r3) == SK_OK && comm_wait(c, r2) == SK_OK && comm_wait(c, r1) == SK_OK, "%s",
              sk_errmsg());
    const float ranks = (float)(W * (W - 1) / 2);
    float *got = test_download_f32(be, ar, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float want = 2 * (1000 * ranks + (float)W * (float)(i % 1000));
        if (got[i] != want && bad++ < 5) printf("  all_reduce [%zu] %g, want %g\n", i, got[i], want);
    }
    free(got);
    got = test_download_f32(be, rr, chunk);
    for (size_t i = 0; i < chunk; i++) {
        size_t j = (size_t)c->rank * chunk + i;
        float want = 2 * (1000 * ranks + (float)W * (float)(j % 1000));
        if (got[i] != want && bad++ < 5) printf("  reduce_scatter [%zu] %g, want %g\n", i, got[i], want);
    }
    free(got);
    got = test_download_f32(be, all, W * chunk);
    for (size_t j = 0; j < W * chunk; j++) {
        float want = 2 * (float)((int)(j / chunk) * 1000 + (int)(j % chunk % 1000));
        if (got[j] != want && bad++ < 5) printf("  all_gather [%zu] %g, want %g\n", j, got[j], want);
    }
    free(got);
    CHECK(comm_set_backend(c, NULL) == SK_OK);
    free(h);
    backend_mem_free(be, ar), backend_mem_free(be, rs), backend_mem_free(be, rr), backend_mem_free(be, ag);
    backend_mem_free(be, all);
    be->ops->stream_free(be, s);
    CHECK(bad == 0);
}

/* Sets, clears and restores the launcher variables around the env cases. */
static const char *env_names[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                                  "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "SLURM_NTASKS",
                                  "SLURM_LOCALID", "SLURM_STEP_ID", "SLURM_STEPID", "RANK", "WORLD_SIZE",
                                  "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_LOCAL_SIZE",
                                  "MPI_LOCALNRANKS", "SLURM_STEP_TASKS_PER_NODE", "LOCAL_WORLD_SIZE"};
enum { N_ENV = sizeof env_names / sizeof env_names[0] };
static char *env_saved[N_ENV];

static void env_clear(void) {
    for (int i = 0; i < N_ENV; i++) {
        const char *v = getenv(env_names[i]);
        free(env_saved[i]);
        env_saved[i] = v ? strdup(v) : NULL;
        unsetenv(env_names[i]);
    }
}

static void env_restore(void) {
    for (int i = 0; i < N_ENV; i++) {
        if (env_saved[i]) setenv(env_names[i], env_saved[i], 1);
        else unsetenv(env_names[i]);
        free(env_saved[i]);
        env_saved[i] = NULL;
    }
}

/* Reads the environment after setting "NAME=value" pairs (NULL-terminated). */
static sk_status env_with(comm_env *e, const char *const *kv) {
    for (int i = 0; i < N_ENV; i++) unsetenv(env_names[i]);
    for (; *kv; kv++) {
        char name[64];
        const char *eq = strchr(*kv, '=');
        snprintf(name, sizeof name, "%.*s", (int)(eq - *kv), *kv);
        setenv(name, eq + 1, 1);
    }
    return comm_env_read(e);
}

static void env_cases(void) {
    comm_env e;
    /* on cuda: NCCL when a host's ranks have a GPU each, else the host kind, staging */
#ifdef SKEIN_HAVE_NCCL
    const int gpus = backend_device_count("cuda");
#else
    const int gpus = 0;
#endif
    CHECK(env_with(&e, (const char *[]){NULL}) == SK_OK && e.launcher == COMM_LAUNCH_NONE && e.world == 1);
    CHECK(!strcmp(comm_auto_kind("cpu"), "local"));
    CHECK(env_with(&e, (const char *[]){"OMPI_COMM_WORLD_SIZE=4", "OMPI_COMM_WORLD_RANK=2",
                                        "OMPI_COMM_WORLD_LOCAL_RANK=0", "OMPI_COMM_WORLD_LOCAL_SIZE=2", NULL}) == SK_OK);
    CHECK(e.launcher == COMM_LAUNCH_MPIRUN && e.rank == 2 && e.world == 4 && e.local_rank == 0 && e.local_world == 2);
    CHECK(!strcmp(comm_auto_kind("cpu"), "mpi") && !strcmp(comm_auto_kind("cuda"), gpus >= 2 ? "nccl" : "mpi"));
    CHECK(env_with(&e, (const char *[]){"SLURM_PROCID=1", "SLURM_NTASKS=3", "SLURM_LOCALID=1", "SLURM_STEP_ID=0",
                                        "SLURM_STEP_TASKS_PER_NODE=2(x1),1", NULL}) == SK_OK);
    CHECK(e.launcher == COMM_LAUNCH_SLURM && e.rank == 1 && e.world == 3 && e.local_rank == 1 && e.local_world == 2);
    CHECK(env_with(&e, (const char *[]){"OMPI_COMM_WORLD_SIZE=2", "OMPI_COMM_WORLD_RANK=0",
                                        "OMPI_COMM_WORLD_LOCAL_SIZE=x", NULL}) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "OMPI_COMM_WORLD_LOCAL_SIZE=x"), "%s", sk_errmsg());
    /* An sbatch script's shell is not a job step: one process. */
    CHECK(env_with(&e, (const char *[]){"SLURM_PROCID=0", "SLURM_NTASKS=3", NULL}) == SK_OK);
    CHECK(e.launcher == COMM_LAUNCH_NONE);
    CHECK(env_with(&e, (const char *[]){"RANK=1", "WORLD_SIZE=2", "LOCAL_RANK=1", "MASTER_ADDR=10.0.0.1",
                                        "MASTER_PORT=29500", NULL}) == SK_OK);
    CHECK(e.launcher == COMM_LAUNCH_TORCHRUN && e.rank == 1 && e.world == 2 && e.local_rank == 1);
    CHECK(!strcmp(e.master_addr, "10.0.0.1") && e.master_port == 29500 && e.local_world == 0);
#ifdef SKEIN_HAVE_GLOO
    /* no LOCAL_WORLD_SIZE: each rank taken to have its GPU (NCCL where built) */
#ifdef SKEIN_HAVE_NCCL
    CHECK(!strcmp(comm_auto_kind("cpu"), "gloo") && !strcmp(comm_auto_kind("cuda"), "nccl"));
#else
    CHECK(!strcmp(comm_auto_kind("cpu"), "gloo") && !strcmp(comm_auto_kind("cuda"), "gloo"));
#endif
    CHECK(env_with(&e, (const char *[]){"RANK=1", "WORLD_SIZE=2", "LOCAL_RANK=1", "LOCAL_WORLD_SIZE=2",
                                        "MASTER_ADDR=10.0.0.1", "MASTER_PORT=29500", NULL}) == SK_OK);
    CHECK(e.local_world == 2 && !strcmp(comm_auto_kind("cuda"), gpus >= 2 ? "nccl" : "gloo"));
#else
    CHECK(comm_auto_kind("cpu") == NULL && strstr(sk_errmsg(), "libgloo-dev"));
#endif
    /* Bad values name the variable. */
    CHECK(env_with(&e, (const char *[]){"RANK=0", "WORLD_SIZE=abc", NULL}) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "WORLD_SIZE=abc"), "%s", sk_errmsg());
    CHECK(env_with(&e, (const char *[]){"RANK=2", "WORLD_SIZE=2", "MASTER_ADDR=h", "MASTER_PORT=1", NULL}) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "RANK=2 is not below WORLD_SIZE=2"), "%s", sk_errmsg());
    CHECK(env_with(&e, (const char *[]){"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", NULL}) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "MASTER_PORT is not set"), "%s", sk_errmsg());
    CHECK(env_with(&e, (const char *[]){"RANK=0", "WORLD_SIZE=2", "MASTER_ADDR=h", "MASTER_PORT=70000", NULL}) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "MASTER_PORT=70000"), "%s", sk_errmsg());
    CHECK(env_with(&e, (const char *[]){"WORLD_SIZE=2", NULL}) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "RANK is not"), "%s", sk_errmsg());
    CHECK(env_with(&e, (const char *[]){"RANK=-1", "WORLD_SIZE=2", NULL}) == SK_EARG);
    /* torchrun with one process needs no store. */
    CHECK(env_with(&e, (const char *[]){"RANK=0", "WORLD_SIZE=1", NULL}) == SK_OK && e.world == 1);
}

TEST(launch_env) {
    env_clear();
    env_cases();
    env_restore();
}

TEST(init_errors) {
    comm *c = NULL;
    CHECK(comm_init("carrier-pigeon", "cpu", 10, &c) == SK_EARG && !c);
    CHECK(strstr(sk_errmsg(), "carrier-pigeon"));
    CHECK(comm_init("local", "cpu", 0, &c) == SK_EARG);
    CHECK(comm_init("local", "cpu", 5, &c) == SK_OK && c->world == 1 && !strcmp(c->name, "local"));
    CHECK(!comm_stream_ordered(c));   /* results there once waited for: NCCL's alone are on the stream */
    comm n = {.name = "nccl"};
    CHECK(comm_stream_ordered(&n) && (!world() || !comm_stream_ordered(world())));
    float x[4] = {1, 2, 3, 4}, y[4];
    CHECK(comm_reduce_scatter(c, x, y, 4, DT_F32, NULL) == SK_OK && y[3] == 4);
    int64_t old;
    CHECK(comm_counter_set(c, 5) == SK_OK && comm_fetch_add(c, 3, &old) == SK_OK && old == 5);
    CHECK(comm_fetch_add(c, 0, &old) == SK_OK && old == 8);
    comm_free(c);
    /* five ranks on a host of two GPUs: ranks 0, 2, 4 on GPU 0, ranks 1, 3 on GPU 1 */
    comm h = {.local_rank = 1, .local_world = 5};
    CHECK(comm_device_sharers(&h, 2) == 2 && comm_device_sharers(&h, 8) == 1);
    h.local_rank = 4;
    CHECK(comm_device_sharers(&h, 2) == 3 && comm_device_sharers(&h, 1) == 5);
    h.local_world = 0;
    CHECK(comm_device_sharers(&h, 1) == 1 && comm_device_sharers(NULL, 1) == 1);
}

/* NCCL with host buffers (the staged paths: f64 sums, broadcasts of host memory) plus the
 * side channel's counter; float collectives on host memory are refused. Runs only where
 * SKEIN_TEST_NCCL=1 (GPU machines, one GPU per rank under mpirun). */
TEST(nccl_host_buffers) {
    if (!getenv("SKEIN_TEST_NCCL")) SKIP("SKEIN_TEST_NCCL is not set (GPUs, one per rank under mpirun)");
    comm *c = NULL;
    CHECK_MSG(comm_init("nccl", "cuda", 60, &c) == SK_OK, "%s", sk_errmsg());
    int W = c->world;
    double v[2] = {c->rank + 1.0, 0.25};
    CHECK_MSG(comm_all_reduce_f64(c, v, 2) == SK_OK, "%s", sk_errmsg());
    CHECK_NEAR(v[0], W * (W + 1) / 2.0, 0);
    CHECK_NEAR(v[1], 0.25 * W, 0);
    unsigned char b[1000];
    for (int root = 0; root < W; root++) {
        for (size_t i = 0; i < sizeof b; i++) b[i] = c->rank == root ? (unsigned char)(i + root) : 0;
        CHECK_MSG(comm_broadcast(c, b, sizeof b, root) == SK_OK, "%s", sk_errmsg());
        for (size_t i = 0; i < sizeof b; i++) CHECK(b[i] == (unsigned char)(i + root));
    }
    CHECK(comm_barrier(c) == SK_OK);
    CHECK(comm_counter_set(c, 0) == SK_OK);
    int64_t old = -1;
    for (int k = 0; k < 10; k++) CHECK(comm_fetch_add(c, 1, &old) == SK_OK && old >= 0 && old < 10 * W);
    CHECK(comm_barrier(c) == SK_OK);
    CHECK(comm_fetch_add(c, 0, &old) == SK_OK && old == 10 * W);
    float x = 1;
    CHECK(comm_all_reduce(c, &x, 1, DT_F32, NULL) == SK_EARG);
    CHECK(comm_barrier(c) == SK_OK);
    comm_free(c);
}

/* SKEIN_COMM_FAULT read into the rank that misbehaves (-1: none) and how. */
static int fault_spec(bool *is_kill, double *sleep_s) {
    const char *f = getenv("SKEIN_COMM_FAULT");
    int who = -1;
    *sleep_s = 0;
    *is_kill = f && !strncmp(f, "kill:", 5);
    if (f && sscanf(f + (*is_kill ? 5 : 6), "%d:%lf", &who, sleep_s) < 1) who = -1;
    return who;
}

/* Rank `who` kills itself or sleeps, after every rank has met. */
static void fault_act(comm *c, int who, bool is_kill, double sleep_s) {
    if (comm_barrier(c) != SK_OK || c->rank != who) return;
    if (is_kill) raise(SIGKILL);
    usleep((useconds_t)(sleep_s * 1e6));
}

/* What the others must see: SK_ECOMM naming the operation and rank `who`. */
static bool fault_named(sk_status st, int who) {
    char want[64];
    snprintf(want, sizeof want, "no answer from rank(s) %d ", who);
    return st == SK_ECOMM && strstr(sk_errmsg(), "all_reduce") && strstr(sk_errmsg(), want);
}

/* Without SKEIN_COMM_FAULT: a collective under the communicator's timeout simply completes.
 * With it, see the file comment. */
TEST(fault) {
    comm *c = world();
    CHECK(c);
    bool is_kill;
    double sleep_s;
    int who = fault_spec(&is_kill, &sleep_s);
    float x = 1;
    if (who < 0) {
        CHECK(comm_all_reduce(c, &x, 1, DT_F32, NULL) == SK_OK && x == (float)c->world);
        return;
    }
    fault_act(c, who, is_kill, sleep_s);
    double t0 = time_now();
    sk_status st = comm_all_reduce(c, &x, 1, DT_F32, NULL);
    double dt = time_now() - t0;
    printf("  rank %d: %s after %.2f s: %s\n", c->rank, sk_status_name(st), dt, st ? sk_errmsg() : "");
    fflush(stdout);
    CHECK(c->rank != who);
    CHECK_MSG(fault_named(st, who), "%s", sk_errmsg());
    CHECK_MSG(dt < c->timeout_s + 3, "%.2f s", dt);
    /* Later calls fail at once; comm_free (atexit) ends the job. */
    CHECK(comm_barrier(c) == SK_ECOMM);
}

/* The same with the request in flight while this thread computes: the failure is found
 * without a wait (comm_test), and the wait then returns it. */
TEST(fault_async) {
    comm *c = world();
    CHECK(c);
    bool is_kill;
    double sleep_s;
    int who = fault_spec(&is_kill, &sleep_s);
    float x = 1;
    comm_req *r;
    if (who >= 0) fault_act(c, who, is_kill, sleep_s);
    double t0 = time_now(), acc = 0;
    CHECK(comm_all_reduce_async(c, &x, 1, DT_F32, NULL, &r) == SK_OK);
    bool done = false;
    sk_status st = SK_OK;
    while (!done && time_now() - t0 < c->timeout_s + 5) {
        for (int k = 0; k < 100000; k++) acc += 1e-9 * k;
        st = comm_test(c, r, &done);
    }
    sk_status wst = comm_wait(c, r);
    double dt = time_now() - t0;
    if (who < 0) {
        CHECK(done && st == SK_OK && wst == SK_OK && x == (float)c->world);
        return;
    }
    printf("  rank %d: %s after %.2f s (request in flight): %s\n", c->rank, sk_status_name(wst), dt,
           wst ? sk_errmsg() : "");
    fflush(stdout);
    CHECK(c->rank != who && done && acc > 0);
    CHECK_MSG(st == SK_ECOMM && fault_named(wst, who), "%s", sk_errmsg());
    CHECK_MSG(dt < c->timeout_s + 3, "%.2f s", dt);
    CHECK(comm_barrier(c) == SK_ECOMM);
}

TEST_MAIN()
