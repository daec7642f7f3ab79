/* wts: a model folder's weights, mapped read-only and immutable, as tensor views by name.
 *
 *   wts *w;
 *   if (wts_open("models/llama-1b", WTS_KEEP_FLOAT, &w) != SK_OK) { puts(sk_errmsg()); ... }
 *   tensor q;
 *   int64_t shape[2] = {2048, 2048};
 *   SK_TRY(wts_expect(w, "model.layers.0.self_attn.q_proj.weight", 2, shape, &q));
 *   // q.dt == DT_BF16 (the file's dtype), q.mem == MEM_MAPPED, q.data in the page cache
 *   wts *again = wts_ref(w);    // a second engine shares the same object
 *   wts_free(again);
 *   wts_free(w);                // the last reference unmaps
 *
 * wts_open opens model.safetensors, or model.safetensors.index.json and its shards, through
 * safetensors.c (which validates every header and names the file and tensor on any error)
 * and maps each file PROT_READ + MAP_SHARED: the weights cost the files' size once per
 * machine, not per process, and an engine that reads them never copies them.
 *
 * Which tensors are views into the files and which are converted copies (the only memory a
 * wts allocates, counted by wts_copied_bytes; each copy is f32, MEM_HOST):
 *   - matrices (2..4 dimensions) of a float dtype in `keep` stay mapped in their file dtype,
 *     when their data is aligned to the element size (files written by skein or
 *     transformers always are); float matrices of a dtype not in `keep` (one the backend
 *     cannot read) or misaligned become f32 copies;
 *   - 1-D float tensors (norm weights, biases) and scalars are f32: mapped when the file
 *     holds them in aligned f32, else copied. Kernels read norms and biases only in f32, and
 *     they are a few KB per layer;
 *   - tensors of other dtypes (integer buffers of old checkpoints) stay mapped as they are;
 *     misaligned ones are copied byte for byte (then MEM_HOST, same dtype).
 * Tensors with more than TENSOR_MAX_DIMS dimensions are refused (SK_EFORMAT naming them).
 *
 * Names are the Hugging Face names. GPT-2's "transformer." prefix is optional on both sides:
 * wts_get("h.0.attn.c_attn.weight") finds "transformer.h.0.attn.c_attn.weight" and the
 * reverse; a folder holding one name with and without the prefix is refused.
 *
 * Invariants: after wts_open returns, nothing in a wts changes except its reference count;
 * every view stays valid until the last wts_free. Views point into read-only memory: a
 * write through one is a segmentation fault, not a silent change. Any number of threads may
 * call every function here at once (wts_ref/wts_free are atomic). */
#ifndef SKEIN_WTS_H
#define SKEIN_WTS_H

#include "base/base.h"
#include "base/file.h"
#include "tensor/tensor.h"

typedef struct wts wts;

/* Bit of dtype dt in a `keep` set; WTS_KEEP_FLOAT keeps f32, bf16 and f16 matrices mapped
 * (the CPU with cpu_lowp). A backend that reads only f32 passes WTS_DT(DT_F32). */
#define WTS_DT(dt) (1u << (dt))
#define WTS_KEEP_FLOAT (WTS_DT(DT_F32) | WTS_DT(DT_BF16) | WTS_DT(DT_F16))

/* Opens dir's weights (see above); *out holds one reference. SK_EIO when dir has neither
 * model.safetensors nor the index, SK_EFORMAT naming the file and tensor for a malformed
 * file, SK_ENOMEM. */
sk_status wts_open(const char *dir, unsigned keep, wts **out);
/* Adds a reference (another engine sharing w); returns w. */
wts *wts_ref(wts *w);
/* Drops a reference; the last one unmaps the files and frees the copies (NULL is fine). */
void wts_free(wts *w);

/* The view of tensor `name` (prefix rules above), or tensor_none() when there is none. */
tensor wts_get(const wts *w, const char *name);
/* The index in [0, wts_count) of tensor `name` (prefix rules above), or -1. */
int wts_find(const wts *w, const char *name);
/* wts_get that also checks the shape: SK_EFORMAT "<file>: missing tensor 'name'" or
 * "<file>: tensor 'name': expected shape [..], found [..]". */
sk_status wts_expect(const wts *w, const char *name, int ndim, const int64_t *shape, tensor *out);

/* Every tensor, i in [0, wts_count): its name as the file spells it, its view, the file
 * holding it, and whether the view is a converted copy. Order: by name. */
int wts_count(const wts *w);
const char *wts_name(const wts *w, int i);
tensor wts_at(const wts *w, int i);
const char *wts_file(const wts *w, int i);
bool wts_is_copy(const wts *w, int i);

/* The files' mappings, j in [0, wts_files): where each whole file lies in memory. */
int wts_files(const wts *w);
file_map wts_mapping(const wts *w, int j);

/* What was opened ("dir/model.safetensors" or the index), for messages. */
const char *wts_path(const wts *w);
/* Bytes of the mapped files (headers included) and of the converted copies. */
size_t wts_mapped_bytes(const wts *w);
size_t wts_copied_bytes(const wts *w);

#endif
