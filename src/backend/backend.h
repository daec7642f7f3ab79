/* backend: one table of operations that every model is written against.
 *
 * A backend is a context plus a table of function pointers (ops). The CPU backend
 * (backend/cpu/) uses OpenBLAS for products and OpenMP for the rest and is the reference;
 * the CUDA backend (backend/cuda/, cuda.h) fills the same table with kernels and cuBLAS,
 * taking device pointers. Model code never touches memory a backend owns except
 * through these ops, so a model written once runs on both.
 *
 * Conventions: compute ops take a stream and tensor views (tensor.h) of backend memory (host
 * memory on CPU), row-major, f32 unless an op says otherwise. Letters: N rows (tokens, B*T), B batch, T time, C channels, OC
 * output channels, NH heads, HS head size (C/NH for GPT-2; the config's head_dim for
 * Llama), NKV key/value heads (grouped-query attention: NH is a multiple of NKV), F MLP
 * width, V vocabulary.
 * "accumulates" means += into the destination (gradients sum across micro-batches);
 * "writes" means =. Ops marked optional may be NULL; callers fall back or refuse.
 *
 * Mixed precision (backend_supports(be, BACKEND_OP_MIXED, DT_BF16)): arguments marked [lp]
 * below may be bf16 instead of f32, as a mixed-precision training step lays out its
 * activations (PyTorch autocast's split: products' operands and outputs, norm outputs and
 * the elementwise activations in bf16; the residual stream, norm statistics, the loss,
 * parameters and their gradients in f32). An op computes in f32 whatever its storage: it
 * converts bf16 inputs exactly, accumulates in f32 and rounds each bf16 output once, to
 * nearest even, when it stores it; an [lp] output that accumulates adds in f32 and rounds
 * the sum. Any mix of f32 and bf16 among [lp] arguments is allowed unless an op says
 * otherwise. Arguments not marked are f32 (or the dtype their op names). */
#ifndef SKEIN_BACKEND_H
#define SKEIN_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"
#include "tensor/tensor.h"

/* Nothing in a backend is locked: threads that run models at once each create their own
 * (on the CPU they read the same host memory); another thread may only copy and record
 * events on streams of its own (thread_bind). */
typedef struct backend backend;
/* A stream orders work: ops and copies on one stream run in the order issued, ops on
 * different streams may overlap. NULL is the backend's default stream. On the CPU every
 * stream runs synchronously (an op is done when its call returns). */
typedef struct backend_stream backend_stream;
/* An event marks a point in a stream: recorded there, waited on by another stream or the host. */
typedef struct backend_event backend_event;
/* A recorded sequence of work on one stream, replayed as a whole (graph_begin). */
typedef struct backend_graph backend_graph;

/* Direction of a copy: host memory is pageable or pinned, device memory is the backend's. */
typedef enum backend_copy_dir {
    COPY_HOST_TO_DEVICE, COPY_DEVICE_TO_HOST, COPY_DEVICE_TO_DEVICE, COPY_HOST_TO_HOST
} backend_copy_dir;

/* Ops whose support depends on the backend or the dtype (backend_supports). */
typedef enum backend_op {
    BACKEND_OP_MATMUL,       /* matmul: weight operand B in the dtype asked */
    BACKEND_OP_EMBED,        /* embed_forward: table in the dtype asked */
    BACKEND_OP_MIXED,        /* [lp] arguments (see the top of this file) in the dtype asked */
    BACKEND_OP_PAGED,        /* set_rows and paged_attention over arrays of the dtype asked */
    BACKEND_OP_KV_CACHE,     /* set_rows and paged_attention with f32 src, q and out over caches
                              * (dst, k_cache, v_cache) of the dtype asked */
    BACKEND_OP_COUNT
} backend_op;

/* The activation a fused linear layer applies to its output (linear_forward). */
typedef enum backend_act {
    BACKEND_ACT_NONE,
    BACKEND_ACT_GELU,   /* gelu_forward's: the tanh approximation */
} backend_act;

/* One piece of an AdamW step (adamw): `count` elements starting at element `param` of the
 * parameters (and of their low-precision copy), `grad` of the gradients and `state` of the
 * two moments; weight decay applies where `decay` is 1. Callers cut their tensors into spans
 * of at most BACKEND_ADAMW_SPAN elements (adamw_set_spans), so a GPU gives each span a block
 * and the whole model is one launch. */
typedef struct backend_adamw_span {
    int64_t param, grad, state, count, decay;
} backend_adamw_span;
enum { BACKEND_ADAMW_SPAN = 1 << 16 };

