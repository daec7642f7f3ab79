/* tok_train: byte-level BPE training over text files.
 *
 * The text is split on "<|endoftext|>", pre-tokenized with the GPT-2 regex and counted as
 * words (unique pieces with counts). Each word is a sequence of token ids, starting from
 * its bytes. Pair counts are kept incrementally: every pair has a count (summed over words,
 * weighted by word count) and a list of words that may hold it; a max-heap orders pairs by
 * (count desc, left id asc, right id asc). A popped entry whose count is stale is pushed
 * back with its current count (counts only fall, except for pairs a merge creates, which
 * are pushed when created), so the top is always the true most frequent pair.
 *
 * Merging a pair touches only the words on its list: each word's pairs before and after
 * the merge are diffed and the differences applied. Ids: bytes 0..255 in the order of their
 * byte-level characters (GPT-2's order), merges from 256, "<|endoftext|>" last. As in HF's
 * trainer, a merge whose spelling already exists reuses that token. */
#include "tokenizer/tok_impl.h"

#include <stdlib.h>
#include <string.h>

#include "base/file.h"

typedef struct heap_ent { int64_t count; uint64_t key; } heap_ent;

typedef struct trainer {
    tok *t;
    tok_strmap words;              /* piece bytes -> word index */
    int64_t *wcount;               /* (W) occurrences of each word */
    uint32_t *woff, *wlen;         /* (W) its symbols: sym[woff .. woff + wlen) */
    int32_t *sym;
    size_t n_words, cap_words, n_sym, cap_sym;
    uint32_t *stamp;               /* (W) last merge that visited the word */

    tok_u64map pair_idx;           /* pair key -> pair index */
    uint64_t *pkey;                /* (P) */
    int64_t *pcount;               /* (P) */
    int32_t *phead;                /* (P) first node of the pair's word list */
    uint32_t *ptouch;              /* (P) last merge that raised the count */
    size_t n_pairs, cap_pairs;
    int32_t *nword, *nnext;        /* word-list nodes */
    size_t n_nodes, cap_nodes;

    heap_ent *heap;
    size_t heap_n, heap_cap;
    int32_t byte_tok[256];         /* byte -> its token id */
} trainer;

static sk_status grow_to(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return SK_OK;
    size_t c = *cap ? *cap : 1024;
    while (c < need) c *= 2;
    void *q = mem_realloc(*p, c * elem);
    if (!q) return SK_ENOMEM;
    *p = q;
    *cap = c;
    return SK_OK;
}

/* ---- counting words ------------------------------------------------------------------------ */

static sk_status count_piece(void *ctx, const char *s, size_t n) {
    trainer *tr = ctx;
    int32_t w = tok_strmap_get(&tr->words, s, n);
    if (w >= 0) { tr->wcount[w]++; return SK_OK; }
    if (tr->n_words == tr->cap_words) {
        size_t c = tr->cap_words ? tr->cap_words * 2 : 4096;
        void *a = mem_realloc(tr->wcount, c * sizeof *tr->wcount);
        if (a) tr->wcount = a;
        void *b = mem_realloc(tr->woff, c * sizeof *tr->woff);
        if (b) tr->woff = b;
        void *d = mem_realloc(tr->wlen, c * sizeof *tr->wlen);
        if (d) tr->wlen = d;
        if (!a || !b || !d) return SK_ENOMEM;
        tr->cap_words = c;
    }
    SK_TRY(grow_to((void **)&tr->sym, &tr->cap_sym, tr->n_sym + n, sizeof *tr->sym));
    SK_ASSERT(tr->n_sym + n < UINT32_MAX);
    w = (int32_t)tr->n_words++;
    tr->wcount[w] = 1;
    tr->woff[w] = (uint32_t)tr->n_sym;
    tr->wlen[w] = (uint32_t)n;
    for (size_t i = 0; i < n; i++) tr->sym[tr->n_sym++] = tr->byte_tok[(unsigned char)s[i]];
    return tok_strmap_put(&tr->words, s, n, w);
}

