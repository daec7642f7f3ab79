/* llama: the Llama family as transformers' LlamaForCausalLM, MistralForCausalLM and
 * Qwen2ForCausalLM lay it out: token embeddings without positions, pre-RMSNorm blocks,
 * rotary position embeddings on q and k (rope_theta, with the "linear" and "llama3"
 * frequency scalings), grouped-query attention (NKV KV heads shared by NH/NKV query heads
 * each, head size HS = head_dim, which need not be C/NH), optional q/k/v biases (Qwen2),
 * optional sliding-window attention (Mistral v0.1), SwiGLU MLP, an LM head tied to the
 * embeddings or separate. nn.Linear weights are stored (out, in). Training forward/backward
 * and KV-cached inference are written only against the backend table (backend.h).
 * Training reads f32 parameters (a training model); inference also runs over mapped
 * weights, whose matrices (embeddings, projections, head) reach the backend's matmul and
 * embed in the file's dtype and whose norms and biases are f32 copies.
 *
 * One block, in the order the forward runs it (x is the residual stream):
 *   ln1 = RMSNorm(x); q = rope(ln1 Wq^T + bq); k = rope(ln1 Wk^T + bk); v = ln1 Wv^T + bv;
 *   x2 = x + attention(q, k, v) Wo^T;  ln2 = RMSNorm(x2);
 *   x3 = x2 + (silu(ln2 Wg^T) * (ln2 Wu^T)) Wd^T
 * and at the end logits = RMSNorm_f(x) head^T, head = lm_head or embed_tokens (tied).
 *
 * Invariants (as gpt2.c): train_prepare plans every activation for its (B,T), the rotary
 * cos/sin table included, in one backend allocation; forward and backward allocate
 * nothing (infer_batch neither: its workspace and tables come from infer_prepare, its keys
 * and values from the caller's cache). With targets the forward leaves
 * (softmax - onehot) in place of the logits; backward folds dloss into the products that
 * read it. Gradients accumulate. Dropout is not implemented for this family (released
 * checkpoints use attention_dropout 0): train_prepare refuses a model with m->dropout set.
 *
 * Letters: B batch, T time, N = B*T rows, C channels (hidden_size), NH heads, NKV KV heads,
 * HS head size, QD = NH*HS, KD = NKV*HS, F MLP width (intermediate_size), L layers,
 * V vocabulary, W sliding window (0: none). */
#include "model/arch.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/rng.h"

/* ---- parameters ---- */

/* Order: embed_tokens (V,C); per layer input_layernorm (C), q_proj (QD,C) [+bias (QD)],
 * k_proj (KD,C) [+bias], v_proj (KD,C) [+bias], o_proj (C,QD), post_attention_layernorm (C),
 * gate_proj (F,C) [+bias (F)], up_proj (F,C) [+bias], down_proj (C,F) [+bias (C)]; then
 * norm (C) and, untied, lm_head (V,C). q/k/v biases with attention_bias, MLP biases with
 * mlp_bias; o_proj never has one (no config in the family asks for it). */
static int llama_plan_params(const model_config *cfg, model_param *specs) {
    int n = 0;
    size_t off = 0;
    const int64_t C = cfg->n_embd, F = cfg->ffn_dim, QD = (int64_t)cfg->n_head * cfg->head_dim,
                  KD = (int64_t)cfg->n_kv_head * cfg->head_dim;
    const bool ab = cfg->attention_bias, mb = cfg->mlp_bias;
    arch_plan_param(specs, &n, &off, -1, true, 2, cfg->vocab_size, C, "model.embed_tokens.weight");
    for (int l = 0; l < cfg->n_layer; l++) {
#define P(suffix, decay, ndim, d0, d1) \
        arch_plan_param(specs, &n, &off, l, decay, ndim, d0, d1, "model.layers.%d." suffix, l)
        P("input_layernorm.weight", false, 1, C, 0);
        P("self_attn.q_proj.weight", true, 2, QD, C);
        if (ab) P("self_attn.q_proj.bias", false, 1, QD, 0);
        P("self_attn.k_proj.weight", true, 2, KD, C);
        if (ab) P("self_attn.k_proj.bias", false, 1, KD, 0);
        P("self_attn.v_proj.weight", true, 2, KD, C);
        if (ab) P("self_attn.v_proj.bias", false, 1, KD, 0);
        P("self_attn.o_proj.weight", true, 2, C, QD);
        P("post_attention_layernorm.weight", false, 1, C, 0);
        P("mlp.gate_proj.weight", true, 2, F, C);
        if (mb) P("mlp.gate_proj.bias", false, 1, F, 0);
        P("mlp.up_proj.weight", true, 2, F, C);
        if (mb) P("mlp.up_proj.bias", false, 1, F, 0);
        P("mlp.down_proj.weight", true, 2, C, F);
        if (mb) P("mlp.down_proj.bias", false, 1, C, 0);
#undef P
    }
    arch_plan_param(specs, &n, &off, -1, false, 1, C, 0, "model.norm.weight");
    if (!cfg->tie_word_embeddings) arch_plan_param(specs, &n, &off, -1, true, 2, cfg->vocab_size, C, "lm_head.weight");
    return n;
}

/* Which spec holds each of one layer's tensors; NO_TENSOR when the config has no such
 * tensor. Filled once from m->specs by name, so the plan order above is the only place that
 * knows the layout. Tensors are reached through model_param_view / model_grad_view (their
 * group's base), so ZeRO hooks can move a layer to a gathered copy or a gradient bucket. */
#define NO_TENSOR (-1)
enum { T_IN, T_QW, T_QB, T_KW, T_KB, T_VW, T_VB, T_OW, T_POST, T_GW, T_GB, T_UW, T_UB, T_DW, T_DB, T_COUNT };
static const char *const llama_suffix[T_COUNT] = {
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.q_proj.bias",
    "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight",
    "self_attn.v_proj.bias", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.weight", "mlp.up_proj.bias",
    "mlp.down_proj.weight", "mlp.down_proj.bias",
};
typedef struct llama_layout { int spec[T_COUNT]; } llama_layout;

/* Parameter or gradient views of one layer; absent biases are tensor_none(). */
typedef struct llama_w {
    tensor in_norm, qw, qb, kw, kb, vw, vb, ow, post_norm, gw, gb, uw, ub, dw, db;
} llama_w;

/* Activations of a training forward, planned for (Bp,Tp); layer tensors are stacked with a
 * layer stride of the planned size, a smaller (B,T) uses the front of each slot. */
