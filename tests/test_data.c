/* Tests of data/: shard round trips at both widths and every header error, llm.c .bin
 * files, the loader's epochs (coverage, shuffling, random access, resume, shifted targets,
 * shard boundaries), and preparation with a byte-level encoder (byte b -> id b, EOT = 256)
 * so that the tokenizer is not needed. */
#include "test.h"

#include "base/file.h"
#include "base/json.h"
#include "data/data.h"

#define BYTE_EOT 256
#define BYTE_VOCAB 257

/* A path under the scratch folder; each call gets its own buffer (the last 256 stay valid). */
static const char *tmp_file(const char *name) {
    static char buf[256][1024];
    static int k;
    char *out = buf[k++ & 255];
    snprintf(out, 1024, "%s/%s", test_tmpdir(), name);
    return out;
}

static int32_t *iota_tokens(size_t n, int vocab) {
    int32_t *t = mem_alloc(n * sizeof *t);
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)(i % (size_t)vocab);
    return t;
}

/* Writes raw bytes to a file (for hand-made broken headers). */
static void write_raw(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static sk_status byte_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n) {
    (void)ctx;
    *ids = mem_alloc((len ? len : 1) * sizeof **ids);
    if (!*ids) return SK_ENOMEM;
    for (size_t i = 0; i < len; i++) (*ids)[i] = (unsigned char)text[i];
    *n = len;
    return SK_OK;
}

static data_prepare_cfg byte_cfg(double val_fraction) {
    data_prepare_cfg c = {.encode = byte_encode, .eot_id = BYTE_EOT, .vocab_size = BYTE_VOCAB,
                          .val_fraction = val_fraction, .quiet = true};
    return c;
}

/* Reads a split's whole stream (all shards in dataset.json order) into a new int array. */
static int *read_split(const char *dir, const char *split, size_t *n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/dataset.json", dir);
    cJSON *root = NULL;
    if (json_load_file(path, &root) != SK_OK) return NULL;
    const cJSON *arr = cJSON_GetObjectItem(cJSON_GetObjectItem(root, split), "shards");
    int *out = NULL;
    *n = 0;
    for (int i = 0; i < cJSON_GetArraySize(arr); i++) {
        snprintf(path, sizeof path, "%s/%s", dir, cJSON_GetArrayItem(arr, i)->valuestring);
        data_shard s;
        if (data_shard_open(path, &s) != SK_OK) { mem_free(out); out = NULL; break; }
        out = mem_realloc(out, (*n + s.n + 1) * sizeof *out);
        for (size_t k = 0; k < s.n; k++) out[(*n)++] = data_shard_token(&s, k);
        data_shard_close(&s);
    }
    cJSON_Delete(root);
    return out;
}

TEST(shard_round_trip_both_widths) {
    int vocabs[] = {1000, 65536, 100000};
    for (int v = 0; v < 3; v++) {
        size_t n = 70001;
        int32_t *t = iota_tokens(n, vocabs[v]);
        const char *p = tmp_file("rt.bin");
        CHECK(data_shard_write(p, t, n, vocabs[v]) == SK_OK);
        CHECK(!file_exists(tmp_file("rt.bin.tmp")));
        data_shard s;
        CHECK_MSG(data_shard_open(p, &s) == SK_OK, "%s", sk_errmsg());
        CHECK(s.n == n && s.vocab_size == vocabs[v]);
        CHECK(s.width == (vocabs[v] <= 65536 ? 2 : 4));
        CHECK(s.map.size == DATA_HEADER_BYTES + n * (size_t)s.width);
        for (size_t i = 0; i < n; i++) CHECK_MSG(data_shard_token(&s, i) == t[i], "token %zu", i);
        data_shard_close(&s);
        mem_free(t);
    }
    /* forced 4-byte tokens for a small vocabulary, and an empty shard */
    int32_t small[3] = {0, 5, 9};
    CHECK(data_shard_write_width(tmp_file("w4.bin"), small, 3, 10, 4) == SK_OK);
    data_shard s;
    CHECK(data_shard_open(tmp_file("w4.bin"), &s) == SK_OK);
    CHECK(s.width == 4 && data_shard_token(&s, 1) == 5 && data_shard_token(&s, 2) == 9);
    data_shard_close(&s);
    CHECK(data_shard_write(tmp_file("empty.bin"), NULL, 0, 10) == SK_OK);
    CHECK(data_shard_open(tmp_file("empty.bin"), &s) == SK_OK && s.n == 0);
    data_shard_close(&s);
}

