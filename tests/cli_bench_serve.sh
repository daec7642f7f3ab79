#!/bin/sh
# skein bench serve against skein serve on the CPU, talking only to 127.0.0.1: a tiny
# random-weight Llama folder (the Llama-3-style fixture tokenizer, which adds one BOS) served
# with an API key, 2 sequences at most and no queue. Checks: at rate inf with --concurrency 2
# (completions) and at a finite rate (chat), every request completes with exactly N*O output
# tokens (ignore_eos), the prompts are I tokens (+ BOS) through the server's tokenizer, every
# vLLM field is there, TTFT <= e2el and median <= p99; without a concurrency limit 8 requests
# at once meet 503s, counted as failed with the server's message on stderr, exit 0 (some
# completed); a wrong key and a port where nothing listens fail every request with a clear
# message and exit 1; 40 requests at once against 4 connections end within seconds (a 503 closes
# its connection); bad flags exit 2 naming the flag. Prints PASS/FAIL lines.
. tests/lib_serve.sh
command -v python3 >/dev/null 2>&1 || { echo "SKIP cli_bench_serve: python3 not found"; exit 0; }
KEY=bench-key
if ! $SK init --arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64 --context 128 --tokenizer $TOK --out "$T/m" >/dev/null 2>"$T/err"
then fail bench_serve_init "$(tail -2 "$T/err")"; exit 1; fi
serve_start "$T/log" --model "$T/m" --api-key $KEY --chat-template llama3 --max-seqs 2 --max-queue 0 ||
    { fail bench_serve_start "$(cat "$T/log")"; exit 1; }

# check NAME N I O INPUT: the JSON line in $T/NAME.out against N requests of I + O tokens;
# INPUT exact: total_input_tokens is N * (I + 1)
cat > "$T/check.py" <<'PY'
import json, sys
name, N, I, O, exact = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == 'exact'
j = json.loads(open(name).read().strip().splitlines()[-1])
stats = ['%s_%s_ms' % (s, m) for m in ('ttft', 'tpot', 'itl', 'e2el') for s in ('mean', 'median', 'std', 'p99')]
fields = ['duration', 'completed', 'failed', 'total_input_tokens', 'total_output_tokens', 'request_throughput',
          'output_throughput', 'total_token_throughput'] + stats
missing = [f for f in fields if not isinstance(j.get(f), (int, float))]
assert not missing, 'missing %s' % missing
assert j['completed'] == N and j['failed'] == 0, j
assert j['total_output_tokens'] == N * O, j['total_output_tokens']
if exact:
    assert j['total_input_tokens'] == N * (I + 1), j['total_input_tokens']
else:
    assert j['total_input_tokens'] > N * I, j['total_input_tokens']
for s in ('mean', 'median', 'p99'):
    assert 0 < j[s + '_ttft_ms'] <= j[s + '_e2el_ms'], (s, j)
for m in ('ttft', 'tpot', 'itl', 'e2el'):
    assert 0 <= j['median_%s_ms' % m] <= j['p99_%s_ms' % m], (m, j)
d = j['duration']
assert d > 0 and abs(j['request_throughput'] - N / d) < 1e-6 * N / d, j
assert abs(j['output_throughput'] - N * O / d) < 1e-6 * N * O / d, j
assert abs(j['total_token_throughput'] - (j['total_input_tokens'] + N * O) / d) < 1e-6 * N * (I + O) / d, j
PY
B="$SK bench serve --url $U --api-key $KEY"
if $B --rate inf --concurrency 2 --num-prompts 8 --input-len 16 --output-len 8 >"$T/inf.out" 2>"$T/inf.err" &&
   python3 "$T/check.py" "$T/inf.out" 8 16 8 exact >"$T/why" 2>&1
then pass bench_serve_rate_inf; else fail bench_serve_rate_inf "$(cat "$T/why" "$T/inf.out" "$T/inf.err")"; fi
if $B --rate 20 --concurrency 2 --num-prompts 6 --input-len 12 --output-len 10 --endpoint chat --seed 3 >"$T/rate.out" 2>"$T/rate.err" &&
   python3 "$T/check.py" "$T/rate.out" 6 12 10 chat >"$T/why" 2>&1 &&
   python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(j['request_rate'] != 20 or j['endpoint'] != '/v1/chat/completions')" "$T/rate.out"
