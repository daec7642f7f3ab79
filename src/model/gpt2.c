/* gpt2: GPT-2 (Radford et al. 2019) as transformers' GPT2LMHeadModel lays it out: learned
 * position embeddings, pre-LayerNorm blocks, Conv1D weights stored (in, out), tanh GELU,
 * LM head tied to wte.
 *
 * Letters: B batch, T time, C channels, L layers, NH heads, V vocabulary. */
#include "model/model.h"

#include <stdio.h>
#include <string.h>

static void plan_one(model_param *specs, int *n, size_t *off, int layer, bool decay,
                     const char *name, int ndim, int64_t d0, int64_t d1) {
    if (specs) {
        model_param *p = &specs[*n];
        snprintf(p->name, sizeof p->name, "%s", name);
        p->ndim = ndim;
        p->shape[0] = d0;
        p->shape[1] = ndim > 1 ? d1 : 0;
        p->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
        p->offset = *off;
        p->decay = decay;
        p->layer = layer;
        *off += p->numel;
    }
    (*n)++;
}

/* Order: wte (V,C), wpe (T,C), then per layer ln_1, attn.c_attn (C,3C), attn.c_proj (C,C),
 * ln_2, mlp.c_fc (C,F), mlp.c_proj (F,C), then ln_f. Conv1D weights are (in, out). */
static int gpt2_plan_params(const model_config *cfg, model_param *specs) {
    int n = 0;
    size_t off = 0;
    const int64_t C = cfg->n_embd, F = cfg->ffn_dim;
    char name[96];
    plan_one(specs, &n, &off, -1, true, "wte.weight", 2, cfg->vocab_size, C);
    plan_one(specs, &n, &off, -1, true, "wpe.weight", 2, cfg->n_positions, C);
    for (int l = 0; l < cfg->n_layer; l++) {
#define P(suffix, decay, ndim, d0, d1) \
        (snprintf(name, sizeof name, "h.%d." suffix, l), plan_one(specs, &n, &off, l, decay, name, ndim, d0, d1))
        P("ln_1.weight", false, 1, C, 0);
        P("ln_1.bias", false, 1, C, 0);
        P("attn.c_attn.weight", true, 2, C, 3 * C);
        P("attn.c_attn.bias", false, 1, 3 * C, 0);
        P("attn.c_proj.weight", true, 2, C, C);
        P("attn.c_proj.bias", false, 1, C, 0);
        P("ln_2.weight", false, 1, C, 0);
        P("ln_2.bias", false, 1, C, 0);
        P("mlp.c_fc.weight", true, 2, C, F);
        P("mlp.c_fc.bias", false, 1, F, 0);
        P("mlp.c_proj.weight", true, 2, F, C);
        P("mlp.c_proj.bias", false, 1, C, 0);
#undef P
    }
    plan_one(specs, &n, &off, -1, false, "ln_f.weight", 1, C, 0);
    plan_one(specs, &n, &off, -1, false, "ln_f.bias", 1, C, 0);
    return n;
}

const model_arch gpt2_arch = {
    .name = "gpt2",
    .plan_params = gpt2_plan_params,
};
