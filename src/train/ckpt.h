/* ckpt: training checkpoints inside a run's --out folder.
 *
 * OUT/checkpoint-<step>/ is a complete model folder (config.json, model.safetensors,
 * tokenizer.json when the run has one) plus optimizer.bin (opt.h) and skein_state.json
 * (step, data position, RNG, run shape). It is written as OUT/.checkpoint-<step>.tmp and
 * renamed when complete, so a crash mid-write leaves the previous checkpoints as they were
 * and only complete folders are ever found.
 *
 * Several processes: rank 0 calls ckpt_begin (a fresh temporary folder), every rank writes
 * its optimizer shard into ckpt_tmp_path (zero.h), rank 0 writes the consolidated model,
 * then, once every rank's write is known to have succeeded, ckpt_commit (state, rename,
 * pruning). ckpt_save is the single-process composition. */
#ifndef SKEIN_CKPT_H
#define SKEIN_CKPT_H

#include "base/rng.h"
#include "train/opt.h"

typedef struct ckpt_state {
    long step;             /* optimizer steps completed */
    long total_steps;
    uint64_t epoch;        /* data position: epoch and samples consumed in its order */
    uint64_t sample_index;
    uint64_t seed;
    long batch, seq;
    int world_size, zero;
    bool dynamic;          /* --data-dist dynamic */
    rng rng;               /* the trainer's generator (dropout seeds) */
} ckpt_state;

/* Writes checkpoint-<step> (model, optimizer, state; tokenizer copied from tokenizer_path
 * when not NULL), then deletes the oldest complete checkpoints beyond `keep` (0 keeps all). */
sk_status ckpt_save(const char *out_dir, const model *m, const adamw *opt, const ckpt_state *s,
                    const char *tokenizer_path, int keep);
/* The temporary folder of checkpoint `step` (path, size n). */
char *ckpt_tmp_path(const char *out_dir, long step, char *path, size_t n);
/* Rank 0: creates an empty temporary folder for checkpoint `step`. */
sk_status ckpt_begin(const char *out_dir, long step);
/* Rank 0: writes the model folder files (model, tokenizer when not NULL) into dir; the
 * parameters from host_params (n_params floats of host memory) when not NULL, else m's. */
sk_status ckpt_write_model(const char *dir, const model *m, const float *host_params, const char *tokenizer_path);
/* Rank 0: writes skein_state.json, renames the temporary folder to checkpoint-<s->step> and
 * prunes beyond `keep`. */
sk_status ckpt_commit(const char *out_dir, const ckpt_state *s, int keep);

/* Finds the newest complete checkpoint in out_dir: writes its folder into path (size n) and
 * returns true, or false when there is none. */
bool ckpt_find_latest(const char *out_dir, char *path, size_t n);
sk_status ckpt_load_state(const char *ckpt_dir, ckpt_state *s);

/* Copies a small file (tokenizer.json) atomically. */
sk_status ckpt_copy_file(const char *src, const char *dst);

#endif
