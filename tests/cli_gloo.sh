#!/bin/sh
# The gloo communicator under torchrun-style launches: every rank started by hand with RANK,
# WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, as torchrun, Ray or a Kubernetes
# operator would start it (no mpirun).
#   comm_gloo_*      tests/test_comm (every collective against arithmetic truth, the cases
#                    cli_dist.sh runs under mpirun) at 2 and 3 ranks, and at 3 with
#                    SKEIN_COMM_CHUNK=7 (reduce-scatter split into pieces);
#   comm_gloo_fault_* a rank sleeping past a 1 s timeout, a rank killed with SIGKILL, with the
#                    others blocked in a collective or with it in flight while they compute:
#                    the others fail within the timeout + 3 s naming it;
#   train_*          `skein train` on 2 ranks started by hand: the same losses, bit for bit, as
#                    `--workers 2` (mpirun) at every ZeRO stage (sums of two are exact in any
#                    order); 3 ranks with dynamic data within 1e-5 of one process; a rank
#                    killed mid-run makes the other exit non-zero naming it, and --resume over
#                    gloo finishes bit for bit as the uninterrupted run; a rank alone waits
#                    for the others only the timeout.
# Prints PASS/FAIL lines, or one SKIP line where gloo is not built in.
B=${BUILD:-build}
SK=${SKEIN:-./skein}
BIN=$B/tests/test_comm
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$BIN" ] && [ -x "$SK" ] || { fail cli_gloo "$BIN or $SK is not built"; exit 1; }
ldd "$SK" 2>/dev/null | grep -q libgloo || { echo "SKIP cli_gloo: gloo is not built in (libgloo-dev)"; exit 0; }
T=$(mktemp -d)
PIDS=""
trap 'for p in $PIDS; do kill "$p" 2>/dev/null; done; rm -rf "$T"' EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ranks NAME N CMD...: starts CMD as ranks 0..N-1 of a torchrun-style world on a fresh port
# (each under `timeout 120`), rank r's output in $T/NAME-r.log; the pids in PIDS (rank order).
ranks() {
    rname=$1; rn=$2; shift 2
    port=$(free_port)
    PIDS=""
    r=0
    while [ $r -lt "$rn" ]; do
        RANK=$r LOCAL_RANK=$r WORLD_SIZE=$rn MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
            timeout 120 "$@" >"$T/$rname-$r.log" 2>&1 &
        PIDS="$PIDS $!"
        r=$((r + 1))
    done
}

# wait_ranks [SKIP]: waits for every rank but rank SKIP (which is then killed); BAD gets the
# number of ranks waited for that exited non-zero. (Not in $(...): a subshell cannot wait.)
wait_ranks() {
    bad=0; r=0
    for p in $PIDS; do
        if [ "$r" != "${1:--1}" ]; then wait "$p" || bad=$((bad + 1)); fi
        r=$((r + 1))
    done
    r=0
    for p in $PIDS; do
        [ "$r" = "${1:--1}" ] && { kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; }
        r=$((r + 1))
    done
    PIDS=""
    BAD=$bad
}

# ---- every collective, against arithmetic truth ----
NCASES=$("$BIN" 2>/dev/null | grep -c '^PASS ')
all_ok() {   # NAME N [VAR=value...]
    name=$1; n=$2; shift 2
    ranks "$name" "$n" env "$@" "$BIN"
    wait_ranks; bad=$BAD
    p=$(cat "$T/$name"-*.log | grep -c '^PASS '); f=$(cat "$T/$name"-*.log | grep -c '^FAIL ')
    if [ "$bad" -eq 0 ] && [ "$f" -eq 0 ] && [ "$p" -eq $((n * NCASES)) ] && grep -q "comm gloo, world $n" "$T/$name-0.log"
    then pass "$name"
    else fail "$name" "$bad ranks failed, $p PASS lines of $((n * NCASES)): $(cat "$T/$name"-*.log | grep -v '^PASS' | head -20)"; fi
}
all_ok comm_gloo_2 2
all_ok comm_gloo_3 3
all_ok comm_gloo_3_split 3 SKEIN_COMM_CHUNK=7

# ---- a sleeping or killed rank (rank 1 of 3) ----
fault() {   # NAME SPEC PATTERN [CASE]
    name=$1; spec=$2; pat=$3; case=${4:-fault}
    t0=$(date +%s)
    ranks "$name" 3 env SKEIN_COMM_TIMEOUT=1 SKEIN_COMM_FAULT="$spec" "$BIN" "$case"
    wait_ranks 1; bad=$BAD
    dt=$(( $(date +%s) - t0 ))
    out=$(cat "$T/$name-0.log" "$T/$name-2.log")
    p=$(echo "$out" | grep -c "^PASS $case\$")
    if [ "$bad" -ne 0 ] || [ "$p" -ne 2 ]; then fail "$name" "ranks 0 and 2 did not both pass: $(echo "$out" | head -20)"
    elif [ $dt -gt 10 ]; then fail "$name" "took $dt s"
    elif ! echo "$out" | grep -q "$pat"; then fail "$name" "no '$pat' in: $(echo "$out" | head -20)"
    else pass "$name"; fi
}
fault comm_gloo_fault_timeout_names_rank sleep:1:10 "all_reduce.*no answer from rank(s) 1 within 1 s"
fault comm_gloo_fault_killed_rank kill:1 "all_reduce.*no answer from rank(s) 1 (exited or died)"
fault comm_gloo_fault_async_timeout_names_rank sleep:1:10 "all_reduce.*no answer from rank(s) 1 within 1 s" fault_async
fault comm_gloo_fault_async_killed_rank kill:1 "all_reduce.*no answer from rank(s) 1 (exited or died)" fault_async

