/* cuda_paged: the engine's ops on the GPU (backend.h set_rows, paged_attention, resolve_ids, argmax_rows,
 * sample_rows): writing new keys and values into their slots of the block pool, grouped-query
 * attention of a ragged batch of sequences whose keys and values are reached through block
 * tables, and the choice of each logits row's token (greedy, or drawn: the restricting
 * thresholds of top-k and top-p bisected over the row's values, so nothing is sorted). Arrays are f32 or bf16 (the cache's dtype); every kernel
 * computes in f32 and rounds a bf16 output once.
 *
 * paged_attention runs three kernels over the batch:
 *   - decode (sequences with one query, when the shapes fit: rows of at most 32 chunks of 16
 *     bytes, at most DEC_MAX_G query heads per key/value head): one block per (sequence,
 *     key/value head, split) of DEC_WARPS warps. A key's row is spread over a group of lanes,
 *     one 16-byte chunk each, read straight from the cache into registers; every warp takes
 *     its own interleaved steps of keys (DEC_UNROLL keys per lane group, all loaded before the
 *     first is used) and computes every query head of the group on them, so the grouped heads
 *     share each load and every warp works whatever the group size. Each lane group keeps an
 *     online softmax per head; groups merge by shuffles and warps in shared memory at the end.
 *     Contexts are cut into up to `splits` key ranges (flash-decoding) when the batch alone
 *     would not fill the device, each at least a step of keys for every warp (dec_splits: a
 *     context of 150 keys takes 3 of 32; 4 steps on the tensor cores): each split leaves its
 *     unnormalised accumulator, maximum and sum in x->paged_ws, and the last of a head
 *     group's splits to finish merges them in split order (counted in x->paged_done: no
 *     combine kernel). bf16 at HS 64 or
 *     128 with DEC_TC_MIN_G or more heads a group takes a tensor-core variant instead (warps
 *     over tiles of 16 keys, the group's heads as the 8 columns of mma.sync products, the same
 *     splits and end, DEC_TC_WIDE_WARPS warps a block for few sequences; paged_decode_tc_kernel
 *     says why);
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
#include "backend/cuda/cuda_mma.cuh"

typedef __nv_bfloat16 bf16;

enum {
    PAGED_WARPS = 4,             /* warps of either attention kernel's block */
    PAGED_MAX_LANE_DIMS = 8,     /* general kernel: head sizes up to 32 * 8 = 256 */
    DEC_WARPS = 4,               /* decode: warps of a block */
    DEC_UNROLL = 4,              /* decode: keys per lane group per step (GM < 8) */
    DEC_MAX_HS = 256,            /* decode: head sizes up to this (bf16; f32 up to 128) */
    DEC_MAX_G = 8,               /* decode: query heads per key/value head */
    DEC_TC_MIN_G = 4,            /* decode: group sizes from this up run on the tensor cores (bf16) */
    DEC_MAX_SPLITS = 32,
    DEC_BLOCKS_PER_SM = 4,       /* decode: blocks per multiprocessor the splits aim for */
    DEC_SPLIT_STEPS = 1,         /* decode: a split holds at least this many steps of keys per warp */
    DEC_TC_SPLIT_STEPS = 4,      /* the same on the tensor cores (steps of 16 keys); on an H200 (2026-12-02)
                                  * 4 against 1 took a one-stream 8B step from 244.1 to 247.0 tokens/s
                                  * at 128 keys and 234.1 to 236.6 at 2000 (8: 247.1 and 226.8); the
                                  * scalar kernel kept 1 (GPT-2 one stream 1949 against 1890 at 4); a block
                                  * of more warps takes proportionally fewer (the keys of a split stay) */
    DEC_TC_WIDE_WARPS = 8,       /* tensor-core decode blocks while the launch has at most n_sm / 2 of
                                  * them (few sequences): each warp then has fewer tiles, more of them in
                                  * flight at once, and no split merge is added. H200, Llama-3-8B one
                                  * stream (2026-12-03, decode tokens/s, 4 / 8 / 12 warps): 128 keys
                                  * 250.3 / 252.3 / 250.8, 2000 keys 239.2 / 243.1 / 241.7 */
    ARGMAX_THREADS = 256,        /* sample_rows' block */
    ARGMAX_ROW_THREADS = 1024,   /* argmax_rows' block (a row's argmax does not depend on it) */
    ARGMAX_LOADS = 8,            /* argmax: loads a thread has in flight */
};
#define PAGED_FULL 0xffffffffu

static __device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(PAGED_FULL, v, o);
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

/* ---- kv_store: rotary on q and k, then k and v into their cache rows, one launch ---- */

/* W elements of T moved by 16-byte loads and stores (one when W = 16 / sizeof(T)). */
template <class T, int W>
struct alignas(sizeof(T) * W < 16 ? sizeof(T) * W : 16) kv_vec {
    T x[W];
};

/* Row r = blockIdx.x; its work items, each W elements (pairs of q's and k's heads where cos is
 * not NULL, else k's elements; then v's elements), spread over gridDim.y blocks. A rotated
 * pair is rope's (cuda_ops.cu op_rope: the same products, rounded once); k goes to the cache,
 * not back. The launcher picks W > 1 only where every row, offset and table is W-aligned. */