typedef struct llama_acts {
    int *tokens, *targets;   /* (N) backend copies of the inputs */
    float *rope_cos, *rope_sin;   /* (Tp, HS/2) */
    float *encoded;          /* (N,C) embeddings: layer 0's input */
    void *ln1;               /* (L,N,C) lp */
    float *rstd1;            /* (L,N) */
    void *q;                 /* (L,N,QD) lp, after rope */
    void *k, *v;             /* (L,N,KD) lp, k after rope */
    float *lse;              /* (L,B,NH,T) attention log-sum-exps, saved for backward */
    void *atty;              /* (L,N,QD) lp, attention output before o_proj */
    float *res2;             /* (L,N,C) residual after the attention branch */
    void *ln2;               /* (L,N,C) lp */
    float *rstd2;            /* (L,N) */
    void *gate, *up;         /* (L,N,F) lp, MLP projections, SwiGLU inputs */
    float *res3;             /* (L,N,C) layer output */
    void *lnf;               /* (N,C) lp */
    float *rstdf;            /* (N) */
    void *logits;            /* (N,Vp) lp; after a forward with targets, (softmax - onehot) */
    void *head;              /* (Vp,C) lp: the LM head with zero padding rows (arch_lm_head) */
    float *losses;           /* (N) */
    double *loss_sum;        /* (1) f64 (planned as 2 floats): the loss head's sum on the device */
    /* scratch, one layer's worth, reused down the stack */
    float *dres;             /* (N,C) gradient of the residual stream */
    void *dres_lp;           /* (N,C) lp copy of dres for products (mixed precision only) */
    float *dC;               /* (N,C) gradient of a norm's output: f32, three products add into it */
    void *dQ;                /* (N,QD) lp, gradient of the attention output */
    void *dq, *dk, *dv;      /* (N,QD), (N,KD), (N,KD) lp */
    void *dF, *dF2;          /* (N,F) lp: the SwiGLU output in the forward; dgate, dup backward */
} llama_acts;

/* The inference workspace for batches of up to N tokens from S sequences at positions below
 * P (model_infer_prepare); keys, after rope, and values are the caller's (model_kv_cache). */
typedef struct llama_infer {
    float *rope_cos, *rope_sin;   /* (P, HS/2) */
    arch_batch_ids ids;      /* the batch's arrays */
    float *cos, *sin;        /* (N, HS/2) the rows of each token's position */
    float *x;                /* (N,C) residual stream of the new tokens */
    float *ln;               /* (N,C) lp: norm output */
    float *br;               /* (N,C) lp: a branch's output (o_proj, down_proj), which the next
                              * norm adds into x (never ln: a norm's out overlaps no resid) */
    float *qkv;              /* (N,QD+2KD) lp: q, k, v side by side (llama_project), k and v the
                              * step's keys and values before they go to their slots */
    float *atty;             /* (N,QD) lp */
    float *gu;               /* (N,2F) lp: gate and up side by side; gate then the SwiGLU output */
    float *last;             /* (S,C) the rows whose logits are asked for */
    float *lastn;            /* (S,C) lp: those rows through the final norm */
    float *logits;           /* (S,V) */
} llama_infer;

typedef struct llama_state {
    llama_layout *layout;    /* (L) */
    int Bp, Tp;              /* planned training shape; 0 before train_prepare */
    int B, T;                /* shape of the last forward */
    bool have_targets;       /* the last forward left dlogits for backward */
    dtype lp;                /* the lp activations' dtype (m->act_dt when planned) */
    bool recompute;          /* planned with m->recompute: one layer's inner activations */
    float *act_mem;
    llama_acts a;
    arch_infer_dims inf_dims;   /* inference workspace capacity */
    float *inf_mem;
    llama_infer inf;
} llama_state;

/* Spec indices of the embedding, the LM head (the embedding when tied) and the final norm. */
enum { LLAMA_EMBED = 0 };
static int llama_head(const model *m) { return m->cfg.tie_word_embeddings ? LLAMA_EMBED : m->n_specs - 1; }
static int llama_norm(const model *m) { return m->n_specs - (m->cfg.tie_word_embeddings ? 1 : 2); }

/* The parameter matrices are compute views (bf16 in mixed precision), norms and biases f32. */
static llama_w llama_layer(const model *m, bool grad, int l) {
    const llama_state *s = m->state;
    const int *o = s->layout[l].spec;
    tensor p[T_COUNT];
    for (int i = 0; i < T_COUNT; i++) {
        const bool matrix = i == T_QW || i == T_KW || i == T_VW || i == T_OW || i == T_GW || i == T_UW || i == T_DW;
        p[i] = o[i] == NO_TENSOR ? tensor_none() : matrix ? arch_matrix(m, grad, o[i]) : arch_param(m, grad, o[i]);
    }
    llama_w w = {p[T_IN], p[T_QW], p[T_QB], p[T_KW], p[T_KB], p[T_VW], p[T_VB], p[T_OW],
                 p[T_POST], p[T_GW], p[T_GB], p[T_UW], p[T_UB], p[T_DW], p[T_DB]};
    return w;
}

/* The state, created on first use with the layer layout read off m->specs. */
static llama_state *llama_state_get(model *m) {
    if (m->state) return m->state;
    llama_state *s = mem_calloc(sizeof *s);
    SK_ASSERT(s);
    const int L = m->cfg.n_layer;
    s->layout = mem_calloc(sizeof(llama_layout) * (size_t)(L > 0 ? L : 1));
    SK_ASSERT(s->layout);
    for (int l = 0; l < L; l++)
        for (int t = 0; t < T_COUNT; t++) s->layout[l].spec[t] = NO_TENSOR;
    char prefix[32];
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        if (p->layer < 0) continue;
        int k = snprintf(prefix, sizeof prefix, "model.layers.%d.", p->layer);
        SK_ASSERT(!strncmp(p->name, prefix, (size_t)k));
        int t = 0;
        while (t < T_COUNT && strcmp(p->name + k, llama_suffix[t])) t++;
        SK_ASSERT(t < T_COUNT);
        s->layout[p->layer].spec[t] = i;
    }
    for (int l = 0; l < L; l++)
        for (int t = 0; t < T_COUNT; t++)
            SK_ASSERT(s->layout[l].spec[t] != NO_TENSOR || t == T_QB || t == T_KB || t == T_VB ||
                      t == T_GB || t == T_UB || t == T_DB);
    m->state = s;
    return s;
}

