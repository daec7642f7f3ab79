/* Tests of tensor parallelism (model_tp, model_open_split, the engine's followers) against one
 * process. Run directly (tests/run.sh) it is a world of one: the refusals of shapes that do not
 * divide, the counts each rank gets, and a split at K = 1 being the whole model. tests/cli_tp.sh
 * runs it under `mpirun -n 2`, `-n 3` and `-n 4`, where on every fixture that divides over the
 * world (the others must be refused, naming the shapes):
 *   - the cut: summed over the ranks, every cut tensor's elements are the whole tensor's
 *     (key/value heads counted once per rank holding them, the embedding's zero rows apart);
 *   - the model: every rank opens its share and the whole model, runs the same ragged batches
 *     through both (three prompts prefilled together, then decodes of all three, next tokens
 *     greedy from the whole model) and the logits agree within 1e-4 on every row, with the
 *     same greedy token (unless the whole model's two best are within 2e-4);
 *   - the engine: rank 0's engine over its share, the others in engine_follow, gives the same
 *     greedy tokens as an engine over the whole model, with log-probabilities within 1e-4;
 *   - the residency: after steps that read every weight of its share, a rank of a 146 MB GPT-2
 *     holds at most 1/K of the files plus 15% (model_resident_bytes: the mapped pages still
 *     resident, the slices), where the whole model, read, holds at least 90% of them.
 * The models: the fixtures (GPT-2 with a vocabulary that does not divide, Llama with grouped
 * and with a single key/value head, Qwen2's biases, a sharded Mistral with a sliding window,
 * tied bf16 weights) and two generated ones whose 3 and 6 heads divide over 3 ranks.
 *
 * SKEIN_TEST_DEVICE=cuda (tests/gpu_tp.sh: 2 ranks sharing one GPU through MPI's staged
 * collectives, or one GPU each through NCCL) runs the same cases on the GPU of each rank's
 * local rank. There the whole model and the share run bf16 inference (devw.h; the share's
 * slices in the same dtypes), so logits agree within logit_tol (a few bf16 steps at their
 * largest magnitude: each product's rounding moves with its order of summation, and the share
 * rounds its partial sums once more), log-probabilities within BF16_TOL, and greedy
 * tokens are compared where the whole model's top two stand more than BF16_MARGIN apart (the
 * share's bf16 all-reduces round once more than one product: a near-tie may fall either
 * way); with SKEIN_INFER_DTYPE=f32 the CPU's 1e-4 holds. The residency case checks the
 * device copy instead of the mapping: a share's slices are at most 1/K of the whole model's
 * device copy plus 5%. */
#include "test.h"

#include "comm/comm.h"
#include "infer/engine.h"
#include "infer/kv.h"
#include "model/devw.h"
#include "model/model.h"
#include "model/tp.h"
#include "test_device.h"

/* bf16 inference (a device): test_engine's tolerance and near-tie margin */
#define BF16_TOL 8e-2
#define BF16_REL 0x1p-5
#define BF16_MARGIN 0.1

static comm *g_comm;
static backend *g_be;

static void world_free(void) {
    backend_free(g_be);
    comm_free(g_comm);
}

/* The communicator (MPI under mpirun, else local; NCCL when every rank has a GPU of its own)
 * and the backend of SKEIN_TEST_DEVICE on this rank's device, made on first use. */
static comm *world(void) {
    if (!g_comm) {
        const char *dev = getenv("SKEIN_TEST_DEVICE");
        dev = dev && *dev ? dev : "cpu";
        if (comm_init("auto", dev, 60.0, &g_comm) != SK_OK || !(g_be = backend_create_on(dev, g_comm->local_rank))) {
            printf("  %s: %s\n", dev, sk_errmsg());
            exit(1);
        }
        atexit(world_free);
    }
    return g_comm;
}

