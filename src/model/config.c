/* config: Hugging Face config.json <-> model_config (see model.h).
 *
 * One dialect per model_type: a reader that fills a model_config from the JSON and a writer
 * that produces what transformers' config class of that type writes. gpt2 is one; llama,
 * mistral and qwen2 share one reader and writer (see "the Llama family" below), which read
 * both rotary dialects found in the wild: "rope_theta" + "rope_scaling" ({"type"} or
 * {"rope_type"}) as on the Hub, and "rope_parameters" as transformers 5 writes; head_dim;
 * num_key_value_heads; an eos id or a list of them; sliding windows.
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

/* ---- the Llama family: llama, mistral, qwen2 ----
 *
 * One reader for the three types; what differs is in llama_types: transformers' defaults for
 * absent fields (MistralConfig's num_key_value_heads is 8 and its sliding_window 4096,
 * Qwen2Config's num_key_value_heads 32), which fields exist (attention_bias and mlp_bias only
 * in LlamaConfig), and fixed structure (Qwen2 always has q/k/v biases, Qwen2Attention
 * hard-codes them; Mistral never has biases). Refused rather than guessed: hidden_act other
 * than silu, rope types other than default/linear/llama3, a partial rotary factor, biases on
 * o_proj (Llama attention_bias = true also gives o_proj a bias, which skein's plan does not
 * have), quantized checkpoints, and a Qwen2 sliding window on some layers only. */

typedef struct llama_type {
    const char *model_type, *architecture;
    int default_positions;     /* max_position_embeddings when absent */
    int default_kv_heads;      /* num_key_value_heads when absent; 0 = num_attention_heads */
    int default_bos, default_eos;   /* -1: none */
    bool has_bias_fields;      /* config carries attention_bias and mlp_bias (LlamaConfig) */
    bool qkv_bias;             /* q/k/v biases regardless of the config (Qwen2) */
} llama_type;

static const llama_type llama_types[] = {
    {"llama", "LlamaForCausalLM", 2048, 0, 1, 2, true, false},
    {"mistral", "MistralForCausalLM", 4096 * 32, 8, 1, 2, false, false},
    {"qwen2", "Qwen2ForCausalLM", 32768, 32, -1, -1, false, true},
};

static const llama_type *llama_type_find(const char *model_type) {
    for (size_t i = 0; i < sizeof llama_types / sizeof llama_types[0]; i++)
        if (!strcmp(llama_types[i].model_type, model_type)) return &llama_types[i];
    return NULL;
}

static const char *rope_type_name(model_rope_type t) {
    switch (t) {
    case ROPE_LINEAR: return "linear";
    case ROPE_LLAMA3: return "llama3";
    default: return "default";
    }
}

/* Reads the rotary settings from either dialect. rope_scaling (the Hub, transformers 4) wins
 * over rope_parameters (transformers 5) when both are non-null, as transformers 5 does; the
 * type is "rope_type", else the legacy "type", else default; rope_theta is inside the dict,
 * else top level, else 10000; llama3's original_max_position_embeddings defaults to
 * max_position_embeddings (as transformers fills it). */
