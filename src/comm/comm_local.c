/* comm_local: the world of one process. Collectives are copies or nothing (the sum over one
 * rank is the buffer itself); the fetch-and-add counter is a plain integer, since nobody
 * else can touch it. */
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"

typedef struct local_impl { int64_t counter; } local_impl;

static sk_status local_all_reduce(comm *c, float *buf, size_t n) { return SK_OK; }
static sk_status local_all_reduce_f64(comm *c, double *buf, size_t n) { return SK_OK; }

static sk_status local_reduce_scatter(comm *c, const float *send, float *recv, size_t chunk) {
    if (send != recv) memmove(recv, send, chunk * sizeof *recv);
    return SK_OK;
}

static sk_status local_all_gather(comm *c, const float *send, float *recv, size_t chunk) {
    if (send != recv) memmove(recv, send, chunk * sizeof *recv);
    return SK_OK;
}

static sk_status local_broadcast(comm *c, void *buf, size_t bytes, int root) {
    if (root != 0) return sk_fail(SK_EARG, "broadcast: root %d is not a rank of a world of 1", root);
    return SK_OK;
}

static sk_status local_barrier(comm *c) { return SK_OK; }

static sk_status local_fetch_add(comm *c, int64_t add, int64_t *old) {
    local_impl *l = c->impl;
    *old = l->counter;
    l->counter += add;
    return SK_OK;
}

static sk_status local_counter_set(comm *c, int64_t value) {
    ((local_impl *)c->impl)->counter = value;
    return SK_OK;
}

static void local_free(comm *c) {
    free(c->impl);
    free(c);
}

static const comm_ops local_ops = {
    local_all_reduce, local_all_reduce_f64, local_reduce_scatter, local_all_gather,
    local_broadcast, local_barrier, local_fetch_add, local_counter_set, local_free,
};

sk_status comm_local_init(double timeout_s, comm **out) {
    comm *c = calloc(1, sizeof *c);
    local_impl *l = calloc(1, sizeof *l);
    if (!c || !l) {
        free(c);
        free(l);
        return sk_fail(SK_ENOMEM, "comm: out of memory");
    }
    *c = (comm){.ops = &local_ops, .name = "local", .rank = 0, .world = 1, .local_rank = 0,
                .timeout_s = timeout_s, .impl = l};
    *out = c;
    return SK_OK;
}
