/* tok_impl: what the files of src/tokenizer/ share and users of tok.h never see — the tok
 * struct, two small hash maps, the byte-to-unicode tables, the pre-tokenizer regexes, the
 * normalizer steps and the UTF-8 helpers.
 *
 * Token strings: the vocabulary of a byte-level BPE stores each token as the "byte-level"
 * spelling of its bytes (byte b written as the code point tok_byte_char[b], e.g. ' ' as 'Ġ').
 * A SentencePiece-style BPE (Llama 2, Mistral) stores text with "▁" for a space and
 * "<0xNN>" tokens for bytes. Inside skein a token is what it decodes to (id_bytes); the JSON
 * spelling (id_str) is kept for save, tok_token_id and the model's symbols. Merges are keyed
 * by the pair of ids, (left << 32 | right). */
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
    char *norm;          /* normalized=true: the content normalized, what the text is matched
                          * against (HF normalizes these too); NULL when it is the content */
    size_t norm_len;
    int32_t id;
    bool special, single_word, lstrip, rstrip, normalized;
} tok_added;

/* One normalizer step. */
typedef struct tok_norm {
    enum { TOK_NORM_PREPEND, TOK_NORM_REPLACE, TOK_NORM_NFC, TOK_NORM_NFD, TOK_NORM_NFKC, TOK_NORM_NFKD } kind;
    char *a, *b;              /* Prepend: a; Replace: pattern a -> content b */
} tok_norm;

/* One Replace step of a decoder (String pattern). */
typedef struct tok_decstep { char *pattern, *content; } tok_decstep;

enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };

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

    /* Model BPE options beyond merges (SentencePiece-style files set these). */
    bool byte_fallback, fuse_unk;
    int32_t fb_id[256];       /* id of "<0xNN>" for byte NN, -1 when absent */

    /* Normalizer: steps applied in order to the text between non-normalized added tokens. */
    tok_norm *norm;
    int n_norm;

    /* Pre-tokenizer: ByteLevel (an optional Split regex first), Metaspace, or none. With
     * ByteLevel the model's symbols are bytes (byte-level spellings); otherwise they are the
     * characters of the normalized text, unknown ones through byte_fallback or unk. */
    enum { TOK_PRE_NONE, TOK_PRE_BYTELEVEL, TOK_PRE_METASPACE } pre;
    bool has_split;
    tok_regex split_re;
    bool prefix_space, use_regex;
    tok_regex gpt2_re;
    char meta_rep[8];         /* Metaspace replacement (UTF-8, "▁") */
    int meta_scheme;          /* TOK_PREPEND_* */
    bool meta_split;

    /* Decoder. Byte-level: id_bytes concatenated, ill-formed UTF-8 replaced over the whole.
     * Otherwise ("pieces"): id_bytes is a token's text inside the output (Replace steps and
     * Metaspace applied); tokens that are "<0xNN>" under ByteFallback are bytes gathered into
     * runs; then Strip (after Fuse) on the whole text. See tok.c, decoding. */
    bool dec_bytelevel;
    tok_decstep *dec_repl;    /* per-token replacements, in order */
    int n_dec_repl;
    bool dec_meta;            /* Metaspace decoder: meta_rep -> ' ' */
    bool dec_meta_first;      /* ... and dropped from the first token (prepend_scheme not never) */
    bool dec_byte_fallback, dec_join_space;
    uint32_t dec_strip_char;
    int dec_strip_start, dec_strip_stop;
    int16_t *id_fb_byte;      /* (n_ids) byte of a "<0xNN>" token under ByteFallback, else -1 */

    /* Post-processor for one sequence: ids before and after it (TemplateProcessing). */
    int32_t post_pre[8], post_post[8];
    int n_post_pre, n_post_post;

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
/* Applies the normalizer to s[0..n) (valid UTF-8): *out is a new buffer (mem_free) of *out_n
 * bytes, or NULL when no step changed anything. */
sk_status tok_normalize(const tok *t, const char *s, size_t n, char **out, size_t *out_n);
/* Finishes loading: byte ids, decoder tables, regexes, cache. */
sk_status tok_finish(tok *t);
/* The default tokenizer.json skeleton (everything but model and added_tokens). */
cJSON *tok_default_doc(void);

#endif
