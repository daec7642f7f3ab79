/* Tests of the inference engine (src/infer/kv, sched, engine) against the one-sequence path
 * (model_infer_step over a model_kv), which matches transformers on these fixtures already
 * (test_gpt2, test_llama_hf):
 *   - the batched step over a paged pool (two sequences, blocks of 4, prefill then decodes in
 *     one batch) gives each row's logits within 1e-5 of the largest |logit|, and within
 *     HALF_BF16_TOL / HALF_F16_TOL of it over a bf16 / f16 cache (--kv-cache-dtype, the CPU);
 *   - over bf16 and f16 caches the engine's greedy tokens equal the f32 cache's up to a
 *     near-tie (most tokens compared); a request in a busy batch and prefix-cache hits give
 *     the same tokens over an f16 cache too; a bf16/f16 pool holds twice the blocks of the
 *     same bytes; --kv-cache-dtype's bad values are refused naming the flag;
 *   - greedy tokens through the engine (chunked prefill mixed with decodes) equal the
 *     reference on every fixture, and each token's log-probability matches the reference's;
 *   - the top-n log-probabilities equal a softmax of the reference's logits, ids in order;
 *   - a request inside a busy batch of 64 gives the same greedy tokens as alone, and a seeded
 *     sampled request the same tokens too;
 *   - a prefix-cache hit gives the same tokens as the miss, and the hit counter moves;
 *     requests of one prompt added at once compute it once (the others wait for its blocks),
 *     without holding back a request of another prompt behind them;
 *   - a pool of a few blocks preempts and still completes every request correctly;
 *   - cancelling half of the requests midway leaves the pool whole at the end;
 *   - kv_budget reads --kv-memory's bytes (k, M, G) and fractions, and refuses the rest;
 *   - the paged ops (set_rows, paged_attention) against a double-precision reference over
 *     the same cache, in f32 and in bf16 where a device runs it (on CUDA: its decode kernel
 *     with and without splits over contexts of 1 to 3000, group sizes 1 to 8, head sizes 32
 *     to 160, windows, and its general kernel for prefill chunks), f32 queries over bf16/f16
 *     caches (set_rows rounding once), argmax_rows' first maximum, and (where a backend has it)
 *     sample_rows against a sort-based reference and its draws' frequencies;
 *   - on a device with bf16 inference: the engine's greedy tokens equal the CPU engine's over
 *     the same bf16 weights, and a request inside a busy batch of 64 the tokens it gets
 *     alone, each up to the first step whose top-2 log-probability margin is below
 *     BF16_MARGIN (two bf16 runs may order a near-tie either way), with log-probabilities
 *     within BF16_LOGPROB_TOL.
 * Elsewhere the engine tests run with SKEIN_INFER_DTYPE=f32, so a device is held to 1e-5. */
#include "test.h"
#include "test_device.h"
#include "test_model.h"

#include "infer/engine.h"

enum { MAXG = 24, MAXP = 40 };
/* bf16 activations move a tiny model's log-probabilities by about 1e-2: tokens are compared
 * while the top two stand further apart than BF16_MARGIN. */
#define BF16_MARGIN 0.1
#define BF16_LOGPROB_TOL 8e-2   /* measured on the H200: up to 0.054 (the qwen2 fixture, logits up to 7) */
/* A bf16 or f16 cache under f32 activations (--kv-cache-dtype on the CPU): the largest logit
 * difference from the one-sequence f32 path, relative to the largest |logit|. */
#define HALF_BF16_TOL 2e-2   /* measured: up to 0.0081 (llama-math/llama) */
#define HALF_F16_TOL 3e-3    /* measured: up to 0.0017 (qwen2) */
/* An f16 cache moves them about 8x less than bf16: near-ties are closer. */
#define F16_MARGIN 0.02
#define HALF_BF16_LOGPROB_TOL 5e-2   /* measured: up to 0.023 (qwen2) */
#define HALF_F16_LOGPROB_TOL 1e-2    /* measured: up to 0.0039 (llama3) */

static const char *const fixtures[] = {
    "fixtures/gpt2-tiny", "fixtures/llama-tiny", "fixtures/llama-math/llama", "fixtures/llama-math/llama3",
    "fixtures/llama-math/mistral", "fixtures/llama-math/qwen2",
};

/* Folder path (relative to tests/, or absolute) opened on the test device with inference in
 * dtype want: f32 (SKEIN_INFER_DTYPE=f32: a device keeps model_load's f32 copy, so the exact
 * comparisons below hold there too) or bf16 (a device's bf16 copy; the CPU reads the files). */
static model *open_model(const char *path, const char *want) {
    model *m = NULL;
    setenv("SKEIN_INFER_DTYPE", want, 1);
    if (model_open_weights(path, test_device(), &m) != SK_OK) {
        printf("  %s: %s\n", path, sk_errmsg());
        return NULL;
    }
    return m;
}

static model *open_fixture(const char *rel) { return open_model(test_path(rel), "f32"); }

/* The reference: greedy decoding of prompt(n) for g tokens through model_infer_step; gen(g)
 * receives the tokens, lp(g) when not NULL each chosen token's log-softmax, and rows(g,V)
 * when not NULL each step's logits. */
static bool reference(model *m, const int *prompt, int n, int g, int *gen, float *lp, float *rows) {
    const int V = m->cfg.vocab_size;
    model_kv *kv = NULL;
    if (model_kv_create(m, n + g, &kv) != SK_OK) return false;
    float *own = rows ? NULL : malloc(sizeof(float) * (size_t)V);
    int tok = 0;
    for (int i = 0; i < g; i++) {
        float *row = rows ? rows + (size_t)i * V : own;
        tensor lg = i == 0 ? model_infer_step(m, kv, prompt, n) : model_infer_step(m, kv, &tok, 1);
        backend_download(m->be, row, lg.data, tensor_bytes(lg));
        int best = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > row[best]) best = v;
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)row[v] - row[best]);
        if (lp) lp[i] = (float)(row[best] - row[best] - log(sum));
        gen[i] = tok = best;
    }
    free(own);
    model_kv_free(kv);
    return true;
}

/* Runs every live request of e to its end; gen[id*MAXG ..] collects each request's tokens,
 * ngen[id] their count, lp[id*MAXG ..] their log-probabilities (lp may be NULL). Cancels the
 * requests in cancel_ids (n_cancel of them) after `cancel_after` steps. */
static bool run_all(engine *e, int *gen, int *ngen, float *lp, const int *cancel_ids, int n_cancel, int cancel_after) {
    int steps = 0;
    while (engine_has_work(e)) {
        const engine_output *out;
        int n;
        if (engine_step(e, &out, &n) != SK_OK) { printf("  step: %s\n", sk_errmsg()); return false; }
        for (int i = 0; i < n; i++) {
            if (out[i].token < 0) continue;
            if (ngen[out[i].id] >= MAXG) return false;
            if (lp) lp[out[i].id * MAXG + ngen[out[i].id]] = out[i].logprob;
            gen[out[i].id * MAXG + ngen[out[i].id]++] = out[i].token;
        }
        if (++steps == cancel_after)
            for (int i = 0; i < n_cancel; i++) engine_cancel(e, cancel_ids[i]);
        if (steps > 10000) return false;
    }
    return true;
}

/* Greedy params for g tokens with no stop ids (the fixtures' EOS may come up early). */
static engine_params greedy(int g) {
    engine_params p = engine_params_default();
    p.max_tokens = g;
    p.logprobs = true;
    return p;
}

/* Prompt i of a family: length and ids from a seed, within the vocabulary. */
static int make_prompt(int *p, int i, int len, int V) {
    test_random_tokens(p, len, V, 100 + (uint64_t)i);
    return len;
}

/* Whether the engine over m keeps a cache of dtype kdt (the CPU: f32, bf16, f16 under its f32
 * activations; a device with SKEIN_INFER_DTYPE=f32 only f32). */
static bool keeps_cache(const model *m, dtype kdt) {
    dtype got;
    return kv_dtype_resolve(m, kdt, &got) == SK_OK;
}

TEST(batched_step_matches_infer_step_logits) {
    const dtype kdts[3] = {DT_F32, DT_BF16, DT_F16};
    const double tols[3] = {1e-5, HALF_BF16_TOL, HALF_F16_TOL};
    for (size_t f = 0; f < sizeof fixtures / sizeof *fixtures; f++) {
        model *m = open_fixture(fixtures[f]);
        CHECK(m);
        const int V = m->cfg.vocab_size, len[2] = {7, 10}, steps = 4;
        int prompt[2][16], gen[2][8];
        float *ref[2];
        /* references: logits of each step of each sequence through model_infer_step */
        for (int s = 0; s < 2; s++) {
            make_prompt(prompt[s], s, len[s], V);
            ref[s] = malloc(sizeof(float) * (size_t)steps * V);
            CHECK(reference(m, prompt[s], len[s], steps, gen[s], NULL, ref[s]));
        }
        /* the same through model_infer_batch: both sequences in every step, blocks of 4, with
         * the f32 cache and (where the backend keeps them) bf16 and f16 ones */
        for (int d = 0; d < 3; d++) {
            const dtype kdt = kdts[d];
            if (!keeps_cache(m, kdt)) continue;
            kv_pool *pool = NULL;
            CHECK(kv_pool_init(m, kdt, 12 * kv_block_bytes(m, kdt, 4), 4, &pool) == SK_OK);
            CHECK(model_infer_prepare(m, 32, 2, m->cfg.n_positions) == SK_OK);
            kv_seq seq[2];
            const int MB = 8;
            int tables[2 * 8] = {0}, done[2] = {0, 0};
            double worst = 0, scale = 0;
            for (int s = 0; s < 2; s++) CHECK(kv_seq_init(&seq[s], MB) == SK_OK);
            for (int i = 0; i < steps; i++) {
                int tokens[32], pos[32], slot[32], sq[6], rows[2], N = 0;
                for (int s = 0; s < 2; s++) {
                    const int n = i == 0 ? len[s] : 1;
                    CHECK(kv_seq_reserve(pool, &seq[s], done[s] + n));
                    memcpy(tables + s * MB, seq[s].table, sizeof(int) * (size_t)seq[s].n_blocks);
                    sq[3 * s] = N;
                    sq[3 * s + 1] = n;
                    sq[3 * s + 2] = done[s] + n;
                    for (int t = 0; t < n; t++, N++) {
                        const int p = done[s] + t;
                        tokens[N] = i == 0 ? prompt[s][t] : gen[s][i - 1];
                        pos[N] = p;
                        slot[N] = seq[s].table[p / 4] * 4 + p % 4;
                    }
                    rows[s] = N - 1;
                    done[s] += n;
                }
                const model_batch b = {N, tokens, pos, slot, 2, sq, tables, MB, 2, rows, NULL, 0, false};
                const model_kv_cache cache = kv_pool_cache(pool);
                float *lg = test_download_mat(m->be, model_infer_batch(m, &cache, &b));
                for (int s = 0; s < 2; s++)
                    for (int v = 0; v < V; v++) {
                        worst = fmax(worst, fabs(lg[(size_t)s * V + v] - ref[s][(size_t)i * V + v]));
                        scale = fmax(scale, fabs(ref[s][(size_t)i * V + v]));
                    }
                free(lg);
            }
            printf("  %s, %s cache: worst |batched - infer_step| %.3g (largest |logit| %.3g)\n", fixtures[f],
                   kv_dtype_name(kdt), worst, scale);
            CHECK_MSG(worst <= tols[d] * scale, "%s, %s cache", fixtures[f], kv_dtype_name(kdt));
            for (int s = 0; s < 2; s++) {
                kv_seq_release(pool, &seq[s]);
                kv_seq_free(&seq[s]);
            }
            CHECK(kv_pool_available(pool) == kv_pool_blocks(pool));
            kv_pool_free(pool);
        }
        for (int s = 0; s < 2; s++) free(ref[s]);
        model_free(m);
    }
}

