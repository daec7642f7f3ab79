/* data: token shards on disk, preparation from text, and the training loader.
 *
 *   data_prepare(tok, inputs, n, "data/", 0.05);        // text/JSONL -> shards + dataset.json
 *   data_loader *dl;
 *   data_loader_open("data/", "train", T, seed, &dl);
 *   data_loader_next(dl, B, inputs, targets);            // (B, T) ints each; targets = next token
 *   data_loader_free(dl);
 *
 * B batch (samples), T time (tokens per sample), V vocabulary size.
 *
 * Shard file (little-endian): a header of 256 int32 (1024 bytes, as llm.c) — [0] magic
 * 20251127, [1] version 1, [2] token width in bytes (2 = uint16 when V <= 65536, else 4 =
 * uint32), [3] V (0 when unknown), [4..5] token count as int64, the rest 0 — then the tokens.
 * Readers check magic, version, width, V against width, and count against the file size.
 * The loader also reads llm.c's .bin files (int32 header[256]: magic 20240520, version 1,
 * [2] count, then uint16 tokens).
 *
 * A prepared dataset is a folder: train_NNNNNN.bin and val_NNNNNN.bin shards of at most
 * DATA_SHARD_TOKENS tokens, plus dataset.json (written last; it lists the shards, the
 * vocabulary size, the end-of-text id and the counts of each split) and a copy of the
 * tokenizer (tokenizer.json). Every document is
 * preceded by the end-of-text token (as GPT-2's and llm.c's data), so a split's stream reads
 * EOT doc EOT doc ...
 *
 * Samples: a split is read as one token stream of N tokens; sample k of length T is the
 * window tokens[k*T .. k*T+T] (T+1 tokens: inputs and targets shifted by one), and there are
 * floor((N-1)/T) samples. Each epoch visits every sample once, in an order shuffled by
 * (seed, epoch); the loader's position (epoch, index) is saved in checkpoints for exact
 * resume, and any (epoch, index) can be read directly (workers that pull sample indices). */
#ifndef SKEIN_DATA_H
#define SKEIN_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"
#include "base/file.h"
#include "tokenizer/tok.h"

#define DATA_MAGIC 20251127
#define DATA_VERSION 1
#define DATA_LLMC_MAGIC 20240520
#define DATA_HEADER_INTS 256
#define DATA_HEADER_BYTES (DATA_HEADER_INTS * 4)
#define DATA_SHARD_TOKENS 100000000   /* default cap on tokens per prepared shard */

/* ---- preparation ---------------------------------------------------------------------- */

/* Tokenizes text files (or JSONL with a "text" field, by extension .jsonl) into out_dir with
 * the tokenizer t (which must have an end-of-text token). A .txt (any non-.jsonl) file is one
 * document; a .jsonl file holds one document per non-blank line. Documents are numbered in
 * input order; document i goes to val when floor((i+1)*f) > floor(i*f) for f = val_fraction
 * (0 <= f < 1), and when that selects none but f > 0 and there are >= 2 documents, the last
 * one goes to val. Prints a progress line on stderr for big inputs or a terminal. */
sk_status data_prepare(const tok *t, const char *const *inputs, int n_inputs, const char *out_dir,
                       double val_fraction);

/* Encoder used by data_prepare_encoded: *ids is new memory owned by the caller (mem_free).
 * It is called from several threads at once unless cfg.threads == 1. */
typedef sk_status (*data_encode_fn)(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n);

typedef struct data_prepare_cfg {
    data_encode_fn encode;
    void *ctx;              /* passed to encode */
    int eot_id;             /* end-of-text id, in [0, vocab_size) */
    int vocab_size;
    double val_fraction;    /* in [0, 1) */
    size_t shard_tokens;    /* cap per shard; 0 = DATA_SHARD_TOKENS */
    int threads;            /* 0 = OpenMP's default, 1 = serial */
    bool quiet;             /* no progress line */
} data_prepare_cfg;

/* data_prepare with the tokenizer replaced by cfg (what data_prepare calls; tests give it a
 * byte-level encoder). Output is identical whatever the number of threads. */
sk_status data_prepare_encoded(const data_prepare_cfg *cfg, const char *const *inputs, int n_inputs,
                               const char *out_dir);

/* ---- shards --------------------------------------------------------------------------- */

/* Writes one shard file atomically (tmp + rename); the token width follows vocab_size.
 * Errors: vocab_size <= 0, or a token outside [0, vocab_size) (the message names its index). */
sk_status data_shard_write(const char *path, const int32_t *tokens, size_t n, int vocab_size);
/* The same with the width forced (2 or 4; 0 = follow vocab_size): a vocabulary that does not
 * fit the width is an error. */
sk_status data_shard_write_width(const char *path, const int32_t *tokens, size_t n, int vocab_size,
                                 int width);

/* A shard mapped read-only: a skein shard or an llm.c .bin. */
typedef struct data_shard {
    file_map map;
    const void *tokens;     /* points into map after the header */
    size_t n;               /* token count */
    int width;              /* 2 or 4 bytes per token */
    int vocab_size;         /* from the header; 0 when unknown (llm.c files) */
} data_shard;

/* Maps and validates the file at path; errors name the path and the problem ("wrong magic
 * number", "unsupported version", "truncated: header says N tokens, file holds M"). */
sk_status data_shard_open(const char *path, data_shard *s);
void data_shard_close(data_shard *s);
static inline int data_shard_token(const data_shard *s, size_t i) {
    return s->width == 2 ? (int)((const uint16_t *)s->tokens)[i] : (int)((const uint32_t *)s->tokens)[i];
}

/* ---- loader --------------------------------------------------------------------------- */

typedef struct data_loader data_loader;

/* Opens a split ("train" or "val") of a prepared folder, or a single shard / llm.c file
 * given by path (split ignored), for windows of T tokens. A folder with dataset.json reads
 * the shards it lists; a folder without one (llm.c's) reads every *.bin whose name holds the
 * split as a word ("train_000001.bin", "shakespeare_val.bin"), in name order.
 * Errors: no shards for the split; fewer than T+1 tokens; a shard that does not validate. */
sk_status data_loader_open(const char *path, const char *split, int T, uint64_t seed, data_loader **out);
void data_loader_free(data_loader *dl);
size_t data_loader_num_samples(const data_loader *dl);
size_t data_loader_num_tokens(const data_loader *dl);
int data_loader_vocab_size(const data_loader *dl);   /* 0 when unknown */
/* Copies sample `index` (< num_samples) of epoch `epoch`'s order into inputs(T) and
 * targets(T). Does not move the cursor. */
void data_loader_sample(data_loader *dl, uint64_t epoch, size_t index, int *inputs, int *targets);
/* The start offset (in tokens) of sample `index` of epoch `epoch`: k*T for its k. */
size_t data_loader_sample_offset(data_loader *dl, uint64_t epoch, size_t index);
/* Fills B samples at the cursor into inputs(B, T), targets(B, T) and advances the cursor
 * (wrapping to the next epoch). */
void data_loader_next(data_loader *dl, int B, int *inputs, int *targets);
void data_loader_get_pos(const data_loader *dl, uint64_t *epoch, size_t *index);
/* Moves the cursor; an index beyond the samples (a checkpoint from another dataset) is an error. */
sk_status data_loader_set_pos(data_loader *dl, uint64_t epoch, size_t index);

#endif
