/* Tests of model I/O: safetensors (round trips, every kind of bad header, a fuzz loop),
 * config.json (missing and absurd fields, bos/eos outside the vocabulary), model_load and
 * model_save (round trip bit-exact, folders written by transformers: prefixed f32, bare-name
 * f16 shards with mask buffers, bf16 with a stored tied head), and, when SKEIN_HF_PYTHON
 * names a Python with transformers (tests/cli_io.sh sets it), transformers loading a folder
 * skein wrote.
 *
 * The models live on a test-only host backend (memory ops only), so these tests do not need
 * the CPU backend or the GPT-2 math. */
#include "test.h"
#include "test_st.h"

#include "base/file.h"
#include "base/json.h"
#include "base/rng.h"
#include "model/model.h"
#include "model/safetensors.h"

/* ---- the CPU backend (only its memory ops are used here) ---- */

static backend *host(void) {
    static backend *be;
    if (!be) be = backend_cpu_create();
    return be;
}

/* ---- helpers ---- */

static const char *tmp_path(const char *name) {
    static char buf[8][1024];
    static int k;
    char *out = buf[k++ & 7];
    snprintf(out, 1024, "%s/%s", test_tmpdir(), name);
    return out;
}

static int write_bytes(const char *path, const void *data, size_t n) {
    return file_write_all(path, data, n) == SK_OK;
}

/* Writes a safetensors file with the given header JSON (padded) and data bytes. */
static int write_raw_st(const char *path, const char *json, const void *data, size_t data_len) {
    size_t jl = strlen(json), padded = (jl + 7) / 8 * 8;
    size_t n = 8 + padded + data_len;
    unsigned char *buf = malloc(n);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, json, jl);
    memset(buf + 8 + jl, ' ', padded - jl);
    if (data_len) memcpy(buf + 8 + padded, data, data_len);
    int ok = write_bytes(path, buf, n);
    free(buf);
    return ok;
}

static int copy_file(const char *from, const char *to) {
    char *data;
    size_t n;
    if (file_read_all(from, &data, &n) != SK_OK) return 0;
    int ok = write_bytes(to, data, n);
    mem_free(data);
    return ok;
}

/* A folder `name` under the scratch dir holding config.json from the f32 fixture. */
static const char *folder_with_config(const char *name) {
    const char *dir = tmp_path(name);
    file_remove_tree(dir);
    file_mkdirs(dir);
    /* the fixture's shape, with ids inside the vocabulary (no warnings) */
    const char *json = "{\"model_type\":\"gpt2\",\"architectures\":[\"GPT2LMHeadModel\"],\"vocab_size\":101,"
                       "\"n_positions\":64,\"n_layer\":2,\"n_head\":2,\"n_embd\":32,\"n_inner\":null,"
                       "\"bos_token_id\":0,\"eos_token_id\":100}";
    char to[1024];
    write_bytes(file_join(to, sizeof to, dir, "config.json"), json, strlen(json));
    return dir;
}

static const char *folder_with_text_config(const char *name, const char *json) {
    const char *dir = tmp_path(name);
    file_remove_tree(dir);
    file_mkdirs(dir);
    char to[1024];
    write_bytes(file_join(to, sizeof to, dir, "config.json"), json, strlen(json));
    return dir;
}

/* ---- safetensors ---- */

