/* Tests of wts (immutable mapped weights) and memstat (smaps sums):
 *   - two processes mapping one bf16 Llama folder share its pages: in each, the mapping's
 *     Rss and Shared pages cover the files, its Pss is half its Rss, and opening plus
 *     touching every page adds (almost) no anonymous or private dirty memory;
 *   - which tensors are views and which are f32 copies (wts.h's rules), and every value
 *     equals what model_load reads from the same folder (transformers-written fixtures:
 *     f32 with "transformer.", f16 sharded without, bf16);
 *   - GPT-2's prefix optional both ways, reference counting, and malformed folders named by
 *     file and tensor (duplicate spellings, too many dimensions, misaligned data, truncated
 *     files, wrong shapes);
 *   - devw's device copies (devw.h) through the CPU backend, whose memory the test reads: one
 *     copy per (weights, device) whatever backend object asks (two server replicas, each with
 *     its own backend), another for other weights, and the copy stays whole, its values
 *     exactly the file's rounded to bf16 (matrices) or kept in f32 (vectors), after the
 *     backend that made it is freed (a replica scaled down while others still serve);
 *   - devw across processes (devw_ipc_use) as far as the CPU backend goes: it has no ipc_map,
 *     so a copy to export is the process's own (no descriptor, the file's values), a copy to
 *     map from another process is refused -- first for a byte count not the plan's, naming
 *     both -- and the setting serves one new copy only (taking a reference to an existing
 *     copy leaves it for the next new one).
 * The sharing case runs first: it forks before this process starts any OpenMP threads. With
 * SKEIN_WTS_DIR=FOLDER it measures that folder instead of writing one (e.g. the llama-1b
 * folder of `skein init --arch llama --preset llama-1b`). */
#include "test.h"

#include <sys/mman.h>
#include <sys/wait.h>

#include "base/file.h"
#include "base/memstat.h"
#include "model/devw.h"
#include "model/model.h"
#include "model/presets.h"
#include "model/safetensors.h"
#include "model/wts.h"

#define PAGE 4096
/* The growth allowed over opening and touching: under 5% of the files (20 kB measured on
 * 7 MB), 20% under AddressSanitizer, whose allocator touches shadow and redzone pages for
 * every header allocation (80 to 420 kB measured on one machine, varying run to run). */
#ifdef __SANITIZE_ADDRESS__
#define GROWTH_BOUND_DIV 5
#else
#define GROWTH_BOUND_DIV 20
#endif

/* Reads every page of every mapped view of w (copies are the process's own memory). */
static void touch_all(const wts *w) {
    volatile unsigned char sink = 0;
    for (int i = 0; i < wts_count(w); i++) {
        tensor t = wts_at(w, i);
        size_t n = tensor_bytes(t);
        if (wts_is_copy(w, i) || n == 0) continue;
        const unsigned char *p = t.data;
        for (size_t k = 0; k < n; k += PAGE) sink ^= p[k];
        sink ^= p[n - 1];
    }
    (void)sink;
}

static void print_stat(const char *who, const memstat *s) {
    printf("  %s: rss %zu pss %zu shared_clean %zu shared_dirty %zu private_clean %zu private_dirty %zu "
           "anonymous %zu (kB)\n", who, s->rss >> 10, s->pss >> 10, s->shared_clean >> 10, s->shared_dirty >> 10,
           s->private_clean >> 10, s->private_dirty >> 10, s->anonymous >> 10);
}

/* A bf16 Llama folder of about 7 MB in 3 MB shards. */
static sk_status write_llama_folder(const char *dir) {
    model_config cfg;
    model_config_llama(&cfg, 2, 4, 2, 256, 688, 256, 4000);
    return model_init_folder(&cfg, dir, 7, DT_BF16, 3000000);
}

