/* skein bench train: times the trainer's optimizer step (train/step.h: forward, backward,
 * gradient reduction and norm, clipping, AdamW) on a model and random tokens, and prints one
 * JSON line last: the median step time after two untimed warm-up steps, tokens/s, rank 0's
 * median of each phase (forward_ms, backward_ms, reduce_ms, optimizer_ms), of the time
 * blocked waiting for collectives (comm_wait_ms: what overlapping did not hide;
 * SKEIN_ZERO_OVERLAP=0 turns the overlap off) and the peak resident memory. Under mpirun (or
 * --workers N) every rank runs its slice of --batch (the global batch, static distribution,
 * one micro-batch per rank) at the ZeRO stage of --zero; rank 0 prints the line, with every
 * rank's memory plan and peak. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/resource.h>
#include <omp.h>

#include "base/rng.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "cli/launch.h"
#include "comm/comm.h"
#include "model/presets.h"
#include "train/opt.h"
#include "train/step.h"
#include "train/train.h"
#include "train/zero.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* train_fill_fn over one random token stream of (batch*seq + 1) ids: sample i is the seq ids
 * at i*seq, its targets the next ones. */
typedef struct bench_tokens { const int *ids; long seq; } bench_tokens;

static sk_status bench_fill(void *ctx, long first, long n, const int **inputs, const int **targets) {
    const bench_tokens *b = ctx;
    *inputs = b->ids + first * b->seq;
    *targets = b->ids + first * b->seq + 1;
    return SK_OK;
}

