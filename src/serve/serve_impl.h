/* serve_impl: what the server's own files share and nothing else sees -- a request as the
 * HTTP handler (api.c), the router (router.c) and a replica (replica.c) hold it, a replica,
 * a router. Callers use api.h and router.h.
 *
 * Locking. Each router (one model) has one mutex, rt->mu; it guards every field marked
 * "shared" of the router, of its replicas and of its requests. Engine steps run without it;
 * a replica takes it to admit requests and to deliver a step's tokens. Fields marked "const"
 * are set before anyone else sees the object; fields marked with a thread's name are that
 * thread's alone. No other lock is taken while rt->mu is held.
 *
 * A request's life. The handler fills it (a call of "n" choices fills n requests of one
 * prompt, api.c), then router_submit (under mu) counts it in flight
 * and routes it: onto a replica's incoming queue (r->rep set), or the router's pending queue
 * when no replica is up. The replica admits it to its engine (its live queue), delivers its
 * tokens into r->out, and ends it through router_finish, which wakes the handler. A replica
 * that fails hands its requests back (router_replica_down): those that have produced no
 * token are routed again (up to ROUTER_MAX_RETRIES times), the others end with an error.
 * References: one is the handler's (dropped when its reply is done), one the server's
 * (dropped by router_finish); the last one frees the request. */
#ifndef SKEIN_SERVE_IMPL_H
#define SKEIN_SERVE_IMPL_H

#include <pthread.h>

#include "infer/engine.h"
#include "infer/generate.h"
#include "serve/metrics.h"
#include "serve/router.h"
#include "serve/rproc.h"
#include "tokenizer/chat.h"
#include "tokenizer/tok.h"

#define SERVE_MAX_STOP 4
#define SERVE_STOP_BYTES 128
#define SERVE_NAME_BYTES 256
#define ROUTER_MAX_RETRIES 3     /* routings of a request whose replicas failed before its first token */
#define ROUTER_MAX_FAULTS 4      /* SKEIN_TEST_FAIL_REPLICA entries */

typedef struct serve_req serve_req;
typedef struct replica replica;

/* A FIFO of requests through their next links; each request is in at most one. */
typedef struct req_queue {
    serve_req *head, *tail;
    int n;
} req_queue;

void req_queue_push(req_queue *q, serve_req *r);
serve_req *req_queue_pop(req_queue *q);
void req_queue_remove(req_queue *q, serve_req *r);

/* One generated token's log-probabilities, as the engine gave them. */
typedef struct serve_lp {
    int token, n_top;
    float logprob;
    int top_ids[ENGINE_MAX_LOGPROBS];
    float top_logprobs[ENGINE_MAX_LOGPROBS];
} serve_lp;

struct serve_req {
    /* const: set by the handler before submission */
    router *rt;
    int *prompt;
    int n_prompt;
    engine_params p;
    char stop_buf[SERVE_STOP_BYTES * SERVE_MAX_STOP];
    const char *stop[SERVE_MAX_STOP];
    int n_stop;
    bool chat, stream;
    bool ids_as_tokens;      /* "return_tokens_as_token_ids" (vLLM's): logprobs name tokens "token_id:ID" */
    bool keep_special;       /* "skip_special_tokens": false (vLLM's; true by default): special tokens in the text */
    int index;               /* its choice of the call (api.c): a call of "n" choices submits n requests */
    double t_arrival;        /* time_now() at submission */
    /* the thread of the replica running it */
    int eid;
    tok_stream ts;
    gen_text text;
    /* shared */
    replica *rep;            /* where it is queued or runs; NULL in the router's pending queue */
    req_queue *queue;        /* the queue holding it, or NULL */
    long cost;               /* outstanding tokens it adds to rep->load */
    int routings;            /* times it was routed */
    char *out;               /* text produced and not yet taken */
    size_t n_out, cap_out;
    int n_gen;
    double t_first, t_last;  /* when its first and latest tokens came */
    serve_lp *lp;            /* (n_lp) every generated token's, with p.logprobs */
    int n_lp, cap_lp;
    const char *finish;      /* "stop", "length", "cancelled", "error" once done */
    char error[256];         /* why it failed, when it did */
    bool done, abandoned, oom;
    int refs;
    pthread_cond_t *wake;    /* its handler's, signalled on new text (stream) and at its end; NULL once
                              * the handler has left */
    serve_req *next;
    /* its handler's (the connection's thread only) */
    int lp_sent;             /* records already in a response (also for a whole one) */
    long lp_offset;          /* characters of token text before them (text_offset) */
    bool end_sent;           /* a stream has sent its last chunk */
};

