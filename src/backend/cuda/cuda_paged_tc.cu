/* backend/cuda: the prefill rows of paged_attention on the tensor cores (backend.h's contract;
 * cuda_paged.cu dispatches): bf16 q, out and caches, head size HS 64 or 128, sequences with
 * nq > 1 queries (the decode and general kernels keep the others). FlashAttention-2 style as
 * cuda_attention_tc.cu's forward, with the key tiles gathered through the block table.
 *
 * A block of TC_WARPS warps takes one (query tile of PTC_BQ rows of one sequence, query head):
 * grid.x counts the tiles of all prefill sequences times NH (the heads of one tile adjacent,
 * so a group's heads read the same keys from L2 together; a sequence's last tile, which sees
 * the most keys, first). The launch knows only S and a bound on the tiles (from the N query
 * rows), so each block finds its sequence by a warp-wide prefix sum of the tile counts over
 * seqs, and blocks past the last tile leave at once.
 *
 * Query j of sequence i sits at position pos = ctx - nq + j and sees key t when t <= pos and,
 * with a window W > 0, t > pos - W; key t is row tables[i][t / BS] * BS + t % BS of the
 * caches. The tile's Q rows and each key tile's K and V rows arrive by cp.async, 16 bytes a
 * copy (a key row is HS contiguous bf16 wherever its block lies), the key tiles two stages deep.
 * Scores and the online softmax are f32 (exp2 of scores scaled by log2 e / sqrt(HS)), P is
 * rounded to bf16 for P V, out is rounded once. Padding rows (queries past nq, keys past the
 * tile's last position) are zero-filled, masked and never stored. */
#include "backend/cuda/cuda_tc.cuh"

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf162;

enum {
    PTC_BQ = 16 * TC_WARPS,   /* query rows per block: one 16-row strip per warp */
    PTC_BK = 64,              /* keys per tile */
};

/* The dynamic shared memory of a block: the Q tile and two stages of K and V tiles, rows of
 * HS + 8 bf16 (16 bytes of padding: conflict-free ldmatrix). */
static constexpr size_t ptc_bytes(int HS) { return sizeof(bf16) * (HS + 8) * (PTC_BQ + 4 * PTC_BK); }

/* The prefill tile of this block among the tiles of seqs(S,3): sets *seq and *tile (a
 * sequence's tiles counted from its last) and returns true, or false past the last tile.
 * Every warp scans alike, so the result is uniform over the block. */
static __device__ bool ptc_find_tile(const int *seqs, int S, int index, int *seq, int *tile) {
    const int lane = threadIdx.x % 32;
    for (int base = 0; base < S; base += 32) {
        const int i = base + lane, nq = i < S ? seqs[3 * i + 1] : 0, nt = nq > 1 ? (nq + PTC_BQ - 1) / PTC_BQ : 0;
        int incl = nt;   /* the tiles of sequences base .. i */
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(ATTN_FULL_MASK, incl, o);
            if (lane >= o) incl += y;
        }
        const int total = __shfl_sync(ATTN_FULL_MASK, incl, 31);
        if (index < total) {
            const int f = __ffs(__ballot_sync(ATTN_FULL_MASK, incl > index)) - 1;
            const int before = __shfl_sync(ATTN_FULL_MASK, incl - nt, f), nf = __shfl_sync(ATTN_FULL_MASK, nt, f);
            *seq = base + f;
            *tile = nf - 1 - (index - before);
            return true;
        }
        index -= total;
    }
    return false;
}

/* Starts copying a ROWS x HS tile into d0 (row stride HS + 8): its row r is row row(r) of s0
 * (row stride ld0, from column col), zero-filled where row(r) < 0; with d1, the same rows of
 * s1 (ld1) into d1 (the keys' and values' rows share one table lookup). All threads of the
 * block take part; the caller commits. */
template <int ROWS, int HS, class Row>
static __device__ void ptc_load(Row row, int64_t col, bf16 *d0, const bf16 *s0, int64_t ld0, bf16 *d1 = nullptr,
                                const bf16 *s1 = nullptr, int64_t ld1 = 0) {
    constexpr int CH = HS / 8;   /* 16-byte chunks per row */
    static_assert((ROWS * CH) % TC_THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int k = 0; k < ROWS * CH / TC_THREADS; k++) {
        const int e = threadIdx.x + k * TC_THREADS, r = e / CH, c = (e % CH) * 8;
        const int64_t p = row(r);
        cp_async16(d0 + r * (HS + 8) + c, p >= 0 ? s0 + p * ld0 + col + c : s0, p >= 0);
        if (d1) cp_async16(d1 + r * (HS + 8) + c, p >= 0 ? s1 + p * ld1 + col + c : s1, p >= 0);
    }
}

/* Block (tile, head) as the file's top comment says; thread (warp w, lane l) holds query rows
 * 16w + l/4 (+8) of the tile. */
