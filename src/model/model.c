/* model: the architecture-independent part: planning and allocating the flat parameter
 * buffer, lookups, and the wrappers over the architecture table (see model.h). */
#include "model/model.h"

#include <string.h>

static const model_arch *model_arch_for(model_arch_kind kind) {
    switch (kind) {
    case ARCH_GPT2: return &gpt2_arch;
    case ARCH_LLAMA: return &llama_arch;
    }
    return NULL;
}

void model_config_gpt2(model_config *cfg, int n_layer, int n_head, int n_embd, int n_ctx, int vocab) {
    memset(cfg, 0, sizeof *cfg);
    cfg->arch = ARCH_GPT2;
    cfg->vocab_size = vocab;
    cfg->n_positions = n_ctx;
    cfg->n_layer = n_layer;
    cfg->n_head = n_head;
    cfg->n_kv_head = n_head;
    cfg->n_embd = n_embd;
    cfg->ffn_dim = 4 * n_embd;
    cfg->head_dim = n_head > 0 ? n_embd / n_head : 0;
    cfg->norm_eps = 1e-5f;
    cfg->resid_pdrop = cfg->embd_pdrop = cfg->attn_pdrop = 0.1f;
    cfg->tie_word_embeddings = true;
    cfg->bos_token_id = -1;
    cfg->n_eos = 0;
    cfg->torch_dtype = DT_F32;
}

sk_status model_create(const model_config *cfg, backend *be, model **out) {
    const model_arch *arch = model_arch_for(cfg->arch);
    if (!arch) return sk_fail(SK_ECONFIG, "architecture not supported by this build");
    model *m = mem_calloc(sizeof *m);
    if (!m) return SK_ENOMEM;
    m->cfg = *cfg;
    m->arch = arch;
    m->be = be;
    m->n_specs = arch->plan_params(cfg, NULL);
    m->specs = mem_calloc(sizeof(model_param) * (size_t)m->n_specs);
    if (!m->specs) goto err;
    arch->plan_params(cfg, m->specs);
    const model_param *last = &m->specs[m->n_specs - 1];
    m->n_params = last->offset + last->numel;
    m->params = be->ops->alloc(be, m->n_params * sizeof(float));
    if (!m->params) goto err;
    *out = m;
    return SK_OK;
err:;
    size_t n_params = m->n_params;
    model_free(m);
    return sk_fail_ctx(SK_ENOMEM, "allocating a model of %zu parameters", n_params);
}

void model_free(model *m) {
    if (!m) return;
    if (m->arch && m->arch->free_state) m->arch->free_state(m);
    if (m->params) m->be->ops->free(m->be, m->params);
    if (m->grads) m->be->ops->free(m->be, m->grads);
    mem_free(m->specs);
    mem_free(m);
}

const model_param *model_find_param(const model *m, const char *name) {
    for (int i = 0; i < m->n_specs; i++)
        if (!strcmp(m->specs[i].name, name)) return &m->specs[i];
    return NULL;
}

void model_init_weights(model *m, uint64_t seed) { m->arch->init_weights(m, seed); }

sk_status model_train_prepare(model *m, int B, int T) { return m->arch->train_prepare(m, B, T); }

float model_forward(model *m, const int *tokens, const int *targets, int B, int T) {
    return m->arch->forward(m, tokens, targets, B, T);
}

void model_backward(model *m, float dloss) { m->arch->backward(m, dloss); }

void model_zero_grad(model *m) {
    SK_ASSERT(m->grads);
    m->be->ops->zero(m->be, m->grads, m->n_params * sizeof(float));
}

const float *model_logits(const model *m) { return m->arch->logits(m); }

sk_status model_infer_prepare(model *m, int max_T) { return m->arch->infer_prepare(m, max_T); }
void model_infer_reset(model *m) { m->arch->infer_reset(m); }
const float *model_infer_step(model *m, const int *tokens, int n) { return m->arch->infer_step(m, tokens, n); }