TEST(st_round_trip_byte_and_value_exact) {
    float a[6] = {1.5f, -2.25f, 3.0e-8f, 1e30f, -0.0f, 7.0f};
    float src16[8] = {0.1f, -0.2f, 1.0f, 65504.0f, -3.5f, 1e-3f, 2.0f, 0.0f};
    uint16_t b[4], h[8];
    for (int i = 0; i < 4; i++) b[i] = f32_to_bf16(src16[i]);
    for (int i = 0; i < 8; i++) h[i] = f32_to_f16(src16[i]);
    float scalar = 42.0f;
    uint8_t odd[3] = {1, 2, 3};
    int32_t ints[6] = {1, -2, 3, -4, 5, -6};
    st_entry e[] = {
        {"a.f32", DT_F32, 2, {2, 3}, a},
        {"b.bf16", DT_BF16, 1, {4}, b},
        {"odd.u8", DT_U8, 1, {3}, odd},           /* leaves later data misaligned */
        {"c.f16", DT_F16, 3, {2, 2, 2}, h},
        {"scalar", DT_F32, 0, {0}, &scalar},
        {"empty", DT_F32, 2, {0, 5}, NULL},
        {"ints", DT_I32, 2, {3, 2}, ints},
    };
    const int n = (int)(sizeof e / sizeof e[0]);
    st_meta meta[] = {{"format", "pt"}, {"note", "hello \"world\""}};
    const char *p1 = tmp_path("rt1.safetensors");
    CHECK_MSG(st_write(p1, e, n, meta, 2) == SK_OK, "%s", sk_errmsg());
    CHECK(!file_exists(tmp_path("rt1.safetensors.tmp")));

    st_file f;
    CHECK_MSG(st_open(p1, &f) == SK_OK, "%s", sk_errmsg());
    CHECK(f.n_tensors == n && f.n_meta == 2);
    CHECK(!strcmp(st_meta_get(&f, "format"), "pt"));
    CHECK(!strcmp(st_meta_get(&f, "note"), "hello \"world\""));
    CHECK(st_meta_get(&f, "nope") == NULL);
    /* the data section starts 8-byte aligned, as the format asks of writers */
    uint64_t hl = 0;
    memcpy(&hl, f.map.data, 8);
    CHECK(hl % 8 == 0);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_find(&f, e[i].name);
        CHECK_MSG(t, "%s", e[i].name);
        CHECK(t->dtype == e[i].dtype && t->ndim == e[i].ndim);
        for (int d = 0; d < t->ndim; d++) CHECK(t->shape[d] == e[i].shape[d]);
        CHECK(t->nbytes == st_entry_bytes(&e[i]));
        CHECK(t->nbytes == 0 || !memcmp(t->data, e[i].data, t->nbytes));
    }
    CHECK(st_find(&f, "missing") == NULL);
    /* values: bf16/f16 back to f32 are the rounded values */
    const st_tensor *tb = st_find(&f, "b.bf16"), *th = st_find(&f, "c.f16");
    float back[8];
    uint16_t tmp16[8];
    memcpy(tmp16, tb->data, 8);
    dtype_to_f32(back, tmp16, DT_BF16, 4);
    for (int i = 0; i < 4; i++) CHECK(back[i] == bf16_to_f32(f32_to_bf16(src16[i])));
    memcpy(tmp16, th->data, 16);
    dtype_to_f32(back, tmp16, DT_F16, 8);
    for (int i = 0; i < 8; i++) CHECK(back[i] == f16_to_f32(f32_to_f16(src16[i])));
    CHECK(back[3] == 65504.0f && back[2] == 1.0f);

    /* rewriting what was read gives the same bytes */
    st_entry e2[16];
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_find(&f, e[i].name);
        e2[i] = (st_entry){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(e2[i].shape, t->shape, sizeof t->shape);
    }
    const char *p2 = tmp_path("rt2.safetensors");
    CHECK(st_write(p2, e2, n, f.meta, f.n_meta) == SK_OK);
    st_close(&f);
    char *d1, *d2;
    size_t n1, n2;
    CHECK(file_read_all(p1, &d1, &n1) == SK_OK && file_read_all(p2, &d2, &n2) == SK_OK);
    int same = n1 == n2 && !memcmp(d1, d2, n1);
    mem_free(d1);
    mem_free(d2);
    CHECK(same);

    /* duplicate names are refused by the writer */
    st_entry dup[2] = {{"x", DT_F32, 0, {0}, &scalar}, {"x", DT_F32, 0, {0}, &scalar}};
    CHECK(st_write(tmp_path("dup.safetensors"), dup, 2, NULL, 0) == SK_EARG);
    CHECK(strstr(sk_errmsg(), "'x'"));
}

/* Expects st_open(path) to fail with SK_EFORMAT and a message containing `want`. */
#define CHECK_ST_BAD(json, data, len, want)                                                     \
    do {                                                                                        \
        const char *p_ = tmp_path("bad.safetensors");                                           \
        CHECK(write_raw_st(p_, json, data, len));                                               \
        st_file f_;                                                                             \
        sk_status s_ = st_open(p_, &f_);                                                        \
        CHECK_MSG(s_ == SK_EFORMAT, "%s: got %s", json, sk_status_name(s_));                    \
        CHECK_MSG(strstr(sk_errmsg(), want) && strstr(sk_errmsg(), "bad.safetensors"),          \
                  "message '%s' lacks '%s'", sk_errmsg(), want);                                \
    } while (0)

