/* gpt2: GPT-2 (Radford et al. 2019) as transformers' GPT2LMHeadModel lays it out: learned
 * position embeddings, pre-LayerNorm blocks, Conv1D weights stored (in, out), tanh GELU,
 * LM head tied to wte. Training forward/backward and KV-cached inference, written only
 * against the backend table (backend.h), so the CUDA backend runs this file unchanged.
 *
 * One block, in the order the forward runs it (x is the residual stream):
 *   ln1 = LN(x); qkv = ln1 @ Wattn + battn; atty = attention(qkv);
 *   x2 = x + drop(atty @ Wproj + bproj); ln2 = LN(x2); fch = ln2 @ Wfc + bfc;
 *   x3 = x2 + drop(gelu(fch) @ Wfcproj + bfcproj)
 * and at the end logits = LN_f(x) @ wte^T.
 *
 * Invariants: train_prepare plans every activation for its (B,T) and allocates them in one
 * backend buffer; forward and backward then allocate nothing (the same for infer_prepare
 * and infer_step). With targets, the forward leaves (softmax - onehot) in place of the
 * logits; backward folds dloss into the products that read it.
 *
 * Letters: B batch, T time, N = B*T rows, C channels, F MLP width, L layers, NH heads,
 * V vocabulary. */
#include "model/arch.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/rng.h"

/* Order: wte (V,C), wpe (T,C), then per layer ln_1, attn.c_attn (C,3C), attn.c_proj (C,C),
 * ln_2, mlp.c_fc (C,F), mlp.c_proj (F,C), then ln_f. Conv1D weights are (in, out). */