template <int HS>
__global__ void __launch_bounds__(TC_THREADS, 1)
paged_prefill_tc_kernel(bf16 *out, int64_t ldo, const bf16 *q, int64_t ldq, const bf16 *kc, int64_t ldk,
                        const bf16 *vc, int64_t ldv, const int *seqs, const int *tables, int S, int MB, int BS, int NH,
                        int NKV, int W, float scale) {
    constexpr int BQ = PTC_BQ, BK = PTC_BK, LDS = HS + 8, KC = HS / 16, NT = BK / 8, OT = HS / 8;
    extern __shared__ __align__(16) unsigned char ptc_smem[];
    bf16 *Qs = (bf16 *)ptc_smem, *Ks = Qs + BQ * LDS, *Vs = Ks + 2 * BK * LDS;
    int i, tile;
    if (!ptc_find_tile(seqs, S, (int)(blockIdx.x / NH), &i, &tile)) return;
    const int h = (int)(blockIdx.x % NH), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int r0 = seqs[3 * i], nq = seqs[3 * i + 1], ctx = seqs[3 * i + 2];
    const int t0 = tile * BQ, n = min(BQ, nq - t0), pos0 = ctx - nq + t0;
    /* keys of the tile's queries: from the first query's window start to the last query */
    const int lo = W > 0 ? max(0, pos0 - W + 1) : 0, hi = pos0 + n - 1, ntiles = (hi - lo) / BK + 1;
    const int *table = tables + (int64_t)i * MB;
    const int64_t kcol = (int64_t)(h / (NH / NKV)) * HS;
    /* attention_forward's geometry for this sequence: its queries are rows 0..nq-1, keys 0..ctx-1 */
    cuda_attn_geom g = {};
    g.Tq = nq, g.Tk = ctx, g.W = W;

    ptc_load<BQ, HS>([&](int r) { return r < n ? (int64_t)(r0 + t0 + r) : (int64_t)-1; }, (int64_t)h * HS, Qs, q,
                     ldq);
    auto load_kv = [&](int it) {   /* key tile it into stage it & 1 */
        const int k0 = lo + it * BK, st = it & 1;
        ptc_load<BK, HS>(
            [&](int r) {
                const int t = k0 + r;
                return t <= hi ? (int64_t)table[t / BS] * BS + t % BS : (int64_t)-1;
            },
            kcol, Ks + st * BK * LDS, kc, ldk, Vs + st * BK * LDS, vc, ldv);
    };
    load_kv(0);
    cp_async_commit();

    const int rw = warp * 16 + lane / 4;   /* this thread's first row in the tile */
    const float c2 = scale * TC_LOG2E;
    float o[1][OT][4] = {}, m[1][2] = {{-INFINITY, -INFINITY}}, l[1][2] = {};
    uint32_t qf[1][KC][4];
    for (int it = 0; it < ntiles; it++) {
        const int k0 = lo + it * BK, st = it & 1;
        if (it + 1 < ntiles) load_kv(it + 1);   /* into the stage the last iteration's barrier freed */
        cp_async_commit();
        cp_async_wait<1>();   /* tile it (and Q, with tile 0) arrived */
        __syncthreads();
        tc_frag_a<1, KC>(qf, Qs + warp * 16 * LDS, LDS);
        const bf16 *Kt = Ks + st * BK * LDS, *Vt = Vs + st * BK * LDS;
        float s[1][NT][4] = {};
        tc_mma<1, NT, KC, false>(s, qf, Kt, LDS);
        if (!tc_all_visible(g, pos0, BQ, k0, BK)) tc_mask<NT>(s[0], g, t0 + rw, k0, false);
        tc_softmax_step<1, NT, OT>(s, o, m, l, c2);
        uint32_t pf[1][BK / 16][4];
        tc_c_to_a<1, BK / 16>(pf, s);
        tc_mma<1, OT, BK / 16, true>(o, pf, Vt, LDS);
        __syncthreads();   /* this stage's readers are done before the next prefetch refills it */
    }
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int r = rw + 8 * hf;
        const float inv = 1.0f / quad_sum(l[0][hf]);
        if (r >= n) continue;
        bf16 *p = out + (int64_t)(r0 + t0 + r) * ldo + (int64_t)h * HS + 2 * (lane % 4);
#pragma unroll
        for (int j = 0; j < OT; j++)
            *(bf162 *)(p + 8 * j) = __floats2bfloat162_rn(inv * o[0][j][2 * hf], inv * o[0][j][2 * hf + 1]);
    }
}

bool cuda_paged_prefill_tc_fits(const void *out, int64_t ldo, const void *q, int64_t ldq, const void *kc, int64_t ldk,
                                const void *vc, int64_t ldv, int HS) {
    const void *p[4] = {out, q, kc, vc};
    const int64_t ld[4] = {ldo, ldq, ldk, ldv};
    if (HS != 64 && HS != 128) return false;
    for (int k = 0; k < 4; k++)
        if ((uintptr_t)p[k] % 16 || ld[k] % 8) return false;
    return true;
}

void cuda_paged_prefill_tc(cudaStream_t s, bf16 *out, int64_t ldo, const bf16 *q, int64_t ldq, const bf16 *kc,
                           int64_t ldk, const bf16 *vc, int64_t ldv, const int *seqs, const int *tables, int N, int S,
                           int MB, int BS, int NH, int NKV, int HS, int W) {
    /* each prefill sequence has nq >= 2 rows of the N: at most min(S, N/2) of them, and its
     * ceil(nq / BQ) tiles are at most (nq + BQ - 1) / BQ */
    const int64_t prefill = min(S, N / 2), tiles = ((int64_t)N + prefill * (PTC_BQ - 1)) / PTC_BQ;
    const float scale = 1.0f / sqrtf((float)HS);
    if (HS == 64)
        attn_launch(paged_prefill_tc_kernel<64>, tiles * NH, TC_THREADS, ptc_bytes(64), s, out, ldo, q, ldq, kc, ldk,
                    vc, ldv, seqs, tables, S, MB, BS, NH, NKV, W, scale);
    else
        attn_launch(paged_prefill_tc_kernel<128>, tiles * NH, TC_THREADS, ptc_bytes(128), s, out, ldo, q, ldq, kc, ldk,
                    vc, ldv, seqs, tables, S, MB, BS, NH, NKV, W, scale);
}