TEST(shard_write_rejects_what_does_not_fit) {
    int32_t t[4] = {1, 2, 70000, 3};
    CHECK(data_shard_write_width(tmp_file("x.bin"), t, 4, 70001, 2) == SK_EARG);
    CHECK_MSG(strstr(sk_errmsg(), "70001") && strstr(sk_errmsg(), "2-byte"), "%s", sk_errmsg());
    CHECK(data_shard_write(tmp_file("x.bin"), t, 4, 1000) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "token 2 is 70000"), "%s", sk_errmsg());
    int32_t neg[2] = {0, -1};
    CHECK(data_shard_write(tmp_file("x.bin"), neg, 2, 1000) == SK_EFORMAT);
    CHECK(data_shard_write(tmp_file("x.bin"), t, 2, 0) == SK_EARG);
    CHECK(data_shard_write_width(tmp_file("x.bin"), t, 2, 10, 3) == SK_EARG);
    CHECK(!file_exists(tmp_file("x.bin")) && !file_exists(tmp_file("x.bin.tmp")));
}

TEST(shard_header_errors_name_the_problem) {
    int32_t t[100];
    for (int i = 0; i < 100; i++) t[i] = i;
    const char *good = tmp_file("good.bin");
    CHECK(data_shard_write(good, t, 100, 1000) == SK_OK);
    char *bytes;
    size_t size;
    CHECK(file_read_all(good, &bytes, &size) == SK_OK);
    int32_t h[DATA_HEADER_INTS];
    data_shard s;
    const char *bad = tmp_file("bad.bin");

    memcpy(h, bytes, sizeof h);
    h[0] = 12345;
    memcpy(bytes, h, sizeof h);
    write_raw(bad, bytes, size);
    CHECK(data_shard_open(bad, &s) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "wrong magic number") && strstr(sk_errmsg(), bad), "%s", sk_errmsg());

    h[0] = DATA_MAGIC;
    h[1] = 7;
    memcpy(bytes, h, sizeof h);
    write_raw(bad, bytes, size);
    CHECK(data_shard_open(bad, &s) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "version 7") && strstr(sk_errmsg(), bad), "%s", sk_errmsg());

    h[1] = DATA_VERSION;
    h[2] = 3;
    memcpy(bytes, h, sizeof h);
    write_raw(bad, bytes, size);
    CHECK(data_shard_open(bad, &s) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "width 3"), "%s", sk_errmsg());

    h[2] = 2;
    h[3] = 70000;                         /* 2-byte tokens claiming a vocabulary > 65536 */
    memcpy(bytes, h, sizeof h);
    write_raw(bad, bytes, size);
    CHECK(data_shard_open(bad, &s) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "70000") && strstr(sk_errmsg(), "width 2"), "%s", sk_errmsg());

    h[3] = 1000;
    memcpy(bytes, h, sizeof h);
    write_raw(bad, bytes, size - 20);     /* 10 tokens short */
    CHECK(data_shard_open(bad, &s) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "truncated: header says 100 tokens, file holds 90"), "%s", sk_errmsg());

    write_raw(bad, bytes, 100);           /* not even a header */
    CHECK(data_shard_open(bad, &s) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "truncated") && strstr(sk_errmsg(), bad), "%s", sk_errmsg());

    char *longer = mem_alloc(size + 2);
    memcpy(longer, bytes, size);
    longer[size] = longer[size + 1] = 0;
    write_raw(bad, longer, size + 2);
    CHECK(data_shard_open(bad, &s) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "2 bytes after"), "%s", sk_errmsg());
    mem_free(longer);

    CHECK(data_shard_open(tmp_file("does-not-exist.bin"), &s) == SK_EIO);
    CHECK(strstr(sk_errmsg(), "does-not-exist.bin"));
    mem_free(bytes);
}