/* AdamW's hyperparameters for one step. */
typedef struct backend_adamw_hp {
    float lr, beta1, beta2, eps, weight_decay;
    float grad_clip;   /* > 0: clip by the global gradient norm (adamw) */
    int t;             /* the 1-based step (bias corrections) */
} backend_adamw_hp;

/* One row of sample_rows. temperature <= 0: the row's first maximum (argmax_rows). Else the
 * softmax of x / temperature restricted to the tokens of probability at least min_p times
 * the largest (min_p 0: off), then to the top_k largest (0: all), then to the smallest set of
 * the largest whose probability reaches top_p of what is left (1: all), as sample.h
 * restricts it (ties at a boundary may fall either way); one token is drawn by the Gumbel-max
 * trick: the kept token i with the largest x_i / temperature - log(-log(u_i)), u_i =
 * backend_sample_uniform(seed, counter, i) (an exact draw from the restricted softmax, the
 * same for a (seed, counter) whatever else is sampled). */
typedef struct backend_sample_row {
    float temperature, min_p, top_p;
    int top_k;
    uint64_t seed, counter;   /* a request's seed; counter: the index of the token drawn */
} backend_sample_row;

typedef struct backend_ops {
    /* ---- memory and time ---- */
    /* bytes of memory of kind `where` (MEM_DEVICE or MEM_PINNED), zeroed; NULL + sk_fail on
     * OOM. free takes the same kind. */
    void *(*alloc)(backend *be, size_t bytes, tensor_mem where);
    void (*free)(backend *be, void *p, tensor_mem where);
    /* Copies bytes on stream s (asynchronous where the backend can be: pinned host memory
     * must then stay untouched until the stream reaches the copy). */
    void (*copy)(backend *be, void *dst, const void *src, size_t bytes, backend_copy_dir dir,
                 backend_stream *s);
    /* Sets bytes of device memory to the byte value on stream s. */
    void (*fill)(backend *be, void *p, int byte, size_t bytes, backend_stream *s);
    backend_stream *(*stream_create)(backend *be);   /* NULL + sk_fail when it cannot */
    void (*stream_free)(backend *be, backend_stream *s);
    void (*stream_synchronize)(backend *be, backend_stream *s);   /* host waits for s */
    backend_event *(*event_create)(backend *be);     /* NULL + sk_fail when it cannot */
    void (*event_free)(backend *be, backend_event *e);
    void (*event_record)(backend *be, backend_event *e, backend_stream *s);
    /* Work issued to s after this call waits for the event's point. */
    void (*stream_wait_event)(backend *be, backend_stream *s, backend_event *e);
    void (*event_synchronize)(backend *be, backend_event *e);      /* host waits for e */
    /* Optional: makes the calling thread issue its work to be's device (CUDA: cudaSetDevice),
     * for a thread other than the one that created be (a communicator's copies). NULL: every
     * thread reaches be as it is. */
    void (*thread_bind)(backend *be);
    /* Device memory free and in total (the CPU: the process's memory budget and MemTotal). */
    sk_status (*mem_info)(backend *be, size_t *free_bytes, size_t *total_bytes);
    /* Whether op runs on dtype dt here; NULL entry: f32 only. Callers go through
     * backend_supports and fall back or refuse with a message. */
    bool (*supports)(backend *be, backend_op op, dtype dt);
    /* Optional: releases what be->impl holds (streams, library handles, workspaces) before
     * backend_free frees it. NULL: impl is plain memory (mem_free). */
    void (*destroy)(backend *be);
    /* Optional (NULL: a process's device memory is its own): device memory that processes on
     * the same device share. With *fd < 0: bytes of new device memory (not zeroed), exported as
     * a file descriptor into *fd (the caller's to close; another process gets it by fork or
     * SCM_RIGHTS). With *fd >= 0: the memory another process exported as fd, mapped here (bytes
     * as it gave them; fd stays the caller's). The physical memory lives while any process maps
     * it or holds a descriptor of it. NULL + sk_fail when it cannot. */
    void *(*ipc_map)(backend *be, size_t bytes, int *fd);
    /* Unmaps what ipc_map returned (bytes as given to it). */
    void (*ipc_unmap)(backend *be, void *p, size_t bytes);

    /* ---- compute ----
     * Every op runs on stream s (NULL: the default stream) and takes views (tensor.h) for its
     * arrays; sizes come from the views. Unless an op says otherwise, views are f32 and
     * contiguous; a backend asserts on any other view (a wrong view is a bug). */

    /* C(M,N) = alpha * op(A) @ op(B) + beta * C with op(X) = X or X^T per flag: op(A) is
     * (M,K), op(B) (K,N). 2-D views with contiguous rows and any row stride (tensor_ld), so
     * a column block of a wider matrix (tensor_cols) is an operand. Two kinds of product:
     * - training and f32 inference: A, B, C all f32, or A and B bf16 (they multiply
     *   exactly and accumulate in f32, as tensor cores do) with C f32, or with C bf16 and
     *   beta 0 (accumulating products keep an f32 C: a library may round alpha op(A) op(B)
     *   before it adds beta C, which cuBLASLt was seen doing);
     * - mapped inference weights: A and C f32, B any dtype backend_supports(be,
     *   BACKEND_OP_MATMUL, dt) accepts, trans_a false.
     * C aliases neither A nor B. */
    void (*matmul)(backend *be, backend_stream *s, tensor C, tensor A, bool trans_a, tensor B, bool trans_b,
                   float alpha, float beta);
    /* out(N,OC) [lp] += bias(OC) broadcast over rows (out's rows contiguous, any row
     * stride); dbias(OC) accumulates the column sums of dout(N,OC) [lp]. */
    void (*bias_add)(backend *be, backend_stream *s, tensor out, tensor bias);
    void (*bias_backward)(backend *be, backend_stream *s, tensor dbias, tensor dout);
    /* Optional (callers use backend_linear_forward): a linear layer in one op, as cuBLASLt's
     * epilogues fuse it. out(N,OC) [lp] = act(inp(N,IC) [lp] @ op(w) + bias(OC)) with op(w)
     * = w(IC,OC), or w(OC,IC)^T when trans_w; bias (f32, contiguous) may be tensor_none().
     * pre(N,OC), of out's dtype, receives the value before the activation (what
     * gelu_backward reads); it may be tensor_none(), and must be with BACKEND_ACT_NONE.
     * inp, w and out are one of matmul's kinds (A = inp, B = w, C = out). The sum is formed
     * in f32; a bf16 out or pre may be rounded once (pre = bf16(x), out = bf16(act(x)) of the
     * same f32 x: the CPU) or, where the backend runs the layer as separate ops, after the
     * product and again after the bias (matmul then bias_add), or after the sum and again
     * after the GELU; and a bf16 sum may take the bias rounded to bf16, as autocast's
     * F.linear does (CUDA's bf16 layers: product and bias in one cuBLASLt epilogue). out and pre: 2-D, contiguous with GELU (gelu_forward's views), else contiguous
     * rows with any row stride; they overlap nothing. Writes. */
    void (*linear_forward)(backend *be, backend_stream *s, tensor out, tensor pre, tensor inp, tensor w,
                           bool trans_w, tensor bias, backend_act act);
    /* Optional: a SwiGLU MLP's first half in one op where the backend has a kernel for the
     * shapes: out(N,F) [lp] = silu(g) * u where [g | u] = inp(N,IC) [lp] @ w(2F,IC)^T (w: the
     * gate's F rows, then the up's), g and u each rounded to out's dtype first, so the result is
     * linear_forward's into (N,2F) then swiglu_forward's, bit for bit. out: contiguous rows, any
     * row stride. Returns false, writing nothing, where it has no kernel for them (the caller
     * then runs those two ops). */
    bool (*linear_swiglu)(backend *be, backend_stream *s, tensor out, tensor inp, tensor w);
    /* Optional: a branch's product joining the residual stream in one op where the backend has
     * a kernel for the shapes: x(N,OC) [f32] += inp(N,IC) [lp] @ w(OC,IC)^T (+ bias(OC), f32, or
     * tensor_none()), the product rounded to inp's dtype first: linear_forward into an (N,OC)
     * of that dtype then add(x, x, it), bit for bit. x: contiguous rows, any row stride, overlaps
     * neither inp nor w. Returns false, writing nothing, where it has no kernel for them. */
    bool (*linear_add)(backend *be, backend_stream *s, tensor x, tensor inp, tensor w, tensor bias);
    /* Optional: a product of normed rows in one op where the backend has a kernel for the
     * shapes: with y = RMSNorm(x) * weight (rmsnorm_forward's, x(N,IC) f32, weight(IC) f32,
     * after x += resid where resid(N,IC) [lp] is given, as rmsnorm_forward's resid),
     * out(N,OC) [lp] = y @ w(OC,IC)^T, or with glu (w: a gate's OC rows, then an up's) silu(g) * u
     * of [g | u] = y @ w^T as linear_swiglu. y is not rounded to lp (the kernel scales each
     * row's sums by its 1/rms), so the result is rmsnorm_forward then linear_forward (or
     * linear_swiglu) within lp's rounding of y, not bit for bit. out: contiguous rows, any row
     * stride; resid contiguous. Returns false, writing nothing (x untouched), where it has no
     * kernel for them. */
    bool (*linear_rmsnorm)(backend *be, backend_stream *s, tensor out, tensor x, tensor resid, tensor weight,
                           float eps, tensor w, bool glu);

    /* out(B*T,C) writes wte[tokens] + wpe[t] for tokens(B,T) (i32; t the position in the
     * row), wte(V,C), wpe(P,C) with P >= T, or wpe tensor_none(): no position table. The
     * tables are contiguous, f32 or any dtype backend_supports(be, BACKEND_OP_EMBED, dt)
     * accepts (mapped weights); out is f32. */
    void (*embed_forward)(backend *be, backend_stream *s, tensor out, tensor tokens, tensor wte, tensor wpe);
    /* dwte(V,C), dwpe(P,C) accumulate from dout(B*T,C); dwpe may be tensor_none(). */
    void (*embed_backward)(backend *be, backend_stream *s, tensor dwte, tensor dwpe, tensor dout, tensor tokens);

    /* LayerNorm over the C columns of inp(N,C) with weight(C), bias(C). Writes out(N,C) [lp],
     * mean(N), rstd(N) (saved for backward; both may be tensor_none() in inference). With a
     * residual resid(N,C) [lp] (else tensor_none()) the op first adds it to inp in place
     * (inp += resid in f32, the residual stream's sum, rounded once to f32) and normalizes
     * the sum: the add and the norm in one pass, the same bits as add(inp, inp, resid) then
     * the op without resid (a bf16 branch output joins the f32 stream exactly as add takes
     * it). out overlaps neither inp nor resid. */
    void (*layernorm_forward)(backend *be, backend_stream *s, tensor out, tensor mean, tensor rstd, tensor inp,
                              tensor resid, tensor weight, tensor bias, float eps);
    /* dinp(N,C), dweight(C), dbias(C) accumulate from dout(N,C) [lp]; mean, rstd from the
     * forward. dinp_lp: tensor_none(), or a bf16 (N,C) that receives the accumulated dinp
     * rounded once (the copy the next branch's products read, made in the same pass); it
     * overlaps no other argument. */
    void (*layernorm_backward)(backend *be, backend_stream *s, tensor dinp, tensor dinp_lp, tensor dweight,
                               tensor dbias, tensor dout, tensor inp, tensor weight, tensor mean, tensor rstd);

    /* GELU, tanh approximation ("gelu_new" in transformers), elementwise over views of equal
     * element count, all [lp] of one dtype. forward writes out (may alias inp). backward WRITES
     * dinp = gelu'(inp) * dout (it is an activation gradient, never summed across
     * micro-batches), and dinp may alias dout so the MLP backward works in place. */
    void (*gelu_forward)(backend *be, backend_stream *s, tensor out, tensor inp);
    void (*gelu_backward)(backend *be, backend_stream *s, tensor dinp, tensor inp, tensor dout);

    /* out = a + b elementwise (equal element counts, all [lp]); out may alias a or b (then of
     * its dtype). */
    void (*add)(backend *be, backend_stream *s, tensor out, tensor a, tensor b);
    /* x [lp] *= alpha, in place. */
    void (*scale)(backend *be, backend_stream *s, tensor x, float alpha);

    /* Causal attention, grouped-query, for every family, in training and in KV-cached
     * inference. q(B,Tq,NH*HS), k and v (B,Tk,NKV*HS) are views with contiguous rows that may
     * be apart (GPT-2 passes column slices of its packed qkv(B,T,3C): row stride 3C; inference
     * passes q(1,n,..) and rows 0..pos+n-1 of a KV cache); HS = q.shape[2]/NH; head h reads
     * KV head h / (NH/NKV); scores scaled by 1/sqrt(HS). Query t sits at position Tk - Tq + t
     * and sees keys s <= that position, and with a window W > 0 only s > position - W
     * (transformers' sliding window: the W newest positions, itself included).
     * q, k, v and out are [lp], all of one dtype; lse stays f32. In bf16 the probabilities
     * may be rounded to bf16 before they weight v (tensor-core kernels do, as FlashAttention
     * does): outputs then agree with f32 to about 1% of their scale, not to one rounding.
     * Writes out(B,Tq,NH*HS) and, when lse is not none, lse(B,NH,Tq) (contiguous): each
     * query's log-sum-exp of its scaled scores, all the backward needs (no (Tq,Tk) buffer is
     * kept anywhere). With p > 0 the probabilities pass through dropout before they weight v,
     * key s of query t in head h of sample b kept when
     * dropout_keep(seed, ((b*NH + h)*Tq + t)*Tk + s, p); p = 0 is exactly the plain path. */
    void (*attention_forward)(backend *be, backend_stream *s, tensor out, tensor lse, tensor q,
                              tensor k, tensor v, int NH, int NKV, int W, float p, uint64_t seed);
    /* Writes dq, dk, dv (views shaped like q, k, v; they may be column slices of one buffer
     * but overlap nothing else), every element: keys no query sees get 0. (They are activation
     * gradients, never summed across micro-batches, so the caller zeroes nothing.) Every view
     * but lse [lp], all of one dtype. Recomputes the probabilities from q, k and the
     * forward's lse, as flash attention does; out and dout(B,Tq,NH*HS) give each row's term
     * D = dout . out. W, p and seed as in the forward, so dropout masks match it. */
    void (*attention_backward)(backend *be, backend_stream *s, tensor dq, tensor dk, tensor dv,
                               tensor dout, tensor q, tensor k, tensor v, tensor out, tensor lse,
                               int NH, int NKV, int W, float p, uint64_t seed);

    /* ---- Llama family (RMSNorm, rotary embeddings, SwiGLU) ---- */

    /* RMSNorm over the C columns of inp(N,C), computed in f32 as transformers' LlamaRMSNorm
     * does: out = inp * rstd * weight with rstd = 1/sqrt(mean(inp^2) + eps). Writes out(N,C)
     * [lp] and rstd(N) (saved for backward; may be tensor_none() in inference). resid as in
     * layernorm_forward (inp += resid first). out may alias inp (then f32), never resid. */
    void (*rmsnorm_forward)(backend *be, backend_stream *s, tensor out, tensor rstd, tensor inp, tensor resid,
                            tensor weight, float eps);
    /* dinp(N,C) and dweight(C) accumulate from dout(N,C) [lp]; rstd from the forward; dinp_lp
     * as in layernorm_backward. */
    void (*rmsnorm_backward)(backend *be, backend_stream *s, tensor dinp, tensor dinp_lp, tensor dweight,
                             tensor dout, tensor inp, tensor weight, tensor rstd);

    /* Rotary position embedding, in place, with transformers' rotate_half pairing: inside each
     * head of HS channels, channel i < HS/2 pairs with i + HS/2, and the pair rotates by the
     * angle of frequency i at the row's position:
     *   x[i] = x[i] cos - x[i+HS/2] sin;  x[i+HS/2] = x[i+HS/2] cos + x[i] sin.
     * x is (B,T,nh,HS) (4-D) [lp]; time t sits at position pos0 + t. Each (b,t) row of nh*HS
     * channels is contiguous and the rows may be apart (any row stride, evenly through B and T:
     * tensor_row_stride(x, 2)), so a column block of a packed q/k/v rotates in place (dx of the
     * backward likewise). cos, sin are tables (P, HS/2) of cos/sin(position * inv_freq[i]) that
     * the model builds once
     * (P > pos0 + T - 1), so scaling schemes live in model code, not in backends.
     * backward applies the inverse rotation (the transpose) to the gradient, in place. */
    void (*rope_forward)(backend *be, backend_stream *s, tensor x, tensor cos, tensor sin, int pos0);
    void (*rope_backward)(backend *be, backend_stream *s, tensor dx, tensor cos, tensor sin, int pos0);

    /* SwiGLU elementwise, all [lp] of one dtype: out = silu(gate) * up (silu(g) = g * sigmoid(g)).
     * forward: views of one shape whose rows (the last dimension) are contiguous, each with any
     * row stride (tensor_row_stride(t, 1): gate and up may be column blocks of one product's
     * output); out may alias gate or up. backward: contiguous views of equal element count; it WRITES
     * dgate = dout * up * silu'(gate) and dup = dout * silu(gate) (activation gradients);
     * dgate may alias dout. */
    void (*swiglu_forward)(backend *be, backend_stream *s, tensor out, tensor gate, tensor up);
    void (*swiglu_backward)(backend *be, backend_stream *s, tensor dgate, tensor dup, tensor dout, tensor gate,
                            tensor up);

    /* Fused softmax + cross-entropy over the rows of logits(N,V) [lp] (2-D, any row stride
     * Vp >= V; dlogits of the same dtype) against targets(N) (i32, < 0: ignored). Writes losses(N) (0 for ignored rows) and, when
     * dlogits is not tensor_none(), the gradient (softmax - onehot) * dloss into dlogits
     * (N,Vp), contiguous, Vp = logits' row stride (may alias logits; 0 for ignored rows and
     * for the padded columns V..Vp). The caller reduces losses (sum_f64). */
    void (*softmax_xent)(backend *be, backend_stream *s, tensor losses, tensor dlogits, tensor logits,
                         tensor targets, float dloss);

    /* Dropout with probability p, mask from dropout_keep(seed, i) over the flat index i, over
     * views of equal element count, [lp]: writes out = inp * mask / (1-p) (out may alias inp).
     * backward WRITES dinp = dout * mask / (1-p) (dinp may alias dout). */
    void (*dropout_forward)(backend *be, backend_stream *s, tensor out, tensor inp, float p, uint64_t seed);
    void (*dropout_backward)(backend *be, backend_stream *s, tensor dinp, tensor dout, float p, uint64_t seed);

    /* out = inp converted to out's dtype (elementwise, equal element counts, both
     * contiguous [lp], not overlapping): the f32 master weights into their bf16 compute copy, a bf16
     * gradient into f32. */
    void (*cast)(backend *be, backend_stream *s, tensor out, tensor inp);

    /* ---- reductions into a device scalar: out is one f64 element in backend memory, which
     * ACCUMULATES (zero it first for a fresh sum); the caller downloads it once. ---- */

    /* out += sum of x's elements (f32, converted to double) in index order, one after the
     * other: the same bits as a host loop `double sum; sum += x[i]` (the loss). */
    void (*sum_f64)(backend *be, backend_stream *s, tensor out, tensor x);
    /* out += sum of squares of x (f32), in double (the squared gradient norm). */
    void (*sum_squares)(backend *be, backend_stream *s, tensor out, tensor x);

    /* AdamW (torch.optim.AdamW) over the n spans of `spans` (backend memory; spans touch
     * disjoint parameters): for each element, g = grad * scale, m = b1 m + (1-b1) g,
     * v = b2 v + (1-b2) g^2, param -= lr (m c1 / (sqrt(v c2) + eps) + wd param) with the bias
     * corrections c = 1/(1 - b^t) and wd = weight_decay where the span decays. param, grad,
     * m, v: f32 1-D views the spans index; lp: tensor_none() or a bf16 copy of param (same
     * length) whose touched elements receive the new values rounded once (the products'
     * compute copy, kept fresh in the same pass). Clipping on the device: scale =
     * grad_clip / (norm + 1e-6) when grad_clip > 0 and norm = sqrt(*norm_sq) exceeds it, else
     * 1; norm_sq is one f64 in backend memory (sum_squares' result), NULL for no clipping. */
    void (*adamw)(backend *be, backend_stream *s, tensor param, tensor lp, tensor grad, tensor m, tensor v,
                  const backend_adamw_span *spans, int n, const double *norm_sq, const backend_adamw_hp *hp);

    /* ---- inference engine (paged key/value cache); optional: a caller checks them through
     * backend_supports_paged and refuses without them ---- */

    /* The key/value cache may have a dtype of its own: with activations (src, q, out) of the
     * cache's dtype where backend_supports(be, BACKEND_OP_PAGED, dt) (f32 anywhere, bf16 on
     * CUDA), or with f32 activations over a cache backend_supports(be, BACKEND_OP_KV_CACHE,
     * dt) takes (bf16 and f16 on the CPU: --kv-cache-dtype). */

    /* dst row idx[i] = src row i, for the N rows of src(N,D) and idx(N) (i32, backend
     * memory, each in [0,R) or negative: row i is skipped, a padding row; no two equal);
     * dst(R,D). Both 2-D with contiguous rows and any row stride; src of dst's dtype, or f32
     * into a cache of a BACKEND_OP_KV_CACHE dtype (each value rounded once, to nearest even).
     * Writes; other rows of dst are untouched. */
    void (*set_rows)(backend *be, backend_stream *s, tensor dst, tensor src, tensor idx);
    /* Optional (callers use backend_kv_store): a step's new keys and values into the cache in
     * one op. With cos and sin (not tensor_none(); (N,HS/2) f32 tables, row r the angles of row
     * r): q(N,NH*HS) and k(N,NKV*HS) first rotate as rope_forward's rows of one sequence at pos0
     * 0: q in place, k on its way to the cache (k itself is then left rotated or not). Then
     * set_rows(k_cache, k, idx) and set_rows(v_cache, v, idx), under set_rows' contract. q, k, v
     * and the caches of one dtype, 2-D, contiguous rows, any row stride. */
    void (*kv_store)(backend *be, backend_stream *s, tensor q, tensor k, tensor v, tensor cos, tensor sin,
                     tensor k_cache, tensor v_cache, tensor idx);
    /* Causal grouped-query attention of a ragged batch over a paged cache. q(N,NH*HS) holds
     * the new tokens of S sequences; seqs(S,3) (i32) gives for sequence i the first row r0
     * of its queries, their number nq and its context length ctx: its queries are rows
     * r0..r0+nq-1 and sit at positions ctx-nq..ctx-1, its keys and values are its positions
     * 0..ctx-1 (this step's already stored). Position t of sequence i is physical row
     * tables[i][t / BS] * BS + t % BS of k_cache and v_cache (R,NKV*HS), tables(S,MB) (i32).
     * Masking, grouping, window W and scale exactly as attention_forward with Tq = nq and
     * Tk = ctx (p = 0, no lse). q, out and the caches are 2-D with contiguous rows and any row
     * stride, all of one dtype: f32, or one backend_supports(be, BACKEND_OP_PAGED, dt) takes
     * (bf16 on CUDA: computed in f32, out rounded once); or q and out f32 over caches of a
     * BACKEND_OP_KV_CACHE dtype (their values converted exactly to f32 as they are read: the
     * result is the f32 op's over the cache's values); seqs and tables are backend memory.
     * Writes the sequences' rows of out(N,NH*HS); rows no sequence names are untouched. */
    void (*paged_attention)(backend *be, backend_stream *s, tensor out, tensor q, tensor k_cache, tensor v_cache,
                            tensor seqs, tensor tables, int BS, int NH, int NKV, int W);
    /* Optional (the engine downloads whole logits rows without it): ids(R) (i32, backend
     * memory) writes the column of the largest value of each row of x(R,V) (f32, contiguous
     * rows, any row stride), the first one among equals (sampler.h's greedy choice). */
    void (*argmax_rows)(backend *be, backend_stream *s, tensor ids, tensor x);

    /* Optional (the engine samples on the host without it): ids(R) (i32, backend memory)
     * writes one token drawn from each row of x(R,V) (f32, contiguous rows, any row stride)
     * under opts(R) (backend memory): backend_sample_row's distribution and draw. */
    void (*sample_rows)(backend *be, backend_stream *s, tensor ids, tensor x, const backend_sample_row *opts);

    /* Optional (the engine then waits for each step's ids before it issues the next): each
     * negative entry -k-1 of ids(N) (i32, backend memory) becomes src[k] (src(M) i32, backend
     * memory, k < M): a step's tokens that are the previous step's chosen ids, read where
     * argmax_rows or sample_rows left them. */
    void (*resolve_ids)(backend *be, backend_stream *s, tensor ids, tensor src);

    /* ---- graphs; optional (all four or none): a caller without them issues the work each time ----
     * graph_begin starts recording the work issued to stream s by this thread: from then until
     * graph_end, ops on s are recorded, not run, and must neither allocate nor wait for the host
     * (what was recorded reads and writes the same device addresses on every replay), and no
     * recorded op may write what a recorded product reads as its weights (matmul's B, the
     * linear ops' w): a backend may start reading those before the op ahead has finished (an
     * inference step's weights never change).
     * graph_end stops recording and returns the graph, or NULL + sk_fail when the recording
     * failed (nothing recorded ran: the caller issues the work again). graph_launch replays g
     * on s; graph_free frees it. */
    void (*graph_begin)(backend *be, backend_stream *s);
    backend_graph *(*graph_end)(backend *be, backend_stream *s);
    void (*graph_launch)(backend *be, backend_graph *g, backend_stream *s);
    void (*graph_free)(backend *be, backend_graph *g);
} backend_ops;

