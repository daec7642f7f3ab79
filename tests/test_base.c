/* Tests of base/, tensor/dtype and cli/args: conversions against known bit patterns, the
 * RNG's determinism, flag parsing errors, JSON field errors, atomic writes. */
#include "test.h"

#include "base/file.h"
#include "base/json.h"
#include "base/rng.h"
#include "cli/args.h"
#include "tensor/dtype.h"

TEST(bf16_f16_round_trip) {
    CHECK(f32_to_bf16(1.0f) == 0x3f80);
    CHECK(f32_to_bf16(-2.0f) == 0xc000);
    CHECK(bf16_to_f32(0x3f80) == 1.0f);
    CHECK(f32_to_bf16(1.00390625f) == 0x3f80);          /* tie rounds to even */
    CHECK(f32_to_f16(1.0f) == 0x3c00);
    CHECK(f32_to_f16(65504.0f) == 0x7bff);
    CHECK(f32_to_f16(70000.0f) == 0x7c00);
    CHECK(f32_to_f16(5.960464477539063e-08f) == 0x0001); /* smallest subnormal */
    for (uint32_t h = 0; h < 0x7c00; h++)               /* every finite positive f16 */
        CHECK_MSG(f32_to_f16(f16_to_f32((uint16_t)h)) == h, "f16 0x%04x", h);
}

/* dtype_from_f32 into f16 (vectorized where the build has F16C) gives f32_to_f16's bits for
 * every f16 value, every midpoint between neighbours (ties to even), values a quarter step
 * either side, the overflow edge, zeros, infinities, the canonical NaN and random bit
 * patterns (no other NaN: their payloads may convert apart), at lengths off the vector width. */
TEST(f16_conversion_of_arrays_matches_the_scalar_one) {
    enum { N = 5 * 0x7c00 + 16 + 100000 };
    float *x = malloc(sizeof(float) * N);
    uint16_t *got = malloc(sizeof(uint16_t) * N);
    size_t n = 0;
    for (uint32_t h = 0; h < 0x7c00; h++) {
        const float a = f16_to_f32((uint16_t)h), b = f16_to_f32((uint16_t)(h + 1)), d = (b - a) / 4;
        x[n++] = a;
        x[n++] = -(a + 2 * d);   /* the midpoint, exact in f32 */
        x[n++] = a + d;
        x[n++] = a + 3 * d;
        x[n++] = -a;
    }
    const float special[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e-8f, -3e-8f, 2.98e-8f,
                             5.96e-8f, 1e30f, -1e-40f, INFINITY, -INFINITY, NAN, 1.0f};
    for (int i = 0; i < 16; i++) x[n++] = special[i];
    rng r;
    rng_seed(&r, 7);
    while (n < N) {
        uint32_t u = (uint32_t)rng_u64(&r);
        if ((u & 0x7f800000u) == 0x7f800000u) u &= ~0x00800000u;   /* no NaN or inf */
        memcpy(&x[n++], &u, 4);
    }
    int bad = 0;
    for (size_t len = N - 3; len <= N; len += 3) {   /* a tail of 5 and one of 0 after the vectors */
        dtype_from_f32(got, DT_F16, x, len);
        for (size_t i = 0; i < len; i++)
            if (got[i] != f32_to_f16(x[i]) && bad++ < 5) printf("  %.9g: 0x%04x, want 0x%04x\n", x[i], got[i], f32_to_f16(x[i]));
    }
    free(x);
    free(got);
    CHECK(bad == 0);
}

TEST(rng_is_deterministic) {
    rng a, b;
    rng_seed(&a, 42);
    rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) CHECK(rng_u64(&a) == rng_u64(&b));
    double sum = 0, sq = 0;
    for (int i = 0; i < 20000; i++) { float x = rng_normal(&a); sum += x; sq += x * x; }
    CHECK_NEAR(sum / 20000, 0.0, 0.05);
    CHECK_NEAR(sq / 20000, 1.0, 0.05);
    for (int i = 0; i < 1000; i++) CHECK(rng_below(&a, 7) < 7);
}