/* The logits' tolerance and the near-tie margin for model m's inference dtype. */
static double tol_of(const model *m) { return model_infer_dtype(m) == DT_BF16 ? BF16_TOL : 1e-4; }
/* The logits' tolerance for m's inference dtype, scale their largest magnitude: in bf16
 * BF16_TOL, or BF16_REL of the scale where that is more (logits near 7 are 2^-5 apart in bf16:
 * gpt2-tiny's differ by 0.085 on a GPU, under 3 steps; llama-math/llama3's, scale 5.3, by 0.107,
 * 3.4 steps, on an H200 (2026-12-02) once the few-row steps norm inside their products, the
 * normed rows unrounded in both, the share's all-reduces still rounding; 0.067 before). */
static double logit_tol(const model *m, double scale) {
    return model_infer_dtype(m) == DT_BF16 ? fmax(BF16_TOL, BF16_REL * scale) : tol_of(m);
}
static double margin_of(const model *m) { return model_infer_dtype(m) == DT_BF16 ? BF16_MARGIN : 2e-4; }

/* Whether views a and b of backend be memory (or of a mapping) hold the same bytes. */
static bool same_bytes(backend *be, tensor a, tensor b) {
    if (tensor_bytes(a) != tensor_bytes(b)) return false;
    if (be->host_memory || a.mem == MEM_MAPPED) return !memcmp(a.data, b.data, tensor_bytes(a));
    void *x = test_download(be, a), *y = test_download(be, b);
    const bool same = !memcmp(x, y, tensor_bytes(a));
    free(x);
    free(y);
    return same;
}

/* Generated models that split over 3 ranks (written once per process, the same bits on every
 * rank: model_init_folder is seeded). */
static const char *gen_model(bool llama) {
    static char dirs[2][1100];
    char *dir = dirs[llama];
    if (dir[0]) return dir;
    snprintf(dir, sizeof dirs[0], "%s/%s", test_tmpdir(), llama ? "llama6" : "gpt2h3");
    model_config c;
    model_config_gpt2(&c, 2, 3, 48, 64, 100);
    if (llama) {
        c.arch = ARCH_LLAMA;
        snprintf(c.model_type, sizeof c.model_type, "llama");
        c.n_head = 6;
        c.n_kv_head = 3;
        c.head_dim = 8;
        c.ffn_dim = 96;
        c.rope_theta = 10000;
        c.tie_word_embeddings = false;
        c.norm_eps = 1e-5f;
    }
    c.resid_pdrop = c.embd_pdrop = c.attn_pdrop = 0;
    if (model_config_validate(&c, "test") != SK_OK || model_init_folder(&c, dir, 5, DT_F32, MODEL_SHARD_BYTES) != SK_OK) {
        printf("  %s: %s\n", dir, sk_errmsg());
        exit(1);
    }
    return dir;
}

/* Every model the multi-rank cases run. */
static const char *model_dir(int i) {
    static const char *const fixtures[] = {
        "fixtures/gpt2-tiny", "fixtures/llama-tiny", "fixtures/qwen2-tiny", "fixtures/mistral-sharded",
        "fixtures/llama-tied-bf16", "fixtures/llama-math/llama3",
    };
    const int nf = (int)(sizeof fixtures / sizeof fixtures[0]);
    return i < nf ? test_path(fixtures[i]) : i == nf ? gen_model(false) : i == nf + 1 ? gen_model(true) : NULL;
}

/* ---- one process ---- */

