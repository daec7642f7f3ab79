/* Tests of the Llama-family tokenizers and chat templates: SentencePiece-style BPE (Llama 2
 * normalizer layout, Metaspace layouts, the older add_prefix_space spelling), Qwen2 (NFC) and
 * Llama 3 (TemplateProcessing) against HF `tokenizers` — ids with and without the
 * post-processor, decode both ways, streaming decode; tokenizer_config.json's add_bos_token;
 * chat templates against transformers' apply_chat_template (tests/fixtures/tok2, made by
 * make_tok2_fixtures.py). */
#include "test.h"
#include "test_tok_fixtures.h"

#include <cJSON.h>

#include "base/file.h"
#include "base/json.h"
#include "tokenizer/chat.h"
#include "tokenizer/tok.h"

static fx_table fxt;

static const char *const tok_names[] = {"sp_norm", "sp_meta", "sp_split", "sp_legacy", "qwen2", "llama3"};
#define N_TOKS 6
static tok *toks[N_TOKS];

static bool fx_load(void) { return fx_table_load(&fxt, "fixtures/tok2/cases.txt"); }
static tok *fx_tok(const char *name) { return fx_tok_cached("tok2", tok_names, toks, N_TOKS, name); }

static int32_t want_buf[8192];

TEST(encode_matches_hf) {
    CHECK_MSG(fx_load(), "%s", sk_errmsg());
    int checked = 0, bad = 0;
    for (int i = 0; i < fxt.n && bad < 6; i++) {
        fx_line *l = &fxt.lines[i];
        if (strcmp(l->f[0], "encode")) continue;
        tok *t = fx_tok(l->f[1]);
        CHECK_MSG(t, "tokenizer %s", l->f[1]);
        size_t len;
        char *text = unhex(l->f[2], &len);
        for (int special = 0; special < 2; special++) {
            size_t nw = parse_ids(l->nf > 3 + special ? l->f[3 + special] : "", want_buf, 8192), n;
            int32_t *ids;
            CHECK(tok_encode_ex(t, text, len, special, &ids, &n) == SK_OK);
            if (n != nw || (n && memcmp(ids, want_buf, n * sizeof *ids))) {
                printf("  %s line %d (add_special %d): text '%.60s'\n", l->f[1], i + 1, special, text);
                print_ids("got ", ids, n);
                print_ids("want", want_buf, nw);
                bad++;
            }
            mem_free(ids);
        }
        free(text);
        checked++;
    }
    CHECK_MSG(!bad, "texts differ from HF");
    CHECK(checked > 400);
}

TEST(decode_matches_hf) {
    CHECK(fx_load());
    int checked = 0, bad = 0;
    for (int i = 0; i < fxt.n; i++) {
        fx_line *l = &fxt.lines[i];
        if (strcmp(l->f[0], "decode")) continue;
        tok *t = fx_tok(l->f[1]);
        CHECK(t);
        size_t n = parse_ids(l->f[2], want_buf, 8192), lf, ls, na, nb;
        char *full = unhex(l->nf > 3 ? l->f[3] : "", &lf), *skip = unhex(l->nf > 4 ? l->f[4] : "", &ls);
        char *a = tok_decode_ex(t, want_buf, n, false, &na), *b = tok_decode_ex(t, want_buf, n, true, &nb);
        int ok = a && b && na == lf && nb == ls && !memcmp(a, full, lf) && !memcmp(b, skip, ls);
        if (!ok && ++bad <= 5) printf("  line %d (%s) [%s]: got '%s' / '%s', want '%s' / '%s'\n", i + 1, l->f[1], l->f[2], a, b, full, skip);
        mem_free(a);
        mem_free(b);
        free(full);
        free(skip);
        checked++;
    }
    CHECK_MSG(!bad, "%d decodes differ from HF", bad);
    CHECK(checked >= 150);
}

