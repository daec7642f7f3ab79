#!/bin/sh
# `skein train --config run.json` (cli/runfile.h): the train flags as JSON plus DeepSpeed's keys.
#   deepspeed_config_*   the config ds_train.py (../shared/anchors) hands DeepSpeed, as it is:
#                        accepted, its tuning knobs named on one "ignored keys" line, and the
#                        same run (every loss and learning rate, bit for bit) as the equivalent
#                        flags; with WarmupDecayLR and accumulation, also over 2 ranks
#                        (--workers 2) where the world size enters train_batch_size;
#   skein_keys_*         the flags' own names in the file; a flag on the command line wins;
#   refused_*            contradictions (train_batch_size against micro x accumulation x world,
#                        bf16 and fp16 both on, a skein key against a DeepSpeed key), malformed
#                        JSON, wrong types, what skein cannot do: each refused with a message
#                        naming the keys, before any training.
SK=${SKEIN:-./skein}
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$SK" ] || { fail cli_config "$SK is not built"; exit 1; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
TEST=cli_config
. tests/lib_dist.sh
M="--model $T/init --data $T/tokens.bin --seq 16 --quiet"
trace() { grep -o '"loss": [^,]*\|"lr": [^,]*' "$1/log.jsonl"; }
# same NAME DIR_A DIR_B: both runs exist and log the same losses and learning rates.
same() {
    if [ ! -s "$2/log.jsonl" ] || [ ! -s "$3/log.jsonl" ]; then fail "$1" "a run did not finish: $(tail -n 3 "$T/err")"
    elif [ "$(trace "$2")" = "$(trace "$3")" ] && [ "$(wc -l <"$2/log.jsonl")" -eq 20 ]; then pass "$1"
    else fail "$1" "the runs differ: $(trace "$2" | head -4 | tr '\n' ' ') vs $(trace "$3" | head -4 | tr '\n' ' ')"; fi
}

# ds_train.py's ds_config() for --arch gpt2 --zero 2 (micro-batch and lr scaled to this model).
cat >"$T/ds.json" <<'EOF'
{
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 1,
  "gradient_clipping": 1.0,
  "bf16": {"enabled": true},
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                                            "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "overlap_comm": true, "contiguous_gradients": true,
                        "reduce_bucket_size": 500000000, "allgather_bucket_size": 500000000},
  "steps_per_print": 1000000000,
  "wall_clock_breakdown": false
}
EOF
name=deepspeed_config_as_ds_train_py
$SK train --config "$T/ds.json" $M --steps 20 --out "$T/ds" 2>"$T/err"
$SK train $M --steps 20 --micro-batch 2 --batch 2 --grad-clip 1 --precision bf16 --lr 3e-3 --beta1 0.9 --beta2 0.999 \
    --eps 1e-8 --weight-decay 0.01 --zero 2 --out "$T/ds_flags" 2>>"$T/err"
want="ignored keys: steps_per_print, wall_clock_breakdown, zero_optimization.overlap_comm, zero_optimization.contiguous_gradients, zero_optimization.reduce_bucket_size, zero_optimization.allgather_bucket_size$"
if [ "$(grep -c 'ignored keys' "$T/err")" -ne 1 ] || ! grep -q "$want" "$T/err"; then
    fail $name "not one line naming the ignored keys: $(grep ignored "$T/err")"
else same $name "$T/ds" "$T/ds_flags"; fi

# The same with a scheduler and gradient accumulation; the batch is micro x accumulation x world.
python3 - "$T/ds.json" "$T/ds_sched.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["gradient_accumulation_steps"] = 2
c["scheduler"] = {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 3e-3,
                                                        "warmup_num_steps": 5, "total_num_steps": 20}}
json.dump(c, open(sys.argv[2], "w"))
EOF
SCHED="--lr 3e-3 --warmup 5 --warmup-shape log --lr-decay linear --min-lr-frac 0 --steps 20"
FLAGS="--micro-batch 2 --grad-clip 1 --precision bf16 --beta1 0.9 --beta2 0.999 --eps 1e-8 --weight-decay 0.01 --zero 2"
name=deepspeed_config_warmup_decay
$SK train --config "$T/ds_sched.json" $M --out "$T/sch" 2>"$T/err"
$SK train $M $FLAGS $SCHED --batch 4 --out "$T/sch_flags" 2>>"$T/err"
same $name "$T/sch" "$T/sch_flags"
if command -v mpirun >/dev/null 2>&1 && ldd "$SK" | grep -q libmpi; then
    if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
    export OMPI_MCA_btl_vader_single_copy_mechanism=none
    name=deepspeed_config_two_ranks
    $SK train --config "$T/ds_sched.json" $M --out "$T/sch2" --workers 2 2>"$T/err"
    $SK train $M $FLAGS $SCHED --batch 8 --out "$T/sch2_flags" --workers 2 2>>"$T/err"
    if grep -q '"world_size": 2' "$T/sch2/log.jsonl" 2>/dev/null; then same $name "$T/sch2" "$T/sch2_flags"
    else fail $name "not over 2 ranks: $(tail -n 3 "$T/err")"; fi
