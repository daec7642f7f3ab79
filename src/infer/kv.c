/* kv: the block pool, block tables and the prefix cache (see kv.h for the invariants).
 *
 * Host-side bookkeeping is a few arrays indexed by block: reference counts, the free queue as
 * a doubly linked list (prev/next, -1 at the ends), and for hashed blocks their key, their
 * parent's key and their tokens, chained into buckets of the key's low bits. Every operation
 * is O(blocks touched), with no allocation after kv_pool_init. */
#include "infer/kv.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct kv_pool {
    backend *be;
    unsigned char *mem;      /* backend memory: keys (L, n_blocks*bs, KD), then values (cache.dt) */
    model_kv_cache cache;
    int n_blocks, bs, n_free;
    int *ref;                /* (n_blocks) tables holding the block */
    int *prev, *next;        /* (n_blocks) free queue links */
    int head, tail;          /* free queue ends (-1: empty) */
    bool *hashed;            /* (n_blocks) in the prefix cache */
    uint64_t *key, *parent;  /* (n_blocks) chain key of a hashed block and of its parent (0: none) */
    int *tokens;             /* (n_blocks, bs) a hashed block's tokens */
    int *bucket;             /* (n_buckets) first hashed block of each bucket, -1: none */
    int *chain;              /* (n_blocks) next hashed block in the same bucket */
    uint64_t bucket_mask;
    kv_stats stats;
};

size_t kv_block_bytes(const model *m, dtype dt, int block_size) {
    return 2 * dtype_size(dt) * (size_t)m->cfg.n_layer * (size_t)block_size * (size_t)m->tp.n_kv_head * m->cfg.head_dim;
}

/* --kv-cache-dtype's values and the dtypes they name. */
static const struct { const char *name; dtype dt; } kv_dtypes[] = {
    {"auto", KV_DTYPE_AUTO}, {"f32", DT_F32}, {"bf16", DT_BF16}, {"f16", DT_F16},
};
#define KV_NDTYPES (int)(sizeof kv_dtypes / sizeof kv_dtypes[0])

sk_status kv_dtype_parse(const char *text, dtype *out) {
    for (int i = 0; i < KV_NDTYPES; i++)
        if (!strcmp(text, kv_dtypes[i].name)) {
            *out = kv_dtypes[i].dt;
            return SK_OK;
        }
    return sk_fail(SK_EARG, "--kv-cache-dtype '%s': expected auto, f32, bf16 or f16", text);
}

const char *kv_dtype_name(dtype dt) {
    for (int i = 0; i < KV_NDTYPES; i++)
        if (kv_dtypes[i].dt == dt) return kv_dtypes[i].name;
    return "?";
}

sk_status kv_dtype_resolve(const model *m, dtype want, dtype *out) {
    const dtype act = model_infer_dtype(m);
    *out = want == KV_DTYPE_AUTO ? act : want;
    if (*out == act || (act == DT_F32 && backend_supports(m->be, BACKEND_OP_KV_CACHE, *out))) return SK_OK;
    if (act == DT_F32)
        return sk_fail(SK_EARG, "--kv-cache-dtype %s: the %s backend keeps no %s key/value cache under f32 activations",
                       kv_dtype_name(want), m->be->name, kv_dtype_name(want));
    return sk_fail(SK_EARG, "--kv-cache-dtype %s: the %s backend keeps the key/value cache in its activations' dtype, "
                   "%s (use auto or %s)", kv_dtype_name(want), m->be->name, kv_dtype_name(act), kv_dtype_name(act));
}

sk_status kv_budget(backend *be, const char *spec, size_t *bytes) {
    char *end;
    errno = 0;
    double v = strtod(spec, &end);
    double unit = 1;
    if (*end && !end[1]) {
        switch (tolower((unsigned char)*end)) {
        case 'k': unit = 1024.0; end++; break;
        case 'm': unit = 1048576.0; end++; break;
        case 'g': unit = 1073741824.0; end++; break;
        default: break;
        }
    }
    if (end == spec || *end || errno || !(v > 0) || v * unit > 1e18)
        return sk_fail(SK_EARG, "--kv-memory '%s': expected bytes (with k, M or G) or a fraction in (0,1] of free memory",
                       spec);
    if (v <= 1 && unit == 1) {
        size_t free_bytes, total;
        SK_TRY(backend_mem_info(be, &free_bytes, &total));
        *bytes = (size_t)(v * (double)free_bytes);
    } else {
        *bytes = (size_t)(v * unit);
    }
    return SK_OK;
}

/* ---- the free queue ---- */

