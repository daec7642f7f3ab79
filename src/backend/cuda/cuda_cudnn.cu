/* backend/cuda: causal attention through cuDNN's fused flash attention, forward and
 * backward, by cuDNN 9's backend graph API (cudnn_graph.h). For each shape an operation graph
 * of matmuls, pointwise ops and reductions that cuDNN's fused SDPA engines recognise, built as
 * cuDNN's own frontend (NVIDIA/cudnn-frontend: CompositeSDPANode, CompositeSDPABackwardNode,
 * CompositeSoftmaxNode, CompositeDiagonalBandMaskNode) builds it for cuDNN 9.16-9.20, then the
 * first engine configuration of cuDNN's heuristics whose plan builds; one plan per shape,
 * cached. Our own code throughout; no frontend source.
 *
 * Why that graph and not CUDNN_BACKEND_OPERATION_SDPA_FWD/BWD_DESCRIPTOR: in 9.19 that
 * descriptor has no causal mask (masks reach it as a subgraph from 9.21 on) and the frontend
 * takes it only from 9.21 on; for 9.19 on Hopper the frontend builds the composite graph, so
 * that is what its users (PyTorch's cuDNN attention among them) run.
 *
 * Letters as in backend.h, with T = Tq = Tk (the only calls taken here), D = HS, H = NH,
 * Hk = NKV, sc = 1/sqrt(D). cuDNN's tensors are 4-D [B, heads, T, D] over our (B,T,heads*D)
 * rows: strides {batch stride, D, row stride, 1}; K and V also enter transposed ([B,Hk,D,T],
 * the last two strides swapped).
 *   forward: S = (Q K^T) sc; causal mask (and window) as -inf through BINARY_SELECT on index
 *     comparisons; softmax as MAX, SUB, EXP, SUM, then stats = max + LOG(sum) and P = DIV (bf16);
 *     O = P V. stats is the log-sum-exp of the scaled scores in natural log: exactly our lse,
 *     so a cuDNN forward and an own backward (or the reverse) agree.
 *   backward: softmax_sum = rowsum(dO * O) (our D, in the workspace); P = exp(S - stats),
 *     masked; dV = P^T dO; dS = (dO V^T - softmax_sum) P sc; dK = dS^T Q; dQ = dS K. With
 *     GQA, dK and dV are the products over all H heads (bf16) reduced over each KV head's
 *     group. Deterministic (the frontend's choice for Hopper): dQ is the product itself
 *     (cuDNN's dP-workspace kernels: B*NH*T*T bf16 of workspace, 768 MiB at GPT-2's batch
 *     32 x 1024, outside the model's memory plan); otherwise dQ accumulates in an f32 buffer in the
 *     workspace (with atomics) that an IDENTITY op converts. A deterministic plan also skips
 *     engines cuDNN notes as non-deterministic.
 *
 * Invariants: a plan is keyed by direction, determinism, shape, window and every operand's
 * strides; every tensor is declared 16-byte aligned, which dnn_covers checks of each call.
 * A plan (its descriptors, kept while it is cached) and the workspace are made on a shape's
 * first call, never in a steady-state step. The workspace is one buffer for all plans,
 * grown when a plan needs more (the device is idle while it is replaced); plans run in stream
 * order, as cuBLAS's workspace is shared. A shape without a plan is remembered: it runs on the
 * own kernels without retrying, after one warning. */
#include "backend/cuda/cuda_impl.cuh"

#include <cudnn_graph.h>
#include <math.h>
#include <string.h>

#define DNN_MIN_VERSION 91600   /* the graphs below are the frontend's for cuDNN >= 9.16 */
#define DNN_PLANS 16            /* cached plans (shapes x directions) */
#define DNN_MAX_DESCS 192       /* descriptors of one plan */
#define DNN_MAX_OPS 48          /* operations of one graph */
#define DNN_MAX_SCALARS 8       /* by-value scalars of one graph */
#define DNN_MAX_IO 24           /* tensors of one variant pack */
#define DNN_ALIGN 16            /* every tensor's declared byte alignment */
#define DNN_WS_ALIGN 256        /* alignment of the workspace's parts */

typedef cudnnBackendDescriptor_t dnn_desc;

/* Unique ids of the tensors a variant pack names; virtual and by-value ones from DNN_UID_FREE. */
enum { UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV, UID_SUM, UID_DQ_ACC,
       DNN_UID_FREE = 100 };

/* The operands of a call in the order the key keeps their strides. */
enum { OP_Q, OP_K, OP_V, OP_O, OP_DO, OP_DQ, OP_DK, OP_DV, OP_N };

/* What a plan is made for (all int64_t: compared with memcmp). */
typedef struct dnn_key {
    int64_t bwd, det;               /* the backward; its deterministic algorithm */
    int64_t B, T, NH, NKV, HS, W;   /* W 0: no window (also for W >= T: it hides nothing) */
    int64_t sb[OP_N], st[OP_N];     /* each operand's batch and row strides (0: not in the call) */
} dnn_key;

typedef struct dnn_plan {
    dnn_key key;
    bool ok;                        /* runs; false: the key runs on the own kernels */
    dnn_desc exec;                  /* the execution plan */
    dnn_desc descs[DNN_MAX_DESCS];  /* everything it was built from, released with it */
    int n_descs;
    int64_t scalar_uid[DNN_MAX_SCALARS];
    float scalar[DNN_MAX_SCALARS];  /* by-value tensors: the variant pack points here */
    int n_scalars;
    size_t acc_off, sum_off;        /* the backward's dQ accumulator and softmax_sum in the workspace */
    size_t ws_off;                  /* cuDNN's own part of the workspace starts here */
    size_t ws_bytes;                /* the workspace the plan needs */
} dnn_plan;

