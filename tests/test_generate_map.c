/* Tests of inference over mapped weights (model_open_weights, model_open_wts, model_kv):
 *   - two processes generating from one bf16 Llama folder share its pages: in each, the
 *     mapping's Rss covers the files and its Pss is half its Rss, and opening the model plus
 *     generating adds private memory (Private_Dirty outside the mapping) under 5% of the
 *     files (20% under AddressSanitizer);
 *   - the mapped path computes what model_load's f32 copy computes: on every fixture the
 *     logits of a prefill and of greedy decode steps agree within 1e-5 relative and the greedy
 *     tokens (gen_run at temperature 0) are identical. bf16 products differ from the f32 ones
 *     only in summation order (cpu_lowp.h), f32 folders not at all;
 *   - an inference model keeps matrices mapped in the file's dtype, refuses training and
 *     saving, and serves several sequences (kv objects) and several models over one wts.
 * The sharing case runs first: it forks before this process starts any OpenMP threads
 * (libgomp's thread pool does not survive a fork). */
#include "test.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include "base/memstat.h"
#include "infer/generate.h"
#include "model/model.h"
#include "model/presets.h"
#include "test_model.h"

/* What a child of the sharing case reports: its memory before opening the model and after
 * generating (both whole-process sums), and whether it generated. */
typedef struct child_report {
    memstat before, after;
    int generated;
} child_report;

/* The folder of the sharing case: a tied bf16 Llama (so the LM head reads every row of the
 * embedding and generation touches every page of the files): L 6, C 512, NH 8, NKV 4,
 * F 1408, V 8192, context 64: 21.9M parameters, 44 MB. Generation runs an 8-token prompt
 * and 8 new tokens: a KV cache of 2*6*16*256 floats (196 KB), a workspace of a few hundred KB,
 * logits and a sampler over V (96 KB): well under 5% of the files (2.2 MB; measured 0.75 MB,
 * 1.8%, thread stacks included). Under AddressSanitizer every allocation carries redzones and
 * shadow memory (measured 3.7 MB, 8.5%): the bound there is 20% of the files. */
#ifdef __SANITIZE_ADDRESS__
#define PRIVATE_BOUND_DIV 5   /* 20% */
#else
#define PRIVATE_BOUND_DIV 20  /* 5% */
#endif
static sk_status write_shared_folder(const char *dir) {
    model_config cfg;
    model_config_llama(&cfg, 6, 8, 4, 512, 1408, 64, 8192);
    cfg.tie_word_embeddings = true;
    return model_init_folder(&cfg, dir, 11, DT_BF16, MODEL_SHARD_BYTES);
}

/* A child: waits for the folder's path on `in`, opens it, generates, reports on `out`, holds
 * the model until told to exit. Never returns. */
static void child_generate(int in, int out) {
    char dir[1024] = {0}, c;
    child_report r = {0};
    if (read(in, dir, sizeof dir - 1) <= 0) _exit(2);
    backend *be = backend_cpu_create();
    model *m = NULL;
    int prompt[8];
    test_random_tokens(prompt, 8, 8192, 3);
    gen_opts go = {.max_tokens = 8, .sample = {.temperature = 0}};
    gen_result res;
    int32_t ids[8];
    if (memstat_read(0, NULL, &r.before) == SK_OK && model_open_weights(dir, be, &m) == SK_OK &&
        gen_run(m, NULL, prompt, 8, &go, NULL, NULL, ids, &res) == SK_OK && memstat_read(0, NULL, &r.after) == SK_OK)
        r.generated = res.n_generated;
    if (write(out, &r, sizeof r) != (ssize_t)sizeof r) _exit(3);
    if (read(in, &c, 1) != 1) _exit(4);
    model_free(m);
    backend_free(be);
    _exit(r.generated == 8 ? 0 : 5);
}

