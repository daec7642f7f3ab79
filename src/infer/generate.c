/* generate: single-sequence generation with streaming and stop strings (see generate.h).
 *
 * Text is emitted as soon as it cannot be the beginning of a stop string: the unemitted tail
 * `pending` always holds the longest suffix that is a prefix of some stop string, so a stop
 * string is always found whole inside it and never printed. */
#include "infer/generate.h"

#include <stdio.h>
#include <string.h>

typedef struct gen_text {
    char *pending;
    size_t n, cap;
} gen_text;

static sk_status text_append(gen_text *g, const char *s, size_t n) {
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
    return SK_OK;
}

/* Emits what is safe; returns true when a stop string was found (text before it emitted). */
static bool text_flush(gen_text *g, const gen_opts *o, bool final, gen_emit_fn emit, void *ctx) {
    size_t stop_at = g->n;
    bool stopped = false;
    for (int i = 0; i < o->n_stop; i++) {
        const char *hit = o->stop[i][0] ? memmem(g->pending, g->n, o->stop[i], strlen(o->stop[i])) : NULL;
        if (hit && (size_t)(hit - g->pending) < stop_at) { stop_at = (size_t)(hit - g->pending); stopped = true; }
    }
    size_t keep = 0;
    if (!stopped && !final) {
        for (int i = 0; i < o->n_stop; i++) {
            size_t ls = strlen(o->stop[i]);
            for (size_t k = ls > 1 ? ls - 1 : 0; k > keep; k--)
                if (k <= g->n && !memcmp(g->pending + g->n - k, o->stop[i], k)) { keep = k; break; }
        }
    }
    size_t out = stopped ? stop_at : g->n - keep;
    if (emit && out) emit(ctx, g->pending, out);
    memmove(g->pending, g->pending + out, g->n - out);
    g->n -= out;
    return stopped;
}

void gen_emit_stdout(void *ctx, const char *text, size_t n) {
    (void)ctx;
    fwrite(text, 1, n, stdout);
    fflush(stdout);
}

/* Feeds tokens(n) to the model at kv's position and brings the last position's logits (V)
 * to host (V floats the caller owns): the one download per step. */
static const float *gen_step(model *m, model_kv *kv, const int *tokens, int n, float *host) {
    tensor lg = model_infer_step(m, kv, tokens, n);
    backend_download(m->be, host, lg.data, tensor_bytes(lg));
    return host;
}

static bool is_eos(const model *m, const tok *t, int id) {
    if (m->cfg.n_eos == 0) return t && id == tok_eot_id(t);
    for (int i = 0; i < m->cfg.n_eos; i++)
        if (m->cfg.eos_token_ids[i] == id) return true;
    return false;
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
    int max_T = (int)n_prompt + (o->max_tokens > 0 ? o->max_tokens : 0);
    if (max_T > ctx_len) max_T = ctx_len;
    model_kv *kv = NULL;
    SK_TRY(model_kv_create(m, max_T, &kv));
    sampler smp;
    sk_status st = sampler_init(&smp, m->cfg.vocab_size);
    if (st != SK_OK) {
        model_kv_free(kv);
        return st;
    }
    rng r;
    rng_seed(&r, o->seed);
    tok_stream ts;
    if (t) tok_stream_init(&ts, t);
    gen_text text = {0};
    char *piece = t ? mem_alloc(tok_stream_cap(t)) : NULL;
    const size_t piece_cap = t ? tok_stream_cap(t) : 0;
    float *host_logits = mem_alloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    if ((t && !piece) || !host_logits) {
        mem_free(piece);
        mem_free(host_logits);
        sampler_free(&smp);
        model_kv_free(kv);
        return sk_fail(SK_ENOMEM, "out of memory in generation");
    }

    double t0 = time_now();
    int pos = (int)n_prompt;
    const float *logits = gen_step(m, kv, (const int *)prompt, (int)n_prompt, host_logits);
    res->prefill_s = time_now() - t0;
    t0 = time_now();
    while (res->n_generated < o->max_tokens) {
        int id = sampler_next(&smp, logits, &o->sample, &r);
        if (is_eos(m, t, id)) { res->finish = "eos"; break; }
        if (ids_out) ids_out[res->n_generated] = id;
        res->n_generated++;
        if (t) {
            size_t k = tok_stream_put(&ts, id, piece, piece_cap);
            if ((st = text_append(&text, piece, k))) break;
            if (text_flush(&text, o, false, emit, ctx)) { res->finish = "stop"; break; }
        }
        if (res->n_generated == o->max_tokens) break;
        if (pos >= max_T) { res->finish = "length"; break; }
        logits = gen_step(m, kv, &id, 1, host_logits);
        pos++;
    }
    if (t && st == SK_OK && strcmp(res->finish, "stop") != 0) {
        size_t k = tok_stream_flush(&ts, piece, piece_cap);
        if ((st = text_append(&text, piece, k)) == SK_OK && text_flush(&text, o, true, emit, ctx)) res->finish = "stop";
    }
    res->decode_s = time_now() - t0;
    mem_free(text.pending);
    mem_free(piece);
    mem_free(host_logits);
    sampler_free(&smp);
    model_kv_free(kv);
    return st == SK_ENOMEM ? sk_fail(SK_ENOMEM, "out of memory in generation") : st;
}