TEST(refuses_shapes_that_do_not_divide) {
    model_config c;
    model_config_gpt2(&c, 2, 2, 32, 64, 101);
    CHECK(model_tp_check(&c, 1) == SK_OK && model_tp_check(&c, 2) == SK_OK);
    CHECK(model_tp_check(&c, 3) == SK_ECONFIG);
    CHECK_MSG(strstr(sk_errmsg(), "2 attention heads do not divide over 3 ranks"), "%s", sk_errmsg());
    c.n_head = c.n_kv_head = 6;
    c.ffn_dim = 100;
    CHECK(model_tp_check(&c, 3) == SK_ECONFIG);
    CHECK_MSG(strstr(sk_errmsg(), "MLP width 100 does not divide over 3 ranks"), "%s", sk_errmsg());
    c.arch = ARCH_LLAMA;
    c.ffn_dim = 96;
    c.n_kv_head = 3;   /* 3 KV heads over 2 ranks: neither divides the other */
    CHECK(model_tp_check(&c, 2) == SK_ECONFIG);
    CHECK_MSG(strstr(sk_errmsg(), "3 key/value heads"), "%s", sk_errmsg());
    c.n_head = 8;
    c.n_kv_head = 2;   /* 2 KV heads over 4 ranks: each shared by two ranks */
    CHECK(model_tp_check(&c, 4) == SK_OK);
    c.vocab_size = 5;  /* ceil(5/4) = 2 rows a rank: the fourth gets none */
    CHECK(model_tp_check(&c, 4) == SK_ECONFIG);
    CHECK_MSG(strstr(sk_errmsg(), "vocabulary of 5"), "%s", sk_errmsg());
}

TEST(open_split_refuses_with_the_shapes) {
    comm *w = world();
    if (w->world > 1) SKIP("a world of one checks this");
    /* a fake world of 3 around the real one: opening refuses before any collective */
    comm three = *w;
    three.world = 3;
    model *m = NULL;
    CHECK(model_open_split(test_path("fixtures/gpt2-tiny"), g_be, &three, &m) == SK_ECONFIG && !m);
    CHECK_MSG(strstr(sk_errmsg(), "--tp 3: the model's 2 attention heads do not divide over 3 ranks"), "%s", sk_errmsg());
}

TEST(ranks_counts) {
    model_config c;
    model_config_gpt2(&c, 2, 8, 64, 64, 101);
    c.n_kv_head = 2;
    c.ffn_dim = 96;
    model_tp t;
    tp_init(&t, &c, 3, 4);
    CHECK(t.n_head == 2 && t.n_kv_head == 1 && t.ffn_dim == 24);
    CHECK(t.vocab_chunk == 26 && t.vocab0 == 78 && t.n_vocab == 23);   /* 101 = 3 * 26 + 23 */
    tp_init(&t, &c, 0, 1);
    CHECK(t.n_head == 8 && t.n_kv_head == 2 && t.ffn_dim == 96 && t.vocab0 == 0 && t.n_vocab == 101);
}

TEST(split_of_one_is_the_whole_model) {
    comm *w = world();
    if (w->world > 1) SKIP("a world of one checks this");
    model *a = NULL, *b = NULL;
    CHECK(model_open_split(test_path("fixtures/llama-tiny"), g_be, w, &a) == SK_OK);
    CHECK(model_open_weights(test_path("fixtures/llama-tiny"), g_be, &b) == SK_OK);
    bool same = a->tp.size == 1 && a->n_specs == b->n_specs && !a->tp.slices && !a->views == !b->views;
    if (same && !a->views)   /* a device's f32 copy (SKEIN_INFER_DTYPE=f32): model_load's parameters */
        same = a->n_params == b->n_params && same_bytes(g_be, tensor_1d(a->params, DT_F32, (int64_t)a->n_params),
                                                        tensor_1d(b->params, DT_F32, (int64_t)b->n_params));
    for (int i = 0; same && a->views && i < a->n_specs; i++)
        same = tensor_same_shape(a->views[i], b->views[i]) && a->views[i].mem == b->views[i].mem &&
               a->views[i].dt == b->views[i].dt && same_bytes(g_be, a->views[i], b->views[i]);
    model_free(a);
    model_free(b);
    CHECK(same);
}

/* ---- several ranks ---- */

/* Whether the world divides m's shapes; when not, checks that opening refuses naming them. */
static bool divides(const char *dir, bool *refused_ok) {
    model *m = NULL;
    sk_status st = model_open_split(dir, g_be, world(), &m);
    if (st == SK_OK) {
        model_free(m);
        return true;
    }
    *refused_ok = st == SK_ECONFIG && (strstr(sk_errmsg(), "do not divide") || strstr(sk_errmsg(), "neither divide"));
    if (!*refused_ok) printf("  %s: %s\n", dir, sk_errmsg());
    return false;
}

