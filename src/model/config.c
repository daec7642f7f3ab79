/* config: Hugging Face config.json <-> model_config (see model.h).
 *
 * One dialect per model_type: a reader that fills a model_config from the JSON and a writer
 * that produces what transformers' config class of that type writes. Adding the Llama family
 * means one more reader/writer pair in `dialects` (rope_theta, rope_scaling or
 * rope_parameters, head_dim, num_key_value_heads, rms_norm_eps, intermediate_size,
 * max_position_embeddings, sliding_window); the shared helpers below (bounded integers,
 * token ids, dtype) already cover what they need.
 *
 * Every config, loaded or built in code, goes through model_config_validate: sizes positive
 * and bounded (so no product of them overflows), shapes that divide, probabilities in [0, 1).
 * A bad field is SK_ECONFIG naming the file and the field. bos/eos ids outside the vocabulary
 * are warned about and dropped, as transformers only warns about them.
 *
 * Supported GPT-2 activations: gelu_new, gelu_pytorch_tanh and gelu_fast, which are all the
 * tanh approximation the backends implement; the exact erf "gelu" and others are refused. */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"

/* Bounds that keep every product of sizes (V*C, L*C*F, B*T*V with B*T < 2^20) in int64 and
 * far from any real model's limits. */
#define CFG_MAX_VOCAB     (1 << 24)
#define CFG_MAX_POSITIONS (1 << 22)
#define CFG_MAX_LAYERS    1024
#define CFG_MAX_HEADS     4096
#define CFG_MAX_EMBD      (1 << 17)
#define CFG_MAX_FFN       (1 << 20)
#define CFG_MAX_PARAMS    ((int64_t)1 << 40)

/* GPT2Config's default bos/eos id (the end-of-text token of the GPT-2 vocabulary). */
#define GPT2_DEFAULT_TOKEN 50256

/* ---- field helpers: every failure is SK_ECONFIG naming `what` and the field ---- */

/* Reads an integer field into *out, checking lo <= v <= hi. Absent and !required: untouched. */
static sk_status cfg_int(const cJSON *j, const char *key, bool required, const char *what, long lo, long hi,
                         int *out) {
    long v = *out;
    if (json_get_int(j, key, required, what, &v) != SK_OK) return SK_ECONFIG;
    if (!cJSON_GetObjectItemCaseSensitive(j, key) || cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, key)))
        return SK_OK;
    if (v < lo || v > hi) return sk_fail(SK_ECONFIG, "%s: field \"%s\" = %ld outside [%ld, %ld]", what, key, v, lo, hi);
    *out = (int)v;
    return SK_OK;
}

static sk_status cfg_float(const cJSON *j, const char *key, const char *what, float *out) {
    double v = *out;
    if (json_get_double(j, key, false, what, &v) != SK_OK) return SK_ECONFIG;
    *out = (float)v;
    return SK_OK;
}

static sk_status cfg_bool(const cJSON *j, const char *key, const char *what, bool *out) {
    return json_get_bool(j, key, false, what, out) != SK_OK ? SK_ECONFIG : SK_OK;
}

/* A token id field that is absent, null, an integer, or (when `list`) a list of integers.
 * Fills ids[0..*n) (at most MODEL_MAX_EOS; more are dropped with a warning; null gives 0).
 * Range checks against the vocabulary happen in model_config_validate. *present tells
 * whether the key exists at all (null included), so absent can take a default and null not. */
static sk_status cfg_token_ids(const cJSON *j, const char *key, bool list, const char *what, int *ids, int *n,
                               bool *present) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, key);
    *present = it != NULL;
    if (!it) return SK_OK;
    *n = 0;
    if (cJSON_IsNull(it)) return SK_OK;          /* null: explicitly none */
    const cJSON *e;
    if (cJSON_IsArray(it) && list) {
        cJSON_ArrayForEach(e, it) {
            double v = e->valuedouble;
            if (!cJSON_IsNumber(e) || v != floor(v) || fabs(v) > 2e9)
                return sk_fail(SK_ECONFIG, "%s: field \"%s\" must be a list of integers", what, key);
            if (*n == MODEL_MAX_EOS) {
                log_warn("%s: field \"%s\" lists more than %d ids; keeping the first %d", what, key,
                         MODEL_MAX_EOS, MODEL_MAX_EOS);
                break;
            }
            ids[(*n)++] = (int)v;
        }
        return SK_OK;
    }
    double v = it->valuedouble;
    if (!cJSON_IsNumber(it) || v != floor(v) || fabs(v) > 2e9)
        return sk_fail(SK_ECONFIG, "%s: field \"%s\" must be an integer%s", what, key, list ? " or a list of integers" : "");
    ids[0] = (int)v;
    *n = 1;
    return SK_OK;
}

