/* sample: penalties, greedy, temperature, min-p, top-k and top-p sampling (see sample.h).
 * Candidates are kept in `order`: tokens in index order, filtered by min-p; top-k selects
 * the k likeliest in place (quickselect) and sorts only those; top-p selects a growing
 * prefix (64, 256, ... likeliest) until it holds top_p of the mass and sorts only that:
 * under the strict order of sample_before the k likeliest are one set, so the sorted prefix
 * is the full sort's and the nucleus is the same tokens.
 * sampler_top ranks the log-probabilities (`raw`) the same way in its own array, so it may
 * follow any sampler_next. */
#include "infer/sample.h"

#include <math.h>
#include <stdlib.h>

sk_status sampler_init(sampler *s, int V) {
    s->V = V;
    s->probs = mem_alloc(sizeof(float) * (size_t)V);
    s->order = mem_alloc(sizeof(int) * (size_t)V);
    s->count = mem_calloc(sizeof(int) * (size_t)V);
    s->raw = mem_alloc(sizeof(float) * (size_t)V);
    s->ranked = mem_alloc(sizeof(int) * (size_t)V);
    if (!s->probs || !s->order || !s->count || !s->raw || !s->ranked) {
        sampler_free(s);
        return sk_fail(SK_ENOMEM, "out of memory for a sampler over %d tokens", V);
    }
    return SK_OK;
}

void sampler_free(sampler *s) {
    mem_free(s->probs);
    mem_free(s->order);
    mem_free(s->count);
    mem_free(s->raw);
    mem_free(s->ranked);
    s->raw = NULL;
    s->ranked = NULL;
    s->probs = NULL;
    s->order = NULL;
    s->count = NULL;
}

/* Likelier first; equal probabilities by token id. */
static inline bool sample_before(const float *probs, int a, int b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
}

static int by_prob_desc(const void *a, const void *b, void *probs) {
    int x = *(const int *)a, y = *(const int *)b;
    return sample_before(probs, x, y) ? -1 : sample_before(probs, y, x) ? 1 : 0;
}

/* Moves the k first (sample_before) of order(n) to its front, in some order. */
static void sample_select(const float *probs, int *order, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        const int pivot = order[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (sample_before(probs, order[i], pivot)) i++;
            while (sample_before(probs, pivot, order[j])) j--;
            if (i <= j) {
                int t = order[i];
                order[i++] = order[j];
                order[j--] = t;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

static void sample_penalties(sampler *s, float *logits, const sample_opts *o, const int *history, int n_hist,
                             int n_prompt) {
    const float rep = o->repetition_penalty;
    if (rep > 0 && rep != 1) {
        for (int i = 0; i < n_hist; i++) s->count[history[i]] = 1;
        for (int i = 0; i < n_hist; i++) {
            const int t = history[i];
            if (!s->count[t]) continue;
            logits[t] = logits[t] > 0 ? logits[t] / rep : logits[t] * rep;
            s->count[t] = 0;
        }
    }
    if (o->presence_penalty != 0 || o->frequency_penalty != 0) {
        for (int i = n_prompt; i < n_hist; i++) s->count[history[i]]++;
        for (int i = n_prompt; i < n_hist; i++) {
            const int t = history[i];
            if (!s->count[t]) continue;
            logits[t] -= o->presence_penalty + o->frequency_penalty * (float)s->count[t];
            s->count[t] = 0;
        }
    }
}

/* Sorts the likeliest of the n candidates in order (probs) and returns how many hold top_p
 * of their mass (the nucleus, at least 1). Only a selected prefix is sorted when it already
 * holds that mass; a prefix whose sorted running sum falls short by rounding sorts them all. */
static int sample_nucleus(sampler *s, int n, float top_p) {
    double total = 0;
    for (int i = 0; i < n; i++) total += s->probs[s->order[i]];
    const double target = top_p * total;
    int m = n;
    for (int k = 64; k < n; k *= 4) {
        sample_select(s->probs, s->order, n, k);
        double mass = 0;
        for (int i = 0; i < k; i++) mass += s->probs[s->order[i]];
        if (mass >= target) { m = k; break; }
    }
    for (;;) {
        qsort_r(s->order, (size_t)m, sizeof(int), by_prob_desc, s->probs);
        double kept = 0;
        for (int i = 0; i < m; i++) {
            kept += s->probs[s->order[i]];
            if (kept >= target) return i + 1;
        }
        if (m == n) return n;
        m = n;
    }
}

int sampler_next(sampler *s, float *logits, const sample_opts *o, rng *r, const int *history, int n_hist,
                 int n_prompt, float *logprob) {
    const int V = s->V;
    if (logprob) {   /* under the model's distribution: before anything changes the logits */
        int m = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[m]) m = i;
        double sum = 0;
        for (int i = 0; i < V; i++) sum += exp((double)logits[i] - logits[m]);
        const double lse = log(sum) + logits[m];
        for (int i = 0; i < V; i++) s->raw[i] = (float)(logits[i] - lse);
    }
    sample_penalties(s, logits, o, history, n_hist, n_prompt);
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    int id = best;
    if (o->temperature > 0) {
        const float minp = o->min_p > 0 ? o->min_p : 0.0f;   /* probs are relative to the largest (1) */
        double sum = 0;
        int n = 0;
        for (int i = 0; i < V; i++) {
            s->probs[i] = expf((logits[i] - logits[best]) / o->temperature);
            if (s->probs[i] >= minp) {
                s->order[n++] = i;
                sum += s->probs[i];
            }
        }
        const bool top_k = o->top_k > 0 && o->top_k < n;
        if (top_k || o->top_p < 1.0f) {
            if (top_k) {
                sample_select(s->probs, s->order, n, o->top_k);
                n = o->top_k;
            }
            if (o->top_p < 1.0f) n = sample_nucleus(s, n, o->top_p);
            else qsort_r(s->order, (size_t)n, sizeof(int), by_prob_desc, s->probs);
            sum = 0;
            for (int i = 0; i < n; i++) sum += s->probs[s->order[i]];
        }
        double u = (double)rng_uniform(r) * sum, acc = 0;
        id = s->order[n - 1];
        for (int i = 0; i < n; i++) {
            acc += s->probs[s->order[i]];
            if (u < acc) { id = s->order[i]; break; }
        }
    }
    if (logprob) *logprob = s->raw[id];
    return id;
}

void sampler_top(sampler *s, int n, int *ids, float *logprobs) {
    SK_ASSERT(n >= 1 && n <= s->V);
    for (int i = 0; i < s->V; i++) s->ranked[i] = i;
    sample_select(s->raw, s->ranked, s->V, n);
    qsort_r(s->ranked, (size_t)n, sizeof(int), by_prob_desc, s->raw);
    for (int i = 0; i < n; i++) {
        ids[i] = s->ranked[i];
        logprobs[i] = s->raw[ids[i]];
    }
}