TEST(cut_covers_every_tensor_once) {
    comm *c = world();
    if (c->world == 1) SKIP("needs mpirun -n K (tests/cli_tp.sh)");
    for (int i = 0; model_dir(i); i++) {
        bool refused_ok = true;
        if (!divides(model_dir(i), &refused_ok)) {
            CHECK(refused_ok);
            continue;
        }
        model *m = NULL;
        CHECK(model_open_split(model_dir(i), g_be, c, &m) == SK_OK);
        const model_config *cfg = &m->cfg;
        double *n = calloc((size_t)m->n_specs, sizeof *n);
        for (int s = 0; s < m->n_specs; s++) n[s] = tensor_is_none(m->views[s]) ? 0 : (double)tensor_numel(m->views[s]);
        sk_status st = comm_all_reduce_f64(c, n, (size_t)m->n_specs);
        int bad = 0;
        for (int s = 0; st == SK_OK && s < m->n_specs; s++) {
            const model_param *p = &m->specs[s];
            const model_split sp = m->arch->split(cfg, p);
            const double whole = (double)p->numel, K = c->world;
            double want = sp.unit == SPLIT_WHOLE ? whole * K
                        : sp.unit == SPLIT_KV_HEADS && cfg->n_kv_head < c->world ? whole * K / cfg->n_kv_head
                        : sp.unit == SPLIT_EMBED ? whole + K * (double)p->shape[1] : whole;
            if (n[s] != want && bad++ < 5) printf("  %s: %s: %.0f elements over the ranks, want %.0f\n", model_dir(i), p->name, n[s], want);
        }
        free(n);
        model_free(m);
        CHECK(st == SK_OK && bad == 0);
    }
}

enum { NSEQ = 3, NDEC = 6, MAXLEN = 24 };

/* Runs the same batches through the whole model w and the share s (every rank does, with the
 * same tokens): three prompts prefilled together, then NDEC decodes of all three, the next
 * tokens greedy from w. Returns the largest |logit difference|; *scale receives the largest
 * |logit| of w; *mismatch counts the greedy tokens that differ where w's two best are more
 * than margin_of(s) apart. */