static int gpt2_plan_params(const model_config *cfg, model_param *specs) {
    int n = 0;
    size_t off = 0;
    const int64_t C = cfg->n_embd, F = cfg->ffn_dim;
    arch_plan_param(specs, &n, &off, -1, true, 2, cfg->vocab_size, C, "wte.weight");
    arch_plan_param(specs, &n, &off, -1, true, 2, cfg->n_positions, C, "wpe.weight");
    for (int l = 0; l < cfg->n_layer; l++) {
#define P(suffix, decay, ndim, d0, d1) \
        arch_plan_param(specs, &n, &off, l, decay, ndim, d0, d1, "h.%d." suffix, l)
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
    arch_plan_param(specs, &n, &off, -1, false, 1, C, 0, "ln_f.weight");
    arch_plan_param(specs, &n, &off, -1, false, 1, C, 0, "ln_f.bias");
    return n;
}

/* Indexes into m->specs, in plan order. */
enum {
    P_WTE, P_WPE, P_LAYER0,
    /* per layer, from P_LAYER0 + 12 l: */
    P_LN1W = 0, P_LN1B, P_ATTNW, P_ATTNB, P_PROJW, P_PROJB, P_LN2W, P_LN2B, P_FCW, P_FCB,
    P_FCPW, P_FCPB, P_PER_LAYER
};

/* Parameter and gradient tensors of one layer (or the embeddings, with l = -1). */
typedef struct gpt2_w {
    float *ln1w, *ln1b, *attnw, *attnb, *projw, *projb, *ln2w, *ln2b, *fcw, *fcb, *fcpw, *fcpb;
} gpt2_w;

/* Activations of a training forward, planned for (Bp,Tp); layer tensors are stacked with
 * a layer stride of the planned size, a smaller (B,T) uses the front of each slot. */
typedef struct gpt2_acts {
    int *tokens, *targets;   /* (N) backend copies of the inputs */
    float *encoded;          /* (N,C) embeddings: layer 0's input */
    float *ln1;              /* (L,N,C) */
    float *ln1_mean, *ln1_rstd;   /* (L,N) */
    float *qkv;              /* (L,N,3C) */
    float *lse;              /* (L,B,NH,T) attention log-sum-exps, saved for backward */
    float *atty;             /* (L,N,C) attention output before c_proj */
    float *res2;             /* (L,N,C) residual after the attention branch */
    float *ln2;              /* (L,N,C) */
    float *ln2_mean, *ln2_rstd;   /* (L,N) */
    float *fch;              /* (L,N,F) c_fc output, GELU input */
    float *fch_gelu;         /* (L,N,F) */
    float *res3;             /* (L,N,C) layer output */
    float *lnf;              /* (N,C) */
    float *lnf_mean, *lnf_rstd;   /* (N) */
    float *logits;           /* (N,V); after a forward with targets, (softmax - onehot) */
    float *losses;           /* (N) */
    /* backward scratch, one layer's worth, reused down the stack */
    float *dres;             /* (N,C) gradient of the residual stream */
    float *dC, *dC2;         /* (N,C) */
    float *dqkv;             /* (N,3C) */
    float *dF;               /* (N,F) */
} gpt2_acts;

/* Inference buffers for sequences of up to max_T positions. */
typedef struct gpt2_infer {
    float *kcache, *vcache;  /* (L,max_T,C) keys and values of positions 0..pos-1 */
    int *tokens;             /* (max_T) */
    float *x;                /* (max_T,C) residual stream of the new tokens */
    float *ln;               /* (max_T,C) LayerNorm output, then branch outputs */
    float *q;                /* (max_T,C) */
    float *atty;             /* (max_T,C) */
    float *fch;              /* (max_T,F) */
    float *mean, *rstd;      /* (max_T) */
    float *logits;           /* (V) of the last token */
} gpt2_infer;

typedef struct gpt2_state {
    int Bp, Tp;              /* planned training shape; 0 before train_prepare */
    int B, T;                /* shape of the last forward */
    bool have_targets;       /* the last forward left dlogits for backward */
    float *act_mem;
    gpt2_acts a;
    int max_T, pos;          /* inference capacity and next position */
    float *inf_mem;
    gpt2_infer inf;
} gpt2_state;

/* Tensor idx of the parameters (grad = false) or gradients, through its group's base
 * (model.h), so ZeRO hooks can move a layer to a gathered copy or a gradient bucket. */
static float *gpt2_tensor(const model *m, bool grad, int idx) {
    return grad ? model_grad_ptr(m, idx) : model_param_ptr(m, idx);
}

static gpt2_w gpt2_layer(const model *m, bool grad, int l) {
    int i = P_LAYER0 + P_PER_LAYER * l;
    gpt2_w w = {
        gpt2_tensor(m, grad, i + P_LN1W), gpt2_tensor(m, grad, i + P_LN1B),
        gpt2_tensor(m, grad, i + P_ATTNW), gpt2_tensor(m, grad, i + P_ATTNB),
        gpt2_tensor(m, grad, i + P_PROJW), gpt2_tensor(m, grad, i + P_PROJB),
        gpt2_tensor(m, grad, i + P_LN2W), gpt2_tensor(m, grad, i + P_LN2B),
        gpt2_tensor(m, grad, i + P_FCW), gpt2_tensor(m, grad, i + P_FCB),
        gpt2_tensor(m, grad, i + P_FCPW), gpt2_tensor(m, grad, i + P_FCPB),
    };
    return w;
}

static gpt2_state *gpt2_state_get(model *m) {
    if (!m->state) {
        m->state = mem_calloc(sizeof(gpt2_state));
        SK_ASSERT(m->state);
    }
    return m->state;
}

/* ---- initialization ---- */

/* GPT-2's init: N(0, 0.02) for embeddings and matrices, the two residual projections
 * (c_proj) scaled by 1/sqrt(2L), biases 0, LayerNorm weight 1. Tensors are filled in plan
 * order from one generator seeded with `seed`, so the result depends on the seed only. */
static void gpt2_init_weights(model *m, uint64_t seed) {
    size_t maxn = 0;
    for (int i = 0; i < m->n_specs; i++) maxn = m->specs[i].numel > maxn ? m->specs[i].numel : maxn;
    float *host = mem_alloc(maxn * sizeof(float));
    SK_ASSERT(host);
    rng r;
    rng_seed(&r, seed);
    const float proj_std = 0.02f / sqrtf(2.0f * (float)m->cfg.n_layer);
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        if (arch_ends_with(p->name, ".bias")) {
            memset(host, 0, p->numel * sizeof(float));
        } else if (strstr(p->name, "ln_")) {
            for (size_t j = 0; j < p->numel; j++) host[j] = 1.0f;
        } else {
            float sd = arch_ends_with(p->name, "c_proj.weight") ? proj_std : 0.02f;
            for (size_t j = 0; j < p->numel; j++) host[j] = sd * rng_normal(&r);
        }
        backend_upload(m->be, model_param_ptr(m, i), host, p->numel * sizeof(float));
    }
    mem_free(host);
}

/* ---- planning ---- */