template <class T, int W>
__global__ void kv_store_kernel(T *q, int64_t ldq, const T *k, int64_t ldk, const T *v, int64_t ldv, T *kc,
                                int64_t ldkc, T *vc, int64_t ldvc, const int *idx, const float *cos, const float *sin,
                                int QP, int KD, int H2) {
    typedef kv_vec<T, W> tv;
    typedef kv_vec<float, W> fv;
    pdl_release();   /* the decode attention after it may start */
    const int64_t r = blockIdx.x;
    const int slot = idx[r];
    pdl_wait();   /* launched early (recorded in a graph): q, k and v are the product's ahead */
    const int nq = cos ? QP / W : 0, nk = (cos ? KD / 2 : KD) / W, nv = KD / W;
    for (int e = blockIdx.y * blockDim.x + threadIdx.x; e < nq + nk + nv; e += gridDim.y * blockDim.x) {
        if (e >= nq && slot < 0) return;   /* a padding row: only its q rotates */
        if (e < nq || (cos && e < nq + nk)) {
            const bool isq = e < nq;
            const int p = (isq ? e : e - nq) * W, i = p % H2, off = (p / H2) * 2 * H2 + i;
            const T *x1 = isq ? q + r * ldq + off : k + r * ldk + off;
            const tv a = *(const tv *)x1, b = *(const tv *)(x1 + H2);
            const fv c = *(const fv *)(cos + r * H2 + i), sn = *(const fv *)(sin + r * H2 + i);
            tv y0, y1;
#pragma unroll
            for (int j = 0; j < W; j++) {
                const float aj = to_f32(a.x[j]), bj = to_f32(b.x[j]);
                y0.x[j] = from_f32<T>(aj * c.x[j] - bj * sn.x[j]);
                y1.x[j] = from_f32<T>(bj * c.x[j] + aj * sn.x[j]);
            }
            T *y = isq ? q + r * ldq + off : kc + (int64_t)slot * ldkc + off;
            *(tv *)y = y0;
            *(tv *)(y + H2) = y1;
        } else if (e < nq + nk) {
            const int d = (e - nq) * W;
            *(tv *)(kc + (int64_t)slot * ldkc + d) = *(const tv *)(k + r * ldk + d);
        } else {
            const int d = (e - nq - nk) * W;
            *(tv *)(vc + (int64_t)slot * ldvc + d) = *(const tv *)(v + r * ldv + d);
        }
    }
}

/* kv_store_kernel over N rows at vector width W; launched early (cuda_launch) where recorded in
 * a graph with at most half as many blocks as multiprocessors (a one-stream step: the products
 * ahead have ended, so its few blocks start on a free machine). */
template <class T, int W>
static void kv_store_launch(cudaStream_t s, cuda_lp q, int64_t ldq, cuda_lp k, int64_t ldk, cuda_lp v, int64_t ldv,
                            cuda_lp kc, int64_t ldkc, cuda_lp vc, int64_t ldvc, const int *idx, const float *cos,
                            const float *sin, int N, int QD, int KD, int H2, int n_sm) {
    const int items = ((cos ? QD / 2 + KD / 2 : KD) + KD) / W, threads = 128, by = (items + threads - 1) / threads;
    const bool early = (int64_t)N * by <= n_sm / 2 && cuda_recording(s);   /* a few blocks, recorded */
    cuda_launch(kv_store_kernel<T, W>, dim3((unsigned)N, (unsigned)by), dim3(threads), 0, s, early, (T *)q.p, ldq,
                (const T *)k.p, ldk, (const T *)v.p, ldv, (T *)kc.p, ldkc, (T *)vc.p, ldvc, idx, cos, sin, QD / 2, KD,
                H2);
}

void cuda_kv_store(const cuda_ctx *x, cudaStream_t s, cuda_lp q, int64_t ldq, cuda_lp k, int64_t ldk, cuda_lp v,
                   int64_t ldv, cuda_lp kc, int64_t ldkc, cuda_lp vc, int64_t ldvc, const int *idx, const float *cos,
                   const float *sin, int N, int QD, int KD, int HS) {
    if (N == 0) return;
    SK_ASSERT(q.bf16 == k.bf16 && k.bf16 == v.bf16 && v.bf16 == kc.bf16 && kc.bf16 == vc.bf16);
    const int H2 = HS / 2, W = q.bf16 ? 8 : 4;   /* 16 bytes */
    const uintptr_t ptrs = (uintptr_t)q.p | (uintptr_t)k.p | (uintptr_t)v.p | (uintptr_t)kc.p | (uintptr_t)vc.p |
                           (uintptr_t)cos | (uintptr_t)sin;
    const int64_t lds = ldq | ldk | ldv | ldkc | ldvc | QD | KD | (cos ? H2 : 0);
    const bool wide = ptrs % 16 == 0 && lds % W == 0;
    const int n_sm = x->n_sm;
    if (q.bf16 && wide)
        kv_store_launch<bf16, 8>(s, q, ldq, k, ldk, v, ldv, kc, ldkc, vc, ldvc, idx, cos, sin, N, QD, KD, H2, n_sm);
    else if (q.bf16)
        kv_store_launch<bf16, 1>(s, q, ldq, k, ldk, v, ldv, kc, ldkc, vc, ldvc, idx, cos, sin, N, QD, KD, H2, n_sm);
    else if (wide)
        kv_store_launch<float, 4>(s, q, ldq, k, ldk, v, ldv, kc, ldkc, vc, ldvc, idx, cos, sin, N, QD, KD, H2, n_sm);
    else
        kv_store_launch<float, 1>(s, q, ldq, k, ldk, v, ldv, kc, ldkc, vc, ldvc, idx, cos, sin, N, QD, KD, H2, n_sm);
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

/* ---- decode kernel: warps over interleaved key steps, grouped heads, splits ---- */

/* A 16-byte chunk of a cache row as f32: 4 f32 or 8 bf16 values. */
static __device__ __forceinline__ void chunk_f32(const uint4 &u, float (&f)[4]) {
    f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y), f[2] = __uint_as_float(u.z), f[3] = __uint_as_float(u.w);
}
static __device__ __forceinline__ void chunk_f32(const uint4 &u, float (&f)[8]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 p = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w[k]));
        f[2 * k] = p.x, f[2 * k + 1] = p.y;
    }
}

/* The merge of two online-softmax states (m, l, acc), maxima in log2 units: (m, l, acc) becomes
 * their union. m = -inf (no key seen) weighs 0. */
