/* model: one interface for every architecture (GPT-2 and the Llama family).
 *
 *   model *m;
 *   model_load("out/", be, &m);                   // config.json + safetensors, HF layout
 *   model_train_prepare(m, B, T);                 // gradients + activations for (B,T)
 *   float loss = model_forward(m, tokens, targets, B, T);
 *   model_backward(m, 1.0f / tokens_in_step);     // gradients accumulate in m->grads
 *   model_save(m, "out/");
 *
 *   model *g;                                     // inference: weights stay mapped
 *   model_open_weights("models/llama-1b", be, &g);
 *   model_kv *kv;                                 // one sequence's keys and values
 *   model_kv_create(g, 64, &kv);
 *   tensor logits = model_infer_step(g, kv, prompt, n);    // prefill, then one at a time
 *   model_kv_free(kv);
 *   // or many sequences at once over a paged cache: model_infer_batch (the engine, infer/)
 *   model_free(g);
 *
 * Two kinds of model. A training model (model_load, model_create) holds its parameters in
 * one flat f32 buffer that training updates in place. An inference model
 * (model_open_weights, model_open_wts) holds a reference to an immutable wts (wts.h) and one
 * view per spec into it: matrices in the file's dtype where the backend multiplies and
 * gathers that dtype (the CPU: f32, bf16, f16), read in place from the read-only mapping,
 * 1-D tensors as f32; m->params is NULL and nothing is converted, so the weights cost the
 * page cache once per machine however many processes or engines run them. Training entry
 * points refuse an inference model (SK_ESTATE); both kinds run inference.
 *
 * Parameters of a training model live in one flat f32 buffer (m->params, m->n_params elements) in backend
 * memory, cut into tensors by m->specs in Hugging Face order and naming (without the
 * "transformer." prefix). Gradients, when prepared, use the same layout (m->grads), so
 * optimizers, ZeRO sharding and checkpoints work on flat ranges. Tensors of one layer are
 * contiguous (spec.layer), so a layer's parameters are one range.
 *
 * Groups and bases (for ZeRO): the specs fall into groups, maximal runs of consecutive specs
 * with the same layer (GPT-2: [wte, wpe], layer 0, ..., layer L-1, [ln_f]). Architecture
 * code reaches a tensor only through model_param_view / model_grad_view, which read the
 * group's base pointer: by default into m->params / m->grads. A parameter provider
 * (ZeRO, installed by its owner with model_set_param_provider) may move them: at ZeRO-3 it
 * releases m->params (model_release_params) and points a layer's base at a gathered copy
 * before the layer runs; at ZeRO-2/3 it points a layer's gradient base at a bucket that it
 * reduces when the layer's backward is done. Only model.c writes the bases and the provider;
 * the provider moves bases through model_set_param_base / model_set_grad_base.
 *
 * Hook order. The architecture calls the provider through model_hook_* in this order, which
 * is a contract every architecture keeps (ZeRO replays it on ranks that sit out a
 * micro-batch, and issues the collectives of a layer in it, identically on every rank):
 *   forward:  before_forward(-1), then before_forward(l) for l = 0 .. L-1;
 *   backward: before_backward(-1), then before_backward(l), after_backward(l) for
 *             l = L-1 .. 0, then after_backward(-1).
 * Layer -1 stands for every group with spec.layer == -1 (embeddings, final norm, LM head):
 * used at both ends of the passes, their gradients are complete only after the backward.
 * A layer's parameters must be in place when its before_* hook returns and may move at the
 * next hook; its gradients are complete at its after_backward.
 *
 * Letters: B batch, T time, C channels (n_embd), L layers, NH heads, V vocabulary. */
#ifndef SKEIN_MODEL_H
#define SKEIN_MODEL_H

#include "backend/backend.h"
#include "model/wts.h"
#include "tensor/dtype.h"

typedef enum model_arch_kind { ARCH_GPT2, ARCH_LLAMA } model_arch_kind;

#define MODEL_MAX_EOS 8

/* Rotary-embedding frequency scaling as real checkpoints configure it, read from either
 * dialect: "rope_scaling": {"type"|"rope_type": ...} (the Hub) or "rope_parameters"
 * (transformers 5). */
typedef enum model_rope_type { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 } model_rope_type;
typedef struct model_rope_scaling {
    model_rope_type type;
    float factor;                      /* linear and llama3 */
    float low_freq_factor;             /* llama3 */
    float high_freq_factor;            /* llama3 */
    int original_max_position_embeddings;  /* llama3 */
} model_rope_scaling;

