/* Tests of tensor-parallel training's bookkeeping (tp_train.h) in one process: the refusals,
 * and the map between the shares' flat parameters and the whole model's (tp_train_runs), on
 * GPT-2 (packed q/k/v, Conv1D (in, out) weights, biases) and Llama (q/k/v and MLP biases,
 * grouped KV heads) at K = 2 and 3:
 *   - over the K shares, every element of a cut tensor is reached exactly once and every
 *     element of a replicated one once per share, the runs of a share in its own order;
 *   - a sub-range [begin, begin + count) yields exactly its elements (the optimizer's shards);
 *   - the cut is the architecture's: Llama's o_proj (C, QD) is cut by columns, rank r holding
 *     columns [r QD/K, (r+1) QD/K) of every row; GPT-2's c_attn bias holds each rank's heads of
 *     q, k and v.
 * The numbers (losses within 1e-5 of one process, 2e-3 in bf16) are tests/cli_tptrain.sh's,
 * under mpirun. */
#include "test.h"

#include "model/model.h"
#include "model/presets.h"
#include "model/tp_train.h"

TEST(check_refuses) {
    model_config c;
    model_config_llama(&c, 2, 4, 2, 32, 64, 32, 100);
    CHECK(tp_train_check(&c, 1, true, DT_BF16) == SK_OK);
    CHECK(tp_train_check(&c, 2, false, DT_F32) == SK_OK);
    CHECK(tp_train_check(&c, 3, false, DT_F32) == SK_ECONFIG && strstr(sk_errmsg(), "4 attention heads do not divide"));
    CHECK(tp_train_check(&c, 4, false, DT_F32) == SK_ECONFIG && strstr(sk_errmsg(), "2 key/value heads to divide"));
    CHECK(tp_train_check(&c, 2, true, DT_F32) == SK_EARG && strstr(sk_errmsg(), "--dropout"));
    CHECK(tp_train_check(&c, 2, false, DT_BF16) == SK_OK);   /* bf16 mixed precision: cli_tptrain.sh */
    CHECK(tp_train_check(&c, 2, false, DT_F16) == SK_EARG && strstr(sk_errmsg(), "f32 or bf16"));
}

/* What the runs of one share reach: per whole element a count, the next share offset expected. */
typedef struct cover {
    int *count;            /* (whole n_params) */
    size_t next, total;    /* the share's next offset; elements seen */
    bool ordered;
} cover;

static void cover_run(void *ctx, int spec, size_t at, size_t whole_at, size_t n) {
    cover *c = ctx;
    c->ordered &= at == c->next;
    c->next = at + n;
    c->total += n;
    for (size_t j = 0; j < n; j++) c->count[whole_at + j]++;
}

/* The share of rank 0 of K of cfg, planned with parameters (tp_train_runs reads its specs). */
static model *share_of(backend *be, const model_config *cfg, int K) {
    model_config c = *cfg;
    c.n_head /= K;
    c.n_kv_head /= K;
    c.ffn_dim /= K;
    model *m = NULL;
    SK_ASSERT(model_create(&c, be, &m) == SK_OK);
    m->tp.size = K;
    return m;
}

/* The cover of every share of cfg at K; false (with a message) on the first fault. */
static bool covers(backend *be, const model_config *cfg, int K, const char *what) {
    model *s = share_of(be, cfg, K);
    model *w = NULL;
    SK_ASSERT(model_create(cfg, be, &w) == SK_OK);
    cover c = {.count = calloc(w->n_params, sizeof(int))};
    bool ok = true;
    for (int r = 0; r < K && ok; r++) {
        c.next = c.total = 0;
        c.ordered = true;
        size_t total = tp_train_runs(s, r, 0, s->n_params, cover_run, &c);
        ok = total == w->n_params && c.ordered && c.total == s->n_params;
        if (!ok) printf("  %s K=%d rank %d: whole %zu of %zu, ordered %d, %zu of %zu\n", what, K, r, total, w->n_params,
                        c.ordered, c.total, s->n_params);
        /* a sub-range: exactly its elements */
        cover sub = {.count = calloc(w->n_params, sizeof(int)), .next = s->n_params / 3, .ordered = true};
        tp_train_runs(s, r, s->n_params / 3, s->n_params / 2, cover_run, &sub);
        ok = ok && sub.ordered && sub.total == s->n_params / 2;
        free(sub.count);
    }
    for (int i = 0; i < w->n_specs && ok; i++) {
        const model_param *p = &w->specs[i];
        const int want = tp_train_replicated(s, i) ? K : 1;
        for (size_t j = 0; j < p->numel && ok; j++)
            if (c.count[p->offset + j] != want) {
                printf("  %s K=%d: %s[%zu] reached %d times, want %d\n", what, K, p->name, j, c.count[p->offset + j], want);
                ok = false;
            }
    }
    free(c.count);
    model_free(s);
    model_free(w);
    return ok;
}

TEST(runs_cover_the_whole_model) {
    backend *be = backend_cpu_create();
    model_config g, l, q;
    model_config_gpt2(&g, 2, 6, 48, 32, 100);
    model_config_llama(&l, 2, 6, 6, 48, 96, 32, 100);
    l.attention_bias = l.mlp_bias = true;
    model_config_llama(&q, 2, 4, 2, 32, 64, 32, 100);
    CHECK(covers(be, &g, 2, "gpt2") && covers(be, &g, 3, "gpt2"));
    CHECK(covers(be, &l, 2, "llama") && covers(be, &l, 3, "llama"));
    CHECK(covers(be, &q, 2, "llama-gqa"));
    backend_free(be);
}

/* Rank r's share of a column-cut tensor (rows, cols) of `blocks` column blocks reaches whole
 * element (row, col) exactly when col's place in its block falls in the r-th K-th of it. */
TEST(cut_by_columns) {
    backend *be = backend_cpu_create();
    model_config l, g;
    model_config_llama(&l, 1, 6, 6, 48, 96, 32, 100);
    model_config_gpt2(&g, 1, 6, 48, 32, 100);
    struct { const model_config *c; const char *name; int blocks; } cases[] = {
        {&l, "model.layers.0.self_attn.o_proj.weight", 1}, {&g, "h.0.attn.c_attn.bias", 3}, {&g, "h.0.mlp.c_fc.weight", 1},
    };
    for (int k = 0; k < 3; k++) {
        for (int K = 2; K <= 3; K++) {
            model *s = share_of(be, cases[k].c, K), *w = NULL;
            SK_ASSERT(model_create(cases[k].c, be, &w) == SK_OK);
            const model_param *p = model_find_param(w, cases[k].name);
            CHECK(p != NULL);
            const model_param *sp = &s->specs[p - w->specs];
            const size_t cols = (size_t)p->shape[p->ndim - 1], block = cols / (size_t)cases[k].blocks;
            for (int r = 0; r < K; r++) {
                cover c = {.count = calloc(w->n_params, sizeof(int)), .next = sp->offset, .ordered = true};
                tp_train_runs(s, r, sp->offset, sp->numel, cover_run, &c);
                size_t bad = 0;
                for (size_t j = 0; j < p->numel; j++) {
                    const bool mine = (j % cols) % block / (block / (size_t)K) == (size_t)r;
                    bad += c.count[p->offset + j] != (mine ? 1 : 0);
                }
                CHECK_MSG(bad == 0 && c.ordered && c.total == sp->numel, "%s at K=%d rank %d: %zu elements wrong",
                          cases[k].name, K, r, bad);
                free(c.count);
            }
            model_free(s);
            model_free(w);
        }
    }
    backend_free(be);
}

TEST_MAIN()
