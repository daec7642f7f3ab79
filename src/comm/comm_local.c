/* comm_local: the world of one process. Every call completes inside start: a sum over one
 * rank is the buffer itself, a scatter or gather a copy; the fetch-and-add counter is a plain
 * integer, since nobody else can touch it. Copies are memmove: host buffers (a caller with
 * device memory and one process copies through its backend instead). */
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"

typedef struct local_impl { int64_t counter; } local_impl;

static sk_status local_start(comm *c, comm_req *r) {
    local_impl *l = c->impl;
    switch (r->kind) {
    case COMM_REDUCE_SCATTER:
    case COMM_ALL_GATHER:
        if (r->send != r->recv) memmove(r->recv, r->send, r->n * comm_elem_size(r->elem));
        break;
    case COMM_FETCH_ADD:
        *r->old = l->counter;
        l->counter += r->value;
        break;
    case COMM_COUNTER_SET:
        l->counter = r->value;
        break;
    case COMM_ALL_REDUCE:
    case COMM_BROADCAST:
    case COMM_BARRIER:
        break;
    }
    return SK_OK;
}

static sk_status local_wait(comm *c, comm_req *r) { return SK_OK; }

static sk_status local_test(comm *c, comm_req *r, bool *done) {
    *done = true;
    return SK_OK;
}

static void local_free(comm *c) {
    free(c->impl);
    free(c);
}

static sk_status local_split(comm *c, int color, int key, comm **out) { return comm_local_init(c->timeout_s, out); }

static const comm_ops local_ops = {local_start, local_wait, local_test, local_free, NULL, local_split};

sk_status comm_local_init(double timeout_s, comm **out) {
    comm *c = calloc(1, sizeof *c);
    local_impl *l = calloc(1, sizeof *l);
    if (!c || !l) {
        free(c);
        free(l);
        return sk_fail(SK_ENOMEM, "comm: out of memory");
    }
    *c = (comm){.ops = &local_ops, .name = "local", .rank = 0, .world = 1, .local_rank = 0, .local_world = 1,
                .timeout_s = timeout_s, .impl = l};
    *out = c;
    return SK_OK;
}
