/* Tests of src/tokenizer/: ids against Hugging Face `tokenizers` for every fixture text
 * (tests/fixtures/tok/cases.txt, made by make_tok_fixtures.py), decode and streaming decode
 * against HF's decode, Python's UTF-8 replacement, save/load round trips, training, bad
 * files, out-of-memory paths and encoding speed. */
#include "test.h"
#include "test_tok_fixtures.h"

#include <pthread.h>

#include "base/file.h"
#include "tokenizer/tok.h"

/* ---- fixtures ------------------------------------------------------------------------------ */

static fx_table fxt;

static const char *const tok_names[] = {"gpt2", "prefix", "added", "llama3", "legacy", "noregex"};
#define N_TOKS 6
static tok *toks[N_TOKS];

static bool fx_load(void) { return fx_table_load(&fxt, "fixtures/tok/cases.txt"); }
static tok *fx_tok(const char *name) { return fx_tok_cached("tok", tok_names, toks, N_TOKS, name); }

/* Compares t's ids for text with the expected list; prints the first mismatch. */
static int same_ids(const tok *t, const char *text, size_t len, const int32_t *want, size_t nw, const char *label) {
    int32_t *ids;
    size_t n;
    if (tok_encode(t, text, len, &ids, &n) != SK_OK) {
        printf("  %s: encode failed: %s\n", label, sk_errmsg());
        return 0;
    }
    int ok = n == nw && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    if (!ok) {
        printf("  %s: text %.60s\n", label, text);
        print_ids("got ", ids, n);
        print_ids("want", want, nw);
    }
    mem_free(ids);
    return ok;
}

static int32_t want_buf[8192];

/* ---- encoding and decoding against HF ------------------------------------------------------ */

TEST(encode_matches_hf) {
    CHECK_MSG(fx_load(), "%s", sk_errmsg());
    int checked = 0, bad = 0;
    for (int i = 0; i < fxt.n; i++) {
        fx_line *l = &fxt.lines[i];
        if (strcmp(l->f[0], "encode")) continue;
        tok *t = fx_tok(l->f[1]);
        CHECK_MSG(t, "tokenizer %s", l->f[1]);
        size_t len, nw = parse_ids(l->nf > 3 ? l->f[3] : "", want_buf, 8192);
        CHECK(nw <= 8192);
        char *text = unhex(l->f[2], &len);
        char label[64];
        snprintf(label, sizeof label, "%s line %d", l->f[1], i + 1);
        if (!same_ids(t, text, len, want_buf, nw, label) && ++bad >= 5) { free(text); break; }
        free(text);
        checked++;
    }
    CHECK_MSG(!bad, "%d texts differ from HF", bad);
    CHECK(checked > 300);
}

TEST(decode_matches_hf) {
    CHECK(fx_load());
    int checked = 0;
    for (int i = 0; i < fxt.n; i++) {
        fx_line *l = &fxt.lines[i];
        if (strcmp(l->f[0], "decode")) continue;
        tok *t = fx_tok(l->f[1]);
        CHECK(t);
        size_t n = parse_ids(l->f[2], want_buf, 8192), lf, ls;
        char *full = unhex(l->nf > 3 ? l->f[3] : "", &lf), *skip = unhex(l->nf > 4 ? l->f[4] : "", &ls);
        size_t na, nb;
        char *a = tok_decode_ex(t, want_buf, n, false, &na), *b = tok_decode_ex(t, want_buf, n, true, &nb);
        int ok = a && b && na == lf && nb == ls && !memcmp(a, full, lf) && !memcmp(b, skip, ls);
        if (!ok) printf("  line %d (%s): got '%s' / '%s', want '%s' / '%s'\n", i + 1, l->f[1], a, b, full, skip);
        mem_free(a);
        mem_free(b);
        free(full);
        free(skip);
        CHECK_MSG(ok, "decode of %s", l->f[2]);
        checked++;
    }
    CHECK(checked >= 100);
}

