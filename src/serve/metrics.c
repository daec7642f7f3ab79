/* metrics: histograms and the Prometheus page (see metrics.h). The page is written into one
 * buffer that doubles as it fills; a failed growth marks it and the render returns NULL. */
#include "serve/metrics.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "base/base.h"

const double metrics_ttft_le[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                  0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
const double metrics_tpot_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                  0.3,   0.4,    0.5,   0.75, 1.0,   2.5,  5.0,   7.5, 10.0};
const double metrics_e2e_le[] = {0.01, 0.025, 0.05, 0.1,  0.3,  0.5,  0.8,  1.0,   1.5,   2.0,
                                 2.5,  5.0,   10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0};
const int METRICS_TTFT_N = (int)(sizeof metrics_ttft_le / sizeof *metrics_ttft_le);
const int METRICS_TPOT_N = (int)(sizeof metrics_tpot_le / sizeof *metrics_tpot_le);
const int METRICS_E2E_N = (int)(sizeof metrics_e2e_le / sizeof *metrics_e2e_le);

void metrics_hist_init(metrics_hist *h, const double *le, int n_le) {
    SK_ASSERT(n_le >= 0 && n_le <= METRICS_MAX_LE);
    memset(h, 0, sizeof *h);
    h->le = le;
    h->n_le = n_le;
}

void metrics_hist_observe(metrics_hist *h, double v) {
    int b = 0;
    while (b < h->n_le && v > h->le[b]) b++;
    h->n[b]++;
    h->count++;
    h->sum += v;
}

/* ---- the page ---- */

typedef struct metrics_text {
    char *b;
    size_t n, cap;
    bool oom;
} metrics_text;

static void metrics_printf(metrics_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void metrics_printf(metrics_text *t, const char *fmt, ...) {
    for (;;) {
        if (t->oom) return;
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->b + t->n, t->cap - t->n, fmt, ap);
        va_end(ap);
        if (k < 0) { t->oom = true; return; }
        if ((size_t)k < t->cap - t->n) { t->n += (size_t)k; return; }
        size_t cap = 2 * t->cap + (size_t)k;
        char *p = mem_realloc(t->b, cap);
        if (!p) { t->oom = true; return; }
        t->b = p;
        t->cap = cap;
    }
}