TEST(two_processes_share_the_mapped_pages) {
    int to_child[2], to_parent[2];
    CHECK(pipe(to_child) == 0 && pipe(to_parent) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {   /* the second mapper: open when told, touch, report, wait, exit */
        char dir[1024] = {0}, ok = 0;
        if (read(to_child[0], dir, sizeof dir - 1) > 0) {
            wts *w = NULL;
            ok = wts_open(dir, WTS_KEEP_FLOAT, &w) == SK_OK;
            if (ok) touch_all(w);
            if (write(to_parent[1], &ok, 1) != 1) _exit(3);
            char c;
            if (read(to_child[0], &c, 1) != 1) _exit(4);
            wts_free(w);
        }
        _exit(ok ? 0 : 2);
    }
    char dir[1024];
    const char *given = getenv("SKEIN_WTS_DIR");   /* measure an existing folder instead */
    snprintf(dir, sizeof dir, "%s", given ? given : "");
    if (!given) snprintf(dir, sizeof dir, "%s/llama-bf16", test_tmpdir());
    sk_status st = given ? SK_OK : write_llama_folder(dir);
    memstat before = {0}, self_all = {0}, self_map = {0}, child_map = {0};
    wts *w = NULL;
    char ok = 0;
    if (st == SK_OK) st = memstat_read(0, NULL, &before);
    if (st == SK_OK) {   /* the child maps first, then this process */
        CHECK(write(to_child[1], dir, strlen(dir)) == (ssize_t)strlen(dir));
        CHECK(read(to_parent[0], &ok, 1) == 1 && ok);
        st = wts_open(dir, WTS_KEEP_FLOAT, &w);
    }
    if (st == SK_OK) {
        touch_all(w);
        st = memstat_read(0, NULL, &self_all);
    }
    if (st == SK_OK) st = memstat_read(0, dir, &self_map);
    if (st == SK_OK) st = memstat_read(pid, dir, &child_map);
    CHECK(write(to_child[1], "x", 1) == 1);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK_MSG(st == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);

    size_t S = wts_mapped_bytes(w), copies = wts_copied_bytes(w);
    int n_files = 0;   /* distinct shards: one mapping each */
    for (int i = 0; i < wts_count(w); i++) {
        int j = 0;
        while (j < i && strcmp(wts_file(w, j), wts_file(w, i))) j++;
        n_files += j == i;
    }
    long long extra = (long long)(self_all.anonymous + self_all.private_dirty) -
                      (long long)(before.anonymous + before.private_dirty);
    printf("  files %zu kB in %d mappings, converted copies %zu bytes\n", S >> 10, self_map.n_maps, copies);
    print_stat("parent mapping", &self_map);
    print_stat("child mapping", &child_map);
    printf("  parent anonymous + private dirty growth over open and touch: %lld kB\n", extra / 1024);
    wts_free(w);
    CHECK_MSG((given || n_files > 1) && self_map.n_maps == n_files && child_map.n_maps == n_files, "%d shards, %d and %d maps",
              n_files, self_map.n_maps, child_map.n_maps);
    CHECK_MSG(copies < S / 100, "copies %zu of %zu", copies, S);
    CHECK_MSG(extra < (long long)(S / GROWTH_BOUND_DIV), "anonymous/private dirty grew %lld bytes (files %zu)", extra, S);
    const memstat *maps[2] = {&self_map, &child_map};
    for (int k = 0; k < 2; k++) {
        const memstat *m = maps[k];
        CHECK_MSG(m->rss >= S, "rss %zu < files %zu", m->rss, S);
        CHECK_MSG(m->shared_clean + m->shared_dirty >= S, "shared %zu < files %zu", m->shared_clean + m->shared_dirty, S);
        CHECK(m->private_dirty == 0 && m->anonymous == 0);
        CHECK_MSG(m->pss * 2 >= m->rss - m->rss / 50 && m->pss * 2 <= m->rss + m->rss / 50, "pss %zu rss %zu",
                  m->pss, m->rss);
    }
}

TEST(views_and_copies_follow_the_rules) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/llama-rules", test_tmpdir());
    CHECK_MSG(write_llama_folder(dir) == SK_OK, "%s", sk_errmsg());
    model_config cfg;
    CHECK(model_config_load(dir, &cfg) == SK_OK);
    int n = model_folder_layout(&cfg, NULL);
    model_param *specs = mem_alloc(sizeof *specs * (size_t)n);
    model_folder_layout(&cfg, specs);
    wts *w = NULL, *f32 = NULL;
    CHECK_MSG(wts_open(dir, WTS_KEEP_FLOAT, &w) == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(wts_open(dir, WTS_DT(DT_F32), &f32) == SK_OK, "%s", sk_errmsg());
    CHECK(wts_count(w) == n);
    size_t one_d = 0;
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        tensor a, b;
        CHECK_MSG(wts_expect(w, specs[i].name, specs[i].ndim, specs[i].shape, &a) == SK_OK, "%s", sk_errmsg());
        CHECK(wts_expect(f32, specs[i].name, specs[i].ndim, specs[i].shape, &b) == SK_OK);
        CHECK(b.dt == DT_F32 && b.mem == MEM_HOST && tensor_is_contiguous(b));
        if (specs[i].ndim == 1) {
            CHECK(a.dt == DT_F32 && a.mem == MEM_HOST);
            one_d += specs[i].numel * 4;
        } else {
            CHECK_MSG(a.dt == DT_BF16 && a.mem == MEM_MAPPED, "%s", specs[i].name);
        }
        for (size_t k = 0; k < specs[i].numel && ok; k++) {
            float x = a.dt == DT_F32 ? tensor_f32(a)[k] : bf16_to_f32(((const uint16_t *)a.data)[k]);
            ok = x == tensor_f32(b)[k];
        }
        CHECK_MSG(ok, "%s differs", specs[i].name);
    }
    CHECK(wts_copied_bytes(w) >= one_d && wts_copied_bytes(w) < one_d + 64 * (size_t)n);
    CHECK(wts_copied_bytes(f32) >= 2 * wts_mapped_bytes(w) * 9 / 10);
    mem_free(specs);
    wts_free(f32);
    wts_free(w);
}

