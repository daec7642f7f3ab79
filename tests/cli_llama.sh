#!/bin/sh
# A Llama-family model through the command line: data prepared with a Llama-3-style
# tokenizer, `skein init --arch llama` (GQA, bf16), training on one process and on two
# ranks at ZeRO-3 (same losses within 1e-5 relative), greedy and chat generation (with
# --mem-report's lines, and under --kv-memory), and the trained folder loading in transformers where it is installed. Prints PASS/FAIL lines.
SK=${SKEIN:-./skein}
TOK=tests/fixtures/tok2/llama3.json
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
[ -x "$SK" ] || { fail cli_llama "$SK is not built"; exit 1; }
i=0
for f in README.md src/*/*.h; do i=$((i+1)); cp "$f" "$T/doc$i.txt"; done
if $SK data prepare --tokenizer $TOK --input "$T"/doc*.txt --out "$T/data" 2>"$T/err" &&
   $SK init --arch llama --layers 2 --heads 4 --kv-heads 2 --dim 64 --context 128 --tokenizer $TOK --out "$T/init" 2>>"$T/err" &&
   $SK train --model "$T/init" --data "$T/data" --out "$T/run1" --steps 12 --batch 6 --seq 32 --lr 3e-3 --quiet 2>>"$T/err"
then pass llama_pipeline; else fail llama_pipeline "$(tail -3 "$T/err")"; fi
grep -q '"bos_token_id":[[:space:]]*0' "$T/init/config.json" && pass llama_init_bos || fail llama_init_bos "$(grep -E 'bos|eos' "$T/init/config.json")"

if ! command -v mpirun >/dev/null 2>&1; then echo "SKIP llama_zero3_two_ranks: mpirun not found"
elif ! ldd "$SK" 2>/dev/null | grep -q libmpi; then echo "SKIP llama_zero3_two_ranks: MPI is not built in"
else
    if $SK train --model "$T/init" --data "$T/data" --out "$T/run2" --steps 12 --batch 6 --seq 32 --lr 3e-3 --quiet \
        --workers 2 --zero 3 2>"$T/err"; then
        d=$(awk 'NR==FNR { match($0, /"loss": [^,]*/); a[FNR] = substr($0, RSTART + 8, RLENGTH - 8); next }
                 { match($0, /"loss": [^,]*/); b = substr($0, RSTART + 8, RLENGTH - 8);
                   r = (a[FNR] - b) / a[FNR]; if (r < 0) r = -r; if (r > m) m = r }
                 END { printf "%g", m }' "$T/run1/log.jsonl" "$T/run2/log.jsonl")
        if awk "BEGIN { exit !($d <= 1e-5) }"; then pass llama_zero3_two_ranks; else fail llama_zero3_two_ranks "relative loss difference $d"; fi
    else
        fail llama_zero3_two_ranks "$(tail -3 "$T/err")"
    fi
fi

a=$($SK generate --model "$T/run1" --prompt "static" --max-tokens 8 --temperature 0 2>/dev/null)
b=$($SK generate --model "$T/run1" --prompt "static" --max-tokens 8 --temperature 0 2>/dev/null)
if [ -n "$a" ] && [ "$a" = "$b" ]; then pass llama_generate; else fail llama_generate "'$a' vs '$b'"; fi
if $SK generate --model "$T/run1" --chat --chat-template llama3 --prompt "hi" --max-tokens 4 >/dev/null 2>"$T/err"
then pass llama_chat; else fail llama_chat "$(tail -2 "$T/err")"; fi
# --kv-memory: a budget gives the same text; one too small for the prompt, or not a size, is refused naming the flag
d=$($SK generate --model "$T/run1" --prompt "static" --max-tokens 8 --temperature 0 --kv-memory 4M 2>/dev/null)
if [ "$d" = "$a" ] && ! $SK generate --model "$T/run1" --prompt "static" --max-tokens 8 --kv-memory 2k >/dev/null 2>"$T/err" &&
   grep -q -- "--kv-memory" "$T/err" && ! $SK generate --model "$T/run1" --prompt "static" --kv-memory 3x >/dev/null 2>"$T/err" &&
   grep -q -- "--kv-memory '3x'" "$T/err"
then pass llama_generate_kv_memory; else fail llama_generate_kv_memory "'$d' vs '$a': $(cat "$T/err")"; fi
# --kv-cache-dtype: generate names the cache; bench's JSON names it, an f16 pool holding twice
# the f32 pool's blocks in the same --kv-memory
$SK generate --model "$T/run1" --prompt "static" --max-tokens 8 --temperature 0 --kv-cache-dtype f16 >/dev/null 2>"$T/err"
kb() { $SK bench throughput --model "$T/run1" --input-len 8 --output-len 4 --num-prompts 2 --kv-memory 256k --kv-cache-dtype "$1" 2>>"$T/err" |
       sed -n "s/.*\"kv_dtype\": \"$1\", \"kv_blocks\": \([0-9]*\),.*/\1/p"; }
b32=$(kb f32); b16=$(kb f16)
if grep -q "kv cache f16\]" "$T/err" && [ -n "$b32" ] && [ "$b32" -gt 0 ] && [ "$b16" = $((2 * b32)) ]
then pass llama_kv_cache_dtype; else fail llama_kv_cache_dtype "blocks f32 '$b32', f16 '$b16': $(tail -3 "$T/err")"; fi
# --mem-report: the folder's mapping and the private memory beside it, on stderr
c=$($SK generate --model "$T/run1" --prompt "static" --max-tokens 8 --temperature 0 --mem-report 2>"$T/err")
if [ "$c" = "$a" ] && grep -q '^\[mem-report\] weight files: [1-9][0-9]* bytes' "$T/err" &&
   grep -q '^\[mem-report\] mapping: rss [1-9][0-9]* (.*) pss [1-9]' "$T/err" &&
   grep -q '^\[mem-report\] private outside the mapping: [1-9][0-9]* (' "$T/err"
then pass llama_generate_mem_report; else fail llama_generate_mem_report "'$c' vs '$a': $(cat "$T/err")"; fi

py=""
for cand in /opt/refenv/bin/python python3; do
    if "$cand" -c "import transformers, torch" >/dev/null 2>&1; then py=$cand; break; fi
done
if [ -z "$py" ]; then echo "SKIP llama_loads_in_transformers: no Python with transformers and torch"
elif "$py" tests/check_hf_load_llama.py "$T/run1" >"$T/hf" 2>&1 && grep -q '^OK' "$T/hf"
then pass llama_loads_in_transformers; else fail llama_loads_in_transformers "$(tail -3 "$T/hf")"; fi
