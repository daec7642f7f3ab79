/* generate: text generation for one prompt -- the engine (engine.h) at one request, with a
 * KV pool of just its blocks (or of kv_bytes), for the call: prefill the prompt in one step, then one token
 * per step, streaming decoded text through a callback as it is produced. Stops at an
 * end-of-sequence id, a stop string (not emitted; the request is cancelled), max_tokens, or
 * the model's context. */
#ifndef SKEIN_GENERATE_H
#define SKEIN_GENERATE_H

#include "infer/sample.h"
#include "model/model.h"
#include "tokenizer/tok.h"

typedef struct gen_opts {
    int max_tokens;
    sample_opts sample;
    uint64_t seed;
    const char *const *stop;   /* stop strings */
    int n_stop;
    size_t kv_bytes;           /* KV pool budget (--kv-memory); 0: just this request's blocks */
} gen_opts;

typedef struct gen_result {
    int n_prompt, n_generated;
    const char *finish;        /* "eos", "stop", "length" */
    double prefill_s, decode_s;
} gen_result;

typedef void (*gen_emit_fn)(void *ctx, const char *text, size_t n);
/* An emit function that writes the text to stdout and flushes it (ctx unused). */
void gen_emit_stdout(void *ctx, const char *text, size_t n);

/* Generates from the prompt ids. When ids_out is not NULL it receives the generated ids
 * (at most o->max_tokens). emit may be NULL. */
sk_status gen_run(model *m, const tok *t, const int32_t *prompt, size_t n_prompt, const gen_opts *o,
                  gen_emit_fn emit, void *ctx, int32_t *ids_out, gen_result *res);

#endif