/* "torch_dtype" (transformers 4) or "dtype" (transformers 5): the storage dtype. */
static sk_status cfg_dtype(const cJSON *j, const char *what, dtype *out) {
    static const char *const keys[] = {"dtype", "torch_dtype"};
    for (int k = 0; k < 2; k++) {
        const char *s = NULL;
        if (json_get_string(j, keys[k], false, what, &s) != SK_OK) return SK_ECONFIG;
        if (!s) continue;
        if (!strcmp(s, "float32")) *out = DT_F32;
        else if (!strcmp(s, "bfloat16")) *out = DT_BF16;
        else if (!strcmp(s, "float16")) *out = DT_F16;
        else log_warn("%s: field \"%s\" = \"%s\" is not float32/bfloat16/float16; ignored", what, keys[k], s);
        return SK_OK;
    }
    return SK_OK;
}

static const char *dtype_torch_name(dtype t) {
    switch (t) {
    case DT_BF16: return "bfloat16";
    case DT_F16: return "float16";
    default: return "float32";
    }
}

/* Adds a float as the shortest decimal that reads back as the same float, so 1e-5f is written
 * "1e-05" and not its double expansion. */
static cJSON *json_add_float(cJSON *obj, const char *key, float v) {
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    return cJSON_AddNumberToObject(obj, key, strtod(buf, NULL));
}

static void json_add_token_ids(cJSON *obj, const char *key, const int *ids, int n) {
    if (n == 0) cJSON_AddNullToObject(obj, key);
    else if (n == 1) cJSON_AddNumberToObject(obj, key, ids[0]);
    else cJSON_AddItemToObject(obj, key, cJSON_CreateIntArray(ids, n));
}

/* ---- GPT-2 ---- */

