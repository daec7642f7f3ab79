#!/bin/sh
# Greedy text from `skein generate` equals transformers' generate + decode on folders that
# transformers writes (Llama, Mistral, Qwen2 with their tokenizers). Runs only where a Python
# with transformers and torch exists (the CI machine has none: then one SKIP line).
SK=${SKEIN:-./skein}
for py in /opt/refenv/bin/python python3; do
    if "$py" -c "import transformers, torch" >/dev/null 2>&1; then
        T=$(mktemp -d)
        "$py" tests/check_generate_vs_hf.py "$SK" "$T" >"$T.out" 2>"$T.err"; rc=$?
        grep -E '^(PASS|FAIL) ' "$T.out"
        [ $rc -eq 0 ] || echo "FAIL hf_generate: exit status $rc: $(tail -3 "$T.err")"
        rm -rf "$T" "$T.out" "$T.err"
        exit 0
    fi
done
echo "SKIP hf_generate: no Python with transformers and torch"
