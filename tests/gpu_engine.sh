#!/bin/sh
# The inference engine on the GPU through the command line (make test-gpu; needs a GPU): bench
# throughput and bench latency --device cuda over --preset gpt2 (random weights straight into
# the bf16 device copy, the GPU's default batch sizes) and over a small Llama folder with
# grouped-query heads (skein init; a long prompt for the split decode), each printing its JSON
# line, which must hold its speed (the speeds are for docs/benchmarks.md; nothing here judges them);
# and greedy tokens with and without the recorded graphs, which must agree. Prints
# PASS/FAIL/SKIP lines.
. tests/lib_gpu.sh

# run NAME KEY ARGS...: bench ARGS on the GPU; its last line (JSON) must hold KEY
run() {
    name=$1; key=$2; shift 2
    if ! $SK bench "$@" --device cuda >"$T/out" 2>"$T/err"; then fail "$name" "$(tail -3 "$T/err")"; return; fi
    grep -i 'GB/s' "$T/err" | sed 's/^/  /'
    tail -1 "$T/out" | sed 's/^/  /'
    if ! tail -1 "$T/out" | grep -q "\"$key\""; then fail "$name" "no $key in $(tail -1 "$T/out")"; return; fi
    pass "$name"
}
run gpu_bench_throughput_gpt2 output_tokens_per_s throughput --preset gpt2 --input-len 128 --output-len 128 --num-prompts 1024
run gpu_bench_latency_gpt2 decode_tokens_per_s latency --preset gpt2 --input-len 128 --output-len 128
if $SK init --arch llama --layers 4 --heads 8 --kv-heads 2 --dim 512 --context 1024 --vocab-size 32000 \
       --out "$T/llama" >"$T/init" 2>&1; then
    run gpu_bench_throughput_llama_gqa output_tokens_per_s throughput --model "$T/llama" --input-len 128 --output-len 128 --num-prompts 512
    run gpu_bench_latency_llama_long decode_tokens_per_s latency --model "$T/llama" --input-len 900 --output-len 100
else fail gpu_bench_llama_init "$(tail -3 "$T/init")"; fi
# Greedy tokens through the recorded decode graphs (where the products, kv_store and the decode
# attention are launched early: cuda_impl.cuh's cuda_launch) are the eager run's, bit for bit: one
# stream of 300 tokens over many cache blocks.
if $SK init --arch llama --layers 4 --heads 8 --kv-heads 2 --dim 512 --context 1024 --tokenizer $TOK \
       --out "$T/tiny" >"$T/init" 2>&1; then
    gen() {
        $SK generate --device cuda --model "$T/tiny" --prompt "the cat sat on the mat" --temperature 0 --max-tokens 300
    }
    if ! gen >"$T/graphs" 2>"$T/err" || ! SKEIN_CUDA_GRAPHS=0 gen >"$T/eager" 2>>"$T/err"; then
        fail gpu_generate_graphs_eager "$(tail -3 "$T/err")"
    elif ! cmp -s "$T/graphs" "$T/eager" || [ "$(wc -c <"$T/graphs")" -lt 300 ]; then
        fail gpu_generate_graphs_eager "graphs: $(head -c 200 "$T/graphs"); eager: $(head -c 200 "$T/eager")"
    else pass gpu_generate_graphs_eager; fi
else fail gpu_generate_init "$(tail -3 "$T/init")"; fi
