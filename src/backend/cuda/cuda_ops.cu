/* backend/cuda: kernels and launchers of every op but attention (cuda_attention.cu), in f32.
 * Contracts are backend.h's; the CPU backend (backend/cpu/cpu.c) is the reference each
 * kernel follows formula for formula.
 *
 * Three kernel families cover the ops:
 *   - elementwise: one functor per op (a struct with __device__ operator()(int64_t i)) run by
 *     each_f32 over a grid-stride loop; each element is read before it is written, so the
 *     aliasing the contracts allow (out = inp, dinp = dout) is safe;
 *   - rows: one block per row (norms, softmax cross-entropy) with block_reduce;
 *   - column sums: colsum_f32 over a term functor (bias, LayerNorm and RMSNorm parameter
 *     gradients), one thread per column summing its rows in order, so no atomics.
 * Invariants: nothing allocates; every result is deterministic except the token-embedding
 * gradient (atomicAdd: repeated tokens meet in any order); reductions into the f64 scalars
 * run in a fixed order (sum_f64 in one block, in exact index order as the CPU's loop;
 * sum_squares in one cluster of blocks, each a fixed slice).
 * Products go to cuBLAS in plain f32 (CUBLAS_DEFAULT_MATH: no TF32), so they track the
 * CPU's sgemm to rounding, unless SKEIN_CUDA_TF32=1 chose TF32 at creation (cuda.h). */
#include "backend/cuda/cuda_impl.cuh"

#include <cooperative_groups.h>
#include <math.h>

namespace cg = cooperative_groups;

/* ---- shared device helpers ---- */

#define ROW_THREADS 256   /* threads of a row kernel: a multiple of 32, at most 1024 */
#define FULL_MASK 0xffffffffu

template <class T> struct op_sum {
    __device__ T operator()(T a, T b) const { return a + b; }
};
struct op_max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <class T, class Op> __device__ T warp_reduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

/* The reduction of v over the block (blockDim.x a multiple of 32), returned to every thread.
 * The order is fixed by the block size, so results are deterministic. Safe to call again
 * at once (it synchronizes before reusing its shared slots). */
template <class T, class Op> __device__ T block_reduce(T v, Op op) {
    __shared__ T part[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_reduce(v, op);
    __syncthreads();   /* an earlier call's readers are done with part[] */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = part[0];
    for (int w = 1; w < nwarps; w++) v = op(v, part[w]);
    return v;
}

__device__ float block_sum(float v) { return block_reduce(v, op_sum<float>()); }

/* Grid-stride loop over n elements calling f(i). */
template <class F> __global__ void each_f32(int64_t n, F f) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        f(i);
}

/* Launches each_f32 over n elements: at most 32 blocks of 256 per multiprocessor. */
template <class F> static void each(const cuda_ctx *x, cudaStream_t s, int64_t n, F f) {
    if (n <= 0) return;
    int64_t blocks = (n + 255) / 256, cap = (int64_t)x->n_sm * 32;
    each_f32<<<(unsigned)(blocks < cap ? blocks : cap), 256, 0, s>>>(n, f);
    CUDA_CHECK_LAUNCH();
}

/* ---- products ---- */

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the same buffers with the
 * operands swapped, each row stride a leading dimension. */
void cuda_matmul(cuda_ctx *x, cudaStream_t s, float *C, int64_t ldc, const float *A, int64_t lda, bool ta,
                 const float *B, int64_t ldb, bool tb, int M, int N, int K, float alpha, float beta) {
    if (x->blas_stream != s) {
        CUBLAS_CHECK(cublasSetStream(x->blas, s));
        /* setting a stream returns the handle to cuBLAS's own pool: give it ours again */
        CUBLAS_CHECK(cublasSetWorkspace(x->blas, x->blas_ws, x->blas_ws_bytes));
        x->blas_stream = s;
    }
    CUBLAS_CHECK(cublasSgemm(x->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
                             B, (int)ldb, A, (int)lda, &beta, C, (int)ldc));
}

/* ---- column sums: dst0[c] (+ dst1[c]) += sum over rows of a term of (row, column) ---- */

