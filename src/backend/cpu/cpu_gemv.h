/* cpu_gemv: one-row f32 products, the CPU backend's decode step of one sequence, streaming the
 * weight once from memory front to back on every thread.
 *
 *   // logits(V) = h(C) @ wte(V,C)^T, a tied LM head
 *   cpu_gemv_nk(logits, h, wte, C, V, C, 1.0f, 0.0f);
 *
 * Results depend on the thread count (cpu_gemv_kn sums per-thread partials), on nothing else:
 * the same bits for the same inputs and thread count, as cpu.c's products promise. Called
 * outside an OpenMP region. */
#ifndef SKEIN_CPU_GEMV_H
#define SKEIN_CPU_GEMV_H

/* y(N) = alpha x(K) W(K,N) + beta y, W's rows ldw >= N apart (GPT-2's Conv1D layout). beta
 * == 0 writes y without reading it. */
void cpu_gemv_kn(float *y, const float *x, const float *W, int ldw, int K, int N, float alpha, float beta);

/* y(N) = alpha W(N,K) x(K) + beta y, W's rows ldw >= K apart (nn.Linear's layout, a tied LM
 * head). beta == 0 writes y without reading it. */
void cpu_gemv_nk(float *y, const float *x, const float *W, int ldw, int N, int K, float alpha, float beta);

#endif