template <int E>
static __device__ __forceinline__ void softmax_merge(float &m, float &l, float (&acc)[E], float mo, float lo,
                                                     const float (&acco)[E]) {
    const float M = fmaxf(m, mo), Ms = M == -INFINITY ? 0.0f : M;
    const float a = exp2f(m - Ms), b = exp2f(mo - Ms);
    m = M;
    l = l * a + lo * b;
#pragma unroll
    for (int e = 0; e < E; e++) acc[e] = acc[e] * a + acco[e] * b;
}

/* The splits a decode at position ctx - 1 with window W uses of the `splits` it was launched
 * with: every split at least `steps` steps of `step` keys for each warp, so a short
 * context runs on few blocks and merges few partials whatever the launch (a graph recorded
 * for a batch size replays at every context). */
static __device__ __forceinline__ int dec_splits(int ctx, int W, int step, int steps, int warps, int splits) {
    const int pos = ctx - 1, lo = W > 0 && pos - W + 1 > 0 ? pos - W + 1 : 0, keys = step * warps * steps;
    const int want = (ctx - lo + keys - 1) / keys;
    return want < splits ? (want > 1 ? want : 1) : splits;
}

/* The keys [k0, k1) of split sp (of ns, dec_splits') of a decode at position ctx - 1 with
 * window W: whole steps of `step` keys of the visible ones, the splits in order; k0 >= k1 for
 * a split past the end. */
static __device__ __forceinline__ void dec_range(int ctx, int W, int step, int ns, int sp, int &k0, int &k1) {
    const int pos = ctx - 1, lo = W > 0 && pos - W + 1 > 0 ? pos - W + 1 : 0;
    const int nsteps = (ctx - lo + step - 1) / step, per = (nsteps + ns - 1) / ns;
    k0 = lo + sp * per * step;
    k1 = ctx < k0 + per * step ? ctx : k0 + per * step;
}

static_assert(DEC_MAX_SPLITS <= 32, "dec_merge weighs a head's splits on the lanes of one warp");

/* Merges the ns splits of the heads kvh*G .. kvh*G+G-1 of sequence i (row r0) from their
 * partials in ws (head h's split s at (i * NH + h) * stride + s rows of HS + 2 floats: acc, m,
 * l; maxima in log2 units) into their out rows: a warp per head weighs its splits on its
 * lanes (b_s = 2^(m_s - max) / sum of l_s b_s; an empty split, m = -inf, weighs 0), then the
 * block's threads sum the channels over the splits in split order, so the result does not
 * depend on which block merges. Loads through L2 (__ldcg): other blocks wrote them. */
template <class T>
static __device__ void dec_merge(T *out, int64_t ldo, int i, int r0, int kvh, int G, int NH, int HS, int ns,
                                 int stride, const float *ws) {
    __shared__ float weight[DEC_MAX_G][DEC_MAX_SPLITS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float *head0 = ws + (int64_t)(i * NH + kvh * G) * stride * (HS + 2);
    for (int g = warp; g < G; g += (int)blockDim.x >> 5) {
        const float *p = head0 + ((int64_t)g * stride + lane) * (HS + 2);
        const float m = lane < ns ? __ldcg(p + HS) : -INFINITY, l = lane < ns ? __ldcg(p + HS + 1) : 0.0f;
        float M = m;
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(PAGED_FULL, M, o));
        const float b = exp2f(m - M);   /* split 0 has keys: M is finite */
        weight[g][lane] = b / warp_sum(l * b);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * HS; e += blockDim.x) {
        const int g = e / HS, d = e % HS;
        const float *p = head0 + (int64_t)g * stride * (HS + 2) + d;
        float o = 0.0f;
#pragma unroll 8
        for (int s = 0; s < ns; s++) o += __ldcg(p + s * (HS + 2)) * weight[g][s];
        out[(int64_t)r0 * ldo + (int64_t)(kvh * G + g) * HS + d] = from_f32<T>(o);
    }
}

/* A decode block's end, after a barrier: the warps' states in red (warp w's G rows of HS + 2
 * floats from red + w * wstride: acc, m, l; m = -inf, l = 0 for a warp that saw no key) merge
 * in warp order into the out rows of the heads kvh*G .. kvh*G+G-1 of sequence i (row r0) or,
 * with ns > 1 splits (SPLIT kernels only), into split sp's partials in ws (row stride
 * `splits` per head); then the last block of the splits of (i, kvh) to finish (counted in
 * done[i * NKV + kvh], which it sets back to 0 for the next launch) merges them (dec_merge):
 * no kernel of its own, as flash-decoding's combine would be. */
template <bool SPLIT, class T>
static __device__ void dec_finish(const float *red, int wstride, T *out, int64_t ldo, int i, int r0, int kvh, int G,
                                  int NH, int NKV, int HS, int ns, int splits, int sp, float *ws, unsigned *done) {
    const bool whole = !SPLIT || ns == 1;
    const int nw = (int)blockDim.x >> 5;
    for (int e = threadIdx.x; e < G * HS; e += blockDim.x) {
        const int g = e / HS, d = e % HS, h = kvh * G + g;
        float M = -INFINITY, L = 0.0f, o = 0.0f;
        for (int w = 0; w < nw; w++) M = fmaxf(M, red[w * wstride + g * (HS + 2) + HS]);
        const float Ms = M == -INFINITY ? 0.0f : M;
        for (int w = 0; w < nw; w++) {
            const float *r = red + w * wstride + g * (HS + 2), b = exp2f(r[HS] - Ms);
            L += r[HS + 1] * b;
            o += r[d] * b;
        }
        if (whole) {
            out[(int64_t)r0 * ldo + (int64_t)h * HS + d] = from_f32<T>(o / L);
        } else {   /* an empty split leaves m = -inf, l = 0: weight 0 in the merge */
            float *part = ws + ((int64_t)(i * NH + h) * splits + sp) * (HS + 2);
            part[d] = o;
            if (d == 0) part[HS] = M, part[HS + 1] = L;
        }
    }
    if constexpr (SPLIT) {
        if (whole) return;
        __shared__ bool merges;
        __threadfence();   /* this block's partials visible to the block that merges */
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned *count = done + i * NKV + kvh;
            merges = atomicAdd(count, 1u) == (unsigned)ns - 1;
            if (merges) *count = 0;
        }
        __syncthreads();
        if (!merges) return;
        __threadfence();
        dec_merge(out, ldo, i, r0, kvh, G, NH, HS, ns, splits, ws);
    }
}