typedef struct model_config {
    model_arch_kind arch;
    int vocab_size;        /* V */
    int n_positions;       /* maximum context (GPT-2 n_positions, Llama max_position_embeddings) */
    int n_layer;           /* L */
    int n_head;            /* NH */
    int n_kv_head;         /* KV heads (Llama GQA); = n_head for GPT-2 */
    int n_embd;            /* C */
    int ffn_dim;           /* MLP width: GPT-2 n_inner (default 4C), Llama intermediate_size */
    int head_dim;          /* C / NH unless the config says otherwise */
    float norm_eps;        /* layer_norm_epsilon / rms_norm_eps */
    float resid_pdrop, embd_pdrop, attn_pdrop;   /* used only with --dropout */
    bool tie_word_embeddings;
    int bos_token_id;      /* -1 when absent or unusable */
    int eos_token_ids[MODEL_MAX_EOS];
    int n_eos;
    dtype torch_dtype;     /* dtype the weights are stored in (config "torch_dtype"/"dtype") */

    /* Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM); unused by GPT-2. */
    char model_type[16];   /* "llama", "mistral", "qwen2" (written back to config.json) */
    float rope_theta;      /* base of the rotary frequencies (default 10000) */
    model_rope_scaling rope_scaling;
    bool attention_bias;   /* q/k/v projections have biases (Qwen2: true) */
    bool mlp_bias;         /* gate/up/down have biases (rare; Llama config "mlp_bias") */
    int sliding_window;    /* attend to at most this many past positions; 0 = full (Mistral v0.1) */
} model_config;

typedef struct model_param {
    char name[96];         /* HF name without "transformer.", e.g. "h.0.attn.c_attn.weight" */
    int ndim;
    int64_t shape[4];
    size_t offset;         /* first element inside the flat buffer */
    size_t numel;
    bool decay;            /* AdamW weight decay applies (matrices, not biases or norms) */
    int layer;             /* 0..L-1, or -1 for embeddings and the final norm */
    int group;             /* index into model.groups (filled by model_create) */
} model_param;

/* A run of consecutive specs of one layer: flat elements [begin, begin+count). */
typedef struct model_group {
    size_t begin, count;
    int layer;             /* as spec.layer */
} model_group;

typedef struct model model;

/* Where parameters and gradients live during training, decided by their owner (ZeRO): the
 * model calls these in the hook order above with the provider's ctx. Hooks cannot fail: one
 * that meets an error records it for its owner. Each pointer may be NULL. */
typedef struct model_param_provider {
    void (*before_forward)(void *ctx, model *m, int layer);
    void (*before_backward)(void *ctx, model *m, int layer);
    void (*after_backward)(void *ctx, model *m, int layer);
    bool external_grads;   /* model_train_prepare allocates no m->grads: the provider points the
                            * gradient bases (ZeRO-2/3) */
} model_param_provider;

typedef struct model_arch model_arch;

/* ---- Tensor parallelism (Megatron-LM's cut; model_open_split) ----
 * One model split over K ranks, one process per device, joined by a comm (comm.h): q/k/v
 * (GPT-2's packed c_attn) and the MLP's first products (c_fc; gate, up) are cut by columns,
 * each rank holding whole heads and a K-th of the MLP width; the attention output (c_proj,
 * o_proj) and the MLP's last product (c_proj, down) are cut by rows, their partial products
 * summed over the ranks by one all-reduce each; the token embedding and the LM head are cut
 * by vocabulary rows (the embedding's sum is one more all-reduce; the logits of the shards
 * are gathered, so every rank holds the whole distribution). Key/value heads are divided
 * among the ranks, or, with fewer KV heads than ranks, each rank keeps the one its query heads
 * read. Norms are whole on every rank; a row-cut product's bias, and GPT-2's position table,
 * are rank 0's alone, so the sums add them once. A model that is not split has rank 0 of 1
 * and the whole model's counts. A training share (tp_train.h) is a training model planned
 * from its rank's cut config with m->tp joining it to the others: its forward sums the
 * row-cut outputs and its backward the column-cut products' input gradients (tp_sum). */
typedef struct comm comm;   /* comm/comm.h */
typedef struct model_tp_run model_tp_run;   /* tp.c: buffers, stream and requests of the collectives */