/* Writes an llm.c token file with tokens 0..n-1 (mod 50257). */
static void write_llmc(const char *path, size_t n, int version) {
    size_t size = DATA_HEADER_BYTES + 2 * n;
    char *buf = mem_calloc(size);
    int32_t h[3] = {DATA_LLMC_MAGIC, version, (int32_t)n};
    memcpy(buf, h, sizeof h);
    uint16_t *t = (uint16_t *)(buf + DATA_HEADER_BYTES);
    for (size_t i = 0; i < n; i++) t[i] = (uint16_t)(i % 50257);
    write_raw(path, buf, size);
    mem_free(buf);
}

TEST(llmc_bin_files_read) {
    const char *p = tmp_file("tiny_shakespeare_val.bin");
    write_llmc(p, 60000, 1);
    data_shard s;
    CHECK_MSG(data_shard_open(p, &s) == SK_OK, "%s", sk_errmsg());
    CHECK(s.n == 60000 && s.width == 2 && s.vocab_size == 0);
    CHECK(data_shard_token(&s, 51000) == 51000 - 50257);
    data_shard_close(&s);

    data_loader *dl;
    CHECK_MSG(data_loader_open(p, "ignored", 64, 1, &dl) == SK_OK, "%s", sk_errmsg());
    CHECK(data_loader_num_tokens(dl) == 60000 && data_loader_num_samples(dl) == 59999 / 64);
    int in[64], tg[64];
    data_loader_sample(dl, 0, 3, in, tg);
    size_t off = data_loader_sample_offset(dl, 0, 3);
    CHECK(in[0] == (int)(off % 50257) && tg[63] == (int)((off + 64) % 50257));
    data_loader_free(dl);

    /* a folder of llm.c files without dataset.json: the split is found by name */
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/llmc", test_tmpdir());
    CHECK(file_mkdirs(dir) == SK_OK);
    char f[1100];
    snprintf(f, sizeof f, "%s/fineweb_train_000001.bin", dir);
    write_llmc(f, 1000, 1);
    snprintf(f, sizeof f, "%s/fineweb_train_000002.bin", dir);
    write_llmc(f, 1000, 1);
    snprintf(f, sizeof f, "%s/fineweb_val_000000.bin", dir);
    write_llmc(f, 500, 1);
    CHECK(data_loader_open(dir, "train", 10, 1, &dl) == SK_OK);
    CHECK(data_loader_num_tokens(dl) == 2000);
    data_loader_free(dl);
    CHECK(data_loader_open(dir, "val", 10, 1, &dl) == SK_OK);
    CHECK(data_loader_num_tokens(dl) == 500);
    data_loader_free(dl);

    write_llmc(p, 10, 2);
    CHECK(data_shard_open(p, &s) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "version 2"), "%s", sk_errmsg());
}

/* A folder with three train shards of 300, 1 and 250 tokens whose values are their stream
 * positions (vocabulary 65536), no dataset.json. */
static const char *make_stream_dir(void) {
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/stream", test_tmpdir());
    file_mkdirs(dir);
    size_t sizes[3] = {300, 1, 250}, pos = 0;
    for (int i = 0; i < 3; i++) {
        int32_t *t = mem_alloc(sizes[i] * sizeof *t);
        for (size_t k = 0; k < sizes[i]; k++) t[k] = (int32_t)pos++;
        char p[1100];
        snprintf(p, sizeof p, "%s/train_%06d.bin", dir, i);
        data_shard_write(p, t, sizes[i], 65536);
        mem_free(t);
    }
    return dir;
}

