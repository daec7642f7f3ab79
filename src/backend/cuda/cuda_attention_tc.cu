/* backend/cuda: causal grouped-query attention on the tensor cores, for bf16 q, k, v, out,
 * dout, dq, dk, dv with head size HS 64 or 128 (cuda_attention.cu takes every other call).
 * backend.h's contract and the tiled kernels' algorithm (cuda_attention.cu), FlashAttention-2
 * style: products by mma.sync m16n8k16 (bf16 operands, f32 accumulators; cuda_mma.cuh), the
 * softmax, masks, dropout and row terms in f32 registers.
 *
 * A block is 4 warps; a warp owns 16-row strips of the block's "own" tile (queries in the
 * forward and dq, keys in dk/dv), keeps its operand fragments and accumulators in registers
 * and reads the other side's tiles, which stream through shared memory by cp.async, two
 * stages deep (the next tile copies while this one multiplies). Score fragments turn into
 * the A operand of the next product in registers (a C fragment pair is an A fragment), so no
 * probability tile touches shared memory. Rows in shared memory are HS + 8 bf16 apart, which
 * makes every ldmatrix (8 rows of 16 bytes) conflict-free.
 *   - forward: a block per (query tile of FWD_BQ, b, h) sweeps the key tiles its queries see
 *     (FWD_BK keys each): S = Q K^T, per row a running maximum m of the scores and the
 *     normalizer l of P = 2^(c2 (S - m)) = e^(sc (S - m)) (c2 = sc log2 e: exp2 is one
 *     instruction), O += P V with P rounded to bf16; out = O / l, lse = sc m + ln l;
 *   - dq: a block per (query tile of DQ_BQ, b, h) over the same key tiles: P = 2^(c2 S - L),
 *     dS = P (M dP - D) with dP = dout V^T, dq += sc dS K;
 *   - dk, dv: a block per (key tile of KV_BK, b, KV head) over the heads of its group and
 *     the query tiles that see its keys (KV_BQ each): S^T = K Q^T, dP^T = V dout^T,
 *     dv += (P M)^T dout, dk += sc dS^T Q.
 * Per query tile the backward blocks compute the row terms themselves from tiles in shared
 * memory (D = dout . out over the head, L = lse in log2 units): ops allocate no scratch.
 * Masks cost nothing on tiles every query of the block sees in full; only tiles that cross
 * the diagonal, the window's edge or the end of the queries or keys test each element.
 * Invariants: every output element has one owner and every sum a fixed order (no atomics:
 * results are the same bits run to run); dq, dk, dv are written, rounded once from their f32
 * sums (keys no query sees get 0); padding rows past Tq or Tk are zero-filled in shared
 * memory and get L = +inf, so they add nothing and are never stored. */
#include "backend/cuda/cuda_tc.cuh"

#include <math.h>

#include <type_traits>

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf162;


/* Tile shapes for head size HS: rows per tile of each kernel (a multiple of 16 per warp),
 * the shared-memory row stride LDS and the dynamic shared memory of each kernel. */
template <int HS> struct tc_shape {
    static_assert(HS == 64 || HS == 128, "the tensor-core kernels take head sizes 64 and 128");
    static constexpr int LDS = HS + 8;                     /* bf16 per row: 16 bytes of padding */
    static constexpr int FWD_RM = HS == 64 ? 2 : 1;        /* forward: 16-row strips per warp */
    static constexpr int FWD_BQ = 16 * FWD_RM * TC_WARPS, FWD_BK = 64;
    static constexpr int DQ_BQ = 16 * TC_WARPS, DQ_BK = HS == 64 ? 64 : 32;
    static constexpr int KV_BK = 16 * TC_WARPS, KV_BQ = HS == 64 ? 64 : 32;
    /* dk, dv: each warp's K and V fragments stay in registers across the query tiles (HS 64);
     * at HS 128 they reload from shared memory per tile, to stay within 255 registers. */
    static constexpr bool KV_REGS = HS == 64;
    static constexpr size_t ROW = sizeof(bf16) * LDS;
    /* forward: Q, two stages of K and V */
    static constexpr size_t fwd_bytes = ROW * (FWD_BQ + 4 * FWD_BK);
    /* dq: Q, dout, out, two stages of K and V, the row terms L and D */
    static constexpr size_t dq_bytes = ROW * (3 * DQ_BQ + 4 * DQ_BK) + sizeof(float) * 2 * DQ_BQ;
    /* dk, dv: K, V, two stages of Q, dout, out and of the row terms */
    static constexpr size_t kv_bytes = ROW * (2 * KV_BK + 6 * KV_BQ) + sizeof(float) * 4 * KV_BQ;
    static_assert(fwd_bytes <= 227 * 1024 && dq_bytes <= 227 * 1024 && kv_bytes <= 227 * 1024,
                  "a block's tiles fit an H100/H200 multiprocessor's shared memory");
    static_assert(ROW % 16 == 0, "tile rows stay 16-byte aligned for cp.async and ldmatrix");
};

