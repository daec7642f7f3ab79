/* rng: a small deterministic random generator (SplitMix64 seeding + xoshiro256**).
 * Its whole state is four words, saved in checkpoints for exact resume. */
#ifndef SKEIN_RNG_H
#define SKEIN_RNG_H

#include <stdint.h>

typedef struct rng { uint64_t s[4]; } rng;

void rng_seed(rng *r, uint64_t seed);
uint64_t rng_u64(rng *r);
float rng_uniform(rng *r);             /* in [0, 1) with 24 random bits */
float rng_normal(rng *r);              /* standard normal (Box-Muller) */
uint64_t rng_below(rng *r, uint64_t n); /* uniform in [0, n), n > 0, unbiased */

#endif
