#!/bin/sh
# An added replica's start, measured (docs/benchmarks.md, "Serving: an added replica's start"):
#   sh scripts/serve_replica_start.sh MODEL_DIR RUNS [SERVE FLAGS...]
# Each run starts `skein serve` on 127.0.0.1 that may grow from one replica to two, sends two
# 100-token requests (the autoscaler then wants two: 2 in flight, target 1), waits for the log
# line "replica 1 up in X ms" (from the supervisor starting it to it taking requests), then
# times one 1-token request with curl (power of two choices sends it to the idle new replica)
# and reads the replica's own "produced its first token X ms after it started" line. Prints
# one line per run: up_ms first_token_ms curl_s listening_s. SKEIN: the program (./skein).
SK=${SKEIN:-./skein}
dir=$1 runs=$2
shift 2
T=$(mktemp -d)
trap 'kill $PID 2>/dev/null; rm -rf "$T"' EXIT
for r in $(seq 1 "$runs"); do
    t0=$(date +%s.%N)
    $SK serve --model "$dir" --port 0 --min-replicas 1 --max-replicas 2 --target-ongoing 1 --upscale-delay 0 --threads 1 \
        "$@" 2>"$T/log" &
    PID=$!
    while ! grep -q 'listening on' "$T/log"; do sleep 0.01; kill -0 $PID || { cat "$T/log"; exit 1; }; done
    listen=$(echo "$(date +%s.%N) - $t0" | bc)
    U=http://127.0.0.1:$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$T/log")
    for k in 1 2; do
        curl -s -o /dev/null -d "{\"prompt\": \"long $k\", \"max_tokens\": 100, \"ignore_eos\": true}" "$U/v1/completions" &
    done
    while ! grep -q 'replica 1 up' "$T/log"; do sleep 0.005; done
    c=$(curl -s -o /dev/null -w '%{time_total}' -d '{"prompt": "hello", "max_tokens": 1, "ignore_eos": true}' "$U/v1/completions")
    up=$(sed -n 's/.*replica 1 up in \([0-9.]*\) ms.*/\1/p' "$T/log")
    first=$(sed -n 's/.*replica 1 produced its first token \([0-9.]*\) ms.*/\1/p' "$T/log")
    echo "$up $first $c $listen"
    kill $PID
    wait $PID 2>/dev/null
    wait
done
