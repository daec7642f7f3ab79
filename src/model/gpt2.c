/* gpt2: GPT-2 (Radford et al. 2019) as transformers' GPT2LMHeadModel lays it out: learned
 * position embeddings, pre-LayerNorm blocks, Conv1D weights stored (in, out), tanh GELU,
 * LM head tied to wte. Training forward/backward and KV-cached inference, written only
 * against the backend table (backend.h), so the CUDA backend runs this file unchanged.
 * Training reads f32 parameters (a training model); inference also runs over mapped
 * weights, whose matrices (wte, wpe, the Conv1D weights) reach the backend's matmul and
 * embed in the file's dtype and whose biases and LayerNorm weights are f32 copies.
 *
 * One block, in the order the forward runs it (x is the residual stream):
 *   ln1 = LN(x); qkv = ln1 @ Wattn + battn; atty = attention(qkv);
 *   x2 = x + drop(atty @ Wproj + bproj); ln2 = LN(x2); fch = ln2 @ Wfc + bfc;
 *   x3 = x2 + drop(gelu(fch) @ Wfcproj + bfcproj)
 * and at the end logits = LN_f(x) @ wte^T.
 *
 * Mixed precision (model_set_precision): the activations marked "lp" below are bf16, the
 * products read the bf16 compute copy of the matrices (model_compute_view), the residual
 * stream, norm statistics, losses and every gradient of a parameter stay f32; the residual's
 * gradient passes to products through a bf16 copy that the norm backward before the branch
 * writes in its pass (gpt2_norm_copy). In f32 "lp" is f32.
 *
 * Invariants: train_prepare plans every activation for its (B,T) and allocates them in one
 * backend buffer; forward and backward then allocate nothing (infer_batch neither: its
 * workspace comes from infer_prepare, its keys and values from the caller's cache). With
 * targets, the forward leaves (softmax - onehot) in place of the logits; backward folds dloss
 * into the products that read it.
 *
 * Letters: B batch, T time, N = B*T rows, C channels, F MLP width, L layers, NH heads,
 * V vocabulary. */
#include "model/arch.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/rng.h"

/* Order: wte (V,C), wpe (T,C), then per layer ln_1, attn.c_attn (C,3QD), attn.c_proj (QD,C),
 * ln_2, mlp.c_fc (C,F), mlp.c_proj (F,C), then ln_f. Conv1D weights are (in, out). QD, the
 * heads' width n_head * head_dim, is C except in a tensor-parallel training share (tp_train.h),
 * whose config holds its own heads and MLP width. */
