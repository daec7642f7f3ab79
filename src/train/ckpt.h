/* ckpt: training checkpoints inside a run's --out folder.
 *
 * OUT/checkpoint-<step>/ is a complete model folder (config.json, model.safetensors,
 * tokenizer.json when the run has one) plus optimizer.bin (opt.h) and skein_state.json
 * (step, data position, RNG, run shape). It is written as OUT/.checkpoint-<step>.tmp and
 * renamed when complete, so a crash mid-write leaves the previous checkpoints as they were
 * and only complete folders are ever found. */
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
    rng rng;               /* the trainer's generator (dropout seeds) */
} ckpt_state;

/* Writes checkpoint-<step> (model, optimizer, state; tokenizer copied from tokenizer_path
 * when not NULL), then deletes the oldest complete checkpoints beyond `keep` (0 keeps all). */
sk_status ckpt_save(const char *out_dir, const model *m, const adamw *opt, const ckpt_state *s,
                    const char *tokenizer_path, int keep);
/* Finds the newest complete checkpoint in out_dir: writes its folder into path (size n) and
 * returns true, or false when there is none. */
bool ckpt_find_latest(const char *out_dir, char *path, size_t n);
sk_status ckpt_load_state(const char *ckpt_dir, ckpt_state *s);

/* Copies a small file (tokenizer.json) atomically. */
sk_status ckpt_copy_file(const char *src, const char *dst);

#endif
