/* skein train: flags → train_opts → train_run (train/train.h). */
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "train/train.h"

int cmd_train(int argc, char **argv) {
    train_opts o;
    train_opts_default(&o);
    long seed = (long)o.seed, zero = 0;
    double lr = o.hp.lr, wd = o.hp.weight_decay, clip = o.hp.grad_clip, min_lr = o.hp.min_lr_frac;
    const char *micro = NULL;
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
        {"--warmup", ARG_INT, &o.hp.warmup, "N", "linear warmup steps (default 0)", false, false},
        {"--weight-decay", ARG_FLOAT, &wd, "X", "AdamW weight decay on matrices (default 0.1)", false, false},
        {"--grad-clip", ARG_FLOAT, &clip, "X", "clip the global gradient norm (default 1; 0 = off)", false, false},
        {"--zero", ARG_INT, &zero, "K", "ZeRO stage (0 on one process)", false, false},
        {"--device", ARG_STR, &o.device, "cpu|cuda", "where to train (default cpu)", false, false},
        {"--eval-every", ARG_INT, &o.eval_every, "N", "validation loss every N steps (0 = never)", false, false},
        {"--eval-batches", ARG_INT, &o.eval_batches, "N", "micro-batches per evaluation (default 8)", false, false},
        {"--save-every", ARG_INT, &o.save_every, "N", "checkpoint every N steps (0 = only at the end)", false, false},
        {"--keep-checkpoints", ARG_INT, &o.keep_checkpoints, "K", "keep the newest K checkpoints (default 3)", false, false},
        {"--seed", ARG_INT, &seed, "S", "initialization, data order and dropout seed (default 1337)", false, false},
        {"--dropout", ARG_BOOL, &o.dropout, NULL, "apply config.json's dropout probabilities", false, false},
        {"--quiet", ARG_BOOL, &o.quiet, NULL, "no progress line", false, false},
    };
    sk_status st = args_parse("skein train", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (micro) {
        char *end;
        o.micro_batch = strtol(micro, &end, 10);
        if (!strcmp(micro, "auto")) return cli_fail(sk_fail(SK_EARG, "train: --micro-batch auto comes with distributed training; give a number"));
        if (end == micro || *end || o.micro_batch <= 0)
            return cli_fail(sk_fail(SK_EARG, "train: --micro-batch wants a positive integer, got '%s'", micro));
    }
    if (zero != 0) return cli_fail(sk_fail(SK_EARG, "train: --zero %ld needs several processes; distributed training is not built yet", zero));
    if (seed < 0) return cli_fail(sk_fail(SK_EARG, "train: --seed must not be negative"));
    o.seed = (uint64_t)seed;
    o.hp.lr = (float)lr;
    o.hp.min_lr_frac = (float)min_lr;
    o.hp.weight_decay = (float)wd;
    o.hp.grad_clip = (float)clip;
    o.hp.total_steps = o.steps;
    return cli_fail(train_run(&o));
}
