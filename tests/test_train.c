/* Tests of train/: the learning-rate schedule, AdamW against a double-precision reference,
 * the optimizer state file's checks, the optimizer step (step.h, what `skein train` and
 * `skein bench train` run) at any micro-batch and distribution, and exact resume: --steps 40
 * --stop-after 20 then --resume gives the same 40 losses and the same final weights, bit for
 * bit, as one uninterrupted run. */
#include "test.h"

#include "base/file.h"
#include "base/rng.h"
#include "data/data.h"
#include "model/model.h"
#include "train/ckpt.h"
#include "train/step.h"
#include "train/train.h"
#include "train/zero.h"

TEST(cosine_schedule_with_warmup) {
    opt_hparams h;
    opt_hparams_default(&h);
    h.lr = 1.0f;
    h.min_lr_frac = 0.1f;
    h.warmup = 10;
    h.total_steps = 110;
    CHECK_NEAR(opt_lr_at(&h, 0), 0.1, 1e-7);
    CHECK_NEAR(opt_lr_at(&h, 9), 1.0, 1e-7);
    CHECK_NEAR(opt_lr_at(&h, 10), 1.0, 1e-7);
    CHECK_NEAR(opt_lr_at(&h, 109), 0.1, 1e-6);
    double mid = 0.1 + 0.45 * (1 + cos(M_PI * 49.0 / 99.0));
    CHECK_NEAR(opt_lr_at(&h, 59) , mid, 1e-6);
    for (long s = 11; s < 110; s++) CHECK(opt_lr_at(&h, s) <= opt_lr_at(&h, s - 1));
}

/* The shapes DeepSpeed's schedulers need: logarithmic warmup (WarmupLR's default: lr *
 * log(step + 1) / log(warmup), 0 at the first step), a straight line down (WarmupDecayLR:
 * to lr * min_lr_frac at the last step), a constant after the warmup (min_lr_frac 1). */
TEST(schedule_shapes) {
    opt_hparams h;
    opt_hparams_default(&h);
    h.lr = 2.0f, h.warmup = 8, h.total_steps = 28, h.min_lr_frac = 0;
    h.warmup_log = h.decay_linear = true;
    CHECK_NEAR(opt_lr_at(&h, 0), 0, 0);
    for (long s = 0; s < 8; s++) CHECK_NEAR(opt_lr_at(&h, s), 2.0 * log(s + 1.0) / log(8.0), 1e-6);
    for (long s = 8; s < 28; s++) CHECK_NEAR(opt_lr_at(&h, s), 2.0 * (1 - (s - 8) / 19.0), 1e-6);
    h.min_lr_frac = 1;
    for (long s = 8; s < 40; s++) CHECK_NEAR(opt_lr_at(&h, s), 2.0, 1e-6);
    h.warmup = 1;   /* log(max(2, warmup)): no division by log(1) = 0 */
    CHECK_NEAR(opt_lr_at(&h, 0), 0, 0);
}

/* train_fill_fn over a token stream: sample i is the 16 ids at 16*i, its targets the next. */
static sk_status fill_stream(void *ctx, long first, long n, const int **inputs, const int **targets) {
    const int *ids = ctx;
    *inputs = ids + first * 16;
    *targets = ids + first * 16 + 1;
    return SK_OK;
}

/* One process, 4 steps of a batch of 6 sequences: micro-batches of 6, of 1 and of 4 (the
 * last one short), static and dynamic, give the same losses and gradient norms up to the
 * order of float sums, and the statistics count the passes and tokens that ran. */