struct cuda_cudnn {
    cudnnHandle_t h;
    cudaStream_t stream;   /* the handle's stream */
    bool broken;           /* no usable cuDNN: it takes no call */
    void *ws;              /* the workspace of every plan */
    size_t ws_bytes;
    dnn_plan plans[DNN_PLANS];
    int n_plans, next;     /* plans in use; the next one replaced when all are */
};

static bool dnn_good(cudnnStatus_t st) { return st == CUDNN_STATUS_SUCCESS; }

/* ---- building a graph: the first failure is kept (status, step, cuDNN's last error
 * string) and every later call does nothing, so a graph reads as straight-line code ---- */

typedef struct dnn_build {
    dnn_plan *p;              /* descriptors and scalars go here */
    cudnnStatus_t st;         /* the first failure, or success */
    char step[256];           /* what failed */
    char why[512];            /* cudnnGetLastErrorString right after it */
    int64_t next_uid;
    dnn_desc ops[DNN_MAX_OPS];
    int n_ops;
} dnn_build;

/* Records st as the build's failure at `step` `name` unless it succeeded or an earlier call
 * failed; true when the build is still good. */
static bool dnn_check(dnn_build *b, cudnnStatus_t st, const char *step, const char *name) {
    if (!dnn_good(b->st)) return false;
    if (dnn_good(st)) return true;
    b->st = st;
    snprintf(b->step, sizeof b->step, "%s%s%s", step, name[0] ? " " : "", name);
    cudnnGetLastErrorString(b->why, sizeof b->why);
    return false;
}

/* A new descriptor of the plan (released with it); NULL once the build failed. */
static dnn_desc dnn_new(dnn_build *b, cudnnBackendDescriptorType_t type, const char *name) {
    dnn_desc d = NULL;
    if (!dnn_check(b, cudnnBackendCreateDescriptor(type, &d), "creating the descriptor of", name)) return NULL;
    SK_ASSERT(b->p->n_descs < DNN_MAX_DESCS);
    b->p->descs[b->p->n_descs++] = d;
    return d;
}

static void dnn_set(dnn_build *b, dnn_desc d, cudnnBackendAttributeName_t attr, cudnnBackendAttributeType_t type,
                    int64_t n, const void *values, const char *name) {
    if (!dnn_good(b->st)) return;
    char step[64];
    snprintf(step, sizeof step, "setting attribute %d of", (int)attr);
    dnn_check(b, cudnnBackendSetAttribute(d, attr, type, n, values), step, name);
}

static void dnn_finalize(dnn_build *b, dnn_desc d, const char *name) {
    if (dnn_good(b->st)) dnn_check(b, cudnnBackendFinalize(d), "finalizing", name);
}

static void dnn_set_desc(dnn_build *b, dnn_desc d, cudnnBackendAttributeName_t attr, dnn_desc value,
                         const char *name) {
    dnn_set(b, d, attr, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value, name);
}

/* Dimensions and strides of a 4-D tensor. */
typedef struct dnn_dims { int64_t d[4], s[4]; } dnn_dims;

/* (a, b, c, d) packed row-major. */
static dnn_dims dnn_packed(int64_t a, int64_t b, int64_t c, int64_t d) {
    return dnn_dims{{a, b, c, d}, {b * c * d, c * d, d, 1}};
}
/* Operand op of k as [B, heads, T, D] over its rows; transposed: [B, heads, D, T]. */
static dnn_dims dnn_rows(const dnn_key *k, int op, int64_t heads, bool transposed) {
    if (transposed) return dnn_dims{{k->B, heads, k->HS, k->T}, {k->sb[op], k->HS, 1, k->st[op]}};
    return dnn_dims{{k->B, heads, k->T, k->HS}, {k->sb[op], k->HS, k->st[op], 1}};
}

static dnn_desc dnn_tensor(dnn_build *b, int64_t uid, cudnnDataType_t dt, dnn_dims x, bool is_virtual, bool by_value,
                           const char *name) {
    const int64_t align = DNN_ALIGN;
    dnn_desc t = dnn_new(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR, name);
    dnn_set(b, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, name);
    dnn_set(b, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, x.d, name);
    dnn_set(b, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, x.s, name);
    dnn_set(b, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, name);
    dnn_set(b, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, name);
    if (is_virtual) dnn_set(b, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual, name);
    if (by_value) dnn_set(b, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, name);
    dnn_finalize(b, t, name);
    return t;
}
/* A tensor the call passes (uid in the variant pack). */
static dnn_desc dnn_io(dnn_build *b, int64_t uid, cudnnDataType_t dt, dnn_dims x, const char *name) {
    return dnn_tensor(b, uid, dt, x, false, false, name);
}
/* A tensor inside the graph. */
static dnn_desc dnn_virtual(dnn_build *b, cudnnDataType_t dt, dnn_dims x, const char *name) {
    return dnn_tensor(b, b->next_uid++, dt, x, true, false, name);
}
/* An f32 scalar passed by value (the plan keeps it for the variant pack). */
static dnn_desc dnn_scalar(dnn_build *b, float v, const char *name) {
    dnn_plan *p = b->p;
    SK_ASSERT(p->n_scalars < DNN_MAX_SCALARS);
    p->scalar_uid[p->n_scalars] = b->next_uid;
    p->scalar[p->n_scalars++] = v;
    return dnn_tensor(b, b->next_uid++, CUDNN_DATA_FLOAT, dnn_packed(1, 1, 1, 1), false, true, name);
}