/* Streaming decode equals the full decode, for encoded texts and for the decode fixtures. */
TEST(stream_equals_full_decode) {
    CHECK(fx_load());
    char *acc = NULL;
    int bad = 0;
    for (int i = 0; i < fxt.n; i++) {
        fx_line *l = &fxt.lines[i];
        int enc = !strcmp(l->f[0], "encode");
        tok *t = fx_tok(l->f[1]);
        size_t n = parse_ids(enc ? (l->nf > 4 ? l->f[4] : "") : l->f[2], want_buf, 8192);
        size_t cap = tok_stream_cap(t), k = 0, nfull;
        acc = realloc(acc, (n + 2) * cap);
        tok_stream s;
        tok_stream_init(&s, t);
        for (size_t j = 0; j < n; j++) k += tok_stream_put(&s, want_buf[j], acc + k, cap);
        k += tok_stream_flush(&s, acc + k, cap);
        char *full = tok_decode_ex(t, want_buf, n, false, &nfull);
        if (!(full && k == nfull && !memcmp(acc, full, k)) && ++bad <= 5)
            printf("  line %d (%s): stream '%.*s' vs full '%s'\n", i + 1, l->f[1], (int)k, acc, full);
        mem_free(full);
    }
    free(acc);
    CHECK(!bad);
}

/* decode(encode(x)) gives x back where HF's does (Llama 2's normalizer layout and Metaspace
 * "first" strip exactly the one space they add). */
TEST(decode_round_trips) {
    const char *texts[] = {"Hello world", "two  spaces  x", "東京語 👍🏽 ok\n\tx", "Hi</s>", "x"};
    const char *names[] = {"sp_norm", "sp_meta", "qwen2", "llama3"};
    for (int k = 0; k < 4; k++) {
        tok *t = fx_tok(names[k]);
        CHECK(t);
        for (int i = 0; i < 5; i++) {
            int32_t *ids;
            size_t n;
            CHECK(tok_encode(t, texts[i], strlen(texts[i]), &ids, &n) == SK_OK);
            char *back = tok_decode(t, ids, n);
            int ok = back && !strcmp(back, texts[i]);
            if (!ok) printf("  %s: '%s' -> '%s'\n", names[k], texts[i], back);
            mem_free(back);
            mem_free(ids);
            CHECK(ok);
        }
    }
}

TEST(save_load_same_ids) {
    CHECK(fx_load());
    for (int k = 0; k < N_TOKS; k++) {
        tok *t = fx_tok(tok_names[k]), *u;
        CHECK(t);
        char p[700];
        snprintf(p, sizeof p, "%s/%s.json", test_tmpdir(), tok_names[k]);
        CHECK_MSG(tok_save(t, p) == SK_OK, "%s", sk_errmsg());
        CHECK_MSG(tok_load(p, &u) == SK_OK, "%s", sk_errmsg());
        int same = 1;
        for (int i = 0; i < fxt.n && same; i++) {
            fx_line *l = &fxt.lines[i];
            if (strcmp(l->f[0], "encode") || strcmp(l->f[1], tok_names[k])) continue;
            size_t len, na, nb;
            char *text = unhex(l->f[2], &len);
            int32_t *ia, *ib;
            CHECK(tok_encode_ex(t, text, len, true, &ia, &na) == SK_OK && tok_encode_ex(u, text, len, true, &ib, &nb) == SK_OK);
            same = na == nb && (!na || !memcmp(ia, ib, na * sizeof *ia));
            mem_free(ia);
            mem_free(ib);
            free(text);
        }
        tok_free(u);
        CHECK_MSG(same, "%s encodes differently after save and load", tok_names[k]);
    }
}