TEST(loader_epoch_uses_every_sample_once) {
    const char *dir = make_stream_dir();
    int T = 8;
    data_loader *dl;
    CHECK_MSG(data_loader_open(dir, "train", T, 42, &dl) == SK_OK, "%s", sk_errmsg());
    size_t N = data_loader_num_tokens(dl), S = data_loader_num_samples(dl);
    CHECK(N == 551 && S == 550 / 8);
    char *seen = mem_calloc(S);
    int in[8], tg[8];
    for (size_t i = 0; i < S; i++) {
        size_t off = data_loader_sample_offset(dl, 0, i);
        CHECK(off % (size_t)T == 0 && off / T < S);
        CHECK_MSG(!seen[off / T], "sample %zu twice", off / T);
        seen[off / T] = 1;
        data_loader_sample(dl, 0, i, in, tg);        /* crosses the 300 and 301 boundaries */
        for (int t = 0; t < T; t++) {
            CHECK(in[t] == (int)(off + (size_t)t));
            CHECK(tg[t] == (int)(off + (size_t)t + 1));
        }
    }
    mem_free(seen);
    data_loader_free(dl);
}

TEST(loader_orders_by_seed_and_epoch) {
    const char *dir = make_stream_dir();
    data_loader *a, *b, *c;
    CHECK(data_loader_open(dir, "train", 4, 7, &a) == SK_OK);
    CHECK(data_loader_open(dir, "train", 4, 7, &b) == SK_OK);
    CHECK(data_loader_open(dir, "train", 4, 8, &c) == SK_OK);
    size_t S = data_loader_num_samples(a);
    int same_epoch01 = 0, same_seed78 = 0, identity = 0;
    for (size_t i = 0; i < S; i++) {
        size_t x = data_loader_sample_offset(a, 0, i);
        CHECK(x == data_loader_sample_offset(b, 0, i));
        same_epoch01 += x == data_loader_sample_offset(a, 1, i);
        same_seed78 += x == data_loader_sample_offset(c, 0, i);
        identity += x == i * 4;
    }
    CHECK_MSG(same_epoch01 < (int)S / 4, "epochs 0 and 1 agree on %d of %zu", same_epoch01, S);
    CHECK_MSG(same_seed78 < (int)S / 4, "seeds 7 and 8 agree on %d of %zu", same_seed78, S);
    CHECK_MSG(identity < (int)S / 4, "not shuffled: %d of %zu in place", identity, S);
    /* epochs far apart, then back: the cache recomputes the same order */
    size_t first = data_loader_sample_offset(a, 0, 5);
    data_loader_sample_offset(a, 9, 0);
    data_loader_sample_offset(a, 3, 0);
    CHECK(data_loader_sample_offset(a, 0, 5) == first);
    data_loader_free(a);
    data_loader_free(b);
    data_loader_free(c);
}

TEST(loader_next_equals_random_access_and_resumes) {
    const char *dir = make_stream_dir();
    int T = 16, B = 5;
    data_loader *dl, *ra;
    CHECK(data_loader_open(dir, "train", T, 3, &dl) == SK_OK);
    CHECK(data_loader_open(dir, "train", T, 3, &ra) == SK_OK);
    size_t S = data_loader_num_samples(dl);         /* 34: batches of 5 cross epochs */
    int in[5 * 16], tg[5 * 16], in2[16], tg2[16];
    uint64_t e = 0;
    size_t idx = 0;
    for (int step = 0; step < 20; step++) {
        data_loader_next(dl, B, in, tg);
        for (int b = 0; b < B; b++) {
            data_loader_sample(ra, e, idx, in2, tg2);
            CHECK(!memcmp(in + b * T, in2, sizeof in2) && !memcmp(tg + b * T, tg2, sizeof tg2));
            if (++idx == S) { idx = 0; e++; }
        }
    }
    uint64_t pe;
    size_t pi;
    data_loader_get_pos(dl, &pe, &pi);
    CHECK(pe == e && pi == idx && e >= 2);

    /* resume: a fresh loader set to the saved position yields the same batches */
    int want[3][5 * 16];
    for (int k = 0; k < 3; k++) data_loader_next(dl, B, want[k], tg);
    data_loader *resumed;
    CHECK(data_loader_open(dir, "train", T, 3, &resumed) == SK_OK);
    CHECK(data_loader_set_pos(resumed, pe, pi) == SK_OK);
    for (int k = 0; k < 3; k++) {
        data_loader_next(resumed, B, in, tg);
        CHECK_MSG(!memcmp(in, want[k], sizeof in), "batch %d after resume differs", k);
    }
    CHECK(data_loader_set_pos(resumed, 0, S) == SK_EARG);
    CHECK(strstr(sk_errmsg(), "beyond"));
    data_loader_free(resumed);
    data_loader_free(dl);
    data_loader_free(ra);
}

