/* tok: the tokenizer object, encoding and decoding (see tok.h).
 *
 * Encoding runs Hugging Face's pipeline:
 *   1. ill-formed UTF-8 -> U+FFFD (Python's rule);
 *   2. added tokens with normalized=false split out of the whole text (leftmost-longest
 *      matches, with single_word / lstrip / rstrip as HF's AddedVocabulary applies them);
 *   3. the normalizer over each piece in between, then the added tokens with normalized=true
 *      split out of the normalized piece;
 *   4. each remaining piece pre-tokenized: the optional Split regex, then ByteLevel (a prefix
 *      space when add_prefix_space and the piece does not start with ' ', then the GPT-2 regex
 *      when use_regex); or Metaspace (' ' -> "▁", the prepend scheme — "first" only for the
 *      piece at the start of the text — and a split before each "▁"); or nothing;
 *   5. each final piece: symbols (byte-level: one per byte; otherwise one per character, a
 *      character missing from the vocabulary as its "<0xNN>" byte tokens under byte_fallback,
 *      else unk, fused when fuse_unk) -> merges applied lowest rank first, leftmost first
 *      among equal ranks (a heap over adjacent pairs), through a word cache;
 *   6. with add_special, the post-processor's ids around the whole.
 * Decoding: byte-level, token bytes concatenated and ill-formed UTF-8 replaced once over the
 * whole; otherwise the SentencePiece-style chain described in tok_impl.h. */
#include "tokenizer/tok_impl.h"

#include <stdio.h>
#include <string.h>

/* ---- construction ------------------------------------------------------------------------ */

sk_status tok_new(tok **out) {
    tok_bytelevel_init();
    tok *t = mem_calloc(sizeof *t);
    if (!t) return SK_ENOMEM;
    t->unk_id = -1;
    t->use_regex = true;
    t->pre = TOK_PRE_BYTELEVEL;
    t->dec_bytelevel = true;
    t->dec_strip_char = ' ';
    for (int b = 0; b < 256; b++) t->byte_id[b] = t->fb_id[b] = -1;
    for (int i = 0; i < TOK_CACHE_SHARDS; i++) pthread_mutex_init(&t->cache[i].mu, NULL);
    *out = t;
    return SK_OK;
}

void tok_free(tok *t) {
    if (!t) return;
    for (int i = 0; i < t->n_ids; i++) {
        mem_free(t->id_str[i]);
        mem_free(t->id_bytes[i]);
    }
    mem_free(t->id_str);
    mem_free(t->id_bytes);
    mem_free(t->id_nbytes);
    mem_free(t->id_special);
    tok_strmap_free(&t->vocab);
    tok_strmap_free(&t->added_map);
    tok_u64map_free(&t->merges);
    mem_free(t->merge_list);
    for (int i = 0; i < t->n_added; i++) { mem_free(t->added[i].content); mem_free(t->added[i].norm); }
    mem_free(t->added);
    for (int i = 0; i < t->n_norm; i++) { mem_free(t->norm[i].a); mem_free(t->norm[i].b); }
    mem_free(t->norm);
    for (int i = 0; i < t->n_dec_repl; i++) { mem_free(t->dec_repl[i].pattern); mem_free(t->dec_repl[i].content); }
    mem_free(t->dec_repl);
    mem_free(t->id_fb_byte);
    tok_regex_free(&t->split_re);
    tok_regex_free(&t->gpt2_re);
    tok_regex_free(&t->word_re);
    if (t->doc) cJSON_Delete(t->doc);
    for (int i = 0; i < TOK_CACHE_SHARDS; i++) {
        pthread_mutex_destroy(&t->cache[i].mu);
        tok_strmap_free(&t->cache[i].map);
        mem_free(t->cache[i].ids);
    }
    mem_free(t);
}

static sk_status grow_ids(tok *t, int need) {
    int cap = t->cap_ids ? t->cap_ids : 512;
    while (cap < need) cap *= 2;
    if (cap == t->cap_ids) return SK_OK;
    void *a = mem_realloc(t->id_str, (size_t)cap * sizeof *t->id_str);
    if (a) t->id_str = a;
    void *b = mem_realloc(t->id_bytes, (size_t)cap * sizeof *t->id_bytes);
    if (b) t->id_bytes = b;
    void *c = mem_realloc(t->id_nbytes, (size_t)cap * sizeof *t->id_nbytes);
    if (c) t->id_nbytes = c;
    void *d = mem_realloc(t->id_special, (size_t)cap * sizeof *t->id_special);
    if (d) t->id_special = d;
    if (!a || !b || !c || !d) return SK_ENOMEM;
    t->cap_ids = cap;
    return SK_OK;
}

/* The bytes a spelling decodes to, as HF's ByteLevel decoder does it: every character through
 * the byte-level alphabet, or, when one is not in it, the spelling's own UTF-8 bytes. */