static double run_both(model *w, model *s, double *scale, int *mismatch) {
    const int V = w->cfg.vocab_size, lens[NSEQ] = {5, 9, 3}, BS = 4, MB = MAXLEN / BS;
    kv_pool *pw = NULL, *ps = NULL;
    double worst = -1;
    *mismatch = 0;
    const dtype dw = model_infer_dtype(w), ds = model_infer_dtype(s);
    if (kv_pool_init(w, dw, (size_t)(NSEQ * MB) * kv_block_bytes(w, dw, BS), BS, &pw) != SK_OK ||
        kv_pool_init(s, ds, (size_t)(NSEQ * MB) * kv_block_bytes(s, ds, BS), BS, &ps) != SK_OK ||
        model_infer_prepare(w, 32, NSEQ, MAXLEN) != SK_OK || model_infer_prepare(s, 32, NSEQ, MAXLEN) != SK_OK) {
        printf("  %s\n", sk_errmsg());
        goto out;
    }
    int seqtok[NSEQ][MAXLEN], len[NSEQ], tables[NSEQ * MAXLEN / 4];
    for (int q = 0; q < NSEQ; q++) {
        len[q] = lens[q];
        for (int t = 0; t < lens[q]; t++) seqtok[q][t] = (7 * q + 13 * t + 1) % V;
        for (int b = 0; b < MB; b++) tables[q * MB + b] = q * MB + b;
    }
    worst = 0;
    for (int step = 0; step <= NDEC; step++) {
        int tokens[32], pos[32], slot[32], seq[3 * NSEQ], out_rows[NSEQ], N = 0;
        for (int q = 0; q < NSEQ; q++) {
            const int first = step == 0 ? 0 : len[q] - 1;
            seq[3 * q] = N;
            seq[3 * q + 1] = len[q] - first;
            seq[3 * q + 2] = len[q];
            for (int t = first; t < len[q]; t++, N++) {
                tokens[N] = seqtok[q][t];
                pos[N] = t;
                slot[N] = tables[q * MB + t / BS] * BS + t % BS;
            }
            out_rows[q] = N - 1;
        }
        const model_batch b = {N, tokens, pos, slot, NSEQ, seq, tables, MB, NSEQ, out_rows, NULL, 0, false};
        const model_kv_cache cw = kv_pool_cache(pw), cs = kv_pool_cache(ps);
        float *lw = test_download_mat(w->be, model_infer_batch(w, &cw, &b));
        float *ls = test_download_mat(s->be, model_infer_batch(s, &cs, &b));
        if (model_step_status(s) != SK_OK) {
            printf("  %s\n", sk_errmsg());
            worst = 1e30;
            free(lw);
            free(ls);
            break;
        }
        for (int q = 0; q < NSEQ; q++) {
            const float *rw = lw + (size_t)q * V, *rs = ls + (size_t)q * V;
            int bw = 0, bs = 0, second = -1;
            for (int v = 0; v < V; v++) {
                worst = fmax(worst, fabs((double)rw[v] - rs[v]));
                *scale = fmax(*scale, fabs((double)rw[v]));
                if (rw[v] > rw[bw]) bw = v;
                if (rs[v] > rs[bs]) bs = v;
            }
            for (int v = 0; v < V; v++)
                if (v != bw && (second < 0 || rw[v] > rw[second])) second = v;
            if (bw != bs && rw[bw] - rw[second] > margin_of(s)) ++*mismatch;
            seqtok[q][len[q]++] = bw;
        }
        free(lw);
        free(ls);
    }
out:
    kv_pool_free(pw);
    kv_pool_free(ps);
    return worst;
}

TEST(logits_match_the_whole_model) {
    comm *c = world();
    if (c->world == 1) SKIP("needs mpirun -n K (tests/cli_tp.sh)");
    int ran = 0;
    for (int i = 0; model_dir(i); i++) {
        bool refused_ok = true;
        if (!divides(model_dir(i), &refused_ok)) {
            CHECK(refused_ok);
            continue;
        }
        model *w = NULL, *s = NULL;
        CHECK(model_open_weights(model_dir(i), g_be, &w) == SK_OK);
        CHECK(model_open_split(model_dir(i), g_be, c, &s) == SK_OK);
        int mismatch = 0;
        double scale = 0, worst = run_both(w, s, &scale, &mismatch);
        const double tol = logit_tol(s, scale);
        model_free(w);
        model_free(s);
        if (c->rank == 0) printf("  %s: logits differ by %g at most (tolerance %g)\n", model_dir(i), worst, tol);
        CHECK_MSG(worst >= 0 && worst <= tol, "%s: logits differ by %g (tolerance %g)", model_dir(i), worst, tol);
        CHECK_MSG(mismatch == 0, "%s: %d greedy tokens differ", model_dir(i), mismatch);
        ran++;
    }
    if (c->rank == 0) printf("  %d models split over %d ranks\n", ran, c->world);
    CHECK(ran >= 2);
}

/* The bytes of m's weights resident after reading a byte of every page of its mapped views
 * (no compute: what a step would touch). */
static size_t touched_bytes(const model *m) {
    volatile unsigned sum = 0;
    for (int i = 0; i < m->n_specs; i++) {
        const tensor v = m->views[i];
        for (size_t k = 0; v.mem == MEM_MAPPED && k < tensor_bytes(v); k += 4096) sum += ((const unsigned char *)v.data)[k];
    }
    size_t n = 0;
    return model_resident_bytes(m, &n) == SK_OK ? n : 0;
}