TEST(loader_errors) {
    const char *dir = make_stream_dir();
    data_loader *dl = NULL;
    CHECK(data_loader_open(dir, "val", 8, 1, &dl) == SK_EFORMAT && !dl);
    CHECK_MSG(strstr(sk_errmsg(), "no val shards"), "%s", sk_errmsg());
    CHECK(data_loader_open(dir, "train", 551, 1, &dl) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "dataset has 551 tokens, fewer than T+1 = 552"), "%s", sk_errmsg());
    CHECK(data_loader_open(dir, "train", 550, 1, &dl) == SK_OK);
    CHECK(data_loader_num_samples(dl) == 1);
    data_loader_free(dl);
    CHECK(data_loader_open(tmp_file("nothing-here"), "train", 8, 1, &dl) == SK_EIO);
    CHECK(strstr(sk_errmsg(), "nothing-here"));
    CHECK(data_loader_open(dir, "train", 0, 1, &dl) == SK_EARG);
}

/* Writes the test inputs: two text files and a JSONL file of three documents. */
static void write_inputs(void) {
    write_raw(tmp_file("a.txt"), "first doc", 9);
    write_raw(tmp_file("b.txt"), "second", 6);
    const char *jl = "{\"text\": \"j one\"}\n\n{\"text\": \"j two\", \"id\": 2}\r\n{\"text\": \"j3\"}";
    write_raw(tmp_file("c.jsonl"), jl, strlen(jl));
}

static bool contains_doc(const int *s, size_t n, const char *doc) {
    size_t k = strlen(doc);
    for (size_t i = 0; i + k + 1 <= n; i++) {
        if (s[i] != BYTE_EOT) continue;
        size_t j = 0;
        while (j < k && s[i + 1 + j] == (unsigned char)doc[j]) j++;
        if (j == k && (i + 1 + k == n || s[i + 1 + k] == BYTE_EOT)) return true;
    }
    return false;
}

TEST(prepare_splits_documents_with_eot) {
    log_set_quiet(true);
    write_inputs();
    const char *in[3] = {tmp_file("a.txt"), tmp_file("b.txt"), tmp_file("c.jsonl")};
    const char *out = tmp_file("prep");
    data_prepare_cfg cfg = byte_cfg(0.4);
    CHECK_MSG(data_prepare_encoded(&cfg, in, 3, out) == SK_OK, "%s", sk_errmsg());
    size_t nt, nv;
    int *tr = read_split(out, "train", &nt), *va = read_split(out, "val", &nv);
    CHECK(tr && va && nv > 0);
    /* 5 documents; val takes i with floor((i+1)*0.4) > floor(i*0.4): documents 2 and 4 */
    CHECK(tr[0] == BYTE_EOT && va[0] == BYTE_EOT);
    CHECK(contains_doc(tr, nt, "first doc") && contains_doc(tr, nt, "second") && contains_doc(tr, nt, "j two"));
    CHECK(contains_doc(va, nv, "j one") && contains_doc(va, nv, "j3"));
    CHECK(nt == 3 + 9 + 6 + 5 && nv == 2 + 5 + 2);
    mem_free(tr);
    mem_free(va);

    char path[1100];
    snprintf(path, sizeof path, "%s/dataset.json", out);
    cJSON *root;
    CHECK(json_load_file(path, &root) == SK_OK);
    long v = 0, docs = 0, eot = 0, ttok = 0, vdocs = 0;
    CHECK(json_get_int(root, "vocab_size", true, path, &v) == SK_OK && v == BYTE_VOCAB);
    CHECK(json_get_int(root, "eot_id", true, path, &eot) == SK_OK && eot == BYTE_EOT);
    CHECK(json_get_int(root, "documents", true, path, &docs) == SK_OK && docs == 5);
    CHECK(json_get_int(cJSON_GetObjectItem(root, "train"), "tokens", true, path, &ttok) == SK_OK && ttok == 23);
    CHECK(json_get_int(cJSON_GetObjectItem(root, "val"), "documents", true, path, &vdocs) == SK_OK && vdocs == 2);
    cJSON_Delete(root);

    data_loader *dl;
    CHECK_MSG(data_loader_open(out, "train", 4, 1, &dl) == SK_OK, "%s", sk_errmsg());
    CHECK(data_loader_num_tokens(dl) == 23 && data_loader_vocab_size(dl) == BYTE_VOCAB);
    data_loader_free(dl);
}