#define COLSUM_X 32   /* columns per block */
#define COLSUM_Y 16   /* row lanes per column */

/* One column per threadIdx.x; the COLSUM_Y lanes of a column take rows y, y + COLSUM_Y, ...
 * and their partial sums are added in lane order: a fixed order, no atomics. term(i, c)
 * returns the two summands (the second is ignored when dst1 is NULL). */
template <class Term> __global__ void colsum_f32(float *dst0, float *dst1, int N, int C, Term term) {
    __shared__ float s0[COLSUM_Y][COLSUM_X + 1], s1[COLSUM_Y][COLSUM_X + 1];
    const int c = blockIdx.x * COLSUM_X + threadIdx.x;
    float a0 = 0, a1 = 0;
    if (c < C)
        for (int i = threadIdx.y; i < N; i += COLSUM_Y) {
            float2 t = term(i, c);
            a0 += t.x;
            a1 += t.y;
        }
    s0[threadIdx.y][threadIdx.x] = a0;
    s1[threadIdx.y][threadIdx.x] = a1;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int y = 1; y < COLSUM_Y; y++) {
            a0 += s0[y][threadIdx.x];
            a1 += s1[y][threadIdx.x];
        }
        dst0[c] += a0;
        if (dst1) dst1[c] += a1;
    }
}

template <class Term> static void colsum(cudaStream_t s, float *dst0, float *dst1, int N, int C, Term term) {
    colsum_f32<<<(C + COLSUM_X - 1) / COLSUM_X, dim3(COLSUM_X, COLSUM_Y), 0, s>>>(dst0, dst1, N, C, term);
    CUDA_CHECK_LAUNCH();
}

/* dout(N,C) itself: the bias gradient. */
struct term_bias {
    const float *dout;
    int C;
    __device__ float2 operator()(int i, int c) const { return make_float2(dout[(size_t)i * C + c], 0.0f); }
};

/* ---- bias ---- */

struct op_bias_add {
    float *out;
    const float *bias;
    int64_t ld;
    int OC;
    __device__ void operator()(int64_t i) const { out[i / OC * ld + i % OC] += bias[i % OC]; }
};

void cuda_bias_add(const cuda_ctx *x, cudaStream_t s, float *out, int64_t ld, const float *bias, int N, int OC) {
    each(x, s, (int64_t)N * OC, op_bias_add{out, bias, ld, OC});
}

void cuda_bias_backward(cudaStream_t s, float *dbias, const float *dout, int N, int OC) {
    colsum(s, dbias, (float *)NULL, N, OC, term_bias{dout, OC});
}

/* ---- embeddings ---- */

/* out = wte[token] + wpe[t]: the sum rounds once, as the CPU's copy-then-add does. */
struct op_embed {
    float *out;
    const int *tokens;
    const float *wte, *wpe;
    int T, C;
    __device__ void operator()(int64_t i) const {
        const int64_t r = i / C, c = i % C;
        float e = wte[(int64_t)tokens[r] * C + c];
        out[i] = wpe ? e + wpe[(r % T) * C + c] : e;
    }
};

void cuda_embed_forward(const cuda_ctx *x, cudaStream_t s, float *out, const int *tokens, const float *wte,
                        const float *wpe, int B, int T, int C) {
    each(x, s, (int64_t)B * T * C, op_embed{out, tokens, wte, wpe, T, C});
}

/* dwte rows of repeated tokens race: atomics. */
struct op_embed_dwte {
    float *dwte;
    const float *dout;
    const int *tokens;
    int C;
    __device__ void operator()(int64_t i) const { atomicAdd(&dwte[(int64_t)tokens[i / C] * C + i % C], dout[i]); }
};

/* dwpe(t, c) adds the rows of every sample at time t in sample order, one after the other:
 * the CPU's additions exactly. */
struct op_embed_dwpe {
    float *dwpe;
    const float *dout;
    int B, T, C;
    __device__ void operator()(int64_t i) const {
        float acc = dwpe[i];
        for (int b = 0; b < B; b++) acc += dout[(int64_t)b * T * C + i];
        dwpe[i] = acc;
    }
};

