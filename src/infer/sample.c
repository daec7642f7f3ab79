/* sample: greedy, temperature, top-k and top-p sampling (see sample.h). */
#include "infer/sample.h"

#include <math.h>
#include <stdlib.h>

sk_status sampler_init(sampler *s, int V) {
    s->V = V;
    s->probs = mem_alloc(sizeof(float) * (size_t)V);
    s->order = mem_alloc(sizeof(int) * (size_t)V);
    if (!s->probs || !s->order) {
        sampler_free(s);
        return sk_fail(SK_ENOMEM, "out of memory for a sampler over %d tokens", V);
    }
    return SK_OK;
}

void sampler_free(sampler *s) {
    mem_free(s->probs);
    mem_free(s->order);
    s->probs = NULL;
    s->order = NULL;
}

static int by_prob_desc(const void *a, const void *b, void *probs) {
    float pa = ((const float *)probs)[*(const int *)a], pb = ((const float *)probs)[*(const int *)b];
    if (pa != pb) return pa < pb ? 1 : -1;
    return *(const int *)a - *(const int *)b;
}

int sampler_next(sampler *s, const float *logits, const sample_opts *o, rng *r) {
    const int V = s->V;
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (o->temperature <= 0) return best;
    double sum = 0;
    for (int i = 0; i < V; i++) {
        s->probs[i] = expf((logits[i] - logits[best]) / o->temperature);
        sum += s->probs[i];
    }
    int n = V;
    for (int i = 0; i < V; i++) s->order[i] = i;
    if ((o->top_k > 0 && o->top_k < V) || o->top_p < 1.0f) {
        qsort_r(s->order, (size_t)V, sizeof(int), by_prob_desc, s->probs);
        if (o->top_k > 0 && o->top_k < n) n = o->top_k;
        if (o->top_p < 1.0f) {
            double kept = 0, total = 0;
            for (int i = 0; i < n; i++) total += s->probs[s->order[i]];
            for (int i = 0; i < n; i++) {
                kept += s->probs[s->order[i]];
                if (kept >= o->top_p * total) { n = i + 1; break; }
            }
        }
        sum = 0;
        for (int i = 0; i < n; i++) sum += s->probs[s->order[i]];
    }
    double u = (double)rng_uniform(r) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += s->probs[s->order[i]];
        if (u < acc) return s->order[i];
    }
    return s->order[n - 1];
}
