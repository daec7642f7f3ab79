/* tensor: non-owning views of memory that a backend, a mapping or a caller owns.
 *
 *   float *buf = backend_alloc(be, N * C * sizeof(float));
 *   tensor x = tensor_2d(buf, DT_F32, N, C);          // (N,C) row-major, contiguous
 *   tensor q = tensor_cols(qkv, 0, C);                 // columns [0,C) of qkv(N,3C): row stride 3C
 *   tensor r = tensor_rows(x, 4, 8);                   // rows [4,12) of x
 *
 * A view is a data pointer, an element type, up to TENSOR_MAX_DIMS sizes and strides (in
 * elements, outermost first) and the kind of memory it points into. Views are passed by
 * value; building one allocates nothing and copying one copies no data. Whoever allocated
 * the memory frees it, never a view. Backend ops read the dtype and the strides they support
 * (backend_supports) and assert on anything else: a wrong view is a bug, not bad input.
 *
 * Letters in comments elsewhere follow backend.h: N rows, C channels, and so on. */
#ifndef SKEIN_TENSOR_H
#define SKEIN_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"
#include "tensor/dtype.h"

/* Which memory a view points into. Host memory is plain pageable memory (mem_alloc);
 * pinned host memory is page-locked for asynchronous copies (plain host memory on the CPU
 * backend); device memory belongs to an accelerator (host memory on the CPU backend);
 * mapped memory is a read-only file mapping (weights). */
typedef enum tensor_mem { MEM_HOST, MEM_PINNED, MEM_DEVICE, MEM_MAPPED } tensor_mem;

#define TENSOR_MAX_DIMS 4

typedef struct tensor {
    void *data;                        /* first element */
    dtype dt;
    tensor_mem mem;
    int ndim;                          /* 0..TENSOR_MAX_DIMS; 0: none (NULL data) */
    int64_t shape[TENSOR_MAX_DIMS];
    int64_t stride[TENSOR_MAX_DIMS];   /* elements between neighbours along each dimension */
} tensor;

/* The empty view (ndim 0, data NULL): "no tensor" where an op argument is optional. */
static inline tensor tensor_none(void) {
    tensor t = {NULL, DT_F32, MEM_HOST, 0, {0}, {0}};   /* every member named: C++ (.cu) includes this */
    return t;
}
static inline bool tensor_is_none(tensor t) { return t.data == NULL; }

/* A contiguous row-major view of ndim dimensions (1..TENSOR_MAX_DIMS) in memory kind mem. */
tensor tensor_make(void *data, dtype dt, tensor_mem mem, int ndim, const int64_t *shape);
/* Contiguous 1-D and 2-D views in device memory (the backend's own), the common cases. */
tensor tensor_1d(void *data, dtype dt, int64_t n);
tensor tensor_2d(void *data, dtype dt, int64_t rows, int64_t cols);
/* A 2-D view of rows × cols whose rows are ld elements apart (ld >= cols). */
tensor tensor_2d_ld(void *data, dtype dt, int64_t rows, int64_t cols, int64_t ld);

int64_t tensor_numel(tensor t);
/* Bytes from the first to one past the last element (contiguous: numel * element size). */
size_t tensor_bytes(tensor t);
/* Row-major with no gaps. */
bool tensor_is_contiguous(tensor t);
/* Rows are contiguous inside (last stride 1); rows may be apart (a 2-D view's ld). */
bool tensor_rows_contiguous(tensor t);
/* Same dtype and shape (strides may differ). */
bool tensor_same_shape(tensor a, tensor b);

/* Sub-views along the first dimension (rows [r0, r0+n)) and the last (columns [c0, c0+n)). */
tensor tensor_rows(tensor t, int64_t r0, int64_t n);
tensor tensor_cols(tensor t, int64_t c0, int64_t n);
/* Element i of dimension 0, as a view of the remaining dimensions. */
tensor tensor_index(tensor t, int64_t i);
/* The same elements under another contiguous shape (t must be contiguous). */
tensor tensor_reshape(tensor t, int ndim, const int64_t *shape);
/* A 2-D view (R,K) with contiguous rows and any row stride as the 4-D (R/d1, d1, K/d3, d3) of
 * the same elements: a (B*T, nh*HS) column block as (B, T, nh, HS). d1 divides R, d3 K. */
tensor tensor_split_2d(tensor t, int64_t d1, int64_t d3);
/* The stride between the rows of t, a row being its last `inner` dimensions, which must lie
 * contiguously inside it, while the outer dimensions step through rows evenly: a (B,T,nh,HS)
 * view of the heads of a column block of a (B*T, W) matrix, inner 2, has row stride W.
 * With inner == ndim: the element count. Asserts on any other layout. */
int64_t tensor_row_stride(tensor t, int inner);
/* The 2-D view of a's rows followed by b's where b's first element follows a's last in
 * memory (two contiguous 2-D views of one dtype, memory kind and column count): two weight
 * matrices planned one after the other as one. tensor_none() otherwise, or when either is. */
tensor tensor_join_rows(tensor a, tensor b);
/* Leading dimension of a 2-D view with contiguous rows: the row stride. */
static inline int64_t tensor_ld(tensor t) {
    SK_ASSERT(t.ndim == 2 && t.stride[1] == 1);
    return t.stride[0];
}

/* Typed data pointers; assert the dtype so a bf16 view is never read as f32. */
static inline float *tensor_f32(tensor t) {
    SK_ASSERT(t.dt == DT_F32 || t.data == NULL);
    return (float *)t.data;
}
static inline int *tensor_i32(tensor t) {
    SK_ASSERT(t.dt == DT_I32 || t.data == NULL);
    return (int *)t.data;
}

/* "f32[4,8] (stride 16,1) device" into buf; returns buf (for messages and asserts). */
const char *tensor_describe(tensor t, char *buf, size_t size);

#endif
