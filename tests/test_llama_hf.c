/* Llama-family folders written by transformers, end to end through skein's own loading:
 * config.json (every dialect the fixtures use) + safetensors (f32, bf16, f16 shards) →
 * model_load → logits within 1e-4 of transformers' and greedy generation token for token
 * (through gen_run, as `skein generate --temperature 0` runs it), and several eos ids. */
#include "test.h"

#include "base/file.h"
#include "base/json.h"
#include "infer/generate.h"
#include "model/model.h"
#include "test_device.h"

static const char *const folders[] = {
    "fixtures/llama-tiny", "fixtures/llama-tied-bf16", "fixtures/mistral-sharded", "fixtures/qwen2-tiny",
    "fixtures/llama-math/llama", "fixtures/llama-math/llama3", "fixtures/llama-math/mistral",
    "fixtures/llama-math/qwen2",
};

static int read_ids(const cJSON *ref, const char *key, int *out, int cap) {
    const cJSON *a = cJSON_GetObjectItem(ref, key);
    int n = cJSON_GetArraySize(a);
    for (int i = 0; i < n && i < cap; i++) out[i] = cJSON_GetArrayItem(a, i)->valueint;
    return n;
}

TEST(transformers_folders_match_logits_and_greedy) {
    log_set_quiet(true);
    for (size_t f = 0; f < sizeof folders / sizeof folders[0]; f++) {
        const char *dir = test_path(folders[f]);
        char path[1024];
        cJSON *ref = NULL;
        CHECK_MSG(json_load_file(file_join(path, sizeof path, dir, "reference.json"), &ref) == SK_OK, "%s", sk_errmsg());
        int tokens[128], prompt[128], gen[128];
        int T = read_ids(ref, "tokens", tokens, 128), P = read_ids(ref, "prompt", prompt, 128),
            G = read_ids(ref, "generated", gen, 128);
        cJSON_Delete(ref);
        model *m = NULL;
        CHECK_MSG(model_load(dir, test_device(), &m) == SK_OK, "%s: %s", dir, sk_errmsg());
        CHECK(m->cfg.arch == ARCH_LLAMA);
        const int V = m->cfg.vocab_size;
        char *want = NULL;
        size_t size = 0;
        CHECK(file_read_all(file_join(path, sizeof path, dir, "logits.bin"), &want, &size) == SK_OK);
        CHECK_MSG(size == sizeof(float) * (size_t)T * (size_t)V, "%s: logits.bin holds %zu bytes", dir, size);
        CHECK(model_train_prepare(m, 1, T) == SK_OK);
        model_forward(m, tokens, NULL, 1, T);
        float *got = test_download_mat(m->be, model_logits(m));
        double maxdiff = 0;
        for (int i = 0; i < T * V; i++) maxdiff = fmax(maxdiff, fabs(got[i] - ((float *)want)[i]));
        free(got);
        mem_free(want);
        printf("  %s: max |logit - transformers| %.3g over %d logits\n", folders[f], maxdiff, T * V);
        CHECK_MSG(maxdiff <= 1e-4, "%s: max |logit diff| %g", dir, maxdiff);

        int32_t p32[128], out[128];
        for (int i = 0; i < P; i++) p32[i] = prompt[i];
        m->cfg.n_eos = 0;   /* compare all G tokens, as the fixture's greedy loop did */
        gen_opts go = {.max_tokens = G, .sample = {.temperature = 0}};
        gen_result res;
        CHECK_MSG(gen_run(m, NULL, p32, (size_t)P, &go, NULL, NULL, out, &res) == SK_OK, "%s", sk_errmsg());
        CHECK_MSG(res.n_generated == G, "%s: %d of %d tokens", dir, res.n_generated, G);
        for (int i = 0; i < G; i++)
            CHECK_MSG(out[i] == gen[i], "%s: greedy token %d: %d vs transformers %d", dir, i, out[i], gen[i]);

        /* Several eos ids (Llama-3 lists them): any of them stops generation. The list holds an
         * id greedy decoding never produces here and the first new id at position k. */
        int k = 1;
        for (bool repeat = true; k < G && repeat; k += repeat) {
            repeat = false;
            for (int j = 0; j < k; j++) repeat |= gen[j] == gen[k];
        }
        int unused = V - 1;
        for (bool hit = true; hit && unused > 0; unused -= hit) {
            hit = false;
            for (int j = 0; j < G; j++) hit |= gen[j] == unused;
        }
        if (k < G) {
            m->cfg.n_eos = 2;
            m->cfg.eos_token_ids[0] = unused;
            m->cfg.eos_token_ids[1] = gen[k];
            CHECK_MSG(gen_run(m, NULL, p32, (size_t)P, &go, NULL, NULL, out, &res) == SK_OK, "%s", sk_errmsg());
            CHECK_MSG(res.n_generated == k && !strcmp(res.finish, "eos"), "%s: stopped after %d (%s), eos at %d", dir,
                      res.n_generated, res.finish, k);
        }
        model_free(m);
    }
}

TEST_MAIN()
