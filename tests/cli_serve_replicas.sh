#!/bin/sh
# skein serve with replicas, on the CPU, talking only to 127.0.0.1, over tiny random-weight
# Llama folders (skein init, the Llama-3-style fixture tokenizer):
#   - two models in one server (--model A --served-model-name alpha --model B ...), two
#     replicas each: /v1/models lists both, each answers by name, an unknown name is 404;
#   - concurrent greedy requests spread over both replicas (their request counters) and give
#     the texts a one-replica server gives;
#   - prefix affinity: a prompt sharing two KV blocks with the one before it finds them in
#     its replica's prefix cache (three pairs in a row);
#   - the TTFT / time-per-token / end-to-end histograms count exactly the requests answered,
#     cumulative buckets ending in +Inf = _count;
#   - autoscaling (--min-replicas 1 --max-replicas 3, no upscale delay, 1 s downscale delay):
#     replicas added under load serve requests, and the server drains back to one after;
#   - failures through the SKEIN_TEST_FAIL_REPLICA hook: a replica whose step fails before any
#     token, then one that hangs (--replica-timeout 1), both replaced, the request finished
#     elsewhere with the right text; a failure after the first token answers an OpenAI-shaped
#     500; under concurrent load with failures every request is answered (none hangs) and the
#     replicas come back;
#   - every server stops cleanly on SIGTERM.
# Prints PASS/FAIL lines; the servers are killed at the end (trap). SKEIN_TEST_FAIL_REPLICA is
# set for the failure servers only.
. tests/lib_serve.sh
. tests/lib_replicas.sh
PFX=replicas
PIDS=""   # every server started here (lib_serve.sh's trap knows one)
trap 'for p in $PIDS; do kill "$p" 2>/dev/null; done; rm -rf "$T"' EXIT
command -v curl >/dev/null 2>&1 || { echo "SKIP cli_serve_replicas: curl not found"; exit 0; }
command -v python3 >/dev/null 2>&1 || { echo "SKIP cli_serve_replicas: python3 not found"; exit 0; }
for m in m1:1337 m2:7; do
    if ! $SK init --arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64 --context 256 --seed "${m#*:}" --tokenizer $TOK \
         --out "$T/${m%:*}" >/dev/null 2>"$T/err"
    then fail replicas_init "$(tail -2 "$T/err")"; exit 1; fi
done

# json FILE EXPR: evaluates a Python expression over the parsed body j; exits non-zero if false
json() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$1"; }

start a --model "$T/m1" --served-model-name alpha --model "$T/m2" --served-model-name beta --replicas 2
A=$U; PA=$PID
start r --model "$T/m1" --served-model-name alpha
R=$U; PR=$PID

if curl -s -m 10 -o "$T/models.out" "$A/v1/models" && json "$T/models.out" '[d["id"] for d in j["data"]] == ["alpha", "beta"]'
then pass replicas_models_listed; else fail replicas_models_listed "$(cat "$T/models.out")"; fi

# eight distinct prompts at once on each server: the same texts, both replicas used
eight "$A" a alpha
eight "$R" r alpha
bad=$(eight_differ a r)
[ -z "$bad" ] && pass replicas_equal_one_replica || fail replicas_equal_one_replica "$bad"
metrics "$A"
r0=$(mval 'skein_replica_requests_total{model="alpha",replica="0"}'); r1=$(mval 'skein_replica_requests_total{model="alpha",replica="1"}')
if [ "$((r0 + r1))" = 8 ] && [ "$r0" -gt 0 ] && [ "$r1" -gt 0 ] && [ "$(mval 'skein_replicas_up{model="alpha"}')" = 2 ]
then pass replicas_spread; else fail replicas_spread "replica 0: $r0, replica 1: $r1 requests"; fi

# the second model by name, and a name nobody serves
post "$A" beta "$(body beta "request 1 says" 16 '')"
if [ "$(cat "$T/beta.st")" = 200 ] && json "$T/beta.out" 'j["model"] == "beta" and j["usage"]["completion_tokens"] == 16' &&
   ! cmp -s "$T/beta.out" "$T/a1.out"
