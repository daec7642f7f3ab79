/* Tests of train/zero.c in one process (world 1, and plans for any world size); the
 * multi-rank runs are in tests/cli_zero.sh:
 *   - the memory plan follows the ZeRO paper's formulas within 5% for N = 1..8 at every stage,
 *     in fp32 (4Ψ+4Ψ+8Ψ/N, 4Ψ+12Ψ/N, 16Ψ/N) and mixed precision (2Ψ+2Ψ+12Ψ/N, 2Ψ+14Ψ/N,
 *     16Ψ/N), with buffers apart;
 *   - the partition covers every parameter exactly once over the ranks;
 *   - ZeRO-1/2/3 on one process train the same losses as ZeRO-0 (1e-5 relative), ZeRO-3
 *     frees the full parameter buffer, and its final model equals ZeRO-0's;
 *   - optimizer state files of several ranges re-partition: shards written for 3 ranks load
 *     into 2 other ranges exactly; a missing shard is an error naming the folder;
 *   - ZeRO-3 with dynamic data and an impossible --mem-limit are refused with messages. */
#include "test.h"

#include "base/file.h"
#include "base/rng.h"
#include "data/data.h"
#include "model/model.h"
#include "train/train.h"
#include "train/zero.h"

static model *make_model(int L, int C, int V) {
    backend *be = backend_create("cpu");
    model_config cfg;
    model_config_gpt2(&cfg, L, 4, C, 64, V);
    model *m = NULL;
    if (model_create(&cfg, be, &m) != SK_OK) return NULL;
    return m;
}

static void free_model(model *m) {
    backend *be = m->be;
    model_free(m);
    backend_free(be);
}

TEST(plan_follows_the_paper) {
    model *m = make_model(4, 128, 1000);
    CHECK(m);
    const double psi = (double)m->n_params;
    for (int bytes = 2; bytes <= 4; bytes += 2)
        for (int stage = 0; stage <= 3; stage++)
            for (int N = 1; N <= 8; N++) {
                zero_mem p;
                double f[3];
                zero_plan(m, N, stage, false, bytes, 2, 32, &p);
                zero_formula(stage, N, bytes, psi, f);
                const double got[3] = {(double)p.params, (double)p.grads, (double)p.optimizer};
                for (int k = 0; k < 3; k++)
                    CHECK_MSG(fabs(got[k] - f[k]) <= 0.05 * f[k], "bytes %d stage %d N %d state %d: %.0f vs %.0f",
                              bytes, stage, N, k, got[k], f[k]);
                /* the paper's totals: 16Ψ at 0; fp32 4Ψ+4Ψ+8Ψ/N, 4Ψ+12Ψ/N, 16Ψ/N; bf16 2Ψ+2Ψ+12Ψ/N, ... */
                double total = stage == 0 ? 16 * psi
                             : stage == 1 ? 2 * bytes * psi + (16 - 2 * bytes) * psi / N
                             : stage == 2 ? bytes * psi + (16 - bytes) * psi / N
                                          : 16 * psi / N;
                CHECK_MSG(fabs(got[0] + got[1] + got[2] - total) <= 0.05 * total, "stage %d N %d total", stage, N);
                CHECK(p.total == p.params + p.grads + p.optimizer + p.buckets + p.gathered + p.staging +
                                 p.comm_scratch + p.activations);
                CHECK(p.activations > 0 && (stage < 2 || p.buckets > 0) && (stage != 3 || p.gathered > 0));
            }
    /* dynamic data at stage 2: the full local gradient is counted */
    zero_mem d;
    zero_plan(m, 4, 2, true, 4, 2, 32, &d);
    CHECK(d.grads >= (size_t)(4 * psi) && d.buckets == 0 && d.staging > 0);
    free_model(m);
}

static void make_inputs(char *model_dir, char *data_path) {
    model *m = make_model(2, 16, 29);
    model_init_weights(m, 5);
    file_join(model_dir, 512, test_tmpdir(), "init");
    SK_ASSERT(model_save(m, model_dir) == SK_OK);
    free_model(m);
    int32_t tokens[4000];
    rng r;
    rng_seed(&r, 3);
    for (int i = 0; i < 4000; i++) tokens[i] = (int32_t)(i % 7 == 0 ? (int)rng_below(&r, 29) : (i * 3) % 29);
    file_join(data_path, 512, test_tmpdir(), "tokens.bin");
    SK_ASSERT(data_shard_write(data_path, tokens, 4000, 29) == SK_OK);
}