static sk_status llama_read_rope(const cJSON *j, const char *what, model_config *cfg) {
    double theta = 10000.0;
    if (json_get_double(j, "rope_theta", false, what, &theta) != SK_OK) return SK_ECONFIG;
    const char *key = "rope_scaling";
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!r || cJSON_IsNull(r)) {
        key = "rope_parameters";
        r = cJSON_GetObjectItemCaseSensitive(j, key);
    }
    memset(&cfg->rope_scaling, 0, sizeof cfg->rope_scaling);
    cfg->rope_scaling.type = ROPE_DEFAULT;
    if (r && !cJSON_IsNull(r)) {
        if (!cJSON_IsObject(r)) return sk_fail(SK_ECONFIG, "%s: field \"%s\" must be an object", what, key);
        char sub[4200];
        snprintf(sub, sizeof sub, "%s: %s", what, key);
        const cJSON *e;
        cJSON_ArrayForEach(e, r)
            if (cJSON_IsObject(e))
                return sk_fail(SK_ECONFIG, "%s: field \"%s.%s\": rotary parameters per layer type are not supported",
                               what, key, e->string);
        const char *type = "default";
        if (json_get_string(r, "type", false, sub, &type) != SK_OK) return SK_ECONFIG;
        if (json_get_string(r, "rope_type", false, sub, &type) != SK_OK) return SK_ECONFIG;
        if (!strcmp(type, "default")) cfg->rope_scaling.type = ROPE_DEFAULT;
        else if (!strcmp(type, "linear")) cfg->rope_scaling.type = ROPE_LINEAR;
        else if (!strcmp(type, "llama3")) cfg->rope_scaling.type = ROPE_LLAMA3;
        else
            return sk_fail(SK_ECONFIG, "%s: field \"%s.rope_type\" = \"%.40s\" is not supported (skein implements "
                           "default, linear and llama3)", what, key, type);
        if (json_get_double(r, "rope_theta", false, sub, &theta) != SK_OK) return SK_ECONFIG;
        double prf = 1.0;
        if (json_get_double(r, "partial_rotary_factor", false, sub, &prf) != SK_OK) return SK_ECONFIG;
        if (prf != 1.0)
            return sk_fail(SK_ECONFIG, "%s: field \"%s.partial_rotary_factor\" = %g is not supported (only 1)", what,
                           key, prf);
        model_rope_scaling *rs = &cfg->rope_scaling;
        bool need = rs->type != ROPE_DEFAULT;
        double f = 0, lo = 0, hi = 0;
        if (json_get_double(r, "factor", need, sub, &f) != SK_OK) return SK_ECONFIG;
        if (rs->type == ROPE_LLAMA3) {
            long orig = cfg->n_positions;
            if (json_get_double(r, "low_freq_factor", true, sub, &lo) != SK_OK) return SK_ECONFIG;
            if (json_get_double(r, "high_freq_factor", true, sub, &hi) != SK_OK) return SK_ECONFIG;
            if (json_get_int(r, "original_max_position_embeddings", false, sub, &orig) != SK_OK) return SK_ECONFIG;
            if (orig < 1 || orig > CFG_MAX_POSITIONS)
                return sk_fail(SK_ECONFIG, "%s: field \"%s.original_max_position_embeddings\" = %ld outside [1, %d]",
                               what, key, orig, CFG_MAX_POSITIONS);
            rs->low_freq_factor = (float)lo;
            rs->high_freq_factor = (float)hi;
            rs->original_max_position_embeddings = (int)orig;
        }
        if (need) rs->factor = (float)f;
    }
    cfg->rope_theta = (float)theta;
    return SK_OK;
}

/* Qwen2's sliding window: off unless use_sliding_window; on, layer l slides when
 * l >= max_window_layers (or as "layer_types" lists). skein has one window for all layers. */
static sk_status qwen2_read_window(const cJSON *j, const char *what, model_config *cfg) {
    bool use = false;
    SK_TRY(cfg_bool(j, "use_sliding_window", what, &use));
    cfg->sliding_window = 0;
    if (!use) return SK_OK;
    int window = 4096, max_window_layers = 28;
    SK_TRY(cfg_int(j, "sliding_window", false, what, 1, CFG_MAX_POSITIONS, &window));
    SK_TRY(cfg_int(j, "max_window_layers", false, what, 0, CFG_MAX_LAYERS, &max_window_layers));
    int sliding = 0;
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(j, "layer_types"), *e;
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != cfg->n_layer)
            return sk_fail(SK_ECONFIG, "%s: field \"layer_types\" must list one type per layer", what);
        cJSON_ArrayForEach(e, lt) sliding += cJSON_IsString(e) && !strcmp(e->valuestring, "sliding_attention");
    } else {
        sliding = cfg->n_layer > max_window_layers ? cfg->n_layer - max_window_layers : 0;
    }
    if (sliding == 0) return SK_OK;
    if (sliding != cfg->n_layer)
        return sk_fail(SK_ECONFIG, "%s: field \"use_sliding_window\" = true with a window on %d of %d layers "
                       "(max_window_layers/layer_types) is not supported: skein applies one window to every layer",
                       what, sliding, cfg->n_layer);
    cfg->sliding_window = window;
    return SK_OK;
}

