/* tp: tensor parallelism inside src/model/ (the cut is described with model_tp in model.h):
 * cutting the weights when a split model is opened, and the collectives an architecture's
 * inference step calls. Internal to src/model/; the architecture files reach it through
 * arch.h. Every function here is a no-op (or the plain single-rank operation) on a model that
 * is not split, so gpt2.c and llama.c run one code path at any K.
 *
 * The step's collectives run on a communication stream ordered after the compute stream by
 * an event, and the compute stream waits for them by another (llm.c's pattern), so on a GPU
 * they stay on the device and the host never waits per layer (NCCL). On a host-memory backend
 * (MPI, gloo), and on a device through a communicator that stages device memory through the
 * host (MPI or gloo when ranks share a GPU: comm_stage.h), each is waited for at once, since
 * the next op reads its result and only comm_wait says it is back. A failed collective is
 * recorded in m->tp (model_step_status) and every later one is skipped: the step finishes
 * with meaningless numbers and its caller reports the failure. */
#ifndef SKEIN_TP_H
#define SKEIN_TP_H

#include "model/model.h"

/* Fills t for rank `rank` of K of a model of config c (heads, MLP width, vocabulary rows;
 * lp f32); K = 1: the whole model's counts. Leaves comm, slices and run alone. */
void tp_init(model_tp *t, const model_config *c, int rank, int K);
/* Cuts m (planned, m->views NULL) for rank c->rank of c->world from full, the views of every
 * spec bound to the whole weights (n_specs of them): fills m->tp and m->views (see
 * model_open_split for which parts stay views and which are copied) and sets c's memory to
 * m->be's (comm_set_backend; tp_free sets it back). On a device backend its matrices are
 * copied in mat_dt (DT_BF16 or DT_F32; m->tp.lp), its 1-D tensors in f32. SK_ENOMEM naming
 * the bytes, or comm_set_backend's failure. */
sk_status tp_cut(model *m, comm *c, const tensor *full, dtype mat_dt);
/* Grows the step buffers to batches of max_tokens tokens from max_seqs sequences (grow-only,
 * as infer_prepare). SK_ENOMEM when out of memory. */
sk_status tp_prepare(model *m, int max_tokens, int max_seqs);
/* Frees m->tp's slices and buffers and sets its comm's memory back to host memory
 * (model_free). */
void tp_free(model *m);

/* The rows of this rank's embedding slice that tokens(n) select: token t in its vocabulary
 * rows is row t - vocab0, any other the zero row after them (so the sum over the ranks of
 * the gathered rows is the embedding). A host array valid until the next call; tokens itself
 * when the model is not split. */
const int *tp_token_rows(model *m, const int *tokens, int n);
/* x (contiguous, f32 or bf16, backend memory) becomes its sum over the ranks, in place: after
 * a row-cut product, and after the embedding (a bf16 sum adds in f32 and rounds once per
 * addition: comm.h). */
void tp_sum(model *m, tensor x);
/* A row-cut product's bias as this rank adds it to its partial sum: rank 0's alone (b), else
 * tensor_none(), so the sum over the ranks adds it once; b itself when m is not split. */
tensor tp_row_bias(const model *m, tensor b);
/* The LM head: logits (R,V) = last(R,C) @ head^T for every vocabulary row, written into out
 * (R * arch_vocab_padded(V) floats of backend memory: rows that far apart, so the product
 * writes aligned rows) and returned as a view. head is this rank's vocabulary rows
 * (its first n_vocab rows are read: an embedding slice's zero row is not); split, each rank
 * computes its rows' columns and the ranks' columns are gathered, so every rank returns the
 * whole logits. Ends the step's collectives (waits for those still in flight). */
tensor tp_logits(model *m, tensor last, tensor head, float *out, int R);

#endif