void cuda_embed_backward(const cuda_ctx *x, cudaStream_t s, float *dwte, float *dwpe, const float *dout,
                         const int *tokens, int B, int T, int C) {
    each(x, s, (int64_t)B * T * C, op_embed_dwte{dwte, dout, tokens, C});
    if (dwpe) each(x, s, (int64_t)T * C, op_embed_dwpe{dwpe, dout, B, T, C});
}

/* ---- LayerNorm and RMSNorm: one block per row ---- */

__global__ void layernorm_forward_f32(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                                      const float *bias, int C, float eps) {
    const size_t row = blockIdx.x;
    const float *xr = inp + row * C;
    float *o = out + row * C;
    float sum = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += xr[c];
    const float m = block_sum(sum) / C;
    float var = 0;   /* two passes: the variance of centered values keeps precision */
    for (int c = threadIdx.x; c < C; c += blockDim.x) var += (xr[c] - m) * (xr[c] - m);
    const float r = 1.0f / sqrtf(block_sum(var) / C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = (xr[c] - m) * r * weight[c] + bias[c];
    if (threadIdx.x == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
}

void cuda_layernorm_forward(cudaStream_t s, float *out, float *mean, float *rstd, const float *inp,
                            const float *weight, const float *bias, int N, int C, float eps) {
    layernorm_forward_f32<<<N, ROW_THREADS, 0, s>>>(out, mean, rstd, inp, weight, bias, C, eps);
    CUDA_CHECK_LAUNCH();
}

/* dinp += rstd (dnorm - mean(dnorm) - norm mean(dnorm norm)), dnorm = dout weight. */
__global__ void layernorm_backward_f32(float *dinp, const float *dout, const float *inp, const float *weight,
                                       const float *mean, const float *rstd, int C) {
    const size_t row = blockIdx.x;
    const float *xr = inp + row * C, *d = dout + row * C;
    float *dx = dinp + row * C;
    const float m = mean[row], r = rstd[row];
    float a = 0, b = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float dn = d[c] * weight[c];
        a += dn;
        b += dn * (xr[c] - m) * r;
    }
    a = block_sum(a) / C;
    b = block_sum(b) / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dx[c] += r * (d[c] * weight[c] - a - (xr[c] - m) * r * b);
}

/* (dout * norm, dout): the LayerNorm weight and bias gradients. */
struct term_layernorm {
    const float *dout, *inp, *mean, *rstd;
    int C;
    __device__ float2 operator()(int i, int c) const {
        size_t k = (size_t)i * C + c;
        return make_float2(dout[k] * (inp[k] - mean[i]) * rstd[i], dout[k]);
    }
};

void cuda_layernorm_backward(cudaStream_t s, float *dinp, float *dweight, float *dbias, const float *dout,
                             const float *inp, const float *weight, const float *mean, const float *rstd, int N,
                             int C) {
    layernorm_backward_f32<<<N, ROW_THREADS, 0, s>>>(dinp, dout, inp, weight, mean, rstd, C);
    CUDA_CHECK_LAUNCH();
    colsum(s, dweight, dbias, N, C, term_layernorm{dout, inp, mean, rstd, C});
}

/* out = inp rstd weight, rstd = 1/sqrt(mean(inp^2) + eps); out may alias inp (each thread
 * rereads only the elements it writes, after the reduction). */
__global__ void rmsnorm_forward_f32(float *out, float *rstd, const float *inp, const float *weight, int C,
                                    float eps) {
    const size_t row = blockIdx.x;
    const float *xr = inp + row * C;
    float *o = out + row * C;
    float ss = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
    const float r = 1.0f / sqrtf(block_sum(ss) / C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = xr[c] * r * weight[c];
    if (threadIdx.x == 0 && rstd) rstd[row] = r;
}

void cuda_rmsnorm_forward(cudaStream_t s, float *out, float *rstd, const float *inp, const float *weight, int N,
                          int C, float eps) {
    rmsnorm_forward_f32<<<N, ROW_THREADS, 0, s>>>(out, rstd, inp, weight, C, eps);
    CUDA_CHECK_LAUNCH();
}

/* dx_c += r w_c d_c - x_c r^3 / C * sum_j d_j w_j x_j. */
__global__ void rmsnorm_backward_f32(float *dinp, const float *dout, const float *inp, const float *weight,
                                     const float *rstd, int C) {
    const size_t row = blockIdx.x;
    const float *xr = inp + row * C, *d = dout + row * C;
    float *dx = dinp + row * C;
    const float r = rstd[row];
    float sum = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += d[c] * weight[c] * xr[c];
    const float k = block_sum(sum) * r * r * r / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dx[c] += r * weight[c] * d[c] - k * xr[c];
}

struct term_rmsnorm {
    const float *dout, *inp, *rstd;
    int C;
    __device__ float2 operator()(int i, int c) const {
        size_t k = (size_t)i * C + c;
        return make_float2(dout[k] * inp[k] * rstd[i], 0.0f);
    }
};

void cuda_rmsnorm_backward(cudaStream_t s, float *dinp, float *dweight, const float *dout, const float *inp,
                           const float *weight, const float *rstd, int N, int C) {
    rmsnorm_backward_f32<<<N, ROW_THREADS, 0, s>>>(dinp, dout, inp, weight, rstd, C);
    CUDA_CHECK_LAUNCH();
    colsum(s, dweight, (float *)NULL, N, C, term_rmsnorm{dout, inp, rstd, C});
}

/* ---- elementwise ---- */

#define GELU_K 0.7978845608028654f   /* sqrt(2/pi) */

struct op_gelu {
    float *out;
    const float *inp;
    __device__ void operator()(int64_t i) const {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_K * (x + 0.044715f * x * x * x)));
    }
};