TEST(two_generating_processes_share_the_weights) {
    int to_child[2][2], to_parent[2][2];
    pid_t pid[2];
    for (int k = 0; k < 2; k++) {
        CHECK(pipe(to_child[k]) == 0 && pipe(to_parent[k]) == 0);
        pid[k] = fork();
        CHECK(pid[k] >= 0);
        if (pid[k] == 0) child_generate(to_child[k][0], to_parent[k][1]);
    }
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/shared-bf16", test_tmpdir());
    sk_status st = write_shared_folder(dir);
    child_report r[2];
    memset(r, 0, sizeof r);
    memstat map[2] = {{0}};
    for (int k = 0; k < 2 && st == SK_OK; k++)
        CHECK(write(to_child[k][1], dir, strlen(dir)) == (ssize_t)strlen(dir));
    for (int k = 0; k < 2 && st == SK_OK; k++) CHECK(read(to_parent[k][0], &r[k], sizeof r[k]) == (ssize_t)sizeof r[k]);
    for (int k = 0; k < 2 && st == SK_OK; k++) st = memstat_read(pid[k], dir, &map[k]);   /* both hold it */
    for (int k = 0; k < 2; k++) {
        int status = 0;
        CHECK(write(to_child[k][1], "x", 1) == 1);
        CHECK(waitpid(pid[k], &status, 0) == pid[k]);
        CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d status %d", k, status);
    }
    CHECK_MSG(st == SK_OK, "%s", sk_errmsg());

    char path[1100];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && sb.st_size > 40000000);
    const size_t S = (size_t)sb.st_size;
    for (int k = 0; k < 2; k++) {
        const memstat *m = &map[k];
        long long priv = (long long)r[k].after.private_dirty - (long long)r[k].before.private_dirty -
                         (long long)m->private_dirty;
        printf("  child %d: files %zu kB; mapping rss %zu pss %zu shared_clean %zu shared_dirty %zu kB; "
               "private dirty grew %lld kB (%.2f%%), anonymous %lld kB\n", k, S >> 10, m->rss >> 10, m->pss >> 10,
               m->shared_clean >> 10, m->shared_dirty >> 10, priv / 1024, 100.0 * (double)priv / (double)S,
               ((long long)r[k].after.anonymous - (long long)r[k].before.anonymous) / 1024);
        CHECK(r[k].generated == 8);
        CHECK_MSG(priv < (long long)(S / PRIVATE_BOUND_DIV), "child %d: private memory grew %lld bytes (files %zu)", k, priv, S);
        CHECK_MSG(m->rss >= S - S / 50, "child %d: mapping rss %zu of files %zu", k, m->rss, S);
        CHECK_MSG(m->shared_clean + m->shared_dirty >= S - S / 50, "child %d: shared %zu of %zu", k,
                  m->shared_clean + m->shared_dirty, S);
        CHECK_MSG(m->pss * 2 >= m->rss - m->rss / 20 && m->pss * 2 <= m->rss + m->rss / 20, "child %d: pss %zu rss %zu",
                  k, m->pss, m->rss);
    }
}

/* ---- the mapped path against model_load ---- */

/* Largest |a - b| over largest |b| of n logits. */
static double rel_diff(const float *a, const float *b, int n) {
    double d = 0, s = 0;
    for (int i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return s > 0 ? d / s : d;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) best = x[i] > x[best] ? i : best;
    return best;
}

/* Prefill of 7 random tokens, then 12 greedy decode steps on a (mapped) and b (f32), one kv
 * each: the worst relative logit difference over every step; *same_tokens whether both
 * chose the same tokens throughout (a feeds b's choice, so one tie cannot derail the rest). */
