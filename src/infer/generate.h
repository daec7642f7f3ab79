/* generate: text generation for one prompt -- the engine (engine.h) at one request, with a
 * KV pool of just its blocks (or of kv_bytes), for the call: prefill the prompt in one step, then one token
 * per step, streaming decoded text through a callback as it is produced. Stops at an
 * end-of-sequence id, a stop string (not emitted; the request is cancelled), max_tokens, or
 * the model's context. */
#ifndef SKEIN_GENERATE_H
#define SKEIN_GENERATE_H

#include "infer/sample.h"
#include "model/model.h"
#include "tokenizer/chat.h"
#include "tokenizer/tok.h"

typedef struct gen_opts {
    int max_tokens;
    sample_opts sample;
    uint64_t seed;
    const char *const *stop;   /* stop strings */
    int n_stop;
    size_t kv_bytes;           /* KV pool budget (--kv-memory); 0: just this request's blocks */
    dtype kv_dtype;            /* its dtype (--kv-cache-dtype): KV_DTYPE_AUTO (kv.h) or f32, bf16, f16 */
    const chat_template *chat; /* the template the prompt was rendered with (NULL: none): its
                                * end token stops generation too */
} gen_opts;

typedef struct gen_result {
    int n_prompt, n_generated;
    const char *finish;        /* "eos", "stop", "length" */
    dtype kv_dtype;            /* the cache's dtype, as resolved (kv_pool_dtype) */
    double prefill_s, decode_s;
} gen_result;

typedef void (*gen_emit_fn)(void *ctx, const char *text, size_t n);
/* An emit function that writes the text to stdout and flushes it (ctx unused). */
void gen_emit_stdout(void *ctx, const char *text, size_t n);

/* Stop strings over streamed text, for one request: text is emitted as soon as it cannot be
 * the beginning of a stop string; the unemitted tail `pending` always holds the longest
 * suffix that is a prefix of some stop string (so at most the longest stop string's length
 * less one byte between calls), so a stop string is always found whole inside it and never
 * emitted. Zero-initialize it with stop and n_stop set (the strings are not owned). */
typedef struct gen_text {
    const char *const *stop;
    int n_stop;
    char *pending;
    size_t n, cap;
} gen_text;
/* Appends s(n) and emits what is safe (final: everything left, the generation has ended).
 * *stopped is set when a stop string was found: the text before it was emitted, the rest
 * dropped, and nothing more should be put. SK_ENOMEM when the tail cannot grow. */
sk_status gen_text_put(gen_text *g, const char *s, size_t n, bool final, gen_emit_fn emit, void *ctx, bool *stopped);
void gen_text_free(gen_text *g);

/* The ids that end generation: the config's end-of-sequence ids, or the tokenizer's
 * end-of-text when the config lists none (t may be NULL), and with a chat template (chat not
 * NULL) its end token when it is not among them (the config may list only </s>). Writes at
 * most ENGINE_MAX_STOP (8) to ids and returns how many. */
int gen_eos_ids(const model *m, const tok *t, const chat_template *chat, int *ids);

/* Generates from the prompt ids. When ids_out is not NULL it receives the generated ids
 * (at most o->max_tokens). emit may be NULL. */
sk_status gen_run(model *m, const tok *t, const int32_t *prompt, size_t n_prompt, const gen_opts *o,
                  gen_emit_fn emit, void *ctx, int32_t *ids_out, gen_result *res);

#endif
