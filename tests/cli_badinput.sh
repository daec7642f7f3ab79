#!/bin/sh
# Bad input through the command line: each case is a defect found by attacking the commands
# (absurd flags, corrupt or odd files, a run killed at a bad moment). Every refusal must exit
# 1 or 2 (not a signal, not 0) with a message naming the problem; a killed run must lose
# nothing. Run from the repository root by tests/run.sh (also under ASan: SKEIN=build-asan/skein).
SK=${SKEIN:-./skein}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
# expect_error NAME PATTERN CMD...: exit status 1 or 2 and PATTERN in stderr.
expect_error() {
    name=$1; pat=$2; shift 2
    "$@" >"$T/out" 2>"$T/err"; rc=$?
    if [ $rc -ne 1 ] && [ $rc -ne 2 ]; then fail "$name" "exit status $rc: $(tail -3 "$T/err")"; return; fi
    if grep -q -- "$pat" "$T/err"; then pass "$name"; else fail "$name" "message lacks '$pat': $(tail -3 "$T/err")"; fi
}
[ -x "$SK" ] || { fail cli_badinput "$SK is not built"; exit 1; }

mkdir -p "$T/corpus"
i=0
for f in README.md src/*/*.h; do i=$((i+1)); cp "$f" "$T/corpus/doc$i.txt"; done
if ! { $SK tokenizer train --input "$T"/corpus/*.txt --vocab-size 300 --out "$T/tok.json" &&
       $SK data prepare --tokenizer "$T/tok.json" --input "$T"/corpus/*.txt --out "$T/data" &&
       $SK init --arch gpt2 --layers 1 --heads 2 --dim 16 --context 32 --tokenizer "$T/tok.json" --out "$T/m"; } 2>"$T/err"
then fail cli_badinput_setup "$(tail -3 "$T/err")"; exit 1; fi
TR="train --model $T/m --data $T/data --batch 2 --seq 16 --quiet"

# Flags: values that used to be accepted silently, overflow a conversion, or assert.
expect_error mem_limit_overflow "--mem-limit" $SK $TR --out "$T/o" --steps 1 --mem-limit 1e300G
expect_error weight_decay_negative "--weight-decay" $SK $TR --out "$T/o" --steps 1 --weight-decay -1
expect_error grad_clip_negative "--grad-clip" $SK $TR --out "$T/o" --steps 1 --grad-clip -1
expect_error min_lr_frac_above_one "--min-lr-frac" $SK $TR --out "$T/o" --steps 1 --min-lr-frac 2
expect_error batch_beyond_int "--batch" timeout 60 $SK $TR --out "$T/o" --steps 1 --batch 4294967298 --micro-batch 2
# an explicit micro-batch is held to the memory budget too (else overcommit, then the OOM killer)
expect_error micro_batch_beyond_memory "--mem-limit" $SK $TR --out "$T/o" --steps 1 --mem-limit 64K
expect_error bench_batch_overflow "--batch" $SK bench train --model "$T/m" --batch 1000000000000000000 --seq 16 --steps 1
expect_error bench_workers_negative "--workers" $SK bench train --model "$T/m" --batch 1 --seq 8 --steps 1 --workers -2
# --kv-cache-dtype: a value none of auto|f32|bf16|f16 is refused naming the flag, by each command
expect_error kv_cache_dtype_generate "--kv-cache-dtype 'q4'" $SK generate --model "$T/m" --prompt hi --kv-cache-dtype q4
expect_error kv_cache_dtype_bench "--kv-cache-dtype 'fp16'" $SK bench throughput --model "$T/m" --input-len 4 --output-len 2 --num-prompts 1 --kv-cache-dtype fp16
expect_error kv_cache_dtype_serve "--kv-cache-dtype 'half'" $SK serve --model "$T/m" --port 0 --kv-cache-dtype half
expect_error init_ffn_negative "--ffn-dim" $SK init --layers 1 --heads 2 --dim 16 --context 32 --vocab-size 50 --ffn-dim -5 --out "$T/x"
# an odd Llama head size cannot be rotated: init used to write a folder that nothing loads
expect_error init_llama_odd_head_dim "head_dim" $SK init --arch llama --layers 1 --heads 1 --dim 3 --context 8 --vocab-size 50 --out "$T/x"
[ -e "$T/x" ] && fail init_llama_odd_head_dim_no_folder "a folder was written"
# demo narrowed --layers/--vocab-size to int and --corpus-mb to size_t unchecked
expect_error demo_layers_beyond_int "--layers" $SK demo --out "$T/demo" --layers 4294967297
expect_error demo_corpus_overflow "--corpus-mb" $SK demo --out "$T/demo" --corpus-mb 1e300

# A FIFO in place of config.json: refused, not waited on forever.
cp -r "$T/m" "$T/fifo" && rm "$T/fifo/config.json" && mkfifo "$T/fifo/config.json"
expect_error fifo_config "not a regular file" timeout 20 $SK generate --model "$T/fifo" --prompt hi

# A post-processor that adds an id outside the vocabulary is refused when the tokenizer loads.
cat >"$T/tok_post.json" <<'EOF'
{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "<s>": 2}, "merges": []},
 "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}],
                    "special_tokens": {"<s>": {"id": "<s>", "ids": [100000]}}}}
EOF
expect_error post_processor_id_outside_vocab "post_processor special token id 100000" \
    $SK tokenizer encode --tokenizer "$T/tok_post.json" --add-special --text ab

# Resume: a flipped bit in optimizer.bin (NaN moments) is refused, naming the file.
$SK $TR --out "$T/r" --steps 4 --save-every 2 --stop-after 2 2>"$T/err" || fail resume_setup "$(tail -3 "$T/err")"
cp -r "$T/r" "$T/rc"
printf '\377\377\377\377\377\377\377\377' | dd of="$T/rc/checkpoint-2/optimizer.bin" bs=1 seek=200 conv=notrunc 2>/dev/null
expect_error resume_corrupt_optimizer "optimizer.bin" $SK $TR --out "$T/rc" --steps 4 --resume

# Resume with pruning: the run copied its tokenizer from the checkpoint it resumed from, which
# --keep-checkpoints 1 deletes; the next save failed.
if $SK $TR --out "$T/r" --steps 5 --save-every 1 --keep-checkpoints 1 --resume 2>"$T/err" && [ -s "$T/r/tokenizer.json" ] &&
   [ -d "$T/r/checkpoint-5" ] && [ ! -d "$T/r/checkpoint-4" ]
then pass resume_then_prune_keeps_tokenizer; else fail resume_then_prune_keeps_tokenizer "$(tail -3 "$T/err")"; fi

# kill -9 right after a resume (while the first step runs): log.jsonl was rewritten through a
# buffer and lost its history; it must keep the checkpoint's steps, and a resume must finish.
$SK $TR --out "$T/k" --steps 5 --save-every 2 --stop-after 2 2>/dev/null
$SK $TR --out "$T/k" --steps 5 --save-every 2 --resume --debug-slow-rank 0:20000 2>/dev/null &
pid=$!
sleep 3
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
n=$(grep -c '"step"' "$T/k/log.jsonl" 2>/dev/null)
if [ "$n" = 2 ] && $SK $TR --out "$T/k" --steps 5 --save-every 2 --resume 2>"$T/err" &&
   [ "$(grep -c '"step"' "$T/k/log.jsonl")" = 5 ] && [ -s "$T/k/model.safetensors" ]
then pass killed_after_resume_keeps_log; else fail killed_after_resume_keeps_log "log had ${n:-no} steps: $(tail -2 "$T/err")"; fi
exit 0