TEST(engine_greedy_matches_infer_step_on_fixtures) {
    for (size_t f = 0; f < sizeof fixtures / sizeof *fixtures; f++) {
        model *m = open_fixture(fixtures[f]);
        CHECK(m);
        enum { R = 4, G = 12 };
        const int V = m->cfg.vocab_size, len[R] = {3, 17, 33, 40};
        int prompt[R][MAXP], ref[R][G], gen[R * MAXG] = {0}, ngen[R] = {0};
        float ref_lp[R][G], lp[R * MAXG];
        /* a budget of 20 tokens: prompts go in chunks beside the others' decodes */
        engine_opts o = engine_opts_default();
        o.max_batch_tokens = 20;
        o.max_seqs = 4;
        engine *e = NULL;
        CHECK_MSG(engine_create(m, &o, &e) == SK_OK, "%s", sk_errmsg());
        for (int r = 0; r < R; r++) {
            make_prompt(prompt[r], r, len[r], V);
            CHECK(reference(m, prompt[r], len[r], G, ref[r], ref_lp[r], NULL));
            engine_params p = greedy(G);
            int id;
            CHECK_MSG(engine_add_request(e, prompt[r], len[r], &p, &id) == SK_OK, "%s", sk_errmsg());
            CHECK(id == r);
        }
        CHECK(run_all(e, gen, ngen, lp, NULL, 0, 0));
        double worst = 0;
        for (int r = 0; r < R; r++) {
            CHECK_MSG(ngen[r] == G, "%s: request %d made %d tokens", fixtures[f], r, ngen[r]);
            for (int i = 0; i < G; i++) {
                CHECK_MSG(gen[r * MAXG + i] == ref[r][i], "%s: request %d token %d: %d vs %d", fixtures[f], r, i,
                          gen[r * MAXG + i], ref[r][i]);
                worst = fmax(worst, fabs(lp[r * MAXG + i] - ref_lp[r][i]));
            }
        }
        printf("  %s: %d x %d greedy tokens equal, worst |logprob diff| %.3g\n", fixtures[f], R, G, worst);
        CHECK(worst <= 1e-5);
        CHECK(kv_pool_available(engine_pool(e)) == kv_pool_blocks(engine_pool(e)));
        engine_free(e);
        model_free(m);
    }
}

/* Top-n log-probabilities (n = 1, 5, 20) of each greedy token against a softmax of the
 * reference's logits: the same ids in the same order, log-probabilities within 1e-5. */
TEST(top_logprobs_match_softmax_of_reference_logits) {
    for (size_t f = 0; f < 2; f++) {
        model *m = open_fixture(fixtures[f]);
        CHECK(m);
        enum { G = 6 };
        const int V = m->cfg.vocab_size, tops[3] = {1, 5, ENGINE_MAX_LOGPROBS};
        int prompt[MAXP], ref[G], id;
        float *rows = malloc(sizeof(float) * (size_t)G * V);
        double *lse = malloc(sizeof(double) * G);
        make_prompt(prompt, 77, 13, V);
        CHECK(reference(m, prompt, 13, G, ref, NULL, rows));
        for (int i = 0; i < G; i++) {   /* log-sum-exp of each row */
            const float *row = rows + (size_t)i * V;
            float mx = row[0];
            for (int v = 1; v < V; v++) mx = fmaxf(mx, row[v]);
            double sum = 0;
            for (int v = 0; v < V; v++) sum += exp((double)row[v] - mx);
            lse[i] = mx + log(sum);
        }
        engine *e = NULL;
        engine_opts o = engine_opts_default();
        CHECK(engine_create(m, &o, &e) == SK_OK);
        for (int k = 0; k < 3; k++) {
            engine_params p = greedy(G);
            p.n_logprobs = tops[k];
            CHECK(engine_add_request(e, prompt, 13, &p, &id) == SK_OK);
        }
        engine_params bad = greedy(G);
        bad.n_logprobs = ENGINE_MAX_LOGPROBS + 1;
        CHECK(engine_add_request(e, prompt, 13, &bad, &id) == SK_EARG);
        int ngen[3] = {0};
        double worst = 0;
        while (engine_has_work(e)) {
            const engine_output *out;
            int n;
            CHECK(engine_step(e, &out, &n) == SK_OK);
            for (int j = 0; j < n; j++) {
                const engine_output *q = &out[j];
                if (q->token < 0) continue;
                const int i = ngen[q->id]++;
                const float *row = rows + (size_t)i * V;
                CHECK(i < G && q->token == ref[i] && q->n_top == tops[q->id]);
                /* the reference's ranking: each next id is the likeliest left (ties by id) */
                for (int t = 0; t < q->n_top; t++) {
                    int best = -1;
                    for (int v = 0; v < V; v++) {
                        bool taken = false;
                        for (int u = 0; u < t; u++) taken |= q->top_ids[u] == v;
                        if (!taken && (best < 0 || row[v] > row[best])) best = v;
                    }
                    CHECK_MSG(q->top_ids[t] == best, "%s: token %d rank %d: id %d, reference %d", fixtures[f], i, t,
                              q->top_ids[t], best);
                    worst = fmax(worst, fabs(q->top_logprobs[t] - (row[best] - lse[i])));
                }
                CHECK(q->top_ids[0] == q->token && q->top_logprobs[0] == q->logprob);
            }
        }
        printf("  %s: top-%d log-probabilities, worst |diff| %.3g\n", fixtures[f], ENGINE_MAX_LOGPROBS, worst);
        CHECK(worst <= 1e-5);
        CHECK(ngen[0] == G && ngen[1] == G && ngen[2] == G);
        engine_free(e);
        free(rows);
        free(lse);
        model_free(m);
    }
}

/* An engine for nr running sequences with a budget of 128 tokens a step, its cache in kdt
 * (KV_DTYPE_AUTO or a dtype; NULL on failure). */
static engine *busy_engine(model *m, int nr, dtype kdt) {
    engine_opts o = engine_opts_default();
    o.kv_dtype = kdt;
    o.max_seqs = nr;
    o.max_batch_tokens = 128;
    engine *e = NULL;
    return engine_create(m, &o, &e) == SK_OK ? e : NULL;
}

/* Request 0 alone, then as the 40th of 64 (the rest random, some sampled): same tokens, for a
 * greedy and for a seeded sampled request, with the f32 cache and with an f16 one. */
TEST(busy_batch_of_64_same_tokens) {
    model *m = open_fixture("fixtures/gpt2-tiny");
    CHECK(m);
    enum { NR = 64, G = 10 };
    const int V = m->cfg.vocab_size;
    engine_params sampled = greedy(G);
    sampled.sample = (sample_opts){.temperature = 0.9f, .top_k = 20, .top_p = 0.9f, .min_p = 0.01f};
    sampled.seed = 1234;
    const engine_params kinds[2] = {greedy(G), sampled};
    for (int k = 0; k < 4; k++) {
        const dtype kdt = k < 2 ? KV_DTYPE_AUTO : DT_F16;
        if (!keeps_cache(m, kdt)) continue;
        int target[MAXP], alone[MAXG], n_alone = 0, id;
        make_prompt(target, 999, 21, V);
        engine *e = busy_engine(m, NR, kdt);
        CHECK(e);
        int *gen = calloc(NR * MAXG, sizeof(int)), ngen[NR] = {0};
        CHECK(engine_add_request(e, target, 21, &kinds[k % 2], &id) == SK_OK);
        CHECK(run_all(e, gen, ngen, NULL, NULL, 0, 0));
        n_alone = ngen[0];
        memcpy(alone, gen, sizeof(int) * MAXG);
        memset(gen, 0, NR * MAXG * sizeof(int));
        memset(ngen, 0, sizeof ngen);
        int target_id = -1;
        for (int r = 0; r < NR; r++) {
            int p[MAXP];
            const int len = r == 40 ? 21 : 1 + r % 30;
            if (r == 40) memcpy(p, target, sizeof target); else make_prompt(p, r, len, V);
            engine_params pr = r == 40 ? kinds[k % 2] : r % 3 ? greedy(G) : sampled;
            pr.seed = r == 40 ? kinds[k % 2].seed : (uint64_t)r;
            CHECK(engine_add_request(e, p, len, &pr, &id) == SK_OK);
            if (r == 40) target_id = id;
        }
        int *all = calloc((size_t)(target_id + NR) * MAXG, sizeof(int)), *nall = calloc((size_t)(target_id + NR), sizeof(int));
        CHECK(run_all(e, all, nall, NULL, NULL, 0, 0));
        CHECK(nall[target_id] == n_alone && n_alone == G);
        for (int i = 0; i < G; i++)
            CHECK_MSG(all[target_id * MAXG + i] == alone[i], "%s, %s cache, token %d: %d in the batch, %d alone",
                      k % 2 ? "sampled" : "greedy", kv_dtype_name(kdt), i, all[target_id * MAXG + i], alone[i]);
        free(all);
        free(nall);
        free(gen);
        engine_free(e);
    }
    model_free(m);
}