/* Every parameter model_load reads from the fixture equals the wts view's values. */
static void check_against_model_load(const char *name, dtype stored) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s%s", test_path("fixtures/"), name);
    backend *be = backend_cpu_create();
    model *m = NULL;
    wts *w = NULL;
    CHECK_MSG(model_load(dir, be, &m) == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(wts_open(dir, WTS_KEEP_FLOAT, &w) == SK_OK, "%s", sk_errmsg());
    float *x = mem_alloc(sizeof(float) * m->n_params);
    bool ok = true;
    for (int i = 0; i < m->n_specs && ok; i++) {
        const model_param *p = &m->specs[i];
        tensor t;
        CHECK_MSG(wts_expect(w, p->name, p->ndim, p->shape, &t) == SK_OK, "%s", sk_errmsg());
        CHECK(t.dt == (p->ndim >= 2 ? stored : DT_F32));
        CHECK(t.mem == (p->ndim >= 2 || stored == DT_F32 ? MEM_MAPPED : MEM_HOST));
        dtype_to_f32(x, t.data, t.dt, p->numel);
        ok = !memcmp(x, m->params + p->offset, p->numel * sizeof(float));
        CHECK_MSG(ok, "%s", p->name);
    }
    mem_free(x);
    wts_free(w);
    model_free(m);
    backend_free(be);
}

TEST(values_equal_model_load_f32_prefixed) { check_against_model_load("gpt2-hf", DT_F32); }
TEST(values_equal_model_load_f16_sharded_bare) { check_against_model_load("gpt2-hf-noprefix", DT_F16); }
TEST(values_equal_model_load_bf16) { check_against_model_load("gpt2-hf-bf16", DT_BF16); }

