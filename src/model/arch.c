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

float arch_xent_loss(backend *be, tensor losses, tensor loss_sum, tensor logits, tensor targets_dev,
                     const int *targets) {
    const backend_ops *op = be->ops;
    const int64_t N = logits.shape[0], V = logits.shape[1];
    int counted = 0;
    for (int64_t i = 0; i < N; i++) {
        SK_ASSERT(targets[i] < V);
        counted += targets[i] >= 0;
    }
    backend_upload(be, targets_dev.data, targets, tensor_bytes(targets_dev));
    /* in place: logits become (softmax - onehot), backward scales them by dloss */
    op->softmax_xent(be, NULL, losses, logits, logits, targets_dev, 1.0f);
    /* the sum in row order, in double, on the device: one scalar comes back */
    backend_zero(be, loss_sum.data, sizeof(double));
    op->sum_f64(be, NULL, loss_sum, losses);
    double sum;
    backend_download(be, &sum, loss_sum.data, sizeof sum);
    return counted ? (float)(sum / counted) : 0.0f;
}

void arch_check_tokens(const model *m, const int *tokens, size_t n) {
    for (size_t i = 0; i < n; i++) SK_ASSERT(tokens[i] >= 0 && tokens[i] < m->cfg.vocab_size);
}

bool arch_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}