/* Three requests of one prompt added at once (a call's "n" choices): the first computes its
 * two full blocks, the others wait a step and take them from the prefix cache (hits 4, misses
 * 2, where each computing its own would miss 6), a request of another prompt behind them is
 * not held back (its first token comes in the first step's outputs, with the first's), and
 * every one's greedy tokens are the reference's. */
TEST(requests_sharing_a_prompt_compute_it_once) {
    model *m = open_fixture("fixtures/llama-tiny");
    CHECK(m);
    enum { G = 6, N = 4 };
    const int V = m->cfg.vocab_size;
    int prompt[MAXP], other[MAXP], ref[G], ref_other[G], gen[N * MAXG] = {0}, ngen[N] = {0}, id;
    make_prompt(prompt, 11, 37, V);
    make_prompt(other, 12, 37, V);
    CHECK(reference(m, prompt, 37, G, ref, NULL, NULL) && reference(m, other, 37, G, ref_other, NULL, NULL));
    engine_opts o = engine_opts_default();
    engine *e = NULL;
    CHECK(engine_create(m, &o, &e) == SK_OK);
    engine_params p = greedy(G);
    for (int i = 0; i < N; i++) CHECK(engine_add_request(e, i < N - 1 ? prompt : other, 37, &p, &id) == SK_OK && id == i);
    bool first_seen = false;
    while (engine_has_work(e)) {
        const engine_output *out;
        int n;
        CHECK(engine_step(e, &out, &n) == SK_OK);
        unsigned ids = 0;
        for (int i = 0; i < n; i++) {
            if (out[i].token < 0) continue;
            ids |= 1u << out[i].id;
            if (ngen[out[i].id] < MAXG) gen[out[i].id * MAXG + ngen[out[i].id]++] = out[i].token;
        }
        if (ids && !first_seen) {
            first_seen = true;
            CHECK_MSG(ids == (1u | 1u << (N - 1)), "the first step's tokens came for requests %#x, not the first and the last", ids);
        }
    }
    const kv_stats st = kv_pool_stats(engine_pool(e));
    printf("  hits %llu, misses %llu\n", (unsigned long long)st.hits, (unsigned long long)st.misses);
    CHECK(st.hits == 4 && st.misses == 4);   /* the other prompt's 2 blocks miss too */
    for (int r = 0; r < N; r++)
        for (int i = 0; i < G; i++)
            CHECK_MSG(ngen[r] == G && gen[r * MAXG + i] == (r < N - 1 ? ref : ref_other)[i], "request %d, token %d", r, i);
    engine_free(e);
    model_free(m);
}

/* With the f32 cache the miss, the hit and a changed last token match the reference; with an
 * f16 cache the hit gives the miss's tokens. */
TEST(prefix_cache_hits_give_same_tokens) {
    model *m = open_fixture("fixtures/llama-tiny");
    CHECK(m);
    for (int k = 0; k < 2; k++) {
        const dtype kdt = k ? DT_F16 : KV_DTYPE_AUTO;
        if (!keeps_cache(m, kdt)) continue;
        enum { G = 8 };
        const int V = m->cfg.vocab_size;
        int prompt[MAXP], ref[G], gen[3 * MAXG] = {0}, ngen[3] = {0}, id;
        make_prompt(prompt, 7, 37, V);
        CHECK(reference(m, prompt, 37, G, ref, NULL, NULL));
        engine_opts o = engine_opts_default();
        o.kv_dtype = kdt;
        engine *e = NULL;
        CHECK(engine_create(m, &o, &e) == SK_OK);
        engine_params p = greedy(G);
        CHECK(engine_add_request(e, prompt, 37, &p, &id) == SK_OK);   /* the miss */
        CHECK(run_all(e, gen, ngen, NULL, NULL, 0, 0));
        const kv_stats before = kv_pool_stats(engine_pool(e));
        CHECK(engine_add_request(e, prompt, 37, &p, &id) == SK_OK);   /* hits: 2 full blocks */
        prompt[36] = (prompt[36] + 1) % V;                             /* another last token: hits too */
        CHECK(engine_add_request(e, prompt, 37, &p, &id) == SK_OK);
        CHECK(run_all(e, gen, ngen, NULL, NULL, 0, 0));
        const kv_stats after = kv_pool_stats(engine_pool(e));
        printf("  hits %llu -> %llu, misses %llu -> %llu\n", (unsigned long long)before.hits,
               (unsigned long long)after.hits, (unsigned long long)before.misses, (unsigned long long)after.misses);
        CHECK(before.hits == 0 && before.misses == 2 && after.hits == 4 && after.misses == 2);
        for (int i = 0; i < G; i++) {
            CHECK_MSG(gen[MAXG + i] == gen[i] && (k || gen[i] == ref[i]), "%s cache, token %d: miss %d, hit %d, reference %d",
                      kv_dtype_name(kdt), i, gen[i], gen[MAXG + i], ref[i]);
        }
        int ref2[G];
        CHECK(reference(m, prompt, 37, G, ref2, NULL, NULL));
        for (int i = 0; i < G && !k; i++) CHECK_MSG(gen[2 * MAXG + i] == ref2[i], "changed prompt, token %d", i);
        engine_free(e);
    }
    model_free(m);
}

/* 8 requests of 10 + 12 tokens (6 blocks of 4 each at the end) over a pool of 8 blocks. */
TEST(preemption_under_a_small_pool_completes_every_request) {
    for (int f = 0; f < 2; f++) {
        model *m = open_fixture(fixtures[f]);
        CHECK(m);
        enum { R = 8, G = 12 };
        const int V = m->cfg.vocab_size;
        int prompt[R][MAXP], ref[R][G], gen[R * MAXG] = {0}, ngen[R] = {0}, id;
        engine_opts o = engine_opts_default();
        o.block_size = 4;
        o.kv_blocks = 8;
        engine *e = NULL;
        CHECK(engine_create(m, &o, &e) == SK_OK);
        for (int r = 0; r < R; r++) {
            make_prompt(prompt[r], 50 + r, 10, V);
            CHECK(reference(m, prompt[r], 10, G, ref[r], NULL, NULL));
            engine_params p = greedy(G);
            CHECK(engine_add_request(e, prompt[r], 10, &p, &id) == SK_OK);
        }
        CHECK(run_all(e, gen, ngen, NULL, NULL, 0, 0));
        printf("  %s: %llu preemptions\n", fixtures[f], (unsigned long long)engine_preemptions(e));
        CHECK(engine_preemptions(e) > 0);
        for (int r = 0; r < R; r++)
            for (int i = 0; i < G; i++)
                CHECK_MSG(ngen[r] == G && gen[r * MAXG + i] == ref[r][i], "request %d token %d", r, i);
        CHECK(kv_pool_available(engine_pool(e)) == kv_pool_blocks(engine_pool(e)));
        /* a request that cannot fit the whole pool is refused, not left to starve */
        int big[40] = {0};
        engine_params p = greedy(G);
        CHECK(engine_add_request(e, big, 40, &p, &id) == SK_EARG);
        engine_free(e);
        model_free(m);
    }
}

TEST(cancelling_half_midway_frees_every_block) {
    model *m = open_fixture("fixtures/llama-math/qwen2");
    CHECK(m);
    enum { R = 16, G = 12 };
    const int V = m->cfg.vocab_size;
    int prompt[MAXP], gen[R * MAXG] = {0}, ngen[R] = {0}, cancel[R / 2], id;
    engine_opts o = engine_opts_default();
    o.max_batch_tokens = 64;
    engine *e = NULL;
    CHECK(engine_create(m, &o, &e) == SK_OK);
    for (int r = 0; r < R; r++) {
        engine_params p = greedy(G);
        CHECK(engine_add_request(e, prompt, make_prompt(prompt, 200 + r, 5 + r, V), &p, &id) == SK_OK);
        if (r % 2) cancel[r / 2] = id;
    }
    CHECK(run_all(e, gen, ngen, NULL, cancel, R / 2, 4));
    CHECK(!engine_cancel(e, cancel[0]));   /* gone already */
    for (int r = 0; r < R; r++) {
        if (r % 2) { CHECK_MSG(ngen[r] < G, "cancelled request %d finished", r); continue; }
        int ref[G];
        CHECK(reference(m, prompt, make_prompt(prompt, 200 + r, 5 + r, V), G, ref, NULL, NULL));
        for (int i = 0; i < G; i++) CHECK_MSG(gen[r * MAXG + i] == ref[i], "request %d token %d", r, i);
    }
    CHECK_MSG(kv_pool_available(engine_pool(e)) == kv_pool_blocks(engine_pool(e)), "%d of %d blocks free",
              kv_pool_available(engine_pool(e)), kv_pool_blocks(engine_pool(e)));
    engine_free(e);
    model_free(m);
}

/* One run of overlap_gives_the_outputs_of_the_plain_steps: requests of the given params over
 * prompts 300 + r, request `cancel` cancelled after the third step; tokens into gen, their
 * count into ngen, finish reasons into fin; *first: the first step's output count. */
static bool overlap_run(model *m, bool overlap, const engine_params *p, int R, int cancel, int *gen, int *ngen,
                        const char **fin, int *first) {
    setenv("SKEIN_ENGINE_OVERLAP", overlap ? "1" : "0", 1);
    engine_opts o = engine_opts_default();
    o.max_seqs = 5;
    o.max_batch_tokens = 40;
    engine *e = NULL;
    const bool made = engine_create(m, &o, &e) == SK_OK;
    unsetenv("SKEIN_ENGINE_OVERLAP");
    if (!made) return false;
    int prompt[MAXP], id, steps = 0;
    for (int r = 0; r < R; r++)
        if (engine_add_request(e, prompt, make_prompt(prompt, 300 + r, 6 + r % 9, m->cfg.vocab_size), &p[r], &id))
            return false;
    while (engine_has_work(e)) {
        const engine_output *out;
        int n;
        if (engine_step(e, &out, &n) != SK_OK || ++steps > 1000) return false;
        if (steps == 1) *first = n;
        for (int i = 0; i < n; i++) {
            if (out[i].token >= 0) gen[out[i].id * MAXG + ngen[out[i].id]++] = out[i].token;
            if (out[i].finish) fin[out[i].id] = out[i].finish;
        }
        if (steps == 3) engine_cancel(e, cancel);
    }
    const bool whole = kv_pool_available(engine_pool(e)) == kv_pool_blocks(engine_pool(e));
    engine_free(e);
    return whole;
}

