/* sample: choosing the next token from one row of logits (host memory), per request.
 *
 * In order: penalties change the logits of tokens already seen (repetition: HF's, over the
 * prompt and the generated tokens, a positive logit divided by the penalty and a negative one
 * multiplied; presence and frequency: OpenAI's, over the generated tokens, logit -= presence
 * + frequency * count); then greedy at temperature 0 (the first maximum, as torch.argmax),
 * else the softmax at the temperature restricted to tokens of probability at least
 * min_p times the largest, to the top-k (selected without sorting the vocabulary), and to the
 * smallest set whose probability reaches top-p (nucleus), then one draw from the request's
 * generator. With every option off this is exactly the plain sampler (the same draws, the
 * same tokens), so results depend only on the logits, the options and the generator: a
 * request's seed reproduces it whatever else shares the batch.
 *
 * The chosen token's log-probability, and the top-n (sampler_top), are under the model's own
 * distribution (log-softmax of the logits as given, before penalties and temperature), as
 * vLLM reports them. */
#ifndef SKEIN_SAMPLE_H
#define SKEIN_SAMPLE_H

#include "base/base.h"
#include "base/rng.h"

typedef struct sample_opts {
    float temperature;         /* <= 0: greedy */
    int top_k;                 /* 0: no limit */
    float top_p;               /* 1: no limit (0 < top_p <= 1) */
    float min_p;               /* 0: off */
    float repetition_penalty;  /* 0 or 1: off; > 0 */
    float presence_penalty;    /* 0: off */
    float frequency_penalty;   /* 0: off */
} sample_opts;

/* Scratch for one vocabulary, shared by every request one thread samples for. */
typedef struct sampler {
    int V;
    float *probs;        /* (V) */
    int *order;          /* (V) candidate tokens */
    int *count;          /* (V) zero between calls: occurrences while penalties apply */
    float *raw;          /* (V) log-probabilities of the logits as given (with logprob) */
    int *ranked;         /* (V) scratch for sampler_top */
} sampler;

sk_status sampler_init(sampler *s, int V);
void sampler_free(sampler *s);
/* The next token from logits(V), which it may change (penalties). history(n_hist) holds the
 * prompt then the generated tokens, the first n_prompt of them the prompt. When logprob is
 * not NULL it receives the chosen token's log-probability. */
int sampler_next(sampler *s, float *logits, const sample_opts *o, rng *r, const int *history, int n_hist,
                 int n_prompt, float *logprob);
/* The n (1..V) likeliest tokens under the distribution of the last sampler_next call that
 * asked for logprob: ids(n) likeliest first (equal ones by id), logprobs(n) theirs. */
void sampler_top(sampler *s, int n, int *ids, float *logprobs);

#endif
