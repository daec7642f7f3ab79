/* backend: creation by name and the checked wrappers callers use for memory and time
 * (see backend.h). */
#include "backend/backend.h"

#include <string.h>

#ifdef SKEIN_HAVE_CUDA
#include "backend/cuda/cuda.h"
#endif

backend *backend_create(const char *name) { return backend_create_on(name, 0); }

backend *backend_create_on(const char *name, int index) {
    if (!strcmp(name, "cpu")) return backend_cpu_create();
    if (!strcmp(name, "cuda")) {
#ifdef SKEIN_HAVE_CUDA
        return backend_cuda_create_on(index);
#else
        sk_fail(SK_EARG, "--device cuda: this build has no CUDA backend (built without nvcc, or with NO_CUDA=1); "
                         "use --device cpu");
        return NULL;
#endif
    }
    sk_fail(SK_EARG, "unknown device '%s' (expected cpu or cuda)", name);
    return NULL;
}

int backend_device_count(const char *name) {
    if (!strcmp(name, "cpu")) return 1;
#ifdef SKEIN_HAVE_CUDA
    if (!strcmp(name, "cuda")) return backend_cuda_device_count();
#endif
    return 0;
}

void backend_free(backend *be) {
    if (!be) return;
    if (be->ops->destroy) be->ops->destroy(be);
    else mem_free(be->impl);
    mem_free(be);
}

void *backend_alloc(backend *be, size_t bytes) { return be->ops->alloc(be, bytes, MEM_DEVICE); }

void backend_mem_free(backend *be, void *p) {
    if (p) be->ops->free(be, p, MEM_DEVICE);
}

void *backend_alloc_pinned(backend *be, size_t bytes) { return be->ops->alloc(be, bytes, MEM_PINNED); }

void backend_pinned_free(backend *be, void *p) {
    if (p) be->ops->free(be, p, MEM_PINNED);
}

void backend_upload(backend *be, void *dst, const void *host_src, size_t bytes) {
    if (!bytes) return;
    be->ops->copy(be, dst, host_src, bytes, COPY_HOST_TO_DEVICE, NULL);
    be->ops->stream_synchronize(be, NULL);   /* host_src may be reused at once */
}

void backend_download(backend *be, void *host_dst, const void *src, size_t bytes) {
    if (!bytes) return;
    be->ops->copy(be, host_dst, src, bytes, COPY_DEVICE_TO_HOST, NULL);
    be->ops->stream_synchronize(be, NULL);
}

void backend_zero(backend *be, void *p, size_t bytes) {
    if (bytes) be->ops->fill(be, p, 0, bytes, NULL);
}

void backend_synchronize(backend *be) { be->ops->stream_synchronize(be, NULL); }

bool backend_supports(backend *be, backend_op op, dtype dt) {
    if (be->ops->supports) return be->ops->supports(be, op, dt);
    return dt == DT_F32;
}

void backend_linear_forward(backend *be, backend_stream *s, tensor out, tensor pre, tensor inp, tensor w,
                            bool trans_w, tensor bias, backend_act act) {
    if (be->ops->linear_forward) be->ops->linear_forward(be, s, out, pre, inp, w, trans_w, bias, act);
    else backend_linear_unfused(be->ops, be, s, out, pre, inp, w, trans_w, bias, act);
}

void backend_kv_store(backend *be, backend_stream *s, tensor q, tensor k, tensor v, tensor cos, tensor sin,
                      tensor k_cache, tensor v_cache, tensor idx) {
    const backend_ops *op = be->ops;
    if (op->kv_store) {
        op->kv_store(be, s, q, k, v, cos, sin, k_cache, v_cache, idx);
        return;
    }
    if (!tensor_is_none(cos)) {   /* (1, N, heads, HS) views: row r at pos0 + r = r */
        const int64_t N = q.shape[0], HS = 2 * cos.shape[1];
        op->rope_forward(be, s, tensor_split_2d(q, N, HS), cos, sin, 0);
        op->rope_forward(be, s, tensor_split_2d(k, N, HS), cos, sin, 0);
    }
    op->set_rows(be, s, k_cache, k, idx);
    op->set_rows(be, s, v_cache, v, idx);
}

void backend_linear_unfused(const backend_ops *ops, backend *be, backend_stream *s, tensor out, tensor pre,
                            tensor inp, tensor w, bool trans_w, tensor bias, backend_act act) {
    SK_ASSERT(act == BACKEND_ACT_GELU || tensor_is_none(pre));
    const tensor y = tensor_is_none(pre) ? out : pre;   /* where the affine part lands */
    ops->matmul(be, s, y, inp, false, w, trans_w, 1.0f, 0.0f);
    if (!tensor_is_none(bias)) ops->bias_add(be, s, y, bias);
    if (act == BACKEND_ACT_GELU) ops->gelu_forward(be, s, out, y);
}

bool backend_supports_paged(backend *be) {
    if (be->ops->set_rows && be->ops->paged_attention) return true;
    sk_fail(SK_EARG, "the %s backend has no paged attention (set_rows, paged_attention): the engine cannot run on it",
            be->name);
    return false;
}

const char *backend_attention_impl(backend *be, bool backward) {
#ifdef SKEIN_HAVE_CUDA
    if (!strcmp(be->name, "cuda")) {
        const char *ran = backend_cuda_attention_impl(be, backward);
        return ran ? ran : "nothing";
    }
#endif
    (void)backward;
    return be->name;
}

sk_status backend_mem_info(backend *be, size_t *free_bytes, size_t *total_bytes) {
    return be->ops->mem_info(be, free_bytes, total_bytes);
}
