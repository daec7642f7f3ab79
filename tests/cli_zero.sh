#!/bin/sh
# Distributed training under mpirun (2 ranks, and 3, 4 and 8 oversubscribed on a 2-core machine),
# checked against the single-process run of the same flags:
#   same_losses_*   20 steps at every ZeRO stage, static and dynamic data, world 2, 3, 4 and 8
#                   (uneven splits of --batch 7; at 8 a rank has no sample): every loss within
#                   1e-5 relative of world 1; a Llama with grouped key/value heads at 4 and 8;
#                   the same with --dropout at world 3; ZeRO-2/3 without overlap
#                   (SKEIN_ZERO_OVERLAP=0) bit for bit as with it; every stage at world 2
#                   with its buffers staged as for a GPU (SKEIN_COMM_STAGE=1) bit for bit;
#   memory_*        memory.json: parameters, gradients, optimizer state per rank within 5% of
#                   the paper's formulas (4Ψ+4Ψ+8Ψ/N, 4Ψ+12Ψ/N, 16Ψ/N), and the planned total
#                   within 20% of the measured peak (VmHWM - resident bytes before the model;
#                   not under SKEIN_QUICK, the sanitizer build, whose allocator adds its own);
#   dynamic_*       a rank slowed by --debug-slow-rank: the fast rank runs more micro-batches,
#                   every sample of the epoch is used exactly once, losses match world 1;
#   resume_*        saved at one world size/stage/distribution, resumed at another: losses
#                   within 1e-5 of the uninterrupted run; same N, stage, static: bit for bit;
#   kill_*          a rank SIGKILLed mid-run: the job ends non-zero naming it, within the
#                   timeout, and --resume finishes from the last complete checkpoint, bit for bit;
#   refused_*       ZeRO-3 with dynamic data, --micro-batch auto beyond --mem-limit;
#   bf16_zero{2,3}_* bf16 mixed precision at ZeRO-2 and -3 over 2 ranks within 1e-4 of one process;
#   workers_flag, bench_train_zero: --workers 2 re-launches under mpirun; bench prints per-rank memory.
# Prints PASS/FAIL lines, or one SKIP line where mpirun is missing or MPI is not built in.
SK=${SKEIN:-./skein}
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$SK" ] || { fail cli_zero "$SK is not built"; exit 1; }
command -v mpirun >/dev/null 2>&1 || { echo "SKIP cli_zero: mpirun not found"; exit 0; }
ldd "$SK" 2>/dev/null | grep -q libmpi || { echo "SKIP cli_zero: MPI is not built in"; exit 0; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_btl_vader_single_copy_mechanism=none
MPIRUN="timeout 120 mpirun --oversubscribe"

TEST=cli_zero
. tests/lib_dist.sh

$SK train $F --out "$T/ref" 2>"$T/err" || { fail cli_zero "world 1 run: $(tail -3 "$T/err")"; exit 1; }

# ---- the same losses at every scale, stage and distribution ----
for n in 2 3 4 8; do
    for z in 0 1 2 3; do
        for d in static dynamic; do
            [ $z = 3 ] && [ $d = dynamic ] && continue
            name=same_losses_n${n}_zero${z}_$d
            if ! $MPIRUN -n $n $SK train $F --out "$T/$name" --zero $z --data-dist $d >"$T/err" 2>&1; then
                fail $name "exit status $?: $(tail -5 "$T/err")"; continue
            fi
            if msg=$(close "$T/ref" "$T/$name" 1e-5 2>&1) &&
               grep -q "\"world_size\": $n, \"zero\": $z, \"data_dist\": \"$d\"" "$T/$name/log.jsonl"
            then pass $name; else fail $name "$msg"; fi
        done
    done
done
# A Llama (grouped key/value heads, RMSNorm, SwiGLU) sharded the same ways at 4 and 8 ranks
if $SK init --arch llama --layers 2 --heads 4 --kv-heads 2 --dim 32 --ffn-dim 64 --vocab-size 29 --context 32 \
        --out "$T/llama" >/dev/null 2>"$T/err" && $SK train $F --model "$T/llama" --out "$T/lref" 2>"$T/err"; then
    for nz in 4:1 4:3 8:2 8:3; do
        n=${nz%:*}; z=${nz#*:}
        name=llama_same_losses_n${n}_zero$z
        if ! $MPIRUN -n $n $SK train $F --model "$T/llama" --out "$T/$name" --zero $z >"$T/err" 2>&1; then
            fail $name "exit status $?: $(tail -5 "$T/err")"; continue
        fi
        if msg=$(close "$T/lref" "$T/$name" 1e-5 2>&1); then pass $name; else fail $name "$msg"; fi
    done
else fail llama_same_losses "world 1 run: $(tail -3 "$T/err")"; fi
# Overlap changes when collectives are waited for, not what is summed: ZeRO-2 and -3 at world 3
# with SKEIN_ZERO_OVERLAP=0 train the same losses and final weights, bit for bit.
for z in 2 3; do
    name=overlap_off_same_bits_zero$z
    if ! $MPIRUN -n 3 -x SKEIN_ZERO_OVERLAP=0 $SK train $F --out "$T/$name" --zero $z >"$T/err" 2>&1; then
        fail $name "exit status $?: $(tail -5 "$T/err")"; continue
    fi
    a=$(grep -o '"loss": [^,]*' "$T/same_losses_n3_zero${z}_static/log.jsonl"); b=$(grep -o '"loss": [^,]*' "$T/$name/log.jsonl")
    if [ -n "$a" ] && [ "$a" = "$b" ] && cmp -s "$T/same_losses_n3_zero${z}_static/model.safetensors" "$T/$name/model.safetensors"
    then pass $name; else fail $name "losses or final weights differ from the run with overlap"; fi
done
# Device buffers staged through pinned host memory (what MPI does for ranks sharing a GPU),
# forced on the CPU backend in pieces of a few dozen floats: every stage at world 2 trains the
# same losses and final weights as without staging, bit for bit (the same sums, cut into pieces).
for z in 0 1 2 3; do
    name=staged_same_bits_zero$z
    if ! $MPIRUN -n 2 -x SKEIN_COMM_STAGE=1 -x SKEIN_COMM_STAGE_BYTES=256 $SK train $F --out "$T/$name" --zero $z \
         >"$T/err" 2>&1; then
        fail $name "exit status $?: $(tail -5 "$T/err")"; continue
    fi
    a=$(grep -o '"loss": [^,]*' "$T/same_losses_n2_zero${z}_static/log.jsonl"); b=$(grep -o '"loss": [^,]*' "$T/$name/log.jsonl")
    if [ -n "$a" ] && [ "$a" = "$b" ] && cmp -s "$T/same_losses_n2_zero${z}_static/model.safetensors" "$T/$name/model.safetensors"
    then pass $name; else fail $name "losses or final weights differ from the run without staging"; fi
done
# Dropout masks follow the samples: world 3 (micro-batches cut at other places) drops what
# world 1 drops.
name=same_losses_dropout_n3
if $SK train $F --steps 6 --dropout --out "$T/dref1" >"$T/err" 2>&1 &&
   $MPIRUN -n 3 $SK train $F --steps 6 --dropout --zero 2 --out "$T/$name" >"$T/err" 2>&1 &&
   msg=$(close "$T/dref1" "$T/$name" 1e-5 2>&1)
then pass $name; else fail $name "$msg $(tail -3 "$T/err")"; fi
# The final model is consolidated whatever the stage: every tensor of ZeRO-3 at 2 ranks is
# ZeRO-0's at 1 rank up to float-sum order (1e-4 of max(1, the largest weight): Adam amplifies
# tiny differences of near-zero gradients).
name=consolidated_final_model
if msg=$(python3 - "$T/ref/model.safetensors" "$T/same_losses_n2_zero3_static/model.safetensors" 2>&1 <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); h.pop('__metadata__', None)
    return {k: struct.unpack('<%df' % ((v['data_offsets'][1] - v['data_offsets'][0]) // 4),
                             b[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]]) for k, v in h.items()}
a, b = load(sys.argv[1]), load(sys.argv[2])
if sorted(a) != sorted(b): sys.exit('tensor names differ')
for k in a:
    d = max(abs(x - y) for x, y in zip(a[k], b[k])); s = max([abs(x) for x in a[k]] + [1.0])
    if d > 1e-4 * s: sys.exit('%s differs by %g' % (k, d))
EOF
); then pass $name; else fail $name "$msg"; fi

# ---- memory report: the paper's formulas and the measured peak ----
$SK init --arch gpt2 --layers 4 --heads 4 --dim 256 --context 64 --vocab-size 29 --out "$T/big" >/dev/null 2>&1
for z in 0 1 2 3; do
    name=memory_zero$z
    if ! $MPIRUN -n 2 $SK train --model "$T/big" --data "$T/tokens.bin" --out "$T/$name" --steps 1 --batch 4 \
         --micro-batch 2 --seq 32 --quiet --zero $z >"$T/err" 2>&1; then
        fail $name "exit status $?: $(tail -5 "$T/err")"; continue
    fi
    if msg=$(python3 - "$T/$name/memory.json" $z "$SKEIN_QUICK" 2>&1 <<'EOF'
import json, sys
j = json.load(open(sys.argv[1])); z = int(sys.argv[2]); quick = sys.argv[3] != ''
psi, N = j['n_params'], j['world_size']
want = {0: (4, 4, 8), 1: (4, 4, 8 / N), 2: (4, 4 / N, 8 / N), 3: (4 / N, 4 / N, 8 / N)}[z]
assert N == 2 and j['zero'] == z, (N, j['zero'])
for r in j['ranks']:
    got = (r['params'], r['grads'], r['optimizer'])
    for name, g, w in zip(('params', 'grads', 'optimizer'), got, want):
        if abs(g - w * psi) > 0.05 * w * psi: sys.exit('rank %d %s %d vs formula %.0f' % (r['rank'], name, g, w * psi))
    if abs(sum(got) - sum(want) * psi) > 0.05 * sum(want) * psi: sys.exit('rank %d model states %d' % (r['rank'], sum(got)))
    used = r['measured_peak'] - r['baseline_rss']
    if quick: continue   # sanitizer builds: redzones and quarantine change the resident bytes
    if not 0.8 * r['peak_plan'] <= used <= 1.2 * r['peak_plan']:
        sys.exit('rank %d: measured %d bytes above the baseline, planned %d' % (r['rank'], used, r['peak_plan']))
EOF
); then pass $name; else fail $name "$msg"; fi
done

# ---- dynamic distribution with a slowed rank ----
D="--model $T/init --data $T/tokens.bin --steps 32 --batch 8 --micro-batch 1 --seq 16 --lr 3e-3 --quiet"
$SK train $D --out "$T/dref" >/dev/null 2>&1
name=dynamic_slow_rank
if $MPIRUN -n 2 $SK train $D --out "$T/dyn" --zero 2 --data-dist dynamic --debug-slow-rank 1:15 --debug-sample-log >"$T/err" 2>&1; then
    if msg=$(python3 - "$T/dyn" 2>&1 <<'EOF'
import json, sys
d = sys.argv[1]
L = [json.loads(l) for l in open(d + '/log.jsonl')]
mb = [sum(l['workers'][r]['micro_batches'] for l in L) for r in range(2)]
if not (mb[0] > 2 * mb[1] and sum(mb) == 32 * 8): sys.exit('micro-batches per rank %s' % mb)
for l in L:
    if abs(sum(w['share'] for w in l['workers']) - 1) > 1e-9: sys.exit('shares do not sum to 1 at step %d' % l['step'])
seen = [tuple(map(int, x.split())) for r in range(2) for x in open('%s/samples-rank%d.txt' % (d, r))]
if len(seen) != len(set(seen)): sys.exit('a sample was used twice')
ep0 = sorted(i for e, i in seen if e == 0)
if ep0 != list(range(249)): sys.exit('epoch 0 used %d samples, not each of the 249 once' % len(ep0))
EOF
    ) && msg2=$(close "$T/dref" "$T/dyn" 1e-5 2>&1); then pass $name; else fail $name "$msg $msg2"; fi
else fail $name "exit status $?: $(tail -5 "$T/err")"; fi

# ---- resume at another world size, stage and distribution ----
R="$F --save-every 5"
resume() {   # NAME N1 ZERO1 DIST1 N2 ZERO2 DIST2 TOL REF
    name=$1
    rm -rf "$T/$name"
    $MPIRUN -n $2 $SK train $R --out "$T/$name" --zero $3 --data-dist $4 --stop-after 10 >"$T/err" 2>&1 &&
    $MPIRUN -n $5 $SK train $R --out "$T/$name" --zero $6 --data-dist $7 --resume >>"$T/err" 2>&1 ||
        { fail $name "exit status $?: $(tail -5 "$T/err")"; return; }
    if [ "$8" = exact ]; then
        if cmp -s "$T/$9/log.jsonl" /dev/null; then fail $name "no reference"; return; fi
        a=$(grep -o '"loss": [^,]*' "$T/$9/log.jsonl"); b=$(grep -o '"loss": [^,]*' "$T/$name/log.jsonl")
        if [ "$a" = "$b" ] && cmp -s "$T/$9/model.safetensors" "$T/$name/model.safetensors"
        then pass $name; else fail $name "losses or final weights differ from $9"; fi
    elif msg=$(close "$T/$9" "$T/$name" "$8" 2>&1); then pass $name; else fail $name "$msg"; fi
}
resume resume_n2z3_to_n3z1_dynamic 2 3 static 3 1 dynamic 1e-5 ref
resume resume_n3z2_dynamic_to_n1z0 3 2 dynamic 1 0 static 1e-5 ref
resume resume_n2z2_exact 2 2 static 2 2 static exact same_losses_n2_zero2_static

# ---- a rank killed with SIGKILL ----
name=kill_rank_then_resume
t0=$(date +%s)
$MPIRUN -n 2 $SK train $R --out "$T/kill" --zero 1 --comm-timeout 10 --debug-kill-rank 1:7 >"$T/err" 2>&1; rc=$?
dt=$(( $(date +%s) - t0 ))
if [ $rc -eq 0 ]; then fail $name "the job exited 0"
elif [ $dt -gt 30 ]; then fail $name "the job took $dt s to end"
elif ! grep -q "rank 1.*signal 9\|rank(s) 1\|rank 1" "$T/err"; then fail $name "no message naming rank 1: $(tail -5 "$T/err")"
elif [ ! -d "$T/kill/checkpoint-5" ]; then fail $name "no checkpoint-5"
elif ! $MPIRUN -n 2 $SK train $R --out "$T/kill" --zero 1 --resume >"$T/err" 2>&1; then fail $name "resume: $(tail -5 "$T/err")"
else
    a=$(grep -o '"loss": [^,]*' "$T/same_losses_n2_zero1_static/log.jsonl"); b=$(grep -o '"loss": [^,]*' "$T/kill/log.jsonl")
    if [ "$a" = "$b" ]; then pass $name; else fail $name "resumed losses differ from the uninterrupted run"; fi
fi

# ---- refusals ----
name=refused_zero3_dynamic
if $MPIRUN -n 2 $SK train $F --out "$T/x" --zero 3 --data-dist dynamic >"$T/err" 2>&1; then fail $name "accepted"
elif grep -q "zero 3 with --data-dist dynamic" "$T/err"; then pass $name; else fail $name "$(tail -3 "$T/err")"; fi
name=refused_auto_beyond_mem_limit
if $MPIRUN -n 2 $SK train $F --out "$T/x" --micro-batch auto --mem-limit 64K >"$T/err" 2>&1; then fail $name "accepted"
elif grep -q -- "--mem-limit" "$T/err"; then pass $name; else fail $name "$(tail -3 "$T/err")"; fi
# bf16 mixed precision over 2 ranks at ZeRO-2 against one process in bf16: the same step up to
# the order of f32 gradient sums, so within 1e-4 (bf16 activations amplify nothing here)
name=bf16_zero2_matches_world1
if $SK train $F --out "$T/bref" --precision bf16 >"$T/err" 2>&1 &&
   $MPIRUN -n 2 $SK train $F --out "$T/bz2" --zero 2 --precision bf16 >>"$T/err" 2>&1 &&
   grep -q '"dtype": "bf16 mixed' "$T/bz2/memory.json" && msg=$(close "$T/bref" "$T/bz2" 1e-4 2>&1)
then pass $name; else fail $name "$msg $(tail -3 "$T/err")"; fi
# ZeRO-3 in bf16: each gathered layer cast into the bf16 copy; the same step as one process.
name=bf16_zero3_matches_world1
if $MPIRUN -n 2 $SK train $F --out "$T/bz3" --zero 3 --precision bf16 >"$T/err" 2>&1 &&
   msg=$(close "$T/bref" "$T/bz3" 1e-4 2>&1)
then pass $name; else fail $name "$msg $(tail -3 "$T/err")"; fi
name=micro_batch_auto
if $MPIRUN -n 2 $SK train $F --out "$T/auto" --zero 2 --micro-batch auto --mem-limit 1G >"$T/err" 2>&1 &&
   grep -q '"micro_batch": 4' "$T/auto/memory.json" && close "$T/ref" "$T/auto" 1e-5 >/dev/null 2>&1
then pass $name; else fail $name "$(grep micro "$T/err" | head -2) $(head -c 200 "$T/auto/memory.json" 2>/dev/null)"; fi
name=workers_flag
if $SK train $F --out "$T/workers" --zero 2 --workers 2 >"$T/err" 2>&1 &&
   grep -q '"world_size": 2, "zero": 2' "$T/workers/log.jsonl" && close "$T/ref" "$T/workers" 1e-5 >/dev/null 2>&1
then pass $name; else fail $name "$(tail -3 "$T/err")"; fi
name=bench_train_zero
if $SK bench train --model "$T/init" --batch 4 --seq 16 --steps 2 --zero 3 --workers 2 >"$T/out" 2>"$T/err" &&
   python3 -c "import json,sys; j=json.loads(open(sys.argv[1]).read().splitlines()[-1]); assert j['world_size']==2 and j['zero']==3 and len(j['ranks'])==2 and j['tokens_per_s']>0" "$T/out"
then pass $name; else fail $name "$(tail -3 "$T/err") $(tail -1 "$T/out")"; fi