then pass replicas_second_model; else fail replicas_second_model "$(cat "$T/beta.out")"; fi
post "$A" gamma "$(body gamma "x" 4 '')"
if [ "$(cat "$T/gamma.st")" = 404 ] && json "$T/gamma.out" "j['error']['param'] == 'model' and '\`beta\`' in j['error']['message']"
then pass replicas_unknown_model_404; else fail replicas_unknown_model_404 "$(cat "$T/gamma.st") $(cat "$T/gamma.out")"; fi

# prefix affinity: each second prompt shares its first two blocks (32 tokens) with the first
hits() { metrics "$A"; h=0; for r in 0 1; do h=$((h + $(mval "skein_prefix_cache_hits_total{model=\"alpha\",replica=\"$r\"}"))); done; echo $h; }
aff=""
for k in 1 2 3; do
    long=$(python3 -c "print(' '.join('w%d' % (i * $k) for i in range(40)))")
    h0=$(hits)
    post "$A" aff "$(body alpha "$long first" 4 '')"
    post "$A" aff "$(body alpha "$long second" 4 '')"
    h1=$(hits)
    [ "$h1" -ge $((h0 + 2)) ] || aff="$aff pair $k: hits $h0 -> $h1;"
done
[ -z "$aff" ] && pass replicas_prefix_affinity || fail replicas_prefix_affinity "$aff"

# the histograms: 8 + 6 requests of alpha answered, each with >= 2 tokens; beta's one
metrics "$A"
cat > "$T/hist.py" <<'PY'
import re, sys
text, model, want = open(sys.argv[1]).read(), sys.argv[2], int(sys.argv[3])
for h in ('skein_time_to_first_token_seconds', 'skein_time_per_output_token_seconds', 'skein_e2e_request_latency_seconds'):
    buckets = [(m.group(1), int(m.group(2))) for m in re.finditer(r'^%s_bucket\{model="%s",le="([^"]+)"\} (\d+)$' % (h, model), text, re.M)]
    count = int(re.search(r'^%s_count\{model="%s"\} (\d+)$' % (h, model), text, re.M).group(1))
    total = float(re.search(r'^%s_sum\{model="%s"\} (\S+)$' % (h, model), text, re.M).group(1))
    counts = [c for _, c in buckets]
    assert buckets and buckets[-1][0] == '+Inf' and counts[-1] == count == want, (h, count, want, buckets)
    assert counts == sorted(counts) and total > 0, (h, buckets, total)
    assert '# TYPE %s histogram' % h in text, h
PY
if python3 "$T/hist.py" "$T/metrics" alpha 14 >"$T/why" 2>&1 && python3 "$T/hist.py" "$T/metrics" beta 1 >>"$T/why" 2>&1
then pass replicas_histograms; else fail replicas_histograms "$(cat "$T/why")"; fi
stop a "$PA"

# autoscaling: six waves of four requests, 150 ms apart; four in flight per replica (target
# 1) start two more replicas at once (at most 3), which take the later waves; one second after
# the load they drain
start s --model "$T/m1" --min-replicas 1 --max-replicas 3 --target-ongoing 1 --upscale-delay 0 --downscale-delay 1
S=$U; PS=$PID
jobs=""
for w in 1 2 3 4 5 6; do
    for k in 1 2 3 4; do post "$S" "s$w$k" "$(body m1 "wave $w request $k" 200 '')" & jobs="$jobs $!"; done
    sleep 0.15