static int bench_train(int argc, char **argv) {
    const char *dir = NULL, *preset = NULL, *device = "cpu";
    long B = 4, T = 64, steps = 5, zero_stage = 0, workers = 0;
    arg_spec specs[] = {
        {"--model", ARG_STR, &dir, "DIR", "model folder", false, false},
        {"--preset", ARG_STR, &preset, "NAME", "model shape by name (gpt2, gpt2-medium, ...)", false, false},
        {"--batch", ARG_INT, &B, "B", "sequences per step, over all ranks (default 4)", false, false},
        {"--seq", ARG_INT, &T, "T", "tokens per sequence (default 64)", false, false},
        {"--steps", ARG_INT, &steps, "N", "timed steps after 2 warm-up steps (default 5)", false, false},
        {"--device", ARG_STR, &device, "cpu|cuda", "default cpu", false, false},
        {"--zero", ARG_INT, &zero_stage, "K", "ZeRO stage 0-3 (default 0)", false, false},
        {"--workers", ARG_INT, &workers, "N", "run N processes (re-executes under mpirun)", false, false},
    };
    sk_status st = args_parse("skein bench train", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    /* argv[-1] is "train" (cmd_bench passed argv + 1): the ranks run "bench train <flags>" */
    if (workers < 0) return cli_fail(sk_fail(SK_EARG, "bench train: --workers must be positive, got %ld", workers));
    if (workers > 1) return launch_workers("bench", argc + 1, argv - 1, (int)workers);
    if (!dir == !preset) return cli_fail(sk_fail(SK_EARG, "bench train: give exactly one of --model and --preset"));
    if (B <= 0 || T <= 0 || steps <= 0 || steps > 100000 || B > TRAIN_MAX_BATCH)
        return cli_fail(sk_fail(SK_EARG, "bench train: --batch (at most %d), --seq and --steps (at most 100000) must be "
                                         "positive", TRAIN_MAX_BATCH));
    if (zero_stage < 0 || zero_stage > 3)
        return cli_fail(sk_fail(SK_EARG, "bench train: --zero must be 0, 1, 2 or 3, got %ld", zero_stage));
    comm *c = NULL;
    if ((st = comm_init("auto", device, 120.0, &c))) return cli_fail(st);
    const int rank = c->rank, world = c->world;
    if (rank != 0) log_set_quiet(true);
    backend *be = backend_create(device);
    if (!be) { comm_free(c); return cli_fail(SK_EARG); }
    const size_t baseline = zero_proc_bytes(false);
    model *m = NULL;
    zero *z = NULL;
    train_step ts = {0};
    int *tokens = NULL;
    double *times = NULL, *mem = NULL;
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
    /* this rank's slice of the batch is one micro-batch (none: an idle pass at ZeRO-2/3) */
    const long plan_mb = (B + world - 1) / world;
    zero_mem plan;
    zero_plan(m, world, (int)zero_stage, false, 4, (int)plan_mb, (int)T, &plan);
    /* all ranks on this host share its memory; overcommit would grant more and kill a rank */
    const size_t avail = mem_available();
    if (avail != SIZE_MAX && plan.peak > avail / (size_t)world) {
        st = sk_fail(SK_ENOMEM, "bench train: --batch %ld x --seq %ld needs %.1f MiB per rank at ZeRO-%ld, beyond the "
                     "%.1f MiB available", B, T, (double)plan.peak / 1048576.0, zero_stage,
                     (double)(avail / (size_t)world) / 1048576.0);
        goto done;
    }
    if ((st = zero_init(m, c, (int)zero_stage, false, &z)) || (st = model_train_prepare(m, (int)plan_mb, (int)T))) goto done;
    tokens = mem_alloc(sizeof(int) * (size_t)(B * T + 1));
    times = mem_alloc(sizeof(double) * (2 + TRAIN_PHASE_N) * (size_t)steps);
    mem = mem_calloc(sizeof(double) * 8 * (size_t)world);
    if (!tokens || !times || !mem) { st = SK_ENOMEM; goto done; }
    rng r;
    rng_seed(&r, 7);
    for (long i = 0; i <= B * T; i++) tokens[i] = (int)rng_below(&r, (uint64_t)m->cfg.vocab_size);
    opt_hparams hp;
    opt_hparams_default(&hp);
    bench_tokens bt = {tokens, T};
    ts = (train_step){.m = m, .z = z, .c = c, .batch = B, .micro_batch = plan_mb, .seq = T, .fill = bench_fill,
                      .fill_ctx = &bt};
    if ((st = train_step_init(&ts))) goto done;
    /* t_phase[k * steps + s]: phase k of step s; t_wait[s]: time blocked on collectives */
    double *t_step = times, *t_phase = times + steps, *t_wait = times + (1 + TRAIN_PHASE_N) * steps;
    if (rank == 0)
        fprintf(stderr, "bench train: %s, %zu parameters, batch %ld x %ld tokens, %d rank%s, ZeRO-%ld, %d threads\n",
                dir ? dir : preset, m->n_params, B, T, world, world > 1 ? "s" : "", zero_stage, omp_get_max_threads());
    for (long s = -2; s < steps; s++) {
        double t0 = time_now(), loss = 0, norm = 0;
        if ((st = train_step_run(&ts, &hp, hp.lr, 0, &loss, &norm))) goto done;
        backend_synchronize(be);
        if (s < 0) continue;
        t_step[s] = 1e3 * (time_now() - t0);
        for (int k = 0; k < TRAIN_PHASE_N; k++) t_phase[k * steps + s] = ts.ms[k];
        t_wait[s] = 1e3 * zero_comm_wait_s(z);
        if (rank == 0)
            fprintf(stderr, "  step %ld: %.1f ms (%.1f ms waiting for collectives), loss %.4f\n", s + 1, t_step[s],
                    t_wait[s], loss);
    }
    /* every rank's plan and peak, to rank 0 */
    double *me = mem + 8 * rank;
    me[0] = (double)plan.params;
    me[1] = (double)plan.grads;
    me[2] = (double)plan.optimizer;
    me[3] = (double)(plan.buckets + plan.gathered + plan.staging + plan.comm_scratch);
    me[4] = (double)plan.activations;
    me[5] = (double)plan.total;
    me[6] = (double)zero_proc_bytes(true);
    me[7] = (double)baseline;
    if (world > 1 && (st = comm_all_reduce_f64(c, mem, 8 * (size_t)world))) goto done;
    double ms = median(t_step, (int)steps);
    if (rank == 0) {
        for (int k = 0; k < world; k++) {
            const double *v = mem + 8 * k, MB = 1048576.0;
            fprintf(stderr, "  memory rank %d: params %.1f + grads %.1f + optimizer %.1f MiB | buffers %.1f, "
                            "activations %.1f | total %.1f MiB planned, peak %.1f MiB resident (%.1f before the model)\n",
                    k, v[0] / MB, v[1] / MB, v[2] / MB, v[3] / MB, v[4] / MB, v[5] / MB, v[6] / MB, v[7] / MB);
        }
        printf("{\"bench\": \"train\", \"model\": \"%s\", \"device\": \"%s\", \"params\": %zu, \"batch\": %ld, \"seq\": %ld, "
               "\"steps\": %ld, \"threads\": %d, \"world_size\": %d, \"zero\": %ld, \"ms_per_step\": %.6g, "
               "\"tokens_per_s\": %.6g, \"forward_ms\": %.6g, \"backward_ms\": %.6g, \"reduce_ms\": %.6g, "
               "\"optimizer_ms\": %.6g, \"comm_wait_ms\": %.6g, \"overlap\": %s, \"peak_bytes\": %.0f, \"ranks\": [",
               dir ? dir : preset, be->name, m->n_params, B, T, steps, omp_get_max_threads(), world, zero_stage, ms,
               (double)(B * T) / (ms / 1e3), median(t_phase + TRAIN_PHASE_FORWARD * steps, (int)steps),
               median(t_phase + TRAIN_PHASE_BACKWARD * steps, (int)steps),
               median(t_phase + TRAIN_PHASE_REDUCE * steps, (int)steps),
               median(t_phase + TRAIN_PHASE_OPT * steps, (int)steps), median(t_wait, (int)steps),
               zero_overlaps(z) ? "true" : "false", mem[6]);
        for (int k = 0; k < world; k++) {
            const double *v = mem + 8 * k;
            printf("%s{\"rank\": %d, \"params\": %.0f, \"grads\": %.0f, \"optimizer\": %.0f, \"buffers\": %.0f, "
                   "\"activations\": %.0f, \"total\": %.0f, \"peak_bytes\": %.0f}", k ? ", " : "", k, v[0], v[1], v[2],
                   v[3], v[4], v[5], v[6]);
        }
        printf("]}\n");
    }
done:
    mem_free(tokens);
    mem_free(times);
    mem_free(mem);
    train_step_free(&ts);
    zero_free(z);
    model_free(m);
    backend_free(be);
    int rc = 0;
    if (st != SK_OK) {
        if (world > 1) sk_fail_ctx(st, "rank %d of %d", rank, world);
        rc = cli_fail(st);
    }
    comm_free(c);
    return rc;
}

int cmd_bench(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "train")) return bench_train(argc - 1, argv + 1);
    if (argc >= 1 && (!strcmp(argv[0], "throughput") || !strcmp(argv[0], "serve")))
        return cli_fail(sk_fail(SK_EARG, "bench %s comes with the inference engine and server, not built yet", argv[0]));
    return cli_fail(sk_fail(SK_EARG, "bench: expected 'train' (usage: skein bench train --preset gpt2 --batch 4 --seq 64)"));
}
