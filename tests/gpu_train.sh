#!/bin/sh
# `skein train --device cuda` against the CPU run, through the command line (make test-gpu;
# needs a GPU): a tiny GPT-2 (with dropout, so the masks must match) and a tiny Llama (GQA)
# train 8 steps from the same folder on the same data on both devices, one process, ZeRO 0.
# Both run in f32 (TF32 off on the GPU), so they differ only by summation order and the
# exponentials' rounding: every step's loss must agree within 1e-4 relative and its
# gradient norm (a double, more sensitive) within 1e-3 relative, and the GPU run's loss
# must fall. Seen on an H200: losses equal in all 9 printed digits over the 8 steps.
# Then bf16 mixed precision (--precision bf16) on the GPU against the same f32 CPU runs: bf16
# keeps 8 mantissa bits, so every step's loss within 2% and the loss falling; exact resume on
# the GPU (a bf16 run stopped after step 4 and resumed gives the uninterrupted run's losses
# and final weights bit for bit; GPT-2 with dropout, Llama on cuDNN's attention where built);
# the GPU run's folder loads on the CPU (skein generate) and,
# where python3 has transformers, in transformers (tests/check_hf_load*.py). Also `skein
# bench train --device cuda` runs, f32 and bf16 with --recompute. Prints PASS/FAIL/SKIP lines.
. tests/lib_gpu.sh
gpu_data

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
    name=$1; init=$2; extra=$3; tol_loss=${4:-1e-4}; tol_norm=${5:-1e-3}; cuda_extra=$6
    if ! $SK init $init --context 128 --tokenizer $TOK --out "$T/$name-init" 2>"$T/err"; then
        fail "$name" "init: $(tail -3 "$T/err")"; return
    fi
    for dev in cpu cuda; do
        flags="$extra"; [ $dev = cuda ] && flags="$extra $cuda_extra"
        if ! $SK train --model "$T/$name-init" --data "$T/data" --out "$T/$name-$dev" --steps 8 --batch 4 --seq 64 \
            --lr 3e-3 --seed 5 --device $dev $flags --quiet 2>"$T/err"; then
            fail "$name" "train --device $dev: $(tail -3 "$T/err")"; return
        fi
    done
    d=$(maxrel loss "$T/$name-cpu/log.jsonl" "$T/$name-cuda/log.jsonl")
    g=$(maxrel grad_norm "$T/$name-cpu/log.jsonl" "$T/$name-cuda/log.jsonl")
    first=$(head -1 "$T/$name-cuda/log.jsonl" | sed 's/.*"loss": \([^,]*\).*/\1/')
    last=$(tail -1 "$T/$name-cuda/log.jsonl" | sed 's/.*"loss": \([^,]*\).*/\1/')
    echo "  $name: losses $first -> $last on cuda; max relative difference to cpu: loss $d, grad_norm $g"
    if [ "$d" != none ] && [ "$g" != none ] && awk "BEGIN { exit !($d <= $tol_loss && $g <= $tol_norm && $last < $first) }"
    then pass "$name"
    else fail "$name" "relative differences: loss $d, grad_norm $g; cuda loss $first -> $last"; fi
}
compare gpt2_cuda_matches_cpu "--arch gpt2 --layers 2 --heads 2 --dim 64" "--dropout"
compare llama_cuda_matches_cpu "--arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64" ""
compare gpt2_cuda_bf16_tracks_cpu "--arch gpt2 --layers 2 --heads 2 --dim 64" "--dropout" 2e-2 1e-1 "--precision bf16"
compare llama_cuda_bf16_tracks_cpu "--arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64" "" 2e-2 1e-1 \
    "--precision bf16 --recompute"

# exact resume on the GPU, in bf16: stop after step 4, resume, compare with the whole run.
# resume NAME INIT FLAGS: GPT-2 with dropout runs its attention on the own kernels, Llama
# without on cuDNN's (its deterministic backward) where skein is built with cuDNN.
resume() {
    R="--model $T/$2 --data $T/data --steps 8 --batch 4 --seq 64 --lr 3e-3 --seed 5 --device cuda --precision bf16
       --quiet $3"
    rm -rf "$T/whole" "$T/split"
    if $SK train $R --out "$T/whole" 2>"$T/err" && $SK train $R --out "$T/split" --stop-after 4 2>>"$T/err" &&
       $SK train $R --out "$T/split" --resume 2>>"$T/err"; then
        a=$(grep -o '"loss": [^,]*' "$T/whole/log.jsonl"); b=$(grep -o '"loss": [^,]*' "$T/split/log.jsonl")
        if [ -n "$a" ] && [ "$a" = "$b" ] && cmp -s "$T/whole/model.safetensors" "$T/split/model.safetensors"
        then pass "$1"; else fail "$1" "losses or final weights differ: $a / $b"; fi
    else fail "$1" "$(tail -3 "$T/err")"; fi
}
resume gpu_resume_is_exact gpt2_cuda_matches_cpu-init --dropout
resume gpu_resume_is_exact_llama llama_cuda_matches_cpu-init ""

# the GPU run's folder on the CPU and in transformers
if $SK generate --model "$T/gpt2_cuda_bf16_tracks_cpu-cuda" --prompt "the" --max-tokens 4 --temperature 0 \
       --device cpu >"$T/gen" 2>"$T/err"; then pass gpu_checkpoint_runs_on_cpu
else fail gpu_checkpoint_runs_on_cpu "$(tail -3 "$T/err")"; fi
if python3 -c 'import transformers' 2>/dev/null; then
    if python3 tests/check_hf_load.py "$T/gpt2_cuda_bf16_tracks_cpu-cuda" >"$T/hf" 2>&1 && grep -q '^OK' "$T/hf" &&
       python3 tests/check_hf_load_llama.py "$T/llama_cuda_bf16_tracks_cpu-cuda" >"$T/hf2" 2>&1 && grep -q '^OK' "$T/hf2"
    then pass gpu_checkpoint_loads_in_transformers
    else fail gpu_checkpoint_loads_in_transformers "$(tail -3 "$T/hf") $(tail -3 "$T/hf2")"; fi
else echo "SKIP gpu_checkpoint_loads_in_transformers: python3 has no transformers here"; fi

if $SK bench train --model "$T/gpt2_cuda_matches_cpu-init" --device cuda --batch 4 --seq 64 --steps 3 >"$T/bench" 2>"$T/err" &&
   grep -q '"device": "cuda"' "$T/bench" &&
   $SK bench train --model "$T/llama_cuda_matches_cpu-init" --device cuda --batch 4 --seq 64 --steps 3 \
       --precision bf16 --recompute >"$T/bench" 2>"$T/err" && grep -q '"precision": "bf16"' "$T/bench"
then pass bench_train_cuda
else fail bench_train_cuda "$(tail -3 "$T/err") $(cat "$T/bench")"; fi
