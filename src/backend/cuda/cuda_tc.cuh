/* backend/cuda: the fragment-level pieces the tensor-core attention kernels share (the
 * training kernels of cuda_attention_tc.cu, paged prefill in cuda_paged_tc.cu): operand
 * fragments from shared-memory tiles, the strip products, masks and the online softmax step.
 * A warp owns 16-row strips of a tile; a lane's fragment rows are l/4 and l/4 + 8
 * (cuda_mma.cuh's layouts). Blocks are TC_WARPS warps. */
#ifndef SKEIN_CUDA_TC_CUH
#define SKEIN_CUDA_TC_CUH

#include "backend/cuda/cuda_attention.cuh"
#include "backend/cuda/cuda_mma.cuh"

#include <math.h>

#define TC_WARPS 4
#define TC_THREADS (32 * TC_WARPS)
#define TC_LOG2E 1.4426950408889634f

/* a[i][kc] = the A fragments of the 16 x 16 blocks (16i, 16kc) of the row-major tile at As
 * (row stride ld), i < RM, kc < KC. */
template <int RM, int KC>
__device__ __forceinline__ void tc_frag_a(uint32_t (&a)[RM][KC][4], const __nv_bfloat16 *As, int ld) {
    const int lane = threadIdx.x % 32;
    const __nv_bfloat16 *p = As + ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8;
#pragma unroll
    for (int i = 0; i < RM; i++)
#pragma unroll
        for (int kc = 0; kc < KC; kc++) ldsm_x4(a[i][kc], p + i * 16 * ld + kc * 16);
}

/* acc[i][j] += A_i B for the strips A_i = a[i] (16 x 16*KC) and B (16*KC x 8*NT) in shared
 * memory at Bs, row stride ld: stored n-major (rows n of 16*KC values k: S = Q K^T with K's
 * rows as stored) or, with K_MAJOR, k-major (rows k of 8*NT values n: O += P V). */
template <int RM, int NT, int KC, bool K_MAJOR>
__device__ __forceinline__ void tc_mma(float (&acc)[RM][NT][4], const uint32_t (&a)[RM][KC][4], const __nv_bfloat16 *Bs,
                                       int ld) {
    static_assert(NT % 2 == 0, "n-tiles come in pairs from one ldmatrix");
    const int lane = threadIdx.x % 32, r8 = lane & 7, m1 = (lane >> 3) & 1, m2 = lane >> 4;
    /* matrix i = 2*m2 + m1 of the x4 load: k-major, (k half m1, n half m2); else (n half m2, k half m1) */
    const __nv_bfloat16 *p = K_MAJOR ? Bs + (r8 + 8 * m1) * ld + 8 * m2 : Bs + (r8 + 8 * m2) * ld + 8 * m1;
#pragma unroll
    for (int kc = 0; kc < KC; kc++)
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            uint32_t b[4];
            if (K_MAJOR) ldsm_x4_trans(b, p + kc * 16 * ld + np * 16);
            else ldsm_x4(b, p + np * 16 * ld + kc * 16);
#pragma unroll
            for (int i = 0; i < RM; i++) {
                mma_bf16_16816(acc[i][2 * np], a[i][kc], b[0], b[1]);
                mma_bf16_16816(acc[i][2 * np + 1], a[i][kc], b[2], b[3]);
            }
        }
}

/* The C fragments c of 16 x 16*KC f32 values (n-tiles 2kc, 2kc+1) as A fragments of the
 * same values rounded to bf16: the product's k runs over c's columns. */
template <int RM, int KC>
__device__ __forceinline__ void tc_c_to_a(uint32_t (&a)[RM][KC][4], const float (&c)[RM][2 * KC][4]) {
#pragma unroll
    for (int i = 0; i < RM; i++)
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
            a[i][kc][0] = pack_bf16x2(c[i][2 * kc][0], c[i][2 * kc][1]);
            a[i][kc][1] = pack_bf16x2(c[i][2 * kc][2], c[i][2 * kc][3]);
            a[i][kc][2] = pack_bf16x2(c[i][2 * kc + 1][0], c[i][2 * kc + 1][1]);
            a[i][kc][3] = pack_bf16x2(c[i][2 * kc + 1][2], c[i][2 * kc + 1][3]);
        }
}