static void dnn_add_op(dnn_build *b, dnn_desc op, const char *name) {
    dnn_finalize(b, op, name);
    if (!dnn_good(b->st)) return;
    SK_ASSERT(b->n_ops < DNN_MAX_OPS);
    b->ops[b->n_ops++] = op;
}

/* y = mode(x, in1, in2) computed in `compute` (in1: B, in2: T, NULL where the mode has fewer
 * inputs; axis: GEN_INDEX's). */
static void dnn_pointwise(dnn_build *b, cudnnPointwiseMode_t mode, cudnnDataType_t compute, dnn_desc x, dnn_desc in1,
                          dnn_desc in2, dnn_desc y, int64_t axis, const char *name) {
    const float one = 1.0f;
    dnn_desc pw = dnn_new(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, name);
    dnn_set(b, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, name);
    dnn_set(b, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &compute, name);
    if (mode == CUDNN_POINTWISE_GEN_INDEX) dnn_set(b, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, name);
    dnn_finalize(b, pw, name);
    dnn_desc op = dnn_new(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, name);
    if (in1) dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, in1, name);
    if (in2) dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, in2, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, name);
    dnn_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one, name);
    dnn_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one, name);
    dnn_add_op(b, op, name);
}
/* The f32 pointwise op y = mode(x, in1). */
static void dnn_pw(dnn_build *b, cudnnPointwiseMode_t mode, dnn_desc x, dnn_desc in1, dnn_desc y, const char *name) {
    dnn_pointwise(b, mode, CUDNN_DATA_FLOAT, x, in1, NULL, y, -1, name);
}

/* c = a b over the last two dimensions (batched over the first two, broadcasting KV heads),
 * f32 accumulation. */
static void dnn_matmul(dnn_build *b, dnn_desc a, dnn_desc bm, dnn_desc c, const char *name) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    dnn_desc mm = dnn_new(b, CUDNN_BACKEND_MATMUL_DESCRIPTOR, name);
    dnn_set(b, mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, name);
    dnn_finalize(b, mm, name);
    dnn_desc op = dnn_new(b, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, bm, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm, name);
    dnn_add_op(b, op, name);
}

/* y = x reduced by mode over the dimensions where y has extent 1 and x has more. */
static void dnn_reduce(dnn_build *b, cudnnReduceTensorOp_t mode, dnn_desc x, dnn_desc y, const char *name) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    const bool deterministic = false;   /* the frontend's default */
    dnn_desc r = dnn_new(b, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, name);
    dnn_set(b, r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32, name);
    dnn_set(b, r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, name);
    dnn_set(b, r, CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, CUDNN_TYPE_BOOLEAN, 1, &deterministic, name);
    dnn_finalize(b, r, name);
    dnn_desc op = dnn_new(b, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, name);
    dnn_add_op(b, op, name);
}

/* y = x seen with y's dimensions and strides (a transpose, or a change of dtype). */
static void dnn_reshape(dnn_build *b, dnn_desc x, dnn_desc y, const char *name) {
    dnn_desc op = dnn_new(b, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x, name);
    dnn_set_desc(b, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y, name);
    dnn_add_op(b, op, name);
}

/* ---- the attention graphs ---- */

/* The scaled scores (Q K^T) sc, f32 [B,H,T,T]. */
static dnn_desc dnn_scores(dnn_build *b, dnn_desc q, dnn_desc kt, dnn_desc scale, dnn_dims S) {
    dnn_desc s = dnn_virtual(b, CUDNN_DATA_FLOAT, S, "Q K^T");
    dnn_matmul(b, q, kt, s, "Q K^T");
    dnn_desc scaled = dnn_virtual(b, CUDNN_DATA_FLOAT, S, "scaled scores");
    dnn_pw(b, CUDNN_POINTWISE_MUL, s, scale, scaled, "scores * scale");
    return scaled;
}

/* s (f32, dims S) with -inf where keep_if(row index, column index) is false: one of the
 * frontend's composite diagonal band masks. Column offset col_add (a by-value f32 scalar, or
 * NULL) is added to the column index first: cmp(col + W, row) for the window's left bound,
 * cmp(row, col) for the causal right bound. */
static dnn_desc dnn_band(dnn_build *b, dnn_desc s, dnn_dims S, cudnnPointwiseMode_t cmp, dnn_desc col_add,
                         const char *name) {
    dnn_desc row = dnn_virtual(b, CUDNN_DATA_INT32, S, name), col = dnn_virtual(b, CUDNN_DATA_INT32, S, name);
    dnn_pointwise(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, NULL, NULL, row, 2, name);
    dnn_pointwise(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, NULL, NULL, col, 3, name);
    dnn_desc keep = dnn_virtual(b, CUDNN_DATA_BOOLEAN, S, name);
    if (col_add) {
        dnn_desc shifted = dnn_virtual(b, CUDNN_DATA_FLOAT, S, name);
        dnn_pw(b, CUDNN_POINTWISE_ADD, col, col_add, shifted, name);
        dnn_pointwise(b, cmp, CUDNN_DATA_BOOLEAN, shifted, row, NULL, keep, -1, name);
    } else {
        dnn_pointwise(b, cmp, CUDNN_DATA_BOOLEAN, row, col, NULL, keep, -1, name);
    }
    dnn_desc out = dnn_virtual(b, CUDNN_DATA_FLOAT, S, name);
    dnn_pointwise(b, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, dnn_scalar(b, -INFINITY, name), keep, out,
                  -1, name);
    return out;
}

/* s with the pairs backend.h hides set to -inf: keys after the query (kept: row >= col) and,
 * with a window W, keys W or more before it (kept: col + W > row). */