static void kv_queue_unlink(kv_pool *p, int b) {
    if (p->prev[b] >= 0) p->next[p->prev[b]] = p->next[b]; else p->head = p->next[b];
    if (p->next[b] >= 0) p->prev[p->next[b]] = p->prev[b]; else p->tail = p->prev[b];
    p->prev[b] = p->next[b] = -1;
    p->n_free--;
}

static void kv_queue_push(kv_pool *p, int b, bool at_tail) {
    if (at_tail) {
        p->prev[b] = p->tail;
        p->next[b] = -1;
        if (p->tail >= 0) p->next[p->tail] = b; else p->head = b;
        p->tail = b;
    } else {
        p->next[b] = p->head;
        p->prev[b] = -1;
        if (p->head >= 0) p->prev[p->head] = b; else p->tail = b;
        p->head = b;
    }
    p->n_free++;
}

/* ---- the prefix cache ---- */

/* The key of a block of tokens(bs) after a parent key: SplitMix64's finalizer folded over
 * the tokens; never 0 (0 means "no parent"). */
static uint64_t kv_key(uint64_t parent, const int *tokens, int bs) {
    uint64_t h = parent ^ 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < bs; i++) {
        h += (uint64_t)(uint32_t)tokens[i] + 0x9E3779B97F4A7C15ull;
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
        h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
        h ^= h >> 31;
    }
    return h ? h : 1;
}

/* The hashed block with this key, parent and tokens, or -1. */
static int kv_lookup(const kv_pool *p, uint64_t key, uint64_t parent, const int *tokens) {
    for (int b = p->bucket[key & p->bucket_mask]; b >= 0; b = p->chain[b])
        if (p->key[b] == key && p->parent[b] == parent &&
            !memcmp(p->tokens + (size_t)b * p->bs, tokens, sizeof(int) * (size_t)p->bs))
            return b;
    return -1;
}

static void kv_register(kv_pool *p, int b, uint64_t key, uint64_t parent, const int *tokens) {
    uint64_t i = key & p->bucket_mask;
    p->hashed[b] = true;
    p->key[b] = key;
    p->parent[b] = parent;
    memcpy(p->tokens + (size_t)b * p->bs, tokens, sizeof(int) * (size_t)p->bs);
    p->chain[b] = p->bucket[i];
    p->bucket[i] = b;
}

static void kv_unregister(kv_pool *p, int b) {
    int *link = &p->bucket[p->key[b] & p->bucket_mask];
    while (*link != b) link = &p->chain[*link];
    *link = p->chain[b];
    p->hashed[b] = false;
}

/* ---- the pool ---- */

sk_status kv_pool_init(model *m, dtype dt, size_t bytes, int block_size, kv_pool **out) {
    *out = NULL;
    const model_config *c = &m->cfg;
    SK_ASSERT(dt == DT_F32 || dt == DT_BF16 || dt == DT_F16);
    if (block_size <= 0 || block_size > 4096) return sk_fail(SK_EARG, "KV block size %d outside 1..4096", block_size);
    const size_t per_block = kv_block_bytes(m, dt, block_size);
    const size_t nb = bytes / per_block;
    if (nb < 1 || nb > (size_t)1 << 30)
        return sk_fail(SK_EARG, "a KV budget (--kv-memory) of %zu bytes holds %zu blocks of %zu bytes (%d tokens); at "
                       "least one is needed", bytes, nb, per_block, block_size);
    kv_pool *p = mem_calloc(sizeof *p);
    if (!p) return SK_ENOMEM;
    const int n = (int)nb;
    size_t nbuckets = 1;
    while (nbuckets < nb) nbuckets <<= 1;
    p->be = m->be;
    p->n_blocks = n;
    p->bs = block_size;
    p->bucket_mask = nbuckets - 1;
    p->mem = backend_alloc(m->be, per_block * nb);
    p->ref = mem_calloc(sizeof(int) * nb);
    p->prev = mem_alloc(sizeof(int) * nb);
    p->next = mem_alloc(sizeof(int) * nb);
    p->hashed = mem_calloc(sizeof(bool) * nb);
    p->key = mem_calloc(sizeof(uint64_t) * nb);
    p->parent = mem_calloc(sizeof(uint64_t) * nb);
    p->tokens = mem_alloc(sizeof(int) * nb * (size_t)block_size);
    p->bucket = mem_alloc(sizeof(int) * nbuckets);
    p->chain = mem_alloc(sizeof(int) * nb);
    if (!p->mem || !p->ref || !p->prev || !p->next || !p->hashed || !p->key || !p->parent || !p->tokens ||
        !p->bucket || !p->chain) {
        kv_pool_free(p);
        return sk_fail_ctx(SK_ENOMEM, "allocating a KV pool of %d blocks (%zu bytes)", n, per_block * nb);
    }
    for (size_t i = 0; i < nbuckets; i++) p->bucket[i] = -1;
    p->head = p->tail = -1;
    for (int b = 0; b < n; b++) kv_queue_push(p, b, true);
    const size_t KD = (size_t)m->tp.n_kv_head * c->head_dim, layer = nb * (size_t)block_size * KD;
    p->cache = (model_kv_cache){p->mem, p->mem + (size_t)c->n_layer * layer * dtype_size(dt), dt, layer, n, block_size};
    *out = p;
    return SK_OK;
}