TEST(step_is_the_same_at_any_micro_batch_and_distribution) {
    enum { B = 6, T = 16, V = 29, STEPS = 4 };
    int ids[B * T + 1];
    rng r;
    rng_seed(&r, 4);
    for (int i = 0; i <= B * T; i++) ids[i] = (int)rng_below(&r, V);
    const long mbs[3] = {6, 1, 4};
    double loss[3][STEPS], norm[3][STEPS];
    opt_hparams hp;
    opt_hparams_default(&hp);
    for (int k = 0; k < 3; k++) {
        backend *be = backend_create("cpu");
        model_config cfg;
        model_config_gpt2(&cfg, 2, 2, 16, 32, V);
        model *m = NULL;
        zero *z = NULL;
        CHECK(model_create(&cfg, be, &m) == SK_OK);
        model_init_weights(m, 5);
        CHECK(zero_init(m, NULL, 0, k == 2, false, &z) == SK_OK && model_train_prepare(m, (int)mbs[k], T) == SK_OK);
        train_step s = {.m = m, .z = z, .batch = B, .micro_batch = mbs[k], .seq = T, .dynamic = k == 2,
                        .fill = fill_stream, .fill_ctx = ids};
        CHECK(train_step_init(&s) == SK_OK);
        for (int i = 0; i < STEPS; i++) {
            CHECK_MSG(train_step_run(&s, &hp, 1e-2f, 0, &loss[k][i], &norm[k][i]) == SK_OK, "%s", sk_errmsg());
            CHECK_MSG(s.stats[1 + TRAIN_STAT_MB] == (double)((B + mbs[k] - 1) / mbs[k]) &&
                      s.stats[1 + TRAIN_STAT_TOKENS] == B * T, "micro-batch %ld: %g passes, %g tokens", mbs[k],
                      s.stats[1 + TRAIN_STAT_MB], s.stats[1 + TRAIN_STAT_TOKENS]);
        }
        CHECK(zero_opt_steps(z) == STEPS);
        train_step_free(&s);
        zero_free(z);
        model_free(m);
        backend_free(be);
    }
    CHECK_MSG(loss[0][STEPS - 1] < loss[0][0], "loss %g -> %g", loss[0][0], loss[0][STEPS - 1]);
    for (int k = 1; k < 3; k++)
        for (int i = 0; i < STEPS; i++) {
            CHECK_NEAR(loss[k][i], loss[0][i], 1e-5 * loss[0][i]);
            CHECK_NEAR(norm[k][i], norm[0][i], 1e-4 * norm[0][i]);
        }
}

/* Writes a tiny GPT-2 folder and a random-token shard; returns the paths in buffers. */
static int make_run_inputs(char *model_dir, char *data_path, int V) {
    backend *be = backend_create("cpu");
    model_config cfg;
    model_config_gpt2(&cfg, 2, 2, 16, 32, V);
    model *m;
    if (model_create(&cfg, be, &m) != SK_OK) return 0;
    model_init_weights(m, 5);
    file_join(model_dir, 512, test_tmpdir(), "init");
    int ok = model_save(m, model_dir) == SK_OK;
    model_free(m);
    backend_free(be);
    int32_t tokens[4000];
    rng r;
    rng_seed(&r, 3);
    for (int i = 0; i < 4000; i++) tokens[i] = (int32_t)(i % 7 == 0 ? (int)rng_below(&r, (uint64_t)V) : (i * 3) % V);
    file_join(data_path, 512, test_tmpdir(), "tokens.bin");
    return ok && data_shard_write(data_path, tokens, 4000, V) == SK_OK;
}

static void run_opts(train_opts *o, const char *model_dir, const char *data, const char *out) {
    train_opts_default(o);
    o->model = model_dir;
    o->data = data;
    o->out = out;
    o->steps = 40;
    o->batch = 4;
    o->micro_batch = 2;
    o->seq = 16;
    o->hp.lr = 3e-3f;
    o->hp.warmup = 5;
    o->hp.total_steps = 40;
    o->quiet = true;
}

/* Reads the "loss" of every line of log.jsonl as text (exact comparison). */
static int read_losses(const char *out, char losses[][40], int max) {
    char path[600], *text;
    size_t n;
    snprintf(path, sizeof path, "%s/log.jsonl", out);
    if (file_read_all(path, &text, &n) != SK_OK) return -1;
    int k = 0;
    for (char *p = strstr(text, "\"loss\": "); p && k < max; p = strstr(p + 1, "\"loss\": ")) {
        sscanf(p + 8, "%39[^,]", losses[k]);
        k++;
    }
    mem_free(text);
    return k;
}

TEST(resume_is_bit_exact) {
    log_set_quiet(true);
    char model_dir[512], data[512], a[512], b[512];
    CHECK(make_run_inputs(model_dir, data, 29));
    file_join(a, sizeof a, test_tmpdir(), "run-a");
    file_join(b, sizeof b, test_tmpdir(), "run-b");
    train_opts o;
    run_opts(&o, model_dir, data, a);
    CHECK_MSG(train_run(&o) == SK_OK, "%s", sk_errmsg());
    run_opts(&o, model_dir, data, b);
    o.stop_after = 20;
    CHECK_MSG(train_run(&o) == SK_OK, "%s", sk_errmsg());
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", b);
    CHECK(!file_exists(path));              /* stopped early: no final model yet */
    run_opts(&o, model_dir, data, b);
    o.resume = true;
    CHECK_MSG(train_run(&o) == SK_OK, "%s", sk_errmsg());

    char la[64][40], lb[64][40];
    int na = read_losses(a, la, 64), nb = read_losses(b, lb, 64);
    CHECK_MSG(na == 40 && nb == 40, "%d and %d log lines", na, nb);
    for (int i = 0; i < 40; i++) CHECK_MSG(!strcmp(la[i], lb[i]), "step %d: loss %s vs %s", i + 1, la[i], lb[i]);
    char pa[600], pb[600], *fa, *fb;
    size_t sa, sb;
    snprintf(pa, sizeof pa, "%s/model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/model.safetensors", b);
    CHECK(file_read_all(pa, &fa, &sa) == SK_OK && file_read_all(pb, &fb, &sb) == SK_OK);
    CHECK_MSG(sa == sb && memcmp(fa, fb, sa) == 0, "final weights differ");
    mem_free(fa);
    mem_free(fb);
    /* The loss fell on this repetitive data. */
    CHECK_MSG(atof(la[39]) < atof(la[0]) - 0.5, "loss %s -> %s", la[0], la[39]);
}

