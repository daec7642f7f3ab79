/* arch: helpers shared by the architecture files (see arch.h). */
#include "model/arch.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void arch_plan_param(model_param *specs, int *n, size_t *off, int layer, bool decay, int ndim, int64_t d0,
                     int64_t d1, const char *fmt, ...) {
    if (specs) {
        model_param *p = &specs[*n];
        memset(p, 0, sizeof *p);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->name, sizeof p->name, fmt, ap);
        va_end(ap);
        p->ndim = ndim;
        p->shape[0] = d0;
        p->shape[1] = ndim > 1 ? d1 : 0;
        p->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
        p->offset = *off;
        p->decay = decay;
        p->layer = layer;
        *off += p->numel;
    }
    (*n)++;
}

size_t arch_plan_floats(const arch_plan_entry *e, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (e[i].floats + 15) & ~(size_t)15;
    return total;
}

float *arch_plan_alloc(backend *be, arch_plan_entry *e, int n) {
    float *mem = backend_alloc(be, arch_plan_floats(e, n) * sizeof(float));
    if (!mem) return NULL;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        *e[i].ptr = mem + off;
        off += (e[i].floats + 15) & ~(size_t)15;
    }
    return mem;
}

float arch_xent_loss(backend *be, float *losses, float *logits, int *targets_dev, const int *targets, int N, int V) {
    const backend_ops *op = be->ops;
    int counted = 0;
    for (int i = 0; i < N; i++) {
        SK_ASSERT(targets[i] < V);
        counted += targets[i] >= 0;
    }
    backend_upload(be, targets_dev, targets, sizeof(int) * (size_t)N);
    /* in place: logits become (softmax - onehot), backward scales them by dloss */
    op->softmax_xent(be, losses, logits, logits, targets_dev, N, V, V, 1.0f);
    /* the per-row losses come back to the host in stack-sized pieces for the mean */
    double sum = 0;
    float buf[256];
    for (int i0 = 0; i0 < N; i0 += 256) {
        int n = N - i0 < 256 ? N - i0 : 256;
        backend_download(be, buf, losses + i0, sizeof(float) * (size_t)n);
        for (int i = 0; i < n; i++) sum += buf[i];
    }
    return counted ? (float)(sum / counted) : 0.0f;
}

tensor arch_view3(float *p, int64_t d0, int64_t d1, int64_t d2) {
    int64_t shape[3] = {d0, d1, d2};
    return tensor_make(p, DT_F32, MEM_DEVICE, 3, shape);
}

void arch_check_tokens(const model *m, const int *tokens, size_t n) {
    for (size_t i = 0; i < n; i++) SK_ASSERT(tokens[i] >= 0 && tokens[i] < m->cfg.vocab_size);
}

bool arch_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}