static sk_status llama_family_read(const cJSON *j, const char *what, const llama_type *lt, model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->arch = ARCH_LLAMA;
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", lt->model_type);
    cfg->torch_dtype = DT_F32;
    if (cJSON_GetObjectItemCaseSensitive(j, "quantization_config"))
        return sk_fail(SK_ECONFIG, "%s: field \"quantization_config\": quantized checkpoints are not supported", what);
    SK_TRY(cfg_int(j, "vocab_size", true, what, 1, CFG_MAX_VOCAB, &cfg->vocab_size));
    SK_TRY(cfg_int(j, "hidden_size", true, what, 1, CFG_MAX_EMBD, &cfg->n_embd));
    SK_TRY(cfg_int(j, "intermediate_size", true, what, 1, CFG_MAX_FFN, &cfg->ffn_dim));
    SK_TRY(cfg_int(j, "num_hidden_layers", true, what, 1, CFG_MAX_LAYERS, &cfg->n_layer));
    SK_TRY(cfg_int(j, "num_attention_heads", true, what, 1, CFG_MAX_HEADS, &cfg->n_head));
    cfg->n_kv_head = lt->default_kv_heads ? lt->default_kv_heads : cfg->n_head;
    SK_TRY(cfg_int(j, "num_key_value_heads", false, what, 1, CFG_MAX_HEADS, &cfg->n_kv_head));
    cfg->head_dim = cfg->n_embd / cfg->n_head;
    SK_TRY(cfg_int(j, "head_dim", false, what, 1, CFG_MAX_EMBD, &cfg->head_dim));
    if (cfg->head_dim == 0)
        return sk_fail(SK_ECONFIG, "%s: field \"hidden_size\" = %d is smaller than \"num_attention_heads\" = %d and no "
                       "\"head_dim\" is given", what, cfg->n_embd, cfg->n_head);
    cfg->n_positions = lt->default_positions;
    SK_TRY(cfg_int(j, "max_position_embeddings", false, what, 1, CFG_MAX_POSITIONS, &cfg->n_positions));
    cfg->norm_eps = 1e-6f;
    SK_TRY(cfg_float(j, "rms_norm_eps", what, &cfg->norm_eps));
    SK_TRY(cfg_bool(j, "tie_word_embeddings", what, &cfg->tie_word_embeddings));

    const char *act = "silu";
    if (json_get_string(j, "hidden_act", false, what, &act) != SK_OK) return SK_ECONFIG;
    if (strcmp(act, "silu"))
        return sk_fail(SK_ECONFIG, "%s: field \"hidden_act\" = \"%.40s\" is not supported (%s uses silu)", what, act,
                       lt->model_type);
    SK_TRY(llama_read_rope(j, what, cfg));

    cfg->attention_bias = lt->qkv_bias;
    if (lt->has_bias_fields) {
        bool ab = false;
        SK_TRY(cfg_bool(j, "attention_bias", what, &ab));
        if (ab)
            return sk_fail(SK_ECONFIG, "%s: field \"attention_bias\" = true is not supported (LlamaForCausalLM then "
                           "also has an o_proj bias)", what);
        SK_TRY(cfg_bool(j, "mlp_bias", what, &cfg->mlp_bias));
    }
    if (!strcmp(lt->model_type, "mistral")) {
        cfg->sliding_window = 4096;       /* MistralConfig's default; null turns it off */
        const cJSON *sw = cJSON_GetObjectItemCaseSensitive(j, "sliding_window");
        if (sw && cJSON_IsNull(sw)) cfg->sliding_window = 0;
        else SK_TRY(cfg_int(j, "sliding_window", false, what, 1, CFG_MAX_POSITIONS, &cfg->sliding_window));
    } else if (!strcmp(lt->model_type, "qwen2")) {
        SK_TRY(qwen2_read_window(j, what, cfg));
    }

    bool present;
    int one = -1, n = 0;
    SK_TRY(cfg_token_ids(j, "bos_token_id", false, what, &one, &n, &present));
    cfg->bos_token_id = present ? (n ? one : -1) : lt->default_bos;
    SK_TRY(cfg_token_ids(j, "eos_token_id", true, what, cfg->eos_token_ids, &cfg->n_eos, &present));
    if (!present && lt->default_eos >= 0) {
        cfg->eos_token_ids[0] = lt->default_eos;
        cfg->n_eos = 1;
    }
    SK_TRY(cfg_dtype(j, what, &cfg->torch_dtype));
    return SK_OK;
}

static sk_status llama_read(const cJSON *j, const char *what, model_config *cfg) {
    return llama_family_read(j, what, &llama_types[0], cfg);
}
static sk_status mistral_read(const cJSON *j, const char *what, model_config *cfg) {
    return llama_family_read(j, what, &llama_types[1], cfg);
}
static sk_status qwen2_read(const cJSON *j, const char *what, model_config *cfg) {
    return llama_family_read(j, what, &llama_types[2], cfg);
}

