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
 * and v(count) as f32. Written atomically.
 *
 * Version 2 holds a ZeRO shard, several ranges (one piece of each parameter group): the same
 * header with begin 0 and count the total of the ranges, then u64 n_ranges, n_ranges pairs
 * (u64 begin, u64 count), then m and v of the ranges concatenated in that order. Readers
 * accept both versions and copy whatever part of a file overlaps the ranges they want, so a
 * state saved by N ranks at one ZeRO stage loads on M ranks at another. */
#ifndef SKEIN_OPT_H
#define SKEIN_OPT_H

#include "model/model.h"

typedef struct opt_hparams {
    float lr;            /* peak learning rate */
    float min_lr_frac;   /* the decay ends at lr * min_lr_frac */
    long warmup;         /* warmup steps */
    bool warmup_log;     /* warmup lr * log(step + 1) / log(max(2, warmup)) (DeepSpeed's "log"),
                            else lr * (step + 1) / warmup */
    bool decay_linear;   /* after the warmup a straight line down, else a cosine */
    long total_steps;    /* the schedule spans these steps */
    float beta1, beta2, eps, weight_decay;
    float grad_clip;     /* global L2 norm; 0 = off */
} opt_hparams;

typedef struct adamw {
    backend *be;
    size_t begin, count; /* the range of the flat buffer this state covers */
    float *m, *v;        /* (count) backend memory */
    double *sq;          /* (1) f64 backend memory: the squared gradient norm's device sum */
    backend_adamw_span *spans;   /* (n_spans) backend memory: what a step updates (adamw_set_spans) */
    int n_spans;
    long step;           /* optimizer steps taken */
} adamw;

void opt_hparams_default(opt_hparams *h);
/* Learning rate for 0-based step: warmup to lr (linear, or logarithmic), then a cosine (or a
 * straight line) down to lr*min_lr_frac at the last step. */
float opt_lr_at(const opt_hparams *h, long step);

/* Allocates the moments of count elements (none when count is 0: a state whose moments live
 * elsewhere, ZeRO-Offload's, keeps only the norm scalar and the step) and the norm scalar. */
sk_status adamw_init(adamw *o, backend *be, size_t begin, size_t count);
void adamw_free(adamw *o);
/* Cuts n spans of any length into pieces of at most BACKEND_ADAMW_SPAN elements (host memory,
 * mem_free it; *pieces their count), so a backend gives each piece a block or a thread. */
sk_status adamw_cut_spans(const backend_adamw_span *spans, size_t n, backend_adamw_span **cut, size_t *pieces);
/* The backend's hyperparameters of a step taken at learning rate lr as step number t (1-based). */
backend_adamw_hp adamw_hparams(const opt_hparams *h, float lr, long t);
/* What a step updates: n spans of any length (backend.h's backend_adamw_span, host memory),
 * cut here into backend-sized pieces and uploaded; replaces earlier spans. */
sk_status adamw_set_spans(adamw *o, const backend_adamw_span *spans, size_t n);
/* The spans of a model whose whole flat buffer this state covers: parameter and gradient i
 * at element i, each tensor decaying as its spec says. */
sk_status adamw_set_model_spans(adamw *o, const model *m);
/* One AdamW step over the spans (one launch): params and grads are the buffers the spans'
 * param and grad offsets index, lp tensor_none() or params' bf16 copy to refresh in the same
 * pass; gradients are clipped on the device by the norm sqrt(*o->sq) (the caller's sum of
 * squares, global over ranks) when h->grad_clip > 0. Increments o->step. */
void adamw_step(adamw *o, tensor params, tensor lp, tensor grads, const opt_hparams *h, float lr);

sk_status adamw_save(const adamw *o, size_t n_params, const char *path);
/* Loads a state written for the same n_params and range. */
sk_status adamw_load(adamw *o, size_t n_params, const char *path);

/* A range of the flat buffer, and where its elements sit in a shard buffer. */
typedef struct opt_range {
    size_t begin, count;   /* flat elements [begin, begin+count) */
    size_t at;             /* offset of element `begin` in the shard buffers */
} opt_range;

/* Writes a version-2 state file: the moments of ranges r(n), read from backend buffers m and
 * v at each range's `at`. */
sk_status opt_state_save(backend *be, const char *path, size_t n_params, long step, const opt_range *r, int n,
                         const float *m, const float *v);
/* Reads a state file (version 1 or 2) written for n_params and uploads into m, v (backend
 * buffers) every element that falls in one of the wanted ranges; adds how many elements it
 * copied to *copied and sets *step. Errors name the file. */
sk_status opt_state_read(backend *be, const char *path, size_t n_params, const opt_range *want, int n_want,
                         float *m, float *v, long *step, size_t *copied);

#endif
