/* data: token shards on disk, preparation from text, and the training loader.
 *
 * Shard file (little-endian): a 256-byte header of int32 — [0] magic 20251127, [1] version
 * 1, [2] token width in bytes (2 = uint16 when the vocabulary fits, else 4 = uint32),
 * [3] unused (0), [4..5] token count as int64 — then the tokens. The loader also reads
 * llm.c's .bin files (int32 header[256]: magic 20240520, version 1, count, uint16 tokens).
 *
 * A prepared dataset is a folder: train_NNNNNN.bin and val_NNNNNN.bin shards plus
 * dataset.json (tokenizer vocabulary size, counts).
 *
 * Samples: a split is read as one token stream; sample k of length T is the window
 * tokens[k*T .. k*T+T] (T+1 tokens: inputs and shifted targets). Each epoch visits every
 * sample once, in an order shuffled by (seed, epoch); the loader's position (epoch, index)
 * is saved in checkpoints for exact resume. */
#ifndef SKEIN_DATA_H
#define SKEIN_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "base/base.h"
#include "tokenizer/tok.h"

#define DATA_MAGIC 20251127
#define DATA_VERSION 1
#define DATA_LLMC_MAGIC 20240520

/* Tokenizes text files (or JSONL with a "text" field, by extension .jsonl) into out_dir.
 * Documents are separated by the end-of-text token; a val_fraction of documents (at least
 * one when > 0) goes to the validation split. Prints a progress line on big inputs. */
sk_status data_prepare(const tok *t, const char *const *inputs, int n_inputs, const char *out_dir,
                       double val_fraction);

/* Writes one shard file atomically; the token width follows vocab_size. */
sk_status data_shard_write(const char *path, const int32_t *tokens, size_t n, int vocab_size);

typedef struct data_loader data_loader;

/* Opens a split ("train" or "val") of a prepared folder, or a single shard / llm.c file
 * given by path (split ignored), for windows of T tokens. */
sk_status data_loader_open(const char *path, const char *split, int T, uint64_t seed, data_loader **out);
void data_loader_free(data_loader *dl);
size_t data_loader_num_samples(const data_loader *dl);
size_t data_loader_num_tokens(const data_loader *dl);
/* Copies sample `index` of the current epoch's order into inputs(T) and targets(T). */
void data_loader_sample(data_loader *dl, uint64_t epoch, size_t index, int *inputs, int *targets);
/* Fills B samples at the cursor and advances it (wrapping to the next epoch). */
void data_loader_next(data_loader *dl, int B, int *inputs, int *targets);
void data_loader_get_pos(const data_loader *dl, uint64_t *epoch, size_t *index);
void data_loader_set_pos(data_loader *dl, uint64_t epoch, size_t index);

#endif