static size_t spelling_to_bytes(const char *str, size_t len, unsigned char *out) {
    const unsigned char *s = (const unsigned char *)str;
    size_t k = 0, sub;
    for (size_t i = 0; i < len;) {
        size_t n = tok_utf8_seq(s + i, len - i, &sub);
        uint32_t cp;
        int b = -1;
        if (n) {
            tok_utf8_decode(s + i, &cp);
            b = tok_char_byte(cp);
        }
        if (b < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[k++] = (unsigned char)b;
        i += n;
    }
    return k;
}

sk_status tok_set_token(tok *t, int32_t id, const char *str, bool special) {
    SK_ASSERT(id >= 0);
    if (id >= t->n_ids) {
        SK_TRY(grow_ids(t, id + 1));
        for (int i = t->n_ids; i <= id; i++) {
            t->id_str[i] = NULL;
            t->id_bytes[i] = NULL;
            t->id_nbytes[i] = 0;
            t->id_special[i] = false;
        }
        t->n_ids = id + 1;
    }
    size_t len = strlen(str);
    char *s = mem_alloc(len + 1);
    unsigned char *b = mem_alloc(len + 1);
    if (!s || !b) { mem_free(s); mem_free(b); return SK_ENOMEM; }
    memcpy(s, str, len + 1);
    mem_free(t->id_str[id]);
    mem_free(t->id_bytes[id]);
    t->id_str[id] = s;
    t->id_bytes[id] = b;
    t->id_nbytes[id] = (uint32_t)spelling_to_bytes(str, len, b);
    t->id_special[id] = special;
    if (t->id_nbytes[id] > t->max_token_bytes) t->max_token_bytes = t->id_nbytes[id];
    return SK_OK;
}

sk_status tok_add_merge(tok *t, int32_t left, int32_t right, const char *what) {
    SK_ASSERT(left >= 0 && left < t->n_ids && right >= 0 && right < t->n_ids);
    const char *a = t->id_str[left], *b = t->id_str[right];
    size_t la = strlen(a), lb = strlen(b);
    char small[256], *cat = la + lb < sizeof small ? small : mem_alloc(la + lb + 1);
    if (!cat) return SK_ENOMEM;
    memcpy(cat, a, la);
    memcpy(cat + la, b, lb);
    int32_t id = tok_strmap_get(&t->vocab, cat, la + lb);
    if (cat != small) mem_free(cat);
    if (id < 0)
        return sk_fail(SK_EFORMAT, "%s: merge %d (\"%s\" \"%s\") makes a token missing from the vocabulary",
                       what, t->n_merges + 1, a, b);
    if (t->n_merges == t->cap_merges) {
        int cap = t->cap_merges ? t->cap_merges * 2 : 1024;
        void *p = mem_realloc(t->merge_list, (size_t)cap * sizeof *t->merge_list);
        if (!p) return SK_ENOMEM;
        t->merge_list = p;
        t->cap_merges = cap;
    }
    t->merge_list[t->n_merges][0] = left;
    t->merge_list[t->n_merges][1] = right;
    /* A repeated pair takes its last rank, as HF's map built from the merge list does. */
    SK_TRY(tok_u64map_put(&t->merges, (uint64_t)left << 32 | (uint32_t)right,
                          (uint64_t)t->n_merges << 32 | (uint32_t)id));
    t->n_merges++;
    return SK_OK;
}

sk_status tok_add_added(tok *t, const tok_added *a) {
    if (t->n_added == t->cap_added) {
        int cap = t->cap_added ? t->cap_added * 2 : 16;
        void *p = mem_realloc(t->added, (size_t)cap * sizeof *t->added);
        if (!p) return SK_ENOMEM;
        t->added = p;
        t->cap_added = cap;
    }
    tok_added c = *a;
    c.norm = NULL;
    c.content = mem_alloc(a->len + 1);
    if (!c.content) return SK_ENOMEM;
    memcpy(c.content, a->content, a->len);
    c.content[a->len] = 0;
    t->added[t->n_added++] = c;
    SK_TRY(tok_strmap_put(&t->added_map, c.content, c.len, c.id));
    return tok_set_token(t, c.id, c.content, c.special);
}

/* Replaces every occurrence of pat in s[0..n) by rep; returns a new buffer (mem_free) of *out_n
 * bytes, or NULL when out of memory. */
static char *replace_all(const char *s, size_t n, const char *pat, const char *rep, size_t *out_n) {
    size_t lp = strlen(pat), lr = strlen(rep), count = 0;
    for (size_t i = 0; lp && i + lp <= n;) {
        if (!memcmp(s + i, pat, lp)) { count++; i += lp; } else i++;
    }
    size_t cap = n + count * lr + 1;
    char *out = mem_alloc(cap);
    if (!out) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (lp && i + lp <= n && !memcmp(s + i, pat, lp)) { memcpy(out + k, rep, lr); k += lr; i += lp; }
        else out[k++] = s[i++];
    }
    out[k] = 0;
    *out_n = k;
    return out;
}

/* A token's text inside decoded output for the SentencePiece-style decoder: the Replace steps
 * in order, then Metaspace's replacement as a space (or, for the first token, removed).
 * Returns a new buffer (mem_free) or NULL when out of memory. */
static char *piece_text(const tok *t, const char *str, bool first, size_t *out_n) {
    size_t n = strlen(str);
    char *cur = mem_alloc(n + 1);
    if (!cur) return NULL;
    memcpy(cur, str, n + 1);
    for (int i = 0; i < t->n_dec_repl && cur; i++) {
        char *next = replace_all(cur, n, t->dec_repl[i].pattern, t->dec_repl[i].content, &n);
        mem_free(cur);
        cur = next;
    }
    if (cur && t->dec_meta) {
        char *next = replace_all(cur, n, t->meta_rep, first && t->dec_meta_first ? "" : " ", &n);
        mem_free(cur);
        cur = next;
    }
    *out_n = n;
    return cur;
}

