/* Safetensors files edited for the loaders' tests (test_io.c, test_llama_io.c): a copy of a
 * fixture's tensors with an edit applied to their entries (dropped, reshaped, added, retyped),
 * to check what a loader accepts and refuses. */
#ifndef SKEIN_TEST_ST_H
#define SKEIN_TEST_ST_H

#include <string.h>

#include "model/safetensors.h"

#define TEST_ST_MAX 64          /* entries an edited file may have */
#define TEST_ST_SCRATCH 4096    /* floats of data an edit may add */

/* An edit of entries e (*n of them; it may add up to TEST_ST_MAX - *n), with scratch
 * (TEST_ST_SCRATCH floats, static) for the data of the entries it adds. */
typedef void (*test_st_edit)(st_entry *e, int *n, float *scratch);

/* The index of the entry named name; aborts when there is none. */
static inline int test_st_find(const st_entry *e, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(e[i].name, name)) return i;
    SK_ASSERT(!"entry not found");
    return -1;
}

/* Writes to `to` the tensors of safetensors file `from` with edit applied (NULL: none). */
static inline void test_st_write_edited(const char *from, const char *to, test_st_edit edit) {
    static float scratch[TEST_ST_SCRATCH];
    st_file f;
    SK_ASSERT(st_open(from, &f) == SK_OK);
    st_entry e[TEST_ST_MAX];
    int n = f.n_tensors;
    SK_ASSERT(n < TEST_ST_MAX - 4);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = &f.tensors[i];
        e[i] = (st_entry){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
    }
    if (edit) edit(e, &n, scratch);
    SK_ASSERT(n <= TEST_ST_MAX && st_write(to, e, n, NULL, 0) == SK_OK);
    st_close(&f);
}

#endif