TEST(prepare_val_gets_at_least_one_document) {
    write_inputs();
    const char *in[2] = {tmp_file("a.txt"), tmp_file("b.txt")};
    const char *out = tmp_file("prep2");
    data_prepare_cfg cfg = byte_cfg(0.01);
    CHECK(data_prepare_encoded(&cfg, in, 2, out) == SK_OK);
    size_t nt, nv;
    int *tr = read_split(out, "train", &nt), *va = read_split(out, "val", &nv);
    CHECK(tr && va);
    CHECK(contains_doc(tr, nt, "first doc") && nt == 10);
    CHECK(contains_doc(va, nv, "second") && nv == 7);
    mem_free(tr);
    mem_free(va);
    /* val_fraction 0: no val split, and the loader says so */
    cfg.val_fraction = 0;
    CHECK(data_prepare_encoded(&cfg, in, 2, out) == SK_OK);
    data_loader *dl;
    CHECK(data_loader_open(out, "val", 4, 1, &dl) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "no val shards"), "%s", sk_errmsg());
    cfg.val_fraction = 1;
    CHECK(data_prepare_encoded(&cfg, in, 2, out) == SK_EARG);
}

TEST(prepare_jsonl_errors_name_file_and_line) {
    const char *bad = "{\"text\": \"ok\"}\n{\"text\": \"ok too\"}\n{\"text\": \"broken\n";
    write_raw(tmp_file("bad.jsonl"), bad, strlen(bad));
    const char *in[1] = {tmp_file("bad.jsonl")};
    data_prepare_cfg cfg = byte_cfg(0.1);
    CHECK(data_prepare_encoded(&cfg, in, 1, tmp_file("prep3")) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "bad.jsonl:3") && strstr(sk_errmsg(), "JSON"), "%s", sk_errmsg());
    CHECK(!file_exists(tmp_file("prep3/dataset.json")));

    const char *notext = "{\"text\": \"ok\"}\n{\"body\": \"no text here\"}\n";
    write_raw(tmp_file("notext.jsonl"), notext, strlen(notext));
    in[0] = tmp_file("notext.jsonl");
    CHECK(data_prepare_encoded(&cfg, in, 1, tmp_file("prep3")) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "notext.jsonl:2") && strstr(sk_errmsg(), "\"text\""), "%s", sk_errmsg());

    const char *num = "{\"text\": 12}\n";
    write_raw(tmp_file("num.jsonl"), num, strlen(num));
    in[0] = tmp_file("num.jsonl");
    CHECK(data_prepare_encoded(&cfg, in, 1, tmp_file("prep3")) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "num.jsonl:1"), "%s", sk_errmsg());

    in[0] = tmp_file("missing.txt");
    CHECK(data_prepare_encoded(&cfg, in, 1, tmp_file("prep3")) == SK_EIO);
    CHECK(strstr(sk_errmsg(), "missing.txt"));

    write_raw(tmp_file("blank.jsonl"), "\n \n", 3);
    in[0] = tmp_file("blank.jsonl");
    CHECK(data_prepare_encoded(&cfg, in, 1, tmp_file("prep3")) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "no documents"), "%s", sk_errmsg());

    cfg.eot_id = -1;
    in[0] = tmp_file("a.txt");
    write_inputs();
    CHECK(data_prepare_encoded(&cfg, in, 1, tmp_file("prep3")) == SK_EARG);
}

