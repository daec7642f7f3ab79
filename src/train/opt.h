/* opt: AdamW over a model's flat parameters, the learning-rate schedule, and the optimizer
 * state file.
 *
 * The state covers a range [begin, begin+count) of the flat parameter buffer: the whole model
 * on one process, one rank's shard under ZeRO. Weight decay applies only to tensors whose
 * spec says so (matrices and embeddings, not biases or norms), per AdamW (Loshchilov &
 * Hutter): p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p).
 *
 * State file "optimizer.bin" (little-endian): char magic[8] "SKOPT\0\0\0", u32 version 1,
 * u32 reserved, u64 n_params (the whole model), u64 begin, u64 count, u64 step, then m(count)
 * and v(count) as f32. Written atomically. */
#ifndef SKEIN_OPT_H
#define SKEIN_OPT_H

#include "model/model.h"

typedef struct opt_hparams {
    float lr;            /* peak learning rate */
    float min_lr_frac;   /* the cosine decays to lr * min_lr_frac */
    long warmup;         /* linear warmup steps */
    long total_steps;    /* the schedule spans these steps */
    float beta1, beta2, eps, weight_decay;
    float grad_clip;     /* global L2 norm; 0 = off */
} opt_hparams;

typedef struct adamw {
    backend *be;
    size_t begin, count; /* the range of the flat buffer this state covers */
    float *m, *v;        /* (count) backend memory */
    long step;           /* optimizer steps taken */
} adamw;

void opt_hparams_default(opt_hparams *h);
/* Learning rate for 0-based step: linear warmup to lr, then cosine down to lr*min_lr_frac. */
float opt_lr_at(const opt_hparams *h, long step);

sk_status adamw_init(adamw *o, backend *be, size_t begin, size_t count);
void adamw_free(adamw *o);
/* One AdamW step on the covered range of m->params from the same range of `grads` (grads
 * points at the full flat gradient buffer), each element's gradient multiplied by grad_scale
 * (clipping). Increments o->step. */
void adamw_step(adamw *o, model *m, const float *grads, const opt_hparams *h, float lr, float grad_scale);

sk_status adamw_save(const adamw *o, size_t n_params, const char *path);
/* Loads a state written for the same n_params and range. */
sk_status adamw_load(adamw *o, size_t n_params, const char *path);

#endif
