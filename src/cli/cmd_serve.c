/* skein serve: an OpenAI-compatible HTTP server (src/serve/api.h) over one or more model
 * folders, each a router of replicas (src/serve/router.h): --model DIR may repeat, each
 * optionally named by the --served-model-name that follows it (else the folder's name). Every
 * model gets the same replica flags: --replicas N engines sharing one read-only mapping of
 * its weights, or --min-replicas/--max-replicas for autoscaling with Ray Serve's knobs. On the
 * CPU the cores are split among the first replicas (--threads overrides); --devices puts
 * replicas on CUDA devices round robin. Binds 127.0.0.1 unless --host says otherwise;
 * --port 0 picks a free port. Prints one line "skein serve: listening on http://HOST:PORT
 * (model NAME[, NAME...])" to stderr once it accepts connections, and serves until SIGINT or
 * SIGTERM.
 *
 * --tp K: one model split over K ranks (launch.h; started by hand, under mpirun
 * --enable-recovery so that a dead rank does not take rank 0 down with it): rank 0 serves,
 * with one replica over its share, the others follow its engine. When a rank dies or hangs,
 * rank 0's step fails naming it (within --comm-timeout), every request in flight is answered
 * with an error naming the failure, and the server stops as on SIGTERM and exits 1 with the
 * same message.
 *
 * --replicas R --tp K (or --replica-process --tp K): R replicas of K ranks each, all processes
 * forked by the server over its one mapping of the weights, the router seeing each group as
 * one replica (router.h); no mpirun. CPU only. --replica-process: each replica's engine in a
 * child process, so that a crash leaves the others (router.h; on CUDA too, the children on one
 * GPU sharing one device copy of the weights, as thread replicas do). */
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/launch.h"
#include "infer/kv.h"
#include "serve/api.h"

#define SERVE_MAX_MODELS 16
#define SERVE_MAX_ARGS 512

/* Takes every "--model DIR" and "--served-model-name NAME" out of argv (both may repeat: a
 * name names the --model before it), leaving the other flags for args_parse. */
static sk_status serve_take_models(int *argc, char **argv, const char **dirs, const char **names, int *n_models) {
    int k = 0, n = 0;
    for (int i = 0; i < *argc; i++) {
        const bool is_model = !strcmp(argv[i], "--model"), is_name = !strcmp(argv[i], "--served-model-name");
        if (!is_model && !is_name) {
            argv[k++] = argv[i];
            continue;
        }
        if (i + 1 >= *argc) return sk_fail(SK_EARG, "skein serve: %s wants a value", argv[i]);
        if (is_model && n == SERVE_MAX_MODELS) return sk_fail(SK_EARG, "skein serve: at most %d models", SERVE_MAX_MODELS);
        if (is_name && (n == 0 || names[n - 1]))
            return sk_fail(SK_EARG, "skein serve: --served-model-name %s: one name per --model, after it", argv[i + 1]);
        if (is_model) {
            dirs[n] = argv[++i];
            names[n++] = NULL;
        } else {
            names[n - 1] = argv[++i];
        }
    }
    *argc = k;
    *n_models = n;
    return SK_OK;
}

/* Whether flag `name` was given. */
static bool serve_seen(const arg_spec *specs, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(specs[i].name, name)) return specs[i].seen;
    return false;
}

/* --devices "0,1,3": CUDA device ids. */
static sk_status serve_parse_devices(const char *spec, router_opts *o) {
    for (const char *p = spec; *p;) {
        char *end = NULL;
        long d = strtol(p, &end, 10);
        if (end == p || d < 0 || d > 1024 || (*end && *end != ',') || o->n_devices == ROUTER_MAX_DEVICES)
            return sk_fail(SK_EARG, "skein serve: --devices %s: expected up to %d device ids separated by commas", spec,
                           ROUTER_MAX_DEVICES);
        o->devices[o->n_devices++] = (int)d;
        p = *end ? end + 1 : end;
    }
    return SK_OK;
}

/* router_opts.on_failure of a split model: the server stops as on SIGTERM (cmd_serve waits
 * for it with sigwait; every thread blocks it). */
static void serve_stop_self(void *ctx) {
    (void)ctx;
    kill(getpid(), SIGTERM);
}