/* Counts the words of one file; the text between "<|endoftext|>" markers is pre-tokenized. */
static sk_status count_file(trainer *tr, const char *path, size_t *bytes) {
    char *text, *fixed;
    size_t n, fn;
    SK_TRY(file_read_all(path, &text, &n));
    sk_status st = tok_utf8_fix(text, n, &fixed, &fn);
    if (st == SK_OK && fixed) { mem_free(text); text = fixed; n = fn; }
    *bytes += n;
    const char *eot = "<|endoftext|>", *p = text, *end = text + n;
    while (st == SK_OK && p < end) {
        const char *q = memmem(p, (size_t)(end - p), eot, strlen(eot));
        const char *stop = q ? q : end;
        st = tok_regex_split(&tr->t->gpt2_re, p, (size_t)(stop - p), count_piece, tr);
        p = q ? q + strlen(eot) : end;
    }
    mem_free(text);
    return st;
}

/* ---- pairs and the heap --------------------------------------------------------------------- */

static bool heap_above(const heap_ent *a, const heap_ent *b) {
    return a->count != b->count ? a->count > b->count : a->key < b->key;
}

static sk_status heap_push(trainer *tr, int64_t count, uint64_t key) {
    SK_TRY(grow_to((void **)&tr->heap, &tr->heap_cap, tr->heap_n + 1, sizeof *tr->heap));
    heap_ent e = {count, key};
    size_t i = tr->heap_n++;
    while (i > 0 && heap_above(&e, &tr->heap[(i - 1) / 2])) {
        tr->heap[i] = tr->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    tr->heap[i] = e;
    return SK_OK;
}

static heap_ent heap_pop(trainer *tr) {
    heap_ent top = tr->heap[0], last = tr->heap[--tr->heap_n];
    size_t i = 0, n = tr->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_above(&tr->heap[c + 1], &tr->heap[c])) c++;
        if (!heap_above(&tr->heap[c], &last)) break;
        tr->heap[i] = tr->heap[c];
        i = c;
    }
    if (n) tr->heap[i] = last;
    return top;
}

/* The index of pair `key`, created with count 0 when new. */
static sk_status pair_get(trainer *tr, uint64_t key, size_t *idx) {
    uint64_t *v = tok_u64map_get(&tr->pair_idx, key);
    if (v) { *idx = (size_t)*v; return SK_OK; }
    if (tr->n_pairs == tr->cap_pairs) {
        size_t c = tr->cap_pairs ? tr->cap_pairs * 2 : 4096;
        void *a = mem_realloc(tr->pkey, c * sizeof *tr->pkey);
        if (a) tr->pkey = a;
        void *b = mem_realloc(tr->pcount, c * sizeof *tr->pcount);
        if (b) tr->pcount = b;
        void *d = mem_realloc(tr->phead, c * sizeof *tr->phead);
        if (d) tr->phead = d;
        void *e = mem_realloc(tr->ptouch, c * sizeof *tr->ptouch);
        if (e) tr->ptouch = e;
        if (!a || !b || !d || !e) return SK_ENOMEM;
        tr->cap_pairs = c;
    }
    *idx = tr->n_pairs++;
    tr->pkey[*idx] = key;
    tr->pcount[*idx] = 0;
    tr->phead[*idx] = -1;
    tr->ptouch[*idx] = UINT32_MAX;
    return tok_u64map_put(&tr->pair_idx, key, *idx);
}

