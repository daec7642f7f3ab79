/* Shared checks of a model's math, for test_gpt2.c and test_llama.c: a whole-model gradient
 * check against finite differences, the gradient-accumulation identity, KV-cached decoding
 * against the full forward, and overfitting one batch. They reach parameters, gradients
 * and logits only through uploads and downloads (test_device.h), so they run on any backend,
 * and return false after printing the first mismatch, so callers wrap them in CHECK. */
#ifndef SKEIN_TEST_MODEL_H
#define SKEIN_TEST_MODEL_H

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/rng.h"
#include "model/model.h"
#include "train/opt.h"
#include "test_device.h"

static inline void test_random_tokens(int *t, int n, int V, uint64_t seed) {
    rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < n; i++) t[i] = (int)rng_below(&r, (uint64_t)V);
}

/* A model of cfg on the test device with every parameter N(0, sd) and the weights of its
 * norms (names containing norm_key and ".weight") 1 + N(0, sd): every weight matters to the
 * loss. */
static inline model *test_random_model(const model_config *cfg, const char *norm_key, uint64_t seed, float sd) {
    model *m = NULL;
    SK_ASSERT(model_create(cfg, test_device(), &m) == SK_OK);
    float *host = malloc(m->n_params * sizeof(float));
    SK_ASSERT(host);
    rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        const bool norm = strstr(p->name, norm_key) && strstr(p->name, ".weight");
        for (size_t j = 0; j < p->numel; j++) host[p->offset + j] = (norm ? 1.0f : 0.0f) + sd * rng_normal(&r);
    }
    backend_upload(m->be, m->params, host, m->n_params * sizeof(float));
    free(host);
    return m;
}

/* The first index of x's largest value. */
static inline int test_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

enum { TEST_GB = 2, TEST_GT = 8 };

/* Five-point central differences (error O(h^4)) in f32 with step h = 1e-2 on parameters of
 * size ~0.3: the f32 rounding of the loss (~1e-6, i.e. ~1.5e-4 in the quotient) stays under
 * the tolerance, and the truncation error is negligible even where a norm divides a row by
 * its scale. Per checked parameter |analytic - numeric| <= 2e-2 |analytic| + 3e-4. Checked:
 * in every tensor the 3 entries with the largest gradient and 2 random ones, on a batch of
 * (TEST_GB, TEST_GT) tokens with one ignored target. The model is freed by the caller. */
static inline bool test_grad_check(model *m, const char *what) {
    enum { B = TEST_GB, T = TEST_GT };
    const int V = m->cfg.vocab_size;
    int tokens[B * T], targets[B * T];
    test_random_tokens(tokens, B * T, V, 1);
    test_random_tokens(targets, B * T, V, 2);
    targets[3] = -1;   /* an ignored position */
    const int counted = B * T - 1;
    if (model_train_prepare(m, B, T) != SK_OK) { printf("  %s: %s\n", what, sk_errmsg()); return false; }
    model_zero_grad(m);
    model_forward(m, tokens, targets, B, T);
    model_backward(m, 1.0f / counted);
    float *grads = test_download_f32(m->be, m->grads, m->n_params);

    rng r;
    rng_seed(&r, 5);
    const float h = 1e-2f, steps[4] = {-2 * h, -h, h, 2 * h};
    int checked = 0;
    double worst = 0;
    for (int s = 0; s < m->n_specs; s++) {
        const model_param *p = &m->specs[s];
        size_t idx[5];
        for (int k = 0; k < 3; k++) {   /* the 3 largest |grad|, distinct */
            size_t best = 0;
            float bv = -1;
            for (size_t j = 0; j < p->numel; j++) {
                float g = fabsf(grads[p->offset + j]);
                bool taken = false;
                for (int q = 0; q < k; q++) taken |= idx[q] == j;
                if (!taken && g > bv) { bv = g; best = j; }
            }
            idx[k] = best;
        }
        idx[3] = rng_below(&r, p->numel);
        idx[4] = rng_below(&r, p->numel);
        for (int k = 0; k < 5; k++) {
            float *x = m->params + p->offset + idx[k], x0, xq;   /* backend memory */
            backend_download(m->be, &x0, x, sizeof x0);
            double f[4];   /* at x0 - 2h, x0 - h, x0 + h, x0 + 2h */
            for (int q = 0; q < 4; q++) {
                xq = x0 + steps[q];
                backend_upload(m->be, x, &xq, sizeof xq);
                f[q] = model_forward(m, tokens, targets, B, T);
            }
            backend_upload(m->be, x, &x0, sizeof x0);
            double num = (8.0 * (f[2] - f[1]) - (f[3] - f[0])) / (12.0 * h), an = grads[p->offset + idx[k]];
            double err = fabs(num - an), tol = 2e-2 * fabs(an) + 3e-4;
            worst = err / tol > worst ? err / tol : worst;
            if (err > tol) {
                printf("  %s: %s[%zu]: analytic %.6g numeric %.6g\n", what, p->name, idx[k], an, num);
                free(grads);
                return false;
            }
            checked++;
        }
    }
    printf("  %s: %d parameters in %d tensors checked, worst error/tolerance %.3f\n", what, checked, m->n_specs, worst);
    free(grads);
    return true;
}