struct backend {
    const backend_ops *ops;
    const char *name;      /* "cpu", "cuda" */
    void *impl;            /* backend-private state */
    /* Device memory is host memory (the CPU backend): ops read views of host and mapped
     * memory in place. False (CUDA): every view an op takes must be backend memory. */
    bool host_memory;
    /* Which device of its kind this backend runs on: the CUDA ordinal it was created on (the
     * index the runtime numbers the visible GPUs by); 0 on the CPU. Backends of one name and
     * device address the same memory (devw.h shares a device copy among them). */
    int device;
};

/* The dropout mask every backend uses, so a CUDA run drops exactly what a CPU run drops:
 * element i of a tensor dropped with `seed` is kept when a 24-bit hash of (seed, i) read as
 * a uniform in [0,1) is >= p. SplitMix64's finalizer over seed + i * golden ratio. */
#ifdef __CUDACC__
#define SK_HOST_DEVICE __host__ __device__
#else
#define SK_HOST_DEVICE
#endif
/* One definition for the host and, compiled by nvcc, the device. */
static inline SK_HOST_DEVICE bool dropout_keep(uint64_t seed, uint64_t i, float p) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}

/* The uniform in (0,1) of sample_rows' token i for (seed, counter): the first word of
 * Philox4x32-10 (Salmon et al. 2011) keyed by seed at counter (i, 0, counter), its top 24 bits
 * plus one half over 2^24. */