TEST(prefix_optional_and_shared_references) {
    wts *w = NULL;
    CHECK(wts_open(test_path("fixtures/gpt2-hf"), WTS_KEEP_FLOAT, &w) == SK_OK);
    tensor a = wts_get(w, "h.0.attn.c_attn.weight"), b = wts_get(w, "transformer.h.0.attn.c_attn.weight");
    CHECK(!tensor_is_none(a) && a.data == b.data && a.ndim == 2 && a.shape[0] == 32 && a.shape[1] == 96);
    CHECK(tensor_is_none(wts_get(w, "h.9.attn.c_attn.weight")));
    int i = 0;
    while (i < wts_count(w) && strcmp(wts_name(w, i), "transformer.wte.weight")) i++;
    CHECK(i < wts_count(w) && strstr(wts_file(w, i), "model.safetensors"));
    wts *again = wts_ref(w);
    wts_free(w);   /* one reference left: the views stay valid */
    CHECK(((const float *)wts_get(again, "wte.weight").data)[0] == ((const float *)wts_at(again, i).data)[0]);
    wts_free(again);
    wts_free(NULL);

    wts *bare = NULL;   /* and the reverse: the file has no prefix, the caller spells it */
    CHECK(wts_open(test_path("fixtures/gpt2-hf-noprefix"), WTS_KEEP_FLOAT, &bare) == SK_OK);
    CHECK(!tensor_is_none(wts_get(bare, "transformer.h.1.mlp.c_proj.weight")));
    wts_free(bare);
}

/* Opens a folder holding one file of the entries given, expects SK_EFORMAT with every
 * string in `want` in the message. */
static void expect_refused(const char *name, const st_entry *e, int n, const char *want1, const char *want2) {
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/%s", test_tmpdir(), name);
    CHECK(file_mkdirs(dir) == SK_OK);
    CHECK(st_write(file_join(path, sizeof path, dir, "model.safetensors"), e, n, NULL, 0) == SK_OK);
    wts *w = NULL;
    sk_status st = wts_open(dir, WTS_KEEP_FLOAT, &w);
    CHECK_MSG(st == SK_EFORMAT && w == NULL, "%s: %s", name, st == SK_OK ? "accepted" : sk_errmsg());
    CHECK_MSG(strstr(sk_errmsg(), want1) && strstr(sk_errmsg(), want2), "%s", sk_errmsg());
}

TEST(malformed_folders_name_file_and_tensor) {
    float v[32] = {0};
    st_entry dup[2] = {{"wte.weight", DT_F32, 2, {2, 2}, v}, {"transformer.wte.weight", DT_F32, 2, {2, 2}, v}};
    expect_refused("dup", dup, 2, "wte.weight", "both with and without");
    st_entry deep[1] = {{"x.weight", DT_F32, 5, {1, 1, 2, 2, 2}, v}};
    expect_refused("deep", deep, 1, "x.weight", "5 dimensions");

    /* A truncated file: safetensors.c's message, naming the file. */
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/trunc", test_tmpdir());
    CHECK(file_mkdirs(dir) == SK_OK);
    file_join(path, sizeof path, dir, "model.safetensors");
    st_entry one[1] = {{"a.weight", DT_BF16, 2, {4, 4}, v}};
    CHECK(st_write(path, one, 1, NULL, 0) == SK_OK);
    CHECK(truncate(path, 40) == 0);
    wts *w = NULL;
    CHECK(wts_open(dir, WTS_KEEP_FLOAT, &w) == SK_EFORMAT && strstr(sk_errmsg(), path));
    snprintf(dir, sizeof dir, "%s/none", test_tmpdir());
    CHECK(file_mkdirs(dir) == SK_OK);
    CHECK(wts_open(dir, WTS_KEEP_FLOAT, &w) == SK_EIO && strstr(sk_errmsg(), dir));
}

