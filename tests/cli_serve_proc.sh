#!/bin/sh
# skein serve --replica-process on the CPU, talking only to 127.0.0.1, over tiny random-weight
# Llama folders (skein init, the Llama-3-style fixture tokenizer):
#   - two process replicas give the texts a one-replica thread server gives, both serve, each
#     is its own child process of the server, and /metrics shows their KV pools; a call of four
#     seeded choices ("n") gives the thread server's four texts;
#   - a child killed (SIGKILL) while its request has produced no token: the request is routed
#     again and answered with the same text, the child is replaced (logged with the signal);
#   - a child killed after its streamed request sent tokens: the stream ends with an error
#     event and [DONE], never hangs;
#   - a child killed during a load of sixteen requests (half streamed): every request is
#     answered (200, or a 500 / an error event), the other child keeps serving, two replicas
#     are up again and serve after;
#   - --replicas 2 --tp 2: two replicas of two ranks each (a child and the rank it forked) give
#     the texts of one replica at tp 1, both serve; a follower rank killed fails its replica,
#     which a fresh group replaces, and the texts stay the same;
#   - SIGTERM stops the server and leaves no process of it behind, also while a replacement's
#     child hangs in its start (SKEIN_TEST_FAIL_REPLICA's ID:0:hang), whose waiting request
#     ends with an error; under --replica-timeout the watchdog kills such a child instead, the
#     request ends with an error naming it and the next replica serves; the hook's start hang
#     is refused for thread replicas, and
#     `skein serve --replica-child` run by hand exits 2 naming what it is;
#   - without a GPU, --device cuda --replica-process fails at start with the child's reason;
#   - --replicas 2 --tp 2 on CUDA takes --devices in groups of 2, each rank a GPU of its own:
#     3 devices, or one twice in a group, are refused up front (exit 2) naming the problem.
# Prints PASS/FAIL lines; the servers are killed at the end (trap).
. tests/lib_serve.sh
. tests/lib_replicas.sh
PFX=proc
PIDS=""
trap 'for p in $PIDS; do pkill -KILL -P "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; rm -rf "$T"' EXIT
command -v curl >/dev/null 2>&1 || { echo "SKIP cli_serve_proc: curl not found"; exit 0; }
command -v python3 >/dev/null 2>&1 || { echo "SKIP cli_serve_proc: python3 not found"; exit 0; }
for m in m1:1337:64:2 m3:5:256:6; do
    IFS=: read -r name seed dim layers <<EOF
$m
EOF
    if ! $SK init --arch llama --layers "$layers" --heads 4 --kv-heads 2 --dim "$dim" --context 512 --seed "$seed" \
         --tokenizer $TOK --out "$T/$name" >/dev/null 2>"$T/err"
    then fail proc_init "$(tail -2 "$T/err")"; exit 1; fi
done

# children PID: the server's replica processes from its log, the live ones
children() { for k in $(sed -n 's/.*process \([0-9]*\))$/\1/p' "$T/$1.log"); do kill -0 "$k" 2>/dev/null && echo "$k"; done; }

start p --model "$T/m1" --replicas 2 --replica-process
P=$U; PP=$PID
start r --model "$T/m1"
R=$U; PR=$PID

# eight prompts at once on each: the same texts; both children served; they are the server's
eight "$P" p m1
eight "$R" r m1
bad=$(eight_differ p r)
[ -z "$bad" ] && pass proc_equal_threads || fail proc_equal_threads "$bad"
metrics "$P"
r0=$(mval 'skein_replica_requests_total{model="m1",replica="0"}'); r1=$(mval 'skein_replica_requests_total{model="m1",replica="1"}')
kids=$(children p | tr '\n' ' ')
parents=""; for k in $kids; do parents="$parents $(awk '/^PPid:/ { print $2 }' "/proc/$k/status")"; done
if [ "$((r0 + r1))" = 8 ] && [ "$r0" -gt 0 ] && [ "$r1" -gt 0 ] && [ "$(echo $kids | wc -w)" = 2 ] &&
   [ "$(echo $parents)" = "$PP $PP" ] && [ "$(mval 'skein_kv_blocks_total{model="m1",replica="1"}')" -gt 0 ]