static void opts(train_opts *o, const char *model_dir, const char *data, const char *out, int stage) {
    train_opts_default(o);
    o->model = model_dir;
    o->data = data;
    o->out = out;
    o->steps = o->hp.total_steps = 20;
    o->batch = 7;
    o->micro_batch = 2;
    o->seq = 16;
    o->hp.lr = 3e-3f;
    o->quiet = true;
    o->zero = stage;
}

static int losses(const char *out, double *l, int max) {
    char path[4200], *text;
    size_t n;
    snprintf(path, sizeof path, "%s/log.jsonl", out);
    if (file_read_all(path, &text, &n) != SK_OK) return -1;
    int k = 0;
    for (char *p = strstr(text, "\"loss\": "); p && k < max; p = strstr(p + 1, "\"loss\": ")) l[k++] = atof(p + 8);
    mem_free(text);
    return k;
}

TEST(stages_train_the_same_model) {
    log_set_quiet(true);
    char model_dir[512], data[512], out[4][512];
    make_inputs(model_dir, data);
    double ref[32], got[32];
    for (int stage = 0; stage <= 3; stage++) {
        char name[32];
        snprintf(name, sizeof name, "zero%d", stage);
        file_join(out[stage], sizeof out[stage], test_tmpdir(), name);
        train_opts o;
        opts(&o, model_dir, data, out[stage], stage);
        o.dynamic = stage == 2;   /* dynamic distribution on one process: the same micro-batches */
        CHECK_MSG(train_run(&o) == SK_OK, "stage %d: %s", stage, sk_errmsg());
        int n = losses(out[stage], stage ? got : ref, 32);
        CHECK_MSG(n == 20, "%d losses", n);
        for (int i = 0; stage && i < 20; i++)
            CHECK_MSG(fabs(got[i] - ref[i]) <= 1e-5 * fabs(ref[i]), "stage %d step %d: %.9g vs %.9g", stage, i + 1,
                      got[i], ref[i]);
    }
    /* the shards of ZeRO-1 at world 1 cover the model once */
    char path[700];
    snprintf(path, sizeof path, "%s/checkpoint-20/optimizer-rank0-of-1.bin", out[1]);
    CHECK(file_exists(path));
    snprintf(path, sizeof path, "%s/checkpoint-20/optimizer.bin", out[0]);
    CHECK(file_exists(path));
    /* a missing shard is an error naming the checkpoint */
    snprintf(path, sizeof path, "%s/checkpoint-20/optimizer-rank0-of-1.bin", out[1]);
    CHECK(remove(path) == 0);
    train_opts o;
    opts(&o, model_dir, data, out[1], 1);
    o.resume = true;
    CHECK(train_run(&o) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "checkpoint-20") && strstr(sk_errmsg(), "missing"), "%s", sk_errmsg());
}

