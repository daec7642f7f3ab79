/* loader: a split's shards mapped and read as one token stream, cut into shuffled windows.
 *
 * Invariants: start[i] is the stream offset of shard i's first token and start[n_shards] the
 * stream length N >= T+1; samples are k = 0 .. n_samples-1 with n_samples = (N-1)/T, so the
 * window [k*T, k*T+T] always lies inside the stream. The order of epoch e is a Fisher-Yates
 * permutation drawn from rng seeded by mix(seed, e): a pure function of (seed, e, n_samples),
 * so any worker can recompute any epoch. Two epochs' permutations are cached (the current
 * one and its neighbour at an epoch boundary). Not thread-safe: one loader per thread. */
#include "data/data.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "base/rng.h"

typedef struct perm_cache {
    bool valid;
    uint64_t epoch;
    size_t *order;          /* (n_samples) sample k at each position of the epoch */
} perm_cache;

struct data_loader {
    int T;
    uint64_t seed;
    int n_shards;
    data_shard *shards;     /* (n_shards) */
    size_t *start;          /* (n_shards + 1) stream offsets */
    size_t n_tokens, n_samples;
    int vocab_size;         /* 0 when unknown */
    perm_cache cache[2];
    int cache_next;         /* which entry the next miss replaces */
    uint64_t epoch;         /* cursor */
    size_t index;
};

/* SplitMix64's finalizer over seed and epoch: nearby (seed, epoch) pairs give unrelated
 * generator states. */
static uint64_t mix_seed(uint64_t seed, uint64_t epoch) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull ^ (epoch + 0x632be59bd9b4e019ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Returns the order of `epoch`, computing it into the older cache entry on a miss. */
static const size_t *epoch_order(data_loader *dl, uint64_t epoch) {
    for (int i = 0; i < 2; i++)
        if (dl->cache[i].valid && dl->cache[i].epoch == epoch) return dl->cache[i].order;
    perm_cache *c = &dl->cache[dl->cache_next];
    dl->cache_next ^= 1;
    size_t n = dl->n_samples;
    for (size_t i = 0; i < n; i++) c->order[i] = i;
    rng r;
    rng_seed(&r, mix_seed(dl->seed, epoch));
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)rng_below(&r, (uint64_t)i + 1);
        size_t t = c->order[i];
        c->order[i] = c->order[j];
        c->order[j] = t;
    }
    c->epoch = epoch;
    c->valid = true;
    return c->order;
}

/* True when `name` holds `split` as a word: bounded by the start or '_' before, and by '_'
 * or '.' after ("train_000001.bin", "fineweb_train_000001.bin", "shakespeare_val.bin"). */
static bool name_has_split(const char *name, const char *split) {
    size_t k = strlen(split), n = strlen(name);
    if (n < 4 || strcmp(name + n - 4, ".bin") != 0) return false;
    for (const char *p = strstr(name, split); p; p = strstr(p + 1, split)) {
        bool before = p == name || p[-1] == '_';
        bool after = p[k] == '_' || p[k] == '.';
        if (before && after) return true;
    }
    return false;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Lists the shard file names of `split` in dir: from dataset.json when present, else by
 * scanning. *names (and each name) are owned by the caller; *vocab and *tokens are set from
 * dataset.json (0 and -1 without it). */
static sk_status list_shards(const char *dir, const char *split, char ***names, int *count, int *vocab,
                             long *tokens) {
    char path[4096];
    file_join(path, sizeof path, dir, "dataset.json");
    *names = NULL;
    *count = 0;
    *vocab = 0;
    *tokens = -1;
    char **list = NULL;
    int n = 0, cap = 0;
    if (file_exists(path)) {
        cJSON *root;
        SK_TRY(json_load_file(path, &root));
        long v = 0;
        sk_status st = json_get_int(root, "vocab_size", true, path, &v);
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(root, split);
        if (st == SK_OK && !cJSON_IsObject(sp))
            st = sk_fail(SK_EFORMAT, "%s: no \"%s\" split object", path, split);
        if (st == SK_OK) st = json_get_int(sp, "tokens", true, path, tokens);
        const cJSON *arr = st == SK_OK ? cJSON_GetObjectItemCaseSensitive(sp, "shards") : NULL;
        if (st == SK_OK && !cJSON_IsArray(arr))
            st = sk_fail(SK_EFORMAT, "%s: \"%s\".\"shards\" is not a list", path, split);
        int m = st == SK_OK ? cJSON_GetArraySize(arr) : 0;
        if (m > 0 && !(list = mem_calloc((size_t)m * sizeof *list))) st = SK_ENOMEM;
        for (int i = 0; st == SK_OK && i < m; i++) {
            const cJSON *it = cJSON_GetArrayItem(arr, i);
            if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) {
                st = sk_fail(SK_EFORMAT, "%s: \"%s\".\"shards\"[%d] is not a file name", path, split, i);
                break;
            }
            if (!(list[n++] = mem_strdup(it->valuestring))) st = SK_ENOMEM;
        }
        cJSON_Delete(root);
        if (st != SK_OK) {
            for (int i = 0; i < n; i++) mem_free(list[i]);
            mem_free(list);
            return st;
        }
        *vocab = (int)v;
    } else {
        DIR *d = opendir(dir);
        if (!d) return sk_fail(SK_EIO, "cannot open folder %s", dir);
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!name_has_split(e->d_name, split)) continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                char **grown = mem_realloc(list, (size_t)cap * sizeof *list);
                if (!grown) goto nomem;
                list = grown;
            }
            if (!(list[n] = mem_strdup(e->d_name))) goto nomem;
            n++;
        }
        closedir(d);
        if (n > 1) qsort(list, (size_t)n, sizeof *list, cmp_str);
        goto done;
    nomem:
        closedir(d);
        for (int i = 0; i < n; i++) mem_free(list[i]);
        mem_free(list);
        return SK_ENOMEM;
    }