static dnn_desc dnn_mask(dnn_build *b, const dnn_key *k, dnn_desc s, dnn_dims S) {
    s = dnn_band(b, s, S, CUDNN_POINTWISE_CMP_GE, NULL, "causal mask");
    if (k->W) s = dnn_band(b, s, S, CUDNN_POINTWISE_CMP_GT, dnn_scalar(b, (float)k->W, "window"), "window mask");
    return s;
}

/* out = a bm, a product over all H heads; with GQA that bf16 product summed over each KV
 * head's group of heads (dK, dV). */
static void dnn_head_grad(dnn_build *b, const dnn_key *k, dnn_desc a, dnn_desc bm, dnn_desc out, const char *name) {
    if (k->NKV == k->NH) {
        dnn_matmul(b, a, bm, out, name);
        return;
    }
    dnn_desc full = dnn_virtual(b, CUDNN_DATA_BFLOAT16, dnn_packed(k->B, k->NH, k->T, k->HS), name);
    dnn_matmul(b, a, bm, full, name);
    dnn_reduce(b, CUDNN_REDUCE_TENSOR_ADD, full, out, name);
}

static void dnn_graph_forward(dnn_build *b, const dnn_key *k) {
    const int64_t B = k->B, H = k->NH, T = k->T;
    const dnn_dims S = dnn_packed(B, H, T, T), R = dnn_packed(B, H, T, 1);
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT, bf16 = CUDNN_DATA_BFLOAT16;
    dnn_desc q = dnn_io(b, UID_Q, bf16, dnn_rows(k, OP_Q, H, false), "Q");
    dnn_desc kt = dnn_io(b, UID_K, bf16, dnn_rows(k, OP_K, k->NKV, true), "K^T");
    dnn_desc v = dnn_io(b, UID_V, bf16, dnn_rows(k, OP_V, k->NKV, false), "V");
    dnn_desc o = dnn_io(b, UID_O, bf16, dnn_rows(k, OP_O, H, false), "O");
    dnn_desc stats = dnn_io(b, UID_STATS, f32, R, "stats (lse)");
    dnn_desc s = dnn_scores(b, q, kt, dnn_scalar(b, 1.0f / sqrtf((float)k->HS), "attention scale"), S);
    s = dnn_mask(b, k, s, S);
    dnn_desc m = dnn_virtual(b, f32, R, "row max"), shifted = dnn_virtual(b, f32, S, "scores - max");
    dnn_reduce(b, CUDNN_REDUCE_TENSOR_MAX, s, m, "row max");
    dnn_pw(b, CUDNN_POINTWISE_SUB, s, m, shifted, "scores - max");
    dnn_desc e = dnn_virtual(b, f32, S, "exp"), z = dnn_virtual(b, f32, R, "row sum");
    dnn_pw(b, CUDNN_POINTWISE_EXP, shifted, NULL, e, "exp");
    dnn_reduce(b, CUDNN_REDUCE_TENSOR_ADD, e, z, "row sum");
    dnn_desc logz = dnn_virtual(b, f32, R, "log row sum");
    dnn_pw(b, CUDNN_POINTWISE_LOG, z, NULL, logz, "log row sum");
    dnn_pw(b, CUDNN_POINTWISE_ADD, m, logz, stats, "stats = max + log sum");
    dnn_desc p = dnn_virtual(b, bf16, S, "P");
    dnn_pw(b, CUDNN_POINTWISE_DIV, e, z, p, "P = exp / sum");
    dnn_matmul(b, p, v, o, "P V");
}

