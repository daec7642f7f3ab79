/* engine: the inference engine -- a KV block pool (kv.h), a continuous-batching scheduler
 * (sched.h) and a sampler (sample.h) over an immutable model (model_open_weights: mapped,
 * shareable). One engine_step is one model_infer_batch over every scheduled sequence: decodes
 * and prefill chunks together, products over the whole flat batch.
 *
 *   engine *e;
 *   engine_opts o = engine_opts_default();
 *   engine_create(m, &o, &e);
 *   int id;
 *   engine_params p = engine_params_default();   // greedy, 16 tokens
 *   engine_add_request(e, prompt, n, &p, &id);
 *   while (engine_has_work(e)) {
 *       const engine_output *out; int n_out;
 *       engine_step(e, &out, &n_out);            // new tokens, finished requests
 *   }
 *   engine_free(e);
 *
 * Graphs. Where the backend records graphs (backend.h graph_begin: CUDA) and the model is not
 * split, a step that only decodes (one token per sequence) is rounded up to the next of 1, 2,
 * 4, ..., 512 sequences with padding rows (model_batch) and its forward is replayed from
 * a graph recorded the second time that size comes (the first runs eagerly, so that scratch
 * the backend grows on first use exists before recording); steps with prefill chunks, larger
 * ones, and every step with opts.eager run as issued.
 *
 * Overlap. On a device (not on the host's backend, where a step computes as it is issued:
 * SKEIN_ENGINE_OVERLAP=1 forces it there, =0 turns it off) a step whose tokens the device
 * chooses (argmax_rows or sample_rows: no penalties, no log-probabilities) is left in flight:
 * the next engine_step first issues the following step and only then reads it, so the host's
 * scheduling, uploads and issuing overlap the device's work. The following step's inputs for
 * the sequences that go on are the in-flight step's chosen ids, still on the device
 * (model_batch.token_src): before they are read, each such request holds a placeholder token
 * (never hashed into the prefix cache, never shown by engine_tokens). A request that a stop id
 * ends has its next step computed in vain; max_tokens and the context, known ahead, end it
 * without one. While any live request needs the host to choose, steps are read as they are
 * issued. So with overlap a step's outputs come from the next engine_step call (the first call
 * returns none) and engine_has_work stays true while a step is in flight.
 *
 * Requests are admitted first come, first served. Each keeps its own generator (seeded by
 * its params), so its samples do not depend on what else is in the batch (on a device, a
 * request without penalties or log-probabilities is drawn there instead, from Philox keyed by
 * its seed and token index: backend_sample_row; as reproducible, though not the CPU's
 * draws); greedy requests give the same tokens alone or in any batch (a row's arithmetic does not depend on the other
 * rows' values; on the CPU the products of one row, of 2..8 and of more take different
 * kernels, which differ only by rounding). A request is finished by a stop id (the id is not output), max_tokens, the
 * context (max_ctx), or engine_cancel; its blocks are freed at once, and its id is not used
 * again. The model and its weights are only read: several engines may share one model only
 * if they step one at a time (the model's step workspace is shared).
 *
 * Tensor parallelism. Over a model split across K ranks (model_open_split), the engine runs on
 * rank 0 and every other rank runs engine_follow: rank 0's engine_create tells them its pool
 * (the same number of blocks of their own key/value heads) and batch sizes, each engine_step
 * broadcasts the step's batch (tokens, positions, slots, block tables, rows out) before the
 * ranks run it together, and engine_free ends their engine; rank 0 alone schedules and
 * samples (the logits are whole on every rank). A dead or hung rank makes the step fail with
 * SK_ECOMM naming it; the engine is then unusable. While it has no work, rank 0 calls
 * engine_heartbeat so that the waiting ranks (bounded by the comm's timeout) know it is alive,
 * and once done with the model (or failing before it has one) it calls engine_tp_release, which
 * ends engine_follow.
 * SKEIN_TEST_KILL_RANK=R:STEP (tests only): rank R > 0 kills itself with SIGKILL when step STEP
 * (counted from 1 over its engine_follow) arrives. */
#ifndef SKEIN_ENGINE_H
#define SKEIN_ENGINE_H

#include "infer/kv.h"
#include "infer/sample.h"
#include "infer/sched.h"

typedef struct comm comm;   /* comm/comm.h */

typedef struct engine engine;

typedef struct engine_opts {
    size_t kv_bytes;         /* pool budget; 0: room for max_seqs sequences of max_ctx tokens */
    int kv_blocks;           /* > 0: exactly this many blocks (wins over kv_bytes) */
    dtype kv_dtype;          /* the cache's dtype (--kv-cache-dtype, kv_dtype_resolve): KV_DTYPE_AUTO
                              * (engine_opts_default) or f32, bf16, f16; the pool's blocks are sized by it */
    int block_size;          /* tokens per block (KV_BLOCK_SIZE) */
    int max_batch_tokens;    /* tokens per step (default 512) */
    int max_seqs;            /* running at most (default 64) */
    int max_ctx;             /* longest sequence (0: the model's n_positions) */
    bool eager;              /* issue every step's work as it comes: no graphs (the default with
                              * SKEIN_CUDA_GRAPHS=0 in the environment) */
} engine_opts;