/* Block (sequence i, key/value head kvh, split sp) of DEC_WARPS warps; GM >= G query heads of
 * the group (heads G..GM-1 compute on zero queries and are not written). A key row of HS
 * elements is CH = HS * sizeof(T) / 16 chunks of 16 bytes; a group of CL (CH rounded up to
 * a power of two) lanes holds one key, lane c its chunk c, so a warp takes KP = 32 / CL keys
 * at once and U = DEC_UNROLL (half that for GM = 8) times that per step, all loads of a step
 * issued before their first use. Warp w takes the steps w, w + DEC_WARPS, ... of the block's
 * key range (the split's: a whole number of steps, empty for a split past the end); each lane
 * group keeps its own online softmax for every head (scores in log2 units: q is scaled by
 * scale * log2(e)), the groups merge by shuffles at the end and the warps in shared memory
 * (DEC_WARPS * G rows of HS + 2 floats: acc, m, l). */
template <class T, int GM, bool SPLIT>
__global__ void __launch_bounds__(DEC_WARPS * 32)
paged_decode_kernel(T *out, int64_t ldo, const T *q, int64_t ldq, const T *kc, int64_t ldk, const T *vc, int64_t ldv,
                    const int *seqs, const int *tables, int MB, int BS, int NH, int NKV, int HS, int W, float scale,
                    int splits, float *ws, unsigned *done) {
    constexpr int E = 16 / sizeof(T);                          /* elements per chunk */
    constexpr int U = GM >= 8 ? DEC_UNROLL / 2 : DEC_UNROLL;   /* eight heads: registers for occupancy */
    pdl_release();   /* the product after it may start loading its weights (cuda_gemv.cu) */
    const int i = blockIdx.x, kvh = blockIdx.y, sp = blockIdx.z;
    const int r0 = seqs[3 * i], nq = seqs[3 * i + 1], ctx = seqs[3 * i + 2];
    if (nq != 1) return;   /* the general kernel's (the whole block leaves together) */
    const int G = NH / NKV, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, CH = HS / E;
    int CL = 1;
    while (CL < CH) CL <<= 1;
    const int KP = 32 / CL, c = lane & (CL - 1), kg = lane / CL, step = KP * U;
    const bool has_chunk = c < CH;
    const int ns = SPLIT ? dec_splits(ctx, W, step, DEC_SPLIT_STEPS, DEC_WARPS, splits) : 1;
    if (sp >= ns) return;   /* a split this context does not use (the whole block leaves together) */
    int k0, k1;
    dec_range(ctx, W, step, ns, sp, k0, k1);

    float qv[GM][E], m[GM], l[GM], acc[GM][E];
    const T *qr = q + (int64_t)r0 * ldq + (int64_t)kvh * G * HS + c * E;
#pragma unroll
    for (int g = 0; g < GM; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) {
            qv[g][e] = g < G && has_chunk ? to_f32(qr[g * HS + e]) * scale * 1.4426950408889634f : 0.0f;
            acc[g][e] = 0.0f;
        }
    }
    const int *table = tables + (int64_t)i * MB;
    const T *kb = kc + (int64_t)kvh * HS + c * E, *vb = vc + (int64_t)kvh * HS + c * E;
    for (int base = k0 + warp * step; base < k1; base += DEC_WARPS * step) {
        /* every table entry of the step first, then every row: no load waits on another of
         * its step but its own entry. Keys past k1 read key k1 - 1 again (a cached row,
         * finite) and weigh 0 below. */
        int tu[U], page[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            tu[u] = min(base + u * KP + kg, k1 - 1);
            page[u] = __ldg(table + tu[u] / BS);
        }
        uint4 kr[U], vr[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t row = (int64_t)page[u] * BS + tu[u] % BS;
            kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
            if (has_chunk) {
                kr[u] = __ldg(reinterpret_cast<const uint4 *>(kb + row * ldk));
                vr[u] = __ldg(reinterpret_cast<const uint4 *>(vb + row * ldv));
            }
        }
        float s[U][GM];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[E];
            chunk_f32(kr[u], kf);
#pragma unroll
            for (int g = 0; g < GM; g++) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < E; e++) d += qv[g][e] * kf[e];
                s[u][g] = d;
            }
        }
        for (int o = 1; o < CL; o <<= 1)   /* the group's lanes sum their chunks' parts */
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int g = 0; g < GM; g++) s[u][g] += __shfl_xor_sync(PAGED_FULL, s[u][g], o);
#pragma unroll
        for (int g = 0; g < GM; g++) {
            float mn = m[g];
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (base + u * KP + kg >= k1) s[u][g] = -INFINITY;
                mn = fmaxf(mn, s[u][g]);
            }
            const float ms = mn == -INFINITY ? 0.0f : mn, corr = exp2f(m[g] - ms);
            m[g] = mn;
            l[g] *= corr;
#pragma unroll
            for (int e = 0; e < E; e++) acc[g][e] *= corr;
#pragma unroll
            for (int u = 0; u < U; u++) {
                s[u][g] = exp2f(s[u][g] - ms);   /* now the weight p */
                l[g] += s[u][g];
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float vf[E];
            chunk_f32(vr[u], vf);
#pragma unroll
            for (int g = 0; g < GM; g++)
#pragma unroll
                for (int e = 0; e < E; e++) acc[g][e] += s[u][g] * vf[e];
        }
    }
    for (int o = CL; o < 32; o <<= 1)   /* the warp's groups merge (lanes of one chunk) */