then pass proc_children_serve; else fail proc_children_serve "requests $r0 + $r1, children '$kids' of '$parents' (server $PP)"; fi

# a call of four seeded choices: the same four texts from the children as from the threads
nbody='{"model": "m1", "prompt": "four ways", "max_tokens": 8, "temperature": 1, "seed": 9, "n": 4, "ignore_eos": true}'
post "$P" pn "$nbody"; post "$R" rn "$nbody"
if [ "$(cat "$T/pn.st") $(cat "$T/rn.st")" = "200 200" ] && python3 -c "
import json, sys
a, b = ([c['text'] for c in json.load(open(f))['choices']] for f in sys.argv[1:])
sys.exit(not (a == b and len(a) == 4 and len(set(a)) > 1))" "$T/pn.out" "$T/rn.out"
then pass proc_n_choices; else fail proc_n_choices "$(cat "$T/pn.out" "$T/rn.out")"; fi

# a load of sixteen, one child killed once its replica runs some of it: every request
# answered, the other left serving
set -- $kids
victim=$1; other=$2
vrep=$(sed -n "s/.*replica \([0-9]*\) up in .*process $victim)\$/\1/p" "$T/p.log" | tail -1)
load_start "$P" m1 400
i=0
while metrics "$P" && [ "$(mval "skein_running_sequences{model=\"m1\",replica=\"$vrep\"}")" = 0 ] && [ $i -lt 100 ]
do sleep 0.02; i=$((i+1)); done
kill -9 "$victim"
wait $LOAD_JOBS
if load_answered && grep -q "replica process $victim was killed by signal 9" "$T/p.log" &&
   kill -0 "$other" 2>/dev/null
then pass proc_killed_under_load_none_hang; else fail proc_killed_under_load_none_hang "$(cat "$T/why") $(cat "$T/p.log")"; fi
i=0
while metrics "$P" && [ "$(mval 'skein_replicas_up{model="m1"}')" != 2 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
post "$P" after "$(body m1 "request 1 says" 16 '')"
if [ "$(mval 'skein_replicas_up{model="m1"}')" = 2 ] && [ "$(cat "$T/after.st")" = 200 ] && same_text "$T/after.out" "$T/r1.out" &&
   [ "$(children p | wc -l)" = 2 ] && [ "$(mval 'skein_replica_failures_total{model="m1"}')" = 1 ]
then pass proc_replaced; else fail proc_replaced "$(cat "$T/after.out") $(grep -E 'replicas_up|failures' "$T/metrics")"; fi
stop p "$PP"

# one process replica over the larger model: a child stopped (SIGSTOP) holding a request that
# has no token yet, then killed: the request goes to the replacement, same text
start q --model "$T/m3" --replica-process
Q=$U; PQ=$PID
start s --model "$T/m3"
S=$U; PS=$PID
post "$S" ref "$(body m3 "request 1 says" 8 '')"
c=$(children q)
kill -STOP "$c"
post "$Q" q1 "$(body m3 "request 1 says" 8 '')" & job=$!
sleep 0.3
kill -9 "$c"
wait $job
if [ "$(cat "$T/q1.st")" = 200 ] && same_text "$T/q1.out" "$T/ref.out" && grep -q "replica 0 down: .*process $c was killed by signal 9" "$T/q.log" &&
   grep -q 'replica 1 up' "$T/q.log"
then pass proc_killed_before_token_requeued; else fail proc_killed_before_token_requeued "$(cat "$T/q1.st") $(cat "$T/q1.out") $(cat "$T/q.log")"; fi

# a streamed request whose child dies after its first tokens: an error event, then [DONE]
cat > "$T/stream_kill.py" <<'PY'
import http.client, json, os, signal, sys, time
url, pid = sys.argv[1], int(sys.argv[2])
host, port = url.split('//')[1].split(':')
conn = http.client.HTTPConnection(host, int(port), timeout=30)
conn.request('POST', '/v1/completions', json.dumps({'model': 'm3', 'prompt': 'stream me', 'max_tokens': 400,
             'temperature': 0, 'ignore_eos': True, 'stream': True}), {'Content-Type': 'application/json'})
resp = conn.getresponse()
events, killed = [], False
while True:
    line = resp.fp.readline()
    if not line:
        break
    line = line.decode().strip()
    if not line.startswith('data: '):
        continue
    events.append(line[6:])
    if events[-1] == '[DONE]':
        break
    if not killed:
        os.kill(pid, signal.SIGSTOP)
        os.kill(pid, signal.SIGKILL)
        killed = True
assert resp.status == 200 and len(events) >= 3 and events[-1] == '[DONE]', (resp.status, events[-3:])
last = json.loads(events[-2])
assert 'error' in last and last['error']['type'] == 'server_error', last
tokens = sum(1 for e in events[:-2] if 'choices' in json.loads(e))
assert 1 <= tokens < 400, tokens
PY
c=$(children q)
if python3 "$T/stream_kill.py" "$Q" "$c" >"$T/why" 2>&1; then pass proc_killed_after_tokens_error_event
else fail proc_killed_after_tokens_error_event "$(cat "$T/why") $(tail -3 "$T/q.log")"; fi
stop q "$PQ"
stop s "$PS"

# two replicas of two ranks each, against the one-replica thread server r
start t --model "$T/m1" --replicas 2 --tp 2 --comm-timeout 5
TP=$U; PT=$PID
eight "$TP" t m1
bad=$(eight_differ t r)
metrics "$TP"
t0=$(mval 'skein_replica_requests_total{model="m1",replica="0"}'); t1=$(mval 'skein_replica_requests_total{model="m1",replica="1"}')
ranks=""; for k in $(children t); do ranks="$ranks $(pgrep -P "$k" | wc -l)"; done
if [ -z "$bad" ] && [ "$t0" -gt 0 ] && [ "$t1" -gt 0 ] && [ "$(echo $ranks)" = "1 1" ]
then pass proc_tp_groups_equal_tp1; else fail proc_tp_groups_equal_tp1 "$bad; requests $t0 + $t1; followers per child:$ranks"; fi
set -- $(children t)
follower=$(pgrep -P "$1")
kill -9 "$follower"
i=0
while metrics "$TP" && [ "$(mval 'skein_replica_failures_total{model="m1"}')" != 1 -o "$(mval 'skein_replicas_up{model="m1"}')" != 2 ] &&
      [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
eight "$TP" t m1
bad=$(eight_differ t r)
if [ -z "$bad" ] && grep -q 'replica [01] down: .*rank(s) 1' "$T/t.log" && grep -q 'replica 2 up' "$T/t.log" &&
   [ "$(mval 'skein_replicas_up{model="m1"}')" = 2 ]
then pass proc_tp_rank_killed_replaced; else fail proc_tp_rank_killed_replaced "$bad $(cat "$T/t.log")"; fi
stop t "$PT"
stop r "$PR"

# process replicas on CUDA are the children's to build: without a GPU the server is not refused
# up front but fails at start, exit status 2 (a bad flag, as with thread replicas), with its
# child's reason (the device it could not use)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP proc_cuda_child_reason: a GPU is here (tests/gpu_serve.sh serves on it)"
else
    timeout 30 $SK serve --model "$T/m1" --device cuda --replica-process --port 0 >"$T/cuda.out" 2>"$T/cuda.log"; rc=$?
    if [ "$rc" = 2 ] && grep -q 'replica 0: .*CUDA device' "$T/cuda.log" &&
       ! grep -q 'listening on' "$T/cuda.log"
    then pass proc_cuda_child_reason; else fail proc_cuda_child_reason "exit $rc: $(tail -3 "$T/cuda.log")"; fi
fi

# CUDA replicas of 2 ranks: --devices in groups of 2, no GPU twice in a group (checked before
# any replica starts, so without a GPU too)
for spec in "0,1,2:in groups of 2" "0,0:device 0 twice"; do
    devs=${spec%%:*}; want=${spec#*:}
    timeout 30 $SK serve --model "$T/m1" --replicas 2 --tp 2 --devices "$devs" --port 0 >/dev/null 2>"$T/dev.log"; rc=$?
    if [ "$rc" = 2 ] && grep -q "$want" "$T/dev.log" && ! grep -q 'listening on' "$T/dev.log"
    then pass "proc_tp_devices_refused_$(echo "$devs" | tr , _)"; else fail "proc_tp_devices_refused_$(echo "$devs" | tr , _)" "exit $rc: $(tail -3 "$T/dev.log")"; fi
done

# a replacement whose start hangs (replica 0 fails its first step; replica 1's child never
# finishes building: SKEIN_TEST_FAIL_REPLICA's ID:0:hang): the request waits for it, and SIGTERM
# still stops the server at once, the hung child with it, the request answered with an error
SKEIN_TEST_FAIL_REPLICA=0:1,1:0:hang start h --model "$T/m1" --replica-process
H=$U; PH=$PID
post "$H" h1 "$(body m1 "request 1 says" 4 '')" & job=$!
i=0
while ! { grep -q 'replica 0 down' "$T/h.log" && [ -n "$(pgrep -P "$PH")" ]; } && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
hung=$(pgrep -P "$PH")
sleep 0.3
if [ -n "$hung" ] && kill -0 "$hung" 2>/dev/null && ! grep -q 'replica 1 up' "$T/h.log"
then pass proc_start_hangs; else fail proc_start_hangs "child '$hung': $(cat "$T/h.log")"; fi
stop h "$PH"
wait $job
if [ "$(cat "$T/h1.st")" = 500 ] && grep -q 'shutting down' "$T/h1.out"
then pass proc_start_hung_request_ends; else fail proc_start_hung_request_ends "$(cat "$T/h1.st") $(cat "$T/h1.out")"; fi

# the hook's start hang is for process replicas only; the child's entry is not for people
SKEIN_TEST_FAIL_REPLICA=0:0:hang timeout 30 $SK serve --model "$T/m1" --port 0 >/dev/null 2>"$T/hook.log"; rc=$?
if [ "$rc" = 2 ] && grep -q 'step 0 (the start) can only hang, in process replicas' "$T/hook.log"
then pass proc_start_hang_hook_refused; else fail proc_start_hang_hook_refused "exit $rc: $(cat "$T/hook.log")"; fi
timeout 10 $SK serve --replica-child >/dev/null 2>"$T/child.log"; rc=$?
if [ "$rc" = 2 ] && grep -q 'not run by hand' "$T/child.log"
then pass proc_child_entry_by_hand; else fail proc_child_entry_by_hand "exit $rc: $(cat "$T/child.log")"; fi

# the same hung start under --replica-timeout 2: the watchdog kills the child, the waiting
# request ends with an error naming it, and the next replica comes up and serves
SKEIN_TEST_FAIL_REPLICA=0:1,1:0:hang start w --model "$T/m1" --replica-process --replica-timeout 2
W=$U; PW=$PID
post "$W" w1 "$(body m1 "request 1 says" 4 '')"
i=0
while metrics "$W" && [ "$(mval 'skein_replicas_up{model="m1"}')" != 1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
post "$W" w2 "$(body m1 "request 1 says" 16 '')"
if [ "$(cat "$T/w1.st")" = 500 ] && grep -q 'killed by signal 9 (building its engine)' "$T/w1.out" &&
   grep -q 'replica 1 has not started in 2\.[0-9] s (--replica-timeout): its process [0-9]* is killed' "$T/w.log" &&
   grep -q 'replica 2 up' "$T/w.log" && [ "$(cat "$T/w2.st")" = 200 ] && same_text "$T/w2.out" "$T/r1.out"
then pass proc_start_timeout_replaced; else fail proc_start_timeout_replaced "$(cat "$T/w1.st") $(cat "$T/w1.out") $(cat "$T/w2.out") $(cat "$T/w.log")"; fi
stop w "$PW"