else
    echo "SKIP deepspeed_config_two_ranks: mpirun or MPI missing"
fi

# skein's own flag names; the command line overrides the file.
cat >"$T/own.json" <<EOF
{"model": "$T/init", "data": "$T/tokens.bin", "steps": 20, "batch": 7, "micro-batch": 2, "seq": 16,
 "lr": 0.5, "data-dist": "static", "quiet": true, "recompute": false}
EOF
name=skein_keys_flag_wins
$SK train --config "$T/own.json" --lr 3e-3 --out "$T/own" 2>"$T/err"
$SK train $M --steps 20 --batch 7 --micro-batch 2 --lr 3e-3 --out "$T/own_flags" 2>>"$T/err"
if grep -q "ignored" "$T/err"; then fail $name "keys reported ignored: $(grep ignored "$T/err")"
else same $name "$T/own" "$T/own_flags"; fi
name=skein_keys_auto_and_unknown_ignored
echo '{"train_batch_size": "auto", "gradient_clipping": "auto", "stesp": 3, "steps": 2}' >"$T/auto.json"
if $SK train --config "$T/auto.json" $M --out "$T/auto" 2>"$T/err" &&
   grep -q "ignored keys: stesp, train_batch_size (auto), gradient_clipping (auto)" "$T/err" &&
   [ "$(wc -l <"$T/auto/log.jsonl")" -eq 2 ]
then pass $name; else fail $name "$(grep -v '^memory\|^  rank' "$T/err" | tail -n 3)"; fi

# refused NAME JSON PATTERN: the file is refused (non-zero, before any training) with PATTERN.
refused() {
    printf '%s\n' "$2" >"$T/bad.json"
    rm -rf "$T/bad"
    if $SK train --config "$T/bad.json" $M --out "$T/bad" >"$T/err" 2>&1; then fail "$1" "accepted"
    elif [ -e "$T/bad/log.jsonl" ]; then fail "$1" "trained before refusing"
    elif grep -q "$3" "$T/err"; then pass "$1"
    else fail "$1" "no '$3' in: $(tail -n 3 "$T/err")"; fi
}
refused refused_batch_arithmetic \
    '{"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2}' \
    "bad.json: train_batch_size 16 is not train_micro_batch_size_per_gpu 2 x gradient_accumulation_steps 2 x 1 rank (= 4)"
refused refused_bf16_and_fp16 '{"bf16": {"enabled": true}, "fp16": {"enabled": true}}' \
    "bf16.enabled and fp16.enabled are both true"
refused refused_fp16 '{"fp16": {"enabled": true, "loss_scale": 0}}' "fp16.enabled: skein has no fp16 training"
refused refused_skein_key_against_deepspeed_key '{"lr": 0.001, "optimizer": {"type": "AdamW", "params": {"lr": 0.002}}}' \
    "lr (0.001) and optimizer.params.lr (0.002) contradict each other"
refused refused_batch_against_train_batch_size '{"batch": 8, "train_batch_size": 16}' \
    "batch (8) and train_batch_size (16) contradict each other"
refused refused_scheduler_default_peak '{"optimizer": {"type": "AdamW", "params": {"lr": 0.002}}, "scheduler": {"type": "WarmupLR"}}' \
    "optimizer.params.lr (0.002) and the scheduler's default warmup_max_lr (0.001) contradict"
refused refused_malformed_json '{"steps": 3,, "lr": 1}' "bad.json: invalid JSON at line 1, column"
refused refused_not_an_object '[{"steps": 3}]' "a run file is one JSON object"
refused refused_wrong_type '{"steps": "many"}' "bad.json: steps wants an integer"
refused refused_offload_nvme '{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}}' \
    "zero_optimization.offload_optimizer with device nvme: offload to NVMe is not supported yet"
refused refused_optimizer '{"optimizer": {"type": "Lamb", "params": {"lr": 0.001}}}' "optimizer.type Lamb: skein trains with AdamW only"
refused refused_scheduler '{"scheduler": {"type": "OneCycle", "params": {}}}' "scheduler.type OneCycle is not supported"
refused refused_warmup_start '{"scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0001}}}' \
    "scheduler.params.warmup_min_lr: skein's warmup starts at 0"
name=refused_missing_file
if $SK train --config "$T/none.json" $M --out "$T/x" >"$T/err" 2>&1; then fail $name "accepted"
elif grep -q "none.json" "$T/err"; then pass $name; else fail $name "$(tail -n 2 "$T/err")"; fi
