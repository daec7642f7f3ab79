/* zero: data-parallel training state spread over the ranks of a comm, with the stages of ZeRO
 * (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
 * Models", 2020):
 *   0  every rank holds parameters, gradients and AdamW state; gradients are all-reduced;
 *   1  AdamW state sharded: gradients reduce-scattered, AdamW on the local shard, parameters
 *      all-gathered;
 *   2  gradients sharded too: each layer's gradients go to one of two alternating buckets
 *      whose reduce-scatter starts as soon as the layer's backward is done (the model's
 *      parameter provider hooks) and runs while the next layer's backward computes, so no
 *      rank keeps gradients of parameters it does not own;
 *   3  parameters sharded too: a layer's parameters are all-gathered into one of two layer
 *      slots; the next layer's gather starts while the current layer computes (prefetch),
 *      and the full parameter buffer does not exist after zero_init. In mixed precision each
 *      gathered group is cast into the model's bf16 copy before its products read it
 *      (model_write_compute; that copy stays whole, 2 bytes per parameter on every rank).
 *
 *   zero *z;
 *   zero_init(m, c, 2, false, &z);          // m loaded on every rank; before model_train_prepare
 *   model_train_prepare(m, mb, T);
 *   zero_begin_step(z);
 *   ... model_forward / model_backward per micro-batch (zero_idle_pass where a rank has none)
 *   zero_end_step(z, &grad_norm);           // remaining reduction + global gradient norm
 *   zero_opt_step(z, &hp, lr);              // AdamW on the shard (clipped on the device), parameters shared again
 *
 * Partition: each parameter group g (model.h: a layer, or a run of outer tensors) of count_g
 * elements is cut into chunks of c_g = ceil(count_g / world); rank r owns the group's
 * elements [r*c_g, min((r+1)*c_g, count_g)). The shard of a rank is the concatenation of its
 * chunks (padded to c_g each, the padding kept at zero), S = sum c_g ~ n_params/world
 * elements. Cutting per group, not the flat buffer as a whole, makes every layer's reduce and
 * gather one equal-chunk collective (comm.h) and keeps one layer's traffic in one call.
 *
 * Determinism: AdamW is elementwise, so the sharded update equals the full one element for
 * element given the same reduced gradient; only the order of floating-point sums across ranks
 * and micro-batches differs between world sizes and stages.
 *
 * Buffers are backend memory (device memory on a GPU backend) and the collectives run on a
 * communication stream of the backend, ordered after the compute by events; zero_init tells
 * the comm whose memory they are (comm_set_backend: NCCL moves device memory, MPI and gloo
 * stage it through pinned host memory) and zero_free takes that back. Overlap of
 * communication with compute is on unless the environment sets SKEIN_ZERO_OVERLAP=0, which
 * waits for every collective as it starts (for measuring what the overlap hides; the
 * results are the same bit for bit).
 *
 * A NULL comm is a single process (world 1): the collectives become copies.
 * Collectives called from model hooks cannot return a status: the first failure is kept and
 * returned by zero_status, zero_end_step and every later call. */
#ifndef SKEIN_ZERO_H
#define SKEIN_ZERO_H

#include "comm/comm.h"
#include "train/offload.h"
#include "train/opt.h"

/* Bytes per rank. The model states follow the paper's formulas; buffers are listed apart. */
typedef struct zero_mem {
    size_t params, grads, optimizer;   /* model states */
    size_t buckets;        /* stage 2/3: layer and outer gradient buckets, reduce receive buffer */
    size_t gathered;       /* stage 3: gathered outer groups and two layer slots */
    size_t staging;        /* stage 1 (and 2 with dynamic data): padded reduce/gather buffers */
    size_t comm_scratch;   /* the largest single collective: MPI's algorithms hold a temporary copy
                            * of up to that many bytes (world 1: none) */
    size_t activations;    /* model activations for the micro-batch, input buffers */
    size_t total;          /* the sum of the above: held during every step */
    size_t load_transient; /* stage 3: the full parameters held while sharding at start */
    size_t peak;           /* max(total, bytes held while sharding) */
    size_t host_pinned;    /* offload: pinned host memory (master, moments, staging); not in total */
} zero_mem;

/* The per-rank memory plan for `world` ranks at `stage`, before anything is allocated.
 * param_bytes 4 is fp32 training; 2 plans mixed precision (bf16 parameters and gradients,
 * fp32 master weights and moments: 12 bytes of optimizer state per parameter), as the paper
 * counts it. skein's mixed precision (model_set_precision) keeps f32 parameters and
 * gradients (param_bytes 4) and adds its bf16 copy of the parameters to params. activations come from the architecture's train_bytes for (micro_batch, T). */
void zero_plan(const model *m, int world, int stage, bool dynamic, int param_bytes, int micro_batch, int T,
               zero_mem *out);
