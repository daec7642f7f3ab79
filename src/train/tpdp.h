/* tpdp: the ranks of a training run as tensor-parallel groups times data-parallel peers
 * (world = TP x DP, Megatron-LM's layout): with K ranks per group, world rank w is rank w % K
 * of tensor-parallel group w / K (consecutive ranks, which share a host first) and rank w / K
 * of the data-parallel peers that hold the same share of the model (w % K equal), among which
 * ZeRO shards and the batch is split.
 *
 *   tpdp g;
 *   tpdp_init(world, K, &g);            // collective: comm_split twice
 *   ... tp_train_split(whole, g.tp, &share); zero_init(share, g.dp, ...) ...
 *   tpdp_free(&g);                      // before the world's comm_free
 */
#ifndef SKEIN_TPDP_H
#define SKEIN_TPDP_H

#include "comm/comm.h"

typedef struct tpdp {
    int K;          /* ranks per tensor-parallel group (1: none) */
    comm *tp;       /* this rank's group; NULL when K is 1 */
    comm *dp;       /* its data-parallel peers: a comm of their own when K > 1, else the world
                     * itself (not owned), NULL for a process alone */
    int dp_rank, dp_world;
} tpdp;

/* Groups the ranks of world (NULL: one process) by K. SK_EARG when K < 1 or does not divide
 * the world size, else what comm_split says (its comm cannot be split: gloo, NCCL), with a
 * context that names --comm mpi. */
sk_status tpdp_init(comm *world, int K, tpdp *g);
/* Frees the sub-communicators (not the world); the share on tp is freed first (tp_free sets
 * tp's memory back to host memory). */
void tpdp_free(tpdp *g);

#endif