/* Waits on cv (mu held) until signalled or ms milliseconds have passed. */
void serve_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int ms);

/* Drops one reference (mu held); the last frees the request. */
void req_unref(serve_req *r);

typedef enum replica_state {
    REPLICA_STARTING,        /* its thread builds its engine */
    REPLICA_UP,              /* takes requests */
    REPLICA_DRAINING,        /* scaled down: finishes its requests, takes no new one */
    REPLICA_DOWN,            /* failed: its requests were handed back */
} replica_state;

struct replica {
    /* const */
    router *rt;
    int id;                  /* its label, never reused within the router */
    int device;              /* CUDA device (rank 0's), or -1: the CPU */
    int slot;                /* its slot of the router's devices (router_slot_device), or -1: the CPU */
    pthread_t thread;
    /* its thread */
    backend *own_be;         /* its backend (on its device, or the CPU); NULL in a process replica */
    model *m;
    engine *e;               /* NULL for a process replica: its engine is in the child */
    rproc *proc;             /* a process replica's child, else NULL; set and cleared under mu while it
                              * starts (router_stop and the watchdog kill it then), killed by the
                              * watchdog when a step stalls too */
    char *piece;
    size_t piece_cap;
    uint64_t steps;
    /* shared */
    replica_state state;
    bool stop;               /* leave the loop: drained, or the server stops */
    bool exited;             /* the thread has freed its engine and returns: join it */
    bool orphaned;           /* given up while it stalled: its thread frees it when it returns */
    bool start_killed;       /* its child was killed for building past the timeout */
    sk_status fail_status;   /* why its build failed (SK_OK: it did not) */
    char why[256];           /* why it went down */
    req_queue in;            /* routed here, not yet in the engine */
    req_queue live;          /* in the engine */
    int n_reqs;              /* in or live */
    int n_abandoned;         /* of those, given up by their clients */
    long load;               /* outstanding tokens: each request's prompt (until its first token) + max_tokens left */
    uint64_t routed;         /* rt->n_routed when it last took a request (ties in load: the older wins) */
    double t_start, t_ready; /* time_now() when started and when it took requests */
    double step_started;     /* time_now() when the running step began; 0 between steps */
    bool first_logged;
    metrics_replica stats;   /* its gauges, refreshed after every step */
    pthread_cond_t wake;
};

/* Starts replica id on device, in slot (mu held): its thread builds a model over the router's weights
 * and an engine, then calls router_replica_ready (or router_replica_down when the build
 * fails). NULL when the thread cannot be created (sk_fail says why). */
replica *replica_start(router *rt, int id, int device, int slot);
/* In a process replica's child, before its engine (o.tp_ranks > 1) and before any CUDA call:
 * forks the replica's other ranks, which follow its engine, and joins them; *out is the group's
 * communicator (never freed: the child exits), on CUDA each rank's device its local_rank among
 * the devices it sees. See replica_tp.c. */
sk_status replica_tp_join(replica *rep, comm **out);
/* Opens rt->base when it is not open: in a process replica's child and its ranks, after the
 * ranks are forked (the server opens its own in router_create). */
sk_status replica_weights(router *rt);
/* Appends r to rep's incoming queue (mu held). */
void replica_enqueue(replica *rep, serve_req *r);
/* Frees a replica whose thread was joined. */
void replica_free(replica *rep);

