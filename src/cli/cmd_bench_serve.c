/* skein bench serve: load on a running OpenAI-compatible server (skein serve, vLLM, ...) with
 * the flags of `vllm bench serve` (bench/loadgen.h: prompts, Poisson arrivals, streaming, what
 * is timed). Prints one JSON line with vLLM's field names: duration (s), completed, failed,
 * total_input_tokens, total_output_tokens, request_throughput (completed/s), output_throughput
 * and total_token_throughput (tokens/s), and mean/median/std/p99 of ttft_ms, tpot_ms, itl_ms,
 * e2el_ms. The first failed request's message goes to stderr. Exit status 2 for a bad flag, 1
 * when the server cannot be asked (no model name) or every request failed, else 0. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "bench/loadgen.h"
#include "cli/args.h"
#include "cli/cli.h"

/* --rate: "inf" or a positive number. */
static sk_status bench_serve_rate(const char *s, double *rate) {
    char *end = NULL;
    *rate = strcmp(s, "inf") ? strtod(s, &end) : INFINITY;
    if ((end && (end == s || *end || !isfinite(*rate))) || !(*rate > 0))
        return sk_fail(SK_EARG, "bench serve: --rate wants a positive number of requests/s or 'inf', got '%s'", s);
    return SK_OK;
}

/* Adds "<prefix>_<name>_ms" for each statistic of s, vLLM's names. */
static void bench_serve_stats(cJSON *j, const char *name, loadgen_stats s) {
    const char *prefix[] = {"mean", "median", "std", "p99"};
    const double v[] = {s.mean, s.median, s.std, s.p99};
    char key[64];
    for (int k = 0; k < 4; k++) {
        snprintf(key, sizeof key, "%s_%s_ms", prefix[k], name);
        cJSON_AddNumberToObject(j, key, v[k]);
    }
}

int cmd_bench_serve(int argc, char **argv) {
    loadgen_opts o = loadgen_opts_default();
    const char *rate = "inf", *endpoint = "completions";
    long N = o.num_prompts, I = o.input_len, O = o.output_len, C = 0, seed = 0;
    o.api_key = getenv("SKEIN_API_KEY");
    arg_spec specs[] = {
        {"--url", ARG_STR, &o.url, "URL", "the server's root (default http://127.0.0.1:8000)", false, false},
        {"--rate", ARG_STR, &rate, "R", "requests/s, Poisson arrivals; inf: all at once (default inf)", false, false},
        {"--num-prompts", ARG_INT, &N, "N", "requests (default 1000)", false, false},
        {"--input-len", ARG_INT, &I, "I", "prompt tokens, random words cut by the server's /tokenize (default 1024)", false, false},
        {"--output-len", ARG_INT, &O, "O", "max_tokens of each request, EOS ignored (default 128)", false, false},
        {"--concurrency", ARG_INT, &C, "C", "requests in flight at most (default 0: no limit)", false, false},
        {"--model", ARG_STR, &o.model, "NAME", "the requests' model (default: the first of GET /v1/models)", false, false},
        {"--seed", ARG_INT, &seed, "S", "prompts and arrival times (default 0)", false, false},
        {"--api-key", ARG_STR, &o.api_key, "KEY", "sent as Authorization: Bearer KEY (default: SKEIN_API_KEY)", false, false},
        {"--endpoint", ARG_STR, &endpoint, "completions|chat", "/v1/completions or /v1/chat/completions (default completions)", false, false},
    };
    sk_status st = args_parse("skein bench serve", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if ((st = bench_serve_rate(rate, &o.rate))) return cli_fail(st);
    if (N < 1 || N > 1000000 || I < 1 || I > 1000000 || O < 1 || O > 1000000 || C < 0 || seed < 0)
        return cli_fail(sk_fail(SK_EARG, "bench serve: --num-prompts, --input-len, --output-len must be in 1..10^6, "
                                         "--concurrency and --seed not negative"));
    if (strcmp(endpoint, "completions") && strcmp(endpoint, "chat"))
        return cli_fail(sk_fail(SK_EARG, "bench serve: --endpoint wants completions or chat, got '%s'", endpoint));
    if (strncmp(o.url, "http://", 7) && strncmp(o.url, "https://", 8))
        return cli_fail(sk_fail(SK_EARG, "bench serve: --url wants http://HOST:PORT or https://..., got '%s'", o.url));
    o.num_prompts = (int)N;
    o.input_len = (int)I;
    o.output_len = (int)O;
    o.concurrency = (int)C;
    o.seed = (uint64_t)seed;
    o.chat = !strcmp(endpoint, "chat");
    loadgen_result r;
    if ((st = loadgen_run(&o, &r))) return cli_fail(st);

    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "bench", "serve");
    cJSON_AddStringToObject(j, "url", o.url);
    cJSON_AddStringToObject(j, "endpoint", o.chat ? "/v1/chat/completions" : "/v1/completions");
    cJSON_AddStringToObject(j, "model", r.model);
    cJSON_AddNumberToObject(j, "num_prompts", N);
    if (isinf(o.rate)) cJSON_AddStringToObject(j, "request_rate", "inf");   /* vLLM's spelling; JSON has no inf */
    else cJSON_AddNumberToObject(j, "request_rate", o.rate);
    if (C) cJSON_AddNumberToObject(j, "max_concurrency", C); else cJSON_AddNullToObject(j, "max_concurrency");
    cJSON_AddNumberToObject(j, "input_len", I);
    cJSON_AddNumberToObject(j, "output_len", O);
    cJSON_AddNumberToObject(j, "seed", seed);
    const double per_s = r.duration > 0 ? 1 / r.duration : 0;
    cJSON_AddNumberToObject(j, "duration", r.duration);
    cJSON_AddNumberToObject(j, "completed", r.completed);
    cJSON_AddNumberToObject(j, "failed", r.failed);
    cJSON_AddNumberToObject(j, "total_input_tokens", (double)r.input_tokens);
    cJSON_AddNumberToObject(j, "total_output_tokens", (double)r.output_tokens);
    cJSON_AddNumberToObject(j, "request_throughput", r.completed * per_s);
    cJSON_AddNumberToObject(j, "output_throughput", (double)r.output_tokens * per_s);
    cJSON_AddNumberToObject(j, "total_token_throughput", (double)(r.input_tokens + r.output_tokens) * per_s);
    bench_serve_stats(j, "ttft", r.ttft_ms);
    bench_serve_stats(j, "tpot", r.tpot_ms);
    bench_serve_stats(j, "itl", r.itl_ms);
    bench_serve_stats(j, "e2el", r.e2el_ms);
    char *line = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!line) return cli_fail(sk_fail(SK_ENOMEM, "bench serve: out of memory"));
    printf("%s\n", line);
    cJSON_free(line);
    if (r.failed)
        fprintf(stderr, "skein bench serve: %d of %ld requests failed; the first: %s\n", r.failed, N, r.first_error);
    return r.completed ? 0 : 1;
}
