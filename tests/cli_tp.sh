#!/bin/sh
# Tensor parallelism under mpirun: tests/test_tp (the cut, logits and greedy tokens against
# one process, the engine's followers) at 2, 3 and 4 ranks (3 and 4 oversubscribe a 2-core
# machine). Prints PASS/FAIL lines, or one SKIP line where mpirun is missing or MPI is not
# built in.
. tests/lib_serve.sh   # SK, TOK, T, PID, pass/fail, serve_start
B=${BUILD:-build}
BIN=$B/tests/test_tp
[ -x "$BIN" ] || { fail cli_tp "$BIN is not built"; exit 1; }
command -v mpirun >/dev/null 2>&1 || { echo "SKIP cli_tp: mpirun not found"; exit 0; }
ldd "$BIN" 2>/dev/null | grep -q libmpi || { echo "SKIP cli_tp: MPI is not built in"; exit 0; }
# Root in CI, shared memory without CMA in containers.
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_btl_vader_single_copy_mechanism=none
MPIRUN="mpirun --oversubscribe --bind-to none"

# ranks_ok N: every rank passes or skips every case of test_tp and the job exits 0.
ranks_ok() {
    n=$1
    timeout 300 $MPIRUN -n "$n" "$BIN" >"$T/out" 2>&1; rc=$?
    f=$(grep -c '^FAIL ' "$T/out"); p=$(grep -c '^PASS logits_match_the_whole_model$' "$T/out")
    if [ $rc -eq 0 ] && [ "$f" -eq 0 ] && [ "$p" -eq "$n" ]; then pass "tp_model_and_engine_n$n"
    else fail "tp_model_and_engine_n$n" "exit $rc, $f FAIL: $(grep -v '^PASS\|^SKIP' "$T/out" | head -20)"; fi
}
ranks_ok 2
ranks_ok 3
ranks_ok 4

# ---- the commands: skein generate, bench and serve with --tp ----
# a Llama with grouped KV heads (2 over 2 ranks, shared at 4), a GPT-2 and a Llama of 6 heads (3 ranks)
$SK init --arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64 --context 128 --tokenizer $TOK --out "$T/llama" >/dev/null 2>"$T/err" &&
$SK init --arch gpt2 --layers 2 --heads 6 --dim 48 --context 128 --tokenizer $TOK --out "$T/gpt2" >/dev/null 2>>"$T/err" &&
$SK init --arch llama --layers 2 --heads 6 --kv-heads 3 --dim 48 --ffn-dim 96 --context 128 --tokenizer $TOK --out "$T/llama6" >/dev/null 2>>"$T/err" ||
    { fail tp_init "$(tail -3 "$T/err")"; exit 1; }
# KV: extra generate flags for both sides of same_text (the cache dtype)
KV=""
gen() { $SK generate --model "$1" --prompt "static int" --max-tokens 16 --temperature 0 --seed 1 $KV 2>"$T/gen_err"; }
# same_text NAME MODEL TP [launcher]: greedy text with --tp TP equals the one process's
same_text() {
    name=$1; m=$2; k=$3; shift 3
    gen "$m" >"$T/one" && "$@" $SK generate --model "$m" --prompt "static int" --max-tokens 16 --temperature 0 --seed 1 \
        --tp "$k" $KV >"$T/split" 2>"$T/gen_err"; rc=$?
    if [ $rc -eq 0 ] && cmp -s "$T/one" "$T/split"; then pass "$name"
    else fail "$name" "exit $rc: '$(cat "$T/split")' vs '$(cat "$T/one")' $(tail -3 "$T/gen_err")"; fi
}
same_text tp_generate_llama_tp2 "$T/llama" 2
same_text tp_generate_llama_tp4_shared_kv "$T/llama" 4
same_text tp_generate_gpt2_tp2 "$T/gpt2" 2
same_text tp_generate_gpt2_tp3 "$T/gpt2" 3
same_text tp_generate_llama6_tp3 "$T/llama6" 3
same_text tp_generate_under_mpirun "$T/llama" 2 $MPIRUN -n 2
# an f16 KV cache (--kv-cache-dtype): every rank keeps its heads' share in f16, the text as one process's
KV="--kv-cache-dtype f16"
same_text tp_generate_llama_tp2_f16_cache "$T/llama" 2
grep -q "kv cache f16" "$T/gen_err" && pass tp_generate_f16_cache_named || fail tp_generate_f16_cache_named "$(tail -2 "$T/gen_err")"
same_text tp_generate_gpt2_tp3_f16_cache "$T/gpt2" 3
KV=""
# the layers' sums and the logits' gather staged through pinned pieces of 64 bytes, the GPU's
# path when ranks share one (comm_stage.h's test hooks: the CPU backend's copies are memcpy)
export SKEIN_COMM_STAGE=1 SKEIN_COMM_STAGE_BYTES=64
same_text tp_generate_staged "$T/gpt2" 2
unset SKEIN_COMM_STAGE SKEIN_COMM_STAGE_BYTES