/* d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx. Writes. */
struct op_gelu_backward {
    float *dinp;
    const float *inp, *dout;
    __device__ void operator()(int64_t i) const {
        float x = inp[i];
        float th = tanhf(GELU_K * (x + 0.044715f * x * x * x));
        float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = dout[i] * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
    }
};

void cuda_gelu_forward(const cuda_ctx *x, cudaStream_t s, float *out, const float *inp, int64_t n) {
    each(x, s, n, op_gelu{out, inp});
}

void cuda_gelu_backward(const cuda_ctx *x, cudaStream_t s, float *dinp, const float *inp, const float *dout,
                        int64_t n) {
    each(x, s, n, op_gelu_backward{dinp, inp, dout});
}

struct op_add {
    float *out;
    const float *a, *b;
    __device__ void operator()(int64_t i) const { out[i] = a[i] + b[i]; }
};

void cuda_add(const cuda_ctx *x, cudaStream_t s, float *out, const float *a, const float *b, int64_t n) {
    each(x, s, n, op_add{out, a, b});
}

struct op_scale {
    float *v;
    float alpha;
    __device__ void operator()(int64_t i) const { v[i] *= alpha; }
};

void cuda_scale(const cuda_ctx *x, cudaStream_t s, float *v, float alpha, int64_t n) { each(x, s, n, op_scale{v, alpha}); }

/* One (row, head, pair) per element: x[i] = x[i] cos - x[i+H2] sin, x[i+H2] = x[i+H2] cos +
 * x[i] sin, with sin's sign flipped by dir = -1 (the backward). */
struct op_rope {
    float *v;
    const float *cos, *sin;
    int T, nh, H2, pos0;
    float dir;
    __device__ void operator()(int64_t e) const {
        const int64_t i = e % H2, rh = e / H2, r = rh / nh;
        const int64_t p = pos0 + r % T;
        float *x1 = v + rh * 2 * H2, *x2 = x1 + H2;
        float a = x1[i], b = x2[i], c = cos[p * H2 + i], sn = dir * sin[p * H2 + i];
        x1[i] = a * c - b * sn;
        x2[i] = b * c + a * sn;
    }
};

