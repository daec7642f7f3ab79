/* sample: choosing the next token from logits: greedy at temperature 0, else softmax at the
 * temperature restricted to the top-k tokens and to the smallest set whose probability
 * reaches top-p (nucleus), then one draw from the generator. */
#ifndef SKEIN_SAMPLE_H
#define SKEIN_SAMPLE_H

#include "base/base.h"
#include "base/rng.h"

typedef struct sample_opts {
    float temperature;   /* <= 0: greedy (the first maximum, as torch.argmax) */
    int top_k;           /* 0: no limit */
    float top_p;         /* 1: no limit */
} sample_opts;

typedef struct sampler {
    int V;
    float *probs;        /* (V) scratch */
    int *order;          /* (V) scratch */
} sampler;

sk_status sampler_init(sampler *s, int V);
void sampler_free(sampler *s);
int sampler_next(sampler *s, const float *logits, const sample_opts *o, rng *r);

#endif