static sk_status gpt2_read(const cJSON *j, const char *what, model_config *cfg) {
    model_config_gpt2(cfg, 0, 0, 0, 0, 0);
    SK_TRY(cfg_int(j, "vocab_size", true, what, 1, CFG_MAX_VOCAB, &cfg->vocab_size));
    SK_TRY(cfg_int(j, "n_embd", true, what, 1, CFG_MAX_EMBD, &cfg->n_embd));
    SK_TRY(cfg_int(j, "n_layer", true, what, 1, CFG_MAX_LAYERS, &cfg->n_layer));
    SK_TRY(cfg_int(j, "n_head", true, what, 1, CFG_MAX_HEADS, &cfg->n_head));
    /* n_positions is the table size; older configs also carry n_ctx (same value). */
    const cJSON *np = cJSON_GetObjectItemCaseSensitive(j, "n_positions");
    SK_TRY(cfg_int(j, np && !cJSON_IsNull(np) ? "n_positions" : "n_ctx", false, what, 1, CFG_MAX_POSITIONS,
                   &cfg->n_positions));
    if (cfg->n_positions == 0) return sk_fail(SK_ECONFIG, "%s: missing field \"n_positions\"", what);
    cfg->ffn_dim = 4 * cfg->n_embd;                    /* n_inner: null means 4C */
    SK_TRY(cfg_int(j, "n_inner", false, what, 1, CFG_MAX_FFN, &cfg->ffn_dim));
    cfg->n_kv_head = cfg->n_head;
    cfg->head_dim = cfg->n_embd / cfg->n_head;

    const char *act = "gelu_new";
    if (json_get_string(j, "activation_function", false, what, &act) != SK_OK) return SK_ECONFIG;
    if (strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh") && strcmp(act, "gelu_fast"))
        return sk_fail(SK_ECONFIG, "%s: field \"activation_function\" = \"%.40s\" is not supported (skein implements "
                       "the tanh GELU: gelu_new, gelu_pytorch_tanh, gelu_fast)", what, act);
    SK_TRY(cfg_float(j, "layer_norm_epsilon", what, &cfg->norm_eps));
    SK_TRY(cfg_float(j, "resid_pdrop", what, &cfg->resid_pdrop));
    SK_TRY(cfg_float(j, "embd_pdrop", what, &cfg->embd_pdrop));
    SK_TRY(cfg_float(j, "attn_pdrop", what, &cfg->attn_pdrop));
    SK_TRY(cfg_bool(j, "tie_word_embeddings", what, &cfg->tie_word_embeddings));

    /* Variants of the attention that change the math: refused rather than silently ignored. */
    bool scale = true, inv_layer = false, cross = false;
    SK_TRY(cfg_bool(j, "scale_attn_weights", what, &scale));
    SK_TRY(cfg_bool(j, "scale_attn_by_inverse_layer_idx", what, &inv_layer));
    SK_TRY(cfg_bool(j, "add_cross_attention", what, &cross));
    if (!scale) return sk_fail(SK_ECONFIG, "%s: field \"scale_attn_weights\" = false is not supported", what);
    if (inv_layer) return sk_fail(SK_ECONFIG, "%s: field \"scale_attn_by_inverse_layer_idx\" = true is not supported", what);
    if (cross) return sk_fail(SK_ECONFIG, "%s: field \"add_cross_attention\" = true is not supported", what);

    /* Absent ids take GPT2Config's default (50256) where the vocabulary has it. */
    bool present;
    int one = -1, n = 0;
    SK_TRY(cfg_token_ids(j, "bos_token_id", false, what, &one, &n, &present));
    cfg->bos_token_id = present ? (n ? one : -1) : (cfg->vocab_size > GPT2_DEFAULT_TOKEN ? GPT2_DEFAULT_TOKEN : -1);
    SK_TRY(cfg_token_ids(j, "eos_token_id", true, what, cfg->eos_token_ids, &cfg->n_eos, &present));
    if (!present && cfg->vocab_size > GPT2_DEFAULT_TOKEN) {
        cfg->eos_token_ids[0] = GPT2_DEFAULT_TOKEN;
        cfg->n_eos = 1;
    }
    SK_TRY(cfg_dtype(j, what, &cfg->torch_dtype));
    return SK_OK;
}

/* Writes the fields GPT2Config.to_dict() writes (transformers 5), plus n_ctx and torch_dtype
 * for older readers. */
static sk_status gpt2_write(const model_config *cfg, cJSON *j) {
    cJSON_AddStringToObject(j, "activation_function", "gelu_new");
    cJSON_AddFalseToObject(j, "add_cross_attention");
    cJSON *archs = cJSON_AddArrayToObject(j, "architectures");
    if (archs) cJSON_AddItemToArray(archs, cJSON_CreateString("GPT2LMHeadModel"));
    json_add_float(j, "attn_pdrop", cfg->attn_pdrop);
    json_add_token_ids(j, "bos_token_id", &cfg->bos_token_id, cfg->bos_token_id >= 0 ? 1 : 0);
    cJSON_AddStringToObject(j, "dtype", dtype_torch_name(cfg->torch_dtype));
    json_add_float(j, "embd_pdrop", cfg->embd_pdrop);
    json_add_token_ids(j, "eos_token_id", cfg->eos_token_ids, cfg->n_eos);
    cJSON_AddNumberToObject(j, "initializer_range", 0.02);
    json_add_float(j, "layer_norm_epsilon", cfg->norm_eps);
    cJSON_AddStringToObject(j, "model_type", "gpt2");
    cJSON_AddNumberToObject(j, "n_ctx", cfg->n_positions);
    cJSON_AddNumberToObject(j, "n_embd", cfg->n_embd);
    cJSON_AddNumberToObject(j, "n_head", cfg->n_head);
    if (cfg->ffn_dim == 4 * cfg->n_embd) cJSON_AddNullToObject(j, "n_inner");
    else cJSON_AddNumberToObject(j, "n_inner", cfg->ffn_dim);
    cJSON_AddNumberToObject(j, "n_layer", cfg->n_layer);
    cJSON_AddNumberToObject(j, "n_positions", cfg->n_positions);
    cJSON_AddFalseToObject(j, "reorder_and_upcast_attn");
    json_add_float(j, "resid_pdrop", cfg->resid_pdrop);
    cJSON_AddFalseToObject(j, "scale_attn_by_inverse_layer_idx");
    cJSON_AddTrueToObject(j, "scale_attn_weights");
    cJSON_AddBoolToObject(j, "tie_word_embeddings", cfg->tie_word_embeddings);
    cJSON_AddStringToObject(j, "torch_dtype", dtype_torch_name(cfg->torch_dtype));
    cJSON_AddTrueToObject(j, "use_cache");
    cJSON_AddNumberToObject(j, "vocab_size", cfg->vocab_size);
    return SK_OK;
}

/* GPT-2 parameter count, for the size cap (matches gpt2.c's plan). */
static int64_t gpt2_count(const model_config *c) {
    int64_t C = c->n_embd, F = c->ffn_dim;
    int64_t layer = 4 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C);
    return (int64_t)c->vocab_size * C + (int64_t)c->n_positions * C + c->n_layer * layer + 2 * C;
}

