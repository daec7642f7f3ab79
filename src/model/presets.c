/* presets: named model shapes (see presets.h). */
#include "model/presets.h"

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

#define N_PRESETS (int)(sizeof gpt2_presets / sizeof gpt2_presets[0])

bool model_preset_exists(const char *name) {
    for (int i = 0; i < N_PRESETS; i++)
        if (!strcmp(gpt2_presets[i].name, name)) return true;
    return false;
}

sk_status model_preset(const char *name, int vocab, model_config *cfg) {
    for (int i = 0; i < N_PRESETS; i++) {
        if (strcmp(gpt2_presets[i].name, name) != 0) continue;
        model_config_gpt2(cfg, gpt2_presets[i].layers, gpt2_presets[i].heads, gpt2_presets[i].dim,
                          gpt2_presets[i].context, vocab > 0 ? vocab : gpt2_presets[i].vocab);
        cfg->bos_token_id = cfg->vocab_size == 50257 ? 50256 : -1;
        if (cfg->vocab_size == 50257) cfg->eos_token_ids[cfg->n_eos++] = 50256;
        return SK_OK;
    }
    return sk_fail(SK_EARG, "unknown preset '%s' (gpt2, gpt2-medium, gpt2-large, gpt2-xl, gpt2-tiny)", name);
}
