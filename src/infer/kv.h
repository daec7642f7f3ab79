/* kv: the engine's key/value memory -- one pool of fixed-size blocks, per-sequence block
 * tables, and automatic prefix caching.
 *
 *   kv_pool *p;
 *   kv_pool_init(m, DT_F32, bytes, 16, &p);  // one backend allocation: every layer's K and V
 *   kv_seq s;
 *   kv_seq_init(&s, max_blocks);
 *   int cached = kv_seq_match(p, &s, prompt, n);   // full blocks already computed: reused
 *   if (kv_seq_reserve(p, &s, cached + chunk)) {   // blocks for the positions to compute
 *       ... model_infer_batch(m, &cache, batch) with s.table ...
 *       kv_seq_commit(p, &s, tokens, cached + chunk);   // full blocks join the prefix cache
 *   }
 *   kv_seq_release(p, &s);                   // at the end, on preemption or cancellation
 *
 * Memory: kv_pool_cache gives the model's view (model_kv_cache): layer l's keys are the
 * (n_blocks * block_size, KD) rows at k + l * layer_stride, values likewise; a block is
 * block_size consecutive rows of every layer. Blocks are named by index; nothing is allocated
 * after kv_pool_init. The cache has a dtype of its own (--kv-cache-dtype: kv_dtype_resolve):
 * the model's inference dtype by default, or bf16/f16 under f32 activations where the backend
 * reads such a cache (backend.h BACKEND_OP_KV_CACHE: the CPU), half the bytes a block.
 *
 * Invariants. Each block has a reference count: the number of sequence tables holding it.
 * A block with count 0 sits in the free queue (least recently freed first); allocation takes
 * the head. A full block whose tokens are known is "hashed": keyed by a chain hash of its
 * tokens and its parent block's key, so one key names a whole prefix; the prefix cache maps
 * keys to hashed blocks, held or free. A free hashed block keeps its keys and values until
 * allocation evicts it (LRU); kv_seq_match revives it. Keys are compared token by token and
 * parent by parent, so a hash collision can cost a miss, never a wrong hit. A sequence's table
 * holds blocks 0..n_blocks-1 of its positions; its first n_hashed are hashed.
 *
 * Counters (kv_pool_stats): hits and misses count full prompt blocks looked up by
 * kv_seq_match; evictions count hashed blocks reused for other contents. */
#ifndef SKEIN_KV_H
#define SKEIN_KV_H

#include "model/model.h"

#define KV_BLOCK_SIZE 16   /* tokens per block by default */

typedef struct kv_pool kv_pool;

/* One sequence's block table; the table array (cap entries) is the sequence's own. */
typedef struct kv_seq {
    int *table;          /* (cap) physical block of each logical block */
    int n_blocks, cap;
    int n_hashed;        /* leading blocks in the prefix cache */
    uint64_t key;        /* chain key of block n_hashed-1 (0: none) */
} kv_seq;

typedef struct kv_stats {
    uint64_t hits, misses, evictions;
} kv_stats;

/* Bytes one block takes for m's shape (every layer's keys and values of its key/value heads:
 * a split model's rank holds only its own, model_tp) in cache dtype dt. */
size_t kv_block_bytes(const model *m, dtype dt, int block_size);
/* --kv-cache-dtype auto: the model's inference dtype (model_infer_dtype). */
#define KV_DTYPE_AUTO DT_COUNT
/* Reads --kv-cache-dtype's value: "auto" (KV_DTYPE_AUTO), "f32", "bf16" or "f16"; SK_EARG
 * naming the flag on anything else. */
sk_status kv_dtype_parse(const char *text, dtype *out);
/* The spelling kv_dtype_parse reads for dt ("auto" for KV_DTYPE_AUTO). */
const char *kv_dtype_name(dtype dt);
/* The cache dtype m runs with when want is asked for (KV_DTYPE_AUTO or a dtype): auto is
 * model_infer_dtype(m); another dtype than that needs f32 activations and a backend that reads
 * such a cache (BACKEND_OP_KV_CACHE). SK_EARG naming the flag and the backend otherwise. */
sk_status kv_dtype_resolve(const model *m, dtype want, dtype *out);
/* Reads --kv-memory's value: a number in (0,1] is that fraction of the backend's free memory
 * (backend_mem_info), a larger one bytes (suffixes k, M, G: powers of 1024). SK_EARG naming
 * the flag on anything else. */
sk_status kv_budget(backend *be, const char *spec, size_t *bytes);
/* The pool of as many blocks of block_size tokens in cache dtype dt (f32, bf16 or f16: one
 * kv_dtype_resolve gave) as fit in bytes (at least 1: SK_EARG otherwise, naming the sizes),
 * allocated once on m's backend. *out owns it; the model must outlive it. */
sk_status kv_pool_init(model *m, dtype dt, size_t bytes, int block_size, kv_pool **out);
void kv_pool_free(kv_pool *p);
/* The model's view of the pool (valid as long as p). */
model_kv_cache kv_pool_cache(const kv_pool *p);
int kv_pool_block_size(const kv_pool *p);
dtype kv_pool_dtype(const kv_pool *p);
int kv_pool_blocks(const kv_pool *p);
/* Blocks no sequence holds (free, cached or not): what reservations can take. */
int kv_pool_available(const kv_pool *p);
kv_stats kv_pool_stats(const kv_pool *p);

/* An empty sequence whose table holds up to max_blocks blocks. */
sk_status kv_seq_init(kv_seq *s, int max_blocks);
/* Frees the table array; s must hold no blocks (kv_seq_release first). */
void kv_seq_free(kv_seq *s);
/* Looks up the full blocks of tokens(n) in the prefix cache, at most (n-1)/block_size of them
 * so that at least one token is left to compute (its logits are needed); appends each hit to
 * s's table (s empty on entry, asserted) with one more reference, and stops at the first miss.
 * Returns the number of tokens whose keys and values are now in place (hits * block_size). */
int kv_seq_match(kv_pool *p, kv_seq *s, const int *tokens, int n);
/* Appends blocks to s's table until it covers n_tokens positions (within its cap, asserted):
 * all of them, taking free blocks from the head of the queue (evicting cached contents), or,
 * when too few are free, none at all and false. */
bool kv_seq_reserve(kv_pool *p, kv_seq *s, int n_tokens);
/* Positions 0..n_filled-1 of s now hold the keys and values of tokens: every block they fill
 * that is not hashed yet joins the prefix cache (unless an equal block is there already). */
void kv_seq_commit(kv_pool *p, kv_seq *s, const int *tokens, int n_filled);
/* Drops s's references (last block first, so a sequence's tail is evicted before its prefix)
 * and empties its table. Blocks nobody holds go back to the free queue: hashed ones to its
 * tail (they stay cached), others to its head. */
void kv_seq_release(kv_pool *p, kv_seq *s);

#endif