TEST(st_bad_headers_name_the_problem) {
    unsigned char data[64] = {0};
    CHECK_ST_BAD("{not json", data, 8, "not a JSON object");
    CHECK_ST_BAD("[1,2]", data, 0, "not a JSON object");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]}}", data, 1, "unsupported dtype 'BOOL'");
    CHECK_ST_BAD("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", data, 4, "\"dtype\"");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", data, 4, "\"shape\"");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", data, 4, "data_offsets");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", data, 4, "shape[0]");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", data, 4, "shape[0]");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", data, 4, "dimensions");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", data, 4, "overflows");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", data, 4, "need 8");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", data, 8, "before begin");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", data, 4, "beyond");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", data, 12, "overlap");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", data, 12, "gap");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", data, 8, "cover 4 bytes of a 8");
    CHECK_ST_BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data, 8, "appears twice");
    CHECK_ST_BAD("{\"__metadata__\":{\"k\":1}}", data, 0, "__metadata__");
    CHECK_ST_BAD("{\"__metadata__\":[]}", data, 0, "__metadata__");
    CHECK_ST_BAD("{\"a\":5}", data, 0, "not a JSON object");
    CHECK_ST_BAD("{} x", data, 0, "unexpected bytes");

    /* length field: larger than the file, absurd, file shorter than 8 bytes, empty file */
    unsigned char raw[16] = {200, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    const char *p = tmp_path("len.safetensors");
    st_file f;
    CHECK(write_bytes(p, raw, 16));
    CHECK(st_open(p, &f) == SK_EFORMAT && strstr(sk_errmsg(), "larger than the file"));
    raw[7] = 0x80;
    CHECK(write_bytes(p, raw, 16));
    CHECK(st_open(p, &f) == SK_EFORMAT && strstr(sk_errmsg(), "limit"));
    CHECK(write_bytes(p, raw, 5));
    CHECK(st_open(p, &f) == SK_EFORMAT && strstr(sk_errmsg(), "too short"));
    CHECK(write_bytes(p, raw, 0));
    CHECK(st_open(p, &f) == SK_EFORMAT && strstr(sk_errmsg(), "too short"));
    /* an empty but valid file: {} and no data */
    CHECK(write_raw_st(p, "{}", NULL, 0));
    CHECK(st_open(p, &f) == SK_OK && f.n_tensors == 0);
    st_close(&f);
    /* missing file */
    CHECK(st_open(tmp_path("does-not-exist.safetensors"), &f) == SK_EIO);
    CHECK(strstr(sk_errmsg(), "does-not-exist"));
}

TEST(st_truncated_model_file_fails_cleanly) {
    char *data;
    size_t n;
    CHECK(file_read_all(test_path("fixtures/gpt2-hf/model.safetensors"), &data, &n) == SK_OK);
    size_t cuts[] = {0, 1, 7, 8, 9, 100, 2000, 8 + 2592 - 1, 8 + 2592, 8 + 2592 + 1, n / 2, n - 4, n - 1};
    const char *p = tmp_path("trunc.safetensors");
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        CHECK(write_bytes(p, data, cuts[i]));
        st_file f;
        sk_status st = st_open(p, &f);
        CHECK_MSG(st == SK_EFORMAT, "cut at %zu: %s", cuts[i], sk_status_name(st));
        CHECK(strstr(sk_errmsg(), "trunc.safetensors"));
    }
    mem_free(data);
}

/* 200 (or $SKEIN_FUZZ_ITERS) corruptions of a real model file (byte flips mostly in the header, truncations, edits
 * of the length field) go through model_load: each either loads or fails with a message,
 * never crashes (this case matters most under make test-asan). */
TEST(fuzz_corrupted_model_folder_never_crashes) {
    char *orig;
    size_t n;
    CHECK(file_read_all(test_path("fixtures/gpt2-hf/model.safetensors"), &orig, &n) == SK_OK);
    uint64_t hl = 0;
    memcpy(&hl, orig, 8);
    const char *dir = folder_with_config("fuzz");
    char path[1024];
    file_join(path, sizeof path, dir, "model.safetensors");
    unsigned char *buf = malloc(n);
    rng r;
    rng_seed(&r, 7);
    int loaded = 0, failed = 0;
    const char *env = getenv("SKEIN_FUZZ_ITERS");     /* longer runs by hand */
    const int iters = env && atoi(env) > 0 ? atoi(env) : 200;
    log_set_quiet(true);
    for (int it = 0; it < iters; it++) {
        memcpy(buf, orig, n);
        size_t len = n;
        int kind = (int)rng_below(&r, 10);
        if (kind < 6) {                         /* flip 1-4 header bytes */
            int k = 1 + (int)rng_below(&r, 4);
            for (int j = 0; j < k; j++) buf[8 + rng_below(&r, hl)] ^= (unsigned char)(1 + rng_below(&r, 255));
        } else if (kind < 7) {                  /* header byte to a digit or a structural char */
            const char chars[] = "0123456789{}[],:\"-e.";
            buf[8 + rng_below(&r, hl)] = (unsigned char)chars[rng_below(&r, sizeof chars - 1)];
        } else if (kind < 8) {                  /* truncate */
            len = rng_below(&r, n);
        } else if (kind < 9) {                  /* length field */
            buf[rng_below(&r, 8)] ^= (unsigned char)(1 + rng_below(&r, 255));
        } else {                                /* anywhere */
            buf[rng_below(&r, n)] ^= (unsigned char)(1 + rng_below(&r, 255));
        }
        CHECK(write_bytes(path, buf, len));
        model *m = NULL;
        sk_status st = model_load(dir, host(), &m);
        if (st == SK_OK) {
            loaded++;
            model_free(m);
        } else {
            failed++;
            CHECK(strlen(sk_errmsg()) > 0);
        }
    }
    log_set_quiet(false);
    free(buf);
    mem_free(orig);
    printf("  fuzz: %d loaded, %d refused\n", loaded, failed);
    CHECK(loaded + failed == iters && failed > iters / 2);
}