static double decode_diff(model *a, model *b, bool *same_tokens) {
    const int V = b->cfg.vocab_size, P = 7, G = 12;
    int tokens[7];
    test_random_tokens(tokens, P, V, 21);
    model_kv *ka = NULL, *kb = NULL;
    SK_ASSERT(model_kv_create(a, P + G, &ka) == SK_OK && model_kv_create(b, P + G, &kb) == SK_OK);
    float *la = malloc(sizeof(float) * (size_t)V), *lb = malloc(sizeof(float) * (size_t)V);
    double worst = 0;
    *same_tokens = true;
    int next = 0;
    for (int step = 0; step <= G; step++) {
        tensor ta = step ? model_infer_step(a, ka, &next, 1) : model_infer_step(a, ka, tokens, P);
        backend_download(a->be, la, ta.data, tensor_bytes(ta));
        tensor tb = step ? model_infer_step(b, kb, &next, 1) : model_infer_step(b, kb, tokens, P);
        backend_download(b->be, lb, tb.data, tensor_bytes(tb));
        worst = fmax(worst, rel_diff(la, lb, V));
        next = argmax(lb, V);
        *same_tokens &= argmax(la, V) == next;
    }
    free(la);
    free(lb);
    model_kv_free(ka);
    model_kv_free(kb);
    return worst;
}

/* Opens dir both ways and compares them (see the top); matrices of the mapped model must be
 * views of dtype `stored`. */
static void check_mapped_equals_loaded(const char *dir, dtype stored) {
    backend *be = backend_cpu_create();
    model *a = NULL, *b = NULL;
    CHECK_MSG(model_open_weights(dir, be, &a) == SK_OK, "%s: %s", dir, sk_errmsg());
    CHECK_MSG(model_load(dir, be, &b) == SK_OK, "%s: %s", dir, sk_errmsg());
    CHECK(a->params == NULL && a->weights && b->params && !b->weights);
    for (int i = 0; i < a->n_specs; i++) {
        tensor t = model_param_view(a, i);
        CHECK_MSG(t.dt == (a->specs[i].ndim >= 2 ? stored : DT_F32), "%s: %s is %s", dir, a->specs[i].name,
                  dtype_name(t.dt));
        CHECK(a->specs[i].ndim < 2 || t.mem == MEM_MAPPED);
    }
    bool same = false;
    double worst = decode_diff(a, b, &same);
    printf("  %s: worst relative logit difference mapped vs f32 %.3g\n", dir, worst);
    CHECK_MSG(worst <= 1e-5 && same, "%s: relative difference %g, same tokens %d", dir, worst, same);
    if (stored == DT_F32) CHECK_MSG(worst == 0, "%s: f32 weights differ by %g", dir, worst);

    int32_t prompt[5] = {3, 1, 4, 1, 5}, ta[16], tb[16];
    gen_opts go = {.max_tokens = 16, .sample = {.temperature = 0}};
    gen_result ra, rb;
    CHECK(gen_run(a, NULL, prompt, 5, &go, NULL, NULL, ta, &ra) == SK_OK);
    CHECK(gen_run(b, NULL, prompt, 5, &go, NULL, NULL, tb, &rb) == SK_OK);
    CHECK(ra.n_generated == rb.n_generated && !memcmp(ta, tb, sizeof(int32_t) * (size_t)ra.n_generated));
    model_free(a);
    model_free(b);
    backend_free(be);
}

TEST(mapped_gpt2_bf16_equals_f32_copy) { check_mapped_equals_loaded(test_path("fixtures/gpt2-hf-bf16"), DT_BF16); }
TEST(mapped_gpt2_f16_sharded_equals_f32_copy) {
    check_mapped_equals_loaded(test_path("fixtures/gpt2-hf-noprefix"), DT_F16);
}
TEST(mapped_gpt2_f32_equals_f32_copy) { check_mapped_equals_loaded(test_path("fixtures/gpt2-hf"), DT_F32); }
TEST(mapped_llama_tied_bf16_equals_f32_copy) {
    check_mapped_equals_loaded(test_path("fixtures/llama-tied-bf16"), DT_BF16);
}

/* Every llama-math fixture (f32) as it is, and saved in bf16 in shards of 20 KB (GQA, llama3
 * rope, sliding window, q/k/v biases). */