/* The activation plan for (B,T): entries pointing into a (filled by the caller's alloc). */
#define GPT2_ACT_PLAN(a, c, B, T)                                                              \
    const size_t L = (size_t)(c)->n_layer, N = (size_t)(B) * (T), C = (size_t)(c)->n_embd,     \
                 F = (size_t)(c)->ffn_dim, V = (size_t)(c)->vocab_size, NH = (size_t)(c)->n_head; \
    arch_plan_entry plan[] = {                                                                 \
        E(tokens, N), E(targets, N), E(encoded, N * C),                                        \
        E(ln1, L * N * C), E(ln1_mean, L * N), E(ln1_rstd, L * N), E(qkv, L * N * 3 * C),      \
        E(lse, L * N * NH), E(atty, L * N * C), E(res2, L * N * C), E(ln2, L * N * C),        \
        E(ln2_mean, L * N), E(ln2_rstd, L * N), E(fch, L * N * F), E(fch_gelu, L * N * F),    \
        E(res3, L * N * C), E(lnf, N * C), E(lnf_mean, N), E(lnf_rstd, N), E(logits, N * V),   \
        E(losses, N), E(dres, N * C), E(dC, N * C), E(dC2, N * C), E(dqkv, N * 3 * C),         \
        E(dF, N * F),                                                                         \
    }

static size_t gpt2_train_bytes(const model_config *c, int B, int T) {
    gpt2_acts scratch, *a = &scratch;
#define E(field, n) { (void **)&a->field, (n) }
    GPT2_ACT_PLAN(a, c, B, T);
#undef E
    return arch_plan_floats(plan, (int)(sizeof plan / sizeof plan[0])) * sizeof(float);
}

static sk_status gpt2_train_prepare(model *m, int B, int T) {
    const model_config *c = &m->cfg;
    SK_ASSERT(B > 0 && T > 0);
    if (T > c->n_positions)
        return sk_fail(SK_ECONFIG, "sequence length %d exceeds the model's context %d", T, c->n_positions);
    if (!c->tie_word_embeddings)
        return sk_fail(SK_ECONFIG, "GPT-2 with an untied LM head is not supported");
    SK_ASSERT(m->grads || m->grads_external);   /* model_train_prepare allocated them */
    gpt2_state *s = gpt2_state_get(m);
    backend *be = m->be;
    if (s->act_mem) backend_mem_free(be, s->act_mem);
    s->act_mem = NULL;
    s->Bp = s->Tp = 0;
    gpt2_acts *a = &s->a;
#define E(field, n) { (void **)&a->field, (n) }
    GPT2_ACT_PLAN(a, c, B, T);
#undef E
    s->act_mem = arch_plan_alloc(be, plan, (int)(sizeof plan / sizeof plan[0]));
    if (!s->act_mem) return sk_fail_ctx(SK_ENOMEM, "allocating GPT-2 activations for B=%d T=%d", B, T);
    s->Bp = B;
    s->Tp = T;
    s->have_targets = false;
    return SK_OK;
}

/* ---- training forward and backward ---- */

/* A distinct dropout seed per site (0: embeddings; 1 + 3l + k: layer l's attention
 * probabilities, attention residual, MLP residual), for a tensor of per_sample elements per
 * sample. dropout_keep(s + k * golden, i) == dropout_keep(s, i + k), so adding
 * dropout_sample0 * per_sample golden ratios starts the mask at the micro-batch's first
 * sample: a sample gets the same mask whatever micro-batch or rank runs it. */
static uint64_t gpt2_drop_seed(const model *m, int site, size_t per_sample) {
    uint64_t z = m->dropout_seed ^ ((uint64_t)(site + 1) * 0xD1B54A32D192ED03ull);
    z = (z ^ (z >> 32)) * 0x9E3779B97F4A7C15ull;
    z ^= z >> 29;
    return z + m->dropout_sample0 * (uint64_t)per_sample * 0x9E3779B97F4A7C15ull;
}

/* out(N,OC) = inp(N,IC) @ w(IC,OC) + b(OC) */
static void gpt2_linear(backend *be, float *out, const float *inp, const float *w, const float *b,
                        int N, int IC, int OC) {
    be->ops->gemm(be, false, false, N, OC, IC, 1.0f, inp, IC, w, OC, 0.0f, out, OC);
    be->ops->bias_add(be, out, b, N, OC);
}