static void dnn_graph_backward(dnn_build *b, const dnn_key *k) {
    const int64_t B = k->B, H = k->NH, T = k->T, D = k->HS;
    const dnn_dims S = dnn_packed(B, H, T, T), R = dnn_packed(B, H, T, 1);
    const dnn_dims ST = {{B, H, T, T}, {H * T * T, T * T, 1, T}};   /* S transposed in place */
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT, bf16 = CUDNN_DATA_BFLOAT16;
    dnn_desc q = dnn_io(b, UID_Q, bf16, dnn_rows(k, OP_Q, H, false), "Q");
    dnn_desc kt = dnn_io(b, UID_K, bf16, dnn_rows(k, OP_K, k->NKV, true), "K^T");
    dnn_desc vt = dnn_io(b, UID_V, bf16, dnn_rows(k, OP_V, k->NKV, true), "V^T");
    dnn_desc o = dnn_io(b, UID_O, bf16, dnn_rows(k, OP_O, H, false), "O");
    dnn_desc dO = dnn_io(b, UID_DO, bf16, dnn_rows(k, OP_DO, H, false), "dO");
    dnn_desc stats = dnn_io(b, UID_STATS, f32, R, "stats (lse)");
    dnn_desc dQ = dnn_io(b, UID_DQ, bf16, dnn_rows(k, OP_DQ, H, false), "dQ");
    dnn_desc dK = dnn_io(b, UID_DK, bf16, dnn_rows(k, OP_DK, k->NKV, false), "dK");
    dnn_desc dV = dnn_io(b, UID_DV, bf16, dnn_rows(k, OP_DV, k->NKV, false), "dV");

    /* softmax_sum = rowsum(dO * O), times 1 (the frontend's dropout scale slot) */
    dnn_desc prod = dnn_virtual(b, f32, dnn_dims{{B, H, T, D}, {H * T * D, T * D, H * D, 1}}, "dO * O");
    dnn_pw(b, CUDNN_POINTWISE_MUL, dO, o, prod, "dO * O");
    dnn_desc rows = dnn_virtual(b, f32, R, "rowsum(dO * O)");
    dnn_reduce(b, CUDNN_REDUCE_TENSOR_ADD, prod, rows, "rowsum(dO * O)");
    dnn_desc sum = dnn_io(b, UID_SUM, f32, R, "softmax_sum");
    dnn_pw(b, CUDNN_POINTWISE_MUL, rows, dnn_scalar(b, 1.0f, "one"), sum, "softmax_sum");

    /* P = exp(S sc - stats), masked; dV = P^T dO */
    dnn_desc scale = dnn_scalar(b, 1.0f / sqrtf((float)D), "attention scale");
    dnn_desc s = dnn_scores(b, q, kt, scale, S), centered = dnn_virtual(b, f32, S, "scores - stats");
    dnn_pw(b, CUDNN_POINTWISE_SUB, s, stats, centered, "scores - stats");
    s = dnn_mask(b, k, centered, S);
    dnn_desc p = dnn_virtual(b, f32, S, "P"), pt = dnn_virtual(b, bf16, ST, "P^T");
    dnn_pw(b, CUDNN_POINTWISE_EXP, s, NULL, p, "P = exp");
    dnn_reshape(b, p, pt, "P^T");
    dnn_head_grad(b, k, pt, dO, dV, "dV = P^T dO");

    /* dS = (dO V^T - softmax_sum) P sc; dK = dS^T Q */
    dnn_desc dp = dnn_virtual(b, f32, S, "dP"), t1 = dnn_virtual(b, f32, S, "dP - softmax_sum");
    dnn_matmul(b, dO, vt, dp, "dP = dO V^T");
    dnn_pw(b, CUDNN_POINTWISE_SUB, dp, sum, t1, "dP - softmax_sum");
    dnn_desc t2 = dnn_virtual(b, f32, S, "(dP - softmax_sum) P"), ds = dnn_virtual(b, f32, S, "dS");
    dnn_pw(b, CUDNN_POINTWISE_MUL, t1, p, t2, "(dP - softmax_sum) P");
    dnn_pw(b, CUDNN_POINTWISE_MUL, t2, scale, ds, "dS");
    dnn_desc dst = dnn_virtual(b, bf16, ST, "dS^T");
    dnn_reshape(b, ds, dst, "dS^T");
    dnn_head_grad(b, k, dst, q, dK, "dK = dS^T Q");

    /* dQ = dS K: directly (deterministic), or through the f32 accumulator */
    dnn_desc kk = dnn_virtual(b, bf16, dnn_rows(k, OP_K, k->NKV, false), "K");
    dnn_reshape(b, kt, kk, "K");
    if (k->det) {
        dnn_matmul(b, ds, kk, dQ, "dQ = dS K");
        return;
    }
    dnn_desc acc = dnn_io(b, UID_DQ_ACC, f32, dnn_packed(B, H, T, D), "dQ accumulator");
    dnn_matmul(b, ds, kk, acc, "dQ = dS K");
    dnn_pw(b, CUDNN_POINTWISE_IDENTITY, acc, NULL, dQ, "dQ from its accumulator");
}

/* ---- plans ---- */

static void dnn_plan_release(dnn_plan *p) {
    while (p->n_descs > 0) cudnnBackendDestroyDescriptor(p->descs[--p->n_descs]);
    p->exec = NULL;
    p->ok = false;
}

/* The global index of the engine of configuration cfg (-1 when unknown) and whether cuDNN
 * notes it non-deterministic or runtime-compiled (notes it cannot read count as absent). */
static int64_t dnn_engine_info(dnn_desc cfg, bool *nondet, bool *rtc) {
    int64_t index = -1, n = 0;
    *nondet = *rtc = false;
    dnn_desc eng = NULL;
    if (!dnn_good(cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng))) return -1;
    if (dnn_good(cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &eng))) {
        cudnnBackendNumericalNote_t num[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
        cudnnBackendBehaviorNote_t beh[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
        if (!dnn_good(cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index)))
            index = -1;
        if (dnn_good(cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                              CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, num)))
            for (int64_t i = 0; i < n; i++) *nondet |= num[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
        if (dnn_good(cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                                              CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &n, beh)))
            for (int64_t i = 0; i < n; i++) *rtc |= beh[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION;
    }
    cudnnBackendDestroyDescriptor(eng);
    return index;
}

/* What the heuristics gave for a graph, for the warning when no plan builds. */
typedef struct dnn_offer {
    int offered;    /* configurations the heuristics proposed */
    int viable;     /* of those, the ones that passed cuDNN's support checks */
    int skipped;    /* viable but noted non-deterministic (a deterministic plan skips them) */
    dnn_build fail; /* the first plan that failed to build */
} dnn_offer;

/* Tries the engine configurations of heuristics mode `mode` for graph in cuDNN's order and
 * keeps the first whose plan builds (p->exec, its name in engine); a deterministic plan skips
 * engines noted non-deterministic. Adds what it saw to *o. */
