/* devw: an inference model's weights as one device copy -- matrices in bf16, 1-D tensors
 * (norm weights, biases) in f32 -- made once per (weights, device) and shared.
 *
 *   devw *d;
 *   devw_get(w, m, views, &d);       // uploads, or takes a reference to the copy that exists
 *   tensor q = devw_view(d, i);      // spec i of m, in device memory
 *   devw_free(d);                    // the last reference frees the device memory
 *
 * Upload: every spec's view (the file's dtype, read from the read-only mapping) is converted
 * on the host into one of DEVW_STAGES pinned staging buffers of DEVW_STAGE_BYTES and copied
 * to the device on a stream of its own; the host converts chunk k+1 while the device copies
 * chunk k (an event per buffer says when it may be refilled). The rate is logged.
 *
 * Sharing: copies of files are kept in a process-wide list keyed by (wts, the backend's name and
 * device ordinal, plan): devw_get of a key that has one adds a reference, so every engine
 * opened over the same wts on the same device shares one copy, whatever backend object (and so
 * whatever streams) each has -- server replicas on one GPU above all. A devw holds its own wts
 * reference, so its key cannot be reused while it lives.
 *
 * Lifetime: a devw allocates, uploads and frees through a backend of its own, created on the
 * key's device (backend_create_on(name, device)) and freed with the copy, never through the
 * backend of the model that asked for it. The copy outlives any one engine (a replica that
 * scales down frees its backend while the others still read the weights), and a replica's
 * backend holds per-engine state -- its default stream, cuBLAS workspace, cuDNN plans -- that
 * another replica's thread must not drive and the weights should not keep alive. A
 * reference-counted backend would have kept the first replica's backend, workspaces and all,
 * alive for the weights' sake and changed backend_free's meaning for every caller; a backend of
 * its own costs one cuBLAS workspace per device copy and touches nothing else. Its device memory
 * is the device's (one CUDA context per device and process), so any backend on that device
 * reads it. The last reference is dropped on a thread whose current device is the copy's (as
 * every engine's thread is). The list is guarded by a mutex; a devw is immutable once made.
 *
 * Across processes: a CUDA context is a process's, so the list shares within one process only.
 * Replica processes (serve/replica.c) share one copy per device through the backend's ipc_map:
 * the first child on a device makes its copy in memory exported as a file descriptor
 * (devw_ipc_use with fd -1, then devw_ipc_of) and hands it to the server, which keeps it and
 * gives it to every later child on that device; such a child maps that memory (devw_ipc_use
 * with the fd) and uploads nothing. The descriptor keeps the physical memory: the CUDA driver
 * API reference (Virtual Memory Management; the same words in CUDA 13.0's cuda.h) says of
 * cuMemRelease "The memory allocation will be freed when all outstanding
 * mappings to the memory are unmapped and when all outstanding references to the handle
 * (including it's shareable counterparts) are also released", and of
 * cuMemExportToShareableHandle "Once all shareable handles are closed and the allocation is
 * released, the allocated memory referenced will be released back to the OS". So the copy
 * outlives the child that made it while the server holds its descriptor or any child maps it
 * (backend/cuda/cuda_ipc.cu). The layout is the plan's (devw.c), the same in every process of
 * one model: the byte count travels with the descriptor and a mismatch is refused. */
#ifndef SKEIN_DEVW_H
#define SKEIN_DEVW_H

#include "model/model.h"

typedef struct devw devw;

/* Elements per staging chunk: a source is asked for at most this many at a time, from an
 * offset that is a multiple of it (a multiple of model_init_folder's blocks). */
#define DEVW_CHUNK_ELEMS ((size_t)1 << 23)

/* Writes elements [start, start + n) of spec i, in dtype dt, at dst (pinned host memory). */
typedef void (*devw_source)(void *ctx, int i, size_t start, size_t n, dtype dt, void *dst);

/* The device copy of m's specs bound to views(n_specs) of w (bind_weights' result) on
 * m->be's device: a new one, or one more reference to the one that exists for (w, m->be->name,
 * m->be->device, m's plan). Makes that device the calling thread's current one (CUDA).
 * SK_ENOMEM when device or pinned memory runs out, SK_EARG when no backend can be made on the
 * device (nothing is left allocated). */
sk_status devw_get(wts *w, const model *m, const tensor *views, devw **out);
/* A copy of m's specs on m->be's device filled from src (random weights of a benchmark), not
 * shared; its own backend as devw_get's. */
sk_status devw_make(const model *m, devw_source src, void *ctx, devw **out);
/* n elements of src (dtype st) into dst (dtype dt; f32, bf16 or f16; equal dtypes: a copy),
 * converted over threads (tensor-parallel slices of a device copy use it too: tp.c). */
void devw_convert(void *dst, dtype dt, const void *src, dtype st, size_t n);
/* Spec i's view: bf16 for 2..4-dimensional specs, f32 for 1-D, MEM_DEVICE, the spec's shape. */
tensor devw_view(const devw *d, int i);
/* Bytes of device memory the copy holds. */
size_t devw_bytes(const devw *d);
/* Drops a reference; the last one frees the device memory and the wts reference. NULL is fine. */
void devw_free(devw *d);

/* A copy's device memory as a file descriptor another process maps, and its bytes. */
typedef struct devw_ipc {
    int fd;          /* -1: none */
    size_t bytes;    /* devw_bytes of the copy */
} devw_ipc;

/* The next copy devw_get makes in this process (not one it shares: a new one) is made through
 * the backend's ipc_map: with ipc.fd < 0 in new exported memory, uploaded as usual (where the
 * backend cannot export, the reason is logged and the copy is the process's own); with
 * ipc.fd >= 0 by mapping the memory of another process's copy of the same weights, nothing
 * uploaded (logged as "imported"), refused with SK_ECONFIG when ipc.bytes differs from the
 * plan's bytes and with ipc_map's status when it cannot be mapped. ipc.fd stays the caller's. */
void devw_ipc_use(devw_ipc ipc);
/* The descriptor of d's exported memory (d's: valid while d lives) and d's bytes; fd -1 when d
 * was not exported (a plain copy, or one mapped from another process). */
devw_ipc devw_ipc_of(const devw *d);

#endif