/* Writes what the type's config class writes in transformers 5 ("rope_parameters" with
 * rope_theta inside) plus top-level "rope_theta" and, when scaled, "rope_scaling", so
 * transformers 4 (which ignores rope_parameters) reads the same rotary settings. */
static sk_status llama_write(const model_config *cfg, cJSON *j) {
    const llama_type *lt = llama_type_find(cfg->model_type);
    SK_ASSERT(lt);   /* validate refuses other model types */
    bool is_llama = !strcmp(lt->model_type, "llama"), is_mistral = !strcmp(lt->model_type, "mistral");
    cJSON *archs = cJSON_AddArrayToObject(j, "architectures");
    if (archs) cJSON_AddItemToArray(archs, cJSON_CreateString(lt->architecture));
    if (is_llama) cJSON_AddFalseToObject(j, "attention_bias");
    cJSON_AddNumberToObject(j, "attention_dropout", 0.0);
    json_add_token_ids(j, "bos_token_id", &cfg->bos_token_id, cfg->bos_token_id >= 0 ? 1 : 0);
    cJSON_AddStringToObject(j, "dtype", dtype_torch_name(cfg->torch_dtype));
    json_add_token_ids(j, "eos_token_id", cfg->eos_token_ids, cfg->n_eos);
    /* Qwen2Config has no head_dim field (Qwen2Attention reads one if present): only when needed */
    if (strcmp(lt->model_type, "qwen2") || cfg->head_dim * cfg->n_head != cfg->n_embd)
        cJSON_AddNumberToObject(j, "head_dim", cfg->head_dim);
    cJSON_AddStringToObject(j, "hidden_act", "silu");
    cJSON_AddNumberToObject(j, "hidden_size", cfg->n_embd);
    cJSON_AddNumberToObject(j, "initializer_range", 0.02);
    cJSON_AddNumberToObject(j, "intermediate_size", cfg->ffn_dim);
    cJSON_AddNumberToObject(j, "max_position_embeddings", cfg->n_positions);
    if (!is_llama && !is_mistral) cJSON_AddNumberToObject(j, "max_window_layers", 0);   /* all layers alike */
    if (is_llama) cJSON_AddBoolToObject(j, "mlp_bias", cfg->mlp_bias);
    cJSON_AddStringToObject(j, "model_type", lt->model_type);
    cJSON_AddNumberToObject(j, "num_attention_heads", cfg->n_head);
    cJSON_AddNumberToObject(j, "num_hidden_layers", cfg->n_layer);
    cJSON_AddNumberToObject(j, "num_key_value_heads", cfg->n_kv_head);
    if (is_llama) cJSON_AddNumberToObject(j, "pretraining_tp", 1);
    json_add_float(j, "rms_norm_eps", cfg->norm_eps);
    const model_rope_scaling *rs = &cfg->rope_scaling;
    cJSON *rp = cJSON_AddObjectToObject(j, "rope_parameters");
    cJSON *sc = rs->type != ROPE_DEFAULT ? cJSON_AddObjectToObject(j, "rope_scaling") : NULL;
    cJSON *dicts[2] = {rp, sc};
    for (int k = 0; k < 2; k++) {
        cJSON *d = dicts[k];
        if (!d) continue;
        if (rs->type != ROPE_DEFAULT) json_add_float(d, "factor", rs->factor);
        if (rs->type == ROPE_LLAMA3) {
            json_add_float(d, "high_freq_factor", rs->high_freq_factor);
            json_add_float(d, "low_freq_factor", rs->low_freq_factor);
            cJSON_AddNumberToObject(d, "original_max_position_embeddings", rs->original_max_position_embeddings);
        }
        if (k == 0) json_add_float(d, "rope_theta", cfg->rope_theta);
        cJSON_AddStringToObject(d, "rope_type", rope_type_name(rs->type));
    }
    json_add_float(j, "rope_theta", cfg->rope_theta);
    if (!is_llama) {   /* mistral: the window or null; qwen2: with use_sliding_window below */
        if (cfg->sliding_window) cJSON_AddNumberToObject(j, "sliding_window", cfg->sliding_window);
        else cJSON_AddNullToObject(j, "sliding_window");
    }
    cJSON_AddBoolToObject(j, "tie_word_embeddings", cfg->tie_word_embeddings);
    cJSON_AddStringToObject(j, "torch_dtype", dtype_torch_name(cfg->torch_dtype));
    cJSON_AddTrueToObject(j, "use_cache");
    if (!is_llama && !is_mistral) cJSON_AddBoolToObject(j, "use_sliding_window", cfg->sliding_window > 0);
    cJSON_AddNumberToObject(j, "vocab_size", cfg->vocab_size);
    return SK_OK;
}

