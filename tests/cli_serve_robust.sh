#!/bin/sh
# skein serve under load and abuse, on the CPU, talking only to 127.0.0.1: one server (a tiny
# random-weight Llama of context 256, an API key, a 4 s --timeout, room for 200 requests at
# once) answers the official OpenAI Python client (tests/check_openai.py, from build/pyenv:
# SKIP lines where it cannot be installed), then tests/serve_robust.py (standard library only):
# 200 concurrent streaming clients, malformed and hostile clients (bad JSON, wrong types,
# negative and huge max_tokens, unknown fields, a prompt over the context, invalid UTF-8, 100 MB
# bodies, a byte a second, a reader that stalls) each answered with its 4xx or cut off while
# the others keep their latency. Both stop by themselves (timeouts); the server is killed at
# the end (trap); then a slow model with --timeout 1 shows requests queued past it still answered.
# Prints PASS/FAIL/SKIP lines.
. tests/lib_serve.sh
command -v python3 >/dev/null 2>&1 || { echo "SKIP cli_serve_robust: python3 not found"; exit 0; }
KEY=robust-key-1
serve_tiny_model "$T/m" 256
serve_start "$T/log" --model "$T/m" --chat-template llama3 --api-key $KEY --timeout 4 --max-seqs 16 --max-queue 256 --max-conns 400 ||
    { fail serve_robust_start "$(cat "$T/log")"; exit 1; }

. tests/lib_pyenv.sh
if [ -n "$SKEIN_QUICK" ]; then
    echo "SKIP openai_client: SKEIN_QUICK (make test runs it)"
elif pyenv_ready; then
    timeout 120 "$PY" tests/check_openai.py $U $KEY m >"$T/openai.out" 2>"$T/openai.err"
    cat "$T/openai.out"
    [ "$(grep -c '^PASS \|^FAIL ' "$T/openai.out")" = 6 ] || fail openai_client "ended early: $(tail -5 "$T/openai.err")"
else
    echo "SKIP openai_client: $PYENV_WHY"
fi

timeout 300 python3 tests/serve_robust.py "${U##*:}" $KEY 4 256 || echo "FAIL serve_robust: exited with status $?"
kill -0 $PID 2>/dev/null && pass serve_robust_server_alive || fail serve_robust_server_alive "$(tail -5 "$T/log")"
kill $PID; wait $PID 2>/dev/null; PID=""

# --timeout bounds a client's slowness, never the server's: with one sequence (a model slow
# enough that 4000 tokens take seconds) and --timeout 1, a stream and a whole request queued
# behind a long stream for ~3 s (until its client leaves) still get their whole answers
if ! $SK init --arch llama --layers 4 --heads 4 --kv-heads 2 --dim 256 --context 4096 --tokenizer $TOK --out "$T/slow" >/dev/null 2>"$T/err"
then fail serve_robust_init_slow "$(tail -2 "$T/err")"; exit 1; fi
serve_start "$T/log" --model "$T/slow" --timeout 1 --max-seqs 1 --max-queue 2 || { fail serve_robust_start_slow "$(cat "$T/log")"; exit 1; }
curl -s -N -m 3 -d '{"prompt": "a", "max_tokens": 4000, "ignore_eos": true, "stream": true}' $U/v1/completions >/dev/null &
sleep 0.3
curl -s -m 30 -o "$T/queued_stream" -d '{"prompt": "a", "max_tokens": 3, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}' $U/v1/completions &
QS=$!
st=$(curl -s -m 30 -o "$T/queued_whole" -w '%{http_code}' -d '{"prompt": "a", "max_tokens": 3, "ignore_eos": true}' $U/v1/completions)
wait $QS
if [ "$st" = 200 ] && python3 -c "import json; assert json.load(open('$T/queued_whole'))['usage']['completion_tokens'] == 3" &&
   grep -q '^data: \[DONE\]$' "$T/queued_stream" && grep -q '"completion_tokens":3' "$T/queued_stream"
then pass serve_robust_queued_past_timeout; else fail serve_robust_queued_past_timeout "whole $st $(cat "$T/queued_whole"); stream $(tail -c 300 "$T/queued_stream")"; fi