/* ---- tiles and fragments ---- */

/* Starts copying rows r0 .. r0+ROWS-1, columns col0 .. col0+HS-1 of sample b of X into the
 * (ROWS, LDS) tile dst; rows from n on are zero-filled (n may be <= 0). All threads of the
 * block take part; the caller commits the group. */
template <int ROWS, int HS> __device__ void tc_load(bf16 *dst, cuda_rows X, int b, int r0, int n, int col0) {
    constexpr int CH = HS / 8;   /* 16-byte chunks per row */
    static_assert((ROWS * CH) % TC_THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int k = 0; k < ROWS * CH / TC_THREADS; k++) {
        const int i = threadIdx.x + k * TC_THREADS, r = i / CH, c = (i % CH) * 8;
        const bool ok = r < n;
        cp_async16(dst + r * tc_shape<HS>::LDS + c, ok ? attn_at<bf16>(X, b, r0 + r, col0 + c) : X.p, ok);
    }
}

/* Row hf (0: this lane's row l/4, 1: 8 below) of a warp's 16 x 8*NT C fragments c, times
 * scale, rounded to bf16 into row t of X from column col0. */
template <int NT>
__device__ __forceinline__ void tc_store_row(cuda_rows X, int b, int t, int col0, const float (&c)[NT][4], int hf,
                                             float scale) {
    bf16 *p = attn_at<bf16>(X, b, t, col0 + 2 * (threadIdx.x % 4));
#pragma unroll
    for (int j = 0; j < NT; j++)
        *(bf162 *)(p + 8 * j) = __floats2bfloat162_rn(scale * c[j][2 * hf], scale * c[j][2 * hf + 1]);
}

/* The dropout keep bits of a lane's 4*NT elements of a 16 x 8*NT C fragment strip: bit
 * (hf*NT + j)*2 + e for row hf (0: the lane's row, 1: 8 below) and column c = 8j + 2(l%4) + e
 * is dropout_keep of query row (flat (B,NH,Tq) index) q0 + hf*qh + c*qc and key s0 + hf*sh +
 * c*sc, so one helper serves queries in rows (qc = sh = 0) and keys in rows (qh = sc = 0).
 * Every bit without dropout. A rolled loop: the hashes' 64-bit products stay out of the
 * fragments' registers. */
template <int NT>
__device__ uint32_t tc_keep_bits(const cuda_attn_geom &g, int64_t q0, int qh, int qc, int s0, int sh, int sc) {
    static_assert(4 * NT <= 32, "one bit per element in 32 bits");
    if (g.p <= 0.0f) return ~0u;
    uint32_t bits = 0;
#pragma unroll 1
    for (int i = 0; i < 4 * NT; i++) {
        const int hf = i / (2 * NT), c = 8 * (i / 2 % NT) + 2 * (threadIdx.x % 4) + i % 2;
        const int64_t q = q0 + hf * qh + (int64_t)c * qc;
        bits |= (uint32_t)dropout_keep(g.seed, (uint64_t)q * (uint64_t)g.Tk + (uint64_t)(s0 + hf * sh + c * sc), g.p)
                << i;
    }
    return bits;
}

