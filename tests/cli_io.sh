#!/bin/sh
# transformers loads a folder skein wrote (model_save): runs test_io's
# hf_python_loads_skein_folder case with SKEIN_HF_PYTHON set, which writes a folder and runs
# tests/check_hf_load.py on it. Skipped (one SKIP line) where no Python has transformers (CI).
# Run from the repository root; prints PASS/FAIL lines for tests/run.sh.
BUILD=${BUILD:-build}
py=""
for cand in /opt/refenv/bin/python python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c "import torch, transformers, safetensors" >/dev/null 2>&1; then
        py=$cand; break
    fi
done
name=cli_io_transformers_loads_skein_folder
[ -n "$py" ] || { echo "SKIP $name: no Python with torch, transformers and safetensors"; exit 0; }
if [ ! -x "$BUILD/tests/test_io" ]; then
    echo "FAIL $name: $BUILD/tests/test_io not built"; exit 1
fi
out=$(SKEIN_HF_PYTHON=$py "$BUILD/tests/test_io" hf_python_loads_skein_folder 2>&1)
if echo "$out" | grep -q '^PASS hf_python_loads_skein_folder'; then
    echo "PASS $name"
else
    echo "FAIL $name: $(echo "$out" | tail -n 5 | tr '\n' ' ')"
    exit 1
fi