TEST(eot_and_bytes) {
    tok *t = fx_tok("sp_norm"), *l3 = fx_tok("llama3");
    CHECK(t && l3);
    CHECK(tok_eot_id(t) == tok_token_id(t, "</s>") && tok_eot_id(t) == 2);
    CHECK(tok_eot_id(l3) == tok_token_id(l3, "<|end_of_text|>"));
    size_t n;
    const unsigned char *b = tok_token_bytes(t, tok_token_id(t, "<0x41>"), &n);
    CHECK(b && n == 1 && b[0] == 'A');
    b = tok_token_bytes(t, tok_token_id(t, "\xe2\x96\x81"), &n);
    CHECK(b && n == 1 && b[0] == 0x20);
}

/* tokenizer_config.json's add_bos_token / add_eos_token replace the post-processor. */
TEST(config_add_bos_eos) {
    tok *t;
    CHECK(tok_load(test_path("fixtures/tok2/sp_meta.json"), &t) == SK_OK);
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", test_tmpdir());
    int32_t *ids;
    size_t n;
    CHECK(tok_load_config(t, "/nonexistent/tokenizer_config.json") == SK_OK);
    CHECK(tok_encode_ex(t, "hi", 2, true, &ids, &n) == SK_OK && n >= 2 && ids[0] == 1 && ids[n - 1] != 2);
    mem_free(ids);
    const char *cfg = "{\"add_bos_token\": true, \"add_eos_token\": true, \"bos_token\": \"<s>\", "
                      "\"eos_token\": {\"content\": \"</s>\", \"special\": true}}";
    CHECK(file_write_all(path, cfg, strlen(cfg)) == SK_OK);
    CHECK_MSG(tok_load_config(t, path) == SK_OK, "%s", sk_errmsg());
    CHECK(tok_encode_ex(t, "hi", 2, true, &ids, &n) == SK_OK && n >= 3 && ids[0] == 1 && ids[n - 1] == 2);
    mem_free(ids);
    cfg = "{\"add_bos_token\": false, \"bos_token\": \"<s>\"}";
    CHECK(file_write_all(path, cfg, strlen(cfg)) == SK_OK);
    CHECK(tok_load_config(t, path) == SK_OK);
    CHECK(tok_encode_ex(t, "hi", 2, true, &ids, &n) == SK_OK && n >= 1 && ids[0] != 1 && ids[n - 1] != 2);
    mem_free(ids);
    cfg = "{\"add_bos_token\": true, \"bos_token\": \"<nope>\"}";
    CHECK(file_write_all(path, cfg, strlen(cfg)) == SK_OK);
    CHECK(tok_load_config(t, path) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "tokenizer_config.json") && strstr(sk_errmsg(), "<nope>"));
    tok_free(t);
}

/* ---- chat templates ---------------------------------------------------------------------- */

