#!/bin/sh
# Data-parallel training on the GPU (make test-gpu; needs a GPU and mpirun): 2 ranks share
# one GPU through the MPI communicator, which stages the device buffers through pinned host
# memory (NCCL refuses two ranks on one GPU; with one GPU, --comm auto picks MPI itself and
# says so). Against one process on the same GPU, the same flags (global batch 8 in
# micro-batches of 2, so every forward and backward has the same shapes at both world sizes
# and only the order of the gradient sums differs):
#   gpu_dp_f32_zero{0..3}    every step's loss within 1e-5 relative (cli_zero.sh's tolerance);
#   gpu_dp_bf16_zero{0..3}   bf16 mixed precision (gradients reduced in f32): within 2e-3;
#   gpu_dp_f32_zero2_dynamic dynamic data distribution, within 1e-5;
#   gpu_dp_memory_*          memory.json: each rank's parameters, gradients and AdamW state
#                            are the plan's split, the paper's formulas within 5% (4Ψ, 4Ψ and
#                            8Ψ, divided by 2 from stage 3, 2 and 1 on; bf16 adds its 2Ψ copy);
#   gpu_dp_auto_picks_mpi    --comm auto with 2 ranks on 1 GPU: MPI, the note on stderr;
#   gpu_dp_killed_rank       rank 1 SIGKILLed after step 3: the job ends non-zero within 60 s
#                            with a message naming rank 1;
#   gpu_dp_resume_world1     2 ranks at ZeRO-2 stop after step 4, one process resumes: steps
#                            5-8 within 1e-5 of the uninterrupted 2-rank run;
#   gpu_dp_bench             skein bench train at 2 ranks prints each rank's comm wait;
#   gpu_dp_staged_collectives tests/test_comm's staged_device case on cuda buffers, 2 ranks.
# Prints PASS/FAIL/SKIP lines.
. tests/lib_gpu.sh
gpu_mpi
MPIRUN="$MPIRUN -n 2"

# the collectives themselves on device buffers, staged (tests/test_comm.c, case staged_device)
name=gpu_dp_staged_collectives
B=${BUILD:-build}
if [ ! -x "$B/tests/test_comm" ]; then fail $name "$B/tests/test_comm is not built"
elif SKEIN_TEST_DEVICE=cuda $MPIRUN "$B/tests/test_comm" staged_device >"$T/out" 2>&1 &&
     [ "$(grep -c '^PASS staged_device' "$T/out")" -eq 2 ]; then pass $name
else fail $name "$(grep -v '^PASS' "$T/out" | tail -5)"; fi

TEST=gpu_dp
. tests/lib_dist.sh   # $T/tokens.bin and close(); the model: width 64 as gpu_train.sh trains on the GPU
$SK init --arch gpt2 --layers 2 --heads 2 --dim 64 --context 32 --vocab-size 29 --out "$T/init64" >/dev/null 2>&1 ||
    { fail gpu_dp "init failed"; exit 1; }
F="--model $T/init64 --data $T/tokens.bin --steps 8 --batch 8 --micro-batch 2 --seq 16 --lr 3e-3 --device cuda --quiet"

# memory DIR ZERO BF16: every rank's model states in memory.json against the formulas.
memory() {
    python3 - "$@" <<'PYEOF'
import json, sys
j = json.load(open(sys.argv[1] + '/memory.json')); z = int(sys.argv[2]); bf16 = sys.argv[3] == '1'
psi, N = j['n_params'], j['world_size']
want = {0: (4, 4, 8), 1: (4, 4, 8 / N), 2: (4, 4 / N, 8 / N), 3: (4 / N, 4 / N, 8 / N)}[z]
want = (want[0] + (2 if bf16 else 0), want[1], want[2])
if N != 2 or j['zero'] != z or len(j['ranks']) != 2: sys.exit('world %d zero %d' % (N, j['zero']))
for r in j['ranks']:
    for name, w in zip(('params', 'grads', 'optimizer'), want):
        if abs(r[name] - w * psi) > 0.05 * w * psi:
            sys.exit('rank %d %s %d bytes, the formula says %.0f' % (r['rank'], name, r[name], w * psi))
PYEOF
}

