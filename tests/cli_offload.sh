#!/bin/sh
# ZeRO-Offload (`--offload optimizer`, train/offload.h) on the CPU backend, where the device is
# host memory and every copy a memcpy, but the code path is the GPU's:
#   same_bits_*      20 steps with and without offload at ZeRO-1 and -2, f32 and bf16 mixed
#                    precision, on a model whose shard takes several chunks of the pipeline:
#                    every loss and the final weights bit for bit (the host runs the CPU
#                    backend's AdamW kernel, the same one); and over 2 ranks under mpirun;
#   resume_*         a run stopped at step 10 without offload and resumed with it, and the other
#                    way round: the losses and final weights of the uninterrupted run, bit for
#                    bit (the master and moments come from and go to the host);
#   refused_*        the pinned bytes beyond a host limit (SKEIN_TEST_HOST_LIMIT stands in for
#                    the cgroup's): refused before training, naming both numbers; ZeRO-0 and
#                    ZeRO-3 with offload; --offload nvme;
#   runfile_offload  zero_optimization.offload_optimizer.device "cpu" in a run file trains
#                    exactly as --zero 2 --offload optimizer;
#   memory_json, bench_offload: the plan moves the optimizer to host_pinned; bench train
#                    prints the optimizer step's split and the host memory as JSON fields.
SK=${SKEIN:-./skein}
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$SK" ] || { fail cli_offload "$SK is not built"; exit 1; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
TEST=cli_offload
. tests/lib_dist.sh
# a wider model than lib_dist's: ~240k parameters, 4 chunks of the offload pipeline
$SK init --arch gpt2 --layers 2 --heads 2 --dim 96 --context 32 --vocab-size 29 --out "$T/wide" >/dev/null 2>&1 ||
    { fail cli_offload "init failed"; exit 1; }
W="--model $T/wide --data $T/tokens.bin --steps 20 --batch 7 --micro-batch 2 --seq 16 --lr 3e-3 --quiet"
trace() { grep -o '"loss": [^,]*' "$1/log.jsonl"; }
# same NAME A B: both runs finished with 20 steps, the same losses and final weights.
same() {
    if [ ! -s "$2/log.jsonl" ] || [ ! -s "$3/log.jsonl" ]; then fail "$1" "a run did not finish: $(tail -n 3 "$T/err")"
    elif [ "$(trace "$2")" = "$(trace "$3")" ] && [ "$(wc -l <"$2/log.jsonl")" -eq 20 ] &&
         cmp -s "$2/model.safetensors" "$3/model.safetensors"; then pass "$1"
    else fail "$1" "the runs differ: $(trace "$2" | tail -2 | tr '\n' ' ') vs $(trace "$3" | tail -2 | tr '\n' ' ')"; fi
}

for p in f32 bf16; do
    for z in 1 2; do
        $SK train $W --zero $z --precision $p --out "$T/ref_${p}_$z" 2>"$T/err"
        $SK train $W --zero $z --precision $p --offload optimizer --out "$T/off_${p}_$z" 2>"$T/err"
        same same_bits_zero${z}_$p "$T/ref_${p}_$z" "$T/off_${p}_$z"
    done
done
if grep -q "optimizer offloaded to the host" "$T/err" && grep -q "host: .* MiB pinned" "$T/err"; then pass start_report
else fail start_report "no offload line in the start-up memory plan: $(head -4 "$T/err")"; fi

# resume across offload, both ways (ZeRO-2, f32)
$SK train $W --zero 2 --stop-after 10 --out "$T/res_a" 2>"$T/err" &&
    $SK train $W --zero 2 --offload optimizer --resume --out "$T/res_a" 2>"$T/err"
same resume_into_offload "$T/ref_f32_2" "$T/res_a"
$SK train $W --zero 2 --offload optimizer --stop-after 10 --out "$T/res_b" 2>"$T/err" &&
    $SK train $W --zero 2 --resume --out "$T/res_b" 2>"$T/err"
same resume_out_of_offload "$T/ref_f32_2" "$T/res_b"
# bf16: the master comes back from the host into the checkpoint
$SK train $W --zero 1 --precision bf16 --offload optimizer --stop-after 10 --out "$T/res_c" 2>"$T/err" &&
    $SK train $W --zero 1 --precision bf16 --offload optimizer --resume --out "$T/res_c" 2>"$T/err"