typedef struct model_tp {
    int rank, size;        /* this rank of K = size */
    comm *comm;            /* the K ranks' communicator (not owned); NULL when size is 1 */
    int n_head, n_kv_head; /* its query heads and key/value heads */
    int ffn_dim;           /* its MLP width */
    int vocab0, n_vocab;   /* its vocabulary rows [vocab0, vocab0 + n_vocab) */
    int vocab_chunk;       /* ceil(V/K): the rows of every rank, padded, in the logits' gather */
    void *slices;          /* its parts of the weights copied out of the files (backend memory), or NULL */
    dtype lp;              /* its inference activations' dtype (model_infer_dtype): on a device the
                            * dtype of its copied matrices (bf16 where the whole model would get
                            * the bf16 copy of devw.h, so both run the same ops), else f32 */
    size_t slice_bytes;    /* their size */
    model_tp_run *run;     /* NULL until model_infer_prepare */
    sk_status status;      /* SK_OK, or the first failed collective's (the model is then unusable) */
    char error[512];       /* that failure's message */
    double comm_s;         /* seconds its steps spent in collectives, each from its start to the
                            * end of its wait: on a host-memory backend (MPI) the whole of each,
                            * what the steps pay for communication (waiting for a slower rank
                            * included); on a device through a host-staged comm (MPI, gloo) the
                            * same, timed after the compute stream has drained; through NCCL
                            * only the host's waits */
} model_tp;

/* How one parameter is cut (model_arch.split). The cut dimension `dim` of the stored tensor is
 * `blocks` equal blocks (GPT-2's packed q, k, v: 3), and each rank takes the same part of
 * every block, by `unit`: */
typedef enum model_split_unit {
    SPLIT_WHOLE,           /* not cut: every rank holds all of it (norms) */
    SPLIT_FIRST_RANK,      /* whole on rank 0, absent (tensor_none) elsewhere */
    SPLIT_HEADS,           /* query heads of head_dim elements: n_head / K per rank */
    SPLIT_KV_HEADS,        /* key/value heads: n_kv_head / K per rank, or the one its queries read */
    SPLIT_FFN,             /* the MLP width: ffn_dim / K */
    SPLIT_VOCAB,           /* vocabulary rows: ceil(V/K), the last rank the rest (the LM head) */
    SPLIT_EMBED,           /* the same plus one zero row after them: the embedding of the tokens
                            * other ranks hold */
} model_split_unit;
typedef struct model_split { model_split_unit unit; int dim, blocks; } model_split;

struct model {
    model_config cfg;
    const model_arch *arch;
    backend *be;
    model_param *specs;
    int n_specs;
    size_t n_params;
    float *params;         /* (n_params) backend memory; NULL in an inference model */
    float *grads;          /* (n_params) after model_train_prepare, else NULL */
    model_group *groups;   /* (n_groups) */
    int n_groups;
    float **param_base;    /* (n_groups) where each group's parameters are (first element) */
    float **grad_base;     /* (n_groups) where each group's gradients accumulate */
    /* Written by model.c only (model_set_param_provider): */
    const model_param_provider *provider;   /* NULL: none */
    void *provider_ctx;
    bool grads_external;   /* the provider's external_grads: no m->grads */
    bool dropout;          /* apply the config's dropout probabilities in training forwards */
    bool recompute;        /* activation recompute: keep only each layer's input and run the
                            * layer's forward again in the backward (set before
                            * model_train_prepare; about a third more compute, a fraction of
                            * the activation memory) */
    uint64_t dropout_seed; /* set by the trainer each step */
    uint64_t dropout_sample0;  /* the micro-batch's first sample within the step: masks are a
                            * function of (seed, sample, element), so any cut of the batch into
                            * micro-batches and ranks drops the same elements */
    void *state;           /* architecture-private: activations and the inference workspace */
    wts *weights;          /* an inference model's weights (one reference), else NULL */
    tensor *views;         /* (n_specs) with weights: spec i's view into them */
    struct devw *dev;      /* an inference model on a device: the shared bf16 copy its views
                            * point into (devw.h; one reference), else NULL */
    /* Mixed precision (model_set_precision): */
    dtype act_dt;          /* DT_F32, or DT_BF16: [lp] activations and bf16 products (backend.h) */
    void *compute;         /* (n_params) bf16 copy of m->params the products read; NULL in f32 */
    bool compute_stale;    /* m->params changed since compute was cast from them */
    /* After model_release_master (ZeRO-Offload): the f32 tensors the kernels read as f32, one
     * device buffer; resident_at[i] is spec i's offset in it (SIZE_MAX: not resident). */
    float *resident;
    size_t *resident_at;   /* (n_specs) */
    model_tp tp;           /* this rank's share of a split model (rank 0 of 1 otherwise) */
    unsigned infer_epoch;  /* model_infer_epoch: bumped by the architectures when they
                            * (re)allocate the inference workspace */
};

