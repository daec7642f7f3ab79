/* engine: requests, the step loop and its batch assembly (see engine.h).
 *
 * A step: sched_schedule picks (sequence, chunk) items; each item's tokens become rows of one
 * flat batch with their own positions and slots (slot = table[pos / BS] * BS + pos % BS),
 * every item's last row asks for logits; one model_infer_batch; one copy back: the (R,V)
 * logits, or, when every row that samples needs only its logits (engine_choose), the R ids
 * the device chose (argmax_rows, sample_rows; the GPU keeps the logits); sched_advance
 * commits the computed blocks; sequences whose every known token is now computed sample their
 * next token. A step is a flight (engine_issue, engine_collect): read at once, or, with overlap
 * (engine.h), by the next engine_step after it issued the following flight. The two flights'
 * batch arrays (pinned) and the host logits are planned in engine_create for max_batch_tokens
 * rows and max_seqs sequences, so a step allocates nothing (a decode step replayed as a graph
 * runs over the same arrays, padded: engine_forward).
 *
 * Invariants: live holds every request not yet reported finished, in arrival order; a
 * request's sched_seq is its first member, so a scheduler item leads back to its request;
 * tokens has room for the prompt plus max_tokens. */
#include "infer/engine.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"

/* Tensor parallelism: rank 0's engine drives engine_follow on the other ranks with messages
 * broadcast over m->tp.comm: a header of TP_HEADER ints, its kind first, and after a step's
 * header the step's arrays (engine_tp_pack's order). */