TEST(utf8_replacement_matches_python) {
    CHECK(fx_load());
    int checked = 0;
    for (int i = 0; i < fxt.n; i++) {
        fx_line *l = &fxt.lines[i];
        if (strcmp(l->f[0], "utf8")) continue;
        size_t n, nw, nf;
        char *in = unhex(l->f[1], &n), *want = unhex(l->nf > 2 ? l->f[2] : "", &nw), *fixed;
        CHECK(tok_utf8_fix(in, n, &fixed, &nf) == SK_OK);
        const char *got = fixed ? fixed : in;
        size_t ng = fixed ? nf : n;
        int ok = ng == nw && !memcmp(got, want, nw);
        mem_free(fixed);
        free(in);
        free(want);
        CHECK_MSG(ok, "line %d: %s", i + 1, l->f[1]);
        checked++;
    }
    CHECK(checked > 200);
}

/* decode(encode(x)) == x (after the UTF-8 fix) for the tokenizers without a prefix space or
 * added tokens that strip spaces. */
TEST(decode_round_trips) {
    CHECK(fx_load());
    for (int i = 0; i < fxt.n; i++) {
        fx_line *l = &fxt.lines[i];
        if (strcmp(l->f[0], "encode") || !strcmp(l->f[1], "prefix") || !strcmp(l->f[1], "noregex") ||
            !strcmp(l->f[1], "added"))
            continue;
        tok *t = fx_tok(l->f[1]);
        size_t len, nf, n;
        char *text = unhex(l->f[2], &len), *fixed;
        CHECK(tok_utf8_fix(text, len, &fixed, &nf) == SK_OK);
        int32_t *ids;
        CHECK(tok_encode(t, text, len, &ids, &n) == SK_OK);
        size_t nb;
        char *back = tok_decode_ex(t, ids, n, false, &nb);
        int ok = back && nb == (fixed ? nf : len) && !memcmp(back, fixed ? fixed : text, nb);
        if (!ok) printf("  %s line %d: '%s' -> '%s'\n", l->f[1], i + 1, text, back);
        mem_free(back);
        mem_free(ids);
        mem_free(fixed);
        free(text);
        CHECK(ok);
    }
}

/* Streaming decode, one token at a time, equals the full decode (incomplete UTF-8 held back). */
TEST(stream_equals_full_decode) {
    CHECK(fx_load());
    char *out = NULL, *acc = NULL;
    for (int i = 0; i < fxt.n; i++) {
        fx_line *l = &fxt.lines[i];
        int enc = !strcmp(l->f[0], "encode");
        if (!enc && strcmp(l->f[0], "decode")) continue;
        tok *t = fx_tok(l->f[1]);
        size_t n = 0;
        int32_t *ids = NULL;
        if (enc) {
            size_t len;
            char *text = unhex(l->f[2], &len);
            CHECK(tok_encode(t, text, len, &ids, &n) == SK_OK);
            free(text);
        } else {
            ids = mem_alloc(8192 * sizeof *ids);
            n = parse_ids(l->f[2], ids, 8192);
        }
        size_t cap = tok_stream_cap(t);
        out = realloc(out, cap);
        acc = realloc(acc, (n + 2) * cap);
        size_t k = 0;
        tok_stream s;
        tok_stream_init(&s, t);
        for (size_t j = 0; j < n; j++) k += tok_stream_put(&s, ids[j], acc + k, cap);
        k += tok_stream_flush(&s, acc + k, cap);
        size_t nfull;
        char *full = tok_decode_ex(t, ids, n, false, &nfull);
        int ok = full && k == nfull && !memcmp(acc, full, k);
        if (!ok) printf("  line %d: stream '%.*s' vs full '%s'\n", i + 1, (int)k, acc, full);
        mem_free(full);
        mem_free(ids);
        CHECK(ok);
    }
    /* A 4-byte character split over single-byte tokens: nothing until it is complete. */
    tok *t = fx_tok("gpt2");
    const unsigned char emoji[] = {0xf0, 0x9f, 0xa4, 0x96};
    int32_t byte_ids[4] = {-1, -1, -1, -1};
    for (int32_t id = 0; id < tok_vocab_size(t); id++) {
        size_t n;
        const unsigned char *b = tok_token_bytes(t, id, &n);
        for (int j = 0; j < 4; j++)
            if (b && n == 1 && b[0] == emoji[j]) byte_ids[j] = id;
    }
    tok_stream s;
    tok_stream_init(&s, t);
    out = realloc(out, tok_stream_cap(t));
    for (int j = 0; j < 3; j++) CHECK(byte_ids[j] >= 0 && tok_stream_put(&s, byte_ids[j], out, tok_stream_cap(t)) == 0);
    CHECK(tok_stream_put(&s, byte_ids[3], out, tok_stream_cap(t)) == 4 && !memcmp(out, emoji, 4));
    /* Cut short: the flush writes one U+FFFD for the incomplete sequence, as decode does. */
    tok_stream_put(&s, byte_ids[0], out, tok_stream_cap(t));
    tok_stream_put(&s, byte_ids[1], out, tok_stream_cap(t));
    CHECK(tok_stream_flush(&s, out, tok_stream_cap(t)) == 3 && !strcmp(out, "\xef\xbf\xbd"));
    free(out);
    free(acc);
}