done:
    *names = list;
    *count = n;
    return SK_OK;
}

/* Checks a 4-byte shard's tokens once: each must be a valid int and below the vocabulary.
 * (2-byte tokens always fit an int; their range against V is the model's to check.) */
static sk_status check_wide_tokens(const char *path, const data_shard *s, int vocab) {
    const uint32_t *t = s->tokens;
    uint64_t limit = vocab > 0 ? (uint64_t)vocab : (uint64_t)INT32_MAX;
    for (size_t i = 0; i < s->n; i++)
        if (t[i] >= limit)
            return sk_fail(SK_EFORMAT, "%s: token %zu is %u, outside the vocabulary of %llu", path, i,
                           t[i], (unsigned long long)limit);
    return SK_OK;
}

sk_status data_loader_open(const char *path, const char *split, int T, uint64_t seed, data_loader **out) {
    *out = NULL;
    if (T <= 0) return sk_fail(SK_EARG, "%s: sequence length %d is not positive", path, T);
    char **names = NULL;
    int n_names = 0, vocab = 0;
    long json_tokens = -1;
    bool is_dir = file_is_dir(path);
    if (!is_dir && !file_exists(path)) return sk_fail(SK_EIO, "cannot open %s: no such file or folder", path);
    if (is_dir) {
        SK_TRY(list_shards(path, split, &names, &n_names, &vocab, &json_tokens));
        if (n_names == 0) {
            mem_free(names);
            return sk_fail(SK_EFORMAT, "%s: no %s shards (%s_*.bin)", path, split, split);
        }
    } else {
        n_names = 1;
    }

    sk_status st = SK_OK;
    data_loader *dl = mem_calloc(sizeof *dl);
    if (!dl) { st = SK_ENOMEM; goto err; }
    dl->T = T;
    dl->seed = seed;
    dl->vocab_size = vocab;
    dl->shards = mem_calloc((size_t)n_names * sizeof *dl->shards);
    dl->start = mem_calloc(((size_t)n_names + 1) * sizeof *dl->start);
    if (!dl->shards || !dl->start) { st = SK_ENOMEM; goto err; }
    char file[4096];
    for (int i = 0; i < n_names; i++) {
        const char *p = is_dir ? file_join(file, sizeof file, path, names[i]) : path;
        data_shard *s = &dl->shards[i];
        if ((st = data_shard_open(p, s)) != SK_OK) goto err;
        dl->n_shards = i + 1;
        if (dl->vocab_size > 0 && s->vocab_size > 0 && s->vocab_size != dl->vocab_size) {
            st = sk_fail(SK_EFORMAT, "%s: vocabulary %d, but %s says %d", p, s->vocab_size,
                         is_dir ? "dataset.json" : "an earlier shard", dl->vocab_size);
            goto err;
        }
        if (dl->vocab_size == 0) dl->vocab_size = s->vocab_size;
        if (s->width == 2 && dl->vocab_size > 65536) {
            st = sk_fail(SK_EFORMAT, "%s: 2-byte tokens cannot hold the vocabulary of %d in dataset.json",
                         p, dl->vocab_size);
            goto err;
        }
        if (s->width == 4 && (st = check_wide_tokens(p, s, dl->vocab_size)) != SK_OK) goto err;
        dl->start[i + 1] = dl->start[i] + s->n;
    }
    dl->n_tokens = dl->start[dl->n_shards];
    if (json_tokens >= 0 && (size_t)json_tokens != dl->n_tokens) {
        st = sk_fail(SK_EFORMAT, "%s: dataset.json says the %s split has %ld tokens, its shards hold %zu",
                     path, split, json_tokens, dl->n_tokens);
        goto err;
    }
    if (dl->n_tokens < (size_t)T + 1) {
        st = sk_fail(SK_EFORMAT, "%s%s%s: dataset has %zu tokens, fewer than T+1 = %d for one sample",
                     path, is_dir ? " " : "", is_dir ? split : "", dl->n_tokens, T + 1);
        goto err;
    }
    dl->n_samples = (dl->n_tokens - 1) / (size_t)T;
    for (int i = 0; i < 2; i++)
        if (!(dl->cache[i].order = mem_alloc(dl->n_samples * sizeof(size_t)))) { st = SK_ENOMEM; goto err; }
    if (names) {
        for (int i = 0; i < n_names; i++) mem_free(names[i]);
        mem_free(names);
    }
    *out = dl;
    return SK_OK;
err:
    if (names) {
        for (int i = 0; i < n_names; i++) mem_free(names[i]);
        mem_free(names);
    }
    data_loader_free(dl);
    return st;
}