#pragma unroll
        for (int g = 0; g < GM; g++) {
            float acco[E];
#pragma unroll
            for (int e = 0; e < E; e++) acco[e] = __shfl_xor_sync(PAGED_FULL, acc[g][e], o);
            const float mo = __shfl_xor_sync(PAGED_FULL, m[g], o), lo2 = __shfl_xor_sync(PAGED_FULL, l[g], o);
            softmax_merge(m[g], l[g], acc[g], mo, lo2, acco);
        }
    extern __shared__ float dec_red[];   /* (DEC_WARPS, G, HS + 2) */
    if (kg == 0 && has_chunk)
#pragma unroll
        for (int g = 0; g < GM; g++) {
            if (g >= G) break;
            float *r = dec_red + (warp * G + g) * (HS + 2);
#pragma unroll
            for (int e = 0; e < E; e++) r[c * E + e] = acc[g][e];
            if (c == 0) r[HS] = m[g], r[HS + 1] = l[g];
        }
    __syncthreads();
    dec_finish<SPLIT>(dec_red, G * (HS + 2), out, ldo, i, r0, kvh, G, NH, NKV, HS, ns, splits, sp, ws, done);
}

/* w = the 32-bit words of the NW / 4 16-byte chunks p, p + cs, ... of bf16 values, in order
 * (a word's low half is the lower column). */
template <int NW>
static __device__ __forceinline__ void dec_words(uint32_t (&w)[NW], const uint4 *p, int cs) {
#pragma unroll
    for (int c = 0; c < NW / 4; c++) {
        const uint4 u = p[cs * c];
        w[4 * c] = u.x, w[4 * c + 1] = u.y, w[4 * c + 2] = u.z, w[4 * c + 3] = u.w;
    }
}

/* The cache row of the key at place o (< 2 BS) from the start of a block whose first row is
 * p0, the next block's being p1. */
static __device__ __forceinline__ int64_t dec_row(int64_t p0, int64_t p1, int BS, int o) {
    return o < BS ? p0 + o : p1 + (o - BS);
}

/* The decode kernel on the tensor cores (bf16, HS 64 or 128, DEC_TC_MIN_G <= G <= 8, BS >=
 * 16): block (sequence i, key/value head kvh, split sp) of WARPS warps (DEC_WARPS, or
 * DEC_TC_WIDE_WARPS for a launch of few blocks); warp w takes the tiles of 16 keys w,
 * w + WARPS, ... of the split's range (dec_range, steps of 16). Per
 * tile, with g = l / 4, qd = l % 4 of lane l (cuda_mma.cuh's fragments):
 *   S^T (16 keys x 8 heads) = K (16 x HS) Q^T (HS x 8 heads, heads >= G zero): A = K, lane
 *     (g, qd) holding keys g and g + 8, B = Q^T. The channel order of the k dimension is free
 *     (a sum), so lane qd takes the 16-byte chunks qd, qd + 4, ... of both rows (the four
 *     lanes of a row read 64 adjacent bytes a copy) and its words 2kc, 2kc + 1 feed product kc
 *     as k-slots 2qd + {0,1}, 2qd + 8 + {0,1}, the same for K and Q;
 *   the online softmax per head (scores c2 * S in log2 units): lane (g, qd) holds heads 2qd,
 *     2qd + 1 of keys g, g + 8; the maxima reduce over g (3 shuffles per head per tile);
 *   O^T (HS x 8 heads) += V^T (HS x 16 keys) P^T (16 keys x 8 heads): P^T as B comes from the
 *     scores' C fragments by one movmatrix transpose per 8 keys; V^T as A wants two adjacent
 *     keys 2qd, 2qd + 1 (and + 8) of one channel in a register, so lane (g, qd) takes chunks
 *     g, g + 8, ... of those four key rows (eight lanes read a 128-byte run) and pairs their
 *     halves with byte permutes: product t's rows g and g + 8 are the channels
 *     8 (g + 8 (t / 4)) + 2 (t % 4) and the one after.
 * Loads: each lane copies its chunks of a tile (cp.async, 256 bytes at HS 128) into its own
 * slots of shared memory and reads them back itself (no barrier), the next tile's copies
 * issued before this one is used: two tiles in flight a warp, whatever the compiler's
 * schedule (with plain loads it starts the first products before the V loads are issued).
 * Why: the scalar kernel's lane does G dot products of 8 channels per key, G butterfly sums
 * over 16 lanes and G * 8 multiply-adds for P V: at G = 4 about 150 instructions per 32 bytes a
 * lane loads, which held it near 2.2 TB/s; here a warp spends about 420 instructions (the
 * copies and their addresses, 2 HS/16 products, the softmax on 4 scores a lane, the byte
 * permutes, the rescale of its O^T fragment) per 16 keys of K and V (8 KB at HS 128): some 20
 * bytes an instruction against 7, the products on the tensor cores costing the same at G = 8.
 * P is rounded to bf16 for the product (l sums it in f32), as the prefill kernel does. Keys
 * past k1 read key k1 - 1 again and weigh 0; tile row 0 is always visible, so a tile's maxima
 * are finite. At the end each warp's G rows of acc, m, l overwrite its own staging. */