/* Reads number field `key` of every log.jsonl line that has it. */
static int read_field(const char *out, const char *key, double *vals, int max) {
    char path[600], pat[64], *text;
    size_t n;
    snprintf(path, sizeof path, "%s/log.jsonl", out);
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    if (file_read_all(path, &text, &n) != SK_OK) return -1;
    int k = 0;
    for (char *p = strstr(text, pat); p && k < max; p = strstr(p + 1, pat)) vals[k++] = atof(p + strlen(pat));
    mem_free(text);
    return k;
}

/* Writes a folder with the run's shard as both its train and val split into dir. */
static int make_split(const char *data, char *dir) {
    char path[700], *text;
    size_t n;
    file_join(dir, 512, test_tmpdir(), "split");
    if (file_mkdirs(dir) != SK_OK || file_read_all(data, &text, &n) != SK_OK) return 0;
    int ok = file_write_all(file_join(path, sizeof path, dir, "train_000000.bin"), text, n) == SK_OK &&
             file_write_all(file_join(path, sizeof path, dir, "val_000000.bin"), text, n) == SK_OK;
    mem_free(text);
    return ok;
}

/* Dropout masks follow the samples, not the micro-batches that carry them: --micro-batch 1
 * and 2 give the same losses (as world sizes 1, 2, 3 do: cli_zero.sh), and evaluation runs
 * without dropout. */
TEST(dropout_is_the_same_at_any_micro_batch_and_off_in_evaluation) {
    log_set_quiet(true);
    char model_dir[512], data[512], dir[512], a[512], b[512], c[512];
    CHECK(make_run_inputs(model_dir, data, 29));
    CHECK(make_split(data, dir));
    file_join(a, sizeof a, test_tmpdir(), "drop-a");
    file_join(b, sizeof b, test_tmpdir(), "drop-b");
    file_join(c, sizeof c, test_tmpdir(), "drop-c");
    train_opts o;
    double la[8], lb[8], va[8], vb[8];
    for (int k = 0; k < 2; k++) {
        run_opts(&o, model_dir, dir, k ? b : a);
        o.steps = o.hp.total_steps = 6;
        o.dropout = true;
        o.eval_every = 3;
        o.micro_batch = k ? 1 : 2;
        o.eval_batches = k ? 4 : 2;   /* the same 4 validation samples */
        CHECK_MSG(train_run(&o) == SK_OK, "%s", sk_errmsg());
    }
    CHECK(read_field(a, "loss", la, 8) == 6 && read_field(b, "loss", lb, 8) == 6);
    CHECK(read_field(a, "val_loss", va, 8) == 2 && read_field(b, "val_loss", vb, 8) == 2);
    for (int i = 0; i < 6; i++) CHECK_MSG(fabs(la[i] - lb[i]) < 1e-5 * la[i], "step %d: loss %.9g vs %.9g", i + 1, la[i], lb[i]);
    for (int i = 0; i < 2; i++) CHECK_MSG(fabs(va[i] - vb[i]) < 1e-5 * va[i], "val_loss %.9g vs %.9g", va[i], vb[i]);
    /* A step of lr 1e-9 barely moves the weights: the validation loss is the same with and
     * without dropout in training only when evaluation leaves dropout out. */
    for (int k = 0; k < 2; k++) {
        run_opts(&o, model_dir, dir, k ? c : a);
        o.steps = o.hp.total_steps = 1;
        o.hp.lr = 1e-9f;
        o.dropout = k == 0;
        o.eval_every = 1;
        CHECK_MSG(train_run(&o) == SK_OK, "%s", sk_errmsg());
    }
    CHECK(read_field(a, "val_loss", va, 8) == 1 && read_field(c, "val_loss", vb, 8) == 1);
    CHECK_MSG(fabs(va[0] - vb[0]) < 1e-6 * vb[0], "val_loss %.9g with dropout in training, %.9g without", va[0], vb[0]);
}

/* --micro-batch auto picks by world size and memory; evaluation covers the same samples
 * (eval_batches global batches) whatever it picks: the same val_loss as --micro-batch B. */
