/* tok_impl: what the files of src/tokenizer/ share and users of tok.h never see — the tok
 * struct, two small hash maps, the byte-to-unicode tables, the pre-tokenizer regexes and the
 * UTF-8 helpers.
 *
 * Token strings: the vocabulary of a byte-level BPE stores each token as the "byte-level"
 * spelling of its bytes (byte b written as the code point tok_byte_char[b], e.g. ' ' as 'Ġ').
 * Inside skein a token is its bytes (id_bytes); the JSON spelling is kept for save and for
 * tok_token_id. Merges are keyed by the pair of ids, (left << 32 | right). */
#ifndef SKEIN_TOK_IMPL_H
#define SKEIN_TOK_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>

#include <cJSON.h>

#include "tokenizer/tok.h"

/* The GPT-2 pre-tokenization pattern, as Hugging Face's ByteLevel pre-tokenizer uses it. */
#define TOK_GPT2_PATTERN \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* ---- hash maps ---------------------------------------------------------------------- */

uint64_t tok_hash(const void *data, size_t n);

/* String (bytes) -> int32. Keys are copied into the map's own pool. */
typedef struct tok_strmap {
    uint32_t *slots;      /* cap entries: index + 1 into ents, 0 = empty */
    size_t cap;           /* power of two */
    struct tok_strent { uint64_t hash; size_t off; uint32_t len; int32_t val; } *ents;
    size_t n, ents_cap;
    char *pool;
    size_t pool_len, pool_cap;
} tok_strmap;
sk_status tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val); /* replaces */
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len);          /* -1: absent */
void tok_strmap_free(tok_strmap *m);

/* uint64 -> uint64 (open addressing; key UINT64_MAX is reserved). */
typedef struct tok_u64map {
    uint64_t *keys, *vals;
    size_t cap, n;
} tok_u64map;
sk_status tok_u64map_put(tok_u64map *m, uint64_t key, uint64_t val);
/* Returns a pointer to the value, or NULL when absent. Valid until the next put. */
uint64_t *tok_u64map_get(const tok_u64map *m, uint64_t key);
void tok_u64map_free(tok_u64map *m);

/* ---- byte-level alphabet ------------------------------------------------------------ */

/* tok_byte_char[b]: the code point that spells byte b (GPT-2's bytes_to_unicode).
 * tok_char_byte(cp): the byte a code point spells, or -1. */
extern uint32_t tok_byte_char[256];
void tok_bytelevel_init(void);
int tok_char_byte(uint32_t cp);
/* Writes the byte-level spelling of bytes s[0..n) into out (room for 2*n bytes); returns its length. */
size_t tok_bytes_to_spelling(const unsigned char *s, size_t n, char *out);

/* ---- UTF-8 ---------------------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s[0..n), or 0 when it is ill-formed there;
 * *sub is then the length of its maximal subpart (>= 1), what one U+FFFD replaces. */
size_t tok_utf8_seq(const unsigned char *s, size_t n, size_t *sub);
/* Decodes one code point of well-formed UTF-8; returns its length. */
size_t tok_utf8_decode(const unsigned char *s, uint32_t *cp);
size_t tok_utf8_encode(uint32_t cp, char *out);

/* ---- pre-tokenization --------------------------------------------------------------- */

typedef struct tok_regex {
    pcre2_code *code;
    bool jit;
} tok_regex;
/* Compiles pattern (UTF + UCP, JIT when available). `literal` matches the text as is. */
sk_status tok_regex_compile(tok_regex *re, const char *pattern, bool literal, const char *what);
void tok_regex_free(tok_regex *re);

/* Splits s[0..n) (valid UTF-8) the way HF's Split(..., "Isolated") does: every match and
 * every gap between matches becomes a piece, empty pieces dropped. Calls fn(ctx, start, len)
 * per piece in order; stops and returns the first non-OK status fn returns. */
typedef sk_status (*tok_piece_fn)(void *ctx, const char *s, size_t n);
sk_status tok_regex_split(const tok_regex *re, const char *s, size_t n, tok_piece_fn fn, void *ctx);

/* ---- the tokenizer ------------------------------------------------------------------ */

typedef struct tok_added {
    char *content;       /* UTF-8, as in tokenizer.json */
    size_t len;
    int32_t id;
    bool special, single_word, lstrip, rstrip, normalized;
} tok_added;

/* Cache of encoded pieces (bytes -> ids), sharded under mutexes so threads can share a tok. */
#define TOK_CACHE_SHARDS 16
typedef struct tok_cache_shard {
    pthread_mutex_t mu;
    tok_strmap map;           /* piece bytes -> offset into ids */
    int32_t *ids;             /* [n][ids...] runs: count then ids */
    size_t n_ids, cap_ids;
} tok_cache_shard;

struct tok {
    int n_ids, cap_ids;       /* largest id + 1; allocated length of the id tables */
    char **id_str;            /* (n_ids) JSON spelling, NULL for unused ids */
    unsigned char **id_bytes; /* (n_ids) what the token decodes to */
    uint32_t *id_nbytes;      /* (n_ids) */
    bool *id_special;         /* (n_ids) */
    tok_strmap vocab;         /* model vocabulary: spelling -> id */
    int32_t byte_id[256];     /* id of the single-byte token of each byte, -1 when absent */
    int32_t unk_id;           /* -1 when none */
    bool ignore_merges;

    tok_u64map merges;        /* (left << 32 | right) -> (rank << 32 | merged id) */
    int32_t (*merge_list)[2]; /* (n_merges, 2) in rank order */
    int n_merges, cap_merges;

    tok_added *added;         /* in tokenizer.json order */
    int n_added, cap_added;
    tok_strmap added_map;     /* content -> id */
    bool first_byte[256];     /* some added token starts with this byte */
    tok_regex word_re;        /* Rust's is_alphanumeric, for single_word tokens */

    /* Pre-tokenizer: an optional Split regex, then ByteLevel. */
    bool has_split;
    tok_regex split_re;
    bool prefix_space, use_regex;
    tok_regex gpt2_re;

    cJSON *doc;               /* tokenizer.json minus model and added_tokens, for tok_save */
    size_t max_token_bytes;

    tok_cache_shard cache[TOK_CACHE_SHARDS];
};

/* Allocates an empty tok (every table empty, every id unused). */
sk_status tok_new(tok **out);
/* Sets token `id` to spelling str (JSON form); grows the id tables. */
sk_status tok_set_token(tok *t, int32_t id, const char *str, bool special);
/* Adds merge (left, right) as the next rank; the merged spelling must be in the vocab. */
sk_status tok_add_merge(tok *t, int32_t left, int32_t right, const char *what);
/* Appends an added token (a copy of a's content); sets its id's spelling and special flag. */
sk_status tok_add_added(tok *t, const tok_added *a);
/* Finishes loading: byte ids, regexes, cache. */
sk_status tok_finish(tok *t);
/* The default tokenizer.json skeleton (everything but model and added_tokens). */
cJSON *tok_default_doc(void);

#endif