void cuda_rope(const cuda_ctx *x, cudaStream_t s, float *v, const float *cos, const float *sin, int N, int T,
               int nh, int HS, int pos0, float dir) {
    each(x, s, (int64_t)N * nh * (HS / 2), op_rope{v, cos, sin, T, nh, HS / 2, pos0, dir});
}

struct op_swiglu {
    float *out;
    const float *gate, *up;
    __device__ void operator()(int64_t i) const {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
};

/* silu'(g) = sig(g) (1 + g (1 - sig(g))); inputs read before outputs are written. */
struct op_swiglu_backward {
    float *dgate, *dup;
    const float *dout, *gate, *up;
    __device__ void operator()(int64_t i) const {
        float g = gate[i], u = up[i], d = dout[i];
        float sg = 1.0f / (1.0f + expf(-g));
        dup[i] = d * g * sg;
        dgate[i] = d * u * sg * (1.0f + g * (1.0f - sg));
    }
};

void cuda_swiglu_forward(const cuda_ctx *x, cudaStream_t s, float *out, const float *gate, const float *up,
                         int64_t n) {
    each(x, s, n, op_swiglu{out, gate, up});
}

void cuda_swiglu_backward(const cuda_ctx *x, cudaStream_t s, float *dgate, float *dup, const float *dout,
                          const float *gate, const float *up, int64_t n) {
    each(x, s, n, op_swiglu_backward{dgate, dup, dout, gate, up});
}

/* out = inp mask / (1-p), the mask dropout_keep's (backend.h): the CPU's exactly. */
struct op_dropout {
    float *out;
    const float *inp;
    float p, sc;
    uint64_t seed;
    __device__ void operator()(int64_t i) const { out[i] = dropout_keep(seed, (uint64_t)i, p) ? inp[i] * sc : 0.0f; }
};

void cuda_dropout(const cuda_ctx *x, cudaStream_t s, float *out, const float *inp, int64_t n, float p,
                  uint64_t seed) {
    each(x, s, n, op_dropout{out, inp, p, 1.0f / (1.0f - p), seed});
}

/* ---- loss ---- */

/* Per row: lse = max + log sum e^(x - max); loss = lse - x[target]. x[target] is read by
 * every thread before the first reduction's barrier, so dlogits may alias logits (each
 * thread then rewrites only the columns it read). The gradient e^(x-max) dloss / sum, minus
 * dloss at the target, is the CPU's d[j] * s - dloss. */
__global__ void softmax_xent_f32(float *losses, float *dlogits, const float *logits, const int *targets, int V,
                                 int64_t Vp, float dloss) {
    const size_t row = blockIdx.x;
    const float *xr = logits + row * Vp;
    float *d = dlogits ? dlogits + row * Vp : NULL;
    const int tgt = targets[row];
    const float xt = tgt >= 0 ? xr[tgt] : 0.0f;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, xr[j]);
    mx = block_reduce(mx, op_max());
    float sum = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float e = expf(xr[j] - mx);
        if (d) d[j] = e;
        sum += e;
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) losses[row] = tgt >= 0 ? mx + logf(sum) - xt : 0.0f;
    if (!d) return;
    const float sc = tgt >= 0 ? dloss / sum : 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = d[j] * sc - (j == tgt ? dloss : 0.0f);
    for (int64_t j = V + threadIdx.x; j < Vp; j += blockDim.x) d[j] = 0.0f;
}

void cuda_softmax_xent(cudaStream_t s, float *losses, float *dlogits, const float *logits, const int *targets,
                       int N, int V, int64_t Vp, float dloss) {
    softmax_xent_f32<<<N, ROW_THREADS * 2, 0, s>>>(losses, dlogits, logits, targets, V, Vp, dloss);
    CUDA_CHECK_LAUNCH();
}

/* ---- reductions into one f64 ---- */

#define SUM_CHUNK 2048   /* elements staged in shared memory per round of sum_f64 */

/* *out += x[0] + x[1] + ... in index order, in double: the block stages a chunk in shared
 * memory (coalesced) and one thread adds it in order, so the bits are the host loop's. */