static sk_status pair_add_word(trainer *tr, size_t idx, int32_t w) {
    if (tr->n_nodes == tr->cap_nodes) {
        size_t c = tr->cap_nodes ? tr->cap_nodes * 2 : 4096;
        void *a = mem_realloc(tr->nword, c * sizeof *tr->nword);
        if (a) tr->nword = a;
        void *b = mem_realloc(tr->nnext, c * sizeof *tr->nnext);
        if (b) tr->nnext = b;
        if (!a || !b) return SK_ENOMEM;
        tr->cap_nodes = c;
    }
    SK_ASSERT(tr->n_nodes < INT32_MAX);
    tr->nword[tr->n_nodes] = w;
    tr->nnext[tr->n_nodes] = tr->phead[idx];
    tr->phead[idx] = (int32_t)tr->n_nodes++;
    return SK_OK;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void sort_keys(uint64_t *k, size_t n) {
    if (n > 24) { qsort(k, n, sizeof *k, cmp_u64); return; }
    for (size_t i = 1; i < n; i++) {
        uint64_t v = k[i];
        size_t j = i;
        while (j > 0 && k[j - 1] > v) { k[j] = k[j - 1]; j--; }
        k[j] = v;
    }
}

static size_t word_pairs(const int32_t *s, size_t n, uint64_t *out) {
    for (size_t i = 0; i + 1 < n; i++) out[i] = (uint64_t)(uint32_t)s[i] << 32 | (uint32_t)s[i + 1];
    size_t k = n ? n - 1 : 0;
    sort_keys(out, k);
    return k;
}

/* Merges (a, b) -> nid in every word that holds it, updating pair counts and lists. */
static sk_status apply_merge(trainer *tr, size_t pidx, int32_t nid, uint32_t merge_no, uint64_t **scratch,
                             size_t *scratch_cap, size_t **raised, size_t *raised_n, size_t *raised_cap) {
    int32_t a = (int32_t)(tr->pkey[pidx] >> 32), b = (int32_t)(uint32_t)tr->pkey[pidx];
    *raised_n = 0;
    for (int32_t node = tr->phead[pidx]; node >= 0; node = tr->nnext[node]) {
        int32_t w = tr->nword[node];
        if (tr->stamp[w] == merge_no) continue;
        tr->stamp[w] = merge_no;
        int32_t *s = tr->sym + tr->woff[w];
        size_t n = tr->wlen[w];
        bool has = false;
        for (size_t i = 0; i + 1 < n && !has; i++) has = s[i] == a && s[i + 1] == b;
        if (!has) continue;
        SK_TRY(grow_to((void **)scratch, scratch_cap, 2 * n, sizeof **scratch));
        uint64_t *before = *scratch, *after = *scratch + n;
        size_t nb = word_pairs(s, n, before), j = 0;
        for (size_t i = 0; i < n; i++) {
            if (i + 1 < n && s[i] == a && s[i + 1] == b) { s[j++] = nid; i++; }
            else s[j++] = s[i];
        }
        tr->wlen[w] = (uint32_t)j;
        size_t na = word_pairs(s, j, after);
        int64_t wc = tr->wcount[w];
        /* Multiset difference of the two sorted pair lists. */
        size_t x = 0, y = 0;
        while (x < nb || y < na) {
            if (y >= na || (x < nb && before[x] < after[y])) {
                size_t idx;
                SK_TRY(pair_get(tr, before[x++], &idx));
                tr->pcount[idx] -= wc;
            } else if (x >= nb || after[y] < before[x]) {
                size_t idx;
                SK_TRY(pair_get(tr, after[y], &idx));
                tr->pcount[idx] += wc;
                if (y == 0 || after[y - 1] != after[y]) SK_TRY(pair_add_word(tr, idx, w));
                if (tr->ptouch[idx] != merge_no) {
                    tr->ptouch[idx] = merge_no;
                    SK_TRY(grow_to((void **)raised, raised_cap, *raised_n + 1, sizeof **raised));
                    (*raised)[(*raised_n)++] = idx;
                }
                y++;
            } else {
                x++;
                y++;
            }
        }
    }
    for (size_t i = 0; i < *raised_n; i++) {
        size_t idx = (*raised)[i];
        if (tr->pcount[idx] > 0) SK_TRY(heap_push(tr, tr->pcount[idx], tr->pkey[idx]));
    }
    return SK_OK;
}

/* ---- the token table --------------------------------------------------------------------------- */

static sk_status add_token(tok *t, int32_t id, const unsigned char *bytes, size_t n) {
    char small[512], *sp = 2 * n < sizeof small ? small : mem_alloc(2 * n + 1);
    if (!sp) return SK_ENOMEM;
    size_t k = tok_bytes_to_spelling(bytes, n, sp);
    sp[k] = 0;
    sk_status st = tok_set_token(t, id, sp, false);
    if (st == SK_OK) st = tok_strmap_put(&t->vocab, sp, k, id);
    if (sp != small) mem_free(sp);
    return st;
}

/* The id of left+right's spelling: an existing token, or a new one with the next id. */
static sk_status merged_token(tok *t, int32_t l, int32_t r, int32_t *id) {
    size_t nl = t->id_nbytes[l], nr = t->id_nbytes[r];
    unsigned char small[256], *cat = nl + nr <= sizeof small ? small : mem_alloc(nl + nr);
    if (!cat) return SK_ENOMEM;
    memcpy(cat, t->id_bytes[l], nl);
    memcpy(cat + nl, t->id_bytes[r], nr);
    size_t la = strlen(t->id_str[l]), lb = strlen(t->id_str[r]);
    char ssmall[512], *sp = la + lb < sizeof ssmall ? ssmall : mem_alloc(la + lb + 1);
    sk_status st = SK_ENOMEM;
    if (sp) {
        memcpy(sp, t->id_str[l], la);
        memcpy(sp + la, t->id_str[r], lb);
        *id = tok_strmap_get(&t->vocab, sp, la + lb);
        st = SK_OK;
        if (*id < 0) {
            *id = t->n_ids;
            st = add_token(t, *id, cat, nl + nr);
        }
        if (sp != ssmall) mem_free(sp);
    }
    if (cat != small) mem_free(cat);
    return st;
}

static void trainer_free(trainer *tr) {
    tok_strmap_free(&tr->words);
    mem_free(tr->wcount);
    mem_free(tr->woff);
    mem_free(tr->wlen);
    mem_free(tr->sym);
    mem_free(tr->stamp);
    tok_u64map_free(&tr->pair_idx);
    mem_free(tr->pkey);
    mem_free(tr->pcount);
    mem_free(tr->phead);
    mem_free(tr->ptouch);
    mem_free(tr->nword);
    mem_free(tr->nnext);
    mem_free(tr->heap);
}

static sk_status train(trainer *tr, const char *const *files, int n_files, int vocab_size) {
    tok *t = tr->t;
    double t0 = time_now();
    /* Bytes in the order of their characters: GPT-2's ids 0..255. */
    int order[256], k = 0;
    for (int b = 0; b < 256; b++) order[k++] = b;
    for (int i = 1; i < 256; i++)
        for (int j = i; j > 0 && tok_byte_char[order[j - 1]] > tok_byte_char[order[j]]; j--) {
            int x = order[j]; order[j] = order[j - 1]; order[j - 1] = x;
        }
    for (int i = 0; i < 256; i++) {
        unsigned char b = (unsigned char)order[i];
        SK_TRY(add_token(t, i, &b, 1));
        tr->byte_tok[b] = i;
    }
    SK_TRY(tok_regex_compile(&t->gpt2_re, TOK_GPT2_PATTERN, false, "GPT-2 pattern"));

    size_t bytes = 0;
    for (int f = 0; f < n_files; f++) SK_TRY(count_file(tr, files[f], &bytes));
    bool loud = bytes >= (1u << 20);
    if (loud)
        log_info("tokenizer train: %.1f MB of text, %zu unique words (%.1f s)", (double)bytes / 1e6, tr->n_words,
                 time_now() - t0);
    tr->stamp = mem_alloc((tr->n_words + 1) * sizeof *tr->stamp);
    if (!tr->stamp) return SK_ENOMEM;
    memset(tr->stamp, 0xff, (tr->n_words + 1) * sizeof *tr->stamp);

    /* Initial pair counts and word lists. */
    uint64_t *scratch = NULL;
    size_t scratch_cap = 0, *raised = NULL, raised_n = 0, raised_cap = 0;
    sk_status st = SK_OK;
    for (size_t w = 0; w < tr->n_words && st == SK_OK; w++) {
        size_t n = tr->wlen[w];
        if ((st = grow_to((void **)&scratch, &scratch_cap, n + 1, sizeof *scratch)) != SK_OK) break;
        size_t np = word_pairs(tr->sym + tr->woff[w], n, scratch);
        for (size_t i = 0; i < np && st == SK_OK; i++) {
            size_t idx;
            if ((st = pair_get(tr, scratch[i], &idx)) != SK_OK) break;
            tr->pcount[idx] += tr->wcount[w];
            if (i == 0 || scratch[i - 1] != scratch[i]) st = pair_add_word(tr, idx, (int32_t)w);
        }
    }
    for (size_t p = 0; p < tr->n_pairs && st == SK_OK; p++) st = heap_push(tr, tr->pcount[p], tr->pkey[p]);

    int target = vocab_size - 1, report = (target - 256) / 10 > 0 ? (target - 256) / 10 : 1;
    uint32_t merge_no = 0;
    while (st == SK_OK && t->n_ids < target && tr->heap_n) {
        heap_ent top = heap_pop(tr);
        size_t idx = (size_t)*tok_u64map_get(&tr->pair_idx, top.key);
        if (top.count != tr->pcount[idx]) {   /* stale: requeue at its current count */
            if (tr->pcount[idx] > 0) st = heap_push(tr, tr->pcount[idx], top.key);
            continue;
        }
        if (top.count <= 0) break;
        int32_t l = (int32_t)(top.key >> 32), r = (int32_t)(uint32_t)top.key, nid;
        if ((st = merged_token(t, l, r, &nid)) != SK_OK) break;
        if ((st = tok_add_merge(t, l, r, "tokenizer train")) != SK_OK) break;
        st = apply_merge(tr, idx, nid, merge_no++, &scratch, &scratch_cap, &raised, &raised_n, &raised_cap);
        if (loud && t->n_merges % report == 0)
            log_info("tokenizer train: %d/%d merges (%.1f s)", t->n_merges, target - 256, time_now() - t0);
    }
    mem_free(scratch);
    mem_free(raised);
    SK_TRY(st);

    tok_added eot = {.content = "<|endoftext|>", .len = 13, .id = t->n_ids, .special = true};
    SK_TRY(tok_strmap_put(&t->vocab, eot.content, eot.len, eot.id));
    SK_TRY(tok_add_added(t, &eot));
    if (loud || t->n_ids < vocab_size)
        log_info("tokenizer train: vocabulary %d (asked %d), %d merges, %.1f s", t->n_ids, vocab_size, t->n_merges,
                 time_now() - t0);
    return tok_finish(t);
}

sk_status tok_train(const char *const *files, int n_files, int vocab_size, tok **out) {
    if (vocab_size < 257 || vocab_size > (1 << 24))
        return sk_fail(SK_EARG, "tokenizer train: vocabulary size %d must be at least 257 (256 bytes + <|endoftext|>)",
                       vocab_size);
    if (n_files < 1) return sk_fail(SK_EARG, "tokenizer train: no input files");
    trainer tr = {0};
    SK_TRY(tok_new(&tr.t));
    sk_status st = train(&tr, files, n_files, vocab_size);
    trainer_free(&tr);
    if (st != SK_OK) {
        tok_free(tr.t);
        return st == SK_ENOMEM ? sk_fail(SK_ENOMEM, "tokenizer train: out of memory") : st;
    }
    *out = tr.t;
    return SK_OK;
}
