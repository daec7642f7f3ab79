# Sourced first by the GPU scripts (tests/gpu_*.sh, which make test-gpu runs): sets SK (the
# program) and T (a scratch folder, removed at exit) and pass/fail (PASS and FAIL lines);
# exits with a FAIL line when $SK is not built and with a SKIP line where nvidia-smi sees no
# GPU. The script's name (without .sh) names those lines. Sets TOK (the Llama-3 tokenizer of the
# fixtures) and defines gpu_data and gpu_mpi.
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
TOK=tests/fixtures/tok2/llama3.json
# gpu_data: $T/data, the repository's README and headers tokenized with $TOK; exits with a FAIL
# line naming the script when it cannot.
gpu_data() {
    i=0
    for f in README.md src/*/*.h; do i=$((i+1)); cp "$f" "$T/doc$i.txt"; done
    $SK data prepare --tokenizer $TOK --input "$T"/doc*.txt --out "$T/data" 2>"$T/err" ||
        { fail "${gpu_script}_data" "$(tail -3 "$T/err")"; exit 1; }
}
# gpu_mpi: exits with a SKIP line naming the script where mpirun or MPI is missing; else exports
# Open MPI's settings for root and containers and sets MPIRUN (mpirun within 300 s,
# oversubscribed, unbound: add -n N).
gpu_mpi() {
    command -v mpirun >/dev/null 2>&1 || { echo "SKIP $gpu_script: mpirun not found"; exit 0; }
    ldd "$SK" 2>/dev/null | grep -q libmpi || { echo "SKIP $gpu_script: MPI is not built in"; exit 0; }
    if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
    export OMPI_MCA_btl_vader_single_copy_mechanism=none
    MPIRUN="timeout 300 mpirun --oversubscribe --bind-to none"
}