/* Llama-family parameter count, for the size cap (the plan of llama.c: embeddings, per layer
 * two norms, q/k/v/o, gate/up/down and their optional biases, final norm, untied head). */
static int64_t llama_count(const model_config *c) {
    int64_t C = c->n_embd, F = c->ffn_dim, Q = (int64_t)c->n_head * c->head_dim, KV = (int64_t)c->n_kv_head * c->head_dim;
    int64_t layer = 2 * C + C * (Q + 2 * KV) + Q * C + 3 * C * F;
    if (c->attention_bias) layer += Q + 2 * KV;
    if (c->mlp_bias) layer += 2 * F + C;
    int64_t head = c->tie_word_embeddings ? 0 : (int64_t)c->vocab_size * C;
    return (int64_t)c->vocab_size * C + c->n_layer * layer + C + head;
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
    {"llama", ARCH_LLAMA, llama_read, llama_write},
    {"mistral", ARCH_LLAMA, mistral_read, llama_write},
    {"qwen2", ARCH_LLAMA, qwen2_read, llama_write},
};

/* Known model types that arrive with a later issue: a clearer message than "unknown". */
static const char *const later_types[] = {"qwen3"};

/* The dialect writing cfg: by architecture, and for the Llama family by model_type. */
static const config_dialect *dialect_for(const model_config *cfg) {
    for (size_t i = 0; i < sizeof dialects / sizeof dialects[0]; i++)
        if (dialects[i].arch == cfg->arch && (cfg->arch != ARCH_LLAMA || !strcmp(dialects[i].model_type, cfg->model_type)))
            return &dialects[i];
    return NULL;
}

/* ---- public ---- */

/* Field names in messages: the config.json spelling of the architecture's dialect. */
typedef struct cfg_keys {
    const char *vocab, *positions, *layers, *heads, *embd, *ffn, *eps;
} cfg_keys;
static const cfg_keys gpt2_keys = {"vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "n_inner",
                                   "layer_norm_epsilon"};
static const cfg_keys llama_keys = {"vocab_size", "max_position_embeddings", "num_hidden_layers",
                                    "num_attention_heads", "hidden_size", "intermediate_size", "rms_norm_eps"};

/* The Llama-family rules beyond the shared bounds: a known model_type with the structure of
 * that type, rotary settings that give finite frequencies, a window that is not negative. */
static sk_status llama_validate(const model_config *cfg, const char *what) {
    const llama_type *lt = llama_type_find(cfg->model_type);
    if (!lt)
        return sk_fail(SK_ECONFIG, "%s: field \"model_type\" = \"%.16s\" is not a Llama-family type (llama, mistral, "
                       "qwen2)", what, cfg->model_type);
    if (cfg->attention_bias != lt->qkv_bias)
        return sk_fail(SK_ECONFIG, "%s: %s %s q/k/v biases (field \"attention_bias\")", what, lt->model_type,
                       lt->qkv_bias ? "always has" : "here has no");
    if (cfg->mlp_bias && !lt->has_bias_fields)
        return sk_fail(SK_ECONFIG, "%s: field \"mlp_bias\": %s has no MLP biases", what, lt->model_type);
    if (cfg->sliding_window < 0 || cfg->sliding_window > CFG_MAX_POSITIONS)
        return sk_fail(SK_ECONFIG, "%s: field \"sliding_window\" = %d outside [0, %d]", what, cfg->sliding_window,
                       CFG_MAX_POSITIONS);
    if (cfg->sliding_window && !strcmp(lt->model_type, "llama"))
        return sk_fail(SK_ECONFIG, "%s: field \"sliding_window\": llama has no sliding window (use mistral)", what);
    if (cfg->head_dim % 2)   /* transformers' rotate_half splits each head in two halves */
        return sk_fail(SK_ECONFIG, "%s: field \"head_dim\" = %d must be even (rotary embeddings turn pairs)", what,
                       cfg->head_dim);
    if (!(cfg->rope_theta > 1 && isfinite(cfg->rope_theta)))
        return sk_fail(SK_ECONFIG, "%s: field \"rope_theta\" = %g must be a finite number > 1", what,
                       (double)cfg->rope_theta);
    const model_rope_scaling *rs = &cfg->rope_scaling;
    if (rs->type != ROPE_DEFAULT && rs->type != ROPE_LINEAR && rs->type != ROPE_LLAMA3)
        return sk_fail(SK_ECONFIG, "%s: field \"rope_scaling\": unknown rope type %d", what, (int)rs->type);
    if (rs->type != ROPE_DEFAULT && !(rs->factor > 0 && isfinite(rs->factor)))
        return sk_fail(SK_ECONFIG, "%s: field \"rope_scaling.factor\" = %g must be a finite number > 0", what,
                       (double)rs->factor);
    if (rs->type == ROPE_LLAMA3) {
        if (!(rs->low_freq_factor > 0 && rs->high_freq_factor > rs->low_freq_factor && isfinite(rs->high_freq_factor)))
            return sk_fail(SK_ECONFIG, "%s: field \"rope_scaling\": llama3 needs 0 < low_freq_factor (%g) < "
                           "high_freq_factor (%g)", what, (double)rs->low_freq_factor, (double)rs->high_freq_factor);
        if (rs->original_max_position_embeddings < 1 || rs->original_max_position_embeddings > CFG_MAX_POSITIONS)
            return sk_fail(SK_ECONFIG, "%s: field \"rope_scaling.original_max_position_embeddings\" = %d outside "
                           "[1, %d]", what, rs->original_max_position_embeddings, CFG_MAX_POSITIONS);
    }
    if (llama_count(cfg) > CFG_MAX_PARAMS)
        return sk_fail(SK_ECONFIG, "%s: %lld parameters is too large", what, (long long)llama_count(cfg));
    return SK_OK;
}

