/* presets: named model shapes (see presets.h). GPT-2 presets are the GPT-2 family with HF's
 * vocabulary; Llama presets are the shapes of Meta's released checkpoints (config.json of
 * meta-llama/Llama-2-*-hf, Meta-Llama-3-*, and LLaMA-1 30B), with their rope_theta, RMSNorm
 * epsilon, untied heads and special-token ids, plus "llama-1b" (TinyLlama-1.1B's shape and
 * context, the anchors' llama-1b) and "llama-tiny" for tests. */
#include "model/presets.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int layers, heads, dim, context, vocab;
} gpt2_presets[] = {
    {"gpt2", 12, 12, 768, 1024, 50257},
    {"gpt2-medium", 24, 16, 1024, 1024, 50257},
    {"gpt2-large", 36, 20, 1280, 1024, 50257},
    {"gpt2-xl", 48, 25, 1600, 1024, 50257},
    {"gpt2-tiny", 2, 2, 64, 128, 50257},   /* for tests and quick trials */
};

typedef struct llama_preset {
    const char *name;
    int layers, heads, kv_heads, dim, ffn, context, vocab;
    float rope_theta, norm_eps;
    int bos, eos;
} llama_preset;

static const llama_preset llama_presets[] = {
    {"llama-tiny", 2, 4, 2, 64, 160, 256, 512, 10000.0f, 1e-5f, 1, 2},   /* tests, quick trials */
    {"llama-1b", 22, 32, 4, 2048, 5632, 2048, 32000, 10000.0f, 1e-5f, 1, 2},   /* TinyLlama-1.1B */
    {"llama2-7b", 32, 32, 32, 4096, 11008, 4096, 32000, 10000.0f, 1e-5f, 1, 2},
    {"llama2-13b", 40, 40, 40, 5120, 13824, 4096, 32000, 10000.0f, 1e-5f, 1, 2},
    {"llama-30b", 60, 52, 52, 6656, 17920, 2048, 32000, 10000.0f, 1e-6f, 1, 2},
    {"llama2-70b", 80, 64, 8, 8192, 28672, 4096, 32000, 10000.0f, 1e-5f, 1, 2},
    {"llama3-8b", 32, 32, 8, 4096, 14336, 8192, 128256, 500000.0f, 1e-5f, 128000, 128001},
    {"llama3-70b", 80, 64, 8, 8192, 28672, 8192, 128256, 500000.0f, 1e-5f, 128000, 128001},
};

#define N_GPT2 (int)(sizeof gpt2_presets / sizeof gpt2_presets[0])
#define N_LLAMA (int)(sizeof llama_presets / sizeof llama_presets[0])

void model_config_llama(model_config *cfg, int n_layer, int n_head, int n_kv_head, int n_embd, int ffn_dim,
                        int n_ctx, int vocab) {
    memset(cfg, 0, sizeof *cfg);
    cfg->arch = ARCH_LLAMA;
    snprintf(cfg->model_type, sizeof cfg->model_type, "llama");
    cfg->vocab_size = vocab;
    cfg->n_positions = n_ctx;
    cfg->n_layer = n_layer;
    cfg->n_head = n_head;
    cfg->n_kv_head = n_kv_head;
    cfg->n_embd = n_embd;
    cfg->ffn_dim = ffn_dim;
    cfg->head_dim = n_head > 0 ? n_embd / n_head : 0;
    cfg->norm_eps = 1e-5f;
    cfg->rope_theta = 10000.0f;
    cfg->rope_scaling.type = ROPE_DEFAULT;
    cfg->tie_word_embeddings = false;
    cfg->bos_token_id = -1;
    cfg->n_eos = 0;
    cfg->torch_dtype = DT_BF16;
}

bool model_preset_exists(const char *name) { return model_preset_arch(name) >= 0; }

int model_preset_arch(const char *name) {
    for (int i = 0; i < N_GPT2; i++)
        if (!strcmp(gpt2_presets[i].name, name)) return ARCH_GPT2;
    for (int i = 0; i < N_LLAMA; i++)
        if (!strcmp(llama_presets[i].name, name)) return ARCH_LLAMA;
    return -1;
}

sk_status model_preset(const char *name, int vocab, model_config *cfg) {
    for (int i = 0; i < N_GPT2; i++) {
        if (strcmp(gpt2_presets[i].name, name) != 0) continue;
        model_config_gpt2(cfg, gpt2_presets[i].layers, gpt2_presets[i].heads, gpt2_presets[i].dim,
                          gpt2_presets[i].context, vocab > 0 ? vocab : gpt2_presets[i].vocab);
        cfg->bos_token_id = cfg->vocab_size == 50257 ? 50256 : -1;
        if (cfg->vocab_size == 50257) cfg->eos_token_ids[cfg->n_eos++] = 50256;
        return SK_OK;
    }
    for (int i = 0; i < N_LLAMA; i++) {
        if (strcmp(llama_presets[i].name, name) != 0) continue;
        const llama_preset *p = &llama_presets[i];
        model_config_llama(cfg, p->layers, p->heads, p->kv_heads, p->dim, p->ffn, p->context,
                           vocab > 0 ? vocab : p->vocab);
        cfg->rope_theta = p->rope_theta;
        cfg->norm_eps = p->norm_eps;
        if (cfg->vocab_size == p->vocab) {   /* the ids belong to the preset's own vocabulary */
            cfg->bos_token_id = p->bos;
            cfg->eos_token_ids[cfg->n_eos++] = p->eos;
        }
        return SK_OK;
    }
    return sk_fail(SK_EARG, "unknown preset '%s' (gpt2, gpt2-medium, gpt2-large, gpt2-xl, gpt2-tiny, llama-tiny, "
                   "llama-1b, llama2-7b, llama2-13b, llama-30b, llama2-70b, llama3-8b, llama3-70b)", name);
}
