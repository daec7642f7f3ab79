#!/bin/sh
# ZeRO-Offload on the GPU (make test-gpu; needs a GPU): `--offload optimizer` keeps the f32
# master weights and AdamW moments in pinned host memory and runs AdamW on the CPU cores, the
# device keeping the bf16 compute copy and the resident f32 tensors (train/offload.h).
#   offload_bf16_zero{1,2}  a GPT-2-small-shaped model (12 layers, 768 channels) trains 10
#                           steps in bf16 with and without offload: every loss within 1e-2
#                           relative (the CPU's AdamW rounds differently from the GPU's and the
#                           bf16 copies then differ by a rounding here and there; seen: far
#                           closer), the loss falling, and the device memory measured after
#                           the first step lower with offload by at least 7 bytes per
#                           parameter (the moments' 8 at f32, 12 less the resident tensors in
#                           bf16; 1 byte of slack for the allocator's rounding);
#   offload_f32_zero2       the same in f32 within 1e-4;
#   offload_resume_exact    an offloaded bf16 run stopped after step 5 and resumed gives the
#                           uninterrupted offloaded run's losses and final weights bit for bit;
#   bench_offload_cuda      bench train --offload optimizer prints the step's split as JSON.
. tests/lib_gpu.sh
gpu_data
$SK init --arch gpt2 --layers 12 --heads 12 --dim 768 --context 256 --tokenizer $TOK --out "$T/init" 2>"$T/err" ||
    { fail gpu_offload_init "$(tail -3 "$T/err")"; exit 1; }
R="--model $T/init --data $T/data --steps 10 --batch 8 --micro-batch 4 --seq 128 --lr 3e-4 --seed 5 --device cuda --quiet"

# maxrel A B: max relative difference of the losses of two log.jsonl files, line by line
maxrel() {
    awk 'function val(line) { if (!match(line, "\"loss\": [^,}]*")) return ""; return substr(line, RSTART + 8, RLENGTH - 8) }
         NR==FNR { a[FNR] = val($0); next }
         { b = val($0); if (a[FNR] == "" || b == "" || a[FNR] == 0) { bad = 1; next }
           r = (a[FNR] - b) / a[FNR]; if (r < 0) r = -r; if (r > m) m = r; n++ }
         END { if (n != 10 || bad) print "none"; else printf "%g", m }' "$1" "$2"
}
# the device memory measured after the first step (memory.json, rank 0)
held() { python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["ranks"][0]["measured_peak"]))' "$1/memory.json"; }

# compare NAME FLAGS TOL: with and without offload
compare() {
    name=$1; flags=$2; tol=$3
    if ! $SK train $R $flags --out "$T/$name-ref" 2>"$T/err" ||
       ! $SK train $R $flags --offload optimizer --out "$T/$name-off" 2>"$T/err"; then
        fail "$name" "$(tail -3 "$T/err")"; return
    fi
    d=$(maxrel "$T/$name-ref/log.jsonl" "$T/$name-off/log.jsonl")
    first=$(head -1 "$T/$name-off/log.jsonl" | sed 's/.*"loss": \([^,]*\).*/\1/')
    last=$(tail -1 "$T/$name-off/log.jsonl" | sed 's/.*"loss": \([^,]*\).*/\1/')
    n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["n_params"])' "$T/$name-off/memory.json")
    a=$(held "$T/$name-ref"); b=$(held "$T/$name-off")
    echo "  $name: losses $first -> $last with offload; max relative difference $d; device memory $a -> $b bytes ($n parameters)"
    if [ "$d" != none ] && awk "BEGIN { exit !($d <= $tol && $last < $first && $a - $b >= 7 * $n) }"
    then pass "$name"; else fail "$name" "difference $d, loss $first -> $last, device memory $a -> $b"; fi
}
compare offload_bf16_zero1 "--precision bf16 --zero 1" 1e-2
compare offload_bf16_zero2 "--precision bf16 --zero 2" 1e-2
compare offload_f32_zero2 "--zero 2" 1e-4

name=offload_resume_exact
O="$R --precision bf16 --zero 2 --offload optimizer"
if $SK train $O --out "$T/split" --stop-after 5 2>"$T/err" && $SK train $O --out "$T/split" --resume 2>>"$T/err"; then
    a=$(grep -o '"loss": [^,]*' "$T/offload_bf16_zero2-off/log.jsonl"); b=$(grep -o '"loss": [^,]*' "$T/split/log.jsonl")
    if [ -n "$a" ] && [ "$a" = "$b" ] && cmp -s "$T/offload_bf16_zero2-off/model.safetensors" "$T/split/model.safetensors"
    then pass $name; else fail $name "losses or final weights differ: $a / $b"; fi
else fail $name "$(tail -3 "$T/err")"; fi

name=bench_offload_cuda
if $SK bench train --model "$T/init" --device cuda --batch 8 --seq 128 --steps 3 --precision bf16 --zero 2 \
       --offload optimizer --recompute >"$T/bench" 2>"$T/err" &&
   python3 -c 'import json,sys; j = json.load(open(sys.argv[1])); assert j["offload"] and j["offload_adamw_ms"] > 0 and j["host_pinned_bytes"] >= 12 * j["params"]' "$T/bench"
then pass $name; cat "$T/bench"
else fail $name "$(tail -3 "$T/err") $(cat "$T/bench")"; fi