done
wait $jobs
ok=0
for w in 1 2 3 4 5 6; do for k in 1 2 3 4; do [ "$(cat "$T/s$w$k.st")" = 200 ] && ok=$((ok + 1)); done; done
served=$(grep -c 'replica [12] produced its first token' "$T/s.log")
if [ $ok = 24 ] && grep -q 'scaling up from 1 to [23] replicas' "$T/s.log" && [ "$served" -ge 1 ]
then pass replicas_autoscale_up; else fail replicas_autoscale_up "$ok/24 answered; $(cat "$T/s.log")"; fi
i=0   # until one replica is left (the drained ones freed: their series gone)
while metrics "$S" && [ "$(grep -c '^skein_running_sequences{' "$T/metrics")" != 1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if [ "$(mval 'skein_replicas_up{model="m1"}')" = 1 ] && grep -q 'scaling down from [23] to 1 replicas' "$T/s.log" &&
   grep -q 'drained and freed' "$T/s.log" && [ "$(grep -c '^skein_running_sequences{' "$T/metrics")" = 1 ]
then pass replicas_autoscale_down; else fail replicas_autoscale_down "$(grep replicas "$T/metrics") $(cat "$T/s.log")"; fi
stop s "$PS"

# failures, one replica at a time: replica 0 fails its first step (the request's prefill, no
# token yet: routed again), replica 1 hangs in its first step (given up after 1 s, the
# request routed again), replica 2 serves it, then fails the step after a second request's
# first token (that request: 500); replica 3 serves the next one
SKEIN_TEST_FAIL_REPLICA=0:1,1:1:hang,2:4 start f --model "$T/m1" --replica-timeout 1
F=$U; PF=$PID
post "$F" f1 "$(body m1 "request 1 says" 2 '')"
post "$R" r1 "$(body alpha "request 1 says" 2 '')"
if [ "$(cat "$T/f1.st")" = 200 ] && same_text "$T/f1.out" "$T/r1.out" &&
   grep -q 'replica 0 down: its engine step failed' "$T/f.log" && grep -q 'replica 1 down: stopped answering' "$T/f.log"
then pass replicas_failed_requeued; else fail replicas_failed_requeued "$(cat "$T/f1.st") $(cat "$T/f1.out" "$T/f.log")"; fi
post "$F" f2 "$(body m1 "request 2 says" 8 '')"
if [ "$(cat "$T/f2.st")" = 500 ] && json "$T/f2.out" "j['error']['type'] == 'server_error' and 'replica 2' in j['error']['message']"
then pass replicas_failed_after_token_500; else fail replicas_failed_after_token_500 "$(cat "$T/f2.st") $(cat "$T/f2.out")"; fi
st=$(curl -s -m 30 -N -o "$T/f3.out" -w '%{http_code}' -d "$(body m1 "request 3 says" 8 ', "stream": true')" "$F/v1/completions")
metrics "$F"
if [ "$st" = 200 ] && [ "$(grep -v '^$' "$T/f3.out" | tail -1)" = 'data: [DONE]' ] && [ "$(mval 'skein_replica_failures_total{model="m1"}')" = 3 ] &&
   [ "$(mval 'skein_replicas_up{model="m1"}')" = 1 ] && [ "$(mval 'skein_replica_requests_total{model="m1",replica="3"}')" = 1 ]
then pass replicas_replaced; else fail replicas_replaced "$st $(cat "$T/f3.out") $(grep replica "$T/metrics")"; fi
stop f "$PF"

# under load: two replicas, one failing its third step, the other hanging in its fifth;
# sixteen requests at once (half streamed) are each answered -- 200, or 500 / an error event
SKEIN_TEST_FAIL_REPLICA=0:3,1:5:hang start g --model "$T/m1" --replicas 2 --replica-timeout 1
G=$U; PG=$PID
load_start "$G" m1 30
wait $LOAD_JOBS
if load_answered; then pass replicas_failures_none_hang; else fail replicas_failures_none_hang "$(cat "$T/why")"; fi
i=0
while metrics "$G" && [ "$(mval 'skein_replicas_up{model="m1"}')" != 2 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
post "$G" after "$(body m1 "after" 4 '')"
if [ "$(mval 'skein_replicas_up{model="m1"}')" = 2 ] && [ "$(cat "$T/after.st")" = 200 ] && grep -q 'replica 1 down: stopped answering' "$T/g.log"
then pass replicas_failures_recovered; else fail replicas_failures_recovered "$(cat "$T/after.st") $(cat "$T/g.log")"; fi
stop g "$PG"
stop r "$PR"