static void metrics_family(metrics_text *t, const char *name, const char *type, const char *help) {
    metrics_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metrics_hist_write(metrics_text *t, const char *name, const char *model, const metrics_hist *h) {
    uint64_t cum = 0;
    for (int b = 0; b < h->n_le; b++) {
        cum += h->n[b];
        metrics_printf(t, "%s_bucket{model=\"%s\",le=\"%g\"} %llu\n", name, model, h->le[b], (unsigned long long)cum);
    }
    metrics_printf(t, "%s_bucket{model=\"%s\",le=\"+Inf\"} %llu\n%s_sum{model=\"%s\"} %.9g\n%s_count{model=\"%s\"} %llu\n",
                   name, model, (unsigned long long)h->count, name, model, h->sum, name, model,
                   (unsigned long long)h->count);
}

/* The per-model families: value k of model m. */
enum { MM_PROMPT, MM_GEN, MM_UP, MM_TARGET, MM_PENDING, MM_FAILURES, MM_COUNT };
static const struct { const char *name, *type, *help; } metrics_model_fam[MM_COUNT] = {
    {"skein_prompt_tokens_total", "counter", "Prompt tokens of the requests submitted."},
    {"skein_generation_tokens_total", "counter", "Tokens generated."},
    {"skein_replicas_up", "gauge", "Replicas accepting requests."},
    {"skein_replicas_target", "gauge", "Replicas the autoscaler wants now."},
    {"skein_router_queue_depth", "gauge", "Requests waiting for a replica to come up."},
    {"skein_replica_failures_total", "counter", "Replicas that failed (a step error, a stall, a failed start)."},
};

static double metrics_model_value(const metrics_model *m, int k) {
    switch (k) {
    case MM_PROMPT: return (double)m->prompt_tokens;
    case MM_GEN: return (double)m->generation_tokens;
    case MM_UP: return m->replicas_up;
    case MM_TARGET: return m->replicas_target;
    case MM_PENDING: return m->pending;
    default: return (double)m->failures;
    }
}

/* The per-replica families: value k of replica r. */
enum { MR_QUEUED, MR_RUNNING, MR_KV_USED, MR_KV_TOTAL, MR_HITS, MR_MISSES, MR_HIT_RATE, MR_REQUESTS, MR_START, MR_COUNT };
static const struct { const char *name, *type, *help; } metrics_rep_fam[MR_COUNT] = {
    {"skein_queue_depth", "gauge", "Requests routed to the replica and not yet running."},
    {"skein_running_sequences", "gauge", "Sequences in the replica's batch."},
    {"skein_kv_blocks_used", "gauge", "KV blocks held by the replica's sequences."},
    {"skein_kv_blocks_total", "gauge", "KV blocks in the replica's pool."},
    {"skein_prefix_cache_hits_total", "counter", "Full prompt blocks found in the replica's prefix cache."},
    {"skein_prefix_cache_misses_total", "counter", "Full prompt blocks not found in the replica's prefix cache."},
    {"skein_prefix_cache_hit_rate", "gauge", "Hits over lookups of the replica's prefix cache (0 before any)."},
    {"skein_replica_requests_total", "counter", "Requests the replica finished."},
    {"skein_replica_start_seconds", "gauge", "Seconds from the replica's start to accepting requests."},
};

static double metrics_rep_value(const metrics_replica *r, int k) {
    const uint64_t looked = r->prefix_hits + r->prefix_misses;
    switch (k) {
    case MR_QUEUED: return r->queued;
    case MR_RUNNING: return r->running;
    case MR_KV_USED: return r->kv_used;
    case MR_KV_TOTAL: return r->kv_total;
    case MR_HITS: return (double)r->prefix_hits;
    case MR_MISSES: return (double)r->prefix_misses;
    case MR_HIT_RATE: return looked ? (double)r->prefix_hits / (double)looked : 0.0;
    case MR_REQUESTS: return (double)r->requests;
    default: return r->start_s;
    }
}

char *metrics_render(const metrics_page *p, size_t *len) {
    metrics_text t = {.cap = 8192};
    if (!(t.b = mem_alloc(t.cap))) return NULL;
    t.b[0] = 0;
    metrics_family(&t, "skein_requests_total", "counter", "HTTP requests answered, by status.");
    for (int i = 0; i < p->n_status; i++)
        metrics_printf(&t, "skein_requests_total{status=\"%d\"} %llu\n", p->statuses[i], (unsigned long long)p->by_status[i]);
    for (int k = 0; k < MM_COUNT; k++) {
        metrics_family(&t, metrics_model_fam[k].name, metrics_model_fam[k].type, metrics_model_fam[k].help);
        for (int m = 0; m < p->n_models; m++)
            metrics_printf(&t, "%s{model=\"%s\"} %.9g\n", metrics_model_fam[k].name, p->models[m].name,
                           metrics_model_value(&p->models[m], k));
    }
    for (int k = 0; k < MR_COUNT; k++) {
        metrics_family(&t, metrics_rep_fam[k].name, metrics_rep_fam[k].type, metrics_rep_fam[k].help);
        for (int m = 0; m < p->n_models; m++)
            for (int r = 0; r < p->models[m].n_reps; r++)
                metrics_printf(&t, "%s{model=\"%s\",replica=\"%d\"} %.9g\n", metrics_rep_fam[k].name, p->models[m].name,
                               p->models[m].reps[r].id, metrics_rep_value(&p->models[m].reps[r], k));
    }
    static const struct { const char *name, *help; size_t off; } hists[] = {
        {"skein_time_to_first_token_seconds", "From a request's arrival to its first token.", offsetof(metrics_model, ttft)},
        {"skein_time_per_output_token_seconds", "A request's time per output token after the first.", offsetof(metrics_model, tpot)},
        {"skein_e2e_request_latency_seconds", "From a request's arrival to its last token.", offsetof(metrics_model, e2e)},
    };
    for (size_t k = 0; k < sizeof hists / sizeof *hists; k++) {
        metrics_family(&t, hists[k].name, "histogram", hists[k].help);
        for (int m = 0; m < p->n_models; m++)
            metrics_hist_write(&t, hists[k].name, p->models[m].name,
                               (const metrics_hist *)((const char *)&p->models[m] + hists[k].off));
    }
    static const struct { const char *name, *help; } gpu_fam[] = {
        {"skein_gpu_utilization_ratio", "Fraction of NVML's last sample period in which a kernel ran on the GPU."},
        {"skein_gpu_memory_used_bytes", "GPU memory in use (every process), from NVML."},
        {"skein_gpu_memory_total_bytes", "GPU memory in all, from NVML."},
    };
    for (int k = 0; k < 3 && p->n_gpus > 0; k++) {
        metrics_family(&t, gpu_fam[k].name, "gauge", gpu_fam[k].help);
        for (int g = 0; g < p->n_gpus; g++) {
            const nvml_gpu *d = &p->gpus[g];
            if (k == 0) metrics_printf(&t, "%s{gpu=\"%d\"} %.9g\n", gpu_fam[k].name, d->index, d->util);
            else metrics_printf(&t, "%s{gpu=\"%d\"} %llu\n", gpu_fam[k].name, d->index, k == 1 ? d->mem_used : d->mem_total);
        }
    }
    if (t.oom) { mem_free(t.b); return NULL; }
    *len = t.n;
    return t.b;
}
