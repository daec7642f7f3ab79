/* Tests of model/gpt2.c on the CPU backend: logits and greedy decoding against a tiny
 * transformers GPT2LMHeadModel (tests/fixtures/gpt2-tiny, made by make_gpt2_fixtures.py),
 * whole-model gradients against central finite differences, gradient accumulation,
 * KV-cached inference against the full forward, overfitting one batch, dropout, init.
 *
 * The tests run on SKEIN_TEST_DEVICE (test_device.h) and read parameters, gradients and
 * logits through downloads.
 * Step timings are `skein bench train`'s (it runs the trainer's step). */
#include "test.h"
#include "test_model.h"

#include <cJSON.h>

#include "backend/backend.h"
#include "base/file.h"
#include "base/json.h"
#include "base/rng.h"
#include "infer/generate.h"
#include "model/model.h"

/* A GPT-2 of the given shape with every parameter N(0, sd) (LayerNorm weights 1 + N(0, sd)),
 * so every weight matters to the loss. */
static model *tiny_model(int L, int NH, int C, int V, int T, uint64_t seed, float sd) {
    model_config cfg;
    model_config_gpt2(&cfg, L, NH, C, T, V);
    return test_random_model(&cfg, "ln_", seed, sd);
}

/* ---- against transformers ---- */

TEST(logits_and_greedy_match_transformers) {
    cJSON *ref = NULL;
    CHECK(json_load_file(test_path("fixtures/gpt2-tiny/reference.json"), &ref) == SK_OK);
    const cJSON *jt = cJSON_GetObjectItem(ref, "tokens"), *jp = cJSON_GetObjectItem(ref, "prompt"),
                *jg = cJSON_GetObjectItem(ref, "generated");
    int T = cJSON_GetArraySize(jt), P = cJSON_GetArraySize(jp), G = cJSON_GetArraySize(jg);
    int tokens[64], prompt[64], gen[64];
    for (int i = 0; i < T; i++) tokens[i] = cJSON_GetArrayItem(jt, i)->valueint;
    for (int i = 0; i < P; i++) prompt[i] = cJSON_GetArrayItem(jp, i)->valueint;
    for (int i = 0; i < G; i++) gen[i] = cJSON_GetArrayItem(jg, i)->valueint;
    cJSON_Delete(ref);

    model *m = NULL;
    CHECK_MSG(model_load(test_path("fixtures/gpt2-tiny"), test_device(), &m) == SK_OK, "%s", sk_errmsg());
    CHECK(m->cfg.vocab_size == 101 && m->cfg.n_layer == 2);
    char *want = NULL;
    size_t size = 0;
    CHECK(file_read_all(test_path("fixtures/gpt2-tiny/logits.bin"), &want, &size) == SK_OK);
    CHECK(size == sizeof(float) * (size_t)T * 101);

    /* full forward: every logit within 1e-4 of transformers' */
    CHECK(model_train_prepare(m, 1, T) == SK_OK);
    model_forward(m, tokens, NULL, 1, T);
    float *got = test_download_mat(m->be, model_logits(m));
    double maxdiff = 0;
    for (int i = 0; i < T * 101; i++) {
        double d = fabs(got[i] - ((float *)want)[i]);
        maxdiff = d > maxdiff ? d : maxdiff;
    }
    free(got);
    mem_free(want);
    printf("  max |logit - transformers| %.3g over %d logits\n", maxdiff, T * 101);
    CHECK_MSG(maxdiff <= 1e-4, "max |logit diff| %g", maxdiff);

    /* greedy decoding through the KV cache, token for token */
    model_kv *kv = NULL;
    CHECK(model_kv_create(m, 64, &kv) == SK_OK);
    float *lg = test_download(m->be, model_infer_step(m, kv, prompt, P));
    for (int i = 0; i < G; i++) {
        int next = test_argmax(lg, 101);
        free(lg);
        CHECK_MSG(next == gen[i], "generated token %d: %d vs transformers %d", i, next, gen[i]);
        lg = test_download(m->be, model_infer_step(m, kv, &next, 1));
    }
    free(lg);
    model_kv_free(kv);
    /* and through gen_run at temperature 0, as `skein generate` runs it */
    int32_t prompt32[64], out[64];
    for (int i = 0; i < P; i++) prompt32[i] = prompt[i];
    gen_opts go = {.max_tokens = G, .sample = {.temperature = 0}};
    gen_result res;
    CHECK_MSG(gen_run(m, NULL, prompt32, (size_t)P, &go, NULL, NULL, out, &res) == SK_OK, "%s", sk_errmsg());
    CHECK(res.n_generated == G);
    for (int i = 0; i < G; i++) CHECK_MSG(out[i] == gen[i], "gen_run token %d: %d vs transformers %d", i, out[i], gen[i]);
    model_free(m);
}