/* The backward's element step on a warp's 16 x 8*NT strip: the scores s become P M (the
 * dropped probability, which weighs dout into dv) and dp (dout . v) becomes P (M dP - D) =
 * dS / sc, with P = 2^(c2 s - L) (0 where s is hidden) and M = keep bit / (1-p) (keep from
 * tc_keep_bits). L and D belong to the query: of the fragment row (L[hf], D[hf]) or, with
 * queries in columns, of column c = 8j + 2(l%4) + e (L[c], D[c]). */
template <int NT, bool Q_IN_COLS>
__device__ __forceinline__ void tc_backward_elems(float (&s)[NT][4], float (&dp)[NT][4], const float *L,
                                                  const float *D, uint32_t keep, float c2, const cuda_attn_geom &g) {
    const float scale = g.p > 0.0f ? 1.0f / (1.0f - g.p) : 1.0f;
    tc_each<NT>([&](int hf, int j, int e, int c) {
        const int q = Q_IN_COLS ? c : hf;
        float &x = s[j][2 * hf + e], &y = dp[j][2 * hf + e];
        const float P = exp2f(fmaf(c2, x, -L[q])), M = keep >> ((hf * NT + j) * 2 + e) & 1 ? scale : 0.0f;
        y = P * (M * y - D[q]);
        x = P * M;
    });
}

/* The backward's row terms of a tile of ROWS queries, the first n of them real: Ls[r] =
 * log2(e) lse[r] (+inf for padding, whose probabilities must vanish) and Ds[r] = dout . out
 * of row r over the head, from the bf16 tiles dOs and Os (0 for padding: zero-filled). Eight
 * lanes per row; the caller orders it after the tiles' barrier and before their readers'. */
template <int ROWS, int HS>
__device__ void tc_row_terms(float *Ls, float *Ds, const bf16 *dOs, const bf16 *Os, const float *lse, int n) {
    constexpr int LDS = tc_shape<HS>::LDS, PER = HS / 8;
    static_assert(ROWS % (TC_THREADS / 8) == 0, "every lane passes the shuffles equally often");
    const int c0 = (threadIdx.x % 8) * PER;
    for (int r = threadIdx.x / 8; r < ROWS; r += TC_THREADS / 8) {
        float d = 0.0f;
#pragma unroll
        for (int c = 0; c < PER; c += 2) {
            const float2 x = __bfloat1622float2(*(const bf162 *)(dOs + r * LDS + c0 + c)),
                         y = __bfloat1622float2(*(const bf162 *)(Os + r * LDS + c0 + c));
            d = fmaf(x.x, y.x, fmaf(x.y, y.y, d));
        }
        d += __shfl_xor_sync(ATTN_FULL_MASK, d, 1);
        d += __shfl_xor_sync(ATTN_FULL_MASK, d, 2);
        d += __shfl_xor_sync(ATTN_FULL_MASK, d, 4);
        if (threadIdx.x % 8 == 0) {
            Ds[r] = d;
            Ls[r] = r < n ? TC_LOG2E * lse[r] : INFINITY;
        }
    }
}

/* A query tile of BQ rows (the forward's and dq's block: grid query tiles x B x NH, longest
 * first), and the key tiles of BK its queries see: tile it holds keys s_lo + it*BK on, up to
 * s_hi, and streams into stage it & 1 of the two-stage K and V buffers. */