static void dnn_try_mode(dnn_build *b, dnn_desc graph, cudnnBackendHeurMode_t mode, const char *mode_name,
                         dnn_offer *o, char *engine, size_t engine_len) {
    dnn_plan *p = b->p;
    dnn_desc heur = dnn_new(b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, mode_name);
    dnn_set_desc(b, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, mode_name);
    dnn_set(b, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, mode_name);
    dnn_finalize(b, heur, mode_name);
    int64_t count = 0;
    if (!dnn_good(b->st) ||
        !dnn_check(b, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                               &count, NULL), "counting the engine configurations of", mode_name) ||
        count <= 0)
        return;
    o->offered += (int)count;
    dnn_desc *cfgs = (dnn_desc *)mem_calloc(sizeof(dnn_desc) * (size_t)count);
    SK_ASSERT(cfgs);
    int64_t made = 0, got = 0;
    while (made < count && dnn_check(b, cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[made]),
                                     "creating an engine configuration for", mode_name))
        made++;
    if (made == count)
        dnn_check(b, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                                              &got, cfgs), "reading the engine configurations of", mode_name);
    int64_t chosen = -1;
    for (int64_t i = 0; dnn_good(b->st) && i < got && chosen < 0; i++) {
        bool nondet, rtc;
        const int64_t index = dnn_engine_info(cfgs[i], &nondet, &rtc);
        o->viable++;
        if (p->key.det && nondet) {
            o->skipped++;
            continue;
        }
        char name[96];
        snprintf(name, sizeof name, "the execution plan of engine %lld (%s)", (long long)index, mode_name);
        dnn_desc plan = NULL;
        dnn_build attempt = {};
        if (dnn_check(&attempt, cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan),
                      "creating", name) &&
            dnn_check(&attempt, cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]),
                      "setting the engine configuration of", name) &&
            dnn_check(&attempt, cudnnBackendFinalize(plan), "finalizing", name)) {
            SK_ASSERT(p->n_descs + 2 <= DNN_MAX_DESCS);
            p->descs[p->n_descs++] = cfgs[i];
            p->descs[p->n_descs++] = plan;
            p->exec = plan;
            chosen = i;
            snprintf(engine, engine_len, "engine %lld (%s%s%s)", (long long)index, mode_name,
                     rtc ? ", runtime-compiled" : "", nondet ? ", non-deterministic" : "");
            break;
        }
        if (plan) cudnnBackendDestroyDescriptor(plan);
        if (dnn_good(o->fail.st)) o->fail = attempt;
    }
    for (int64_t i = 0; i < made; i++)
        if (i != chosen) cudnnBackendDestroyDescriptor(cfgs[i]);
    mem_free(cfgs);
}

/* Builds p's graph and plan; on success p->ok, the workspace grown to p's need and one line
 * on stderr naming the engine; on failure one warning naming the step and cuDNN's status and
 * message, and p stays not ok (its key runs on the own kernels). */
/* "forward for B .., T .., ..." naming p's key in messages. */
static void dnn_key_name(const dnn_key *k, char *what, size_t n) {
    snprintf(what, n, "%s for B %lld, T %lld, NH %lld, NKV %lld, HS %lld, window %lld",
             !k->bwd ? "forward" : k->det ? "backward (deterministic)" : "backward (non-deterministic)",
             (long long)k->B, (long long)k->T, (long long)k->NH, (long long)k->NKV, (long long)k->HS,
             (long long)k->W);
}

/* Builds b->p's graph (its key's direction) and finalizes its operation graph, on handle h
 * (NULL: none, for the check without a device); the graph, or NULL with b failed. */
static dnn_desc dnn_graph_build(dnn_build *b, cudnnHandle_t h) {
    const dnn_key *k = &b->p->key;
    b->next_uid = DNN_UID_FREE;
    if (k->bwd) dnn_graph_backward(b, k);
    else dnn_graph_forward(b, k);
    dnn_desc graph = dnn_new(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "the operation graph");
    if (h) dnn_set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h, "the operation graph");
    dnn_set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, b->n_ops, b->ops,
            "the operation graph");
    dnn_finalize(b, graph, "the operation graph");
    return dnn_good(b->st) ? graph : NULL;
}

static void dnn_plan_make(cuda_cudnn *c, dnn_plan *p) {
    const dnn_key *k = &p->key;
    char what[160], engine[160] = "";
    dnn_key_name(k, what, sizeof what);
    dnn_build b = {};
    b.p = p;
    dnn_desc graph = dnn_graph_build(&b, c->h);
    dnn_offer o = {};
    if (graph) dnn_try_mode(&b, graph, CUDNN_HEUR_MODE_A, "heuristics mode A", &o, engine, sizeof engine);
    if (dnn_good(b.st) && !p->exec)
        dnn_try_mode(&b, graph, CUDNN_HEUR_MODE_FALLBACK, "the fallback heuristics", &o, engine, sizeof engine);
    if (dnn_good(b.st) && !p->exec) {
        if (!dnn_good(o.fail.st)) {
            b.st = o.fail.st;
            memcpy(b.step, o.fail.step, sizeof b.step);
            memcpy(b.why, o.fail.why, sizeof b.why);
        } else {   /* cuDNN logs its reasons only when asked */
            b.st = CUDNN_STATUS_NOT_SUPPORTED;
            snprintf(b.step, sizeof b.step,
                     "choosing an engine: the heuristics proposed %d configurations, %d passed cuDNN's support checks%s "
                     "(CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr shows why)",
                     o.offered, o.viable, o.skipped ? ", each noted non-deterministic" : "");
        }
    }
    int64_t ws = 0, n = 0;
    if (dnn_good(b.st))
        dnn_check(&b, cudnnBackendGetAttribute(p->exec, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                               &n, &ws), "reading the workspace size of", "the execution plan");
    if (!dnn_good(b.st)) {
        log_warn("cuda: cuDNN attention %s: no plan: %s: %s%s%s; this shape runs on the own kernels", what, b.step,
                 cudnnGetErrorString(b.st), b.why[0] ? ": " : "", b.why);
        dnn_plan_release(p);
        return;
    }
    /* the workspace: [dQ accumulator (non-deterministic backward)] [softmax_sum (backward)] [cuDNN's] */
    const size_t rows = (size_t)(k->B * k->NH * k->T), up = DNN_WS_ALIGN - 1;
    size_t off = 0;
    if (k->bwd && !k->det) {
        p->acc_off = off;
        off += (rows * (size_t)k->HS * sizeof(float) + up) & ~up;
    }
    if (k->bwd) {
        p->sum_off = off;
        off += (rows * sizeof(float) + up) & ~up;
    }
    p->ws_off = off;
    p->ws_bytes = off + (size_t)ws;
    if (p->ws_bytes > c->ws_bytes) {
        CUDA_CHECK(cudaDeviceSynchronize());   /* no plan is using the old one */
        if (c->ws) CUDA_CHECK(cudaFree(c->ws));
        c->ws = NULL;
        c->ws_bytes = 0;
        const cudaError_t e = cudaMalloc(&c->ws, p->ws_bytes);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();   /* not sticky */
            c->ws = NULL;
            log_warn("cuda: cuDNN attention %s: allocating its %.1f MiB workspace: %s; this shape runs on the own kernels",
                     what, (double)p->ws_bytes / 1048576.0, cudaGetErrorString(e));
            dnn_plan_release(p);
            return;
        }
        c->ws_bytes = p->ws_bytes;
    }
    p->ok = true;
    log_info("cuda: attention %s by cuDNN %zu: %s, workspace %.1f MiB", what, cudnnGetVersion(), engine,
             (double)p->ws_bytes / 1048576.0);
}

