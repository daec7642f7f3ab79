/* cuda_paged: the engine's ops on the GPU (backend.h set_rows, paged_attention, argmax_rows,
 * sample_rows): writing new keys and values into their slots of the block pool, grouped-query
 * attention of a ragged batch of sequences whose keys and values are reached through block
 * tables, and the choice of each logits row's token (greedy, or drawn: the restricting
 * thresholds of top-k and top-p bisected over the row's values, so nothing is sorted). Arrays are f32 or bf16 (the cache's dtype); every kernel
 * computes in f32 and rounds a bf16 output once.
 *
 * paged_attention runs three kernels over the batch:
 *   - decode (sequences with one query, when the shapes fit: HS <= DEC_MAX_HS, rows of 16-byte
 *     units, at most DEC_MAX_G query heads per key/value head): one block per (sequence,
 *     key/value head, split). The block stages DEC_TILE positions of keys and values in shared
 *     memory with 16-byte loads (rows padded by one word, so a lane per key reads without bank
 *     conflicts) and every query head of the group reads them from there: the grouped heads
 *     share each load. A warp keeps one head's online softmax; lane j scores key j of the
 *     tile. Long contexts are cut into `splits` ranges of tiles (flash-decoding) when the
 *     batch alone would not fill the device: each split leaves its unnormalised accumulator,
 *     maximum and sum in x->paged_ws, and a combine kernel merges them in split order;
 *   - prefill on the tensor cores (cuda_paged_tc.cu: sequences with more than one query, bf16,
 *     HS 64 or 128, rows 16-byte aligned);
 *   - general (every other sequence: other prefill chunks, and decodes the decode kernel cannot take):
 *     one block per (sequence, head); its warps take the sequence's queries in turn and walk
 *     the visible keys one at a time with an online softmax (each lane HS/32 channels).
 * Scores, masking, the window and the scale are attention_forward's; nothing is allocated,
 * nothing is written outside the named rows. */
#include <math.h>

#include <type_traits>

#include "backend/cuda/cuda_impl.cuh"

typedef __nv_bfloat16 bf16;

enum {
    PAGED_WARPS = 4,             /* warps of either attention kernel's block */
    PAGED_MAX_LANE_DIMS = 8,     /* general kernel: head sizes up to 32 * 8 = 256 */
    DEC_TILE = 32,               /* decode: positions staged per step (one per lane) */
    DEC_MAX_HS = 128,            /* decode: head sizes up to this (lanes hold HS/32 channels) */
    DEC_LANE_DIMS = DEC_MAX_HS / 32,
    DEC_MAX_G = 8,               /* decode: query heads per key/value head */
    DEC_HEADS_PER_WARP = DEC_MAX_G / PAGED_WARPS,
    DEC_MAX_SPLITS = 32,
    ARGMAX_THREADS = 256,
};
#define PAGED_FULL 0xffffffffu

static __device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(PAGED_FULL, v, o);
    return v;
}
static __device__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(PAGED_FULL, v, o));
    return v;
}

/* ---- set_rows ---- */

template <class T>
__global__ void set_rows_kernel(T *dst, int64_t ldd, const T *src, int64_t lds, const int *idx, int n, int D) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < (int64_t)n * D;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = e / D, d = e % D;
        if (idx[i] >= 0) dst[(int64_t)idx[i] * ldd + d] = src[i * lds + d];   /* < 0: a padding row */
    }
}

void cuda_set_rows(const cuda_ctx *x, cudaStream_t s, cuda_lp dst, int64_t ldd, cuda_lp src, int64_t lds,
                   const int *idx, int n, int D) {
    if (n == 0 || D == 0) return;
    SK_ASSERT(dst.bf16 == src.bf16);
    const int64_t total = (int64_t)n * D;
    int blocks = (int)((total + 255) / 256);
    if (blocks > 8 * x->n_sm) blocks = 8 * x->n_sm;
    if (dst.bf16) set_rows_kernel<<<blocks, 256, 0, s>>>((bf16 *)dst.p, ldd, (const bf16 *)src.p, lds, idx, n, D);
    else set_rows_kernel<<<blocks, 256, 0, s>>>((float *)dst.p, ldd, (const float *)src.p, lds, idx, n, D);
    CUDA_CHECK_LAUNCH();
}