/* Steps issued before the previous one's ids are read (engine.h: overlap; forced on the CPU
 * with SKEIN_ENGINE_OVERLAP=1) give the plain steps' outputs: every request's tokens and its
 * finish reason, with max_tokens of 1 and 2, stop ids that end requests whose next step is
 * already issued, one sampled request of two tokens (the host chooses: no overlap while it
 * lives), waiting
 * requests and chunked prefills, and one request cancelled between steps (its tokens, taken at
 * other points, not compared); the pool is whole again at the end; the overlapping engine's
 * first step returns nothing (its ids are read by the next), the plain one's does. */
TEST(overlap_gives_the_outputs_of_the_plain_steps) {
    model *m = open_fixture("fixtures/llama-tiny");
    CHECK(m);
    enum { R = 12, G = 9, CANCEL = 7 };
    engine_params p[R];
    int gen[3][R * MAXG], ngen[3][R], first[3];
    const char *fin[3][R];
    memset(ngen, 0, sizeof ngen);
    memset(fin, 0, sizeof fin);
    for (int r = 0; r < R; r++) {
        p[r] = greedy(G);
        p[r].logprobs = false;   /* the device's to choose (argmax_rows) */
    }
    CHECK(overlap_run(m, false, p, R, CANCEL, gen[0], ngen[0], fin[0], &first[0]));   /* the tokens to stop at */
    for (int r = 0; r < R; r++) {
        if (r % 4 == 0) p[r].max_tokens = 1;
        if (r % 4 == 1) p[r].max_tokens = 2;
        if (r % 4 == 2 && ngen[0][r] > 3) {
            p[r].stop_ids[0] = gen[0][r * MAXG + 3];
            p[r].n_stop_ids = 1;
        }
    }
    p[5].sample = (sample_opts){.temperature = 0.8f, .top_p = 1.0f};   /* 2 tokens: overlap after its steps */
    p[5].seed = 5;
    for (int k = 1; k < 3; k++) CHECK(overlap_run(m, k == 2, p, R, CANCEL, gen[k], ngen[k], fin[k], &first[k]));
    CHECK_MSG(first[1] > 0 && first[2] == 0, "first steps' outputs: %d plain, %d overlapping", first[1], first[2]);
    for (int r = 0; r < R; r++) {
        CHECK_MSG(fin[1][r] && fin[2][r] && !strcmp(fin[1][r], fin[2][r]), "request %d: %s vs %s", r,
                  fin[1][r] ? fin[1][r] : "-", fin[2][r] ? fin[2][r] : "-");
        if (r == CANCEL) continue;
        CHECK_MSG(ngen[1][r] == ngen[2][r] && !memcmp(gen[1] + r * MAXG, gen[2] + r * MAXG, sizeof(int) * ngen[1][r]),
                  "request %d: %d tokens plain, %d overlapping", r, ngen[1][r], ngen[2][r]);
    }
    CHECK(!strcmp(fin[1][2], "stop") && ngen[1][2] <= 3 && !strcmp(fin[1][0], "length") && ngen[1][0] == 1);
    model_free(m);
}

/* Penalties and min-p on a hand-made row: the documented arithmetic, and off means plain. */
TEST(sampler_penalties_min_p_logprob) {
    sampler s;
    CHECK(sampler_init(&s, 4) == SK_OK);
    rng r;
    rng_seed(&r, 1);
    const int hist[3] = {0, 1, 1};   /* prompt {0}, generated {1, 1} */
    float lg[4] = {2.0f, 1.9f, -1.0f, 0.5f}, lp;
    sample_opts o = {.temperature = 0, .top_p = 1.0f, .repetition_penalty = 2.0f};
    CHECK(sampler_next(&s, lg, &o, &r, hist, 3, 1, &lp) == 0);   /* {1, 0.95, -1, 0.5} after the penalty */
    CHECK_NEAR(lg[0], 1.0f, 1e-6);
    CHECK_NEAR(lg[1], 0.95f, 1e-6);
    double z = exp(2.0) + exp(1.9) + exp(-1.0) + exp(0.5);
    CHECK_NEAR(lp, 2.0 - log(z), 1e-5);   /* under the logits as given */
    float lg2[4] = {2.0f, 1.9f, -1.0f, 0.5f};
    o = (sample_opts){.temperature = 0, .top_p = 1.0f, .presence_penalty = 0.5f, .frequency_penalty = 0.25f};
    CHECK(sampler_next(&s, lg2, &o, &r, hist, 3, 1, NULL) == 0);   /* token 1 falls to 0.9 */
    CHECK_NEAR(lg2[1], 1.9f - 0.5f - 0.5f, 1e-6);   /* presence 0.5 + frequency 0.25 * 2 */
    CHECK_NEAR(lg2[0], 2.0f, 1e-6);                 /* prompt tokens: no presence/frequency */
    /* min-p 0.5 at temperature 1 keeps tokens 0 and 1 only (e^-0.1 > 0.5 > e^-1.5) */
    o = (sample_opts){.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.5f};
    for (int i = 0; i < 200; i++) {
        float l3[4] = {2.0f, 1.9f, -1.0f, 0.5f};
        int t = sampler_next(&s, l3, &o, &r, hist, 3, 1, NULL);
        CHECK(t == 0 || t == 1);
    }
    sampler_free(&s);
}

/* Top-p alone sorts only a selected prefix: every draw equals a reference that sorts all
 * candidates (likelier first, ties by id) and cuts the nucleus, with the same uniform, over
 * rows with flat and peaked distributions and tied probabilities (2000 draws each). */
static int ref_by_prob(const void *a, const void *b, void *p) {
    const float *pr = p;
    const int x = *(const int *)a, y = *(const int *)b;
    return pr[x] > pr[y] || (pr[x] == pr[y] && x < y) ? -1 : pr[x] == pr[y] && x == y ? 0 : 1;
}
TEST(sampler_top_p_matches_a_full_sort) {
    enum { V = 5000, DRAWS = 2000 };
    sampler s;
    CHECK(sampler_init(&s, V) == SK_OK);
    float *lg = malloc(sizeof(float) * V), *work = malloc(sizeof(float) * V), *pr = malloc(sizeof(float) * V);
    int *ord = malloc(sizeof(int) * V);
    const float top_ps[3] = {0.5f, 0.9f, 0.999f}, scales[3] = {0.5f, 3.0f, 12.0f};
    rng init;
    rng_seed(&init, 17);
    for (int c = 0; c < 9; c++) {
        for (int i = 0; i < V; i++) lg[i] = scales[c % 3] * (float)rng_normal(&init);
        for (int i = 0; i < V; i += 7) lg[i] = lg[i / 2];   /* ties */
        const sample_opts o = {.temperature = 0.8f, .top_p = top_ps[c / 3]};
        /* the reference's nucleus, from the full sort */
        int best = 0;
        for (int i = 1; i < V; i++) best = lg[i] > lg[best] ? i : best;
        double total = 0;
        for (int i = 0; i < V; i++) ord[i] = i, pr[i] = expf((lg[i] - lg[best]) / o.temperature);
        qsort_r(ord, V, sizeof(int), ref_by_prob, pr);
        for (int i = 0; i < V; i++) total += pr[ord[i]];
        int n = V;
        double kept = 0, sum = 0;
        for (int i = 0; i < V; i++) {
            kept += pr[ord[i]];
            if (kept >= o.top_p * total) { n = i + 1; break; }
        }
        for (int i = 0; i < n; i++) sum += pr[ord[i]];
        rng r1, r2;
        rng_seed(&r1, 100 + c);
        rng_seed(&r2, 100 + c);
        int bad = 0;
        for (int d = 0; d < DRAWS; d++) {
            memcpy(work, lg, sizeof(float) * V);
            const int got = sampler_next(&s, work, &o, &r1, NULL, 0, 0, NULL);
            double u = (double)rng_uniform(&r2) * sum, acc = 0;
            int want = ord[n - 1];
            for (int i = 0; i < n; i++) {
                acc += pr[ord[i]];
                if (u < acc) { want = ord[i]; break; }
            }
            bad += got != want;
        }
        CHECK_MSG(bad == 0, "top_p %g, scale %g: %d of %d draws differ (nucleus %d)", o.top_p, scales[c % 3], bad,
                  DRAWS, n);
    }
    free(lg), free(work), free(pr), free(ord);
    sampler_free(&s);
}

TEST(kv_budget_parses_bytes_and_fractions) {
    backend *be = test_device();
    const struct { const char *spec; size_t bytes; } good[] = {
        {"1048576", 1048576}, {"64k", 65536}, {"64K", 65536}, {"1.5M", 1572864}, {"2G", 2147483648u},
        {"0.5k", 512}, {"3e6", 3000000},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        size_t got = 0;
        CHECK_MSG(kv_budget(be, good[i].spec, &got) == SK_OK && got == good[i].bytes, "'%s': %zu, expected %zu",
                  good[i].spec, got, good[i].bytes);
    }
    /* a number in (0,1] is a fraction of the backend's free memory */
    const double fracs[2] = {0.25, 1.0};
    for (int i = 0; i < 2; i++) {
        size_t free_bytes, total, got = 0;
        char spec[16];
        snprintf(spec, sizeof spec, "%g", fracs[i]);
        CHECK(backend_mem_info(be, &free_bytes, &total) == SK_OK);
        CHECK(kv_budget(be, spec, &got) == SK_OK);
        const double want = fracs[i] * (double)free_bytes;
        CHECK_MSG(got > 0 && got <= total && fabs((double)got - want) <= 0.1 * want, "'%s': %zu of %zu free", spec,
                  got, free_bytes);
    }
    const char *bad[] = {"", "abc", "0", "-1", "-0.5", "12x", "1kk", "k", "1 G", "nan", "inf", "1e30", "0x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t got = 7;
        CHECK_MSG(kv_budget(be, bad[i], &got) == SK_EARG, "'%s' was accepted (%zu)", bad[i], got);
        CHECK_MSG(strstr(sk_errmsg(), "--kv-memory"), "'%s': the message does not name the flag: %s", bad[i],
                  sk_errmsg());
    }
}