template <int HD, bool SPLIT, int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
paged_decode_tc_kernel(bf16 *out, int64_t ldo, const bf16 *q, int64_t ldq, const bf16 *kc, int64_t ldk, const bf16 *vc,
                       int64_t ldv, const int *seqs, const int *tables, int MB, int BS, int NH, int NKV, int HS, int W,
                       float scale, int splits, float *ws, unsigned *done) {
    constexpr int NK = HD / 32, NV = HD / 64, NT = HD / 16;   /* K and V chunks of a lane's row; products */
    constexpr int NC = 2 * NK + 4 * NV;                       /* chunks a lane stages a tile */
    pdl_release();   /* the product after it may start loading its weights (cuda_gemv.cu) */
    const int i = blockIdx.x, kvh = blockIdx.y, sp = blockIdx.z;
    const int r0 = seqs[3 * i], nq = seqs[3 * i + 1], ctx = seqs[3 * i + 2];
    if (nq != 1) return;   /* the general kernel's (the whole block leaves together) */
    const int G = NH / NKV, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, qd = lane & 3;
    /* DEC_TC_SPLIT_STEPS's keys a split, whatever the block's warps */
    constexpr int SPLIT_STEPS = DEC_TC_SPLIT_STEPS * DEC_WARPS / WARPS > 0 ? DEC_TC_SPLIT_STEPS * DEC_WARPS / WARPS : 1;
    const int ns = SPLIT ? dec_splits(ctx, W, 16, SPLIT_STEPS, WARPS, splits) : 1;
    if (sp >= ns) return;   /* a split this context does not use (the whole block leaves together) */
    int k0, k1;
    dec_range(ctx, W, 16, ns, sp, k0, k1);
    pdl_wait();   /* launched early (recorded in a graph): q and the newest cache rows are kv_store's */
    uint32_t qw[4 * NK] = {};   /* head g's chunks qd, qd + 4, ...: B of the score products */
    if (g < G) dec_words(qw, reinterpret_cast<const uint4 *>(q + (int64_t)r0 * ldq + (int64_t)(kvh * G + g) * HD) + qd,
                         4);
    const float c2 = scale * 1.4426950408889634f;
    float o[NT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int t = 0; t < NT; t++) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    const int *table = tables + (int64_t)i * MB;
    const bf16 *kb = kc + (int64_t)kvh * HD, *vb = vc + (int64_t)kvh * HD;
    extern __shared__ uint4 dec_stage[];   /* (WARPS, 2 tiles, NC, 32 lanes) */
    uint4 *stage = dec_stage + warp * 2 * NC * 32 + lane;
    /* Stages the tile at `base` in buffer buf: this lane's chunks of keys g, g + 8 (K) and 2qd,
     * 2qd + 1, 2qd + 8, 2qd + 9 (V), chunk c at stage[(buf * NC + c) * 32]; keys past k1 - 1
     * copy that one again. One group of copies (an empty one past the end). */
    const int bmax = (k1 - 1) / BS;   /* the block of the range's last key */
    auto issue = [&](int base, int buf) {
        if (base < k1) {
            /* BS >= 16: the tile's keys lie in base's block b0 and the next one (if any) */
            const int b0 = base / BS, o0 = base - b0 * BS, last = k1 - 1 - base;
            const int64_t p0 = (int64_t)__ldg(table + b0) * BS, p1 = (int64_t)__ldg(table + min(b0 + 1, bmax)) * BS;
            int64_t rk[2], rv[4];
#pragma unroll
            for (int r = 0; r < 2; r++) rk[r] = dec_row(p0, p1, BS, o0 + min(g + 8 * r, last));
#pragma unroll
            for (int r = 0; r < 4; r++) rv[r] = dec_row(p0, p1, BS, o0 + min(2 * qd + (r & 1) + 8 * (r >> 1), last));
            uint4 *st = stage + buf * NC * 32;
#pragma unroll
            for (int r = 0; r < 2; r++)
#pragma unroll
                for (int c = 0; c < NK; c++)
                    cp_async16(st + (r * NK + c) * 32, kb + rk[r] * ldk + (4 * c + qd) * 8, true);
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int c = 0; c < NV; c++)
                    cp_async16(st + (2 * NK + r * NV + c) * 32, vb + rv[r] * ldv + (8 * c + g) * 8, true);
        }
        cp_async_commit();
    };
    issue(k0 + warp * 16, 0);
    for (int base = k0 + warp * 16, buf = 0; base < k1; base += WARPS * 16, buf ^= 1) {
        /* the next tile's copies start, then this one's (every lane reads back only what it
         * staged itself: no barrier) */
        issue(base + WARPS * 16, buf ^ 1);
        cp_async_wait<1>();
        const int last = k1 - 1 - base;
        uint32_t kw[2][4 * NK], vw[4][4 * NV];
#pragma unroll
        for (int r = 0; r < 2; r++) dec_words(kw[r], stage + (buf * NC + r * NK) * 32, 32);
#pragma unroll
        for (int r = 0; r < 4; r++) dec_words(vw[r], stage + (buf * NC + 2 * NK + r * NV) * 32, 32);
        float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};   /* (key g, heads 2qd, 2qd + 1), (key g + 8, same) */
#pragma unroll
        for (int k = 0; k < NT; k++) {
            const uint32_t a[4] = {kw[0][2 * k], kw[1][2 * k], kw[0][2 * k + 1], kw[1][2 * k + 1]};
            mma_bf16_16816(sc, a, qw[2 * k], qw[2 * k + 1]);
        }
#pragma unroll
        for (int j = 0; j < 2; j++) {   /* head 2qd + j: scores sc[j] (key g), sc[2 + j] (key g + 8) */
            const float s0 = g <= last ? c2 * sc[j] : -INFINITY, s1 = g + 8 <= last ? c2 * sc[2 + j] : -INFINITY;
            float mx = fmaxf(s0, s1);
#pragma unroll
            for (int x = 4; x < 32; x <<= 1) mx = fmaxf(mx, __shfl_xor_sync(PAGED_FULL, mx, x));
            const float mn = fmaxf(m[j], mx), corr = exp2f(m[j] - mn);   /* m = -inf at first: corr 0 */
            m[j] = mn;
            sc[j] = exp2f(s0 - mn);
            sc[2 + j] = exp2f(s1 - mn);
            l[j] = l[j] * corr + sc[j] + sc[2 + j];
#pragma unroll
            for (int t = 0; t < NT; t++) o[t][j] *= corr, o[t][2 + j] *= corr;
        }
        const uint32_t p0 = movm_trans(pack_bf16x2(sc[0], sc[1])), p1 = movm_trans(pack_bf16x2(sc[2], sc[3]));
