/* sched: continuous batching. Each step it picks which sequences run and how many of their
 * tokens, within a per-step token budget: first the running sequences in the order they were
 * admitted (a decode is one token, an unfinished prefill its next chunk), then waiting ones in
 * arrival order (FCFS) while the budget lasts and fewer than max_seqs run. So prefill chunks
 * and decodes share one forward. A waiting sequence whose leading blocks a running one is
 * still computing waits for them (the prefix cache then gives them to it) and lets the ones
 * behind it go.
 *
 *   sched s;
 *   sched_init(&s, pool, 512, 64);
 *   sched_add(&s, seq);                      // a request: its tokens and an empty kv_seq
 *   int n = sched_schedule(&s);              // s.items[0..n): (seq, new tokens) this step
 *   ... one model_infer_batch over the items ...
 *   sched_advance(&s);                       // their tokens are computed: blocks committed
 *   sched_remove(&s, seq);                   // finished or cancelled: blocks freed at once
 *
 * Memory pressure: when a running sequence needs a block and none is free, the newest
 * running sequence is preempted -- its blocks released, its computed count reset to 0, and it
 * goes back to the front of the waiting queue, to be recomputed later (its prefix blocks may
 * still be cached, so recomputing is often cheap). Nothing is admitted in a step that
 * preempted. A sequence must fit the pool alone (the engine checks at admission), so the
 * oldest always progresses.
 *
 * The scheduler owns no sequence: sched_seq lives in the caller's request, and the tokens
 * array is the caller's (prompt then generated tokens). */
#ifndef SKEIN_SCHED_H
#define SKEIN_SCHED_H

#include "infer/kv.h"

typedef enum sched_state { SCHED_NEW, SCHED_WAITING, SCHED_RUNNING } sched_state;

typedef struct sched_seq {
    const int *tokens;       /* (n_tokens) prompt then generated, the caller's */
    int n_tokens;            /* tokens; the caller appends as it samples */
    int n_pending;           /* of them, the last ones whose values are not known yet (a step chose them on
                              * the device and the host has not read them): computed, never hashed */
    int n_computed;          /* positions whose keys and values are in the cache */
    kv_seq kv;               /* its blocks */
    sched_state state;
    int n_preempted;         /* times it was preempted */
} sched_seq;

/* One entry of a step: tokens n_computed..n_computed+n-1 of seq run. */
typedef struct sched_item {
    sched_seq *seq;
    int n;
} sched_item;

typedef struct sched {
    kv_pool *pool;
    int budget;              /* tokens per step */
    int max_seqs;            /* running at most */
    sched_seq **running;     /* (max_seqs) in admission order */
    int n_running;
    sched_seq **waiting;     /* (cap_waiting) in arrival order, preempted ones in front */
    int n_waiting, cap_waiting;
    sched_item *items;       /* (max_seqs) the last schedule */
    int n_items;
    uint64_t preemptions;
} sched;

/* A scheduler over pool with budget tokens per step and at most max_seqs running. */
sk_status sched_init(sched *s, kv_pool *pool, int budget, int max_seqs);
void sched_free(sched *s);
/* Queues seq (state SCHED_NEW, no blocks, n_computed 0) at the back of the waiting queue. */
sk_status sched_add(sched *s, sched_seq *seq);
/* Takes seq out of the scheduler, wherever it is, and releases its blocks at once. */
void sched_remove(sched *s, sched_seq *seq);
/* Plans the next step into s->items and returns how many (0: nothing to run). */
int sched_schedule(sched *s);
/* After the step ran (or was issued): advances each item's n_computed and commits its full
 * blocks of known tokens to the prefix cache (sched_commit). */
void sched_advance(sched *s);
/* Commits seq's full computed blocks whose tokens are all known (n_tokens - n_pending) to the
 * prefix cache; the caller calls it again once pending tokens became known. */
void sched_commit(sched *s, sched_seq *seq);

#endif