TEST(evaluation_under_micro_batch_auto_is_the_global_batch) {
    log_set_quiet(true);
    char model_dir[512], data[512], dir[512], a[512], b[512];
    CHECK(make_run_inputs(model_dir, data, 29));
    CHECK(make_split(data, dir));
    backend *be = backend_create("cpu");
    model *m;
    CHECK(model_load(model_dir, be, &m) == SK_OK);
    zero_mem plan;
    zero_plan(m, 1, 0, false, 4, 2, 16, &plan);   /* a budget that fits micro-batches of 2 */
    model_free(m);
    backend_free(be);
    file_join(a, sizeof a, test_tmpdir(), "auto-a");
    file_join(b, sizeof b, test_tmpdir(), "auto-b");
    train_opts o;
    double va[4], vb[4];
    for (int k = 0; k < 2; k++) {
        run_opts(&o, model_dir, dir, k ? b : a);
        o.steps = o.hp.total_steps = 2;
        o.eval_every = 1;
        o.eval_batches = 3;
        o.micro_batch = k ? 0 : 4;
        o.micro_auto = k == 1;
        o.mem_limit = k ? plan.peak : 0;   /* an explicit micro-batch is held to the budget too */
        CHECK_MSG(train_run(&o) == SK_OK, "%s", sk_errmsg());
    }
    char path[700], *mem;
    size_t n;
    CHECK(file_read_all(file_join(path, sizeof path, b, "memory.json"), &mem, &n) == SK_OK);
    CHECK_MSG(strstr(mem, "\"micro_batch\": 2,"), "%.120s", mem);
    mem_free(mem);
    CHECK(read_field(a, "val_loss", va, 4) == 2 && read_field(b, "val_loss", vb, 4) == 2);
    for (int i = 0; i < 2; i++) CHECK_MSG(fabs(va[i] - vb[i]) < 1e-6 * va[i], "val_loss %.9g vs %.9g", va[i], vb[i]);
}

TEST(half_written_checkpoint_is_ignored) {
    log_set_quiet(true);
    char model_dir[512], data[512], out[512], path[700];
    CHECK(make_run_inputs(model_dir, data, 23));
    file_join(out, sizeof out, test_tmpdir(), "run-c");
    train_opts o;
    run_opts(&o, model_dir, data, out);
    o.steps = o.hp.total_steps = 10;
    o.save_every = 3;
    o.stop_after = 7;
    CHECK_MSG(train_run(&o) == SK_OK, "%s", sk_errmsg());
    /* A crash mid-write leaves a temporary folder and a folder without its state file. */
    snprintf(path, sizeof path, "%s/.checkpoint-9.tmp", out);
    CHECK(file_mkdirs(path) == SK_OK);
    snprintf(path, sizeof path, "%s/checkpoint-8", out);
    CHECK(file_mkdirs(path) == SK_OK);
    char found[700];
    CHECK(ckpt_find_latest(out, found, sizeof found));
    snprintf(path, sizeof path, "%s/checkpoint-7", out);
    CHECK_MSG(!strcmp(found, path), "found %s", found);
    ckpt_state s;
    CHECK(ckpt_load_state(found, &s) == SK_OK && s.step == 7);
    /* Only the newest 3 complete checkpoints are kept (3, 6, 7). */
    snprintf(path, sizeof path, "%s/checkpoint-3", out);
    CHECK(file_exists(path));
    /* --stop-after at or before the step a resume starts from would never stop: refused. */
    run_opts(&o, model_dir, data, out);
    o.steps = o.hp.total_steps = 10;
    o.resume = true;
    o.stop_after = 7;
    CHECK(train_run(&o) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "--stop-after 7"), "%s", sk_errmsg());
    /* A corrupt optimizer state is refused with a message naming the file. */
    snprintf(path, sizeof path, "%s/checkpoint-7/optimizer.bin", out);
    CHECK(file_write_all(path, "SKOPT", 5) == SK_OK);
    run_opts(&o, model_dir, data, out);
    o.steps = o.hp.total_steps = 10;
    o.resume = true;
    CHECK(train_run(&o) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "optimizer.bin"), "%s", sk_errmsg());
}

TEST(bad_flags_are_refused) {
    train_opts o;
    char model_dir[512], data[512], out[512];
    CHECK(make_run_inputs(model_dir, data, 23));
    file_join(out, sizeof out, test_tmpdir(), "run-d");
    run_opts(&o, model_dir, data, out);
    o.seq = 1000;  /* beyond the context of 32 */
    CHECK(train_run(&o) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "context"), "%s", sk_errmsg());
    run_opts(&o, model_dir, data, out);
    o.micro_batch = 9;
    CHECK(train_run(&o) == SK_EARG);
    run_opts(&o, model_dir, data, out);
    o.model = "no-such-model";
    CHECK(train_run(&o) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "no-such-model"), "%s", sk_errmsg());
}

TEST_MAIN()
