/* skein bench throughput / latency: the inference engine (infer/engine.h) on random prompts
 * of exactly --input-len tokens generating --output-len greedy tokens each (EOS ignored: no
 * stop ids). throughput queues --num-prompts requests at once and runs the engine until all
 * are done; its JSON line has vLLM's benchmark fields (requests_per_s, output_tokens_per_s,
 * total_tokens_per_s, prompt tokens counted in the total). latency runs one request at a time
 * and reports the median time to first token (prefill plus the first sample) and decode
 * tokens/s after it. With --tp K both say what share of the time rank 0 spent in the layers'
 * collectives (model_tp's comm_s): throughput's comm_fraction over its whole run, latency's
 * decode_comm_fraction over its decode steps.
 *
 * skein bench train: times the trainer's optimizer step (train/step.h: forward, backward,
 * gradient reduction and norm, clipping, AdamW) on a model and random tokens, and prints one
 * JSON line last: the median step time after two untimed warm-up steps, tokens/s, rank 0's
 * median of each phase (forward_ms, backward_ms, reduce_ms, optimizer_ms), of the time
 * blocked waiting for collectives (comm_wait_ms: what overlapping did not hide;
 * SKEIN_ZERO_OVERLAP=0 turns the overlap off; each rank's own in "ranks") and the peak
 * resident memory. Under mpirun (or
 * --workers N) every rank runs its slice of --batch (the global batch, static distribution,
 * one micro-batch per rank) at the ZeRO stage of --zero; rank 0 prints the line, with every
 * rank's memory plan and peak. With --tp K the ranks form tensor-parallel groups of K (as skein
 * train --tp: each holds its share of the model, the batch and ZeRO over the data-parallel
 * peers); the line adds tp, tp_comm_ms (rank 0's mean time a step in the groups' collectives)
 * and, always, the last step's loss (the same at every K: tests/cli_tptrain.sh).
 *
 * skein bench attention: one layer's causal attention, forward then backward (bf16, random
 * inputs; GPT-2 124M's shape by default: batch 32, 12 heads of 64, 1024 tokens, q, k and v
 * column slices of one packed qkv), timed over --iters passes after two untimed, once per
 * implementation on the GPU (--impls: SKEIN_CUDA_ATTN's values, each on a backend made with
 * it). One JSON line per implementation: what actually ran each way (cudnn, tensor-core,
 * tiled; a shape cuDNN cannot plan falls back, with a warning), the median forward, backward
 * and layer (forward + backward) milliseconds and the layer's TFLOP/s (causal: 7 B NH T^2 HS,
 * a window not discounted).
 *
 * skein bench serve (load on a running server) is cmd_bench_serve.c, skein bench load (how fast
 * a folder's weights load) cmd_bench_load.c; this file dispatches to them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/resource.h>
#include <omp.h>

#include "backend/backend.h"
#include "base/rng.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "cli/launch.h"
#include "comm/comm.h"
#include "infer/engine.h"
#include "model/presets.h"
#include "model/tp_train.h"
#include "train/opt.h"
#include "train/step.h"
#include "train/tpdp.h"
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

/* Numbers per rank that bench train gathers: plan (params, grads, optimizer, buffers,
 * activations, total), peak, baseline, median comm wait ms. */
enum { BENCH_MEM_N = 9 };
/* The offloaded optimizer's split that bench train records per step (offload_times). */
enum { BENCH_OFF_N = 4 };