/* Many documents, small shards: the shard cap holds, and one thread and two give the same
 * bytes. */
TEST(prepare_shards_and_threads_are_deterministic) {
    const char *jl = tmp_file("many.jsonl");
    FILE *f = fopen(jl, "w");
    for (int i = 0; i < 3000; i++) fprintf(f, "{\"text\": \"document number %d %s\"}\n", i, i % 7 ? "" : "longer");
    fclose(f);
    const char *in[2] = {jl, tmp_file("a.txt")};
    write_inputs();
    data_prepare_cfg cfg = byte_cfg(0.05);
    cfg.shard_tokens = 10000;
    cfg.threads = 1;
    CHECK(data_prepare_encoded(&cfg, in, 2, tmp_file("p1")) == SK_OK);
    cfg.threads = 2;
    CHECK(data_prepare_encoded(&cfg, in, 2, tmp_file("p2")) == SK_OK);
    size_t n1, n2, v1, v2;
    int *a = read_split(tmp_file("p1"), "train", &n1), *b = read_split(tmp_file("p2"), "train", &n2);
    int *va = read_split(tmp_file("p1"), "val", &v1), *vb = read_split(tmp_file("p2"), "val", &v2);
    CHECK(a && b && va && vb && n1 == n2 && v1 == v2);
    CHECK(!memcmp(a, b, n1 * sizeof *a) && !memcmp(va, vb, v1 * sizeof *va));
    CHECK_MSG(n1 > 60000, "%zu train tokens", n1);
    mem_free(a);
    mem_free(b);
    mem_free(va);
    mem_free(vb);
    data_shard s;
    CHECK(data_shard_open(tmp_file("p1/train_000000.bin"), &s) == SK_OK && s.n == 10000);
    data_shard_close(&s);
    CHECK(file_exists(tmp_file("p1/train_000006.bin")));
    data_loader *dl;
    CHECK(data_loader_open(tmp_file("p1"), "train", 64, 9, &dl) == SK_OK);
    CHECK(data_loader_num_tokens(dl) == n1);
    data_loader_free(dl);
    CHECK(data_loader_open(tmp_file("p1"), "val", 64, 9, &dl) == SK_OK);
    CHECK(data_loader_num_tokens(dl) == v1);
    data_loader_free(dl);
}

/* Every allocation of loader_open and prepare may fail: the error comes back as a status,
 * nothing crashes (ASan checks nothing leaks or is touched after free). */
TEST(out_of_memory_paths_return_errors) {
    const char *dir = make_stream_dir();
    write_inputs();
    const char *in[3] = {tmp_file("a.txt"), tmp_file("b.txt"), tmp_file("c.jsonl")};
    data_prepare_cfg cfg = byte_cfg(0.4);
    cfg.threads = 1;
    int ok_loader = 0, ok_prep = 0;
    const char *out = tmp_file("prep_oom");
    for (long n = 1; n < 60; n++) {
        data_loader *dl = NULL;
        mem_fail_after(n);
        sk_status st = data_loader_open(dir, "train", 8, 1, &dl);
        mem_fail_after(0);
        CHECK_MSG(st == SK_OK || st == SK_ENOMEM, "allocation %ld: %s", n, sk_errmsg());
        CHECK(st == SK_OK || dl == NULL);
        ok_loader += st == SK_OK;
        data_loader_free(dl);
        mem_fail_after(n);
        st = data_prepare_encoded(&cfg, in, 3, out);
        mem_fail_after(0);
        CHECK_MSG(st == SK_OK || st == SK_ENOMEM, "allocation %ld: %s", n, sk_errmsg());
        ok_prep += st == SK_OK;
    }
    CHECK(ok_loader > 0 && ok_prep > 0);   /* the loop went past the last allocation */
}

TEST_MAIN()
