#!/bin/sh
# Runs the test programs given as arguments and every tests/cli_*.sh script, then prints
# "N passed, N failed". Each program prints PASS/FAIL lines; a program that crashes or exits
# non-zero without a FAIL line counts as one failure of its own.
passed=0; failed=0
log=$(mktemp)
run_one() {
    name=$1; shift
    "$@" >"$log" 2>&1; rc=$?
    cat "$log"
    p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $name: exited with status $rc"; f=1
    fi
    passed=$((passed + p)); failed=$((failed + f))
}
for t in "$@"; do
    echo "== $t"; run_one "$t" "$t"
done
for s in tests/cli_*.sh; do
    [ -e "$s" ] || continue
    echo "== $s"; run_one "$s" sh "$s"
done
rm -f "$log"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
