#!/bin/sh
# CLI tests of `skein data prepare` (run from the repository root by tests/run.sh, with
# $SK built). Prints "PASS name" or "FAIL name: why" per case. The end-to-end case runs
# once per tokenizer fixture in tests/fixtures/tok/*.json (none found is a failure).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }

SK=${SKEIN:-./skein}
if [ ! -x "$SK" ]; then
    fail cli_data "$SK is not built"
    exit 1
fi

if $SK data prepare --help >"$tmp/help" 2>&1 && grep -q -- "--tokenizer" "$tmp/help"; then
    pass data_prepare_help
else
    fail data_prepare_help "--help did not exit 0 with the flags"
fi

printf 'some text\n' >"$tmp/a.txt"
$SK data prepare --tokenizer "$tmp/no-such-tokenizer.json" --input "$tmp/a.txt" --out "$tmp/out" \
    >"$tmp/o" 2>"$tmp/e"
rc=$?
if [ "$rc" -ne 0 ] && grep -q "no-such-tokenizer.json" "$tmp/e"; then
    pass data_prepare_missing_tokenizer
else
    fail data_prepare_missing_tokenizer "exit $rc, stderr: $(cat "$tmp/e")"
fi

$SK data prepare --tokenizer x.json --input "$tmp/a.txt" --out "$tmp/out" --val-fraction 1.5 \
    >"$tmp/o" 2>"$tmp/e"
rc=$?
if [ "$rc" -ne 0 ] && grep -q -- "--val-fraction" "$tmp/e"; then
    pass data_prepare_bad_val_fraction
else
    fail data_prepare_bad_val_fraction "exit $rc, stderr: $(cat "$tmp/e")"
fi

# End to end with each tokenizer fixture: 2 text files + a JSONL of 3 documents.
printf 'The quick brown fox jumps over the lazy dog. ' >"$tmp/b.txt"
i=0; while [ $i -lt 20 ]; do printf 'Hello world, line %d.\n' $i >>"$tmp/b.txt"; i=$((i + 1)); done
printf '{"text": "first json document"}\n{"text": "second one"}\n\n{"text": "third"}\n' >"$tmp/c.jsonl"
for fx in tests/fixtures/tok/*.json; do
    [ -e "$fx" ] || { fail data_prepare_e2e "no tokenizer fixtures in tests/fixtures/tok"; continue; }
    name=data_prepare_e2e_$(basename "$fx" .json)
    out="$tmp/ds_$(basename "$fx" .json)"
    $SK data prepare --tokenizer "$fx" --input "$tmp/a.txt" "$tmp/b.txt" "$tmp/c.jsonl" --out "$out" \
        --val-fraction 0.2 >"$tmp/o" 2>"$tmp/e"
    rc=$?
    if grep -q "end-of-text" "$tmp/e"; then
        # a tokenizer without <|endoftext|> must be refused
        if [ "$rc" -ne 0 ]; then pass "$name"; else fail "$name" "no EOT but exit 0"; fi
        continue
    fi
    if [ "$rc" -ne 0 ]; then
        fail "$name" "exit $rc: $(cat "$tmp/e")"
    elif [ ! -s "$out/dataset.json" ] || [ ! -s "$out/train_000000.bin" ] || [ ! -s "$out/val_000000.bin" ]; then
        fail "$name" "missing dataset.json or shards in $out: $(ls "$out")"
    elif ! grep -q '"documents":[[:space:]]*5' "$out/dataset.json"; then
        fail "$name" "dataset.json does not count 5 documents: $(cat "$out/dataset.json")"
    else
        pass "$name"
    fi
done