/* The plan for key k: cached, or made now in a free slot or in place of the oldest. */
static dnn_plan *dnn_plan_get(cuda_cudnn *c, const dnn_key *k) {
    for (int i = 0; i < c->n_plans; i++)
        if (!memcmp(&c->plans[i].key, k, sizeof *k)) return &c->plans[i];
    dnn_plan *p;
    if (c->n_plans < DNN_PLANS) {
        p = &c->plans[c->n_plans++];
    } else {
        p = &c->plans[c->next];
        c->next = (c->next + 1) % DNN_PLANS;
        dnn_plan_release(p);
    }
    memset(p, 0, sizeof *p);
    p->key = *k;
    dnn_plan_make(c, p);
    return p;
}

/* Runs plan p on stream s with the call's tensors uids[i] at ptrs[i] (i < n), its workspace
 * tensors and its scalars. false, with a warning, where cuDNN refuses: the plan is dropped and
 * its key runs on the own kernels from then on (they write every output again). */
static bool dnn_run(cuda_cudnn *c, dnn_plan *p, cudaStream_t s, const int64_t *uids, void *const *ptrs, int n) {
    int64_t u[DNN_MAX_IO];
    void *d[DNN_MAX_IO];
    SK_ASSERT(n + 2 + p->n_scalars <= DNN_MAX_IO);
    memcpy(u, uids, sizeof(int64_t) * (size_t)n);
    memcpy(d, ptrs, sizeof(void *) * (size_t)n);
    char *ws = (char *)c->ws;
    if (p->key.bwd) {
        u[n] = UID_SUM, d[n++] = ws + p->sum_off;
        if (!p->key.det) u[n] = UID_DQ_ACC, d[n++] = ws + p->acc_off;
    }
    for (int i = 0; i < p->n_scalars; i++) u[n] = p->scalar_uid[i], d[n++] = &p->scalar[i];
    void *cudnn_ws = ws ? ws + p->ws_off : NULL;
    dnn_build r = {};
    if (c->stream != s && dnn_check(&r, cudnnSetStream(c->h, s), "cudnnSetStream", "")) c->stream = s;
    dnn_desc vp = NULL;
    if (dnn_check(&r, cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp), "creating",
                  "the variant pack")) {
        dnn_check(&r, cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, u),
                  "setting the tensor ids of", "the variant pack");
        dnn_check(&r, cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, d),
                  "setting the data pointers of", "the variant pack");
        dnn_check(&r, cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                                               &cudnn_ws), "setting the workspace of", "the variant pack");
        dnn_check(&r, cudnnBackendFinalize(vp), "finalizing", "the variant pack");
        dnn_check(&r, cudnnBackendExecute(c->h, p->exec, vp), "cudnnBackendExecute", "");
        cudnnBackendDestroyDescriptor(vp);
    }
    if (dnn_good(r.st)) return true;
    const dnn_key *k = &p->key;
    log_warn("cuda: cuDNN attention %s for B %lld, T %lld, NH %lld, NKV %lld, HS %lld: %s: %s%s%s; this shape runs "
             "on the own kernels from now on", k->bwd ? "backward" : "forward", (long long)k->B, (long long)k->T,
             (long long)k->NH, (long long)k->NKV, (long long)k->HS, r.step, cudnnGetErrorString(r.st),
             r.why[0] ? ": " : "", r.why);
    dnn_plan_release(p);
    return false;
}

/* x's cuDNN state, made on first use: NULL (for good, after one warning) where cuDNN is too
 * old or cudnnCreate fails (its libraries, NVRTC, the driver). */
static cuda_cudnn *dnn_state(cuda_ctx *x) {
    if (x->cudnn) return x->cudnn->broken ? NULL : x->cudnn;
    cuda_cudnn *c = (cuda_cudnn *)mem_calloc(sizeof *c);
    if (!c) return NULL;
    x->cudnn = c;
    const size_t v = cudnnGetVersion();
    if (v < DNN_MIN_VERSION) {
        c->broken = true;
        log_warn("cuda: cuDNN %zu.%zu.%zu is loaded; the attention graphs need %d.%d or newer: attention runs on the "
                 "own kernels", v / 10000, v / 100 % 100, v % 100, DNN_MIN_VERSION / 10000, DNN_MIN_VERSION / 100 % 100);
        return NULL;
    }
    const cudnnStatus_t st = cudnnCreate(&c->h);
    if (!dnn_good(st)) {
        char why[512];
        cudnnGetLastErrorString(why, sizeof why);
        c->broken = true;
        c->h = NULL;
        log_warn("cuda: cuDNN %zu is unusable (cudnnCreate: %s%s%s): attention runs on the own kernels", v,
                 cudnnGetErrorString(st), why[0] ? ": " : "", why);
        return NULL;
    }
    return c;
}