/* Two half batches with dloss = 1/(all counted tokens) sum to the full batch's gradients
 * (4 sequences of TEST_GT tokens, one ignored target in each half); only summation order
 * differs, so |full - halves| <= 1e-6 (1 + |g|) and the losses agree within 1e-5. */
static inline bool test_grad_accumulation(model *m) {
    enum { T = TEST_GT };
    const int V = m->cfg.vocab_size;
    int tokens[4 * T], targets[4 * T];
    test_random_tokens(tokens, 4 * T, V, 3);
    test_random_tokens(targets, 4 * T, V, 4);
    targets[5] = targets[20] = -1;
    const int counted = 4 * T - 2;
    if (model_train_prepare(m, 4, T) != SK_OK) { printf("  %s\n", sk_errmsg()); return false; }
    model_zero_grad(m);
    float full_loss = model_forward(m, tokens, targets, 4, T);
    model_backward(m, 1.0f / counted);
    float *full = test_download_f32(m->be, m->grads, m->n_params);
    model_zero_grad(m);
    float l1 = model_forward(m, tokens, targets, 2, T);
    model_backward(m, 1.0f / counted);
    float l2 = model_forward(m, tokens + 2 * T, targets + 2 * T, 2, T);
    model_backward(m, 1.0f / counted);
    float *halves = test_download_f32(m->be, m->grads, m->n_params);
    double worst = 0;
    for (size_t i = 0; i < m->n_params; i++) {
        double d = fabs(full[i] - halves[i]) / (1.0 + fabs(full[i]));
        worst = d > worst ? d : worst;
    }
    free(full);
    free(halves);
    double loss_diff = fabs((l1 * (2 * T - 1) + l2 * (2 * T - 1)) / counted - full_loss);
    printf("  worst relative gradient difference %.3g, loss difference %.3g\n", worst, loss_diff);
    return worst <= 1e-6 && loss_diff <= 1e-5;
}

/* Prefill of 5 tokens, then single-token decodes up to T (<= 16) positions: the logits of
 * each step match the full forward's row for that position within 1e-5, twice (the second
 * round after model_kv_reset). */
static inline bool test_kv_cache_matches(model *m, int T) {
    const int V = m->cfg.vocab_size;
    int tokens[16];
    model_kv *kv = NULL;
    if (T > 16 || model_train_prepare(m, 1, T) != SK_OK || model_kv_create(m, 16, &kv) != SK_OK) return false;
    test_random_tokens(tokens, T, V, 6);
    model_forward(m, tokens, NULL, 1, T);
    float *full = test_download_mat(m->be, model_logits(m));   /* (T,V) */
    bool ok = true;
    for (int round = 0; round < 2 && ok; round++) {
        model_kv_reset(kv);
        double worst = 0;
        for (int t = 4; t < T; t++) {
            float *lg = test_download(m->be, t == 4 ? model_infer_step(m, kv, tokens, 5)
                                                    : model_infer_step(m, kv, &tokens[t], 1));
            for (int v = 0; v < V; v++) worst = fmax(worst, fabs(lg[v] - full[(size_t)t * V + v]));
            free(lg);
        }
        if (round == 0) printf("  worst |cached - full| logit %.3g\n", worst);
        if (worst > 1e-5) { printf("  round %d: worst |diff| %g\n", round, worst); ok = false; }
    }
    free(full);
    model_kv_free(kv);
    return ok;
}

/* AdamW (lr 1e-2, no decay) on one batch of (TEST_GB, TEST_GT) random tokens, from the
 * model's own init: the first loss is within 0.1 of log V and the loss falls under 0.05
 * within 400 steps. */