TEST(misaligned_tensors_are_copied_and_shapes_checked) {
    /* bf16 of 3 elements (6 bytes), then f32 and i32 matrices at byte offset 6 */
    uint16_t h[3] = {0x3f80, 0x4000, 0xc040};   /* 1, 2, -3 */
    float f[4] = {0.5f, -1.5f, 2.25f, 8.0f};
    int32_t i4[2] = {7, -9};
    st_entry e[3] = {{"a.bias", DT_BF16, 1, {3}, h}, {"b.weight", DT_F32, 2, {2, 2}, f}, {"c.ids", DT_I32, 1, {2}, i4}};
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/misaligned", test_tmpdir());
    CHECK(file_mkdirs(dir) == SK_OK);
    CHECK(st_write(file_join(path, sizeof path, dir, "model.safetensors"), e, 3, NULL, 0) == SK_OK);
    wts *w = NULL;
    CHECK_MSG(wts_open(dir, WTS_KEEP_FLOAT, &w) == SK_OK, "%s", sk_errmsg());
    tensor a = wts_get(w, "a.bias"), b = wts_get(w, "b.weight"), c = wts_get(w, "c.ids");
    CHECK(a.dt == DT_F32 && a.mem == MEM_HOST && tensor_f32(a)[0] == 1 && tensor_f32(a)[2] == -3);
    CHECK(b.dt == DT_F32 && b.mem == MEM_HOST && (uintptr_t)b.data % 4 == 0);
    CHECK(!memcmp(b.data, f, sizeof f));
    CHECK(c.dt == DT_I32 && c.mem == MEM_HOST && tensor_i32(c)[1] == -9);
    tensor t;
    int64_t want[2] = {2, 3};
    CHECK(wts_expect(w, "b.weight", 2, want, &t) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "b.weight") && strstr(sk_errmsg(), "[2, 3]") && strstr(sk_errmsg(), "[2, 2]") &&
              strstr(sk_errmsg(), path), "%s", sk_errmsg());
    CHECK(wts_expect(w, "d.weight", 2, want, &t) == SK_EFORMAT && strstr(sk_errmsg(), "missing tensor 'd.weight'"));
    wts_free(w);
}

/* Whether devw view d holds src (a view of the file) exactly: src's values in f32, rounded
 * to bf16 once where d is bf16. */
static bool devw_holds(tensor d, tensor src) {
    const size_t n = (size_t)tensor_numel(src);
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    uint16_t *lp = malloc(n * sizeof *lp);
    bool ok = want && got && lp && (size_t)tensor_numel(d) == n;
    if (ok) {
        dtype_to_f32(want, src.data, src.dt, n);
        if (d.dt == DT_BF16) {
            dtype_from_f32(lp, DT_BF16, want, n);
            dtype_to_f32(want, lp, DT_BF16, n);
        }
        dtype_to_f32(got, d.data, d.dt, n);
        ok = !memcmp(want, got, n * sizeof *got);
    }
    free(want);
    free(got);
    free(lp);
    return ok;
}

