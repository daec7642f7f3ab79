#!/bin/sh
# The demo's whole path at a small size (the full `make demo` takes minutes): corpus from
# python3-doc, tokenizer training, shards, GPT-2 training with a falling loss, loss curve,
# model folder, generation. Prints PASS/FAIL lines.
SK=${SKEIN:-./skein}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
if $SK demo --steps 80 --corpus-mb 0.3 --layers 1 --dim 64 --vocab-size 512 --out "$T/demo" >"$T/out" 2>"$T/err"; then
    echo "PASS demo_small_runs"
else
    echo "FAIL demo_small_runs: $(tail -3 "$T/err") $(tail -3 "$T/out")"
fi
for f in tokenizer.json data/dataset.json model/model.safetensors model/config.json model/loss.svg model/log.jsonl; do
    [ -s "$T/demo/$f" ] || { echo "FAIL demo_outputs: missing $f"; exit 0; }
done
echo "PASS demo_outputs"
if grep -q "falls clearly" "$T/out" && grep -q "== done" "$T/out"; then echo "PASS demo_loss_falls"
else echo "FAIL demo_loss_falls: $(grep loss "$T/out")"; fi