/* The key/value memory of one sequence (model_kv_create): keys and values of every layer for
 * positions 0..pos-1, f32, and the next position. Owned by whoever generates, so several
 * sequences run over one model; a paged engine replaces it with blocks of a pool. */
typedef struct model_kv model_kv;

/* Keys and values in blocks (the engine's pool, infer/kv.h; a model_kv is the case of one
 * block of max_T positions). Layer l's keys are the (n_blocks * block_size, KD) rows at
 * k + l * layer_stride elements, its values the same rows at v + l * layer_stride (of dtype
 * dt: model_infer_dtype, or one backend.h's BACKEND_OP_KV_CACHE allows under f32
 * activations, as the pool's kv_dtype_resolve chose; backend memory, KD = n_kv_head * head_dim); position t of a
 * sequence lives in row (slot) table[t / block_size] * block_size + t % block_size, table
 * being its block table. */
typedef struct model_kv_cache {
    void *k, *v;
    dtype dt;
    size_t layer_stride;     /* elements */
    int n_blocks, block_size;
} model_kv_cache;

/* One forward over a flat batch of N tokens from S sequences (model_infer_batch); every array
 * is host memory the caller owns. The rows of one sequence are consecutive and in position
 * order, and sequence i's are the last seq[3i+1] positions of its first seq[3i+2]: its
 * queries see positions 0..ctx-1, the earlier ones already in the cache. Each token carries
 * its own position and slot: nothing is inferred from where it sits in the batch. A row whose
 * slot is -1 is padding (a batch rounded up to a recorded size): position 0, a sequence of its
 * own with nq = ctx = 1 whose table starts with any valid block; its key and value are
 * written nowhere and its output means nothing. */
typedef struct model_batch {
    int n_tokens;            /* N */
    const int *tokens;       /* (N) ids */
    const int *pos;          /* (N) position of each token in its sequence */
    const int *slot;         /* (N) cache row its key and value are written to */
    int n_seqs;              /* S */
    const int *seq;          /* (S,3) first row in the batch, new tokens nq, context ctx */
    const int *tables;       /* (S, max_blocks) each sequence's block table */
    int max_blocks;
    int n_out;               /* R <= S rows whose logits come back */
    const int *out_rows;     /* (R) rows of the batch */
    const int *token_src;    /* NULL, or (n_token_src) backend memory: a token -k-1 in tokens is token_src[k]
                              * (the previous step's chosen ids, not yet read by the host: resolve_ids) */
    int n_token_src;
    bool pinned;             /* the arrays are pinned host memory (backend_alloc_pinned) left unchanged until
                              * the step has run: model_infer_upload issues their copies without waiting */
} model_batch;

/* What an architecture provides (gpt2.c, llama.c). */
struct model_arch {
    const char *name;
    /* Fills specs (when not NULL) and returns how many there are. */
    int (*plan_params)(const model_config *cfg, model_param *specs);
    void (*init_weights)(model *m, uint64_t seed);
    sk_status (*train_prepare)(model *m, int B, int T);
    float (*forward)(model *m, const int *tokens, const int *targets, int B, int T);
    void (*backward)(model *m, float dloss);
    tensor (*logits)(const model *m);
    /* Makes the inference workspace (per-step scratch, tables) fit batches of up to
     * max_tokens tokens from max_seqs sequences at positions below max_ctx (checked by the
     * caller); keeps what is larger already, dimension by dimension. */
    sk_status (*infer_prepare)(model *m, int max_tokens, int max_seqs, int max_ctx);
    /* Copies b's arrays into the workspace (model_infer_upload; b checked by the caller). */
    void (*infer_upload)(model *m, const model_batch *b);
    /* One forward of model_infer_batch over the arrays uploaded, with b's sizes: device work
     * on the default stream only (model_infer_compute). */
    tensor (*infer_batch)(model *m, const model_kv_cache *kv, const model_batch *b);
    void (*free_state)(model *m);
    /* Bytes train_prepare(B, T) allocates for activations and scratch (gradients excluded)
     * in m's precision and recompute setting, without allocating: the memory plan of --micro-batch
     * auto. Optional (NULL: unknown). */
    size_t (*train_bytes)(const model *m, int B, int T);
    /* How parameter p is cut over tensor-parallel ranks. Optional (NULL: the architecture
     * cannot be split). */
    model_split (*split)(const model_config *cfg, const model_param *p);
};

extern const model_arch gpt2_arch;
extern const model_arch llama_arch;   /* llama.c: Llama, Mistral and Qwen2 */
/* The architecture table for a kind (never NULL for a kind in the enum). */
const model_arch *model_arch_get(model_arch_kind kind);
/* llama.c: the rotary inverse frequencies inv_freq(head_dim/2) for cfg's rope_theta and
 * rope_scaling, as transformers computes them (f32); the model's cos/sin tables come from it. */
