/* skein train: flags (and a run file, runfile.h) → train_opts → train_run (train/train.h), on
 * the ranks of a comm when launched by mpirun/srun or torchrun-style variables (comm_init
 * "auto"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/launch.h"
#include "cli/runfile.h"
#include "comm/comm.h"
#include "train/train.h"

/* Bytes from "123", "8G", "512M", "64k" (powers of 1024). */
static sk_status parse_bytes(const char *flag, const char *text, size_t *out) {
    char *end;
    double v = strtod(text, &end);
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1048576.0; end++; break;
    case 'g': case 'G': mul = 1073741824.0; end++; break;
    case 't': case 'T': mul = 1099511627776.0; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b') end++;
    /* below 2^62: a larger double does not convert to size_t (and no host has that much) */
    if (end == text || *end || !(v * mul >= 1 && v * mul < 0x1p62))
        return sk_fail(SK_EARG, "train: %s wants a size in bytes such as 8G or 512M, got '%s'", flag, text);
    *out = (size_t)(v * mul);
    return SK_OK;
}

/* "A:B" with two non-negative integers. */
static sk_status parse_pair(const char *flag, const char *text, long *a, long *b) {
    char *end;
    *a = strtol(text, &end, 10);
    if (end == text || *end != ':' || *a < 0) goto bad;
    const char *p = end + 1;
    *b = strtol(p, &end, 10);
    if (end == p || *end || *b < 0) goto bad;
    return SK_OK;
bad:
    return sk_fail(SK_EARG, "train: %s wants RANK:N (two non-negative integers), got '%s'", flag, text);
}

/* The index of flag in argv(argc), or -1. */
static int argv_find(int argc, char **argv, const char *flag) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], flag)) return i;
    return -1;
}

/* Parses the run file's flags, then the command line's (which override them), into specs:
 * twice, since DeepSpeed's batch keys need the world size, which --workers (in either place)
 * or the launcher gives. */
static sk_status parse_with_runfile(runfile *rf, int argc, char **argv, arg_spec *specs, int n, const long *workers) {
    char **all = malloc(((size_t)rf->argc + (size_t)argc + 2 * 2 + 1) * sizeof *all);
    if (!all) return sk_fail(SK_ENOMEM, "train: out of memory");
    sk_status st = SK_OK;
    for (int pass = 0; pass < 2 && st == SK_OK; pass++) {
        if (pass == 1) {
            comm_env env;
            if ((st = comm_env_read(&env))) break;
            int world = env.launcher != COMM_LAUNCH_NONE ? env.world : *workers > 1 ? (int)*workers : 1;
            if (world < 1 && (rf->tbs > 0 || rf->mb > 0)) {
                st = sk_fail(SK_EARG, "%s: DeepSpeed's batch keys need the world size, which this launcher (%s) gives "
                             "only to MPI: give --batch and --micro-batch instead", rf->path,
                             comm_launcher_name(env.launcher));
                break;
            }
            if ((st = runfile_batch(rf, world))) break;
        }
        memcpy(all, rf->argv, (size_t)rf->argc * sizeof *all);
        memcpy(all + rf->argc, argv, (size_t)argc * sizeof *all);
        st = args_parse("skein train", rf->argc + argc, all, specs, n);
    }
    free(all);
    return st;
}