TEST(st_sharded_index_errors) {
    const char *dir = tmp_path("shards");
    file_remove_tree(dir);
    file_mkdirs(dir);
    float v = 1;
    char p[1024];
    st_entry e = {"a", DT_F32, 1, {1}, &v};
    CHECK(st_write(file_join(p, sizeof p, dir, "s1.safetensors"), &e, 1, NULL, 0) == SK_OK);
    st_set s;
    const char *idx = "{\"weight_map\": {\"a\": \"s1.safetensors\"}}";
    CHECK(write_bytes(file_join(p, sizeof p, dir, "model.safetensors.index.json"), idx, strlen(idx)));
    CHECK_MSG(st_set_open_dir(dir, &s) == SK_OK, "%s", sk_errmsg());
    CHECK(st_set_count(&s) == 1 && st_set_find(&s, "a") && !st_set_find(&s, "b"));
    st_set_close(&s);
    idx = "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}";
    CHECK(write_bytes(p, idx, strlen(idx)));
    CHECK(st_set_open_dir(dir, &s) == SK_EFORMAT && strstr(sk_errmsg(), "not a file name"));
    idx = "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\"}}";
    CHECK(write_bytes(p, idx, strlen(idx)));
    CHECK(st_set_open_dir(dir, &s) == SK_EFORMAT && strstr(sk_errmsg(), "'b'"));
    idx = "{\"weight_map\": {\"a\": \"s2.safetensors\"}}";
    CHECK(write_bytes(p, idx, strlen(idx)));
    CHECK(st_set_open_dir(dir, &s) == SK_EIO && strstr(sk_errmsg(), "s2.safetensors"));
    idx = "{\"metadata\": {}}";
    CHECK(write_bytes(p, idx, strlen(idx)));
    CHECK(st_set_open_dir(dir, &s) == SK_EFORMAT && strstr(sk_errmsg(), "weight_map"));
}

/* ---- config.json ---- */

#define GPT2_CFG_BASE "\"model_type\":\"gpt2\",\"vocab_size\":101,\"n_positions\":64,\"n_layer\":2"

/* Expects model_config_load on a config with `body` to fail with SK_ECONFIG naming `field`. */
#define CHECK_CFG_BAD(body, field)                                                              \
    do {                                                                                        \
        const char *d_ = folder_with_text_config("cfgbad", "{" body "}");                      \
        model_config c_;                                                                        \
        sk_status s_ = model_config_load(d_, &c_);                                              \
        CHECK_MSG(s_ == SK_ECONFIG, "%s: got %s (%s)", body, sk_status_name(s_), sk_errmsg());  \
        CHECK_MSG(strstr(sk_errmsg(), field) && strstr(sk_errmsg(), "config.json"),             \
                  "message '%s' lacks '%s'", sk_errmsg(), field);                               \
    } while (0)

TEST(config_bad_fields_name_the_field) {
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2", "n_embd");                      /* missing */
    CHECK_CFG_BAD("\"model_type\":\"gpt2\",\"n_positions\":64,\"n_layer\":2,\"n_head\":2,\"n_embd\":32", "vocab_size");
    CHECK_CFG_BAD("\"vocab_size\":101,\"n_positions\":64,\"n_layer\":2,\"n_head\":2,\"n_embd\":32", "model_type");
    CHECK_CFG_BAD("\"model_type\":\"gpt2\",\"vocab_size\":101,\"n_layer\":2,\"n_head\":2,\"n_embd\":32", "n_positions");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":4,\"n_embd\":30", "n_embd");         /* 30 % 4 */
    CHECK_CFG_BAD("\"model_type\":\"gpt2\",\"vocab_size\":101,\"n_positions\":64,\"n_layer\":-1,\"n_head\":2,\"n_embd\":32",
                  "n_layer");
    CHECK_CFG_BAD("\"model_type\":\"gpt2\",\"vocab_size\":0,\"n_positions\":64,\"n_layer\":2,\"n_head\":2,\"n_embd\":32",
                  "vocab_size");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":1000000000", "n_embd");  /* would overflow */
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":0,\"n_embd\":32", "n_head");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":\"2\",\"n_embd\":32", "n_head");      /* wrong type */
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":32,\"n_inner\":-5", "n_inner");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":32,\"activation_function\":\"relu\"", "activation_function");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":32,\"activation_function\":\"gelu\"", "activation_function");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":32,\"layer_norm_epsilon\":-1", "layer_norm_epsilon");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":32,\"attn_pdrop\":1.5", "attn_pdrop");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":32,\"tie_word_embeddings\":false", "tie_word_embeddings");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":32,\"scale_attn_by_inverse_layer_idx\":true",
                  "scale_attn_by_inverse_layer_idx");
    CHECK_CFG_BAD(GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":32,\"eos_token_id\":\"x\"", "eos_token_id");
    CHECK_CFG_BAD("\"model_type\":\"bert\",\"vocab_size\":101", "model_type");
    CHECK_CFG_BAD("\"model_type\":\"qwen3\",\"vocab_size\":101", "not supported by this build yet");

    /* not JSON at all, no file */
    model_config c;
    const char *d = folder_with_text_config("cfgjunk", "{\"model_type\": ");
    CHECK(model_config_load(d, &c) == SK_EFORMAT && strstr(sk_errmsg(), "config.json"));
    CHECK(model_config_load(tmp_path("nowhere"), &c) == SK_EIO);
    /* validate on a config built in code */
    model_config_gpt2(&c, 2, 3, 32, 64, 101);
    CHECK(model_config_validate(&c, "preset") == SK_ECONFIG && strstr(sk_errmsg(), "preset"));
}

