#!/bin/sh
# `skein bench attention` on the GPU (make test-gpu; needs a GPU): one layer's causal attention
# forward + backward in bf16 at GPT-2 124M's shape (batch 32, 12 heads of 64, 1024 tokens,
# packed qkv) on the own kernels, cuDNN's (deterministic backward) and cuDNN's
# non-deterministic backward, then at a Llama GQA shape (batch 4, 32:8 heads of 128, 2048
# tokens) on the own kernels and cuDNN's. Each JSON line names what ran each way and the
# layer's milliseconds; the lines and cuDNN's plan notes (or its warning) go to the log. Where
# skein is built with cuDNN, the cudnn runs must have run on cuDNN both ways (a warning on
# stderr says why not). Prints PASS/FAIL/SKIP lines.
. tests/lib_gpu.sh

# bench NAME IMPLS FLAGS: runs bench attention, shows its lines and notes, checks them
bench() {
    name=$1; impls=$2; shift 2
    if ! $SK bench attention --device cuda --impls "$impls" --iters 10 "$@" >"$T/out" 2>"$T/err"; then
        fail "$name" "$(tail -3 "$T/err")"; return
    fi
    sed 's/^/  /' "$T/err"
    sed 's/^/  /' "$T/out"
    n=$(grep -c '"bench": "attention"' "$T/out")
    want=$(echo "$impls" | tr ',' '\n' | grep -c .)
    if [ "$n" -ne "$want" ]; then fail "$name" "$n result lines for $want implementations"; return; fi
    if grep -q 'built without cuDNN' "$T/err"; then
        echo "  $name: skein is built without cuDNN: its lines ran the own kernels"
    elif grep '"requested": "cudnn' "$T/out" | grep -v -q '"forward": "cudnn", "backward": "cudnn"'; then
        fail "$name" "a cudnn run did not run on cuDNN both ways (see the warning above)"; return
    fi
    pass "$name"
}
bench gpu_bench_attention_gpt2 own,cudnn,cudnn-nondeterministic
bench gpu_bench_attention_llama_gqa own,cudnn --batch 4 --seq 2048 --heads 32 --kv-heads 8 --head-size 128