/* Shapes this file cannot run are bad input (a config), not bugs. */
static sk_status llama_check_config(const model_config *c) {
    if (c->head_dim <= 0 || c->head_dim % 2)
        return sk_fail(SK_ECONFIG, "Llama: head_dim %d must be positive and even (rotary pairs)", c->head_dim);
    if (c->n_kv_head <= 0 || c->n_head % c->n_kv_head)
        return sk_fail(SK_ECONFIG, "Llama: %d heads are not a multiple of %d KV heads", c->n_head, c->n_kv_head);
    if (c->sliding_window < 0) return sk_fail(SK_ECONFIG, "Llama: sliding_window %d is negative", c->sliding_window);
    if (!(c->rope_theta > 0)) return sk_fail(SK_ECONFIG, "Llama: rope_theta %g must be positive", (double)c->rope_theta);
    const model_rope_scaling *r = &c->rope_scaling;
    if (r->type != ROPE_DEFAULT && !(r->factor > 0))
        return sk_fail(SK_ECONFIG, "Llama: rope_scaling factor %g must be positive", (double)r->factor);
    if (r->type == ROPE_LLAMA3 && !(r->high_freq_factor > r->low_freq_factor && r->low_freq_factor > 0 &&
                                    r->original_max_position_embeddings > 0))
        return sk_fail(SK_ECONFIG, "Llama: llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor "
                       "and original_max_position_embeddings > 0");
    return SK_OK;
}

/* ---- rotary embeddings ---- */

/* inv_freq(HS/2) as transformers computes it in f32 (modeling_rope_utils.py):
 * default 1/theta^(2i/HS); "linear" divides by factor; "llama3" divides the long wavelengths
 * (> original_max_position_embeddings / low_freq_factor) by factor, keeps the short ones
 * (< .../high_freq_factor) and interpolates between. attention_scaling is 1 for all three. */
