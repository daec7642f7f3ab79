#!/usr/bin/env python3
"""Pads a tokenizer.json to V ids for benchmarks at a real model's vocabulary size.

    python3 scripts/pad_tokenizer.py tests/fixtures/tok2/llama3.json /tmp/tok128k.json 128256
    skein init --arch llama --preset llama3-8b --tokenizer /tmp/tok128k.json --out /tmp/l8

Every id the source lacks becomes a vocabulary entry "zqNNNNNN" (letters and digits, which a
byte-level BPE decodes as themselves) that no merge produces: text tokenizes exactly as with the
source, and every id a random-weight model emits decodes to text, so `skein bench serve` counts
its streams. Writes nothing else."""
import json
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: pad_tokenizer.py SRC.json OUT.json V")
    src, out, vocab = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(src) as f:
        tok = json.load(f)
    ids = tok["model"]["vocab"]
    used = set(ids.values()) | {t["id"] for t in tok.get("added_tokens", [])}
    if max(used) >= vocab:
        sys.exit(f"pad_tokenizer: {src} already has id {max(used)} >= {vocab}")
    for i in range(vocab):
        if i not in used:
            ids["zq%06d" % i] = i
    with open(out, "w") as f:
        json.dump(tok, f)


if __name__ == "__main__":
    main()