/* --kv-cache-dtype's values, and a bf16 or f16 pool holding twice the f32 pool's blocks in the
 * same bytes (kv_pool_init and an engine's kv_bytes, as --kv-memory sets it). */
TEST(half_cache_pool_holds_twice_the_blocks) {
    const struct { const char *text; dtype dt; } good[] = {
        {"auto", KV_DTYPE_AUTO}, {"f32", DT_F32}, {"bf16", DT_BF16}, {"f16", DT_F16},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        dtype got = DT_I32;
        CHECK(kv_dtype_parse(good[i].text, &got) == SK_OK && got == good[i].dt);
        CHECK(!strcmp(kv_dtype_name(got), good[i].text));
    }
    const char *bad[] = {"", "fp16", "F16", "f8", "int8", "auto "};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dtype got;
        CHECK_MSG(kv_dtype_parse(bad[i], &got) == SK_EARG, "'%s' was accepted", bad[i]);
        CHECK_MSG(strstr(sk_errmsg(), "--kv-cache-dtype"), "'%s': the message does not name the flag: %s", bad[i],
                  sk_errmsg());
    }
    model *m = open_fixture("fixtures/gpt2-tiny");
    CHECK(m);
    dtype act;
    CHECK(kv_dtype_resolve(m, KV_DTYPE_AUTO, &act) == SK_OK && act == model_infer_dtype(m));
    const size_t bytes = 10 * kv_block_bytes(m, DT_F32, 16);
    const dtype kdts[3] = {DT_F32, DT_BF16, DT_F16};
    for (int d = 0; d < 3; d++) {
        if (!keeps_cache(m, kdts[d])) {
            CHECK(kdts[d] != DT_F32);
            continue;
        }
        const int want = kdts[d] == DT_F32 ? 10 : 20;
        CHECK(kv_block_bytes(m, kdts[d], 16) * (size_t)want == bytes);
        kv_pool *p = NULL;
        CHECK(kv_pool_init(m, kdts[d], bytes, 16, &p) == SK_OK);
        CHECK_MSG(kv_pool_blocks(p) == want && kv_pool_dtype(p) == kdts[d], "%s: %d blocks", dtype_name(kdts[d]),
                  kv_pool_blocks(p));
        kv_pool_free(p);
        engine_opts o = engine_opts_default();
        o.kv_bytes = bytes;
        o.kv_dtype = kdts[d];
        engine *e = NULL;
        CHECK(engine_create(m, &o, &e) == SK_OK);
        printf("  %s cache: %d blocks in %zu bytes\n", kv_dtype_name(kdts[d]), kv_pool_blocks(engine_pool(e)), bytes);
        CHECK(kv_pool_blocks(engine_pool(e)) == want && kv_pool_dtype(engine_pool(e)) == kdts[d]);
        engine_free(e);
    }
    model_free(m);
}

/* ---- the paged ops and bf16 inference ---- */

/* The values of n f32 as dt holds them (bf16: rounded), in place. */
static void round_to(float *x, size_t n, dtype dt) {
    if (dt == DT_F32) return;
    uint16_t *tmp = malloc(sizeof(uint16_t) * n);
    dtype_from_f32(tmp, dt, x, n);
    dtype_to_f32(x, tmp, dt, n);
    free(tmp);
}

/* n f32 uploaded as dt into new backend memory. */
static void *upload_as(backend *be, const float *x, size_t n, dtype dt) {
    void *raw = malloc(n * dtype_size(dt)), *dev = backend_alloc(be, n * dtype_size(dt));
    dtype_from_f32(raw, dt, x, n);
    backend_upload(be, dev, raw, n * dtype_size(dt));
    free(raw);
    return dev;
}

/* One batch of sequences (ctx[i] positions, the last nq[i] of them queries) through set_rows
 * and paged_attention, activations in dt and the cache in kdt (set_rows rounds into it); the
 * worst |out - reference| relative to the largest |value|, the reference computed over the
 * cache's values. */
static double paged_case(backend *be, dtype dt, dtype kdt, int NH, int NKV, int HS, int W, int S, const int *ctx,
                         const int *nq) {
    enum { BS = 16 };
    const int KD = NKV * HS, QD = NH * HS;
    int N = 0, MB = 0, nblocks = 0;
    for (int i = 0; i < S; i++) {
        N += nq[i];
        nblocks += (ctx[i] + BS - 1) / BS;
        if ((ctx[i] + BS - 1) / BS > MB) MB = (ctx[i] + BS - 1) / BS;
    }
    const int R = nblocks * BS;
    rng r;
    rng_seed(&r, (uint64_t)(NH * 1000 + HS * 10 + W + S));
    float *src_k = malloc(sizeof(float) * (size_t)R * KD), *src_v = malloc(sizeof(float) * (size_t)R * KD);
    float *kc = malloc(sizeof(float) * (size_t)R * KD), *vc = malloc(sizeof(float) * (size_t)R * KD);
    float *q = malloc(sizeof(float) * (size_t)N * QD), *ref = malloc(sizeof(float) * (size_t)N * QD);
    int *perm = malloc(sizeof(int) * (size_t)R), *blocks = malloc(sizeof(int) * (size_t)nblocks);
    int *tables = calloc((size_t)S * MB, sizeof(int)), *seqs = malloc(sizeof(int) * 3 * (size_t)S);
    for (size_t e = 0; e < (size_t)R * KD; e++) src_k[e] = rng_normal(&r), src_v[e] = rng_normal(&r);
    for (size_t e = 0; e < (size_t)N * QD; e++) q[e] = rng_normal(&r);
    round_to(src_k, (size_t)R * KD, dt);
    round_to(src_v, (size_t)R * KD, dt);
    round_to(q, (size_t)N * QD, dt);
    /* set_rows scatters the rows by a permutation; the tables take the blocks shuffled */
    for (int i = 0; i < R; i++) perm[i] = i;
    for (int i = R - 1; i > 0; i--) {
        const int j = (int)rng_below(&r, (uint64_t)i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < R; i++) {
        memcpy(kc + (size_t)perm[i] * KD, src_k + (size_t)i * KD, sizeof(float) * KD);
        memcpy(vc + (size_t)perm[i] * KD, src_v + (size_t)i * KD, sizeof(float) * KD);
    }
    round_to(kc, (size_t)R * KD, kdt);
    round_to(vc, (size_t)R * KD, kdt);
    for (int b = 0; b < nblocks; b++) blocks[b] = (b * 7919) % nblocks;   /* nblocks is not a multiple of 7919 */
    double vmax = 0;
    for (size_t e = 0; e < (size_t)R * KD; e++) vmax = fmax(vmax, fabs(src_v[e]));
    for (int i = 0, row = 0, used = 0; i < S; i++) {
        const int nb = (ctx[i] + BS - 1) / BS;
        memcpy(tables + (size_t)i * MB, blocks + used, sizeof(int) * (size_t)nb);
        used += nb;
        seqs[3 * i] = row, seqs[3 * i + 1] = nq[i], seqs[3 * i + 2] = ctx[i];
        for (int j = 0; j < nq[i]; j++, row++)
            for (int h = 0; h < NH; h++) {   /* the reference: softmax over the visible keys, in double */
                const int pos = ctx[i] - nq[i] + j, s0 = W > 0 && pos - W + 1 > 0 ? pos - W + 1 : 0;
                const float *qh = q + (size_t)row * QD + (size_t)h * HS;
                const size_t koff = (size_t)(h / (NH / NKV)) * HS;
                double mx = -INFINITY, sum = 0, acc[256] = {0};
                double *sc = malloc(sizeof(double) * (size_t)(pos + 1));
                for (int t = s0; t <= pos; t++) {
                    const float *kr = kc + ((size_t)tables[(size_t)i * MB + t / BS] * BS + t % BS) * KD + koff;
                    double d = 0;
                    for (int c = 0; c < HS; c++) d += (double)qh[c] * kr[c];
                    sc[t] = d / sqrt((double)HS);
                    mx = fmax(mx, sc[t]);
                }
                for (int t = s0; t <= pos; t++) {
                    const float *vr = vc + ((size_t)tables[(size_t)i * MB + t / BS] * BS + t % BS) * KD + koff;
                    const double p = exp(sc[t] - mx);
                    sum += p;
                    for (int c = 0; c < HS; c++) acc[c] += p * vr[c];
                }
                for (int c = 0; c < HS; c++) ref[(size_t)row * QD + (size_t)h * HS + (size_t)c] = (float)(acc[c] / sum);
                free(sc);
            }
    }
    void *dk = backend_alloc(be, (size_t)R * KD * dtype_size(kdt)), *dv = backend_alloc(be, (size_t)R * KD * dtype_size(kdt));
    void *dsk = upload_as(be, src_k, (size_t)R * KD, dt), *dsv = upload_as(be, src_v, (size_t)R * KD, dt);
    void *dq = upload_as(be, q, (size_t)N * QD, dt), *dout = backend_alloc(be, (size_t)N * QD * dtype_size(dt));
    int *didx = backend_alloc(be, sizeof(int) * (size_t)R), *dseqs = backend_alloc(be, sizeof(int) * 3 * (size_t)S);
    int *dtab = backend_alloc(be, sizeof(int) * (size_t)S * MB);
    backend_upload(be, didx, perm, sizeof(int) * (size_t)R);
    backend_upload(be, dseqs, seqs, sizeof(int) * 3 * (size_t)S);
    backend_upload(be, dtab, tables, sizeof(int) * (size_t)S * MB);
    const tensor idx = tensor_1d(didx, DT_I32, R), kt = tensor_2d(dk, kdt, R, KD), vt = tensor_2d(dv, kdt, R, KD);
    be->ops->set_rows(be, NULL, kt, tensor_2d(dsk, dt, R, KD), idx);
    be->ops->set_rows(be, NULL, vt, tensor_2d(dsv, dt, R, KD), idx);
    be->ops->paged_attention(be, NULL, tensor_2d(dout, dt, N, QD), tensor_2d(dq, dt, N, QD), kt, vt,
                             tensor_2d(dseqs, DT_I32, S, 3), tensor_2d(dtab, DT_I32, S, MB), BS, NH, NKV, W);
    float *out = test_download_mat(be, tensor_2d(dout, dt, N, QD));
    double worst = 0;
    for (size_t e = 0; e < (size_t)N * QD; e++) worst = fmax(worst, fabs(out[e] - ref[e]));
    void *dev[] = {dk, dv, dsk, dsv, dq, dout, didx, dseqs, dtab};
    for (size_t k = 0; k < sizeof dev / sizeof *dev; k++) backend_mem_free(be, dev[k]);
    free(out), free(src_k), free(src_v), free(kc), free(vc), free(q), free(ref);
    free(perm), free(blocks), free(tables), free(seqs);
    return worst / vmax;
}

/* Decodes over contexts of 1 to 3000 positions (one to many key steps, blocks and splits),
 * prefill chunks, group sizes 1, 4, 6 and 8, head sizes 32 to 160, windows: six sequences
 * (a batch too small to fill a GPU: split decode) and batches of 300 decodes with contexts of 1
 * to 300 (no split on a GPU), in f32 (to 1e-5 of the largest |value|) and, where the device
 * has it, bf16 (1e-2: out is rounded once; CUDA's tensor-core decode for G 4 to 8 at HS 64
 * and 128 also rounds P once). */
TEST(paged_attention_matches_a_reference) {
    backend *be = test_device();
    const dtype dts[2] = {DT_F32, DT_BF16};
    const int ctx[7] = {3000, 1, 17, 40, 300, 33, 1000}, nq[7] = {1, 1, 1, 5, 1, 33, 1};
    const struct { int NH, NKV, HS, W; } shapes[] = {
        {8, 2, 64, 0},  {8, 2, 128, 0}, {4, 4, 64, 100}, {4, 4, 128, 0},    {6, 1, 32, 0},
        {8, 1, 64, 40}, {2, 2, 160, 0}, {16, 2, 128, 257}, {12, 2, 64, 50}, {32, 8, 128, 19},
    }, many[] = {{12, 12, 64, 0}, {8, 2, 64, 0}, {16, 2, 128, 0}, {32, 8, 128, 0}};
    enum { S = 300 };
    int many_ctx[S], many_nq[S];
    for (int i = 0; i < S; i++) many_ctx[i] = 1 + (i * 37) % 300, many_nq[i] = 1;
    for (int d = 0; d < 2; d++) {
        const dtype dt = dts[d];
        if (dt != DT_F32 && !backend_supports(be, BACKEND_OP_PAGED, dt)) continue;
        const double tol = dt == DT_BF16 ? 1e-2 : 1e-5;
        for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
            const double w = paged_case(be, dt, dt, shapes[k].NH, shapes[k].NKV, shapes[k].HS, shapes[k].W, 7, ctx, nq);
            printf("  %s NH %d NKV %d HS %d W %d: worst |out - reference| %.3g of the largest |v|\n", dtype_name(dt),
                   shapes[k].NH, shapes[k].NKV, shapes[k].HS, shapes[k].W, w);
            CHECK(w <= tol);
        }
        for (size_t k = 0; k < sizeof many / sizeof *many; k++) {
            const double w =
                paged_case(be, dt, dt, many[k].NH, many[k].NKV, many[k].HS, many[k].W, S, many_ctx, many_nq);
            printf("  %s %d decodes NH %d NKV %d HS %d: worst %.3g\n", dtype_name(dt), S, many[k].NH, many[k].NKV,
                   many[k].HS, w);
            CHECK(w <= tol);
        }
    }
}