template <int BQ, int BK, int HS> struct tc_qtile {
    int t0, b, h, nq, kcol, s_lo, s_hi, ntiles, pos0;
    int64_t row0;   /* flat (B,NH,Tq) index of query t0 */

    __device__ explicit tc_qtile(const cuda_attn_geom &g) {
        int bh, unused;
        t0 = BQ * attn_tile_index((g.Tq + BQ - 1) / BQ, g.B * g.NH, true, &bh);
        b = bh / g.NH, h = bh % g.NH, nq = min(BQ, g.Tq - t0), kcol = h / g.G * HS;
        attn_span(g, t0, &s_lo, &unused);
        attn_span(g, t0 + nq - 1, &unused, &s_hi);
        ntiles = (s_hi - s_lo) / BK + 1, pos0 = g.Tk - g.Tq + t0;
        row0 = ((int64_t)b * g.NH + h) * g.Tq + t0;
    }
    /* Starts copying key tile it of K and V into its stage of Ks, Vs. */
    __device__ void load_kv(bf16 *Ks, bf16 *Vs, cuda_rows K, cuda_rows V, int it) const {
        const int k0 = s_lo + it * BK, st = it & 1;
        tc_load<BK, HS>(Ks + st * BK * tc_shape<HS>::LDS, K, b, k0, s_hi - k0 + 1, kcol);
        tc_load<BK, HS>(Vs + st * BK * tc_shape<HS>::LDS, V, b, k0, s_hi - k0 + 1, kcol);
    }
    /* Makes key tile it resident for the whole block: starts tile it+1 into the other stage
     * (which the last iteration's closing barrier freed), waits for tile it's copies (and
     * everything committed before them) and publishes them with a barrier. */
    __device__ void advance(bf16 *Ks, bf16 *Vs, cuda_rows K, cuda_rows V, int it) const {
        if (it + 1 < ntiles) load_kv(Ks, Vs, K, V, it + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
    }
};

/* ---- kernels ---- */

/* Forward of one query tile (grid: query tiles x B x NH, longest first). Thread (warp w,
 * lane l) holds rows 16*RM*w + 16i + l/4 (+8) of the tile, i < RM. */
template <int HS>
__global__ void __launch_bounds__(TC_THREADS, 1) attention_forward_tc(cuda_attn_geom g, cuda_rows O, float *lse,
                                                                   cuda_rows Q, cuda_rows K, cuda_rows V) {
    using S = tc_shape<HS>;
    constexpr int RM = S::FWD_RM, BQ = S::FWD_BQ, BK = S::FWD_BK, LDS = S::LDS;
    constexpr int KC = HS / 16, NT = BK / 8, OT = HS / 8;
    extern __shared__ __align__(16) unsigned char attn_smem[];
    bf16 *Qs = (bf16 *)attn_smem, *Ks = Qs + BQ * LDS, *Vs = Ks + 2 * BK * LDS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const tc_qtile<BQ, BK, HS> qt(g);
    const int t0 = qt.t0, b = qt.b, h = qt.h;
    tc_load<BQ, HS>(Qs, Q, b, t0, qt.nq, h * HS);
    qt.load_kv(Ks, Vs, K, V, 0);
    cp_async_commit();

    const int r0 = warp * 16 * RM + lane / 4;   /* this thread's first row in the tile */
    const float c2 = g.sc * TC_LOG2E;           /* scores in log2 units */
    float o[RM][OT][4] = {}, m[RM][2], l[RM][2];
    uint32_t qf[RM][KC][4];
#pragma unroll
    for (int i = 0; i < RM; i++) m[i][0] = m[i][1] = -INFINITY, l[i][0] = l[i][1] = 0.0f;
    for (int it = 0; it < qt.ntiles; it++) {
        const int k0 = qt.s_lo + it * BK, st = it & 1;
        qt.advance(Ks, Vs, K, V, it);   /* with Q at it = 0 */
        tc_frag_a<RM, KC>(qf, Qs + warp * 16 * RM * LDS, LDS);   /* per tile: held across, they spill */
        const bf16 *Kt = Ks + st * BK * LDS, *Vt = Vs + st * BK * LDS;
        float s[RM][NT][4] = {};
        tc_mma<RM, NT, KC, false>(s, qf, Kt, LDS);
        if (!tc_all_visible(g, qt.pos0, BQ, k0, BK))
#pragma unroll
            for (int i = 0; i < RM; i++) tc_mask<NT>(s[i], g, t0 + r0 + 16 * i, k0, false);
        tc_softmax_step<RM, NT, OT>(s, o, m, l, c2);
        if (g.p > 0.0f)   /* the dropped probabilities weigh v; l sums them all */
#pragma unroll
            for (int i = 0; i < RM; i++) {
                const uint32_t keep = tc_keep_bits<NT>(g, qt.row0 + r0 + 16 * i, 8, 0, k0, 0, 1);
                tc_each<NT>([&](int hf, int j, int e, int) {
                    s[i][j][2 * hf + e] *= keep >> ((hf * NT + j) * 2 + e) & 1 ? 1.0f / (1.0f - g.p) : 0.0f;
                });
            }
        uint32_t pf[RM][BK / 16][4];
        tc_c_to_a<RM, BK / 16>(pf, s);
        tc_mma<RM, OT, BK / 16, true>(o, pf, Vt, LDS);
        __syncthreads();   /* this stage's readers are done before the next prefetch refills it */
    }
#pragma unroll
    for (int i = 0; i < RM; i++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int r = r0 + 16 * i + 8 * hf;
            const float li = quad_sum(l[i][hf]);
            if (r >= qt.nq) continue;
            tc_store_row<OT>(O, b, t0 + r, h * HS, o[i], hf, 1.0f / li);
            if (lse && lane % 4 == 0) lse[qt.row0 + r] = g.sc * m[i][hf] + logf(li);
        }
}

/* dq of one query tile (grid as the forward's) over the key tiles its queries see. Thread
 * (warp w, lane l) holds rows 16w + l/4 (+8) of the tile. */
template <int HS>
__global__ void __launch_bounds__(TC_THREADS, 1) attention_backward_dq_tc(cuda_attn_geom g, cuda_rows DQ, cuda_rows DO,
                                                                       cuda_rows Q, cuda_rows K, cuda_rows V,
                                                                       cuda_rows O, const float *lse) {
    using S = tc_shape<HS>;
    constexpr int BQ = S::DQ_BQ, BK = S::DQ_BK, LDS = S::LDS, KC = HS / 16, NT = BK / 8, OT = HS / 8;
    extern __shared__ __align__(16) unsigned char attn_smem[];
    bf16 *Qs = (bf16 *)attn_smem, *dOs = Qs + BQ * LDS, *Os = dOs + BQ * LDS, *Ks = Os + BQ * LDS,
         *Vs = Ks + 2 * BK * LDS;
    float *Ls = (float *)(Vs + 2 * BK * LDS), *Ds = Ls + BQ;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const tc_qtile<BQ, BK, HS> qt(g);
    const int t0 = qt.t0, b = qt.b, h = qt.h, nq = qt.nq;
    tc_load<BQ, HS>(Qs, Q, b, t0, nq, h * HS);
    tc_load<BQ, HS>(dOs, DO, b, t0, nq, h * HS);
    tc_load<BQ, HS>(Os, O, b, t0, nq, h * HS);
    qt.load_kv(Ks, Vs, K, V, 0);
    cp_async_commit();

    const int r0 = warp * 16 + lane / 4;
    const float c2 = g.sc * TC_LOG2E;
    float dq[1][OT][4] = {}, L[2], D[2];
    uint32_t qf[1][KC][4], df[1][KC][4];
    for (int it = 0; it < qt.ntiles; it++) {
        const int k0 = qt.s_lo + it * BK, st = it & 1;
        qt.advance(Ks, Vs, K, V, it);
        if (it == 0) {   /* Q, dout and out arrived with the first tile */
            tc_row_terms<BQ, HS>(Ls, Ds, dOs, Os, lse + qt.row0, nq);
            __syncthreads();
            tc_frag_a<1, KC>(qf, Qs + warp * 16 * LDS, LDS);
            tc_frag_a<1, KC>(df, dOs + warp * 16 * LDS, LDS);
#pragma unroll
            for (int hf = 0; hf < 2; hf++) L[hf] = Ls[r0 + 8 * hf], D[hf] = Ds[r0 + 8 * hf];
        }
        const bf16 *Kt = Ks + st * BK * LDS, *Vt = Vs + st * BK * LDS;
        float s[1][NT][4] = {}, dp[1][NT][4] = {};
        tc_mma<1, NT, KC, false>(s, qf, Kt, LDS);
        tc_mma<1, NT, KC, false>(dp, df, Vt, LDS);
        if (!tc_all_visible(g, qt.pos0, BQ, k0, BK)) tc_mask<NT>(s[0], g, t0 + r0, k0, false);
        tc_backward_elems<NT, false>(s[0], dp[0], L, D, tc_keep_bits<NT>(g, qt.row0 + r0, 8, 0, k0, 0, 1), c2, g);
        uint32_t dsf[1][BK / 16][4];
        tc_c_to_a<1, BK / 16>(dsf, dp);
        tc_mma<1, OT, BK / 16, true>(dq, dsf, Kt, LDS);
        __syncthreads();
    }
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
        if (r0 + 8 * hf < nq) tc_store_row<OT>(DQ, b, t0 + r0 + 8 * hf, h * HS, dq[0], hf, g.sc);
}

/* dk, dv of one key tile (grid: key tiles x B x NKV, longest first) over the heads of its
 * group and, per head, the query tiles that see its keys, in one pipelined sequence of steps.
 * Thread (warp w, lane l) holds key rows 16w + l/4 (+8) of the tile. */
template <int HS>
__global__ void __launch_bounds__(TC_THREADS, 1) attention_backward_dkdv_tc(cuda_attn_geom g, cuda_rows DK,
                                                                         cuda_rows DV, cuda_rows DO, cuda_rows Q,
                                                                         cuda_rows K, cuda_rows V, cuda_rows O,
                                                                         const float *lse) {
    using S = tc_shape<HS>;
    constexpr int BK = S::KV_BK, BQ = S::KV_BQ, LDS = S::LDS, KC = HS / 16, NT = BQ / 8, OT = HS / 8;
    extern __shared__ __align__(16) unsigned char attn_smem[];
    bf16 *Ks = (bf16 *)attn_smem, *Vs = Ks + BK * LDS, *Qs = Vs + BK * LDS, *dOs = Qs + 2 * BQ * LDS,
         *Os = dOs + 2 * BQ * LDS;
    float *Ls = (float *)(Os + 2 * BQ * LDS), *Ds = Ls + 2 * BQ;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int bk;
    const int k0 = BK * attn_tile_index((g.Tk + BK - 1) / BK, g.B * g.NKV, false, &bk);
    const int b = bk / g.NKV, kh = bk % g.NKV, nk = min(BK, g.Tk - k0), kcol = kh * HS, off = g.Tk - g.Tq;
    /* queries that see a key of the tile: positions from k0 on, with a window up to the last
     * key's + W - 1; none (keys older than every window): no steps, dk and dv written 0 */
    const int t_lo = max(0, k0 - off), t_hi = g.W > 0 ? min(g.Tq - 1, k0 + nk - 1 + g.W - 1 - off) : g.Tq - 1;
    const int nqt = t_hi < t_lo ? 0 : (t_hi - t_lo) / BQ + 1, steps = g.G * nqt;
    /* step i: head kh*G + i / nqt, query tile from t_lo + (i % nqt) * BQ */
    auto load_step = [&](int i, int st) {
        const int hh = kh * g.G + i / nqt, t0 = t_lo + i % nqt * BQ;
        tc_load<BQ, HS>(Qs + st * BQ * LDS, Q, b, t0, g.Tq - t0, hh * HS);
        tc_load<BQ, HS>(dOs + st * BQ * LDS, DO, b, t0, g.Tq - t0, hh * HS);
        tc_load<BQ, HS>(Os + st * BQ * LDS, O, b, t0, g.Tq - t0, hh * HS);
    };
    if (steps > 0) {   /* no copy left in flight when the block has nothing to do */
        tc_load<BK, HS>(Ks, K, b, k0, nk, kcol);
        tc_load<BK, HS>(Vs, V, b, k0, nk, kcol);
        load_step(0, 0);
    }
    cp_async_commit();

    const int r0 = warp * 16 + lane / 4;   /* this thread's first key row in the tile */
    const float c2 = g.sc * TC_LOG2E;
    float dk[1][OT][4] = {}, dv[1][OT][4] = {};
    uint32_t kf[1][KC][4], vf[1][KC][4];
    for (int i = 0; i < steps; i++) {
        const int st = i & 1, h = kh * g.G + i / nqt, t0 = t_lo + i % nqt * BQ;
        const int64_t row0 = ((int64_t)b * g.NH + h) * g.Tq + t0;
        if (i + 1 < steps) load_step(i + 1, st ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const bf16 *Qt = Qs + st * BQ * LDS, *dOt = dOs + st * BQ * LDS;
        const float *Lt = Ls + st * BQ, *Dt = Ds + st * BQ;
        tc_row_terms<BQ, HS>(Ls + st * BQ, Ds + st * BQ, dOt, Os + st * BQ * LDS, lse + row0, g.Tq - t0);
        __syncthreads();
        float s[1][NT][4] = {}, dp[1][NT][4] = {};   /* transposed: keys x queries */
        if (!S::KV_REGS || i == 0) tc_frag_a<1, KC>(kf, Ks + warp * 16 * LDS, LDS);
        tc_mma<1, NT, KC, false>(s, kf, Qt, LDS);
        if (!S::KV_REGS || i == 0) tc_frag_a<1, KC>(vf, Vs + warp * 16 * LDS, LDS);
        tc_mma<1, NT, KC, false>(dp, vf, dOt, LDS);
        if (!tc_all_visible(g, off + t0, BQ, k0, BK)) tc_mask<NT>(s[0], g, k0 + r0, t0, true);
        tc_backward_elems<NT, true>(s[0], dp[0], Lt, Dt, tc_keep_bits<NT>(g, row0, 0, 1, k0 + r0, 8, 0), c2, g);
        uint32_t af[1][BQ / 16][4];
        tc_c_to_a<1, BQ / 16>(af, s);
        tc_mma<1, OT, BQ / 16, true>(dv, af, dOt, LDS);
        tc_c_to_a<1, BQ / 16>(af, dp);
        tc_mma<1, OT, BQ / 16, true>(dk, af, Qt, LDS);
        __syncthreads();
    }
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
        if (r0 + 8 * hf < nk) {
            tc_store_row<OT>(DK, b, k0 + r0 + 8 * hf, kcol, dk[0], hf, g.sc);
            tc_store_row<OT>(DV, b, k0 + r0 + 8 * hf, kcol, dv[0], hf, 1.0f);
        }
}

/* ---- launchers ---- */

bool cuda_attention_tc_fits(const cuda_attn_geom *g, const cuda_rows *ops, int n) {
    if (g->dt != DT_BF16 || (g->HS != 64 && g->HS != 128)) return false;
    for (int i = 0; i < n; i++)
        if ((uintptr_t)ops[i].p % 16 || ops[i].sb % 8 || ops[i].st % 8) return false;
    return true;
}

/* Calls f(std::integral_constant<int, HS>()) for the call's head size (64 or 128). */
template <class F> static void tc_dispatch(int HS, F f) {
    if (HS == 64) f(std::integral_constant<int, 64>());
    else f(std::integral_constant<int, 128>());
}

void cuda_attention_tc_forward(cudaStream_t s, const cuda_attn_geom *g, cuda_rows out, float *lse, cuda_rows q,
                               cuda_rows k, cuda_rows v) {
    tc_dispatch(g->HS, [&](auto hs) {
        using S = tc_shape<decltype(hs)::value>;
        const int64_t blocks = (int64_t)(g->Tq + S::FWD_BQ - 1) / S::FWD_BQ * g->B * g->NH;
        attn_launch(attention_forward_tc<decltype(hs)::value>, blocks, TC_THREADS, S::fwd_bytes, s, *g, out, lse, q,
                    k, v);
    });
}

void cuda_attention_tc_backward(cudaStream_t s, const cuda_attn_geom *g, cuda_rows dq, cuda_rows dk, cuda_rows dv,
                                cuda_rows dout, cuda_rows q, cuda_rows k, cuda_rows v, cuda_rows out,
                                const float *lse) {
    tc_dispatch(g->HS, [&](auto hs) {
        constexpr int HS = decltype(hs)::value;
        using S = tc_shape<HS>;
        const int64_t qblocks = (int64_t)(g->Tq + S::DQ_BQ - 1) / S::DQ_BQ * g->B * g->NH,
                      kblocks = (int64_t)(g->Tk + S::KV_BK - 1) / S::KV_BK * g->B * g->NKV;
        attn_launch(attention_backward_dq_tc<HS>, qblocks, TC_THREADS, S::dq_bytes, s, *g, dq, dout, q, k, v, out,
                    lse);
        attn_launch(attention_backward_dkdv_tc<HS>, kblocks, TC_THREADS, S::kv_bytes, s, *g, dk, dv, dout, q, k, v,
                    out, lse);
    });
}