static inline SK_HOST_DEVICE float backend_sample_uniform(uint64_t seed, uint64_t counter, uint32_t i) {
    uint32_t c0 = i, c1 = 0, c2 = (uint32_t)counter, c3 = (uint32_t)(counter >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return ((float)(c0 >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

/* ---- Memory and time, for callers (checked wrappers over the table) ----
 * backend_alloc: zeroed device memory (NULL + sk_fail on OOM); backend_alloc_pinned: host
 * memory the device copies from asynchronously. upload/download are synchronous: download
 * waits for the default stream, so it sees every op issued before it. zero is asynchronous
 * on the default stream. */
void *backend_alloc(backend *be, size_t bytes);
void backend_mem_free(backend *be, void *p);
void *backend_alloc_pinned(backend *be, size_t bytes);
void backend_pinned_free(backend *be, void *p);
void backend_upload(backend *be, void *dst, const void *host_src, size_t bytes);
void backend_download(backend *be, void *host_dst, const void *src, size_t bytes);
void backend_zero(backend *be, void *p, size_t bytes);
void backend_synchronize(backend *be);
bool backend_supports(backend *be, backend_op op, dtype dt);

/* ---- Compute with a fallback ---- */

/* linear_forward (its contract in backend_ops) where be has it, else
 * backend_linear_unfused(be->ops, ...). */
void backend_linear_forward(backend *be, backend_stream *s, tensor out, tensor pre, tensor inp, tensor w,
                            bool trans_w, tensor bias, backend_act act);
/* The linear layer as separate ops of the table `ops`: matmul into pre (or out when pre is
 * none), bias_add there (unless bias is none), then gelu_forward from there into out (in
 * place when pre is none). Each op rounds its own bf16 output, so a bf16 out may be rounded
 * more than once: the fallback of backends without linear_forward, and, on f32 kernels, a
 * backend's own path (cpu_mixed.c). */
void backend_linear_unfused(const backend_ops *ops, backend *be, backend_stream *s, tensor out, tensor pre,
                            tensor inp, tensor w, bool trans_w, tensor bias, backend_act act);
/* kv_store (its contract in backend_ops) where be has it, else rope_forward on q's and k's
 * heads (when cos is not none) and set_rows into each cache. */
void backend_kv_store(backend *be, backend_stream *s, tensor q, tensor k, tensor v, tensor cos, tensor sin,
                      tensor k_cache, tensor v_cache, tensor idx);
/* Whether be has the engine's ops (set_rows, paged_attention); false with an sk_fail message
 * naming the backend when not. */
bool backend_supports_paged(backend *be);
/* What ran be's last attention_forward (backward false) or attention_backward: on CUDA the
 * kernels ("cudnn", "tensor-core", "tiled"; "nothing" before the first call), elsewhere the
 * backend's name (it has one implementation). Tests and bench attention report it. */
const char *backend_attention_impl(backend *be, bool backward);
/* Free and total device memory; SK_EIO-style failure is returned with a message. */
sk_status backend_mem_info(backend *be, size_t *free_bytes, size_t *total_bytes);

/* Creates a backend by name ("cpu", "cuda"). NULL + sk_fail when unknown, not built in, or
 * (cuda) when no device can be used. */
backend *backend_create(const char *name);
/* The same on device `index` modulo the devices visible (cuda; the cpu has one): a rank passes
 * its local_rank, so the ranks of a host spread over its GPUs, and share them round robin when
 * they outnumber the GPUs. */
backend *backend_create_on(const char *name, int index);
/* Devices of backend `name` this process sees: cpu 1; cuda the visible GPUs (0 when none,
 * no driver, or not built in). */
int backend_device_count(const char *name);
void backend_free(backend *be);

/* The CPU backend (backend/cpu/cpu.c). The CUDA backend is backend/cuda/cuda.h's. */
backend *backend_cpu_create(void);

#endif
