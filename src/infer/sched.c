/* sched: continuous batching with chunked prefill, FCFS admission and preemption by
 * recomputation (see sched.h).
 *
 * Invariants: a sequence is in exactly one of running (state RUNNING) and waiting (WAITING),
 * or in neither (NEW: not added or removed); a waiting sequence holds no blocks except during
 * its own admission; a running one holds blocks for at least its n_computed positions. Items
 * name running sequences only. */
#include "infer/sched.h"

#include <string.h>

sk_status sched_init(sched *s, kv_pool *pool, int budget, int max_seqs) {
    memset(s, 0, sizeof *s);
    if (budget <= 0 || max_seqs <= 0)
        return sk_fail(SK_EARG, "scheduler: a step budget of %d tokens and %d sequences must be positive", budget,
                       max_seqs);
    s->pool = pool;
    s->budget = budget;
    s->max_seqs = max_seqs;
    s->running = mem_alloc(sizeof(sched_seq *) * (size_t)max_seqs);
    s->items = mem_alloc(sizeof(sched_item) * (size_t)max_seqs);
    if (!s->running || !s->items) {
        sched_free(s);
        return sk_fail(SK_ENOMEM, "allocating a scheduler for %d sequences", max_seqs);
    }
    return SK_OK;
}

void sched_free(sched *s) {
    mem_free(s->running);
    mem_free(s->waiting);
    mem_free(s->items);
    memset(s, 0, sizeof *s);
}

sk_status sched_add(sched *s, sched_seq *seq) {
    SK_ASSERT(seq->state == SCHED_NEW && seq->kv.n_blocks == 0 && seq->n_computed == 0 && seq->n_tokens > 0);
    if (s->n_waiting == s->cap_waiting) {
        int cap = s->cap_waiting ? 2 * s->cap_waiting : 64;
        sched_seq **w = mem_realloc(s->waiting, sizeof(sched_seq *) * (size_t)cap);
        if (!w) return sk_fail(SK_ENOMEM, "growing the waiting queue to %d requests", cap);
        s->waiting = w;
        s->cap_waiting = cap;
    }
    s->waiting[s->n_waiting++] = seq;
    seq->state = SCHED_WAITING;
    return SK_OK;
}

/* Removes entry i of list(n), keeping the order. */
static void sched_list_remove(sched_seq **list, int *n, int i) {
    memmove(list + i, list + i + 1, sizeof(sched_seq *) * (size_t)(*n - i - 1));
    (*n)--;
}

static int sched_find(sched_seq **list, int n, const sched_seq *seq) {
    for (int i = 0; i < n; i++)
        if (list[i] == seq) return i;
    return -1;
}

void sched_remove(sched *s, sched_seq *seq) {
    if (seq->state == SCHED_RUNNING) sched_list_remove(s->running, &s->n_running, sched_find(s->running, s->n_running, seq));
    if (seq->state == SCHED_WAITING) sched_list_remove(s->waiting, &s->n_waiting, sched_find(s->waiting, s->n_waiting, seq));
    for (int i = 0; i < s->n_items; i++)
        if (s->items[i].seq == seq) s->items[i--] = s->items[--s->n_items];
    kv_seq_release(s->pool, &seq->kv);
    seq->state = SCHED_NEW;
}

/* The newest running sequence goes back to the front of the waiting queue without blocks.
 * The queue has room: every sequence was added through it. */
static void sched_preempt(sched *s) {
    sched_seq *v = s->running[--s->n_running];
    kv_seq_release(s->pool, &v->kv);
    v->n_computed = 0;
    v->n_preempted++;
    v->state = SCHED_WAITING;
    memmove(s->waiting + 1, s->waiting, sizeof(sched_seq *) * (size_t)s->n_waiting);
    s->waiting[0] = v;
    s->n_waiting++;
    s->preemptions++;
}

/* Whether waiting seq had better wait a step: a running sequence has yet to compute whole
 * blocks of a prefix it shares with seq (equal tokens, as many blocks as the prefix cache
 * could give seq), which the cache hands seq once they are committed instead of seq computing
 * them again -- a call's several choices of one prompt, or a burst of requests with one
 * system prompt. Running sequences progress every step, so the wait ends. */
static bool sched_defers(const sched *s, const sched_seq *seq) {
    const int bs = kv_pool_block_size(s->pool);
    const int full = (seq->n_tokens - seq->n_pending - 1) / bs;   /* as kv_seq_match looks up */
    for (int i = 0; i < s->n_running && full > 0; i++) {
        const sched_seq *a = s->running[i];
        const int known = (a->n_tokens - a->n_pending) / bs, most = full < known ? full : known;
        if (a->n_computed >= most * bs || a->tokens[0] != seq->tokens[0]) continue;
        int shared = 0;
        for (size_t at = 0; shared < most && !memcmp(a->tokens + at, seq->tokens + at, sizeof(int) * (size_t)bs); at += bs)
            shared++;
        if (a->n_computed < shared * bs) return true;
    }
    return false;
}

int sched_schedule(sched *s) {
    int budget = s->budget;
    bool preempted = false;
    s->n_items = 0;
    for (int i = 0; i < s->n_running && budget > 0; i++) {
        sched_seq *seq = s->running[i];
        int n = seq->n_tokens - seq->n_computed;
        n = n < budget ? n : budget;
        if (n <= 0) continue;
        while (!kv_seq_reserve(s->pool, &seq->kv, seq->n_computed + n)) {
            preempted = true;
            sched_preempt(s);
            if (i >= s->n_running) { seq = NULL; break; }   /* it was the newest itself */
        }
        if (!seq) break;
        s->items[s->n_items++] = (sched_item){seq, n};
        budget -= n;
    }
    for (int w = 0; !preempted && budget > 0 && w < s->n_waiting && s->n_running < s->max_seqs;) {
        sched_seq *seq = s->waiting[w];
        if (sched_defers(s, seq)) {   /* the ones behind it may go */
            w++;
            continue;
        }
        seq->n_computed = kv_seq_match(s->pool, &seq->kv, seq->tokens, seq->n_tokens - seq->n_pending);
        int n = seq->n_tokens - seq->n_computed;
        n = n < budget ? n : budget;
        if (!kv_seq_reserve(s->pool, &seq->kv, seq->n_computed + n)) {
            kv_seq_release(s->pool, &seq->kv);
            seq->n_computed = 0;
            break;
        }
        sched_list_remove(s->waiting, &s->n_waiting, w);
        s->running[s->n_running++] = seq;
        seq->state = SCHED_RUNNING;
        s->items[s->n_items++] = (sched_item){seq, n};
        budget -= n;
    }
    return s->n_items;
}

void sched_commit(sched *s, sched_seq *seq) {
    const int known = seq->n_tokens - seq->n_pending;
    kv_seq_commit(s->pool, &seq->kv, seq->tokens, seq->n_computed < known ? seq->n_computed : known);
}

void sched_advance(sched *s) {
    for (int i = 0; i < s->n_items; i++) {
        sched_seq *seq = s->items[i].seq;
        seq->n_computed += s->items[i].n;
        sched_commit(s, seq);
    }
}