sk_status model_config_validate(model_config *cfg, const char *what) {
    const cfg_keys *keys = cfg->arch == ARCH_LLAMA ? &llama_keys : &gpt2_keys;
#define BOUND(field, key, lo, hi)                                                                    \
    if (cfg->field < (lo) || cfg->field > (hi))                                                      \
        return sk_fail(SK_ECONFIG, "%s: field \"%s\" = %d outside [%d, %d]", what, key, cfg->field, (lo), (hi))
    BOUND(vocab_size, keys->vocab, 1, CFG_MAX_VOCAB);
    BOUND(n_positions, keys->positions, 1, CFG_MAX_POSITIONS);
    BOUND(n_layer, keys->layers, 1, CFG_MAX_LAYERS);
    BOUND(n_head, keys->heads, 1, CFG_MAX_HEADS);
    BOUND(n_embd, keys->embd, 1, CFG_MAX_EMBD);
    BOUND(ffn_dim, keys->ffn, 1, CFG_MAX_FFN);
    BOUND(n_kv_head, "num_key_value_heads", 1, cfg->n_head);
    BOUND(head_dim, "head_dim", 1, CFG_MAX_EMBD);
#undef BOUND
    if (cfg->n_head % cfg->n_kv_head)
        return sk_fail(SK_ECONFIG, "%s: field \"%s\" = %d is not a multiple of \"num_key_value_heads\" = %d", what,
                       keys->heads, cfg->n_head, cfg->n_kv_head);
    if ((int64_t)cfg->n_head * cfg->head_dim > CFG_MAX_EMBD)
        return sk_fail(SK_ECONFIG, "%s: %s * head_dim = %lld is too large", what, keys->heads,
                       (long long)cfg->n_head * cfg->head_dim);
    if (!(cfg->norm_eps > 0 && cfg->norm_eps < 1))
        return sk_fail(SK_ECONFIG, "%s: field \"%s\" = %g must be in (0, 1)", what, keys->eps, (double)cfg->norm_eps);
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
        SK_TRY(llama_validate(cfg, what));
        break;
    default:
        return sk_fail(SK_ECONFIG, "%s: unknown architecture %d", what, (int)cfg->arch);
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
        st = sk_fail(SK_ECONFIG, "%s: field \"model_type\" = \"%.60s\" is unknown (supported: gpt2, llama, mistral, qwen2)", path, type);
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
    const config_dialect *d = dialect_for(&c);
    SK_ASSERT(d);   /* validate refuses architectures and model types without a dialect */
    cJSON *j = cJSON_CreateObject();
    if (!j) return sk_fail(SK_ENOMEM, "%s: out of memory", path);
    sk_status st = d->write(&c, j);
    if (st == SK_OK) st = json_save_file(path, j);
    cJSON_Delete(j);
    return st;
}