/* ---- general kernel: a warp per query ---- */

/* Block (sequence i, head h); skip_decode and skip_prefill: the sequences of one query, or of
 * more, are another kernel's. */

template <class T>
__global__ void __launch_bounds__(PAGED_WARPS * 32)
paged_general_kernel(T *out, int64_t ldo, const T *q, int64_t ldq, const T *kc, int64_t ldk, const T *vc, int64_t ldv,
                     const int *seqs, const int *tables, int MB, int BS, int NH, int NKV, int HS, int W, float scale,
                     bool skip_decode, bool skip_prefill) {
    const int i = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r0 = seqs[3 * i], nq = seqs[3 * i + 1], ctx = seqs[3 * i + 2];
    if (skip_decode && nq == 1) return;    /* the decode kernel's */
    if (skip_prefill && nq > 1) return;    /* the tensor-core prefill kernel's */
    const int64_t koff = (int64_t)(h / (NH / NKV)) * HS;
    const int *table = tables + (int64_t)i * MB;
    for (int j = warp; j < nq; j += PAGED_WARPS) {
        const int pos = ctx - nq + j, s0 = W > 0 && pos - W + 1 > 0 ? pos - W + 1 : 0;
        const T *qr = q + (int64_t)(r0 + j) * ldq + (int64_t)h * HS;
        float qv[PAGED_MAX_LANE_DIMS], acc[PAGED_MAX_LANE_DIMS];
#pragma unroll
        for (int c = 0; c < PAGED_MAX_LANE_DIMS; c++) {
            const int d = lane + 32 * c;
            qv[c] = d < HS ? to_f32(qr[d]) : 0.0f;
            acc[c] = 0.0f;
        }
        float m = -INFINITY, l = 0.0f;
        for (int t = s0; t <= pos; t++) {
            const int64_t row = (int64_t)table[t / BS] * BS + t % BS;
            const T *kr = kc + row * ldk + koff, *vr = vc + row * ldv + koff;
            float dot = 0.0f;
#pragma unroll
            for (int c = 0; c < PAGED_MAX_LANE_DIMS; c++) {
                const int d = lane + 32 * c;
                if (d < HS) dot += qv[c] * to_f32(kr[d]);
            }
            const float score = warp_sum(dot) * scale, mn = fmaxf(m, score);
            const float corr = expf(m - mn), p = expf(score - mn);   /* m = -inf at first: corr 0 */
            l = l * corr + p;
#pragma unroll
            for (int c = 0; c < PAGED_MAX_LANE_DIMS; c++) {
                const int d = lane + 32 * c;
                if (d < HS) acc[c] = acc[c] * corr + p * to_f32(vr[d]);
            }
            m = mn;
        }
        T *orow = out + (int64_t)(r0 + j) * ldo + (int64_t)h * HS;
#pragma unroll
        for (int c = 0; c < PAGED_MAX_LANE_DIMS; c++) {
            const int d = lane + 32 * c;
            if (d < HS) orow[d] = from_f32<T>(acc[c] / l);
        }
    }
}

/* ---- decode kernel: shared tiles, grouped heads, splits ---- */

/* The dot product of q(HS) (f32, shared) with one staged key row (HS elements of T). */
static __device__ __forceinline__ float row_dot(const float *q, const uint32_t *row, int HS, float) {
    const float *k = (const float *)row;
    float dot = 0.0f;
    for (int d = 0; d < HS; d++) dot += q[d] * k[d];
    return dot;
}
static __device__ __forceinline__ float row_dot(const float *q, const uint32_t *row, int HS, bf16) {
    float dot = 0.0f;
    for (int w = 0; w < HS / 2; w++) {
        const float2 k = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(row + w));
        dot += q[2 * w] * k.x + q[2 * w + 1] * k.y;
    }
    return dot;
}

/* Block (sequence i, key/value head kvh, split sp); shared memory: qs (G, HS) f32, then the
 * key and value tiles, DEC_TILE rows of RW words each (HS elements of T and one pad word). */
