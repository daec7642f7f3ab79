# Sourced first by the GPU scripts (tests/gpu_*.sh, which make test-gpu runs): sets SK (the
# program) and T (a scratch folder, removed at exit) and pass/fail (PASS and FAIL lines);
# exits with a FAIL line when $SK is not built and with a SKIP line where nvidia-smi sees no
# GPU. The script's name (without .sh) names those lines.
SK=${SKEIN:-./skein}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
gpu_script=$(basename "$0" .sh)
[ -x "$SK" ] || { fail "$gpu_script" "$SK is not built"; exit 1; }
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP $gpu_script: no GPU here"; exit 0
fi