void llama_rope_inv_freq(const model_config *cfg, float *inv_freq);

/* config.json: read (HF dialects) and write. A missing or absurd field is SK_ECONFIG with a
 * message naming the file and the field; quirks transformers accepts (a bos/eos id outside
 * the vocabulary) are warned about and dropped. */
sk_status model_config_load(const char *dir, model_config *cfg);
sk_status model_config_save(const model_config *cfg, const char *dir);
/* Checks a config built in code (init presets, flags) with the same rules as a loaded one. */
sk_status model_config_validate(model_config *cfg, const char *what);
/* Fills the GPT-2 defaults for the shape given. */
void model_config_gpt2(model_config *cfg, int n_layer, int n_head, int n_embd, int n_ctx, int vocab);

/* Plans the parameters and allocates them (uninitialized) on the backend. */
sk_status model_create(const model_config *cfg, backend *be, model **out);
void model_free(model *m);
const model_param *model_find_param(const model *m, const char *name);

/* Loads a model folder (config.json + model.safetensors or shards with the index) as a
 * training model. Accepts GPT-2 names with or without "transformer."; bf16/f16/f32 converted
 * to f32. */
sk_status model_load(const char *dir, backend *be, model **out);
/* Reads dir's weights into m, created for dir's config (model_load = config + create + this):
 * every spec by name (see weights.c), converted to f32 in small chunks straight from the
 * read-only mapping. A missing tensor, a wrong shape or an unknown tensor is SK_EFORMAT
 * naming it. */
sk_status model_load_weights(model *m, const char *dir);
/* Opens a model folder as an inference model (see the top): config.json, then wts_open
 * keeping mapped the matrix dtypes be supports for both BACKEND_OP_MATMUL and
 * BACKEND_OP_EMBED, then model_open_wts. The folder is checked as model_load checks it (the
 * same code: missing, extra or misshapen tensors, GPT-2's prefix, a tied lm_head, skipped
 * buffers). On a backend whose memory is not host memory (be->host_memory false: CUDA) the
 * weights cannot stay mapped: this is model_load instead (an f32 copy uploaded to the device,
 * m->params set), until a device backend reads low-precision weights of its own. */
sk_status model_open_weights(const char *dir, backend *be, model **out);
/* (continued) On a device whose backend has the bf16 mixed-precision, embedding and paged ops
 * (backend_supports for BACKEND_OP_MIXED, BACKEND_OP_EMBED and BACKEND_OP_PAGED in bf16:
 * CUDA), model_open_weights and model_open_wts give an inference model instead: its matrices
 * one device copy in bf16, its 1-D tensors f32 (devw.h, shared by every model opened over
 * the same wts on the same device), its activations and key/value cache in bf16
 * (model_infer_dtype). SKEIN_INFER_DTYPE=f32 in the environment keeps the f32 copy of
 * model_load there (exact comparisons with the CPU). */
/* An inference model of config cfg over w (checked against cfg's plan as above): *out takes
 * its own reference (wts_ref), so engines over one wts share its pages and copies (on a
 * device: one device copy per device, devw.h); the caller keeps its reference. On a device
 * without bf16 inference (SKEIN_INFER_DTYPE=f32) a training model with an f32 copy of w, as
 * model_open_weights gives there. SK_ECONFIG when a matrix of w has a dtype a host-memory be
 * cannot multiply (w opened for another backend). */
sk_status model_open_wts(const model_config *cfg, wts *w, backend *be, model **out);
/* Whether cfg can be split over K ranks (see model_tp): its heads, the MLP width and the
 * vocabulary divide (key/value heads divide or are fewer and divide K); SK_ECONFIG naming the
 * shapes that do not. */
sk_status model_tp_check(const model_config *cfg, int K);
/* model_open_weights cut over the ranks of c: this rank's share (model_tp) of dir's model.
 * Every rank reads only its slices: on the CPU a slice that is rows of a stored matrix stays a
 * view into the read-only mapping; the others (columns of a stored matrix, GPT-2's packed
 * q/k/v, the embedding with its zero row, and every 1-D tensor) are copied into m->tp.slices in
 * the file's dtype, and every page of the mapping outside this rank's views is then released
 * from the process (file_map_release), so its resident weights are about 1/K of the model's. On a device backend every slice
 * is a copy in device memory, laid out as the whole model's device copy would be: matrices
 * in bf16 and 1-D tensors in f32 where the backend runs inference in bf16 (devw.h; not with
 * SKEIN_INFER_DTYPE=f32), else all f32; the pages of the mapping are released as well. c's
 * typed collectives then carry be's memory (comm_set_backend; NCCL on the device, or MPI and
 * gloo staged through pinned host memory when ranks share a GPU) until model_free sets it back
 * to host memory. c NULL or of one rank: model_open_weights. Checks the folder as
 * model_open_weights does, then model_tp_check. */