/* "<0xNN>" (either case of hex digit, as Rust's from_str_radix): the byte, else -1. */
static int fallback_byte(const char *s) {
    unsigned v;
    char tail;
    if (strlen(s) != 6 || strncmp(s, "<0x", 3) || s[5] != '>') return -1;
    if (sscanf(s + 3, "%2x%c", &v, &tail) != 2 || tail != '>') return -1;
    return !strchr("+- ", s[3]) ? (int)v : -1;
}

sk_status tok_finish(tok *t) {
    for (int b = 0; b < 256; b++) {
        char sp[8];
        unsigned char byte = (unsigned char)b;
        size_t n = tok_bytes_to_spelling(&byte, 1, sp);
        t->byte_id[b] = tok_strmap_get(&t->vocab, sp, n);
        snprintf(sp, sizeof sp, "<0x%02X>", b);
        t->fb_id[b] = tok_strmap_get(&t->vocab, sp, 6);
    }
    if (!t->dec_bytelevel) {
        /* What each token decodes to in the middle of a text (tok_token_bytes, streaming). */
        mem_free(t->id_fb_byte);
        t->id_fb_byte = mem_alloc((size_t)t->n_ids * sizeof *t->id_fb_byte + 1);
        if (!t->id_fb_byte) return SK_ENOMEM;
        t->max_token_bytes = 0;
        for (int i = 0; i < t->n_ids; i++) {
            t->id_fb_byte[i] = -1;
            if (!t->id_str[i]) continue;
            int fb = t->dec_byte_fallback ? fallback_byte(t->id_str[i]) : -1;
            size_t n = 1;
            char *text = fb >= 0 ? mem_alloc(2) : piece_text(t, t->id_str[i], false, &n);
            if (!text) return SK_ENOMEM;
            if (fb >= 0) text[0] = (char)fb;
            t->id_fb_byte[i] = (int16_t)fb;
            mem_free(t->id_bytes[i]);
            t->id_bytes[i] = (unsigned char *)text;
            t->id_nbytes[i] = (uint32_t)n;
            if (n > t->max_token_bytes) t->max_token_bytes = n;
        }
    }
    if (!t->gpt2_re.code) SK_TRY(tok_regex_compile(&t->gpt2_re, TOK_GPT2_PATTERN, false, "GPT-2 pattern"));
    bool single = false;
    memset(t->first_byte, 0, sizeof t->first_byte);
    for (int i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        single |= a->single_word;
        if (a->normalized && t->n_norm && !a->norm && a->len) {
            char *norm;
            size_t nn;
            SK_TRY(tok_normalize(t, a->content, a->len, &norm, &nn));
            a->norm = norm;
            a->norm_len = nn;
        }
        const char *m = a->norm ? a->norm : a->content;
        if (a->norm ? a->norm_len : a->len) t->first_byte[(unsigned char)m[0]] = true;
    }
    /* Rust's char::is_alphanumeric: Alphabetic or a numeric general category. */
    if (single && !t->word_re.code) SK_TRY(tok_regex_compile(&t->word_re, "[\\p{Alphabetic}\\p{N}]", false, "word"));
    return SK_OK;
}

/* ---- accessors ---------------------------------------------------------------------------- */

int tok_vocab_size(const tok *t) { return t->n_ids; }

int tok_token_id(const tok *t, const char *token) {
    size_t n = strlen(token);
    int32_t id = tok_strmap_get(&t->added_map, token, n);
    return id >= 0 ? id : tok_strmap_get(&t->vocab, token, n);
}

int tok_eot_id(const tok *t) {
    static const char *const names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>"};
    for (int i = 0; i < 3; i++) {
        int id = tok_token_id(t, names[i]);
        if (id >= 0) return id;
    }
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].special) return t->added[i].id;
    return -1;
}

const unsigned char *tok_token_bytes(const tok *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_ids || !t->id_str[id]) { *len = 0; return NULL; }
    *len = t->id_nbytes[id];
    return t->id_bytes[id];
}

bool tok_is_special(const tok *t, int32_t id) { return id >= 0 && id < t->n_ids && t->id_special[id]; }

/* ---- encoding ------------------------------------------------------------------------------ */

typedef struct bpe_sym { int32_t id; int32_t prev, next; } bpe_sym;
typedef struct bpe_cand { uint32_t rank; int32_t pos; int32_t left, right; } bpe_cand;

/* Per-call state of tok_encode: the output and scratch buffers, grown as needed. */
typedef struct enc {
    const tok *t;
    int32_t *ids;
    size_t n, cap;
    bpe_sym *sym;
    size_t sym_cap;
    bpe_cand *heap;
    size_t heap_n, heap_cap;
    char *buf;            /* prefix-space copies and byte-level spellings */
    size_t buf_cap;
} enc;

static sk_status grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return SK_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = mem_realloc(*p, c * elem);
    if (!q) return SK_ENOMEM;
    *p = q;
    *cap = c;
    return SK_OK;
}

static sk_status emit(enc *e, const int32_t *ids, size_t n) {
    SK_TRY(grow((void **)&e->ids, &e->cap, e->n + n, sizeof *e->ids));
    memcpy(e->ids + e->n, ids, n * sizeof *ids);
    e->n += n;
    return SK_OK;
}

