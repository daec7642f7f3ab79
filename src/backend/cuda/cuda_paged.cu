/* cuda_paged: the engine's two ops on the GPU (backend.h set_rows, paged_attention): writing
 * new keys and values into their slots of the block pool, and grouped-query attention of a
 * ragged batch of sequences whose keys and values are reached through block tables.
 *
 * paged_attention: one block per (sequence, head); its warps take the sequence's queries in
 * turn, and a warp walks the query's visible keys one at a time with an online softmax (each
 * lane holds HS/32 of the query, the accumulator and every key and value row). Decode (one
 * query per sequence) is one warp reading its context once: memory-bound, as it should be.
 * Scores, masking, the window and the scale are attention_forward's (backend.h); nothing is
 * allocated, nothing is written outside the named rows. */
#include <math.h>

#include "backend/cuda/cuda_impl.cuh"

enum { PAGED_WARPS = 4, PAGED_MAX_LANE_DIMS = 8 };   /* head sizes up to 32 * 8 = 256 */

__global__ void set_rows_f32(float *dst, int64_t ldd, const float *src, int64_t lds, const int *idx, int n, int D) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < (int64_t)n * D;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = e / D, d = e % D;
        dst[(int64_t)idx[i] * ldd + d] = src[i * lds + d];
    }
}

void cuda_set_rows(const cuda_ctx *x, cudaStream_t s, float *dst, int64_t ldd, const float *src, int64_t lds,
                   const int *idx, int n, int D) {
    if (n == 0 || D == 0) return;
    const int64_t total = (int64_t)n * D;
    int blocks = (int)((total + 255) / 256);
    if (blocks > 8 * x->n_sm) blocks = 8 * x->n_sm;
    set_rows_f32<<<blocks, 256, 0, s>>>(dst, ldd, src, lds, idx, n, D);
    CUDA_CHECK_LAUNCH();
}

static __device__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void __launch_bounds__(PAGED_WARPS * 32)
paged_attention_f32(float *out, int64_t ldo, const float *q, int64_t ldq, const float *kc, int64_t ldk,
                    const float *vc, int64_t ldv, const int *seqs, const int *tables, int MB, int BS, int NH,
                    int NKV, int HS, int W, float scale) {
    const int i = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r0 = seqs[3 * i], nq = seqs[3 * i + 1], ctx = seqs[3 * i + 2];
    const int64_t koff = (int64_t)(h / (NH / NKV)) * HS;
    const int *table = tables + (int64_t)i * MB;
    for (int j = warp; j < nq; j += PAGED_WARPS) {
        const int pos = ctx - nq + j, s0 = W > 0 && pos - W + 1 > 0 ? pos - W + 1 : 0;
        const float *qr = q + (int64_t)(r0 + j) * ldq + (int64_t)h * HS;
        float qv[PAGED_MAX_LANE_DIMS], acc[PAGED_MAX_LANE_DIMS];
#pragma unroll
        for (int c = 0; c < PAGED_MAX_LANE_DIMS; c++) {
            const int d = lane + 32 * c;
            qv[c] = d < HS ? qr[d] : 0.0f;
            acc[c] = 0.0f;
        }
        float m = -INFINITY, l = 0.0f;
        for (int t = s0; t <= pos; t++) {
            const int64_t row = (int64_t)table[t / BS] * BS + t % BS;
            const float *kr = kc + row * ldk + koff, *vr = vc + row * ldv + koff;
            float dot = 0.0f;
#pragma unroll
            for (int c = 0; c < PAGED_MAX_LANE_DIMS; c++) {
                const int d = lane + 32 * c;
                if (d < HS) dot += qv[c] * kr[d];
            }
            const float score = warp_sum(dot) * scale, mn = fmaxf(m, score);
            const float corr = expf(m - mn), p = expf(score - mn);   /* m = -inf at first: corr 0 */
            l = l * corr + p;
#pragma unroll
            for (int c = 0; c < PAGED_MAX_LANE_DIMS; c++) {
                const int d = lane + 32 * c;
                if (d < HS) acc[c] = acc[c] * corr + p * vr[d];
            }
            m = mn;
        }
        float *orow = out + (int64_t)(r0 + j) * ldo + (int64_t)h * HS;
#pragma unroll
        for (int c = 0; c < PAGED_MAX_LANE_DIMS; c++) {
            const int d = lane + 32 * c;
            if (d < HS) orow[d] = acc[c] / l;
        }
    }
}

void cuda_paged_attention(cudaStream_t s, float *out, int64_t ldo, const float *q, int64_t ldq, const float *kc,
                          int64_t ldk, const float *vc, int64_t ldv, const int *seqs, const int *tables, int S,
                          int MB, int BS, int NH, int NKV, int HS, int W) {
    if (S == 0) return;
    SK_ASSERT(HS > 0 && HS <= 32 * PAGED_MAX_LANE_DIMS && NH % NKV == 0 && BS > 0);
    paged_attention_f32<<<dim3((unsigned)S, (unsigned)NH), PAGED_WARPS * 32, 0, s>>>(
        out, ldo, q, ldq, kc, ldk, vc, ldv, seqs, tables, MB, BS, NH, NKV, HS, W, 1.0f / sqrtf((float)HS));
    CUDA_CHECK_LAUNCH();
}