/* On a device: the share s of dir's model (freed here) holds at most 1/K of the whole model's
 * device copy plus 5% in its slices, and at least 1/K less 5%; nothing of the mapping is kept
 * resident beyond 15% of the files (the copies read it once, then release it). */
static void device_share(model *s, const char *dir) {
    const int K = s->tp.size;
    const size_t slices = s->tp.slice_bytes, files = wts_mapped_bytes(s->weights);
    size_t resident = 0;
    const sk_status st = model_resident_bytes(s, &resident);
    model_free(s);
    CHECK_MSG(st == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(resident <= slices + files * 15 / 100, "%zu bytes resident, slices %zu", resident, slices);
    model *w = NULL;
    CHECK(model_open_weights(dir, g_be, &w) == SK_OK);
    const size_t whole = w->dev ? devw_bytes(w->dev) : w->n_params * sizeof(float);
    model_free(w);
    printf("  rank %d of %d: %zu bytes of device slices, the whole model's device copy %zu (%.1f%%)\n", g_comm->rank, K,
           slices, whole, 100.0 * (double)slices / (double)whole);
    CHECK_MSG(slices <= whole / (size_t)K + whole / 20 && slices + whole / 20 >= whole / (size_t)K,
              "rank %d: %zu bytes of slices, not 1/%d of %zu", g_comm->rank, slices, K, whole);
}

TEST(resident_weights_are_a_share) {
    comm *c = world();
    if (c->world == 1) SKIP("needs mpirun -n K (tests/cli_tp.sh)");
    /* 12 heads and an MLP of 4608 divide over 2, 3 and 4 ranks; 146 MB of f32, so that what a
     * read maps around a view of the file (the page cache's large folios: up to 2 MB on either
     * side of each of a rank's 4 views) is small beside a share */
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/gpt2big", test_tmpdir());
    model_config cfg;
    model_config_gpt2(&cfg, 2, 12, 1152, 64, 4096);
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0;
    CHECK_MSG(model_config_validate(&cfg, "test") == SK_OK && model_init_folder(&cfg, dir, 3, DT_F32, MODEL_SHARD_BYTES) == SK_OK, "%s",
              sk_errmsg());
    model *s = NULL;
    CHECK(model_open_split(dir, g_be, c, &s) == SK_OK);
    int mismatch = 0;
    double scale = 0;
    const double worst = run_both(s, s, &scale, &mismatch);   /* the share against itself: every weight of it read */
    CHECK(worst >= 0 && worst <= (g_be->host_memory ? 0.0 : logit_tol(s, scale)));   /* a GPU's kernels may reorder sums */
    if (!g_be->host_memory) {
        device_share(s, dir);
        return;
    }
    size_t mine = 0;
    const size_t files = wts_mapped_bytes(s->weights);
    sk_status st = model_resident_bytes(s, &mine);
    model_free(s);
    CHECK_MSG(st == SK_OK, "%s", sk_errmsg());
    CHECK_MSG(mine <= files / (size_t)c->world + files * 15 / 100, "rank %d: %zu bytes resident, over 1/%d of %zu + 15%%",
              c->rank, mine, c->world, files);
    if (c->rank > 0) return;
    model *w = NULL;   /* the measure itself: the whole model read holds its files */
    CHECK(model_open_weights(dir, g_be, &w) == SK_OK);
    const size_t whole = touched_bytes(w);
    model_free(w);
    printf("  rank 0 of %d: %zu resident weight bytes, the whole model %zu (files %zu)\n", c->world, mine, whole, files);
    CHECK_MSG(whole >= files * 9 / 10, "the whole model read: %zu of %zu bytes resident", whole, files);
}

enum { EREQ = 3, EGEN = 10, ETOP = 5 };

/* An engine over m (rank 0 of a split model, or the whole model) running EREQ greedy requests
 * of EGEN tokens with their top-ETOP log-probabilities; tokens(EREQ,EGEN), lps(EREQ,EGEN,ETOP). */
static sk_status engine_run(model *m, int *tokens, float *lps) {
    engine_opts o = engine_opts_default();
    o.block_size = 4;
    o.max_seqs = 2;   /* the third request waits: admissions and retirements between steps */
    o.max_batch_tokens = 8;   /* the longer prompts are prefilled in chunks */
    o.max_ctx = 40;
    engine *e = NULL;
    SK_TRY(engine_create(m, &o, &e));
    sk_status st = SK_OK;
    const int V = m->cfg.vocab_size;
    int got[EREQ] = {0};
    for (int r = 0; r < EREQ && st == SK_OK; r++) {
        int prompt[12], id;
        for (int t = 0; t < 4 + 4 * r; t++) prompt[t] = (5 * r + 3 * t + 2) % V;
        engine_params p = engine_params_default();
        p.max_tokens = EGEN;
        p.n_logprobs = ETOP;
        st = engine_add_request(e, prompt, 4 + 4 * r, &p, &id);
    }
    while (st == SK_OK && engine_has_work(e)) {
        const engine_output *out;
        int n;
        st = engine_step(e, &out, &n);
        for (int i = 0; st == SK_OK && i < n; i++) {
            const engine_output *x = &out[i];
            if (x->token < 0) continue;
            tokens[x->id * EGEN + got[x->id]] = x->token;
            memcpy(lps + (x->id * EGEN + got[x->id]) * ETOP, x->top_logprobs, sizeof(float) * ETOP);
            got[x->id]++;
        }
    }
    engine_free(e);
    return st;
}

/* Rank 0 notes a failure and goes on with the next model: the other ranks follow every
 * model's engine, so returning early would leave them waiting. */
TEST(engine_matches_the_whole_model) {
    comm *c = world();
    if (c->world == 1) SKIP("needs mpirun -n K (tests/cli_tp.sh)");
    int failed = 0;
    for (int i = 0; model_dir(i); i++) {
        bool refused_ok = true;
        if (!divides(model_dir(i), &refused_ok)) continue;
        model *s = NULL;
        CHECK(model_open_split(model_dir(i), g_be, c, &s) == SK_OK);
        if (c->rank > 0) {
            sk_status st = engine_follow(s);
            model_free(s);
            CHECK_MSG(st == SK_OK, "%s", sk_errmsg());
            continue;
        }
        int ts[EREQ * EGEN], tw[EREQ * EGEN];
        float ls[EREQ * EGEN * ETOP], lw[EREQ * EGEN * ETOP];
        sk_status st = engine_run(s, ts, ls);
        engine_tp_release(c);
        model_free(s);
        model *w = NULL;
        if (st == SK_OK && (st = model_open_weights(model_dir(i), g_be, &w)) == SK_OK) st = engine_run(w, tw, lw);
        const double tol = w ? tol_of(w) : 0, margin = w ? margin_of(w) : 0;
        model_free(w);
        if (st != SK_OK) {
            printf("  %s: %s\n", model_dir(i), sk_errmsg());
            failed++;
            continue;
        }
        /* each request's tokens up to its first near-tie in the whole model (there the two may
         * choose apart), their log-probabilities alike up to and with it */
        double worst = 0;
        int differ = 0;
        for (int r = 0; r < EREQ; r++)
            for (int g = 0; g < EGEN; g++) {
                const float *a = ls + (r * EGEN + g) * ETOP, *b = lw + (r * EGEN + g) * ETOP;
                for (int k = 0; k < ETOP; k++) worst = fmax(worst, fabs((double)a[k] - b[k]));
                if (b[0] - b[1] < margin) break;
                differ += ts[r * EGEN + g] != tw[r * EGEN + g];
            }
        if (differ || worst > tol) {
            printf("  %s: %d greedy tokens differ, log-probabilities by %g (tolerance %g)\n", model_dir(i), differ,
                   worst, tol);
            failed++;
        }
    }
    CHECK_MSG(!failed, "%d models", failed);
}

TEST_MAIN()