template <class T>
__global__ void __launch_bounds__(PAGED_WARPS * 32)
paged_decode_kernel(T *out, int64_t ldo, const T *q, int64_t ldq, const T *kc, int64_t ldk, const T *vc, int64_t ldv,
                    const int *seqs, const int *tables, int MB, int BS, int NH, int NKV, int HS, int W, float scale,
                    int splits, float *ws) {
    const int i = blockIdx.x, kvh = blockIdx.y, sp = blockIdx.z;
    const int r0 = seqs[3 * i], nq = seqs[3 * i + 1], ctx = seqs[3 * i + 2];
    if (nq != 1) return;   /* the general kernel's (the whole block leaves together) */
    const int G = NH / NKV, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int pos = ctx - 1, lo = W > 0 && pos - W + 1 > 0 ? pos - W + 1 : 0, hi = ctx;
    const int ntiles = (hi - lo + DEC_TILE - 1) / DEC_TILE, per = (ntiles + splits - 1) / splits;
    const int tile0 = sp * per, tile1 = ntiles < tile0 + per ? ntiles : tile0 + per;
    const int RW = HS * (int)sizeof(T) / 4 + 1, CPR = HS * (int)sizeof(T) / 16;
    extern __shared__ float4 dec_smem[];
    float *qs = (float *)dec_smem;
    uint32_t *ks = (uint32_t *)(qs + G * HS), *vs = ks + DEC_TILE * RW;
    const int *table = tables + (int64_t)i * MB;

    for (int e = threadIdx.x; e < G * HS; e += blockDim.x)
        qs[e] = to_f32(q[(int64_t)r0 * ldq + (int64_t)kvh * G * HS + e]);
    float m[DEC_HEADS_PER_WARP], l[DEC_HEADS_PER_WARP], acc[DEC_HEADS_PER_WARP][DEC_LANE_DIMS];
#pragma unroll
    for (int hh = 0; hh < DEC_HEADS_PER_WARP; hh++) {
        m[hh] = -INFINITY;
        l[hh] = 0.0f;
#pragma unroll
        for (int c = 0; c < DEC_LANE_DIMS; c++) acc[hh][c] = 0.0f;
    }
    for (int tile = tile0; tile < tile1; tile++) {
        const int base = lo + tile * DEC_TILE;   /* < hi: the tile has at least one key */
        __syncthreads();   /* the last tile is consumed (and qs written, the first time) */
        for (int e = threadIdx.x; e < 2 * DEC_TILE * CPR; e += blockDim.x) {
            const bool isv = e >= DEC_TILE * CPR;
            const int e2 = isv ? e - DEC_TILE * CPR : e, j = e2 / CPR, c = e2 % CPR, t = base + j;
            uint4 u = make_uint4(0, 0, 0, 0);
            if (t < hi) {
                const int64_t row = (int64_t)table[t / BS] * BS + t % BS;
                const T *src = (isv ? vc + row * ldv : kc + row * ldk) + (int64_t)kvh * HS;
                u = reinterpret_cast<const uint4 *>(src)[c];
            }
            uint32_t *dst = (isv ? vs : ks) + j * RW + 4 * c;
            dst[0] = u.x;
            dst[1] = u.y;
            dst[2] = u.z;
            dst[3] = u.w;
        }
        __syncthreads();
#pragma unroll
        for (int hh = 0; hh < DEC_HEADS_PER_WARP; hh++) {
            const int hg = warp + hh * PAGED_WARPS;
            if (hg >= G) break;   /* uniform over the warp */
            const int t = base + lane;
            const float sc = t < hi ? row_dot(qs + hg * HS, ks + lane * RW, HS, T()) * scale : -INFINITY;
            const float mn = fmaxf(m[hh], warp_max(sc));   /* finite: lane 0's key is visible */
            const float corr = expf(m[hh] - mn), p = expf(sc - mn);
            l[hh] = l[hh] * corr + warp_sum(p);
#pragma unroll
            for (int c = 0; c < DEC_LANE_DIMS; c++) acc[hh][c] *= corr;
            for (int j = 0; j < DEC_TILE; j++) {
                const float pj = __shfl_sync(PAGED_FULL, p, j);
                const T *vr = (const T *)(vs + j * RW);
#pragma unroll
                for (int c = 0; c < DEC_LANE_DIMS; c++) {
                    const int d = lane + 32 * c;
                    if (d < HS) acc[hh][c] += pj * to_f32(vr[d]);
                }
            }
            m[hh] = mn;
        }
    }
#pragma unroll
    for (int hh = 0; hh < DEC_HEADS_PER_WARP; hh++) {
        const int hg = warp + hh * PAGED_WARPS;
        if (hg >= G) break;
        const int h = kvh * G + hg;
        if (splits == 1) {
            T *orow = out + (int64_t)r0 * ldo + (int64_t)h * HS;
#pragma unroll
            for (int c = 0; c < DEC_LANE_DIMS; c++) {
                const int d = lane + 32 * c;
                if (d < HS) orow[d] = from_f32<T>(acc[hh][c] / l[hh]);
            }
        } else {   /* an empty split leaves m = -inf, l = 0: weight 0 in the combine */
            float *part = ws + ((int64_t)(i * NH + h) * splits + sp) * (HS + 2);
#pragma unroll
            for (int c = 0; c < DEC_LANE_DIMS; c++) {
                const int d = lane + 32 * c;
                if (d < HS) part[d] = acc[hh][c];
            }
            if (lane == 0) {
                part[HS] = m[hh];
                part[HS + 1] = l[hh];
            }
        }
    }
}

