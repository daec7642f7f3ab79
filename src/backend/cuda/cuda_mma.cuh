/* backend/cuda: warp-level tensor-core primitives (sm_80 and later) as inline PTX: the
 * mma.sync m16n8k16 product of bf16 operands into f32 accumulators, ldmatrix loads of its
 * operands from shared memory, movmatrix transposes in registers, and cp.async copies from
 * global into shared memory.
 *
 * Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"): lane l of a warp, g = l / 4,
 * q = l % 4; a 32-bit register holds two bf16, the lower column (or k) in its low half.
 *   A (16 x 16, m x k):  a[0] = A[g][2q, 2q+1]      a[1] = A[g+8][2q, 2q+1]
 *                        a[2] = A[g][2q+8, 2q+9]    a[3] = A[g+8][2q+8, 2q+9]
 *   B (16 x 8, k x n):   b[0] = B[2q, 2q+1][g]      b[1] = B[2q+8, 2q+9][g]
 *   C, D (16 x 8, f32):  c[0], c[1] = C[g][2q, 2q+1]  c[2], c[3] = C[g+8][2q, 2q+1]
 * ldmatrix .x4 reads four 8 x 8 bf16 matrices: lanes 8i..8i+7 give the addresses of the 8
 * rows of matrix i (16 bytes each, 16-byte aligned) and lane l receives in register i the
 * elements [l/4][2(l%4), 2(l%4)+1] of matrix i, or with .trans of its transpose. So an A
 * fragment is the four 8 x 8 quarters of a row-major 16 x 16 block, and a B fragment pair
 * (two n-tiles of 8) comes from B stored n-major ([n][k], plain) or k-major ([k][n], .trans). */
#ifndef SKEIN_CUDA_MMA_CUH
#define SKEIN_CUDA_MMA_CUH

#include <cuda_bf16.h>
#include <stdint.h>

/* d += a b for one 16 x 8 x 16 tile (fragments as above). */
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* ldmatrix .x4 from shared memory: this lane gives the row address p (see above). */
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* movmatrix .trans: this lane's fragment of the 8 x 8 bf16 matrix whose fragment (row l/4,
 * columns 2(l%4), 2(l%4)+1, as ldmatrix gives) the warp's lanes hold in a, transposed. */
__device__ __forceinline__ uint32_t movm_trans(uint32_t a) {
    uint32_t d;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
    return d;
}

/* Starts copying 16 bytes from global src to shared dst (both 16-byte aligned); with
 * valid false it writes 16 zero bytes and reads nothing (src must still be a pointer). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
/* Closes the group of the copies this thread started since the last commit. */
__device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/* Waits until at most N of this thread's groups are pending; a barrier then publishes the
 * data to the block. */
template <int N> __device__ __forceinline__ void cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Two f32 rounded to bf16 (nearest even) in one register, lo in the low half. */
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(const uint32_t *)&v;
}

#endif