/* Prefill chunks as CUDA's tensor-core prefill kernel takes them (bf16, HS 64 and 128; f32 on
 * a backend without a bf16 cache): chunks of 2..200 queries, without a prefix and behind
 * cached prefixes of up to 300 positions, sizes on and off its 64-row tiles (query tiles that
 * cross the diagonal, a last tile part padding), decode rows in the same call, G 1, 3 and 4,
 * windows shorter than a chunk. bf16: within 1e-2 of the largest |v| (q, k, v are bf16
 * values; P is rounded to bf16 for P V and out once: about 2^-8 relative each). */
TEST(paged_attention_prefill_chunks_match_a_reference) {
    backend *be = test_device();
    const dtype dt = backend_supports(be, BACKEND_OP_PAGED, DT_BF16) ? DT_BF16 : DT_F32;
    const double tol = dt == DT_BF16 ? 1e-2 : 1e-5;
    enum { S = 9 };
    /* nq 200 from 0; 130 behind 300; 64 and 65 from 0; 1 (decode); 200 behind 300; 2 behind 5;
     * 63 behind 1; decode over 80 */
    const int ctx[S] = {200, 430, 64, 65, 33, 500, 7, 64, 81}, nq[S] = {200, 130, 64, 65, 1, 200, 2, 63, 1};
    const struct { int NH, NKV, HS, W; } shapes[] = {
        {8, 2, 128, 0}, {4, 4, 64, 0}, {12, 12, 64, 0}, {6, 2, 64, 37}, {4, 1, 128, 100}, {8, 2, 128, 130},
    };
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        const double w = paged_case(be, dt, dt, shapes[k].NH, shapes[k].NKV, shapes[k].HS, shapes[k].W, S, ctx, nq);
        printf("  %s prefill NH %d NKV %d HS %d W %d: worst |out - reference| %.3g of the largest |v|\n",
               dtype_name(dt), shapes[k].NH, shapes[k].NKV, shapes[k].HS, shapes[k].W, w);
        CHECK(w <= tol);
    }
}

/* f32 queries over a bf16 or f16 cache (--kv-cache-dtype): set_rows rounds the f32 rows once,
 * and paged_attention then computes in f32 over the cache's values, decode and prefill, to
 * 1e-5 of the largest |value| of a double-precision reference over those values. */
TEST(paged_attention_over_a_half_cache_matches_a_reference) {
    backend *be = test_device();
    const int ctx[6] = {300, 1, 17, 40, 700, 33}, nq[6] = {1, 1, 1, 5, 1, 33};
    const struct { int NH, NKV, HS, W; } shapes[] = {{8, 2, 64, 0}, {4, 4, 64, 100}, {6, 1, 32, 0}, {2, 2, 160, 0}};
    const dtype kdts[2] = {DT_BF16, DT_F16};
    int ran = 0;
    for (int d = 0; d < 2; d++) {
        if (!backend_supports(be, BACKEND_OP_KV_CACHE, kdts[d])) continue;
        ran++;
        for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
            const double w = paged_case(be, DT_F32, kdts[d], shapes[k].NH, shapes[k].NKV, shapes[k].HS, shapes[k].W, 6,
                                        ctx, nq);
            printf("  %s cache NH %d NKV %d HS %d W %d: worst |out - reference| %.3g of the largest |v|\n",
                   dtype_name(kdts[d]), shapes[k].NH, shapes[k].NKV, shapes[k].HS, shapes[k].W, w);
            CHECK(w <= 1e-5);
        }
    }
    if (!ran) SKIP("the %s backend keeps no bf16/f16 cache under f32 activations", be->name);
}

/* One kv_store call (backend_kv_store: one op on CUDA, rope_forward and set_rows on the CPU)
 * over N rows of a packed q|k|v (row stride QD + 2 KD), rotated (rot) or not, into caches of R
 * rows that start filled with a marker; the worst |difference| from a host reference over q
 * and both caches (every cache row: rows no idx names must keep the marker). */
static double kv_store_case(backend *be, dtype dt, int NH, int NKV, int HS, bool rot) {
    enum { N = 5, R = 12 };
    const int QD = NH * HS, KD = NKV * HS, W = QD + 2 * KD, H2 = HS / 2, idx[N] = {7, -1, 0, 11, 3};
    float *qkv = malloc(sizeof(float) * N * W), *cs = malloc(sizeof(float) * 2 * N * H2);
    float *want_q = malloc(sizeof(float) * N * QD), *want_c[2];
    rng r;
    rng_seed(&r, (uint64_t)(NH * 100 + HS + rot));
    for (int e = 0; e < N * W; e++) qkv[e] = rng_normal(&r);
    round_to(qkv, (size_t)N * W, dt);
    for (int e = 0; e < N * H2; e++) {
        const double a = 6.0 * rng_uniform(&r);
        cs[e] = (float)cos(a), cs[N * H2 + e] = (float)sin(a);
    }
    for (int c = 0; c < 2; c++) {
        want_c[c] = malloc(sizeof(float) * R * KD);
        for (int e = 0; e < R * KD; e++) want_c[c][e] = 0.25f;
    }
    /* the reference: rope's pairs (channel i with i + HS/2 of each head) in f32, rounded to dt */
    float *rotated = malloc(sizeof(float) * N * W);
    memcpy(rotated, qkv, sizeof(float) * N * W);
    for (int row = 0; row < N && rot; row++)
        for (int h = 0; h < NH + NKV; h++)
            for (int i = 0; i < H2; i++) {
                float *x = rotated + row * W + h * HS + i, a = x[0], b = x[H2];
                const float c = cs[row * H2 + i], sn = cs[N * H2 + row * H2 + i];
                x[0] = a * c - b * sn, x[H2] = b * c + a * sn;
            }
    round_to(rotated, (size_t)N * W, dt);
    for (int row = 0; row < N; row++) {
        memcpy(want_q + row * QD, rotated + row * W, sizeof(float) * QD);
        if (idx[row] < 0) continue;
        memcpy(want_c[0] + idx[row] * KD, rotated + row * W + QD, sizeof(float) * KD);
        memcpy(want_c[1] + idx[row] * KD, rotated + row * W + QD + KD, sizeof(float) * KD);
    }
    void *dqkv = upload_as(be, qkv, (size_t)N * W, dt), *dcs = upload_as(be, cs, (size_t)2 * N * H2, DT_F32);
    void *dc[2];
    float *marker = malloc(sizeof(float) * R * KD);
    for (int e = 0; e < R * KD; e++) marker[e] = 0.25f;
    for (int c = 0; c < 2; c++) dc[c] = upload_as(be, marker, (size_t)R * KD, dt);
    int *didx = backend_alloc(be, sizeof idx);
    backend_upload(be, didx, idx, sizeof idx);
    const tensor t = tensor_2d(dqkv, dt, N, W);
    const tensor cos_t = rot ? tensor_2d(dcs, DT_F32, N, H2) : tensor_none();
    const tensor sin_t = rot ? tensor_2d((float *)dcs + N * H2, DT_F32, N, H2) : tensor_none();
    const tensor kc = tensor_2d(dc[0], dt, R, KD), vc = tensor_2d(dc[1], dt, R, KD);
    backend_kv_store(be, NULL, tensor_cols(t, 0, QD), tensor_cols(t, QD, KD), tensor_cols(t, QD + KD, KD), cos_t,
                     sin_t, kc, vc, tensor_1d(didx, DT_I32, N));
    float *got_q = test_download_mat(be, tensor_cols(t, 0, QD)), *got_c[2] = {test_download_mat(be, kc),
                                                                               test_download_mat(be, vc)};
    double worst = 0;
    for (int e = 0; e < N * QD; e++) worst = fmax(worst, fabs(got_q[e] - want_q[e]));
    for (int c = 0; c < 2; c++)
        for (int e = 0; e < R * KD; e++) worst = fmax(worst, fabs(got_c[c][e] - want_c[c][e]));
    backend_mem_free(be, dqkv), backend_mem_free(be, dcs), backend_mem_free(be, didx);
    for (int c = 0; c < 2; c++) backend_mem_free(be, dc[c]), free(got_c[c]), free(want_c[c]);
    free(qkv), free(cs), free(want_q), free(rotated), free(marker), free(got_q);
    return worst;
}