/* Backward of gpt2_linear: dw, db accumulate; dinp is written (beta 0). */
static void gpt2_linear_backward(backend *be, float *dinp, float *dw, float *db, const float *dout,
                                 const float *inp, const float *w, int N, int IC, int OC) {
    be->ops->bias_backward(be, db, dout, N, OC);
    be->ops->gemm(be, true, false, IC, OC, N, 1.0f, inp, IC, dout, OC, 1.0f, dw, OC);
    be->ops->gemm(be, false, true, N, IC, OC, 1.0f, dout, OC, w, OC, 0.0f, dinp, IC);
}

/* q, k, v: the column blocks [0,C), [C,2C), [2C,3C) of packed qkv(B,T,3C), rows 3C apart. */
static void gpt2_qkv_views(float *qkv, int B, int T, int C, tensor *q, tensor *k, tensor *v) {
    tensor all = arch_view3(qkv, B, T, 3 * C);
    *q = tensor_cols(all, 0, C);
    *k = tensor_cols(all, C, C);
    *v = tensor_cols(all, 2 * C, C);
}

static float gpt2_forward(model *m, const int *tokens, const int *targets, int B, int T) {
    gpt2_state *s = m->state;
    SK_ASSERT(s && s->act_mem && B > 0 && T > 0 && B <= s->Bp && T <= s->Tp);
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int L = c->n_layer, C = c->n_embd, F = c->ffn_dim, V = c->vocab_size, NH = c->n_head;
    const int N = B * T;
    const size_t NPL = (size_t)s->Bp * s->Tp;                      /* planned rows: layer stride */
    const size_t LSE = NPL * NH;                                   /* lse layer stride */
    const bool drop = m->dropout;
    const size_t STC = (size_t)T * C, SATT = (size_t)NH * T * T;   /* per-sample dropout sizes */
    gpt2_acts *a = &s->a;
    s->B = B;
    s->T = T;
    s->have_targets = false;

    arch_check_tokens(m, tokens, (size_t)N);
    model_hook_before_forward(m, -1);
    backend_upload(be, a->tokens, tokens, sizeof(int) * (size_t)N);
    op->embed_forward(be, a->encoded, a->tokens, gpt2_tensor(m, false, P_WTE),
                      gpt2_tensor(m, false, P_WPE), B, T, C);
    if (drop && c->embd_pdrop > 0)
        op->dropout_forward(be, a->encoded, a->encoded, (size_t)N * C, c->embd_pdrop, gpt2_drop_seed(m, 0, STC));

    const float *res = a->encoded;
    for (int l = 0; l < L; l++) {
        model_hook_before_forward(m, l);
        gpt2_w w = gpt2_layer(m, false, l);
        float *ln1 = a->ln1 + l * NPL * C, *qkv = a->qkv + l * NPL * 3 * C, *lse = a->lse + l * LSE;
        float *atty = a->atty + l * NPL * C, *res2 = a->res2 + l * NPL * C, *ln2 = a->ln2 + l * NPL * C;
        float *fch = a->fch + l * NPL * F, *fchg = a->fch_gelu + l * NPL * F, *res3 = a->res3 + l * NPL * C;
        float attn_p = drop ? c->attn_pdrop : 0.0f;

        op->layernorm_forward(be, ln1, a->ln1_mean + l * NPL, a->ln1_rstd + l * NPL, res, w.ln1w, w.ln1b,
                              N, C, c->norm_eps);
        gpt2_linear(be, qkv, ln1, w.attnw, w.attnb, N, C, 3 * C);
        tensor q, k, v;
        gpt2_qkv_views(qkv, B, T, C, &q, &k, &v);
        op->attention_forward(be, NULL, arch_view3(atty, B, T, C), arch_view3(lse, B, NH, T), q, k, v, NH, NH, 0,
                              attn_p, gpt2_drop_seed(m, 1 + 3 * l, SATT));
        gpt2_linear(be, res2, atty, w.projw, w.projb, N, C, C);
        if (drop && c->resid_pdrop > 0)
            op->dropout_forward(be, res2, res2, (size_t)N * C, c->resid_pdrop, gpt2_drop_seed(m, 2 + 3 * l, STC));
        op->add(be, res2, res2, res, (size_t)N * C);

        op->layernorm_forward(be, ln2, a->ln2_mean + l * NPL, a->ln2_rstd + l * NPL, res2, w.ln2w, w.ln2b,
                              N, C, c->norm_eps);
        gpt2_linear(be, fch, ln2, w.fcw, w.fcb, N, C, F);
        op->gelu_forward(be, fchg, fch, (size_t)N * F);
        gpt2_linear(be, res3, fchg, w.fcpw, w.fcpb, N, F, C);
        if (drop && c->resid_pdrop > 0)
            op->dropout_forward(be, res3, res3, (size_t)N * C, c->resid_pdrop, gpt2_drop_seed(m, 3 + 3 * l, STC));
        op->add(be, res3, res3, res2, (size_t)N * C);
        res = res3;
    }
    int nf = P_LAYER0 + P_PER_LAYER * L;
    op->layernorm_forward(be, a->lnf, a->lnf_mean, a->lnf_rstd, res, gpt2_tensor(m, false, nf),
                          gpt2_tensor(m, false, nf + 1), N, C, c->norm_eps);
    /* logits(N,V) = lnf(N,C) @ wte(V,C)^T: the tied LM head */
    op->gemm(be, false, true, N, V, C, 1.0f, a->lnf, C, gpt2_tensor(m, false, P_WTE), C, 0.0f,
             a->logits, V);
    if (!targets) return 0.0f;

    s->have_targets = true;
    return arch_xent_loss(be, a->losses, a->logits, a->targets, targets, N, V);
}

