#!/bin/sh
# Runs the test programs given as arguments and every tests/cli_*.sh script (or the scripts
# SKEIN_SCRIPTS names, a glob: make test-gpu passes tests/gpu_*.sh), then prints
# "N passed, N failed, N skipped". Each program prints one PASS, FAIL or SKIP line per case
# ("SKIP case: why" where a tool, library or GPU is missing); a skip is counted apart, never as
# a pass. A program that crashes or exits non-zero without a FAIL line, or that reports no case
# at all, counts as one failure of its own. Each program's wall time follows its output, so
# the slow ones can be found.
passed=0; failed=0; skipped=0
log=$(mktemp)
run_one() {
    name=$1; shift
    t0=$(date +%s)
    "$@" >"$log" 2>&1; rc=$?
    cat "$log"
    echo "($name: $(( $(date +%s) - t0 )) s)"
    p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name: exited with status $rc"; f=1
    elif [ $((p + f + s)) -eq 0 ]; then
        echo "FAIL $name: reported no case"; f=1
    fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}
for t in "$@"; do
    echo "== $t"; run_one "$t" "$t"
done
for s in ${SKEIN_SCRIPTS:-tests/cli_*.sh}; do
    [ -e "$s" ] || continue
    echo "== $s"; run_one "$s" sh "$s"
done
rm -f "$log"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