/* ---- save and load ------------------------------------------------------------------------- */

static int same_on_fixtures(const tok *a, const tok *b, const char *name) {
    for (int i = 0; i < fxt.n; i++) {
        fx_line *l = &fxt.lines[i];
        if (strcmp(l->f[0], "encode") || strcmp(l->f[1], name)) continue;
        size_t len, na, nb;
        char *text = unhex(l->f[2], &len);
        int32_t *ia, *ib;
        int ok = tok_encode(a, text, len, &ia, &na) == SK_OK && tok_encode(b, text, len, &ib, &nb) == SK_OK &&
                 na == nb && (na == 0 || !memcmp(ia, ib, na * sizeof *ia));
        if (!ok) printf("  %s line %d differs after save/load\n", name, i + 1);
        mem_free(ia);
        mem_free(ib);
        free(text);
        if (!ok) return 0;
    }
    return 1;
}

/* The Python with Hugging Face `tokenizers`, or NULL (then the HF checks are left out). */
static const char *hf_python(void) {
    if (access("/opt/refenv/bin/python", X_OK) == 0) return "/opt/refenv/bin/python";
    if (system("python3 -c 'import tokenizers' >/dev/null 2>&1") == 0) return "python3";
    return NULL;
}

/* tok_save, tok_load: same ids in skein; the saved files also load in HF with the same ids
 * where HF is installed; a second save is byte-identical. */
TEST(save_load_same_ids) {
    CHECK(fx_load());
    char dir[512];
    snprintf(dir, sizeof dir, "%s/saved", test_tmpdir());
    CHECK(file_mkdirs(dir) == SK_OK);
    for (int k = 0; k < N_TOKS; k++) {
        tok *t = fx_tok(tok_names[k]), *u;
        CHECK(t);
        char p1[700], p2[700];
        snprintf(p1, sizeof p1, "%s/%s.json", dir, tok_names[k]);
        snprintf(p2, sizeof p2, "%s/%s.again.json", test_tmpdir(), tok_names[k]);
        CHECK_MSG(tok_save(t, p1) == SK_OK, "%s", sk_errmsg());
        CHECK_MSG(tok_load(p1, &u) == SK_OK, "%s", sk_errmsg());
        CHECK(tok_vocab_size(u) == tok_vocab_size(t));
        CHECK(tok_eot_id(u) == tok_eot_id(t));
        int same = same_on_fixtures(t, u, tok_names[k]);
        CHECK(tok_save(u, p2) == SK_OK);
        tok_free(u);
        CHECK_MSG(same, "%s", tok_names[k]);
        char *a, *b;
        size_t na, nb;
        CHECK(file_read_all(p1, &a, &na) == SK_OK && file_read_all(p2, &b, &nb) == SK_OK);
        int eq = na == nb && !memcmp(a, b, na);
        mem_free(a);
        mem_free(b);
        CHECK_MSG(eq, "second save of %s differs from the first", tok_names[k]);
    }
    const char *py = hf_python();
    if (py) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "%s %s --saved %s", py, test_path("fixtures/check_trained_tok.py"), dir);
        fflush(stdout);
        CHECK_MSG(system(cmd) == 0, "HF disagrees with the files tok_save wrote (%s)", cmd);
    }
}