static bool cand_less(const bpe_cand *a, const bpe_cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static sk_status heap_push(enc *e, int32_t pos) {
    const tok *t = e->t;
    int32_t nx = e->sym[pos].next;
    if (nx < 0) return SK_OK;
    int32_t l = e->sym[pos].id, r = e->sym[nx].id;
    uint64_t *m = tok_u64map_get(&t->merges, (uint64_t)l << 32 | (uint32_t)r);
    if (!m) return SK_OK;
    SK_TRY(grow((void **)&e->heap, &e->heap_cap, e->heap_n + 1, sizeof *e->heap));
    bpe_cand c = {(uint32_t)(*m >> 32), pos, l, r};
    size_t i = e->heap_n++;
    while (i > 0 && cand_less(&c, &e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = c;
    return SK_OK;
}

static bpe_cand heap_pop(enc *e) {
    bpe_cand top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!cand_less(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

/* Appends symbol id to e->sym (room for it is the caller's). */
static void sym_add(enc *e, int32_t *m, int32_t id) {
    e->sym[*m] = (bpe_sym){id, *m - 1, *m + 1};
    (*m)++;
}

/* The initial symbols of a word as HF's BPE model makes them: one per unit (a byte for
 * byte-level tokenizers, else a character), looked up in the vocabulary; a missing unit
 * becomes its "<0xNN>" byte tokens under byte_fallback (when all exist), else unk — fused
 * with a preceding unk when fuse_unk — or nothing when there is no unk token. */
static int32_t initial_symbols(enc *e, const unsigned char *s, size_t n) {
    const tok *t = e->t;
    int32_t m = 0;
    bool unk_pending = false;
    for (size_t i = 0; i < n;) {
        size_t len = 1;
        int32_t id;
        if (t->pre == TOK_PRE_BYTELEVEL) {
            id = t->byte_id[s[i]];
        } else {
            uint32_t cp;
            len = tok_utf8_decode(s + i, &cp);
            id = tok_strmap_get(&t->vocab, (const char *)s + i, len);
        }
        if (id >= 0) {
            if (unk_pending) { sym_add(e, &m, t->unk_id); unk_pending = false; }
            sym_add(e, &m, id);
        } else {
            bool fell_back = false;
            if (t->byte_fallback && t->pre != TOK_PRE_BYTELEVEL) {
                fell_back = true;
                for (size_t k = 0; k < len; k++) fell_back &= t->fb_id[s[i + k]] >= 0;
                /* As HF: a pending unk is not written before the byte tokens. */
                if (fell_back) for (size_t k = 0; k < len; k++) sym_add(e, &m, t->fb_id[s[i + k]]);
            }
            if (!fell_back && t->unk_id >= 0) {
                if (unk_pending && !t->fuse_unk) sym_add(e, &m, t->unk_id);
                unk_pending = true;
            }
        }
        i += len;
    }
    if (unk_pending) sym_add(e, &m, t->unk_id);
    return m;
}

/* Runs BPE over one pre-token and appends its ids to e->ids. */
static sk_status bpe_word(enc *e, const unsigned char *s, size_t n) {
    const tok *t = e->t;
    if (t->ignore_merges) {
        int32_t id;
        if (t->pre == TOK_PRE_BYTELEVEL) {
            SK_TRY(grow((void **)&e->buf, &e->buf_cap, 2 * n, 1));
            size_t k = tok_bytes_to_spelling(s, n, e->buf);
            id = tok_strmap_get(&t->vocab, e->buf, k);
        } else {
            id = tok_strmap_get(&t->vocab, (const char *)s, n);
        }
        if (id >= 0) return emit(e, &id, 1);
    }
    /* At most one symbol per byte, plus a trailing unk. */
    SK_TRY(grow((void **)&e->sym, &e->sym_cap, n + 1, sizeof *e->sym));
    int32_t m = initial_symbols(e, s, n);
    if (!m) return SK_OK;
    e->sym[m - 1].next = -1;
    e->heap_n = 0;
    for (int32_t i = 0; i + 1 < m; i++) SK_TRY(heap_push(e, i));
    while (e->heap_n) {
        bpe_cand c = heap_pop(e);
        bpe_sym *a = &e->sym[c.pos];
        /* Stale when either side has changed since the candidate was pushed. */
        if (a->id != c.left || a->next < 0 || e->sym[a->next].id != c.right) continue;
        bpe_sym *b = &e->sym[a->next];
        a->id = (int32_t)(uint32_t)*tok_u64map_get(&t->merges, (uint64_t)c.left << 32 | (uint32_t)c.right);
        b->id = -1;   /* marks the right symbol dead */
        a->next = b->next;
        if (b->next >= 0) e->sym[b->next].prev = c.pos;
        if (a->prev >= 0) SK_TRY(heap_push(e, a->prev));
        SK_TRY(heap_push(e, c.pos));
    }
    SK_TRY(grow((void **)&e->ids, &e->cap, e->n + (size_t)m, sizeof *e->ids));
    for (int32_t i = 0; i >= 0; i = e->sym[i].next) e->ids[e->n++] = e->sym[i].id;
    return SK_OK;
}

#define TOK_CACHE_MAX_WORD 64
#define TOK_CACHE_MAX_ENTRIES 16384   /* per shard */

/* One pre-token: from the cache, or through bpe_word and into the cache. */
static sk_status encode_piece(void *ctx, const char *s, size_t n) {
    enc *e = ctx;
    tok *t = (tok *)e->t;   /* only the cache is written, under its lock */
    if (n > TOK_CACHE_MAX_WORD) return bpe_word(e, (const unsigned char *)s, n);
    tok_cache_shard *sh = &t->cache[tok_hash(s, n) & (TOK_CACHE_SHARDS - 1)];
    pthread_mutex_lock(&sh->mu);
    int32_t off = tok_strmap_get(&sh->map, s, n);
    sk_status st = SK_OK;
    if (off >= 0) st = emit(e, sh->ids + off + 1, (size_t)sh->ids[off]);
    pthread_mutex_unlock(&sh->mu);
    if (off >= 0) return st;
    size_t first = e->n;
    SK_TRY(bpe_word(e, (const unsigned char *)s, n));
    size_t k = e->n - first;
    pthread_mutex_lock(&sh->mu);
    if (sh->map.n < TOK_CACHE_MAX_ENTRIES &&
        grow((void **)&sh->ids, &sh->cap_ids, sh->n_ids + k + 1, sizeof *sh->ids) == SK_OK &&
        tok_strmap_put(&sh->map, s, n, (int32_t)sh->n_ids) == SK_OK) {
        sh->ids[sh->n_ids] = (int32_t)k;
        memcpy(sh->ids + sh->n_ids + 1, e->ids + first, k * sizeof *e->ids);
        sh->n_ids += k + 1;
    }
    pthread_mutex_unlock(&sh->mu);
    return SK_OK;   /* a full cache, or no memory for it, only costs speed */
}

/* ByteLevel over one piece: the prefix space, then the GPT-2 regex. */
static sk_status bytelevel_piece(void *ctx, const char *s, size_t n) {
    enc *e = ctx;
    const tok *t = e->t;
    char *copy = NULL;
    if (t->prefix_space && (n == 0 || s[0] != ' ')) {
        copy = mem_alloc(n + 1);
        if (!copy) return SK_ENOMEM;
        copy[0] = ' ';
        memcpy(copy + 1, s, n);
        s = copy;
        n++;
    }
    sk_status st = t->use_regex ? tok_regex_split(&t->gpt2_re, s, n, encode_piece, e) : encode_piece(e, s, n);
    mem_free(copy);
    return st;
}

/* Metaspace: ' ' -> the replacement, the prepend scheme (first: only for the piece at the
 * start of the text), then, with split, a new piece before every replacement character. */
static sk_status metaspace_piece(enc *e, const char *s, size_t n, bool first) {
    const tok *t = e->t;
    const char *rep = t->meta_rep;
    size_t lr = strlen(rep), k;
    char *text = replace_all(s, n, " ", rep, &k);
    if (!text) return SK_ENOMEM;
    bool starts = k >= lr && !memcmp(text, rep, lr);
    if (!starts && (t->meta_scheme == TOK_PREPEND_ALWAYS || (t->meta_scheme == TOK_PREPEND_FIRST && first))) {
        char *p = mem_alloc(k + lr + 1);
        if (!p) { mem_free(text); return SK_ENOMEM; }
        memcpy(p, rep, lr);
        memcpy(p + lr, text, k + 1);
        mem_free(text);
        text = p;
        k += lr;
    }
    sk_status st = SK_OK;
    if (!t->meta_split) {
        st = encode_piece(e, text, k);
    } else {
        size_t start = 0;
        for (size_t i = 1; i + lr <= k && st == SK_OK; i++) {
            if (memcmp(text + i, rep, lr)) continue;
            st = encode_piece(e, text + start, i - start);
            start = i;
        }
        if (st == SK_OK && start < k) st = encode_piece(e, text + start, k - start);
    }
    mem_free(text);
    return st;
}

/* Pre-tokenizes one piece of normalized text; first: it starts the whole text. */
static sk_status pretokenize(enc *e, const char *s, size_t n, bool first) {
    const tok *t = e->t;
    if (t->pre == TOK_PRE_METASPACE) return metaspace_piece(e, s, n, first);
    if (t->pre == TOK_PRE_NONE) return encode_piece(e, s, n);
    if (t->has_split) return tok_regex_split(&t->split_re, s, n, bytelevel_piece, e);
    return bytelevel_piece(e, s, n);
}

/* Rust's char::is_whitespace (the White_Space property). */
static bool is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* Start of the character that ends s[0..i) (i > 0). */
static size_t char_before(const char *s, size_t i) {
    do i--; while (i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80);
    return i;
}

static bool is_word_char_at(const tok *t, const char *s, size_t n, size_t i) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->word_re.code, NULL);
    if (!md) return false;
    int rc = pcre2_match(t->word_re.code, (PCRE2_SPTR)s, n, i, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md, NULL);
    pcre2_match_data_free(md);
    return rc > 0;
}

/* The longest added token of the pass (normalized or not) that starts at s[i], or NULL. */
static const tok_added *added_at(const tok *t, const char *s, size_t n, size_t i, bool normalized) {
    const tok_added *best = NULL;
    size_t best_len = 0;
    for (int k = 0; k < t->n_added; k++) {
        const tok_added *a = &t->added[k];
        const char *m = a->norm ? a->norm : a->content;
        size_t len = a->norm ? a->norm_len : a->len;
        if (a->normalized != normalized || !len || len > n - i || m[0] != s[i]) continue;
        if ((!best || len > best_len) && !memcmp(s + i, m, len)) { best = a; best_len = len; }
    }
    return best;
}

static sk_status split_added(enc *e, const char *s, size_t n, bool normalized, bool first);

/* A piece between non-normalized added tokens: normalized, then split on the normalized
 * added tokens (whose pieces are pre-tokenized). */
static sk_status normalize_piece(enc *e, const char *s, size_t n, bool first) {
    char *norm;
    size_t nn;
    SK_TRY(tok_normalize(e->t, s, n, &norm, &nn));
    if (!norm) return split_added(e, s, n, true, first);
    sk_status st = nn ? split_added(e, norm, nn, true, first) : SK_OK;
    mem_free(norm);
    return st;
}

/* The text between matches goes on: after the raw pass to the normalizer, after the
 * normalized pass to pre-tokenization. */
static sk_status next_stage(enc *e, const char *s, size_t n, bool normalized, bool first) {
    return normalized ? pretokenize(e, s, n, first) : normalize_piece(e, s, n, first);
}

/* Splits s[0..n) on the added tokens of one pass, as HF's AddedVocabulary::find_matches:
 * tokens go to the output, the text between them to the next stage. first: s starts the
 * whole text (for Metaspace's prepend_scheme "first"). */
static sk_status split_added(enc *e, const char *s, size_t n, bool normalized, bool first) {
    const tok *t = e->t;
    bool any = false;
    for (int k = 0; k < t->n_added; k++) any |= t->added[k].normalized == normalized;
    if (!any) return next_stage(e, s, n, normalized, first);
    size_t done = 0, i = 0;
    while (i < n) {
        const tok_added *a = t->first_byte[(unsigned char)s[i]] ? added_at(t, s, n, i, normalized) : NULL;
        if (!a) { i++; continue; }
        size_t start = i, stop = i + (a->norm ? a->norm_len : a->len);
        /* HF's matcher moves on from the end of the token itself, whether the match is then
         * discarded (single_word) or widened (rstrip): a token may begin inside the spaces
         * the previous one stripped, and is then emitted too (HF does the same). */
        i = stop;
        if (a->single_word) {
            bool word_before = start > 0 && is_word_char_at(t, s, n, char_before(s, start));
            bool word_after = stop < n && is_word_char_at(t, s, n, stop);
            if (word_before || word_after) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > done) {
                size_t p = char_before(s, ns);
                uint32_t cp;
                tok_utf8_decode((const unsigned char *)s + p, &cp);
                if (!is_ws(cp)) break;
                ns = p;
            }
            start = ns;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                size_t k = tok_utf8_decode((const unsigned char *)s + stop, &cp);
                if (!is_ws(cp)) break;
                stop += k;
            }
        }
        if (start > done) SK_TRY(next_stage(e, s + done, start - done, normalized, first && done == 0));
        SK_TRY(emit(e, &a->id, 1));
        done = stop;
    }
    if (done < n) SK_TRY(next_stage(e, s + done, n - done, normalized, first && done == 0));
    return SK_OK;
}

sk_status tok_encode_ex(const tok *t, const char *text, size_t len, bool add_special, int32_t **ids, size_t *n) {
    char *fixed;
    size_t flen;
    SK_TRY(tok_utf8_fix(text, len, &fixed, &flen));
    if (fixed) { text = fixed; len = flen; }
    enc e = {.t = t};
    sk_status st = grow((void **)&e.ids, &e.cap, len / 3 + 16, sizeof *e.ids);
    if (st == SK_OK && add_special) st = emit(&e, t->post_pre, (size_t)t->n_post_pre);
    if (st == SK_OK) st = split_added(&e, text, len, false, true);
    if (st == SK_OK && add_special) st = emit(&e, t->post_post, (size_t)t->n_post_post);
    mem_free(fixed);
    mem_free(e.sym);
    mem_free(e.heap);
    mem_free(e.buf);
    if (st != SK_OK) {
        mem_free(e.ids);
        return st == SK_ENOMEM ? sk_fail(SK_ENOMEM, "out of memory encoding %zu bytes", len) : st;
    }
    *ids = e.ids;
    *n = e.n;
    return SK_OK;
}

sk_status tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n) {
    return tok_encode_ex(t, text, len, false, ids, n);
}

