/* model: the architecture-independent part: planning and allocating the flat parameter
 * buffer, lookups, the wrappers over the architecture table, and the sequences' key/value
 * memory (model_kv) (see model.h). Reading folders into models is weights.c. */
#include "model/model.h"

#include "model/devw.h"
#include "model/arch.h"
#include "model/tp.h"

#include <string.h>

const model_arch *model_arch_get(model_arch_kind kind) {
    switch (kind) {
    case ARCH_GPT2: return &gpt2_arch;
    case ARCH_LLAMA: return &llama_arch;
    }
    SK_ASSERT(!"model_arch_get: unknown architecture kind");
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

sk_status model_plan(const model_config *cfg, backend *be, model **out) {
    const model_arch *arch = model_arch_get(cfg->arch);
    model *m = mem_calloc(sizeof *m);
    if (!m) return SK_ENOMEM;
    m->cfg = *cfg;
    m->arch = arch;
    m->be = be;
    tp_init(&m->tp, cfg, 0, 1);
    m->n_specs = arch->plan_params(cfg, NULL);
    m->specs = mem_calloc(sizeof(model_param) * (size_t)m->n_specs);
    if (!m->specs) goto err;
    arch->plan_params(cfg, m->specs);
    const model_param *last = &m->specs[m->n_specs - 1];
    m->n_params = last->offset + last->numel;
    /* groups: maximal runs of consecutive specs with the same layer */
    for (int i = 0; i < m->n_specs; i++)
        if (i == 0 || m->specs[i].layer != m->specs[i - 1].layer) m->n_groups++;
    m->groups = mem_calloc(sizeof(model_group) * (size_t)m->n_groups);
    m->param_base = mem_calloc(sizeof(float *) * (size_t)m->n_groups);
    m->grad_base = mem_calloc(sizeof(float *) * (size_t)m->n_groups);
    if (!m->groups || !m->param_base || !m->grad_base) goto err;
    for (int i = 0, g = -1; i < m->n_specs; i++) {
        model_param *p = &m->specs[i];
        if (i == 0 || p->layer != m->specs[i - 1].layer) {
            g++;
            m->groups[g].begin = p->offset;
            m->groups[g].layer = p->layer;
        }
        SK_ASSERT(p->offset == m->groups[g].begin + m->groups[g].count);   /* contiguous plan */
        m->groups[g].count += p->numel;
        p->group = g;
    }
    model_reset_bases(m);
    *out = m;
    return SK_OK;
err:
    model_free(m);
    return sk_fail(SK_ENOMEM, "allocating the plan of a model of %d layers", cfg->n_layer);
}

sk_status model_create(const model_config *cfg, backend *be, model **out) {
    model *m = NULL;
    SK_TRY(model_plan(cfg, be, &m));
    m->params = backend_alloc(be, m->n_params * sizeof(float));
    if (!m->params) {
        size_t n_params = m->n_params;
        model_free(m);
        return sk_fail_ctx(SK_ENOMEM, "allocating a model of %zu parameters", n_params);
    }
    model_reset_bases(m);
    *out = m;
    return SK_OK;
}

void model_free(model *m) {
    if (!m) return;
    if (m->arch && m->arch->free_state) m->arch->free_state(m);
    tp_free(m);
    if (m->params) backend_mem_free(m->be, m->params);
    if (m->grads) backend_mem_free(m->be, m->grads);
    if (m->compute) backend_mem_free(m->be, m->compute);
    if (m->resident) backend_mem_free(m->be, m->resident);
    mem_free(m->resident_at);
    mem_free(m->groups);
    mem_free(m->param_base);
    mem_free(m->grad_base);
    mem_free(m->specs);
    mem_free(m->views);
    devw_free(m->dev);
    wts_free(m->weights);
    mem_free(m);
}

const model_param *model_find_param(const model *m, const char *name) {
    for (int i = 0; i < m->n_specs; i++)
        if (!strcmp(m->specs[i].name, name)) return &m->specs[i];
    return NULL;
}

void model_init_weights(model *m, uint64_t seed) {
    SK_ASSERT(!model_is_inference(m));   /* mapped weights are immutable */
    m->arch->init_weights(m, seed);
    m->compute_stale = true;
}

sk_status model_set_precision(model *m, dtype act_dt) {
    if (act_dt != DT_F32 && act_dt != DT_BF16)
        return sk_fail(SK_EARG, "precision %s: training runs in f32 or bf16 mixed precision", dtype_name(act_dt));
    if (act_dt != DT_F32 && !backend_supports(m->be, BACKEND_OP_MIXED, act_dt))
        return sk_fail(SK_EARG, "the %s backend has no %s mixed-precision ops", m->be->name, dtype_name(act_dt));
    if (model_is_inference(m) || (act_dt != DT_F32 && !m->params))
        return sk_fail(SK_ESTATE, "mixed precision needs a training model with its f32 parameters in place");
    if (act_dt == m->act_dt) return SK_OK;
    if (m->compute) backend_mem_free(m->be, m->compute);
    m->compute = NULL;
    m->act_dt = act_dt;
    m->compute_stale = true;
    if (m->arch->free_state) m->arch->free_state(m);   /* activations are planned per dtype */
    return SK_OK;
}

void model_params_changed(model *m) { m->compute_stale = true; }

void model_write_compute(model *m, int g, const float *src) {
    SK_ASSERT(g >= 0 && g < m->n_groups);
    if (!m->compute) return;
    const model_group *gr = &m->groups[g];
    m->be->ops->cast(m->be, NULL, tensor_1d((char *)m->compute + gr->begin * dtype_size(m->act_dt), m->act_dt,
                                            (int64_t)gr->count),
                     tensor_1d((void *)src, DT_F32, (int64_t)gr->count));
}

void model_compute_written(model *m) {
    SK_ASSERT(m->compute);
    m->compute_stale = false;
}

/* Casts m->params into the compute copy when they changed (mixed precision only). Released
 * parameters (ZeRO-3): the provider writes the copy group by group (model_write_compute). */
static void model_refresh_compute(model *m) {
    if (!m->compute || !m->compute_stale || !m->params) return;
    const int64_t n = (int64_t)m->n_params;
    m->be->ops->cast(m->be, NULL, tensor_1d(m->compute, m->act_dt, n), tensor_1d(m->params, DT_F32, n));
    m->compute_stale = false;
}

/* Allocates the compute copy of mixed precision when it is missing (stale until cast). */
static sk_status model_alloc_compute(model *m) {
    if (m->act_dt == DT_F32 || m->compute) return SK_OK;
    m->compute = backend_alloc(m->be, m->n_params * dtype_size(m->act_dt));
    if (!m->compute)
        return sk_fail_ctx(SK_ENOMEM, "allocating the %s copy of %zu parameters", dtype_name(m->act_dt), m->n_params);
    m->compute_stale = true;
    return SK_OK;
}

bool model_spec_resident(const model *m, int i) { return m->specs[i].ndim == 1 || m->specs[i].layer < 0; }

size_t model_resident_numel(const model *m) {
    size_t n = 0;
    for (int i = 0; i < m->n_specs; i++)
        if (model_spec_resident(m, i)) n += m->specs[i].numel;
    return n;
}

sk_status model_release_master(model *m) {
    SK_ASSERT(m->params && m->act_dt != DT_F32 && !m->resident);
    SK_TRY(model_alloc_compute(m));
    model_refresh_compute(m);
    const size_t total = model_resident_numel(m);
    if (!(m->resident_at = mem_alloc(sizeof(size_t) * (size_t)m->n_specs))) return SK_ENOMEM;
    size_t at = 0;
    for (int i = 0; i < m->n_specs; i++) {
        m->resident_at[i] = model_spec_resident(m, i) ? at : SIZE_MAX;
        if (model_spec_resident(m, i)) at += m->specs[i].numel;
    }
    if (!(m->resident = backend_alloc(m->be, (total ? total : 1) * sizeof(float)))) {
        mem_free(m->resident_at);
        m->resident_at = NULL;
        return sk_fail_ctx(SK_ENOMEM, "allocating the %zu resident f32 parameters", total);
    }
    for (int i = 0; i < m->n_specs; i++)
        if (m->resident_at[i] != SIZE_MAX)
            m->be->ops->copy(m->be, m->resident + m->resident_at[i], m->params + m->specs[i].offset,
                             m->specs[i].numel * sizeof(float), COPY_DEVICE_TO_DEVICE, NULL);
    backend_synchronize(m->be);
    model_release_params(m);
    return SK_OK;
}

void model_reset_bases(model *m) {
    for (int g = 0; g < m->n_groups; g++) {
        m->param_base[g] = m->params ? m->params + m->groups[g].begin : NULL;
        m->grad_base[g] = m->grads ? m->grads + m->groups[g].begin : NULL;
    }
}

void model_set_param_provider(model *m, const model_param_provider *p, void *ctx) {
    SK_ASSERT(!model_is_inference(m) && (!p || !p->external_grads || !m->grads));
    m->provider = p;
    m->provider_ctx = p ? ctx : NULL;
    m->grads_external = p && p->external_grads;
    if (!p) model_reset_bases(m);
}

void model_release_params(model *m) {
    SK_ASSERT(!model_is_inference(m));
    backend_mem_free(m->be, m->params);
    m->params = NULL;
    model_reset_bases(m);
}

void model_set_param_base(model *m, int g, float *p) {
    SK_ASSERT(g >= 0 && g < m->n_groups);
    m->param_base[g] = p;
}

void model_set_grad_base(model *m, int g, float *p) {
    SK_ASSERT(g >= 0 && g < m->n_groups);
    m->grad_base[g] = p;
}

size_t model_train_bytes(const model *m, int B, int T) {
    return m->arch->train_bytes ? m->arch->train_bytes(m, B, T) : 0;
}

sk_status model_train_prepare(model *m, int B, int T) {
    if (model_is_inference(m))
        return sk_fail(SK_ESTATE, "%s: the model was opened for inference over mapped weights (or their device "
                       "copy); training needs the f32 copy of model_load", m->weights ? wts_path(m->weights) : "random weights");
    if (!m->grads && !m->grads_external) {
        m->grads = backend_alloc(m->be, m->n_params * sizeof(float));
        if (!m->grads) return sk_fail_ctx(SK_ENOMEM, "allocating gradients for %zu parameters", m->n_params);
        for (int g = 0; g < m->n_groups; g++) m->grad_base[g] = m->grads + m->groups[g].begin;
    }
    SK_TRY(model_alloc_compute(m));
    return m->arch->train_prepare(m, B, T);
}

float model_forward(model *m, const int *tokens, const int *targets, int B, int T) {
    model_refresh_compute(m);
    return m->arch->forward(m, tokens, targets, B, T);
}

void model_backward(model *m, float dloss) { m->arch->backward(m, dloss); }

void model_zero_grad(model *m) {
    if (!m->grads) return;   /* external gradients: their owner zeroes them */
    backend_zero(m->be, m->grads, m->n_params * sizeof(float));
}

tensor model_logits(const model *m) { return m->arch->logits(m); }

/* A sequence's keys and values (model.h): mem holds the keys (L, max_T, KD), then the values
 * (L, max_T, KD), KD = n_kv_head * head_dim (C for GPT-2); positions 0..pos-1 are filled.
 * To the architectures it is a model_kv_cache of one block (model_infer_step). */
struct model_kv {
    backend *be;
    int n_layer, kd, max_T;
    int pos;                 /* next position; model_infer_step advances it */
    unsigned char *mem;      /* backend memory, model_infer_dtype */
    dtype dt;
    int *pos_ids;            /* (max_T) host: 0, 1, ..., max_T-1 (positions and slots of a step) */
};

sk_status model_kv_create(model *m, int max_T, model_kv **out) {
    const model_config *c = &m->cfg;
    *out = NULL;
    if (max_T <= 0 || max_T > c->n_positions)
        return sk_fail(SK_EARG, "inference length %d outside 1..%d (the model's context)", max_T, c->n_positions);
    if (m->tp.size > 1)
        return sk_fail(SK_EARG, "a model split over %d ranks runs through the engine (engine.h), whose other ranks "
                       "follow its steps", m->tp.size);
    SK_TRY(model_infer_prepare(m, max_T, 1, max_T));
    model_kv *kv = mem_calloc(sizeof *kv);
    if (!kv) return SK_ENOMEM;
    kv->be = m->be;
    kv->n_layer = c->n_layer;
    kv->kd = c->n_kv_head * c->head_dim;
    kv->max_T = max_T;
    kv->dt = model_infer_dtype(m);
    kv->mem = backend_alloc(m->be, dtype_size(kv->dt) * 2 * (size_t)c->n_layer * (size_t)max_T * (size_t)kv->kd);
    kv->pos_ids = mem_alloc(sizeof(int) * (size_t)max_T);
    if (!kv->mem || !kv->pos_ids) {
        model_kv_free(kv);
        return sk_fail_ctx(SK_ENOMEM, "allocating a KV cache of %d positions", max_T);
    }
    for (int t = 0; t < max_T; t++) kv->pos_ids[t] = t;
    *out = kv;
    return SK_OK;
}

void model_kv_reset(model_kv *kv) { kv->pos = 0; }
int model_kv_pos(const model_kv *kv) { return kv->pos; }

void model_kv_free(model_kv *kv) {
    if (!kv) return;
    backend_mem_free(kv->be, kv->mem);
    mem_free(kv->pos_ids);
    mem_free(kv);
}

/* The contiguous cache is one block of max_T rows: position t is slot t. */
tensor model_infer_step(model *m, model_kv *kv, const int *tokens, int n) {
    SK_ASSERT(kv->n_layer == m->cfg.n_layer && kv->kd == m->cfg.n_kv_head * m->cfg.head_dim);
    SK_ASSERT(n > 0 && kv->pos + n <= kv->max_T);
    const size_t per_layer = (size_t)kv->max_T * kv->kd;
    const model_kv_cache cache = {kv->mem, kv->mem + (size_t)kv->n_layer * per_layer * dtype_size(kv->dt), kv->dt,
                                  per_layer, 1, kv->max_T};
    const int seq[3] = {0, n, kv->pos + n}, table[1] = {0}, last = n - 1;
    const model_batch b = {n, tokens, kv->pos_ids + kv->pos, kv->pos_ids + kv->pos, 1, seq, table, 1, 1, &last, NULL, 0, false};
    tensor logits = model_infer_batch(m, &cache, &b);
    kv->pos += n;
    return tensor_reshape(logits, 1, &logits.shape[1]);
}

sk_status model_infer_prepare(model *m, int max_tokens, int max_seqs, int max_ctx) {
    const int P = m->cfg.n_positions;
    if (max_ctx <= 0 || max_ctx > P || max_tokens <= 0 || max_seqs <= 0)
        return sk_fail(SK_EARG, "inference batches of %d tokens, %d sequences, context %d: each must be positive, the "
                       "context at most the model's %d", max_tokens, max_seqs, max_ctx, P);
    if (!backend_supports_paged(m->be)) return SK_EARG;
    SK_TRY(tp_prepare(m, max_tokens, max_seqs));
    return m->arch->infer_prepare(m, max_tokens, max_seqs, max_ctx);
}

dtype model_infer_dtype(const model *m) { return m->dev ? DT_BF16 : m->tp.lp; }

void model_infer_upload(model *m, const model_kv_cache *kv, const model_batch *b) {
    const int N = b->n_tokens, S = b->n_seqs, BS = kv->block_size;
    SK_ASSERT(N > 0 && S > 0 && b->n_out > 0 && b->n_out <= S && b->max_blocks > 0 && BS > 0);
    for (int i = 0; i < S; i++) {
        const int r0 = b->seq[3 * i], nq = b->seq[3 * i + 1], ctx = b->seq[3 * i + 2];
        SK_ASSERT(r0 >= 0 && nq > 0 && r0 + nq <= N && nq <= ctx && ctx <= b->max_blocks * BS);
        for (int t = 0; t < nq; t++) {
            const int p = ctx - nq + t, blk = b->tables[(size_t)i * b->max_blocks + p / BS];
            SK_ASSERT(b->pos[r0 + t] == p && blk >= 0 && blk < kv->n_blocks &&
                      (b->slot[r0 + t] == blk * BS + p % BS || (b->slot[r0 + t] == -1 && ctx == 1)));
        }
    }
    for (int i = 0; i < b->n_out; i++) SK_ASSERT(b->out_rows[i] >= 0 && b->out_rows[i] < N);
    SK_ASSERT(!b->token_src || m->tp.size == 1);
    arch_check_tokens(m, b->tokens, (size_t)N, b->token_src ? b->n_token_src : 0);
    m->arch->infer_upload(m, b);
}

tensor model_infer_compute(model *m, const model_kv_cache *kv, const model_batch *b) {
    return m->arch->infer_batch(m, kv, b);
}

tensor model_infer_batch(model *m, const model_kv_cache *kv, const model_batch *b) {
    model_infer_upload(m, kv, b);
    return model_infer_compute(m, kv, b);
}

unsigned model_infer_epoch(const model *m) { return m->infer_epoch; }

int64_t model_logits_ld(const model *m) { return arch_vocab_padded(m->cfg.vocab_size); }

/* Spec i's place through its group's base (a parameter or gradient base pointer), as an f32
 * view of the spec's shape. */
static tensor model_spec_view(const model *m, int i, float *const *bases) {
    const model_param *p = &m->specs[i];
    return tensor_make(bases[p->group] + (p->offset - m->groups[p->group].begin), DT_F32, MEM_DEVICE, p->ndim, p->shape);
}

tensor model_param_view(const model *m, int i) {
    SK_ASSERT(i >= 0 && i < m->n_specs);
    if (m->views) return m->views[i];
    if (m->resident) {   /* the master lives elsewhere: only resident specs are read as f32 */
        const model_param *p = &m->specs[i];
        SK_ASSERT(m->resident_at[i] != SIZE_MAX);
        return tensor_make(m->resident + m->resident_at[i], DT_F32, MEM_DEVICE, p->ndim, p->shape);
    }
    return model_spec_view(m, i, m->param_base);
}
tensor model_grad_view(const model *m, int i) { return model_spec_view(m, i, m->grad_base); }

tensor model_compute_view(const model *m, int i) {
    if (!m->compute) return model_param_view(m, i);
    const model_param *p = &m->specs[i];
    return tensor_make((char *)m->compute + p->offset * dtype_size(m->act_dt), m->act_dt, MEM_DEVICE, p->ndim, p->shape);
}