/* backend_kv_store matches rope then set_rows done on the host: q rotated in place, k rotated
 * and v into the rows idx names, a padding row (-1) and the other cache rows untouched; with
 * and without rotation, f32 and (where the device has it) bf16 (the reference rounded the
 * same way; one bf16 rounding apart at most), at a small shape and Llama-3-8B's heads. */
TEST(kv_store_rotates_and_writes_the_cache) {
    backend *be = test_device();
    const dtype dts[2] = {DT_F32, DT_BF16};
    const struct { int NH, NKV, HS; } shapes[] = {{4, 2, 8}, {32, 8, 128}, {6, 6, 64}};
    for (int d = 0; d < 2; d++) {
        if (dts[d] != DT_F32 && !backend_supports(be, BACKEND_OP_PAGED, dts[d])) continue;
        for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++)
            for (int rot = 0; rot < 2; rot++) {
                const double w = kv_store_case(be, dts[d], shapes[k].NH, shapes[k].NKV, shapes[k].HS, rot);
                printf("  %s NH %d NKV %d HS %d %s: worst |difference| %.3g\n", dtype_name(dts[d]), shapes[k].NH,
                       shapes[k].NKV, shapes[k].HS, rot ? "rotated" : "plain", w);
                CHECK(w <= (dts[d] == DT_F32 ? 1e-6 : 2e-2));
            }
    }
}

TEST(argmax_rows_finds_the_first_maximum) {
    backend *be = test_device();
    if (!be->ops->argmax_rows) SKIP("the %s backend has no argmax_rows", be->name);
    enum { R = 5, V = 1000, LD = 1024 };
    float *x = malloc(sizeof(float) * R * LD);
    rng r;
    rng_seed(&r, 3);
    for (int e = 0; e < R * LD; e++) x[e] = rng_normal(&r);
    x[1 * LD + 10] = x[1 * LD + 700] = 9.0f;             /* equal maxima: the first */
    for (int c = 0; c < V; c++) x[2 * LD + c] = 0.5f;     /* all equal: column 0 */
    for (int c = 0; c < V; c++) x[3 * LD + c] = -100.0f - (float)c;
    x[4 * LD + V - 1] = 50.0f;                            /* the last column */
    x[4 * LD + V] = 99.0f;                                /* past V: not a column */
    float *dx = backend_alloc(be, sizeof(float) * R * LD);
    int *dids = backend_alloc(be, sizeof(int) * R), ids[R];
    backend_upload(be, dx, x, sizeof(float) * R * LD);
    be->ops->argmax_rows(be, NULL, tensor_1d(dids, DT_I32, R), tensor_2d_ld(dx, DT_F32, R, V, LD));
    backend_download(be, ids, dids, sizeof ids);
    for (int i = 0; i < R; i++) {
        int best = 0;
        for (int c = 1; c < V; c++)
            if (x[i * LD + c] > x[i * LD + best]) best = c;
        CHECK_MSG(ids[i] == best, "row %d: %d, expected %d", i, ids[i], best);
    }
    CHECK(ids[1] == 10 && ids[2] == 0 && ids[3] == 0 && ids[4] == V - 1);
    backend_mem_free(be, dx);
    backend_mem_free(be, dids);
    free(x);
}

/* backend_sample_row's draw by its definition, the kept set found by sorting: row(V). */
static int sample_row_reference(const float *row, int V, const backend_sample_row *o) {
    int best = 0;
    for (int c = 1; c < V; c++)
        if (row[c] > row[best]) best = c;
    if (o->temperature <= 0) return best;
    const float mx = row[best], T = o->temperature;
    float *sorted = malloc(sizeof(float) * (size_t)V);
    int n = 0;   /* min-p, then the top-k of what is left (values descending), then top-p */
    for (int c = 0; c < V; c++)
        if (o->min_p <= 0 || (row[c] - mx) / T >= logf(o->min_p)) sorted[n++] = row[c];
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && sorted[j] > sorted[j - 1]; j--) {
            const float t = sorted[j];
            sorted[j] = sorted[j - 1], sorted[j - 1] = t;
        }
    if (o->top_k > 0 && o->top_k < n) n = o->top_k;
    double total = 0, kept = 0;
    for (int i = 0; i < n; i++) total += exp((sorted[i] - mx) / T);
    int m = 0;
    while (m < n && (m == 0 || kept < o->top_p * total)) kept += exp((sorted[m++] - mx) / T);
    const float t = sorted[m - 1];
    free(sorted);
    double bv = -INFINITY;
    for (int c = 0; c < V; c++)
        if (row[c] >= t) {
            const double g = (row[c] - mx) / T - log(-log(backend_sample_uniform(o->seed, o->counter, (uint32_t)c)));
            if (g > bv) bv = g, best = c;
        }
    return best;
}

/* sample_rows against sample_row_reference on random rows under each kind of option, and the
 * frequencies of many draws from one row against its restricted softmax. */
TEST(sample_rows_draws_from_the_restricted_softmax) {
    backend *be = test_device();
    if (!be->ops->sample_rows) SKIP("the %s backend has no sample_rows (the engine samples on the host)", be->name);
    enum { R = 64, V = 1000, LD = 1008, N = 20000, V6 = 6 };
    float *x = malloc(sizeof(float) * R * LD);
    backend_sample_row o[R];
    rng r;
    rng_seed(&r, 11);
    const float temps[3] = {0.0f, 0.7f, 1.3f}, tops_p[3] = {1.0f, 0.9f, 0.5f}, min_ps[2] = {0.0f, 0.05f};
    const int tops_k[4] = {0, 1, 5, 50};
    for (int i = 0; i < R; i++) {
        for (int c = 0; c < LD; c++) x[i * LD + c] = 3.0f * rng_normal(&r);
        o[i] = (backend_sample_row){temps[i % 3], min_ps[i / 3 % 2], tops_p[i / 6 % 3], tops_k[i / 18 % 4],
                                    1000 + (uint64_t)i, (uint64_t)i * 7};
    }
    float *dx = backend_alloc(be, sizeof(float) * R * LD);
    int *dids = backend_alloc(be, sizeof(int) * N), ids[R];
    backend_sample_row *dopt = backend_alloc(be, sizeof(backend_sample_row) * N);
    backend_upload(be, dx, x, sizeof(float) * R * LD);
    backend_upload(be, dopt, o, sizeof o);
    be->ops->sample_rows(be, NULL, tensor_1d(dids, DT_I32, R), tensor_2d_ld(dx, DT_F32, R, V, LD), dopt);
    backend_download(be, ids, dids, sizeof ids);
    int differ = 0;
    for (int i = 0; i < R; i++)
        if (ids[i] != sample_row_reference(x + i * LD, V, &o[i])) differ++;
    printf("  %d of %d rows drew another token than the reference\n", differ, R);
    CHECK(differ <= 1);   /* a threshold that float sums place on the other side of a value */
    /* one row of 6, top-4 at temperature 1, drawn N times (counters 0..N-1): frequencies */
    const float six[V6] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, -3.0f};
    float *rows = malloc(sizeof(float) * N * V6);
    backend_sample_row *opts = malloc(sizeof(backend_sample_row) * N);
    int *got = malloc(sizeof(int) * N), count[V6] = {0};
    for (int i = 0; i < N; i++) {
        memcpy(rows + i * V6, six, sizeof six);
        opts[i] = (backend_sample_row){1.0f, 0.0f, 1.0f, 4, 77, (uint64_t)i};
    }
    float *drows = backend_alloc(be, sizeof(float) * N * V6);
    backend_upload(be, drows, rows, sizeof(float) * N * V6);
    backend_upload(be, dopt, opts, sizeof(backend_sample_row) * N);
    be->ops->sample_rows(be, NULL, tensor_1d(dids, DT_I32, N), tensor_2d(drows, DT_F32, N, V6), dopt);
    backend_download(be, got, dids, sizeof(int) * N);
    for (int i = 0; i < N; i++) count[got[i]]++;
    double z = 0;
    for (int c = 0; c < V6; c++) z += c == 3 || c == 5 ? 0 : exp(six[c]);
    for (int c = 0; c < V6; c++) {
        const double want = c == 3 || c == 5 ? 0 : exp(six[c]) / z;
        printf("  token %d: %.4f drawn, %.4f expected\n", c, (double)count[c] / N, want);
        CHECK_NEAR((double)count[c] / N, want, 0.015);   /* 5 standard errors at N = 20000 */
    }
    backend_mem_free(be, dx);
    backend_mem_free(be, drows);
    backend_mem_free(be, dids);
    backend_mem_free(be, dopt);
    free(x), free(rows), free(opts), free(got);
}

