/* api: the OpenAI-compatible API over one or more models, each a router of replicas
 * (router.h), served through http.h.
 *
 *   router *rts[2];
 *   router_create(&oa, &rts[0]); router_create(&ob, &rts[1]);   // each starts its replicas
 *   api_server *a;
 *   api_server_create(rts, 2, &(api_opts){.api_key = key}, &a);   // a owns the routers now
 *   http_server_start(&ho, api_handle, a, &h);     // handlers run on connection threads
 *   ...                                            // until SIGINT / SIGTERM
 *   api_server_stop(a);                            // waiting handlers answer 503 and return
 *   http_server_stop(h);
 *   api_server_free(a);
 *
 * Routes: POST /v1/completions and /v1/chat/completions (whole JSON or server-sent events
 * ending with "data: [DONE]"; fields model, prompt (a string, or a list of token ids taken as
 * they are; a list of prompts is refused) or messages (each content a string or a list of
 * {"type": "text"} parts, joined with newlines as vLLM joins them), max_tokens (chat also
 * OpenAI's max_completion_tokens, which wins), temperature,
 * top_p, top_k, min_p, seed, stop, presence/frequency/repetition_penalty, stream, n (1..128
 * choices of the prompt, choice i sampled with the seed + i as vLLM's; usage counts the prompt
 * once; streamed, each chunk carries one choice's "index"),
 * logprobs (completions: 0..20 top per token, OpenAI's legacy {"tokens", "token_logprobs",
 * "top_logprobs", "text_offset"}; chat: true with top_logprobs 0..20, {"content": [{"token",
 * "logprob", "bytes", "top_logprobs"}]}; streamed, each chunk carries the tokens generated since
 * the last), stream_options.include_usage (a last chunk with no choices and "usage"; whole
 * responses always carry usage), and vLLM's ignore_eos, stop_token_ids (ending the text before
 * any of them, within ENGINE_MAX_STOP beside the end-of-sequence ids; ignore_eos leaves them in
 * force), return_tokens_as_token_ids (logprobs name tokens "token_id:ID") and
 * skip_special_tokens (true by default, as there: special tokens generated leave the text, not
 * the logprobs); other fields are ignored, as vLLM does), GET /v1/models, GET /health, GET /metrics (Prometheus text), GET / (the dashboard page,
 * dashboard.h; like /health and /metrics it needs no key: the page sends the key its user types),
 * and vLLM's POST /tokenize {"prompt"} -> {"tokens", "count", "max_model_len"} (the ids a completion's
 * prompt gets) and POST /detokenize {"tokens"} -> {"prompt"} (behind the key like /v1).
 * Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}, the message and
 * param naming the field: 400 bad field, 401 missing or wrong Bearer key on /v1 routes and /tokenize, /detokenize (when
 * api_key is set; compared in constant time), 404 unknown model or route, 405 wrong method,
 * 413 body over the cap, 500 when the request failed (its replica failed after its first token),
 * 503 with Retry-After when its model already holds target replicas * max_seqs + max_queue
 * requests, or when the server stops.
 *
 * A request's "model" picks the router (404 naming the models served when none has that name;
 * without "model", the first); /v1/models lists every model; /health is 503 while a model has
 * no replica up; /metrics has per-model and per-replica series (metrics.h).
 *
 * Threads: handlers tokenize the prompt, validate, submit to the router, and wait on their
 * request's condition variable for text (timed waits that also check the client is still
 * connected: a client that leaves has its request cancelled and its KV blocks freed by its
 * replica). The decoding of a request's tokens (tok_stream, stop strings) belongs to the
 * replica running it. */
#ifndef SKEIN_API_H
#define SKEIN_API_H

#include "serve/http.h"
#include "serve/router.h"

typedef struct api_opts {
    const char *api_key;      /* NULL: no authentication */
} api_opts;

typedef struct api_server api_server;

/* A server over routers(n_routers) (model names distinct), which it owns from then on, even
 * when this fails. o's strings are copied. */
sk_status api_server_create(router **routers, int n_routers, const api_opts *o, api_server **out);
/* The http_handler for every route (ctx: the api_server). */
void api_handle(void *ctx, const http_req *rq, http_reply *rp);
/* Stops every router; requests in flight end with an error. Idempotent. */
void api_server_stop(api_server *s);
/* After api_server_stop and http_server_stop (no handler may still run): frees the routers too. */
void api_server_free(api_server *s);

#endif