static void gpt2_backward(model *m, float dloss) {
    gpt2_state *s = m->state;
    SK_ASSERT(s && s->have_targets && (m->grads || m->grads_external));
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int L = c->n_layer, C = c->n_embd, F = c->ffn_dim, V = c->vocab_size, NH = c->n_head;
    const int B = s->B, T = s->T, N = B * T;
    const size_t NPL = (size_t)s->Bp * s->Tp;
    const size_t LSE = NPL * NH;                                   /* lse layer stride */
    const bool drop = m->dropout;
    const size_t STC = (size_t)T * C, SATT = (size_t)NH * T * T;   /* per-sample dropout sizes */
    gpt2_acts *a = &s->a;
    model_hook_before_backward(m, -1);
    float *wte = gpt2_tensor(m, false, P_WTE), *dwte = gpt2_tensor(m, true, P_WTE);

    /* LM head: logits holds dlogits / dloss. dlnf = dloss * dlogits @ wte;
     * dwte += dloss * dlogits^T @ lnf. */
    op->gemm(be, false, false, N, C, V, dloss, a->logits, V, wte, C, 0.0f, a->dC, C);
    op->gemm(be, true, false, V, C, N, dloss, a->logits, V, a->lnf, C, 1.0f, dwte, C);
    int nf = P_LAYER0 + P_PER_LAYER * L;
    const float *resL = L > 0 ? a->res3 + (L - 1) * NPL * C : a->encoded;
    backend_zero(be, a->dres, sizeof(float) * (size_t)N * C);
    op->layernorm_backward(be, a->dres, gpt2_tensor(m, true, nf), gpt2_tensor(m, true, nf + 1),
                           a->dC, resL, gpt2_tensor(m, false, nf), a->lnf_mean, a->lnf_rstd, N, C);

    for (int l = L - 1; l >= 0; l--) {
        model_hook_before_backward(m, l);
        gpt2_w w = gpt2_layer(m, false, l), g = gpt2_layer(m, true, l);
        const float *res = l > 0 ? a->res3 + (l - 1) * NPL * C : a->encoded;
        float *ln1 = a->ln1 + l * NPL * C, *qkv = a->qkv + l * NPL * 3 * C, *lse = a->lse + l * LSE;
        float *atty = a->atty + l * NPL * C, *res2 = a->res2 + l * NPL * C, *ln2 = a->ln2 + l * NPL * C;
        float *fch = a->fch + l * NPL * F, *fchg = a->fch_gelu + l * NPL * F;
        float attn_p = drop ? c->attn_pdrop : 0.0f;

        /* MLP branch; dres is the gradient of x3 */
        const float *dbranch = a->dres;
        if (drop && c->resid_pdrop > 0) {
            op->dropout_backward(be, a->dC, a->dres, (size_t)N * C, c->resid_pdrop, gpt2_drop_seed(m, 3 + 3 * l, STC));
            dbranch = a->dC;
        }
        gpt2_linear_backward(be, a->dF, g.fcpw, g.fcpb, dbranch, fchg, w.fcpw, N, F, C);
        op->gelu_backward(be, a->dF, fch, a->dF, (size_t)N * F);
        gpt2_linear_backward(be, a->dC, g.fcw, g.fcb, a->dF, ln2, w.fcw, N, C, F);
        op->layernorm_backward(be, a->dres, g.ln2w, g.ln2b, a->dC, res2, w.ln2w,
                               a->ln2_mean + l * NPL, a->ln2_rstd + l * NPL, N, C);

        /* attention branch; dres is now the gradient of x2 */
        dbranch = a->dres;
        if (drop && c->resid_pdrop > 0) {
            op->dropout_backward(be, a->dC, a->dres, (size_t)N * C, c->resid_pdrop, gpt2_drop_seed(m, 2 + 3 * l, STC));
            dbranch = a->dC;
        }
        gpt2_linear_backward(be, a->dC2, g.projw, g.projb, dbranch, atty, w.projw, N, C, C);
        backend_zero(be, a->dqkv, sizeof(float) * (size_t)N * 3 * C);
        tensor q, k, v, dq, dk, dv;
        gpt2_qkv_views(qkv, B, T, C, &q, &k, &v);
        gpt2_qkv_views(a->dqkv, B, T, C, &dq, &dk, &dv);
        op->attention_backward(be, NULL, dq, dk, dv, arch_view3(a->dC2, B, T, C), q, k, v, arch_view3(atty, B, T, C),
                               arch_view3(lse, B, NH, T), NH, NH, 0, attn_p, gpt2_drop_seed(m, 1 + 3 * l, SATT));
        gpt2_linear_backward(be, a->dC, g.attnw, g.attnb, a->dqkv, ln1, w.attnw, N, C, 3 * C);
        op->layernorm_backward(be, a->dres, g.ln1w, g.ln1b, a->dC, res, w.ln1w,
                               a->ln1_mean + l * NPL, a->ln1_rstd + l * NPL, N, C);
        model_hook_after_backward(m, l);
    }
    if (drop && c->embd_pdrop > 0)
        op->dropout_backward(be, a->dres, a->dres, (size_t)N * C, c->embd_pdrop, gpt2_drop_seed(m, 0, STC));
    op->embed_backward(be, dwte, gpt2_tensor(m, true, P_WPE), a->dres, a->tokens, B, T, C);
    model_hook_after_backward(m, -1);
}

