/* train: the training loop: data → forward → backward → reduce → clip → AdamW (the
 * optimizer step is step.h's, which `skein bench train` times), with evaluation, log.jsonl,
 * checkpoints, exact resume, and the final model written at --out, on one process or on
 * every rank of a comm with a ZeRO stage (zero.h).
 *
 * The global batch (--batch sequences of --seq tokens) is split into micro-batches of at
 * most --micro-batch sequences whose gradients accumulate; each token's loss is weighted by
 * 1/(tokens in the step), so accumulation gives the same gradient as one large batch.
 * Resume reproduces an uninterrupted run bit for bit (same flags): weights and AdamW moments
 * are saved in f32, and the data position, step and RNG are in skein_state.json.
 *
 * Several ranks: the global batch of a step is the next --batch samples of the epoch's
 * order (positions P .. P+batch-1, P counting every sample consumed since epoch 0). Static
 * distribution gives rank r the slice [r*batch/W, (r+1)*batch/W) (uneven allowed); dynamic
 * distribution lets ranks claim micro-batch after micro-batch of that list from a counter
 * (comm fetch_add) until it is spent. Either way each rank sums token losses with weight
 * 1/(batch*seq) and the reduction adds the ranks' gradients, so the step's gradient is the
 * same as one process's up to the order of float sums: the same flags train the same model
 * at any world size, stage and distribution. Only rank 0 writes log.jsonl, memory.json and
 * the model folders; every rank writes its optimizer shard.
 *
 * Tensor parallelism (--tp K, tpdp.h, model/tp_train.h): the ranks form groups of K consecutive
 * ranks, each rank training its share of the model; the batch is split, and ZeRO shards, over
 * the data-parallel peers (world / K of them), so everything above holds with "ranks" read as
 * those. Checkpoints and the final model are written whole, the optimizer files in the whole
 * model's layout: a run resumes at any K. */
#ifndef SKEIN_TRAIN_H
#define SKEIN_TRAIN_H

#include "comm/comm.h"
#include "train/opt.h"

/* Most sequences in one optimizer step: far above any real batch, and a count the model
 * functions' int arguments hold (a larger --batch was truncated on its way there). */
#define TRAIN_MAX_BATCH (1 << 20)

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
    dtype precision;          /* DT_F32, or DT_BF16: mixed precision (model_set_precision) */
    bool recompute;           /* activation recompute (model.h) */
    opt_hparams hp;
    bool quiet;               /* no progress line */
    comm *comm;               /* the ranks to train with; NULL: this process alone */
    int zero;                 /* ZeRO stage 0-3 */
    int tp;                   /* tensor-parallel ranks per group (tp_train.h, tpdp.h); 1: none */
    bool dynamic;             /* --data-dist dynamic */
    bool offload;             /* --offload optimizer: ZeRO-Offload (zero.h, offload.h) */
    bool micro_auto;          /* --micro-batch auto: the largest that fits mem_limit */
    size_t mem_limit;         /* bytes per rank (0: MemAvailable / world): auto picks within it,
                                 an explicit micro-batch beyond it is refused */
    int slow_rank;            /* debug: this rank sleeps slow_ms before each micro-batch (-1: none) */
    long slow_ms;
    int kill_rank;            /* debug: this rank SIGKILLs itself after step kill_step (-1: none) */
    long kill_step;
    bool sample_log;          /* debug: OUT/samples-rank<r>.txt gets "epoch index" per sample used */
} train_opts;

void train_opts_default(train_opts *o);

/* Runs the training described by o. Returns SK_OK after the last step (or --stop-after). */
sk_status train_run(const train_opts *o);

#endif