static int bench_train(int argc, char **argv) {
    const char *dir = NULL, *preset = NULL, *device = "cpu", *precision = "f32", *offload_arg = "none";
    long B = 4, T = 64, steps = 5, zero_stage = 0, workers = 0, micro = 0, tp = 1;
    bool recompute = false, offloaded = false;
    const char *comm_kind = "auto";
    dtype act_dt;
    arg_spec specs[] = {
        {"--model", ARG_STR, &dir, "DIR", "model folder", false, false},
        {"--preset", ARG_STR, &preset, "NAME", "model shape by name (gpt2, gpt2-medium, ...)", false, false},
        {"--batch", ARG_INT, &B, "B", "sequences per step, over all ranks (default 4)", false, false},
        {"--seq", ARG_INT, &T, "T", "tokens per sequence (default 64)", false, false},
        {"--steps", ARG_INT, &steps, "N", "timed steps after 2 warm-up steps (default 5)", false, false},
        {"--device", ARG_STR, &device, "cpu|cuda", "default cpu", false, false},
        {"--zero", ARG_INT, &zero_stage, "K", "ZeRO stage 0-3 (default 0)", false, false},
        {"--precision", ARG_STR, &precision, "f32|bf16", "f32 or bf16 mixed precision (default f32)", false, false},
        {"--recompute", ARG_BOOL, &recompute, NULL, "activation recompute", false, false},
        {"--micro-batch", ARG_INT, &micro, "M", "sequences per pass; accumulation makes up a rank's share of --batch "
         "(default: the share in one pass)", false, false},
        {"--offload", ARG_STR, &offload_arg, "optimizer|none", "ZeRO-Offload (as skein train; --zero 1 or 2): prints "
         "the optimizer step's split", false, false},
        {"--workers", ARG_INT, &workers, "N", "run N processes (re-executes under mpirun)", false, false},
        {"--comm", ARG_STR, &comm_kind, "auto|mpi|gloo|nccl", "the communicator between ranks (default auto)", false, false},
        {"--tp", ARG_INT, &tp, "K", "tensor parallel, as skein train's: groups of K consecutive ranks split the model "
         "(the world is K x data-parallel ranks; without --workers, runs K ranks)", false, false},
    };
    sk_status st = args_parse("skein bench train", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    /* argv[-1] is "train" (cmd_bench passed argv + 1): the ranks run "bench train <flags>" */
    if (workers < 0) return cli_fail(sk_fail(SK_EARG, "bench train: --workers must be positive, got %ld", workers));
    if (tp < 1 || tp > 4096) return cli_fail(sk_fail(SK_EARG, "bench train: --tp must be 1 to 4096, got %ld", tp));
    if (workers > 1) return launch_workers("bench", argc + 1, argv - 1, (int)workers);
    if (tp > 1 && launch_by_hand()) return launch_workers("bench", argc + 1, argv - 1, (int)tp);
    if (!dir == !preset) return cli_fail(sk_fail(SK_EARG, "bench train: give exactly one of --model and --preset"));
    if (B <= 0 || T <= 0 || steps <= 0 || steps > 100000 || B > TRAIN_MAX_BATCH)
        return cli_fail(sk_fail(SK_EARG, "bench train: --batch (at most %d), --seq and --steps (at most 100000) must be "
                                         "positive", TRAIN_MAX_BATCH));
    if (zero_stage < 0 || zero_stage > 3)
        return cli_fail(sk_fail(SK_EARG, "bench train: --zero must be 0, 1, 2 or 3, got %ld", zero_stage));
    if ((st = cli_precision("bench train", precision, &act_dt))) return cli_fail(st);
    if ((st = cli_offload("bench train", offload_arg, &offloaded))) return cli_fail(st);
    if (micro < 0) return cli_fail(sk_fail(SK_EARG, "bench train: --micro-batch must be positive, got %ld", micro));
    comm *c = NULL;
    if (tp > 1) comm_want_split();   /* tensor x data parallel groups (tpdp.h); the host kind, as train's */
    if ((st = comm_init(comm_kind, tp > 1 ? "cpu" : device, 120.0, &c))) return cli_fail(st);
    const int rank = c->rank, world = c->world;
    if (rank != 0) log_set_quiet(true);
    tpdp g;
    if ((st = tpdp_init(c, (int)tp, &g))) { comm_free(c); return cli_fail(st); }
    /* the ZeRO shards, the batch and the plan are the data-parallel peers' (all ranks without --tp) */
    comm *dp = g.dp;
    const int dp_world = g.dp_world;
    backend *be = backend_create_on(device, c->local_rank);
    if (!be) { tpdp_free(&g); comm_free(c); return cli_fail(SK_EARG); }
    const size_t baseline = zero_proc_bytes(false);
    size_t dev_free0 = 0;   /* a device's free memory before the model */
    if (!be->host_memory && (st = backend_mem_info(be, &dev_free0, NULL))) {
        backend_free(be);
        tpdp_free(&g);
        comm_free(c);
        return cli_fail(st);
    }
    model *m = NULL;
    zero *z = NULL;
    train_step ts = {0};
    int *tokens = NULL;
    double *times = NULL, *mem = NULL;
    if (dir) {
        st = model_load(dir, be, &m);
    } else {
        model_config cfg;
        if (!(st = model_preset(preset, 0, &cfg)) && !(st = model_create(&cfg, be, &m))) st = model_init_streamed(m, 1);
    }
    if (st) goto done;
    if (g.K > 1) {   /* this rank's share of the whole model (tp_train.h) */
        model *share;
        if ((st = tp_train_check(&m->cfg, g.K, false, act_dt)) || (st = tp_train_split(m, g.tp, &share))) goto done;
        model_free(m);
        m = share;
    }
    if ((st = model_set_precision(m, act_dt))) goto done;
    m->recompute = recompute;
    if (T > m->cfg.n_positions) {
        st = sk_fail(SK_EARG, "bench train: --seq %ld exceeds the model's context of %d", T, m->cfg.n_positions);
        goto done;
    }
    /* this rank's slice of the batch is one micro-batch (none: an idle pass at ZeRO-2/3) */
    const long share = (B + dp_world - 1) / dp_world, plan_mb = micro > 0 && micro < share ? micro : share;
    zero_mem plan;
    zero_plan(m, dp_world, (int)zero_stage, false, 4, (int)plan_mb, (int)T, &plan);
    if (offloaded) zero_plan_offload(m, dp_world, &plan);
    /* all ranks on this host share its memory; overcommit would grant more and kill a rank */
    /* a device rank has its device's memory, shared with the ranks on the same device */
    const size_t avail = dev_free0 ? zero_device_budget(dev_free0) /
                                         (size_t)comm_device_sharers(c, backend_device_count(device)) * (size_t)world
                                   : mem_available();
    if (avail != SIZE_MAX && plan.peak > avail / (size_t)world) {
        st = sk_fail(SK_ENOMEM, "bench train: --batch %ld x --seq %ld needs %.1f MiB per rank at ZeRO-%ld, beyond the "
                     "%.1f MiB available%s", B, T, (double)plan.peak / 1048576.0, zero_stage,
                     (double)(avail / (size_t)world) / 1048576.0, dev_free0 ? " on the device" : "");
        goto done;
    }
    if ((st = zero_init(m, dp, (int)zero_stage, false, offloaded, &z)) || (st = model_train_prepare(m, (int)plan_mb, (int)T)))
        goto done;
    tokens = mem_alloc(sizeof(int) * (size_t)(B * T + 1));
    times = mem_alloc(sizeof(double) * (2 + TRAIN_PHASE_N + BENCH_OFF_N) * (size_t)steps);
    mem = mem_calloc(sizeof(double) * BENCH_MEM_N * (size_t)world);
    if (!tokens || !times || !mem) { st = SK_ENOMEM; goto done; }
    rng r;
    rng_seed(&r, 7);
    for (long i = 0; i <= B * T; i++) tokens[i] = (int)rng_below(&r, (uint64_t)m->cfg.vocab_size);
    opt_hparams hp;
    opt_hparams_default(&hp);
    bench_tokens bt = {tokens, T};
    ts = (train_step){.m = m, .z = z, .c = dp, .batch = B, .micro_batch = plan_mb, .seq = T, .fill = bench_fill,
                      .fill_ctx = &bt};
    if ((st = train_step_init(&ts))) goto done;
    /* t_phase[k * steps + s]: phase k of step s; t_wait[s]: time blocked on collectives; t_off[k * steps + s]:
     * the offloaded optimizer's split */
    double *t_step = times, *t_phase = times + steps, *t_wait = times + (1 + TRAIN_PHASE_N) * steps;
    double *t_off = t_wait + steps;
    if (rank == 0)
        fprintf(stderr, "bench train: %s, %zu parameters%s, batch %ld x %ld tokens (micro-batch %ld), %d rank%s "
                "(tensor parallel %d), ZeRO-%ld%s, %d threads\n", dir ? dir : preset, m->n_params,
                g.K > 1 ? " in this rank's share" : "", B, T, plan_mb, world, world > 1 ? "s" : "", g.K, zero_stage,
                offloaded ? " + offload" : "", omp_get_max_threads());
    double loss = 0, tp_comm_ms = 0;
    for (long s = -2; s < steps; s++) {
        double t0 = time_now(), norm = 0, tp_comm0 = m->tp.comm_s;
        if ((st = train_step_run(&ts, &hp, hp.lr, 0, &loss, &norm))) goto done;
        backend_synchronize(be);
        if (s < 0) continue;
        t_step[s] = 1e3 * (time_now() - t0);
        tp_comm_ms += 1e3 * (m->tp.comm_s - tp_comm0) / (double)steps;
        for (int k = 0; k < TRAIN_PHASE_N; k++) t_phase[k * steps + s] = ts.ms[k];
        t_wait[s] = 1e3 * zero_comm_wait_s(z);
        if (rank == 0)
            fprintf(stderr, "  step %ld: %.1f ms (%.1f ms waiting for collectives), loss %.4f\n", s + 1, t_step[s],
                    t_wait[s], loss);
        const offload_times *ot = zero_offload_times(z);
        if (ot) {
            const double split[BENCH_OFF_N] = {ot->down_wait_ms, ot->adamw_ms, ot->up_wait_ms, ot->tail_ms};
            for (int k = 0; k < BENCH_OFF_N; k++) t_off[k * steps + s] = split[k];
            if (rank == 0)
                fprintf(stderr, "    compute (forward, backward, reduction) %.1f ms | optimizer %.1f ms: waiting for "
                        "gradients (D2H) %.1f, CPU AdamW %.1f, waiting for a staging slot (H2D) %.1f, last uploads %.1f; "
                        "%.0f MiB down, %.0f MiB up\n", ts.ms[TRAIN_PHASE_FORWARD] + ts.ms[TRAIN_PHASE_BACKWARD] +
                        ts.ms[TRAIN_PHASE_REDUCE], ts.ms[TRAIN_PHASE_OPT], split[0], split[1], split[2], split[3],
                        ot->down_bytes / 1048576.0, ot->up_bytes / 1048576.0);
        }
    }
    /* every rank's plan and peak, to rank 0 */
    double *me = mem + BENCH_MEM_N * rank;
    me[0] = (double)plan.params;
    me[1] = (double)plan.grads;
    me[2] = (double)plan.optimizer;
    me[3] = (double)(plan.buckets + plan.gathered + plan.staging + plan.comm_scratch);
    me[4] = (double)plan.activations;
    me[5] = (double)plan.total;
    me[6] = (double)zero_held_bytes(be, dev_free0);
    me[7] = (double)baseline;
    me[8] = median(t_wait, (int)steps);   /* this rank's time blocked in comm waits */
    if (world > 1 && (st = comm_all_reduce_f64(c, mem, BENCH_MEM_N * (size_t)world))) goto done;
    double ms = median(t_step, (int)steps);
    if (rank == 0) {
        for (int k = 0; k < world; k++) {
            const double *v = mem + BENCH_MEM_N * k, MB = 1048576.0;
            fprintf(stderr, "  memory rank %d: params %.1f + grads %.1f + optimizer %.1f MiB | buffers %.1f, "
                            "activations %.1f | total %.1f MiB planned, %s %.1f MiB (%.1f before the model) | "
                            "%.1f ms per step blocked in comm waits\n",
                    k, v[0] / MB, v[1] / MB, v[2] / MB, v[3] / MB, v[4] / MB, v[5] / MB,
                    dev_free0 ? "device memory taken (cudaMemGetInfo)" : "peak resident", v[6] / MB, v[7] / MB, v[8]);
        }
        if (offloaded)
            fprintf(stderr, "  host memory rank 0: %.1f MiB pinned for the offloaded optimizer, process peak resident "
                            "%.1f MiB\n", (double)zero_pinned_bytes(z) / 1048576.0, (double)zero_proc_bytes(true) / 1048576.0);
        printf("{\"bench\": \"train\", \"model\": \"%s\", \"device\": \"%s\", \"params\": %zu, \"batch\": %ld, \"seq\": %ld, "
               "\"steps\": %ld, \"threads\": %d, \"world_size\": %d, \"comm\": \"%s\", \"zero\": %ld, \"precision\": \"%s\", "
               "\"recompute\": %s, \"ms_per_step\": %.6g, "
               "\"tokens_per_s\": %.6g, \"forward_ms\": %.6g, \"backward_ms\": %.6g, \"reduce_ms\": %.6g, "
               "\"optimizer_ms\": %.6g, \"comm_wait_ms\": %.6g, \"overlap\": %s, \"peak_bytes\": %.0f, \"tp\": %d, "
               "\"tp_comm_ms\": %.6g, \"loss\": %.9g, ",
               dir ? dir : preset, be->name, m->n_params, B, T, steps, omp_get_max_threads(), world, c->name, zero_stage,
               precision,
               recompute ? "true" : "false", ms,
               (double)(B * T) / (ms / 1e3), median(t_phase + TRAIN_PHASE_FORWARD * steps, (int)steps),
               median(t_phase + TRAIN_PHASE_BACKWARD * steps, (int)steps),
               median(t_phase + TRAIN_PHASE_REDUCE * steps, (int)steps),
               median(t_phase + TRAIN_PHASE_OPT * steps, (int)steps), median(t_wait, (int)steps),
               zero_overlaps(z) ? "true" : "false", mem[6], g.K, tp_comm_ms, loss);
        printf("\"micro_batch\": %ld, \"offload\": %s, ", plan_mb, offloaded ? "true" : "false");
        if (offloaded)
            printf("\"offload_d2h_wait_ms\": %.6g, \"offload_adamw_ms\": %.6g, \"offload_h2d_wait_ms\": %.6g, "
                   "\"offload_tail_ms\": %.6g, ", median(t_off, (int)steps), median(t_off + steps, (int)steps),
                   median(t_off + 2 * steps, (int)steps), median(t_off + 3 * steps, (int)steps));
        printf("\"host_pinned_bytes\": %zu, \"host_peak_rss_bytes\": %zu, \"ranks\": [", zero_pinned_bytes(z),
               zero_proc_bytes(true));
        for (int k = 0; k < world; k++) {
            const double *v = mem + BENCH_MEM_N * k;
            printf("%s{\"rank\": %d, \"params\": %.0f, \"grads\": %.0f, \"optimizer\": %.0f, \"buffers\": %.0f, "
                   "\"activations\": %.0f, \"total\": %.0f, \"peak_bytes\": %.0f, \"comm_wait_ms\": %.6g}", k ? ", " : "", k,
                   v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[8]);
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
    tpdp_free(&g);
    backend_free(be);
    int rc = 0;
    if (st != SK_OK) {
        if (world > 1) sk_fail_ctx(st, "rank %d of %d", rank, world);
        rc = cli_fail(st);
    }
    comm_free(c);
    return rc;
}

/* ---- inference: the engine at many requests (throughput) and at one (latency) ---- */

/* The model of --model DIR (mapped; split over the ranks of c when c is not NULL: --tp) or
 * --preset NAME (random weights, seed 1: model_open_random, bf16 on a device). */
static sk_status bench_open(const char *dir, const char *preset, backend *be, comm *c, model **m) {
    if (!dir == !preset) return sk_fail(SK_EARG, "bench: give exactly one of --model and --preset");
    if (dir) return model_open_split(dir, be, c, m);
    model_config cfg;
    SK_TRY(model_preset(preset, 0, &cfg));
    return model_open_random(&cfg, be, 1, m);
}

/* Without --kv-memory, a device's pool holds at most this fraction of its free memory. */
#define BENCH_KV_DEVICE_FRACTION "0.9"

/* Engine options from the flags, for requests of I + O tokens, the cache in kv_dtype
 * (--kv-cache-dtype's text). Without --kv-memory the pool has room for every running sequence
 * (none is preempted), on a device within BENCH_KV_DEVICE_FRACTION of the memory the model
 * left free. */
static sk_status bench_engine(model *m, const char *kv_memory, const char *kv_dtype, long max_seqs, long max_batch,
                              long I, long O, engine **e) {
    engine_opts o = engine_opts_default();
    o.max_seqs = (int)max_seqs;
    o.max_batch_tokens = (int)max_batch;
    o.max_ctx = (int)(I + O);
    dtype kdt;
    SK_TRY(kv_dtype_parse(kv_dtype, &o.kv_dtype));
    SK_TRY(kv_dtype_resolve(m, o.kv_dtype, &kdt));
    if (kv_memory) SK_TRY(kv_budget(m->be, kv_memory, &o.kv_bytes));
    if (!kv_memory && !m->be->host_memory) {
        const size_t bs = KV_BLOCK_SIZE, need = (size_t)max_seqs * (((size_t)(I + O) + bs - 1) / bs) * kv_block_bytes(m, kdt, bs);
        SK_TRY(kv_budget(m->be, BENCH_KV_DEVICE_FRACTION, &o.kv_bytes));
        if (o.kv_bytes > need) o.kv_bytes = need;
    }
    return engine_create(m, &o, e);
}

/* --max-seqs and --max-batch-tokens left at 0: the defaults of the device (a GPU wants large
 * batches: BENCH_DEVICE_SEQS and BENCH_DEVICE_BATCH, vLLM's offline defaults on GPUs of 70 GB
 * and more) or of the CPU (cpu_seqs, cpu_batch). bench throughput's cpu_batch is
 * BENCH_CPU_BATCH, vLLM's server default on CPUs (its offline 4096 was no faster here) and
 * llama-batched-bench's logical batch: on the 2-core machine (2026-12-03, GPT-2 124M f32,
 * output tokens/s) 8 prompts of 128 + 128 ran 318-338 at 512 tokens a step, 329-334 at 1024,
 * 334-344 at 2048; 64 prompts 490-500 at 512, 501-518 at 1024, 502-515 at 2048, 496-503 at
 * 4096. */
#define BENCH_DEVICE_SEQS 1024
#define BENCH_DEVICE_BATCH 16384
#define BENCH_CPU_BATCH 2048
#define BENCH_LATENCY_BATCH 512   /* bench latency's tokens a step on the CPU, or the whole prompt */
#define BENCH_STR_(x) #x
#define BENCH_STR(x) BENCH_STR_(x)   /* a default's value in its flag's help */
static void bench_defaults(const char *device, long cpu_seqs, long cpu_batch, long *max_seqs, long *max_batch) {
    const bool cpu = !strcmp(device, "cpu");
    if (*max_seqs == 0) *max_seqs = cpu ? cpu_seqs : BENCH_DEVICE_SEQS;
    if (*max_batch == 0) *max_batch = cpu ? cpu_batch : BENCH_DEVICE_BATCH;
}

/* Adds prompt i of exactly I random ids (seed 1000 + i), O greedy tokens, no stop ids. */
static sk_status bench_add(engine *e, const model *m, int *prompt, long I, long O, long i) {
    rng r;
    rng_seed(&r, 1000 + (uint64_t)i);
    for (long k = 0; k < I; k++) prompt[k] = (int)rng_below(&r, (uint64_t)m->cfg.vocab_size);
    engine_params p = engine_params_default();
    p.max_tokens = (int)O;
    int id;
    return engine_add_request(e, prompt, (int)I, &p, &id);
}

/* One engine step; adds its new tokens to *tokens and counts it in *steps (either may be NULL). */
static sk_status bench_step(engine *e, long *tokens, long *steps) {
    const engine_output *out;
    int n;
    SK_TRY(engine_step(e, &out, &n));
    for (int i = 0; tokens && i < n; i++) *tokens += out[i].token >= 0;
    if (steps) ++*steps;
    return SK_OK;
}

/* The flags bench throughput and bench latency share; `what` and `batch` are --max-seqs's and
 * --max-batch-tokens's defaults. */
#define BENCH_INFER_FLAGS(what, batch) \
    {"--model", ARG_STR, &dir, "DIR", "model folder (weights mapped)", false, false}, \
    {"--preset", ARG_STR, &preset, "NAME", "model shape by name, random f32 weights (gpt2, ...)", false, false}, \
    {"--input-len", ARG_INT, &I, "I", "prompt tokens (random ids; default 128)", false, false}, \
    {"--output-len", ARG_INT, &O, "O", "generated tokens per request, EOS ignored (default 128)", false, false}, \
    {"--device", ARG_STR, &device, "cpu|cuda", "default cpu", false, false}, \
    {"--kv-memory", ARG_STR, &kv_memory, "BYTES|FRACTION", "KV pool budget (default: room for every running sequence)", false, false}, \
    {"--kv-cache-dtype", ARG_STR, &kv_dtype, "auto|f32|bf16|f16", CLI_KV_DTYPE_HELP, false, false}, \
    {"--max-seqs", ARG_INT, &max_seqs, "N", "running sequences at most (default " what ")", false, false}, \
    {"--max-batch-tokens", ARG_INT, &max_batch, "N", "tokens per step (default " batch "; " BENCH_STR(BENCH_DEVICE_BATCH) " on a GPU)", false, false}, \
    {"--tp", ARG_INT, &tp, "K", "split the model over K ranks (tensor parallel; runs mpirun unless under a launcher)", false, false}, \
    {"--comm-timeout", ARG_FLOAT, &comm_timeout, "S", "with --tp: a collective waiting longer fails (default 300)", false, false}

/* --tp K for bench `what` (argv after its word): runs the K ranks when started by hand (the
 * exit status in *rc), or joins them (*c; NULL for one rank) and makes the other ranks follow
 * rank 0's engines (*rc). Returns whether rank 0 goes on with the benchmark. */
static bool bench_tp(const char *what, int argc, char **argv, long tp, const char *dir, const char *device,
                     double timeout, comm **c, int *rc) {
    sk_status st;
    *c = NULL;
    if (tp > 1 && !dir) {
        *rc = cli_fail(sk_fail(SK_EARG, "bench %s: --tp needs --model DIR (each rank reads its slices of the folder's "
                                        "files)", what));
        return false;
    }
    if (tp > 1 && launch_by_hand()) {
        *rc = launch_tp("bench", argc + 1, argv - 1, (int)tp, dir, false);   /* argv[-1] is `what` */
        return false;
    }
    if ((st = launch_tp_join((int)tp, device, timeout, c))) {
        *rc = cli_fail(st);
        return false;
    }
    if (*c && (*c)->rank > 0) {
        *rc = launch_tp_follow(dir, device, *c);
        return false;
    }
    return true;
}

/* Prints the "ranks" member of a JSON line: each rank's resident weight bytes, slices and
 * seconds in collectives (engine_tp_stats), after the model's size in files, "model_bytes". */
static sk_status bench_print_ranks(model *m) {
    const int K = m->tp.size;
    double *v = mem_alloc(sizeof(double) * (size_t)K * ENGINE_TP_NSTATS);
    if (!v) return SK_ENOMEM;
    sk_status st = engine_tp_stats(m, v);
    if (st == SK_OK) {
        printf(", \"model_bytes\": %zu, \"ranks\": [", m->weights ? wts_mapped_bytes(m->weights) : m->n_params * sizeof(float));
        for (int k = 0; k < K; k++) {
            const double *r = v + (size_t)k * ENGINE_TP_NSTATS;
            printf("%s{\"rank\": %d, \"weight_bytes\": %.0f, \"slice_bytes\": %.0f, \"comm_s\": %.6g}", k ? ", " : "", k,
                   r[ENGINE_TP_RESIDENT], r[ENGINE_TP_SLICES], r[ENGINE_TP_COMM_S]);
        }
        printf("]");
    }
    mem_free(v);
    return st;
}

static int bench_throughput(int argc, char **argv) {
    const char *dir = NULL, *preset = NULL, *device = "cpu", *kv_memory = NULL, *kv_dtype = "auto";
    long I = 128, O = 128, N = 64, max_seqs = 0, max_batch = 0, tp = 1;
    double comm_timeout = 300;
    arg_spec specs[] = {
        BENCH_INFER_FLAGS("64; 1024 on a GPU", BENCH_STR(BENCH_CPU_BATCH)),
        {"--num-prompts", ARG_INT, &N, "N", "requests, all queued at the start (default 64)", false, false},
    };
    sk_status st = args_parse("skein bench throughput", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    bench_defaults(device, 64, BENCH_CPU_BATCH, &max_seqs, &max_batch);
    if (I <= 0 || O <= 0 || N <= 0 || N > 1000000 || max_seqs <= 0 || max_batch <= 0)
        return cli_fail(sk_fail(SK_EARG, "bench throughput: --input-len, --output-len, --num-prompts (at most 10^6), "
                                         "--max-seqs and --max-batch-tokens must be positive"));
    comm *c = NULL;
    int rc = 0;
    if (!bench_tp("throughput", argc, argv, tp, dir, device, comm_timeout, &c, &rc)) return rc;
    backend *be = backend_create_on(device, c ? c->local_rank : 0);
    model *m = NULL;
    engine *e = NULL;
    int *prompt = mem_alloc(sizeof(int) * (size_t)I);
    long out_tokens = 0, steps = 0;
    if (!prompt) st = SK_ENOMEM;
    if (!be) st = SK_EARG;
    if (!st) st = bench_open(dir, preset, be, c, &m);
    if (!st && I + O > m->cfg.n_positions)
        st = sk_fail(SK_EARG, "bench throughput: --input-len + --output-len = %ld exceeds the context %d", I + O,
                     m->cfg.n_positions);
    if (!st) st = bench_engine(m, kv_memory, kv_dtype, max_seqs, max_batch, I, O, &e);
    /* warm-up, untimed (vLLM's engine records its graphs before it serves): a full batch of
     * other prompts, 3 tokens each, so the products have run and the decode step of that
     * size is recorded */
    const double w0 = time_now();
    for (long i = 0; !st && i < (N < max_seqs ? N : max_seqs); i++) st = bench_add(e, m, prompt, I, 3, N + i);
    while (!st && engine_has_work(e)) st = bench_step(e, NULL, NULL);
    double step0 = 0, wait0 = 0;
    if (e) engine_times(e, &step0, &wait0);
    const double t0 = time_now(), comm0 = m ? m->tp.comm_s : 0, warm_s = t0 - w0;
    for (long i = 0; !st && i < N; i++) st = bench_add(e, m, prompt, I, O, i);
    while (!st && engine_has_work(e)) st = bench_step(e, &out_tokens, &steps);
    const double dt = time_now() - t0;
    if (!st) {
        const kv_stats ks = kv_pool_stats(engine_pool(e));
        double step1, wait1;
        engine_times(e, &step1, &wait1);
        printf("{\"bench\": \"throughput\", \"model\": \"%s\", \"device\": \"%s\", \"threads\": %d, \"tp\": %ld, "
               "\"input_len\": %ld, \"output_len\": %ld, \"num_prompts\": %ld, \"max_seqs\": %ld, \"max_batch_tokens\": %ld, "
               "\"kv_dtype\": \"%s\", \"kv_blocks\": %d, \"steps\": %ld, \"preemptions\": %llu, \"prefix_hits\": %llu, \"elapsed_s\": %.6g, "
               "\"requests_per_s\": %.6g, \"output_tokens_per_s\": %.6g, \"total_tokens_per_s\": %.6g, "
               "\"comm_fraction\": %.6g, \"warmup_s\": %.6g, \"host_s\": %.6g, \"device_wait_s\": %.6g",
               dir ? dir : preset, be->name, omp_get_max_threads(), tp, I, O, N, max_seqs, max_batch,
               kv_dtype_name(kv_pool_dtype(engine_pool(e))), kv_pool_blocks(engine_pool(e)), steps, (unsigned long long)engine_preemptions(e),
               (unsigned long long)ks.hits, dt, N / dt, out_tokens / dt, (N * I + out_tokens) / dt,
               (m->tp.comm_s - comm0) / dt, warm_s, step1 - step0 - (wait1 - wait0), wait1 - wait0);
        engine_free(e);
        e = NULL;
        st = bench_print_ranks(m);
        printf("}\n");
    }
    engine_free(e);
    engine_tp_release(c);
    model_free(m);
    mem_free(prompt);
    backend_free(be);
    rc = cli_fail(st);
    comm_free(c);
    return rc;
}

static int bench_latency(int argc, char **argv) {
    const char *dir = NULL, *preset = NULL, *device = "cpu", *kv_memory = NULL, *kv_dtype = "auto";
    long I = 128, O = 128, iters = 3, max_seqs = 1, max_batch = 0, tp = 1;
    double comm_timeout = 300, decode_s = 0, decode_comm_s = 0;
    arg_spec specs[] = {
        BENCH_INFER_FLAGS("1", BENCH_STR(BENCH_LATENCY_BATCH) " or --input-len, at least --input-len"),
        {"--iters", ARG_INT, &iters, "N", "timed runs after one warm-up (default 3; medians reported)", false, false},
    };
    sk_status st = args_parse("skein bench latency", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (max_batch == 0 && I > BENCH_LATENCY_BATCH) max_batch = I;   /* the prompt in one step, as the default does below */
    bench_defaults(device, 1, BENCH_LATENCY_BATCH, &max_seqs, &max_batch);
    if (I <= 0 || O <= 1 || iters <= 0 || iters > 1000 || max_seqs <= 0 || max_batch < I)
        return cli_fail(sk_fail(SK_EARG, "bench latency: --input-len, --iters (at most 1000) must be positive, "
                                         "--output-len at least 2, --max-batch-tokens at least --input-len"));
    comm *c = NULL;
    int rc = 0;
    if (!bench_tp("latency", argc, argv, tp, dir, device, comm_timeout, &c, &rc)) return rc;
    backend *be = backend_create_on(device, c ? c->local_rank : 0);
    model *m = NULL;
    engine *e = NULL;
    int *prompt = mem_alloc(sizeof(int) * (size_t)I);
    double *ttft = mem_alloc(sizeof(double) * (size_t)iters), *rate = mem_alloc(sizeof(double) * (size_t)iters);
    if (!prompt || !ttft || !rate) st = SK_ENOMEM;
    if (!be) st = SK_EARG;
    if (!st) st = bench_open(dir, preset, be, c, &m);
    if (!st && I + O > m->cfg.n_positions)
        st = sk_fail(SK_EARG, "bench latency: --input-len + --output-len = %ld exceeds the context %d", I + O,
                     m->cfg.n_positions);
    if (!st) st = bench_engine(m, kv_memory, kv_dtype, max_seqs, max_batch, I, O, &e);
    for (long it = -1; !st && it < iters; it++) {   /* it -1: warm-up */
        /* another prompt each run: no prefix-cache hits */
        st = bench_add(e, m, prompt, I, O, it + 1);
        double t0 = time_now(), t1 = 0, comm1 = 0;
        long got = 0;
        while (!st && engine_has_work(e)) {
            const engine_output *out;
            int n;
            st = engine_step(e, &out, &n);
            for (int i = 0; i < n; i++) got += out[i].token >= 0;
            if (got && !t1) {
                t1 = time_now();
                comm1 = m->tp.comm_s;
            }
        }
        if (!st && it >= 0) {
            const double t2 = time_now();
            ttft[it] = t1 - t0;
            rate[it] = (double)(got - 1) / (t2 - t1);
            decode_s += t2 - t1;
            decode_comm_s += m->tp.comm_s - comm1;
        }
    }
    if (!st) {
        /* decode_comm_fraction: rank 0's time in collectives over the decode steps' time */
        printf("{\"bench\": \"latency\", \"model\": \"%s\", \"device\": \"%s\", \"threads\": %d, \"tp\": %ld, "
               "\"input_len\": %ld, \"output_len\": %ld, \"iters\": %ld, \"kv_dtype\": \"%s\", \"time_to_first_token_s\": %.6g, "
               "\"prefill_tokens_per_s\": %.6g, \"decode_tokens_per_s\": %.6g, \"decode_comm_fraction\": %.6g",
               dir ? dir : preset, be->name, omp_get_max_threads(), tp, I, O, iters,
               kv_dtype_name(kv_pool_dtype(engine_pool(e))), median(ttft, (int)iters),
               I / median(ttft, (int)iters), median(rate, (int)iters), decode_s > 0 ? decode_comm_s / decode_s : 0.0);
        engine_free(e);
        e = NULL;
        st = bench_print_ranks(m);
        printf("}\n");
    }
    engine_free(e);
    engine_tp_release(c);
    model_free(m);
    mem_free(prompt);
    mem_free(ttft);
    mem_free(rate);
    backend_free(be);
    rc = cli_fail(st);
    comm_free(c);
    return rc;
}

/* ---- attention: one layer forward and backward, per implementation ---- */

/* The shape of bench attention's layer. */
typedef struct bench_attn { long B, T, NH, NKV, HS, W, iters; } bench_attn;

/* n bf16 normals in new device memory of be (NULL + sk_fail when it cannot). */
static void *bench_bf16_randn(backend *be, size_t n, rng *r) {
    float *f = mem_alloc(sizeof(float) * n);
    uint16_t *h = mem_alloc(sizeof(uint16_t) * n);
    void *d = f && h ? backend_alloc(be, sizeof(uint16_t) * n) : NULL;
    if (d) {
        for (size_t i = 0; i < n; i++) f[i] = rng_normal(r);
        dtype_from_f32(h, DT_BF16, f, n);
        backend_upload(be, d, h, sizeof(uint16_t) * n);
    }
    mem_free(f);
    mem_free(h);
    return d;
}

/* Times the layer a.iters times on a backend of `device` made with SKEIN_CUDA_ATTN=impl (impl
 * NULL: as the environment has it) and prints its JSON line. */
static sk_status bench_attention_run(const char *device, const char *impl, const bench_attn *a) {
    char *saved = NULL;
    if (impl) {
        const char *old = getenv("SKEIN_CUDA_ATTN");
        saved = old ? strdup(old) : NULL;
        setenv("SKEIN_CUDA_ATTN", impl, 1);
    }
    backend *be = backend_create(device);
    if (impl) {
        if (saved) setenv("SKEIN_CUDA_ATTN", saved, 1);
        else unsetenv("SKEIN_CUDA_ATTN");
        free(saved);
    }
    if (!be) return SK_EARG;
    const long QD = a->NH * a->HS, KD = a->NKV * a->HS, W3 = QD + 2 * KD;
    const bool packed = a->NKV == a->NH;   /* GPT-2's qkv(B,T,3C); else Llama's q, k, v apart */
    const size_t rows = (size_t)(a->B * a->T);
    rng r;
    rng_seed(&r, 11);
    sk_status st = SK_OK;
    void *qkv = bench_bf16_randn(be, rows * W3, &r), *dout = bench_bf16_randn(be, rows * QD, &r);
    void *dqkv = backend_alloc(be, sizeof(uint16_t) * rows * W3), *out = backend_alloc(be, sizeof(uint16_t) * rows * QD);
    float *lse = backend_alloc(be, sizeof(float) * rows * a->NH);
    double *t = mem_alloc(sizeof(double) * 2 * (size_t)a->iters);
    if (!qkv || !dout || !dqkv || !out || !lse || !t) {
        st = SK_ENOMEM;
        goto done;
    }
    /* q, k, v: column slices of (B,T,W3) when packed, else three (B,T,.) blocks of one buffer */
    tensor q, k, v, dq, dk, dv;
    const int64_t qs[3] = {a->B, a->T, QD}, ks[3] = {a->B, a->T, KD};
    if (packed) {
        const int64_t all[3] = {a->B, a->T, W3};
        tensor x = tensor_make(qkv, DT_BF16, MEM_DEVICE, 3, all), dx = tensor_make(dqkv, DT_BF16, MEM_DEVICE, 3, all);
        q = tensor_cols(x, 0, QD), k = tensor_cols(x, QD, KD), v = tensor_cols(x, QD + KD, KD);
        dq = tensor_cols(dx, 0, QD), dk = tensor_cols(dx, QD, KD), dv = tensor_cols(dx, QD + KD, KD);
    } else {
        uint16_t *x = qkv, *dx = dqkv;
        q = tensor_make(x, DT_BF16, MEM_DEVICE, 3, qs), dq = tensor_make(dx, DT_BF16, MEM_DEVICE, 3, qs);
        k = tensor_make(x + rows * QD, DT_BF16, MEM_DEVICE, 3, ks), dk = tensor_make(dx + rows * QD, DT_BF16, MEM_DEVICE, 3, ks);
        v = tensor_make(x + rows * (QD + KD), DT_BF16, MEM_DEVICE, 3, ks);
        dv = tensor_make(dx + rows * (QD + KD), DT_BF16, MEM_DEVICE, 3, ks);
    }
    const int64_t ls[3] = {a->B, a->NH, a->T};
    const tensor O = tensor_make(out, DT_BF16, MEM_DEVICE, 3, qs), dO = tensor_make(dout, DT_BF16, MEM_DEVICE, 3, qs);
    const tensor L = tensor_make(lse, DT_F32, MEM_DEVICE, 3, ls);
    for (long it = -2; it < a->iters; it++) {   /* it < 0: warm-up (plans are made there) */
        const double t0 = time_now();
        be->ops->attention_forward(be, NULL, O, L, q, k, v, (int)a->NH, (int)a->NKV, (int)a->W, 0.0f, 0);
        backend_synchronize(be);
        const double t1 = time_now();
        be->ops->attention_backward(be, NULL, dq, dk, dv, dO, q, k, v, O, L, (int)a->NH, (int)a->NKV, (int)a->W, 0.0f, 0);
        backend_synchronize(be);
        if (it < 0) continue;
        t[it] = 1e3 * (t1 - t0);
        t[a->iters + it] = 1e3 * (time_now() - t1);
    }
    const double fwd = median(t, (int)a->iters), bwd = median(t + a->iters, (int)a->iters);
    const double flops = 7.0 * (double)a->B * (double)a->NH * (double)a->T * (double)a->T * (double)a->HS;
    printf("{\"bench\": \"attention\", \"device\": \"%s\", \"requested\": \"%s\", \"forward\": \"%s\", "
           "\"backward\": \"%s\", \"batch\": %ld, \"heads\": %ld, \"kv_heads\": %ld, \"seq\": %ld, \"head_size\": %ld, "
           "\"window\": %ld, \"iters\": %ld, \"forward_ms\": %.4f, \"backward_ms\": %.4f, \"layer_ms\": %.4f, "
           "\"tflops\": %.4g}\n",
           be->name, impl ? impl : be->name, backend_attention_impl(be, false), backend_attention_impl(be, true), a->B,
           a->NH, a->NKV, a->T, a->HS, a->W, a->iters, fwd, bwd, fwd + bwd, flops / ((fwd + bwd) * 1e-3) / 1e12);
    fflush(stdout);
done:
    mem_free(t);
    backend_mem_free(be, qkv);
    backend_mem_free(be, dout);
    backend_mem_free(be, dqkv);
    backend_mem_free(be, out);
    backend_mem_free(be, lse);
    backend_free(be);
    return st;
}

static int bench_attention(int argc, char **argv) {
    const char *device = "cuda", *impls = "own,cudnn,cudnn-nondeterministic";
    bench_attn a = {32, 1024, 12, 0, 64, 0, 20};
    arg_spec specs[] = {
        {"--device", ARG_STR, &device, "cpu|cuda", "default cuda", false, false},
        {"--impls", ARG_STR, &impls, "LIST", "comma-separated SKEIN_CUDA_ATTN values to run on cuda (default "
                                             "own,cudnn,cudnn-nondeterministic)", false, false},
        {"--batch", ARG_INT, &a.B, "B", "sequences (default 32)", false, false},
        {"--seq", ARG_INT, &a.T, "T", "tokens per sequence (default 1024)", false, false},
        {"--heads", ARG_INT, &a.NH, "NH", "query heads (default 12)", false, false},
        {"--kv-heads", ARG_INT, &a.NKV, "NKV", "key/value heads (default: --heads; fewer: grouped-query)", false, false},
        {"--head-size", ARG_INT, &a.HS, "HS", "channels per head (default 64)", false, false},
        {"--window", ARG_INT, &a.W, "W", "sliding window, 0 for none (default 0)", false, false},
        {"--iters", ARG_INT, &a.iters, "N", "timed passes after 2 warm-up passes (default 20; medians)", false, false},
    };
    sk_status st = args_parse("skein bench attention", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (!a.NKV) a.NKV = a.NH;
    if (a.B <= 0 || a.T <= 0 || a.NH <= 0 || a.NKV <= 0 || a.NH % a.NKV || a.HS <= 0 || a.HS > 128 || a.W < 0 ||
        a.iters <= 0 || a.iters > 10000 || a.B * a.T > (1L << 24))
        return cli_fail(sk_fail(SK_EARG, "bench attention: --batch, --seq, --heads, --head-size (at most 128) and --iters "
                                         "(at most 10000) must be positive, --kv-heads divide --heads, --window be at "
                                         "least 0 and --batch x --seq at most 2^24"));
    if (strcmp(device, "cuda")) return cli_fail(bench_attention_run(device, NULL, &a));
    char list[256];
    snprintf(list, sizeof list, "%s", impls);
    for (char *save = NULL, *impl = strtok_r(list, ",", &save); impl; impl = strtok_r(NULL, ",", &save))
        if ((st = bench_attention_run(device, impl, &a))) return cli_fail(st);
    return 0;
}

int cmd_bench(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "train")) return bench_train(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "throughput")) return bench_throughput(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "latency")) return bench_latency(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "serve")) return cmd_bench_serve(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "attention")) return bench_attention(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "load")) return cmd_bench_load(argc - 1, argv + 1);
    return cli_fail(sk_fail(SK_EARG, "bench: expected 'train', 'throughput', 'latency', 'serve', 'attention' or 'load' (usage: "
                                     "skein bench train --preset gpt2 --batch 4 --seq 64)"));
}