static const float *gpt2_logits(const model *m) {
    const gpt2_state *s = m->state;
    SK_ASSERT(s && s->act_mem && !s->have_targets);
    return s->a.logits;
}

/* ---- inference ---- */

static sk_status gpt2_infer_prepare(model *m, int max_T) {
    const model_config *c = &m->cfg;
    if (max_T <= 0 || max_T > c->n_positions)
        return sk_fail(SK_EARG, "inference length %d outside 1..%d (the model's context)", max_T, c->n_positions);
    gpt2_state *s = gpt2_state_get(m);
    backend *be = m->be;
    if (s->inf_mem) backend_mem_free(be, s->inf_mem);
    s->inf_mem = NULL;
    const size_t L = (size_t)c->n_layer, T = (size_t)max_T, C = (size_t)c->n_embd, F = (size_t)c->ffn_dim;
    gpt2_infer *f = &s->inf;
#define E(field, n) { (void **)&f->field, (n) }
    arch_plan_entry plan[] = {
        E(kcache, L * T * C), E(vcache, L * T * C), E(tokens, T), E(x, T * C), E(ln, T * C),
        E(q, T * C), E(atty, T * C), E(fch, T * F), E(mean, T), E(rstd, T),
        E(logits, (size_t)c->vocab_size),
    };
#undef E
    s->inf_mem = arch_plan_alloc(be, plan, (int)(sizeof plan / sizeof plan[0]));
    if (!s->inf_mem) return sk_fail_ctx(SK_ENOMEM, "allocating a KV cache of %d positions", max_T);
    s->max_T = max_T;
    s->pos = 0;
    return SK_OK;
}

static void gpt2_infer_reset(model *m) {
    gpt2_state *s = m->state;
    SK_ASSERT(s && s->inf_mem);
    s->pos = 0;
}

/* Runs tokens(n) at positions pos..pos+n-1: each layer writes the new keys and values
 * straight into its cache rows (c_attn split into its q, k, v column blocks), attends over
 * the cache, and only the last row goes through ln_f and the LM head. Returns logits(V)
 * in backend memory, valid until the next call. */