#pragma unroll
        for (int t = 0; t < NT; t++) {   /* rows g, g + 8: the low and high halves of word t */
            const uint32_t a[4] = {__byte_perm(vw[0][t], vw[1][t], 0x5410), __byte_perm(vw[0][t], vw[1][t], 0x7632),
                                   __byte_perm(vw[2][t], vw[3][t], 0x5410), __byte_perm(vw[2][t], vw[3][t], 0x7632)};
            mma_bf16_16816(o[t], a, p0, p1);
        }
    }
    /* the warp's G rows of HD + 2 floats (acc, m, l) over its own staging, read back by now
     * (the copies left pending are an empty group) */
    float *red = reinterpret_cast<float *>(dec_stage + warp * 2 * NC * 32);
#pragma unroll
    for (int j = 0; j < 2; j++) {
#pragma unroll
        for (int x = 4; x < 32; x <<= 1) l[j] += __shfl_xor_sync(PAGED_FULL, l[j], x);
        if (2 * qd + j >= G) continue;
        float *r = red + (2 * qd + j) * (HD + 2);
#pragma unroll
        for (int t = 0; t < NT; t++) {   /* word t: chunk g + 8 (t / 4), channels 2 (t % 4), + 1 */
            const int ch = 8 * (g + 8 * (t / 4)) + 2 * (t % 4);
            r[ch] = o[t][j];
            r[ch + 1] = o[t][2 + j];
        }
        if (g == 0) r[HD] = m[j], r[HD + 1] = l[j];
    }
    __syncthreads();
    dec_finish<SPLIT>(reinterpret_cast<const float *>(dec_stage), 2 * NC * 32 * 4, out, ldo, i, r0, kvh, G, NH, NKV, HS,
                      ns, splits, sp, ws, done);
}

size_t cuda_paged_done_count(int n_sm) { return (size_t)DEC_BLOCKS_PER_SM * (size_t)n_sm; }

size_t cuda_paged_ws_floats(int n_sm) {
    /* splits > 1 only while S * NKV < DEC_BLOCKS_PER_SM * n_sm, and then S * NKV * splits is
     * under twice that */
    return (size_t)2 * DEC_BLOCKS_PER_SM * (size_t)n_sm * DEC_MAX_G * (DEC_MAX_HS + 2);
}

/* The decode kernel's split count for S sequences of NKV heads: enough blocks for
 * DEC_BLOCKS_PER_SM per multiprocessor (a block's warps each keep a few loads in flight; it
 * takes several blocks to cover the memory's latency), within the workspace. */
static int paged_splits(const cuda_ctx *x, int S, int NH, int NKV, int HS) {
    const int blocks = S * NKV, want = DEC_BLOCKS_PER_SM * x->n_sm;
    int splits = blocks >= want ? 1 : (want + blocks - 1) / blocks;
    if (splits > DEC_MAX_SPLITS) splits = DEC_MAX_SPLITS;
    while (splits > 1 && (size_t)S * NH * splits * (HS + 2) > cuda_paged_ws_floats(x->n_sm)) splits--;
    return splits;
}

/* The tensor-core decode kernel's shared memory: a warp's two tiles of 16 K and 16 V rows of
 * HS bf16. */
static size_t dec_tc_smem_bytes(int HS, int warps) { return (size_t)warps * 2 * 32 * HS * sizeof(bf16); }

/* The tensor-core decode kernel of WARPS warps for head size HS (64 or 128), with or without
 * splits. */
template <int WARPS> static decltype(&paged_decode_tc_kernel<64, true, WARPS>) dec_tc_kernel(int HS, bool split) {
    return HS == 64 ? (split ? paged_decode_tc_kernel<64, true, WARPS> : paged_decode_tc_kernel<64, false, WARPS>)
                    : (split ? paged_decode_tc_kernel<128, true, WARPS> : paged_decode_tc_kernel<128, false, WARPS>);
}

/* Whether the tensor-core decode kernel takes these shapes: bf16, HS 64 or 128, G in
 * [DEC_TC_MIN_G, DEC_MAX_G], blocks of 16 rows or more, q 16-byte aligned (paged_launch's
 * decode test has checked k and v). */
template <class T>
static bool paged_decode_tc_fits(const T *q, int64_t ldq, int BS, int NH, int NKV, int HS) {
    const int G = NH / NKV;
    return std::is_same<T, bf16>::value && (HS == 64 || HS == 128) && G >= DEC_TC_MIN_G && G <= DEC_MAX_G && BS >= 16 &&
           (uintptr_t)q % 16 == 0 && (ldq * (int64_t)sizeof(T)) % 16 == 0;
}

/* The decode sequences (one query) of paged_attention, on the tensor-core kernel (tc: a shape
 * paged_decode_tc_fits takes) or the scalar one; either merges its own splits. */
