/* tensor: views (see tensor.h). Pure arithmetic on shapes and strides; nothing allocates. */
#include "tensor/tensor.h"

#include <stdio.h>

tensor tensor_make(void *data, dtype dt, tensor_mem mem, int ndim, const int64_t *shape) {
    SK_ASSERT(ndim >= 1 && ndim <= TENSOR_MAX_DIMS);
    tensor t = {.data = data, .dt = dt, .mem = mem, .ndim = ndim};
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        SK_ASSERT(shape[d] >= 0);
        t.shape[d] = shape[d];
        t.stride[d] = s;
        s *= shape[d];
    }
    return t;
}

tensor tensor_1d(void *data, dtype dt, int64_t n) {
    return tensor_make(data, dt, MEM_DEVICE, 1, &n);
}

tensor tensor_2d(void *data, dtype dt, int64_t rows, int64_t cols) {
    int64_t shape[2] = {rows, cols};
    return tensor_make(data, dt, MEM_DEVICE, 2, shape);
}

tensor tensor_2d_ld(void *data, dtype dt, int64_t rows, int64_t cols, int64_t ld) {
    SK_ASSERT(ld >= cols);
    tensor t = tensor_2d(data, dt, rows, cols);
    t.stride[0] = ld;
    return t;
}

int64_t tensor_numel(tensor t) {
    if (t.ndim == 0) return 0;
    int64_t n = 1;
    for (int d = 0; d < t.ndim; d++) n *= t.shape[d];
    return n;
}

size_t tensor_bytes(tensor t) {
    if (tensor_numel(t) == 0) return 0;
    int64_t last = 0;
    for (int d = 0; d < t.ndim; d++) last += (t.shape[d] - 1) * t.stride[d];
    return (size_t)(last + 1) * dtype_size(t.dt);
}

bool tensor_is_contiguous(tensor t) {
    int64_t s = 1;
    for (int d = t.ndim - 1; d >= 0; d--) {
        if (t.shape[d] != 1 && t.stride[d] != s) return false;
        s *= t.shape[d];
    }
    return true;
}

bool tensor_rows_contiguous(tensor t) { return t.ndim >= 1 && (t.stride[t.ndim - 1] == 1 || t.shape[t.ndim - 1] == 1); }

bool tensor_same_shape(tensor a, tensor b) {
    if (a.dt != b.dt || a.ndim != b.ndim) return false;
    for (int d = 0; d < a.ndim; d++)
        if (a.shape[d] != b.shape[d]) return false;
    return true;
}

/* The view moved by `elements` elements. */
static tensor tensor_offset(tensor t, int64_t elements) {
    t.data = (char *)t.data + elements * (int64_t)dtype_size(t.dt);
    return t;
}

tensor tensor_rows(tensor t, int64_t r0, int64_t n) {
    SK_ASSERT(t.ndim >= 1 && r0 >= 0 && n >= 0 && r0 + n <= t.shape[0]);
    t = tensor_offset(t, r0 * t.stride[0]);
    t.shape[0] = n;
    return t;
}

tensor tensor_cols(tensor t, int64_t c0, int64_t n) {
    SK_ASSERT(t.ndim >= 1);
    int d = t.ndim - 1;
    SK_ASSERT(c0 >= 0 && n >= 0 && c0 + n <= t.shape[d]);
    t = tensor_offset(t, c0 * t.stride[d]);
    t.shape[d] = n;
    return t;
}

tensor tensor_index(tensor t, int64_t i) {
    SK_ASSERT(t.ndim >= 2 && i >= 0 && i < t.shape[0]);
    t = tensor_offset(t, i * t.stride[0]);
    for (int d = 1; d < t.ndim; d++) {
        t.shape[d - 1] = t.shape[d];
        t.stride[d - 1] = t.stride[d];
    }
    t.ndim--;
    t.shape[t.ndim] = t.stride[t.ndim] = 0;
    return t;
}

tensor tensor_reshape(tensor t, int ndim, const int64_t *shape) {
    SK_ASSERT(tensor_is_contiguous(t));
    tensor r = tensor_make(t.data, t.dt, t.mem, ndim, shape);
    SK_ASSERT(tensor_numel(r) == tensor_numel(t));
    return r;
}

tensor tensor_split_2d(tensor t, int64_t d1, int64_t d3) {
    SK_ASSERT(t.ndim == 2 && t.stride[1] == 1 && d1 > 0 && d3 > 0 && t.shape[0] % d1 == 0 && t.shape[1] % d3 == 0);
    const int64_t shape[4] = {t.shape[0] / d1, d1, t.shape[1] / d3, d3};
    tensor r = tensor_make(t.data, t.dt, t.mem, 4, shape);
    r.stride[1] = t.stride[0];
    r.stride[0] = d1 * t.stride[0];
    return r;
}

int64_t tensor_row_stride(tensor t, int inner) {
    SK_ASSERT(inner >= 1 && inner <= t.ndim);
    int64_t len = 1;
    for (int d = t.ndim - 1; d >= t.ndim - inner; d--) {
        SK_ASSERT(t.shape[d] == 1 || t.stride[d] == len);
        len *= t.shape[d];
    }
    if (inner == t.ndim) return len;
    const int o = t.ndim - inner - 1;   /* the innermost outer dimension: its stride is the rows' */
    for (int d = 0; d < o; d++) SK_ASSERT(t.shape[d] == 1 || t.stride[d] == t.shape[d + 1] * t.stride[d + 1]);
    SK_ASSERT(t.stride[o] >= len);
    return t.stride[o];
}

tensor tensor_join_rows(tensor a, tensor b) {
    if (tensor_is_none(a) || tensor_is_none(b) || a.ndim != 2 || b.ndim != 2 || a.dt != b.dt || a.mem != b.mem ||
        a.shape[1] != b.shape[1] || !tensor_is_contiguous(a) || !tensor_is_contiguous(b) ||
        (char *)a.data + tensor_bytes(a) != (char *)b.data)
        return tensor_none();
    tensor j = tensor_2d(a.data, a.dt, a.shape[0] + b.shape[0], a.shape[1]);
    j.mem = a.mem;
    return j;
}

const char *tensor_describe(tensor t, char *buf, size_t size) {
    static const char *const mem_names[] = {"host", "pinned", "device", "mapped"};
    int k = snprintf(buf, size, "%s[", t.ndim ? dtype_name(t.dt) : "none");
    for (int d = 0; d < t.ndim && k > 0 && (size_t)k < size; d++)
        k += snprintf(buf + k, size - (size_t)k, "%s%lld", d ? "," : "", (long long)t.shape[d]);
    if (k > 0 && (size_t)k < size) k += snprintf(buf + k, size - (size_t)k, "] (stride ");
    for (int d = 0; d < t.ndim && k > 0 && (size_t)k < size; d++)
        k += snprintf(buf + k, size - (size_t)k, "%s%lld", d ? "," : "", (long long)t.stride[d]);
    if (k > 0 && (size_t)k < size) snprintf(buf + k, size - (size_t)k, ") %s", mem_names[t.mem]);
    return buf;
}