/* ---- decoding ------------------------------------------------------------------------------ */

/* Appends bytes to out, one U+FFFD per maximal ill-formed subpart; out has room for 3*n. */
static size_t lossy(const unsigned char *s, size_t n, char *out) {
    size_t o = 0, sub;
    for (size_t i = 0; i < n;) {
        size_t k = tok_utf8_seq(s + i, n - i, &sub);
        if (k) { memcpy(out + o, s + i, k); o += k; i += k; }
        else { memcpy(out + o, "\xef\xbf\xbd", 3); o += 3; i += sub; }
    }
    return o;
}

/* Appends n bytes to a growable buffer. */
static sk_status put_bytes(char **buf, size_t *len, size_t *cap, const void *s, size_t n) {
    SK_TRY(grow((void **)buf, cap, *len + n + 1, 1));
    memcpy(*buf + *len, s, n);
    *len += n;
    return SK_OK;
}

/* HF's ByteFallback on a run of byte tokens: its bytes when they are well-formed UTF-8,
 * else one U+FFFD per byte. */
static sk_status put_run(char **buf, size_t *len, size_t *cap, const unsigned char *run, size_t n) {
    size_t i = 0, sub;
    while (i < n) {
        size_t k = tok_utf8_seq(run + i, n - i, &sub);
        if (!k) break;
        i += k;
    }
    if (i == n) return put_bytes(buf, len, cap, run, n);
    for (size_t k = 0; k < n; k++) SK_TRY(put_bytes(buf, len, cap, "\xef\xbf\xbd", 3));
    return SK_OK;
}

