# Sourced first by the tests that talk to skein serve (cli_serve.sh, cli_bench_serve.sh): sets SK
# (the program), TOK (the Llama-3-style fixture tokenizer), T (a scratch folder) and PID (the
# server to stop, "" when none), a trap that kills PID and removes T at exit, pass/fail (PASS and
# FAIL lines), serve_start and serve_tiny_model. Exits with a FAIL line when $SK is not built.
SK=${SKEIN:-./skein}
TOK=tests/fixtures/tok2/llama3.json
T=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$SK" ] || { fail "$(basename "$0" .sh)" "$SK is not built"; exit 1; }

# serve_start LOG ARGS...: starts `$SK serve ARGS --port 0` in the background, its stderr to
# LOG, and waits (10 s at most) for its "listening on" line; sets PID (kill it when done) and U
# (http://127.0.0.1:PORT, or https:// when the server serves HTTPS). Non-zero when the server did not start (LOG says why). LOG is
# emptied first: the background job opens it later, and an earlier server's "listening on"
# line must not be read as this one's.
serve_start() {
    serve_log=$1; shift
    : >"$serve_log"
    $SK serve "$@" --port 0 2>"$serve_log" &
    PID=$!
    i=0
    while ! grep -q 'listening on' "$serve_log" && [ $i -lt 100 ] && kill -0 $PID 2>/dev/null; do sleep 0.1; i=$((i+1)); done
    port=$(sed -n 's/.*listening on https\{0,1\}:\/\/127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$serve_log")
    [ -n "$port" ] || return 1
    U=http://127.0.0.1:$port
    if grep -q 'listening on https' "$serve_log"; then U=https://127.0.0.1:$port; fi
}

# serve_tiny_model DIR CONTEXT: a random-weight 2-layer Llama with the fixture tokenizer in DIR;
# on failure a FAIL line and exit 1.
serve_tiny_model() {
    $SK init --arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64 --context "$2" --tokenizer $TOK --out "$1" \
        >/dev/null 2>"$T/init.err" || { fail "$(basename "$0" .sh)_init" "$(tail -2 "$T/init.err")"; exit 1; }
}
