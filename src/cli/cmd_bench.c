/* skein bench train: times training steps (forward, backward, gradient norm, AdamW) of a
 * model on random tokens and prints one JSON line last: the median step time after two
 * untimed warm-up steps, tokens/s, the median of each phase and the peak resident memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/resource.h>
#include <omp.h>

#include "base/rng.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "model/presets.h"
#include "train/opt.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int bench_train(int argc, char **argv) {
    const char *dir = NULL, *preset = NULL, *device = "cpu";
    long B = 4, T = 64, steps = 5, zero = 0;
    arg_spec specs[] = {
        {"--model", ARG_STR, &dir, "DIR", "model folder", false, false},
        {"--preset", ARG_STR, &preset, "NAME", "model shape by name (gpt2, gpt2-medium, ...)", false, false},
        {"--batch", ARG_INT, &B, "B", "sequences per step (default 4)", false, false},
        {"--seq", ARG_INT, &T, "T", "tokens per sequence (default 64)", false, false},
        {"--steps", ARG_INT, &steps, "N", "timed steps after 2 warm-up steps (default 5)", false, false},
        {"--device", ARG_STR, &device, "cpu|cuda", "default cpu", false, false},
        {"--zero", ARG_INT, &zero, "K", "ZeRO stage (0 on one process)", false, false},
    };
    sk_status st = args_parse("skein bench train", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (!dir == !preset) return cli_fail(sk_fail(SK_EARG, "bench train: give exactly one of --model and --preset"));
    if (B <= 0 || T <= 0 || steps <= 0 || steps > 100000)
        return cli_fail(sk_fail(SK_EARG, "bench train: --batch, --seq and --steps must be positive"));
    if (zero != 0) return cli_fail(sk_fail(SK_EARG, "bench train: --zero %ld needs distributed training, not built yet", zero));
    backend *be = backend_create(device);
    if (!be) return cli_fail(SK_EARG);
    model *m = NULL;
    adamw opt = {0};
    int *tokens = NULL;
    double *times = NULL;
    if (dir) {
        st = model_load(dir, be, &m);
    } else {
        model_config cfg;
        if (!(st = model_preset(preset, 0, &cfg)) && !(st = model_create(&cfg, be, &m))) model_init_weights(m, 1);
    }
    if (st) goto done;
    if (T > m->cfg.n_positions) {
        st = sk_fail(SK_EARG, "bench train: --seq %ld exceeds the model's context of %d", T, m->cfg.n_positions);
        goto done;
    }
    if ((st = model_train_prepare(m, (int)B, (int)T)) || (st = adamw_init(&opt, be, 0, m->n_params))) goto done;
    tokens = mem_alloc(sizeof(int) * (size_t)(B * T + 1));
    times = mem_alloc(sizeof(double) * 4 * (size_t)steps);
    if (!tokens || !times) { st = SK_ENOMEM; goto done; }
    rng r;
    rng_seed(&r, 7);
    for (long i = 0; i <= B * T; i++) tokens[i] = (int)rng_below(&r, (uint64_t)m->cfg.vocab_size);
    opt_hparams hp;
    opt_hparams_default(&hp);
    double *t_step = times, *t_fwd = times + steps, *t_bwd = times + 2 * steps, *t_opt = times + 3 * steps;
    fprintf(stderr, "bench train: %s, %zu parameters, batch %ld x %ld tokens, %d threads\n",
            dir ? dir : preset, m->n_params, B, T, omp_get_max_threads());
    for (long s = -2; s < steps; s++) {
        double t0 = time_now();
        model_zero_grad(m);
        model_forward(m, tokens, tokens + 1, (int)B, (int)T);
        double t1 = time_now();
        model_backward(m, 1.0f / (float)(B * T));
        double t2 = time_now();
        double norm = be->ops->sum_squares(be, m->grads, m->n_params);
        adamw_step(&opt, m, m->grads, &hp, hp.lr, norm > 1 ? (float)(1 / sqrt(norm)) : 1.0f);
        be->ops->synchronize(be);
        double t3 = time_now();
        if (s < 0) continue;
        t_step[s] = 1e3 * (t3 - t0);
        t_fwd[s] = 1e3 * (t1 - t0);
        t_bwd[s] = 1e3 * (t2 - t1);
        t_opt[s] = 1e3 * (t3 - t2);
        fprintf(stderr, "  step %ld: %.1f ms\n", s + 1, t_step[s]);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double ms = median(t_step, (int)steps);
    printf("{\"bench\": \"train\", \"model\": \"%s\", \"device\": \"%s\", \"params\": %zu, \"batch\": %ld, \"seq\": %ld, "
           "\"steps\": %ld, \"threads\": %d, \"ms_per_step\": %.6g, \"tokens_per_s\": %.6g, \"forward_ms\": %.6g, "
           "\"backward_ms\": %.6g, \"optimizer_ms\": %.6g, \"peak_bytes\": %ld}\n",
           dir ? dir : preset, be->name, m->n_params, B, T, steps, omp_get_max_threads(), ms, (double)(B * T) / (ms / 1e3),
           median(t_fwd, (int)steps), median(t_bwd, (int)steps), median(t_opt, (int)steps), ru.ru_maxrss * 1024L);
done:
    mem_free(tokens);
    mem_free(times);
    adamw_free(&opt);
    model_free(m);
    backend_free(be);
    return cli_fail(st);
}

int cmd_bench(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "train")) return bench_train(argc - 1, argv + 1);
    if (argc >= 1 && (!strcmp(argv[0], "throughput") || !strcmp(argv[0], "serve")))
        return cli_fail(sk_fail(SK_EARG, "bench %s comes with the inference engine and server, not built yet", argv[0]));
    return cli_fail(sk_fail(SK_EARG, "bench: expected 'train' (usage: skein bench train --preset gpt2 --batch 4 --seq 64)"));
}