sk_status model_open_split(const char *dir, backend *be, comm *c, model **out);
/* The same over opened weights w (the server's mapping), as model_open_wts: *out takes its own
 * reference. */
sk_status model_open_wts_split(const model_config *cfg, wts *w, backend *be, comm *c, model **out);
/* Bytes of m's weights resident in this process now (*out): the pages of its weight files
 * that are mapped here (memstat), its slices (model_tp) and the converted copies of its wts;
 * a training model's f32 parameters. SK_EIO when /proc cannot be read. */
sk_status model_resident_bytes(const model *m, size_t *out);
/* SK_OK, or the failure of one of m's collectives since it was opened (SK_ECOMM naming the
 * operation and the rank that died or did not answer), with its message: a split model whose
 * step failed is unusable. Always SK_OK for a model that is not split. */
sk_status model_step_status(const model *m);

/* Writes config.json and model.safetensors (f32, "transformer."-prefixed GPT-2 names as
 * GPT2LMHeadModel writes them; Llama names as they are) into dir (created), sharded with the
 * index past MODEL_SHARD_BYTES. Files are written atomically. A training model only: an
 * inference model (its folder already holds its weights) is SK_ESTATE. */
sk_status model_save(const model *m, const char *dir);
/* model_save in dtype dt (f32, bf16, f16; config "torch_dtype" says which) with shards of at
 * most max_shard_bytes (a larger tensor gets a shard of its own). */
#define MODEL_SHARD_BYTES ((size_t)5000000000)   /* the Hub's customary "5GB" */
sk_status model_save_as(const model *m, const char *dir, dtype dt, size_t max_shard_bytes);
/* model_save of m's specs with their values taken from params (n_params floats of HOST memory,
 * e.g. ZeRO's gathered copy) instead of the backend's m->params. */
sk_status model_save_host(const model *m, const float *params, const char *dir);

/* Writes a random-initialized model folder for cfg (config.json + weights in dt, sharded as
 * model_save_as) without creating the model: each tensor is generated in pieces of a few MB
 * and streamed to disk, so any size fits in memory. Values, independent of the thread count:
 * 2-D tensors N(0, MODEL_INIT_STD); tensor i (in model_folder_layout order) is cut into blocks
 * of 65536 elements, block b drawn from rng_seed(model_init_stream_seed(seed, i, b)): its
 * elements 2j and 2j+1 are MODEL_INIT_STD * r*cos(2 pi u2) and r*sin(2 pi u2), r =
 * sqrt(-2 ln u1), u1 = ((d0 >> 11) + 1) / (2^53 + 1), u2 = (d1 >> 11) / 2^53, d0 and d1
 * the draws 2j and 2j+1 of rng_u64 (Box-Muller as rng_normal, keeping both numbers). 1-D ".bias"
 * tensors are 0; other 1-D tensors (norm weights) 1. */
#define MODEL_INIT_STD 0.02f
sk_status model_init_folder(const model_config *cfg, const char *dir, uint64_t seed, dtype dt, size_t max_shard_bytes);
uint64_t model_init_stream_seed(uint64_t seed, int tensor, uint64_t block);
/* A model of cfg holding model_init_folder(cfg, seed)'s values, made without a folder (the
 * random weights of `bench --preset`): on a device with bf16 inference (model_open_weights) an
 * inference model whose device copy is filled straight from the generator (no f32 copy
 * anywhere), elsewhere a training model (model_create + model_init_streamed). */
sk_status model_open_random(const model_config *cfg, backend *be, uint64_t seed, model **out);
/* Whether m is an inference model (mapped or device-copied weights; model.h's top): training
 * entry points refuse it. */
static inline bool model_is_inference(const model *m) { return m->weights || m->dev; }
/* Fills m's parameters with the values model_init_folder(cfg, seed) would write (in f32),
 * generated in parallel and uploaded piece by piece: the fast random start of `bench train`
 * at any size (model_init_weights draws from one sequential generator). */
sk_status model_init_streamed(model *m, uint64_t seed);
/* The tensors a folder of cfg holds (names as in the plan: GPT-2 without "transformer."),
 * in file order; fills specs when not NULL and returns the count. */
