/* tok: byte-level BPE tokenizers exactly as Hugging Face `tokenizers` runs them.
 *
 *   tok *t;
 *   tok_load("tokenizer.json", &t);
 *   int32_t *ids; size_t n;
 *   tok_encode(t, text, strlen(text), &ids, &n);    // ids owned by the caller (mem_free)
 *   char *s = tok_decode(t, ids, n);                 // NUL-terminated, caller frees
 *
 * Encoding: added/special tokens are split out first (honouring their normalized, lstrip,
 * rstrip and single_word flags); the rest is pre-tokenized with the GPT-2 regex (PCRE2,
 * Unicode classes), each piece mapped byte-to-unicode and merged by rank. Invalid UTF-8
 * input is first replaced by U+FFFD as Python's errors='replace' does. The ids equal HF's
 * `Tokenizer.encode(text).ids` except that no post-processor runs: a template that adds a
 * BOS token (Llama 3) is the caller's business.
 *
 * Files read: model BPE (merges as "a b" or ["a", "b"], ignore_merges, unk_token), a
 * pre_tokenizer ByteLevel (add_prefix_space, use_regex) or Sequence [Split(regex,
 * Isolated), ByteLevel] as Llama 3 and Qwen have, no normalizer. Anything else that would
 * change the ids (WordPiece, Unigram, a normalizer, dropout) is refused with SK_EFORMAT and
 * a message naming the file and the field; never a crash.
 *
 * Tests: tests/test_tok.c and tests/cli_tok.sh, against fixtures made by HF `tokenizers`
 * (tests/fixtures/make_tok_fixtures.py). */
#ifndef SKEIN_TOK_H
#define SKEIN_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

typedef struct tok tok;

/* Loads a Hugging Face tokenizer.json; *out owned by the caller (tok_free). */
sk_status tok_load(const char *path, tok **out);
/* Writes tokenizer.json (atomically): the loaded document with model and added_tokens
 * written afresh (GPT-2's layout for a trained tok); loads in HF and encodes the same. */
sk_status tok_save(const tok *t, const char *path);
void tok_free(tok *t);

/* Trains a byte-level BPE vocabulary of vocab_size entries (256 byte tokens + merges +
 * special tokens) over the given text files; "<|endoftext|>" is always a special token, the
 * last id (text is split at it before counting). Deterministic (ties go to the smaller
 * pair of ids). Stops early, with a smaller vocabulary, when no pair is left to merge.
 * SK_EIO naming a file that cannot be read; SK_EARG for vocab_size < 257. */
sk_status tok_train(const char *const *files, int n_files, int vocab_size, tok **out);

/* Encodes len bytes of text (any bytes: invalid UTF-8 is replaced first) into *ids (*n of
 * them; owned by the caller, mem_free; never NULL on success). Thread-safe: a tok may be
 * shared by threads (the word cache inside is locked per shard). No BOS/EOS is added. */
sk_status tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n);
/* Decodes ids to NUL-terminated UTF-8 as HF's decode(ids, skip_special_tokens=False) does:
 * token bytes concatenated, ill-formed UTF-8 replaced by U+FFFD; ids outside the vocabulary
 * are skipped. Caller frees (mem_free); NULL only when out of memory. */
char *tok_decode(const tok *t, const int32_t *ids, size_t n);
/* As tok_decode; skip_special leaves out special added tokens (HF skip_special_tokens=True);
 * *len (when not NULL) gets the length, which counts NUL bytes that the text may hold. */
char *tok_decode_ex(const tok *t, const int32_t *ids, size_t n, bool skip_special, size_t *len);

/* Replaces ill-formed UTF-8 by U+FFFD exactly as Python's bytes.decode("utf-8", "replace")
 * (one U+FFFD per maximal subpart). *out is NULL when text is already valid (nothing
 * copied), else a new NUL-terminated buffer of *out_len bytes (mem_free). */
sk_status tok_utf8_fix(const char *text, size_t len, char **out, size_t *out_len);

int tok_vocab_size(const tok *t);      /* largest id + 1, added tokens included */
int tok_token_id(const tok *t, const char *token);   /* -1 when absent */
int tok_eot_id(const tok *t);          /* "<|endoftext|>" (or the first special token), -1 if none */
/* The bytes token id decodes to (*len of them, not NUL-terminated; NULL for an unused id). */
const unsigned char *tok_token_bytes(const tok *t, int32_t id, size_t *len);
bool tok_is_special(const tok *t, int32_t id);

/* Streaming decode: bytes of one token appended to a buffer; incomplete UTF-8 sequences are
 * held back until the next token completes them (tok_stream_flush emits the rest). */
typedef struct tok_stream { const tok *t; unsigned char pending[8]; int n_pending; } tok_stream;
void tok_stream_init(tok_stream *s, const tok *t);
/* Writes the text that token `id` completes into out and NUL-terminates it; returns its
 * length. cap must be at least tok_stream_cap(t) (asserted). Ids outside the vocabulary
 * write nothing. The concatenated outputs of put... then flush equal tok_decode of the ids. */
size_t tok_stream_put(tok_stream *s, int32_t id, char *out, size_t cap);
/* Writes what is held back (each incomplete sequence as U+FFFD) and resets the stream. */
size_t tok_stream_flush(tok_stream *s, char *out, size_t cap);
size_t tok_stream_cap(const tok *t);

#endif
