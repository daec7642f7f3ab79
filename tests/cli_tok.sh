#!/bin/sh
# CLI tests of `skein tokenizer` (run from the repository root by tests/run.sh): encode and
# decode against the HF fixtures, train, flag and file errors, and — where Python has the
# `tokenizers` module — that what `tokenizer train` writes loads in HF and encodes the same.
SK=${SKEIN:-./skein}
FX=tests/fixtures/tok
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
unhex() { LC_ALL=C awk '{ for (i = 1; i < length($0); i += 2) printf "%c", (index("0123456789abcdef", substr($0, i, 1)) - 1) * 16 + index("0123456789abcdef", substr($0, i + 1, 1)) - 1 }'; }
hex() { od -An -v -tx1 | tr -d ' \n'; }

if [ ! -x "$SK" ]; then fail cli_tok_build "no ./skein (run make)"; exit 1; fi

# encode: every fixture text of two tokenizers, through stdin, equals HF's ids.
bad=0; n=0
grep -E '^encode	(gpt2|added)	' $FX/cases.txt > "$tmp/cases"
while IFS='	' read -r kind name h ids; do
    printf '%s' "$h" | unhex > "$tmp/text"
    got=$($SK tokenizer encode --tokenizer $FX/$name.json < "$tmp/text")
    n=$((n + 1))
    if [ "$got" != "$ids" ]; then
        bad=$((bad + 1)); [ $bad -le 3 ] && echo "  $name $h: got '$got' want '$ids'"
    fi
done < "$tmp/cases"
if [ $bad -eq 0 ] && [ $n -gt 100 ]; then pass cli_encode_matches_hf; else fail cli_encode_matches_hf "$bad of $n differ"; fi

# --text and decode --ids
got=$($SK tokenizer encode --tokenizer $FX/gpt2.json --text "Hello world")
want=$(grep "^encode	gpt2	48656c6c6f20776f726c64	" $FX/cases.txt | cut -f4)
back=$($SK tokenizer decode --tokenizer $FX/gpt2.json --ids "$got")
if [ -n "$got" ] && [ "$got" = "$want" ] && [ "$back" = "Hello world" ]; then pass cli_text_and_ids
else fail cli_text_and_ids "got '$got' want '$want', decoded '$back'"; fi

# decode from stdin equals HF's decode (bytes compared as hex).
bad=0; n=0
grep -E '^decode	(gpt2|added|llama3)	' $FX/cases.txt > "$tmp/dcases"
while IFS='	' read -r kind name ids full skip; do
    got=$(printf '%s\n' "$ids" | $SK tokenizer decode --tokenizer $FX/$name.json | hex)
    n=$((n + 1))
    [ "$got" = "$full" ] || { bad=$((bad + 1)); [ $bad -le 3 ] && echo "  $name [$ids]: got $got want $full"; }
done < "$tmp/dcases"
if [ $bad -eq 0 ] && [ $n -gt 50 ]; then pass cli_decode_matches_hf; else fail cli_decode_matches_hf "$bad of $n differ"; fi

# errors: unknown flag, missing tokenizer file, bad id, unknown subcommand
if $SK tokenizer encode --tokenizer $FX/gpt2.json --bogus 1 >/dev/null 2>"$tmp/err"; then
    fail cli_unknown_flag "exit status 0"
elif grep -q -- "--bogus" "$tmp/err"; then pass cli_unknown_flag
else fail cli_unknown_flag "message does not name the flag: $(cat "$tmp/err")"; fi
if $SK tokenizer encode --tokenizer "$tmp/missing.json" --text hi >/dev/null 2>"$tmp/err"; then
    fail cli_missing_tokenizer "exit status 0"
elif grep -q "$tmp/missing.json" "$tmp/err"; then pass cli_missing_tokenizer
else fail cli_missing_tokenizer "message does not name the file: $(cat "$tmp/err")"; fi
if $SK tokenizer decode --tokenizer $FX/gpt2.json --ids "1 x2 3" >/dev/null 2>"$tmp/err"; then
    fail cli_bad_id "exit status 0"