/* Merges the splits of (sequence i, head h) into its out row. */
template <class T>
__global__ void paged_combine_kernel(T *out, int64_t ldo, const int *seqs, int NH, int HS, int splits, const float *ws) {
    const int i = blockIdx.x, h = blockIdx.y;
    if (seqs[3 * i + 1] != 1) return;
    const float *part = ws + (int64_t)(i * NH + h) * splits * (HS + 2);
    float M = -INFINITY, L = 0.0f;
    for (int s = 0; s < splits; s++) M = fmaxf(M, part[s * (HS + 2) + HS]);
    for (int s = 0; s < splits; s++) L += part[s * (HS + 2) + HS + 1] * expf(part[s * (HS + 2) + HS] - M);
    T *orow = out + (int64_t)seqs[3 * i] * ldo + (int64_t)h * HS;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < splits; s++) o += part[s * (HS + 2) + d] * expf(part[s * (HS + 2) + HS] - M);
        orow[d] = from_f32<T>(o / L);
    }
}

size_t cuda_paged_ws_floats(int n_sm) {
    /* splits > 1 only while S * NKV < 2 * n_sm, and then S * NKV * splits < 4 * n_sm */
    return (size_t)4 * (size_t)n_sm * DEC_MAX_G * (DEC_MAX_HS + 2);
}

/* The decode kernel's split count for S sequences of NKV heads: enough blocks for two per
 * multiprocessor, within the workspace. */
static int paged_splits(const cuda_ctx *x, int S, int NH, int NKV, int HS) {
    const int blocks = S * NKV;
    int splits = blocks >= 2 * x->n_sm ? 1 : (2 * x->n_sm + blocks - 1) / blocks;
    if (splits > DEC_MAX_SPLITS) splits = DEC_MAX_SPLITS;
    while (splits > 1 && (size_t)S * NH * splits * (HS + 2) > cuda_paged_ws_floats(x->n_sm)) splits--;
    return splits;
}