/* Greedy with the top two log-probabilities (their gap tells a near-tie). */
static engine_params greedy_top2(int g) {
    engine_params p = greedy(g);
    p.n_logprobs = 2;
    return p;
}

/* Request outputs with margins: tok, lp and gap (top-2 log-probability difference) per token. */
typedef struct top2_run { int tok[MAXG], n; float lp[MAXG], gap[MAXG]; } top2_run;

/* Runs every request of e, recording each one's tokens into runs[id]. */
static bool run_top2(engine *e, top2_run *runs) {
    while (engine_has_work(e)) {
        const engine_output *out;
        int n;
        if (engine_step(e, &out, &n) != SK_OK) return false;
        for (int i = 0; i < n; i++) {
            top2_run *t = &runs[out[i].id];
            if (out[i].token < 0 || t->n >= MAXG) continue;
            t->lp[t->n] = out[i].logprob;
            t->gap[t->n] = out[i].n_top == 2 ? out[i].top_logprobs[0] - out[i].top_logprobs[1] : INFINITY;
            t->tok[t->n++] = out[i].token;
        }
    }
    return true;
}

/* Tokens of `got` against `want` up to the first step where want's margin is below `margin`
 * (the tokens of that step included: one of the near-tied pair); the count compared into *n,
 * the worst log-probability difference into *worst (when got has them). False at the first
 * token that differs before then. */
static bool same_until_near_tie(const top2_run *want, const top2_run *got, double margin, bool with_lp, int *n,
                                double *worst) {
    for (int i = 0; i < want->n && i < got->n; i++) {
        if (want->gap[i] < margin) return true;
        if (got->tok[i] != want->tok[i]) {
            printf("  token %d: %d, expected %d (margin %.3g)\n", i, got->tok[i], want->tok[i], want->gap[i]);
            return false;
        }
        if (with_lp) *worst = fmax(*worst, fabs(got->lp[i] - want->lp[i]));
        (*n)++;
    }
    return true;
}

/* Queues n greedy requests (top-2 log-probabilities) of g tokens on an idle e, request r
 * over make_prompt(r) of len[r] tokens (vocabulary V), and runs them into runs[0..n). */
static bool run_prompts(engine *e, int V, int n, const int *len, int g, top2_run *runs) {
    for (int r = 0; r < n; r++) {
        int prompt[MAXP], id;
        make_prompt(prompt, r, len[r], V);
        engine_params p = greedy_top2(g);
        if (engine_add_request(e, prompt, len[r], &p, &id) != SK_OK || id != r) return false;
    }
    return run_top2(e, runs);
}

/* A bf16 or f16 cache under f32 activations (the CPU's --kv-cache-dtype): every fixture's
 * greedy tokens through the engine (4 prompts, 12 tokens each) equal the f32 cache's up to the
 * first step whose top-2 margin under the f32 cache is below BF16_MARGIN (bf16) or F16_MARGIN
 * (f16), with log-probabilities within HALF_*_LOGPROB_TOL. So that this is a real check, the
 * tokens compared before a near-tie must be at least a third of all (bf16) or two thirds (f16)
 * over the six fixtures: these prompts give 145 and 241 of 288. */
TEST(half_cache_engine_matches_the_f32_cache) {
    const dtype kdts[2] = {DT_BF16, DT_F16};
    const double tol[2] = {HALF_BF16_LOGPROB_TOL, HALF_F16_LOGPROB_TOL}, margin[2] = {BF16_MARGIN, F16_MARGIN};
    int ran = 0, total[2] = {0, 0}, all[2] = {0, 0};
    for (size_t f = 0; f < sizeof fixtures / sizeof *fixtures; f++) {
        model *m = open_fixture(fixtures[f]);
        CHECK(m);
        enum { R = 4, G = 12 };
        const int V = m->cfg.vocab_size, len[R] = {3, 17, 33, 40};
        for (int d = 0; d < 2; d++) {
            if (!keeps_cache(m, kdts[d])) continue;
            ran++;
            top2_run want[R] = {0}, got[R] = {0};
            engine *ef = NULL, *eh = NULL;
            engine_opts o = engine_opts_default();
            o.max_batch_tokens = 20;
            CHECK(engine_create(m, &o, &ef) == SK_OK);
            CHECK(run_prompts(ef, V, R, len, G, want));
            engine_free(ef);
            o.kv_dtype = kdts[d];
            CHECK(engine_create(m, &o, &eh) == SK_OK);
            CHECK(run_prompts(eh, V, R, len, G, got));
            int compared = 0;
            double worst = 0;
            for (int r = 0; r < R; r++) {
                CHECK(want[r].n == G && got[r].n == G);
                CHECK_MSG(same_until_near_tie(&want[r], &got[r], margin[d], true, &compared, &worst), "%s, %s cache, request %d",
                          fixtures[f], kv_dtype_name(kdts[d]), r);
            }
            printf("  %s, %s cache: %d of %d greedy tokens compared, worst |logprob diff| %.3g\n", fixtures[f],
                   kv_dtype_name(kdts[d]), compared, R * G, worst);
            CHECK(worst <= tol[d]);
            total[d] += compared;
            all[d] += R * G;
            CHECK(kv_pool_available(engine_pool(eh)) == kv_pool_blocks(engine_pool(eh)));
            engine_free(eh);
        }
        model_free(m);
    }
    if (!ran) SKIP("the %s backend keeps no bf16/f16 cache under f32 activations", test_device()->name);
    printf("  compared: bf16 %d of %d, f16 %d of %d\n", total[0], all[0], total[1], all[1]);
    CHECK(3 * total[0] >= all[0] && 3 * total[1] >= 2 * all[1]);
}

TEST(bf16_engine_matches_the_cpu_over_bf16_weights) {
    backend *be = test_device();
    if (be->host_memory) SKIP("the %s backend reads the weights in place (no bf16 device copy)", be->name);
    backend *cpu = backend_cpu_create();
    CHECK(cpu);
    for (size_t f = 0; f < sizeof fixtures / sizeof *fixtures; f++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/bf16-%zu", test_tmpdir(), f);
        model *src = NULL, *ref = NULL;
        CHECK(model_load(test_path(fixtures[f]), cpu, &src) == SK_OK);
        CHECK(model_save_as(src, dir, DT_BF16, MODEL_SHARD_BYTES) == SK_OK);
        model_free(src);
        CHECK(model_open_weights(dir, cpu, &ref) == SK_OK);
        model *m = open_model(dir, "bf16");
        CHECK(m && model_infer_dtype(m) == DT_BF16);
        enum { R = 4, G = 12 };
        const int V = m->cfg.vocab_size, len[R] = {3, 17, 33, 40};
        top2_run want[R] = {0}, got[R] = {0};
        engine *ec = NULL, *eg = NULL;
        engine_opts o = engine_opts_default();
        o.max_batch_tokens = 20;
        CHECK(engine_create(ref, &o, &ec) == SK_OK && engine_create(m, &o, &eg) == SK_OK);
        CHECK(run_prompts(ec, V, R, len, G, want) && run_prompts(eg, V, R, len, G, got));
        int compared = 0;
        double worst = 0;
        for (int r = 0; r < R; r++) {
            CHECK(want[r].n == G && got[r].n == G);
            CHECK_MSG(same_until_near_tie(&want[r], &got[r], BF16_MARGIN, true, &compared, &worst), "%s request %d", fixtures[f], r);
        }
        printf("  %s: %d of %d greedy tokens compared (the rest after a near-tie), worst |logprob diff| %.3g\n",
               fixtures[f], compared, R * G, worst);
        CHECK(worst <= BF16_LOGPROB_TOL);
        CHECK(kv_pool_available(engine_pool(eg)) == kv_pool_blocks(engine_pool(eg)));
        engine_free(ec);
        engine_free(eg);
        model_free(ref);
        model_free(m);
    }
    backend_free(cpu);
}

/* busy_batch_of_64_same_tokens in bf16: the target plain greedy inside the batch (the ids-only
 * path), its margins from a run alone. The target is the first of a few prompts whose first G/2
 * tokens alone are no near-ties, so that at least G/2 tokens are compared. */
TEST(bf16_busy_batch_of_64_same_tokens) {
    backend *be = test_device();
    if (be->host_memory) SKIP("the %s backend reads the weights in place (no bf16 device copy)", be->name);
    model *m = open_model(test_path("fixtures/llama-math/llama3"), "bf16");
    CHECK(m);
    enum { NR = 64, G = 10, TRIES = 32 };
    const int V = m->cfg.vocab_size;
    int target[MAXP], id, alone = -1;
    engine *e = busy_engine(m, NR, KV_DTYPE_AUTO);
    CHECK(e);
    top2_run *runs = calloc(TRIES + NR, sizeof(top2_run));
    CHECK(runs);
    for (int t = 0; t < TRIES && alone < 0; t++) {   /* each try alone: the engine is idle between them */
        make_prompt(target, 999 + t, 21, V);
        engine_params p = greedy_top2(G);
        CHECK(engine_add_request(e, target, 21, &p, &id) == SK_OK && id == t);
        CHECK(run_top2(e, runs));
        int clear = 0;
        while (clear < runs[t].n && runs[t].gap[clear] >= BF16_MARGIN) clear++;
        if (clear >= G / 2) alone = t;
    }
    CHECK_MSG(alone >= 0, "no prompt of %d gave %d greedy tokens without a near-tie", TRIES, G / 2);
    const int first = id + 1;
    for (int r = 0; r < NR; r++) {
        int pr[MAXP];
        const int len = r == 40 ? 21 : 1 + r % 30;
        if (r == 40) memcpy(pr, target, sizeof target); else make_prompt(pr, r, len, V);
        engine_params q = greedy(G);
        q.logprobs = false;   /* plain greedy: only ids come back */
        CHECK(engine_add_request(e, pr, len, &q, &id) == SK_OK && id == first + r);
    }
    CHECK(run_top2(e, runs));
    int compared = 0;
    double unused = 0;
    CHECK(runs[first + 40].n == G);
    CHECK(same_until_near_tie(&runs[alone], &runs[first + 40], BF16_MARGIN, false, &compared, &unused));
    printf("  %d of %d tokens compared (the rest after a near-tie)\n", compared, G);
    CHECK(compared >= G / 2);
    free(runs);
    engine_free(e);
    model_free(m);
}

TEST_MAIN()
