/* loadgen: the load generator behind `skein bench serve`: a client of an OpenAI-compatible
 * server (skein serve, vLLM, ...) that measures what vLLM's `bench serve` measures.
 *
 *   loadgen_opts o = loadgen_opts_default();
 *   o.url = "http://127.0.0.1:8000";
 *   o.rate = 4;                              // requests/s, Poisson; INFINITY: all at once
 *   loadgen_result r;
 *   if (loadgen_run(&o, &r) == SK_OK) printf("%g ms\n", r.ttft_ms.median);
 *
 * Prompts: request i's prompt is made of random words (seeded by o.seed) cut to exactly
 * input_len tokens of the server's own tokenizer: the words go through POST /tokenize, the ids
 * after the special tokens the server adds (as many as /tokenize of "" gives) are cut to
 * input_len and turned back into text by POST /detokenize (vLLM's routes; skein serve has
 * both). Re-tokenized by the server the text gives about input_len ids plus its special tokens
 * (usage's prompt_tokens, summed in input_tokens, says exactly). A server without /tokenize gets
 * input_len random words (a warning says so): about input_len tokens, one per common word.
 *
 * Schedule: arrival times are a Poisson process (exponential gaps of mean 1/rate, the first at
 * 0); an arrived request starts when fewer than `concurrency` are in flight, in arrival order.
 * Every request streams (server-sent events, stream_options.include_usage, ignore_eos,
 * temperature 0, max_tokens output_len) to /v1/completions or /v1/chat/completions.
 *
 * Measures, per completed request, from the moment it is handed to libcurl: TTFT (the first
 * chunk with text), each inter-token latency (between chunks with text: a chunk may carry
 * several tokens, as in vLLM), end-to-end latency (to "data: [DONE]"), TPOT = (e2el - ttft) /
 * (output tokens - 1) where output tokens > 1; output tokens from the usage chunk (the count of
 * text chunks where a server sends none). A request fails on a connection error, an HTTP
 * status other than 200, an error event, a stream that ends without "data: [DONE]" or without
 * text; failed requests count in `failed` and nowhere else.
 *
 * HTTP is libcurl's multi interface: the calling thread drives every transfer, and each read's
 * timestamp is taken when its bytes reach the process (in the write callback). */
#ifndef SKEIN_LOADGEN_H
#define SKEIN_LOADGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

typedef struct loadgen_opts {
    const char *url;        /* the server's root, e.g. "http://127.0.0.1:8000" (a final '/' is dropped) */
    const char *model;      /* the "model" of every request; NULL: the first id GET /v1/models lists */
    const char *api_key;    /* sent as "Authorization: Bearer KEY"; NULL: none */
    bool chat;              /* /v1/chat/completions (the prompt as one user message), else /v1/completions */
    double rate;            /* mean arrivals per second, > 0; INFINITY: every request at time 0 */
    int num_prompts;        /* requests, >= 1 */
    int input_len;          /* prompt tokens, >= 1 */
    int output_len;         /* max_tokens of each request (ignore_eos: exactly this many), >= 1 */
    int concurrency;        /* requests in flight at most; 0: no limit */
    uint64_t seed;          /* prompts and arrival times */
} loadgen_opts;

/* rate INFINITY, 1000 prompts of 1024 tokens, 128 output tokens, no concurrency limit, seed
 * 0, /v1/completions on http://127.0.0.1:8000 (vLLM's defaults, skein serve's port). */
loadgen_opts loadgen_opts_default(void);

/* One sample's summary; all 0 for an empty sample. */
typedef struct loadgen_stats { double mean, median, std, p99; } loadgen_stats;

typedef struct loadgen_result {
    char model[256];          /* the model the requests named */
    double duration;          /* s, from the first arrival to the last answer */
    int completed, failed;
    long input_tokens;        /* completed requests' prompt tokens (usage; the planned count without it) */
    long output_tokens;       /* completed requests' output tokens */
    loadgen_stats ttft_ms, tpot_ms, itl_ms, e2el_ms;
    char first_error[2048];   /* the first failed request's message, naming the URL ("" when none failed) */
} loadgen_result;

/* Builds the prompts, runs the schedule to the end and fills *r. SK_OK when the run happened,
 * even if every request failed (r says); SK_EARG for bad options; SK_EIO when GET /v1/models
 * cannot name the model (o->model NULL) or /tokenize stops answering midway; SK_ENOMEM. */
sk_status loadgen_run(const loadgen_opts *o, loadgen_result *r);

/* Mean, median, population standard deviation and 99th percentile of v[0..n) (sorted in
 * place); percentiles interpolate linearly between order statistics (numpy's default): the
 * q-th is v[k] + f (v[k+1] - v[k]) where k + f = q/100 (n - 1). */
loadgen_stats loadgen_summary(double *v, int n);

/* ---- server-sent events (the WHATWG event-stream format), as loadgen_run reads them ---- */

/* A growable byte string, always NUL-terminated after its n bytes once it has any. */
typedef struct loadgen_buf { char *p; size_t n, cap; } loadgen_buf;

/* Called once per complete event with its data (its "data:" lines joined by '\n',
 * NUL-terminated, valid during the call); false stops the parse (loadgen_sse_feed returns
 * false). Events without data lines are not reported. */
typedef bool (*loadgen_event_fn)(void *ctx, const char *data, size_t n);

/* The parser's state across reads: zero-initialise, loadgen_sse_free at the end. Lines may end
 * in "\n", "\r\n" or "\r" and may be split anywhere between reads; a blank line ends an event;
 * lines starting with ':' and fields other than "data" are skipped. */
typedef struct loadgen_sse {
    loadgen_buf line;   /* the line being read, without its end */
    loadgen_buf data;   /* the event's data so far, each line followed by '\n' */
    bool cr;            /* the last byte ended a line with '\r': a '\n' next ends nothing */
} loadgen_sse;

/* Parses n more bytes; false when out of memory (a message recorded) or on_event said stop. */
bool loadgen_sse_feed(loadgen_sse *p, const char *bytes, size_t n, loadgen_event_fn on_event, void *ctx);
/* The end of the stream: a last line and event without their blank line are reported too
 * (lenient: a server that closes right after its last "data:" line still counts). */
bool loadgen_sse_end(loadgen_sse *p, loadgen_event_fn on_event, void *ctx);
void loadgen_sse_free(loadgen_sse *p);

#endif