then pass bench_serve_rate_finite_chat; else fail bench_serve_rate_finite_chat "$(cat "$T/why" "$T/rate.out" "$T/rate.err")"; fi

# 8 at once against 2 slots and no queue: the others are refused (503), the run goes on
$B --num-prompts 8 --input-len 16 --output-len 100 >"$T/busy.out" 2>"$T/busy.err"; rc=$?
if [ $rc = 0 ] && grep -q 'requests failed; the first: request [0-9]* to .*HTTP 503' "$T/busy.err" &&
   python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(not (j['completed'] >= 2 and j['failed'] >= 1 and j['completed'] + j['failed'] == 8 and j['total_output_tokens'] == 100 * j['completed']))" "$T/busy.out"
then pass bench_serve_counts_refused; else fail bench_serve_counts_refused "rc $rc: $(cat "$T/busy.out" "$T/busy.err")"; fi

# every request failing: exit 1, the first error named
$SK bench serve --url $U --api-key wrong --model m --num-prompts 3 --input-len 4 --output-len 2 >"$T/key.out" 2>"$T/key.err"; rc=$?
if [ $rc = 1 ] && grep -q '3 of 3 requests failed; the first: .*HTTP 401: .*API key' "$T/key.err" &&
   python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(not (j['completed'] == 0 and j['failed'] == 3))" "$T/key.out"
then pass bench_serve_wrong_key; else fail bench_serve_wrong_key "rc $rc: $(cat "$T/key.out" "$T/key.err")"; fi
kill $PID; wait $PID 2>/dev/null; PID=""

# 40 at once against 4 connections, 2 slots and no queue: a 503 closes its connection, so the
# ones waiting in the listen backlog are taken at once (kept alive, the shed connections held
# every slot until --timeout and the run took 20 s)
serve_start "$T/log4" --model "$T/m" --max-seqs 2 --max-queue 0 --max-conns 4 --timeout 20 ||
    { fail bench_serve_conn_limit_start "$(cat "$T/log4")"; exit 1; }
$SK bench serve --url $U --num-prompts 40 --input-len 8 --output-len 4 >"$T/conn.out" 2>"$T/conn.err"; rc=$?
if [ $rc = 0 ] && python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(not (j['completed'] >= 2 and j['completed'] + j['failed'] == 40 and j['duration'] < 10))" "$T/conn.out"
then pass bench_serve_conn_limit_sheds_fast; else fail bench_serve_conn_limit_sheds_fast "rc $rc: $(cat "$T/conn.out" "$T/conn.err")"; fi
kill $PID; wait $PID 2>/dev/null; PID=""
$SK bench serve --url $U --model m --num-prompts 3 --input-len 4 --output-len 2 >"$T/down.out" 2>"$T/down.err"; rc=$?
if [ $rc = 1 ] && grep -q "3 of 3 requests failed; the first: request 0 to $U/v1/completions: .*onnect" "$T/down.err"
then pass bench_serve_no_server; else fail bench_serve_no_server "rc $rc: $(cat "$T/down.out" "$T/down.err")"; fi
$SK bench serve --url $U --num-prompts 3 >"$T/down.out" 2>"$T/down.err"; rc=$?
if [ $rc = 1 ] && grep -q "GET $U/v1/models: .*onnect" "$T/down.err"
then pass bench_serve_no_server_no_model; else fail bench_serve_no_server_no_model "rc $rc: $(cat "$T/down.err")"; fi

# bad flags: exit 2, the message names the flag
bad() {
    n=$1; flag=$2; shift 2
    $SK bench serve "$@" >/dev/null 2>"$T/bad.err"; rc=$?
    if [ $rc = 2 ] && grep -q -- "$flag" "$T/bad.err"; then pass "bench_serve_bad_$n"; else fail "bench_serve_bad_$n" "rc $rc: $(cat "$T/bad.err")"; fi
}
bad rate_zero --rate --rate 0
bad rate_word --rate --rate fast
bad prompts_zero --num-prompts --num-prompts 0
bad output_negative --output-len --output-len -5
bad concurrency_negative --concurrency --concurrency -1
bad endpoint --endpoint --endpoint embeddings
bad url --url --url ftp://127.0.0.1:1
bad unknown_flag --request-rate --request-rate 4
bad missing_value --seed --seed