template <class T>
static void paged_decode(const cuda_ctx *x, cudaStream_t s, bool tc, T *out, int64_t ldo, const T *q, int64_t ldq,
                         const T *kc, int64_t ldk, const T *vc, int64_t ldv, const int *seqs, const int *tables, int S,
                         int MB, int BS, int NH, int NKV, int HS, int W, float scale) {
    const int G = NH / NKV, splits = paged_splits(x, S, NH, NKV, HS);
    size_t smem = sizeof(float) * DEC_WARPS * (size_t)G * (HS + 2);
    const dim3 grid((unsigned)S, (unsigned)NKV, (unsigned)splits);
    const bool split = splits > 1;   /* the kernels without the partials and their merge otherwise */
    void (*kernel)(T *, int64_t, const T *, int64_t, const T *, int64_t, const T *, int64_t, const int *, const int *,
                   int, int, int, int, int, int, float, int, float *, unsigned *) =
        G == 1   ? (split ? paged_decode_kernel<T, 1, true> : paged_decode_kernel<T, 1, false>)
        : G == 2 ? (split ? paged_decode_kernel<T, 2, true> : paged_decode_kernel<T, 2, false>)
        : G <= 4 ? (split ? paged_decode_kernel<T, 4, true> : paged_decode_kernel<T, 4, false>)
                 : (split ? paged_decode_kernel<T, 8, true> : paged_decode_kernel<T, 8, false>);
    int warps = DEC_WARPS;
    bool early = false;
    if constexpr (std::is_same<T, bf16>::value)
        if (tc) {
            const bool wide = S * NKV <= x->n_sm / 2;   /* DEC_TC_WIDE_WARPS */
            early = wide && cuda_recording(s);
            warps = wide ? DEC_TC_WIDE_WARPS : DEC_WARPS;
            kernel = wide ? dec_tc_kernel<DEC_TC_WIDE_WARPS>(HS, split) : dec_tc_kernel<DEC_WARPS>(HS, split);
            smem = dec_tc_smem_bytes(HS, warps);
            CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        }
    /* the tensor-core kernel waits for the kernel ahead after reading its sequence: its launch of
     * few blocks, recorded, goes early, like kv_store's ahead of it (2026-12-03, 8B one stream: the
     * two +0.95%, 242.6 tokens/s against 240.3) */
    cuda_launch(kernel, grid, dim3(warps * 32), smem, s, early, out, ldo, q, ldq, kc, ldk, vc, ldv, seqs,
                tables, MB, BS, NH, NKV, HS, W, scale, splits, x->paged_ws, x->paged_done);
}

template <class T>
static void paged_launch(const cuda_ctx *x, cudaStream_t s, T *out, int64_t ldo, const T *q, int64_t ldq, const T *kc,
                         int64_t ldk, const T *vc, int64_t ldv, const int *seqs, const int *tables, int N, int S,
                         int MB, int BS, int NH, int NKV, int HS, int W) {
    const float scale = 1.0f / sqrtf((float)HS);
    const int G = NH / NKV, es = (int)sizeof(T);
    const bool decode = HS * es <= 32 * 16 && (HS * es) % 16 == 0 && G <= DEC_MAX_G && (ldk * es) % 16 == 0 &&
                        (ldv * es) % 16 == 0 && (uintptr_t)kc % 16 == 0 && (uintptr_t)vc % 16 == 0;
    if (decode)
        paged_decode(x, s, paged_decode_tc_fits(q, ldq, BS, NH, NKV, HS), out, ldo, q, ldq, kc, ldk, vc, ldv, seqs,
                     tables, S, MB, BS, NH, NKV, HS, W, scale);
    if (decode && N == S) return;   /* every sequence has one query (each has at least one) */
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

/* ---- resolve_ids ---- */

__global__ void resolve_ids_kernel(int *ids, int n, const int *src) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        if (ids[i] < 0) ids[i] = src[-ids[i] - 1];
}

void cuda_resolve_ids(cudaStream_t s, int *ids, int n, const int *src) {
    if (n <= 0) return;
    const int blocks = (n + 255) / 256 < 64 ? (n + 255) / 256 : 64;
    resolve_ids_kernel<<<blocks, 256, 0, s>>>(ids, n, src);
    CUDA_CHECK_LAUNCH();
}

/* ---- argmax_rows and sample_rows: one block per row (ARGMAX_ROW_THREADS, ARGMAX_THREADS) ---- */

/* The better of two (score, column) candidates: the larger score, the smaller column among
 * equals; column V stands for none. */
static __device__ __forceinline__ void pick_better(float &bv, int &bi, float ov, int oi, int V) {
    if (oi < V && (bi == V || ov > bv || (ov == bv && oi < bi))) {
        bv = ov;
        bi = oi;
    }
}

/* The block's best candidate (pick_better), returned to every thread (any block size of
 * whole warps). */
static __device__ int block_best(float bv, int bi, int V) {
    __shared__ float sv[32];
    __shared__ int si[32];
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
    for (int w = 1; w < (int)blockDim.x / 32; w++) pick_better(bv, bi, sv[w], si[w], V);
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

/* The first maximum of row(V). Each thread takes its columns in order, ARGMAX_LOADS loads in
 * flight (one at a time, a one-stream step's 128256 logits took 0.2 ms). */
static __device__ int row_argmax(const float *row, int V) {
    float bv = -INFINITY;
    int bi = V, c = threadIdx.x;
    const int B = blockDim.x;
    for (; c + (ARGMAX_LOADS - 1) * B < V; c += ARGMAX_LOADS * B) {
        float v[ARGMAX_LOADS];
#pragma unroll
        for (int u = 0; u < ARGMAX_LOADS; u++) v[u] = row[c + u * B];
#pragma unroll
        for (int u = 0; u < ARGMAX_LOADS; u++) pick_better(bv, bi, v[u], c + u * B, V);
    }
    for (; c < V; c += B) pick_better(bv, bi, row[c], c, V);
    return block_best(bv, bi, V);
}

__global__ void __launch_bounds__(ARGMAX_ROW_THREADS) argmax_rows_kernel(int *ids, const float *x, int64_t ld, int V) {
    const int best = row_argmax(x + (int64_t)blockIdx.x * ld, V);
    if (threadIdx.x == 0) ids[blockIdx.x] = best < V ? best : 0;
}

void cuda_argmax_rows(cudaStream_t s, int *ids, const float *x, int64_t ld, int R, int V) {
    if (R == 0) return;
    SK_ASSERT(V > 0);
    argmax_rows_kernel<<<(unsigned)R, ARGMAX_ROW_THREADS, 0, s>>>(ids, x, ld, V);
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