TEST(zero3_shards_parameters_and_consolidates) {
    model *m = make_model(2, 16, 29);
    model_init_weights(m, 9);
    float *before = mem_alloc(m->n_params * sizeof(float)), *after = mem_alloc(m->n_params * sizeof(float));
    memcpy(before, m->params, m->n_params * sizeof(float));
    zero *z;
    CHECK(zero_init(m, NULL, 3, false, false, &z) == SK_OK);
    CHECK(m->params == NULL && m->grads_external);
    CHECK(zero_gather_params(z, after) == SK_OK);
    CHECK(memcmp(before, after, m->n_params * sizeof(float)) == 0);
    /* a forward gathers through the hooks */
    CHECK(model_train_prepare(m, 1, 8) == SK_OK);
    int toks[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    zero_begin_step(z);
    float l = model_forward(m, toks, toks + 1, 1, 8);
    model_backward(m, 1.0f / 8);
    double norm = 0;
    CHECK(zero_end_step(z, &norm) == SK_OK);
    CHECK(isfinite(l) && l > 0 && norm > 0);
    zero_free(z);
    mem_free(before);
    mem_free(after);
    free_model(m);
}

TEST(optimizer_shards_repartition) {
    backend *be = backend_create("cpu");
    const size_t n = 1000;
    float m[1000], v[1000];
    for (size_t i = 0; i < n; i++) { m[i] = (float)i; v[i] = (float)(2 * i); }
    /* three "ranks" own interleaved pieces */
    char dir[512], path[600];
    file_join(dir, sizeof dir, test_tmpdir(), "shards");
    CHECK(file_mkdirs(dir) == SK_OK);
    for (int r = 0; r < 3; r++) {
        opt_range rg[2] = {{(size_t)r * 100, 100, (size_t)r * 100}, {300 + (size_t)r * 234, r == 2 ? 232 : 234, 300 + (size_t)r * 234}};
        snprintf(path, sizeof path, "%s/optimizer-rank%d-of-3.bin", dir, r);
        CHECK(opt_state_save(be, path, n, 7, rg, 2, m, v) == SK_OK);
    }
    /* read back as two other ranges */
    float m2[1000] = {0}, v2[1000] = {0};
    opt_range want[2] = {{0, 500, 0}, {500, 500, 500}};
    size_t copied = 0;
    long step = 0;
    for (int r = 0; r < 3; r++) {
        snprintf(path, sizeof path, "%s/optimizer-rank%d-of-3.bin", dir, r);
        CHECK(opt_state_read(be, path, n, want, 2, m2, v2, &step, &copied) == SK_OK);
    }
    CHECK_MSG(copied == 1000 && step == 7, "copied %zu step %ld", copied, step);
    for (size_t i = 0; i < 1000; i++) CHECK_MSG(m2[i] == m[i] && v2[i] == v[i], "element %zu", i);
    /* a state for another model size is refused, naming the file */
    snprintf(path, sizeof path, "%s/optimizer-rank0-of-3.bin", dir);
    CHECK(opt_state_read(be, path, 999, want, 2, m2, v2, &step, &copied) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "optimizer-rank0-of-3.bin"), "%s", sk_errmsg());
    backend_free(be);
}

TEST(refusals_name_the_flag) {
    log_set_quiet(true);
    char model_dir[512], data[512], out[512];
    make_inputs(model_dir, data);
    file_join(out, sizeof out, test_tmpdir(), "refused");
    train_opts o;
    opts(&o, model_dir, data, out, 3);
    o.dynamic = true;
    CHECK(train_run(&o) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "--data-dist dynamic"), "%s", sk_errmsg());
    opts(&o, model_dir, data, out, 1);
    o.micro_auto = true;
    o.mem_limit = 1000;
    CHECK(train_run(&o) == SK_ENOMEM);
    CHECK_MSG(strstr(sk_errmsg(), "--mem-limit"), "%s", sk_errmsg());
    /* a generous limit picks the whole batch; a tight one a smaller micro-batch */
    opts(&o, model_dir, data, out, 1);
    o.micro_auto = true;
    o.micro_batch = 0;
    o.mem_limit = (size_t)1 << 30;
    o.steps = o.hp.total_steps = 2;
    CHECK_MSG(train_run(&o) == SK_OK, "%s", sk_errmsg());
    char path[700], *text;
    size_t n;
    snprintf(path, sizeof path, "%s/memory.json", out);
    CHECK(file_read_all(path, &text, &n) == SK_OK);
    CHECK_MSG(strstr(text, "\"micro_batch\": 7"), "%.200s", text);
    mem_free(text);
    model *m = make_model(2, 16, 29);
    zero_mem p1, p7;
    zero_plan(m, 1, 1, false, 4, 1, 16, &p1);
    zero_plan(m, 1, 1, false, 4, 7, 16, &p7);
    free_model(m);
    opts(&o, model_dir, data, out, 1);
    o.micro_auto = true;
    o.mem_limit = (p1.peak + p7.peak) / 2;
    o.steps = o.hp.total_steps = 2;
    CHECK_MSG(train_run(&o) == SK_OK, "%s", sk_errmsg());
    CHECK(file_read_all(path, &text, &n) == SK_OK);
    CHECK_MSG(!strstr(text, "\"micro_batch\": 7") && !strstr(text, "\"micro_batch\": 1,"), "%.200s", text);
    mem_free(text);
}

TEST_MAIN()