#define ENGINE_MAX_STOP 8
#define ENGINE_MAX_LOGPROBS 20   /* top log-probabilities per token at most */

typedef struct engine_params {
    int max_tokens;          /* tokens to generate at most (> 0) */
    sample_opts sample;
    uint64_t seed;
    int stop_ids[ENGINE_MAX_STOP];   /* generation ends at any of these (not output) */
    int n_stop_ids;
    bool logprobs;           /* report each token's log-probability */
    int n_logprobs;          /* 0..ENGINE_MAX_LOGPROBS: also report the n likeliest tokens */
} engine_params;

/* What a step produced for one request: a new token, its end, or both. */
typedef struct engine_output {
    int id;                  /* the request */
    int token;               /* the new token, or -1 (a stop id ended it, or it was cancelled) */
    float logprob;           /* with params.logprobs or n_logprobs */
    int n_top;               /* params.n_logprobs with a token, else 0 */
    int top_ids[ENGINE_MAX_LOGPROBS];   /* (n_top) the likeliest tokens, likeliest first */
    float top_logprobs[ENGINE_MAX_LOGPROBS];   /* (n_top) theirs */
    const char *finish;      /* NULL while it runs; "stop", "length", "cancelled" */
} engine_output;

engine_opts engine_opts_default(void);
engine_params engine_params_default(void);

/* An engine over m (not owned; it must outlive the engine): the pool sized by o, the model's
 * step workspace planned for o's batch (nothing is allocated by a step after that). SK_EARG
 * names what does not fit, or a cache dtype m's backend cannot keep. */
sk_status engine_create(model *m, const engine_opts *o, engine **out);
void engine_free(engine *e);
/* Queues a request for prompt(n) (copied); *id receives its id. SK_EARG when the prompt is
 * empty, has ids outside the vocabulary, n_logprobs is outside 0..ENGINE_MAX_LOGPROBS, leaves no room to generate within max_ctx, or needs
 * more blocks than the whole pool holds. */
sk_status engine_add_request(engine *e, const int *prompt, int n, const engine_params *p, int *id);
/* Runs one step: *out (valid until the next call) lists the requests that got a token or
 * finished, *n_out of them (0 when nothing was waiting; with overlap, the outputs of the step
 * the previous call issued: see the top). SK_ECOMM when a rank of a split model
 * failed (see the top). */
sk_status engine_step(engine *e, const engine_output **out, int *n_out);
/* Ends request id now (its blocks freed at once); false when it is not live. Its end is
 * reported by the next engine_step as finish "cancelled". */
bool engine_cancel(engine *e, int id);
/* Whether any request is waiting or running, or a cancellation is still to be reported. */
bool engine_has_work(const engine *e);
/* A live request's tokens so far (prompt then generated) and its prompt length; NULL when id
 * is not live. */
const int *engine_tokens(const engine *e, int id, int *n, int *n_prompt);
const kv_pool *engine_pool(const engine *e);
/* Requests waiting to be admitted (preempted ones included) and sequences running now. */
void engine_counts(const engine *e, int *waiting, int *running);
/* Preemptions so far. */
uint64_t engine_preemptions(const engine *e);
/* Seconds spent in engine_step so far, and the part of them spent waiting for the step's
 * results to come back from the backend (on a device: its work after the host issued it);
 * the rest is the host's (scheduling, uploads, issuing, sampling), during which a device
 * idles. */
void engine_times(const engine *e, double *step_s, double *wait_s);

/* ---- Tensor parallelism (see the top); each is a no-op for a model that is not split ---- */
/* Rank 0, while its engine has no work (at least every second): tells the other ranks it is
 * alive when it has sent them nothing for a second. */
sk_status engine_heartbeat(engine *e);
/* Rank 0 of the ranks of c, once done with its split model (any engine freed), or when it
 * fails before it has one: ends the other ranks' engine_follow. No-op for c NULL, of one rank,
 * or on another rank; after a failure of c nobody listens and nothing is sent. */
void engine_tp_release(comm *c);
/* What each rank reports to engine_tp_stats. */
enum { ENGINE_TP_RESIDENT, ENGINE_TP_SLICES, ENGINE_TP_COMM_S, ENGINE_TP_NSTATS };
/* Rank 0: every rank's resident weight bytes (model_resident_bytes), bytes of slices copied out
 * of the files (model_tp.slice_bytes) and seconds spent in collectives (model_tp.comm_s), into
 * stats(K, ENGINE_TP_NSTATS), the other ranks answering from engine_follow; a model that is not
 * split: its own row. Between engines or steps. */
sk_status engine_tp_stats(model *m, double *stats);
/* Every rank but 0 of a split model: runs the engines rank 0 creates, step by step, until
 * rank 0's engine_tp_release (SK_OK) or a failure (SK_ECOMM naming the operation and rank). */
sk_status engine_follow(model *m);

#endif
