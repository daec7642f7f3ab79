"""Writes the tiny token stream of the distributed training tests (tests/lib_dist.sh for
cli_zero.sh and cli_gloo.sh; tests/check_ray.py) as a skein token shard: 4000 tokens over a
vocabulary of 29, mostly the repeating pattern (3 i) mod 29 with every 7th token random
(seed 3), so that a 2-layer model learns something in 20 steps.
Usage: tiny_tokens.py OUT, or write(path) from Python."""
import random
import struct
import sys


def write(path: str) -> None:
    """Writes the shard to path: a 256-int header (magic 20251127, version 1, 2-byte tokens,
    vocabulary size, token count at bytes 16-23), then the tokens as little-endian uint16."""
    rng = random.Random(3)
    V, N = 29, 4000
    toks = [(rng.randrange(V) if i % 7 == 0 else (i * 3) % V) for i in range(N)]
    hdr = [0] * 256
    hdr[0], hdr[1], hdr[2], hdr[3] = 20251127, 1, 2, V
    h = struct.pack("<256i", *hdr)
    h = h[:16] + struct.pack("<q", N) + h[24:]
    with open(path, "wb") as f:
        f.write(h + struct.pack("<%dH" % N, *toks))


if __name__ == "__main__":
    write(sys.argv[1])
