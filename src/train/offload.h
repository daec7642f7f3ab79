/* offload: ZeRO-Offload's host side (Ren et al., "ZeRO-Offload: Democratizing Billion-Scale
 * Model Training", 2021): the f32 master weights and both AdamW moments of a rank's shard live
 * in pinned host memory and are updated by the CPU cores, while the gradients come down and
 * the new parameters go up on streams of their own.
 *
 *   offload *o;
 *   offload_init(be, S, spans, n_spans, &o);   // zeroed master and moments
 *   ... the owner fills offload_master(o), then offload_set_copies(o, downs, n, ups, n)
 *   offload_step(o, &hp, &norm_sq, &times);     // per step, the gradients complete on the device
 *   offload_free(o);
 *
 * The shard is S elements at shard positions 0..S-1 (zero.h's shard layout). A step walks it
 * in chunks: chunk k+1's gradients are copied down (the down stream, into one of two pinned
 * slots) while the CPU updates chunk k, and chunk k's new values are copied up (the up
 * stream) while the CPU updates chunk k+1. The update is the CPU backend's AdamW kernel run on
 * host pointers: the same formula, and on the CPU the same bits, as backend_adamw without
 * offload, and it writes the bf16 copy of the new values into a pinned slot in the same pass.
 * Each upload takes its values from that slot (bf16: the compute copy of the products) or
 * from the master itself (f32: resident tensors, or f32 training's parameters).
 *
 * Host memory: 12 bytes per shard element (master, m, v) plus 2 slots of OFFLOAD_CHUNK
 * elements of f32 gradient and bf16 parameter staging (offload_pinned_bytes), checked
 * against offload_host_budget before anything is allocated. On the CPU backend every copy is
 * a memcpy and the streams are synchronous: the same code path, no overlap. */
#ifndef SKEIN_TRAIN_OFFLOAD_H
#define SKEIN_TRAIN_OFFLOAD_H

#include "backend/backend.h"

/* Elements per chunk at most: 2 slots of 16 Mi elements hold 192 MiB of staging. */
enum { OFFLOAD_CHUNK = 1 << 24 };

/* One contiguous run of shard positions [pos, pos + count) and where it lives on the device
 * (dev: element pos, of dtype dt: f32 gradients to download; bf16 or f32 values to upload). */
typedef struct offload_copy {
    size_t pos, count;
    void *dev;
    dtype dt;
} offload_copy;

/* Where a step's time went (host clock, ms), and what it moved. */
typedef struct offload_times {
    double down_wait_ms;   /* the CPU waiting for gradients to arrive */
    double adamw_ms;       /* the CPU updating */
    double up_wait_ms;     /* the CPU waiting for a staging slot's upload before reusing it */
    double tail_ms;        /* waiting for the last uploads at the end */
    double down_bytes, up_bytes;
} offload_times;

typedef struct offload offload;

/* The chunk a shard of S elements is walked in: S/16 rounded up to a whole AdamW span, at least
 * one span, at most OFFLOAD_CHUNK (several chunks even for small models, so the pipeline runs). */
size_t offload_chunk(size_t S);
/* Pinned bytes offload_init takes for a shard of S elements. */
size_t offload_pinned_bytes(size_t S);
/* Host memory a process may take: SKEIN_TEST_HOST_LIMIT (bytes, tests), else the cgroup's
 * limit (v2 memory.max, v1 memory.limit_in_bytes) when there is one, else MemAvailable (never
 * MemTotal, which grows with use on some machines). *what names the source. */
size_t offload_host_budget(const char **what);

/* Sets up the host side of a shard of S elements on be (the device backend): pinned master
 * and moments (zeroed), the staging slots, two streams. spans (host memory, n_spans, copied)
 * give what the update touches, in shard positions (param = grad = state), any length.
 * NULL + a message on failure. */
sk_status offload_init(backend *be, size_t S, const backend_adamw_span *spans, size_t n_spans, offload **out);
void offload_free(offload *o);
/* Sets where a step finds the shard's gradients on the device (downs: f32) and where it puts
 * the new values (ups); both copied, each list sorted by pos without overlaps. */
sk_status offload_set_copies(offload *o, const offload_copy *downs, size_t n_down, const offload_copy *ups,
                             size_t n_up);
/* The pinned master weights and moments (S elements each): the owner fills the master at start
 * and reads or writes all three for checkpoints. */
float *offload_master(offload *o);
float *offload_m(offload *o);
float *offload_v(offload *o);
/* The CPU backend that runs the update: reads and writes host memory (opt_state_read and
 * opt_state_save take it to reach the moments). */
backend *offload_host(offload *o);

/* One AdamW step over the shard with hp (hp->t the step), the gradients clipped by
 * sqrt(*norm_sq) (host memory; NULL: no clipping) as backend_adamw does. Waits for the work
 * issued so far on be's default stream before it reads gradients; when it returns, the uploads
 * are done. times (may be NULL) receives the split. */
void offload_step(offload *o, const backend_adamw_hp *hp, const double *norm_sq, offload_times *times);

#endif