static int gpt2_plan_params(const model_config *cfg, model_param *specs) {
    int n = 0;
    size_t off = 0;
    const int64_t C = cfg->n_embd, F = cfg->ffn_dim, QD = (int64_t)cfg->n_head * cfg->head_dim;
    arch_plan_param(specs, &n, &off, -1, true, 2, cfg->vocab_size, C, "wte.weight");
    arch_plan_param(specs, &n, &off, -1, true, 2, cfg->n_positions, C, "wpe.weight");
    for (int l = 0; l < cfg->n_layer; l++) {
#define P(suffix, decay, ndim, d0, d1) \
        arch_plan_param(specs, &n, &off, l, decay, ndim, d0, d1, "h.%d." suffix, l)
        P("ln_1.weight", false, 1, C, 0);
        P("ln_1.bias", false, 1, C, 0);
        P("attn.c_attn.weight", true, 2, C, 3 * QD);
        P("attn.c_attn.bias", false, 1, 3 * QD, 0);
        P("attn.c_proj.weight", true, 2, QD, C);
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

/* Parameter or gradient views of one layer; the parameters' matrices are the compute views
 * (bf16 in mixed precision). */
typedef struct gpt2_w {
    tensor ln1w, ln1b, attnw, attnb, projw, projb, ln2w, ln2b, fcw, fcb, fcpw, fcpb;
} gpt2_w;

/* Activations of a training forward, planned for (Bp,Tp); layer tensors are stacked with
 * a layer stride of the planned size, a smaller (B,T) uses the front of each slot. */
typedef struct gpt2_acts {
    int *tokens, *targets;   /* (N) backend copies of the inputs */
    float *encoded;          /* (N,C) embeddings: layer 0's input */
    void *ln1;               /* (L,N,C) lp */
    float *ln1_mean, *ln1_rstd;   /* (L,N) */
    void *qkv;               /* (L,N,3QD) lp */
    float *lse;              /* (L,B,NH,T) attention log-sum-exps, saved for backward */
    void *atty;              /* (L,N,QD) lp, attention output before c_proj */
    float *res2;             /* (L,N,C) residual after the attention branch */
    void *ln2;               /* (L,N,C) lp */
    float *ln2_mean, *ln2_rstd;   /* (L,N) */
    void *fch;               /* (L,N,F) lp, c_fc output, GELU input */
    void *fch_gelu;          /* (L,N,F) lp */
    float *res3;             /* (L,N,C) layer output */
    void *lnf;               /* (N,C) lp */
    float *lnf_mean, *lnf_rstd;   /* (N) */
    void *logits;            /* (N,Vp) lp; after a forward with targets, (softmax - onehot) */
    void *head;              /* (Vp,C) lp: the LM head with zero padding rows (arch_lm_head) */
    float *losses;           /* (N) */
    double *loss_sum;        /* (1) f64 (planned as 2 floats): the loss head's sum on the device */
    /* backward scratch, one layer's worth, reused down the stack */
    float *dres;             /* (N,C) gradient of the residual stream */
    void *dC, *dC2;          /* (N,C) lp (QD <= C) */
    void *dqkv;              /* (N,3QD) lp */
    void *dF;                /* (N,F) lp */
} gpt2_acts;

/* The inference workspace for batches of up to N tokens from S sequences (model_infer_prepare);
 * keys and values are the caller's (model_kv_cache). */
typedef struct gpt2_infer {
    arch_batch_ids ids;      /* the batch's arrays */
    float *x;                /* (N,C) residual stream of the new tokens */
    float *ln;               /* (N,C) lp: LayerNorm output (room for f32: the position
                              * embeddings pass through it) */
    float *br;               /* (N,C) lp: a branch's output (the c_proj layers), which the next
                              * LayerNorm adds into x (never ln: a norm's out overlaps no resid) */
    float *qkv;              /* (N,3C) lp */
    float *atty;             /* (N,C) lp */
    float *fch;              /* (N,F) lp */
    float *mean, *rstd;      /* (N) */
    float *last;             /* (S,C) the rows whose logits are asked for */
    float *lastn;            /* (S,C) lp: those rows through ln_f */
    float *logits;           /* (S,V) */
} gpt2_infer;

typedef struct gpt2_state {
    int Bp, Tp;              /* planned training shape; 0 before train_prepare */
    int B, T;                /* shape of the last forward */
    bool have_targets;       /* the last forward left dlogits for backward */
    dtype lp;                /* the lp activations' dtype (m->act_dt when planned) */
    bool recompute;          /* planned with m->recompute: one layer's inner activations */
    float *act_mem;
    gpt2_acts a;
    arch_infer_dims inf_dims;   /* inference workspace capacity */
    float *inf_mem;
    gpt2_infer inf;
} gpt2_state;

static gpt2_w gpt2_layer(const model *m, bool grad, int l) {
    int i = P_LAYER0 + P_PER_LAYER * l;
    gpt2_w w = {
        arch_param(m, grad, i + P_LN1W), arch_param(m, grad, i + P_LN1B),
        arch_matrix(m, grad, i + P_ATTNW), arch_param(m, grad, i + P_ATTNB),
        arch_matrix(m, grad, i + P_PROJW), arch_param(m, grad, i + P_PROJB),
        arch_param(m, grad, i + P_LN2W), arch_param(m, grad, i + P_LN2B),
        arch_matrix(m, grad, i + P_FCW), arch_param(m, grad, i + P_FCB),
        arch_matrix(m, grad, i + P_FCPW), arch_param(m, grad, i + P_FCPB),
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
        backend_upload(m->be, tensor_f32(model_param_view(m, i)), host, p->numel * sizeof(float));
    }
    mem_free(host);
}

/* ---- planning ---- */

/* The activation plan for (B,T): entries pointing into a (filled by the caller's alloc); E
 * counts floats, EL elements of the lp dtype. */
#define GPT2_ACT_PLAN(a, c, lp, rc, B, T)                                                      \
    const size_t N = (size_t)(B) * (T), C = (size_t)(c)->n_embd, L = (size_t)(c)->n_layer,     \
                 LK = (rc) ? 1 : L,   /* layers whose inner activations are kept */             \
                 F = (size_t)(c)->ffn_dim, Vp = (size_t)arch_vocab_padded((c)->vocab_size),     \
                 NH = (size_t)(c)->n_head, QD = NH * (size_t)(c)->head_dim;                    \
    arch_plan_entry plan[] = {                                                                 \
        E(tokens, N), E(targets, N), E(encoded, N * C),                                        \
        EL(ln1, LK * N * C), E(ln1_mean, LK * N), E(ln1_rstd, LK * N), EL(qkv, LK * N * 3 * QD), \
        E(lse, LK * N * NH), EL(atty, LK * N * QD), E(res2, LK * N * C), EL(ln2, LK * N * C),  \
        E(ln2_mean, LK * N), E(ln2_rstd, LK * N), EL(fch, LK * N * F), EL(fch_gelu, LK * N * F), \
        E(res3, L * N * C), EL(lnf, N * C), E(lnf_mean, N), E(lnf_rstd, N), EL(logits, N * Vp), \
        EL(head, (lp) == DT_F32 ? 0 : Vp * C),                                                 \
        E(losses, N), E(loss_sum, 2), E(dres, N * C), EL(dC, N * C), EL(dC2, N * C),           \
        EL(dqkv, N * 3 * QD), EL(dF, N * F),                                                   \
    }
#define E(field, n) { (void **)&a->field, (n) }
#define EL(field, n) { (void **)&a->field, arch_floats_of((n), lp) }

static size_t gpt2_train_bytes(const model *m, int B, int T) {
    gpt2_acts scratch, *a = &scratch;
    const model_config *c = &m->cfg;
    const dtype lp = m->act_dt;
    GPT2_ACT_PLAN(a, c, lp, m->recompute, B, T);
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
    const dtype lp = m->act_dt;
    GPT2_ACT_PLAN(a, c, lp, m->recompute, B, T);
    s->act_mem = arch_plan_alloc(be, plan, (int)(sizeof plan / sizeof plan[0]));
    if (!s->act_mem) return sk_fail_ctx(SK_ENOMEM, "allocating GPT-2 activations for B=%d T=%d", B, T);
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

/* Views of layer l's activations for the shape of the last forward (s->B, s->T): the front
 * of slot l of each stacked buffer (slot 0 of the inner ones under recompute, where the
 * backward runs the layer's forward again first). in is the layer's input (the embeddings or
 * the previous layer's output); lse (B,NH,T) holds the attention's log-sum-exps. */
typedef struct gpt2_layer_acts {
    tensor in, ln1, ln1_mean, ln1_rstd, qkv, atty, res2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, res3, lse;
} gpt2_layer_acts;

static gpt2_layer_acts gpt2_layer_views(const model *m, int l) {
    const gpt2_state *s = m->state;
    const gpt2_acts *a = &s->a;
    const int64_t N = (int64_t)s->B * s->T, C = m->cfg.n_embd, F = m->cfg.ffn_dim;
    const size_t NPL = (size_t)s->Bp * s->Tp;                      /* planned rows: layer stride */
    const int64_t NH = m->cfg.n_head, QD = NH * m->cfg.head_dim;
    const dtype lp = s->lp;
    const int o = l;   /* the layer's own slot of the stacked outputs */
    if (s->recompute) l = 0;
    gpt2_layer_acts x = {
        .in = o > 0 ? arch_mat(a->res3 + (o - 1) * NPL * C, N, C) : arch_mat(a->encoded, N, C),
        .ln1 = arch_mat_at(a->ln1, lp, l * NPL * C, N, C),
        .ln1_mean = arch_vec(a->ln1_mean + l * NPL, N),
        .ln1_rstd = arch_vec(a->ln1_rstd + l * NPL, N),
        .qkv = arch_mat_at(a->qkv, lp, l * NPL * 3 * QD, N, 3 * QD),
        .atty = arch_mat_at(a->atty, lp, l * NPL * QD, N, QD),
        .res2 = arch_mat(a->res2 + l * NPL * C, N, C),
        .ln2 = arch_mat_at(a->ln2, lp, l * NPL * C, N, C),
        .ln2_mean = arch_vec(a->ln2_mean + l * NPL, N),
        .ln2_rstd = arch_vec(a->ln2_rstd + l * NPL, N),
        .fch = arch_mat_at(a->fch, lp, l * NPL * F, N, F),
        .fch_gelu = arch_mat_at(a->fch_gelu, lp, l * NPL * F, N, F),
        .res3 = arch_mat(a->res3 + o * NPL * C, N, C),
        .lse = arch_view3(a->lse + l * NPL * NH, s->B, NH, s->T),
    };
    return x;
}

/* out(N,OC) = inp(N,IC) @ w(IC,OC) + b(OC), in one op where the backend fuses it. */
static void gpt2_linear(backend *be, tensor out, tensor inp, tensor w, tensor b) {
    backend_linear_forward(be, NULL, out, tensor_none(), inp, w, false, b, BACKEND_ACT_NONE);
}

/* The MLP's c_fc: out(N,F) = gelu(inp(N,C) @ w(C,F) + b(F)); pre(N,F) keeps the sum before
 * the GELU for the backward (tensor_none() in inference: out alone). */
static void gpt2_linear_gelu(backend *be, tensor out, tensor pre, tensor inp, tensor w, tensor b) {
    backend_linear_forward(be, NULL, out, pre, inp, w, false, b, BACKEND_ACT_GELU);
}

/* Backward of gpt2_linear: dw, db accumulate; dinp is written (beta 0). */
static void gpt2_linear_backward(backend *be, tensor dinp, tensor dw, tensor db, tensor dout, tensor inp,
                                 tensor w) {
    be->ops->bias_backward(be, NULL, db, dout);
    be->ops->matmul(be, NULL, dw, inp, true, dout, false, 1.0f, 1.0f);
    be->ops->matmul(be, NULL, dinp, dout, false, w, true, 1.0f, 0.0f);
}

/* q, k, v: the column blocks [0,QD), [QD,2QD), [2QD,3QD) of packed qkv(N,3QD) for N = B*T
 * rows, as (B,T,QD) views whose rows are 3QD apart. */
static void gpt2_qkv_views(tensor qkv, int B, int T, tensor *q, tensor *k, tensor *v) {
    const int64_t C = qkv.shape[1] / 3;
    tensor all = arch_seq(qkv, B, T);
    *q = tensor_cols(all, 0, C);
    *k = tensor_cols(all, C, C);
    *v = tensor_cols(all, 2 * C, C);
}

/* Layer l's forward over the shape of the last forward, from its input to its output (res3),
 * keeping what its backward reads; the backward calls it again under recompute. */
static void gpt2_layer_forward(model *m, int l) {
    const gpt2_state *s = m->state;
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int B = s->B, T = s->T, C = c->n_embd, NH = c->n_head;
    const bool drop = m->dropout;
    const size_t STC = (size_t)T * C, SATT = (size_t)NH * T * T;   /* per-sample dropout sizes */
    gpt2_w w = gpt2_layer(m, false, l);
    gpt2_layer_acts x = gpt2_layer_views(m, l);
    float attn_p = drop ? c->attn_pdrop : 0.0f;
    tensor q, k, v;

    op->layernorm_forward(be, NULL, x.ln1, x.ln1_mean, x.ln1_rstd, x.in, tensor_none(), w.ln1w, w.ln1b,
                          c->norm_eps);
    gpt2_linear(be, x.qkv, x.ln1, w.attnw, w.attnb);
    gpt2_qkv_views(x.qkv, B, T, &q, &k, &v);
    op->attention_forward(be, NULL, arch_seq(x.atty, B, T), x.lse, q, k, v, NH, NH, 0, attn_p,
                          gpt2_drop_seed(m, 1 + 3 * l, SATT));
    /* a row-cut product in a tensor-parallel share: partial sums, added over the ranks */
    gpt2_linear(be, x.res2, x.atty, w.projw, tp_row_bias(m, w.projb));
    tp_sum(m, x.res2);
    if (drop && c->resid_pdrop > 0)
        op->dropout_forward(be, NULL, x.res2, x.res2, c->resid_pdrop, gpt2_drop_seed(m, 2 + 3 * l, STC));
    /* res2 += in, the attention branch's residual, in ln_2's pass */
    op->layernorm_forward(be, NULL, x.ln2, x.ln2_mean, x.ln2_rstd, x.res2, x.in, w.ln2w, w.ln2b, c->norm_eps);
    gpt2_linear_gelu(be, x.fch_gelu, x.fch, x.ln2, w.fcw, w.fcb);
    gpt2_linear(be, x.res3, x.fch_gelu, w.fcpw, tp_row_bias(m, w.fcpb));
    tp_sum(m, x.res3);
    if (drop && c->resid_pdrop > 0)
        op->dropout_forward(be, NULL, x.res3, x.res3, c->resid_pdrop, gpt2_drop_seed(m, 3 + 3 * l, STC));
    op->add(be, NULL, x.res3, x.res3, x.res2);
}

static float gpt2_forward(model *m, const int *tokens, const int *targets, int B, int T) {
    gpt2_state *s = m->state;
    SK_ASSERT(s && s->act_mem && B > 0 && T > 0 && B <= s->Bp && T <= s->Tp);
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int L = c->n_layer, C = c->n_embd, V = c->vocab_size;
    const int N = B * T;
    const size_t STC = (size_t)T * C;   /* per-sample dropout size */
    gpt2_acts *a = &s->a;
    s->B = B;
    s->T = T;
    s->have_targets = false;
    tensor encoded = arch_mat(a->encoded, N, C), lnf = arch_mat_at(a->lnf, s->lp, 0, N, C);
    tensor logits = tensor_2d_ld(a->logits, s->lp, N, V, arch_vocab_padded(V));

    arch_check_tokens(m, tokens, (size_t)N, 0);
    model_hook_before_forward(m, -1);
    backend_upload(be, a->tokens, tokens, sizeof(int) * (size_t)N);
    op->embed_forward(be, NULL, encoded, tensor_2d(a->tokens, DT_I32, B, T), arch_param(m, false, P_WTE),
                      arch_param(m, false, P_WPE));
    if (m->dropout && c->embd_pdrop > 0)
        op->dropout_forward(be, NULL, encoded, encoded, c->embd_pdrop, gpt2_drop_seed(m, 0, STC));

    for (int l = 0; l < L; l++) {
        model_hook_before_forward(m, l);
        gpt2_layer_forward(m, l);
    }
    int nf = P_LAYER0 + P_PER_LAYER * L;
    tensor resL = L > 0 ? gpt2_layer_views(m, L - 1).res3 : encoded;
    op->layernorm_forward(be, NULL, lnf, arch_vec(a->lnf_mean, N), arch_vec(a->lnf_rstd, N), resL, tensor_none(),
                          arch_param(m, false, nf), arch_param(m, false, nf + 1), c->norm_eps);
    /* logits(N,V) = lnf(N,C) @ wte(V,C)^T: the tied LM head (padded to Vp rows in mixed
     * precision, the product then writing every column of the logits' rows) */
    tensor head = arch_lm_head(be, arch_param(m, false, P_WTE), arch_matrix(m, false, P_WTE), a->head, s->lp, true);
    op->matmul(be, NULL, tensor_2d_ld(a->logits, s->lp, N, head.shape[0], tensor_ld(logits)), lnf, false, head, true,
               1.0f, 0.0f);
    if (!targets) return 0.0f;

    s->have_targets = true;
    return arch_xent_loss(be, arch_vec(a->losses, N), tensor_1d(a->loss_sum, DT_F64, 1), logits,
                          tensor_1d(a->targets, DT_I32, N), targets);
}

/* Where the norm backward before a residual branch writes its bf16 copy of dres (scratch),
 * or tensor_none(): in f32, and with residual dropout, whose backward makes the branch's
 * gradient itself (gpt2_branch_grad). */
static tensor gpt2_norm_copy(const model *m, tensor scratch) {
    if (scratch.dt == DT_F32 || (m->dropout && m->cfg.resid_pdrop > 0)) return tensor_none();
    return scratch;
}

/* The gradient a residual branch's products see, from dres (f32) for the branch whose
 * dropout site is `site`: dropout's backward into scratch, or in mixed precision the bf16
 * copy the norm backward wrote into scratch (gpt2_norm_copy), or dres itself (f32). */
static tensor gpt2_branch_grad(model *m, tensor scratch, tensor dres, int site) {
    const model_config *c = &m->cfg;
    if (m->dropout && c->resid_pdrop > 0) {
        const size_t STC = (size_t)((gpt2_state *)m->state)->T * c->n_embd;
        m->be->ops->dropout_backward(m->be, NULL, scratch, dres, c->resid_pdrop, gpt2_drop_seed(m, site, STC));
        return scratch;
    }
    return scratch.dt == DT_F32 ? dres : scratch;
}

static void gpt2_backward(model *m, float dloss) {
    gpt2_state *s = m->state;
    SK_ASSERT(s && s->have_targets && (m->grads || m->grads_external));
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int L = c->n_layer, C = c->n_embd, F = c->ffn_dim, V = c->vocab_size, NH = c->n_head,
              QD = NH * c->head_dim;
    const int B = s->B, T = s->T, N = B * T;
    const bool drop = m->dropout;
    const size_t STC = (size_t)T * C, SATT = (size_t)NH * T * T;   /* per-sample dropout sizes */
    gpt2_acts *a = &s->a;
    const dtype lp = s->lp;
    tensor dres = arch_mat(a->dres, N, C), dC = arch_mat_at(a->dC, lp, 0, N, C), dC2 = arch_mat_at(a->dC2, lp, 0, N, C);
    tensor dqkv = arch_mat_at(a->dqkv, lp, 0, N, 3 * QD), dF = arch_mat_at(a->dF, lp, 0, N, F);
    tensor datty = arch_mat_at(a->dC2, lp, 0, N, QD);
    tensor logits = tensor_2d_ld(a->logits, lp, N, V, arch_vocab_padded(V));
    model_hook_before_backward(m, -1);
    tensor head = arch_lm_head(be, arch_param(m, false, P_WTE), arch_matrix(m, false, P_WTE), a->head, lp, false);
    tensor dwte = arch_param(m, true, P_WTE);

    /* LM head: logits holds dlogits / dloss (0 in the padding columns). dlnf = dloss *
     * dlogits @ wte; dwte += dloss * dlogits^T @ lnf. */
    op->matmul(be, NULL, dC, tensor_2d_ld(a->logits, lp, N, head.shape[0], tensor_ld(logits)), false, head, false,
               dloss, 0.0f);
    op->matmul(be, NULL, dwte, logits, true, arch_mat_at(a->lnf, lp, 0, N, C), false, dloss, 1.0f);
    int nf = P_LAYER0 + P_PER_LAYER * L;
    tensor resL = L > 0 ? gpt2_layer_views(m, L - 1).res3 : arch_mat(a->encoded, N, C);
    backend_zero(be, a->dres, sizeof(float) * (size_t)N * C);
    op->layernorm_backward(be, NULL, dres, gpt2_norm_copy(m, dC2), arch_param(m, true, nf),
                           arch_param(m, true, nf + 1), dC, resL, arch_param(m, false, nf), arch_vec(a->lnf_mean, N),
                           arch_vec(a->lnf_rstd, N));

    for (int l = L - 1; l >= 0; l--) {
        model_hook_before_backward(m, l);
        if (s->recompute) gpt2_layer_forward(m, l);
        gpt2_w w = gpt2_layer(m, false, l), g = gpt2_layer(m, true, l);
        gpt2_layer_acts x = gpt2_layer_views(m, l);
        float attn_p = drop ? c->attn_pdrop : 0.0f;

        /* MLP branch; dres is the gradient of x3 (its bf16 copy in dC2, from the norm after) */
        tensor dbranch = gpt2_branch_grad(m, dC2, dres, 3 + 3 * l);
        gpt2_linear_backward(be, dF, g.fcpw, g.fcpb, dbranch, x.fch_gelu, w.fcpw);
        op->gelu_backward(be, NULL, dF, x.fch, dF);
        gpt2_linear_backward(be, dC, g.fcw, g.fcb, dF, x.ln2, w.fcw);
        tp_sum(m, dC);   /* a column-cut product's input gradient: partial over the ranks */
        /* dF is free: it holds the bf16 copy of dres for the attention branch */
        tensor dF_C = arch_mat_at(a->dF, lp, 0, N, C);
        op->layernorm_backward(be, NULL, dres, gpt2_norm_copy(m, dF_C), g.ln2w, g.ln2b, dC, x.res2, w.ln2w,
                               x.ln2_mean, x.ln2_rstd);

        /* attention branch; dres is now the gradient of x2 */
        dbranch = gpt2_branch_grad(m, dF_C, dres, 2 + 3 * l);
        gpt2_linear_backward(be, datty, g.projw, g.projb, dbranch, x.atty, w.projw);
        tensor q, k, v, dq, dk, dv;   /* dq, dk, dv: all of dqkv, written by the backward */
        gpt2_qkv_views(x.qkv, B, T, &q, &k, &v);
        gpt2_qkv_views(dqkv, B, T, &dq, &dk, &dv);
        op->attention_backward(be, NULL, dq, dk, dv, arch_seq(datty, B, T), q, k, v,
                               arch_seq(x.atty, B, T), x.lse, NH, NH, 0, attn_p,
                               gpt2_drop_seed(m, 1 + 3 * l, SATT));
        gpt2_linear_backward(be, dC, g.attnw, g.attnb, dqkv, x.ln1, w.attnw);
        tp_sum(m, dC);
        op->layernorm_backward(be, NULL, dres, l > 0 ? gpt2_norm_copy(m, dC2) : tensor_none(), g.ln1w, g.ln1b, dC,
                               x.in, w.ln1w, x.ln1_mean, x.ln1_rstd);
        model_hook_after_backward(m, l);
    }
    if (drop && c->embd_pdrop > 0)
        op->dropout_backward(be, NULL, dres, dres, c->embd_pdrop, gpt2_drop_seed(m, 0, STC));
    op->embed_backward(be, NULL, dwte, arch_param(m, true, P_WPE), dres, tensor_2d(a->tokens, DT_I32, B, T));
    model_hook_after_backward(m, -1);
}

static tensor gpt2_logits(const model *m) {
    const gpt2_state *s = m->state;
    SK_ASSERT(s && s->act_mem && !s->have_targets);
    const int64_t V = m->cfg.vocab_size;
    return tensor_2d_ld(s->a.logits, s->lp, (int64_t)s->B * s->T, V, arch_vocab_padded(V));
}

/* ---- inference ---- */

static sk_status gpt2_infer_prepare(model *m, int max_tokens, int max_seqs, int max_ctx) {
    const model_config *c = &m->cfg;
    gpt2_state *s = gpt2_state_get(m);
    arch_infer_dims d, want = {max_tokens, max_seqs, max_ctx};
    if (arch_infer_fits(s->inf_dims, want, &d) && s->inf_mem) return SK_OK;
    backend *be = m->be;
    if (s->inf_mem) backend_mem_free(be, s->inf_mem);
    s->inf_mem = NULL;
    memset(&s->inf_dims, 0, sizeof s->inf_dims);
    /* this rank's heads and MLP width (the whole model's unless split) */
    const size_t N = (size_t)d.tokens, S = (size_t)d.seqs, C = (size_t)c->n_embd, F = (size_t)m->tp.ffn_dim,
                 QD = (size_t)m->tp.n_head * c->head_dim;
    gpt2_infer *f = &s->inf;
    const dtype lp = model_infer_dtype(m);
#define E(field, n) { (void **)&f->field, (n) }
    arch_plan_entry plan[ARCH_BATCH_PLAN_ENTRIES + 11] = {
        E(x, N * C), E(ln, N * C), E(qkv, arch_floats_of(N * 3 * QD, lp)), E(atty, arch_floats_of(N * QD, lp)),
        E(fch, arch_floats_of(N * F, lp)), E(mean, N), E(rstd, N), E(last, S * C), E(lastn, arch_floats_of(S * C, lp)),
        E(logits, S * (size_t)arch_vocab_padded(c->vocab_size)), E(br, arch_floats_of(N * C, lp)),
    };
#undef E
    int n = 11;
    arch_batch_plan(&f->ids, d, plan, &n);
    s->inf_mem = arch_plan_alloc(be, plan, n);
    if (!s->inf_mem)
        return sk_fail_ctx(SK_ENOMEM, "allocating an inference workspace for %d tokens of %d sequences", d.tokens, d.seqs);
    m->infer_epoch++;
    s->inf_dims = d;
    return SK_OK;
}

static void gpt2_infer_upload(model *m, const model_batch *b) {
    gpt2_state *s = m->state;
    SK_ASSERT(s && s->inf_mem);
    arch_batch_upload(m, &s->inf.ids, s->inf_dims, b);
}

/* Runs the N tokens of b: embeddings of each token at its own position; per layer one c_attn
 * product over all rows, whose k and v column blocks go to their slots of kv before paged
 * attention reads each sequence's blocks; then only the rows asked for go through ln_f and
 * the LM head. Activations marked lp are model_infer_dtype's (bf16 over a device copy: the
 * residual stream x stays f32, as in mixed-precision training). Returns logits (R,V), f32, a
 * view of backend memory valid until the next call.
 * Split over ranks (model_tp), the heads and MLP columns are this rank's and the c_proj
 * outputs and the embedding are summed over the ranks (tp_sum). */
static tensor gpt2_infer_batch(model *m, const model_kv_cache *kv, const model_batch *b) {
    gpt2_state *s = m->state;
    SK_ASSERT(s && s->inf_mem);
    backend *be = m->be;
    const backend_ops *op = be->ops;
    const model_config *c = &m->cfg;
    const int L = c->n_layer, C = c->n_embd, F = m->tp.ffn_dim, NH = m->tp.n_head, QD = NH * c->head_dim;
    const int N = b->n_tokens, R = b->n_out;
    gpt2_infer *f = &s->inf;
    const dtype lp = model_infer_dtype(m);
    tensor x = arch_mat(f->x, N, C), ln = arch_mat_at(f->ln, lp, 0, N, C), qkv = arch_mat_at(f->qkv, lp, 0, N, 3 * QD);
    tensor atty = arch_mat_at(f->atty, lp, 0, N, QD), fch = arch_mat_at(f->fch, lp, 0, N, F);
    tensor mean = arch_vec(f->mean, N), rstd = arch_vec(f->rstd, N), wpe = arch_param(m, false, P_WPE);
    tensor br = arch_mat_at(f->br, lp, 0, N, C);

    /* x = wte[token] + wpe[position], the sum embed_forward forms in one call (split: rank 0
     * alone holds wpe, and the sum over the ranks adds it once) */
    op->embed_forward(be, NULL, x, tensor_2d(f->ids.tokens, DT_I32, 1, N), arch_param(m, false, P_WTE), tensor_none());
    if (!tensor_is_none(wpe)) {
        tensor pe = arch_mat(f->ln, N, C);
        op->embed_forward(be, NULL, pe, tensor_2d(f->ids.pos, DT_I32, 1, N), wpe, tensor_none());
        op->add(be, NULL, x, x, pe);
    }
    tp_sum(m, x);
    for (int l = 0; l < L; l++) {
        gpt2_w w = gpt2_layer(m, false, l);
        /* x += the previous layer's MLP output (none before layer 0), fused into the norm */
        op->layernorm_forward(be, NULL, ln, mean, rstd, x, l ? br : tensor_none(), w.ln1w, w.ln1b, c->norm_eps);
        gpt2_linear(be, qkv, ln, w.attnw, w.attnb);
        arch_paged_attention(be, kv, &f->ids, b, l, atty, tensor_cols(qkv, 0, QD), tensor_cols(qkv, QD, QD),
                             tensor_cols(qkv, 2 * QD, QD), tensor_none(), tensor_none(), NH, NH, 0);
        gpt2_linear(be, br, atty, w.projw, w.projb);
        tp_sum(m, br);
        op->layernorm_forward(be, NULL, ln, mean, rstd, x, br, w.ln2w, w.ln2b, c->norm_eps);
        gpt2_linear_gelu(be, fch, tensor_none(), ln, w.fcw, w.fcb);
        gpt2_linear(be, br, fch, w.fcpw, w.fcpb);
        tp_sum(m, br);
    }
    op->add(be, NULL, x, x, br);   /* the last MLP output, unfused: ln_f runs on R gathered rows */
    int nf = P_LAYER0 + P_PER_LAYER * L;
    tensor last = arch_mat(f->last, R, C), lastn = arch_mat_at(f->lastn, lp, 0, R, C);
    arch_gather_out(be, &f->ids, b, last, x);
    op->layernorm_forward(be, NULL, lastn, tensor_rows(mean, 0, R), tensor_rows(rstd, 0, R), last, tensor_none(),
                          arch_param(m, false, nf), arch_param(m, false, nf + 1), c->norm_eps);
    return tp_logits(m, lastn, arch_param(m, false, P_WTE), f->logits, R);
}

/* The tensor-parallel cut (model_split): c_attn's q, k and v column blocks by heads, c_fc by
 * columns, both c_proj by rows (their biases rank 0's: the sums add them once), wte by
 * vocabulary rows (the embedding and the tied head), wpe rank 0's (the embedding's sum adds
 * it once); LayerNorms whole. */
static model_split gpt2_split(const model_config *cfg, const model_param *p) {
    static const arch_split_rule cut[] = {
        {"wte.weight", {SPLIT_EMBED, 0, 1}},           {"wpe.weight", {SPLIT_FIRST_RANK, 0, 1}},
        {"attn.c_attn.weight", {SPLIT_HEADS, 1, 3}},   {"attn.c_attn.bias", {SPLIT_HEADS, 0, 3}},
        {"attn.c_proj.weight", {SPLIT_HEADS, 0, 1}},   {"mlp.c_fc.weight", {SPLIT_FFN, 1, 1}},
        {"mlp.c_fc.bias", {SPLIT_FFN, 0, 1}},          {"mlp.c_proj.weight", {SPLIT_FFN, 0, 1}},
        {"c_proj.bias", {SPLIT_FIRST_RANK, 0, 1}},
    };
    return arch_split_find(p->name, cut, (int)(sizeof cut / sizeof cut[0]));
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
    .infer_upload = gpt2_infer_upload,
    .infer_batch = gpt2_infer_batch,
    .free_state = gpt2_free_state,
    .train_bytes = gpt2_train_bytes,
    .split = gpt2_split,
};