template <class T>
static void paged_launch(const cuda_ctx *x, cudaStream_t s, T *out, int64_t ldo, const T *q, int64_t ldq, const T *kc,
                         int64_t ldk, const T *vc, int64_t ldv, const int *seqs, const int *tables, int N, int S,
                         int MB, int BS, int NH, int NKV, int HS, int W) {
    const float scale = 1.0f / sqrtf((float)HS);
    const int G = NH / NKV, es = (int)sizeof(T);
    const bool decode = HS <= DEC_MAX_HS && (HS * es) % 16 == 0 && G <= DEC_MAX_G && (ldk * es) % 16 == 0 &&
                        (ldv * es) % 16 == 0 && (uintptr_t)kc % 16 == 0 && (uintptr_t)vc % 16 == 0;
    if (decode) {
        const int splits = paged_splits(x, S, NH, NKV, HS), RW = HS * es / 4 + 1;
        const size_t smem = sizeof(float) * (size_t)G * HS + 2 * sizeof(uint32_t) * DEC_TILE * (size_t)RW;
        paged_decode_kernel<T><<<dim3((unsigned)S, (unsigned)NKV, (unsigned)splits), PAGED_WARPS * 32, smem, s>>>(
            out, ldo, q, ldq, kc, ldk, vc, ldv, seqs, tables, MB, BS, NH, NKV, HS, W, scale, splits, x->paged_ws);
        CUDA_CHECK_LAUNCH();
        if (splits > 1) {
            paged_combine_kernel<T><<<dim3((unsigned)S, (unsigned)NH), DEC_MAX_HS, 0, s>>>(out, ldo, seqs, NH, HS, splits,
                                                                                          x->paged_ws);
            CUDA_CHECK_LAUNCH();
        }
    }
    bool prefill_tc = false;
    if constexpr (std::is_same<T, bf16>::value) {
        prefill_tc = cuda_paged_prefill_tc_fits(out, ldo, q, ldq, kc, ldk, vc, ldv, HS);
        if (prefill_tc)
            cuda_paged_prefill_tc(s, out, ldo, q, ldq, kc, ldk, vc, ldv, seqs, tables, N, S, MB, BS, NH, NKV, HS, W);
    }
    paged_general_kernel<T><<<dim3((unsigned)S, (unsigned)NH), PAGED_WARPS * 32, 0, s>>>(
        out, ldo, q, ldq, kc, ldk, vc, ldv, seqs, tables, MB, BS, NH, NKV, HS, W, scale, decode, prefill_tc);
    CUDA_CHECK_LAUNCH();
}

void cuda_paged_attention(const cuda_ctx *x, cudaStream_t s, cuda_lp out, int64_t ldo, cuda_lp q, int64_t ldq,
                          cuda_lp kc, int64_t ldk, cuda_lp vc, int64_t ldv, const int *seqs, const int *tables, int N,
                          int S, int MB, int BS, int NH, int NKV, int HS, int W) {
    if (S == 0) return;
    SK_ASSERT(HS > 0 && HS <= 32 * PAGED_MAX_LANE_DIMS && NH % NKV == 0 && BS > 0);
    SK_ASSERT(out.bf16 == q.bf16 && q.bf16 == kc.bf16 && kc.bf16 == vc.bf16);
    if (q.bf16)
        paged_launch(x, s, (bf16 *)out.p, ldo, (const bf16 *)q.p, ldq, (const bf16 *)kc.p, ldk, (const bf16 *)vc.p, ldv,
                     seqs, tables, N, S, MB, BS, NH, NKV, HS, W);
    else
        paged_launch(x, s, (float *)out.p, ldo, (const float *)q.p, ldq, (const float *)kc.p, ldk, (const float *)vc.p,
                     ldv, seqs, tables, N, S, MB, BS, NH, NKV, HS, W);
}

/* ---- argmax_rows and sample_rows: one block of ARGMAX_THREADS per row ---- */

/* The better of two (score, column) candidates: the larger score, the smaller column among
 * equals; column V stands for none. */
static __device__ __forceinline__ void pick_better(float &bv, int &bi, float ov, int oi, int V) {
    if (oi < V && (bi == V || ov > bv || (ov == bv && oi < bi))) {
        bv = ov;
        bi = oi;
    }
}

/* The block's best candidate (pick_better), returned to every thread. */
static __device__ int block_best(float bv, int bi, int V) {
    __shared__ float sv[ARGMAX_THREADS / 32];
    __shared__ int si[ARGMAX_THREADS / 32];
    for (int o = 16; o > 0; o >>= 1)
        pick_better(bv, bi, __shfl_xor_sync(PAGED_FULL, bv, o), __shfl_xor_sync(PAGED_FULL, bi, o), V);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();   /* an earlier call's readers are done */
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    bv = sv[0];
    bi = si[0];
    for (int w = 1; w < ARGMAX_THREADS / 32; w++) pick_better(bv, bi, sv[w], si[w], V);
    return bi;
}

