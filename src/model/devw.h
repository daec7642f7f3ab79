/* devw: an inference model's weights as one device copy -- matrices in bf16, 1-D tensors
 * (norm weights, biases) in f32 -- made once per (weights, backend) and shared.
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
 * Sharing: copies of files are kept in a process-wide list keyed by (wts, backend, plan); devw_get of
 * a pair that has one adds a reference (several engines, server replicas on one device). A
 * devw holds its own wts reference, so its key cannot be reused while it lives. The list is
 * guarded by a mutex; a devw is immutable once made. */
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
 * m->be: a new one, or one more reference to the existing one. SK_ENOMEM when device or
 * pinned memory runs out (nothing is left allocated). */
sk_status devw_get(wts *w, const model *m, const tensor *views, devw **out);
/* A copy of m's specs on m->be filled from src (random weights of a benchmark), not shared. */
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

#endif
