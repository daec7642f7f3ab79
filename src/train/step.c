/* step: one optimizer step (see step.h).
 *
 * Invariants: every rank runs the same sequence of collectives per step: the micro-batch
 * loop (at ZeRO-2/3 with static data the same number of passes on every rank), one
 * reduction (zero_end_step), one statistics all-reduce, AdamW (zero_opt_step). Dynamic
 * distribution: each rank claims until it gets a claim past the step's last, so every rank
 * makes exactly one claim too many and the next step's claims start W after the last. */
#include "train/step.h"

#include <math.h>
#include <string.h>

sk_status train_step_init(train_step *s) {
    if (s->batch <= 0 || s->micro_batch <= 0 || s->seq <= 0 || !s->fill)
        return sk_fail(SK_EARG, "train step: batch %ld, micro-batch %ld, seq %ld must be positive", s->batch,
                       s->micro_batch, s->seq);
    s->rank = s->c ? s->c->rank : 0;
    s->world = s->c ? s->c->world : 1;
    s->counter_base = s->local_counter = 0;
    memset(s->ms, 0, sizeof s->ms);
    if (!(s->stats = mem_calloc(sizeof(double) * (size_t)(1 + TRAIN_STAT_N * s->world)))) return SK_ENOMEM;
    sk_status st = SK_OK;
    if (s->dynamic && s->c && (st = comm_counter_set(s->c, 0))) train_step_free(s);
    return st;
}

void train_step_free(train_step *s) {
    mem_free(s->stats);
    s->stats = NULL;
}

/* Dynamic distribution: takes the next claim from the dispenser. */
static sk_status dispense(train_step *s, int64_t *old) {
    if (!s->c) {
        *old = s->local_counter++;
        return SK_OK;
    }
    return comm_fetch_add(s->c, 1, old);
}

/* Forward and backward of the n samples at step offsets [first, first+n); adds the summed
 * token losses to *sum. */
static sk_status run_micro(train_step *s, long first, long n, uint64_t step_seed, double *sum) {
    const long T = s->seq;
    const double tokens = (double)s->batch * (double)T;
    const int *inputs, *targets;
    SK_TRY(s->fill(s->fill_ctx, first, n, &inputs, &targets));
    model *m = s->m;
    /* one seed per step, masks keyed by the sample's place in the step (model.h): the same
     * elements are dropped at any micro-batch size, world size and distribution */
    m->dropout_seed = step_seed;
    m->dropout_sample0 = (uint64_t)first;
    const double t0 = time_now();
    float l = model_forward(m, inputs, targets, (int)n, (int)T);
    const double t1 = time_now();
    model_backward(m, (float)(1.0 / tokens));
    s->ms[TRAIN_PHASE_FORWARD] += 1e3 * (t1 - t0);
    s->ms[TRAIN_PHASE_BACKWARD] += 1e3 * (time_now() - t1);
    *sum += (double)l * (double)n * (double)T;
    SK_TRY(zero_status(s->z));
    double *me = s->stats + 1 + TRAIN_STAT_N * s->rank;
    me[TRAIN_STAT_MB] += 1;
    me[TRAIN_STAT_TOKENS] += (double)(n * T);
    return SK_OK;
}

/* A pass without samples (ZeRO-2/3, static data): the collectives of a forward and backward. */
static sk_status idle_pass(train_step *s) {
    const double t0 = time_now();
    sk_status st = zero_idle_pass(s->z);
    s->ms[TRAIN_PHASE_BACKWARD] += 1e3 * (time_now() - t0);
    return st;
}

sk_status train_step_run(train_step *s, const opt_hparams *hp, float lr, uint64_t dropout_seed, double *loss,
                         double *grad_norm) {
    const long B = s->batch, mb = s->micro_batch, W = s->world, r = s->rank;
    const double tokens = (double)B * (double)s->seq;
    memset(s->stats, 0, sizeof(double) * (size_t)(1 + TRAIN_STAT_N * W));
    memset(s->ms, 0, sizeof s->ms);
    double sum = 0;
    zero_begin_step(s->z);
    if (!s->dynamic) {
        const long lo = r * B / W, hi = (r + 1) * B / W;
        long n_real = (hi - lo + mb - 1) / mb, n_total = n_real;
        if (zero_stage(s->z) >= 2) n_total = ((B + W - 1) / W + mb - 1) / mb;
        for (long i = 0; i < n_total; i++) {
            if (i < n_real) SK_TRY(run_micro(s, lo + i * mb, hi - lo - i * mb < mb ? hi - lo - i * mb : mb, dropout_seed, &sum));
            else SK_TRY(idle_pass(s));
        }
    } else {
        const long claims = (B + mb - 1) / mb;
        for (;;) {
            int64_t old;
            SK_TRY(dispense(s, &old));
            long k = (long)(old - s->counter_base);
            if (k >= claims) break;
            SK_TRY(run_micro(s, k * mb, B - k * mb < mb ? B - k * mb : mb, dropout_seed, &sum));
        }
        /* every rank made exactly one claim past the end: the next step starts after them */
        s->counter_base += claims + W;
    }
    const double t_wait = time_now();
    SK_TRY(zero_end_step(s->z, grad_norm));
    s->stats[1 + TRAIN_STAT_N * r + TRAIN_STAT_WAIT] = 1e3 * (time_now() - t_wait);
    s->stats[0] = sum;
    if (s->c && W > 1) SK_TRY(comm_all_reduce_f64(s->c, s->stats, (size_t)(1 + TRAIN_STAT_N * W)));
    const double t_opt = time_now();
    s->ms[TRAIN_PHASE_REDUCE] = 1e3 * (t_opt - t_wait);
    *loss = s->stats[0] / tokens;
    if (!isfinite(*loss))
        return sk_fail(SK_ESTATE, "train: the loss became %g at step %ld; try a lower --lr", *loss,
                       zero_opt_steps(s->z) + 1);
    sk_status st = zero_opt_step(s->z, hp, lr);
    s->ms[TRAIN_PHASE_OPT] = 1e3 * (time_now() - t_opt);
    return st;
}