same resume_bf16_offload "$T/ref_bf16_1" "$T/res_c"

name=memory_json
if python3 - "$T/off_bf16_2/memory.json" >"$T/msg" 2>&1 <<'EOF'
import json, sys
m = json.load(open(sys.argv[1])); r = m['ranks'][0]
n = m['n_params']
assert m['offload'] == 'optimizer', m['offload']
assert r['optimizer'] == 0, r['optimizer']
assert 12 * n <= r['host_pinned'] <= 12 * n + 2 * 6 * 65536 * 4, (r['host_pinned'], n)
assert r['host_peak_rss'] > r['host_pinned'], r
EOF
then pass $name; else fail $name "$(tail -2 "$T/msg")"; fi

# refusals, before any training
refused() {   # NAME PATTERN ARGS...: the run fails, writes no log, says PATTERN
    name=$1 pat=$2; shift 2
    rm -rf "$T/bad"
    if "$@" --out "$T/bad" >"$T/err" 2>&1; then fail $name "accepted"
    elif [ -e "$T/bad/log.jsonl" ]; then fail $name "trained before refusing"
    elif grep -q "$pat" "$T/err"; then pass $name
    else fail $name "no '$pat' in: $(tail -n 2 "$T/err")"; fi
}
refused refused_host_budget "need [0-9]* bytes (.* MiB) of pinned host memory, beyond the 100000 bytes (.* MiB) per rank that SKEIN_TEST_HOST_LIMIT allows" \
    env SKEIN_TEST_HOST_LIMIT=100000 $SK train $W --zero 2 --offload optimizer
refused refused_zero0 "offload optimizer needs --zero 1 or 2" $SK train $W --offload optimizer
refused refused_zero3 "offload optimizer with --zero 3 is not supported yet" $SK train $W --zero 3 --offload optimizer
refused refused_nvme "offload nvme is not supported" $SK train $W --zero 2 --offload nvme

name=runfile_offload
printf '%s\n' '{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": true}}}' >"$T/run.json"
$SK train --config "$T/run.json" $W --out "$T/rf" 2>"$T/err"
if grep -q "optimizer offloaded to the host" "$T/err"; then same $name "$T/off_f32_2" "$T/rf"
else fail $name "the run file's offload was not applied: $(tail -n 2 "$T/err")"; fi

name=bench_offload
if $SK bench train --model "$T/wide" --batch 4 --seq 16 --steps 2 --zero 2 --offload optimizer >"$T/out" 2>"$T/err" &&
   python3 - "$T/out" >"$T/msg" 2>&1 <<'EOF'
import json, sys
j = json.loads(open(sys.argv[1]).read())
assert j['offload'] is True
for k in ('offload_d2h_wait_ms', 'offload_adamw_ms', 'offload_h2d_wait_ms', 'offload_tail_ms'):
    assert j[k] >= 0, k
assert j['host_pinned_bytes'] >= 12 * j['params'] and j['host_peak_rss_bytes'] > j['host_pinned_bytes'], j
EOF
then pass $name; else fail $name "$(tail -n 2 "$T/err") $(tail -n 2 "$T/msg")"; fi

# two ranks under mpirun
if ! command -v mpirun >/dev/null 2>&1 || ! ldd "$SK" 2>/dev/null | grep -q libmpi; then
    echo "SKIP same_bits_n2: mpirun or MPI missing"; exit 0
fi
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_btl_vader_single_copy_mechanism=none
MPIRUN="timeout 120 mpirun --oversubscribe"
for c in "1 f32" "2 f32" "2 bf16"; do
    set -- $c
    $MPIRUN -n 2 $SK train $W --zero $1 --precision $2 --out "$T/n2ref_$1_$2" >"$T/err" 2>&1
    $MPIRUN -n 2 $SK train $W --zero $1 --precision $2 --offload optimizer --out "$T/n2off_$1_$2" >"$T/err" 2>&1
    same same_bits_n2_zero$1_$2 "$T/n2ref_$1_$2" "$T/n2off_$1_$2"
done