# shapes that do not divide: refused before any rank starts, naming them
$SK generate --model "$T/llama" --prompt x --tp 3 >/dev/null 2>"$T/err"; rc=$?
if [ $rc -eq 1 ] && grep -q "tp 3: the model's 4 attention heads do not divide over 3 ranks" "$T/err"; then pass tp_refuses_heads
else fail tp_refuses_heads "exit $rc: $(cat "$T/err")"; fi
$SK generate --model "$T/llama6" --prompt x --tp 2 >/dev/null 2>"$T/err"; rc=$?
if [ $rc -eq 1 ] && grep -q "3 key/value heads neither divide over 2 ranks" "$T/err"; then pass tp_refuses_kv_heads
else fail tp_refuses_kv_heads "exit $rc: $(cat "$T/err")"; fi
timeout 60 $MPIRUN -n 3 $SK generate --model "$T/llama" --prompt x --tp 2 >/dev/null 2>"$T/err"; rc=$?
if [ $rc -ne 0 ] && grep -q "tp 2: this launch has 3 ranks" "$T/err"; then pass tp_refuses_other_world
else fail tp_refuses_other_world "exit $rc: $(head -5 "$T/err")"; fi

# bench throughput and latency: the JSON line reports every rank
$SK bench throughput --model "$T/llama" --input-len 8 --output-len 8 --num-prompts 6 --tp 2 >"$T/bt" 2>"$T/err"; rc=$?
if [ $rc -eq 0 ] && tail -1 "$T/bt" | grep -q '"tp": 2,.*"comm_fraction": \(0\.[0-9]\|1,\).*"ranks": \[{"rank": 0, .*{"rank": 1, '
then pass tp_bench_throughput
else fail tp_bench_throughput "exit $rc: $(tail -1 "$T/bt") $(tail -3 "$T/err")"; fi
$SK bench latency --model "$T/gpt2" --input-len 8 --output-len 8 --iters 1 --tp 3 --kv-cache-dtype bf16 >"$T/bl" 2>"$T/err"; rc=$?
if [ $rc -eq 0 ] && tail -1 "$T/bl" | grep -q '"tp": 3,.*"kv_dtype": "bf16",.*"decode_comm_fraction": 0\.[0-9].*{"rank": 2, '; then pass tp_bench_latency
else fail tp_bench_latency "exit $rc: $(tail -1 "$T/bl") $(tail -3 "$T/err")"; fi
# bench load: each of 2 ranks opens and reads only its share of an 82 MB GPT-2 folder (12 heads
# of 64, vocabulary 8192): 40-60% of the files each, and no more than 65% resident
$SK init --arch gpt2 --layers 2 --heads 12 --dim 768 --context 128 --vocab-size 8192 --out "$T/g82" >/dev/null 2>"$T/err"
timeout 120 $SK bench load --model "$T/g82" --tp 2 >"$T/bload" 2>>"$T/err"; rc=$?
if [ $rc -eq 0 ] && msg=$(python3 - "$T/bload" <<'PYEOF' 2>&1
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
f = j['file_bytes']
if j['tp'] != 2 or len(j['ranks']) != 2 or f < 80e6: sys.exit('line: %s' % j)
for r in j['ranks']:
    if not (0.4 * f <= r['share_bytes'] <= 0.6 * f and 0 < r['resident_bytes'] <= 0.65 * f and r['split_s'] > 0):
        sys.exit('rank %d of %d file bytes: %s' % (r['rank'], f, r))
PYEOF
); then pass tp_bench_load
else fail tp_bench_load "exit $rc: ${msg:-$(tail -3 "$T/err")}"; fi
rm -rf "$T/g82"

