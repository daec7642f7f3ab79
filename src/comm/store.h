/* store: a small TCP key-value store for the torchrun-style launch (RANK, WORLD_SIZE,
 * MASTER_ADDR, MASTER_PORT), where no MPI is there to connect the processes. It carries what
 * NCCL and gloo need before they exist (rank 0's unique id, gloo's rendezvous keys) and
 * barriers; it holds the fetch-and-add counter of comm.h for communicators (NCCL, gloo) that
 * have no atomics; and it knows which ranks are connected and which collective each last
 * reported, so a rank whose collective failed can name the rank that is missing.
 *
 *   store *s;
 *   store_open(env.master_addr, env.master_port, env.rank, env.world, 300.0, &s);
 *   store_bcast(s, &id, sizeof id);   // rank 0's bytes to every rank
 *   store_barrier(s);
 *   store_free(s);
 *
 * Rank 0 runs a server thread listening on MASTER_PORT on every interface; every rank,
 * rank 0 included, is a client of it. store_open returns when every rank has connected.
 * Every call waits at most the timeout, then fails with SK_ECOMM and a message naming the
 * ranks that did not arrive (the server tells the waiting clients) or the unreachable server.
 * IPv4 only. Not thread-safe: one caller thread per store. */
#ifndef SKEIN_STORE_H
#define SKEIN_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

typedef struct store store;

/* Connects rank `rank` of `world` (rank 0 also starts the server). Clients retry the
 * connection until the timeout (rank 0 may start later). SK_EIO when rank 0 cannot listen on
 * the port (in use); SK_ECOMM when the world is not complete within the timeout. */
sk_status store_open(const char *addr, int port, int rank, int world, double timeout_s, store **out);
/* Every rank ends with rank 0's bytes(n); n must be the same everywhere (at most 1 MiB).
 * Collective: the k-th call on every rank is one broadcast. */
sk_status store_bcast(store *s, void *bytes, size_t n);
/* Stores bytes(n) under key, replacing any value (key 1 to 255 bytes, n at most 1 MiB; the
 * store holds at most 4096 keys). */
sk_status store_set(store *s, const char *key, const void *bytes, size_t n);
/* Waits until key is set, then *bytes (malloc'd, the caller frees; NULL when empty) and *n
 * get its value. SK_ECOMM naming the key when nobody sets it within the timeout. */
sk_status store_get(store *s, const char *key, void **bytes, size_t *n);
/* Returns when every rank has called it, or SK_ECOMM naming the missing ranks. */
sk_status store_barrier(store *s);
/* Atomic fetch-and-add on the store's counter (starts at 0): *old gets the value before. */
sk_status store_add(store *s, int64_t add, int64_t *old);
/* Sets the counter (any rank; callers order it with barriers). */
sk_status store_counter_set(store *s, int64_t value);
/* Tells the server, without waiting for an answer, where this rank is: any number the caller
 * gives meaning to (comm_gloo: the collective it enters, minus that when it failed there). */
sk_status store_progress(store *s, int64_t value);
/* Where every rank stands: value[r] (world) the last number rank r sent store_progress (0:
 * none yet), gone[r] (world) whether it has left (exited or died). */
sk_status store_status(store *s, int64_t *value, bool *gone);
/* Closes this rank's connection; on rank 0, stops the server once every client has left
 * (or after the timeout). */
void store_free(store *s);
/* The same, with rank 0 serving the others for at most linger_s seconds (a broken world,
 * where some rank may never leave). */
void store_close(store *s, double linger_s);

#endif