static inline bool test_model_overfits(model *m) {
    enum { B = TEST_GB, T = TEST_GT };
    const int V = m->cfg.vocab_size;
    int tokens[B * T], targets[B * T];
    test_random_tokens(tokens, B * T, V, 7);
    test_random_tokens(targets, B * T, V, 8);
    if (model_train_prepare(m, B, T) != SK_OK) return false;
    const int64_t n = (int64_t)m->n_params;
    adamw opt;
    opt_hparams h;
    opt_hparams_default(&h);
    h.beta2 = 0.999f;
    h.weight_decay = 0.0f;
    h.grad_clip = 0.0f;
    if (adamw_init(&opt, m->be, 0, m->n_params) != SK_OK || adamw_set_model_spans(&opt, m) != SK_OK) return false;
    float loss = 0, first = 0;
    int steps = 0;
    for (int step = 1; step <= 400; step++) {
        model_zero_grad(m);
        loss = model_forward(m, tokens, targets, B, T);
        if (step == 1) first = loss;
        steps = step;
        if (loss < 0.05f) break;
        model_backward(m, 1.0f / (B * T));
        adamw_step(&opt, tensor_1d(m->params, DT_F32, n), tensor_none(), tensor_1d(m->grads, DT_F32, n), &h, 1e-2f);
        model_params_changed(m);   /* the bf16 copy of mixed precision follows */
    }
    adamw_free(&opt);
    printf("  loss %.3f -> %.4f in %d steps (log V = %.3f)\n", first, loss, steps, log((double)V));
    return fabs(first - log((double)V)) <= 0.1 && loss < 0.05f;
}

/* Activation recompute runs the same ops in the same order, only later: on the CPU the loss
 * and every gradient equal the stored-activation run's bit for bit; a device may pick other
 * product kernels for the other buffer layout, so there the gradients agree within
 * 1e-5 (1 + |g|) and the losses within 1e-6 relative. The activation plan is smaller. */
static inline bool test_recompute_matches(model *m) {
    enum { B = TEST_GB, T = TEST_GT };
    const int V = m->cfg.vocab_size;
    int tokens[B * T], targets[B * T];
    test_random_tokens(tokens, B * T, V, 41);
    test_random_tokens(targets, B * T, V, 42);
    float loss[2] = {0, 0};
    float *g[2] = {NULL, NULL};
    size_t bytes[2] = {0, 0};
    for (int rc = 0; rc < 2; rc++) {
        m->recompute = rc;
        bytes[rc] = model_train_bytes(m, B, T);
        if (model_train_prepare(m, B, T) != SK_OK) { printf("  %s\n", sk_errmsg()); return false; }
        model_zero_grad(m);
        loss[rc] = model_forward(m, tokens, targets, B, T);
        model_backward(m, 1.0f / (B * T));
        g[rc] = test_download_f32(m->be, m->grads, m->n_params);
    }
    double worst = 0;
    for (size_t i = 0; i < m->n_params; i++) worst = fmax(worst, fabs(g[0][i] - g[1][i]) / (1.0 + fabs(g[0][i])));
    const bool exact = m->be->host_memory;
    bool same = exact ? loss[0] == loss[1] && !memcmp(g[0], g[1], m->n_params * sizeof(float))
                      : fabs(loss[0] - loss[1]) <= 1e-6 * fabs(loss[0]) && worst <= 1e-5;
    printf("  recompute: loss %.9g vs %.9g, worst gradient difference %.3g (%s), activations %zu -> %zu bytes\n",
           loss[0], loss[1], worst, exact ? "bit for bit asked" : "1e-5 asked", bytes[0], bytes[1]);
    free(g[0]);
    free(g[1]);
    m->recompute = false;
    return same && bytes[1] < bytes[0];
}

/* Mixed precision against f32: m (on the test device, f32 parameters) in bf16 mixed
 * precision and an f32 copy of it on the CPU backend (the reference) run one forward and
 * backward on (TEST_GB, T) tokens with one ignored target. bf16 keeps 8 bits of mantissa
 * (relative rounding 2^-9 per stored activation) and the errors of a few dozen roundings
 * add up: the loss within 1% of the reference's, the global gradient norm within 3%, and the
 * whole gradient vector's cosine with the reference's >= 0.995 (a wrong gradient in one
 * tensor pulls it far lower). m is left in bf16. */