/* ---- dialects ---- */

typedef struct config_dialect {
    const char *model_type;
    model_arch_kind arch;
    sk_status (*read)(const cJSON *j, const char *what, model_config *cfg);
    sk_status (*write)(const model_config *cfg, cJSON *j);
} config_dialect;

static const config_dialect dialects[] = {
    {"gpt2", ARCH_GPT2, gpt2_read, gpt2_write},
};

/* Known model types that arrive with a later issue: a clearer message than "unknown". */
static const char *const later_types[] = {"llama", "mistral", "qwen2", "qwen3"};

static const config_dialect *dialect_for_arch(model_arch_kind arch) {
    for (size_t i = 0; i < sizeof dialects / sizeof dialects[0]; i++)
        if (dialects[i].arch == arch) return &dialects[i];
    return NULL;
}

/* ---- public ---- */

sk_status model_config_validate(model_config *cfg, const char *what) {
#define BOUND(field, key, lo, hi)                                                                    \
    if (cfg->field < (lo) || cfg->field > (hi))                                                      \
        return sk_fail(SK_ECONFIG, "%s: field \"%s\" = %d outside [%d, %d]", what, key, cfg->field, (lo), (hi))
    BOUND(vocab_size, "vocab_size", 1, CFG_MAX_VOCAB);
    BOUND(n_positions, "n_positions", 1, CFG_MAX_POSITIONS);
    BOUND(n_layer, "n_layer", 1, CFG_MAX_LAYERS);
    BOUND(n_head, "n_head", 1, CFG_MAX_HEADS);
    BOUND(n_embd, "n_embd", 1, CFG_MAX_EMBD);
    BOUND(ffn_dim, "n_inner", 1, CFG_MAX_FFN);
    BOUND(n_kv_head, "num_key_value_heads", 1, cfg->n_head);
    BOUND(head_dim, "head_dim", 1, CFG_MAX_EMBD);
#undef BOUND
    if (cfg->n_head % cfg->n_kv_head)
        return sk_fail(SK_ECONFIG, "%s: n_head %d is not a multiple of num_key_value_heads %d", what, cfg->n_head,
                       cfg->n_kv_head);
    if (!(cfg->norm_eps > 0 && cfg->norm_eps < 1))
        return sk_fail(SK_ECONFIG, "%s: field \"layer_norm_epsilon\" = %g must be in (0, 1)", what, (double)cfg->norm_eps);
    const struct { float v; const char *key; } probs[] = {
        {cfg->resid_pdrop, "resid_pdrop"}, {cfg->embd_pdrop, "embd_pdrop"}, {cfg->attn_pdrop, "attn_pdrop"}};
    for (int i = 0; i < 3; i++)
        if (!(probs[i].v >= 0 && probs[i].v < 1))
            return sk_fail(SK_ECONFIG, "%s: field \"%s\" = %g must be in [0, 1)", what, probs[i].key, (double)probs[i].v);
    if (cfg->torch_dtype != DT_F32 && cfg->torch_dtype != DT_BF16 && cfg->torch_dtype != DT_F16)
        return sk_fail(SK_ECONFIG, "%s: dtype must be float32, bfloat16 or float16", what);
    if (cfg->n_eos < 0 || cfg->n_eos > MODEL_MAX_EOS)
        return sk_fail(SK_ECONFIG, "%s: %d eos ids (at most %d)", what, cfg->n_eos, MODEL_MAX_EOS);

    switch (cfg->arch) {
    case ARCH_GPT2:
        if (cfg->n_embd % cfg->n_head)
            return sk_fail(SK_ECONFIG, "%s: field \"n_embd\" = %d is not divisible by \"n_head\" = %d", what,
                           cfg->n_embd, cfg->n_head);
        if (cfg->n_kv_head != cfg->n_head || cfg->head_dim * cfg->n_head != cfg->n_embd)
            return sk_fail(SK_ECONFIG, "%s: GPT-2 has n_embd/n_head-sized heads and no grouped KV heads", what);
        if (!cfg->tie_word_embeddings)
            return sk_fail(SK_ECONFIG, "%s: field \"tie_word_embeddings\" = false: an untied LM head is not supported "
                           "for GPT-2", what);
        if (gpt2_count(cfg) > CFG_MAX_PARAMS)
            return sk_fail(SK_ECONFIG, "%s: %lld parameters is too large", what, (long long)gpt2_count(cfg));
        break;
    case ARCH_LLAMA:
        return sk_fail(SK_ECONFIG, "%s: the Llama family is not supported by this build yet", what);
    }

    /* Ids outside the vocabulary: warned about and dropped (transformers only warns). */
    if (cfg->bos_token_id != -1 && (cfg->bos_token_id < 0 || cfg->bos_token_id >= cfg->vocab_size)) {
        log_warn("%s: bos_token_id %d is outside the vocabulary (%d); ignored", what, cfg->bos_token_id, cfg->vocab_size);
        cfg->bos_token_id = -1;
    }
    int k = 0;
    for (int i = 0; i < cfg->n_eos; i++) {
        int id = cfg->eos_token_ids[i];
        if (id < 0 || id >= cfg->vocab_size)
            log_warn("%s: eos_token_id %d is outside the vocabulary (%d); ignored", what, id, cfg->vocab_size);
        else
            cfg->eos_token_ids[k++] = id;
    }
    cfg->n_eos = k;
    return SK_OK;
}

