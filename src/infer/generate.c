/* generate: single-sequence generation with streaming and stop strings (see generate.h).
 *
 * Text is emitted as soon as it cannot be the beginning of a stop string (gen_text_put). */
#include "infer/generate.h"

#include "infer/engine.h"

#include <stdio.h>
#include <string.h>

sk_status gen_text_put(gen_text *g, const char *s, size_t n, bool final, gen_emit_fn emit, void *ctx, bool *stopped) {
    *stopped = false;
    if (g->n + n + 1 > g->cap) {
        size_t cap = (g->n + n + 1) * 2;
        char *p = mem_realloc(g->pending, cap);
        if (!p) return SK_ENOMEM;
        g->pending = p;
        g->cap = cap;
    }
    memcpy(g->pending + g->n, s, n);
    g->n += n;
    g->pending[g->n] = 0;
    size_t stop_at = g->n;
    for (int i = 0; i < g->n_stop; i++) {
        const char *hit = g->stop[i][0] ? memmem(g->pending, g->n, g->stop[i], strlen(g->stop[i])) : NULL;
        if (hit && (size_t)(hit - g->pending) < stop_at) { stop_at = (size_t)(hit - g->pending); *stopped = true; }
    }
    size_t keep = 0;
    if (!*stopped && !final) {
        for (int i = 0; i < g->n_stop; i++) {
            size_t ls = strlen(g->stop[i]);
            for (size_t k = ls > 1 ? ls - 1 : 0; k > keep; k--)
                if (k <= g->n && !memcmp(g->pending + g->n - k, g->stop[i], k)) { keep = k; break; }
        }
    }
    size_t out = *stopped ? stop_at : g->n - keep;
    if (emit && out) emit(ctx, g->pending, out);
    memmove(g->pending, g->pending + out, g->n - out);
    g->n -= out;
    return SK_OK;
}

void gen_text_free(gen_text *g) {
    mem_free(g->pending);
    g->pending = NULL;
    g->n = g->cap = 0;
}

void gen_emit_stdout(void *ctx, const char *text, size_t n) {
    (void)ctx;
    fwrite(text, 1, n, stdout);
    fflush(stdout);
}

int gen_eos_ids(const model *m, const tok *t, const chat_template *chat, int *ids) {
    int n = 0;
    if (m->cfg.n_eos == 0) {
        if (t && tok_eot_id(t) >= 0) ids[n++] = tok_eot_id(t);
    } else {
        for (int i = 0; i < m->cfg.n_eos && n < ENGINE_MAX_STOP; i++) ids[n++] = m->cfg.eos_token_ids[i];
    }
    const int end = chat && t ? tok_token_id(t, chat_end_token(chat)) : -1;
    bool listed = end < 0;
    for (int i = 0; i < n; i++) listed |= ids[i] == end;
    if (!listed && n < ENGINE_MAX_STOP) ids[n++] = end;
    return n;
}

sk_status gen_run(model *m, const tok *t, const int32_t *prompt, size_t n_prompt, const gen_opts *o,
                  gen_emit_fn emit, void *ctx, int32_t *ids_out, gen_result *res) {
    const int ctx_len = m->cfg.n_positions;
    memset(res, 0, sizeof *res);
    res->n_prompt = (int)n_prompt;
    res->finish = "length";
    if (n_prompt == 0) return sk_fail(SK_EARG, "generate: the prompt is empty");
    if ((long)n_prompt >= ctx_len)
        return sk_fail(SK_EARG, "generate: the prompt has %zu tokens; the model's context is %d", n_prompt, ctx_len);
    for (size_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= m->cfg.vocab_size)
            return sk_fail(SK_EARG, "generate: prompt token %d is outside the vocabulary of %d", prompt[i], m->cfg.vocab_size);
    if (o->max_tokens <= 0) return SK_OK;
    /* the engine at one request: a pool of just its blocks, the prompt in one step */
    const int max_T = (long)n_prompt + o->max_tokens < ctx_len ? (int)n_prompt + o->max_tokens : ctx_len;
    engine_opts eo = engine_opts_default();
    eo.max_seqs = 1;
    eo.max_ctx = max_T;
    eo.max_batch_tokens = (int)n_prompt;
    eo.kv_bytes = o->kv_bytes;
    eo.kv_dtype = o->kv_dtype;
    eo.kv_blocks = o->kv_bytes ? 0 : (max_T + eo.block_size - 1) / eo.block_size;
    engine_params ep = {.max_tokens = o->max_tokens, .sample = o->sample, .seed = o->seed};
    ep.n_stop_ids = gen_eos_ids(m, t, o->chat, ep.stop_ids);
    engine *e = NULL;
    int id;
    sk_status st = engine_create(m, &eo, &e);
    if (st == SK_OK) {
        res->kv_dtype = kv_pool_dtype(engine_pool(e));
        st = engine_add_request(e, (const int *)prompt, (int)n_prompt, &ep, &id);
    }
    tok_stream ts;
    if (t) tok_stream_init(&ts, t);
    gen_text text = {.stop = o->stop, .n_stop = o->n_stop};
    const size_t piece_cap = t ? tok_stream_cap(t) : 0;
    char *piece = t ? mem_alloc(piece_cap) : NULL;
    if (st == SK_OK && t && !piece) st = sk_fail(SK_ENOMEM, "out of memory in generation");

    double t0 = time_now();
    bool first = true, stopped = false;
    while (st == SK_OK && engine_has_work(e)) {
        const engine_output *out;
        int n_out;
        if ((st = engine_step(e, &out, &n_out))) break;
        if (first) {
            res->prefill_s = time_now() - t0;
            t0 = time_now();
            first = false;
        }
        for (int i = 0; i < n_out && !stopped; i++) {
            if (out[i].token >= 0) {
                if (ids_out) ids_out[res->n_generated] = out[i].token;
                res->n_generated++;
                if (t) {
                    size_t k = tok_stream_put(&ts, out[i].token, piece, piece_cap);
                    if ((st = gen_text_put(&text, piece, k, false, emit, ctx, &stopped))) break;
                    if (stopped) {
                        res->finish = "stop";
                        engine_cancel(e, id);
                        break;
                    }
                }
            }
            if (out[i].finish) res->finish = !strcmp(out[i].finish, "stop") ? "eos" : "length";
        }
        if (stopped) break;
    }
    if (t && st == SK_OK && !stopped) {
        size_t k = tok_stream_flush(&ts, piece, piece_cap);
        if ((st = gen_text_put(&text, piece, k, true, emit, ctx, &stopped)) == SK_OK && stopped) res->finish = "stop";
    }
    res->decode_s = time_now() - t0;
    gen_text_free(&text);
    mem_free(piece);
    engine_free(e);
    return st == SK_ENOMEM ? sk_fail(SK_ENOMEM, "out of memory in generation") : st;
}