# ---- skein train over gloo ----
TEST=cli_gloo
. tests/lib_dist.sh
losses() { grep -o '"loss": [^,]*' "$1/log.jsonl"; }
$SK train $F --out "$T/ref" 2>"$T/err" || { fail cli_gloo "world 1 run: $(tail -n 3 "$T/err")"; exit 1; }

# The same run under mpirun (--workers 2) where MPI is there; else one process within 1e-5.
if command -v mpirun >/dev/null 2>&1 && ldd "$SK" | grep -q libmpi; then MPI=1; else MPI=; fi
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_btl_vader_single_copy_mechanism=none
for z in 0 1 2 3; do
    name=train_gloo_2_zero$z
    ranks "$name" 2 "$SK" train $F --out "$T/$name" --zero $z
    wait_ranks
if [ "$BAD" -ne 0 ]; then fail $name "$(tail -n 3 "$T/$name-0.log" "$T/$name-1.log")"; continue; fi
    if ! grep -q "2 ranks over gloo" "$T/$name-0.log"; then fail $name "not over gloo: $(grep training "$T/$name-0.log")"
    elif [ -n "$MPI" ]; then
        if ! $SK train $F --out "$T/mpi$z" --zero $z --workers 2 >"$T/err" 2>&1; then fail $name "--workers 2: $(tail -n 3 "$T/err")"
        elif [ "$(losses "$T/mpi$z")" = "$(losses "$T/$name")" ]; then pass $name
        else fail $name "losses differ from --workers 2: $(losses "$T/mpi$z" | head -3) vs $(losses "$T/$name" | head -3)"; fi
    elif msg=$(close "$T/ref" "$T/$name" 1e-5 2>&1); then pass $name; else fail $name "$msg"; fi
done
name=train_gloo_3_dynamic
ranks "$name" 3 "$SK" train $F --out "$T/$name" --zero 2 --data-dist dynamic
wait_ranks
if [ "$BAD" -ne 0 ]; then fail $name "$(tail -n 3 "$T/$name-0.log")"
elif msg=$(close "$T/ref" "$T/$name" 1e-5 2>&1) && grep -q '"world_size": 3, "zero": 2, "data_dist": "dynamic"' "$T/$name/log.jsonl"
then pass $name; else fail $name "$msg"; fi

# A rank killed with SIGKILL after step 7: the other exits non-zero within seconds, naming it;
# --resume over gloo then finishes from checkpoint-5 with the uninterrupted run's losses.
name=train_gloo_killed_rank_then_resume
R="$F --zero 1 --save-every 5"
t0=$(date +%s)
ranks "$name" 2 "$SK" train $R --out "$T/kill" --comm-timeout 10 --debug-kill-rank 1:7
wait_ranks; bad=$BAD
dt=$(( $(date +%s) - t0 ))
if [ "$bad" -ne 2 ]; then fail $name "$bad ranks exited non-zero, want 2: $(tail -n 3 "$T/$name-0.log")"
elif [ $dt -gt 30 ]; then fail $name "took $dt s"
elif ! grep -q "rank 0 of 2: .*no answer from rank(s) 1 (exited or died)" "$T/$name-0.log"; then
    fail $name "no message naming rank 1: $(tail -n 3 "$T/$name-0.log")"
elif [ ! -d "$T/kill/checkpoint-5" ]; then fail $name "no checkpoint-5"
else
    ranks "$name-resume" 2 "$SK" train $R --out "$T/kill" --resume
    wait_ranks
if [ "$BAD" -ne 0 ]; then fail $name "resume: $(tail -n 3 "$T/$name-resume-0.log")"
    elif [ "$(losses "$T/train_gloo_2_zero1")" = "$(losses "$T/kill")" ]; then pass $name
    else fail $name "resumed losses differ from the uninterrupted run"; fi
fi

# Rank 0 of 2 alone: it waits for rank 1 only the timeout, then names it.
name=train_gloo_rank_never_comes
t0=$(date +%s)
RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$(free_port) timeout 60 \
    $SK train $F --out "$T/alone" --comm-timeout 2 >"$T/err" 2>&1; rc=$?
dt=$(( $(date +%s) - t0 ))
if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then fail $name "exit status $rc"
elif [ $dt -gt 10 ]; then fail $name "took $dt s"
elif grep -q "rank(s) 1 never connected" "$T/err"; then pass $name
else fail $name "$(tail -n 3 "$T/err")"; fi
