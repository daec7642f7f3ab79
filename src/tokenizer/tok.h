/* tok: byte-level BPE tokenizers exactly as Hugging Face `tokenizers` runs them.
 *
 *   tok *t;
 *   tok_load("tokenizer.json", &t);
 *   int32_t *ids; size_t n;
 *   tok_encode(t, text, strlen(text), &ids, &n);    // ids owned by the caller (mem_free)
 *   char *s = tok_decode(t, ids, n);                 // NUL-terminated, caller frees
 *
 * Encoding: added/special tokens are split out first; the rest is pre-tokenized with the
 * GPT-2 regex (PCRE2, Unicode classes), each piece mapped byte-to-unicode and merged by rank.
 * Invalid UTF-8 input is first replaced by U+FFFD as Python's errors='replace' does. */
#ifndef SKEIN_TOK_H
#define SKEIN_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

typedef struct tok tok;

sk_status tok_load(const char *path, tok **out);
sk_status tok_save(const tok *t, const char *path);
void tok_free(tok *t);

/* Trains a byte-level BPE vocabulary of vocab_size entries (256 byte tokens + merges +
 * special tokens) over the given text files; "<|endoftext|>" is always a special token. */
sk_status tok_train(const char *const *files, int n_files, int vocab_size, tok **out);

sk_status tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n);
char *tok_decode(const tok *t, const int32_t *ids, size_t n);

int tok_vocab_size(const tok *t);      /* largest id + 1, added tokens included */
int tok_token_id(const tok *t, const char *token);   /* -1 when absent */
int tok_eot_id(const tok *t);          /* "<|endoftext|>" (or the first special token), -1 if none */

/* Streaming decode: bytes of one token appended to a buffer; incomplete UTF-8 sequences are
 * held back until the next token completes them (tok_stream_flush emits the rest). */
typedef struct tok_stream { const tok *t; unsigned char pending[8]; int n_pending; } tok_stream;
void tok_stream_init(tok_stream *s, const tok *t);
/* Writes the printable text that token `id` completes into out (cap bytes); returns its length. */
size_t tok_stream_put(tok_stream *s, int32_t id, char *out, size_t cap);
size_t tok_stream_flush(tok_stream *s, char *out, size_t cap);

#endif