/* Whether the graphs here take a call: bf16, as many queries as keys (more than one), no
 * dropout, lse wanted, HS a multiple of 8, every operand 16-byte aligned with batch and row
 * strides of whole 16-byte units. (HS <= CUDA_ATTN_MAX_HS is the op's own limit.) */
static bool dnn_covers(const cuda_attn_geom *g, const float *lse, const cuda_rows *ops, int n) {
    if (g->dt != DT_BF16 || g->B < 1 || g->Tq != g->Tk || g->Tq < 2 || g->p > 0.0f || !lse || g->HS % 8) return false;
    if ((uintptr_t)lse % DNN_ALIGN) return false;
    for (int i = 0; i < n; i++)
        if ((uintptr_t)ops[i].p % DNN_ALIGN || ops[i].sb % 8 || ops[i].st % 8) return false;
    return true;
}

static dnn_key dnn_key_of(const cuda_attn_geom *g, bool bwd, bool det, const cuda_rows *ops, int n) {
    dnn_key k;
    memset(&k, 0, sizeof k);
    k.bwd = bwd;
    k.det = bwd && det;
    k.B = g->B, k.T = g->Tq, k.NH = g->NH, k.NKV = g->NKV, k.HS = g->HS;
    k.W = g->W < g->Tk ? g->W : 0;
    for (int i = 0; i < n; i++) k.sb[i] = ops[i].sb, k.st[i] = ops[i].st;
    return k;
}

bool cuda_cudnn_attention_forward(cuda_ctx *x, cudaStream_t s, const cuda_attn_geom *g, cuda_rows out, float *lse,
                                  cuda_rows q, cuda_rows k, cuda_rows v) {
    const cuda_rows ops[] = {q, k, v, out};   /* OP_Q .. OP_O */
    if (!dnn_covers(g, lse, ops, 4)) return false;
    cuda_cudnn *c = dnn_state(x);
    if (!c) return false;
    const dnn_key key = dnn_key_of(g, false, false, ops, 4);
    dnn_plan *p = dnn_plan_get(c, &key);
    if (!p->ok) return false;
    const int64_t uids[] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS};
    void *const ptrs[] = {q.p, k.p, v.p, out.p, lse};
    return dnn_run(c, p, s, uids, ptrs, 5);
}

bool cuda_cudnn_attention_backward(cuda_ctx *x, cudaStream_t s, const cuda_attn_geom *g, bool deterministic,
                                   cuda_rows dq, cuda_rows dk, cuda_rows dv, cuda_rows dout, cuda_rows q, cuda_rows k,
                                   cuda_rows v, cuda_rows out, const float *lse) {
    const cuda_rows ops[] = {q, k, v, out, dout, dq, dk, dv};   /* OP_Q .. OP_DV */
    if (!dnn_covers(g, lse, ops, OP_N)) return false;
    cuda_cudnn *c = dnn_state(x);
    if (!c) return false;
    const dnn_key key = dnn_key_of(g, true, deterministic, ops, OP_N);
    dnn_plan *p = dnn_plan_get(c, &key);
    if (!p->ok) return false;
    const int64_t uids[] = {UID_Q, UID_K, UID_V, UID_O, UID_DO, UID_STATS, UID_DQ, UID_DK, UID_DV};
    void *const ptrs[] = {q.p, k.p, v.p, out.p, dout.p, (void *)lse, dq.p, dk.p, dv.p};
    return dnn_run(c, p, s, uids, ptrs, 9);
}

/* The graph of a shape without a device: GPT-2's packed q, k, v rows (NKV == NH) or Llama's
 * three contiguous blocks, out and dout contiguous. */
extern "C" sk_status backend_cuda_cudnn_check_graph(int B, int T, int NH, int NKV, int HS, int W, bool backward,
                                                    bool deterministic) {
    dnn_plan *p = (dnn_plan *)mem_calloc(sizeof *p);
    if (!p) return SK_ENOMEM;
    dnn_key *k = &p->key;
    k->bwd = backward, k->det = backward && deterministic;
    k->B = B, k->T = T, k->NH = NH, k->NKV = NKV, k->HS = HS, k->W = W < T ? W : 0;
    const int64_t QD = (int64_t)NH * HS, KD = (int64_t)NKV * HS, W3 = QD + 2 * KD;
    for (int op = 0; op < OP_N; op++) {
        const bool is_q = op == OP_Q || op == OP_DQ || op == OP_O || op == OP_DO;
        k->st[op] = NKV == NH && op != OP_O && op != OP_DO ? W3 : is_q ? QD : KD;
        k->sb[op] = k->st[op] * T;
    }
    dnn_build b = {};
    b.p = p;
    dnn_graph_build(&b, NULL);
    sk_status st = SK_OK;
    if (!dnn_good(b.st)) {
        char what[160];
        dnn_key_name(k, what, sizeof what);
        st = sk_fail(SK_EARG, "cuDNN attention %s: %s: %s%s%s", what, b.step, cudnnGetErrorString(b.st),
                     b.why[0] ? ": " : "", b.why);
    }
    dnn_plan_release(p);
    mem_free(p);
    return st;
}

void cuda_cudnn_free(cuda_ctx *x) {
    cuda_cudnn *c = x->cudnn;
    if (!c) return;
    for (int i = 0; i < c->n_plans; i++) dnn_plan_release(&c->plans[i]);
    if (c->ws) cudaFree(c->ws);
    if (c->h) cudnnDestroy(c->h);
    mem_free(c);
    x->cudnn = NULL;
}
