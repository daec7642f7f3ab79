/* tok: BPE tokenizers exactly as Hugging Face `tokenizers` runs them: byte-level BPE (GPT-2,
 * Llama 3, Qwen2) and SentencePiece-style BPE (Llama 2, Mistral, TinyLlama).
 *
 *   tok *t;
 *   tok_load("tokenizer.json", &t);
 *   tok_load_config(t, "tokenizer_config.json");     // optional: add_bos_token / add_eos_token
 *   int32_t *ids; size_t n;
 *   tok_encode(t, text, strlen(text), &ids, &n);    // ids owned by the caller (mem_free)
 *   char *s = tok_decode(t, ids, n);                 // NUL-terminated, caller frees
 *
 * Encoding runs HF's pipeline: invalid UTF-8 is first replaced by U+FFFD as Python's
 * errors='replace' does; added tokens with normalized=false are split out of the raw text
 * (honouring lstrip, rstrip and single_word); the normalizer runs on the text between them;
 * added tokens with normalized=true are split out of the normalized text; the rest is
 * pre-tokenized and run through the BPE model. tok_encode's ids equal HF's
 * `Tokenizer.encode(text, add_special_tokens=False).ids`; tok_encode_ex with add_special
 * equals `encode(text)` (the post-processor's BOS/EOS, e.g. Llama 3's <|begin_of_text|>).
 * Special-token strings in the text always become their ids (HF's default); data prepare uses
 * tok_encode, so documents get no BOS (they are separated by the end-of-text token).
 *
 * Files read (tokenizer.json):
 *   model       BPE: vocab, merges ("a b" or ["a", "b"]), unk_token, fuse_unk, byte_fallback
 *               ("<0xNN>" tokens for characters missing from the vocabulary), ignore_merges.
 *   normalizer  null, Prepend, Replace (String pattern), NFC, NFD, NFKC, NFKD (libutf8proc),
 *               or a Sequence of these (Llama 2: [Prepend("▁"), Replace(" ", "▁")]; Qwen2: NFC).
 *   pre_tokenizer  ByteLevel (add_prefix_space, use_regex), Sequence [Split(regex, Isolated),
 *               ByteLevel] (Llama 3, Qwen2), Metaspace (replacement, prepend_scheme always /
 *               first / never or the older add_prefix_space, split), or null.
 *   post_processor  null, ByteLevel (ids unchanged), TemplateProcessing (its "single" list),
 *               or a Sequence of these.
 *   decoder     ByteLevel; Metaspace; Sequence of Replace (String) steps, Metaspace,
 *               ByteFallback, Fuse, Strip (after Fuse) in that order (Llama 2: [Replace("▁",
 *               " "), ByteFallback, Fuse, Strip(" ", 1, 0)]); null (tokens joined by spaces,
 *               except for byte-level tokenizers, which decode their bytes).
 * Anything else that would change the ids or the text (WordPiece, Unigram, another
 * normalizer, a Regex Replace, dropout, RobertaProcessing, BertProcessing) is refused with
 * SK_EFORMAT and a message naming the file and the field; never a crash.
 *
 * Tests: tests/test_tok.c, tests/test_tok2.c and tests/cli_tok*.sh, against fixtures made by
 * HF `tokenizers` (tests/fixtures/make_tok_fixtures.py, make_tok2_fixtures.py). */
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

/* Reads a tokenizer_config.json next to tokenizer.json (a missing file is not an error: SK_OK,
 * nothing changed). Where it sets add_bos_token or add_eos_token, these decide what
 * tok_encode_ex(add_special) adds — bos_token? $A eos_token? — replacing the post_processor,
 * as transformers does for such folders (older Llama 2 files: LlamaTokenizerFast). SK_EFORMAT
 * naming the file and field when a token it names is not in the vocabulary. */
sk_status tok_load_config(tok *t, const char *path);

/* Encodes len bytes of text (any bytes: invalid UTF-8 is replaced first) into *ids (*n of
 * them; owned by the caller, mem_free; never NULL on success). Thread-safe: a tok may be
 * shared by threads (the word cache inside is locked per shard). No BOS/EOS is added
 * (HF's add_special_tokens=False). */
sk_status tok_encode(const tok *t, const char *text, size_t len, int32_t **ids, size_t *n);
/* As tok_encode; add_special runs the post-processor as HF's encode(text) does by default
 * (add_special_tokens=True): Llama 2's <s> and Llama 3's <|begin_of_text|> before the ids. */
sk_status tok_encode_ex(const tok *t, const char *text, size_t len, bool add_special, int32_t **ids, size_t *n);
/* Decodes ids to NUL-terminated UTF-8 as HF's decode(ids, skip_special_tokens=False) does
 * through the file's decoder: byte-level, token bytes concatenated and ill-formed UTF-8
 * replaced by U+FFFD; SentencePiece-style, "▁" as a space, each run of "<0xNN>" tokens as its
 * bytes when they are well-formed UTF-8 and else one U+FFFD per byte, then the Strip. Ids
 * outside the vocabulary are skipped. Caller frees (mem_free); NULL only when out of memory. */
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
/* The end-of-text token that separates documents: "<|endoftext|>", else "<|end_of_text|>"
 * (Llama 3), else "</s>" (Llama 2), else the first special added token; -1 if none. */
int tok_eot_id(const tok *t);
/* The bytes token id decodes to (*len of them, not NUL-terminated; NULL for an unused id). */
const unsigned char *tok_token_bytes(const tok *t, int32_t id, size_t *len);
bool tok_is_special(const tok *t, int32_t id);

/* Streaming decode: text of one token appended to a buffer; incomplete UTF-8 sequences are
 * held back until the next token completes them (tok_stream_flush emits the rest). With
 * ByteFallback a run of "<0xNN>" tokens is held until it ends (HF judges a run whole), up to
 * TOK_STREAM_RUN bytes: a longer run is written as it goes, and only then may the stream
 * differ from tok_decode (were the run ill-formed later on); Strip's stop (trailing) count is
 * not applied while streaming. */
#define TOK_STREAM_RUN 64
typedef struct tok_stream {
    const tok *t;
    unsigned char pending[TOK_STREAM_RUN];
    int n_pending;
    bool bad_run;           /* the byte run in progress is ill-formed: each byte is U+FFFD */
    int strip_left;         /* leading strip characters still to drop */
    long n_tokens;          /* tokens seen (the Metaspace decoder treats the first apart) */
} tok_stream;
void tok_stream_init(tok_stream *s, const tok *t);
/* Writes the text that token `id` completes into out and NUL-terminates it; returns its
 * length. cap must be at least tok_stream_cap(t) (asserted). Ids outside the vocabulary
 * write nothing. The concatenated outputs of put... then flush equal tok_decode of the ids. */
size_t tok_stream_put(tok_stream *s, int32_t id, char *out, size_t cap);
/* Writes what is held back (each incomplete sequence as U+FFFD) and resets the stream. */
size_t tok_stream_flush(tok_stream *s, char *out, size_t cap);
size_t tok_stream_cap(const tok *t);

#endif
