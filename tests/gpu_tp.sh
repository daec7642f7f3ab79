#!/bin/sh
# Tensor parallelism on the GPU (make test-gpu; needs a GPU and mpirun). With one GPU the 2
# ranks share it through the MPI communicator, which stages the layers' all-reduces and the
# logits' gather through pinned host memory (NCCL refuses two ranks on one GPU; --comm auto
# picks MPI itself); with a GPU per rank auto picks NCCL and the same checks hold. Against one
# process on the same GPU:
#   gpu_tp_model_bf16       tests/test_tp under mpirun -n 2 on cuda, bf16 inference (the GPU's
#                           default: the share's slices in the whole device copy's dtypes): the
#                           cut, the logits of 8 models within 8e-2 or 2^-5 of their largest magnitude (test_engine's bf16
#                           tolerance) with the same greedy tokens away from near-ties (top two
#                           within 0.1), the engine's followers, each rank's device slices within
#                           5% of half the whole model's device copy (printed);
#   gpu_tp_model_f32        the same with SKEIN_INFER_DTYPE=f32 (f32 slices and activations):
#                           logits within 1e-4, every greedy token (the CPU's tolerance);
#   gpu_tp_generate_*_f32   skein generate --tp 2 --device cuda started by hand (it runs mpirun)
#                           prints the text --tp 1 prints on cuda, greedy, f32 inference (random
#                           weights' logits stand too close for bf16 to order them alike; bf16
#                           tokens are test_tp's, away from near-ties);
#   gpu_tp_generate_bf16    the same in bf16 runs and generates its 16 tokens;
#   gpu_tp_generate_rank_killed  rank 1 SIGKILLed at its third step: the job ends non-zero
#                           within 120 s naming rank 1 (cli_tp.sh's check, on the GPU);
#   gpu_tp_bench_latency    bench latency --tp 2 --device cuda: decode_comm_fraction in [0, 1]
#                           (the decode steps' share in the staged collectives, timed after the
#                           compute stream drained), each rank's slice_bytes 40-60% of the bf16
#                           folder's bytes (its half of the device copy), rank 0's log line of
#                           its slices and the JSON line printed;
#   gpu_tp_bench_throughput comm_fraction in [0, 1];
#   gpu_tp_serve            skein serve --tp 2 --device cuda (f32): a greedy completion's text is
#                           generate --tp 1's on cuda, and SIGTERM stops it with exit status 0;
#   gpu_tp_serve_replica_group  the same through serve --replica-process --tp 2 --devices 0,1: a
#                           process replica of 2 ranks on 2 GPUs of their own (NCCL; skipped
#                           with fewer than 2 GPUs);
#   gpu_tp_train_f32_*      train --tp 2 --device cuda --comm mpi: every step's loss within 1e-4
#                           relative of --tp 1 on cuda (f32; TF32 off: make test-gpu);
#   gpu_tp_train_bf16_gpt2  --precision bf16: within 2e-3 (gpu_dp.sh's bf16 tolerance);
#   gpu_tp2_dp2_zero1       4 ranks on the one GPU, TP 2 x DP 2 at ZeRO-1: within 1e-4.
# Prints PASS/FAIL/SKIP lines.
. tests/lib_gpu.sh
gpu_mpi
B=${BUILD:-build}

# test_tp's cases on cuda, 2 ranks: every rank passes every case it runs
for dt in bf16 f32; do
    name=gpu_tp_model_$dt
    if [ ! -x "$B/tests/test_tp" ]; then fail $name "$B/tests/test_tp is not built"; continue; fi
    SKEIN_TEST_DEVICE=cuda SKEIN_INFER_DTYPE=$dt $MPIRUN -n 2 -x SKEIN_TEST_DEVICE -x SKEIN_INFER_DTYPE \
        "$B/tests/test_tp" >"$T/out" 2>&1; rc=$?
    grep '^  rank' "$T/out" | sed 's/^/  /'
    f=$(grep -c '^FAIL ' "$T/out"); p=$(grep -c '^PASS logits_match_the_whole_model$' "$T/out")
    if [ $rc -eq 0 ] && [ "$f" -eq 0 ] && [ "$p" -eq 2 ]; then pass $name
    else fail $name "exit $rc, $f FAIL: $(grep -v '^PASS\|^SKIP' "$T/out" | head -20)"; fi
done