static __device__ __forceinline__ float quad_max(float v) {   /* over the 4 lanes of a fragment row */
    v = fmaxf(v, __shfl_xor_sync(ATTN_FULL_MASK, v, 1));
    return fmaxf(v, __shfl_xor_sync(ATTN_FULL_MASK, v, 2));
}
static __device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(ATTN_FULL_MASK, v, 1);
    return v + __shfl_xor_sync(ATTN_FULL_MASK, v, 2);
}

/* Calls f(hf, j, e, c) for each of a lane's elements of a warp's 16 x 8*NT C fragment strip:
 * register [j][2hf + e], row hf (0: the lane's row l/4, 1: 8 below), column c = 8j + 2(l%4) + e;
 * its bit in tc_keep_bits is (hf*NT + j)*2 + e. Unrolled: every index is a constant. */
template <int NT, class F> __device__ __forceinline__ void tc_each(F f) {
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) f(hf, j, e, 8 * j + 2 * (int)(threadIdx.x % 4) + e);
}

/* Hides (-inf) the scores in c, a warp's 16 x 8*NT C fragments, of (query, key) pairs that
 * backend.h masks. The lane's fragment rows are row and row + 8, its columns col0 + 8j +
 * 2(l%4) + {0,1}; rows are queries and columns keys, or with keys_in_rows the transpose. For
 * tiles that cross the diagonal, the window's edge or the end of the queries or keys. */
template <int NT>
__device__ __forceinline__ void tc_mask(float (&c)[NT][4], const cuda_attn_geom &g, int row, int col0,
                                        bool keys_in_rows) {
    tc_each<NT>([&](int hf, int j, int e, int cc) {
        const int r = row + 8 * hf;
        cc += col0;
        if (!(keys_in_rows ? attn_visible(g, cc, r) : attn_visible(g, r, cc))) c[j][2 * hf + e] = -INFINITY;
    });
}

/* Whether every query at positions pos0 .. pos0+BQ-1 sees every key k0 .. k0+BK-1 (then
 * a tile needs no element tests). */
static __device__ __forceinline__ bool tc_all_visible(const cuda_attn_geom &g, int pos0, int BQ, int k0, int BK) {
    return k0 + BK - 1 <= pos0 && (g.W == 0 || k0 > pos0 + BQ - 1 - g.W);
}

/* One key tile's step of the online softmax over a warp's RM strips: s holds the 16 x 8*NT
 * raw scores (-inf where hidden) and becomes P = 2^(c2 (s - m)) = e^(sc (s - m)) (c2 = sc
 * log2 e), with m the rows' running maxima in raw score units; the row sums l (this lane's
 * share: quad_sum them at the end) and the accumulators o(16 x 8*OT) are rescaled to the new
 * maxima first. A row that has seen no key yet keeps m = -inf, l = 0 and o = 0. */
template <int RM, int NT, int OT>
__device__ __forceinline__ void tc_softmax_step(float (&s)[RM][NT][4], float (&o)[RM][OT][4], float (&m)[RM][2],
                                                float (&l)[RM][2], float c2) {
#pragma unroll
    for (int i = 0; i < RM; i++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < NT; j++) mx = fmaxf(mx, fmaxf(s[i][j][2 * hf], s[i][j][2 * hf + 1]));
            const float mnew = fmaxf(m[i][hf], quad_max(mx));
            const float ref = mnew == -INFINITY ? 0.0f : mnew;   /* no key seen yet: nothing to scale */
            const float corr = exp2f(c2 * (m[i][hf] - ref));     /* 0 before the first key */
            m[i][hf] = mnew;
            l[i][hf] *= corr;
#pragma unroll
            for (int j = 0; j < OT; j++) o[i][j][2 * hf] *= corr, o[i][j][2 * hf + 1] *= corr;
            const float mc = c2 * ref;
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float &x = s[i][j][2 * hf + e];
                    x = exp2f(fmaf(c2, x, -mc));   /* 0 where hidden */
                    l[i][hf] += x;
                }
        }
}

#endif
