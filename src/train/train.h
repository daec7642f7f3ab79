/* train: the training loop on one process: data → forward → backward → clip → AdamW, with
 * evaluation, log.jsonl, checkpoints, exact resume, and the final model written at --out.
 *
 * The global batch (--batch sequences of --seq tokens) is split into micro-batches of at
 * most --micro-batch sequences whose gradients accumulate; each token's loss is weighted by
 * 1/(tokens in the step), so accumulation gives the same gradient as one large batch.
 * Resume reproduces an uninterrupted run bit for bit (same flags): weights and AdamW moments
 * are saved in f32, and the data position, step and RNG are in skein_state.json. */
#ifndef SKEIN_TRAIN_H
#define SKEIN_TRAIN_H

#include "train/opt.h"

typedef struct train_opts {
    const char *model;        /* a model folder to fine-tune, or a preset name (random init) */
    const char *data;         /* prepared dataset folder, a shard, or an llm.c .bin file */
    const char *out;          /* run folder: log.jsonl, checkpoints, final model */
    const char *device;       /* "cpu" */
    long steps;               /* the whole run; the schedule spans it */
    long stop_after;          /* save and exit after this step (0: run to the end) */
    bool resume;
    long batch, micro_batch, seq;
    long eval_every, eval_batches;
    long save_every, keep_checkpoints;
    uint64_t seed;
    bool dropout;
    opt_hparams hp;
    bool quiet;               /* no progress line */
} train_opts;

void train_opts_default(train_opts *o);

/* Runs the training described by o. Returns SK_OK after the last step (or --stop-after). */
sk_status train_run(const train_opts *o);

#endif