int cmd_serve(int argc, char **argv) {
    const char *dirs[SERVE_MAX_MODELS], *names[SERVE_MAX_MODELS], *unused = NULL;
    int n_models = 0;
    /* the flags without the models go to args_parse; argv stays as given for --tp's ranks */
    char *rest[SERVE_MAX_ARGS];
    int n_rest = argc;
    if (argc > SERVE_MAX_ARGS) return cli_fail(sk_fail(SK_EARG, "skein serve: at most %d arguments", SERVE_MAX_ARGS));
    memcpy(rest, argv, sizeof(char *) * (size_t)argc);
    sk_status st = serve_take_models(&n_rest, rest, dirs, names, &n_models);
    if (st != SK_OK) return cli_fail(st);
    const char *host = "127.0.0.1", *key = getenv("SKEIN_API_KEY"), *chat_name = NULL, *device = "cpu", *devices = NULL,
               *kv_memory = NULL, *kv_dtype = "auto";
    const char *ssl_cert = NULL, *ssl_key = NULL;   /* HTTPS (http.h) */
    long port = 8000, max_seqs = 16, max_batch = 512, max_queue = 64, max_body = 1 << 20, max_conns = 256, timeout = 60, max_ctx = 0;
    long replicas = 1, min_replicas = 1, max_replicas = 1, threads = 0, tp = 1;
    double target = 2, up_delay = 30, down_delay = 600, replica_timeout = 300, comm_timeout = 60;
    bool replica_process = false;
    arg_spec specs[] = {
        {"--model", ARG_STR, &unused, "DIR", "model folder (config.json, model.safetensors, tokenizer.json); repeat for more models", false, false},
        {"--served-model-name", ARG_STR, &unused, "ID", "the id of the --model before it in the API (default: the folder's name)", false, false},
        {"--host", ARG_STR, &host, "ADDR", "address to bind (default 127.0.0.1: this host only)", false, false},
        {"--port", ARG_INT, &port, "N", "port (default 8000; 0: any free port, printed)", false, false},
        {"--api-key", ARG_STR, &key, "KEY", "require \"Authorization: Bearer KEY\" on /v1 routes (default: SKEIN_API_KEY)", false, false},
        {"--chat-template", ARG_STR, &chat_name, "NAME", "llama3|llama2|chatml|mistral instead of the folders' templates", false, false},
        {"--replicas", ARG_INT, &replicas, "N", "engines per model at start (default 1, or --min-replicas)", false, false},
        {"--min-replicas", ARG_INT, &min_replicas, "A", "autoscaling: fewest replicas per model", false, false},
        {"--max-replicas", ARG_INT, &max_replicas, "B", "autoscaling: most replicas per model", false, false},
        {"--target-ongoing", ARG_FLOAT, &target, "X", "autoscaling: requests in flight per replica aimed at (default 2)", false, false},
        {"--upscale-delay", ARG_FLOAT, &up_delay, "S", "autoscaling: seconds more replicas must be wanted before they start (default 30)", false, false},
        {"--downscale-delay", ARG_FLOAT, &down_delay, "S", "autoscaling: seconds fewer must be wanted before some drain (default 600)", false, false},
        {"--replica-timeout", ARG_FLOAT, &replica_timeout, "S", "a replica whose step (or a replica process whose start) runs longer is replaced (default 300; above the longest step)", false, false},
        {"--threads", ARG_INT, &threads, "N", "CPU threads per replica (default: the cores split among the first replicas)", false, false},
        {"--device", ARG_STR, &device, "cpu|cuda", "where to run (default cpu)", false, false},
        {"--devices", ARG_STR, &devices, "LIST", "CUDA device ids, e.g. 0,1: replicas round robin on them (implies --device cuda)", false, false},
        {"--max-seqs", ARG_INT, &max_seqs, "N", "sequences running at once per replica (default 16)", false, false},
        {"--max-batch-tokens", ARG_INT, &max_batch, "N", "tokens per engine step per replica (default 512)", false, false},
        {"--max-queue", ARG_INT, &max_queue, "N", "requests per model waiting beyond those, else 503 (default 64)", false, false},
        {"--max-ctx", ARG_INT, &max_ctx, "N", "longest sequence (default: the model's context)", false, false},
        {"--kv-memory", ARG_STR, &kv_memory, "BYTES", "each replica's KV pool: bytes (k, M, G) or a fraction of free host memory "
         "(default: room for --max-seqs sequences of the context)", false, false},
        {"--kv-cache-dtype", ARG_STR, &kv_dtype, "auto|f32|bf16|f16", CLI_KV_DTYPE_HELP, false, false},
        {"--max-body", ARG_INT, &max_body, "BYTES", "largest request body, else 413 (default 1 MiB)", false, false},
        {"--max-conns", ARG_INT, &max_conns, "N", "concurrent connections (default 256)", false, false},
        {"--timeout", ARG_INT, &timeout, "S", "a connection idle this long, or sending one request longer, is closed (default 60)", false, false},
        {"--ssl-certfile", ARG_STR, &ssl_cert, "FILE", "serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile", false, false},
        {"--ssl-keyfile", ARG_STR, &ssl_key, "FILE", "the PEM private key of --ssl-certfile", false, false},
        {"--tp", ARG_INT, &tp, "K", "split the model over K ranks (tensor parallel; runs mpirun unless under a launcher)", false, false},
        {"--comm-timeout", ARG_FLOAT, &comm_timeout, "S", "with --tp: a step waiting longer for a rank fails (default 60)", false, false},
        {"--replica-process", ARG_BOOL, &replica_process, NULL, "each replica's engine in a child process: a crash "
         "leaves the others (on CUDA the children on one GPU share one copy of the weights)", false, false},
    };
    if ((st = args_parse("skein serve", n_rest, rest, specs, ARG_COUNT(specs))) != SK_OK) return cli_fail(st);
    if (n_models == 0) return cli_fail(sk_fail(SK_EARG, "skein serve: missing required flag --model"));
    dtype kv_dt;
    if ((st = kv_dtype_parse(kv_dtype, &kv_dt))) return cli_fail(st);
    if (max_seqs < 1 || max_seqs > 4096) return cli_fail(sk_fail(SK_EARG, "serve: --max-seqs must be in [1, 4096]"));
    if (max_batch < 1 || max_batch > 1 << 20) return cli_fail(sk_fail(SK_EARG, "serve: --max-batch-tokens must be in [1, 1048576]"));
    if (max_queue < 0 || max_queue > 1 << 20) return cli_fail(sk_fail(SK_EARG, "serve: --max-queue must be in [0, 1048576]"));
    if (max_body < 1 || max_body > 1 << 30) return cli_fail(sk_fail(SK_EARG, "serve: --max-body must be in [1, 1 GiB]"));
    if (max_conns < 1 || max_conns > 65536) return cli_fail(sk_fail(SK_EARG, "serve: --max-conns must be in [1, 65536]"));
    if (timeout < 1 || timeout > 86400) return cli_fail(sk_fail(SK_EARG, "serve: --timeout must be in [1, 86400]"));
    if (max_ctx < 0 || max_ctx > 1 << 24) return cli_fail(sk_fail(SK_EARG, "serve: --max-ctx is out of range"));
    if (replicas < 1 || min_replicas < 1 || max_replicas < 1 || replicas > 1024 || max_replicas > 1024 || threads < 0 ||
        threads > 4096)
        return cli_fail(sk_fail(SK_EARG, "serve: --replicas, --min-replicas and --max-replicas must be in [1, 1024], --threads in [1, 4096]"));
    const int n_specs = ARG_COUNT(specs);
    if (!serve_seen(specs, n_specs, "--replicas")) replicas = serve_seen(specs, n_specs, "--min-replicas") ? min_replicas : 1;
    if (!serve_seen(specs, n_specs, "--min-replicas")) min_replicas = serve_seen(specs, n_specs, "--max-replicas") ? 1 : replicas;
    if (!serve_seen(specs, n_specs, "--max-replicas")) max_replicas = replicas > min_replicas ? replicas : min_replicas;
    if (key && !key[0]) key = NULL;
    /* --tp K with several replicas (or --replica-process): each replica K forked processes (on
     * CUDA a GPU each: --devices in groups of K, router.h) */
    const bool tp_groups = tp > 1 && (max_replicas > 1 || replica_process);
    if (tp > 1 && !tp_groups && (n_models > 1 || devices))
        return cli_fail(sk_fail(SK_EARG, "serve: --tp %ld serves one --model over its ranks (leave out --devices)", tp));
    if (tp > 1 && !tp_groups && launch_by_hand()) return launch_tp("serve", argc, argv, (int)tp, dirs[0], true);

    comm *c = NULL;
    if ((st = launch_tp_join(tp_groups ? 1 : (int)tp, devices ? "cuda" : device, comm_timeout, &c))) return cli_fail(st);
    if (c && c->rank > 0) return launch_tp_follow(dirs[0], devices ? "cuda" : device, c);
    router_opts ro = router_opts_default();
    ro.tp = c;
    ro.on_failure = serve_stop_self;
    if (devices) {
        if ((st = serve_parse_devices(devices, &ro))) return cli_fail(st);
        device = "cuda";
    }
    if (kv_memory) {
        backend *cpu = backend_cpu_create();
        st = cpu ? kv_budget(cpu, kv_memory, &ro.engine.kv_bytes) : sk_fail(SK_ENOMEM, "serve: out of memory");
        backend_free(cpu);
        if (st != SK_OK) return cli_fail(st);
    }
    if (!threads) {   /* the cores split among the first replicas of every model */
        threads = omp_get_max_threads() / (n_models * replicas * (tp_groups ? tp : 1));
        threads = threads < 1 ? 1 : threads;
    }
    ro.chat_template = chat_name;
    ro.device = device;
    ro.engine.max_seqs = (int)max_seqs;
    ro.engine.kv_dtype = kv_dt;
    ro.engine.max_ctx = (int)max_ctx;
    ro.engine.max_batch_tokens = (int)max_batch;
    ro.max_queue = (int)max_queue;
    ro.replicas = (int)replicas;
    ro.min_replicas = (int)min_replicas;
    ro.max_replicas = (int)max_replicas;
    ro.target_ongoing = target;
    ro.upscale_delay_s = up_delay;
    ro.downscale_delay_s = down_delay;
    ro.replica_timeout_s = replica_timeout;
    ro.threads = (int)threads;
    ro.process = replica_process || tp_groups;
    ro.tp_ranks = tp_groups ? (int)tp : 1;
    ro.comm_timeout_s = comm_timeout;

    /* signals: waited for by this thread only; the threads started below inherit the mask */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    signal(SIGPIPE, SIG_IGN);

    router *rts[SERVE_MAX_MODELS] = {0};
    api_server *a = NULL;
    http_server *h = NULL;
    char list[1024] = "", failure[256];
    for (int i = 0; i < n_models; i++) {
        ro.dir = dirs[i];
        ro.name = names[i];
        if ((st = router_create(&ro, &rts[i])) != SK_OK) {
            for (int k = 0; k < i; k++) router_free(rts[k]);
            goto out;
        }
        size_t n = strlen(list);
        snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", router_name(rts[i]));
    }
    if ((st = api_server_create(rts, n_models, &(api_opts){.api_key = key}, &a))) goto out;
    http_opts ho = {.host = host, .port = (int)port, .max_body = (size_t)max_body, .max_conns = (int)max_conns,
                    .timeout_s = (int)timeout, .cert_file = ssl_cert, .key_file = ssl_key};
    if ((st = http_server_start(&ho, api_handle, a, &h))) goto done;
    fprintf(stderr, "skein serve: listening on %s://%s:%d (model %s)%s\n", ssl_cert ? "https" : "http", host, http_server_port(h), list,
            c ? " over tensor-parallel ranks" : "");
    int sig = 0;
    sigwait(&stop_set, &sig);
    if (c && router_failure(rts[0], failure, sizeof failure))
        st = sk_fail(SK_ECOMM, "serve: model %s: %s; the server stops", router_name(rts[0]), failure);
    else
        fprintf(stderr, "skein serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
done:
    api_server_stop(a);
    http_server_stop(h);
    api_server_free(a);
out:;
    const int rc = cli_fail(st);
    engine_tp_release(c);   /* every replica thread is gone: this thread may use c */
    launch_tp_exit(c, rc);
    comm_free(c);
    return rc;
}