/* A SKEIN_TEST_FAIL_REPLICA entry (docs/design.md): replica `id` fails its step `step`. */
typedef struct router_fault {
    int id;
    uint64_t step;
    bool hang;               /* the step never returns on its own: only the watchdog ends it */
} router_fault;

/* The device copy of the weights the process replicas on one CUDA device share (devw.h): the
 * descriptor the first child there exported, kept until router_free (share.fd -1: none yet). */
typedef struct router_copy {
    int device;
    rproc_share share;
    bool making;                    /* a child is making it: the others on the device wait */
} router_copy;

struct router {
    /* const */
    router_opts o;
    char name[SERVE_NAME_BYTES];
    char dir[4096];
    tok *t;
    chat_template ct;
    const chat_template *chat;      /* &ct, or NULL: the model has no chat template */
    backend *cpu;                   /* rt->base's; each replica runs on a backend of its own */
    model *base;                    /* the mapping every CPU replica's model shares; its config (in a
                                     * process replica's child: replica_weights) */
    engine_opts eo;                 /* max_ctx resolved */
    int eos_ids[ENGINE_MAX_STOP], n_eos;             /* what ends a completion */
    int chat_eos_ids[ENGINE_MAX_STOP], n_chat_eos;   /* ... and a chat */
    router_fault faults[ROUTER_MAX_FAULTS];
    int n_faults;
    pthread_t supervisor;
    bool supervised;
    pthread_mutex_t mu;
    pthread_cond_t tick;            /* wakes the supervisor */
    pthread_cond_t changed;         /* a replica came up, went down or an orphan finished */
    /* shared */
    bool stopping;
    bool finished;                  /* a split model's replica failed: nothing runs any more */
    char failure[256];              /* why */
    replica **reps;                 /* (n_reps) every replica not yet freed, orphans excepted */
    int n_reps, cap_reps;
    int n_orphans;
    int target;                     /* replicas wanted (starting or up) */
    int next_id;
    req_queue pending;              /* waiting for a replica */
    int n_inflight;                 /* submitted, not finished */
    double up_since, down_since;    /* since when the autoscaler has wanted more / fewer (0: not) */
    double hold_until;              /* no replica starts before (after a failed start) */
    uint64_t rng;                   /* power-of-two choices */
    uint64_t n_routed;              /* requests routed so far */
    uint64_t *aff_key;              /* (ROUTER_AFF_SLOTS) prefix key -> replica id of its last request */
    int *aff_rep;
    uint64_t prompt_tokens, gen_tokens, failures;
    metrics_hist ttft, tpot, e2e;
    router_copy copies[ROUTER_MAX_DEVICES];   /* (n_copies) process replicas on CUDA, one per device */
    int n_copies;
};

/* Counts r in flight and routes it (mu held); false when the router stops or already holds
 * its capacity of requests (target replicas * max_seqs + max_queue), with why filled. */
bool router_submit(router *rt, serve_req *r, char *why, size_t cap);
/* r's client left (mu held): it is cancelled where it is. */
void router_abandon(router *rt, serve_req *r);
/* Ends r (mu held): off its queue and replica, done, its handler woken, the server's
 * reference dropped; finish "stop"/"length" count in the latency histograms. err: why it
 * failed, or NULL. */
void router_finish(router *rt, serve_req *r, const char *finish, const char *err);
/* Replica rep built its engine (mu held): it takes requests, and waiting ones are routed. */
void router_replica_ready(router *rt, replica *rep);
/* Replica rep failed (mu held): marked down, its requests routed again or ended (see the
 * top). why: the reason, for the log and the requests' errors. */
void router_replica_down(router *rt, replica *rep, const char *why);
/* The test hook's entry for replica id's step (NULL: none). */
const router_fault *router_fault_at(const router *rt, int id, uint64_t step);

#endif
