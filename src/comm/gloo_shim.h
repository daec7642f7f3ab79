/* gloo_shim: the C face of gloo (a C++ library) for comm_gloo.c; not for other callers.
 *
 * Each call runs one gloo collective to its end on the calling thread (comm_gloo's
 * communication thread) and returns GLOO_SHIM_OK, or GLOO_SHIM_TIMEOUT / GLOO_SHIM_FAILED with
 * the message recorded (sk_fail, SK_ECOMM, naming the operation and gloo's words): timeout
 * when the operation did not complete within the shim's timeout, failed when a connection
 * broke (a peer exited or died) or gloo refused. Element types: sums of f32, f64 and bf16
 * (bf16 added in f32, each addition rounded once, by comm_bf16_sum); byte copies otherwise.
 * tag: a number unique among this shim's operations (their order), so no message of one is
 * taken for another's. No C++ type or exception crosses this header. */
#ifndef SKEIN_GLOO_SHIM_H
#define SKEIN_GLOO_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "comm/store.h"

typedef struct gloo_shim gloo_shim;
typedef enum { GLOO_SHIM_OK = 0, GLOO_SHIM_TIMEOUT, GLOO_SHIM_FAILED } gloo_shim_rc;
typedef enum { GLOO_SHIM_F32, GLOO_SHIM_BF16, GLOO_SHIM_F64 } gloo_shim_elem;

/* Connects rank `rank` of `world` in a full mesh of gloo TCP pairs: this rank listens on
 * addr (an IPv4 address of this host), or on network interface iface when not NULL, and
 * the ranks exchange their addresses through st's keys under "gloo/". timeout_s bounds the
 * connection and every later operation. */
gloo_shim_rc gloo_shim_open(store *st, int rank, int world, const char *addr, const char *iface, double timeout_s,
                            gloo_shim **out);
void gloo_shim_free(gloo_shim *g);

/* buf(n) summed over the ranks, in place. */
gloo_shim_rc gloo_shim_all_reduce(gloo_shim *g, void *buf, size_t n, gloo_shim_elem e, uint32_t tag);
/* buf(world*n) summed over the ranks; this rank's chunk n ends at buf[0..n) (the rest of buf
 * is scratch). world*n*element size must fit an int (gloo's halving-doubling takes int). */
gloo_shim_rc gloo_shim_reduce_scatter(gloo_shim *g, void *buf, size_t n, gloo_shim_elem e, uint32_t tag);
/* recv(world*bytes) gets every rank's send(bytes) in rank order; send NULL: already in place. */
gloo_shim_rc gloo_shim_all_gather(gloo_shim *g, const void *send, void *recv, size_t bytes, uint32_t tag);
/* buf(bytes) of rank root copied to every rank. */
gloo_shim_rc gloo_shim_broadcast(gloo_shim *g, void *buf, size_t bytes, int root, uint32_t tag);
gloo_shim_rc gloo_shim_barrier(gloo_shim *g, uint32_t tag);

/* acc(n) += in(n) in bf16 (comm.c; the one rounding rule of every communicator). */
void comm_bf16_sum(uint16_t *acc, const uint16_t *in, size_t n);

#ifdef __cplusplus
}
#endif

#endif