TEST(args_errors_name_the_flag) {
    long steps = 1;
    const char *out = NULL;
    bool flag = false;
    arg_spec specs[] = {
        {"--steps", ARG_INT, &steps, "N", "steps", false, false},
        {"--out", ARG_STR, &out, "DIR", "out", true, false},
        {"--flag", ARG_BOOL, &flag, NULL, "flag", false, false},
    };
    char *ok[] = {"--steps", "12", "--out", "x", "--flag"};
    CHECK(args_parse("t", 5, ok, specs, 3) == SK_OK);
    CHECK(steps == 12 && !strcmp(out, "x") && flag);
    char *bad[] = {"--nope"};
    CHECK(args_parse("t", 1, bad, specs, 3) == SK_EARG);
    CHECK(strstr(sk_errmsg(), "--nope"));
    char *badint[] = {"--steps", "12x", "--out", "x"};
    CHECK(args_parse("t", 4, badint, specs, 3) == SK_EARG);
    CHECK(strstr(sk_errmsg(), "--steps"));
    char *missing[] = {"--steps", "3"};
    specs[1].seen = false;
    CHECK(args_parse("t", 2, missing, specs, 3) == SK_EARG);
    CHECK(strstr(sk_errmsg(), "--out"));
}

TEST(json_fields_and_atomic_write) {
    char path[512];
    file_join(path, sizeof path, test_tmpdir(), "a.json");
    const char *text = "{\"n\": 3, \"x\": 1.5, \"s\": \"hi\"}";
    CHECK(file_write_atomic(path, text, strlen(text)) == SK_OK);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!file_exists(tmp));
    cJSON *j;
    CHECK(json_load_file(path, &j) == SK_OK);
    long n = 0;
    CHECK(json_get_int(j, "n", true, path, &n) == SK_OK && n == 3);
    CHECK(json_get_int(j, "x", true, path, &n) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "\"x\""));
    CHECK(json_get_int(j, "missing", true, path, &n) == SK_EFORMAT);
    CHECK(json_get_int(j, "missing", false, path, &n) == SK_OK && n == 3);
    cJSON_Delete(j);
    CHECK(file_write_atomic(path, "{oops", 5) == SK_OK);
    CHECK(json_load_file(path, &j) == SK_EFORMAT);
    CHECK(json_load_file("/nonexistent/x.json", &j) == SK_EIO);
}

TEST(mem_fail_after_fails_the_nth_allocation) {
    mem_fail_after(2);
    void *a = mem_alloc(16);
    void *b = mem_alloc(16);
    CHECK(a != NULL && b == NULL);
    mem_free(a);
    void *c = mem_alloc(16);
    CHECK(c != NULL);
    mem_free(c);
}

/* Resident kB of this process (VmRSS), or -1 where /proc is missing. */
static long test_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb;
}

/* mem_calloc of large blocks: zero everywhere, odd sizes included, even over memory that was
 * just dirtied and freed, 64-byte aligned; on Linux its pages are resident only once touched
 * (a 64 MiB block adds well under 8 MiB until written). */
TEST(mem_calloc_large_blocks_are_zero_and_lazy) {
    const size_t sizes[] = {(1u << 20) + 13, (3u << 20) + 4095, 64u << 20};
    for (int k = 0; k < 3; k++) {
        unsigned char *d = mem_alloc(sizes[k]);
        CHECK(d);
        memset(d, 0xA5, sizes[k]);
        mem_free(d);
        const long rss0 = test_rss_kb();
        unsigned char *z = mem_calloc(sizes[k]);
        CHECK(z && ((uintptr_t)z & 63) == 0);
        const long rss1 = test_rss_kb();
        size_t bad = 0;
        for (size_t i = 0; i < sizes[k]; i++) bad += z[i] != 0;
        mem_free(z);
        CHECK_MSG(bad == 0, "%zu of %zu bytes not zero", bad, sizes[k]);
        if (k == 2 && rss0 > 0) CHECK_MSG(rss1 - rss0 < 8192, "64 MiB calloc added %ld kB resident", rss1 - rss0);
    }
}

TEST_MAIN()
