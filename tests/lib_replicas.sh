# Sourced by the replica tests (cli_serve_replicas.sh, cli_serve_proc.sh) after lib_serve.sh:
# the helpers both use. Needs T (lib_serve.sh), PIDS (the servers to kill at exit) and PFX (the
# prefix of the start and stop checks' names).
# start NAME ARGS: skein serve ARGS on a free port (serve_start), its log in $T/NAME.log; sets
# PID and U (the servers are background jobs too: wait only ever names the jobs it waits for)
start() {
    n=$1; shift
    serve_start "$T/$n.log" --threads 1 "$@"; st=$?
    PIDS="$PIDS $PID"   # before the check: a server that did not come up is killed at exit too
    [ $st = 0 ] || { fail "${PFX}_${n}_start" "$(cat "$T/$n.log")"; exit 1; }
}
# stop NAME PID: SIGTERM; the server exits 0 within 10 s, and no process it started (replica
# processes and their ranks) is left
stop() {
    kids=""; for k in $(pgrep -P "$2"); do kids="$kids $k $(pgrep -P "$k" | tr '\n' ' ')"; done
    kill "$2"
    i=0
    while kill -0 "$2" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    if kill -0 "$2" 2>/dev/null; then fail "${PFX}_${1}_stops" "still running 10 s after SIGTERM"; kill -9 "$2"; return; fi
    wait "$2"; rc=$?
    left=""
    for k in $kids; do kill -0 "$k" 2>/dev/null && left="$left $k"; done
    [ $rc = 0 ] && [ -z "$left" ] && pass "${PFX}_${1}_stops" || fail "${PFX}_${1}_stops" "exit status $rc, processes left:$left $(tail -3 "$T/$1.log")"
}
# post URL NAME BODY: the body to $T/NAME.out, the status to $T/NAME.st
post() { curl -s -m 30 -o "$T/$2.out" -w '%{http_code}' -d "$3" "$1/v1/completions" >"$T/$2.st"; }
# body MODEL PROMPT MAX_TOKENS EXTRA: a greedy completion request that ignores EOS
body() { printf '{"model": "%s", "prompt": "%s", "max_tokens": %s, "temperature": 0, "ignore_eos": true%s}' "$@"; }
# same_text A B: whether the completion bodies in files A and B have the same text
same_text() { python3 -c "import json,sys; a,b=(json.load(open(f))['choices'][0]['text'] for f in sys.argv[1:]); sys.exit(a != b)" "$1" "$2"; }
# eight URL NAME MODEL: eight greedy prompts "request I says" (16 tokens) at once to URL, into
# $T/NAMEI.out and .st
eight() {
    jobs=""
    for i in 1 2 3 4 5 6 7 8; do post "$1" "$2$i" "$(body "$3" "request $i says" 16 '')" & jobs="$jobs $!"; done
    wait $jobs
}
# eight_differ A B: the eight requests named A and B that failed or whose texts differ ("" when none)
eight_differ() {
    bad=""
    for i in 1 2 3 4 5 6 7 8; do
        { [ "$(cat "$T/$1$i.st")" = 200 ] && [ "$(cat "$T/$2$i.st")" = 200 ] && same_text "$T/$1$i.out" "$T/$2$i.out"; } ||
            bad="$bad $i: $(cat "$T/$1$i.out") vs $(cat "$T/$2$i.out")"
    done
    echo "$bad"
}
# metrics URL: the page to $T/metrics; mval NAME{LABELS}: one sample of it
metrics() { curl -s -m 10 "$1/metrics" >"$T/metrics"; }
mval() { awk -v n="$1" '$1 == n { print $2 }' "$T/metrics"; }
# load_start URL MODEL TOKENS: sixteen requests "load I" at once in the background (odd ones
# streamed) into $T/gI.out and .st; sets LOAD_JOBS (wait for them)
load_start() {
    LOAD_JOBS=""
    for i in $(seq 1 16); do
        if [ $((i % 2)) = 0 ]; then post "$1" "g$i" "$(body "$2" "load $i" "$3" '')" &
        else curl -s -m 30 -N -o "$T/g$i.out" -w '%{http_code}' -d "$(body "$2" "load $i" "$3" ', "stream": true')" "$1/v1/completions" >"$T/g$i.st" & fi
        LOAD_JOBS="$LOAD_JOBS $!"
    done
}
# load_answered: whether every load request was answered -- 200 to its length, or a 500 / an
# error event then [DONE] (why in $T/why)
load_answered() {
    cat > "$T/answered.py" <<'PY'
import json, sys
for f in sys.argv[1:]:
    st, body = open(f + '.st').read(), open(f + '.out').read()
    if st == '200' and body.startswith('data: '):
        lines = [l for l in body.split('\n') if l]
        assert lines[-1] == 'data: [DONE]', (f, lines[-1])
        last = json.loads(lines[-2][6:])
        assert 'error' in last or last['choices'][0]['finish_reason'] == 'length', (f, last)
    elif st == '200':
        assert json.loads(body)['choices'][0]['finish_reason'] == 'length', (f, body)
    else:
        assert st == '500' and json.loads(body)['error']['type'] == 'server_error', (f, st, body)
PY
    files=""; for i in $(seq 1 16); do files="$files $T/g$i"; done
    python3 "$T/answered.py" $files >"$T/why" 2>&1
}