/* The block's sum (or maximum) of v, returned to every thread, in a fixed order. */
static __device__ float block_sum(float v, bool max) {
    __shared__ float part[ARGMAX_THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(PAGED_FULL, v, o);
        v = max ? fmaxf(v, w) : v + w;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = part[0];
    for (int w = 1; w < ARGMAX_THREADS / 32; w++) v = max ? fmaxf(v, part[w]) : v + part[w];
    return v;
}

/* The first maximum of row(V). */
static __device__ int row_argmax(const float *row, int V) {
    float bv = -INFINITY;
    int bi = V;
    for (int c = threadIdx.x; c < V; c += blockDim.x) pick_better(bv, bi, row[c], c, V);
    return block_best(bv, bi, V);
}

__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_rows_kernel(int *ids, const float *x, int64_t ld, int V) {
    const int best = row_argmax(x + (int64_t)blockIdx.x * ld, V);
    if (threadIdx.x == 0) ids[blockIdx.x] = best < V ? best : 0;
}

void cuda_argmax_rows(cudaStream_t s, int *ids, const float *x, int64_t ld, int R, int V) {
    if (R == 0) return;
    SK_ASSERT(V > 0);
    argmax_rows_kernel<<<(unsigned)R, ARGMAX_THREADS, 0, s>>>(ids, x, ld, V);
    CUDA_CHECK_LAUNCH();
}

/* Bisections of a threshold over the row's values (sample_rows' top-k and top-p). */
#define SAMPLE_BISECT 40

/* Tokens of row(V) at or above t (count) or their weight exp((x - mx) / T) (mass). */
static __device__ float row_above(const float *row, int V, float t, bool mass, float mx, float T) {
    float acc = 0.0f;
    for (int c = threadIdx.x; c < V; c += blockDim.x)
        if (row[c] >= t) acc += mass ? expf((row[c] - mx) / T) : 1.0f;
    return block_sum(acc, false);
}

/* The largest threshold in [lo, hi] (bisected) that keeps at least `want` (count or mass). */
static __device__ float row_threshold(const float *row, int V, float lo, float hi, float want, bool mass, float mx,
                                      float T) {
    for (int k = 0; k < SAMPLE_BISECT; k++) {
        const float mid = 0.5f * (lo + hi);
        if (mid <= lo || mid >= hi) break;   /* adjacent floats */
        if (row_above(row, V, mid, mass, mx, T) >= want) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* backend_sample_row's draw for row blockIdx.x. */
__global__ void __launch_bounds__(ARGMAX_THREADS)
sample_rows_kernel(int *ids, const float *x, int64_t ld, int V, const backend_sample_row *opts) {
    const float *row = x + (int64_t)blockIdx.x * ld;
    const backend_sample_row o = opts[blockIdx.x];
    int best;
    if (o.temperature <= 0) {
        best = row_argmax(row, V);
    } else {
        const float T = o.temperature;
        float mx = -INFINITY, mn = INFINITY;
        for (int c = threadIdx.x; c < V; c += blockDim.x) mx = fmaxf(mx, row[c]), mn = fminf(mn, row[c]);
        mx = block_sum(mx, true);
        mn = -block_sum(-mn, true);
        float t = mn;
        if (o.min_p > 0) t = fmaxf(t, mx + T * logf(o.min_p));
        if (o.top_k > 0 && o.top_k < V) t = fmaxf(t, row_threshold(row, V, t, mx, (float)o.top_k, false, mx, T));
        if (o.top_p < 1) {
            const float total = row_above(row, V, t, true, mx, T);
            t = row_threshold(row, V, t, mx, o.top_p * total, true, mx, T);
        }
        float bv = -INFINITY;
        int bi = V;
        for (int c = threadIdx.x; c < V; c += blockDim.x)
            if (row[c] >= t) {
                const float u = backend_sample_uniform(o.seed, o.counter, (uint32_t)c);
                pick_better(bv, bi, (row[c] - mx) / T - logf(-logf(u)), c, V);
            }
        best = block_best(bv, bi, V);
    }
    if (threadIdx.x == 0) ids[blockIdx.x] = best < V ? best : 0;
}

void cuda_sample_rows(cudaStream_t s, int *ids, const float *x, int64_t ld, int R, int V,
                      const backend_sample_row *opts) {
    if (R == 0) return;
    SK_ASSERT(V > 0);
    sample_rows_kernel<<<(unsigned)R, ARGMAX_THREADS, 0, s>>>(ids, x, ld, V, opts);
    CUDA_CHECK_LAUNCH();
}