for p in f32 bf16; do
    if ! $SK train $F --precision $p --out "$T/ref_$p" 2>"$T/err"; then
        fail gpu_dp_$p "one process: $(tail -3 "$T/err")"; continue
    fi
    tol=1e-5; [ $p = bf16 ] && tol=2e-3
    for z in 0 1 2 3; do
        name=gpu_dp_${p}_zero$z
        if ! $MPIRUN $SK train $F --precision $p --zero $z --comm mpi --out "$T/$name" >"$T/err" 2>&1; then
            fail $name "exit status $?: $(tail -5 "$T/err")"; continue
        fi
        if msg=$(close "$T/ref_$p" "$T/$name" $tol 2>&1) &&
           grep -q "\"world_size\": 2, \"zero\": $z" "$T/$name/log.jsonl"
        then pass $name; else fail $name "$msg"; fi
        b=0; [ $p = bf16 ] && b=1
        if msg=$(memory "$T/$name" $z $b 2>&1); then pass gpu_dp_memory_${p}_zero$z
        else fail gpu_dp_memory_${p}_zero$z "$msg"; fi
    done
done

# dynamic distribution: ranks claim micro-batches of 2 as they come, the same shapes again
name=gpu_dp_f32_zero2_dynamic
if $MPIRUN $SK train $F --zero 2 --data-dist dynamic --comm mpi --out "$T/$name" >"$T/err" 2>&1 &&
   msg=$(close "$T/ref_f32" "$T/$name" 1e-5 2>&1) && grep -q '"data_dist": "dynamic"' "$T/$name/log.jsonl"
then pass $name; else fail $name "$msg $(tail -3 "$T/err")"; fi

name=gpu_dp_auto_picks_mpi
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then echo "SKIP $name: this machine has a GPU per rank (auto picks NCCL)"
elif $MPIRUN $SK train $F --zero 1 --steps 2 --out "$T/auto" >"$T/err" 2>&1 &&
     grep -q "collectives go through MPI" "$T/err" && grep -q '"world_size": 2' "$T/auto/log.jsonl"
then pass $name; else fail $name "$(tail -5 "$T/err")"; fi

name=gpu_dp_killed_rank
t0=$(date +%s)
$MPIRUN $SK train $F --zero 1 --comm mpi --comm-timeout 10 --debug-kill-rank 1:3 --out "$T/kill" >"$T/err" 2>&1; rc=$?
dt=$(( $(date +%s) - t0 ))
if [ $rc -eq 0 ]; then fail $name "the job exited 0"
elif [ $dt -gt 60 ]; then fail $name "the job took $dt s to end"
elif grep -q "rank 1.*signal 9\|rank(s) 1\|rank 1" "$T/err"; then pass $name
else fail $name "no message naming rank 1: $(tail -5 "$T/err")"; fi

name=gpu_dp_resume_world1
if $MPIRUN $SK train $F --zero 2 --comm mpi --save-every 4 --stop-after 4 --out "$T/res" >"$T/err" 2>&1 &&
   $SK train $F --zero 0 --save-every 4 --resume --out "$T/res" >>"$T/err" 2>&1 &&
   msg=$(close "$T/gpu_dp_f32_zero2" "$T/res" 1e-5 2>&1)
then pass $name; else fail $name "$msg $(tail -3 "$T/err")"; fi

name=gpu_dp_bench
if $MPIRUN $SK bench train --model "$T/init64" --device cuda --comm mpi --batch 8 --seq 16 --steps 3 --zero 2 \
       >"$T/bench" 2>"$T/err" &&
   python3 -c "import json,sys; j=json.loads(open(sys.argv[1]).read().splitlines()[-1]); assert j['world_size']==2 and len(j['ranks'])==2 and all('comm_wait_ms' in r for r in j['ranks'])" "$T/bench"
then pass $name; else fail $name "$(tail -3 "$T/err") $(tail -1 "$T/bench")"; fi