/* cmd_train with the run file's storage from the caller (the options point into it). */
static int train_main(int argc, char **argv, runfile *rf) {
    train_opts o;
    train_opts_default(&o);
    long seed = (long)o.seed, zero = 0, tp = 1;
    double lr = o.hp.lr, wd = o.hp.weight_decay, clip = o.hp.grad_clip, min_lr = o.hp.min_lr_frac;
    const char *micro = NULL, *dist = "static", *mem_limit = NULL, *slow = NULL, *kill = NULL, *precision = "f32";
    const char *config = NULL, *decay = "cosine", *warmup_shape = "linear", *offload_arg = "none";
    double beta1 = o.hp.beta1, beta2 = o.hp.beta2, eps = o.hp.eps;
    double timeout = 120;
    long workers = 0;
    const char *comm_kind = "auto";
    arg_spec specs[] = {
        {"--model", ARG_STR, &o.model, "DIR|PRESET", "model folder to fine-tune, or a preset (gpt2, gpt2-tiny, ...)", true, false},
        {"--data", ARG_STR, &o.data, "DIR", "prepared dataset (skein data prepare), a shard, or an llm.c .bin", true, false},
        {"--out", ARG_STR, &o.out, "DIR", "run folder: log.jsonl, checkpoints, final model", true, false},
        {"--steps", ARG_INT, &o.steps, "N", "optimizer steps in the whole run (default 100)", false, false},
        {"--stop-after", ARG_INT, &o.stop_after, "K", "save a checkpoint after step K and exit", false, false},
        {"--resume", ARG_BOOL, &o.resume, NULL, "continue from the newest checkpoint in --out", false, false},
        {"--batch", ARG_INT, &o.batch, "B", "sequences per optimizer step (default 8)", false, false},
        {"--micro-batch", ARG_STR, &micro, "M", "sequences per forward pass; accumulation makes up --batch", false, false},
        {"--seq", ARG_INT, &o.seq, "T", "tokens per sequence (default 256)", false, false},
        {"--lr", ARG_FLOAT, &lr, "X", "peak learning rate (default 6e-4)", false, false},
        {"--min-lr-frac", ARG_FLOAT, &min_lr, "F", "cosine decays to lr*F (default 0.1)", false, false},
        {"--warmup", ARG_INT, &o.hp.warmup, "N", "warmup steps (default 0)", false, false},
        {"--warmup-shape", ARG_STR, &warmup_shape, "linear|log", "warmup lr*(step+1)/N, or lr*log(step+1)/log(N) "
         "as DeepSpeed's default (default linear)", false, false},
        {"--lr-decay", ARG_STR, &decay, "cosine|linear", "after the warmup, down to lr*F at the last step (default "
         "cosine)", false, false},
        {"--weight-decay", ARG_FLOAT, &wd, "X", "AdamW weight decay on matrices (default 0.1)", false, false},
        {"--beta1", ARG_FLOAT, &beta1, "X", "AdamW's first-moment decay (default 0.9)", false, false},
        {"--beta2", ARG_FLOAT, &beta2, "X", "AdamW's second-moment decay (default 0.95)", false, false},
        {"--eps", ARG_FLOAT, &eps, "X", "AdamW's epsilon (default 1e-8)", false, false},
        {"--grad-clip", ARG_FLOAT, &clip, "X", "clip the global gradient norm (default 1; 0 = off)", false, false},
        {"--zero", ARG_INT, &zero, "K", "ZeRO stage 0-3: shard optimizer state (1), gradients (2), parameters (3)", false, false},
        {"--tp", ARG_INT, &tp, "K", "tensor parallel: split the model over groups of K consecutive ranks (the world is "
         "K x data-parallel ranks; started by hand without --workers, runs K ranks)", false, false},
        {"--offload", ARG_STR, &offload_arg, "optimizer|none", "ZeRO-Offload: the shard's f32 master weights and AdamW "
         "moments in pinned host memory, updated by the CPU cores (needs --zero 1 or 2; docs/offload.md)", false, false},
        {"--data-dist", ARG_STR, &dist, "static|dynamic", "split each batch evenly, or let workers pull micro-batches (default static)", false, false},
        {"--workers", ARG_INT, &workers, "N", "run N processes (re-executes under mpirun)", false, false},
        {"--comm", ARG_STR, &comm_kind, "auto|mpi|gloo|nccl", "the communicator between ranks (default auto: NCCL "
         "when each rank has a GPU of its own, else MPI or gloo, GPU buffers staged through host memory)", false, false},
        {"--comm-timeout", ARG_FLOAT, &timeout, "S", "a collective waiting longer than S seconds fails the run (default 120)", false, false},
        {"--mem-limit", ARG_STR, &mem_limit, "BYTES", "memory per rank for --micro-batch auto (8G, 512M; default: available / ranks)", false, false},
        {"--debug-slow-rank", ARG_STR, &slow, "R:MS", "rank R sleeps MS ms before each micro-batch (tests)", false, false},
        {"--debug-kill-rank", ARG_STR, &kill, "R:STEP", "rank R kills itself with SIGKILL after step STEP (tests)", false, false},
        {"--debug-sample-log", ARG_BOOL, &o.sample_log, NULL, "OUT/samples-rank<r>.txt lists the samples each rank used", false, false},
        {"--device", ARG_STR, &o.device, "cpu|cuda", "where to train (default cpu)", false, false},
        {"--eval-every", ARG_INT, &o.eval_every, "N", "validation loss every N steps (0 = never)", false, false},
        {"--eval-batches", ARG_INT, &o.eval_batches, "N", "batches per evaluation, each --micro-batch sequences (--batch under auto; default 8)", false, false},
        {"--save-every", ARG_INT, &o.save_every, "N", "checkpoint every N steps (0 = only at the end)", false, false},
        {"--keep-checkpoints", ARG_INT, &o.keep_checkpoints, "K", "keep the newest K checkpoints (default 3)", false, false},
        {"--seed", ARG_INT, &seed, "S", "initialization, data order and dropout seed (default 1337)", false, false},
        {"--dropout", ARG_BOOL, &o.dropout, NULL, "apply config.json's dropout probabilities", false, false},
        {"--precision", ARG_STR, &precision, "f32|bf16", "f32, or bf16 mixed precision: bf16 products and activations, "
         "f32 master weights, gradients and optimizer (default f32)", false, false},
        {"--recompute", ARG_BOOL, &o.recompute, NULL, "keep only each layer's input, run its forward again in the "
         "backward (less activation memory, about a third more compute)", false, false},
        {"--quiet", ARG_BOOL, &o.quiet, NULL, "no progress line", false, false},
        {"--config", ARG_STR, &config, "FILE", "a run file: these flags as JSON, without the dashes, and DeepSpeed's "
         "config keys (docs/runfile.md); flags on the command line override the file", false, false},
    };
    sk_status st;
    int at = argv_find(argc, argv, "--config");
    bool help = argv_find(argc, argv, "--help") >= 0 || argv_find(argc, argv, "-h") >= 0;
    if (at >= 0 && at + 1 < argc && !help) {
        if ((st = runfile_load(argv[at + 1], specs, ARG_COUNT(specs), rf)) == SK_OK)
            st = parse_with_runfile(rf, argc, argv, specs, ARG_COUNT(specs), &workers);
    } else {
        st = args_parse("skein train", argc, argv, specs, ARG_COUNT(specs));
    }
    if (st != SK_OK) return cli_fail(st);
    if (workers < 0) return cli_fail(sk_fail(SK_EARG, "train: --workers must be positive, got %ld", workers));
    comm_env env;
    if ((st = comm_env_read(&env))) return cli_fail(st);
    /* A run file's workers launch only a process started by hand (its ranks read it too). */
    bool file_workers = env.launcher != COMM_LAUNCH_NONE && argv_find(argc, argv, "--workers") < 0;
    if (tp < 1 || tp > 4096) return cli_fail(sk_fail(SK_EARG, "train: --tp must be 1 to 4096, got %ld", tp));
    if (workers > 1 && !file_workers) return launch_workers("train", argc, argv, (int)workers);
    if (tp > 1 && workers <= 1 && env.launcher == COMM_LAUNCH_NONE) return launch_workers("train", argc, argv, (int)tp);
    if (micro && !strcmp(micro, "auto")) {
        o.micro_auto = true;
    } else if (micro) {
        char *end;
        o.micro_batch = strtol(micro, &end, 10);
        if (end == micro || *end || o.micro_batch <= 0)
            return cli_fail(sk_fail(SK_EARG, "train: --micro-batch wants a positive integer, got '%s'", micro));
    }
    if (zero < 0 || zero > 3) return cli_fail(sk_fail(SK_EARG, "train: --zero must be 0, 1, 2 or 3, got %ld", zero));
    if ((st = cli_precision("train", precision, &o.precision))) return cli_fail(st);
    if ((st = cli_offload("train", offload_arg, &o.offload))) return cli_fail(st);
    o.zero = (int)zero;
    o.tp = (int)tp;
    if (strcmp(dist, "static") && strcmp(dist, "dynamic"))
        return cli_fail(sk_fail(SK_EARG, "train: --data-dist must be static or dynamic, got '%s'", dist));
    o.dynamic = !strcmp(dist, "dynamic");
    if (mem_limit && (st = parse_bytes("--mem-limit", mem_limit, &o.mem_limit))) return cli_fail(st);
    long a = 0, b = 0;
    if (slow) {
        if ((st = parse_pair("--debug-slow-rank", slow, &a, &b))) return cli_fail(st);
        o.slow_rank = (int)a;
        o.slow_ms = b;
    }
    if (kill) {
        if ((st = parse_pair("--debug-kill-rank", kill, &a, &b))) return cli_fail(st);
        o.kill_rank = (int)a;
        o.kill_step = b;
    }
    if (!(timeout > 0)) return cli_fail(sk_fail(SK_EARG, "train: --comm-timeout must be positive"));
    if (seed < 0) return cli_fail(sk_fail(SK_EARG, "train: --seed must not be negative"));
    if (wd < 0) return cli_fail(sk_fail(SK_EARG, "train: --weight-decay must not be negative, got %g", wd));
    if (clip < 0) return cli_fail(sk_fail(SK_EARG, "train: --grad-clip must not be negative (0 = off), got %g", clip));
    if (min_lr < 0 || min_lr > 1)
        return cli_fail(sk_fail(SK_EARG, "train: --min-lr-frac must be in [0, 1], got %g", min_lr));
    o.seed = (uint64_t)seed;
    o.hp.lr = (float)lr;
    o.hp.min_lr_frac = (float)min_lr;
    o.hp.weight_decay = (float)wd;
    o.hp.grad_clip = (float)clip;
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1))
        return cli_fail(sk_fail(SK_EARG, "train: --beta1 and --beta2 must be in [0, 1), got %g and %g", beta1, beta2));
    if (!(eps > 0)) return cli_fail(sk_fail(SK_EARG, "train: --eps must be positive, got %g", eps));
    o.hp.beta1 = (float)beta1;
    o.hp.beta2 = (float)beta2;
    o.hp.eps = (float)eps;
    if (strcmp(decay, "cosine") && strcmp(decay, "linear"))
        return cli_fail(sk_fail(SK_EARG, "train: --lr-decay must be cosine or linear, got '%s'", decay));
    if (strcmp(warmup_shape, "linear") && strcmp(warmup_shape, "log"))
        return cli_fail(sk_fail(SK_EARG, "train: --warmup-shape must be linear or log, got '%s'", warmup_shape));
    o.hp.decay_linear = !strcmp(decay, "linear");
    o.hp.warmup_log = !strcmp(warmup_shape, "log");
    o.hp.total_steps = o.steps;
    comm *c = NULL;
    if (tp > 1) comm_want_split();   /* tensor x data parallel groups (tpdp.h) */
    /* the groups are comm_split's: --tp's auto takes the host kind (MPI) on GPUs too, staging
     * their memory (comm_stage.h); --comm nccl splits NCCL's own (under mpirun) */
    if ((st = comm_init(comm_kind, tp > 1 ? "cpu" : o.device, timeout, &c))) return cli_fail(st);
    o.comm = c;
    if (c->world > 1 && c->rank != 0) o.quiet = true;
    if (c->world > 1 && c->rank != 0) log_set_quiet(true);
    if (rf->ignored && rf->ignored[0] && c->rank == 0) log_warn("%s: ignored keys: %s", rf->path, rf->ignored);
    st = train_run(&o);
    int rc = 0;
    if (st != SK_OK) {
        if (c->world > 1) sk_fail_ctx(st, "rank %d of %d", c->rank, c->world);
        rc = cli_fail(st);
    }
    comm_free(c);
    return rc;
}

int cmd_train(int argc, char **argv) {
    runfile rf = {0};
    int rc = train_main(argc, argv, &rf);
    runfile_free(&rf);
    return rc;
}