void llama_rope_inv_freq(const model_config *cfg, float *inv_freq) {
    const int HS = cfg->head_dim;
    const model_rope_scaling *r = &cfg->rope_scaling;
    for (int i = 0; i < HS / 2; i++) {
        float e = (float)(2 * i) / (float)HS;
        float f = 1.0f / (float)pow((double)cfg->rope_theta, (double)e);
        if (r->type == ROPE_LINEAR) {
            f /= r->factor;
        } else if (r->type == ROPE_LLAMA3) {
            const double old = r->original_max_position_embeddings;
            const float low_wl = (float)(old / r->low_freq_factor), high_wl = (float)(old / r->high_freq_factor);
            float wl = (float)(2.0 * M_PI) / f;
            if (wl > low_wl) {
                f /= r->factor;
            } else if (!(wl < high_wl)) {
                float smooth = ((float)old / wl - r->low_freq_factor) / (r->high_freq_factor - r->low_freq_factor);
                f = (1.0f - smooth) * f / r->factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

/* Uploads cos and sin (P, HS/2) of position * inv_freq: the angle in f32 as transformers
 * forms it, cos and sin of it exactly (in double, then rounded). Runs at prepare time only. */
static sk_status llama_rope_tables(model *m, float *cos_dev, float *sin_dev, int P) {
    const int H2 = m->cfg.head_dim / 2;
    float *inv = mem_alloc(sizeof(float) * (size_t)H2);
    float *tab = mem_alloc(sizeof(float) * (size_t)P * H2 * 2);
    if (!inv || !tab) {
        mem_free(inv);
        mem_free(tab);
        return sk_fail(SK_ENOMEM, "allocating a rotary table of %d positions", P);
    }
    llama_rope_inv_freq(&m->cfg, inv);
    for (int p = 0; p < P; p++)
        for (int i = 0; i < H2; i++) {
            float ang = (float)p * inv[i];
            tab[(size_t)p * H2 + i] = (float)cos((double)ang);
            tab[(size_t)P * H2 + (size_t)p * H2 + i] = (float)sin((double)ang);
        }
    backend_upload(m->be, cos_dev, tab, sizeof(float) * (size_t)P * H2);
    backend_upload(m->be, sin_dev, tab + (size_t)P * H2, sizeof(float) * (size_t)P * H2);
    mem_free(inv);
    mem_free(tab);
    return SK_OK;
}

/* ---- initialization ---- */

/* transformers' LlamaPreTrainedModel init: N(0, 0.02) (initializer_range) for the embeddings
 * and every Linear weight, biases 0, RMSNorm weights 1. Tensors are filled in plan order
 * from one generator seeded with `seed`. */
static void llama_init_weights(model *m, uint64_t seed) {
    size_t maxn = 0;
    for (int i = 0; i < m->n_specs; i++) maxn = m->specs[i].numel > maxn ? m->specs[i].numel : maxn;
    float *host = mem_alloc(maxn * sizeof(float));
    SK_ASSERT(host);
    rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        if (arch_ends_with(p->name, ".bias")) {
            memset(host, 0, p->numel * sizeof(float));
        } else if (arch_ends_with(p->name, "norm.weight")) {
            for (size_t j = 0; j < p->numel; j++) host[j] = 1.0f;
        } else {
            for (size_t j = 0; j < p->numel; j++) host[j] = 0.02f * rng_normal(&r);
        }
        backend_upload(m->be, tensor_f32(model_param_view(m, i)), host, p->numel * sizeof(float));
    }
    mem_free(host);
}

/* ---- planning ---- */

/* The activation plan for (B,T): entries pointing into `a` (filled by the caller's alloc); E
 * counts floats, EL elements of the lp dtype. */
#define LLAMA_ACT_PLAN(c, lp, rc, B, T)                                                             \
    const size_t L = (size_t)(c)->n_layer, N = (size_t)(B) * (T), C = (size_t)(c)->n_embd,          \
                 LK = (rc) ? 1 : L,   /* layers whose inner activations are kept */                  \
                 F = (size_t)(c)->ffn_dim, Vp = (size_t)arch_vocab_padded((c)->vocab_size),          \
                 NH = (size_t)(c)->n_head, HS = (size_t)(c)->head_dim, QD = NH * HS,                \
                 KD = (size_t)(c)->n_kv_head * HS;                                                  \
    arch_plan_entry plan[] = {                                                                     \
        E(tokens, N), E(targets, N), E(rope_cos, (size_t)(T) * HS / 2), E(rope_sin, (size_t)(T) * HS / 2), \
        E(encoded, N * C), EL(ln1, LK * N * C), E(rstd1, LK * N), EL(q, LK * N * QD),              \
        EL(k, LK * N * KD), EL(v, LK * N * KD), E(lse, LK * N * NH), EL(atty, LK * N * QD),         \
        E(res2, LK * N * C), EL(ln2, LK * N * C), E(rstd2, LK * N), EL(gate, LK * N * F),           \
        EL(up, LK * N * F),                                                                        \
        E(res3, L * N * C), EL(lnf, N * C), E(rstdf, N), EL(logits, N * Vp), E(losses, N),         \
        EL(head, (lp) == DT_F32 ? 0 : Vp * C),                                                     \
        E(loss_sum, 2), E(dres, N * C), EL(dres_lp, (lp) == DT_F32 ? 0 : N * C), E(dC, N * C),        \
        EL(dQ, N * QD), EL(dq, N * QD),                                                             \
        EL(dk, N * KD), EL(dv, N * KD), EL(dF, N * F), EL(dF2, N * F),                              \
    }
#define E(field, n) { (void **)&a->field, (n) }
#define EL(field, n) { (void **)&a->field, arch_floats_of((n), lp) }

static size_t llama_train_bytes(const model *m, int B, int T) {
    llama_acts scratch, *a = &scratch;
    const model_config *c = &m->cfg;
    const dtype lp = m->act_dt;
    LLAMA_ACT_PLAN(c, lp, m->recompute, B, T);
    return arch_plan_floats(plan, (int)(sizeof plan / sizeof plan[0])) * sizeof(float);
}

static sk_status llama_train_prepare(model *m, int B, int T) {
    const model_config *c = &m->cfg;
    SK_ASSERT(B > 0 && T > 0);
    SK_TRY(llama_check_config(c));
    if (T > c->n_positions)
        return sk_fail(SK_ECONFIG, "sequence length %d exceeds the model's context %d", T, c->n_positions);
    if (m->dropout)
        return sk_fail(SK_ECONFIG, "dropout is not implemented for %s models (their attention_dropout is 0); "
                       "train without --dropout", c->model_type[0] ? c->model_type : "Llama-family");
    llama_state *s = llama_state_get(m);
    backend *be = m->be;
    SK_ASSERT(m->grads || m->grads_external);   /* model_train_prepare allocated them */
    if (s->act_mem) backend_mem_free(be, s->act_mem);
    s->act_mem = NULL;
    s->Bp = s->Tp = 0;
    llama_acts *a = &s->a;
    const dtype lp = m->act_dt;
    LLAMA_ACT_PLAN(c, lp, m->recompute, B, T);
    s->act_mem = arch_plan_alloc(be, plan, (int)(sizeof plan / sizeof plan[0]));
    if (!s->act_mem) return sk_fail_ctx(SK_ENOMEM, "allocating Llama activations for B=%d T=%d", B, T);
    sk_status st = llama_rope_tables(m, a->rope_cos, a->rope_sin, T);
    if (st != SK_OK) {
        backend_mem_free(be, s->act_mem);
        s->act_mem = NULL;
        return st;
    }
    s->lp = lp;
    s->recompute = m->recompute;
    s->Bp = B;
    s->Tp = T;
    s->have_targets = false;
    return SK_OK;
}
#undef E
#undef EL

/* ---- training forward and backward ---- */

/* Views of layer l's activations for the shape of the last forward (s->B, s->T): the front
 * of slot l of each stacked buffer (slot 0 of the inner ones under recompute, where the
 * backward runs the layer's forward again first). in is the layer's input (the embeddings or
 * the previous layer's output); lse (B,NH,T) holds the attention's log-sum-exps. */
typedef struct llama_layer_acts {
    tensor in, ln1, rstd1, q, k, v, atty, res2, ln2, rstd2, gate, up, res3, lse;
} llama_layer_acts;

static llama_layer_acts llama_layer_views(const model *m, int l) {
    const llama_state *s = m->state;
    const llama_acts *a = &s->a;
    const model_config *c = &m->cfg;
    const int64_t N = (int64_t)s->B * s->T, C = c->n_embd, F = c->ffn_dim, QD = (int64_t)c->n_head * c->head_dim,
                  KD = (int64_t)c->n_kv_head * c->head_dim;
    const size_t NPL = (size_t)s->Bp * s->Tp;                      /* planned rows: layer stride */
    const int64_t NH = c->n_head;
    const dtype lp = s->lp;
    const int o = l;   /* the layer's own slot of the stacked outputs */
    if (s->recompute) l = 0;
    llama_layer_acts x = {
        .in = o > 0 ? arch_mat(a->res3 + (o - 1) * NPL * C, N, C) : arch_mat(a->encoded, N, C),
        .ln1 = arch_mat_at(a->ln1, lp, l * NPL * C, N, C),
        .rstd1 = arch_vec(a->rstd1 + l * NPL, N),
        .q = arch_mat_at(a->q, lp, l * NPL * QD, N, QD),
        .k = arch_mat_at(a->k, lp, l * NPL * KD, N, KD),
        .v = arch_mat_at(a->v, lp, l * NPL * KD, N, KD),
        .atty = arch_mat_at(a->atty, lp, l * NPL * QD, N, QD),
        .res2 = arch_mat(a->res2 + l * NPL * C, N, C),
        .ln2 = arch_mat_at(a->ln2, lp, l * NPL * C, N, C),
        .rstd2 = arch_vec(a->rstd2 + l * NPL, N),
        .gate = arch_mat_at(a->gate, lp, l * NPL * F, N, F),
        .up = arch_mat_at(a->up, lp, l * NPL * F, N, F),
        .res3 = arch_mat(a->res3 + o * NPL * C, N, C),
        .lse = arch_view3(a->lse + l * NPL * NH, s->B, NH, s->T),
    };
    return x;
}

/* x(rows, nh*HS) (contiguous rows, any row stride: a column block of q/k/v) as
 * (rows/T, T, nh, HS): the heads the rotary ops address. */
static tensor llama_heads(tensor x, int64_t T, int64_t HS) { return tensor_split_2d(x, T, HS); }

/* out(N,OC) = inp(N,IC) @ w(OC,IC)^T (+ b(OC) unless b is tensor_none()), in one op where
 * the backend fuses it. */
static void llama_linear(backend *be, tensor out, tensor inp, tensor w, tensor b) {
    backend_linear_forward(be, NULL, out, tensor_none(), inp, w, true, b, BACKEND_ACT_NONE);
}

/* llama_project's cols, and its one product's weights: the n joined, or tensor_none() where they
 * have biases or lie apart. */
static tensor llama_join(tensor out, int n, const tensor *w, const tensor *b, tensor *cols) {
    tensor joined = w[0];
    bool biased = false;
    int64_t c0 = 0;
    for (int i = 0; i < n; i++) {
        biased |= !tensor_is_none(b[i]);
        if (i > 0) joined = tensor_join_rows(joined, w[i]);
        cols[i] = tensor_cols(out, c0, w[i].shape[0]);
        c0 += w[i].shape[0];
    }
    SK_ASSERT(c0 == out.shape[1]);
    return biased ? tensor_none() : joined;
}

/* The n projections of one input side by side: out(N, OC_0 + ... + OC_n-1) = inp(N,IC) @
 * [w[0]; ...; w[n-1]]^T (+ b[i] on block i where not tensor_none()), cols[i] receiving block
 * i's view (columns of out, row stride out's width). Where the weights lie one after another
 * in memory (tensor_join_rows: a layer's q/k/v and gate/up in the plan order of a model's
 * parameters and of the device copy, devw.h) and have no biases, one product computes every
 * block, as vLLM's QKVParallelLinear and MergedColumnParallelLinear do; else one product per
 * block. */
static void llama_project(backend *be, tensor out, tensor inp, int n, const tensor *w, const tensor *b, tensor *cols) {
    const tensor joined = llama_join(out, n, w, b, cols);
    if (!tensor_is_none(joined)) {
        llama_linear(be, out, inp, joined, tensor_none());
        return;
    }
    for (int i = 0; i < n; i++) llama_linear(be, cols[i], inp, w[i], b[i]);
}

/* The MLP's first half over inp(N,C) into gu(N,2F): returns the (N,F) view of gu's first F
 * columns holding silu(gate) * up (the other columns scratch). One op where the backend fuses
 * it (linear_swiglu: the weights joined, no biases), else the projections (llama_project) and
 * swiglu_forward; the same values either way. */
static tensor llama_gate_up(backend *be, tensor gu, tensor inp, const llama_w *w) {
    const tensor h = tensor_cols(gu, 0, w->gw.shape[0]), joined = tensor_join_rows(w->gw, w->uw);
    if (be->ops->linear_swiglu && !tensor_is_none(joined) && tensor_is_none(w->gb) && tensor_is_none(w->ub) &&
        be->ops->linear_swiglu(be, NULL, h, inp, joined))
        return h;
    tensor cols[2];
    llama_project(be, gu, inp, 2, (tensor[]){w->gw, w->uw}, (tensor[]){w->gb, w->ub}, cols);
    be->ops->swiglu_forward(be, NULL, cols[0], cols[0], cols[1]);
    return cols[0];
}

/* Backward of llama_linear: dw (OC,IC) and db accumulate (db tensor_none(): no bias);
 * dinp(N,IC) = beta dinp + dout @ w, so several projections of one input sum into it. */
static void llama_linear_backward(backend *be, tensor dinp, float beta, tensor dw, tensor db, tensor dout,
                                  tensor inp, tensor w) {
    if (!tensor_is_none(db)) be->ops->bias_backward(be, NULL, db, dout);
    be->ops->matmul(be, NULL, dw, dout, true, inp, false, 1.0f, 1.0f);
    be->ops->matmul(be, NULL, dinp, dout, false, w, false, 1.0f, beta);
}

/* Layer l's forward over the shape of the last forward, from its input to its output (res3),
 * keeping what its backward reads; the backward calls it again under recompute. */
static void llama_layer_forward(model *m, int l) {
    const llama_state *s = m->state;
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int B = s->B, T = s->T, NH = c->n_head, NKV = c->n_kv_head, HS = c->head_dim, W = c->sliding_window;
    const llama_acts *a = &s->a;
    tensor cos = arch_mat(a->rope_cos, s->Tp, HS / 2), sin = arch_mat(a->rope_sin, s->Tp, HS / 2);
    llama_w w = llama_layer(m, false, l);
    llama_layer_acts x = llama_layer_views(m, l);
    tensor swiglu = arch_mat_at(a->dF, s->lp, 0, (int64_t)B * T, c->ffn_dim);   /* scratch: recomputed in backward */

    op->rmsnorm_forward(be, NULL, x.ln1, x.rstd1, x.in, tensor_none(), w.in_norm, c->norm_eps);
    llama_linear(be, x.q, x.ln1, w.qw, w.qb);
    llama_linear(be, x.k, x.ln1, w.kw, w.kb);
    llama_linear(be, x.v, x.ln1, w.vw, w.vb);
    op->rope_forward(be, NULL, llama_heads(x.q, T, HS), cos, sin, 0);
    op->rope_forward(be, NULL, llama_heads(x.k, T, HS), cos, sin, 0);
    op->attention_forward(be, NULL, arch_seq(x.atty, B, T), x.lse, arch_seq(x.q, B, T), arch_seq(x.k, B, T),
                          arch_seq(x.v, B, T), NH, NKV, W, 0.0f, 0);
    llama_linear(be, x.res2, x.atty, w.ow, tensor_none());
    tp_sum(m, x.res2);   /* a row-cut product in a tensor-parallel share: partial over the ranks */
    /* res2 += in, the attention branch's residual, in the post-attention norm's pass */
    op->rmsnorm_forward(be, NULL, x.ln2, x.rstd2, x.res2, x.in, w.post_norm, c->norm_eps);
    llama_linear(be, x.gate, x.ln2, w.gw, w.gb);
    llama_linear(be, x.up, x.ln2, w.uw, w.ub);
    op->swiglu_forward(be, NULL, swiglu, x.gate, x.up);
    llama_linear(be, x.res3, swiglu, w.dw, tp_row_bias(m, w.db));
    tp_sum(m, x.res3);
    op->add(be, NULL, x.res3, x.res3, x.res2);
}

static float llama_forward(model *m, const int *tokens, const int *targets, int B, int T) {
    llama_state *s = m->state;
    SK_ASSERT(s && s->act_mem && B > 0 && T > 0 && B <= s->Bp && T <= s->Tp);
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int L = c->n_layer, C = c->n_embd, V = c->vocab_size;
    const int N = B * T;
    llama_acts *a = &s->a;
    s->B = B;
    s->T = T;
    s->have_targets = false;
    tensor encoded = arch_mat(a->encoded, N, C), lnf = arch_mat_at(a->lnf, s->lp, 0, N, C);
    tensor logits = tensor_2d_ld(a->logits, s->lp, N, V, arch_vocab_padded(V));

    arch_check_tokens(m, tokens, (size_t)N, 0);
    backend_upload(be, a->tokens, tokens, sizeof(int) * (size_t)N);
    model_hook_before_forward(m, -1);
    op->embed_forward(be, NULL, encoded, tensor_2d(a->tokens, DT_I32, B, T), arch_param(m, false, LLAMA_EMBED),
                      tensor_none());

    for (int l = 0; l < L; l++) {
        model_hook_before_forward(m, l);
        llama_layer_forward(m, l);
    }
    tensor resL = L > 0 ? llama_layer_views(m, L - 1).res3 : encoded;
    op->rmsnorm_forward(be, NULL, lnf, arch_vec(a->rstdf, N), resL, tensor_none(),
                        arch_param(m, false, llama_norm(m)), c->norm_eps);
    /* logits(N,V) = lnf(N,C) @ head(V,C)^T (padded to Vp rows in mixed precision) */
    const int hi = llama_head(m);
    tensor head = arch_lm_head(be, arch_param(m, false, hi), arch_matrix(m, false, hi), a->head, s->lp, true);
    op->matmul(be, NULL, tensor_2d_ld(a->logits, s->lp, N, head.shape[0], tensor_ld(logits)), lnf, false, head, true,
               1.0f, 0.0f);
    if (!targets) return 0.0f;

    s->have_targets = true;
    return arch_xent_loss(be, arch_vec(a->losses, N), tensor_1d(a->loss_sum, DT_F64, 1), logits,
                          tensor_1d(a->targets, DT_I32, N), targets);
}

static void llama_backward(model *m, float dloss) {
    llama_state *s = m->state;
    SK_ASSERT(s && s->have_targets && (m->grads || m->grads_external));
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int L = c->n_layer, C = c->n_embd, F = c->ffn_dim, V = c->vocab_size, NH = c->n_head,
              NKV = c->n_kv_head, HS = c->head_dim, QD = NH * HS, KD = NKV * HS, W = c->sliding_window;
    const int B = s->B, T = s->T, N = B * T;
    llama_acts *a = &s->a;
    const int head = llama_head(m), norm = llama_norm(m);
    const dtype lp = s->lp;
    tensor dres = arch_mat(a->dres, N, C), dC = arch_mat(a->dC, N, C), dQ = arch_mat_at(a->dQ, lp, 0, N, QD);
    tensor dq = arch_mat_at(a->dq, lp, 0, N, QD), dk = arch_mat_at(a->dk, lp, 0, N, KD);
    tensor dv = arch_mat_at(a->dv, lp, 0, N, KD), dF = arch_mat_at(a->dF, lp, 0, N, F);
    tensor dF2 = arch_mat_at(a->dF2, lp, 0, N, F), logits = tensor_2d_ld(a->logits, lp, N, V, arch_vocab_padded(V));
    tensor cos = arch_mat(a->rope_cos, s->Tp, HS / 2), sin = arch_mat(a->rope_sin, s->Tp, HS / 2);
    model_hook_before_backward(m, -1);

    /* LM head: logits holds dlogits / dloss. dlnf = dloss * dlogits @ head;
     * dhead += dloss * dlogits^T @ lnf (into embed_tokens when tied). */
    tensor hw = arch_lm_head(be, arch_param(m, false, head), arch_matrix(m, false, head), a->head, lp, false);
    op->matmul(be, NULL, dC, tensor_2d_ld(a->logits, lp, N, hw.shape[0], tensor_ld(logits)), false, hw, false, dloss,
               0.0f);
    op->matmul(be, NULL, arch_param(m, true, head), logits, true, arch_mat_at(a->lnf, lp, 0, N, C), false, dloss,
               1.0f);
    tensor resL = L > 0 ? llama_layer_views(m, L - 1).res3 : arch_mat(a->encoded, N, C);
    /* In mixed precision each norm backward also writes the bf16 copy of dres (dres_lp) that
     * the branch before it reads; in f32 the branch reads dres. */
    const tensor dres_copy = lp == DT_F32 ? tensor_none() : arch_mat_at(a->dres_lp, lp, 0, N, C);
    const tensor dbranch = lp == DT_F32 ? dres : dres_copy;
    backend_zero(be, a->dres, sizeof(float) * (size_t)N * C);
    op->rmsnorm_backward(be, NULL, dres, dres_copy, arch_param(m, true, norm), dC, resL,
                         arch_param(m, false, norm), arch_vec(a->rstdf, N));

    for (int l = L - 1; l >= 0; l--) {
        model_hook_before_backward(m, l);
        if (s->recompute) llama_layer_forward(m, l);
        llama_w w = llama_layer(m, false, l), g = llama_layer(m, true, l);
        llama_layer_acts x = llama_layer_views(m, l);

        /* MLP branch; dres is the gradient of x3 (through its bf16 copy in mixed precision).
         * dF2 = swiglu output (recomputed), then dup. */
        op->swiglu_forward(be, NULL, dF2, x.gate, x.up);
        llama_linear_backward(be, dF, 0.0f, g.dw, g.db, dbranch, dF2, w.dw);
        op->swiglu_backward(be, NULL, dF, dF2, dF, x.gate, x.up);
        llama_linear_backward(be, dC, 0.0f, g.gw, g.gb, dF, x.ln2, w.gw);
        llama_linear_backward(be, dC, 1.0f, g.uw, g.ub, dF2, x.ln2, w.uw);
        tp_sum(m, dC);   /* column-cut products' input gradient: partial over the ranks */
        op->rmsnorm_backward(be, NULL, dres, dres_copy, g.post_norm, dC, x.res2, w.post_norm, x.rstd2);

        /* attention branch; dres is now the gradient of x2 */
        llama_linear_backward(be, dQ, 0.0f, g.ow, tensor_none(), dbranch, x.atty, w.ow);
        op->attention_backward(be, NULL, arch_seq(dq, B, T), arch_seq(dk, B, T), arch_seq(dv, B, T), arch_seq(dQ, B, T),
                               arch_seq(x.q, B, T), arch_seq(x.k, B, T), arch_seq(x.v, B, T), arch_seq(x.atty, B, T),
                               x.lse, NH, NKV, W, 0.0f, 0);
        op->rope_backward(be, NULL, llama_heads(dq, T, HS), cos, sin, 0);
        op->rope_backward(be, NULL, llama_heads(dk, T, HS), cos, sin, 0);
        llama_linear_backward(be, dC, 0.0f, g.qw, g.qb, dq, x.ln1, w.qw);
        llama_linear_backward(be, dC, 1.0f, g.kw, g.kb, dk, x.ln1, w.kw);
        llama_linear_backward(be, dC, 1.0f, g.vw, g.vb, dv, x.ln1, w.vw);
        tp_sum(m, dC);
        op->rmsnorm_backward(be, NULL, dres, l > 0 ? dres_copy : tensor_none(), g.in_norm, dC, x.in, w.in_norm,
                             x.rstd1);
        model_hook_after_backward(m, l);
    }
    op->embed_backward(be, NULL, arch_param(m, true, LLAMA_EMBED), tensor_none(), dres,
                       tensor_2d(a->tokens, DT_I32, B, T));
    model_hook_after_backward(m, -1);
}

static tensor llama_logits(const model *m) {
    const llama_state *s = m->state;
    SK_ASSERT(s && s->act_mem && !s->have_targets);
    const int64_t V = m->cfg.vocab_size;
    return tensor_2d_ld(s->a.logits, s->lp, (int64_t)s->B * s->T, V, arch_vocab_padded(V));
}

/* ---- inference ---- */

static sk_status llama_infer_prepare(model *m, int max_tokens, int max_seqs, int max_ctx) {
    const model_config *c = &m->cfg;
    SK_TRY(llama_check_config(c));
    llama_state *s = llama_state_get(m);
    arch_infer_dims d, want = {max_tokens, max_seqs, max_ctx};
    if (arch_infer_fits(s->inf_dims, want, &d) && s->inf_mem) return SK_OK;
    backend *be = m->be;
    if (s->inf_mem) backend_mem_free(be, s->inf_mem);
    s->inf_mem = NULL;
    memset(&s->inf_dims, 0, sizeof s->inf_dims);
    /* this rank's heads and MLP width (the whole model's unless split) */
    const size_t N = (size_t)d.tokens, S = (size_t)d.seqs, P = (size_t)d.ctx, C = (size_t)c->n_embd,
                 F = (size_t)m->tp.ffn_dim, HS = (size_t)c->head_dim, QD = (size_t)m->tp.n_head * HS,
                 KD = (size_t)m->tp.n_kv_head * HS;
    llama_infer *f = &s->inf;
    const dtype lp = model_infer_dtype(m);
#define E(field, n) { (void **)&f->field, (n) }
#define L(field, n) { (void **)&f->field, arch_floats_of(n, lp) }
    arch_plan_entry plan[ARCH_BATCH_PLAN_ENTRIES + 13] = {
        E(rope_cos, P * HS / 2), E(rope_sin, P * HS / 2), E(cos, N * HS / 2), E(sin, N * HS / 2), E(x, N * C),
        L(ln, N * C), L(qkv, N * (QD + 2 * KD)), L(atty, N * QD), L(gu, N * 2 * F),
        E(last, S * C), L(lastn, S * C), E(logits, S * (size_t)arch_vocab_padded(c->vocab_size)),
        L(br, N * C),
    };
#undef L
#undef E
    int n = 13;
    arch_batch_plan(&f->ids, d, plan, &n);
    s->inf_mem = arch_plan_alloc(be, plan, n);
    if (!s->inf_mem)
        return sk_fail_ctx(SK_ENOMEM, "allocating an inference workspace for %d tokens of %d sequences", d.tokens, d.seqs);
    m->infer_epoch++;
    sk_status st = llama_rope_tables(m, f->rope_cos, f->rope_sin, d.ctx);
    if (st != SK_OK) {
        backend_mem_free(be, s->inf_mem);
        s->inf_mem = NULL;
        return st;
    }
    s->inf_dims = d;
    return SK_OK;
}

/* out = the product of RMSNorm(x) * norm and w (joined weights; glu: gate then up rows, out
 * silu(gate) * up) after x += resid where given, in one op where the backend fuses the norm into
 * the product (linear_rmsnorm); false, doing nothing, where it does not (or w is tensor_none()). */
static bool llama_normed(backend *be, tensor out, tensor x, tensor resid, tensor norm, float eps, tensor w, bool glu) {
    return be->ops->linear_rmsnorm && !tensor_is_none(w) &&
           be->ops->linear_rmsnorm(be, NULL, out, x, resid, norm, eps, w, glu);
}

/* A branch's last product inp @ w^T (+ b) joining the residual stream x: added to x in the
 * same op where the backend fuses it (linear_add) and this rank's product is the whole sum
 * (not split); else into br and summed over the ranks, then returns true: br is pending, for
 * the next norm to add (rmsnorm_forward's resid). */
static bool llama_branch(model *m, tensor x, tensor br, tensor inp, tensor w, tensor b) {
    backend *be = m->be;
    if (m->tp.size == 1 && be->ops->linear_add && be->ops->linear_add(be, NULL, x, inp, w, b)) return false;
    llama_linear(be, br, inp, w, b);
    tp_sum(m, br);
    return true;
}

static void llama_infer_upload(model *m, const model_batch *b) {
    llama_state *s = m->state;
    SK_ASSERT(s && s->inf_mem);
    arch_batch_upload(m, &s->inf.ids, s->inf_dims, b);
}

/* Runs the N tokens of b: each token's rotary angles are the table rows of its own position
 * (gathered once per step); per layer the projections run over all rows (q/k/v in one
 * product and gate/up in another where their weights allow it: llama_project), the rotated keys
 * and the values go to their slots of kv, and paged attention reads each sequence's blocks
 * (within the sliding window when the config has one); only the rows asked for go through
 * the final norm and the LM head. Where the backend fuses them (few rows on CUDA), a norm runs
 * inside the product that reads it (llama_normed) and a branch's output is added to x by its
 * product (llama_branch): a layer then has no norm kernels. Activations marked lp are
 * model_infer_dtype's (the residual stream x stays f32). Returns logits (R,V), f32, a view of backend memory valid
 * until the next call. Split over ranks (model_tp), the heads and MLP columns are this rank's and
 * the o_proj and down_proj outputs and the embedding are summed over the ranks (tp_sum). */
static tensor llama_infer_batch(model *m, const model_kv_cache *kv, const model_batch *b) {
    llama_state *s = m->state;
    const model_config *c = &m->cfg;
    SK_ASSERT(s && s->inf_mem);
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const int L = c->n_layer, C = c->n_embd, F = m->tp.ffn_dim, NH = m->tp.n_head, NKV = m->tp.n_kv_head,
              HS = c->head_dim, QD = NH * HS, KD = NKV * HS, W = c->sliding_window;
    const int N = b->n_tokens, R = b->n_out;
    llama_infer *f = &s->inf;
    const dtype lp = model_infer_dtype(m);
    tensor x = arch_mat(f->x, N, C), ln = arch_mat_at(f->ln, lp, 0, N, C);
    tensor qkv = arch_mat_at(f->qkv, lp, 0, N, QD + 2 * KD), gu = arch_mat_at(f->gu, lp, 0, N, 2 * F);
    tensor atty = arch_mat_at(f->atty, lp, 0, N, QD), qkvc[3];   /* qkv's column blocks */
    tensor cos = arch_mat(f->cos, N, HS / 2), sin = arch_mat(f->sin, N, HS / 2);
    tensor br = arch_mat_at(f->br, lp, 0, N, C);
    const int P = s->inf_dims.ctx;

    tensor pos = tensor_2d(f->ids.pos, DT_I32, 1, N);
    op->embed_forward(be, NULL, x, tensor_2d(f->ids.tokens, DT_I32, 1, N), arch_param(m, false, LLAMA_EMBED),
                      tensor_none());
    tp_sum(m, x);
    op->embed_forward(be, NULL, cos, pos, arch_mat(f->rope_cos, P, HS / 2), tensor_none());
    op->embed_forward(be, NULL, sin, pos, arch_mat(f->rope_sin, P, HS / 2), tensor_none());
    bool pending = false;   /* br holds a branch's output not yet added to x */
    for (int l = 0; l < L; l++) {
        llama_w w = llama_layer(m, false, l);
        const tensor qkvw = llama_join(qkv, 3, (tensor[]){w.qw, w.kw, w.vw}, (tensor[]){w.qb, w.kb, w.vb}, qkvc);
        tensor resid = pending ? br : tensor_none();
        if (!llama_normed(be, qkv, x, resid, w.in_norm, c->norm_eps, qkvw, false)) {
            /* x += the previous layer's MLP output (where pending), fused into the norm */
            op->rmsnorm_forward(be, NULL, ln, tensor_none(), x, resid, w.in_norm, c->norm_eps);
            llama_project(be, qkv, ln, 3, (tensor[]){w.qw, w.kw, w.vw}, (tensor[]){w.qb, w.kb, w.vb}, qkvc);
        }
        /* row r takes the angles of cos/sin row r (its own position), q and k rotated as k
         * and v go to the cache */
        arch_paged_attention(be, kv, &f->ids, b, l, atty, qkvc[0], qkvc[1], qkvc[2], cos, sin, NH, NKV, W);
        pending = llama_branch(m, x, br, atty, w.ow, tensor_none());
        tensor guc[2];
        const tensor guw = llama_join(gu, 2, (tensor[]){w.gw, w.uw}, (tensor[]){w.gb, w.ub}, guc);
        tensor h = guc[0];
        resid = pending ? br : tensor_none();
        if (!llama_normed(be, h, x, resid, w.post_norm, c->norm_eps, guw, true)) {
            op->rmsnorm_forward(be, NULL, ln, tensor_none(), x, resid, w.post_norm, c->norm_eps);
            h = llama_gate_up(be, gu, ln, &w);
        }
        pending = llama_branch(m, x, br, h, w.dw, w.db);
    }
    if (pending) op->add(be, NULL, x, x, br);   /* the last MLP output: the final norm runs on R gathered rows */
    tensor last = arch_mat(f->last, R, C), lastn = arch_mat_at(f->lastn, lp, 0, R, C);
    arch_gather_out(be, &f->ids, b, last, x);
    op->rmsnorm_forward(be, NULL, lastn, tensor_none(), last, tensor_none(), arch_param(m, false, llama_norm(m)),
                        c->norm_eps);
    return tp_logits(m, lastn, arch_param(m, false, llama_head(m)), f->logits, R);
}

/* The tensor-parallel cut (model_split): q_proj by heads and k_proj, v_proj by key/value
 * heads (rows, with their biases), gate_proj and up_proj by rows, o_proj and down_proj by
 * columns (down_proj's bias rank 0's: the sum adds it once), the embedding and the LM head by
 * vocabulary rows; norms whole. */
static model_split llama_split(const model_config *cfg, const model_param *p) {
    static const arch_split_rule cut[] = {
        {"embed_tokens.weight", {SPLIT_EMBED, 0, 1}},  {"lm_head.weight", {SPLIT_VOCAB, 0, 1}},
        {"q_proj.weight", {SPLIT_HEADS, 0, 1}},        {"q_proj.bias", {SPLIT_HEADS, 0, 1}},
        {"k_proj.weight", {SPLIT_KV_HEADS, 0, 1}},     {"k_proj.bias", {SPLIT_KV_HEADS, 0, 1}},
        {"v_proj.weight", {SPLIT_KV_HEADS, 0, 1}},     {"v_proj.bias", {SPLIT_KV_HEADS, 0, 1}},
        {"o_proj.weight", {SPLIT_HEADS, 1, 1}},        {"gate_proj.weight", {SPLIT_FFN, 0, 1}},
        {"gate_proj.bias", {SPLIT_FFN, 0, 1}},         {"up_proj.weight", {SPLIT_FFN, 0, 1}},
        {"up_proj.bias", {SPLIT_FFN, 0, 1}},           {"down_proj.weight", {SPLIT_FFN, 1, 1}},
        {"down_proj.bias", {SPLIT_FIRST_RANK, 0, 1}},
    };
    return arch_split_find(p->name, cut, (int)(sizeof cut / sizeof cut[0]));
}

static void llama_free_state(model *m) {
    llama_state *s = m->state;
    if (!s) return;
    if (s->act_mem) backend_mem_free(m->be, s->act_mem);
    if (s->inf_mem) backend_mem_free(m->be, s->inf_mem);
    mem_free(s->layout);
    mem_free(s);
    m->state = NULL;
}

const model_arch llama_arch = {
    .name = "llama",
    .plan_params = llama_plan_params,
    .init_weights = llama_init_weights,
    .train_prepare = llama_train_prepare,
    .forward = llama_forward,
    .backward = llama_backward,
    .logits = llama_logits,
    .infer_prepare = llama_infer_prepare,
    .infer_upload = llama_infer_upload,
    .infer_batch = llama_infer_batch,
    .free_state = llama_free_state,
    .train_bytes = llama_train_bytes,
    .split = llama_split,
};