static const float *gpt2_infer_step(model *m, const int *tokens, int n) {
    gpt2_state *s = m->state;
    SK_ASSERT(s && s->inf_mem && n > 0 && s->pos + n <= s->max_T);
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int L = c->n_layer, C = c->n_embd, F = c->ffn_dim, V = c->vocab_size, NH = c->n_head;
    const int pos = s->pos;
    gpt2_infer *f = &s->inf;

    arch_check_tokens(m, tokens, (size_t)n);
    backend_upload(be, f->tokens, tokens, sizeof(int) * (size_t)n);
    op->embed_forward(be, f->x, f->tokens, gpt2_tensor(m, false, P_WTE),
                      gpt2_tensor(m, false, P_WPE) + (size_t)pos * C, 1, n, C);
    for (int l = 0; l < L; l++) {
        gpt2_w w = gpt2_layer(m, false, l);
        float *kc = f->kcache + (size_t)l * s->max_T * C, *vc = f->vcache + (size_t)l * s->max_T * C;
        op->layernorm_forward(be, f->ln, f->mean, f->rstd, f->x, w.ln1w, w.ln1b, n, C, c->norm_eps);
        /* Wattn (C,3C): columns [0,C) q, [C,2C) k, [2C,3C) v */
        op->gemm(be, false, false, n, C, C, 1.0f, f->ln, C, w.attnw, 3 * C, 0.0f, f->q, C);
        op->gemm(be, false, false, n, C, C, 1.0f, f->ln, C, w.attnw + C, 3 * C, 0.0f, kc + (size_t)pos * C, C);
        op->gemm(be, false, false, n, C, C, 1.0f, f->ln, C, w.attnw + 2 * C, 3 * C, 0.0f, vc + (size_t)pos * C, C);
        op->bias_add(be, f->q, w.attnb, n, C);
        op->bias_add(be, kc + (size_t)pos * C, w.attnb + C, n, C);
        op->bias_add(be, vc + (size_t)pos * C, w.attnb + 2 * C, n, C);
        op->attention_forward(be, NULL, arch_view3(f->atty, 1, n, C), tensor_none(), arch_view3(f->q, 1, n, C),
                              arch_view3(kc, 1, pos + n, C), arch_view3(vc, 1, pos + n, C), NH, NH, 0, 0.0f, 0);
        gpt2_linear(be, f->ln, f->atty, w.projw, w.projb, n, C, C);
        op->add(be, f->x, f->x, f->ln, (size_t)n * C);
        op->layernorm_forward(be, f->ln, f->mean, f->rstd, f->x, w.ln2w, w.ln2b, n, C, c->norm_eps);
        gpt2_linear(be, f->fch, f->ln, w.fcw, w.fcb, n, C, F);
        op->gelu_forward(be, f->fch, f->fch, (size_t)n * F);
        gpt2_linear(be, f->ln, f->fch, w.fcpw, w.fcpb, n, F, C);
        op->add(be, f->x, f->x, f->ln, (size_t)n * C);
    }
    int nf = P_LAYER0 + P_PER_LAYER * L;
    op->layernorm_forward(be, f->ln, f->mean, f->rstd, f->x + (size_t)(n - 1) * C,
                          gpt2_tensor(m, false, nf), gpt2_tensor(m, false, nf + 1), 1, C, c->norm_eps);
    op->gemm(be, false, true, 1, V, C, 1.0f, f->ln, C, gpt2_tensor(m, false, P_WTE), C, 0.0f, f->logits, V);
    s->pos = pos + n;
    return f->logits;
}

static void gpt2_free_state(model *m) {
    gpt2_state *s = m->state;
    if (!s) return;
    if (s->act_mem) backend_mem_free(m->be, s->act_mem);
    if (s->inf_mem) backend_mem_free(m->be, s->inf_mem);
    mem_free(s);
    m->state = NULL;
}

const model_arch gpt2_arch = {
    .name = "gpt2",
    .plan_params = gpt2_plan_params,
    .init_weights = gpt2_init_weights,
    .train_prepare = gpt2_train_prepare,
    .forward = gpt2_forward,
    .backward = gpt2_backward,
    .logits = gpt2_logits,
    .infer_prepare = gpt2_infer_prepare,
    .infer_reset = gpt2_infer_reset,
    .infer_step = gpt2_infer_step,
    .free_state = gpt2_free_state,
    .train_bytes = gpt2_train_bytes,
};