elif grep -q "x2" "$tmp/err"; then pass cli_bad_id
else fail cli_bad_id "message does not name the id: $(cat "$tmp/err")"; fi
if $SK tokenizer frobnicate >/dev/null 2>"$tmp/err"; then fail cli_bad_subcommand "exit status 0"
elif grep -q frobnicate "$tmp/err"; then pass cli_bad_subcommand
else fail cli_bad_subcommand "$(cat "$tmp/err")"; fi

# train: a small vocabulary on the corpus and the fixture texts; encode and decode back.
cut -f3 $FX/cases.txt | grep -v '	' | head -80 | while read -r h; do printf '%s' "$h" | unhex; printf '\n'; done > "$tmp/texts.txt" 2>/dev/null
cat $FX/corpus.txt "$tmp/texts.txt" > "$tmp/train.txt"
if $SK tokenizer train --input $FX/corpus.txt "$tmp/texts.txt" --vocab-size 600 --out "$tmp/trained.json" 2>"$tmp/err" &&
   $SK tokenizer encode --tokenizer "$tmp/trained.json" < $FX/corpus.txt > "$tmp/ids" &&
   $SK tokenizer decode --tokenizer "$tmp/trained.json" < "$tmp/ids" > "$tmp/back" && cmp -s "$tmp/back" $FX/corpus.txt; then
    pass cli_train_round_trip
else fail cli_train_round_trip "$(cat "$tmp/err")"; fi
if $SK tokenizer train --input "$tmp/nope.txt" --vocab-size 600 --out "$tmp/x.json" 2>"$tmp/err"; then
    fail cli_train_missing_input "exit status 0"
elif grep -q "$tmp/nope.txt" "$tmp/err"; then pass cli_train_missing_input
else fail cli_train_missing_input "$(cat "$tmp/err")"; fi

# HF cross-check of what train writes: only where the tokenizers module exists.
PY=""
if [ -x /opt/refenv/bin/python ] && /opt/refenv/bin/python -c "import tokenizers" 2>/dev/null; then PY=/opt/refenv/bin/python
elif python3 -c "import tokenizers" 2>/dev/null; then PY=python3; fi
if [ -z "$PY" ]; then
    echo "SKIP cli_trained_loads_in_hf: no Python with the tokenizers module"
    echo "SKIP cli_trained_docs_loads_in_hf: no Python with the tokenizers module"
else
    $SK tokenizer encode --tokenizer "$tmp/trained.json" < "$tmp/train.txt" > "$tmp/ids"
    if out=$($PY tests/fixtures/check_trained_tok.py "$tmp/trained.json" "$tmp/train.txt" "$tmp/ids"); then
        pass cli_trained_loads_in_hf
    else fail cli_trained_loads_in_hf "$out"; fi
    # A bigger run where the Python docs are installed (make deps installs python3-doc).
    docs=$(ls -d /usr/share/doc/python3*/html/_sources 2>/dev/null | head -1)
    if [ -z "$docs" ]; then echo "SKIP cli_trained_docs_loads_in_hf: python3-doc is not installed"
    elif [ -n "$SKEIN_QUICK" ]; then echo "SKIP cli_trained_docs_loads_in_hf: SKEIN_QUICK"
    else
        find "$docs" -name '*.txt' | sort | xargs cat 2>/dev/null | head -c 5000000 > "$tmp/docs.txt"
        start=$(date +%s.%N)
        $SK tokenizer train --input "$tmp/docs.txt" --vocab-size 4096 --out "$tmp/docs.json" 2>/dev/null
        end=$(date +%s.%N)
        echo "  train: 4096 vocabulary on $(wc -c < "$tmp/docs.txt") bytes in $(awk "BEGIN { printf \"%.2f\", $end - $start }") s"
        $SK tokenizer encode --tokenizer "$tmp/docs.json" < "$tmp/docs.txt" > "$tmp/ids"
        if out=$($PY tests/fixtures/check_trained_tok.py "$tmp/docs.json" "$tmp/docs.txt" "$tmp/ids"); then
            pass cli_trained_docs_loads_in_hf
        else fail cli_trained_docs_loads_in_hf "$out"; fi
    fi
fi
