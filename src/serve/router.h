/* router: one model served by replicas -- Ray Serve's deployment, natively. The model folder
 * is opened once (its weights mapped read-only, shared by every CPU replica: each replica is
 * an inference model over the same mapping with its own step workspace, KV pool and engine
 * thread); requests are routed to replicas, the replica count follows the load, and replicas
 * that fail are replaced.
 *
 *   router_opts o = router_opts_default();
 *   o.dir = "models/gpt2"; o.replicas = 2;
 *   router *rt;
 *   router_create(&o, &rt);       // loads, starts the replicas, returns once they are up
 *   ... api.h routes requests to it ...
 *   router_stop(rt);              // requests in flight end with an error
 *   router_free(rt);
 *
 * Routing: power of two choices on outstanding tokens (each request counts its prompt until
 * its first token, plus the tokens it may still generate): two random replicas that are up,
 * the one with less (on a tie, the one that took a request less recently). Prefix affinity: a
 * request whose prompt shares at least one full KV block with a recent request's goes to that
 * request's replica (whose prefix cache holds it), unless that replica's load with the request
 * would be over twice the chosen one's.
 *
 * Autoscaling (min_replicas < max_replicas), as Ray Serve's: every tick the supervisor
 * computes ceil(requests in flight / target_ongoing), within [min, max]; when that has stayed
 * above the current target for upscale_delay_s the target rises to it, below it for
 * downscale_delay_s it falls. New replicas start at once; the replicas to remove (fewest
 * requests first) are drained: they take no new request, finish their own, then are freed.
 *
 * Failures: a replica whose step returns an error, or whose step has run longer than
 * replica_timeout_s (it stopped answering), is marked down; its requests that have produced
 * no token are routed again, the others end with an error (the client gets an OpenAI-shaped
 * 500, or an error event when streaming); a replacement starts at once. A stalled thread is
 * left to finish on its own and frees its engine then. No accepted request waits forever:
 * when no replica can start, waiting requests end with an error.
 *
 * Processes (process, --replica-process): each replica's engine runs in a child process forked
 * from its thread (rproc.h), over the same read-only mapping of the weights; a child that
 * crashes or is killed fails like a replica whose step failed (its requests routed again or
 * answered with an error, a replacement started), and leaves the server and the others. With
 * tp_ranks K > 1 each replica is K processes: its child forks K-1 more and splits the model
 * over them (replica_tp.c: gloo on 127.0.0.1 on the CPU; on CUDA a GPU per rank and NCCL), so
 * --replicas R --tp K runs R engines of K ranks, each one replica to the router; a rank that
 * dies fails its replica, which is replaced by a fresh group.
 *
 * Devices: on the CPU every replica runs its steps on `threads` OpenMP threads (set in its
 * own thread). With device "cuda", replicas go to the slots of `devices` round robin (the
 * least used first: a slot is one id, or with tp_ranks K a group of K consecutive ids, rank r
 * on the group's r-th: router_slot_device), each with its own backend (its streams,
 * workspaces, KV pool) over the router's mapping; the replicas on one device share one device copy of the weights, made
 * by the first and freed with the last (devw.h). Process replicas on CUDA: the server itself
 * never touches CUDA, and each child (an exec'd process) makes its own context; the children on one device share one device copy all the same, made
 * by the first child there in memory exported as a file descriptor, which the router keeps
 * until it is freed and gives to every later child there (replica.c, devw.h).
 *
 * Tensor parallelism (tp: the communicator of K ranks, --tp K): the model is split over the
 * ranks and the router, on rank 0, has one replica: rank 0's engine over its share
 * (model_open_wts_split), the other ranks following it (engine_follow). Such a replica cannot
 * be replaced: when its step fails (a rank died or hung: SK_ECOMM naming it), every request it
 * or the router holds ends with an error naming the failure, no request is accepted any more,
 * the router is finished (router_failure) and on_failure is called, under the router's lock,
 * once. Its steps are bounded by the communicator's timeout, not replica_timeout_s. */
#ifndef SKEIN_ROUTER_H
#define SKEIN_ROUTER_H

#include "infer/engine.h"
#include "serve/metrics.h"

typedef struct router router;

#define ROUTER_MAX_DEVICES 16

typedef struct router_opts {
    const char *dir;                 /* model folder: config.json, safetensors, tokenizer.json */
    const char *name;                /* the model's id in the API (NULL: the folder's name) */
    const char *chat_template;       /* a template name instead of the folder's (NULL: the folder's, if any) */
    const char *device;              /* "cpu" or "cuda" */
    int devices[ROUTER_MAX_DEVICES]; /* with cuda: device ids, round robin by slot (see the top; n_devices 0:
                                      * one slot, devices 0..K-1) */
    int n_devices;
    engine_opts engine;              /* each replica's engine (kv_bytes: its pool) */
    int max_queue;                   /* requests waiting beyond max_seqs per replica, at most */
    int replicas;                    /* at start */
    int min_replicas, max_replicas;  /* equal: no autoscaling */
    double target_ongoing;           /* requests in flight per replica the autoscaler aims at */
    double upscale_delay_s, downscale_delay_s;
    double replica_timeout_s;        /* a step longer than this: the replica stopped answering (a process replica building longer: killed) */
    int threads;                     /* OpenMP threads per CPU replica */
    bool process;                    /* each replica's engine in a child process (rproc.h; no tp) */
    int tp_ranks;                    /* > 1, with process: each replica split over this many forked ranks */
    double comm_timeout_s;           /* with tp_ranks: a rank waiting longer for another fails */
    comm *tp;                        /* split over these ranks (see the top; not owned), or NULL */
    void (*on_failure)(void *ctx);   /* with tp: called once when the model's ranks failed */
    void *failure_ctx;
} router_opts;

/* The CUDA device of rank `rank` of a replica in `slot` (see the top: Devices). */
int router_slot_device(const router_opts *o, int slot, int rank);
/* Defaults: cpu, 1 replica (min = max = 1), Ray Serve's target_ongoing 2, upscale delay 30 s,
 * downscale delay 600 s, replica timeout 300 s, 1 thread, max_queue 64. */
router_opts router_opts_default(void);

/* The main of a process replica's child (skein serve --replica-child, which rproc_spawn
 * execs: rproc.h): builds the engine its server describes and runs it. Never returns. */
_Noreturn void router_replica_child(void);

/* Opens the model folder (tokenizer.json, its tokenizer_config.json and chat template,
 * config.json, the weights), starts o->replicas replicas and waits until they take requests.
 * The test hook SKEIN_TEST_FAIL_REPLICA is read here. SK_EARG/SK_EIO/... naming the folder,
 * flag or replica that failed. o's strings are copied. */
sk_status router_create(const router_opts *o, router **out);
/* The model's id in the API. */
const char *router_name(const router *rt);
/* Stops routing and every replica; requests in flight end with an error. Idempotent. */
void router_stop(router *rt);
/* After router_stop and once no handler can reach rt (NULL is fine). While a stalled
 * replica's thread still runs (see above), its memory is left alone instead. */
void router_free(router *rt);

/* Whether a replica is up (/health). */
bool router_up(router *rt);
/* Why a split model's ranks failed (into buf, size cap, and returned), or NULL while they have
 * not. */
const char *router_failure(router *rt, char *buf, size_t cap);
/* The model's metrics now; *reps (m->reps, m->n_reps of them) is the caller's to mem_free. */
sk_status router_snapshot(router *rt, metrics_model *m, metrics_replica **reps);

#endif
