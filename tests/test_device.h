/* The backend the model and backend tests run on, and their only ways into its memory.
 *
 * SKEIN_TEST_DEVICE names the backend ("cpu" when unset; "cuda" once built), so the same
 * tests check every backend. Tests never dereference backend memory: they upload inputs and
 * download what they check (test_download), exactly as they would on a GPU. */
#ifndef SKEIN_TEST_DEVICE_H
#define SKEIN_TEST_DEVICE_H

#include <stdio.h>
#include <stdlib.h>

#include "backend/backend.h"

/* The backend of SKEIN_TEST_DEVICE, created on first use; exits 2 when it cannot be. */
static inline backend *test_device(void) {
    static backend *be;
    if (!be) {
        const char *name = getenv("SKEIN_TEST_DEVICE");
        be = backend_create(name && *name ? name : "cpu");
        if (!be) {
            fprintf(stderr, "SKEIN_TEST_DEVICE: %s\n", sk_errmsg());
            exit(2);
        }
    }
    return be;
}

/* A host copy (malloc'd; the caller frees it) of the contiguous view t of backend memory. */
static inline void *test_download(backend *be, tensor t) {
    size_t bytes = tensor_bytes(t);
    SK_ASSERT(tensor_is_contiguous(t));
    void *host = malloc(bytes ? bytes : 1);
    SK_ASSERT(host);
    backend_download(be, host, t.data, bytes);
    return host;
}

/* A contiguous f32 host copy (malloc'd; the caller frees it) of the 2-D view t of backend
 * memory whose rows may be apart (a row stride) and whose elements are f32 or bf16. */
static inline float *test_download_mat(backend *be, tensor t) {
    SK_ASSERT(t.ndim == 2 && t.stride[1] == 1 && (t.dt == DT_F32 || t.dt == DT_BF16));
    const size_t rows = (size_t)t.shape[0], cols = (size_t)t.shape[1], ld = (size_t)t.stride[0], es = dtype_size(t.dt);
    char *raw = malloc(tensor_bytes(t) + 1);
    float *out = malloc(sizeof(float) * rows * cols + 1);
    SK_ASSERT(raw && out);
    backend_download(be, raw, t.data, tensor_bytes(t));
    for (size_t r = 0; r < rows; r++) dtype_to_f32(out + r * cols, raw + r * ld * es, t.dt, cols);
    free(raw);
    return out;
}

/* The n floats of backend memory at p, as a host copy (the caller frees it). */
static inline float *test_download_f32(backend *be, const float *p, size_t n) {
    return test_download(be, tensor_1d((float *)p, DT_F32, (int64_t)n));
}

#endif