int model_folder_layout(const model_config *cfg, model_param *specs);

/* Tensor spec index i of the current parameters / gradients as a view of its shape (the
 * spec's dims; GPT-2 Conv1D (in,out), nn.Linear (out,in)), through its group's base (f32),
 * or, in an inference model, its view into m->weights (the file's dtype for matrices the
 * backend reads so; no gradients). Model code addresses parameters only through these. */
tensor model_param_view(const model *m, int i);
tensor model_grad_view(const model *m, int i);
/* The weight a product reads: in mixed precision the bf16 compute copy of spec i (same
 * shape), else model_param_view. Norm weights and biases are read as f32 parameters. */
tensor model_compute_view(const model *m, int i);

/* ---- Mixed precision ----
 * model_set_precision(m, DT_BF16) before model_train_prepare (and before ZeRO): activations the op table marks [lp] are planned in bf16 and
 * products read a bf16 copy of the f32 parameters, cast from them in the first forward
 * after they change (autocast's layout: the parameters, their gradients, the optimizer,
 * the residual stream and the loss stay f32). DT_F32 is plain f32 training. SK_EARG when
 * the backend has no bf16 mixed-precision ops or the model is an inference model.
 * model_params_changed marks the copy stale after m->params was written from outside
 * model_load/model_init_weights/the optimizer (which mark it themselves). */
sk_status model_set_precision(model *m, dtype act_dt);
void model_params_changed(model *m);
/* The optimizer wrote the new parameters into the compute copy as well (adamw's lp): it is
 * fresh again. */
void model_compute_written(model *m);
/* Casts group g's f32 parameters at src (backend memory, groups[g].count floats) into the
 * compute copy, on the default stream; no-op in f32. The way a provider that released
 * m->params (ZeRO-3) keeps the copy fresh: the forward casts nothing without m->params, so
 * the provider writes each group after gathering it, before the layer's products read it. */
void model_write_compute(model *m, int g, const float *src);
/* Whether spec i stays an f32 tensor on the device when the master weights live elsewhere
 * (model_release_master): 1-D tensors (norm weights, biases) and the outer groups
 * (embeddings, which the lookup reads in f32, the final norm, the LM head). */
bool model_spec_resident(const model *m, int i);
/* The elements of the resident specs together. */
size_t model_resident_numel(const model *m);
/* Mixed precision with the f32 master weights kept elsewhere (ZeRO-Offload keeps them on
 * the host): allocates the compute copy if model_train_prepare has not yet and casts it, copies the resident specs into m->resident,
 * which model_param_view reads from then on, and frees m->params. The owner of the master
 * then writes the new values into the compute copy (model_compute_view) and the resident
 * views (model_param_view) after each update. SK_ENOMEM when the buffer cannot be had. */
sk_status model_release_master(model *m);
/* Hook calls for architecture code (no-ops without a provider), in the order above. */
static inline void model_hook_before_forward(model *m, int l) {
    if (m->provider && m->provider->before_forward) m->provider->before_forward(m->provider_ctx, m, l);
}
static inline void model_hook_before_backward(model *m, int l) {
    if (m->provider && m->provider->before_backward) m->provider->before_backward(m->provider_ctx, m, l);
}
static inline void model_hook_after_backward(model *m, int l) {
    if (m->provider && m->provider->after_backward) m->provider->after_backward(m->provider_ctx, m, l);
}

/* ---- The owner side of parameters and gradients (ZeRO) ----
 * model_set_param_provider installs p (NULL: none) with its ctx; p->external_grads needs a
 * model without gradients yet (before model_train_prepare). Removing the provider points
 * every base back into m->params / m->grads (NULL where released or external).
 * model_release_params frees m->params: from then on the provider points the parameter bases
 * before each use (a model without parameters cannot be saved or run without it).
 * model_set_param_base / model_set_grad_base point group g at p (n = groups[g].count
 * elements of backend memory the provider owns; NULL: none). */
void model_set_param_provider(model *m, const model_param_provider *p, void *ctx);
void model_release_params(model *m);
void model_set_param_base(model *m, int g, float *p);
void model_set_grad_base(model *m, int g, float *p);
/* Points every group's parameter (gradient) base into m->params (m->grads). */
void model_reset_bases(model *m);
/* Activation bytes of train_prepare(B, T) in m's precision; 0 when the architecture cannot
 * say. */
size_t model_train_bytes(const model *m, int B, int T);

/* Training and inference entry points: thin wrappers over m->arch. The training ones need a
 * training model: model_train_prepare refuses an inference model (SK_ESTATE), the others
 * assert (they run only after it). */