TEST(config_dialect_and_token_ids) {
    model_config c;
    /* ids outside the vocabulary: warned about and dropped, not an error */
    const char *d = folder_with_text_config("cfgids", "{" GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":32,"
                                            "\"bos_token_id\":500,\"eos_token_id\":[3,1000,-1,7],\"n_inner\":null}");
    CHECK_MSG(model_config_load(d, &c) == SK_OK, "%s", sk_errmsg());
    CHECK(c.bos_token_id == -1 && c.n_eos == 2 && c.eos_token_ids[0] == 3 && c.eos_token_ids[1] == 7);
    CHECK(c.ffn_dim == 128 && c.head_dim == 16 && c.n_kv_head == 2 && c.tie_word_embeddings);
    CHECK(c.arch == ARCH_GPT2 && c.torch_dtype == DT_F32);
    /* n_ctx alone, n_inner set, gelu_pytorch_tanh, dtype bfloat16, ints for ids */
    d = folder_with_text_config("cfgalt", "{\"model_type\":\"gpt2\",\"vocab_size\":101,\"n_ctx\":48,\"n_layer\":1,"
                                "\"n_head\":4,\"n_embd\":32,\"n_inner\":40,\"activation_function\":\"gelu_pytorch_tanh\","
                                "\"torch_dtype\":\"bfloat16\",\"bos_token_id\":5,\"eos_token_id\":6,"
                                "\"layer_norm_epsilon\":1e-6,\"resid_pdrop\":0.0}");
    CHECK_MSG(model_config_load(d, &c) == SK_OK, "%s", sk_errmsg());
    CHECK(c.n_positions == 48 && c.ffn_dim == 40 && c.torch_dtype == DT_BF16);
    CHECK(c.bos_token_id == 5 && c.n_eos == 1 && c.eos_token_ids[0] == 6);
    CHECK(c.norm_eps == 1e-6f && c.resid_pdrop == 0.0f && c.attn_pdrop == 0.1f);
    /* absent ids take GPT2Config's 50256 only when the vocabulary holds it */
    d = folder_with_text_config("cfgdef", "{\"model_type\":\"gpt2\",\"vocab_size\":50257,\"n_positions\":8,"
                                "\"n_layer\":1,\"n_head\":1,\"n_embd\":4}");
    CHECK(model_config_load(d, &c) == SK_OK && c.bos_token_id == 50256 && c.n_eos == 1 && c.eos_token_ids[0] == 50256);
    /* null is "none", not "default": saving a config without ids and loading it keeps none */
    c.bos_token_id = -1;
    c.n_eos = 0;
    CHECK(model_config_save(&c, d) == SK_OK);
    CHECK(model_config_load(d, &c) == SK_OK && c.bos_token_id == -1 && c.n_eos == 0);

    /* save -> load gives the same config */
    model_config a;
    model_config_gpt2(&a, 3, 4, 64, 128, 1000);
    a.ffn_dim = 200;
    a.bos_token_id = 1;
    a.eos_token_ids[0] = 2;
    a.eos_token_ids[1] = 3;
    a.n_eos = 2;
    a.norm_eps = 1e-6f;
    a.attn_pdrop = 0.05f;
    d = tmp_path("cfgsave");
    file_mkdirs(d);
    CHECK_MSG(model_config_save(&a, d) == SK_OK, "%s", sk_errmsg());
    model_config b;
    CHECK_MSG(model_config_load(d, &b) == SK_OK, "%s", sk_errmsg());
    CHECK(a.arch == b.arch && a.vocab_size == b.vocab_size && a.n_positions == b.n_positions);
    CHECK(a.n_layer == b.n_layer && a.n_head == b.n_head && a.n_kv_head == b.n_kv_head && a.n_embd == b.n_embd);
    CHECK(a.ffn_dim == b.ffn_dim && a.head_dim == b.head_dim && a.norm_eps == b.norm_eps);
    CHECK(a.resid_pdrop == b.resid_pdrop && a.embd_pdrop == b.embd_pdrop && a.attn_pdrop == b.attn_pdrop);
    CHECK(a.tie_word_embeddings == b.tie_word_embeddings && a.bos_token_id == b.bos_token_id);
    CHECK(a.n_eos == b.n_eos && a.eos_token_ids[1] == b.eos_token_ids[1] && a.torch_dtype == b.torch_dtype);
    /* the file reads as transformers writes it */
    cJSON *j;
    char p[1024];
    CHECK(json_load_file(file_join(p, sizeof p, d, "config.json"), &j) == SK_OK);
    const char *s = NULL;
    double eps = 0;
    CHECK(json_get_string(j, "model_type", true, p, &s) == SK_OK && !strcmp(s, "gpt2"));
    CHECK(json_get_string(j, "dtype", true, p, &s) == SK_OK && !strcmp(s, "float32"));
    CHECK(json_get_double(j, "layer_norm_epsilon", true, p, &eps) == SK_OK && eps == 1e-6);
    const cJSON *ar = cJSON_GetObjectItem(j, "architectures");
    CHECK(cJSON_IsArray(ar) && !strcmp(cJSON_GetArrayItem(ar, 0)->valuestring, "GPT2LMHeadModel"));
    CHECK(cJSON_IsArray(cJSON_GetObjectItem(j, "eos_token_id")));
    cJSON_Delete(j);
}