# a rank killed in the middle of a request (its third step) ends the job, naming the rank
SKEIN_TEST_KILL_RANK=1:3 timeout 60 $SK generate --model "$T/llama" --prompt "static int" --max-tokens 12 --tp 2 \
    >/dev/null 2>"$T/err"; rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "rank 1.*signal 9\|rank(s) 1" "$T/err"; then pass tp_generate_rank_killed
else fail tp_generate_rank_killed "exit $rc: $(grep -v '^\s*$' "$T/err" | head -5)"; fi

# ---- skein serve --tp 2 (serve_start: lib_serve.sh) ----
command -v curl >/dev/null 2>&1 || { echo "SKIP tp_serve: curl not found"; exit 0; }
body='{"prompt": "static int", "max_tokens": 16, "temperature": 0}'
gen "$T/llama" >"$T/one"
if serve_start "$T/slog" --model "$T/llama" --tp 2; then
    st=$(curl -s -m 30 -o "$T/comp" -w '%{http_code}' -d "$body" $U/v1/completions)
    want=$(python3 -c "import sys; t=open(sys.argv[1],'rb').read().decode('utf-8','replace'); print(repr(t[len('static int'):-1]))" "$T/one")
    got=$(python3 -c "import json,sys; print(repr(json.load(open(sys.argv[1]))['choices'][0]['text']))" "$T/comp" 2>/dev/null)
    if [ "$st" = 200 ] && [ "$want" = "$got" ]; then pass tp_serve_equals_generate
    else fail tp_serve_equals_generate "$st: $got vs $want $(cat "$T/comp")"; fi
    kill $PID; i=0
    while kill -0 $PID 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    if kill -0 $PID 2>/dev/null; then fail tp_serve_stops "still running 10 s after SIGTERM"
    else wait $PID; rc=$?; [ $rc -eq 0 ] && pass tp_serve_stops || fail tp_serve_stops "exit $rc: $(tail -3 "$T/slog")"; fi
else fail tp_serve_equals_generate "no server: $(tail -5 "$T/slog")"; fi
PID=""

# rank 1 dies in the middle of a request: the request gets a 500 naming it, the server exits 1
export SKEIN_TEST_KILL_RANK=1:3
if serve_start "$T/slog" --model "$T/llama" --tp 2 --comm-timeout 3; then
    st=$(curl -s -m 60 -o "$T/comp" -w '%{http_code}' -d "$body" $U/v1/completions)
    if [ "$st" = 500 ] && grep -q 'rank(s) 1' "$T/comp"; then pass tp_serve_rank_killed_answers
    else fail tp_serve_rank_killed_answers "$st: $(cat "$T/comp")"; fi
    i=0
    while kill -0 $PID 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
    if kill -0 $PID 2>/dev/null; then fail tp_serve_rank_killed_exits "still running 20 s later"
    else wait $PID; rc=$?; PID=""
        if [ $rc -eq 1 ] && grep -q "its 2 ranks failed.*rank(s) 1.*the server stops" "$T/slog"; then pass tp_serve_rank_killed_exits
        else fail tp_serve_rank_killed_exits "exit $rc: $(tail -3 "$T/slog")"; fi
    fi
else fail tp_serve_rank_killed_answers "no server: $(tail -5 "$T/slog")"; fi