TEST(mapped_llama_math_f32_and_bf16_equal_f32_copy) {
    static const char *const names[] = {"llama", "llama3", "mistral", "qwen2"};
    for (int i = 0; i < 4; i++) {
        char src[1024], dst[1024];
        snprintf(src, sizeof src, "%s%s", test_path("fixtures/llama-math/"), names[i]);
        check_mapped_equals_loaded(src, DT_F32);
        if (test_failed_now) return;
        backend *be = backend_cpu_create();
        model *m = NULL;
        CHECK_MSG(model_load(src, be, &m) == SK_OK, "%s", sk_errmsg());
        snprintf(dst, sizeof dst, "%s/%s-bf16", test_tmpdir(), names[i]);
        CHECK_MSG(model_save_as(m, dst, DT_BF16, 20000) == SK_OK, "%s", sk_errmsg());
        model_free(m);
        backend_free(be);
        check_mapped_equals_loaded(dst, DT_BF16);
        if (test_failed_now) return;
    }
}

TEST(inference_models_refuse_training_and_share_weights) {
    const char *dir = test_path("fixtures/llama-tied-bf16");
    backend *be = backend_cpu_create();
    model *a = NULL;
    CHECK_MSG(model_open_weights(dir, be, &a) == SK_OK, "%s", sk_errmsg());
    CHECK(model_train_prepare(a, 1, 4) == SK_ESTATE && strstr(sk_errmsg(), "mapped weights") &&
          strstr(sk_errmsg(), "model.safetensors"));
    char out[1024];
    snprintf(out, sizeof out, "%s/resave", test_tmpdir());
    CHECK(model_save(a, out) == SK_ESTATE);

    /* a second model over the same wts (its own reference) sees the same views */
    model *b = NULL;
    CHECK(model_open_wts(&a->cfg, a->weights, be, &b) == SK_OK && b->weights == a->weights);
    CHECK(model_param_view(b, 1).data == model_param_view(a, 1).data);

    /* two sequences on one model, steps interleaved, and one sequence on the other model:
     * the same logits bit for bit */
    const int V = a->cfg.vocab_size;
    int t1[6] = {5, 9, 2, 7, 7, 3}, t2[4] = {8, 1, 1, 6};
    model_kv *k1 = NULL, *k2 = NULL, *kb = NULL;
    CHECK(model_kv_create(a, a->cfg.n_positions + 1, &k2) == SK_EARG && k2 == NULL);
    CHECK(model_kv_create(a, 16, &k1) == SK_OK && model_kv_create(a, 8, &k2) == SK_OK &&
          model_kv_create(b, 16, &kb) == SK_OK);
    float *l1 = test_download(be, model_infer_step(a, k1, t1, 6));
    free(test_download(be, model_infer_step(a, k2, t2, 4)));
    float *l1b = test_download(be, model_infer_step(a, k1, t2, 1));
    float *lb = test_download(be, model_infer_step(b, kb, t1, 6));
    CHECK(!memcmp(l1, lb, sizeof(float) * (size_t)V));
    free(lb);
    lb = test_download(be, model_infer_step(b, kb, t2, 1));
    CHECK(!memcmp(l1b, lb, sizeof(float) * (size_t)V) && model_kv_pos(k1) == 7 && model_kv_pos(k2) == 4);
    model_kv_reset(k1);
    free(l1b);
    l1b = test_download(be, model_infer_step(a, k1, t1, 6));
    CHECK(!memcmp(l1, l1b, sizeof(float) * (size_t)V) && model_kv_pos(k1) == 6);
    free(l1);
    free(l1b);
    free(lb);
    model_kv_free(k1);
    model_kv_free(k2);
    model_free(a);   /* b still holds the weights */
    CHECK(model_infer_step(b, kb, t2, 1).data != NULL);
    model_kv_free(kb);
    model_free(b);
    backend_free(be);
}

TEST_MAIN()