static inline bool test_mixed_matches_f32(model *m, int T, const char *what) {
    enum { B = TEST_GB };
    const int V = m->cfg.vocab_size;
    int tokens[B * 64], targets[B * 64];
    SK_ASSERT(T <= 64);
    test_random_tokens(tokens, B * T, V, 31);
    test_random_tokens(targets, B * T, V, 32);
    targets[1] = -1;
    const int counted = B * T - 1;
    backend *cpu = backend_cpu_create();
    model *ref = NULL;
    SK_ASSERT(cpu && model_create(&m->cfg, cpu, &ref) == SK_OK);
    float *w = test_download_f32(m->be, m->params, m->n_params);
    backend_upload(cpu, ref->params, w, m->n_params * sizeof(float));
    free(w);
    bool ok = model_set_precision(m, DT_BF16) == SK_OK && model_train_prepare(m, B, T) == SK_OK &&
              model_train_prepare(ref, B, T) == SK_OK;
    if (!ok) printf("  %s: %s\n", what, sk_errmsg());
    double loss = 0, loss_ref = 0, dot = 0, nn = 0, nn_ref = 0;
    if (ok) {
        model_zero_grad(m);
        model_zero_grad(ref);
        loss = model_forward(m, tokens, targets, B, T);
        loss_ref = model_forward(ref, tokens, targets, B, T);
        model_backward(m, 1.0f / counted);
        model_backward(ref, 1.0f / counted);
        float *g = test_download_f32(m->be, m->grads, m->n_params), *gr = test_download_f32(cpu, ref->grads, m->n_params);
        for (size_t i = 0; i < m->n_params; i++) {
            dot += (double)g[i] * gr[i];
            nn += (double)g[i] * g[i];
            nn_ref += (double)gr[i] * gr[i];
        }
        free(g);
        free(gr);
    }
    const double cosine = nn > 0 && nn_ref > 0 ? dot / sqrt(nn * nn_ref) : 0;
    const double dnorm = nn_ref > 0 ? fabs(sqrt(nn) - sqrt(nn_ref)) / sqrt(nn_ref) : 1;
    if (ok) printf("  %s: bf16 loss %.5f vs f32 %.5f, gradient norm %.5g vs %.5g (%.2g relative), cosine %.6f\n", what,
                   loss, loss_ref, sqrt(nn), sqrt(nn_ref), dnorm, cosine);
    ok = ok && fabs(loss - loss_ref) <= 1e-2 * fabs(loss_ref) && dnorm <= 3e-2 && cosine >= 0.995;
    model_free(ref);
    backend_free(cpu);
    return ok;
}

/* Model initialisation as transformers does it: two models of cfg initialised with one seed
 * are equal, and per tensor (its name) biases are 0, tensors whose name contains norm_key
 * are 1, the rest have mean ~0 and standard deviation ~0.02, or ~0.02 / sqrt(2 L) where the
 * name contains scaled_key (NULL: none), within 10%. Prints the first mismatch. */
static inline bool test_init_follows(const model_config *cfg, const char *norm_key, const char *scaled_key) {
    model *m = NULL, *m2 = NULL;
    bool ok = model_create(cfg, test_device(), &m) == SK_OK && model_create(cfg, test_device(), &m2) == SK_OK;
    float *w = NULL, *w2 = NULL;
    if (ok) {
        model_init_weights(m, 3);
        model_init_weights(m2, 3);
        w = test_download_f32(m->be, m->params, m->n_params);
        w2 = test_download_f32(m->be, m2->params, m->n_params);
        ok = !memcmp(w, w2, m->n_params * sizeof(float));
        if (!ok) printf("  two initialisations with one seed differ\n");
    }
    for (int i = 0; ok && i < m->n_specs; i++) {
        const model_param *p = &m->specs[i];
        double s = 0, s2 = 0;
        for (size_t j = 0; j < p->numel; j++) { s += w[p->offset + j]; s2 += (double)w[p->offset + j] * w[p->offset + j]; }
        const double mean = s / p->numel, sd = sqrt(s2 / p->numel - mean * mean);
        const double want = scaled_key && strstr(p->name, scaled_key) ? 0.02 / sqrt(2.0 * cfg->n_layer) : 0.02;
        if (strstr(p->name, ".bias")) ok = s2 == 0;
        else if (strstr(p->name, norm_key)) ok = mean == 1 && sd == 0;
        else ok = fabs(sd - want) < 0.1 * want && fabs(mean) < 0.1 * want;
        if (!ok) printf("  %s: mean %g, sd %g\n", p->name, mean, sd);
    }
    free(w);
    free(w2);
    model_free(m);
    model_free(m2);
    return ok;
}

#endif