/* The SentencePiece-style decoder chain over the whole id list (see tok_impl.h). */
static sk_status decode_pieces(const tok *t, const int32_t *ids, size_t n, bool skip_special, char **out, size_t *out_len) {
    char *buf = NULL, *run = NULL;
    size_t len = 0, cap = 0, nrun = 0, run_cap = 0;
    long idx = 0;
    sk_status st = grow((void **)&buf, &cap, 64, 1);
    for (size_t i = 0; i < n && st == SK_OK; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_str[id] || (skip_special && t->id_special[id])) continue;
        if (t->id_fb_byte[id] >= 0) {
            unsigned char b = (unsigned char)t->id_fb_byte[id];
            st = put_bytes(&run, &nrun, &run_cap, &b, 1);
            idx++;
            continue;
        }
        if (nrun) { st = put_run(&buf, &len, &cap, (unsigned char *)run, nrun); nrun = 0; }
        if (st == SK_OK && t->dec_join_space && idx > 0) st = put_bytes(&buf, &len, &cap, " ", 1);
        if (st != SK_OK) break;
        if (idx == 0 && t->dec_meta && t->dec_meta_first) {
            size_t k;
            char *first = piece_text(t, t->id_str[id], true, &k);
            st = first ? put_bytes(&buf, &len, &cap, first, k) : SK_ENOMEM;
            mem_free(first);
        } else {
            st = put_bytes(&buf, &len, &cap, t->id_bytes[id], t->id_nbytes[id]);
        }
        idx++;
    }
    if (st == SK_OK && nrun) st = put_run(&buf, &len, &cap, (unsigned char *)run, nrun);
    mem_free(run);
    if (st != SK_OK) { mem_free(buf); return st; }
    /* Strip, after Fuse: on the whole text. */
    char sc[4];
    size_t ls = tok_utf8_encode(t->dec_strip_char, sc), start = 0;
    for (int k = 0; k < t->dec_strip_start && start + ls <= len && !memcmp(buf + start, sc, ls); k++) start += ls;
    for (int k = 0; k < t->dec_strip_stop && len >= start + ls && !memcmp(buf + len - ls, sc, ls); k++) len -= ls;
    memmove(buf, buf + start, len - start);
    len -= start;
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return SK_OK;
}