TEST(token_lookups) {
    tok *t = fx_tok("added");
    CHECK(t);
    CHECK(tok_eot_id(t) == tok_token_id(t, "<|endoftext|>"));
    CHECK(tok_token_id(t, "<|im_end|>") >= 0 && tok_is_special(t, tok_token_id(t, "<|im_end|>")));
    CHECK(!tok_is_special(t, tok_token_id(t, "hello world")));
    CHECK(tok_token_id(t, "no such token") == -1);
    size_t n;
    const unsigned char *b = tok_token_bytes(t, tok_token_id(t, "Ġx"), &n);
    CHECK(b && n == 2 && !memcmp(b, " x", 2));
    CHECK(!tok_token_bytes(t, -1, &n) && !tok_token_bytes(t, 1 << 20, &n));
    char *s = tok_decode(t, (int32_t[]){-5, 1 << 20}, 2);   /* unknown ids are skipped */
    CHECK(s && !*s);
    mem_free(s);
}

/* ---- training ---------------------------------------------------------------------------------- */

TEST(train_encode_save_load) {
    const char *files[] = {test_path("fixtures/tok/corpus.txt")};
    tok *t, *u;
    CHECK_MSG(tok_train(files, 1, 400, &t) == SK_OK, "%s", sk_errmsg());
    CHECK(tok_vocab_size(t) == 400);
    CHECK(tok_eot_id(t) == 399 && tok_is_special(t, 399));
    char *corpus;
    size_t len;
    CHECK(file_read_all(files[0], &corpus, &len) == SK_OK);
    int32_t *ids, *ids2;
    size_t n, n2;
    CHECK(tok_encode(t, corpus, len, &ids, &n) == SK_OK);
    CHECK_MSG(n < len * 3 / 4, "%zu tokens for %zu bytes: merges do not bite", n, len);
    char *back = tok_decode(t, ids, n);
    CHECK(back && !strcmp(back, corpus));
    mem_free(back);
    char path[512];
    snprintf(path, sizeof path, "%s/trained.json", test_tmpdir());
    CHECK(tok_save(t, path) == SK_OK);
    CHECK_MSG(tok_load(path, &u) == SK_OK, "%s", sk_errmsg());
    CHECK(tok_encode(u, corpus, len, &ids2, &n2) == SK_OK);
    CHECK(n2 == n && !memcmp(ids, ids2, n * sizeof *ids));
    const char *s = "Hello<|endoftext|>world";
    mem_free(ids2);
    CHECK(tok_encode(u, s, strlen(s), &ids2, &n2) == SK_OK);
    int has_eot = 0;
    for (size_t i = 0; i < n2; i++) has_eot |= ids2[i] == 399;
    CHECK(has_eot);
    /* Deterministic: training again gives the same file. */
    tok *v;
    CHECK(tok_train(files, 1, 400, &v) == SK_OK);
    char path2[512];
    snprintf(path2, sizeof path2, "%s/trained2.json", test_tmpdir());
    CHECK(tok_save(v, path2) == SK_OK);
    char *a, *b;
    size_t na, nb;
    CHECK(file_read_all(path, &a, &na) == SK_OK && file_read_all(path2, &b, &nb) == SK_OK);
    CHECK(na == nb && !memcmp(a, b, na));
    mem_free(a);
    mem_free(b);
    mem_free(ids);
    mem_free(ids2);
    mem_free(corpus);
    tok_free(t);
    tok_free(u);
    tok_free(v);
}

TEST(train_bad_args) {
    const char *files[] = {"/nonexistent/corpus.txt"};
    tok *t;
    CHECK(tok_train(files, 1, 400, &t) == SK_EIO);
    CHECK(strstr(sk_errmsg(), "/nonexistent/corpus.txt"));
    const char *ok[] = {test_path("fixtures/tok/corpus.txt")};
    CHECK(tok_train(ok, 1, 100, &t) == SK_EARG);
    CHECK(strstr(sk_errmsg(), "100"));
}

/* ---- bad files ------------------------------------------------------------------------------ */

static sk_status load_text(const char *name, const char *text, tok **t) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    SK_ASSERT(file_write_all(path, text, strlen(text)) == SK_OK);
    return tok_load(path, t);
}