void model_init_weights(model *m, uint64_t seed);
/* Allocates m->grads (n_params, unless m->grads_external) and the activations for (B,T). */
sk_status model_train_prepare(model *m, int B, int T);
/* Forward pass over tokens(B,T) (host arrays; B, T at most what train_prepare planned).
 * With targets(B,T) (entries < 0 are ignored) returns the mean loss over counted targets and
 * keeps what backward needs (the logits buffer then holds softmax - onehot, so
 * model_logits is not available); without, returns 0 and leaves logits (B,T,V) in
 * model_logits. Dropout applies only when m->dropout is set; off, the path is the plain one. */
float model_forward(model *m, const int *tokens, const int *targets, int B, int T);
/* Backward of the last forward: gradients accumulate into m->grads, each counted target's
 * loss weighted by dloss (1/number of target tokens in the optimizer step). */
void model_backward(model *m, float dloss);
void model_zero_grad(model *m);
/* The logits (B*T,V) of the last forward without targets, a view of backend memory (read
 * them with backend_download). */
tensor model_logits(const model *m);

/* Incremental decoding. model_kv_create allocates one sequence's keys and values for
 * max_T positions (1..n_positions; SK_EARG outside) in backend memory, at position 0, and
 * grows m's step workspace to fit; model_kv_reset starts a new sequence in it; model_kv_free
 * frees it (NULL is fine) and may come after model_free. model_infer_step feeds n tokens at
 * the kv's position (n > 1: prefill, 1: decode; pos + n <= max_T is the caller's to check,
 * asserted), advances it and returns the logits (V) of the last one, a view of backend
 * memory valid until m's next step (read it with backend_download). Steps on one model run
 * one at a time (they share its workspace); any number of kv objects may take turns. */
sk_status model_kv_create(model *m, int max_T, model_kv **out);
void model_kv_reset(model_kv *kv);
int model_kv_pos(const model_kv *kv);
void model_kv_free(model_kv *kv);
tensor model_infer_step(model *m, model_kv *kv, const int *tokens, int n);

/* Batched inference over a paged cache (the engine). model_infer_prepare grows m's step
 * workspace to batches of max_tokens tokens from max_seqs sequences at positions below
 * max_ctx (<= n_positions; SK_EARG outside); it is grow-only, so plan once, then step.
 * model_infer_batch runs one forward over b (sizes within the prepared ones, positions and
 * slots consistent with the sequences: asserted): for every layer it writes each token's key
 * and value into its slot of kv, attends for each sequence over its blocks, and returns the
 * logits (R,V) of b->out_rows, a view of backend memory valid until m's next step, its rows
 * arch_vocab_padded(V) apart (aligned rows for the LM head's product). It needs
 * a backend with the paged ops (backend_supports_paged, checked by model_infer_prepare).
 * model_infer_step is this with one sequence whose one block is the model_kv. */
sk_status model_infer_prepare(model *m, int max_tokens, int max_seqs, int max_ctx);
/* The dtype of m's inference activations ([lp], backend.h) and, by default (kv.h's
 * kv_dtype_resolve), of its key/value cache: bf16 for a
 * model over a device copy (m->dev) or a split one over bf16 device slices (m->tp.lp), else
 * f32. The residual stream, norm statistics and the
 * logits are f32 either way. */
dtype model_infer_dtype(const model *m);
/* The row stride of the logits model_infer_batch returns (the vocabulary padded). */
int64_t model_logits_ld(const model *m);
tensor model_infer_batch(model *m, const model_kv_cache *kv, const model_batch *b);
/* model_infer_batch in its two halves, for a caller that records the second as a graph and
 * replays it (backend.h graph_begin): model_infer_upload checks b (as model_infer_batch does)
 * and copies its arrays into m's workspace, waiting for them to land (b->pinned: issued in
 * stream order, not waited for); model_infer_compute then
 * issues the forward over them on the default stream, taking only b's sizes (n_tokens, n_seqs,
 * max_blocks, n_out) from b: on a model that is not split, once a step of these sizes has run
 * (backends grow some scratch on first use), it allocates nothing and never waits for the
 * device, so its work can be recorded. The same sizes and the same workspace
 * (model_infer_epoch unchanged) give the same device work, reading the uploaded arrays. */
void model_infer_upload(model *m, const model_kv_cache *kv, const model_batch *b);
tensor model_infer_compute(model *m, const model_kv_cache *kv, const model_batch *b);
/* Changes whenever model_infer_prepare moves m's step workspace (a recorded step is then stale). */
unsigned model_infer_epoch(const model *m);

#endif