/* ---- model folders ---- */

static void fill_random(model *m, uint64_t seed) {
    rng r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] = rng_normal(&r) * 0.1f;
}

TEST(model_save_load_round_trip_bit_exact) {
    model_config cfg;
    model_config_gpt2(&cfg, 2, 2, 32, 64, 101);
    cfg.bos_token_id = 0;
    cfg.eos_token_ids[0] = 100;
    cfg.n_eos = 1;
    model *m = NULL, *m2 = NULL;
    CHECK(model_create(&cfg, host(), &m) == SK_OK);
    fill_random(m, 3);
    const char *dir = tmp_path("saved/nested");
    CHECK_MSG(model_save(m, dir) == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(model_load(dir, host(), &m2) == SK_OK, "%s", sk_errmsg());
    CHECK(m2->n_params == m->n_params && m2->n_specs == m->n_specs);
    CHECK(!memcmp(m->params, m2->params, m->n_params * sizeof(float)));
    CHECK(m2->cfg.bos_token_id == 0 && m2->cfg.n_eos == 1 && m2->cfg.eos_token_ids[0] == 100);
    /* the file: prefixed f32 names, format=pt, no lm_head, nothing else */
    char p[1024];
    st_file f;
    CHECK(st_open(file_join(p, sizeof p, dir, "model.safetensors"), &f) == SK_OK);
    CHECK(f.n_tensors == m->n_specs && !strcmp(st_meta_get(&f, "format"), "pt"));
    const st_tensor *t = st_find(&f, "transformer.h.1.mlp.c_fc.weight");
    CHECK(t && t->dtype == DT_F32 && t->ndim == 2 && t->shape[0] == 32 && t->shape[1] == 128);
    CHECK(!st_find(&f, "lm_head.weight"));
    st_close(&f);
    /* saving again gives the same bytes */
    char *a, *b;
    size_t na, nb;
    CHECK(file_read_all(p, &a, &na) == SK_OK);
    CHECK(model_save(m2, dir) == SK_OK);
    CHECK(file_read_all(p, &b, &nb) == SK_OK);
    int same = na == nb && !memcmp(a, b, na);
    mem_free(a);
    mem_free(b);
    model_free(m);
    model_free(m2);
    CHECK(same);
}

/* Loads the fixture folder `name` and compares the values transformers dumped for it. */
static void check_fixture(const char *name, dtype stored) {
    model *m = NULL;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", test_path("fixtures/"));
    strncat(dir, name, sizeof dir - strlen(dir) - 1);
    CHECK_MSG(model_load(dir, host(), &m) == SK_OK, "%s", sk_errmsg());
    CHECK(m->cfg.n_layer == 2 && m->cfg.n_embd == 32 && m->cfg.vocab_size == 101 && m->cfg.n_positions == 64);
    CHECK(m->cfg.bos_token_id == -1 && m->cfg.n_eos == 0);   /* 50256 is outside V = 101 */
    CHECK(m->cfg.torch_dtype == stored);
    cJSON *all;
    CHECK(json_load_file(test_path("fixtures/gpt2-io-values.json"), &all) == SK_OK);
    const cJSON *copy = cJSON_GetObjectItem(all, name), *tv;
    CHECK(copy);
    int n_checked = 0;
    cJSON_ArrayForEach(tv, copy) {
        const model_param *p = model_find_param(m, tv->string);
        CHECK_MSG(p, "%s", tv->string);
        const float *x = m->params + p->offset;
        const cJSON *head = cJSON_GetObjectItem(tv, "head"), *tail = cJSON_GetObjectItem(tv, "tail"), *v;
        size_t i = 0;
        cJSON_ArrayForEach(v, head) {
            CHECK_MSG(x[i] == (float)v->valuedouble, "%s[%zu]: %.9g vs %.9g", tv->string, i, x[i], v->valuedouble);
            i++;
        }
        i = p->numel - (size_t)cJSON_GetArraySize(tail);
        cJSON_ArrayForEach(v, tail) {
            CHECK_MSG(x[i] == (float)v->valuedouble, "%s[%zu]", tv->string, i);
            i++;
        }
        double sum = 0, want = cJSON_GetObjectItem(tv, "sum")->valuedouble;
        for (i = 0; i < p->numel; i++) sum += x[i];
        CHECK_NEAR(sum, want, 1e-9 * (1 + fabs(want)));
        n_checked++;
    }
    cJSON_Delete(all);
    model_free(m);
    CHECK(n_checked == 6);
}

TEST(load_transformers_folder_f32_prefixed) { check_fixture("gpt2-hf", DT_F32); }
TEST(load_transformers_folder_f16_bare_names_sharded) { check_fixture("gpt2-hf-noprefix", DT_F16); }
TEST(load_transformers_folder_bf16_with_tied_head) { check_fixture("gpt2-hf-bf16", DT_BF16); }

/* A copy of the f32 fixture in folder `name` with `edit` applied to its entries, loaded. */
static sk_status load_edited(const char *name, test_st_edit edit) {
    const char *dir = folder_with_config(name);
    char p[1024];
    test_st_write_edited(test_path("fixtures/gpt2-hf/model.safetensors"), file_join(p, sizeof p, dir, "model.safetensors"), edit);
    model *m = NULL;
    sk_status st = model_load(dir, host(), &m);
    model_free(m);
    return st;
}

static void edit_drop(st_entry *e, int *n, float *s) {
    (void)s;
    int i = test_st_find(e, *n, "transformer.h.1.ln_2.bias");
    e[i] = e[--*n];
}
static void edit_shape(st_entry *e, int *n, float *s) {
    (void)s;
    int i = test_st_find(e, *n, "transformer.h.0.attn.c_attn.weight");
    e[i].shape[0] = 96;
    e[i].shape[1] = 32;
}
static void edit_extra(st_entry *e, int *n, float *s) {
    e[*n] = (st_entry){"transformer.h.0.attn.rotary.weight", DT_F32, 1, {4}, s};
    ++*n;
}
static void edit_dtype(st_entry *e, int *n, float *s) {
    (void)s;
    e[test_st_find(e, *n, "transformer.ln_f.bias")].dtype = DT_I32;
}
static void edit_both_names(st_entry *e, int *n, float *s) {
    (void)s;
    e[*n] = e[test_st_find(e, *n, "transformer.wpe.weight")];
    e[*n].name = "wpe.weight";
    ++*n;
}
static void edit_untied_head(st_entry *e, int *n, float *s) {
    float *x = s;
    for (int i = 0; i < 101 * 32; i++) x[i] = 0.5f;
    e[*n] = (st_entry){"lm_head.weight", DT_F32, 2, {101, 32}, x};
    ++*n;
}
static void edit_mask_buffers(st_entry *e, int *n, float *s) {
    e[*n] = (st_entry){"transformer.h.1.attn.masked_bias", DT_F32, 0, {0}, s};
    ++*n;
    e[*n] = (st_entry){"h.0.attn.bias", DT_U8, 4, {1, 1, 4, 4}, s};
    ++*n;
}

TEST(model_load_bad_tensors_name_the_tensor) {
    CHECK(load_edited("ld_drop", edit_drop) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "missing tensor 'transformer.h.1.ln_2.bias'"), "%s", sk_errmsg());
    CHECK(load_edited("ld_shape", edit_shape) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "h.0.attn.c_attn.weight': expected shape [32, 96], found [96, 32]"), "%s", sk_errmsg());
    CHECK(load_edited("ld_extra", edit_extra) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "unexpected tensor 'transformer.h.0.attn.rotary.weight'"), "%s", sk_errmsg());
    CHECK(load_edited("ld_dtype", edit_dtype) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "ln_f.bias': dtype I32"), "%s", sk_errmsg());
    CHECK(load_edited("ld_both", edit_both_names) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "'wpe.weight' present both"), "%s", sk_errmsg());
    /* accepted: an lm_head that differs (warned about, ignored) and the mask buffers */
    CHECK_MSG(load_edited("ld_head", edit_untied_head) == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(load_edited("ld_buffers", edit_mask_buffers) == SK_OK, "%s", sk_errmsg());
}