# ---- the commands ----
$SK init --arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64 --context 128 --tokenizer $TOK --out "$T/llama" \
    >/dev/null 2>"$T/err" &&
$SK init --arch gpt2 --layers 2 --heads 6 --dim 48 --context 128 --tokenizer $TOK --out "$T/gpt2" >/dev/null 2>>"$T/err" ||
    { fail gpu_tp_init "$(tail -3 "$T/err")"; exit 1; }
# same_text NAME MODEL: greedy f32 text at --tp 2 equals --tp 1's, both on cuda
same_text() {
    export SKEIN_INFER_DTYPE=f32
    $SK generate --model "$2" --prompt "static int" --max-tokens 16 --temperature 0 --seed 1 --device cuda \
        >"$T/one" 2>"$T/err1"; rc1=$?
    $SK generate --model "$2" --prompt "static int" --max-tokens 16 --temperature 0 --seed 1 --device cuda --tp 2 \
        >"$T/split" 2>"$T/err2"; rc2=$?
    unset SKEIN_INFER_DTYPE
    if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ -s "$T/one" ] && cmp -s "$T/one" "$T/split"; then pass "$1"
    else fail "$1" "exit $rc1/$rc2: '$(cat "$T/split")' vs '$(cat "$T/one")' $(tail -3 "$T/err1") $(tail -3 "$T/err2")"; fi
}
same_text gpu_tp_generate_llama_f32 "$T/llama"
same_text gpu_tp_generate_gpt2_f32 "$T/gpt2"

name=gpu_tp_generate_bf16
if $SK generate --model "$T/llama" --prompt "static int" --max-tokens 16 --temperature 0 --seed 1 --device cuda --tp 2 \
       >"$T/split" 2>"$T/err" && grep -q '16 generated' "$T/err"
then pass $name; else fail $name "$(tail -3 "$T/err")"; fi

name=gpu_tp_generate_rank_killed
SKEIN_TEST_KILL_RANK=1:3 timeout 120 $SK generate --model "$T/llama" --prompt "static int" --max-tokens 12 --tp 2 \
    --device cuda >/dev/null 2>"$T/err"; rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "rank 1.*signal 9\|rank(s) 1" "$T/err"; then pass $name
else fail $name "exit $rc: $(grep -v '^\s*$' "$T/err" | head -5)"; fi

# bench latency and throughput: the JSON line's communication fractions and each rank's share
name=gpu_tp_bench_latency
if $SK bench latency --model "$T/llama" --input-len 32 --output-len 32 --iters 2 --tp 2 --device cuda \
       >"$T/bl" 2>"$T/err"; then
    grep 'slices on the' "$T/err" | sed 's/^/  /'
    tail -1 "$T/bl" | sed 's/^/  /'
    if msg=$(python3 - "$T/bl" 2>&1 <<'PYEOF'
import json, sys
j = json.loads(open(sys.argv[1]).read().splitlines()[-1])
f = j['decode_comm_fraction']
if j['tp'] != 2 or len(j['ranks']) != 2 or not 0 <= f <= 1: sys.exit('tp %d, %d ranks, fraction %g' % (j['tp'], len(j['ranks']), f))
for r in j['ranks']:
    share = r['slice_bytes'] / j['model_bytes']
    if not 0.4 <= share <= 0.6: sys.exit('rank %d: slices %.0f bytes, %.2f of the folder' % (r['rank'], r['slice_bytes'], share))
PYEOF
    ); then pass $name; else fail $name "$msg"; fi
else fail $name "$(tail -3 "$T/err")"; fi

name=gpu_tp_bench_throughput
if $SK bench throughput --model "$T/llama" --input-len 16 --output-len 16 --num-prompts 16 --tp 2 --device cuda \
       >"$T/bt" 2>"$T/err" &&
   python3 -c "import json,sys; j=json.loads(open(sys.argv[1]).read().splitlines()[-1]); assert j['tp']==2 and 0<=j['comm_fraction']<=1" "$T/bt"
then tail -1 "$T/bt" | sed 's/^/  /'; pass $name; else fail $name "$(tail -3 "$T/err") $(tail -1 "$T/bt")"; fi

