/* metrics: the Prometheus page of skein serve (text format 0.0.4) and its histograms.
 *
 *   metrics_hist h;
 *   metrics_hist_init(&h, metrics_ttft_le, METRICS_TTFT_N);
 *   metrics_hist_observe(&h, 0.042);                  // seconds
 *   ...
 *   size_t n;
 *   char *text = metrics_render(&page, &n);           // mem_free it
 *
 * A histogram keeps a count per bucket and renders Prometheus's cumulative form:
 * NAME_bucket{...,le="B"} for each bound B ascending, then le="+Inf" (equal to NAME_count),
 * NAME_sum and NAME_count. The page is a snapshot (metrics_model, metrics_replica: plain
 * values copied under their owners' locks), so rendering takes no lock. Each family's "# HELP"
 * and "# TYPE" lines come once, followed by all its samples (every model, every replica),
 * as the format requires. Labels: model="NAME" on every per-model family, and replica="ID"
 * too on the per-replica ones; gpu="INDEX" on the GPU families, which are absent without GPUs. Not thread-safe: the owner of a histogram guards it. */
#ifndef SKEIN_METRICS_H
#define SKEIN_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "serve/nvml.h"

#define METRICS_MAX_LE 24   /* bounds per histogram at most */

typedef struct metrics_hist {
    const double *le;                  /* (n_le) upper bounds, ascending */
    int n_le;
    uint64_t n[METRICS_MAX_LE + 1];    /* (n_le + 1) observations per bucket; the last: above every bound */
    uint64_t count;
    double sum;
} metrics_hist;

/* Bounds in seconds (vLLM's ranges): time to first token, time per output token, end to end. */
extern const double metrics_ttft_le[], metrics_tpot_le[], metrics_e2e_le[];
extern const int METRICS_TTFT_N, METRICS_TPOT_N, METRICS_E2E_N;

/* An empty histogram over le(n_le) (not copied; n_le <= METRICS_MAX_LE, asserted). */
void metrics_hist_init(metrics_hist *h, const double *le, int n_le);
void metrics_hist_observe(metrics_hist *h, double v);

/* One replica as the page shows it. */
typedef struct metrics_replica {
    int id;
    int running, queued;             /* sequences in its engine's batch; requests waiting for it */
    int kv_used, kv_total;           /* KV blocks held by sequences; in its pool */
    uint64_t prefix_hits, prefix_misses;   /* full prompt blocks found / not found in its cache */
    uint64_t requests;               /* requests it finished successfully */
    double start_s;                  /* from its start to accepting requests (0: not up yet) */
} metrics_replica;

/* One model (a router) as the page shows it; reps is the snapshot's. */
typedef struct metrics_model {
    const char *name;
    int replicas_up, replicas_target, pending;   /* pending: requests waiting for any replica */
    uint64_t prompt_tokens, generation_tokens, failures;
    metrics_hist ttft, tpot, e2e;
    const metrics_replica *reps;
    int n_reps;
} metrics_model;

typedef struct metrics_page {
    const int *statuses;             /* (n_status) HTTP statuses counted */
    const uint64_t *by_status;       /* (n_status) requests answered with each */
    int n_status;
    const metrics_model *models;
    int n_models;
    const nvml_gpu *gpus;            /* (n_gpus) where a model runs on GPUs and NVML answers; else none */
    int n_gpus;
} metrics_page;

/* The page as text (NUL-terminated, *len bytes; mem_free it), or NULL when out of memory. */
char *metrics_render(const metrics_page *p, size_t *len);

#endif