enum { TP_START = 1, TP_STEP, TP_IDLE, TP_END, TP_STATS, TP_STOP };
enum { TP_HEADER = 7 };
/* Decode batch sizes replayed as graphs (engine.h). */
static const int engine_graph_sizes[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
#define ENGINE_GRAPHS (int)(sizeof engine_graph_sizes / sizeof engine_graph_sizes[0])

/* An idle rank 0 says it is alive this often (engine_heartbeat). */
#define ENGINE_TP_IDLE_S 1.0

typedef struct engine_req {
    sched_seq seq;           /* first: items point here */
    int id;
    int *tokens;             /* (cap) prompt then generated; a token not yet read: -(its row in the ids) - 1 */
    int n_prompt, n_gen;
    engine_params p;
    rng r;
    int flights;             /* steps issued and not yet read in which it samples (0..2) */
    bool dead;               /* finished or cancelled while in flight: freed when its last flight is read */
} engine_req;

/* A step issued whose chosen ids are read later (engine.h: overlap): the requests that sample
 * in it, each with its row of the ids, and the host copy of the ids the step leaves. */
typedef struct engine_flight {
    engine_req **reqs;       /* (max_seqs) */
    int *rows;               /* (max_seqs) their rows of the step's logits and ids */
    int n;
    int how;                 /* engine_choice: where the tokens are chosen */
    int64_t ld;              /* with CHOOSE_HOST: the logits' row stride */
    int *ids;                /* (max_seqs) pinned host: the step's ids once ev has passed */
    backend_event *ev;       /* recorded after the ids' copy */
    int *arrays;             /* pinned host, engine_tp_ints: the step's batch arrays (engine.tokens, ...
                              * point into the flight being issued) */
    backend_sample_row *draw;   /* (max_seqs) pinned host, with rows_dev: sample_rows' options */
} engine_flight;

struct engine {
    model *m;
    engine_opts o;
    int max_blocks;          /* per sequence: ceil(max_ctx / block_size) */
    kv_pool *pool;
    sched s;
    sampler smp;
    engine_req **live;       /* (cap_live) */
    int n_live, cap_live;
    int next_id;
    engine_output *cancelled;   /* (cap_live) cancellations to report */
    int n_cancelled;
    /* the step's batch, planned once: the arrays of the flight being issued (pinned: copied in
     * stream order while the previous flight runs) */
    int *tokens, *pos, *slot;   /* (max_batch_tokens) */
    int *seq, *tables, *out_rows;   /* (max_seqs, 3), (max_seqs, max_blocks), (max_seqs) */
    float *logits;           /* (max_seqs, Vp) host: the rows as the model leaves them (model.h) */
    int *ids_dev;            /* (max_seqs) backend memory: argmax_rows' answer (NULL without the op) */
    engine_flight fl[2];     /* the last two steps issued */
    int cur;                 /* fl[cur]: the last step issued */
    bool pend;               /* fl[cur]'s step is issued and its ids not yet read (overlap) */
    bool overlap;            /* the next step may be issued on the device's ids of the pending one */
    int n_host_sampled;      /* live requests whose tokens the host chooses (engine_host_chooses): while any
                              * is, no step is issued before the previous one is read */
    backend_sample_row *rows_dev;   /* (max_seqs) backend memory: sample_rows' options (NULL: host sampling) */
    engine_output *outs;     /* (max_seqs + cap_live) */
    /* decode steps as graphs (engine.h), by size index of engine_graph_sizes */
    bool graphs;             /* the backend records them and o.eager is off */
    bool warm[ENGINE_GRAPHS];       /* a step of that size ran eagerly */
    backend_graph *graph[ENGINE_GRAPHS];   /* NULL until recorded */
    tensor graph_out[ENGINE_GRAPHS];       /* the logits each recorded step leaves */
    unsigned graph_epoch;    /* model_infer_epoch of the recordings */
    /* a split model's rank 0 (model_tp) */
    int *tp_msg;             /* engine_tp_ints(o, max_blocks): a step's arrays, packed */
    double step_s, wait_s;   /* engine_times */
    bool tp_started;         /* the other ranks follow this engine */
    double tp_sent;          /* time_now() of the last message */
};

/* Ints of the arrays of a step of at most o's batch (tokens, positions, slots, sequences,
 * tables, rows out). */
static size_t engine_tp_ints(const engine_opts *o, int max_blocks) {
    const size_t N = (size_t)o->max_batch_tokens, S = (size_t)o->max_seqs;
    return 3 * N + 4 * S + S * (size_t)max_blocks;
}

/* Broadcasts a message from rank 0: header h, then n ints of payload p (n may be 0). */
static sk_status engine_tp_send(const model *m, int *h, int *p, size_t n) {
    SK_TRY(comm_broadcast(m->tp.comm, h, sizeof(int) * TP_HEADER, 0));
    return n ? comm_broadcast(m->tp.comm, p, sizeof(int) * n, 0) : SK_OK;
}

/* Sends the kind-only message k from rank 0 of a split model (nothing otherwise). */
static sk_status engine_tp_say(const model *m, int k) {
    int h[TP_HEADER] = {k};
    return m->tp.size > 1 && m->tp.rank == 0 ? engine_tp_send(m, h, NULL, 0) : SK_OK;
}

/* Packs b into dst in engine_tp_ints' order; returns the ints written. */
static size_t engine_tp_pack(const model_batch *b, int *dst) {
    const size_t N = (size_t)b->n_tokens, S = (size_t)b->n_seqs, T = S * (size_t)b->max_blocks, R = (size_t)b->n_out;
    const struct { const int *p; size_t n; } parts[] = {
        {b->tokens, N}, {b->pos, N}, {b->slot, N}, {b->seq, 3 * S}, {b->tables, T}, {b->out_rows, R},
    };
    size_t k = 0;
    for (int i = 0; i < 6; i++) {
        memcpy(dst + k, parts[i].p, sizeof(int) * parts[i].n);
        k += parts[i].n;
    }
    return k;
}

engine_opts engine_opts_default(void) {
    const char *g = getenv("SKEIN_CUDA_GRAPHS");
    return (engine_opts){.kv_dtype = KV_DTYPE_AUTO, .block_size = KV_BLOCK_SIZE, .max_batch_tokens = 512,
                         .max_seqs = 64, .eager = g && !strcmp(g, "0")};
}

static void engine_req_free(engine_req *r);

/* Frees every recorded step (the workspace moved, or the engine ends). */
static void engine_graphs_free(engine *e) {
    for (int k = 0; k < ENGINE_GRAPHS; k++) {
        if (e->graph[k]) e->m->be->ops->graph_free(e->m->be, e->graph[k]);
        e->graph[k] = NULL;
        e->warm[k] = false;
    }
    e->graph_epoch = model_infer_epoch(e->m);
}

engine_params engine_params_default(void) {
    return (engine_params){.max_tokens = 16, .sample = {.temperature = 0, .top_p = 1.0f}};
}

void engine_free(engine *e) {
    if (!e) return;
    if (e->tp_started && model_step_status(e->m) == SK_OK) engine_tp_say(e->m, TP_END);   /* failing: nobody listens */
    if (e->graphs) engine_graphs_free(e);
    mem_free(e->tp_msg);
    if (e->pend) {   /* its dead requests are in no list but its own */
        engine_flight *f = &e->fl[e->cur];
        e->m->be->ops->event_synchronize(e->m->be, f->ev);
        for (int k = 0; k < f->n; k++)
            if (--f->reqs[k]->flights == 0 && f->reqs[k]->dead) engine_req_free(f->reqs[k]);
    }
    for (int i = 0; i < e->n_live; i++) {
        kv_seq_release(e->pool, &e->live[i]->seq.kv);
        engine_req_free(e->live[i]);
    }
    mem_free(e->live);
    mem_free(e->cancelled);
    sched_free(&e->s);
    sampler_free(&e->smp);
    kv_pool_free(e->pool);
    mem_free(e->logits);
    if (e->ids_dev) backend_mem_free(e->m->be, e->ids_dev);
    if (e->rows_dev) backend_mem_free(e->m->be, e->rows_dev);
    for (int k = 0; k < 2; k++) {
        engine_flight *f = &e->fl[k];
        mem_free(f->reqs);
        mem_free(f->rows);
        backend_pinned_free(e->m->be, f->ids);
        backend_pinned_free(e->m->be, f->arrays);
        backend_pinned_free(e->m->be, f->draw);
        if (f->ev) e->m->be->ops->event_free(e->m->be, f->ev);
    }
    mem_free(e->outs);
    mem_free(e);
}

/* Room for n live requests (and as many pending cancellations and outputs). */
static sk_status engine_grow(engine *e, int n) {
    if (n <= e->cap_live) return SK_OK;
    int cap = e->cap_live ? 2 * e->cap_live : 64;
    while (cap < n) cap *= 2;
    engine_req **live = mem_realloc(e->live, sizeof(engine_req *) * (size_t)cap);
    if (live) e->live = live;
    engine_output *c = mem_realloc(e->cancelled, sizeof(engine_output) * (size_t)cap);
    if (c) e->cancelled = c;
    engine_output *outs = mem_realloc(e->outs, sizeof(engine_output) * (size_t)(cap + e->o.max_seqs));
    if (outs) e->outs = outs;
    if (!live || !c || !outs) return sk_fail(SK_ENOMEM, "growing the engine to %d requests", cap);
    e->cap_live = cap;
    return SK_OK;
}

/* Points the batch arrays (engine.tokens, ...) at flight k's, in engine_tp_pack's order. */
static void engine_use_arrays(engine *e, int k) {
    const size_t N = (size_t)e->o.max_batch_tokens, S = (size_t)e->o.max_seqs;
    int *p = e->fl[k].arrays;
    e->tokens = p;
    e->pos = p + N;
    e->slot = p + 2 * N;
    e->seq = p + 3 * N;
    e->tables = p + 3 * N + 3 * S;
    e->out_rows = p + 3 * N + 3 * S + S * (size_t)e->max_blocks;
}

sk_status engine_create(model *m, const engine_opts *o, engine **out) {
    *out = NULL;
    engine_opts d = *o;
    const model_config *c = &m->cfg;
    if (d.block_size <= 0) d.block_size = KV_BLOCK_SIZE;
    if (d.max_ctx <= 0 || d.max_ctx > c->n_positions) d.max_ctx = c->n_positions;
    if (d.max_batch_tokens <= 0 || d.max_seqs <= 0 || d.max_seqs > 1 << 16 || d.max_batch_tokens > 1 << 20)
        return sk_fail(SK_EARG, "engine: %d tokens per step and %d sequences: each must be in 1..65536", d.max_batch_tokens,
                       d.max_seqs);
    dtype kdt;
    SK_TRY(kv_dtype_resolve(m, d.kv_dtype, &kdt));
    engine *e = mem_calloc(sizeof *e);
    if (!e) return SK_ENOMEM;
    e->m = m;
    e->o = d;
    e->max_blocks = (d.max_ctx + d.block_size - 1) / d.block_size;
    const size_t per_block = kv_block_bytes(m, kdt, d.block_size);
    size_t bytes = d.kv_blocks > 0 ? (size_t)d.kv_blocks * per_block
                   : d.kv_bytes ? d.kv_bytes : (size_t)d.max_seqs * (size_t)e->max_blocks * per_block;
    const size_t N = (size_t)d.max_batch_tokens, S = (size_t)d.max_seqs;
    sk_status st;
    if ((st = kv_pool_init(m, kdt, bytes, d.block_size, &e->pool)) ||
        (st = sched_init(&e->s, e->pool, d.max_batch_tokens, d.max_seqs)) ||
        (st = sampler_init(&e->smp, c->vocab_size)) ||
        (st = model_infer_prepare(m, d.max_batch_tokens, d.max_seqs, d.max_ctx)) || (st = engine_grow(e, 64)))
        goto err;
    e->logits = mem_alloc(sizeof(float) * S * (size_t)model_logits_ld(m));
    if (m->be->ops->argmax_rows && !(e->ids_dev = backend_alloc(m->be, sizeof(int) * S))) {
        st = SK_ENOMEM;
        goto err;
    }
    /* a device samples for itself (the CPU keeps each request's own generator: sample.h) */
    if (m->be->ops->sample_rows && e->ids_dev && !m->be->host_memory &&
        !(e->rows_dev = backend_alloc(m->be, sizeof(backend_sample_row) * S))) {
        st = SK_ENOMEM;
        goto err;
    }
    for (int k = 0; k < 2; k++) {
        engine_flight *f = &e->fl[k];
        if (!(f->reqs = mem_alloc(sizeof(engine_req *) * S)) || !(f->rows = mem_alloc(sizeof(int) * S)) ||
            !(f->ids = backend_alloc_pinned(m->be, sizeof(int) * S)) || !(f->ev = m->be->ops->event_create(m->be)) ||
            !(f->arrays = backend_alloc_pinned(m->be, sizeof(int) * engine_tp_ints(&d, e->max_blocks))) ||
            (e->rows_dev && !(f->draw = backend_alloc_pinned(m->be, sizeof(backend_sample_row) * S)))) {
            st = sk_fail_ctx(SK_ENOMEM, "allocating the engine's batch of %zu tokens, %zu sequences", N, S);
            goto err;
        }
    }
    engine_use_arrays(e, 0);
    const char *ov = getenv("SKEIN_ENGINE_OVERLAP");
    /* on a device (the host's compute would only be late for it: a step computes as it is issued) */
    e->overlap = e->ids_dev && m->be->ops->resolve_ids && m->tp.size == 1 &&
                 (ov && *ov ? strcmp(ov, "0") != 0 : !m->be->host_memory);
    if (m->tp.size > 1) e->tp_msg = mem_alloc(sizeof(int) * engine_tp_ints(&d, e->max_blocks));
    if (!e->logits || (m->tp.size > 1 && !e->tp_msg)) {
        st = sk_fail(SK_ENOMEM, "allocating the engine's batch of %zu tokens, %zu sequences", N, S);
        goto err;
    }
    e->graphs = !d.eager && m->tp.size == 1 && m->be->ops->graph_begin;
    e->graph_epoch = model_infer_epoch(m);
    if (m->tp.size > 1) {   /* the other ranks make the same pool and workspace */
        int h[TP_HEADER] = {TP_START, kv_pool_blocks(e->pool), d.block_size, d.max_batch_tokens, d.max_seqs, d.max_ctx,
                            (int)kdt};
        if ((st = engine_tp_send(m, h, NULL, 0))) goto err;
        e->tp_started = true;
        e->tp_sent = time_now();
    }
    *out = e;
    return SK_OK;
err:
    engine_free(e);
    return st;
}

/* Whether request r's next token needs nothing but its logits row as given (no penalties,
 * no log-probabilities), so the device can choose it: sample_rows draws it, and argmax_rows
 * finds it when it is greedy too (engine_plain_greedy), with the answer sampler_next would
 * give (greedy draws nothing from the generator). */
static bool engine_plain(const engine_req *r) {
    const sample_opts *o = &r->p.sample;
    return (o->repetition_penalty == 0 || o->repetition_penalty == 1) && o->presence_penalty == 0 &&
           o->frequency_penalty == 0 && !r->p.logprobs && r->p.n_logprobs == 0;
}
static bool engine_plain_greedy(const engine_req *r) { return engine_plain(r) && r->p.sample.temperature <= 0; }

/* Whether a step with r in it has its tokens chosen on the host (engine_choose: a device
 * chooses when every row is plain, and greedy where it has no sample_rows). */
static bool engine_host_chooses(const engine *e, const engine_req *r) {
    return !(e->rows_dev ? engine_plain(r) : engine_plain_greedy(r));
}

static void engine_req_free(engine_req *r) {
    kv_seq_free(&r->seq.kv);
    mem_free(r->tokens);
    mem_free(r);
}

sk_status engine_add_request(engine *e, const int *prompt, int n, const engine_params *p, int *id) {
    const model_config *c = &e->m->cfg;
    const int max_ctx = e->o.max_ctx, bs = e->o.block_size;
    if (n <= 0) return sk_fail(SK_EARG, "engine: the prompt is empty");
    if (n >= max_ctx) return sk_fail(SK_EARG, "engine: the prompt has %d tokens; the context is %d", n, max_ctx);
    if (p->max_tokens <= 0 || p->max_tokens > 1 << 24 || p->n_stop_ids < 0 || p->n_stop_ids > ENGINE_MAX_STOP)
        return sk_fail(SK_EARG, "engine: max_tokens %d (1..2^24) or %d stop ids (at most %d)", p->max_tokens,
                       p->n_stop_ids, ENGINE_MAX_STOP);
    if (p->n_logprobs < 0 || p->n_logprobs > ENGINE_MAX_LOGPROBS || p->n_logprobs > c->vocab_size)
        return sk_fail(SK_EARG, "engine: n_logprobs %d is outside 0..%d", p->n_logprobs, ENGINE_MAX_LOGPROBS);
    for (int i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab_size)
            return sk_fail(SK_EARG, "engine: prompt token %d is outside the vocabulary of %d", prompt[i], c->vocab_size);
    /* positions it may compute: the prompt and every generated token but the last */
    const long positions = (long)n + p->max_tokens - 1 < max_ctx ? (long)n + p->max_tokens - 1 : max_ctx;
    if ((positions + bs - 1) / bs > kv_pool_blocks(e->pool))
        return sk_fail(SK_EARG, "engine: a request of %ld positions needs %ld blocks of %d tokens; the KV pool has %d "
                       "(raise --kv-memory)", positions, (positions + bs - 1) / bs, bs, kv_pool_blocks(e->pool));
    SK_TRY(engine_grow(e, e->n_live + 1));
    engine_req *r = mem_calloc(sizeof *r);
    const size_t cap = (size_t)n + (size_t)p->max_tokens;
    if (!r || !(r->tokens = mem_alloc(sizeof(int) * cap)) || kv_seq_init(&r->seq.kv, e->max_blocks) != SK_OK) {
        if (r) mem_free(r->tokens);
        mem_free(r);
        return sk_fail(SK_ENOMEM, "engine: allocating a request of %zu tokens", cap);
    }
    memcpy(r->tokens, prompt, sizeof(int) * (size_t)n);
    r->id = e->next_id++;
    r->n_prompt = n;
    r->p = *p;
    rng_seed(&r->r, p->seed);
    r->seq.tokens = r->tokens;
    r->seq.n_tokens = n;
    sk_status st = sched_add(&e->s, &r->seq);
    if (st != SK_OK) {
        kv_seq_free(&r->seq.kv);
        mem_free(r->tokens);
        mem_free(r);
        return st;
    }
    e->live[e->n_live++] = r;
    e->n_host_sampled += engine_host_chooses(e, r);
    *id = r->id;
    return SK_OK;
}

static int engine_find(const engine *e, int id) {
    for (int i = 0; i < e->n_live; i++)
        if (e->live[i]->id == id) return i;
    return -1;
}

/* Takes live request i out of the scheduler (its blocks freed at once) and frees it, or, while
 * a step in flight names it, marks it dead for that step's reading to free. */
static void engine_retire(engine *e, int i) {
    engine_req *r = e->live[i];
    sched_remove(&e->s, &r->seq);
    e->n_host_sampled -= engine_host_chooses(e, r);
    memmove(e->live + i, e->live + i + 1, sizeof(engine_req *) * (size_t)(e->n_live - i - 1));
    e->n_live--;
    if (r->flights) r->dead = true;
    else engine_req_free(r);
}

bool engine_cancel(engine *e, int id) {
    int i = engine_find(e, id);
    if (i < 0) return false;
    engine_retire(e, i);
    e->cancelled[e->n_cancelled++] = (engine_output){.id = id, .token = -1, .finish = "cancelled"};
    return true;
}

bool engine_has_work(const engine *e) { return e->n_live > 0 || e->n_cancelled > 0 || e->pend; }

const int *engine_tokens(const engine *e, int id, int *n, int *n_prompt) {
    int i = engine_find(e, id);
    if (i < 0) return NULL;
    *n = e->live[i]->seq.n_tokens - e->live[i]->seq.n_pending;   /* a token not yet read is not shown */
    *n_prompt = e->live[i]->n_prompt;
    return e->live[i]->tokens;
}

const kv_pool *engine_pool(const engine *e) { return e->pool; }
void engine_counts(const engine *e, int *waiting, int *running) {
    *waiting = e->s.n_waiting;
    *running = e->s.n_running;
}

uint64_t engine_preemptions(const engine *e) { return e->s.preemptions; }

void engine_times(const engine *e, double *step_s, double *wait_s) {
    *step_s = e->step_s;
    *wait_s = e->wait_s;
}

/* Fills the batch arrays from the schedule: rows of each item in order, its last row's
 * logits asked for. */
static model_batch engine_batch(engine *e) {
    const int bs = e->o.block_size, MB = e->max_blocks;
    int row = 0;
    for (int i = 0; i < e->s.n_items; i++) {
        const sched_seq *q = e->s.items[i].seq;
        const int n = e->s.items[i].n;
        e->seq[3 * i] = row;
        e->seq[3 * i + 1] = n;
        e->seq[3 * i + 2] = q->n_computed + n;
        memcpy(e->tables + (size_t)i * MB, q->kv.table, sizeof(int) * (size_t)q->kv.n_blocks);
        for (int t = 0; t < n; t++, row++) {
            const int p = q->n_computed + t;
            e->tokens[row] = q->tokens[p];
            e->pos[row] = p;
            e->slot[row] = q->kv.table[p / bs] * bs + p % bs;
        }
        e->out_rows[i] = row - 1;
    }
    return (model_batch){row, e->tokens, e->pos, e->slot, e->s.n_items, e->seq, e->tables, MB, e->s.n_items, e->out_rows, NULL, 0, e->m->tp.size == 1};
}

/* The index into engine_graph_sizes of the size a step of b runs as, or -1: eagerly (graphs
 * off, a prefill chunk in it, or larger than every size the workspace holds). */
static int engine_graph_size(const engine *e, const model_batch *b) {
    if (!e->graphs || b->n_tokens != b->n_seqs) return -1;
    for (int k = 0; k < ENGINE_GRAPHS; k++) {
        const int B = engine_graph_sizes[k];
        if (B > e->o.max_seqs || B > e->o.max_batch_tokens) return -1;
        if (B >= b->n_seqs) return k;
    }
    return -1;
}

/* Pads the decode batch b (one row per sequence, the batch arrays' front) to B rows with
 * padding rows (model_batch): token 0 at position 0, slot -1, its own sequence over block 0. */
static model_batch engine_pad(engine *e, const model_batch *b, int B) {
    for (int r = b->n_seqs; r < B; r++) {
        e->tokens[r] = e->pos[r] = 0;
        e->slot[r] = -1;
        e->seq[3 * r] = r;
        e->seq[3 * r + 1] = e->seq[3 * r + 2] = 1;
        e->tables[(size_t)r * e->max_blocks] = 0;
        e->out_rows[r] = r;
    }
    model_batch p = *b;
    p.n_tokens = p.n_seqs = p.n_out = B;
    return p;
}

/* One forward over b: recorded, replayed or issued (engine.h's graphs). */
static tensor engine_forward(engine *e, const model_kv_cache *cache, const model_batch *b) {
    const int k = engine_graph_size(e, b);
    if (k < 0) return model_infer_batch(e->m, cache, b);
    model *m = e->m;
    backend *be = m->be;
    const model_batch p = engine_pad(e, b, engine_graph_sizes[k]);
    model_infer_upload(m, cache, &p);
    if (e->graph_epoch != model_infer_epoch(m)) engine_graphs_free(e);   /* another engine grew the workspace */
    if (e->graph[k]) {
        be->ops->graph_launch(be, e->graph[k], NULL);
        return e->graph_out[k];
    }
    if (!e->warm[k]) {
        e->warm[k] = true;
        return model_infer_compute(m, cache, &p);
    }
    be->ops->graph_begin(be, NULL);
    const tensor lg = model_infer_compute(m, cache, &p);
    if (!(e->graph[k] = be->ops->graph_end(be, NULL))) {
        log_warn("engine: steps run without graphs: %s", sk_errmsg());
        e->graphs = false;
        return model_infer_compute(m, cache, &p);
    }
    e->graph_out[k] = lg;
    be->ops->graph_launch(be, e->graph[k], NULL);
    return lg;
}

/* How the step's tokens are chosen: on the host from the downloaded logits rows, or on the
 * device (only the ids come back) by argmax_rows (every row that samples is plain greedy) or
 * by sample_rows (every one is plain and the engine has the device's options). Rows of
 * prefill chunks that sample nothing do not count. */
typedef enum engine_choice { CHOOSE_HOST, CHOOSE_ARGMAX, CHOOSE_DRAW } engine_choice;

static engine_choice engine_choose(const engine *e) {
    bool greedy = e->ids_dev != NULL, plain = e->rows_dev != NULL;
    for (int i = 0; i < e->s.n_items && (greedy || plain); i++) {
        const engine_req *r = (const engine_req *)e->s.items[i].seq;
        if (e->s.items[i].seq->n_computed + e->s.items[i].n < r->seq.n_tokens) continue;   /* more to come */
        greedy = greedy && engine_plain_greedy(r);
        plain = plain && engine_plain(r);
    }
    return greedy ? CHOOSE_ARGMAX : plain ? CHOOSE_DRAW : CHOOSE_HOST;
}

/* Fills and uploads sample_rows' options for the R rows of the step's logits: item i's
 * request draws its token number n_gen with its seed; other rows take the argmax. */
static void engine_rows_upload(engine *e, int R) {
    backend_sample_row *rows = e->fl[e->cur].draw;
    memset(rows, 0, sizeof(backend_sample_row) * (size_t)R);
    for (int i = 0; i < e->s.n_items; i++) {
        const engine_req *r = (const engine_req *)e->s.items[i].seq;
        const sample_opts *o = &r->p.sample;
        rows[i] = (backend_sample_row){o->temperature, o->min_p, o->top_p > 0 ? o->top_p : 1.0f, o->top_k,
                                          r->p.seed, (uint64_t)(r->n_gen + r->seq.n_pending)};
    }
    e->m->be->ops->copy(e->m->be, e->rows_dev, rows, sizeof(backend_sample_row) * (size_t)R, COPY_HOST_TO_DEVICE, NULL);
}

/* Request r's next token tok (the device's choice, or sampled by engine_sample) taken, its
 * output o completed: a stop id ends it (not output; the unread placeholder engine_speculate
 * appended for it is dropped), else tok is appended (or replaces that placeholder) and the
 * blocks now wholly known are committed (sched_commit); max_tokens and the context end it. */
static engine_output engine_take(engine *e, engine_req *r, int tok, engine_output o) {
    const int unread = r->seq.n_pending;
    r->seq.n_pending = 0;
    for (int i = 0; i < r->p.n_stop_ids; i++)
        if (tok == r->p.stop_ids[i]) o.finish = "stop";
    if (o.finish) {
        r->seq.n_tokens -= unread;
        return o;
    }
    o.token = tok;
    if (unread) r->tokens[r->seq.n_tokens - 1] = tok;
    else r->tokens[r->seq.n_tokens++] = tok;
    r->n_gen++;
    sched_commit(&e->s, &r->seq);
    if (r->n_gen >= r->p.max_tokens || r->seq.n_tokens > e->o.max_ctx) o.finish = "length";
    return o;
}

/* Request r's next token sampled on the host from its logits row; returns its output. */
static engine_output engine_sample(engine *e, engine_req *r, float *logits) {
    engine_output o = {.id = r->id, .token = -1};
    const bool lp = r->p.logprobs || r->p.n_logprobs > 0;
    const int tok = sampler_next(&e->smp, logits, &r->p.sample, &r->r, r->tokens, r->seq.n_tokens, r->n_prompt,
                                 lp ? &o.logprob : NULL);
    o = engine_take(e, r, tok, o);
    if (o.token >= 0 && r->p.n_logprobs > 0) {
        o.n_top = r->p.n_logprobs;
        sampler_top(&e->smp, o.n_top, o.top_ids, o.top_logprobs);
    }
    return o;
}

/* Overlap: before the step in flight f is read, each of its requests that goes on (not ended
 * by max_tokens or the context, which the host knows; a stop id it cannot know) gets its next
 * token as a placeholder, -(its row in f's ids) - 1, which the next step's model_batch
 * resolves on the device (token_src) and engine_take replaces once read. */
static void engine_speculate(engine *e, const engine_flight *f) {
    for (int k = 0; k < f->n; k++) {
        engine_req *r = f->reqs[k];
        if (r->dead || r->n_gen + 1 >= r->p.max_tokens || r->seq.n_tokens + 1 > e->o.max_ctx) continue;
        r->tokens[r->seq.n_tokens++] = -f->rows[k] - 1;
        r->seq.n_pending = 1;
    }
}

/* Issues the scheduled step (sched_schedule gave items) as the next flight, fl[cur]: its
 * forward (tokens not yet read resolved from ids_dev when spec), the device's choice of ids
 * where every row that samples allows it (engine_choose), and the copy of what the host reads
 * (the ids into fl[cur].ids, else the logits), fl[cur].ev recorded after it; fl[cur] lists the
 * requests that sample. The step is pending (read later, by the next engine_step) with overlap
 * and the ids on the device. */
static sk_status engine_issue(engine *e, bool spec) {
    engine_use_arrays(e, e->cur ^ 1);
    model_batch b = engine_batch(e);
    if (spec) {
        b.token_src = e->ids_dev;
        b.n_token_src = e->o.max_seqs;
    }
    const model_kv_cache cache = kv_pool_cache(e->pool);
    if (e->tp_started) {   /* the other ranks run the same batch */
        int h[TP_HEADER] = {TP_STEP, b.n_tokens, b.n_seqs, b.max_blocks, b.n_out};
        SK_TRY(engine_tp_send(e->m, h, e->tp_msg, engine_tp_pack(&b, e->tp_msg)));
        e->tp_sent = time_now();
    }
    tensor lg = engine_forward(e, &cache, &b);
    SK_TRY(model_step_status(e->m));
    e->cur ^= 1;
    engine_flight *f = &e->fl[e->cur];
    f->how = engine_choose(e);
    f->ld = lg.stride[0];
    f->n = 0;
    for (int i = 0; i < e->s.n_items; i++) {   /* the rows that sample: no prefill chunk with more to come */
        engine_req *r = (engine_req *)e->s.items[i].seq;
        if (r->seq.n_computed + e->s.items[i].n < r->seq.n_tokens) continue;
        f->reqs[f->n] = r;
        f->rows[f->n++] = i;
        r->flights++;
    }
    sched_advance(&e->s);
    backend *be = e->m->be;
    if (f->how != CHOOSE_HOST) {
        tensor ids = tensor_1d(e->ids_dev, DT_I32, lg.shape[0]);
        if (f->how == CHOOSE_ARGMAX) {
            be->ops->argmax_rows(be, NULL, ids, lg);
        } else {
            engine_rows_upload(e, (int)lg.shape[0]);
            be->ops->sample_rows(be, NULL, ids, lg, e->rows_dev);
        }
        be->ops->copy(be, f->ids, e->ids_dev, tensor_bytes(ids), COPY_DEVICE_TO_HOST, NULL);
    } else {
        be->ops->copy(be, e->logits, lg.data, tensor_bytes(lg), COPY_DEVICE_TO_HOST, NULL);
    }
    be->ops->event_record(be, f->ev, NULL);
    e->pend = e->overlap && f->how != CHOOSE_HOST;
    return SK_OK;
}

/* Reads flight f (waits for its copy): each live request that sampled in it takes its token
 * (dead ones are freed once no flight names them); outputs go to e->outs from n on; finished
 * requests are retired. Returns the new count of outputs. */
static int engine_collect(engine *e, engine_flight *f, int n) {
    backend *be = e->m->be;
    const double w0 = time_now();
    be->ops->event_synchronize(be, f->ev);
    e->wait_s += time_now() - w0;
    const int first = n;
    for (int k = 0; k < f->n; k++) {
        engine_req *r = f->reqs[k];
        r->flights--;
        if (r->dead) {
            if (!r->flights) engine_req_free(r);
            continue;
        }
        e->outs[n++] = f->how == CHOOSE_HOST ? engine_sample(e, r, e->logits + (size_t)f->rows[k] * f->ld)
                                             : engine_take(e, r, f->ids[f->rows[k]], (engine_output){.id = r->id, .token = -1});
    }
    for (int i = first; i < n; i++)
        if (e->outs[i].finish) engine_retire(e, engine_find(e, e->outs[i].id));
    return n;
}

/* engine_step's work, timed by it. */
static sk_status engine_step_timed(engine *e, const engine_output **out, int *n_out) {
    int n = 0;
    memcpy(e->outs, e->cancelled, sizeof(engine_output) * (size_t)e->n_cancelled);
    n = e->n_cancelled;
    e->n_cancelled = 0;
    *out = e->outs;
    *n_out = n;
    if (e->pend) {   /* the next step goes in before the pending one is read, while every row samples on the device */
        engine_flight *prev = &e->fl[e->cur];
        e->pend = false;
        if (e->n_host_sampled == 0) {
            engine_speculate(e, prev);
            if (sched_schedule(&e->s) > 0) SK_TRY(engine_issue(e, true));
            SK_ASSERT(e->pend || e->s.n_items == 0);   /* every row the device's to choose: pending */
        }
        *n_out = engine_collect(e, prev, n);
        return SK_OK;
    }
    if (sched_schedule(&e->s) == 0) return SK_OK;
    SK_TRY(engine_issue(e, false));
    if (!e->pend) n = engine_collect(e, &e->fl[e->cur], n);
    *n_out = n;
    return SK_OK;
}

sk_status engine_step(engine *e, const engine_output **out, int *n_out) {
    const double t0 = time_now();
    const sk_status st = engine_step_timed(e, out, n_out);
    e->step_s += time_now() - t0;
    return st;
}

/* ---- tensor parallelism: the other ranks ---- */

sk_status engine_heartbeat(engine *e) {
    if (!e->tp_started || time_now() - e->tp_sent < ENGINE_TP_IDLE_S) return SK_OK;
    e->tp_sent = time_now();
    return engine_tp_say(e->m, TP_IDLE);
}

void engine_tp_release(comm *c) {
    int h[TP_HEADER] = {TP_STOP};
    if (c && c->world > 1 && c->rank == 0) comm_broadcast(c, h, sizeof h, 0);   /* a broken comm fails at once */
}

/* Every rank's row of engine_tp_stats: this rank's in stats(K, ENGINE_TP_NSTATS), zeros
 * elsewhere, summed over the ranks. */
static sk_status engine_tp_rows(const model *m, double *stats) {
    const int K = m->tp.size;
    size_t resident = 0;
    memset(stats, 0, sizeof(double) * (size_t)K * ENGINE_TP_NSTATS);
    SK_TRY(model_resident_bytes(m, &resident));
    double *row = stats + (size_t)m->tp.rank * ENGINE_TP_NSTATS;
    row[ENGINE_TP_RESIDENT] = (double)resident;
    row[ENGINE_TP_SLICES] = (double)m->tp.slice_bytes;
    row[ENGINE_TP_COMM_S] = m->tp.comm_s;
    return K > 1 ? comm_all_reduce_f64(m->tp.comm, stats, (size_t)K * ENGINE_TP_NSTATS) : SK_OK;
}

sk_status engine_tp_stats(model *m, double *stats) {
    SK_ASSERT(m->tp.rank == 0);
    SK_TRY(engine_tp_say(m, TP_STATS));
    return engine_tp_rows(m, stats);
}

/* The test hook SKEIN_TEST_KILL_RANK=R:STEP: the step at which this rank kills itself (0: never). */
static long engine_kill_step(int rank) {
    const char *spec = getenv("SKEIN_TEST_KILL_RANK");
    int r;
    long step;
    return spec && sscanf(spec, "%d:%ld", &r, &step) == 2 && r == rank ? step : 0;
}

/* A follower's engine: the pool and batch buffers rank 0's START message sizes (h: blocks,
 * block size, tokens per step, sequences, context, cache dtype). */
typedef struct engine_shadow {
    kv_pool *pool;
    int *msg;                /* engine_tp_ints of the leader's options */
    size_t cap;
} engine_shadow;

static void engine_shadow_free(engine_shadow *f) {
    kv_pool_free(f->pool);
    mem_free(f->msg);
    *f = (engine_shadow){0};
}

static sk_status engine_shadow_init(model *m, const int *h, engine_shadow *f) {
    engine_shadow_free(f);
    const engine_opts o = {.block_size = h[2], .max_batch_tokens = h[3], .max_seqs = h[4], .max_ctx = h[5]};
    const int max_blocks = (o.max_ctx + o.block_size - 1) / o.block_size;
    const dtype kdt = (dtype)h[6];
    if (kdt != DT_F32 && kdt != DT_BF16 && kdt != DT_F16)
        return sk_fail(SK_ECOMM, "engine: rank %d got cache dtype %d from rank 0 (the ranks run different programs)",
                       m->tp.rank, h[6]);
    f->cap = engine_tp_ints(&o, max_blocks);
    SK_TRY(kv_pool_init(m, kdt, (size_t)h[1] * kv_block_bytes(m, kdt, o.block_size), o.block_size, &f->pool));
    SK_TRY(model_infer_prepare(m, o.max_batch_tokens, o.max_seqs, o.max_ctx));
    if (!(f->msg = mem_alloc(sizeof(int) * f->cap))) return sk_fail(SK_ENOMEM, "engine: a follower's batch");
    return SK_OK;
}

/* Runs the step whose header is h: receives its arrays into f and computes the same batch. */
static sk_status engine_shadow_step(model *m, const int *h, engine_shadow *f) {
    const int N = h[1], S = h[2], MB = h[3], R = h[4];
    const size_t n = 3 * (size_t)N + 3 * (size_t)S + (size_t)S * MB + (size_t)R;
    if (!f->pool || n > f->cap || N < 1 || S < 1 || MB < 1 || R < 1)
        return sk_fail(SK_ECOMM, "engine: rank %d got a step of %d tokens, %d sequences that its engine cannot hold "
                       "(the ranks run different programs)", m->tp.rank, N, S);
    SK_TRY(comm_broadcast(m->tp.comm, f->msg, sizeof(int) * n, 0));
    const int *p = f->msg;
    const model_batch b = {N, p, p + N, p + 2 * N, S, p + 3 * N, p + 3 * N + 3 * S, MB, R, p + 3 * N + 3 * S + S * MB, NULL, 0, false};
    const model_kv_cache cache = kv_pool_cache(f->pool);
    model_infer_batch(m, &cache, &b);
    return model_step_status(m);
}

sk_status engine_follow(model *m) {
    SK_ASSERT(m->tp.size > 1 && m->tp.rank > 0);
    const long kill_at = engine_kill_step(m->tp.rank);
    engine_shadow f = {0};
    double *stats = mem_alloc(sizeof(double) * (size_t)m->tp.size * ENGINE_TP_NSTATS);
    if (!stats) return SK_ENOMEM;
    long steps = 0;
    sk_status st = SK_OK;
    int h[TP_HEADER];
    while (st == SK_OK && (st = comm_broadcast(m->tp.comm, h, sizeof h, 0)) == SK_OK && h[0] != TP_STOP) {
        if (h[0] == TP_START) {
            st = engine_shadow_init(m, h, &f);
        } else if (h[0] == TP_STEP) {
            if (++steps == kill_at) raise(SIGKILL);   /* the test hook: a rank dies mid-request */
            st = engine_shadow_step(m, h, &f);
        } else if (h[0] == TP_END) {
            engine_shadow_free(&f);
        } else if (h[0] == TP_STATS) {
            st = engine_tp_rows(m, stats);
        } else if (h[0] != TP_IDLE) {
            st = sk_fail(SK_ECOMM, "engine: rank %d got message %d from rank 0 (the ranks run different programs)",
                         m->tp.rank, h[0]);
        }
    }
    engine_shadow_free(&f);
    mem_free(stats);
    return st;
}
