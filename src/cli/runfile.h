/* runfile: `skein train --config run.json`, the flags of a command as a JSON file, which also
 * takes DeepSpeed's configuration keys, for people coming from DeepSpeed.
 *
 *   runfile rf;
 *   if (runfile_load("run.json", specs, n, &rf) != SK_OK) ...   // refusals name the keys
 *   ... parse rf.argv, then the command line: a flag there overrides the file ...
 *   if (runfile_batch(&rf, world) != SK_OK) ...                  // DeepSpeed's batch keys
 *   ... parse again; print rf.ignored ...
 *   runfile_free(&rf);
 *
 * The file is one JSON object. Its keys are the command's flags without the dashes ("steps":
 * 100, "micro-batch": 4, "data-dist": "dynamic", "recompute": true; false leaves a switch
 * off), and DeepSpeed's:
 *   train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps
 *                            --batch and --micro-batch (any two give the third, with the world)
 *   gradient_clipping        --grad-clip
 *   bf16.enabled             --precision bf16 (false: f32); fp16.enabled is refused
 *   optimizer                AdamW (or Adam with adam_w_mode, DeepSpeed's default):
 *                            params lr, betas, eps, weight_decay: --lr, --beta1, --beta2, --eps,
 *                            --weight-decay
 *   scheduler                WarmupLR (warmup, then constant: --min-lr-frac 1), WarmupDecayLR
 *                            (then a line down to 0 at total_num_steps: --lr-decay linear,
 *                            --steps), WarmupCosineLR (then a cosine to cos_min_ratio);
 *                            params warmup_num_steps, warmup_max_lr, warmup_type (--warmup,
 *                            --lr, --warmup-shape) with DeepSpeed's defaults inside the section
 *   zero_optimization        stage: --zero; offload_optimizer and offload_param are refused
 *                            ("not supported yet") unless their device is "none"
 * Each becomes a flag and its value in rf.argv, for the command to parse before its own
 * arguments (so the command line wins). Keys it has no use for (DeepSpeed's tuning knobs,
 * logging, typos) and "auto" values (Hugging Face's) are listed in rf.ignored. Refused, with a
 * message naming the file and the keys: malformed JSON, a value of the wrong type, two keys
 * that give one flag different values (batch and train_batch_size, lr and optimizer.params.lr),
 * train_batch_size other than micro-batch × accumulation × world, bf16 and fp16 both enabled,
 * and what skein cannot do (fp16, offload, other optimizers and schedulers, a warmup that does
 * not start at 0). */
#ifndef SKEIN_RUNFILE_H
#define SKEIN_RUNFILE_H

#include "cli/args.h"

typedef struct runfile_entry {
    const char *flag;     /* "--batch": a spec's name */
    char *value;          /* its value as text; NULL for a switch */
    char *key;            /* the file's key it came from, for messages */
} runfile_entry;

typedef struct runfile {
    const char *path;
    int argc;
    char **argv;          /* (argc) the entries as arguments: "--flag", "value", ... */
    char *ignored;        /* "key, key, ..." the file's keys not used ("" when none) */
    runfile_entry *e;     /* (n) */
    int n;
    long tbs, mb, gas;    /* DeepSpeed's batch keys (-1: absent), for runfile_batch */
} runfile;

/* Reads path against the command's flag table specs(n) into *rf (freed with runfile_free,
 * also after a failure). */
sk_status runfile_load(const char *path, const arg_spec *specs, int n, runfile *rf);
/* Adds --batch and --micro-batch from DeepSpeed's batch keys for a world of `world` ranks;
 * SK_EARG when they contradict each other or what the file says elsewhere. */
sk_status runfile_batch(runfile *rf, int world);
void runfile_free(runfile *rf);

#endif