TEST(device_copy_one_per_device_whatever_the_backend) {
    const char *dir = test_path("fixtures/gpt2-hf");
    model_config cfg;
    CHECK(model_config_load(dir, &cfg) == SK_OK);
    wts *w = NULL, *other = NULL;
    CHECK(wts_open(dir, WTS_KEEP_FLOAT, &w) == SK_OK && wts_open(dir, WTS_KEEP_FLOAT, &other) == SK_OK);
    backend *b1 = backend_cpu_create(), *b2 = backend_cpu_create();
    CHECK(b1 && b2 && b1->device == b2->device);
    model *m1 = NULL, *m2 = NULL, *m3 = NULL;
    CHECK_MSG(model_open_wts(&cfg, w, b1, &m1) == SK_OK && model_open_wts(&cfg, w, b2, &m2) == SK_OK &&
              model_open_wts(&cfg, other, b2, &m3) == SK_OK, "%s", sk_errmsg());
    devw *d1 = NULL, *d2 = NULL, *d3 = NULL;
    CHECK_MSG(devw_get(w, m1, m1->views, &d1) == SK_OK && devw_get(w, m2, m2->views, &d2) == SK_OK &&
              devw_get(other, m3, m3->views, &d3) == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(d1 == d2, "two backends on one device got two copies of the same weights");
    CHECK_MSG(d3 != d1, "other weights share the copy of these");
    size_t want_bytes = 0;
    for (int i = 0; i < m2->n_specs; i++) want_bytes += tensor_bytes(devw_view(d2, i));
    CHECK_MSG(devw_bytes(d2) >= want_bytes && devw_bytes(d2) < want_bytes + (size_t)m2->n_specs * 256, "%zu bytes for %zu",
              devw_bytes(d2), want_bytes);
    /* the first asker goes, backend and all: the copy is the device's, not that backend's */
    devw_free(d1);
    model_free(m1);
    backend_free(b1);
    for (int i = 0; i < m2->n_specs; i++) {
        tensor v = devw_view(d2, i);
        CHECK_MSG(v.dt == (m2->specs[i].ndim >= 2 ? DT_BF16 : DT_F32) && v.mem == MEM_DEVICE, "%s", m2->specs[i].name);
        CHECK_MSG(devw_holds(v, m2->views[i]), "%s differs from the file", m2->specs[i].name);
    }
    devw_free(d2);
    devw_free(d3);
    model_free(m2);
    model_free(m3);
    backend_free(b2);
    wts_free(w);
    wts_free(other);
}

TEST(device_copy_across_processes_on_the_cpu) {
    const char *dir = test_path("fixtures/gpt2-hf");
    model_config cfg;
    CHECK(model_config_load(dir, &cfg) == SK_OK);
    wts *w = NULL;
    CHECK(wts_open(dir, WTS_KEEP_FLOAT, &w) == SK_OK);
    backend *be = backend_cpu_create();
    model *m = NULL;
    CHECK_MSG(be && model_open_wts(&cfg, w, be, &m) == SK_OK, "%s", sk_errmsg());
    devw *d = NULL, *d2 = NULL;
    CHECK_MSG(devw_get(w, m, m->views, &d) == SK_OK, "%s", sk_errmsg());
    const size_t bytes = devw_bytes(d);
    const int fd = memfd_create("copy", MFD_CLOEXEC);
    CHECK(fd >= 0);
    /* a reference to the copy that exists: the setting waits for a new copy */
    devw_ipc_use((devw_ipc){.fd = fd, .bytes = bytes + 256});
    CHECK_MSG(devw_get(w, m, m->views, &d2) == SK_OK && d2 == d, "%s", sk_errmsg());
    CHECK(devw_ipc_of(d).fd == -1 && devw_ipc_of(d).bytes == bytes);
    devw_free(d2);
    devw_free(d);
    char want[160];
    snprintf(want, sizeof want, "holds %zu bytes, this process's plan %zu", bytes + 256, bytes);
    CHECK(devw_get(w, m, m->views, &d) == SK_ECONFIG && !d);
    CHECK_MSG(strstr(sk_errmsg(), want), "%s", sk_errmsg());
    CHECK_MSG(devw_get(w, m, m->views, &d) == SK_OK, "the setting served a second copy: %s", sk_errmsg());
    devw_free(d);
    devw_ipc_use((devw_ipc){.fd = fd, .bytes = bytes});
    CHECK(devw_get(w, m, m->views, &d) == SK_EIO && !d);
    CHECK_MSG(strstr(sk_errmsg(), "mapping the device copy another process made") &&
              strstr(sk_errmsg(), "cpu backend cannot share device memory"), "%s", sk_errmsg());
    devw_ipc_use((devw_ipc){.fd = -1});
    CHECK_MSG(devw_get(w, m, m->views, &d) == SK_OK, "%s", sk_errmsg());
    CHECK(devw_ipc_of(d).fd == -1 && devw_bytes(d) == bytes);
    for (int i = 0; i < m->n_specs; i++)
        CHECK_MSG(devw_holds(devw_view(d, i), m->views[i]), "%s differs from the file", m->specs[i].name);
    devw_free(d);
    close(fd);
    model_free(m);
    backend_free(be);
    wts_free(w);
}

TEST_MAIN()