TEST(chat_matches_transformers) {
    cJSON *doc;
    CHECK_MSG(json_load_file(test_path("fixtures/tok2/chat.json"), &doc) == SK_OK, "%s", sk_errmsg());
    const cJSON *fam;
    int checked = 0, bad = 0;
    cJSON_ArrayForEach(fam, doc) {
        const char *name = cJSON_GetObjectItem(fam, "family")->valuestring;
        const cJSON *bos = cJSON_GetObjectItem(fam, "bos_token"), *eos = cJSON_GetObjectItem(fam, "eos_token");
        chat_template ct, named;
        CHECK_MSG(chat_template_detect(cJSON_GetObjectItem(fam, "chat_template")->valuestring,
                                       cJSON_IsString(bos) ? bos->valuestring : "", eos->valuestring, name, &ct) == SK_OK,
                  "%s", sk_errmsg());
        CHECK(chat_template_named(name, &named) == SK_OK);
        CHECK_MSG(ct.family == named.family, "%s recognized as family %d", name, ct.family);
        chat_template_free(&named);
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(fam, "cases")) {
            const cJSON *ms = cJSON_GetObjectItem(c, "messages"), *m;
            chat_msg msgs[16];
            int n = 0;
            cJSON_ArrayForEach(m, ms) {
                msgs[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
                msgs[n++].content = cJSON_GetObjectItem(m, "content")->valuestring;
            }
            const char *want = cJSON_GetObjectItem(c, "rendered")->valuestring;
            char *got = NULL;
            size_t len;
            sk_status st = chat_render(&ct, msgs, n, cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")), &got, &len);
            if (st != SK_OK || strcmp(got, want)) {
                if (++bad <= 4) printf("  %s: got '%s' (%s)\n  want '%s'\n", name, got ? got : "", st ? sk_errmsg() : "", want);
            }
            mem_free(got);
            checked++;
        }
        chat_template_free(&ct);
    }
    cJSON_Delete(doc);
    CHECK_MSG(!bad, "%d renders differ from transformers", bad);
    CHECK(checked >= 40);
}

TEST(chat_errors_and_files) {
    chat_template ct;
    CHECK(chat_template_named("bogus", &ct) == SK_EARG && strstr(sk_errmsg(), "bogus") && strstr(sk_errmsg(), "llama3"));
    CHECK(chat_template_detect("{{ messages }}", NULL, NULL, "x/tokenizer_config.json", &ct) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "x/tokenizer_config.json"));
    CHECK(chat_template_named("llama2", &ct) == SK_OK);
    chat_msg two_users[] = {{"user", "a"}, {"user", "b"}};
    char *out;
    size_t n;
    CHECK(chat_render(&ct, two_users, 2, true, &out, &n) == SK_EARG && strstr(sk_errmsg(), "alternate"));
    chat_template_free(&ct);
    /* A folder's config: recognized, bos/eos from it; without a chat_template: an error naming it. */
    char path[600], conv[600];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", test_tmpdir());
    const char *cfg = "{\"bos_token\": null, \"eos_token\": \"<|im_end|>\", \"chat_template\": \"{% for message in messages %}"
                      "{{'<|im_start|>' + message['role'] + '\\\\n' + message['content'] + '<|im_end|>\\\\n'}}{% endfor %}\"}";
    CHECK(file_write_all(path, cfg, strlen(cfg)) == SK_OK);
    CHECK_MSG(chat_template_load(path, NULL, &ct) == SK_OK, "%s", sk_errmsg());
    CHECK(ct.family == CHAT_CHATML && !ct.default_system && !strcmp(chat_end_token(&ct), "<|im_end|>"));
    chat_template_free(&ct);
    cfg = "{\"bos_token\": \"<s>\"}";
    CHECK(file_write_all(path, cfg, strlen(cfg)) == SK_OK);
    CHECK(chat_template_load(path, NULL, &ct) == SK_EARG && strstr(sk_errmsg(), path) && strstr(sk_errmsg(), "--chat-template"));
    CHECK(chat_template_load(path, "mistral", &ct) == SK_OK && ct.family == CHAT_MISTRAL && !strcmp(ct.bos, "<s>"));
    chat_template_free(&ct);
    snprintf(conv, sizeof conv, "%s/conv.json", test_tmpdir());
    const char *c = "[{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"U\"}]";
    CHECK(file_write_all(conv, c, strlen(c)) == SK_OK);
    chat_msg *msgs;
    int nm;
    CHECK(chat_messages_load(conv, &msgs, &nm) == SK_OK && nm == 2 && !strcmp(msgs[1].content, "U"));
    mem_free(msgs);
    c = "[{\"role\": \"user\"}]";
    CHECK(file_write_all(conv, c, strlen(c)) == SK_OK);
    CHECK(chat_messages_load(conv, &msgs, &nm) == SK_EFORMAT && strstr(sk_errmsg(), "conv.json") && strstr(sk_errmsg(), "message 0"));
}

/* The fixtures live as long as the program; freed at its end, so a leak checker sees none. */
__attribute__((destructor)) static void fx_free(void) { fx_table_free(&fxt, toks, N_TOKS); }

TEST_MAIN()
