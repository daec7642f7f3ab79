/* tp_train: tensor-parallel training (Megatron-LM, Shoeybi et al. 2019): one rank's share of a
 * training model, and the map between a share's flat parameters and the whole model's.
 *
 *   model *whole;                       // model_load / model_create, the same on every rank
 *   model *share;
 *   tp_train_split(whole, tp, &share);  // tp: the K ranks of this tensor-parallel group
 *   model_free(whole);
 *   ... train share as any training model (ZeRO over the data-parallel ranks) ...
 *   model *w;
 *   tp_train_gather(share, params, &w); // collective over tp: rank 0 gets the whole model
 *
 * The cut. A share is a training model whose config holds this rank's heads (n_head / K),
 * key/value heads (n_kv_head / K) and MLP width (ffn_dim / K): q, k, v (GPT-2's packed c_attn)
 * and the MLP's first products (c_fc; gate, up) with their biases are cut by columns (output
 * features), the attention output (c_proj, o_proj) and the MLP's last product (c_proj, down)
 * by rows (input features). Everything else is whole on every rank (replicated): the token
 * and position embeddings, the LM head (so the loss is computed whole, without a parallel
 * cross-entropy), every norm, and the row-cut products' biases. The share's architecture
 * code (gpt2.c, llama.c, through tp.h) sums the row-cut products' partial outputs over the
 * ranks in the forward (one all-reduce each, the bias added by rank 0 alone: tp_row_bias) and
 * the column-cut products' partial input gradients in the backward (Megatron's conjugate f and
 * g operators). So the replicated tensors see the same inputs and output gradients on every
 * rank, and their gradients are computed identically there (not all-reduced): each rank's
 * optimizer keeps its copy equal to the others'. The collectives run through comm with the
 * compute stream (tp.h), as inference's do. In bf16 mixed precision the forward's sums are of
 * the f32 residual-stream outputs, the backward's of the bf16 input gradients (summed in bf16
 * as Megatron-LM does: one more rounding than one process's product, so the losses agree with
 * TP = 1 within bf16's tolerance rather than f32's).
 *
 * Limits (refused by tp_train_check): shapes model_tp_check refuses, key/value heads that do
 * not divide over the ranks (inference shares them; training would have to sum their
 * gradients) and dropout (its masks are keyed by the whole model's head index). */
#ifndef SKEIN_TP_TRAIN_H
#define SKEIN_TP_TRAIN_H

#include "model/model.h"

/* Whether a model of config c trains split over K ranks with these options; SK_ECONFIG (or
 * SK_EARG) with a message naming the shape or option otherwise. K = 1 is always fine. */
sk_status tp_train_check(const model_config *c, int K, bool dropout, dtype precision);

/* This rank's share (rank tp->rank of K = tp->world) of whole, a training model whose
 * parameters are the same on every rank: a new training model on whole's backend with the
 * cut config, its parameters copied out of whole's, joined to the ranks of tp (not owned: free
 * it after the share), whose memory becomes the backend's (comm_set_backend) until the share
 * is freed. SK_ECONFIG from tp_train_check, SK_ENOMEM naming the size. */
sk_status tp_train_split(const model *whole, comm *tp, model **out);

/* The whole model's config of a share (its heads, KV heads and MLP width times K). */
model_config tp_train_whole_config(const model *share);

/* Collective over the share's ranks: every rank passes its share's parameters `params` (host
 * memory, share->n_params floats); rank 0 gets in *whole a new training model on the share's
 * backend holding the whole parameters (its own to free), the others NULL. The share's comm
 * may carry its backend's memory (comm_set_backend): the gather of host memory sets it to host
 * memory, then back to the share's backend. SK_ENOMEM or the comm's failure. */
sk_status tp_train_gather(const model *share, const float *params, model **whole);

/* Whether spec i of a share is whole (replicated, its gradient the same on every rank). */
bool tp_train_replicated(const model *share, int i);

/* Where the share's parameters lie in the whole model: fn(ctx, spec, at, whole_at, n) for every
 * run of n consecutive elements of flat range [begin, begin + count) of rank `rank`'s share, in
 * order: spec the tensor it is part of, at its first element in the share, whole_at in the
 * whole model's flat layout. Returns the whole model's parameter count. */
typedef void (*tp_train_run_fn)(void *ctx, int spec, size_t at, size_t whole_at, size_t n);
size_t tp_train_runs(const model *share, int rank, size_t begin, size_t count, tp_train_run_fn fn, void *ctx);

#endif
