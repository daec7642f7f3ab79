/* step: one optimizer step of (data-parallel) training, the single code path that
 * `skein train` (train.c) and `skein bench train` run: this rank's micro-batches of the
 * global batch (forward and backward, gradients accumulating), the gradient reduction and
 * global norm, clipping and AdamW, through the ZeRO stage of zero.h.
 *
 *   train_step s = {.m = m, .z = z, .c = c, .batch = B, .micro_batch = mb, .seq = T,
 *                   .fill = my_fill, .fill_ctx = ctx};
 *   train_step_init(&s);                                  // after zero_init
 *   train_step_run(&s, &hp, lr, dropout_seed, &loss, &grad_norm);   // per optimizer step
 *   train_step_free(&s);
 *
 * The global batch of a step is `batch` samples of `seq` tokens, numbered 0 .. batch-1 within
 * the step; the caller's fill function hands over any run of them. Static distribution gives
 * rank r the samples [r*batch/W, (r+1)*batch/W) (uneven allowed) in micro-batches of at most
 * micro_batch; at ZeRO-2/3 every rank runs the same number of passes, idle passes filling in,
 * since each pass runs collectives. Dynamic distribution lets ranks claim micro-batch after
 * micro-batch from a counter (comm fetch_add) until the step's are spent. Each token's loss
 * weighs 1/(batch*seq) and the reduction adds the ranks' gradients, so the step's gradient is
 * one large batch's up to the order of float sums, whatever the world size, stage,
 * distribution and micro-batch. Clipping scales the gradient by grad_clip/norm when the
 * global norm exceeds hp->grad_clip (> 0). */
#ifndef SKEIN_TRAIN_STEP_H
#define SKEIN_TRAIN_STEP_H

#include "comm/comm.h"
#include "train/opt.h"
#include "train/zero.h"

/* Hands over samples [first, first + n) of the step's global batch: *inputs and *targets
 * point at n*seq token ids each (ids inside the vocabulary), valid until the next call.
 * A status other than SK_OK ends the step with it. */
typedef sk_status (*train_fill_fn)(void *ctx, long first, long n, const int **inputs, const int **targets);

/* Per-rank counts of a step, in train_step.stats after the rank's slot offset. */
enum { TRAIN_STAT_MB, TRAIN_STAT_TOKENS, TRAIN_STAT_WAIT, TRAIN_STAT_N };
/* This rank's time in the phases of a step (train_step.ms). */
enum { TRAIN_PHASE_FORWARD, TRAIN_PHASE_BACKWARD, TRAIN_PHASE_REDUCE, TRAIN_PHASE_OPT, TRAIN_PHASE_N };

typedef struct train_step {
    /* set by the caller before train_step_init */
    model *m;
    zero *z;                      /* the stage, set up on m and c */
    comm *c;                      /* NULL: this process alone */
    long batch, micro_batch, seq; /* global samples per step, samples per pass, tokens per sample */
    bool dynamic;                 /* dynamic distribution (else static) */
    train_fill_fn fill;
    void *fill_ctx;
    /* set by train_step_init */
    int rank, world;
    /* after each train_step_run, the same on every rank: [0] the step's summed token loss, then
     * per rank r at 1 + TRAIN_STAT_N*r: micro-batches run, tokens, ms waiting in the reduction */
    double *stats;
    double ms[TRAIN_PHASE_N];     /* this rank's time per phase in the last step (idle passes: backward) */
    int64_t counter_base;         /* dynamic: the counter's value at the start of this step */
    int64_t local_counter;        /* dynamic without a comm */
} train_step;

/* Checks the sizes, allocates the statistics and, for dynamic distribution, sets the comm's
 * counter to 0 (collective). On error nothing is held. */
sk_status train_step_init(train_step *s);
void train_step_free(train_step *s);

/* Runs one optimizer step at learning rate lr; dropout masks (when m->dropout) are keyed by
 * dropout_seed and each sample's place in the step (model.h). Writes the mean token loss and
 * the global gradient norm before clipping. A loss that is not finite is an error (SK_ESTATE)
 * naming the step. Every rank calls it for every step. */
sk_status train_step_run(train_step *s, const opt_hparams *hp, float lr, uint64_t dropout_seed, double *loss,
                         double *grad_norm);

#endif