char *tok_decode_ex(const tok *t, const int32_t *ids, size_t n, bool skip_special, size_t *len) {
    if (!t->dec_bytelevel) {
        char *out;
        size_t k;
        if (decode_pieces(t, ids, n, skip_special, &out, &k) != SK_OK) return NULL;
        if (len) *len = k;
        return out;
    }
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < t->n_ids) total += t->id_nbytes[ids[i]];
    unsigned char *raw = mem_alloc(total + 1);
    char *out = mem_alloc(3 * total + 1);
    if (!raw || !out) { mem_free(raw); mem_free(out); return NULL; }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_str[id] || (skip_special && t->id_special[id])) continue;
        memcpy(raw + k, t->id_bytes[id], t->id_nbytes[id]);
        k += t->id_nbytes[id];
    }
    size_t o = lossy(raw, k, out);
    out[o] = 0;
    if (len) *len = o;
    mem_free(raw);
    return out;
}

char *tok_decode(const tok *t, const int32_t *ids, size_t n) { return tok_decode_ex(t, ids, n, false, NULL); }

/* ---- streaming decode -------------------------------------------------------------------- */

void tok_stream_init(tok_stream *s, const tok *t) {
    memset(s, 0, sizeof *s);
    s->t = t;
    s->strip_left = t->dec_bytelevel ? 0 : t->dec_strip_start;
}

size_t tok_stream_cap(const tok *t) { return 3 * (t->max_token_bytes + TOK_STREAM_RUN + 8) + 1; }

/* How many bytes at the end of s[0..n) begin a sequence that more bytes could complete. */
static size_t incomplete_tail(const unsigned char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned c = s[n - k];
        if (c >= 0x80 && c <= 0xbf) continue;   /* continuation: look further back */
        if (c < 0xc2 || c > 0xf4) return 0;
        size_t sub;
        return !tok_utf8_seq(s + n - k, k, &sub) && sub == k ? k : 0;
    }
    return 0;
}

/* Writes text through the leading Strip: strip characters at the very start are dropped. */
static size_t stream_out(tok_stream *s, const char *text, size_t n, char *out) {
    if (s->strip_left > 0) {
        char sc[4];
        size_t ls = tok_utf8_encode(s->t->dec_strip_char, sc);
        while (s->strip_left > 0 && n >= ls && !memcmp(text, sc, ls)) { text += ls; n -= ls; s->strip_left--; }
        if (n) s->strip_left = 0;
    }
    memcpy(out, text, n);
    return n;
}

/* Ends the byte run in progress: its bytes (well-formed, since a bad run is written as it goes)
 * or, when incomplete, one U+FFFD per byte. */