/* Turns a plan of zero_plan into ZeRO-Offload's (zero_init's offload): the optimizer state
 * leaves the device for host_pinned (offload_pinned_bytes of the shard); in mixed precision
 * the f32 parameters leave too but for the resident tensors (model_spec_resident). */
void zero_plan_offload(const model *m, int world, zero_mem *p);
/* The paper's per-rank model-state bytes for psi parameters: out[0] parameters, out[1]
 * gradients, out[2] optimizer state. */
void zero_formula(int stage, int world, int param_bytes, double psi, double out[3]);

typedef struct zero zero;

/* Sets up the stage on model m (parameters loaded and equal on every rank, no gradients
 * yet): partitions, allocates the shard buffers, installs itself as m's parameter provider
 * (model.h); stage 2/3 with static data make m's gradients external (no full gradient
 * buffer); stage 3 copies the owned parameters out and releases m's parameter buffer.
 * offload_opt (ZeRO-Offload, --offload optimizer; stage 1 or 2, else SK_EARG): the shard's f32
 * master weights and AdamW moments live in pinned host memory and AdamW runs on the CPU
 * (offload.h), after a check of the pinned bytes against offload_host_budget (shared by the
 * ranks of c times m->tp.size: all on one host) that names both numbers; in mixed precision m
 * keeps on the device only its bf16 compute copy and the resident f32 tensors
 * (model_release_master).
 * dynamic: ranks run different numbers of micro-batches, so stage 2 keeps a full local
 * gradient until the step's reduction; stage 3 is refused. */
sk_status zero_init(model *m, comm *c, int stage, bool dynamic, bool offload_opt, zero **out);
void zero_free(zero *z);

int zero_stage(const zero *z);
/* Whether m->params holds the whole model (else zero_gather_params needs a host buffer: stage 3,
 * or offload in mixed precision). */
bool zero_full_params(const zero *z);
/* The last step's split of the offloaded optimizer (offload.h); NULL without offload. */
const offload_times *zero_offload_times(const zero *z);
/* Pinned host bytes of the offload (0 without). */
size_t zero_pinned_bytes(const zero *z);
/* The error a hook met (SK_OK when none). */
sk_status zero_status(const zero *z);
/* Starts an optimizer step: zeroes the local gradients. */
void zero_begin_step(zero *z);
/* A micro-batch with no samples on this rank (stage 2/3, static data): runs the collectives a
 * forward and backward would, contributing zero gradients. */
sk_status zero_idle_pass(zero *z);
/* Ends the step's backward: reduces what is not reduced yet (all-reduce at stage 0,
 * reduce-scatter at 1 and at 2 with dynamic data) and writes the global gradient norm. */
sk_status zero_end_step(zero *z, double *grad_norm);
/* AdamW on the owned shard, the gradients clipped on the device by the norm zero_end_step
 * summed (opt_hparams.grad_clip), then the parameters are shared again (all-gather at 1-2; at 3 the gathered copies are dropped). */
sk_status zero_opt_step(zero *z, const opt_hparams *h, float lr);
long zero_opt_steps(const zero *z);
/* Seconds this rank spent blocked waiting for collectives since zero_begin_step: with
 * overlap, the communication the computation did not hide. */
double zero_comm_wait_s(const zero *z);
/* Whether collectives overlap compute (false under SKEIN_ZERO_OVERLAP=0). */
bool zero_overlaps(const zero *z);

/* Collective: writes the full parameters (n_params floats, host memory) into full on rank 0;
 * other ranks pass NULL. */
sk_status zero_gather_params(zero *z, float *full);
/* Writes this rank's optimizer state into dir: stage 0 rank 0 "optimizer.bin" (version 1,
 * the whole model), stages 1-3 every rank "optimizer-rank<r>-of-<N>.bin" (version 2). */
sk_status zero_save_opt(zero *z, const char *dir);
/* Loads the owned part of the optimizer state from whatever files dir holds (any world size,
 * any stage); an element not covered exactly once is an error naming dir. */
sk_status zero_load_opt(zero *z, const char *dir);

/* Resident memory of this process from /proc/self/status: VmHWM (peak) or VmRSS; 0 when
 * unknown. */
size_t zero_proc_bytes(bool peak);
/* What a rank holds, measured: on a device backend (dev_free0 > 0: its free bytes before the
 * model) the device memory taken since, as the device reports free memory (cudaMemGetInfo);
 * else zero_proc_bytes(true). */
size_t zero_held_bytes(backend *be, size_t dev_free0);
/* Bytes a rank's plan may take on a device with dev_free0 bytes free before the model: 95%
 * (the rest for the libraries' workspaces and the allocator's rounding). */
static inline size_t zero_device_budget(size_t dev_free0) { return dev_free0 / 20 * 19; }

#endif