# serve_text NAME FLAGS...: skein serve FLAGS on the llama folder (f32 for exact text): a greedy
# completion's text is generate --tp 1's on cuda, and SIGTERM stops it with exit status 0
serve_text() {
    name=$1; shift
    if ! command -v curl >/dev/null 2>&1; then echo "SKIP $name: curl not found"; return; fi
    export SKEIN_INFER_DTYPE=f32
    $SK generate --model "$T/llama" --prompt "static int" --max-tokens 16 --temperature 0 --seed 1 --device cuda \
        >"$T/one" 2>/dev/null
    $SK serve --model "$T/llama" --port 0 "$@" 2>"$T/slog" &
    PID=$!
    trap 'kill "$PID" 2>/dev/null; rm -rf "$T"' EXIT
    unset SKEIN_INFER_DTYPE
    i=0   # two CUDA ranks start: up to 60 s
    while ! grep -q 'listening on' "$T/slog" && [ $i -lt 600 ] && kill -0 $PID 2>/dev/null; do sleep 0.1; i=$((i+1)); done
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$T/slog")
    if [ -z "$port" ]; then fail $name "no server: $(tail -5 "$T/slog")"; return; fi
    st=$(curl -s -m 60 -o "$T/comp" -w '%{http_code}' -d '{"prompt": "static int", "max_tokens": 16, "temperature": 0}' \
         http://127.0.0.1:$port/v1/completions)
    want=$(python3 -c "import sys; t=open(sys.argv[1],'rb').read().decode('utf-8','replace'); print(repr(t[len('static int'):-1]))" "$T/one")
    got=$(python3 -c "import json,sys; print(repr(json.load(open(sys.argv[1]))['choices'][0]['text']))" "$T/comp" 2>/dev/null)
    kill $PID; i=0
    while kill -0 $PID 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
    if kill -0 $PID 2>/dev/null; then rc="still running 20 s after SIGTERM"; else wait $PID; rc=$?; fi
    if [ "$st" = 200 ] && [ "$want" = "$got" ] && [ "$rc" = 0 ]; then pass $name
    else fail $name "HTTP $st, exit $rc: $got vs $want $(tail -3 "$T/slog")"; fi
}
# --tp 2: rank 0's replica on its GPU, rank 1 following
serve_text gpu_tp_serve --device cuda --tp 2
# a process replica of 2 ranks on 2 GPUs of their own (NCCL): needs 2 GPUs
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then serve_text gpu_tp_serve_replica_group --device cuda --devices 0,1 --replica-process --tp 2
else echo "SKIP gpu_tp_serve_replica_group: needs 2 GPUs (a process replica's 2 ranks, a GPU each)"; fi

# ---- training: --tp 2 against --tp 1 on the same GPU ----
TEST=gpu_tp
. tests/lib_dist.sh   # $T/tokens.bin and close()
$SK init --arch gpt2 --layers 2 --heads 2 --dim 64 --context 32 --vocab-size 29 --out "$T/tgpt2" >/dev/null 2>&1 &&
$SK init --arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64 --ffn-dim 128 --context 32 --vocab-size 29 --dtype f32 \
    --out "$T/tllama" >/dev/null 2>&1 || { fail gpu_tp_train "init failed"; exit 1; }
F="--data $T/tokens.bin --steps 8 --batch 8 --micro-batch 2 --seq 16 --lr 3e-3 --device cuda --quiet"
# train_tp NAME MODEL TOL RANKS FLAGS...: RANKS ranks at --tp 2 against one process, the same flags
train_tp() {
    name=$1; m=$2; tol=$3; n=$4; shift 4
    if ! $SK train --model "$m" $F "$@" --out "$T/ref_$name" 2>"$T/err"; then
        fail $name "one process: $(tail -3 "$T/err")"; return
    fi
    if ! $MPIRUN -n $n $SK train --model "$m" $F "$@" --tp 2 --comm mpi --out "$T/$name" >"$T/err" 2>&1; then
        fail $name "exit status $?: $(tail -5 "$T/err")"; return
    fi
    if msg=$(close "$T/ref_$name" "$T/$name" $tol 2>&1) && grep -q "\"world_size\": $n, .*\"tp\": 2" "$T/$name/log.jsonl"
    then pass $name; else fail $name "$msg"; fi
}
train_tp gpu_tp_train_f32_gpt2 "$T/tgpt2" 1e-4 2
train_tp gpu_tp_train_f32_llama "$T/tllama" 1e-4 2
train_tp gpu_tp_train_bf16_gpt2 "$T/tgpt2" 2e-3 2 --precision bf16
train_tp gpu_tp2_dp2_zero1 "$T/tgpt2" 1e-4 4 --zero 1