__global__ void sum_f64_f32(double *out, const float *v, int64_t n) {
    __shared__ float chunk[SUM_CHUNK];
    double acc = *out;
    for (int64_t i0 = 0; i0 < n; i0 += SUM_CHUNK) {
        const int k = n - i0 < SUM_CHUNK ? (int)(n - i0) : SUM_CHUNK;
        for (int j = threadIdx.x; j < k; j += blockDim.x) chunk[j] = v[i0 + j];
        __syncthreads();
        if (threadIdx.x == 0)
            for (int j = 0; j < k; j++) acc += chunk[j];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = acc;
}

void cuda_sum_f64(cudaStream_t s, double *out, const float *v, int64_t n) {
    sum_f64_f32<<<1, ROW_THREADS, 0, s>>>(out, v, n);
    CUDA_CHECK_LAUNCH();
}

#define SQ_BLOCKS 8      /* blocks of the sum-of-squares cluster (the portable cluster size) */
#define SQ_THREADS 1024
#define SQ_UNROLL 8      /* independent loads in flight per thread */

/* *out += sum of x^2 in double, by one cluster of SQ_BLOCKS blocks (one launch, no scratch,
 * deterministic): block r sums the r-th contiguous slice, each thread SQ_UNROLL elements a
 * round at stride blockDim.x, then the block's tree (block_reduce); block 0 adds the blocks'
 * partials in rank order, read from their shared memory (distributed shared memory), and
 * the cluster waits for it before any block exits. One block took 46 ms over GPT-2's 124M
 * gradients on an H200 (a third of the TF32 step): one SM cannot keep enough loads in
 * flight. */
__global__ void __cluster_dims__(SQ_BLOCKS, 1, 1) sum_squares_f32(double *out, const float *v, int64_t n) {
    __shared__ double part;
    cg::cluster_group cluster = cg::this_cluster();
    const int64_t per = (n + SQ_BLOCKS - 1) / SQ_BLOCKS, lo = blockIdx.x * per, hi = lo + per < n ? lo + per : n;
    const int64_t bd = blockDim.x;
    double acc = 0;
    int64_t i = lo + threadIdx.x;
    for (; i + (SQ_UNROLL - 1) * bd < hi; i += SQ_UNROLL * bd) {
        float x[SQ_UNROLL];
#pragma unroll
        for (int u = 0; u < SQ_UNROLL; u++) x[u] = v[i + u * bd];
#pragma unroll
        for (int u = 0; u < SQ_UNROLL; u++) acc += (double)x[u] * x[u];
    }
    for (; i < hi; i += bd) acc += (double)v[i] * v[i];
    acc = block_reduce(acc, op_sum<double>());
    if (threadIdx.x == 0) part = acc;
    cluster.sync();   /* every block's partial is in its shared memory */
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        double sum = 0;
        for (unsigned r = 0; r < SQ_BLOCKS; r++) sum += *cluster.map_shared_rank(&part, r);
        *out += sum;
    }
    cluster.sync();   /* block 0 has read them: the blocks may leave */
}

void cuda_sum_squares(cudaStream_t s, double *out, const float *v, int64_t n) {
    sum_squares_f32<<<SQ_BLOCKS, SQ_THREADS, 0, s>>>(out, v, n);
    CUDA_CHECK_LAUNCH();
}

/* ---- optimizer ---- */

/* torch.optim.AdamW, as cpu_adamw_range: c1, c2 are the bias corrections 1/(1 - beta^t). */
struct op_adamw {
    float *param;
    const float *grad;
    float *m, *v;
    float lr, beta1, beta2, eps, wd, gs, c1, c2;
    __device__ void operator()(int64_t i) const {
        float g = grad[i] * gs;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float p = param[i];
        param[i] = p - lr * (mi * c1 / (sqrtf(vi * c2) + eps) + wd * p);
    }
};

void cuda_adamw(const cuda_ctx *x, cudaStream_t s, float *param, const float *grad, float *m, float *v, int64_t n,
                float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale, float c1,
                float c2) {
    each(x, s, n, op_adamw{param, grad, m, v, lr, beta1, beta2, eps, weight_decay, grad_scale, c1, c2});
}
