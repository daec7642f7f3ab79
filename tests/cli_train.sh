#!/bin/sh
# End-to-end through the command line, as a user types it: tokenizer train -> data prepare ->
# init -> train -> generate, then the bad inputs each command must refuse with a message
# naming the problem and a non-zero exit (never a crash). Prints PASS/FAIL lines.
SK=${SKEIN:-./skein}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
# expect_error NAME PATTERN CMD...: the command exits 1 or 2 (not a signal) and stderr matches PATTERN.
expect_error() {
    name=$1; pat=$2; shift 2
    "$@" >"$T/out" 2>"$T/err"; rc=$?
    if [ $rc -ne 1 ] && [ $rc -ne 2 ]; then fail "$name" "exit status $rc: $(cat "$T/err")"; return; fi
    if grep -q -- "$pat" "$T/err"; then pass "$name"; else fail "$name" "message lacks '$pat': $(cat "$T/err")"; fi
}

[ -x $SK ] || { fail cli_train "./skein is not built"; exit 1; }
# A small corpus: the README and ARCHITECTURE-like prose of this repository, several documents.
mkdir -p "$T/corpus"
i=0
for f in README.md src/*/*.h; do i=$((i+1)); cp "$f" "$T/corpus/doc$i.txt"; done

if $SK tokenizer train --input "$T"/corpus/*.txt --vocab-size 400 --out "$T/tok.json" 2>"$T/err" &&
   $SK data prepare --tokenizer "$T/tok.json" --input "$T"/corpus/*.txt --out "$T/data" --val-fraction 0.1 2>>"$T/err" &&
   $SK init --arch gpt2 --layers 2 --heads 2 --dim 32 --context 64 --tokenizer "$T/tok.json" --out "$T/init" 2>>"$T/err" &&
   $SK train --model "$T/init" --data "$T/data" --out "$T/run" --steps 30 --batch 4 --seq 32 --lr 3e-3 --eval-every 10 --quiet 2>>"$T/err"
then pass pipeline; else fail pipeline "$(tail -5 "$T/err")"; fi

missing=""
for f in config.json model.safetensors tokenizer.json log.jsonl loss.svg checkpoint-30/skein_state.json checkpoint-30/optimizer.bin; do
    [ -s "$T/run/$f" ] || missing="$missing $f"
done
if [ -z "$missing" ]; then pass run_folder; else fail run_folder "missing$missing"; fi
n=$(wc -l <"$T/run/log.jsonl")
if [ "$n" -eq 30 ] && grep -q '"val_loss"' "$T/run/log.jsonl" && grep -q '"world_size": 1' "$T/run/log.jsonl"
then pass log_jsonl; else fail log_jsonl "$n lines: $(head -2 "$T/run/log.jsonl")"; fi

# Greedy generation is deterministic and stops at --max-tokens; a stop string is not printed.
a=$($SK generate --model "$T/run" --prompt "The model" --max-tokens 12 --temperature 0 2>/dev/null)
b=$($SK generate --model "$T/run" --prompt "The model" --max-tokens 12 --temperature 0 --seed 9 2>/dev/null)
if [ -n "$a" ] && [ "$a" = "$b" ]; then pass generate_greedy; else fail generate_greedy "'$a' vs '$b'"; fi
c=$($SK generate --model "$T/run" --prompt "The model" --max-tokens 40 --temperature 1 --seed 3 2>/dev/null)
d=$($SK generate --model "$T/run" --prompt "The model" --max-tokens 40 --temperature 1 --seed 3 2>/dev/null)
if [ -n "$c" ] && [ "$c" = "$d" ]; then pass generate_seeded; else fail generate_seeded "same seed, different text"; fi
# The first character generated after the prompt, used as a stop string, must cut the output there.
# The first character generated, used as a stop string, must end the output right there.
$SK generate --model "$T/run" --prompt "The model" --max-tokens 12 --temperature 0 >"$T/g" 2>/dev/null
stopc=$(tail -c +10 "$T/g" | head -c 1; echo x); stopc=${stopc%x}
$SK generate --model "$T/run" --prompt "The model" --max-tokens 12 --temperature 0 --stop "$stopc" >"$T/s" 2>/dev/null
if [ "$(cat "$T/s")" = "The model" ] && [ "$(wc -c <"$T/s")" -eq 10 ] && [ "$(wc -c <"$T/g")" -gt 11 ]
then pass generate_stop; else fail generate_stop "$(od -c "$T/s" | head -3)"; fi

# Bad input: named, non-zero, no crash.
expect_error unknown_flag "--bogus" $SK train --model "$T/init" --data "$T/data" --out "$T/x" --bogus
expect_error unknown_command "frobnicate" $SK frobnicate
expect_error bad_int "--steps" $SK train --model "$T/init" --data "$T/data" --out "$T/x" --steps 12x
expect_error missing_model "nope" $SK train --model "$T/nope" --data "$T/data" --out "$T/x"
expect_error missing_data "nodata" $SK train --model "$T/init" --data "$T/nodata" --out "$T/x" --seq 32
expect_error missing_tokenizer "none.json" $SK tokenizer encode --tokenizer "$T/none.json" --text hi
mkdir -p "$T/bad"
cp "$T/init/config.json" "$T/init/tokenizer.json" "$T/bad/"
head -c 1000 "$T/init/model.safetensors" >"$T/bad/model.safetensors"
expect_error truncated_safetensors "model.safetensors" $SK generate --model "$T/bad" --prompt hi
printf 'garbage-garbage-garbage' >"$T/bad/model.safetensors"
expect_error corrupt_safetensors "model.safetensors" $SK generate --model "$T/bad" --prompt hi
rm "$T/bad/model.safetensors"; printf 'x' >"$T/bad/pytorch_model.bin"
expect_error pickle_only "pytorch_model.bin" $SK generate --model "$T/bad" --prompt hi
cp "$T/init/model.safetensors" "$T/bad/"
sed 's/"n_head":[[:space:]]*2/"n_head": 3/' "$T/init/config.json" >"$T/bad/config.json"
expect_error absurd_config "n_head" $SK generate --model "$T/bad" --prompt hi
grep -v '"n_layer"' "$T/init/config.json" >"$T/bad/config.json"
expect_error missing_config_field "n_layer" $SK generate --model "$T/bad" --prompt hi
head -c 2048 /dev/zero >"$T/bad.bin"
expect_error wrong_magic "magic" $SK train --model "$T/init" --data "$T/bad.bin" --out "$T/x" --seq 32
expect_error vocab_too_large "vocab" $SK init --arch gpt2 --layers 1 --heads 1 --dim 8 --context 8 --vocab-size 99999999 --out "$T/x"
expect_error seq_beyond_context "context" $SK train --model "$T/init" --data "$T/data" --out "$T/x" --seq 1000
expect_error bad_top_p "top-p" $SK generate --model "$T/run" --prompt hi --top-p 0