TEST(bad_files_name_the_problem) {
    tok *t = NULL;
    CHECK(tok_load("/nonexistent/tokenizer.json", &t) == SK_EIO);
    CHECK(strstr(sk_errmsg(), "/nonexistent/tokenizer.json"));
    CHECK(load_text("broken.json", "{\"model\": {", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "broken.json") && strstr(sk_errmsg(), "JSON"));
    CHECK(load_text("wp.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}, \"pre_tokenizer\": null}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "wp.json") && strstr(sk_errmsg(), "WordPiece"));
    CHECK(load_text("uni.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "Unigram"));
    CHECK(load_text("nomerges.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}},"
                    "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "nomerges.json") && strstr(sk_errmsg(), "merges"));
    CHECK(load_text("nomodel.json", "{\"added_tokens\": []}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "model"));
    CHECK(load_text("badmerge.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2},"
                    "\"merges\": [\"a c\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "\"c\""));
    CHECK(load_text("badmerge2.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1},"
                    "\"merges\": [[\"a\", \"b\"]]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "merge 1"));
    CHECK(load_text("badmerge3.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0},"
                    "\"merges\": [\"a\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "merge 1"));
    CHECK(load_text("norm.json", "{\"normalizer\": {\"type\": \"BertNormalizer\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {},"
                    "\"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "norm.json") && strstr(sk_errmsg(), "normalizer BertNormalizer"));
    CHECK(load_text("meta.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                    "\"pre_tokenizer\": {\"type\": \"Metaspace\", \"prepend_scheme\": \"sometimes\"}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "Metaspace") && strstr(sk_errmsg(), "sometimes"));
    CHECK(load_text("rob.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                    "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"post_processor\": {\"type\": \"RobertaProcessing\"}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "rob.json") && strstr(sk_errmsg(), "post_processor RobertaProcessing"));
    CHECK(load_text("regex.json", "{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \" +\"}, \"content\": \"_\"},"
                    "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": null}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "Regex"));
    CHECK(load_text("dec.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": null,"
                    "\"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Fuse\"}, {\"type\": \"ByteFallback\"}]}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "decoder") && strstr(sk_errmsg(), "ByteFallback"));
    CHECK(load_text("badid.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"zero\"}, \"merges\": []},"
                    "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "\"a\""));
    CHECK(load_text("badadded.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                    "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"added_tokens\": [{\"content\": \"x\"}]}", &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "added_tokens[0]") && strstr(sk_errmsg(), "\"id\""));
    CHECK(load_text("badre.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                    "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\":"
                    "{\"Regex\": \"(unclosed\"}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\"}]}}",
                    &t) == SK_EFORMAT);
    CHECK(strstr(sk_errmsg(), "badre.json") && strstr(sk_errmsg(), "(unclosed"));
    CHECK(load_text("array.json", "[1, 2]", &t) == SK_EFORMAT);
    /* A minimal valid file loads and encodes (bytes without a token vanish, as in HF). */
    CHECK_MSG(load_text("tiny.json", "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]},"
                        "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}}", &t) == SK_OK, "%s",
              sk_errmsg());
    int32_t *ids;
    size_t n;
    CHECK(tok_encode(t, "abxab", 5, &ids, &n) == SK_OK);
    CHECK(n == 2 && ids[0] == 2 && ids[1] == 2);
    mem_free(ids);
    tok_free(t);
}

/* ---- robustness and speed --------------------------------------------------------------- */

TEST(long_and_odd_inputs) {
    tok *t = fx_tok("gpt2");
    CHECK(t);
    size_t big = 1 << 20;
    char *s = malloc(big + 1);
    const char fill[] = {' ', '=', 'a', '\n'};
    for (int k = 0; k < 4; k++) {
        memset(s, fill[k], big);
        s[big] = 0;
        int32_t *ids;
        size_t n;
        CHECK_MSG(tok_encode(t, s, big, &ids, &n) == SK_OK, "%s", sk_errmsg());
        char *back = tok_decode(t, ids, n);
        CHECK(back && strlen(back) == big && !memcmp(back, s, big));
        mem_free(back);
        mem_free(ids);
    }
    for (size_t i = 0; i < big; i++) s[i] = (char)(i * 2654435761u >> 13);   /* arbitrary bytes */
    int32_t *ids;
    size_t n;
    CHECK(tok_encode(t, s, big, &ids, &n) == SK_OK && n > 0);
    mem_free(ids);
    free(s);
}

TEST(out_of_memory_is_a_status) {
    /* Every allocation of a load and an encode made to fail in turn: a status, never a crash. */
    const char *text = "Hello <|im_start|> wörld 👍🏽 hello world cat";
    int loads = 0;
    for (long k = 1; k < 100000; k++) {
        tok *t = NULL;
        mem_fail_after(k);
        sk_status st = tok_load(test_path("fixtures/tok/added.json"), &t);
        int32_t *ids = NULL;
        size_t n;
        if (st == SK_OK) st = tok_encode(t, text, strlen(text), &ids, &n);
        mem_fail_after(0);
        CHECK_MSG(st == SK_OK || st == SK_ENOMEM || st == SK_EIO, "allocation %ld: %s", k, sk_errmsg());
        mem_free(ids);
        tok_free(t);
        loads++;
        if (st == SK_OK) break;
    }
    CHECK(loads > 10);
}

TEST(encode_speed) {
    tok *t = fx_tok("gpt2");
    char *corpus;
    size_t len;
    CHECK(file_read_all(test_path("fixtures/tok/corpus.txt"), &corpus, &len) == SK_OK);
    size_t reps = getenv("SKEIN_QUICK") ? 50 : 1000, total = reps * len;
    char *big = malloc(total);
    /* Vary the copies a little so that the word cache does not see only repeats. */
    for (size_t r = 0; r < reps; r++) {
        memcpy(big + r * len, corpus, len);
        for (size_t i = r % 7; i < len; i += 97) if (big[r * len + i] >= 'a' && big[r * len + i] <= 'y') big[r * len + i]++;
    }
    double t0 = time_now();
    int32_t *ids;
    size_t n;
    CHECK(tok_encode(t, big, total, &ids, &n) == SK_OK);
    double dt = time_now() - t0;
    printf("  encode: %.1f MB in %.3f s = %.1f MB/s (%zu tokens)\n", total / 1e6, dt, total / 1e6 / dt, n);
    mem_free(ids);
    free(big);
    mem_free(corpus);
    if (!getenv("SKEIN_QUICK")) CHECK_MSG(total / dt > 1e6, "%.2f MB/s", total / 1e6 / dt);
}

/* Threads sharing one tok (its word cache is shared) get the same ids as one thread. */
static void *encode_all(void *arg) {
    const tok *t = arg;
    for (int i = 0; i < fxt.n; i++) {
        fx_line *l = &fxt.lines[i];
        if (strcmp(l->f[0], "encode") || strcmp(l->f[1], "added")) continue;
        size_t len, nw = parse_ids(l->nf > 3 ? l->f[3] : "", NULL, 0), n;
        int32_t *want = malloc((nw + 1) * sizeof *want), *ids;
        parse_ids(l->nf > 3 ? l->f[3] : "", want, nw);
        char *text = unhex(l->f[2], &len);
        int ok = 0;
        if (tok_encode(t, text, len, &ids, &n) == SK_OK) {
            ok = n == nw && (!n || !memcmp(ids, want, n * sizeof *ids));
            mem_free(ids);
        }
        free(text);
        free(want);
        if (!ok) return (void *)1;
    }
    return NULL;
}

TEST(threads_share_a_tok) {
    CHECK(fx_load());
    tok *t;
    CHECK(tok_load(test_path("fixtures/tok/added.json"), &t) == SK_OK);   /* a cold cache */
    pthread_t th[4];
    for (int i = 0; i < 4; i++) CHECK(pthread_create(&th[i], NULL, encode_all, t) == 0);
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        bad += r != NULL;
    }
    tok_free(t);
    CHECK_MSG(!bad, "%d threads got other ids", bad);
}

/* The fixtures live as long as the program; freed at its end, so a leak checker sees none. */
__attribute__((destructor)) static void fx_free(void) { fx_table_free(&fxt, toks, N_TOKS); }

TEST_MAIN()
