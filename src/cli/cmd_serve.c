/* skein serve: an OpenAI-compatible HTTP server (src/serve/api.h) over one model folder,
 * opened for inference (model_open_weights: mapped read-only) with its tokenizer.json and,
 * where it has one, the chat template of its tokenizer_config.json (or --chat-template).
 * Binds 127.0.0.1 unless --host says otherwise; --port 0 picks a free port. Prints one line
 * "skein serve: listening on http://HOST:PORT (model NAME)" to stderr once it accepts
 * connections, and serves until SIGINT or SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/file.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "serve/api.h"

/* The folder's last path component, as the model's id (trailing slashes ignored). */
static void serve_model_name(const char *dir, char *out, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    snprintf(out, cap, "%.*s", (int)(n - b), dir + b);
}

int cmd_serve(int argc, char **argv) {
    const char *dir = NULL, *host = "127.0.0.1", *key = getenv("SKEIN_API_KEY"), *chat_name = NULL, *name = NULL,
               *device = "cpu";
    long port = 8000, max_seqs = 16, max_queue = 64, max_body = 1 << 20, max_conns = 256, timeout = 60, max_ctx = 0;
    arg_spec specs[] = {
        {"--model", ARG_STR, &dir, "DIR", "model folder (config.json, model.safetensors, tokenizer.json)", true, false},
        {"--host", ARG_STR, &host, "ADDR", "address to bind (default 127.0.0.1: this host only)", false, false},
        {"--port", ARG_INT, &port, "N", "port (default 8000; 0: any free port, printed)", false, false},
        {"--api-key", ARG_STR, &key, "KEY", "require \"Authorization: Bearer KEY\" on /v1 routes (default: SKEIN_API_KEY)", false, false},
        {"--name", ARG_STR, &name, "ID", "the model's id in the API (default: the folder's name)", false, false},
        {"--chat-template", ARG_STR, &chat_name, "NAME", "llama3|llama2|chatml|mistral instead of the folder's template", false, false},
        {"--max-seqs", ARG_INT, &max_seqs, "N", "sequences running at once (default 16)", false, false},
        {"--max-queue", ARG_INT, &max_queue, "N", "requests waiting beyond those, else 503 (default 64)", false, false},
        {"--max-ctx", ARG_INT, &max_ctx, "N", "longest sequence (default: the model's context)", false, false},
        {"--max-body", ARG_INT, &max_body, "BYTES", "largest request body, else 413 (default 1 MiB)", false, false},
        {"--max-conns", ARG_INT, &max_conns, "N", "concurrent connections (default 256)", false, false},
        {"--timeout", ARG_INT, &timeout, "S", "idle connection timeout in seconds (default 60)", false, false},
        {"--device", ARG_STR, &device, "cpu|cuda", "where to run (default cpu)", false, false},
    };
    sk_status st = args_parse("skein serve", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (max_seqs < 1 || max_seqs > 4096) return cli_fail(sk_fail(SK_EARG, "serve: --max-seqs must be in [1, 4096]"));
    if (max_queue < 0 || max_queue > 1 << 20) return cli_fail(sk_fail(SK_EARG, "serve: --max-queue must be in [0, 1048576]"));
    if (max_body < 1 || max_body > 1 << 30) return cli_fail(sk_fail(SK_EARG, "serve: --max-body must be in [1, 1 GiB]"));
    if (max_conns < 1 || max_conns > 65536) return cli_fail(sk_fail(SK_EARG, "serve: --max-conns must be in [1, 65536]"));
    if (timeout < 1 || timeout > 86400) return cli_fail(sk_fail(SK_EARG, "serve: --timeout must be in [1, 86400]"));
    if (max_ctx < 0 || max_ctx > 1 << 24) return cli_fail(sk_fail(SK_EARG, "serve: --max-ctx is out of range"));
    if (key && !key[0]) key = NULL;
    char model_name[256];
    if (name) snprintf(model_name, sizeof model_name, "%s", name);
    else serve_model_name(dir, model_name, sizeof model_name);

    /* signals: waited for by this thread only; the threads started below inherit the mask */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char path[4096];
    tok *t = NULL;
    model *m = NULL;
    chat_template ct = {0};
    bool have_ct = false;
    api_server *a = NULL;
    http_server *h = NULL;
    backend *be = backend_create(device);
    if (!be) return cli_fail(SK_EARG);
    if ((st = tok_load(file_join(path, sizeof path, dir, "tokenizer.json"), &t))) goto done;
    if ((st = tok_load_config(t, file_join(path, sizeof path, dir, "tokenizer_config.json")))) goto done;
    if ((st = model_open_weights(dir, be, &m))) goto done;
    file_join(path, sizeof path, dir, "tokenizer_config.json");
    if (chat_name || access(path, F_OK) == 0) {
        if ((st = chat_template_load(path, chat_name, &ct)) == SK_OK) have_ct = true;
        else if (chat_name) goto done;
        else fprintf(stderr, "skein serve: no chat template (%s); /v1/chat/completions answers 400\n", sk_errmsg());
        st = SK_OK;
    }
    engine_opts eo = engine_opts_default();
    eo.max_seqs = (int)max_seqs;
    eo.max_ctx = (int)max_ctx;
    api_opts ao = {.model_name = model_name, .api_key = key, .engine = eo, .max_queue = (int)max_queue};
    if ((st = api_server_create(m, t, have_ct ? &ct : NULL, &ao, &a))) goto done;
    http_opts ho = {.host = host, .port = (int)port, .max_body = (size_t)max_body, .max_conns = (int)max_conns,
                    .timeout_s = (int)timeout};
    if ((st = http_server_start(&ho, api_handle, a, &h))) goto done;
    fprintf(stderr, "skein serve: listening on http://%s:%d (model %s)\n", host, http_server_port(h), model_name);
    int sig = 0;
    sigwait(&stop_set, &sig);
    fprintf(stderr, "skein serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
done:
    api_server_stop(a);
    http_server_stop(h);
    api_server_free(a);
    if (have_ct) chat_template_free(&ct);
    model_free(m);
    tok_free(t);
    backend_free(be);
    return cli_fail(st);
}
