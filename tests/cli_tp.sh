#!/bin/sh
# Tensor parallelism under mpirun: tests/test_tp (the cut, logits and greedy tokens against
# one process, the engine's followers) at 2, 3 and 4 ranks (3 and 4 oversubscribe a 2-core
# machine). Prints PASS/FAIL lines, or one SKIP line where mpirun is missing or MPI is not
# built in.
B=${BUILD:-build}
BIN=$B/tests/test_tp
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$BIN" ] || { fail cli_tp "$BIN is not built"; exit 1; }
command -v mpirun >/dev/null 2>&1 || { echo "SKIP cli_tp: mpirun not found"; exit 0; }
ldd "$BIN" 2>/dev/null | grep -q libmpi || { echo "SKIP cli_tp: MPI is not built in"; exit 0; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
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