sk_status model_config_load(const char *dir, model_config *cfg) {
    char path[4096];
    file_join(path, sizeof path, dir, "config.json");
    cJSON *j = NULL;
    SK_TRY(json_load_file(path, &j));
    sk_status st = SK_OK;
    const char *type = NULL;
    if (!cJSON_IsObject(j)) { st = sk_fail(SK_ECONFIG, "%s: not a JSON object", path); goto out; }
    if (json_get_string(j, "model_type", true, path, &type) != SK_OK) { st = SK_ECONFIG; goto out; }
    const config_dialect *d = NULL;
    for (size_t i = 0; i < sizeof dialects / sizeof dialects[0] && !d; i++)
        if (!strcmp(dialects[i].model_type, type)) d = &dialects[i];
    if (!d) {
        for (size_t i = 0; i < sizeof later_types / sizeof later_types[0]; i++)
            if (!strcmp(later_types[i], type)) {
                st = sk_fail(SK_ECONFIG, "%s: field \"model_type\" = \"%s\" is not supported by this build yet", path, type);
                goto out;
            }
        st = sk_fail(SK_ECONFIG, "%s: field \"model_type\" = \"%.60s\" is unknown (supported: gpt2)", path, type);
        goto out;
    }
    model_config c;
    if ((st = d->read(j, path, &c)) != SK_OK) goto out;
    if ((st = model_config_validate(&c, path)) != SK_OK) goto out;
    *cfg = c;
out:
    cJSON_Delete(j);
    return st;
}

sk_status model_config_save(const model_config *cfg, const char *dir) {
    char path[4096];
    file_join(path, sizeof path, dir, "config.json");
    model_config c = *cfg;
    SK_TRY(model_config_validate(&c, path));
    const config_dialect *d = dialect_for_arch(c.arch);
    SK_ASSERT(d);   /* validate refuses architectures without a dialect */
    cJSON *j = cJSON_CreateObject();
    if (!j) return sk_fail(SK_ENOMEM, "%s: out of memory", path);
    sk_status st = d->write(&c, j);
    if (st == SK_OK) st = json_save_file(path, j);
    cJSON_Delete(j);
    return st;
}
