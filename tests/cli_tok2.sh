#!/bin/sh
# CLI tests of the Llama-family tokenizers and chat (run from the repository root by
# tests/run.sh): `tokenizer encode` with and without --add-special against HF's ids on the
# tests/fixtures/tok2 cases, and `generate --chat` (template from the folder, --chat-template,
# --system, --chat-file) with its errors.
SK=${SKEIN:-./skein}
FX=tests/fixtures/tok2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
unhex() { LC_ALL=C awk '{ for (i = 1; i < length($0); i += 2) printf "%c", (index("0123456789abcdef", substr($0, i, 1)) - 1) * 16 + index("0123456789abcdef", substr($0, i + 1, 1)) - 1 }'; }

if [ ! -x "$SK" ]; then fail cli_tok2_build "no ./skein (run make)"; exit 1; fi

# encode, both ways, for the SentencePiece layouts and Llama 3 (every 3rd case to stay quick).
bad=0; n=0
grep -E '^encode	(sp_norm|sp_meta|llama3)	' $FX/cases.txt | awk -F'\t' '$3 != "" && NR % 3 == 0' > "$tmp/cases"
while IFS='	' read -r kind name h ids ids_special; do
    printf '%s' "$h" | unhex > "$tmp/text"
    a=$($SK tokenizer encode --tokenizer $FX/$name.json < "$tmp/text")
    b=$($SK tokenizer encode --tokenizer $FX/$name.json --add-special < "$tmp/text")
    n=$((n + 1))
    if [ "$a" != "$ids" ] || [ "$b" != "$ids_special" ]; then
        bad=$((bad + 1)); [ $bad -le 3 ] && echo "  $name $h: got '$a' / '$b' want '$ids' / '$ids_special'"
    fi
done < "$tmp/cases"
if [ $bad -eq 0 ] && [ $n -gt 50 ]; then pass cli_encode_add_special_matches_hf; else fail cli_encode_add_special_matches_hf "$bad of $n differ"; fi

# A small random model with a tokenizer that has the ChatML tokens.
if ! $SK init --arch gpt2 --layers 1 --heads 2 --dim 32 --context 256 --tokenizer $FX/qwen2.json --out "$tmp/m" >/dev/null 2>"$tmp/err"; then
    fail cli_chat_model "$(cat "$tmp/err")"; exit 0
fi
expect_error() {   # name, text the message must contain, command...
    name=$1; want=$2; shift 2
    if "$@" >/dev/null 2>"$tmp/err"; then fail "$name" "exit status 0"
    elif grep -q -- "$want" "$tmp/err"; then pass "$name"
    else fail "$name" "message lacks '$want': $(cat "$tmp/err")"; fi
}
expect_error cli_chat_without_template "chat-template" $SK generate --model "$tmp/m" --chat --prompt hi
expect_error cli_chat_template_bogus "bogus" $SK generate --model "$tmp/m" --chat --chat-template bogus --prompt hi
printf '[{"role": "user"}]' > "$tmp/badconv.json"
expect_error cli_chat_file_bad "badconv.json" $SK generate --model "$tmp/m" --chat-file "$tmp/badconv.json" --chat-template chatml
printf '{"eos_token": "<|im_end|>"}' > "$tmp/m/tokenizer_config.json"
expect_error cli_chat_config_without_template "tokenizer_config.json" $SK generate --model "$tmp/m" --chat --prompt hi

# The folder's template (Qwen2's), then the same through --chat-template and a conversation file.
cp $FX/chat.json "$tmp/chat.json"
PY=/opt/refenv/bin/python; [ -x $PY ] || PY=python3
if ! $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); f=[x for x in d if x["family"]=="chatml"][0]
json.dump({"bos_token": None, "eos_token": "<|im_end|>", "chat_template": f["chat_template"]}, open(sys.argv[2], "w"))' \
   "$tmp/chat.json" "$tmp/m/tokenizer_config.json" 2>"$tmp/err"; then
    fail cli_chat_generate "cannot write tokenizer_config.json with $PY: $(tail -2 "$tmp/err")"
else
    a=$($SK generate --model "$tmp/m" --chat --system "Be brief." --prompt "Hi there" --max-tokens 8 --temperature 0 2>"$tmp/err")
    ra=$?
    printf '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]' > "$tmp/conv.json"
    b=$($SK generate --model "$tmp/m" --chat-file "$tmp/conv.json" --chat-template chatml --max-tokens 8 --temperature 0 2>>"$tmp/err")
    rb=$?
    if [ $ra -eq 0 ] && [ $rb -eq 0 ] && [ "$a" = "$b" ] && grep -q "prompt tokens" "$tmp/err"; then pass cli_chat_generate
    else fail cli_chat_generate "rc $ra/$rb, '$a' vs '$b': $(cat "$tmp/err")"; fi
fi