void data_loader_free(data_loader *dl) {
    if (!dl) return;
    for (int i = 0; i < dl->n_shards; i++) data_shard_close(&dl->shards[i]);
    mem_free(dl->shards);
    mem_free(dl->start);
    for (int i = 0; i < 2; i++) mem_free(dl->cache[i].order);
    mem_free(dl);
}

size_t data_loader_num_samples(const data_loader *dl) { return dl->n_samples; }
size_t data_loader_num_tokens(const data_loader *dl) { return dl->n_tokens; }
int data_loader_vocab_size(const data_loader *dl) { return dl->vocab_size; }

size_t data_loader_sample_offset(data_loader *dl, uint64_t epoch, size_t index) {
    SK_ASSERT(index < dl->n_samples);
    return epoch_order(dl, epoch)[index] * (size_t)dl->T;
}

/* Copies stream tokens [off, off+T] (T+1 of them) as inputs = first T, targets = last T. */
static void copy_window(const data_loader *dl, size_t off, int *inputs, int *targets) {
    int T = dl->T;
    SK_ASSERT(off + (size_t)T < dl->n_tokens);
    int lo = 0, hi = dl->n_shards - 1;      /* last shard with start <= off */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (dl->start[mid] <= off) lo = mid;
        else hi = mid - 1;
    }
    int s = lo;
    size_t i = off - dl->start[s];
    for (int t = 0; t <= T; t++) {
        while (i >= dl->shards[s].n) { s++; i = 0; }   /* skips empty shards too */
        int v = data_shard_token(&dl->shards[s], i++);
        if (t < T) inputs[t] = v;
        if (t > 0) targets[t - 1] = v;
    }
}

void data_loader_sample(data_loader *dl, uint64_t epoch, size_t index, int *inputs, int *targets) {
    copy_window(dl, data_loader_sample_offset(dl, epoch, index), inputs, targets);
}

void data_loader_next(data_loader *dl, int B, int *inputs, int *targets) {
    SK_ASSERT(B >= 0);
    for (int b = 0; b < B; b++) {
        data_loader_sample(dl, dl->epoch, dl->index, inputs + (size_t)b * dl->T, targets + (size_t)b * dl->T);
        if (++dl->index == dl->n_samples) {
            dl->index = 0;
            dl->epoch++;
        }
    }
}

void data_loader_get_pos(const data_loader *dl, uint64_t *epoch, size_t *index) {
    *epoch = dl->epoch;
    *index = dl->index;
}

sk_status data_loader_set_pos(data_loader *dl, uint64_t epoch, size_t index) {
    if (index >= dl->n_samples)
        return sk_fail(SK_EARG, "data position %zu is beyond the %zu samples of this dataset (another dataset or T?)",
                       index, dl->n_samples);
    dl->epoch = epoch;
    dl->index = index;
    return SK_OK;
}