TEST(model_load_bad_folders) {
    model *m = NULL;
    /* only a pickle checkpoint */
    const char *dir = folder_with_config("pickle");
    char p[1024];
    CHECK(write_bytes(file_join(p, sizeof p, dir, "pytorch_model.bin"), "PK\x03\x04", 4));
    CHECK(model_load(dir, host(), &m) == SK_EFORMAT);
    CHECK_MSG(strstr(sk_errmsg(), "pickle checkpoints are not supported; convert to safetensors"), "%s", sk_errmsg());
    /* no weights at all, no folder, no config */
    dir = folder_with_config("noweights");
    CHECK(model_load(dir, host(), &m) == SK_EIO && strstr(sk_errmsg(), "no model.safetensors"));
    CHECK(model_load(tmp_path("absent"), host(), &m) == SK_EIO && strstr(sk_errmsg(), "absent"));
    dir = tmp_path("noconfig");
    file_mkdirs(dir);
    CHECK(copy_file(test_path("fixtures/gpt2-hf/model.safetensors"), file_join(p, sizeof p, dir, "model.safetensors")));
    CHECK(model_load(dir, host(), &m) == SK_EIO && strstr(sk_errmsg(), "config.json"));
    /* a config whose shapes disagree with the file */
    dir = folder_with_text_config("mismatch", "{" GPT2_CFG_BASE ",\"n_head\":2,\"n_embd\":16}");
    CHECK(copy_file(test_path("fixtures/gpt2-hf/model.safetensors"), file_join(p, sizeof p, dir, "model.safetensors")));
    CHECK(model_load(dir, host(), &m) == SK_EFORMAT && strstr(sk_errmsg(), "expected shape [101, 16], found [101, 32]"));
}