static size_t stream_end_run(tok_stream *s, char *out) {
    size_t o = 0, np = (size_t)s->n_pending, sub;
    if (np) {
        bool whole = true;
        for (size_t i = 0; i < np;) {
            size_t k = tok_utf8_seq(s->pending + i, np - i, &sub);
            if (!k) { whole = false; break; }
            i += k;
        }
        if (whole) o = stream_out(s, (const char *)s->pending, np, out);
        else for (size_t k = 0; k < np; k++) o += stream_out(s, "\xef\xbf\xbd", 3, out + o);
    }
    s->n_pending = 0;
    s->bad_run = false;
    return o;
}

/* Whether s[0..n) is well-formed UTF-8 up to a sequence that more bytes could complete. */
static bool valid_prefix(const unsigned char *s, size_t n) {
    size_t sub;
    for (size_t i = 0; i < n;) {
        size_t k = tok_utf8_seq(s + i, n - i, &sub);
        if (!k) return sub == n - i && s[i] >= 0xc2 && s[i] <= 0xf4;
        i += k;
    }
    return true;
}

/* tok_stream_put for the SentencePiece-style decoder. */
static size_t stream_put_pieces(tok_stream *s, int32_t id, char *out) {
    const tok *t = s->t;
    size_t o = 0;
    int fb = t->id_fb_byte[id];
    if (fb >= 0) {
        s->n_tokens++;
        if (s->bad_run) return stream_out(s, "\xef\xbf\xbd", 3, out);
        s->pending[s->n_pending++] = (unsigned char)fb;
        if (!valid_prefix(s->pending, (size_t)s->n_pending)) {
            for (int k = 0; k < s->n_pending; k++) o += stream_out(s, "\xef\xbf\xbd", 3, out + o);
            s->n_pending = 0;
            s->bad_run = true;
        } else if (s->n_pending == TOK_STREAM_RUN) {
            /* Too long to hold: write its complete characters (the documented exception). */
            size_t hold = incomplete_tail(s->pending, TOK_STREAM_RUN);
            o = stream_out(s, (const char *)s->pending, TOK_STREAM_RUN - hold, out);
            memmove(s->pending, s->pending + TOK_STREAM_RUN - hold, hold);
            s->n_pending = (int)hold;
        }
        return o;
    }
    o = stream_end_run(s, out);
    if (t->dec_join_space && s->n_tokens > 0) o += stream_out(s, " ", 1, out + o);
    char *first = NULL;
    size_t k = 0;
    if (s->n_tokens == 0 && t->dec_meta && t->dec_meta_first) first = piece_text(t, t->id_str[id], true, &k);
    if (first) o += stream_out(s, first, k, out + o);
    else o += stream_out(s, (const char *)t->id_bytes[id], t->id_nbytes[id], out + o);
    mem_free(first);
    s->n_tokens++;
    return o;
}

size_t tok_stream_put(tok_stream *s, int32_t id, char *out, size_t cap) {
    const tok *t = s->t;
    SK_ASSERT(cap >= tok_stream_cap(t));
    if (id < 0 || id >= t->n_ids || !t->id_str[id]) { out[0] = 0; return 0; }
    if (!t->dec_bytelevel) {
        size_t o = stream_put_pieces(s, id, out);
        out[o] = 0;
        return o;
    }
    const unsigned char *b = t->id_bytes[id];
    size_t nb = t->id_nbytes[id], np = (size_t)s->n_pending;
    /* The last few bytes of pending + b decide what is held back; the rest is written. */
    unsigned char tail[8];
    size_t nt = np + nb < 4 ? np + nb : 4;
    for (size_t i = 0; i < nt; i++) {
        size_t j = np + nb - nt + i;
        tail[i] = j < np ? s->pending[j] : b[j - np];
    }
    size_t hold = incomplete_tail(tail, nt), o = 0, emit_n = np + nb - hold;
    if (emit_n) {
        /* The pending bytes joined with the first bytes of b, then the rest of b as is. */
        unsigned char head[8];
        size_t nh = np + (nb < 4 ? nb : 4);
        if (nh > emit_n) nh = emit_n;
        for (size_t i = 0; i < nh; i++) head[i] = i < np ? s->pending[i] : b[i - np];
        /* Decode head up to a sequence boundary at or past np, then continue inside b. */
        size_t i = 0, sub;
        while (i < nh && (i < np || i == 0)) {
            size_t k = tok_utf8_seq(head + i, nh - i, &sub);
            if (k) { memcpy(out + o, head + i, k); o += k; i += k; }
            else { memcpy(out + o, "\xef\xbf\xbd", 3); o += 3; i += sub; }
        }
        if (i < emit_n) o += lossy(b + (i - np), emit_n - i, out + o);
    }
    s->n_pending = (int)hold;
    for (size_t i = 0; i < hold; i++) s->pending[i] = tail[nt - hold + i];
    out[o] = 0;
    return o;
}

size_t tok_stream_flush(tok_stream *s, char *out, size_t cap) {
    SK_ASSERT(cap >= 3 * (size_t)s->n_pending + 1);
    size_t o = s->t->dec_bytelevel ? lossy(s->pending, (size_t)s->n_pending, out) : stream_end_run(s, out);
    s->n_pending = 0;
    out[o] = 0;
    return o;
}