/* ---- gradients ---- */

enum { GL = 2, GNH = 2, GC = 16, GV = 37, GT = TEST_GT, GB = TEST_GB };

/* Whole-model gradients against finite differences (test_model.h states the tolerance),
 * with dropout off and on (the same seed in every forward, so the masks are fixed). */
static bool grad_check(bool dropout) {
    model *m = tiny_model(GL, GNH, GC, GV, GT, 11, 0.3f);
    m->dropout = dropout;
    m->cfg.resid_pdrop = m->cfg.embd_pdrop = m->cfg.attn_pdrop = 0.2f;
    m->dropout_seed = 99;
    bool ok = test_grad_check(m, dropout ? "dropout on" : "dropout off");
    model_free(m);
    return ok;
}

TEST(gradients_match_finite_differences) { CHECK(grad_check(false)); }
TEST(gradients_match_finite_differences_with_dropout) { CHECK(grad_check(true)); }

/* Gradient accumulation over two half batches equals one full batch (test_model.h). */
TEST(gradient_accumulation_matches_full_batch) {
    model *m = tiny_model(GL, GNH, GC, GV, GT, 12, 0.3f);
    bool ok = test_grad_accumulation(m);
    model_free(m);
    CHECK(ok);
}

/* ---- inference ---- */

/* KV-cached prefill and decodes match the full forward (test_model.h). */
TEST(kv_cache_matches_full_forward) {
    model *m = tiny_model(3, 4, 32, 53, 16, 21, 0.3f);
    bool ok = test_kv_cache_matches(m, 12);
    model_free(m);
    CHECK(ok);
}

/* ---- training ---- */

/* One batch overfits from GPT-2's init (test_model.h). */
TEST(overfits_one_batch) {
    model *m = tiny_model(GL, GNH, GC, GV, GT, 13, 0.0f);
    model_init_weights(m, 13);
    bool ok = test_model_overfits(m);
    model_free(m);
    CHECK(ok);
}

/* Recompute matches stored activations bit for bit, with dropout on (the masks are keyed,
 * so the second forward drops what the first did). */
TEST(recompute_matches_stored_activations) {
    model *m = tiny_model(GL, GNH, GC, GV, GT, 16, 0.3f);
    m->dropout = true;
    m->dropout_seed = 7;
    CHECK(test_recompute_matches(m));
    model_free(m);
}

/* bf16 mixed precision tracks the f32 step on the CPU (test_model.h), with dropout off, then
 * overfits one batch as f32 does. */
TEST(mixed_precision_tracks_f32) {
    if (!backend_supports(test_device(), BACKEND_OP_MIXED, DT_BF16))
        SKIP("the %s backend has no bf16 mixed-precision ops", test_device()->name);
    model *m = tiny_model(GL, GNH, GC, GV, 32, 15, 0.3f);
    CHECK(test_mixed_matches_f32(m, 32, "GPT-2"));
    model_init_weights(m, 13);
    CHECK(test_model_overfits(m));
    model_free(m);
}

/* Dropout off is the plain path bit for bit; on, it is a function of the seed. */
TEST(dropout_is_seeded_and_off_is_exact) {
    model *m = tiny_model(GL, GNH, GC, GV, GT, 14, 0.3f);
    int tokens[GB * GT], targets[GB * GT];
    test_random_tokens(tokens, GB * GT, GV, 9);
    test_random_tokens(targets, GB * GT, GV, 10);
    CHECK(model_train_prepare(m, GB, GT) == SK_OK);
    float plain = model_forward(m, tokens, targets, GB, GT);
    m->dropout_seed = 5;
    float off = model_forward(m, tokens, targets, GB, GT);
    CHECK(plain == off);
    m->dropout = true;
    float a = model_forward(m, tokens, targets, GB, GT);
    float b = model_forward(m, tokens, targets, GB, GT);
    m->dropout_seed = 6;
    float c = model_forward(m, tokens, targets, GB, GT);
    CHECK(a == b);
    CHECK(a != plain && a != c);
    model_free(m);
}

/* N(0, 0.02), c_proj N(0, 0.02/sqrt(2L)), biases 0, LayerNorm weights 1; same seed, same
 * weights. */
TEST(init_weights_follow_gpt2) {
    model_config cfg;
    model_config_gpt2(&cfg, 4, 4, 64, 128, 500);
    CHECK(test_init_follows(&cfg, "ln_", "c_proj"));
}

TEST_MAIN()