/* The n-th allocation failing anywhere inside model_load and model_save gives SK_ENOMEM and
 * cleans up (the leak check of an ASan run by hand covers the cleanup). */
TEST(model_load_save_out_of_memory_paths) {
    int ok_load = 0, ok_save = 0;
    log_set_quiet(true);
    for (long n = 1; n <= 60; n++) {
        model *m = NULL;
        mem_fail_after(n);
        sk_status st = model_load(test_path("fixtures/gpt2-hf-noprefix"), host(), &m);
        mem_fail_after(0);
        CHECK_MSG(st == SK_OK || st == SK_ENOMEM, "n=%ld: %s", n, sk_errmsg());
        if (st != SK_OK) continue;
        ok_load++;
        mem_fail_after(n);
        st = model_save(m, tmp_path("oom"));
        mem_fail_after(0);
        CHECK_MSG(st == SK_OK || st == SK_ENOMEM, "n=%ld: %s", n, sk_errmsg());
        ok_save += st == SK_OK;
        model_free(m);
    }
    log_set_quiet(false);
    CHECK(ok_load > 0 && ok_load < 60 && ok_save > 0);
}

/* With SKEIN_HF_PYTHON set (tests/cli_io.sh), transformers loads a folder skein wrote and
 * tests/check_hf_load.py checks every weight; skipped otherwise. */
TEST(hf_python_loads_skein_folder) {
    const char *py = getenv("SKEIN_HF_PYTHON");
    if (!py || !*py) SKIP("SKEIN_HF_PYTHON is not set (tests/cli_io.sh sets it where transformers is installed)");
    model_config cfg;
    model_config_gpt2(&cfg, 2, 2, 32, 64, 101);
    model *m = NULL;
    CHECK(model_create(&cfg, host(), &m) == SK_OK);
    fill_random(m, 11);
    const char *dir = tmp_path("for-hf");
    sk_status st = model_save(m, dir);
    model_free(m);
    CHECK_MSG(st == SK_OK, "%s", sk_errmsg());
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' 1 2 3 2>&1", py, test_path("check_hf_load.py"), dir);
    FILE *pp = popen(cmd, "r");
    CHECK(pp);
    char line[8192];
    int ok = 0;
    while (fgets(line, sizeof line, pp)) {
        if (!strncmp(line, "OK", 2)) ok = 1;
        else if (!ok) printf("  python: %.200s", line);
    }
    int rc = pclose(pp);
    CHECK_MSG(ok && rc == 0, "check_hf_load.py rc %d", rc);
}

TEST_MAIN()