void kv_pool_free(kv_pool *p) {
    if (!p) return;
    backend_mem_free(p->be, p->mem);
    mem_free(p->ref);
    mem_free(p->prev);
    mem_free(p->next);
    mem_free(p->hashed);
    mem_free(p->key);
    mem_free(p->parent);
    mem_free(p->tokens);
    mem_free(p->bucket);
    mem_free(p->chain);
    mem_free(p);
}

model_kv_cache kv_pool_cache(const kv_pool *p) { return p->cache; }
int kv_pool_block_size(const kv_pool *p) { return p->bs; }
dtype kv_pool_dtype(const kv_pool *p) { return p->cache.dt; }
int kv_pool_blocks(const kv_pool *p) { return p->n_blocks; }
int kv_pool_available(const kv_pool *p) { return p->n_free; }
kv_stats kv_pool_stats(const kv_pool *p) { return p->stats; }

/* ---- sequences ---- */

sk_status kv_seq_init(kv_seq *s, int max_blocks) {
    memset(s, 0, sizeof *s);
    s->table = mem_alloc(sizeof(int) * (size_t)(max_blocks > 0 ? max_blocks : 1));
    if (!s->table) return sk_fail(SK_ENOMEM, "allocating a block table of %d blocks", max_blocks);
    s->cap = max_blocks;
    return SK_OK;
}

void kv_seq_free(kv_seq *s) {
    SK_ASSERT(s->n_blocks == 0);
    mem_free(s->table);
    s->table = NULL;
}

int kv_seq_match(kv_pool *p, kv_seq *s, const int *tokens, int n) {
    SK_ASSERT(s->n_blocks == 0);
    const int full = n > 0 ? (n - 1) / p->bs : 0;
    uint64_t parent = 0;
    int hits = 0;
    while (hits < full && hits < s->cap) {
        const int *t = tokens + (size_t)hits * p->bs;
        uint64_t key = kv_key(parent, t, p->bs);
        int b = kv_lookup(p, key, parent, t);
        if (b < 0) break;
        if (p->ref[b]++ == 0) kv_queue_unlink(p, b);
        s->table[s->n_blocks++] = b;
        parent = key;
        hits++;
    }
    s->n_hashed = hits;
    s->key = parent;
    p->stats.hits += (uint64_t)hits;
    p->stats.misses += (uint64_t)(full - hits);
    return hits * p->bs;
}

bool kv_seq_reserve(kv_pool *p, kv_seq *s, int n_tokens) {
    const int need = (n_tokens + p->bs - 1) / p->bs - s->n_blocks;
    if (need <= 0) return true;
    SK_ASSERT(s->n_blocks + need <= s->cap);
    if (need > p->n_free) return false;
    for (int i = 0; i < need; i++) {
        const int b = p->head;
        kv_queue_unlink(p, b);
        if (p->hashed[b]) {
            kv_unregister(p, b);
            p->stats.evictions++;
        }
        p->ref[b] = 1;
        s->table[s->n_blocks++] = b;
    }
    return true;
}

void kv_seq_commit(kv_pool *p, kv_seq *s, const int *tokens, int n_filled) {
    SK_ASSERT(n_filled <= s->n_blocks * p->bs);
    while ((s->n_hashed + 1) * p->bs <= n_filled) {
        const int b = s->table[s->n_hashed];
        const int *t = tokens + (size_t)s->n_hashed * p->bs;
        uint64_t key = kv_key(s->key, t, p->bs);
        /* an equal block computed meanwhile by another sequence stays the cached one */
        if (!p->hashed[b] && kv_lookup(p, key, s->key, t) < 0) kv_register(p, b, key, s->key, t);
        s->key = key;
        s->n_hashed++;
    }
}

void kv_seq_release(kv_pool *p, kv_seq *s) {
    for (int i = s->n_blocks - 1; i >= 0; i--) {
        const int b = s->table[i];
        SK_ASSERT(p->ref[b] > 0);
        if (--p->ref[b] == 0) kv_queue_push(p, b, p->hashed[b]);
    }
    s->n_blocks = s->n_hashed = 0;
    s->key = 0;
}
