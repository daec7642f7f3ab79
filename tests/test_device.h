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

/* The n floats of backend memory at p, as a host copy (the caller frees it). */
static inline float *test_download_f32(backend *be, const float *p, size_t n) {
    return test_download(be, tensor_1d((float *)p, DT_F32, (int64_t)n));
}

#endif
