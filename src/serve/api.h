/* api: the OpenAI-compatible API over one inference engine (engine.h), served through http.h.
 *
 *   api_server *a;
 *   api_server_create(m, t, ct, &o, &a);          // starts the engine thread
 *   http_server_start(&ho, api_handle, a, &h);     // handlers run on connection threads
 *   ...                                            // until SIGINT / SIGTERM
 *   api_server_stop(a);                            // waiting handlers answer 503 and return
 *   http_server_stop(h);
 *   api_server_free(a);
 *
 * Routes: POST /v1/completions and /v1/chat/completions (whole JSON or server-sent events
 * ending with "data: [DONE]"; fields model, prompt or messages, max_tokens, temperature,
 * top_p, top_k, min_p, seed, stop, presence/frequency/repetition_penalty, stream, n (only 1),
 * logprobs (completions: 0..20 top per token, OpenAI's legacy {"tokens", "token_logprobs",
 * "top_logprobs", "text_offset"}; chat: true with top_logprobs 0..20, {"content": [{"token",
 * "logprob", "bytes", "top_logprobs"}]}; streamed, each chunk carries the tokens generated since
 * the last), stream_options.include_usage (a last chunk with no choices and "usage"; whole
 * responses always carry usage), and vLLM's ignore_eos; other fields are ignored), GET /v1/models, GET /health, GET /metrics (Prometheus text),
 * and vLLM's POST /tokenize {"prompt"} -> {"tokens", "count", "max_model_len"} (the ids a completion's
 * prompt gets) and POST /detokenize {"tokens"} -> {"prompt"} (behind the key like /v1).
 * Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}, the message and
 * param naming the field: 400 bad field, 401 missing or wrong Bearer key on /v1 routes and /tokenize, /detokenize (when
 * api_key is set; compared in constant time), 404 unknown model or route, 405 wrong method,
 * 413 body over the cap, 503 with Retry-After when max_seqs + max_queue requests are already
 * in flight.
 *
 * Threads: the engine and every request's decoding (tok_stream, stop strings) belong to the
 * engine thread; handlers tokenize the prompt, validate, enqueue, and wait on their request's
 * condition variable for text (timed waits that also check the client is still connected: a
 * client that leaves has its request cancelled and its KV blocks freed by the engine thread).
 * One mutex guards the queue, each request's shared fields and the metrics. */
#ifndef SKEIN_API_H
#define SKEIN_API_H

#include "infer/engine.h"
#include "serve/http.h"
#include "tokenizer/chat.h"
#include "tokenizer/tok.h"

typedef struct api_opts {
    const char *model_name;   /* the id /v1/models lists and requests must name */
    const char *api_key;      /* NULL: no authentication */
    engine_opts engine;
    int max_queue;            /* requests waiting beyond max_seqs running, at most */
} api_opts;

typedef struct api_server api_server;

/* The engine over m and its thread. m, t and ct (NULL: chat is refused) are not owned and
 * must outlive the server; o's strings are copied. */
sk_status api_server_create(model *m, const tok *t, const chat_template *ct, const api_opts *o, api_server **out);
/* The http_handler for every route (ctx: the api_server). */
void api_handle(void *ctx, const http_req *rq, http_reply *rp);
/* Stops the engine thread; requests in flight end with an error. Idempotent. */
void api_server_stop(api_server *s);
/* After api_server_stop and http_server_stop (no handler may still run). */
void api_server_free(api_server *s);

#endif
