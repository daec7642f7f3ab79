/* Bad input across modules: each case is a defect found by attacking the command line and the
 * file readers (corrupt files, absurd values), fixed where the input enters. A case feeds the
 * input and checks for a clear refusal (a status and a message naming the problem), never an
 * abort, a sanitizer report or silent garbage. The same cases run under ASan + UBSan. */
#include "test.h"

#include <stdint.h>

#include "backend/backend.h"
#include "base/file.h"
#include "train/opt.h"

/* A NaN or infinite activation (a corrupt checkpoint, a diverged run) flows through the ops
 * built on the fast exp as NaN, not through an undefined shift (UBSan flagged cpu_expf). */
TEST(exp_based_ops_carry_nan) {
    backend *be = backend_create("cpu");
    float in[4] = {NAN, -NAN, INFINITY, -INFINITY}, up[4] = {1, 1, 1, 1}, out[4];
    float *dev = backend_alloc(be, 3 * sizeof in);   /* in, up, out */
    tensor din = tensor_1d(dev, DT_F32, 4), dup = tensor_1d(dev + 4, DT_F32, 4), dout = tensor_1d(dev + 8, DT_F32, 4);
    backend_upload(be, din.data, in, sizeof in);
    backend_upload(be, dup.data, up, sizeof up);
    be->ops->gelu_forward(be, NULL, dout, din);
    backend_download(be, out, dout.data, sizeof out);
    CHECK_MSG(isnan(out[0]) && isnan(out[1]), "gelu(NaN) = %g, %g", out[0], out[1]);
    be->ops->swiglu_forward(be, NULL, dout, din, dup);
    backend_download(be, out, dout.data, sizeof out);
    CHECK_MSG(isnan(out[0]) && isnan(out[1]), "swiglu(NaN) = %g, %g", out[0], out[1]);
    backend_mem_free(be, dev);
    backend_free(be);
}

/* Writes a version-2 optimizer file of n values and returns its path. */
static const char *write_opt(backend *be, size_t n, long step) {
    static char path[600];
    float m[64], v[64];
    for (size_t i = 0; i < n; i++) { m[i] = 0.01f * (float)i; v[i] = 0.001f * (float)i; }
    opt_range r = {0, n, 0};
    file_join(path, sizeof path, test_tmpdir(), "optimizer.bin");
    if (opt_state_save(be, path, n, step, &r, 1, m, v) != SK_OK) return NULL;
    return path;
}

/* Overwrites 4 or 8 bytes at `off` of a file. */
static int poke(const char *path, long off, const void *bytes, size_t n) {
    FILE *f = fopen(path, "r+b");
    if (!f) return -1;
    int ok = fseek(f, off, SEEK_SET) == 0 && fwrite(bytes, n, 1, f) == 1;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* optimizer.bin with a flipped bit: NaN or a negative second moment used to turn every
 * parameter into NaN at the first step after --resume (and UB in cpu_expf); a huge step
 * overflowed the kernels' int; a range whose begin + count wraps passed the bounds check. */
TEST(corrupt_optimizer_state_is_refused) {
    backend *be = backend_create("cpu");
    enum { N = 64 };
    /* header 48 bytes, n_ranges 8, one range 16, then m(N), v(N) */
    const long head = 48 + 8 + 16, m_at = head, v_at = head + 4 * N;
    float m[N], v[N];
    opt_range want = {0, N, 0};
    size_t copied = 0;
    long step = 0;
    const char *path = write_opt(be, N, 5);
    CHECK(path);
    CHECK(opt_state_read(be, path, N, &want, 1, m, v, &step, &copied) == SK_OK && step == 5);

    const float nan = NAN, neg = -1.0f, inf = INFINITY;
    const struct { long off; const float *val; } bad[] = {{m_at + 12, &nan}, {v_at + 20, &neg}, {v_at, &inf}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        CHECK((path = write_opt(be, N, 5)) && poke(path, bad[k].off, bad[k].val, 4) == 0);
        copied = 0;
        CHECK(opt_state_read(be, path, N, &want, 1, m, v, &step, &copied) == SK_EFORMAT);
        CHECK_MSG(strstr(sk_errmsg(), "optimizer.bin") && strstr(sk_errmsg(), "corrupt"), "%s", sk_errmsg());
    }
    /* step (header offset 40) beyond what the kernels count */
    uint64_t huge = (uint64_t)1 << 40;
    CHECK((path = write_opt(be, N, 5)) && poke(path, 40, &huge, 8) == 0);
    CHECK(opt_state_read(be, path, N, &want, 1, m, v, &step, &copied) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "step"), "%s", sk_errmsg());
    /* a range [2^64 - 8, +N) wraps around to look like [0, N - 8) */
    uint64_t begin = UINT64_MAX - 7;
    CHECK((path = write_opt(be, N, 5)) && poke(path, 56, &begin, 8) == 0);
    CHECK(opt_state_read(be, path, N, &want, 1, m, v, &step, &copied) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "beyond"), "%s", sk_errmsg());
    backend_free(be);
}

/* A block larger than the host's available memory fails in mem_alloc with both sizes named:
 * overcommit used to grant it (and the OOM killer ended the process while it was filled), and
 * ASan aborted on it. */
TEST(allocation_beyond_available_memory_is_refused) {
    size_t avail = mem_available();
    if (avail == SIZE_MAX || avail > SIZE_MAX / 4) SKIP("no MemAvailable in /proc/meminfo");
    size_t want = avail + avail / 2 + MEM_CHECK_BYTES;
    void *p = mem_alloc(want);
    CHECK_MSG(!p && strstr(sk_errmsg(), "available"), "%s", p ? "granted" : sk_errmsg());
    CHECK(!mem_realloc(NULL, want));
}

TEST_MAIN()
