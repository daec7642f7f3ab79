/* tpdp: tensor-parallel groups and data-parallel peers of a training run (see tpdp.h). */
#include "train/tpdp.h"

#include <string.h>

sk_status tpdp_init(comm *world, int K, tpdp *g) {
    const int W = world ? world->world : 1, r = world ? world->rank : 0;
    memset(g, 0, sizeof *g);
    g->K = 1;
    g->dp = world;
    g->dp_rank = r;
    g->dp_world = W;
    if (K < 1 || W % K)
        return sk_fail(SK_EARG, "train: --tp %d must divide the %d rank%s into tensor-parallel groups", K, W,
                       W == 1 ? "" : "s");
    if (K == 1) return SK_OK;
    comm *tp = NULL, *dp = NULL;
    sk_status st = comm_split(world, r / K, r % K, &tp);
    if (st == SK_OK && (st = comm_split(world, r % K, r / K, &dp))) comm_free(tp);
    if (st)
        return sk_fail_ctx(st, "train --tp %d: grouping the ranks (--comm mpi splits, on GPUs too: device memory is "
                               "staged through pinned host memory)", K);
    SK_ASSERT(tp->world == K && dp->world == W / K);
    *g = (tpdp){.K = K, .tp = tp, .dp = dp, .dp_rank = dp->rank, .dp_world = dp->world};
    return SK_OK;
}

void tpdp_free(tpdp *g) {
    if (g->K > 1) {
        comm_free(g->dp);
        comm_free(g->tp);
    }
    memset(g, 0, sizeof *g);
}
