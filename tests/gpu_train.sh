#!/bin/sh
# `skein train --device cuda` against the CPU run, through the command line (make test-gpu;
# needs a GPU): a tiny GPT-2 (with dropout, so the masks must match) and a tiny Llama (GQA)
# train 8 steps from the same folder on the same data on both devices, one process, ZeRO 0.
# Both run in f32 (TF32 off on the GPU), so they differ only by summation order and the
# exponentials' rounding: every step's loss must agree within 1e-4 relative and its
# gradient norm (a double, more sensitive) within 1e-3 relative, and the GPU run's loss
# must fall. Seen on an H200: losses equal in all 9 printed digits over the 8 steps. Also `skein bench train --device cuda` runs. Prints
# PASS/FAIL/SKIP lines.
SK=${SKEIN:-./skein}
TOK=tests/fixtures/tok2/llama3.json
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$SK" ] || { fail gpu_train "$SK is not built"; exit 1; }
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP gpu_train: no GPU here"; exit 0
fi
i=0
for f in README.md src/*/*.h; do i=$((i+1)); cp "$f" "$T/doc$i.txt"; done
$SK data prepare --tokenizer $TOK --input "$T"/doc*.txt --out "$T/data" 2>"$T/err" ||
    { fail gpu_train_data "$(tail -3 "$T/err")"; exit 1; }

# maxrel FIELD A B: max relative difference of FIELD in two log.jsonl files, line by line
maxrel() {
    awk -v f="\"$1\": " 'function val(line) { if (!match(line, f "[^,}]*")) return ""; return substr(line, RSTART + length(f), RLENGTH - length(f)) }
         NR==FNR { a[FNR] = val($0); next }
         { b = val($0); if (a[FNR] == "" || b == "" || a[FNR] == 0) { bad = 1; next }
           r = (a[FNR] - b) / a[FNR]; if (r < 0) r = -r; if (r > m) m = r; n++ }
         END { if (n == 0 || bad) print "none"; else printf "%g", m }' "$2" "$3"
}
# compare NAME INITFLAGS TRAINFLAGS: init once, train on cpu and cuda, compare the losses.
compare() {
    name=$1; init=$2; extra=$3
    if ! $SK init $init --context 128 --tokenizer $TOK --out "$T/$name-init" 2>"$T/err"; then
        fail "$name" "init: $(tail -3 "$T/err")"; return
    fi
    for dev in cpu cuda; do
        if ! $SK train --model "$T/$name-init" --data "$T/data" --out "$T/$name-$dev" --steps 8 --batch 4 --seq 64 \
            --lr 3e-3 --seed 5 --device $dev $extra --quiet 2>"$T/err"; then
            fail "$name" "train --device $dev: $(tail -3 "$T/err")"; return
        fi
    done
    d=$(maxrel loss "$T/$name-cpu/log.jsonl" "$T/$name-cuda/log.jsonl")
    g=$(maxrel grad_norm "$T/$name-cpu/log.jsonl" "$T/$name-cuda/log.jsonl")
    first=$(head -1 "$T/$name-cuda/log.jsonl" | sed 's/.*"loss": \([^,]*\).*/\1/')
    last=$(tail -1 "$T/$name-cuda/log.jsonl" | sed 's/.*"loss": \([^,]*\).*/\1/')
    echo "  $name: losses $first -> $last on cuda; max relative difference to cpu: loss $d, grad_norm $g"
    if [ "$d" != none ] && [ "$g" != none ] && awk "BEGIN { exit !($d <= 1e-4 && $g <= 1e-3 && $last < $first) }"
    then pass "$name"
    else fail "$name" "relative differences: loss $d, grad_norm $g; cuda loss $first -> $last"; fi
}
compare gpt2_cuda_matches_cpu "--arch gpt2 --layers 2 --heads 2 --dim 64" "--dropout"
compare llama_cuda_matches_cpu "--arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64" ""

if $SK bench train --model "$T/gpt2_cuda_matches_cpu-init" --device cuda --batch 4 --seq 64 --steps 3 >"$T/bench" 2>"$T/err" &&
   grep -q '"device": "cuda"' "$T/bench"; then pass bench_train_cuda
else fail bench_train_cuda "$(tail -3 "$T/err") $(cat "$T/bench")"; fi
